//! Rich output in a program's standard output: a record the program writes between its
//! text, `ESC ] sluice;<kind>;<JSON> BEL` (an operating-system command, as terminals
//! use for their own extensions), becomes a `display`, `update_display`, `result` or
//! `input_request` event at exactly its place in the output. The persistent Python kernel writes them
//! for `display()` and a cell's value; any program may (PROTOCOL.md §10.1).
//!
//! The scanner works on decoded text (the record is ASCII and its JSON has no raw
//! control characters, so `BEL` ends it unambiguously), holds back what may be the start
//! of a record until it is complete, and bounds a record's size.

use crate::buffer_budget::Reservation;
use sluice_protocol::{Event, EventKind, MAX_DISPLAY_BYTES};
use std::collections::BTreeMap;

/// What starts a record.
pub(crate) const RECORD_START: &str = "\x1b]sluice;";

/// What ends a record.
const RECORD_END: char = '\x07';

/// Dropped records reported on an execution's stderr; later ones are dropped silently
/// (one line says so), so bad records cannot multiply a program's output.
const MAX_REPORTS: u32 = 10;

/// Most characters of a report: the program's own bytes in it are cut short.
const MAX_REPORT_CHARS: usize = 200;

/// One piece of a program's standard output, in order.
#[derive(Debug, PartialEq)]
pub(super) enum Piece {
    /// Plain output.
    Text(String),
    /// A record, as its event.
    Display(Box<Event>),
    /// A record that was dropped, and why (reported on stderr).
    Dropped(String),
}

/// Finds records in one execution's standard output.
#[derive(Debug)]
pub(super) struct DisplayScanner {
    /// Text that may be the start of a record (or is one, unfinished).
    held: String,
    /// Inside a record too large to keep: everything up to its end is dropped.
    skipping: bool,
    /// What `held` costs, counted against the caller's share of the gateway's buffer
    /// budget: a record that does not fit is dropped.
    memory: Reservation,
    /// Dropped records reported so far.
    reports: u32,
}

impl DisplayScanner {
    /// A scanner whose unfinished records are held against `memory`'s budget.
    pub(super) fn new(memory: Reservation) -> Self {
        Self {
            held: String::new(),
            skipping: false,
            memory,
            reports: 0,
        }
    }

    /// Keeps at most [`MAX_REPORTS`] reports of dropped records in all, among the pieces
    /// from `from` on.
    fn limit_reports(&mut self, out: &mut Vec<Piece>, from: usize) {
        let mut at = from;
        while at < out.len() {
            if let Piece::Dropped(why) = &mut out[at] {
                // A parser's message may quote the program's bytes: cut it short.
                if let Some((end, _)) = why.char_indices().nth(MAX_REPORT_CHARS) {
                    why.truncate(end);
                    why.push_str("...");
                }
                self.reports = self.reports.saturating_add(1);
                if self.reports == MAX_REPORTS + 1 {
                    out[at] = Piece::Dropped(format!(
                        "more display records were dropped; after {MAX_REPORTS} reports they are not reported"
                    ));
                } else if self.reports > MAX_REPORTS {
                    out.remove(at);
                    continue;
                }
            }
            at += 1;
        }
    }

    /// Lets go of what is held.
    fn release(&mut self) -> String {
        self.memory.clear();
        std::mem::take(&mut self.held)
    }

    /// Splits `text`, the next decoded output, into pieces, holding back what may be the
    /// start of a record. Each byte is scanned once, however the output is cut: a
    /// record that arrives a byte at a time is appended to, never searched again.
    pub(super) fn scan(&mut self, id: &str, text: &str, out: &mut Vec<Piece>) {
        let from = out.len();
        self.split(id, text, out);
        self.limit_reports(out, from);
    }

    fn split(&mut self, id: &str, text: &str, out: &mut Vec<Piece>) {
        let mut rest: &str = text;
        if self.skipping {
            match rest.find(RECORD_END) {
                Some(end) => {
                    self.skipping = false;
                    rest = &rest[end + 1..];
                }
                None => return,
            }
        }
        if self.held.starts_with(RECORD_START) {
            // Inside a record: only the new text can hold its end.
            match rest.find(RECORD_END) {
                Some(end) => {
                    self.held.push_str(&rest[..end]);
                    let held = self.release();
                    out.push(record(id, &held[RECORD_START.len()..]));
                    rest = &rest[end + 1..];
                }
                None => {
                    if self.held.len() - RECORD_START.len() + rest.len() > MAX_DISPLAY_BYTES {
                        out.push(too_large());
                        self.release();
                        self.skipping = true;
                    } else if !self.memory.try_grow(rest.len()) {
                        out.push(no_room());
                        self.release();
                        self.skipping = true;
                    } else {
                        self.held.push_str(rest);
                    }
                    return;
                }
            }
        }
        // What is held now is at most a few bytes that may begin a record's start.
        let joined;
        if !self.held.is_empty() {
            joined = self.release() + rest;
            rest = &joined;
        }
        loop {
            let Some(start) = rest.find(RECORD_START) else {
                // The end may be the beginning of a record's start: keep it for later.
                let keep = partial_start(rest);
                push_text(out, &rest[..rest.len() - keep]);
                self.held.push_str(&rest[rest.len() - keep..]);
                return;
            };
            push_text(out, &rest[..start]);
            let body = &rest[start + RECORD_START.len()..];
            match body.find(RECORD_END) {
                Some(end) => {
                    out.push(record(id, &body[..end]));
                    rest = &body[end + 1..];
                }
                None if body.len() > MAX_DISPLAY_BYTES => {
                    out.push(too_large());
                    self.skipping = true;
                    return;
                }
                None => {
                    let unfinished = &rest[start..];
                    if self.memory.try_grow(unfinished.len()) {
                        self.held.push_str(unfinished);
                    } else {
                        out.push(no_room());
                        self.skipping = true;
                    }
                    return;
                }
            }
        }
    }

    /// The output ended: what was held back is plain text after all (an unfinished
    /// record is reported dropped).
    pub(super) fn finish(&mut self, out: &mut Vec<Piece>) {
        let from = out.len();
        self.finish_held(out);
        self.limit_reports(out, from);
    }

    fn finish_held(&mut self, out: &mut Vec<Piece>) {
        self.skipping = false;
        let held = self.release();
        if held.starts_with(RECORD_START) {
            out.push(Piece::Dropped(
                "a display record was cut off by the end of the output".to_owned(),
            ));
        } else {
            push_text(out, &held);
        }
    }
}

fn push_text(out: &mut Vec<Piece>, text: &str) {
    if text.is_empty() {
        return;
    }
    if let Some(Piece::Text(last)) = out.last_mut() {
        last.push_str(text);
    } else {
        out.push(Piece::Text(text.to_owned()));
    }
}

/// How many bytes at the end of `text` are a proper beginning of [`RECORD_START`].
fn partial_start(text: &str) -> usize {
    (1..RECORD_START.len())
        .rev()
        .find(|&n| text.ends_with(&RECORD_START[..n]))
        .unwrap_or(0)
}

fn no_room() -> Piece {
    Piece::Dropped(
        "a display record was dropped: the gateway's buffer budget has no room to hold it until it ends"
            .to_owned(),
    )
}

fn too_large() -> Piece {
    Piece::Dropped(format!(
        "a display record over {MAX_DISPLAY_BYTES} bytes was dropped"
    ))
}

/// The record's wire form: `{"data": {mime: value}, "metadata": {...}, "display_id": "...",
/// "execution_count": n}`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Record {
    data: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    metadata: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default)]
    display_id: Option<String>,
    #[serde(default)]
    execution_count: Option<u64>,
}

/// An `input_request` record: the program waits for a line of stdin.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct InputRecord {
    #[serde(default)]
    prompt: String,
    #[serde(default)]
    password: bool,
}

/// The event of one complete record `kind;json`.
fn record(id: &str, body: &str) -> Piece {
    if body.len() > MAX_DISPLAY_BYTES {
        return too_large();
    }
    let Some((kind, json)) = body.split_once(';') else {
        return Piece::Dropped("a display record without a kind was dropped".to_owned());
    };
    let kind = match kind {
        "display" => EventKind::Display,
        "update_display" => EventKind::UpdateDisplay,
        "result" => EventKind::Result,
        "input_request" => return input_request(id, json),
        other => {
            return Piece::Dropped(format!(
                "a display record of unknown kind {:?} was dropped (known: display, update_display, result, input_request)",
                clip(other)
            ))
        }
    };
    let record: Record = match serde_json::from_str(json) {
        Ok(record) => record,
        Err(err) => {
            return Piece::Dropped(format!(
                "a {kind} record that is not valid was dropped: {err}"
            ))
        }
    };
    if let Some(why) = check(kind, &record) {
        return Piece::Dropped(format!("a {kind} record was dropped: {why}"));
    }
    let plain = match record.data.get("text/plain") {
        Some(serde_json::Value::String(text)) => text.clone(),
        _ => String::new(),
    };
    let mut event = Event::new(kind, Some(id.to_owned()), plain);
    event.bundle = Some(record.data);
    event.metadata = Some(serde_json::Value::Object(
        record.metadata.unwrap_or_default(),
    ));
    event.display_id = record.display_id;
    event.execution_count = record.execution_count;
    Piece::Display(Box::new(event))
}

/// `input_request`: its prompt is the event's `data`.
fn input_request(id: &str, json: &str) -> Piece {
    match serde_json::from_str::<InputRecord>(json) {
        Ok(record) => {
            let mut event = Event::new(EventKind::InputRequest, Some(id.to_owned()), record.prompt);
            event.password = Some(record.password);
            Piece::Display(Box::new(event))
        }
        Err(err) => Piece::Dropped(format!(
            "an input_request record that is not valid was dropped: {err}"
        )),
    }
}

/// What is wrong with a record, if anything: MIME types name their data, which is text
/// except for JSON types; an update names what it updates.
fn check(kind: EventKind, record: &Record) -> Option<String> {
    if record.data.is_empty() {
        return Some("its data is empty".to_owned());
    }
    for (mime, value) in &record.data {
        if !is_mime_type(mime) {
            return Some(format!("{:?} is not a MIME type", clip(mime)));
        }
        let json = mime == "application/json" || mime.ends_with("+json");
        if !json && !value.is_string() {
            return Some(format!("the data of {mime} must be a string"));
        }
    }
    match &record.display_id {
        Some(display_id) if display_id.is_empty() || display_id.len() > 128 => {
            Some("display_id must be 1 to 128 bytes".to_owned())
        }
        None if kind == EventKind::UpdateDisplay => {
            Some("update_display needs a display_id".to_owned())
        }
        _ => None,
    }
}

/// At most a few dozen characters of the program's own text, for a report.
fn clip(text: &str) -> String {
    const MOST: usize = 40;
    match text.char_indices().nth(MOST) {
        Some((end, _)) => format!("{}...", &text[..end]),
        None => text.to_owned(),
    }
}

/// `type/subtype`, each of token characters (RFC 6838, loosely).
fn is_mime_type(text: &str) -> bool {
    let token = |part: &str| {
        !part.is_empty()
            && part.len() <= 127
            && part
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
    };
    matches!(text.split_once('/'), Some((kind, sub)) if token(kind) && token(sub))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scanner() -> DisplayScanner {
        DisplayScanner::new(crate::buffer_budget::BufferBudget::unlimited().empty())
    }

    fn scan_all(chunks: &[&str]) -> Vec<Piece> {
        let mut scanner = scanner();
        let mut out = Vec::new();
        for chunk in chunks {
            scanner.scan("e", chunk, &mut out);
        }
        scanner.finish(&mut out);
        out
    }

    fn kinds(pieces: &[Piece]) -> Vec<String> {
        pieces
            .iter()
            .map(|p| match p {
                Piece::Text(t) => format!("text {t}"),
                Piece::Display(e) => format!("{} {}", e.kind, e.data),
                Piece::Dropped(why) => format!("dropped {why}"),
            })
            .collect()
    }

    const HTML: &str =
        "\x1b]sluice;display;{\"data\":{\"text/plain\":\"T\",\"text/html\":\"<b>T</b>\"}}\x07";

    #[test]
    fn a_record_between_text_keeps_its_place() {
        let pieces = scan_all(&[&format!("before\n{HTML}after\n")]);
        assert_eq!(
            kinds(&pieces),
            ["text before\n", "display T", "text after\n"]
        );
    }

    #[test]
    fn a_record_split_anywhere_is_put_together() {
        let whole = format!("a{HTML}b");
        for cut in 1..whole.len() {
            let pieces = scan_all(&[&whole[..cut], &whole[cut..]]);
            assert_eq!(
                kinds(&pieces),
                ["text a", "display T", "text b"],
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn a_record_written_a_character_at_a_time_comes_whole() {
        let whole = format!("a{HTML}b{HTML}");
        let chunks: Vec<String> = whole.chars().map(String::from).collect();
        let chunks: Vec<&str> = chunks.iter().map(String::as_str).collect();
        let pieces = scan_all(&chunks);
        assert_eq!(
            kinds(&pieces),
            ["text a", "display T", "text b", "display T"]
        );
    }

    #[test]
    fn an_oversized_record_in_small_pieces_is_dropped_without_holding_it() {
        let mut scanner = scanner();
        let mut out = Vec::new();
        scanner.scan(
            "e",
            "\x1b]sluice;display;{\"data\":{\"text/plain\":\"",
            &mut out,
        );
        let piece = "x".repeat(64 * 1024);
        for _ in 0..(MAX_DISPLAY_BYTES / piece.len() + 1) {
            scanner.scan("e", &piece, &mut out);
        }
        assert!(
            matches!(&out[..], [Piece::Dropped(why)] if why.contains("over")),
            "{out:?}"
        );
        assert!(
            scanner.held.capacity() < 1024,
            "the dropped record is not kept"
        );
        scanner.scan("e", "xx\"}}\x07after", &mut out);
        scanner.finish(&mut out);
        assert_eq!(out.last(), Some(&Piece::Text("after".into())));
    }

    #[test]
    fn a_record_the_budget_cannot_hold_is_dropped_and_gives_its_bytes_back() {
        let budget = crate::buffer_budget::BufferBudget::new(1024, 100);
        let mut scanner = DisplayScanner::new(budget.empty());
        let mut out = Vec::new();
        scanner.scan(
            "e",
            "\x1b]sluice;display;{\"data\":{\"text/plain\":\"",
            &mut out,
        );
        assert!(budget.used() > 0, "an unfinished record is counted");
        scanner.scan("e", &"x".repeat(2048), &mut out);
        assert!(
            matches!(&out[..], [Piece::Dropped(why)] if why.contains("budget")),
            "{out:?}"
        );
        assert_eq!(budget.used(), 0);
        scanner.scan("e", "\"}}\x07ok", &mut out);
        assert_eq!(out.last(), Some(&Piece::Text("ok".into())));
    }

    #[test]
    fn text_that_only_looks_like_a_start_is_text() {
        let pieces = scan_all(&["x\x1b]slu", "ice is not a record\n", "\x1b]"]);
        assert_eq!(kinds(&pieces), ["text x\x1b]sluice is not a record\n\x1b]"]);
    }

    #[test]
    fn bad_records_are_dropped_with_the_reason_and_the_text_goes_on() {
        let pieces = scan_all(&[
            "\x1b]sluice;display;not json\x07",
            "\x1b]sluice;paint;{}\x07",
            "\x1b]sluice;update_display;{\"data\":{\"text/plain\":\"x\"}}\x07",
            "\x1b]sluice;display;{\"data\":{\"image/png\":5}}\x07",
            "\x1b]sluice;display;{\"data\":{\"nomime\":\"x\"}}\x07ok",
        ]);
        let kinds = kinds(&pieces);
        assert_eq!(kinds.len(), 6, "{kinds:?}");
        assert!(kinds[0].contains("not valid"), "{kinds:?}");
        assert!(kinds[1].contains("unknown kind"), "{kinds:?}");
        assert!(kinds[2].contains("needs a display_id"), "{kinds:?}");
        assert!(kinds[3].contains("must be a string"), "{kinds:?}");
        assert!(kinds[4].contains("not a MIME type"), "{kinds:?}");
        assert_eq!(kinds[5], "text ok");
    }

    #[test]
    fn json_types_carry_any_value_and_metadata_and_ids_come_through() {
        let record = "\x1b]sluice;result;{\"data\":{\"application/json\":{\"a\":[1]},\"text/plain\":\"{'a': [1]}\"},\"metadata\":{\"k\":1},\"display_id\":\"d\",\"execution_count\":3}\x07";
        let pieces = scan_all(&[record]);
        let Some(Piece::Display(event)) = pieces.first() else {
            panic!("{pieces:?}")
        };
        assert_eq!(event.kind, EventKind::Result);
        assert_eq!(event.data, "{'a': [1]}");
        assert_eq!(event.execution_count, Some(3));
        assert_eq!(event.display_id.as_deref(), Some("d"));
        assert_eq!(event.metadata, Some(serde_json::json!({"k": 1})));
    }

    #[test]
    fn an_oversized_record_is_dropped_and_what_follows_it_is_kept() {
        let big = "x".repeat(MAX_DISPLAY_BYTES);
        let pieces = scan_all(&[
            "\x1b]sluice;display;{\"data\":{\"text/plain\":\"",
            &big,
            "\"}}\x07after",
        ]);
        assert_eq!(kinds(&pieces).len(), 2, "{:?}", kinds(&pieces).first());
        assert!(matches!(&pieces[0], Piece::Dropped(why) if why.contains("over")));
        assert_eq!(pieces[1], Piece::Text("after".into()));
    }

    #[test]
    fn an_input_request_carries_its_prompt_and_whether_it_is_a_password() {
        let pieces = scan_all(&[
            "\x1b]sluice;input_request;{\"prompt\":\"Name: \"}\x07",
            "\x1b]sluice;input_request;{\"prompt\":\"Secret: \",\"password\":true}\x07",
            "\x1b]sluice;input_request;{\"prompt\":5}\x07",
        ]);
        let [Piece::Display(name), Piece::Display(secret), Piece::Dropped(why)] = &pieces[..]
        else {
            panic!("{pieces:?}")
        };
        assert_eq!(
            (name.kind, name.data.as_str(), name.password),
            (EventKind::InputRequest, "Name: ", Some(false))
        );
        assert_eq!(
            (secret.data.as_str(), secret.password),
            ("Secret: ", Some(true))
        );
        assert!(why.contains("not valid"), "{why}");
    }

    #[test]
    fn reports_are_short_and_few_whatever_the_records() {
        let long_kind = format!("\x1b]sluice;{};{{}}\x07", "k".repeat(100_000));
        let mut chunks = vec![long_kind.as_str()];
        let bad = "\x1b]sluice;display;nope\x07";
        chunks.extend(std::iter::repeat_n(bad, 50));
        chunks.push("end");
        let pieces = scan_all(&chunks);
        let reports: Vec<&String> = pieces
            .iter()
            .filter_map(|p| match p {
                Piece::Dropped(why) => Some(why),
                _ => None,
            })
            .collect();
        assert_eq!(reports.len(), 11, "{reports:?}");
        assert!(reports.iter().all(|why| why.len() < 300), "{reports:?}");
        assert!(reports[10].contains("not reported"), "{reports:?}");
        assert_eq!(pieces.last(), Some(&Piece::Text("end".into())));
    }

    #[test]
    fn an_unfinished_record_at_the_end_is_reported() {
        let pieces = scan_all(&["text\x1b]sluice;display;{\"da"]);
        assert_eq!(kinds(&pieces).len(), 2);
        assert!(matches!(&pieces[1], Piece::Dropped(why) if why.contains("cut off")));
    }
}
