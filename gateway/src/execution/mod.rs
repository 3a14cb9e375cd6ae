//! One execution from `execute` to its terminal event.
//!
//! The connection keeps an [`ExecutionHandle`] per running id and drives the execution
//! only through it (stdin queue, cancel token, terminal size). The execution task owns everything else
//! and always ends with exactly one terminal event, after the process group is gone. It
//! sees the session it runs in only through [`Owner`]. One file per concept:
//!
//! - `mod.rs`: the handle, what an execution is given, and its task's entry points;
//! - `launch.rs`: a program of its own (cgroup, working directory, environment, spawn);
//! - `cell.rs`: a cell in the session's persistent interpreter (`kernel.rs`);
//! - `supervise.rs`: from start to terminal event, gathering what the verdict needs;
//! - `pump.rs`: the output pump (pipes to events, limits, cancel, exit, drain);
//! - `network_watch.rs`: a program without the network seen trying to reach out;
//! - `stdin.rs`: the stdin feeder;
//! - `terminal.rs`: a terminal execution's pseudo-terminal (opened at launch, resized
//!   through the handle);
//! - `warm/`: the warm pools: jails (and Python interpreters) started ahead of their executions;
//! - `verdict.rs`: which terminal event, as a pure function of what was observed;
//! - `process.rs`, `program.rs`, `output.rs`, `workdir.rs`: the child process group,
//!   what the pump drives, output decoding, the working directory.

mod cell;
mod cgroup_checks;
mod display;
pub(crate) mod kernel;
mod launch;
mod network_watch;
mod output;
mod process;
mod program;
mod pump;
mod stdin;
mod supervise;
mod terminal;
mod verdict;
pub(crate) mod warm;
mod workdir;

pub(crate) use kernel::{InterpreterSeat, KernelKind};
pub(crate) use output::OutputDecoder;
pub(crate) use stdin::StdinChunk;
pub(crate) use terminal::TerminalControl;

use crate::config::EffectiveLimits;
use crate::fanout::EventStream;
use crate::runtime::Runtime;
use launch::Launched;
use sluice_protocol::{Encoding, ErrorCode, Event};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

/// What an execution needs from the session it runs in, and nothing more. The session
/// implements it; `execution` never names the session type.
pub(crate) trait Owner: Send + Sync + std::fmt::Debug {
    /// The session's id, for logs.
    fn id(&self) -> &str;
    /// Where the execution's events go. Waiting for room in it is what pushes back on
    /// the program when the session's lead reads slowly.
    fn stream(&self) -> &EventStream;
    /// Cancelled when the session is being ended (or the gateway shuts down): events
    /// are then published without waiting for room.
    fn ending(&self) -> &CancellationToken;
    /// True once the session has ended: a cell must not start an interpreter in it.
    fn is_ended(&self) -> bool;
    /// The session's persistent interpreter, for cells.
    fn interpreter(&self) -> &InterpreterSeat;
    /// The session's workspace, where its executions start, if it keeps one.
    fn workspace(&self) -> Option<Arc<crate::workspace::Workspace>>;
}

/// The connection's side of a running execution.
#[derive(Debug)]
pub(crate) struct ExecutionHandle {
    /// Feeds the execution's stdin writer task; the task closes the program's stdin when
    /// it sees `eof` or when this sender is dropped with the handle.
    pub(crate) stdin: mpsc::Sender<StdinChunk>,
    /// Set once the connection has forwarded `eof` (or the request carried all of stdin).
    pub(crate) stdin_closed: bool,
    /// Bytes of stdin queued but not yet written to the program: the connection adds,
    /// the stdin writer subtracts once a chunk is written.
    pub(crate) stdin_queued_bytes: Arc<AtomicUsize>,
    /// Cancelling it stops the program (SIGTERM, then SIGKILL after the grace period).
    pub(crate) cancel: CancellationToken,
    /// Set by the execution just before it sends its terminal event, so an id is free for
    /// reuse as soon as a client can have seen that event.
    finished: Arc<AtomicBool>,
    /// A terminal execution's terminal, for `resize`.
    pub(crate) terminal: Option<Arc<TerminalControl>>,
    /// A cell of the session's persistent interpreter (a `restart` cancels it).
    pub(crate) cell: bool,
}

impl ExecutionHandle {
    pub(crate) fn is_finished(&self) -> bool {
        self.finished.load(Ordering::Acquire)
    }

    /// The flag behind [`ExecutionHandle::is_finished`], shared.
    pub(crate) fn finished_flag(&self) -> Arc<AtomicBool> {
        self.finished.clone()
    }
}

/// What to run.
#[derive(Debug)]
pub(crate) struct ExecutionSpec {
    pub(crate) id: String,
    /// Who runs it (its tenant, or an anonymous client's address): whose share of the
    /// package proxy's connections its program uses.
    pub(crate) principal: crate::admission::Principal,
    pub(crate) runtime: Arc<Runtime>,
    pub(crate) code: String,
    pub(crate) args: Vec<String>,
    pub(crate) env: Vec<(String, String)>,
    pub(crate) stdin: Option<String>,
    pub(crate) encoding: Encoding,
    pub(crate) limits: EffectiveLimits,
    /// Run on a terminal (`tty`); shared with the handle, which resizes it.
    pub(crate) terminal: Option<Arc<TerminalControl>>,
    /// More files written in the working directory before the program starts (path,
    /// text), their paths checked by the protocol's decoder.
    pub(crate) files: Vec<(String, String)>,
    /// The session's workspace, when it keeps one: the program starts in it (its
    /// source file under a name of the gateway's, removed after it), and its end says
    /// what changed there (`files_changed`).
    pub(crate) workspace: Option<Arc<crate::workspace::Workspace>>,
}

/// Where it runs and where its events go.
#[derive(Debug)]
pub(crate) struct ExecutionContext {
    /// The session it runs in.
    pub(crate) session: Arc<dyn Owner>,
    pub(crate) host: Host,
    pub(crate) chunk_bytes: usize,
    pub(crate) kill_grace: std::time::Duration,
    /// Permits for persistent interpreters, gateway-wide.
    pub(crate) kernel_slots: Arc<tokio::sync::Semaphore>,
    /// Persistent interpreters per peer.
    pub(crate) kernels_per_peer: crate::admission::Quota,
    /// Who sent the `execute`: its tenant (its peer, with anonymous clients), whose
    /// shares an interpreter it starts counts against.
    pub(crate) principal: crate::admission::Principal,
    /// The address the `execute` came from (for the audit log).
    pub(crate) peer: std::net::IpAddr,
    /// What the sender's credential allows: its quota of persistent interpreters (if it
    /// narrows `kernels_per_peer`), and the languages, network and limit ceilings a
    /// cell's interpreter must stay within (another grant of the tenant may have
    /// started it).
    pub(crate) grant: Arc<crate::auth::Grant>,
    /// The caller's share of the gateway's buffer budget: unfinished display records
    /// are held against it.
    pub(crate) buffers: crate::buffer_budget::BufferBudget,
}

/// How an execution starts.
#[derive(Debug)]
pub(crate) enum Start {
    /// A program of its own. `inline`: spawn it on the calling task (the gateway is
    /// idle), else on the blocking pool.
    Program { inline: bool },
    /// A cell in its session's persistent interpreter, once the session's previous cell
    /// (`after`) is over; dropping `turn` lets the next one go.
    Cell {
        kind: KernelKind,
        after: oneshot::Receiver<()>,
        turn: oneshot::Sender<()>,
    },
}

/// The task that runs one execution to its terminal event; it yields the execution id.
pub(crate) type ExecutionTask = std::pin::Pin<Box<dyn std::future::Future<Output = String> + Send>>;

/// What every program is started with, shared by all executions.
#[derive(Debug, Clone)]
pub(crate) struct Host {
    pub(crate) work_root: Arc<Path>,
    pub(crate) base_env: Arc<[(String, String)]>,
    pub(crate) cgroups: Arc<crate::sandbox::Cgroups>,
    /// The memory and processes all executions may hold together.
    pub(crate) budget: Arc<crate::sandbox::ExecutionBudget>,
    /// Unjailed programs start in an empty network namespace (see `--network`).
    pub(crate) no_network: bool,
    /// The jail every program starts in, when the gateway isolates with namespaces.
    pub(crate) jail: Option<Arc<crate::sandbox::Namespaces>>,
    /// The user unjailed programs of a root gateway drop to (never root).
    pub(crate) program_user: Option<crate::sandbox::ProgramUser>,
    /// Where executions are counted (metrics) and recorded (the audit log).
    pub(crate) observe: crate::observe::Observer,
    /// Programs started ahead of their executions (`--warm-pool`), if any.
    pub(crate) warm: Option<Arc<warm::WarmPools>>,
    /// The package proxies' shared parts, when a runtime has a package index.
    pub(crate) packages: Option<Arc<crate::packages::Packages>>,
}

impl Host {
    /// Whether `runtime`'s programs keep the host's network: allowed it
    /// (`--allow-network`), or where neither the jail nor their own start takes it away
    /// (`--network on`, `--isolation none`, a host that cannot).
    pub(crate) fn gives_network(&self, runtime: &crate::runtime::Runtime) -> bool {
        if runtime.offline {
            return false;
        }
        runtime.network
            || match &self.jail {
                Some(jail) => !jail.no_network(),
                None => !self.no_network,
            }
    }

    /// The package proxies' shared parts when `runtime`'s programs reach its package
    /// index through the gateway: it has one, they have no network, and they are jailed
    /// in namespaces the gateway makes (root). Elsewhere they reach it with their own
    /// network, or (a rootless gateway's jail) not at all.
    pub(crate) fn package_proxy(
        &self,
        runtime: &crate::runtime::Runtime,
    ) -> Option<&Arc<crate::packages::Packages>> {
        let listens = self.jail.as_ref().is_some_and(|j| j.can_listen_inside());
        let proxied = runtime.package_index.is_some() && listens && !self.gives_network(runtime);
        self.packages.as_ref().filter(|_| proxied)
    }

    /// What `runtime`'s programs find in their environment about its package index
    /// (nothing without one): in a session's `workspace`, where packages are kept.
    pub(crate) fn package_env(
        &self,
        runtime: &crate::runtime::Runtime,
        workspace: Option<&crate::workspace::Workspace>,
    ) -> Vec<(String, String)> {
        let Some(index) = &runtime.package_index else {
            return Vec::new();
        };
        crate::packages::environment(
            index,
            crate::packages::Installer::for_program(&runtime.program),
            self.package_proxy(runtime).is_some(),
            workspace.map(|ws| ws.path()),
        )
    }

    /// Whether a program can be started without the network: the jail makes a network
    /// namespace of its own; without it, only root can (`unshare` before the exec),
    /// probed once per process (the probe starts a program and waits for it: not once
    /// per `execute`, on the socket's reader).
    pub(crate) fn can_take_network(&self) -> bool {
        static UNJAILED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        self.jail.is_some() || *UNJAILED.get_or_init(crate::sys::can_take_network)
    }
}

/// What an admitted execution holds until its program is gone: its gateway-wide slot
/// and its peer's share of the executions (`admission::ExecutionSlot`), and its share
/// of the executions' memory and process budget.
#[derive(Debug)]
pub(crate) struct Slot {
    _slot: crate::admission::ExecutionSlot,
    _reserved: crate::sandbox::Reservation,
}

impl Slot {
    pub(crate) fn new(
        slot: crate::admission::ExecutionSlot,
        reserved: crate::sandbox::Reservation,
    ) -> Self {
        Self {
            _slot: slot,
            _reserved: reserved,
        }
    }
}

/// Reserves an execution's limits from the gateway's budget (`sandbox::budget`), where
/// the connection takes its slot (and an interpreter's, as it starts). A cell reserves
/// nothing: its interpreter holds the limits it started with for its whole life.
pub(crate) fn reserve(
    host: &Host,
    principal: crate::admission::Principal,
    limits: &EffectiveLimits,
    persistent: bool,
) -> Result<crate::sandbox::Reservation, (ErrorCode, String)> {
    use crate::sandbox::budget::{Refusal, RefusalKind};
    if persistent {
        return Ok(crate::sandbox::Reservation::default());
    }
    host.budget
        .reserve(
            principal,
            limits.memory_bytes,
            limits
                .processes
                .saturating_add(launch::jail_processes(host)),
        )
        .map_err(|Refusal { kind, message }| match kind {
            RefusalKind::Exceeds => (ErrorCode::InvalidLimit, message),
            RefusalKind::Busy => (ErrorCode::TooManyExecutions, message),
        })
}

/// Prepares an execution; the connection spawns the returned future and keeps the handle.
pub(crate) fn prepare(
    spec: ExecutionSpec,
    ctx: ExecutionContext,
    slot: Slot,
    stdin_queue: usize,
    cancel: CancellationToken,
    start: Start,
) -> (ExecutionHandle, ExecutionTask) {
    let (stdin_tx, stdin_rx) = mpsc::channel(stdin_queue);
    let finished = Arc::new(AtomicBool::new(false));
    // Initial input from the request counts like queued input: the writer subtracts it.
    let initial_stdin = spec.stdin.as_ref().map_or(0, String::len);
    let stdin_queued_bytes = Arc::new(AtomicUsize::new(initial_stdin));
    let handle = ExecutionHandle {
        stdin: stdin_tx,
        stdin_queued_bytes: stdin_queued_bytes.clone(),
        // A terminal's input never closes: its end is a typed Ctrl-D.
        stdin_closed: spec.stdin.is_some() && spec.terminal.is_none(),
        cancel: cancel.clone(),
        finished: finished.clone(),
        terminal: spec.terminal.clone(),
        cell: matches!(start, Start::Cell { .. }),
    };
    let span = tracing::info_span!(
        "execution",
        tenant = %crate::observe::tenant_of(&ctx.principal).unwrap_or(crate::observe::metrics::ANONYMOUS),
        principal = %ctx.principal,
        session = %ctx.session.id(),
        id = %spec.id,
        language = %spec.runtime.name,
    );
    tracing::info!(parent: &span, persistent = matches!(start, Start::Cell { .. }), "execution started");
    let spec = Arc::new(spec);
    let run = Run {
        spec: spec.clone(),
        ctx,
        cancel,
        finished,
        slot: Some(slot),
        accepted_at: tokio::time::Instant::now(),
    };
    let stdin = (stdin_rx, stdin_queued_bytes);
    let task: ExecutionTask = match start {
        Start::Program { inline } => {
            // An idle gateway starts the program right here, on the connection's task:
            // the shortest path to first output. A busy one hands the start to the
            // blocking pool, because spawning blocks the calling thread until the kernel
            // has loaded the new program, and meanwhile this worker would pump no one
            // else's output.
            let launched = inline.then(|| {
                let _entered = span.enter();
                launch::launch(&spec, &run.ctx.host)
            });
            Box::pin(run_program(run, launched, stdin).instrument(span))
        }
        Start::Cell { kind, after, turn } => {
            Box::pin(cell::run_cell(run, kind, after, turn, stdin).instrument(span))
        }
    };
    (handle, task)
}

pub(super) type StdinQueue = (mpsc::Receiver<StdinChunk>, Arc<AtomicUsize>);

/// Starts (unless started inline) and supervises a program of its own.
async fn run_program(
    mut run: Run,
    launched: Option<Result<Launched, Box<Event>>>,
    stdin: StdinQueue,
) -> String {
    let spec = run.spec.clone();
    let id = spec.id.clone();
    let launched = match launched {
        Some(launched) => launched,
        None => {
            let (spec, host) = (spec.clone(), run.ctx.host.clone());
            tokio::task::spawn_blocking(move || launch::launch(&spec, &host))
                .await
                .unwrap_or_else(|err| {
                    tracing::error!(%err, "starting the program panicked");
                    let message = "the gateway failed to start the program";
                    Err(Box::new(Event::error(
                        Some(id.clone()),
                        ErrorCode::Internal,
                        message,
                    )))
                })
        }
    };
    match launched {
        Ok(launched) => run.supervise(launched, stdin).await,
        Err(refusal) => run.finish(*refusal).await,
    }
    id
}

/// One execution's task state, shared by its parts (`supervise`, `pump`, `cell`).
struct Run {
    spec: Arc<ExecutionSpec>,
    ctx: ExecutionContext,
    cancel: CancellationToken,
    finished: Arc<AtomicBool>,
    /// The gateway-wide execution slot, the peer's share and the budget; released just
    /// before the terminal event.
    slot: Option<Slot>,
    /// When the execution was admitted: its duration and its time to first output
    /// count from here.
    accepted_at: tokio::time::Instant,
}

impl Run {
    /// Publishes one event once the session's stream has room. Once the session is
    /// being ended (or the gateway shuts down) it is published at once: a lead that is
    /// gone must not hold an execution's last events, and they are a few per execution.
    async fn deliver(&self, event: Event) {
        let stream = self.ctx.session.stream();
        tokio::select! {
            biased;
            () = stream.room() => {}
            () = self.ctx.session.ending().cancelled() => {}
        }
        stream.publish(event);
    }

    /// Marks the execution finished, then publishes its terminal event.
    async fn finish(&mut self, event: Event) {
        // Free the id and the gateway-wide slot before the client can see the terminal
        // event, so an `execute` sent in reply to it finds room.
        self.slot = None;
        self.finished.store(true, Ordering::Release);
        self.observe_end(&event);
        self.deliver(event).await;
    }

    /// Counts the execution's end, logs it (one line at info) and records it in the
    /// audit log.
    fn observe_end(&self, event: &Event) {
        let observe = &self.ctx.host.observe;
        let language = self.spec.runtime.name.as_str();
        let principal = &self.ctx.principal;
        observe
            .metrics
            .execution_ended(principal, language, event.kind, event.limit);
        let duration = self.accepted_at.elapsed();
        let duration_ms = duration.as_secs_f64() * 1000.0;
        let usage = event.usage.as_ref();
        let output_bytes = usage.map_or(0, |u| u.stdout_bytes + u.stderr_bytes);
        tracing::info!(
            outcome = %event.kind,
            limit = event.limit.map(sluice_protocol::LimitKind::as_str),
            code = event.code.map(ErrorCode::as_str),
            exit_code = event.exit_code,
            duration_ms,
            output_bytes,
            "execution ended"
        );
        let Some(audit) = &observe.audit else {
            return;
        };
        audit.record(crate::observe::AuditRecord {
            time: crate::observe::audit::rfc3339(std::time::SystemTime::now()),
            tenant: crate::observe::tenant_of(principal).map(str::to_owned),
            principal: principal.to_string(),
            peer: Some(self.ctx.peer.to_string()),
            session: self.ctx.session.id().to_owned(),
            id: self.spec.id.clone(),
            language: language.to_owned(),
            code_sha256: crate::observe::audit::code_hash(&self.spec.code),
            outcome: event.kind.as_str(),
            limit: event.limit.map(sluice_protocol::LimitKind::as_str),
            error_code: event.code.map(ErrorCode::as_str),
            exit_code: event.exit_code,
            duration_ms,
            cpu_ms: usage.map(|u| u.cpu_ms),
            peak_memory_bytes: usage.map(|u| u.peak_memory_bytes),
            output_bytes,
        });
    }
}
