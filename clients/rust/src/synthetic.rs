//! The events the client makes up rather than receives: the synthetic `error` that ends a
//! stream the gateway could not (connection lost, consumer fell behind, session not
//! resumed), and the `gap` for events that went missing without the gateway saying so.
//! [`is_synthetic`] tells them apart.

use sluice_protocol::{ErrorCode, Event, EventKind};
use std::time::{SystemTime, UNIX_EPOCH};

/// True for events the client made up rather than received: their `sequence` is 0, which
/// no event of the gateway's that the client hands out has (sequences start at 1; the
/// gateway's `attached` answers, whose `sequence` may be 0, are never handed out).
///
/// The client synthesizes an `error` event with code `internal` for an execution whose
/// connection ended (for good: reconnecting was off or gave up) before its terminal
/// event, and on the socket stream for a frame from the gateway that could not be
/// decoded; one with code `slow_consumer` for an execution or
/// [`SessionEvents`](crate::SessionEvents) whose consumer fell behind by more than
/// [`ClientOptions::execution_buffer_bytes`](crate::ClientOptions::execution_buffer_bytes)
/// (see [`Execution`](crate::Execution)); one with the gateway's code (such as
/// `unknown_session`) for an execution or [`SessionEvents`](crate::SessionEvents) whose
/// session could not be resumed after a reconnect; and one as the last event of a
/// [`SessionEvents`](crate::SessionEvents) that ends for any reason but a `detach`.
///
/// The `gap` events the client makes up (when an execution's first events, or events in
/// the middle of a session, are missing without the gateway having said so) carry the
/// sequence a gateway `gap` would, `resume_from - 1`.
pub fn is_synthetic(event: &Event) -> bool {
    event.sequence == 0 && event.kind != EventKind::Attached
}

/// A synthetic `error` event with code `internal`; see [`is_synthetic`].
pub(crate) fn synthetic_error(
    id: Option<String>,
    session: Option<String>,
    message: impl Into<String>,
) -> Event {
    synthetic_error_with(ErrorCode::Internal, id, session, message)
}

/// A synthetic `error` event with the given code; see [`is_synthetic`].
pub(crate) fn synthetic_error_with(
    code: ErrorCode,
    id: Option<String>,
    session: Option<String>,
    message: impl Into<String>,
) -> Event {
    let mut event = Event::error(id, code, message);
    event.session = session;
    event.timestamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |since| since.as_secs_f64());
    event
}

/// The synthetic terminal `error` (code `slow_consumer`, as in every Sluice client) for
/// a consumer that fell behind by more than its buffer: an execution the client then
/// cancelled, or a session subscription it detached (`id` `None`).
pub(crate) fn slow_consumer_error(
    id: Option<String>,
    session: Option<String>,
    message: impl Into<String>,
) -> Event {
    synthetic_error_with(ErrorCode::SlowConsumer, id, session, message)
}

/// A `gap` event the client makes up: `missed_from..resume_from` of `session` are lost.
pub(crate) fn gap_event(session: &str, missed_from: u64, resume_from: u64) -> Event {
    let mut event = synthetic_error(
        None,
        Some(session.to_owned()),
        format!(
            "events {missed_from} to {} of the session did not arrive; the stream continues at {resume_from}",
            resume_from.saturating_sub(1)
        ),
    );
    event.kind = EventKind::Gap;
    event.code = None;
    event.sequence = resume_from.saturating_sub(1);
    event.missed_from = Some(missed_from);
    event.resume_from = Some(resume_from);
    event
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synthetic_events_are_recognised() {
        let event = synthetic_error(Some("e1".into()), None, "lost");
        assert!(is_synthetic(&event));
        assert!(event.is_terminal());
        assert_eq!(event.code, Some(ErrorCode::Internal));
        assert!(event.timestamp > 0.0);
    }

    #[test]
    fn a_slow_consumer_is_told_with_code_slow_consumer_on_the_wire() {
        let event = slow_consumer_error(Some("e1".into()), Some("s".into()), "fell behind");
        assert!(is_synthetic(&event));
        assert!(event.is_terminal());
        assert_eq!(event.code, Some(ErrorCode::SlowConsumer));
        assert_eq!(event.code.map(ErrorCode::as_str), Some("slow_consumer"));
        // The code survives encoding, spelled as the other clients spell it. (A synthetic
        // event's sequence 0 is not a gateway event's, so `Event::decode` would refuse it.)
        let json: serde_json::Value = serde_json::from_str(&event.to_json()).unwrap();
        assert_eq!(json["code"], "slow_consumer");
        let decoded: Event = serde_json::from_value(json).unwrap();
        assert_eq!(decoded.code, Some(ErrorCode::SlowConsumer));
    }

    #[test]
    fn made_up_gaps_are_valid_events() {
        let gap = gap_event("s", 3, 7);
        assert_eq!(gap.validate(), Ok(()));
        assert_eq!(gap.sequence, 6);
        assert!(
            !is_synthetic(&gap),
            "a made-up gap carries a gateway-like sequence"
        );
    }
}
