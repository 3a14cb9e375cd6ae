//! Turning raw pipe bytes into event payloads: UTF-8 text that never splits a character
//! across events, or base64 of the exact bytes.

use base64::Engine as _;
use sluice_protocol::Encoding;

/// Decodes one output stream (stdout or stderr) chunk by chunk.
#[derive(Debug)]
pub(crate) struct OutputDecoder {
    encoding: Encoding,
    /// The start of a UTF-8 character whose remaining bytes have not arrived yet (at most
    /// three bytes).
    carry: Vec<u8>,
}

impl OutputDecoder {
    pub(crate) fn new(encoding: Encoding) -> Self {
        Self {
            encoding,
            carry: Vec::new(),
        }
    }

    /// Bytes held back from the previous chunk; the caller reads that many fewer so an
    /// event never carries more than the chunk size.
    pub(crate) fn carried(&self) -> usize {
        self.carry.len()
    }

    /// The payload for `bytes`; `None` when everything was held back.
    pub(crate) fn decode(&mut self, bytes: &[u8]) -> Option<String> {
        match self.encoding {
            Encoding::Base64 => {
                (!bytes.is_empty()).then(|| base64::engine::general_purpose::STANDARD.encode(bytes))
            }
            Encoding::Utf8 => {
                if self.carry.is_empty() {
                    let cut = complete_prefix_len(bytes);
                    let text = lossy(&bytes[..cut]);
                    self.carry.extend_from_slice(&bytes[cut..]);
                    text
                } else {
                    let mut joined = std::mem::take(&mut self.carry);
                    joined.extend_from_slice(bytes);
                    let cut = complete_prefix_len(&joined);
                    let text = lossy(&joined[..cut]);
                    self.carry.extend_from_slice(&joined[cut..]);
                    text
                }
            }
        }
    }

    /// Flushes a character left incomplete at the end of the stream as U+FFFD.
    pub(crate) fn finish(&mut self) -> Option<String> {
        let rest = std::mem::take(&mut self.carry);
        lossy(&rest)
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
        let mut d = OutputDecoder::new(Encoding::Utf8);
        let mut out: String = chunks.iter().filter_map(|c| d.decode(c)).collect();
        out.extend(d.finish());
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
        let mut d = OutputDecoder::new(Encoding::Utf8);
        let euro = "€".as_bytes();
        assert_eq!(d.decode(&euro[..2]), None);
        assert_eq!(d.carried(), 2);
        assert_eq!(d.decode(&euro[2..]).as_deref(), Some("€"));
    }

    #[test]
    fn invalid_bytes_become_replacement_characters() {
        assert_eq!(feed_all(&[b"a\xffb"]), "a\u{fffd}b");
        // A lead byte followed by a non-continuation is replaced, not held forever.
        assert_eq!(feed_all(&[b"\xe2", b"x"]), "\u{fffd}x");
        // A truncated character at the end of the stream is flushed as U+FFFD.
        assert_eq!(feed_all(&[b"ok\xe2\x82"]), "ok\u{fffd}");
        // Bytes that can never start a character are not held back.
        let mut d = OutputDecoder::new(Encoding::Utf8);
        assert_eq!(d.decode(b"\xc0").as_deref(), Some("\u{fffd}"));
    }

    #[test]
    fn base64_is_exact_per_chunk() {
        let mut d = OutputDecoder::new(Encoding::Base64);
        assert_eq!(d.decode(&[0, 255, 1]).as_deref(), Some("AP8B"));
        assert_eq!(d.finish(), None);
    }
}
