//! Attach bookkeeping: the subscribers ([`SessionEvents`](crate::SessionEvents)), the
//! `attach` and `detach` frames sent for them, and the gateway's answers.
//!
//! The gateway answers every accepted `attach` with an `attached` event on the session's
//! stream (before the events it replays), and every refused one with an `error` on the
//! socket's own stream whose `for_session` names the session. The gateway answers two
//! attaches of one session that it handles before writing anything with a single
//! `attached`, so the task keeps at most one `attach` per session on its way
//! ([`PendingAttach`]); whoever asks meanwhile shares its answer or waits for it. A new
//! [`SessionEvents`](crate::SessionEvents) receives nothing before the `attached` that
//! answers its `attach`: events already on their way from an earlier position are not
//! its. `attached` events themselves are never handed to consumers.
//!
//! A `detach` is answered only when refused (the gateway had already let go of the
//! session). Such refusals, and those of an `execute` sent again after a reconnect that
//! could not rejoin its session (they carry no id: the execution exists), are recognised
//! by `for_session` too; none of the client's own refusals reaches
//! [`Client::socket_events`](crate::Client::socket_events).

use super::{Connection, Purpose};
use crate::command::Reply;
use crate::queue::EventSender;
use crate::synthetic::synthetic_error_with;
use crate::ClientError;
use sluice_protocol::{AckFrame, AttachFrame, ClientFrame, DetachFrame, ErrorCode, Event};
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::{debug, warn};

/// How many sessions the client remembers having detached from (on the current socket),
/// to drop their late events and hide refusals of its `detach`.
pub(super) const DETACHES_REMEMBERED: usize = 256;

/// One [`SessionEvents`](crate::SessionEvents).
pub(super) struct Subscriber {
    /// The session it reads.
    pub(super) session: String,
    /// Sending half of its buffer; the `SessionEvents` holds the receiver. Dropping it
    /// (or `finish`ing it with a last synthetic event) ends the stream.
    pub(super) events: EventSender,
    /// The last sequence delivered (or the `since` it attached after).
    pub(super) last: u64,
    /// The gateway answered its `attach` with `attached`: the session's events after it
    /// are for this subscriber (those before it are not).
    pub(super) confirmed: bool,
}

/// The `attach` of one session that is on its way (there is at most one per session).
pub(super) struct PendingAttach {
    /// The `since` it was sent with.
    pub(super) since: u64,
    /// User attaches its answer decides: the subscriber and the caller.
    pub(super) waiters: Vec<(u64, Reply<()>)>,
    /// User attaches asked for meanwhile that need events before `since`: a new
    /// `attach` is sent for them once this one is answered.
    pub(super) later: Vec<(u64, Reply<()>)>,
    /// Re-attaching after a reconnect: if refused, every consumer of the session ends.
    pub(super) resume: bool,
}

/// One session to attach, with what to do with the answer.
pub(super) struct AttachPlan {
    pub(super) session: String,
    pub(super) since: u64,
    pub(super) waiters: Vec<(u64, Reply<()>)>,
    pub(super) resume: bool,
    /// Ask for a workspace (only a client's own `attach_with`, never a re-attach).
    pub(super) workspace: bool,
}

impl<S> Connection<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    /// A new subscriber `key` of `session`, after `since`: shares the `attach` of the
    /// session on its way if it can, waits for it if it needs earlier events, or sends one.
    pub(super) fn on_attach(
        &mut self,
        key: u64,
        session: String,
        since: u64,
        workspace: bool,
        events: EventSender,
        reply: Reply<()>,
    ) {
        if self.closing {
            let _ = reply.send(Err(self.closing_error()));
            return;
        }
        if reply.is_closed() {
            return;
        }
        if workspace && self.attaches.contains_key(&session) {
            // The `attach` on its way asks for no workspace, and one session has one
            // `attach` on its way at a time.
            let _ = reply.send(Err(ClientError::AttachRefused {
                session,
                code: ErrorCode::BadRequest,
                message: "an attach of this session is on its way; ask for its workspace once it is answered".to_owned(),
            }));
            return;
        }
        // Unless something here follows the session already (its position then stays:
        // moving it past what they have would lose events for them, and the replay is
        // deduplicated), it is read afresh from `since`.
        let fresh = !self.attaches.contains_key(&session) && !self.follows(&session);
        let state = self.sessions.entry(session.clone()).or_default();
        if fresh {
            state.restart(since);
        }
        state.subscribers.push(key);
        self.subscribers.insert(
            key,
            Subscriber {
                session: session.clone(),
                events,
                last: since,
                confirmed: false,
            },
        );
        if let Some(attach) = self.attaches.get_mut(&session) {
            // One `attach` of a session at a time (see the module documentation): the
            // one on its way serves this subscriber too if it asks for no earlier event.
            if attach.since <= since {
                attach.waiters.push((key, reply));
            } else {
                attach.later.push((key, reply));
            }
            return;
        }
        let since = self.resume_point(&session).unwrap_or(0);
        self.send_attach(AttachPlan {
            session,
            since,
            waiters: vec![(key, reply)],
            resume: false,
            workspace,
        });
    }

    /// Where to resume `name`: what every consumer of it has. `None` before anything is
    /// known of it.
    pub(super) fn resume_point(&self, name: &str) -> Option<u64> {
        let state = self.sessions.get(name)?;
        let position = state.position?;
        let subscribers = state
            .subscribers
            .iter()
            .filter_map(|key| self.subscribers.get(key))
            .map(|subscriber| subscriber.last);
        Some(subscribers.fold(position, u64::min))
    }

    /// True if something here follows `name` from its current position: an execution
    /// in it, or a subscriber whose `attach` was answered.
    pub(super) fn follows(&self, name: &str) -> bool {
        let Some(state) = self.sessions.get(name) else {
            return false;
        };
        state.routes > 0
            || self.has_route_in(name)
            || state
                .subscribers
                .iter()
                .any(|key| self.subscribers.get(key).is_some_and(|s| s.confirmed))
    }

    /// True if an execution here runs (or is about to run) in `name`.
    fn has_route_in(&self, name: &str) -> bool {
        self.routes
            .values()
            .any(|route| route.session.as_deref() == Some(name))
    }

    /// True if anything here needs the socket to go on reading `name`.
    fn in_use(&self, name: &str) -> bool {
        self.attaches.contains_key(name)
            || self.has_route_in(name)
            || self
                .sessions
                .get(name)
                .is_some_and(|state| state.routes > 0 || !state.subscribers.is_empty())
    }

    /// Sends an `attach` (and, when acknowledging, an `ack` of its `since`: a socket
    /// that becomes the session's lead inherits acknowledging from there) and waits for
    /// its answer. There must be none on its way for that session.
    pub(super) fn send_attach(&mut self, plan: AttachPlan) {
        let AttachPlan {
            session,
            since,
            waiters,
            resume,
            workspace,
        } = plan;
        self.enqueue_frame(
            &ClientFrame::Attach(AttachFrame {
                session: session.clone(),
                since: Some(since),
                workspace,
                ack: self.acks,
            }),
            Purpose::Other,
        );
        // The same again as a frame, for a gateway older than `attach`'s `ack`.
        if self.acks {
            self.enqueue_frame(
                &ClientFrame::Ack(AckFrame {
                    session: session.clone(),
                    sequence: since,
                }),
                Purpose::Other,
            );
            if let Some(state) = self.sessions.get_mut(&session) {
                state.acked = state.acked.max(since);
            }
        }
        let previous = self.attaches.insert(
            session,
            PendingAttach {
                since,
                waiters,
                later: Vec::new(),
                resume,
            },
        );
        debug_assert!(
            previous.is_none(),
            "two attaches of one session on their way"
        );
    }

    /// Sends the `attach` the subscribers in `later` wait for, once the one before it was
    /// answered.
    fn attach_later(&mut self, name: &str, later: Vec<(u64, Reply<()>)>) {
        let mut waiters = Vec::new();
        for (key, reply) in later {
            if reply.is_closed() {
                // The caller stopped waiting.
                self.forget_subscriber(key);
            } else if self.subscribers.contains_key(&key) {
                waiters.push((key, reply));
            }
        }
        if waiters.is_empty() || self.closing {
            return self.release_if_unused(name);
        }
        let earliest = waiters
            .iter()
            .filter_map(|(key, _)| self.subscribers.get(key))
            .map(|subscriber| subscriber.last)
            .min()
            .unwrap_or(0);
        if !self.follows(name) {
            if let Some(state) = self.sessions.get_mut(name) {
                state.restart(earliest);
            }
        }
        let since = self.resume_point(name).unwrap_or(0);
        self.send_attach(AttachPlan {
            session: name.to_owned(),
            since,
            waiters,
            resume: false,
            workspace: false,
        });
    }

    /// An `attached` event: the `attach` of `name` on its way succeeded, and the
    /// session's events after it are its replay, then live events.
    pub(super) fn on_attached(&mut self, name: &str, event: &Event) {
        let Some(attach) = self.attaches.remove(name) else {
            // Not the answer to anything this client is waiting for (see
            // `on_session_refusal`): let go of the session if nothing here needs it.
            debug!(session = name, "an attached event no attach is waiting for");
            if !self.in_use(name) && !self.closing {
                self.send_detach(name);
            }
            return;
        };
        if event.sequence != attach.since {
            warn!(
                session = name,
                asked = attach.since,
                answered = event.sequence,
                "the gateway attached after another sequence than asked"
            );
        }
        debug!(session = name, since = event.sequence, "attached");
        for (key, reply) in attach.waiters {
            if let Some(subscriber) = self.subscribers.get_mut(&key) {
                subscriber.confirmed = true;
            }
            if reply.send(Ok(())).is_err() {
                // The caller stopped waiting.
                self.remove_subscriber(key);
            }
        }
        self.attach_later(name, attach.later);
    }

    /// A refusal of the `attach` of `name` on its way.
    fn attach_refused(&mut self, name: &str, refusal: &Event) {
        let Some(attach) = self.attaches.remove(name) else {
            return;
        };
        let code = refusal.code.unwrap_or(ErrorCode::Other);
        debug!(session = name, %code, message = %refusal.data, "attach refused");
        let refused = |session: &str| ClientError::AttachRefused {
            session: session.to_owned(),
            code,
            message: refusal.data.clone(),
        };
        for (key, reply) in attach.waiters {
            self.forget_subscriber(key);
            let _ = reply.send(Err(refused(name)));
        }
        if attach.resume {
            for (key, reply) in attach.later {
                self.forget_subscriber(key);
                let _ = reply.send(Err(refused(name)));
            }
            return self.session_lost(name, code, &refusal.data);
        }
        if !self.in_use(name) {
            // The socket does not read it.
            self.sessions.remove(name);
            self.unacked.remove(name);
        }
        self.attach_later(name, attach.later);
    }

    /// A refusal on the socket stream of a frame that named session `name`; true if it
    /// answers something of the client's own, which handles it.
    pub(super) fn on_session_refusal(&mut self, name: &str, refusal: &Event) -> bool {
        let code = refusal.code;
        let refuses_restart = matches!(
            code,
            Some(ErrorCode::UnknownSession | ErrorCode::NotPermitted | ErrorCode::BadRequest)
        );
        if refuses_restart && self.restarts.contains_key(name) {
            let refused = ClientError::RestartRefused {
                session: name.to_owned(),
                code: code.unwrap_or(ErrorCode::Internal),
                message: refusal.data.clone(),
            };
            if self.answer_restart(name, Err(refused)) {
                return true;
            }
        }
        // Refusals come in the order of the frames: with one `attach` of a session on
        // its way at a time, the first such refusal naming it is that attach's. (A
        // refused `detach` sent just before it would be taken for it: the attach fails
        // with `unknown_session`, and an `attached` that then arrives is let go.)
        let refuses_attach = matches!(
            code,
            Some(
                ErrorCode::UnknownSession
                    | ErrorCode::BadRequest
                    | ErrorCode::TooManySessions
                    | ErrorCode::NotPermitted
                    | ErrorCode::NoWorkspace
            )
        );
        if refuses_attach && self.attaches.contains_key(name) {
            self.attach_refused(name, refusal);
            return true;
        }
        if code == Some(ErrorCode::UnknownSession) {
            if let Some(at) = self.detaching.iter().position(|session| session == name) {
                // The gateway had let go of it already (a finished gateway-made session).
                debug!(session = name, "nothing to detach");
                self.detaching.remove(at);
                return true;
            }
        }
        // An `execute` sent again after a reconnect, of an id the session knows, that
        // could not make this socket read the session: the refusal carries no id (the
        // execution exists), but it ends this client's wait for the execution. The
        // executions were sent again in order, so the first such refusal is the oldest's.
        let joining = matches!(
            code,
            Some(ErrorCode::UnknownSession | ErrorCode::TooManySessions)
        );
        let unanswered = self
            .routes
            .iter()
            .filter(|(_, route)| {
                route.resent && !route.confirmed && route.session.as_deref() == Some(name)
            })
            .min_by_key(|(_, route)| route.serial)
            .map(|(id, _)| id.clone());
        if let (true, Some(id)) = (joining, unanswered) {
            let mut event = refusal.clone();
            event.id = Some(id.clone());
            self.deliver_to_route(&id, event);
            if !self.in_use(name) {
                self.sessions.remove(name);
                self.unacked.remove(name);
            }
            return true;
        }
        false
    }

    /// The session could not be resumed after a reconnect: every consumer of it ends,
    /// except executions no event has answered (their `execute` follows the `attach`).
    fn session_lost(&mut self, name: &str, code: ErrorCode, message: &str) {
        warn!(session = name, %code, message, "could not resume a session after reconnecting");
        let text = format!(
            "could not resume session {name:?} after reconnecting to the gateway: {code}: {message}"
        );
        let ended: Vec<String> = self
            .routes
            .iter()
            .filter(|(_, route)| route.confirmed && route.session.as_deref() == Some(name))
            .map(|(id, _)| id.clone())
            .collect();
        for id in ended {
            let event = synthetic_error_with(code, Some(id.clone()), Some(name.to_owned()), &text);
            self.end_route(&id, event);
        }
        let keys = self
            .sessions
            .get(name)
            .map(|state| state.subscribers.clone())
            .unwrap_or_default();
        for key in keys {
            if let Some(subscriber) = self.subscribers.remove(&key) {
                let event = synthetic_error_with(code, None, Some(name.to_owned()), &text);
                subscriber.events.finish(event);
            }
        }
        self.sessions.remove(name);
        self.unacked.remove(name);
    }

    /// Removes a subscriber without telling the gateway.
    fn forget_subscriber(&mut self, key: u64) -> Option<Subscriber> {
        let subscriber = self.subscribers.remove(&key)?;
        if let Some(state) = self.sessions.get_mut(&subscriber.session) {
            state.subscribers.retain(|other| *other != key);
        }
        Some(subscriber)
    }

    /// Removes a subscriber (its stream ends), and stops reading its session if nothing
    /// else here needs it.
    pub(super) fn remove_subscriber(&mut self, key: u64) {
        if let Some(subscriber) = self.forget_subscriber(key) {
            self.release_if_unused(&subscriber.session);
        }
    }

    /// Stops reading a session no route or subscriber needs (and no `attach` is
    /// waiting for).
    fn release_if_unused(&mut self, name: &str) {
        let Some(state) = self.sessions.get(name) else {
            return;
        };
        if self.closing || self.in_use(name) {
            return;
        }
        if state.ephemeral {
            // Made by the gateway for an execution that has ended: it lets go by itself.
            self.forget_finished(name);
            return;
        }
        self.send_detach(name);
    }

    /// Sends `detach` and forgets the session; its late events are dropped.
    fn send_detach(&mut self, name: &str) {
        self.sessions.remove(name);
        self.unacked.remove(name);
        debug!(session = name, "detaching");
        self.detaching.push_back(name.to_owned());
        if self.detaching.len() > DETACHES_REMEMBERED {
            self.detaching.pop_front();
        }
        self.enqueue_frame(
            &ClientFrame::Detach(DetachFrame {
                session: name.to_owned(),
            }),
            Purpose::Other,
        );
    }
}
