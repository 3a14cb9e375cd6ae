//! An `execute` frame: a repeat of a known id answered from its session (or refused as
//! `duplicate_id` when the request differs), then every check and the capacity the
//! execution takes (the socket's, the peer's and the gateway's, and the buffer
//! budget), all before its session is opened or joined, so a refused `execute` leaves
//! nothing behind; then the session and the execution task.

use super::frames::{Connection, Refusal};
use crate::admission::ExecutionSlot;
use crate::execution::kernel::KernelKind;
use crate::execution::{self, ExecutionContext, ExecutionSpec, Start};
use crate::fanout::Lead;
use crate::session::{Fingerprint, OpenError, Session};
use futures::FutureExt as _;
use sluice_protocol::{ErrorCode, Event, EventKind, ExecuteRequest};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// An `execute` that passed every check, with the capacity it takes.
struct Admitted {
    runtime: Arc<crate::runtime::Runtime>,
    kernel: Option<KernelKind>,
    limits: crate::config::EffectiveLimits,
    slot: execution::Slot,
}

impl Connection {
    pub(super) async fn execute(&mut self, request: ExecuteRequest) {
        let named = match &request.session {
            None => {
                if self.started.is_running(&request.id) {
                    let message = format!(
                        "execution id {:?} is already running on this socket",
                        request.id
                    );
                    return self.refuse(None, ErrorCode::DuplicateId, message).await;
                }
                None
            }
            Some(name) => {
                // First of all, as for `attach`: a name the credential does not allow is
                // refused before anything is looked up, so that a resend can neither
                // replay another session's output nor tell whether an id is used there.
                if let Err((code, message)) = self.check_session_allowed(name) {
                    return self.refuse_execute(&request.id, code, message).await;
                }
                // An id the session already knows is answered from the session: this
                // socket gets its events (replayed from the buffer), nothing runs twice.
                // Only for the same request: another one reusing the id is refused, so
                // nobody can answer a victim's `execute` with output of their own.
                let known = self
                    .state
                    .sessions
                    .get(&self.principal, name)
                    .and_then(|session| {
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
        // A workspace asked for and not there yet is made before the session is opened
        // (a refusal leaves nothing behind), of the size this execute may use.
        let has_workspace = || {
            named
                .as_deref()
                .and_then(|name| self.state.sessions.get(&self.principal, name))
                .is_some_and(|session| session.workspace().is_some())
        };
        let made = if request.workspace && !has_workspace() {
            match self.make_workspace(admitted.limits.workspace_bytes) {
                Ok(made) => Some(made),
                Err((code, message)) => {
                    return self.refuse_execute(&request.id, code, message).await
                }
            }
        } else {
            None
        };
        let (session, first_unread) = match named {
            None => match self
                .state
                .sessions
                .open_ephemeral(&self.principal, self.grant.narrowing.max_sessions)
            {
                Ok(session) => {
                    self.link.subscribe(&session, 0, Lead::Take, false);
                    (session, 0)
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
        if request.ack {
            // The client acknowledges: nothing this socket has not acknowledged is
            // dropped, from the first event it is sent on.
            session.stream.ack(self.link.socket, first_unread);
        }
        if let Some(made) = made {
            session.keep_workspace(made);
        }
        let (id, name) = (request.id.clone(), session.id().to_owned());
        if let Err(same) = self.start(request, session, admitted) {
            // Another socket's `execute` took the id between the look-up above and now:
            // answered as a repeat (this socket reads the session already), or refused.
            if !same {
                let message = format!(
                    "execution id {id:?} is already used in session {name:?} by a different request; choose another id"
                );
                self.refuse(None, ErrorCode::DuplicateId, message).await;
            }
        }
    }

    /// Refuses an `execute` before it joined a session: terminal for its id, unless that
    /// id names an execution still running on this socket.
    async fn refuse_execute(&self, id: &str, code: ErrorCode, message: String) {
        let id = (!self.started.is_running(id)).then(|| id.to_owned());
        self.refuse(id, code, message).await;
    }

    /// The named session an `execute` runs in, opened and read by this socket if it was
    /// not (from its next event on: what came before is for `attach` to replay), and
    /// the last sequence before what this socket has yet to be sent of it (0 when it
    /// read the session already: its own acknowledgements say where it is).
    fn named_session(&mut self, name: &str) -> Result<(Arc<Session>, u64), Refusal> {
        self.check_session_allowed(name)?;
        if let Some(session) = self.link.session(name) {
            if session.ephemeral {
                let err = OpenError::GatewayMade(name.to_owned());
                return Err((ErrorCode::BadRequest, err.to_string()));
            }
            // It executes in the session: it may lead it now.
            session.stream.allow_lead(self.link.socket);
            return Ok((session, 0));
        }
        self.check_session_room()?;
        let (session, _) = self
            .state
            .sessions
            .open_named(name, &self.principal, self.grant.narrowing.max_sessions)
            .map_err(|err| (open_error_code(&err), err.to_string()))?;
        let cursor = session.stream.head();
        self.link.subscribe(&session, cursor, Lead::IfVacant, false);
        Ok((session, cursor))
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

    /// Checks what only the gateway can check (runtime, persistence, limits) and takes
    /// the capacity the execution needs (this socket's, this peer's and the gateway's),
    /// touching no session.
    fn admit(&self, request: &ExecuteRequest) -> Result<Admitted, Refusal> {
        let state = &self.state;
        let language = &request.language;
        if state.shutdown.is_cancelled() || state.draining.load(Ordering::Acquire) {
            return Err((
                ErrorCode::ShuttingDown,
                "the gateway is shutting down (draining for a restart): executions already running may finish, new ones are refused; run this one on another gateway".into(),
            ));
        }
        let Some(runtime) = state.runtimes.get(language) else {
            let known = state.runtimes.names().join(", ");
            return Err((
                ErrorCode::UnknownLanguage,
                format!("unknown language {language:?}; this gateway runs: {known}"),
            ));
        };
        if !self.grant.allows_language(language) {
            let allowed = self
                .grant
                .narrowing
                .languages
                .as_deref()
                .unwrap_or_default();
            let allowed = if allowed.is_empty() {
                "none".to_owned()
            } else {
                allowed.join(", ")
            };
            return Err((
                ErrorCode::NotPermitted,
                format!(
                    "your credential does not allow language {language:?}; it allows: {allowed}"
                ),
            ));
        }
        // A credential without the network takes it from every runtime, also where the
        // gateway gives every program the host's (`--network on`); where it cannot take
        // it away (no jail, not root), such a credential runs nothing.
        let runtime = if self.grant.denies_network() && state.host.gives_network(runtime) {
            if !state.host.can_take_network() {
                return Err((
                    ErrorCode::NotPermitted,
                    "your credential allows no network, and this gateway cannot take the network from a program (it runs programs without the namespace jail, and not as root)".into(),
                ));
            }
            Arc::new(runtime.without_network())
        } else {
            runtime.clone()
        };
        let kernel = match request.persistent {
            false => None,
            true => Some(KernelKind::for_runtime(&runtime).ok_or_else(|| {
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
        let ceilings = &self.grant.narrowing.limits;
        // A cell's `cpu_ms` is checked by the gateway, but a credential's CPU ceiling is
        // not trusted to that check until it has been reviewed from outside: such a
        // credential gets no cell rather than one that might overrun the cap.
        if kernel.is_some() && ceilings.cpu_ms.is_some() {
            return Err((
                ErrorCode::NotPermitted,
                "your credential caps limits.cpu_ms, which this gateway does not yet trust persistent cells to hold; run it as a program (without persistent) instead".into(),
            ));
        }
        let limits = if *ceilings == sluice_protocol::Limits::default() {
            state.config.limits.resolve(&request.limits)
        } else {
            state
                .config
                .limits
                .narrowed(ceilings)
                .resolve(&request.limits)
                .map_err(|message| format!("{message}, the most your credential allows"))
        }
        .map_err(|message| (ErrorCode::InvalidLimit, message))?;
        check_files(request, &runtime.file_name, limits.workspace_bytes)?;
        let max_here = state.config.max_executions_per_connection;
        if self.started.running() >= max_here {
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
            .try_acquire_within(&self.principal, self.grant.narrowing.max_executions)
            .map_err(|e| {
                (
                    ErrorCode::TooManyExecutions,
                    format!(
                        "your {} has {} executions running, the maximum {}{}",
                        self.principal,
                        e.max,
                        self.principal.cap_scope(),
                        if self.grant.narrowing.max_executions == Some(e.max) {
                            " (your credential's max_executions)"
                        } else {
                            ""
                        }
                    ),
                )
            })?;
        // Last, so a refusal above holds nothing of the budget.
        let reserved = execution::reserve(
            &state.host,
            self.principal.clone(),
            &limits,
            kernel.is_some(),
        )?;
        Ok(Admitted {
            runtime,
            kernel,
            limits,
            slot: execution::Slot::new(ExecutionSlot::new(gateway_slot, peer_slot), reserved),
        })
    }

    /// Starts the execution task of an admitted `execute` in `session`.
    /// `Err(same request)` when the session learned the id from another `execute` in the
    /// meantime: then nothing was started.
    fn start(
        &mut self,
        request: ExecuteRequest,
        session: Arc<Session>,
        admitted: Admitted,
    ) -> Result<(), bool> {
        let state = self.state.clone();
        let fingerprint = Fingerprint::of(&request);
        let terminal = request.tty.then(|| {
            let term = request.term.clone();
            let term = term.unwrap_or_else(|| sluice_protocol::DEFAULT_TERM.to_owned());
            Arc::new(execution::TerminalControl::new(
                term,
                request.terminal_size(),
            ))
        });
        let ExecuteRequest {
            id,
            code,
            stdin,
            env,
            args,
            encoding,
            files,
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
            principal: self.principal.clone(),
            runtime: runtime.clone(),
            code,
            args,
            env: env.into_iter().collect(),
            stdin,
            encoding,
            limits,
            terminal,
            files: files.into_iter().collect(),
            workspace: session.workspace(),
        };
        let ctx = ExecutionContext {
            session: session.clone(),
            host: state.host.clone(),
            chunk_bytes: state.config.chunk_bytes,
            kill_grace: state.config.kill_grace,
            kernel_slots: state.kernel_slots.clone(),
            kernels_per_peer: state.kernels_per_peer.clone(),
            principal: self.principal.clone(),
            peer: self.peer,
            grant: self.grant.clone(),
            buffers: self.buffers.clone(),
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
        // For counting a task that fails: its own end (`Run::finish`) never comes.
        let (metrics, principal, language) = (
            state.observe.metrics.clone(),
            self.principal.clone(),
            runtime.name.clone(),
        );
        if let Err(theirs) = session.add_execution(id.clone(), fingerprint, handle) {
            // Dropped unstarted (a program started inline is killed and reaped by its
            // drop), its slot given back.
            drop(task);
            return Err(theirs == fingerprint);
        }
        let running_here =
            self.started
                .record(id.clone(), session.clone(), finished.clone(), max_here);
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
                    metrics.execution_ended(&principal, &language, EventKind::Error, None);
                }
            }
            drop(running_here);
            session.execution_finished(&id);
        });
        self.busy_at = tokio::time::Instant::now();
        Ok(())
    }
}

/// What a directory made for an execute's `files` counts against its workspace.
const DIRECTORY_BYTES: u64 = 4096;

/// An execute's `files` (their paths are checked by the decoder): none may be, or be
/// under, the program's own source file, and with the source and the directories they
/// make they must fit in the workspace.
fn check_files(
    request: &ExecuteRequest,
    source: &str,
    workspace_bytes: u64,
) -> Result<(), Refusal> {
    if request.files.is_empty() {
        return Ok(());
    }
    let first = |path: &str| path.split('/').next().unwrap_or_default().to_owned();
    if let Some(path) = request.files.keys().find(|path| first(path) == source) {
        return Err((
            ErrorCode::BadRequest,
            format!(
                "file {path:?} would take the place of the program's own {source:?} (its \"code\")"
            ),
        ));
    }
    // Each directory the paths make costs a block (and an inode: the jail's scratch file
    // system has one per 4096 bytes), or 256 paths nested 500 deep would make 128,000
    // directories that no byte counts.
    let directories: std::collections::BTreeSet<&str> = request
        .files
        .keys()
        .flat_map(|path| path.match_indices('/').map(|(at, _)| &path[..at]))
        .collect();
    let bytes: u64 = request
        .files
        .values()
        .map(|text| text.len() as u64)
        .sum::<u64>()
        + request.code.len() as u64
        + DIRECTORY_BYTES * directories.len() as u64;
    if bytes > workspace_bytes {
        return Err((
            ErrorCode::InvalidLimit,
            format!(
                "the code and files (4096 bytes a directory) take {bytes} bytes, more than limits.workspace_bytes ({workspace_bytes}); ask for more, within the maximum"
            ),
        ));
    }
    Ok(())
}

pub(super) fn open_error_code(err: &OpenError) -> ErrorCode {
    match err {
        OpenError::TooMany(_) | OpenError::TooManyForPeer(..) => ErrorCode::TooManySessions,
        OpenError::GatewayMade(_) => ErrorCode::BadRequest,
    }
}
