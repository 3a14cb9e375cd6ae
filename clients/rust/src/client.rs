//! [`Client`]: the cheap, cloneable handle to one WebSocket connection (opening it, and
//! starting executions and attaches on it), and [`SocketEvents`], the receiver of the
//! events that belong to no execution.

use crate::command::{call, Command};
use crate::connection::{AttemptError, Connection, Connector};
use crate::queue::{event_queue, session_queue};
use crate::shared::Shared;
use crate::{ClientError, ClientOptions, Execution, SessionEvents};
use futures::Stream;
use sluice_protocol::{Catalog, ClientFrame, Event, ExecuteRequest, MAX_ID_BYTES, SUBPROTOCOL};
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::header::{AUTHORIZATION, SEC_WEBSOCKET_PROTOCOL};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// A connection to a Sluice gateway.
///
/// One background task owns the WebSocket. A `Client` (and every [`Execution`] and
/// [`SessionEvents`] it starts) talks to that task through one bounded command queue; the
/// task routes each incoming event to that execution's or session's own buffer, bounded
/// in bytes by [`ClientOptions::execution_buffer_bytes`] (see [`Execution`] for what
/// happens when a consumer falls that far behind).
///
/// When the connection drops, the task reconnects and resumes where it left off (see
/// [`ClientOptions::reconnect`] and the [crate documentation](crate)): the streams go on
/// as if nothing had happened.
///
/// `Client` is cheap to clone; all clones share the connection. The connection stays open
/// while any clone, [`Execution`] or [`SessionEvents`] is alive, and closes (cleanly) when
/// the last one is dropped, or earlier through [`Client::close`].
#[derive(Clone)]
pub struct Client {
    /// Sending half of the command queue; the connection task holds the receiver and
    /// drops it when the connection ends, which makes every later command fail with
    /// [`ClientError::ConnectionClosed`].
    commands: mpsc::Sender<Command>,
    /// State shared with the executions and the connection task.
    shared: Arc<Shared>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("closed", &self.is_closed())
            .field("options", &self.shared.options)
            .finish_non_exhaustive()
    }
}

/// How [`Client::attach_with`] attaches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AttachOptions {
    /// Replay the events after this sequence (`None`: all the gateway still buffers).
    pub since: Option<u64>,
    /// Open the session with a workspace if it has none.
    pub workspace: bool,
}

impl Client {
    /// The command queue, for the handles' methods in other modules (`files`).
    pub(crate) fn commands(&self) -> &mpsc::Sender<Command> {
        &self.commands
    }

    /// The state shared with the connection task.
    pub(crate) fn shared(&self) -> &Shared {
        &self.shared
    }

    /// The options this client was made with.
    pub(crate) fn options(&self) -> &ClientOptions {
        &self.shared.options
    }

    /// Connects to the gateway's WebSocket endpoint at `url` (for example
    /// `ws://127.0.0.1:8080/v1/ws`) with default [`ClientOptions`].
    ///
    /// Offers the `sluice.v1` subprotocol and disables Nagle's algorithm (TCP_NODELAY).
    /// With [`ClientOptions::token`] set, presents it as `Authorization: Bearer`; a gateway
    /// that refuses the credential (HTTP 401) makes this fail with
    /// [`ClientError::Unauthorized`], carrying the gateway's reason.
    pub async fn connect(url: &str) -> Result<Self, ClientError> {
        Self::connect_with(url, ClientOptions::default()).await
    }

    /// Connects to `url` with the given options; see [`Client::connect`].
    ///
    /// Only this first connection is attempted once: an error here is returned at once.
    /// Reconnecting (see [`ClientOptions::reconnect`]) starts after a connection that was
    /// established drops.
    pub async fn connect_with(url: &str, options: ClientOptions) -> Result<Self, ClientError> {
        let socket = open(url, &options).await?;
        tracing::debug!(url, "connected to the gateway");
        let url = url.to_owned();
        let reconnect_options = options.clone();
        let connector: Connector<MaybeTlsStream<tokio::net::TcpStream>> = Box::new(move || {
            let url = url.clone();
            let options = reconnect_options.clone();
            Box::pin(async move { open(&url, &options).await.map_err(AttemptError::from) })
        });
        Ok(Self::start(socket, options, Some(connector)))
    }

    /// Spawns the connection task over an established WebSocket; `connector` opens new
    /// ones after it drops (none: the first drop ends the client).
    pub(crate) fn start<S>(
        socket: WebSocketStream<S>,
        options: ClientOptions,
        connector: Option<Connector<S>>,
    ) -> Self
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (commands, command_rx) = mpsc::channel(options.command_buffer.max(1));
        let (socket_tx, socket_rx) = mpsc::channel(options.socket_event_buffer.max(1));
        let acknowledges = connector.is_some() && options.reconnect.is_some();
        let shared = Arc::new(Shared::new(options, socket_rx, acknowledges));
        let connection = Connection::new(
            socket,
            connector,
            command_rx,
            socket_tx,
            Arc::clone(&shared),
        );
        tokio::spawn(connection.run());
        Self { commands, shared }
    }

    /// Starts an execution.
    ///
    /// If `request.id` is empty the client picks a unique one (`e1`, `e2`, ... per client,
    /// skipping ids in use). An id whose execution is still running on this client (its
    /// terminal event has not arrived yet, even if its [`Execution`] was dropped) is refused
    /// with [`ClientError::DuplicateId`].
    ///
    /// Returns once the frame is queued on the socket; everything the gateway answers,
    /// including a refusal, arrives as events on the returned [`Execution`].
    ///
    /// # Sessions and reconnecting
    ///
    /// Without `request.session` the gateway makes a session for the execution alone. If
    /// the connection drops before the gateway's first event for it arrived, the client
    /// cannot tell whether the gateway got the `execute`, and cannot ask (it does not know
    /// the session yet): the execution ends with a synthetic terminal `error` saying so
    /// (it ran at most once). With `request.session` named, the client sends the
    /// `execute` again after reconnecting; the gateway answers an id its session already
    /// knows from the session, so the program runs exactly once.
    pub async fn execute(&self, request: ExecuteRequest) -> Result<Execution, ClientError> {
        if let Some(session) = &request.session {
            check_session(session)?;
        }
        let generated = request.id.is_empty();
        let mut request = request;
        request.ack = self.shared.acknowledges;
        let mut frame = ClientFrame::Execute(request);
        loop {
            if generated {
                if let ClientFrame::Execute(request) = &mut frame {
                    request.id = self.shared.next_id();
                }
            }
            let id = frame.id().unwrap_or_default().to_owned();
            let session = frame.session().map(str::to_owned);
            check_id(&id)?;
            let text = frame.to_json();
            self.shared.check_frame_size(text.len())?;
            let serial = self.shared.next_serial();
            let (events, events_rx) = event_queue(self.shared.options.execution_buffer_bytes);
            let registered = call(&self.commands, &self.shared, |reply| Command::Execute {
                id: id.clone(),
                serial,
                session,
                frame: text,
                events,
                reply,
            })
            .await;
            match registered {
                Ok(()) => {
                    return Ok(Execution::new(
                        id,
                        serial,
                        events_rx,
                        self.commands.clone(),
                        Arc::clone(&self.shared),
                    ))
                }
                // The caller named this id itself for another execution; take the next one.
                Err(ClientError::DuplicateId(_)) if generated => continue,
                Err(err) => return Err(err),
            }
        }
    }

    /// Runs `code` in `language` with default settings and a generated id; see
    /// [`Client::execute`].
    pub async fn execute_code_stream(
        &self,
        language: &str,
        code: &str,
    ) -> Result<Execution, ClientError> {
        self.execute(ExecuteRequest {
            language: language.to_owned(),
            code: code.to_owned(),
            ..ExecuteRequest::default()
        })
        .await
    }

    /// Receives the events of `session` on this client: those after `since` that the
    /// gateway still buffers (`None`: all of them), then every new one, in order.
    ///
    /// Returns once the gateway has accepted the `attach` (its `attached` answer, which
    /// the stream does not yield), or fails with [`ClientError::AttachRefused`] (code
    /// `unknown_session` when no such session is open: it never was, or it ended;
    /// `bad_request` when `since` is past its last event; `too_many_sessions` when the
    /// socket reads as many sessions as the gateway allows). The
    /// session may be one this client's executions run in (see
    /// [`Execution::session`](crate::Execution::session)), a named one, or one another
    /// client runs in; the events of this client's own executions still reach their
    /// [`Execution`]s as well.
    ///
    /// See [`SessionEvents`] for the stream: it survives reconnects like executions do,
    /// carries a `gap` event when events were lost, and is bounded like an execution's
    /// buffer.
    pub async fn attach(
        &self,
        session: &str,
        since: Option<u64>,
    ) -> Result<SessionEvents, ClientError> {
        self.attach_with(
            session,
            AttachOptions {
                since,
                workspace: false,
            },
        )
        .await
    }

    /// [`Client::attach`] with options: with `workspace`, the named session is opened
    /// if it is not open, and given a workspace if it keeps none (of the caller's
    /// default `workspace_bytes`), so the file methods work before any execution
    /// (PROTOCOL.md §4.4, §7.7). Refused with [`ClientError::AttachRefused`]: code
    /// `no_workspace` for a gateway-made session or a gateway that cannot keep
    /// workspaces, `too_many_sessions` past the workspace caps, and `bad_request` when an
    /// attach of the session is already on its way from this client.
    pub async fn attach_with(
        &self,
        session: &str,
        options: AttachOptions,
    ) -> Result<SessionEvents, ClientError> {
        let AttachOptions { since, workspace } = options;
        check_session(session)?;
        let key = self.shared.next_serial();
        let (events, events_rx) = session_queue(self.shared.options.execution_buffer_bytes);
        let since = since.unwrap_or(0);
        call(&self.commands, &self.shared, |reply| Command::Attach {
            key,
            session: session.to_owned(),
            since,
            workspace,
            events,
            reply,
        })
        .await?;
        Ok(SessionEvents::new(
            session.to_owned(),
            key,
            since,
            events_rx,
            self.commands.clone(),
            Arc::clone(&self.shared),
        ))
    }

    /// Asks the gateway which languages this client may run (with each interpreter's
    /// version, and whether it runs persistently or on a terminal) and each limit's
    /// default and maximum, as its credential narrows them: the answer to a `runtimes`
    /// frame. Asked again on the new socket if the connection drops before the answer.
    /// A gateway older than the frame refuses it: [`ClientError::RuntimesRefused`].
    pub async fn runtimes(&self) -> Result<Catalog, ClientError> {
        call(&self.commands, &self.shared, |reply| Command::Runtimes {
            reply,
        })
        .await
    }

    /// Restarts `session`'s persistent interpreter, as a notebook's "restart kernel": its
    /// running and waiting cells end `cancelled`, and the next cell starts a fresh
    /// interpreter (no state, `execution_count` from 1); the workspace stays. Returns
    /// once the gateway's `restarted` event arrived (PROTOCOL.md 4.10).
    ///
    /// This client must read the session (an execution of it ran here, or
    /// [`Client::attach`]): otherwise [`ClientError::RestartRefused`] with
    /// `bad_request` before anything is sent. The gateway's refusals come as
    /// [`ClientError::RestartRefused`] too; a connection that drops before the answer
    /// gives [`ClientError::ConnectionClosed`] (it may or may not have happened).
    pub async fn restart(&self, session: &str) -> Result<(), ClientError> {
        check_session(session)?;
        call(&self.commands, &self.shared, |reply| Command::Restart {
            session: session.to_owned(),
            reply,
        })
        .await
    }

    /// Takes the receiver of socket-stream events: events that belong to no running
    /// execution. Returns `None` after the first call (there is one receiver per
    /// connection, shared by all clones).
    ///
    /// These are the gateway's `error` events with `id: null` (refusals of `stdin` and
    /// `cancel` frames such as `stdin_full` or `unknown_execution`, frame-level
    /// `bad_request`/`too_large`), `error` events naming an id that is not running on this
    /// client, anything else the client cannot deliver to an execution, and synthetic
    /// `error` events (code `internal`, sequence 0, see [`is_synthetic`](crate::is_synthetic))
    /// for frames from the gateway that could not be decoded. Refusals that answer the
    /// client's own frames (an `attach`, a `detach`, an `execute` sent again after a
    /// reconnect; see the [crate documentation](crate)) are not among them.
    ///
    /// The queue holds [`ClientOptions::socket_event_buffer`] events. When it is full
    /// (nobody takes or drains the receiver), further events are logged with
    /// `tracing::warn!` and dropped, so a neglected receiver never stalls the connection.
    /// The stream ends when the connection ends.
    pub fn socket_events(&self) -> Option<SocketEvents> {
        self.shared
            .take_socket_events()
            .map(|events| SocketEvents { events })
    }

    /// Closes the connection: cancels every execution still running (the gateway would
    /// otherwise keep them for its session grace period, waiting for a reconnect), sends a
    /// WebSocket close frame, keeps delivering the events that arrive until the gateway
    /// answers, then ends. Waits at most [`ClientOptions::close_timeout`] for the answer.
    /// Does not reconnect.
    ///
    /// Executions still running then end with a synthetic terminal `error` (code
    /// `internal`), [`SessionEvents`] with a synthetic `error`. Returns `Ok` when the close
    /// handshake completed or the client closed while reconnecting (also when another
    /// clone closed the connection first), or [`ClientError::ConnectionClosed`] when the
    /// connection had ended some other way.
    pub async fn close(&self) -> Result<(), ClientError> {
        // A failed send means the connection task is already gone; `closed` then
        // returns at once and `ended` says how.
        let _ = self.commands.send(Command::Close).await;
        self.commands.closed().await;
        match self.shared.ended.get() {
            Some(ended) if ended.clean => Ok(()),
            _ => Err(self.shared.closed_error()),
        }
    }

    /// True once the connection has ended for good (closed, or reconnecting gave up);
    /// every later command fails. While the client reconnects it is not closed.
    pub fn is_closed(&self) -> bool {
        self.commands.is_closed()
    }
}

/// The receiver of socket-stream events; see [`Client::socket_events`].
///
/// A [`Stream`] of [`Event`]s that ends when the connection ends. Dropping it discards
/// later socket-stream events (logged at debug level).
#[derive(Debug)]
pub struct SocketEvents {
    /// Receiving half of the socket-event queue; the connection task holds the sender
    /// and drops it when the connection ends, which ends this stream.
    events: mpsc::Receiver<Event>,
}

impl SocketEvents {
    /// Waits for the next socket-stream event; `None` once the connection has ended and
    /// every buffered event was received.
    pub async fn recv(&mut self) -> Option<Event> {
        self.events.recv().await
    }

    /// Returns a buffered event without waiting, if there is one.
    pub fn try_recv(&mut self) -> Option<Event> {
        self.events.try_recv().ok()
    }
}

impl Stream for SocketEvents {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.events.poll_recv(cx)
    }
}

/// Opens one WebSocket to `url`: the `sluice.v1` subprotocol, the credential, the
/// incoming frame cap, TCP_NODELAY. A 401 answer is [`ClientError::Unauthorized`].
async fn open(
    url: &str,
    options: &ClientOptions,
) -> Result<WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>, ClientError> {
    let failed = |source| ClientError::Connect {
        url: crate::error::redact_url(url),
        source: Box::new(source),
    };
    let mut request = url.into_client_request().map_err(failed)?;
    request.headers_mut().insert(
        SEC_WEBSOCKET_PROTOCOL,
        HeaderValue::from_static(SUBPROTOCOL),
    );
    if let Some(token) = &options.token {
        let mut value =
            HeaderValue::from_str(&format!("Bearer {}", token.expose())).map_err(|_| {
                ClientError::Unauthorized {
                    reason: "the token cannot be sent in an HTTP header (control characters)"
                        .to_owned(),
                }
            })?;
        value.set_sensitive(true);
        request.headers_mut().insert(AUTHORIZATION, value);
    }
    let config = WebSocketConfig::default()
        .max_message_size(Some(options.max_incoming_frame_bytes))
        .max_frame_size(Some(options.max_incoming_frame_bytes));
    let (socket, _response) =
        tokio_tungstenite::connect_async_with_config(request, Some(config), true)
            .await
            .map_err(|err| match err {
                tungstenite::Error::Http(response)
                    if response.status() == StatusCode::UNAUTHORIZED =>
                {
                    ClientError::Unauthorized {
                        reason: refusal_reason(response.body().as_deref()),
                    }
                }
                other => failed(other),
            })?;
    Ok(socket)
}

/// The first line of a 401 response's body (the gateway's reason), or a stand-in where it
/// sent none (or the handshake did not read it).
fn refusal_reason(body: Option<&[u8]>) -> String {
    let text = String::from_utf8_lossy(body.unwrap_or_default());
    match text.lines().map(str::trim).find(|line| !line.is_empty()) {
        Some(line) => line.chars().take(500).collect(),
        None => "HTTP 401 Unauthorized (no reason given)".to_owned(),
    }
}

/// Refuses session names the gateway would refuse.
fn check_session(session: &str) -> Result<(), ClientError> {
    let invalid = |reason: String| {
        Err(ClientError::InvalidSession {
            session: session.to_owned(),
            reason,
        })
    };
    if session.is_empty() {
        return invalid("empty".to_owned());
    }
    if session.len() > MAX_ID_BYTES {
        return invalid(format!("longer than {MAX_ID_BYTES} bytes"));
    }
    Ok(())
}

fn check_id(id: &str) -> Result<(), ClientError> {
    if id.len() > MAX_ID_BYTES {
        return Err(ClientError::InvalidId {
            id: id.to_owned(),
            reason: format!("longer than {MAX_ID_BYTES} bytes"),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reason_of_a_refusal_is_its_first_line() {
        assert_eq!(
            refusal_reason(Some(b"the token has expired\n")),
            "the token has expired"
        );
        assert_eq!(refusal_reason(Some(b"\n  one\r\ntwo")), "one");
        assert!(refusal_reason(None).contains("401"));
        assert!(refusal_reason(Some(b"  \n")).contains("401"));
    }

    #[test]
    fn overlong_id_is_refused() {
        let id = "x".repeat(MAX_ID_BYTES + 1);
        assert!(matches!(check_id(&id), Err(ClientError::InvalidId { .. })));
        assert!(check_id(&"x".repeat(MAX_ID_BYTES)).is_ok());
        assert!(check_id("e1").is_ok());
    }

    #[test]
    fn empty_and_overlong_session_names_are_refused() {
        assert!(matches!(
            check_session(""),
            Err(ClientError::InvalidSession { .. })
        ));
        let name = "s".repeat(MAX_ID_BYTES + 1);
        assert!(matches!(
            check_session(&name),
            Err(ClientError::InvalidSession { .. })
        ));
        assert!(check_session(&"s".repeat(MAX_ID_BYTES)).is_ok());
    }
}
