//! The connection task: the only owner of the WebSocket. It writes the frames handles
//! ask for and routes every incoming event by execution id, the way async-nats'
//! `ConnectionHandler` routes messages by subscription id.
//!
//! One `select!` loop serves three sources: the outgoing frames (`outbox`), the socket and
//! the command queue. Writing never stops reading, and delivering never waits: every
//! execution has its own byte-bounded buffer ([`crate::queue`]), so one execution whose
//! events are not read never holds up another's. An execution whose consumer lets its
//! buffer outgrow the budget is cancelled and its consumer told (see [`Connection::deliver`]).
//! Reading the socket never stops for a consumer. The only backpressure is on callers:
//! the command queue is bounded, and while a command's frames wait to be written no new
//! command is taken, so callers wait when the gateway does not take frames fast enough.

use crate::client::{synthetic_error, Ended, Shared};
use crate::queue::{EventSender, Push};
use crate::ClientError;
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use sluice_protocol::{CancelFrame, ClientFrame, Event};
use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::future::poll_fn;
use std::sync::Arc;
use std::task::ready;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc::{self, error::TrySendError};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;
use tracing::{debug, warn};

/// The reply channel of a command; dropped unanswered only when the connection ends.
pub(crate) type Reply<T> = oneshot::Sender<Result<T, ClientError>>;

/// What handles ask of the connection task.
pub(crate) enum Command {
    /// Register a route for `id` and send its `execute` frame (already encoded), unless
    /// `id` is still running.
    Execute {
        id: String,
        serial: u64,
        frame: String,
        events: EventSender,
        reply: Reply<()>,
    },
    /// Send a `stdin` frame, if the execution is still running.
    Stdin {
        id: String,
        serial: u64,
        frame: String,
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
    /// A `cancel` frame was sent for it; it is never sent twice.
    cancel_sent: bool,
    /// The consumer fell behind: the bytes its buffer would have held, over the budget.
    fell_behind: Option<usize>,
}

/// The state of one connection, owned by its task.
pub(crate) struct Connection<S> {
    /// Write half of the WebSocket; only this task writes.
    sink: SplitSink<WebSocketStream<S>, Message>,
    /// Read half of the WebSocket.
    stream: SplitStream<WebSocketStream<S>>,
    /// Receiving half of the command queue; every `Client` and `Execution` holds a sender.
    /// Closed and dropped when the task ends, which fails later commands and wakes
    /// `Client::close`.
    commands: mpsc::Receiver<Command>,
    /// False once every sender is gone (no handle left), which starts closing.
    commands_open: bool,
    /// Sending half of the socket-event queue; `SocketEvents` (or, until it is taken,
    /// `Shared`) holds the receiver. Only `try_send`: a full queue drops with a warning.
    socket_events: mpsc::Sender<Event>,
    /// Running executions by id. Dropping a route's sender ends its `Execution`'s stream;
    /// when the task ends, dropping them all gives each its synthetic terminal event.
    routes: HashMap<String, Route>,
    /// Frames waiting for the socket. Commands are taken only while it is empty, so it
    /// holds at most one command's frame plus one `cancel` per abandoned route.
    outbox: VecDeque<Message>,
    /// Something was queued since the socket was last flushed.
    unflushed: bool,
    /// The close frame is queued or sent; no more frames follow it.
    closing: bool,
    /// When closing, the moment to give up waiting for the gateway's answer.
    close_deadline: Option<Instant>,
    /// The gateway's close frame, described, once it arrived.
    peer_close: Option<String>,
    shared: Arc<Shared>,
}

const TERMINAL_TYPES: [&str; 4] = ["completed", "cancelled", "resource_limit", "error"];

impl<S> Connection<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    pub(crate) fn new(
        socket: WebSocketStream<S>,
        commands: mpsc::Receiver<Command>,
        socket_events: mpsc::Sender<Event>,
        shared: Arc<Shared>,
    ) -> Self {
        let (sink, stream) = socket.split();
        Self {
            sink,
            stream,
            commands,
            commands_open: true,
            socket_events,
            routes: HashMap::new(),
            outbox: VecDeque::new(),
            unflushed: false,
            closing: false,
            close_deadline: None,
            peer_close: None,
            shared,
        }
    }

    /// Runs the connection until it ends, then fails whatever is still waiting on it.
    pub(crate) async fn run(mut self) {
        let ended = self.drive().await;
        debug!(clean = ended.clean, reason = %ended.reason, "connection to the gateway ended");
        // Order matters: `ended` must be set before anyone can observe the closed
        // command queue or a closed execution queue.
        let _ = self.shared.ended.set(ended);
        self.commands.close();
        // Fail everything waiting on the connection before the (possibly slow) goodbye:
        // dropped reply channels give callers `ConnectionClosed`, dropped routes give each
        // `Execution` its synthetic terminal event.
        while self.commands.try_recv().is_ok() {}
        self.routes.clear();
        if !self.closing {
            // Best effort: tell the gateway, if it can still hear us.
            let timeout = self.shared.options.close_timeout;
            let _ = tokio::time::timeout(timeout, self.sink.close()).await;
        }
        // Dropping `self` drops the socket-event sender, which ends `SocketEvents`.
    }

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
                message = self.stream.next() => match message {
                    Some(Ok(message)) => self.on_message(message),
                    Some(Err(err)) => return self.failed(format!("reading from the gateway failed: {err}")),
                    None => return self.stream_ended(),
                },
                command = self.commands.recv(), if self.commands_open && self.outbox.is_empty() => {
                    match command {
                        Some(command) => self.on_command(command),
                        None => {
                            self.commands_open = false;
                            self.start_close();
                        }
                    }
                }
                () = tokio::time::sleep_until(deadline), if self.close_deadline.is_some() => {
                    return self.failed("the gateway did not answer the close handshake in time".to_owned());
                }
            }
        }
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

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Execute {
                id,
                serial,
                frame,
                events,
                reply,
            } => {
                if self.closing {
                    let _ = reply.send(Err(self.closing_error()));
                    return;
                }
                match self.routes.entry(id) {
                    Entry::Occupied(taken) => {
                        let _ = reply.send(Err(ClientError::DuplicateId(taken.key().clone())));
                    }
                    // The caller stopped waiting; nobody would receive the events.
                    Entry::Vacant(_) if reply.is_closed() => {}
                    Entry::Vacant(slot) => {
                        slot.insert(Route {
                            serial,
                            events: Some(events),
                            cancel_sent: false,
                            fell_behind: None,
                        });
                        self.enqueue(Message::text(frame));
                        let _ = reply.send(Ok(()));
                    }
                }
            }
            Command::Stdin {
                id,
                serial,
                frame,
                reply,
            } => {
                let limit = self.shared.options.execution_buffer_bytes;
                let result = if self.closing {
                    Err(self.closing_error())
                } else {
                    match self.route(&id, serial) {
                        Some(Route {
                            fell_behind: Some(buffered_bytes),
                            ..
                        }) => Err(ClientError::SlowConsumer {
                            buffered_bytes: *buffered_bytes,
                            limit,
                            id,
                        }),
                        Some(_) => {
                            self.enqueue(Message::text(frame));
                            Ok(())
                        }
                        None => Err(ClientError::ExecutionFinished(id)),
                    }
                };
                let _ = reply.send(result);
            }
            Command::Cancel { id, serial, reply } => {
                // While closing there is nothing to do: the gateway cancels every
                // execution of a closing socket.
                if !self.closing {
                    self.send_cancel(&id, serial);
                }
                let _ = reply.send(Ok(()));
            }
            Command::Abandon { id, serial } => self.abandon(&id, serial),
            Command::Close => self.start_close(),
        }
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

    fn enqueue(&mut self, message: Message) {
        self.outbox.push_back(message);
        self.unflushed = true;
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
            session: None,
        })
        .to_json();
        self.enqueue(Message::text(frame));
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

    fn start_close(&mut self) {
        if self.closing {
            return;
        }
        self.closing = true;
        self.close_deadline = Some(Instant::now() + self.shared.options.close_timeout);
        let frame = CloseFrame {
            code: CloseCode::Normal,
            reason: "client closing".into(),
        };
        self.enqueue(Message::Close(Some(frame)));
    }

    fn on_message(&mut self, message: Message) {
        match message {
            Message::Text(text) => match Event::decode(text.as_str()) {
                Ok(event) => self.deliver(event),
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

    /// Routes one decoded event to its execution, or to the socket events. Never waits.
    ///
    /// If the execution's buffer overflows (its consumer let more than
    /// [`ClientOptions::execution_buffer_bytes`](crate::ClientOptions::execution_buffer_bytes)
    /// pile up), the execution is cancelled and its later events discarded, like those of
    /// a dropped `Execution`; its consumer receives what was buffered, then a synthetic
    /// terminal event. The route stays until the gateway's terminal event.
    fn deliver(&mut self, event: Event) {
        let route = match event.id.as_deref() {
            Some(id) => self.routes.get_mut(id),
            None => None,
        };
        let Some(route) = route else {
            self.publish_socket_event(event);
            return;
        };
        let terminal = event.is_terminal();
        let serial = route.serial;
        let Some(sender) = &route.events else {
            // Abandoned, or its consumer fell behind: nobody listens. The terminal event
            // frees the id.
            if terminal {
                self.forget(&event);
            }
            return;
        };
        let terminal_id = if terminal { event.id.clone() } else { None };
        let id = event.id.clone().unwrap_or_default();
        match sender.push(event) {
            Push::Queued => {
                if let Some(id) = terminal_id {
                    self.routes.remove(&id);
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
                if !self.closing {
                    self.send_cancel(&id, serial);
                }
            }
            Push::ReceiverGone(event) => self.receiver_gone(&event, serial),
        }
    }

    /// The `Execution` that `event` was for has been dropped.
    fn receiver_gone(&mut self, event: &Event, serial: u64) {
        let Some(id) = event.id.as_deref() else {
            return;
        };
        if event.is_terminal() {
            self.forget(event);
        } else {
            self.abandon(id, serial);
        }
    }

    fn forget(&mut self, event: &Event) {
        if let Some(id) = event.id.as_deref() {
            self.routes.remove(id);
        }
    }

    fn on_undecodable(&mut self, text: &str, err: &str) {
        warn!(error = err, "undecodable frame from the gateway");
        let probe = serde_json::from_str::<serde_json::Value>(text).ok();
        let field = |name: &str| {
            probe
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
            if TERMINAL_TYPES.contains(&kind.as_str()) && self.routes.contains_key(&id) {
                let message =
                    format!("the gateway's terminal {kind} event could not be decoded: {err}");
                self.deliver(synthetic_error(Some(id), session, message));
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

/// Writes every queued frame, then flushes. Cancel-safe: a frame leaves the outbox only
/// when the sink has accepted it, and the sink keeps what it accepted.
async fn write_outbox<S>(
    sink: &mut SplitSink<WebSocketStream<S>, Message>,
    outbox: &mut VecDeque<Message>,
) -> Result<(), WsError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    poll_fn(|cx| {
        while !outbox.is_empty() {
            ready!(sink.poll_ready_unpin(cx))?;
            if let Some(message) = outbox.pop_front() {
                sink.start_send_unpin(message)?;
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
