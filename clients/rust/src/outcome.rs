//! [`Outcome`]: everything an execution produced, collected by
//! [`Execution::wait`](crate::Execution::wait).

use crate::ClientError;
use sluice_protocol::{Encoding, ErrorCode, Event, EventKind, LimitKind, Usage};

/// The complete record of one finished execution.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Outcome {
    /// The execution id.
    pub id: String,
    /// Standard output as text: the `stdout` events joined in order. In base64 mode each
    /// chunk is decoded first and the joined bytes are read as UTF-8 (invalid sequences
    /// become U+FFFD); use [`Outcome::stdout_bytes`] for the exact bytes.
    pub stdout: String,
    /// Standard error as text, built like [`Outcome::stdout`].
    pub stderr: String,
    /// Every event of the execution in arrival order, the terminal one included.
    pub events: Vec<Event>,
    /// The terminal event (`completed`, `cancelled`, `resource_limit` or `error`).
    pub terminal: Event,
}

impl Outcome {
    /// Builds an outcome from the events of one execution; the last must be terminal.
    pub(crate) fn from_events(id: String, events: Vec<Event>) -> Result<Self, ClientError> {
        let terminal = match events.last() {
            Some(last) if last.is_terminal() => last.clone(),
            _ => {
                return Err(ClientError::Protocol(format!(
                    "the events of execution {id:?} do not end with a terminal event"
                )))
            }
        };
        let stdout = into_text(collect_output(&events, EventKind::Stdout)?);
        let stderr = into_text(collect_output(&events, EventKind::Stderr)?);
        Ok(Self {
            id,
            stdout,
            stderr,
            events,
            terminal,
        })
    }

    /// The type of the terminal event.
    pub fn kind(&self) -> EventKind {
        self.terminal.kind
    }

    /// The exit status, when the program exited by itself (`completed` without a signal).
    pub fn exit_code(&self) -> Option<i32> {
        (self.kind() == EventKind::Completed)
            .then_some(self.terminal.exit_code)
            .flatten()
    }

    /// The signal that killed the program, when it was not sent by Sluice (`completed`
    /// with a signal).
    pub fn signal(&self) -> Option<i32> {
        (self.kind() == EventKind::Completed)
            .then_some(self.terminal.signal)
            .flatten()
    }

    /// True when the program completed with exit status 0.
    pub fn success(&self) -> bool {
        self.exit_code() == Some(0)
    }

    /// True when the execution was stopped by a `cancel` (or its socket closing).
    pub fn cancelled(&self) -> bool {
        self.kind() == EventKind::Cancelled
    }

    /// The limit hit, when the execution ended with `resource_limit`.
    pub fn limit(&self) -> Option<LimitKind> {
        (self.kind() == EventKind::ResourceLimit)
            .then_some(self.terminal.limit)
            .flatten()
    }

    /// The error code, when the execution ended with an `error` event.
    pub fn error_code(&self) -> Option<ErrorCode> {
        (self.kind() == EventKind::Error)
            .then_some(self.terminal.code)
            .flatten()
    }

    /// The error message, when the execution ended with an `error` event.
    pub fn error_message(&self) -> Option<&str> {
        (self.kind() == EventKind::Error).then_some(self.terminal.data.as_str())
    }

    /// What the execution used; present when it started.
    pub fn usage(&self) -> Option<&Usage> {
        self.terminal.usage.as_ref()
    }

    /// The session the execution ran in (absent for refusals before joining one).
    pub fn session(&self) -> Option<&str> {
        self.terminal.session.as_deref()
    }

    /// The rich output of the execution, in order: its `display` and `update_display`
    /// events (PROTOCOL.md 10.1). An update replaces the earlier display with its
    /// `display_id`.
    pub fn displays(&self) -> impl Iterator<Item = &Event> {
        self.events
            .iter()
            .filter(|e| matches!(e.kind, EventKind::Display | EventKind::UpdateDisplay))
    }

    /// A persistent cell's result: the `result` event with the value of its last
    /// expression as a MIME bundle, when it had one.
    pub fn value(&self) -> Option<&Event> {
        self.events.iter().find(|e| e.kind == EventKind::Result)
    }

    /// The exception a persistent cell raised (`ename`, `evalue`, `traceback`), from its
    /// terminal event.
    pub fn exception(&self) -> Option<&sluice_protocol::CellException> {
        self.terminal.exception.as_ref()
    }

    /// A persistent cell's number in its interpreter (from 1), from its terminal event.
    pub fn execution_count(&self) -> Option<u64> {
        self.terminal.execution_count
    }

    /// The program's process id, from the `started` event.
    pub fn pid(&self) -> Option<u32> {
        self.events
            .iter()
            .find(|e| e.kind == EventKind::Started)
            .and_then(|e| e.pid)
    }

    /// The exact bytes of standard output (base64 chunks decoded).
    pub fn stdout_bytes(&self) -> Result<Vec<u8>, ClientError> {
        collect_output(&self.events, EventKind::Stdout)
    }

    /// The exact bytes of standard error (base64 chunks decoded).
    pub fn stderr_bytes(&self) -> Result<Vec<u8>, ClientError> {
        collect_output(&self.events, EventKind::Stderr)
    }
}

fn collect_output(events: &[Event], kind: EventKind) -> Result<Vec<u8>, ClientError> {
    let mut bytes = Vec::new();
    for event in events.iter().filter(|e| e.kind == kind) {
        match event.encoding {
            Some(Encoding::Base64) => {
                let chunk = decode_base64(&event.data).ok_or_else(|| {
                    ClientError::Protocol(format!(
                        "{kind} event {} carries invalid base64",
                        event.sequence
                    ))
                })?;
                bytes.extend_from_slice(&chunk);
            }
            _ => bytes.extend_from_slice(event.data.as_bytes()),
        }
    }
    Ok(bytes)
}

fn into_text(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes)
        .unwrap_or_else(|err| String::from_utf8_lossy(err.as_bytes()).into_owned())
}

/// Decodes standard base64 with padding (what the gateway sends); `None` if invalid.
fn decode_base64(text: &str) -> Option<Vec<u8>> {
    let input = text.as_bytes();
    if !input.len().is_multiple_of(4) {
        return None;
    }
    let quads = input.len() / 4;
    let mut out = Vec::with_capacity(quads * 3);
    for (index, quad) in input.chunks_exact(4).enumerate() {
        let padding = quad.iter().rev().take_while(|&&b| b == b'=').count();
        if padding > 2 || (padding > 0 && index + 1 != quads) {
            return None;
        }
        let mut bits: u32 = 0;
        for &symbol in &quad[..4 - padding] {
            bits = bits << 6 | u32::from(sextet(symbol)?);
        }
        bits <<= 6 * padding;
        let [_, a, b, c] = bits.to_be_bytes();
        out.extend_from_slice(&[a, b, c][..3 - padding]);
    }
    Some(out)
}

fn sextet(symbol: u8) -> Option<u8> {
    match symbol {
        b'A'..=b'Z' => Some(symbol - b'A'),
        b'a'..=b'z' => Some(symbol - b'a' + 26),
        b'0'..=b'9' => Some(symbol - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: EventKind, sequence: u64, data: &str) -> Event {
        let mut event = Event::new(kind, Some("e1".into()), data);
        event.sequence = sequence;
        event.timestamp = 1.0;
        event.session = Some("s".into());
        event
    }

    fn completed(sequence: u64, exit_code: Option<i32>, signal: Option<i32>) -> Event {
        Event {
            exit_code,
            signal,
            usage: Some(Usage::default()),
            ..event(EventKind::Completed, sequence, "")
        }
    }

    #[test]
    fn collects_text_output_in_order() {
        let events = vec![
            Event {
                pid: Some(42),
                ..event(EventKind::Started, 1, "")
            },
            event(EventKind::Stdout, 2, "hel"),
            event(EventKind::Stderr, 3, "oops\n"),
            event(EventKind::Stdout, 4, "lo\n"),
            completed(5, Some(0), None),
        ];
        let outcome = Outcome::from_events("e1".into(), events).unwrap();
        assert_eq!(outcome.stdout, "hello\n");
        assert_eq!(outcome.stderr, "oops\n");
        assert_eq!(outcome.events.len(), 5);
        assert_eq!(outcome.kind(), EventKind::Completed);
        assert_eq!(outcome.exit_code(), Some(0));
        assert!(outcome.success());
        assert_eq!(outcome.signal(), None);
        assert_eq!(outcome.pid(), Some(42));
        assert_eq!(outcome.session(), Some("s"));
        assert!(outcome.usage().is_some());
        assert_eq!(outcome.error_code(), None);
    }

    #[test]
    fn reports_signal_and_failure() {
        let outcome = Outcome::from_events("e1".into(), vec![completed(1, None, Some(9))]).unwrap();
        assert_eq!(outcome.exit_code(), None);
        assert_eq!(outcome.signal(), Some(9));
        assert!(!outcome.success());

        let outcome = Outcome::from_events("e1".into(), vec![completed(1, Some(3), None)]).unwrap();
        assert_eq!(outcome.exit_code(), Some(3));
        assert!(!outcome.success());
    }

    #[test]
    fn reports_errors_limits_and_cancellation() {
        let error = Event::error(Some("e1".into()), ErrorCode::UnknownLanguage, "no cobol");
        let outcome = Outcome::from_events("e1".into(), vec![error]).unwrap();
        assert_eq!(outcome.error_code(), Some(ErrorCode::UnknownLanguage));
        assert_eq!(outcome.error_message(), Some("no cobol"));
        assert_eq!(outcome.exit_code(), None);
        assert!(!outcome.success());

        let limit = Event {
            limit: Some(LimitKind::Timeout),
            limit_value: Some(100),
            ..event(EventKind::ResourceLimit, 2, "")
        };
        let outcome = Outcome::from_events("e1".into(), vec![limit]).unwrap();
        assert_eq!(outcome.limit(), Some(LimitKind::Timeout));
        assert_eq!(outcome.error_message(), None);

        let outcome =
            Outcome::from_events("e1".into(), vec![event(EventKind::Cancelled, 2, "")]).unwrap();
        assert!(outcome.cancelled());
        assert_eq!(outcome.limit(), None);
    }

    #[test]
    fn requires_a_terminal_event() {
        let events = vec![event(EventKind::Started, 1, "")];
        assert!(matches!(
            Outcome::from_events("e1".into(), events),
            Err(ClientError::Protocol(_))
        ));
        assert!(Outcome::from_events("e1".into(), Vec::new()).is_err());
    }

    #[test]
    fn decodes_base64_chunks_separately() {
        let b64 = |data: &str| Event {
            encoding: Some(Encoding::Base64),
            ..event(EventKind::Stdout, 1, data)
        };
        // "hé" split inside the two-byte character, each chunk padded on its own.
        let events = vec![
            b64("aMM="),
            b64("qQ=="),
            b64("/w=="),
            completed(4, Some(0), None),
        ];
        let outcome = Outcome::from_events("e1".into(), events).unwrap();
        assert_eq!(outcome.stdout_bytes().unwrap(), b"h\xc3\xa9\xff");
        assert_eq!(outcome.stdout, "hé\u{fffd}");
        assert_eq!(outcome.stderr_bytes().unwrap(), b"");
    }

    #[test]
    fn rejects_invalid_base64() {
        let bad = Event {
            encoding: Some(Encoding::Base64),
            ..event(EventKind::Stdout, 1, "a")
        };
        let events = vec![bad, completed(2, Some(0), None)];
        assert!(matches!(
            Outcome::from_events("e1".into(), events),
            Err(ClientError::Protocol(_))
        ));
    }

    #[test]
    fn base64_vectors() {
        let cases: [(&str, &[u8]); 7] = [
            ("", b""),
            ("Zg==", b"f"),
            ("Zm8=", b"fo"),
            ("Zm9v", b"foo"),
            ("Zm9vYg==", b"foob"),
            ("Zm9vYmE=", b"fooba"),
            ("Zm9vYmFy", b"foobar"),
        ];
        for (text, bytes) in cases {
            assert_eq!(decode_base64(text).as_deref(), Some(bytes), "{text}");
        }
        assert_eq!(
            decode_base64("+/+/").as_deref(),
            Some(&[0xfb, 0xff, 0xbf][..])
        );
        for bad in ["Zg=", "Zg==Zg==", "Z===", "Zm9*", "Zm=v", "===="] {
            assert_eq!(decode_base64(bad), None, "{bad}");
        }
    }
}
