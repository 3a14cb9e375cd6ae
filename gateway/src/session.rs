//! Sessions and event streams: where events get their sequence number and timestamp and
//! are encoded, once, into the frame that goes on the wire.
//!
//! A [`Session`] is a named stream shared by the executions that run in it. Each socket
//! also has a stream of its own for refusals that belong to no session. Both are an
//! [`EventStream`]: stamping and encoding happen under one short lock, so sequence order
//! is queue order.

use axum::extract::ws::{Message, Utf8Bytes};
use dashmap::DashMap;
use sluice_protocol::Event;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;

/// Sequence numbering and clock of one stream of events.
#[derive(Debug)]
struct StreamClock {
    next_sequence: u64,
    last_timestamp: f64,
}

impl StreamClock {
    fn stamp(&mut self, event: &mut Event) {
        event.sequence = self.next_sequence;
        self.next_sequence += 1;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        // Round to microseconds and never step back, even if the wall clock does.
        let now = (now * 1e6).round() / 1e6;
        self.last_timestamp = self.last_timestamp.max(now);
        event.timestamp = self.last_timestamp;
    }
}

/// One ordered stream of events: a session's, or a socket's own.
#[derive(Debug)]
pub(crate) struct EventStream {
    /// `None` for a socket's own stream.
    session: Option<Arc<str>>,
    clock: Mutex<StreamClock>,
}

/// Why an event could not be delivered.
#[derive(Debug, thiserror::Error)]
#[error("the socket is gone")]
pub(crate) struct SocketGone;

impl EventStream {
    pub(crate) fn new(session: Option<Arc<str>>) -> Self {
        Self {
            session,
            clock: Mutex::new(StreamClock {
                next_sequence: 1,
                last_timestamp: 0.0,
            }),
        }
    }

    pub(crate) fn session_id(&self) -> Option<&Arc<str>> {
        self.session.as_ref()
    }

    /// Stamps and encodes `event` and hands it to `permit`'s queue, all under the stream's
    /// lock, so two executions in one session cannot reorder their sequence numbers.
    pub(crate) fn send_with(&self, permit: mpsc::Permit<'_, Message>, mut event: Event) {
        event.session = self.session.as_deref().map(str::to_owned);
        let mut clock = self.clock.lock().unwrap_or_else(PoisonError::into_inner);
        clock.stamp(&mut event);
        permit.send(Message::Text(Utf8Bytes::from(event.to_json())));
    }

    /// Waits for room in `outbound`, then sends `event`.
    pub(crate) async fn send(
        &self,
        outbound: &mpsc::Sender<Message>,
        event: Event,
    ) -> Result<(), SocketGone> {
        let permit = outbound.reserve().await.map_err(|_| SocketGone)?;
        self.send_with(permit, event);
        Ok(())
    }
}

/// A session: the stream its executions share.
#[derive(Debug)]
pub(crate) struct Session {
    pub(crate) stream: EventStream,
    /// Gateway-made sessions end with their one execution; client-named ones with their socket.
    pub(crate) ephemeral: bool,
}

/// Every live session by id, shared by all connections. It exists so that a session id
/// names one session gateway-wide.
#[derive(Debug, Default)]
pub(crate) struct SessionRegistry {
    sessions: DashMap<Arc<str>, Arc<Session>>,
}

/// The result of looking up a session for an `execute`.
#[derive(Debug)]
pub(crate) enum Claim {
    /// A new session was created for this socket.
    Created(Arc<Session>),
    /// The session exists and belongs to another socket.
    InUse,
}

impl SessionRegistry {
    /// Creates a session named `id` for `owner`, unless the name is taken.
    pub(crate) fn claim(&self, id: &str, ephemeral: bool) -> Claim {
        use dashmap::mapref::entry::Entry;
        let key: Arc<str> = Arc::from(id);
        match self.sessions.entry(key.clone()) {
            Entry::Occupied(_) => Claim::InUse,
            Entry::Vacant(slot) => {
                let session = Arc::new(Session {
                    stream: EventStream::new(Some(key)),
                    ephemeral,
                });
                slot.insert(session.clone());
                Claim::Created(session)
            }
        }
    }

    /// Creates a session with a fresh, unguessable id (128 random bits, hex).
    pub(crate) fn create_ephemeral(&self) -> Arc<Session> {
        loop {
            if let Claim::Created(session) = self.claim(&random_session_id(), true) {
                return session;
            }
        }
    }

    /// Removes `session` if it is still the one registered under its id.
    pub(crate) fn release(&self, session: &Session) {
        if let Some(id) = session.stream.session_id() {
            self.sessions
                .remove_if(id, |_, live| std::ptr::eq(Arc::as_ptr(live), session));
        }
    }
}

fn random_session_id() -> String {
    let mut bytes = [0u8; 16];
    if getrandom::fill(&mut bytes).is_err() {
        // The OS random source failing is not something a client can cause; fall back to
        // a clock-and-counter id, which is unique though guessable, and say so.
        tracing::error!("the OS random source failed; session id is unique but guessable");
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        bytes = (t ^ u128::from(n) << 64).to_le_bytes();
    }
    const HEX: &[u8; 16] = b"0123456789abcdef";
    bytes
        .iter()
        .flat_map(|b| [HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]])
        .map(char::from)
        .collect()
}
