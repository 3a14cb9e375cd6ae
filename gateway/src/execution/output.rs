//! Turning raw pipe bytes into event payloads: UTF-8 text that never splits a character
//! across events, or base64 of the exact bytes.

use base64::Engine as _;
use sluice_protocol::Encoding;

/// Decodes one output stream (stdout or stderr) chunk by chunk.
///
/// The caller reads the pipe into a buffer and hands the buffer over; for UTF-8 the
/// buffer keeps the start of a character whose remaining bytes have not arrived yet (at
/// most three bytes), and the next read appends after it.
#[derive(Debug)]
pub(crate) struct OutputDecoder {
    encoding: Encoding,
    /// Capacity of a fresh read buffer: the chunk size.
    chunk: usize,
}

impl OutputDecoder {
    pub(crate) fn new(encoding: Encoding, chunk: usize) -> Self {
        Self { encoding, chunk }
    }

    /// An empty read buffer of the chunk size.
    pub(crate) fn buffer(&self) -> Vec<u8> {
        Vec::with_capacity(self.chunk)
    }

    /// The payload for the complete part of `buf`; `None` when everything was held back.
    /// Afterwards `buf` holds only the held-back bytes. Large payloads take over the
    /// buffer's allocation instead of copying it.
    pub(crate) fn decode(&mut self, buf: &mut Vec<u8>) -> Option<String> {
        if buf.is_empty() {
            return None;
        }
        match self.encoding {
            Encoding::Base64 => {
                let text = base64::engine::general_purpose::STANDARD.encode(&buf[..]);
                buf.clear();
                Some(text)
            }
            Encoding::Utf8 => {
                let cut = complete_prefix_len(buf);
                if cut == 0 {
                    return None;
                }
                let mut tail = [0u8; 4];
                let held = buf.len() - cut;
                tail[..held].copy_from_slice(&buf[cut..]);
                buf.truncate(cut);
                let text = if buf.len() >= self.chunk / 4 {
                    let bytes = std::mem::replace(buf, self.buffer());
                    String::from_utf8(bytes)
                        .unwrap_or_else(|err| String::from_utf8_lossy(err.as_bytes()).into_owned())
                } else {
                    let text = lossy(buf).unwrap_or_default();
                    buf.clear();
                    text
                };
                buf.extend_from_slice(&tail[..held]);
                Some(text)
            }
        }
    }

    /// Flushes a character left incomplete at the end of the stream as U+FFFD.
    pub(crate) fn finish(&mut self, buf: &mut Vec<u8>) -> Option<String> {
        let text = lossy(buf);
        buf.clear();
        text
    }
}

fn lossy(bytes: &[u8]) -> Option<String> {
    if bytes.is_empty() {
        return None;
    }
    // Valid text is the common case, and std's validator is much faster than the lossy
    // path's chunk iterator.
    Some(match std::str::from_utf8(bytes) {
        Ok(text) => text.to_owned(),
        Err(_) => String::from_utf8_lossy(bytes).into_owned(),
    })
}

/// Length of `bytes` without a trailing, possibly incomplete UTF-8 character: the tail
/// that could still become valid when more bytes arrive.
fn complete_prefix_len(bytes: &[u8]) -> usize {
    // A character is at most 4 bytes, so only the last 3 can start an incomplete one.
    let len = bytes.len();
    for back in 1..=len.min(3) {
        let byte = bytes[len - back];
        if byte & 0b1100_0000 == 0b1000_0000 {
            continue; // continuation byte: keep looking for the lead byte
        }
        let needed = match byte {
            0xC2..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF4 => 4,
            _ => return len, // ASCII or a byte that can never start a character
        };
        let tail = &bytes[len - back..];
        return if back < needed && could_complete(tail) {
            len - back
        } else {
            len
        };
    }
    len
}

/// True when `tail` (a lead byte and its continuation bytes so far) is a valid prefix of
/// some character, so holding it back can pay off; otherwise it is replaced right away.
fn could_complete(tail: &[u8]) -> bool {
    let mut padded = [0x80u8; 4];
    padded[..tail.len()].copy_from_slice(tail);
    let needed = match tail[0] {
        0xC2..=0xDF => 2,
        0xE0..=0xEF => 3,
        _ => 4,
    };
    // Fill the missing continuation bytes with the smallest valid one and check; for E0,
    // ED, F0 and F4 the second byte's range is narrower, which from_utf8 enforces.
    for candidate in [0x80u8, 0x90, 0xA0, 0xBF] {
        for slot in padded.iter_mut().take(needed).skip(tail.len()) {
            *slot = candidate;
        }
        if std::str::from_utf8(&padded[..needed]).is_ok() {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed_all(chunks: &[&[u8]]) -> String {
        let mut d = OutputDecoder::new(Encoding::Utf8, 16);
        let mut buf = d.buffer();
        let mut out = String::new();
        for chunk in chunks {
            buf.extend_from_slice(chunk);
            out.extend(d.decode(&mut buf));
        }
        out.extend(d.finish(&mut buf));
        out
    }

    #[test]
    fn every_split_of_multibyte_text_round_trips() {
        let text = "aé€😀z";
        let bytes = text.as_bytes();
        for i in 0..=bytes.len() {
            for j in i..=bytes.len() {
                let got = feed_all(&[&bytes[..i], &bytes[i..j], &bytes[j..]]);
                assert_eq!(got, text, "split at {i},{j}");
            }
        }
    }

    #[test]
    fn no_event_ends_inside_a_character() {
        let mut d = OutputDecoder::new(Encoding::Utf8, 16);
        let euro = "€".as_bytes();
        let mut buf = euro[..2].to_vec();
        assert_eq!(d.decode(&mut buf), None);
        assert_eq!(buf.len(), 2);
        buf.extend_from_slice(&euro[2..]);
        assert_eq!(d.decode(&mut buf).as_deref(), Some("€"));
        assert!(buf.is_empty());
    }

    #[test]
    fn large_chunks_keep_the_held_back_tail() {
        let mut d = OutputDecoder::new(Encoding::Utf8, 8);
        let mut buf = d.buffer();
        buf.extend_from_slice("abcdefg".as_bytes());
        buf.extend_from_slice(&"€".as_bytes()[..1]);
        assert_eq!(d.decode(&mut buf).as_deref(), Some("abcdefg"));
        assert_eq!(buf, &"€".as_bytes()[..1]);
        assert!(buf.capacity() >= 8);
    }

    #[test]
    fn invalid_bytes_become_replacement_characters() {
        assert_eq!(feed_all(&[b"a\xffb"]), "a\u{fffd}b");
        // A lead byte followed by a non-continuation is replaced, not held forever.
        assert_eq!(feed_all(&[b"\xe2", b"x"]), "\u{fffd}x");
        // A truncated character at the end of the stream is flushed as U+FFFD.
        assert_eq!(feed_all(&[b"ok\xe2\x82"]), "ok\u{fffd}");
        // Bytes that can never start a character are not held back.
        let mut d = OutputDecoder::new(Encoding::Utf8, 16);
        let mut buf = b"\xc0".to_vec();
        assert_eq!(d.decode(&mut buf).as_deref(), Some("\u{fffd}"));
    }

    #[test]
    fn base64_is_exact_per_chunk() {
        let mut d = OutputDecoder::new(Encoding::Base64, 16);
        let mut buf = vec![0, 255, 1];
        assert_eq!(d.decode(&mut buf).as_deref(), Some("AP8B"));
        assert!(buf.is_empty());
        assert_eq!(d.finish(&mut buf), None);
    }
}
