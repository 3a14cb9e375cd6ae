//! One WebSocket connection: a reader loop that decodes client frames and drives
//! executions, and a writer task that alone writes to the socket.
//!
//! Everything bound for the socket goes through one bounded queue that only the writer
//! drains. The connection owns its executions: when the socket closes, or the gateway
//! shuts down, it cancels them and waits until every one has reaped its process group.

use crate::execution::{self, ExecutionContext, ExecutionHandle, ExecutionSpec, StdinChunk};
use crate::session::{Claim, EventStream, Session};
use crate::state::GatewayState;
use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures::{SinkExt as _, StreamExt as _};
use sluice_protocol::{
    CancelFrame, ClientFrame, ErrorCode, Event, ExecuteRequest, FrameError, StdinFrame,
};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Close code sent when the gateway shuts down (RFC 6455 "going away").
const CLOSE_GOING_AWAY: u16 = 1001;

/// How long a socket may keep shutdown waiting while it takes its last events.
const SHUTDOWN_SEND_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// Close code sent when a frame exceeds the transport cap (RFC 6455 "message too big").
const CLOSE_TOO_BIG: u16 = 1009;

/// Serves one upgraded socket until the client leaves or `shutdown` is cancelled.
pub(crate) async fn serve(
    socket: WebSocket,
    state: Arc<GatewayState>,
    shutdown: CancellationToken,
) {
    let (sink, mut frames) = socket.split();
    let (outbound, outbound_rx) = mpsc::channel(state.config.outbound_queue);
    // Cancelled on gateway shutdown, or by the writer when it can no longer write (the
    // client stopped reading past the send timeout, or the socket broke).
    let closing = shutdown.child_token();
    let writer = tokio::spawn(write_loop(
        sink,
        outbound_rx,
        closing.clone(),
        shutdown.clone(),
        state.config.send_timeout,
    ));
    let mut conn = Connection {
        state: state.clone(),
        outbound,
        socket_stream: EventStream::new(None),
        executions: HashMap::new(),
        sessions: HashMap::new(),
        tasks: JoinSet::new(),
        task_owners: HashMap::new(),
        next_serial: 0,
        executions_cancel: closing.child_token(),
        closing: closing.clone(),
    };
    tracing::debug!("connected");
    loop {
        tokio::select! {
            () = closing.cancelled() => break,
            Some(done) = conn.tasks.join_next_with_id(), if !conn.tasks.is_empty() => conn.reap_task(done).await,
            frame = frames.next() => match frame {
                Some(Ok(Message::Text(text))) => conn.handle_text(text.as_str()).await,
                Some(Ok(Message::Binary(_))) => {
                    conn.refuse(None, ErrorCode::BadRequest, "binary frames are not part of the protocol; send JSON text frames").await;
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Close(_))) | None => break,
                Some(Err(err)) => {
                    conn.read_failed(err);
                    break;
                }
            },
        }
    }
    conn.shut_down().await;
    drop(conn);
    // The writer ends once every sender is gone and the queue is drained.
    if let Err(err) = writer.await {
        tracing::error!(%err, "socket writer task failed");
    }
    tracing::debug!("disconnected");
}

/// Drains the outbound queue into the socket, batching whatever is queued into one flush.
/// A batch that cannot be written within `send_timeout` (the client stopped reading)
/// ends the connection: a slow consumer must not hold executions and memory forever.
async fn write_loop(
    mut sink: futures::stream::SplitSink<WebSocket, Message>,
    mut queue: mpsc::Receiver<Message>,
    failed: CancellationToken,
    shutdown: CancellationToken,
    send_timeout: std::time::Duration,
) {
    while let Some(message) = queue.recv().await {
        let batch = async {
            sink.feed(message).await?;
            while let Ok(message) = queue.try_recv() {
                sink.feed(message).await?;
            }
            sink.flush().await
        };
        // On shutdown a client gets a short last chance to take what is queued (its
        // `cancelled` events and the close frame), not the whole send timeout.
        let shutdown_deadline = async {
            shutdown.cancelled().await;
            tokio::time::sleep(SHUTDOWN_SEND_GRACE).await;
        };
        let result = tokio::select! {
            result = tokio::time::timeout(send_timeout, batch) => match result {
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
    let reason = if shutdown.is_cancelled() {
        "gateway shutting down"
    } else {
        ""
    };
    let close = CloseFrame {
        code: CLOSE_GOING_AWAY,
        reason: reason.into(),
    };
    let goodbye = async {
        if shutdown.is_cancelled() {
            let _ = sink.send(Message::Close(Some(close))).await;
        }
        let _ = sink.close().await;
    };
    let _ = tokio::time::timeout(send_timeout.min(SHUTDOWN_SEND_GRACE), goodbye).await;
}

fn is_usable_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= sluice_protocol::MAX_ID_BYTES
}

/// What the connection remembers about an execution task.
#[derive(Debug)]
struct TaskOwner {
    id: String,
    session: Arc<Session>,
    /// The serial of the handle this task belongs to (ids can be reused after a task ends).
    handle: u64,
}

/// The reader side's state.
struct Connection {
    state: Arc<GatewayState>,
    /// The writer's queue. Executions hold clones; the writer ends when all are dropped.
    outbound: mpsc::Sender<Message>,
    /// Refusals that belong to no session are numbered on this stream.
    socket_stream: EventStream,
    /// Running (and just-finished) executions by client id.
    executions: HashMap<String, ExecutionHandle>,
    /// Sessions this socket named and created; they end with the socket.
    sessions: HashMap<String, Arc<Session>>,
    /// The execution tasks; each yields its id when it has sent its terminal event.
    tasks: JoinSet<String>,
    /// Which execution (and session) each task runs, to answer for a task that panicked.
    task_owners: HashMap<tokio::task::Id, TaskOwner>,
    /// The last serial given to an execution handle.
    next_serial: u64,
    /// Parent of every execution's cancel token: cancelled when the socket goes away or
    /// the gateway shuts down (it is a child of `closing`).
    executions_cancel: CancellationToken,
    /// Cancelled on gateway shutdown or when the writer gives up; every wait for room in
    /// the outbound queue also watches it, so a stuck client cannot stall shutdown.
    closing: CancellationToken,
}

impl Connection {
    async fn handle_text(&mut self, text: &str) {
        if text.len() > self.state.config.max_frame_bytes {
            let message = format!(
                "frame of {} bytes exceeds the maximum of {} bytes; it was not processed",
                text.len(),
                self.state.config.max_frame_bytes
            );
            return self.refuse(None, ErrorCode::TooLarge, message).await;
        }
        match ClientFrame::decode(text) {
            Ok(ClientFrame::Execute(request)) => self.execute(request).await,
            Ok(ClientFrame::Stdin(frame)) => self.stdin(frame).await,
            Ok(ClientFrame::Cancel(frame)) => self.cancel(frame).await,
            Err(err) => self.refuse_frame(err).await,
        }
    }

    /// A refused frame: terminal for its execution only if it was an `execute` whose id
    /// is free; otherwise it belongs to no execution.
    async fn refuse_frame(&mut self, err: FrameError) {
        let id = match (&err.frame_type, err.id) {
            (Some(kind), Some(id))
                if kind == "execute" && is_usable_id(&id) && !self.is_running(&id) =>
            {
                Some(id)
            }
            _ => None,
        };
        self.refuse(id, err.code, err.message).await;
    }

    /// Sends an `error` on the socket's own stream.
    async fn refuse(&self, id: Option<String>, code: ErrorCode, message: impl Into<String>) {
        let event = Event::error(id, code, message);
        self.send_or_close(&self.socket_stream, event).await;
    }

    /// Sends on `stream` unless the connection is closing first.
    async fn send_or_close(&self, stream: &EventStream, event: Event) {
        tokio::select! {
            biased;
            _ = stream.send(&self.outbound, event) => {}
            () = self.closing.cancelled() => {}
        }
    }

    fn is_running(&self, id: &str) -> bool {
        self.executions.get(id).is_some_and(|h| !h.is_finished())
    }

    /// A running execution by id; a finished one is forgotten here.
    fn running(&mut self, id: &str) -> Option<&mut ExecutionHandle> {
        if self
            .executions
            .get(id)
            .is_some_and(ExecutionHandle::is_finished)
        {
            self.executions.remove(id);
        }
        self.executions.get_mut(id)
    }

    async fn execute(&mut self, request: ExecuteRequest) {
        if self.is_running(&request.id) {
            let message = format!(
                "execution id {:?} is already running on this socket",
                request.id
            );
            return self.refuse(None, ErrorCode::DuplicateId, message).await;
        }
        self.executions.remove(&request.id);
        let session = match self.session_for(&request) {
            Ok(session) => session,
            Err((code, message)) => return self.refuse(Some(request.id), code, message).await,
        };
        match self.start(request, session.clone()) {
            Ok(()) => {}
            Err((id, code, message)) => {
                let event = Event::error(Some(id), code, message);
                self.send_or_close(&session.stream, event).await;
                if session.ephemeral {
                    self.state.sessions.release(&session);
                }
            }
        }
    }

    /// The session an `execute` runs in: a fresh one, or one this socket named before.
    fn session_for(
        &mut self,
        request: &ExecuteRequest,
    ) -> Result<Arc<Session>, (ErrorCode, String)> {
        let Some(name) = &request.session else {
            return Ok(self.state.sessions.create_ephemeral());
        };
        if let Some(session) = self.sessions.get(name) {
            return Ok(session.clone());
        }
        if self.sessions.len() >= self.state.config.max_sessions_per_connection {
            let max = self.state.config.max_sessions_per_connection;
            return Err((
                ErrorCode::TooManySessions,
                format!("this socket already has {max} sessions, the maximum"),
            ));
        }
        match self.state.sessions.claim(name, false) {
            Claim::Created(session) => {
                self.sessions.insert(name.clone(), session.clone());
                Ok(session)
            }
            Claim::InUse => Err((
                ErrorCode::SessionInUse,
                format!("session {name:?} belongs to another socket"),
            )),
        }
    }

    /// Checks what only the gateway can check, then starts the execution task.
    fn start(
        &mut self,
        request: ExecuteRequest,
        session: Arc<Session>,
    ) -> Result<(), (String, ErrorCode, String)> {
        let state = &self.state;
        let ExecuteRequest {
            id,
            language,
            code,
            stdin,
            env,
            args,
            limits,
            encoding,
            ..
        } = request;
        let fail = |code, message: String| Err((id.clone(), code, message));
        if state.shutdown.is_cancelled() {
            return fail(
                ErrorCode::ShuttingDown,
                "the gateway is shutting down".into(),
            );
        }
        let Some(runtime) = state.runtimes.get(&language) else {
            let known = state.runtimes.names().join(", ");
            return fail(
                ErrorCode::UnknownLanguage,
                format!("unknown language {language:?}; this gateway runs: {known}"),
            );
        };
        let limits = match state.config.limits.resolve(&limits) {
            Ok(limits) => limits,
            Err(message) => return fail(ErrorCode::InvalidLimit, message),
        };
        let running = self
            .executions
            .values()
            .filter(|h| !h.is_finished())
            .count();
        if running >= state.config.max_executions_per_connection {
            let max = state.config.max_executions_per_connection;
            return fail(
                ErrorCode::TooManyExecutions,
                format!("{max} executions are already running on this socket, the maximum"),
            );
        }
        let Ok(slot) = state.execution_slots.clone().try_acquire_owned() else {
            let max = state.config.max_executions;
            return fail(
                ErrorCode::TooManyExecutions,
                format!("the gateway is running {max} executions, its maximum"),
            );
        };
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
            sessions: state.sessions.clone(),
            outbound: self.outbound.clone(),
            work_root: state.work_root.clone(),
            base_env: state.base_env.clone(),
            chunk_bytes: state.config.chunk_bytes,
            kill_grace: state.config.kill_grace,
            closing: self.closing.clone(),
        };
        // Alone on the gateway (every other slot free), start the program inline.
        let spawn_inline =
            state.execution_slots.available_permits() + 1 >= state.config.max_executions;
        let (mut handle, task) = execution::prepare(
            spec,
            ctx,
            slot,
            state.config.stdin_queue,
            self.executions_cancel.child_token(),
            spawn_inline,
        );
        self.next_serial += 1;
        handle.serial = self.next_serial;
        let task_id = self.tasks.spawn(task).id();
        self.task_owners.insert(
            task_id,
            TaskOwner {
                id: id.clone(),
                session,
                handle: handle.serial,
            },
        );
        self.executions.insert(id, handle);
        Ok(())
    }

    async fn stdin(&mut self, frame: StdinFrame) {
        let StdinFrame { id, data, eof } = frame;
        let budget = self.state.config.stdin_queue_bytes;
        let Some(handle) = self.running(&id) else {
            let message = format!("no execution {id:?} is running on this socket");
            return self
                .refuse(None, ErrorCode::UnknownExecution, message)
                .await;
        };
        if handle.stdin_closed {
            let message = format!("stdin of execution {id:?} is already closed");
            return self.refuse(None, ErrorCode::StdinClosed, message).await;
        }
        let bytes = data.as_ref().map_or(0, String::len);
        let queued = handle.stdin_queued_bytes.load(Ordering::Acquire);
        if bytes > 0 && queued + bytes > budget {
            let message = format!(
                "execution {id:?} has {queued} bytes of stdin not yet read (at most {budget} may wait); this input was dropped"
            );
            return self.refuse(None, ErrorCode::StdinFull, message).await;
        }
        // Counted before it is queued, so the writer's subtraction never comes first.
        handle.stdin_queued_bytes.fetch_add(bytes, Ordering::AcqRel);
        let sent = handle.stdin.try_send(StdinChunk { data, eof });
        if sent.is_err() {
            handle.stdin_queued_bytes.fetch_sub(bytes, Ordering::AcqRel);
        }
        match sent {
            Ok(()) => handle.stdin_closed = eof,
            Err(TrySendError::Full(_)) => {
                let message = format!(
                    "execution {id:?} is not reading its stdin fast enough; this input was dropped"
                );
                self.refuse(None, ErrorCode::StdinFull, message).await;
            }
            Err(TrySendError::Closed(_)) => {
                handle.stdin_closed = true;
                let message = format!("execution {id:?} closed its stdin");
                self.refuse(None, ErrorCode::StdinClosed, message).await;
            }
        }
    }

    async fn cancel(&mut self, frame: CancelFrame) {
        match self.running(&frame.id) {
            Some(handle) => handle.cancel.cancel(),
            None => {
                let message = format!("no execution {:?} is running on this socket", frame.id);
                self.refuse(None, ErrorCode::UnknownExecution, message)
                    .await;
            }
        }
    }

    /// A read error ends the connection; a frame over the transport cap is said so with
    /// close code 1009 before the socket closes.
    fn read_failed(&self, err: axum::Error) {
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
            // The queue may be full; the socket closes either way.
            let _ = self.outbound.try_send(Message::Close(Some(close)));
        } else {
            tracing::debug!(%err, "socket read failed");
        }
    }

    /// Forgets a finished execution task. A task that panicked never sent its terminal
    /// event, so it is sent here: every execution ends with exactly one.
    async fn reap_task(&mut self, done: Result<(tokio::task::Id, String), tokio::task::JoinError>) {
        let task_id = match &done {
            Ok((task_id, _)) => *task_id,
            Err(err) => err.id(),
        };
        let Some(TaskOwner {
            id,
            session,
            handle,
        }) = self.task_owners.remove(&task_id)
        else {
            return;
        };
        // The id may already name a newer execution; only this task's handle goes.
        let mut finished = true;
        if let Some(current) = self.executions.get(&id).filter(|h| h.serial == handle) {
            finished = current.is_finished();
            self.executions.remove(&id);
        }
        if let Err(err) = done {
            tracing::error!(execution = %id, %err, "execution task failed");
            if !finished {
                let message = "the gateway failed while running this execution";
                let event = Event::error(Some(id), ErrorCode::Internal, message);
                self.send_or_close(&session.stream, event).await;
            }
            if session.ephemeral {
                self.state.sessions.release(&session);
            }
        }
    }

    /// Cancels every execution and waits until each has reaped its process group.
    async fn shut_down(&mut self) {
        self.executions_cancel.cancel();
        while let Some(done) = self.tasks.join_next_with_id().await {
            self.reap_task(done).await;
        }
        for session in self.sessions.values() {
            self.state.sessions.release(session);
        }
    }
}
