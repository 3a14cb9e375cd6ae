//! Routing: every incoming message to where it belongs. An event of a running execution
//! goes to its [`Execution`](crate::Execution)'s buffer, an event of a session to every
//! [`SessionEvents`](crate::SessionEvents) reading it, an event that belongs to no one to
//! [`Client::socket_events`](crate::Client::socket_events).
//!
//! Every event of a session carries its sequence (from 1, no gaps). The task keeps, per
//! session it reads, the highest sequence it has processed ([`SessionState::position`]):
//! an event at or below it is a duplicate (a replay after a resume or a rewind) and
//! reaches only the subscribers that have not seen it. Lost events are announced by a
//! `gap`, the gateway's or one the client makes up (a silent hole, or an execution whose
//! first events are missing), to every consumer that would have had some of them.

use super::Connection;
use crate::queue::{EventSender, Push};
use crate::synthetic::{gap_event, synthetic_error};
use crate::ClientError;
use sluice_protocol::{ErrorCode, Event, EventKind};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc::error::TrySendError;
use tokio_tungstenite::tungstenite::Message;
use tracing::{debug, warn};

/// Where the events of one running execution go.
pub(super) struct Route {
    /// Tells this execution apart from an earlier one with the same id whose `Execution`
    /// handle may still be alive.
    pub(super) serial: u64,
    /// Sending half of the execution's event buffer; the `Execution` holds the receiver.
    /// `None` once the `Execution` is gone or its consumer fell behind: its events are
    /// discarded, and the route stays until the terminal event so the id counts as
    /// running exactly as long as the gateway says it is.
    pub(super) events: Option<EventSender>,
    /// A `cancel` frame was sent for it; it is sent again only after a reconnect.
    pub(super) cancel_sent: bool,
    /// The consumer fell behind: the bytes its buffer would have held, over the budget.
    pub(super) fell_behind: Option<usize>,
    /// The session: named in the request, or the gateway-made one its first event names.
    pub(super) session: Option<String>,
    /// The request named its session.
    pub(super) named: bool,
    /// An event of the execution has arrived: the gateway has it.
    pub(super) confirmed: bool,
    /// Counted in its session's `routes`.
    pub(super) counted: bool,
    /// The `execute` frame of an execution in a named session that no event has answered
    /// yet: sent again after a reconnect. The gateway answers an id its session already
    /// knows from the session, so the program never runs twice.
    pub(super) execute: Option<String>,
    /// Its `execute` was sent again after a reconnect and not answered yet.
    pub(super) resent: bool,
}

/// What the task knows of one session the socket reads.
#[derive(Debug, Default)]
pub(super) struct SessionState {
    /// The highest sequence processed, once one was (or the `since` it was attached
    /// after): an event at or below it is a duplicate.
    pub(super) position: Option<u64>,
    /// Routes in this session that have received an event.
    pub(super) routes: usize,
    /// The subscribers reading it (keys of `Connection::subscribers`).
    pub(super) subscribers: Vec<u64>,
    /// Made by the gateway for one of this client's executions: forgotten once that
    /// has ended.
    pub(super) ephemeral: bool,
    /// The last sequence acknowledged on the current socket.
    pub(super) acked: u64,
    /// Events and bytes processed since the last acknowledgement.
    pub(super) unacked_events: usize,
    pub(super) unacked_bytes: usize,
    /// The last `gap`, for an execution whose first events it may have swallowed.
    pub(super) last_gap: Option<Event>,
}

impl SessionState {
    /// Reads the session afresh from `since` on: nothing of it is processed or
    /// acknowledged on this socket yet.
    pub(super) fn restart(&mut self, since: u64) {
        self.position = Some(since);
        self.acked = 0;
        self.unacked_events = 0;
        self.unacked_bytes = 0;
        self.last_gap = None;
    }
}

pub(super) const TERMINAL_TYPES: [&str; 4] = ["completed", "cancelled", "resource_limit", "error"];

impl<S> Connection<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    /// One message from the socket: an event to route, something that is not one (logged
    /// and told on the socket stream), or the gateway's close frame.
    pub(super) fn on_message(&mut self, message: Message) {
        if matches!(message, Message::Text(_)) {
            self.received = true;
        }
        match message {
            Message::Text(text) => match Event::decode(text.as_str()) {
                Ok(event) if event.session.is_some() => {
                    self.on_session_event(event, text.len());
                }
                Ok(event) => self.on_socket_stream(event),
                Err(err) => self.on_undecodable(text.as_str(), &err.to_string()),
            },
            Message::Binary(bytes) => {
                let message = format!(
                    "the gateway sent a binary frame of {} bytes; Sluice uses text frames only",
                    bytes.len()
                );
                warn!("{message}");
                self.publish_socket_event(synthetic_error(None, None, message));
            }
            Message::Close(frame) => {
                self.peer_close = Some(match frame {
                    Some(frame) => format!(
                        "code {}: {:?}",
                        u16::from(frame.code),
                        frame.reason.as_str()
                    ),
                    None => "no close code".to_owned(),
                });
            }
            // tungstenite answers pings itself.
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
        }
    }

    /// An event on the socket's own stream (no session): the refusal of a frame of the
    /// client's own (an `attach`, a `detach`, a repeated `execute`), the refusal of an
    /// `execute` before it joined a session, or something for
    /// [`Client::socket_events`](crate::Client::socket_events).
    fn on_socket_stream(&mut self, event: Event) {
        let Some(event) = self.on_file_answer(event) else {
            return;
        };
        if let Some(catalog) = event.catalog() {
            if let Some(reply) = self.runtimes_asked.pop_front() {
                let _ = reply.send(Ok(catalog));
            }
            return;
        }
        if event.kind == EventKind::Error && event.id.is_none() && refuses_runtimes(&event) {
            if let Some(reply) = self.runtimes_asked.pop_front() {
                let _ = reply.send(Err(ClientError::RuntimesRefused {
                    code: event.code.unwrap_or(ErrorCode::Internal),
                    message: event.data,
                }));
                return;
            }
        }
        if event.kind == EventKind::Error && event.id.is_none() {
            if let Some(name) = event.for_session.clone() {
                if self.on_session_refusal(&name, &event) {
                    return;
                }
            }
        }
        // An `execute` refused before it joined a session.
        if let Some(id) = event.id.clone() {
            if self.routes.get(&id).is_some_and(|route| !route.confirmed) {
                return self.deliver_to_route(&id, event);
            }
        }
        self.publish_socket_event(event);
    }

    /// An event of a session: to every subscriber that has not seen it, and, the first
    /// time it arrives, to its execution.
    fn on_session_event(&mut self, event: Event, bytes: usize) {
        let Some(name) = event.session.clone() else {
            return;
        };
        if event.kind == EventKind::Attached {
            // An answer, not an event of the session: never handed to a consumer.
            return self.on_attached(&name, &event);
        }
        if self.attaches.contains_key(&name) && !self.follows(&name) {
            // Nothing here reads the session yet: these are on their way from an earlier
            // position of the socket's (before a `detach`), not what the `attach` asks for.
            debug!(
                session = name,
                sequence = event.sequence,
                "event before attached; dropped"
            );
            return;
        }
        if event.kind == EventKind::Gap {
            return self.on_gap(&name, event, bytes);
        }
        let sequence = event.sequence;
        let known = self.sessions.contains_key(&name);
        // The execution it is for, if it runs here.
        let route = event
            .id
            .as_deref()
            .filter(|id| {
                self.routes
                    .get(*id)
                    .is_some_and(|route| match &route.session {
                        Some(session) => *session == name,
                        // The first event of a session the gateway made for it.
                        None => !known && sequence == 1,
                    })
            })
            .map(str::to_owned);
        if !known && route.is_none() {
            // A session this socket no longer reads (its `detach` is on its way), or one
            // nothing here asked for.
            if event.kind == EventKind::Error && !self.detaching.contains(&name) {
                self.publish_socket_event(event);
            } else {
                debug!(
                    session = name,
                    sequence,
                    kind = %event.kind,
                    "event of a session this client does not read; dropped"
                );
            }
            return;
        }
        let state = self.sessions.entry(name.clone()).or_default();
        let position = *state.position.get_or_insert(sequence.saturating_sub(1));
        if sequence > position.saturating_add(1) {
            // The gateway announces every loss with a `gap`; a silent one is a bug, but
            // the consumers are told all the same.
            warn!(
                session = name,
                expected = position + 1,
                got = sequence,
                "events missing from a session's stream without a gap event"
            );
            let gap = gap_event(&name, position + 1, sequence);
            self.on_gap(&name, gap, 0);
        }
        let delivered = self.deliver_to_subscribers(&name, &event);
        let Some(state) = self.sessions.get_mut(&name) else {
            return;
        };
        let position = state.position.unwrap_or(0);
        if sequence <= position {
            // A duplicate: a replay after a resume, or a rewind for a new subscriber.
            return;
        }
        state.position = Some(sequence);
        self.note_unacked(&name, bytes);
        if event.kind == EventKind::Restarted {
            // Restarts asked while one is under way share its answer (PROTOCOL.md 4.10).
            while self.answer_restart(&name, Ok(())) {}
        }
        match route {
            Some(id) => self.deliver_to_route(&id, event),
            None if delivered => {}
            None if event.kind == EventKind::Error => self.publish_socket_event(event),
            None => debug!(
                session = name,
                sequence,
                kind = %event.kind,
                "event of a session nobody here reads; dropped"
            ),
        }
    }

    /// Delivers `event` to the subscribers of `name` that have not seen it; true if any
    /// took it.
    fn deliver_to_subscribers(&mut self, name: &str, event: &Event) -> bool {
        let keys = match self.sessions.get(name) {
            Some(state) if !state.subscribers.is_empty() => state.subscribers.clone(),
            _ => return false,
        };
        let mut delivered = false;
        let mut gone = Vec::new();
        for key in keys {
            let Some(subscriber) = self.subscribers.get_mut(&key) else {
                continue;
            };
            // Until its `attached`, events are from before the position it asked for.
            if !subscriber.confirmed || event.sequence <= subscriber.last {
                continue;
            }
            subscriber.last = event.sequence;
            match subscriber.events.push(event.clone()) {
                Push::Queued => delivered = true,
                Push::Overflowed(overflow) => {
                    warn!(
                        session = name,
                        buffered_bytes = overflow.buffered_bytes,
                        limit = overflow.limit,
                        "the consumer of a session fell behind; detaching it"
                    );
                    gone.push(key);
                }
                Push::ReceiverGone(_) => gone.push(key),
            }
        }
        for key in gone {
            self.remove_subscriber(key);
        }
        delivered
    }

    /// A `gap`: events `missed_from..resume_from` of `name` are lost to this socket.
    fn on_gap(&mut self, name: &str, gap: Event, bytes: usize) {
        let (Some(missed_from), Some(resume_from)) = (gap.missed_from, gap.resume_from) else {
            return;
        };
        let last = resume_from.saturating_sub(1);
        if !self.sessions.contains_key(name) {
            // A session this socket no longer reads.
            return;
        }
        // Subscribers that would have had some of the missing events.
        let keys = self
            .sessions
            .get(name)
            .map(|state| state.subscribers.clone())
            .unwrap_or_default();
        let mut gone = Vec::new();
        for key in keys {
            let Some(subscriber) = self.subscribers.get_mut(&key) else {
                continue;
            };
            if !subscriber.confirmed || subscriber.last >= last {
                continue;
            }
            let mut event = gap.clone();
            event.missed_from = Some(missed_from.max(subscriber.last + 1));
            subscriber.last = last;
            if !matches!(subscriber.events.push(event), Push::Queued) {
                gone.push(key);
            }
        }
        for key in gone {
            self.remove_subscriber(key);
        }
        let Some(state) = self.sessions.get_mut(name) else {
            return;
        };
        let position = state.position.unwrap_or(0);
        if last <= position {
            return;
        }
        warn!(
            session = name,
            missed_from, resume_from, "events of a session were lost"
        );
        state.position = Some(last);
        state.last_gap = Some(gap.clone());
        self.note_unacked(name, bytes);
        // Running executions here may have lost output: they are told.
        let running: Vec<String> = self
            .routes
            .iter()
            .filter(|(_, route)| route.confirmed && route.session.as_deref() == Some(name))
            .map(|(id, _)| id.clone())
            .collect();
        for id in running {
            let mut event = gap.clone();
            event.id = None;
            self.push_to_route(&id, event);
        }
    }

    /// Delivers an event of execution `id` (the first one confirms it).
    pub(super) fn deliver_to_route(&mut self, id: &str, event: Event) {
        let Some(route) = self.routes.get_mut(id) else {
            return;
        };
        if !route.confirmed {
            route.confirmed = true;
            route.execute = None;
            let named = route.named;
            if let Some(session) = event.session.clone() {
                route.session.get_or_insert_with(|| session.clone());
                route.counted = true;
                let state = self.sessions.entry(session.clone()).or_default();
                state.routes += 1;
                if !named {
                    state.ephemeral = true;
                }
                // An execution's first event is `started` or the refusal that ends it;
                // anything else means its first events were lost.
                let whole = event.kind == EventKind::Started || event.kind == EventKind::Error;
                if !whole && event.sequence > 1 {
                    let gap = state
                        .last_gap
                        .clone()
                        .unwrap_or_else(|| gap_event(&session, event.sequence - 1, event.sequence));
                    self.push_to_route(id, gap);
                }
            }
        }
        self.push_to_route(id, event);
    }

    /// Pushes one event into an execution's buffer. Never waits.
    ///
    /// If the execution's buffer overflows (its consumer let more than
    /// [`ClientOptions::execution_buffer_bytes`](crate::ClientOptions::execution_buffer_bytes)
    /// pile up), the execution is cancelled and its later events discarded, like those of
    /// a dropped `Execution`; its consumer receives what was buffered, then a synthetic
    /// terminal event. The route stays until the gateway's terminal event.
    fn push_to_route(&mut self, id: &str, event: Event) {
        let closing = self.closing;
        let Some(route) = self.routes.get_mut(id) else {
            return;
        };
        let terminal = event.is_terminal();
        let serial = route.serial;
        let Some(sender) = &route.events else {
            // Abandoned, or its consumer fell behind: nobody listens. The terminal event
            // frees the id.
            if terminal {
                self.remove_route(id);
            }
            return;
        };
        match sender.push(event) {
            Push::Queued => {
                if terminal {
                    self.remove_route(id);
                }
            }
            Push::Overflowed(overflow) => {
                warn!(
                    id,
                    buffered_bytes = overflow.buffered_bytes,
                    limit = overflow.limit,
                    "the consumer of an execution fell behind; cancelling it"
                );
                route.events = None;
                route.fell_behind = Some(overflow.buffered_bytes);
                if terminal {
                    self.remove_route(id);
                } else if !closing {
                    self.send_cancel(id, serial);
                }
            }
            Push::ReceiverGone(event) => {
                if event.is_terminal() {
                    self.remove_route(id);
                } else {
                    self.abandon(id, serial);
                }
            }
        }
    }

    /// Ends an execution with `event` (a synthetic terminal event) and forgets it.
    pub(super) fn end_route(&mut self, id: &str, event: Event) {
        if let Some(Route {
            events: Some(sender),
            ..
        }) = self.routes.get(id)
        {
            let _ = sender.push(event);
        }
        self.remove_route(id);
    }

    /// Forgets execution `id` (its id is free again), and its gateway-made session once
    /// nothing here needs it.
    fn remove_route(&mut self, id: &str) {
        let Some(route) = self.routes.remove(id) else {
            return;
        };
        let Some(name) = route.session else {
            return;
        };
        if route.counted {
            if let Some(state) = self.sessions.get_mut(&name) {
                state.routes = state.routes.saturating_sub(1);
            }
        }
        let forget = self.sessions.get(&name).is_some_and(|state| {
            state.ephemeral && state.routes == 0 && state.subscribers.is_empty()
        });
        if forget {
            self.forget_finished(&name);
        }
    }

    /// A text frame that is not a valid event: told on the socket stream, and, if it was
    /// the terminal event of a running execution, that execution ends with a synthetic one.
    fn on_undecodable(&mut self, text: &str, err: &str) {
        warn!(error = err, "undecodable frame from the gateway");
        let fields = serde_json::from_str::<serde_json::Value>(text).ok();
        let field = |name: &str| {
            fields
                .as_ref()
                .and_then(|v| v.get(name))
                .and_then(|v| v.as_str())
                .map(str::to_owned)
        };
        let (id, kind, session) = (field("id"), field("type"), field("session"));
        self.publish_socket_event(synthetic_error(
            None,
            None,
            format!(
                "undecodable frame from the gateway (type {:?}, id {:?}): {err}",
                kind.as_deref().unwrap_or("?"),
                id.as_deref().unwrap_or("?"),
            ),
        ));
        // A lost terminal event would leave its execution waiting forever: end it here.
        if let (Some(id), Some(kind)) = (id, kind) {
            let ours = self.routes.get(&id).is_some_and(|route| {
                route.session.is_none() || session.is_none() || route.session == session
            });
            if TERMINAL_TYPES.contains(&kind.as_str()) && ours {
                let message =
                    format!("the gateway's terminal {kind} event could not be decoded: {err}");
                self.end_route(&id, synthetic_error(Some(id.clone()), session, message));
            }
        }
    }

    /// Hands an event to [`Client::socket_events`](crate::Client::socket_events), or drops
    /// it with a log line if its queue is full or gone (never waits).
    fn publish_socket_event(&mut self, event: Event) {
        match self.socket_events.try_send(event) {
            Ok(()) => {}
            Err(TrySendError::Full(event)) => warn!(
                kind = %event.kind,
                sequence = event.sequence,
                code = ?event.code,
                data = %event.data,
                "socket event dropped: the socket_events queue is full"
            ),
            Err(TrySendError::Closed(event)) => debug!(
                kind = %event.kind,
                sequence = event.sequence,
                code = ?event.code,
                data = %event.data,
                "socket event dropped: its receiver is gone"
            ),
        }
    }
}

/// Whether a socket-stream `error` refuses a `runtimes` frame (a gateway older than the
/// frame does not know its type).
fn refuses_runtimes(event: &Event) -> bool {
    event.for_session.is_none()
        && event.code == Some(ErrorCode::BadRequest)
        && event.data.contains("\"runtimes\"")
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_protocol::EventKind;

    // The list of terminal type names must stay in step with the protocol crate.
    #[test]
    fn terminal_type_names_match_the_protocol() {
        let kinds = [
            EventKind::Started,
            EventKind::Stdout,
            EventKind::Stderr,
            EventKind::Completed,
            EventKind::Cancelled,
            EventKind::ResourceLimit,
            EventKind::Error,
            EventKind::Attached,
            EventKind::Gap,
        ];
        for kind in kinds {
            assert_eq!(
                TERMINAL_TYPES.contains(&kind.as_str()),
                kind.is_terminal(),
                "{kind}"
            );
        }
    }
}
