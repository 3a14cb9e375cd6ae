//! A fast JSON encoder for [`Event`], the one type on the hot path: every byte of program
//! output passes through it. serde_json escapes strings a byte at a time; this scans
//! eight bytes at a time for the few bytes that need escaping and copies the runs between
//! them. Output is identical to serde_json's (a test holds it to that).

use crate::Event;
use serde::Serialize;

/// Appends `value` as a JSON string literal, escaped exactly as serde_json does.
pub(crate) fn write_str(out: &mut String, value: &str) {
    out.reserve(value.len() + 2);
    out.push('"');
    let bytes = value.as_bytes();
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        // Skip 32 clean bytes at a time, then 8, then look at single bytes.
        if i + 32 <= bytes.len() && !block_needs_escape(&bytes[i..i + 32]) {
            i += 32;
            continue;
        }
        if i + 8 <= bytes.len() && !needs_escape(word_at(bytes, i)) {
            i += 8;
            continue;
        }
        let byte = bytes[i];
        let escape = match byte {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0x00..=0x1f => "",
            _ => {
                i += 1;
                continue;
            }
        };
        // Every byte escaped here is ASCII, so `start..i` lies on character boundaries.
        out.push_str(&value[start..i]);
        if escape.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.push_str("\\u00");
            out.push(char::from(HEX[usize::from(byte >> 4)]));
            out.push(char::from(HEX[usize::from(byte & 0xf)]));
        } else {
            out.push_str(escape);
        }
        i += 1;
        start = i;
    }
    out.push_str(&value[start..]);
    out.push('"');
}

fn word_at(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

/// True when any of the 32 bytes may need escaping (see [`needs_escape`]).
fn block_needs_escape(block: &[u8]) -> bool {
    let mut any = 0u64;
    for at in (0..32).step_by(8) {
        any |= escape_mask(word_at(block, at));
    }
    any != 0
}

/// True when any byte of `word` is a control character, `"` or `\`. May report a false
/// positive next to a real hit (the caller then checks byte by byte), never a false
/// negative.
fn needs_escape(word: u64) -> bool {
    escape_mask(word) != 0
}

fn escape_mask(word: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let has_zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGHS;
    let below_space = word.wrapping_sub(ONES * 0x20) & !word & HIGHS;
    below_space
        | has_zero(word ^ (ONES * u64::from(b'"')))
        | has_zero(word ^ (ONES * u64::from(b'\\')))
}

fn write_value(out: &mut String, value: &impl Serialize) {
    // Serializing these field types (numbers, enums, structs of numbers and strings, maps
    // with string keys) cannot fail.
    if let Ok(text) = serde_json::to_string(value) {
        out.push_str(&text);
    }
}

fn write_key(out: &mut String, key: &str) {
    out.push_str(",\"");
    out.push_str(key);
    out.push_str("\":");
}

fn write_optional(out: &mut String, key: &str, value: Option<&impl Serialize>) {
    if let Some(value) = value {
        write_key(out, key);
        write_value(out, value);
    }
}

/// A string field serde skips when absent (`skip_serializing_if = "Option::is_none"`),
/// escaped by [`write_str`].
fn write_optional_str(out: &mut String, key: &str, value: Option<&str>) {
    if let Some(value) = value {
        write_key(out, key);
        write_str(out, value);
    }
}

/// Appends `event` as a JSON object, field for field what serde's derive writes.
pub(crate) fn write_event(out: &mut String, event: &Event) {
    out.reserve(event.data.len() + 160);
    out.push_str("{\"type\":");
    write_value(out, &event.kind);
    write_key(out, "data");
    write_str(out, &event.data);
    write_key(out, "timestamp");
    write_value(out, &event.timestamp);
    write_key(out, "sequence");
    write_value(out, &event.sequence);
    write_key(out, "id");
    match &event.id {
        Some(id) => write_str(out, id),
        None => out.push_str("null"),
    }
    write_key(out, "session");
    match &event.session {
        Some(session) => write_str(out, session),
        None => out.push_str("null"),
    }
    write_optional(out, "pid", event.pid.as_ref());
    write_optional(out, "encoding", event.encoding.as_ref());
    write_optional(out, "exit_code", event.exit_code.as_ref());
    write_optional(out, "signal", event.signal.as_ref());
    write_optional(out, "limit", event.limit.as_ref());
    write_optional(out, "limit_value", event.limit_value.as_ref());
    write_optional(out, "limit_observed", event.limit_observed.as_ref());
    write_optional(out, "code", event.code.as_ref());
    write_optional(out, "usage", event.usage.as_ref());
    write_optional(out, "missed_from", event.missed_from.as_ref());
    write_optional(out, "resume_from", event.resume_from.as_ref());
    write_optional_str(out, "for_session", event.for_session.as_deref());
    write_optional(out, "runtimes", event.runtimes.as_ref());
    write_optional(out, "limits", event.limits.as_ref());
    write_optional_str(out, "request", event.request.as_deref());
    write_optional_str(out, "path", event.path.as_deref());
    write_optional(out, "offset", event.offset.as_ref());
    write_optional(out, "size", event.size.as_ref());
    write_optional(out, "last", event.last.as_ref());
    write_optional(out, "entries", event.entries.as_ref());
    write_optional(out, "changes", event.changes.as_ref());
    write_optional(out, "truncated", event.truncated.as_ref());
    write_optional(out, "bundle", event.bundle.as_ref());
    write_optional(out, "metadata", event.metadata.as_ref());
    write_optional(out, "display_id", event.display_id.as_ref());
    write_optional(out, "execution_count", event.execution_count.as_ref());
    write_optional(out, "password", event.password.as_ref());
    write_optional(out, "exception", event.exception.as_ref());
    write_optional(out, "matches", event.matches.as_ref());
    write_optional(out, "cursor_start", event.cursor_start.as_ref());
    write_optional(out, "cursor_end", event.cursor_end.as_ref());
    write_optional(out, "found", event.found.as_ref());
    out.push('}');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Encoding, ErrorCode, EventKind, LimitKind, Usage};

    fn serde_str(value: &str) -> String {
        serde_json::to_string(value).unwrap()
    }

    #[test]
    fn strings_escape_exactly_like_serde_json() {
        let mut every_byte = String::new();
        for c in (0u8..0x80).map(char::from) {
            every_byte.push(c);
        }
        let samples = [
            String::new(),
            "plain ascii text that is longer than eight bytes".into(),
            "quote\" back\\slash \n\r\t\u{8}\u{c}\u{0}\u{1f}\u{7f}".into(),
            "é€😀 mixed with \"quotes\" and \\ at odd offsets 1234567".into(),
            every_byte,
            "x".repeat(17) + "\n" + &"y".repeat(9),
            "a".repeat(31) + "\"" + &"é".repeat(40) + "\u{1}" + &"b".repeat(70),
        ];
        for sample in &samples {
            let mut out = String::new();
            write_str(&mut out, sample);
            assert_eq!(out, serde_str(sample), "{sample:?}");
        }
    }

    #[test]
    fn events_encode_exactly_like_serde_derive() {
        let full = Event {
            pid: Some(7),
            encoding: Some(Encoding::Base64),
            exit_code: Some(-1),
            signal: Some(9),
            limit: Some(LimitKind::Output),
            limit_value: Some(1 << 40),
            limit_observed: Some(1 << 41),
            code: Some(ErrorCode::TooLarge),
            usage: Some(Usage {
                duration_ms: 1.5,
                first_output_ms: Some(0.25),
                ..Usage::default()
            }),
            session: Some("s\"1".into()),
            missed_from: Some(3),
            resume_from: Some(9),
            for_session: Some("n\\b".into()),
            request: Some("r\"1".into()),
            path: Some("a/b\n".into()),
            offset: Some(7),
            size: Some(9),
            last: Some(true),
            entries: Some(vec![crate::FileEntry {
                name: "x\"y".into(),
                kind: crate::FileKind::Dir,
                size: 4096,
                mode: 0o755,
                mtime: 1.5,
            }]),
            changes: Some(crate::FileChanges {
                created: vec!["a".into()],
                ..crate::FileChanges::default()
            }),
            truncated: Some(true),
            bundle: Some(std::collections::BTreeMap::from([
                ("text/plain".to_owned(), serde_json::json!("x\"")),
                (
                    "application/json".to_owned(),
                    serde_json::json!({"a": [1, 2.5]}),
                ),
            ])),
            metadata: Some(serde_json::json!({"image/png": {"width": 3}})),
            display_id: Some("d\n".into()),
            execution_count: Some(4),
            password: Some(false),
            exception: Some(crate::CellException {
                ename: "E\"".into(),
                evalue: "v\n".into(),
                traceback: vec!["Traceback".into(), "E: v".into()],
            }),
            matches: Some(vec!["sqrt".into(), "s\"q".into()]),
            cursor_start: Some(5),
            cursor_end: Some(7),
            found: Some(true),
            timestamp: 1_763_900_000.123_456,
            sequence: u64::MAX,
            ..Event::new(EventKind::Completed, Some("id\n".into()), "da\u{1}ta")
        };
        let bare = Event {
            timestamp: 0.5,
            sequence: 1,
            ..Event::error(None, ErrorCode::BadRequest, "")
        };
        let mut limits = std::collections::BTreeMap::new();
        limits.insert(
            "timeout_ms".to_owned(),
            crate::LimitRange {
                default: 30_000,
                max: 600_000,
            },
        );
        let runtimes = Event {
            timestamp: 0.75,
            sequence: 2,
            ..Event::runtimes(crate::Catalog {
                runtimes: vec![crate::RuntimeInfo {
                    language: "py\"thon".into(),
                    version: Some("Python 3.11.7".into()),
                    packages: Some(vec![crate::PackageInfo {
                        name: "n\u{e9}mo".into(),
                        version: "1.0".into(),
                    }]),
                    file_name: "main.py".into(),
                    extension: "py".into(),
                    persistent: true,
                    tty: false,
                    network: false,
                    package_index: Some("http://10.0.0.5/simple/".into()),
                }],
                limits,
            })
        };
        for event in [full, bare, runtimes] {
            let mut out = String::new();
            write_event(&mut out, &event);
            assert_eq!(out, serde_json::to_string(&event).unwrap());
        }
    }
}
