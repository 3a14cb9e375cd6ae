//! The connection task: the only owner of the WebSocket. It writes the frames handles
//! ask for and routes every incoming event to the [`Execution`](crate::Execution) or
//! [`SessionEvents`](crate::SessionEvents) it is for, the way async-nats'
//! `ConnectionHandler` routes messages by subscription id. When the connection drops, it
//! reconnects and resumes every session it was reading.
//!
//! This module owns the task's state ([`Connection`]) and its life: the `select!` loop,
//! reading and writing the socket, closing. One concept per submodule, each an `impl` of
//! [`Connection`] over the same state:
//!
//! - [`commands`]: the command loop, what the handles' [`Command`]s
//!   do (execute, stdin, cancel, abandon);
//! - [`routing`]: incoming events to their execution or subscribers, deduplicated by
//!   sequence, with the `gap`s that say what was lost;
//! - [`attach`]: the bookkeeping of `attach` and `detach`, and of the subscribers;
//! - [`acks`]: acknowledging what consumers have received;
//! - [`reconnect`]: reconnecting with backoff, and resuming on the new socket.
//!
//! One `select!` loop serves three sources: the outgoing frames (`outbox`), the socket and
//! the command queue. Writing never stops reading, and delivering never waits: every
//! consumer has its own byte-bounded buffer ([`crate::queue`]), so one whose events are
//! not read never holds up another. An execution whose consumer lets its buffer outgrow
//! the budget is cancelled and its consumer told (see [`Connection::push_to_route`]).
//! Reading the socket never stops for a consumer. The only backpressure is on callers:
//! the command queue is bounded, and while a command's frames wait to be written no new
//! command is taken, so callers wait when the gateway does not take frames fast enough.

mod acks;
mod attach;
mod commands;
mod reconnect;
mod routing;

pub(crate) use reconnect::{AttemptError, Connector};

use crate::command::{Command, Reply};
use crate::shared::{Ended, Shared};
use crate::synthetic::synthetic_error;
use crate::ClientError;
use attach::{PendingAttach, Subscriber};
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use reconnect::Outage;
use routing::{Route, SessionState};
use sluice_protocol::{Catalog, ClientFrame, Event};
use std::collections::{HashMap, HashSet, VecDeque};
use std::future::poll_fn;
use std::hash::RandomState;
use std::sync::Arc;
use std::task::{ready, Poll};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;
use tracing::debug;

/// Most messages read in one go before the loop looks at its other sources again.
const READ_BURST: usize = 64;

/// What a queued frame is for: after a reconnect, frames that never reached the old
/// socket are kept if they cannot be rebuilt from the task's state.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Purpose {
    Execute {
        id: String,
        serial: u64,
    },
    /// Input for a running execution (`stdin`, `resize`): kept across a reconnect while
    /// the execution runs.
    Stdin {
        id: String,
        serial: u64,
    },
    /// Attach, detach, ack, cancel, close: rebuilt from the state.
    Other,
}

/// A frame in the outbox, waiting for the socket.
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
    /// `runtimes` frames sent and not yet answered, oldest first (answers come in order).
    runtimes_asked: VecDeque<Reply<Catalog>>,
    /// `restart` frames sent and not yet answered, by session, oldest first.
    restarts: HashMap<String, VecDeque<Reply<()>>>,
    /// File frames sent and not yet answered in full, by `request`.
    files_asked: HashMap<String, FileAsk>,
    /// Sessions detached on this socket, most recent last (at most
    /// [`DETACHES_REMEMBERED`](attach::DETACHES_REMEMBERED)): their late events are
    /// dropped, and a refusal of the `detach` (the gateway had let go of the session
    /// first) is nobody's business.
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
    /// The options, and how the connection ended (set by [`Connection::run`] before the
    /// command queue closes), shared with every handle.
    shared: Arc<Shared>,
}

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
        let acks = shared.acknowledges;
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
            runtimes_asked: VecDeque::new(),
            restarts: HashMap::new(),
            files_asked: HashMap::new(),
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
                    unauthorized: None,
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

    /// The connection ended for `reason`, not by the client's choice.
    fn failed(&self, reason: String) -> Ended {
        Ended {
            clean: false,
            reason,
            unauthorized: None,
        }
    }

    /// How the connection ended when the socket stream ran out.
    fn stream_ended(&mut self) -> Ended {
        if self.closing {
            return Ended {
                clean: true,
                reason: "the client closed the connection".to_owned(),
                unauthorized: None,
            };
        }
        let reason = match self.peer_close.take() {
            Some(close) => format!("the gateway closed the connection ({close})"),
            None => "the gateway closed the connection without a close frame".to_owned(),
        };
        Ended {
            clean: false,
            reason,
            unauthorized: None,
        }
    }
    /// The error of a command that arrives while the client is closing.
    fn closing_error(&self) -> ClientError {
        ClientError::ConnectionClosed {
            reason: "the client is closing the connection".to_owned(),
        }
    }
    /// Queues a frame for the socket (nothing after the close frame).
    fn enqueue(&mut self, message: Message, purpose: Purpose) {
        if self.closing {
            // Nothing may follow the close frame.
            return;
        }
        self.outbox.push_back(Outgoing { message, purpose });
        self.unflushed = true;
    }

    /// Encodes and queues a client frame.
    fn enqueue_frame(&mut self, frame: &ClientFrame, purpose: Purpose) {
        self.enqueue(Message::text(frame.to_json()), purpose);
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

/// A file frame on its way: its answers so far, and what to do if the socket drops.
pub(crate) struct FileAsk {
    answers: Vec<Event>,
    frame: String,
    retry: bool,
    reply: Reply<Vec<Event>>,
}
