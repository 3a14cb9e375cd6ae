//! The connection task: the only owner of the WebSocket. It writes the frames handles
//! ask for and routes every incoming event to the [`Execution`](crate::Execution) or
//! [`SessionEvents`](crate::SessionEvents) it is for, the way async-nats'
//! `ConnectionHandler` routes messages by subscription id. When the connection drops, it
//! reconnects and resumes every session it was reading.
//!
//! One `select!` loop serves three sources: the outgoing frames (`outbox`), the socket and
//! the command queue. Writing never stops reading, and delivering never waits: every
//! consumer has its own byte-bounded buffer ([`crate::queue`]), so one whose events are
//! not read never holds up another. An execution whose consumer lets its buffer outgrow
//! the budget is cancelled and its consumer told (see [`Connection::push_to_route`]).
//! Reading the socket never stops for a consumer. The only backpressure is on callers:
//! the command queue is bounded, and while a command's frames wait to be written no new
//! command is taken, so callers wait when the gateway does not take frames fast enough.
//!
//! # Sessions, resume and acknowledgements
//!
//! Every event of a session carries its sequence (from 1, no gaps). The task keeps, per
//! session it reads, the highest sequence it has processed (`position`): an event at or
//! below it is a duplicate (a replay after a resume or a rewind) and reaches only the
//! [`SessionEvents`](crate::SessionEvents) that have not seen it. After a reconnect it
//! attaches every session that still has a consumer with `since` = what every consumer
//! has, so nothing is lost and nothing is delivered twice. When reconnecting is on, it
//! acknowledges what it has handed to consumers (every [`ACK_EVERY_EVENTS`] events or
//! [`ACK_EVERY_BYTES`] bytes, and whenever the socket has nothing more to read), so the
//! gateway keeps every event in flight until it has arrived.
//!
//! # Answers to `attach`
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

use crate::client::{synthetic_error, synthetic_error_with, Ended, Shared};
use crate::queue::{EventSender, Push};
use crate::ClientError;
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use sluice_protocol::{
    AckFrame, AttachFrame, CancelFrame, ClientFrame, DetachFrame, ErrorCode, Event, EventKind,
    StdinFrame,
};
use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet, VecDeque};
use std::future::{poll_fn, Future};
use std::hash::{BuildHasher, RandomState};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc::{self, error::TrySendError};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;
use tracing::{debug, info, warn};

/// The reply channel of a command; dropped unanswered only when the connection ends.
pub(crate) type Reply<T> = oneshot::Sender<Result<T, ClientError>>;

/// A connection attempt: a new WebSocket to the gateway, or why there is none.
pub(crate) type ConnectFuture<S> =
    Pin<Box<dyn Future<Output = Result<WebSocketStream<S>, String>> + Send>>;

/// Opens new connections to the same gateway, for reconnecting.
pub(crate) type Connector<S> = Box<dyn FnMut() -> ConnectFuture<S> + Send>;

/// Acknowledge a session after at most this many events...
pub(crate) const ACK_EVERY_EVENTS: usize = 256;

/// ...or this many bytes of frames, whichever comes first (and whenever the socket has
/// nothing more to read).
pub(crate) const ACK_EVERY_BYTES: usize = 1 << 20;

/// How many sessions the client remembers having detached from (on the current socket),
/// to drop their late events and hide refusals of its `detach`.
const DETACHES_REMEMBERED: usize = 256;

/// Most messages read in one go before the loop looks at its other sources again.
const READ_BURST: usize = 64;

/// What handles ask of the connection task.
pub(crate) enum Command {
    /// Register a route for `id` and send its `execute` frame (already encoded), unless
    /// `id` is still running.
    Execute {
        id: String,
        serial: u64,
        /// The session named in the request, if any.
        session: Option<String>,
        frame: String,
        events: EventSender,
        reply: Reply<()>,
    },
    /// Send a `stdin` frame, if the execution is still running.
    Stdin {
        id: String,
        serial: u64,
        data: Option<String>,
        eof: bool,
        reply: Reply<()>,
    },
    /// Send a `cancel` frame once, if the execution is still running.
    Cancel {
        id: String,
        serial: u64,
        reply: Reply<()>,
    },
    /// The `Execution` was dropped before its terminal event: discard its events until the
    /// terminal one, and cancel it.
    Abandon { id: String, serial: u64 },
    /// Deliver `session`'s events after `since` to a new subscriber `key`; answered once
    /// the gateway has accepted or refused the `attach`.
    Attach {
        key: u64,
        session: String,
        since: u64,
        events: EventSender,
        reply: Reply<()>,
    },
    /// Stop delivering to subscriber `key` (and stop reading its session if nothing else
    /// here needs it).
    Detach { key: u64, reply: Option<Reply<()>> },
    /// Close the connection.
    Close,
}

/// Where the events of one running execution go.
struct Route {
    /// Tells this execution apart from an earlier one with the same id whose `Execution`
    /// handle may still be alive.
    serial: u64,
    /// Sending half of the execution's event buffer; the `Execution` holds the receiver.
    /// `None` once the `Execution` is gone or its consumer fell behind: its events are
    /// discarded, and the route stays until the terminal event so the id counts as
    /// running exactly as long as the gateway says it is.
    events: Option<EventSender>,
    /// A `cancel` frame was sent for it; it is sent again only after a reconnect.
    cancel_sent: bool,
    /// The consumer fell behind: the bytes its buffer would have held, over the budget.
    fell_behind: Option<usize>,
    /// The session: named in the request, or the gateway-made one its first event names.
    session: Option<String>,
    /// The request named its session.
    named: bool,
    /// An event of the execution has arrived: the gateway has it.
    confirmed: bool,
    /// Counted in its session's `routes`.
    counted: bool,
    /// The `execute` frame of an execution in a named session that no event has answered
    /// yet: sent again after a reconnect. The gateway answers an id its session already
    /// knows from the session, so the program never runs twice.
    execute: Option<String>,
    /// Its `execute` was sent again after a reconnect and not answered yet.
    resent: bool,
}

/// What the task knows of one session the socket reads.
#[derive(Debug, Default)]
struct SessionState {
    /// The highest sequence processed, once one was (or the `since` it was attached
    /// after): an event at or below it is a duplicate.
    position: Option<u64>,
    /// Routes in this session that have received an event.
    routes: usize,
    /// The subscribers reading it (keys of `Connection::subscribers`).
    subscribers: Vec<u64>,
    /// Made by the gateway for one of this client's executions: forgotten once that
    /// has ended.
    ephemeral: bool,
    /// The last sequence acknowledged on the current socket.
    acked: u64,
    /// Events and bytes processed since the last acknowledgement.
    unacked_events: usize,
    unacked_bytes: usize,
    /// The last `gap`, for an execution whose first events it may have swallowed.
    last_gap: Option<Event>,
}

impl SessionState {
    /// Reads the session afresh from `since` on: nothing of it is processed or
    /// acknowledged on this socket yet.
    fn restart(&mut self, since: u64) {
        self.position = Some(since);
        self.acked = 0;
        self.unacked_events = 0;
        self.unacked_bytes = 0;
        self.last_gap = None;
    }
}

/// One [`SessionEvents`](crate::SessionEvents).
struct Subscriber {
    session: String,
    events: EventSender,
    /// The last sequence delivered (or the `since` it attached after).
    last: u64,
    /// The gateway answered its `attach` with `attached`: the session's events after it
    /// are for this subscriber (those before it are not).
    confirmed: bool,
}

/// The `attach` of one session that is on its way (there is at most one per session).
struct PendingAttach {
    /// The `since` it was sent with.
    since: u64,
    /// User attaches its answer decides: the subscriber and the caller.
    waiters: Vec<(u64, Reply<()>)>,
    /// User attaches asked for meanwhile that need events before `since`: a new
    /// `attach` is sent for them once this one is answered.
    later: Vec<(u64, Reply<()>)>,
    /// Re-attaching after a reconnect: if refused, every consumer of the session ends.
    resume: bool,
}

/// A time without a working connection: since when, and how the attempts went.
struct Outage {
    started: Instant,
    attempts: u32,
    last_error: String,
}

/// One session to attach, with what to do with the answer.
struct AttachPlan {
    session: String,
    since: u64,
    waiters: Vec<(u64, Reply<()>)>,
    resume: bool,
}

/// What a queued frame is for: after a reconnect, frames that never reached the old
/// socket are kept if they cannot be rebuilt from the task's state.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Purpose {
    Execute {
        id: String,
        serial: u64,
    },
    Stdin {
        id: String,
        serial: u64,
    },
    /// Attach, detach, ack, cancel, close: rebuilt from the state.
    Other,
}

struct Outgoing {
    message: Message,
    purpose: Purpose,
}

/// The state of one client's connection (across reconnects), owned by its task.
pub(crate) struct Connection<S> {
    /// Write half of the WebSocket; only this task writes. `None` while disconnected.
    sink: Option<SplitSink<WebSocketStream<S>, Message>>,
    /// Read half of the WebSocket. `None` while disconnected.
    stream: Option<SplitStream<WebSocketStream<S>>>,
    /// Opens a new socket after the connection drops; `None`: the first drop is final.
    connector: Option<Connector<S>>,
    /// Receiving half of the command queue; every handle holds a sender. Closed and
    /// dropped when the task ends, which fails later commands and wakes `Client::close`.
    commands: mpsc::Receiver<Command>,
    /// False once every sender is gone (no handle left), which starts closing.
    commands_open: bool,
    /// Sending half of the socket-event queue; `SocketEvents` (or, until it is taken,
    /// `Shared`) holds the receiver. Only `try_send`: a full queue drops with a warning.
    socket_events: mpsc::Sender<Event>,
    /// Running executions by id. Dropping a route's sender ends its `Execution`'s stream;
    /// when the task ends, dropping them all gives each its synthetic terminal event.
    routes: HashMap<String, Route>,
    /// The sessions the socket reads, by name.
    sessions: HashMap<String, SessionState>,
    /// The `SessionEvents`, by key.
    subscribers: HashMap<u64, Subscriber>,
    /// `attach` frames sent on this socket and not yet answered, by session.
    attaches: HashMap<String, PendingAttach>,
    /// Sessions detached on this socket, most recent last (at most
    /// [`DETACHES_REMEMBERED`]): their late events are dropped, and a refusal of the
    /// `detach` (the gateway had let go of the session first) is nobody's business.
    detaching: VecDeque<String>,
    /// Sessions with events processed and not yet acknowledged.
    unacked: HashSet<String>,
    /// Acknowledge events (reconnecting is on).
    acks: bool,
    /// Frames waiting for the socket. Commands are taken only while it is empty, so it
    /// holds at most one command's frames plus acks and one `cancel` per abandoned route.
    outbox: VecDeque<Outgoing>,
    /// Something was queued since the socket was last flushed.
    unflushed: bool,
    /// The close frame is queued or sent; no more frames follow it.
    closing: bool,
    /// When closing, the moment to give up waiting for the gateway's answer.
    close_deadline: Option<Instant>,
    /// The gateway's close frame, described, once it arrived.
    peer_close: Option<String>,
    /// Randomness for the reconnect jitter.
    jitter: RandomState,
    /// When the current socket was opened.
    connected_at: Instant,
    /// The current socket has delivered an event.
    received: bool,
    /// The outage the current socket ended, until it proves healthy.
    outage: Option<Outage>,
    shared: Arc<Shared>,
}

const TERMINAL_TYPES: [&str; 4] = ["completed", "cancelled", "resource_limit", "error"];

impl<S> Connection<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    pub(crate) fn new(
        socket: WebSocketStream<S>,
        connector: Option<Connector<S>>,
        commands: mpsc::Receiver<Command>,
        socket_events: mpsc::Sender<Event>,
        shared: Arc<Shared>,
    ) -> Self {
        let (sink, stream) = socket.split();
        let acks = connector.is_some() && shared.options.reconnect.is_some();
        Self {
            sink: Some(sink),
            stream: Some(stream),
            connector,
            commands,
            commands_open: true,
            socket_events,
            routes: HashMap::new(),
            sessions: HashMap::new(),
            subscribers: HashMap::new(),
            attaches: HashMap::new(),
            detaching: VecDeque::new(),
            unacked: HashSet::new(),
            acks,
            outbox: VecDeque::new(),
            unflushed: false,
            closing: false,
            close_deadline: None,
            peer_close: None,
            jitter: RandomState::new(),
            connected_at: Instant::now(),
            received: false,
            outage: None,
            shared,
        }
    }

    /// Runs the connection (reconnecting as the options say) until it ends, then fails
    /// whatever is still waiting on it.
    pub(crate) async fn run(mut self) {
        let ended = loop {
            let lost = self.drive().await;
            if self.closing || self.connector.is_none() || self.shared.options.reconnect.is_none() {
                break lost;
            }
            match self.reconnect(lost).await {
                Ok(()) => {}
                Err(ended) => break ended,
            }
        };
        debug!(clean = ended.clean, reason = %ended.reason, "connection to the gateway ended");
        // Order matters: `ended` must be set before anyone can observe the closed
        // command queue or a closed event queue.
        let _ = self.shared.ended.set(ended);
        self.commands.close();
        // Fail everything waiting on the connection before the (possibly slow) goodbye:
        // dropped reply channels give callers `ConnectionClosed`, dropped routes give each
        // `Execution` its synthetic terminal event.
        while self.commands.try_recv().is_ok() {}
        self.routes.clear();
        self.attaches.clear();
        let reason = self.shared.end_reason();
        for (_, subscriber) in self.subscribers.drain() {
            let message = format!("the connection to the gateway ended: {reason}");
            let event = synthetic_error(None, Some(subscriber.session), message);
            subscriber.events.finish(event);
        }
        if !self.closing {
            if let Some(sink) = self.sink.as_mut() {
                // Best effort: tell the gateway, if it can still hear us.
                let timeout = self.shared.options.close_timeout;
                let _ = tokio::time::timeout(timeout, sink.close()).await;
            }
        }
        // Dropping `self` drops the socket-event sender, which ends `SocketEvents`.
    }

    /// Serves the current socket until it ends.
    async fn drive(&mut self) -> Ended {
        loop {
            let deadline = self.close_deadline.unwrap_or_else(Instant::now);
            tokio::select! {
                written = write_outbox(&mut self.sink, &mut self.outbox), if self.unflushed => {
                    match written {
                        Ok(()) => self.unflushed = false,
                        Err(err) => return self.failed(format!("writing to the gateway failed: {err}")),
                    }
                }
                message = next_message(&mut self.stream) => {
                    if let Some(ended) = self.on_read(message) {
                        return ended;
                    }
                    if let Some(ended) = self.read_burst().await {
                        return ended;
                    }
                }
                command = self.commands.recv(), if self.commands_open && self.outbox.is_empty() => {
                    self.on_command_or_end(command);
                }
                () = tokio::time::sleep_until(deadline), if self.close_deadline.is_some() => {
                    return self.failed("the gateway did not answer the close handshake in time".to_owned());
                }
            }
        }
    }

    /// Handles what the socket yielded; `Some` when the socket is done.
    fn on_read(&mut self, message: Option<Result<Message, WsError>>) -> Option<Ended> {
        match message {
            Some(Ok(message)) => {
                self.on_message(message);
                None
            }
            Some(Err(err)) if self.closing => {
                // The gateway dropped the connection instead of answering the close frame
                // (it does when it still had events to write): closed all the same.
                debug!(%err, "the gateway dropped the connection after the close frame");
                Some(Ended {
                    clean: true,
                    reason: "the client closed the connection".to_owned(),
                })
            }
            Some(Err(err)) => Some(self.failed(format!("reading from the gateway failed: {err}"))),
            None => Some(self.stream_ended()),
        }
    }

    /// Reads the messages that are already there, without waiting; when the socket has
    /// nothing more, acknowledges what was processed.
    async fn read_burst(&mut self) -> Option<Ended> {
        for _ in 0..READ_BURST {
            let stream = self.stream.as_mut()?;
            let polled = poll_fn(|cx| Poll::Ready(stream.poll_next_unpin(cx))).await;
            match polled {
                Poll::Ready(message) => {
                    if let Some(ended) = self.on_read(message) {
                        return Some(ended);
                    }
                }
                Poll::Pending => {
                    self.ack_all();
                    return None;
                }
            }
        }
        None
    }

    fn failed(&self, reason: String) -> Ended {
        Ended {
            clean: false,
            reason,
        }
    }

    fn stream_ended(&mut self) -> Ended {
        if self.closing {
            return Ended {
                clean: true,
                reason: "the client closed the connection".to_owned(),
            };
        }
        let reason = match self.peer_close.take() {
            Some(close) => format!("the gateway closed the connection ({close})"),
            None => "the gateway closed the connection without a close frame".to_owned(),
        };
        Ended {
            clean: false,
            reason,
        }
    }

    // -----------------------------------------------------------------------------------
    // Reconnecting
    // -----------------------------------------------------------------------------------

    /// Opens a new socket with backoff and resumes on it; `Err` with how the connection
    /// ended for good when the policy's bound is reached or the client closes meanwhile.
    async fn reconnect(&mut self, lost: Ended) -> Result<(), Ended> {
        self.sink = None;
        self.stream = None;
        self.unflushed = false;
        self.peer_close = None;
        let (Some(policy), Some(mut connector)) =
            (self.shared.options.reconnect.clone(), self.connector.take())
        else {
            return Err(lost);
        };
        info!(reason = %lost.reason, "lost the connection to the gateway; reconnecting");
        // A connection that dropped before it proved healthy (it lived less than the
        // longest delay and received nothing) continues the outage before it: its backoff
        // and its bound, so a gateway that accepts and drops at once is not hammered
        // forever.
        let healthy = self.connected_at.elapsed() >= policy.max_delay || self.received;
        let outage = match self.outage.take() {
            Some(outage) if !healthy => outage,
            _ => Outage {
                started: Instant::now(),
                attempts: 0,
                last_error: String::from("no attempt was made"),
            },
        };
        let Outage {
            started,
            mut attempts,
            mut last_error,
        } = outage;
        let deadline = started + policy.give_up_after;
        let result = loop {
            let out_of_attempts = policy.max_attempts.is_some_and(|max| attempts >= max);
            if out_of_attempts || Instant::now() >= deadline {
                let reason = format!(
                    "{}; gave up reconnecting after {attempts} failed attempt(s) in {:.1?} \
                     (last: {last_error})",
                    lost.reason,
                    started.elapsed()
                );
                warn!(%reason, "could not reconnect to the gateway");
                break Err(Ended {
                    clean: false,
                    reason,
                });
            }
            let delay = self.jittered(policy.delay(attempts.saturating_add(1)), attempts);
            let wake = (Instant::now() + delay).min(deadline);
            if let Err(ended) = self
                .while_disconnected(tokio::time::sleep_until(wake))
                .await
            {
                break Err(ended);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                continue;
            }
            attempts = attempts.saturating_add(1);
            let limit = policy.connect_timeout.min(left);
            let attempt = tokio::time::timeout(limit, connector());
            match self.while_disconnected(attempt).await {
                Err(ended) => break Err(ended),
                Ok(Ok(Ok(socket))) => {
                    info!(attempts, "reconnected to the gateway");
                    let (sink, stream) = socket.split();
                    self.sink = Some(sink);
                    self.stream = Some(stream);
                    self.connected_at = Instant::now();
                    self.received = false;
                    self.outage = Some(Outage {
                        started,
                        attempts,
                        last_error: format!("{} (then dropped again)", lost.reason),
                    });
                    self.resume();
                    break Ok(());
                }
                Ok(Ok(Err(err))) => {
                    debug!(attempt = attempts, error = %err, "reconnect attempt failed");
                    last_error = err;
                }
                Ok(Err(_)) => {
                    debug!(attempt = attempts, "reconnect attempt timed out");
                    last_error = format!("no connection within {limit:?}");
                }
            }
        };
        self.connector = Some(connector);
        result
    }

    /// A random duration between half and all of `delay`.
    fn jittered(&self, delay: Duration, attempt: u32) -> Duration {
        let random = self.jitter.hash_one(attempt);
        let half = delay / 2;
        let nanos = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
        half + Duration::from_nanos(random.checked_rem(nanos.saturating_add(1)).unwrap_or(0))
    }

    /// Runs `future` while taking commands (their frames wait for the next socket);
    /// `Err` if the client closes or every handle goes away meanwhile.
    async fn while_disconnected<F: Future>(&mut self, future: F) -> Result<F::Output, Ended> {
        tokio::pin!(future);
        loop {
            if self.closing {
                return Err(Ended {
                    clean: true,
                    reason: "the client closed the connection while reconnecting".to_owned(),
                });
            }
            let room = self.outbox.len() < self.shared.options.command_buffer.max(1);
            tokio::select! {
                output = &mut future => return Ok(output),
                command = self.commands.recv(), if self.commands_open && room => {
                    self.on_command_or_end(command);
                }
            }
        }
    }

    /// Rebuilds the outbox for a new socket: attaches for every session with a consumer,
    /// `execute` frames the gateway may not have had, queued input, cancels.
    fn resume(&mut self) {
        let old = std::mem::take(&mut self.outbox);
        self.unacked.clear();
        // The new socket reads nothing yet: nothing is being detached from it.
        self.detaching.clear();
        // Attaches the old socket did not answer are asked again.
        let mut waiting: HashMap<String, Vec<(u64, Reply<()>)>> = HashMap::new();
        for (session, attach) in self.attaches.drain() {
            let waiters = waiting.entry(session).or_default();
            waiters.extend(attach.waiters);
            waiters.extend(attach.later);
        }
        let mut plan = Vec::new();
        let names: Vec<String> = self.sessions.keys().cloned().collect();
        for name in names {
            let has_route = self
                .routes
                .values()
                .any(|route| route.session.as_deref() == Some(name.as_str()));
            let Some(state) = self.sessions.get_mut(&name) else {
                continue;
            };
            let confirmed_subscriber = state
                .subscribers
                .iter()
                .any(|key| self.subscribers.get(key).is_some_and(|s| s.confirmed));
            let needed = state.routes > 0 || confirmed_subscriber;
            let waiters = waiting.remove(&name).unwrap_or_default();
            state.acked = 0;
            state.unacked_events = 0;
            state.unacked_bytes = 0;
            if !needed && waiters.is_empty() {
                if !has_route && state.subscribers.is_empty() {
                    // The new socket does not read it.
                    self.sessions.remove(&name);
                }
                continue;
            }
            let since = self.resume_point(&name).unwrap_or(0);
            plan.push(AttachPlan {
                session: name,
                since,
                waiters,
                resume: needed,
            });
        }
        for (session, waiters) in waiting {
            // Their subscribers are gone (detached while waiting).
            for (_, reply) in waiters {
                let _ = reply.send(Err(ClientError::ConnectionClosed {
                    reason: format!("the subscription to {session:?} was dropped"),
                }));
            }
        }
        debug!(sessions = plan.len(), "resuming sessions");
        for attach in plan {
            self.send_attach(attach);
        }

        // Executions no event has answered: did the gateway get them?
        let unsent: HashSet<(String, u64)> = old
            .iter()
            .filter_map(|outgoing| match &outgoing.purpose {
                Purpose::Execute { id, serial } => Some((id.clone(), *serial)),
                _ => None,
            })
            .collect();
        let mut resend = Vec::new();
        let mut lost = Vec::new();
        for (id, route) in &self.routes {
            if route.confirmed || unsent.contains(&(id.clone(), route.serial)) {
                continue;
            }
            match &route.execute {
                Some(frame) => resend.push((id.clone(), route.serial, frame.clone())),
                None => lost.push(id.clone()),
            }
        }
        // In the order they were first sent (refusals come in the order of the frames).
        resend.sort_by_key(|(_, serial, _)| *serial);
        for (id, serial, frame) in resend {
            if let Some(route) = self.routes.get_mut(&id) {
                route.resent = true;
            }
            self.enqueue(Message::text(frame), Purpose::Execute { id, serial });
        }
        for id in lost {
            let message = "the connection to the gateway was lost before the gateway answered \
                           this execution, which named no session: it cannot be resumed, and \
                           it may or may not have run (name a session to make a resubmit safe)";
            self.end_route(&id, synthetic_error(Some(id.clone()), None, message));
        }
        // Frames the old socket never took.
        for outgoing in old {
            let keep = match &outgoing.purpose {
                Purpose::Execute { id, serial } | Purpose::Stdin { id, serial } => {
                    self.route(id, *serial).is_some()
                }
                Purpose::Other => false,
            };
            if keep {
                self.outbox.push_back(outgoing);
            }
        }
        // Cancels the gateway may not have had (a repeated one is refused harmlessly).
        let cancels: Vec<(String, Option<String>)> = self
            .routes
            .iter()
            .filter(|(_, route)| route.cancel_sent && (route.confirmed || route.named))
            .map(|(id, route)| (id.clone(), route.session.clone()))
            .collect();
        for (id, session) in cancels {
            self.enqueue_frame(
                &ClientFrame::Cancel(CancelFrame { id, session }),
                Purpose::Other,
            );
        }
        self.unflushed = !self.outbox.is_empty();
    }

    // -----------------------------------------------------------------------------------
    // Commands
    // -----------------------------------------------------------------------------------

    fn on_command_or_end(&mut self, command: Option<Command>) {
        match command {
            Some(command) => self.on_command(command),
            None => {
                self.commands_open = false;
                self.start_close();
            }
        }
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Execute {
                id,
                serial,
                session,
                frame,
                events,
                reply,
            } => self.on_execute(id, serial, session, frame, events, reply),
            Command::Stdin {
                id,
                serial,
                data,
                eof,
                reply,
            } => {
                let result = self.on_stdin(id, serial, data, eof);
                let _ = reply.send(result);
            }
            Command::Cancel { id, serial, reply } => {
                // While closing there is nothing to do: closing cancels every execution.
                if !self.closing {
                    self.send_cancel(&id, serial);
                }
                let _ = reply.send(Ok(()));
            }
            Command::Abandon { id, serial } => self.abandon(&id, serial),
            Command::Attach {
                key,
                session,
                since,
                events,
                reply,
            } => self.on_attach(key, session, since, events, reply),
            Command::Detach { key, reply } => {
                self.remove_subscriber(key);
                if let Some(reply) = reply {
                    let _ = reply.send(Ok(()));
                }
            }
            Command::Close => self.start_close(),
        }
    }

    fn on_execute(
        &mut self,
        id: String,
        serial: u64,
        session: Option<String>,
        frame: String,
        events: EventSender,
        reply: Reply<()>,
    ) {
        if self.closing {
            let _ = reply.send(Err(self.closing_error()));
            return;
        }
        match self.routes.entry(id.clone()) {
            Entry::Occupied(taken) => {
                let _ = reply.send(Err(ClientError::DuplicateId(taken.key().clone())));
            }
            // The caller stopped waiting; nobody would receive the events.
            Entry::Vacant(_) if reply.is_closed() => {}
            Entry::Vacant(slot) => {
                let named = session.is_some();
                slot.insert(Route {
                    serial,
                    events: Some(events),
                    cancel_sent: false,
                    fell_behind: None,
                    session: session.clone(),
                    named,
                    confirmed: false,
                    counted: false,
                    execute: named.then(|| frame.clone()),
                    resent: false,
                });
                if let Some(name) = session {
                    self.sessions.entry(name).or_default();
                }
                self.enqueue(Message::text(frame), Purpose::Execute { id, serial });
                let _ = reply.send(Ok(()));
            }
        }
    }

    fn on_stdin(
        &mut self,
        id: String,
        serial: u64,
        data: Option<String>,
        eof: bool,
    ) -> Result<(), ClientError> {
        if self.closing {
            return Err(self.closing_error());
        }
        let limit = self.shared.options.execution_buffer_bytes;
        let session = match self.route(&id, serial) {
            Some(Route {
                fell_behind: Some(buffered_bytes),
                ..
            }) => {
                return Err(ClientError::SlowConsumer {
                    buffered_bytes: *buffered_bytes,
                    limit,
                    id,
                })
            }
            Some(route) => route.session.clone(),
            None => return Err(ClientError::ExecutionFinished(id)),
        };
        // Naming the session lets a socket that did not start the execution (after a
        // reconnect) reach it.
        let frame = ClientFrame::Stdin(StdinFrame {
            id: id.clone(),
            session,
            data,
            eof,
        })
        .to_json();
        self.shared.check_frame_size(frame.len())?;
        self.enqueue(Message::text(frame), Purpose::Stdin { id, serial });
        Ok(())
    }

    fn on_attach(
        &mut self,
        key: u64,
        session: String,
        since: u64,
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
        });
    }

    fn closing_error(&self) -> ClientError {
        ClientError::ConnectionClosed {
            reason: "the client is closing the connection".to_owned(),
        }
    }

    fn route(&mut self, id: &str, serial: u64) -> Option<&mut Route> {
        self.routes
            .get_mut(id)
            .filter(|route| route.serial == serial)
    }

    fn enqueue(&mut self, message: Message, purpose: Purpose) {
        if self.closing {
            // Nothing may follow the close frame.
            return;
        }
        self.outbox.push_back(Outgoing { message, purpose });
        self.unflushed = true;
    }

    fn enqueue_frame(&mut self, frame: &ClientFrame, purpose: Purpose) {
        self.enqueue(Message::text(frame.to_json()), purpose);
    }

    fn send_cancel(&mut self, id: &str, serial: u64) {
        let Some(route) = self.route(id, serial) else {
            return;
        };
        if route.cancel_sent {
            return;
        }
        route.cancel_sent = true;
        let frame = ClientFrame::Cancel(CancelFrame {
            id: id.to_owned(),
            session: route.session.clone(),
        });
        self.enqueue_frame(&frame, Purpose::Other);
    }

    /// The `Execution` is gone: stop delivering to it and cancel it.
    fn abandon(&mut self, id: &str, serial: u64) {
        let Some(route) = self.route(id, serial) else {
            return;
        };
        route.events = None;
        debug!(
            id,
            "execution dropped before its terminal event; cancelling it"
        );
        if !self.closing {
            self.send_cancel(id, serial);
        }
    }

    /// Cancels every execution still running (sessions outlive sockets: the gateway
    /// would otherwise keep them running for its grace period), then sends the close
    /// frame.
    fn start_close(&mut self) {
        if self.closing {
            return;
        }
        let running: Vec<(String, u64)> = self
            .routes
            .iter()
            .map(|(id, route)| (id.clone(), route.serial))
            .collect();
        for (id, serial) in running {
            self.send_cancel(&id, serial);
        }
        let frame = CloseFrame {
            code: CloseCode::Normal,
            reason: "client closing".into(),
        };
        self.enqueue(Message::Close(Some(frame)), Purpose::Other);
        self.closing = true;
        self.close_deadline = Some(Instant::now() + self.shared.options.close_timeout);
    }

    // -----------------------------------------------------------------------------------
    // Attach and detach
    // -----------------------------------------------------------------------------------

    /// Where to resume `name`: what every consumer of it has. `None` before anything is
    /// known of it.
    fn resume_point(&self, name: &str) -> Option<u64> {
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
    fn follows(&self, name: &str) -> bool {
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
    fn send_attach(&mut self, plan: AttachPlan) {
        let AttachPlan {
            session,
            since,
            waiters,
            resume,
        } = plan;
        self.enqueue_frame(
            &ClientFrame::Attach(AttachFrame {
                session: session.clone(),
                since: Some(since),
            }),
            Purpose::Other,
        );
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
        });
    }

    /// An `attached` event: the `attach` of `name` on its way succeeded, and the
    /// session's events after it are its replay, then live events.
    fn on_attached(&mut self, name: &str, event: &Event) {
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
    fn on_session_refusal(&mut self, name: &str, refusal: &Event) -> bool {
        let code = refusal.code;
        // Refusals come in the order of the frames: with one `attach` of a session on
        // its way at a time, the first such refusal naming it is that attach's. (A
        // refused `detach` sent just before it would be taken for it: the attach fails
        // with `unknown_session`, and an `attached` that then arrives is let go.)
        let refuses_attach = matches!(
            code,
            Some(ErrorCode::UnknownSession | ErrorCode::BadRequest | ErrorCode::TooManySessions)
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
    fn remove_subscriber(&mut self, key: u64) {
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

    // -----------------------------------------------------------------------------------
    // Incoming events
    // -----------------------------------------------------------------------------------

    fn on_message(&mut self, message: Message) {
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
    fn deliver_to_route(&mut self, id: &str, event: Event) {
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
    fn end_route(&mut self, id: &str, event: Event) {
        if let Some(Route {
            events: Some(sender),
            ..
        }) = self.routes.get(id)
        {
            let _ = sender.push(event);
        }
        self.remove_route(id);
    }

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

    /// Forgets a gateway-made session whose execution has ended, after acknowledging it
    /// to the end: the gateway then lets go of it at once (instead of keeping it for a
    /// reconnect).
    fn forget_finished(&mut self, name: &str) {
        if self.acks && !self.closing && self.sink.is_some() {
            self.send_ack(name);
        }
        self.sessions.remove(name);
        self.unacked.remove(name);
    }

    // -----------------------------------------------------------------------------------
    // Acknowledgements
    // -----------------------------------------------------------------------------------

    fn note_unacked(&mut self, name: &str, bytes: usize) {
        if !self.acks {
            return;
        }
        let Some(state) = self.sessions.get_mut(name) else {
            return;
        };
        state.unacked_events += 1;
        state.unacked_bytes = state.unacked_bytes.saturating_add(bytes);
        if state.unacked_events >= ACK_EVERY_EVENTS || state.unacked_bytes >= ACK_EVERY_BYTES {
            self.send_ack(name);
        } else if !self.unacked.contains(name) {
            self.unacked.insert(name.to_owned());
        }
    }

    /// Acknowledges what every consumer of `name` has received, if that moved.
    fn send_ack(&mut self, name: &str) {
        let point = self.resume_point(name);
        let Some(state) = self.sessions.get_mut(name) else {
            return;
        };
        state.unacked_events = 0;
        state.unacked_bytes = 0;
        let Some(point) = point else {
            return;
        };
        if point <= state.acked {
            return;
        }
        state.acked = point;
        let frame = ClientFrame::Ack(AckFrame {
            session: name.to_owned(),
            sequence: point,
        });
        self.enqueue_frame(&frame, Purpose::Other);
    }

    /// Acknowledges every session with events processed since its last `ack`.
    fn ack_all(&mut self) {
        if self.unacked.is_empty() || self.sink.is_none() {
            return;
        }
        for name in std::mem::take(&mut self.unacked) {
            self.send_ack(&name);
        }
    }

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

/// A `gap` event the client makes up: `missed_from..resume_from` of `session` are lost.
fn gap_event(session: &str, missed_from: u64, resume_from: u64) -> Event {
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

/// The next message of the socket; never resolves while disconnected.
async fn next_message<S>(
    stream: &mut Option<SplitStream<WebSocketStream<S>>>,
) -> Option<Result<Message, WsError>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match stream {
        Some(stream) => stream.next().await,
        None => std::future::pending().await,
    }
}

/// Writes every queued frame, then flushes. Cancel-safe: a frame leaves the outbox only
/// when the sink has accepted it, and the sink keeps what it accepted. Never resolves
/// while disconnected.
async fn write_outbox<S>(
    sink: &mut Option<SplitSink<WebSocketStream<S>, Message>>,
    outbox: &mut VecDeque<Outgoing>,
) -> Result<(), WsError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let Some(sink) = sink else {
        return std::future::pending().await;
    };
    poll_fn(|cx| {
        while !outbox.is_empty() {
            ready!(sink.poll_ready_unpin(cx))?;
            if let Some(outgoing) = outbox.pop_front() {
                sink.start_send_unpin(outgoing.message)?;
            }
        }
        sink.poll_flush_unpin(cx)
    })
    .await
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

    #[test]
    fn made_up_gaps_are_valid_events() {
        let gap = gap_event("s", 3, 7);
        assert_eq!(gap.validate(), Ok(()));
        assert_eq!(gap.sequence, 6);
    }
}
