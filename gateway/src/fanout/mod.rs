//! Fan-out: each session's events, numbered and encoded once, delivered to every socket
//! that reads the session.
//!
//! An [`EventStream`] is one session's stream: publishing stamps an event (sequence,
//! timestamp), encodes it once and appends the frame to a bounded replay ring; every
//! socket reading the stream is a reader, a cursor into that ring that takes shared
//! copies of the same bytes (the connection's `SocketLink` holds a socket's cursors). One
//! reader, the *lead* ([`Lead`]), paces the producers; the others never slow anyone
//! down and are told with a `gap` when they fall behind the ring. The control frames a
//! reader gets from the stream rather than from an execution (`attached`, `gap`) are
//! built here too. This module knows nothing of sessions, executions or sockets beyond
//! a [`SocketId`].

mod stream;
#[cfg(test)]
mod tests;

pub(crate) use stream::EventStream;

use axum::extract::ws::Utf8Bytes;
use sluice_protocol::{Event, EventKind};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Identifies a socket among a stream's readers.
pub(crate) type SocketId = u64;

/// How much of a stream stays buffered for replay (at least: events the lead has not
/// taken stay beyond it while the producers wait), and how long a lead may keep the
/// producers waiting without freeing room.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ReplayCaps {
    pub(crate) events: usize,
    pub(crate) bytes: usize,
    pub(crate) lead_timeout: Duration,
    /// How long an idle stream keeps what a reader that acknowledged and went away has
    /// not acknowledged (the session's grace period: it may be back, resuming).
    pub(crate) departed_grace: Duration,
}

impl ReplayCaps {
    /// The caps `config` sets (`--replay-events`, `--replay-bytes`, `--lead-timeout-ms`,
    /// and the session grace period for departed readers).
    pub(crate) fn from_config(config: &crate::config::Config) -> Self {
        Self {
            events: config.replay_events,
            bytes: config.replay_bytes,
            lead_timeout: config.lead_timeout,
            departed_grace: config.session_grace,
        }
    }
}

/// Whether a new reader may pace the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lead {
    /// It leads from now on (the socket whose `execute` made the stream).
    Take,
    /// It may lead: it does if the stream has no lead, or later when the lead leaves,
    /// and it takes the lead from a lead that does not acknowledge by acknowledging
    /// (any reader of a gateway-made session, whose 128-bit id is as good as a
    /// credential: typically its client, reconnected).
    May,
    /// It leads only while the seat is vacant: when the stream has no lead (the socket
    /// that executes in it went away), or when the lead leaves; it never takes the lead
    /// from a lead that is there, however it acknowledges (every reader of a named
    /// session: anyone who knows the name may attach or execute there, so it is
    /// typically the executing client reconnected, but may be anyone).
    IfVacant,
}

/// The `attached` event that answers an `attach`: events after `since` follow.
pub(crate) fn attached_event(session: Option<&str>, since: u64) -> Utf8Bytes {
    let mut event = Event::new(
        EventKind::Attached,
        None,
        format!("attached; events after {since} follow"),
    );
    event.session = session.map(str::to_owned);
    event.sequence = since;
    event.timestamp = (unix_now() * 1e6).round() / 1e6;
    event.resume_from = Some(since + 1);
    Utf8Bytes::from(event.to_json())
}

/// A `gap` event for a reader that will not get `missed_from..resume_from`.
pub(crate) fn gap_event(session: Option<&str>, missed_from: u64, resume_from: u64) -> Utf8Bytes {
    let mut event = Event::new(
        EventKind::Gap,
        None,
        format!(
            "events {missed_from} to {} are no longer buffered for this socket; the stream continues at {resume_from}",
            resume_from - 1
        ),
    );
    event.session = session.map(str::to_owned);
    event.sequence = resume_from - 1;
    event.timestamp = (unix_now() * 1e6).round() / 1e6;
    event.missed_from = Some(missed_from);
    event.resume_from = Some(resume_from);
    Utf8Bytes::from(event.to_json())
}

pub(super) fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}
