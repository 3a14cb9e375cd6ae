//! One WebSocket connection: a reader loop that decodes client frames and drives
//! executions and attachments, and a writer task that alone writes to the socket.
//!
//! The socket reads streams, not queues: its own stream (refusals that belong to no
//! session) and every session it is attached to, each through a cursor into that
//! stream's replay buffer ([`link::SocketLink`]). Executions belong to their session,
//! not to the socket: when the socket goes away they run on, and the session ends them
//! if no socket comes back within the grace period.
//!
//! Liveness: the writer pings the client every `--ping-interval-ms`; the reader closes
//! a socket from which nothing (no frame, no pong) arrived for two intervals, and one
//! that has held no session and no execution for `--idle-timeout-ms`.

mod link;

use crate::admission::{ExecutionSlot, Principal};
use crate::buffer_budget::BufferBudget;
use crate::execution::kernel::KernelKind;
use crate::execution::{self, ExecutionContext, ExecutionSpec, Start, StdinChunk};
use crate::meter::Meter;
use crate::session::{EventStream, Fingerprint, Known, Lead, OpenError, Session};
use crate::state::GatewayState;
use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures::{FutureExt as _, SinkExt as _, StreamExt as _};
use link::SocketLink;
use sluice_protocol::{
    AckFrame, AttachFrame, CancelFrame, ClientFrame, DetachFrame, ErrorCode, Event, ExecuteRequest,
    FrameError, StdinFrame,
};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc::error::TrySendError;
use tokio_util::sync::CancellationToken;

/// Close code sent when the gateway shuts down (RFC 6455 "going away").
const CLOSE_GOING_AWAY: u16 = 1001;

/// How long a socket may keep shutdown waiting while it takes its last events.
const SHUTDOWN_SEND_GRACE: Duration = Duration::from_secs(1);

/// Close code sent when a frame exceeds the transport cap (RFC 6455 "message too big").
const CLOSE_TOO_BIG: u16 = 1009;

/// Close code sent to a socket closed for holding nothing past the idle timeout.
const CLOSE_NORMAL: u16 = 1000;

/// Close code sent when a message is not completed within the message deadline (RFC
/// 6455 "policy violation").
const CLOSE_POLICY: u16 = 1008;

/// Close code sent when the buffer budget has no room for a message in flight (IANA
/// "try again later").
const CLOSE_TRY_AGAIN_LATER: u16 = 1013;

/// Most bytes of frames the writer takes from its streams before writing them out.
const WRITE_BATCH_BYTES: usize = 256 * 1024;

/// Serves one upgraded socket until the client leaves or `shutdown` is cancelled.
pub(crate) async fn serve(
    socket: WebSocket,
    state: Arc<GatewayState>,
    shutdown: CancellationToken,
    socket_id: u64,
    principal: Principal,
    meter: Arc<Meter>,
) {
    meter.arm();
    let message_deadline = state.config.message_deadline;
    let (sink, mut frames) = socket.split();
    // What this socket holds (its own stream, its stdin) counts against its peer's share.
    let buffers = state.buffers.for_principal(principal);
    let own = Arc::new(EventStream::new(
        None,
        crate::fanout::ReplayCaps::from_config(&state.config),
        &buffers,
    ));
    let link = Arc::new(SocketLink::new(socket_id, own.clone()));
    // Cancelled on gateway shutdown, or by the writer when it can no longer write (the
    // client stopped reading past the send timeout, or the socket broke).
    let closing = shutdown.child_token();
    // Tells the writer to write what is left, then close.
    let finish = CancellationToken::new();
    let close_reason: Arc<std::sync::Mutex<Option<CloseFrame>>> = Arc::default();
    let peer_closed: Arc<std::sync::atomic::AtomicBool> = Arc::default();
    let writer = tokio::spawn(write_loop(Writer {
        sink,
        link: link.clone(),
        state: state.clone(),
        failed: closing.clone(),
        shutdown: shutdown.clone(),
        finish: finish.clone(),
        close_reason: close_reason.clone(),
        peer_closed: peer_closed.clone(),
    }));
    let mut conn = Connection {
        state: state.clone(),
        link: link.clone(),
        own,
        started: HashMap::new(),
        running_here: Arc::new(AtomicUsize::new(0)),
        closing: closing.clone(),
        close_reason,
        frame_session: None,
        peer_closed: peer_closed.clone(),
        principal,
        buffers,
        busy_at: tokio::time::Instant::now(),
    };
    tracing::debug!("connected");
    let (ping_interval, idle_timeout) = (state.config.ping_interval, state.config.idle_timeout);
    let silent_for = ping_interval.saturating_mul(2);
    let mut last_heard = tokio::time::Instant::now();
    let silence = tokio::time::sleep(silent_for);
    tokio::pin!(silence);
    let mut idle_since = last_heard;
    let idle_check = tokio::time::sleep(idle_timeout);
    tokio::pin!(idle_check);
    loop {
        tokio::select! {
            () = closing.cancelled() => break,
            () = meter.overdue(message_deadline) => {
                conn.message_overdue();
                break;
            }
            () = &mut silence => {
                let due = last_heard + silent_for;
                if due > tokio::time::Instant::now() {
                    silence.as_mut().reset(due);
                    continue;
                }
                tracing::info!(?silent_for, "closing: nothing from the client, not even a pong");
                let reason = format!("no answer to ping within {} ms", silent_for.as_millis());
                conn.close_with(CLOSE_GOING_AWAY, reason);
                break;
            }
            () = &mut idle_check => {
                let now = tokio::time::Instant::now();
                if conn.holds_something() {
                    // Look again soon: it may stop holding anything between two looks.
                    idle_since = now;
                    idle_check.as_mut().reset(now + idle_timeout / 4);
                    continue;
                }
                let since = idle_since.max(conn.busy_at);
                if now < since + idle_timeout {
                    idle_check.as_mut().reset(since + idle_timeout);
                    continue;
                }
                tracing::debug!(?idle_timeout, "closing: idle, holding no session and no execution");
                let reason = format!(
                    "idle for {} ms with no session and no execution",
                    idle_timeout.as_millis()
                );
                conn.close_with(CLOSE_NORMAL, reason);
                break;
            }
            frame = frames.next() => {
                last_heard = tokio::time::Instant::now();
                match frame {
                Some(Ok(Message::Text(text))) => {
                    meter.message_done();
                    conn.handle_text(text.as_str()).await;
                }
                Some(Ok(Message::Binary(_))) => {
                    meter.message_done();
                    conn.frame_session = None;
                    conn.refuse(None, ErrorCode::BadRequest, "binary frames are not part of the protocol; send JSON text frames").await;
                }
                Some(Ok(Message::Ping(payload) | Message::Pong(payload))) => {
                    meter.control_done(payload.len());
                }
                Some(Ok(Message::Close(_))) => {
                    conn.peer_closed.store(true, Ordering::Release);
                    break;
                }
                None => break,
                Some(Err(err)) => {
                    conn.read_failed(err, &meter);
                    break;
                }
            }},
        }
    }
    if shutdown.is_cancelled() {
        // Every execution is being cancelled; let their last events reach this socket.
        let deadline = state.config.kill_grace + SHUTDOWN_SEND_GRACE;
        let _ = tokio::time::timeout(deadline, state.executions.wait()).await;
    }
    finish.cancel();
    if let Err(err) = writer.await {
        tracing::error!(%err, "socket writer task failed");
    }
    link.unsubscribe_all(&state.sessions);
    tracing::debug!("disconnected");
}

/// What the writer task needs.
struct Writer {
    sink: futures::stream::SplitSink<WebSocket, Message>,
    link: Arc<SocketLink>,
    state: Arc<GatewayState>,
    /// Cancelled by the writer when it gives up on the socket (the reader stops then).
    failed: CancellationToken,
    shutdown: CancellationToken,
    /// Cancelled by the reader: write what is left, then close.
    finish: CancellationToken,
    /// The close frame the reader asked for (a frame over the transport cap).
    close_reason: Arc<std::sync::Mutex<Option<CloseFrame>>>,
    /// The client sent a close frame: no more events, only the close reply.
    peer_closed: Arc<std::sync::atomic::AtomicBool>,
}

/// Takes events from every stream the socket reads and writes them, one flush per
/// batch. A batch that cannot be written within the send timeout (the client stopped
/// reading) ends the connection: a slow consumer must not hold the gateway forever.
async fn write_loop(writer: Writer) {
    let Writer {
        mut sink,
        link,
        state,
        failed,
        shutdown,
        finish,
        close_reason,
        peer_closed,
    } = writer;
    let send_timeout = state.config.send_timeout;
    let ping_interval = state.config.ping_interval;
    let mut next_ping = tokio::time::Instant::now() + ping_interval;
    loop {
        let wake = link.wake.notified();
        tokio::pin!(wake);
        wake.as_mut().enable();
        if peer_closed.load(Ordering::Acquire) {
            // The client said goodbye: the close reply is all it may still get.
            break;
        }
        let batch = link.take(WRITE_BATCH_BYTES, &state.sessions);
        // Pinged on a clock, busy or not: a client that only reads answers pings only.
        let now = tokio::time::Instant::now();
        let ping = now >= next_ping && !finish.is_cancelled();
        if batch.frames.is_empty() && !ping {
            if finish.is_cancelled() {
                break;
            }
            tokio::select! {
                () = wake => {}
                () = finish.cancelled() => {}
                () = tokio::time::sleep_until(next_ping) => {}
            }
            continue;
        }
        if ping {
            next_ping = now + ping_interval;
        }
        let write = async {
            if ping {
                sink.feed(Message::Ping(bytes::Bytes::new())).await?;
            }
            for frame in batch.frames {
                sink.feed(Message::Text(frame)).await?;
            }
            sink.flush().await
        };
        // On shutdown a client gets a short last chance to take what is left (its
        // `cancelled` events and the close frame), not the whole send timeout.
        let shutdown_deadline = async {
            shutdown.cancelled().await;
            tokio::time::sleep(SHUTDOWN_SEND_GRACE).await;
        };
        let result = tokio::select! {
            result = tokio::time::timeout(send_timeout, write) => match result {
                Ok(result) => result,
                Err(_) => {
                    tracing::warn!(?send_timeout, "closing: the client has not read its socket within the send timeout");
                    failed.cancel();
                    return;
                }
            },
            () = shutdown_deadline => {
                tracing::debug!("closing: the client did not take its last events during shutdown");
                failed.cancel();
                return;
            }
        };
        if let Err(err) = result {
            tracing::debug!(%err, "socket write failed");
            failed.cancel();
            return;
        }
    }
    let requested = close_reason
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take();
    let close = requested.or_else(|| {
        shutdown.is_cancelled().then(|| CloseFrame {
            code: CLOSE_GOING_AWAY,
            reason: "gateway shutting down".into(),
        })
    });
    let goodbye = async {
        // After the client's close frame the WebSocket layer sends the reply itself.
        if let Some(close) = close.filter(|_| !peer_closed.load(Ordering::Acquire)) {
            let _ = sink.send(Message::Close(Some(close))).await;
        }
        let _ = sink.close().await;
    };
    let _ = tokio::time::timeout(send_timeout.min(SHUTDOWN_SEND_GRACE), goodbye).await;
}

/// Whether the reader may use `id` as an execution id.
fn is_usable_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= sluice_protocol::MAX_ID_BYTES
}

/// The reader side's state.
struct Connection {
    state: Arc<GatewayState>,
    link: Arc<SocketLink>,
    /// Refusals that belong to no session are numbered on this stream.
    own: Arc<EventStream>,
    /// Executions this socket started, by id, with the session each runs in; stdin and
    /// cancel without a `session` look here.
    started: HashMap<String, (Arc<Session>, Arc<AtomicBool>)>,
    /// Executions this socket started that have not ended.
    running_here: Arc<AtomicUsize>,
    /// Cancelled on gateway shutdown or when the writer gives up; every wait for room in
    /// the socket's own stream also watches it, so a stuck client cannot stall shutdown.
    closing: CancellationToken,
    close_reason: Arc<std::sync::Mutex<Option<CloseFrame>>>,
    /// The session the frame being handled names, for its refusals' `for_session`.
    frame_session: Option<String>,
    /// Set when the client sent a close frame: the writer stops sending events.
    peer_closed: Arc<std::sync::atomic::AtomicBool>,
    /// Whom this socket's sessions and executions count against (per-peer caps).
    principal: Principal,
    /// The peer's view of the gateway's buffer budget.
    buffers: crate::buffer_budget::BufferBudget,
    /// When this socket last started an execution or joined a session (idle timeout).
    busy_at: tokio::time::Instant,
}

/// A refusal: the code and the human message of an `error` event.
type Refusal = (ErrorCode, String);

/// An `execute` that passed every check, with the capacity it takes.
struct Admitted {
    runtime: Arc<crate::runtime::Runtime>,
    kernel: Option<KernelKind>,
    limits: crate::config::EffectiveLimits,
    slot: execution::Slot,
}

impl Connection {
    async fn handle_text(&mut self, text: &str) {
        self.frame_session = None;
        if text.len() > self.state.config.max_frame_bytes {
            let message = format!(
                "frame of {} bytes exceeds the maximum of {} bytes; it was not processed",
                text.len(),
                self.state.config.max_frame_bytes
            );
            return self.refuse(None, ErrorCode::TooLarge, message).await;
        }
        let frame = ClientFrame::decode(text);
        self.frame_session = frame
            .as_ref()
            .ok()
            .and_then(ClientFrame::session)
            .map(str::to_owned);
        match frame {
            Ok(ClientFrame::Execute(request)) => self.execute(request).await,
            Ok(ClientFrame::Stdin(frame)) => self.stdin(frame).await,
            Ok(ClientFrame::Cancel(frame)) => self.cancel(frame).await,
            Ok(ClientFrame::Attach(frame)) => self.attach(frame).await,
            Ok(ClientFrame::Detach(frame)) => self.detach(frame),
            Ok(ClientFrame::Ack(frame)) => self.ack(frame),
            Err(err) => self.refuse_frame(err).await,
        }
    }

    /// A refused frame: terminal for its execution only if it was an `execute` whose id
    /// is free; otherwise it belongs to no execution.
    async fn refuse_frame(&mut self, err: FrameError) {
        let id = match (&err.frame_type, err.id) {
            (Some(kind), Some(id))
                if kind == "execute" && is_usable_id(&id) && !self.is_running_here(&id) =>
            {
                Some(id)
            }
            _ => None,
        };
        self.refuse(id, err.code, err.message).await;
    }

    /// Sends an `error` on the socket's own stream, naming the session the refused
    /// frame named, if any.
    async fn refuse(&self, id: Option<String>, code: ErrorCode, message: impl Into<String>) {
        let mut event = Event::error(id, code, message);
        event.for_session.clone_from(&self.frame_session);
        self.publish_or_close(&self.own, event).await;
    }

    /// Publishes on `stream` once it has room, unless the connection closes first.
    async fn publish_or_close(&self, stream: &EventStream, event: Event) {
        tokio::select! {
            biased;
            () = stream.room() => {
                stream.publish(event);
            }
            () = self.closing.cancelled() => {}
        }
    }

    fn is_running_here(&self, id: &str) -> bool {
        self.started
            .get(id)
            .is_some_and(|(_, finished)| !finished.load(Ordering::Acquire))
    }

    async fn execute(&mut self, request: ExecuteRequest) {
        let named = match &request.session {
            None => {
                if self.is_running_here(&request.id) {
                    let message = format!(
                        "execution id {:?} is already running on this socket",
                        request.id
                    );
                    return self.refuse(None, ErrorCode::DuplicateId, message).await;
                }
                None
            }
            Some(name) => {
                // An id the session already knows is answered from the session: this
                // socket gets its events (replayed from the buffer), nothing runs twice.
                // Only for the same request: another one reusing the id is refused, so
                // nobody can answer a victim's `execute` with output of their own.
                let known = self.state.sessions.get(name).and_then(|session| {
                    let fingerprint = session.fingerprint_of(&request.id)?;
                    Some((session, fingerprint))
                });
                if let Some((session, fingerprint)) = known {
                    if fingerprint != Fingerprint::of(&request) {
                        let message = format!(
                            "execution id {:?} is already used in session {name:?} by a different request; choose another id",
                            request.id
                        );
                        // The execution exists, so this refusal is not its terminal event.
                        return self.refuse(None, ErrorCode::DuplicateId, message).await;
                    }
                    if self.link.reads(&session) {
                        return;
                    }
                    // The execution exists, so this refusal is not its terminal event.
                    // A resend leads the session while nobody else does.
                    if let Err((code, message)) = self.join(&session, 0, Lead::IfVacant, false) {
                        self.refuse(None, code, message).await;
                    }
                    return;
                }
                Some(name.clone())
            }
        };
        // The whole request is checked, and its capacity taken, before any session is
        // opened or joined: a refused `execute` leaves nothing behind.
        if let Err((code, message)) = self.check_memory() {
            return self.refuse_execute(&request.id, code, message).await;
        }
        let admitted = match self.admit(&request) {
            Ok(admitted) => admitted,
            Err((code, message)) => return self.refuse_execute(&request.id, code, message).await,
        };
        let session = match named {
            None => match self.state.sessions.open_ephemeral(self.principal) {
                Ok(session) => {
                    self.link.subscribe(&session, 0, Lead::Take, false);
                    session
                }
                Err(err) => {
                    let code = open_error_code(&err);
                    return self
                        .refuse_execute(&request.id, code, err.to_string())
                        .await;
                }
            },
            Some(name) => match self.named_session(&name) {
                Ok(session) => session,
                Err((code, message)) => {
                    return self.refuse_execute(&request.id, code, message).await;
                }
            },
        };
        self.start(request, session, admitted);
    }

    /// Refuses an `execute` before it joined a session: terminal for its id, unless that
    /// id names an execution still running on this socket.
    async fn refuse_execute(&self, id: &str, code: ErrorCode, message: String) {
        let id = (!self.is_running_here(id)).then(|| id.to_owned());
        self.refuse(id, code, message).await;
    }

    /// The named session an `execute` runs in, opened and read by this socket if it was
    /// not (from its next event on: what came before is for `attach` to replay).
    fn named_session(&mut self, name: &str) -> Result<Arc<Session>, Refusal> {
        if let Some(session) = self.link.session(name) {
            if session.ephemeral {
                let err = crate::session::OpenError::GatewayMade(name.to_owned());
                return Err((ErrorCode::BadRequest, err.to_string()));
            }
            // It executes in the session: it may lead it now.
            session.stream.allow_lead(self.link.socket);
            return Ok(session);
        }
        self.check_session_room()?;
        let (session, _) = self
            .state
            .sessions
            .open_named(name, self.principal)
            .map_err(|err| (open_error_code(&err), err.to_string()))?;
        let cursor = session.stream.head();
        self.link.subscribe(&session, cursor, Lead::IfVacant, false);
        Ok(session)
    }

    /// Starts reading `session` after `since` (moves the cursor if this socket reads it
    /// already). `lead`: whether it may pace the session.
    fn join(
        &mut self,
        session: &Arc<Session>,
        since: u64,
        lead: Lead,
        announce: bool,
    ) -> Result<(), Refusal> {
        if self.link.reads(session) {
            self.link.subscribe(session, since, lead, announce);
            return Ok(());
        }
        if !session.ephemeral {
            self.check_session_room()?;
        }
        if !self.state.sessions.attach(session) {
            return Err(unknown_session(session.id()));
        }
        self.link.subscribe(session, since, lead, announce);
        self.busy_at = tokio::time::Instant::now();
        Ok(())
    }

    /// New work is refused while the gateway's buffer budget, or this peer's share of
    /// it, is spent.
    fn check_memory(&self) -> Result<(), Refusal> {
        let budget = &self.buffers;
        if budget.share_spent() {
            return Err((
                ErrorCode::GatewayBusy,
                format!(
                    "your {}'s sessions, sockets and input hold its share of the gateway's buffer budget ({} bytes, --budget-share-per-peer); read or acknowledge what they hold, or retry later",
                    self.principal,
                    budget.share_limit()
                ),
            ));
        }
        if budget.is_spent() {
            return Err((
                ErrorCode::GatewayBusy,
                format!(
                    "the gateway's buffer budget of {} bytes (replay buffers, messages in flight, queued stdin) is spent; retry later",
                    budget.limit()
                ),
            ));
        }
        Ok(())
    }

    fn check_session_room(&self) -> Result<(), Refusal> {
        let max = self.state.config.max_sessions_per_connection;
        if self.link.named_sessions() >= max {
            return Err((
                ErrorCode::TooManySessions,
                format!("this socket is already attached to {max} sessions, the maximum"),
            ));
        }
        Ok(())
    }

    /// Checks what only the gateway can check (runtime, persistence, limits) and takes
    /// the capacity the execution needs (this socket's, this peer's and the gateway's),
    /// touching no session.
    fn admit(&self, request: &ExecuteRequest) -> Result<Admitted, Refusal> {
        let state = &self.state;
        let language = &request.language;
        if state.shutdown.is_cancelled() {
            return Err((
                ErrorCode::ShuttingDown,
                "the gateway is shutting down".into(),
            ));
        }
        let Some(runtime) = state.runtimes.get(language) else {
            let known = state.runtimes.names().join(", ");
            return Err((
                ErrorCode::UnknownLanguage,
                format!("unknown language {language:?}; this gateway runs: {known}"),
            ));
        };
        let kernel = match request.persistent {
            false => None,
            true => Some(KernelKind::for_runtime(runtime).ok_or_else(|| {
                let able: Vec<&str> = state
                    .runtimes
                    .all()
                    .filter(|r| KernelKind::for_runtime(r).is_some())
                    .map(|r| r.name.as_str())
                    .collect();
                (
                    ErrorCode::BadRequest,
                    format!(
                        "language {language:?} has no persistent interpreter; persistent sessions run: {}",
                        able.join(", ")
                    ),
                )
            })?),
        };
        let limits = state
            .config
            .limits
            .resolve(&request.limits)
            .map_err(|message| (ErrorCode::InvalidLimit, message))?;
        let max_here = state.config.max_executions_per_connection;
        if self.running_here.load(Ordering::Acquire) >= max_here {
            return Err((
                ErrorCode::TooManyExecutions,
                format!("{max_here} executions are already running on this socket, the maximum"),
            ));
        }
        let Ok(gateway_slot) = state.execution_slots.clone().try_acquire_owned() else {
            let max = state.config.max_executions;
            return Err((
                ErrorCode::TooManyExecutions,
                format!("the gateway is running {max} executions, its maximum"),
            ));
        };
        let peer_slot = state
            .executions_per_peer
            .try_acquire(self.principal)
            .map_err(|e| {
                (
                    ErrorCode::TooManyExecutions,
                    format!(
                        "your {} has {} executions running, the maximum per peer",
                        self.principal, e.max
                    ),
                )
            })?;
        // Last, so a refusal above holds nothing of the budget.
        let reserved = execution::reserve(&state.host, self.principal, &limits, kernel.is_some())?;
        Ok(Admitted {
            runtime: runtime.clone(),
            kernel,
            limits,
            slot: execution::Slot::new(ExecutionSlot::new(gateway_slot, peer_slot), reserved),
        })
    }

    /// Starts the execution task of an admitted `execute` in `session`.
    fn start(&mut self, request: ExecuteRequest, session: Arc<Session>, admitted: Admitted) {
        let state = self.state.clone();
        let fingerprint = Fingerprint::of(&request);
        let ExecuteRequest {
            id,
            code,
            stdin,
            env,
            args,
            encoding,
            ..
        } = request;
        let Admitted {
            runtime,
            kernel,
            limits,
            slot,
        } = admitted;
        let max_here = state.config.max_executions_per_connection;
        let spec = ExecutionSpec {
            id: id.clone(),
            runtime: runtime.clone(),
            code,
            args,
            env: env.into_iter().collect(),
            stdin,
            encoding,
            limits,
        };
        let ctx = ExecutionContext {
            session: session.clone(),
            host: state.host.clone(),
            chunk_bytes: state.config.chunk_bytes,
            kill_grace: state.config.kill_grace,
            kernel_slots: state.kernel_slots.clone(),
            kernels_per_peer: state.kernels_per_peer.clone(),
            principal: self.principal,
        };
        // Alone on the gateway (every other slot free), start the program inline.
        let spawn_inline =
            state.execution_slots.available_permits() + 1 >= state.config.max_executions;
        let start = match kernel {
            Some(kind) => {
                let (after, turn) = session.next_cell_turn();
                Start::Cell { kind, after, turn }
            }
            None => Start::Program {
                inline: spawn_inline,
            },
        };
        let (handle, task) = execution::prepare(
            spec,
            ctx,
            slot,
            state.config.stdin_queue,
            session.cancel.child_token(),
            start,
        );
        let finished = handle.finished_flag();
        if self.started.len() >= 2 * max_here {
            self.started
                .retain(|_, (_, finished)| !finished.load(Ordering::Acquire));
        }
        self.started
            .insert(id.clone(), (session.clone(), finished.clone()));
        session.add_execution(id.clone(), fingerprint, handle);
        self.running_here.fetch_add(1, Ordering::AcqRel);
        let running_here = self.running_here.clone();
        state.executions.spawn(async move {
            // Every execution ends with exactly one terminal event, even if its task fails.
            if std::panic::AssertUnwindSafe(task)
                .catch_unwind()
                .await
                .is_err()
            {
                tracing::error!(execution = %id, "execution task failed");
                if !finished.swap(true, Ordering::AcqRel) {
                    let message = "the gateway failed while running this execution";
                    let event = Event::error(Some(id.clone()), ErrorCode::Internal, message);
                    session.stream.publish(event);
                }
            }
            running_here.fetch_sub(1, Ordering::AcqRel);
            session.execution_finished(&id);
        });
        self.busy_at = tokio::time::Instant::now();
    }

    /// The session a `stdin` or `cancel` frame's execution runs in.
    fn session_of(&self, session: Option<&str>, id: &str) -> Result<Arc<Session>, Refusal> {
        match session {
            Some(name) => self.link.session(name).ok_or_else(|| unknown_session(name)),
            None => self
                .started
                .get(id)
                .map(|(session, _)| session.clone())
                .ok_or_else(|| not_running(id)),
        }
    }

    /// Runs `act` on the running execution a `stdin` or `cancel` frame names.
    fn with_running(
        &self,
        session: Option<&str>,
        id: &str,
        act: impl FnOnce(&mut execution::ExecutionHandle) -> Result<(), Refusal>,
    ) -> Result<(), Refusal> {
        let session = self.session_of(session, id)?;
        session
            .with_execution(id, |known| match known {
                Known::Running(handle) if !handle.is_finished() => act(handle),
                _ => Err(not_running(id)),
            })
            .unwrap_or_else(|| Err(not_running(id)))
    }

    async fn stdin(&mut self, frame: StdinFrame) {
        let StdinFrame {
            id,
            session,
            data,
            eof,
        } = frame;
        let budget = self.state.config.stdin_queue_bytes;
        let memory = &self.buffers;
        let offered = self.with_running(session.as_deref(), &id, |handle| {
            offer_stdin(handle, &id, data, eof, budget, memory)
        });
        if let Err((code, message)) = offered {
            self.refuse(None, code, message).await;
        }
    }

    async fn cancel(&mut self, frame: CancelFrame) {
        let CancelFrame { id, session } = frame;
        let cancelled = self.with_running(session.as_deref(), &id, |handle| {
            handle.cancel.cancel();
            Ok(())
        });
        if let Err((code, message)) = cancelled {
            self.refuse(None, code, message).await;
        }
    }

    async fn attach(&mut self, frame: AttachFrame) {
        let AttachFrame { session, since } = frame;
        let Some(found) = self.state.sessions.get(&session) else {
            let (code, message) = unknown_session(&session);
            return self.refuse(None, code, message).await;
        };
        let since = since.unwrap_or(0);
        let head = found.stream.head();
        if since > head {
            let message = format!(
                "since {since} is past the last event of session {session:?}, which is {head}"
            );
            return self.refuse(None, ErrorCode::BadRequest, message).await;
        }
        // Anyone may attach to (or execute in) a named session: there are no
        // credentials yet, so a socket paces it only while nobody else does (typically
        // the executing client, reconnected), never by taking the lead from a socket
        // that leads; the 128-bit id of a gateway-made session is as good as a
        // credential.
        let lead = if found.ephemeral {
            Lead::May
        } else {
            Lead::IfVacant
        };
        if let Err((code, message)) = self.join(&found, since, lead, true) {
            self.refuse(None, code, message).await;
        }
    }

    /// Detaching is idempotent: a session this socket does not read (it may have been
    /// let go a moment ago) is already detached, so the frame is never refused.
    fn detach(&mut self, frame: DetachFrame) {
        if let Some(session) = self.link.session(&frame.session) {
            self.link.unsubscribe(&session, &self.state.sessions);
        }
    }

    /// Acknowledgements are advisory: one for a session this socket does not read (it
    /// may have been let go a moment ago) is ignored, never refused.
    fn ack(&mut self, frame: AckFrame) {
        if let Some(session) = self.link.session(&frame.session) {
            session.stream.ack(self.link.socket, frame.sequence);
            // A finished session the client now has all of can be let go.
            self.link.wake.notify_one();
        }
    }

    /// True while the socket runs an execution or reads a session (beyond a finished
    /// gateway-made one kept for a reconnect): such a socket is never idle.
    fn holds_something(&self) -> bool {
        self.running_here.load(Ordering::Acquire) > 0 || self.link.holds_session()
    }

    /// Asks the writer to end with this close frame.
    fn close_with(&self, code: u16, reason: String) {
        *self
            .close_reason
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(CloseFrame {
            code,
            reason: reason.into(),
        });
    }

    /// Closes the socket (1008) because a message it started did not arrive whole
    /// within the deadline.
    fn message_overdue(&self) {
        let deadline = self.state.config.message_deadline;
        tracing::info!(
            ?deadline,
            "closing: a message was not completed within the message deadline"
        );
        let reason = format!("message not completed within {} ms", deadline.as_millis());
        self.close_with(CLOSE_POLICY, reason);
    }

    /// A read error ends the connection; a frame over the transport cap is said so with
    /// close code 1009 before the socket closes, a message in flight that the memory
    /// budget has no room for with 1013.
    fn read_failed(&self, err: axum::Error, meter: &Meter) {
        if meter.over_budget() {
            tracing::warn!("closing: the buffer budget has no room for the message in flight");
            return self.close_with(
                CLOSE_TRY_AGAIN_LATER,
                "the gateway's buffer budget is spent; retry later".into(),
            );
        }
        let err = err.into_inner();
        let too_big = matches!(
            err.downcast_ref::<tungstenite::Error>(),
            Some(tungstenite::Error::Capacity(_))
        );
        if too_big {
            let cap = self.state.config.max_frame_bytes.saturating_mul(4);
            tracing::info!(%err, "closing: frame over the transport cap");
            let close = CloseFrame {
                code: CLOSE_TOO_BIG,
                reason: format!("frame larger than {cap} bytes").into(),
            };
            *self
                .close_reason
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(close);
        } else {
            tracing::debug!(%err, "socket read failed");
        }
    }
}

/// Queues client input for a running program, within its byte and frame budgets and
/// the gateway's buffer budget (the queued bytes are held against it until written).
fn offer_stdin(
    handle: &mut execution::ExecutionHandle,
    id: &str,
    data: Option<String>,
    eof: bool,
    budget: usize,
    memory: &BufferBudget,
) -> Result<(), Refusal> {
    if handle.stdin_closed {
        let message = format!("stdin of execution {id:?} is already closed");
        return Err((ErrorCode::StdinClosed, message));
    }
    let bytes = data.as_ref().map_or(0, String::len);
    let queued = handle.stdin_queued_bytes.load(Ordering::Acquire);
    if bytes > 0 && queued + bytes > budget {
        let message = format!(
            "execution {id:?} has {queued} bytes of stdin not yet read (at most {budget} may wait); this input was dropped"
        );
        return Err((ErrorCode::StdinFull, message));
    }
    let Some(held) = memory.try_reserve(bytes) else {
        let message = format!(
            "the gateway's buffer budget of {} bytes is spent; this input for execution {id:?} was dropped, retry later",
            memory.limit()
        );
        return Err((ErrorCode::GatewayBusy, message));
    };
    // Counted before it is queued, so the writer's subtraction never comes first.
    handle.stdin_queued_bytes.fetch_add(bytes, Ordering::AcqRel);
    let sent = handle.stdin.try_send(StdinChunk {
        data,
        eof,
        memory: Some(held),
    });
    if sent.is_err() {
        handle.stdin_queued_bytes.fetch_sub(bytes, Ordering::AcqRel);
    }
    match sent {
        Ok(()) => {
            handle.stdin_closed = eof;
            Ok(())
        }
        Err(TrySendError::Full(_)) => Err((
            ErrorCode::StdinFull,
            format!(
                "execution {id:?} is not reading its stdin fast enough; this input was dropped"
            ),
        )),
        Err(TrySendError::Closed(_)) => {
            handle.stdin_closed = true;
            Err((
                ErrorCode::StdinClosed,
                format!("execution {id:?} closed its stdin"),
            ))
        }
    }
}

fn not_running(id: &str) -> Refusal {
    (
        ErrorCode::UnknownExecution,
        format!("no execution {id:?} is running on this socket"),
    )
}

fn unknown_session(name: &str) -> Refusal {
    (
        ErrorCode::UnknownSession,
        format!("no session {name:?} is open (it never was, or it ended), or this socket is not attached to it"),
    )
}

fn open_error_code(err: &OpenError) -> ErrorCode {
    match err {
        OpenError::TooMany(_) | OpenError::TooManyForPeer(..) => ErrorCode::TooManySessions,
        OpenError::GatewayMade(_) => ErrorCode::BadRequest,
    }
}
