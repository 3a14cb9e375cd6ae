//! One execution from `execute` to its terminal event: working directory, child process,
//! stdin writer, output pump, limits, cancellation, and the usage report.
//!
//! The connection keeps an [`ExecutionHandle`] per running id and drives the execution
//! only through it (stdin queue, cancel token). The execution task owns everything else
//! and always ends with exactly one terminal event, after the process group is gone.

pub(crate) mod kernel;
mod output;
mod process;
mod program;
mod workdir;

use crate::config::EffectiveLimits;
use crate::runtime::Runtime;
use crate::session::Session;
use bytes::BufMut as _;
use kernel::{Kernel, KernelKind};
use output::OutputDecoder;
use process::Launch;
use program::{Cell, Program};
use sluice_protocol::{Encoding, ErrorCode, Event, EventKind, LimitKind, Usage};
use std::collections::VecDeque;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::io::AsyncWriteExt as _;
use tokio::net::unix::pipe;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;
use workdir::Workdir;

/// After the program exits, how long to wait for its pipes to reach end-of-file (a
/// process that left the group may hold them) before reading what is there and closing.
const DRAIN_GRACE: std::time::Duration = std::time::Duration::from_millis(100);

/// Most bytes read from one pipe after the program exited: what a pipe can hold (64 KiB
/// by default, at most 1 MiB unprivileged) plus margin. Past it, a process that escaped
/// the group is still writing, and the gateway stops reading.
const DRAIN_LIMIT: u64 = 2 << 20;

/// Longest time `started` waits to go out together with the program's first output.
const STARTED_HOLD: std::time::Duration = std::time::Duration::from_millis(5);

/// Input for a running program, queued by the connection.
#[derive(Debug)]
pub(crate) struct StdinChunk {
    pub(crate) data: Option<String>,
    pub(crate) eof: bool,
    /// The data's bytes held against the gateway's memory budget until written.
    pub(crate) memory: Option<crate::buffer_budget::Reservation>,
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
    pub(crate) runtime: Arc<Runtime>,
    pub(crate) code: String,
    pub(crate) args: Vec<String>,
    pub(crate) env: Vec<(String, String)>,
    pub(crate) stdin: Option<String>,
    pub(crate) encoding: Encoding,
    pub(crate) limits: EffectiveLimits,
}

/// Where it runs and where its events go.
#[derive(Debug)]
pub(crate) struct ExecutionContext {
    /// The session it runs in; waiting for room in its stream is what pushes back on
    /// the program when the session's lead reads slowly.
    pub(crate) session: Arc<Session>,
    pub(crate) host: Host,
    pub(crate) chunk_bytes: usize,
    pub(crate) kill_grace: std::time::Duration,
    /// Permits for persistent interpreters, gateway-wide.
    pub(crate) kernel_slots: Arc<tokio::sync::Semaphore>,
    /// Persistent interpreters per peer.
    pub(crate) kernels_per_peer: crate::admission::Quota,
    /// Who sent the `execute`: its peer (a tenant, once clients authenticate), whose
    /// shares an interpreter it starts counts against.
    pub(crate) principal: crate::admission::Principal,
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
) -> Result<crate::sandbox::Reservation, crate::sandbox::budget::Refusal> {
    if persistent {
        return Ok(crate::sandbox::Reservation::default());
    }
    host.budget.reserve(
        principal,
        limits.memory_bytes,
        limits.processes + jail_processes(host),
    )
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
        stdin_closed: spec.stdin.is_some(),
        cancel: cancel.clone(),
        finished: finished.clone(),
    };
    let span = tracing::info_span!(
        "execution",
        id = %spec.id,
        session = %ctx.session.id(),
        language = %spec.runtime.name,
    );
    let spec = Arc::new(spec);
    let run = Run {
        spec: spec.clone(),
        ctx,
        cancel,
        finished,
        slot: Some(slot),
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
                launch(&spec, &run.ctx.host)
            });
            Box::pin(run_program(run, launched, stdin).instrument(span))
        }
        Start::Cell { kind, after, turn } => {
            Box::pin(run_cell(run, kind, after, turn, stdin).instrument(span))
        }
    };
    (handle, task)
}

type StdinQueue = (mpsc::Receiver<StdinChunk>, Arc<AtomicUsize>);

/// Starts (unless started inline) and supervises a program of its own.
async fn run_program(
    mut run: Run,
    launched: Option<Result<Launched, Box<Event>>>,
    (stdin_rx, stdin_queued_bytes): StdinQueue,
) -> String {
    let spec = run.spec.clone();
    let id = spec.id.clone();
    let launched = match launched {
        Some(launched) => launched,
        None => {
            let (spec, host) = (spec.clone(), run.ctx.host.clone());
            tokio::task::spawn_blocking(move || launch(&spec, &host))
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
        Ok(launched) => run.supervise(launched, stdin_rx, stdin_queued_bytes).await,
        Err(refusal) => run.finish(*refusal).await,
    }
    id
}

/// Waits for the cell's turn, starts the session's interpreter if it has none, sends
/// the cell and supervises it.
async fn run_cell(
    mut run: Run,
    kind: KernelKind,
    mut after: oneshot::Receiver<()>,
    turn: oneshot::Sender<()>,
    (stdin_rx, stdin_queued_bytes): StdinQueue,
) -> String {
    let spec = run.spec.clone();
    let id = spec.id.clone();
    let session = run.ctx.session.clone();
    let waited = tokio::select! {
        biased;
        _ = &mut after => true,
        () = run.cancel.cancelled() => false,
    };
    if !waited {
        let event = Event::new(
            EventKind::Cancelled,
            Some(id.clone()),
            "execution cancelled before it started",
        );
        run.finish(event).await;
        // The next cell still waits for the one before this one, but this execution is
        // over: its place in the queue is passed on in the background.
        tokio::spawn(async move {
            let _ = after.await;
            drop(turn);
        });
        return id;
    }
    if run.cancel.is_cancelled() || session.is_ended() {
        // Its turn came just as its session ended (or it was cancelled): it must not
        // start an interpreter in a session that is gone.
        let event = Event::new(
            EventKind::Cancelled,
            Some(id.clone()),
            "execution cancelled before it started",
        );
        run.finish(event).await;
        return id;
    }
    let kernel_slot = session.kernel.clone();
    let mut guard = kernel_slot.clone().lock_owned().await;
    if guard.as_ref().is_some_and(|kernel| kernel.kind() != kind) {
        session.retire(guard.take());
    }
    // An interpreter that ran while no cell did (or exited) is replaced, and the cell
    // is told why its session's state is gone.
    let mut note = None;
    if let Some(why) = guard.as_ref().and_then(Kernel::ended_while_idle) {
        note = Some(format!(
            "the session's interpreter was ended: {why}; the session's state is lost and this cell runs in a fresh interpreter"
        ));
        session.retire(guard.take());
    }
    if guard.is_none() {
        let principal = run.ctx.principal;
        let slot = match run.ctx.kernel_slots.clone().try_acquire_owned() {
            Err(_) => Err("the gateway runs as many persistent interpreters as it may (see --max-kernels)".to_owned()),
            Ok(permit) => match run.ctx.kernels_per_peer.try_acquire(principal) {
                Err(_) => Err(format!("your {principal}'s sessions have as many persistent interpreters as one peer may (see --max-kernels-per-peer)")),
                Ok(peer_unit) => Ok(crate::admission::ExecutionSlot::new(permit, peer_unit)),
            },
        };
        let permit = match slot {
            Ok(slot) => slot,
            Err(why) => {
                let message = format!("{why}; end a persistent session first");
                run.finish(Event::error(
                    Some(id.clone()),
                    ErrorCode::TooManyExecutions,
                    message,
                ))
                .await;
                return id;
            }
        };
        let env = environment(&spec, &run.ctx.host.base_env, &run.ctx.host.work_root);
        // A CPU limit would add up over every cell of the session: only the per-process
        // limits that make sense for a long-lived interpreter apply.
        let rlimits = crate::sys::Rlimits {
            cpu_seconds: None,
            ..spec.limits.rlimits()
        };
        let host = &run.ctx.host;
        let processes = spec.limits.processes + jail_processes(host);
        // The interpreter holds the limits it starts with for the session's life.
        let reserved = match reserve(host, principal, &spec.limits, false) {
            Ok(reserved) => reserved,
            Err((code, message)) => {
                run.finish(Event::error(Some(id.clone()), code, message))
                    .await;
                return id;
            }
        };
        let started = host
            .cgroups
            .create(spec.limits.memory_bytes, processes)
            .and_then(|cgroup| {
                let limits = kernel::KernelLimits {
                    rlimits,
                    scratch_bytes: spec.limits.workspace_bytes,
                    processes: spec.limits.processes,
                };
                Kernel::start(
                    kind,
                    &spec.runtime,
                    host,
                    &env,
                    limits,
                    cgroup,
                    Slot::new(permit, reserved),
                )
            });
        match started {
            Ok(kernel) => *guard = Some(kernel),
            Err(err) => {
                tracing::warn!(%err, "could not start the interpreter");
                let message = format!(
                    "could not start the {} interpreter: {err}",
                    spec.runtime.name
                );
                run.finish(Event::error(
                    Some(id.clone()),
                    ErrorCode::SpawnFailed,
                    message,
                ))
                .await;
                return id;
            }
        }
    }
    // An interpreter that stops reading its socket must not hold the cell (and the
    // session's queue) forever: handing over the cell obeys cancel and the timeout.
    let limits = spec.limits;
    let sent = match guard.as_mut() {
        Some(kernel) => {
            let cpu_before = kernel.usage().0;
            let started_at = Instant::now();
            tokio::select! {
                sent = kernel.send(&spec.code) => sent.map(|pipes| (pipes, cpu_before, started_at)),
                () = run.cancel.cancelled() => Err(io::Error::other("cancelled")),
                () = tokio::time::sleep(limits.timeout) => Err(io::Error::from(io::ErrorKind::TimedOut)),
            }
        }
        None => Err(io::Error::other("no interpreter")),
    };
    match sent {
        Ok((pipes, cpu_before, started_at)) => {
            let launched = Launched {
                workdir: None,
                program: Program::Cell(Cell {
                    kernel: guard,
                    cpu_before,
                    _turn: turn,
                    note,
                }),
                stdin: pipes.stdin,
                stdout: pipes.stdout,
                stderr: pipes.stderr,
                started_at,
            };
            run.supervise(launched, stdin_rx, stdin_queued_bytes).await;
        }
        Err(err) => {
            // The interpreter cannot take cells any more: the next one starts afresh.
            session.retire(guard.take());
            let lost = "the interpreter did not take the cell and was killed; the session's state is lost and its next execution starts a fresh interpreter";
            let event = if run.cancel.is_cancelled() {
                Event::new(
                    EventKind::Cancelled,
                    Some(id.clone()),
                    format!("execution cancelled; {lost}"),
                )
            } else if err.kind() == io::ErrorKind::TimedOut {
                Event {
                    limit: Some(LimitKind::Timeout),
                    limit_value: Some(limits.timeout_ms),
                    ..Event::new(
                        EventKind::ResourceLimit,
                        Some(id.clone()),
                        format!(
                            "wall-clock limit of {} ms reached; {lost}",
                            limits.timeout_ms
                        ),
                    )
                }
            } else {
                Event::error(
                    Some(id.clone()),
                    ErrorCode::KernelLost,
                    format!(
                        "the interpreter could not take the cell ({err}); the session's state is lost and its next execution starts a fresh interpreter"
                    ),
                )
            };
            run.finish(event).await;
        }
    }
    // A session that ended meanwhile takes its interpreter with it.
    if session.is_ended() {
        let kernel = kernel_slot.lock().await.take();
        session.retire(kernel);
    }
    id
}

/// A program (or cell) that started, with the gateway's ends of its pipes.
#[derive(Debug)]
struct Launched {
    /// A program's own directory, removed after it; a cell uses its kernel's.
    workdir: Option<Workdir>,
    program: Program,
    /// Registered with the reactor only when the client first sends input.
    stdin: std::os::fd::OwnedFd,
    stdout: pipe::Receiver,
    stderr: pipe::Receiver,
    started_at: Instant,
}

/// Processes the jail adds to a program's cgroup (the jail and its init), if any.
fn jail_processes(host: &Host) -> u64 {
    if host.jail.is_some() {
        crate::sandbox::JAIL_PROCESSES
    } else {
        0
    }
}

/// Writes the source file and starts the program; a failure becomes the execution's
/// terminal `error`.
fn launch(spec: &ExecutionSpec, host: &Host) -> Result<Launched, Box<Event>> {
    let id = Some(spec.id.clone());
    let cgroup = match host.cgroups.create(
        spec.limits.memory_bytes,
        spec.limits.processes + jail_processes(host),
    ) {
        Ok(cgroup) => cgroup,
        Err(err) => {
            tracing::error!(%err, "could not create the execution's cgroup");
            let message = "could not set up the execution's resource limits";
            return Err(Box::new(Event::error(id, ErrorCode::Internal, message)));
        }
    };
    let workdir = match Workdir::create(
        &host.work_root,
        &spec.runtime.file_name,
        &spec.code,
        host.program_user,
    ) {
        Ok(dir) => dir,
        Err(err) => {
            tracing::error!(%err, "could not prepare the working directory");
            let message = "could not prepare the working directory";
            return Err(Box::new(Event::error(id, ErrorCode::Internal, message)));
        }
    };
    let launch = Launch {
        runtime: &spec.runtime,
        workdir: workdir.path(),
        source: &workdir.source(),
        args: &spec.args,
        env: environment(spec, &host.base_env, workdir.path()),
        rlimits: spec.limits.rlimits(),
        cgroup,
        no_network: host.no_network,
        jail: host.jail.as_deref(),
        user: host.program_user,
        scratch_bytes: spec.limits.workspace_bytes,
        processes: spec.limits.processes,
    };
    let started_at = Instant::now();
    match launch.spawn() {
        Ok(spawned) => Ok(Launched {
            workdir: Some(workdir),
            program: Program::Process(Box::new(spawned.child)),
            stdin: std::os::fd::OwnedFd::from(spawned.stdin),
            stdout: spawned.stdout,
            stderr: spawned.stderr,
            started_at,
        }),
        Err(err) => {
            tracing::warn!(%err, "spawn failed");
            workdir.remove();
            Err(Box::new(Event::error(
                id,
                ErrorCode::SpawnFailed,
                err.to_string(),
            )))
        }
    }
}

/// The program's whole environment, later entries winning: the gateway's base, the
/// working directory as HOME and TMPDIR, the runtime's own, then the request's.
fn environment<'a>(
    spec: &'a ExecutionSpec,
    base_env: &'a [(String, String)],
    workdir: &'a Path,
) -> Vec<(&'a str, &'a str)> {
    let dir = workdir.to_str().unwrap_or("/tmp");
    let pairs = |list: &'a [(String, String)]| list.iter().map(|(k, v)| (k.as_str(), v.as_str()));
    let mut env: Vec<(&str, &str)> = pairs(base_env).collect();
    env.extend([("HOME", dir), ("TMPDIR", dir)]);
    env.extend(pairs(&spec.runtime.env));
    env.extend(pairs(&spec.env));
    env
}

/// Why the gateway ended the program early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Cancelled,
    Timeout,
    Output,
    /// The cgroup's OOM killer struck.
    Memory,
    /// A fork failed at the cgroup's process limit.
    Processes,
    /// The whole tree used its CPU time (cgroup v2 `cpu.stat`).
    Cpu,
}

/// How often a running program's cgroup is checked for a memory or process-limit hit.
const CGROUP_CHECK: std::time::Duration = std::time::Duration::from_millis(100);

/// One output pipe and its decoder.
#[derive(Debug)]
struct OutputPipe {
    kind: EventKind,
    rx: Option<pipe::Receiver>,
    decoder: OutputDecoder,
    /// Held-back bytes of an incomplete character, then what the last read appended.
    buf: Vec<u8>,
    delivered: u64,
    /// Bytes read after the program exited (bounded by DRAIN_LIMIT).
    after_exit: u64,
}

/// What one non-blocking read produced.
enum Read {
    Data(usize),
    Eof,
    Empty,
}

impl OutputPipe {
    fn new(kind: EventKind, rx: pipe::Receiver, encoding: Encoding, chunk: usize) -> Self {
        let decoder = OutputDecoder::new(encoding, chunk);
        Self {
            kind,
            rx: Some(rx),
            buf: decoder.buffer(),
            decoder,
            delivered: 0,
            after_exit: 0,
        }
    }

    fn is_open(&self) -> bool {
        self.rx.is_some()
    }

    async fn readable(&self) -> io::Result<()> {
        match &self.rx {
            Some(rx) => rx.readable().await,
            None => std::future::pending().await,
        }
    }

    /// Appends whatever the pipe holds to the buffer, up to the chunk size, without
    /// waiting; `Data(n)` counts the new bytes.
    fn read_available(&mut self) -> Read {
        let Some(rx) = &self.rx else { return Read::Eof };
        let room = self.buf.capacity();
        let before = self.buf.len();
        while self.buf.len() < room {
            // Never let the read grow the buffer past the chunk size.
            let want = room - self.buf.len();
            match rx.try_read_buf(&mut (&mut self.buf).limit(want)) {
                Ok(0) => break,
                Ok(_) => {}
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    return match self.buf.len() - before {
                        0 => Read::Empty,
                        n => Read::Data(n),
                    };
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => {
                    tracing::warn!(%err, "reading program output failed; closing the pipe");
                    break;
                }
            }
        }
        match self.buf.len() - before {
            0 if self.buf.len() < room => Read::Eof,
            0 => Read::Empty,
            n => Read::Data(n),
        }
    }

    /// The payload of what is buffered, keeping back an incomplete character.
    fn take_text(&mut self) -> Option<String> {
        self.decoder.decode(&mut self.buf)
    }

    /// Closes the pipe; returns the held-back tail of a character, if any.
    fn close(&mut self) -> Option<String> {
        self.rx = None;
        self.decoder.finish(&mut self.buf)
    }

    fn event(&self, id: &str, text: String, encoding: Encoding) -> Event {
        let mut event = Event::new(self.kind, Some(id.to_owned()), text);
        if encoding == Encoding::Base64 {
            event.encoding = Some(Encoding::Base64);
        }
        event
    }
}

struct Run {
    spec: Arc<ExecutionSpec>,
    ctx: ExecutionContext,
    cancel: CancellationToken,
    finished: Arc<AtomicBool>,
    /// The gateway-wide execution slot, the peer's share and the budget; released just
    /// before the terminal event.
    slot: Option<Slot>,
}

impl Run {
    /// Runs a started program to its terminal event.
    async fn supervise(
        mut self,
        launched: Launched,
        stdin_rx: mpsc::Receiver<StdinChunk>,
        stdin_queued_bytes: Arc<AtomicUsize>,
    ) {
        let Launched {
            workdir,
            program,
            stdin,
            stdout,
            stderr,
            started_at,
        } = launched;
        let mut child = program;
        tracing::debug!(pid = child.pid(), "started");
        let mut started = Event::new(
            EventKind::Started,
            Some(self.spec.id.clone()),
            child.note().unwrap_or_default(),
        );
        started.pid = Some(child.pid());

        let mut stdin = StdinFeed::new(stdin, stdin_rx, stdin_queued_bytes);
        if let Some(data) = self.spec.stdin.clone() {
            stdin.start(StdinChunk {
                data: Some(data),
                eof: true,
                memory: None,
            });
        }
        let encoding = self.spec.encoding;
        let mut pipes = [
            OutputPipe::new(EventKind::Stdout, stdout, encoding, self.ctx.chunk_bytes),
            OutputPipe::new(EventKind::Stderr, stderr, encoding, self.ctx.chunk_bytes),
        ];
        let pump = self
            .pump(&mut child, &mut pipes, &mut stdin, started, started_at)
            .await;
        stdin.stop();

        // The program is gone: reap it, free its slot and its directory now, whether or
        // not the client has taken the last events yet.
        let ended = child.reap().await;
        self.slot = None;
        // A jailed program's files are on the jail's own file system: its init looked.
        // Read only with a jail: an unjailed program owns its directory and could leave
        // a report of its own making there.
        let jail_report = workdir
            .as_ref()
            .filter(|_| self.ctx.host.jail.is_some())
            .and_then(|dir| crate::sandbox::jail::JailReport::read(dir.path()));
        let largest_file = match &jail_report {
            Some(report) => report.largest_file_bytes,
            None => workdir.as_ref().map_or(0, Workdir::largest_file),
        };
        if let Some(workdir) = workdir {
            workdir.remove();
        }
        let kernel_lost = ended.as_ref().is_ok_and(|e| e.kernel_lost);
        let lost_because = ended.as_ref().ok().and_then(|e| e.lost_because.clone());
        let cgroup = ended.as_ref().ok().and_then(|e| e.cgroup);
        let reaped = ended.map(|e| e.reaped);
        let usage = Usage {
            duration_ms: millis(pump.exited_at.duration_since(started_at)),
            first_output_ms: pump
                .first_output_at
                .map(|t| millis(t.duration_since(started_at))),
            // The whole tree's CPU time when the cgroup counts it (the jail's own wait
            // does not see children killed before it reaped them), else what the main
            // process and the children it waited for used.
            cpu_ms: cgroup
                .and_then(|r| r.cpu_usec)
                .map(|usec| usec as f64 / 1000.0)
                .or_else(|| reaped.as_ref().ok().map(|r| millis(r.cpu)))
                .unwrap_or(0.0),
            // The whole tree's peak when the cgroup knows it, else the largest process's.
            peak_memory_bytes: cgroup
                .and_then(|r| r.peak_memory_bytes)
                .or_else(|| reaped.as_ref().ok().map(|r| r.peak_memory_bytes))
                .unwrap_or(0),
            stdout_bytes: pipes[0].delivered,
            stderr_bytes: pipes[1].delivered,
        };
        let id = Some(self.spec.id.clone());
        let limits = self.spec.limits;
        // A limit the cgroup caught after the last check (or that ended the program).
        let stop = pump
            .stop
            .or_else(|| cgroup.as_ref().and_then(|r| cgroup_stop(r, limits.cpu_ms)));
        let kernel_limit = match &reaped {
            Ok(reaped) if !kernel_lost => rlimit_hit(reaped, &limits, largest_file),
            _ => None,
        };
        let mut terminal = match (stop, &reaped) {
            (Some(Stop::Cancelled), _) => {
                Event::new(EventKind::Cancelled, id, "execution cancelled")
            }
            (Some(Stop::Timeout), _) => Event {
                limit: Some(LimitKind::Timeout),
                limit_value: Some(limits.timeout_ms),
                ..Event::new(
                    EventKind::ResourceLimit,
                    id,
                    format!("wall-clock limit of {} ms reached", limits.timeout_ms),
                )
            },
            (Some(Stop::Output), _) => Event {
                limit: Some(LimitKind::Output),
                limit_value: Some(limits.output_bytes),
                ..Event::new(
                    EventKind::ResourceLimit,
                    id,
                    format!("output limit of {} bytes reached", limits.output_bytes),
                )
            },
            (Some(Stop::Memory), _) => Event {
                limit: Some(LimitKind::Memory),
                limit_value: Some(limits.memory_bytes),
                limit_observed: Some(usage.peak_memory_bytes),
                ..Event::new(
                    EventKind::ResourceLimit,
                    id,
                    format!(
                        "memory limit of {} bytes reached (the kernel's OOM killer ended a process)",
                        limits.memory_bytes
                    ),
                )
            },
            (Some(Stop::Processes), _) => Event {
                limit: Some(LimitKind::Processes),
                limit_value: Some(limits.processes),
                ..Event::new(
                    EventKind::ResourceLimit,
                    id,
                    format!(
                        "process limit of {} reached (a fork failed)",
                        limits.processes
                    ),
                )
            },
            (Some(Stop::Cpu), _) => Event {
                limit: Some(LimitKind::Cpu),
                limit_value: Some(limits.cpu_ms),
                limit_observed: cgroup.and_then(|r| r.cpu_usec).map(|usec| usec / 1000),
                ..Event::new(
                    EventKind::ResourceLimit,
                    id,
                    format!(
                        "CPU-time limit of {} ms reached by the program's processes together",
                        limits.cpu_ms
                    ),
                )
            },
            (None, _) if jail_report.as_ref().is_some_and(|r| r.setup_failed.is_some()) => {
                let why = jail_report
                    .as_ref()
                    .and_then(|r| r.setup_failed.clone())
                    .unwrap_or_default();
                tracing::warn!(%why, "the jail could not start the program");
                Event::error(id, ErrorCode::SpawnFailed, why)
            }
            (None, Ok(_)) if kernel_limit.is_some() => {
                let (kind, value, what) = kernel_limit.unwrap_or((LimitKind::Cpu, 0, ""));
                Event {
                    limit: Some(kind),
                    limit_value: Some(value),
                    limit_observed: match kind {
                        LimitKind::FileSize => Some(largest_file),
                        LimitKind::Cpu => Some(usage.cpu_ms as u64),
                        _ => None,
                    },
                    ..Event::new(
                        EventKind::ResourceLimit,
                        id,
                        format!("{what} limit of {value} reached"),
                    )
                }
            }
            (None, Ok(_)) if jail_report.as_ref().is_some_and(|r| r.scratch_full) => Event {
                limit: Some(LimitKind::Workspace),
                limit_value: Some(limits.workspace_bytes),
                limit_observed: jail_report.as_ref().map(|r| r.scratch_used_bytes),
                ..Event::new(
                    EventKind::ResourceLimit,
                    id,
                    format!(
                        "workspace limit of {} bytes reached (workspace, /tmp and /dev/shm together)",
                        limits.workspace_bytes
                    ),
                )
            },
            (None, Ok(reaped)) if kernel_lost => Event::error(
                id,
                ErrorCode::KernelLost,
                match &lost_because {
                    Some(why) => format!(
                        "the gateway ended the interpreter during this cell: {why}; the session's state is lost and its next execution starts a fresh interpreter"
                    ),
                    None => format!(
                        "the interpreter {} during this cell; the session's state is lost and its next execution starts a fresh interpreter",
                        describe_end(reaped)
                    ),
                },
            ),
            (None, Ok(reaped)) => Event {
                exit_code: reaped.exit_code,
                signal: reaped.signal,
                ..Event::new(EventKind::Completed, id, "")
            },
            (None, Err(err)) => {
                tracing::error!(%err, "could not reap the program");
                Event::error(
                    id,
                    ErrorCode::Internal,
                    "the gateway lost track of the program",
                )
            }
        };
        if kernel_lost && stop.is_some() {
            terminal.data.push_str(
                "; the interpreter had to be killed, so the session's state is lost and its next execution starts a fresh interpreter",
            );
        }
        terminal.usage = Some(usage);
        tracing::debug!(kind = %terminal.kind, "finished");
        for event in pump.undelivered {
            self.deliver(event).await;
        }
        self.finish(terminal).await;
        // A cell's turn (and its kernel) pass to the session's next cell only now, so
        // the session's events keep the cells apart.
        drop(child);
    }

    /// Publishes one event once the session's stream has room. Once the session is
    /// being ended (or the gateway shuts down) it is published at once: a lead that is
    /// gone must not hold an execution's last events, and they are a few per execution.
    async fn deliver(&self, event: Event) {
        let stream = &self.ctx.session.stream;
        tokio::select! {
            biased;
            () = stream.room() => {}
            () = self.ctx.session.cancel.cancelled() => {}
        }
        stream.publish(event);
    }

    /// Moves output from the pipes to the socket until the program has exited and its
    /// pipes are drained, enforcing the limits and reacting to cancel on the way.
    async fn pump(
        &self,
        child: &mut Program,
        pipes: &mut [OutputPipe; 2],
        stdin: &mut StdinFeed,
        started: Event,
        started_at: Instant,
    ) -> PumpResult {
        let id = self.spec.id.as_str();
        let limits = self.spec.limits;
        let encoding = self.spec.encoding;
        let stream = &self.ctx.session.stream;
        let deadline = started_at + limits.timeout;
        let mut budget = limits.output_bytes;
        // Output events waiting for room on the socket (at most three: a chunk and the
        // flushed tails of both streams). Reading pauses while any wait, so a slow client
        // fills the pipe and the program blocks in write.
        let mut pending: VecDeque<Event> = VecDeque::from([started]);
        // `started` waits (up to STARTED_HOLD) to share a frame flush with the first output
        // or the exit: one wakeup of the socket writer and the client instead of two, and
        // no gateway work competing with the program's own start-up for the CPU.
        let mut hold_until = Some(started_at + STARTED_HOLD);
        let mut stop: Option<Stop> = None;
        let mut kill_at: Option<Instant> = None;
        let mut exited_at: Option<Instant> = None;
        let mut drain_at: Option<Instant> = None;
        let mut first_output_at = None;
        let mut cgroup_check_at = child
            .cgroup_report()
            .is_some()
            .then(|| started_at + CGROUP_CHECK);
        // One timer serves the timeout, the kill grace and the drain grace: it is re-armed
        // for whichever comes first instead of a new timer per loop.
        let timer = tokio::time::sleep_until(deadline);
        tokio::pin!(timer);
        let mut armed = deadline;
        loop {
            // Once the program has exited and its pipes are drained, the pump is done even
            // if events still wait for the socket: the caller reaps and cleans up first,
            // then delivers them, so a client that reads slowly holds no process, slot or
            // working directory.
            if exited_at.is_some() && pipes.iter().all(|p| !p.is_open()) {
                break;
            }
            if pending.len() > 1 || exited_at.is_some() {
                hold_until = None;
            }
            // Reading pauses while events wait for the socket, except the held `started`,
            // and after the exit, when what is left in the pipes is bounded (DRAIN_LIMIT).
            let can_read = pending.is_empty() || hold_until.is_some() || exited_at.is_some();
            let running = exited_at.is_none();
            let next_wake = [
                (stop.is_none() && running).then_some(deadline),
                cgroup_check_at.filter(|_| stop.is_none() && running),
                kill_at.filter(|_| running),
                drain_at.filter(|_| can_read),
                hold_until,
            ]
            .into_iter()
            .flatten()
            .min();
            if let Some(at) = next_wake.filter(|at| *at != armed) {
                timer.as_mut().reset(at);
                armed = at;
            }
            let which = tokio::select! {
                biased;
                () = stream.room(), if !pending.is_empty() && hold_until.is_none() => {
                    if let Some(event) = pending.pop_front() {
                        stream.publish(event);
                    }
                    continue;
                }
                () = self.cancel.cancelled(), if stop.is_none() && running => {
                    stop = Some(Stop::Cancelled);
                    child.interrupt();
                    kill_at = Some(Instant::now() + self.ctx.kill_grace);
                    continue;
                }
                chunk = stdin.next_chunk(), if stdin.is_idle() => {
                    match chunk {
                        Some(chunk) => stdin.start(chunk),
                        None => stdin.close(),
                    }
                    continue;
                }
                () = child.exited(), if running => {
                    exited_at = Some(Instant::now());
                    // Whatever the program left running in its group goes with it.
                    child.after_exit();
                    drain_at = Some(Instant::now() + DRAIN_GRACE);
                    continue;
                }
                () = &mut timer, if next_wake.is_some() => {
                    let now = Instant::now();
                    if running && kill_at.is_some_and(|at| at <= now) {
                        child.kill();
                        kill_at = None;
                    }
                    if running && stop.is_none() && deadline <= now {
                        stop = Some(Stop::Timeout);
                        stop_for_limit(child, &mut kill_at, self.ctx.kill_grace);
                    }
                    if running && stop.is_none() && cgroup_check_at.is_some_and(|at| at <= now) {
                        cgroup_check_at = Some(now + CGROUP_CHECK);
                        let report = child.cgroup_report();
                        if let Some(hit) = report.and_then(|r| cgroup_stop(&r, limits.cpu_ms)) {
                            stop = Some(hit);
                            child.kill();
                        }
                    }
                    if hold_until.is_some_and(|at| at <= now) {
                        hold_until = None;
                    }
                    if !(can_read && drain_at.is_some_and(|at| at <= now)) {
                        continue;
                    }
                    None
                }
                r = pipes[0].readable(), if can_read && pipes[0].is_open() => Some((0, r)),
                r = pipes[1].readable(), if can_read && pipes[1].is_open() => Some((1, r)),
            };
            // Either a pipe is readable, or the drain grace is over and each pipe gets one
            // last non-blocking read before it is closed.
            let (candidates, draining): (&[usize], bool) = match which {
                Some((0, _)) => (&[0], false),
                Some(_) => (&[1], false),
                None => (&[0, 1], true),
            };
            for &index in candidates {
                let may_read = can_read
                    && (exited_at.is_some() || pending.len() <= usize::from(hold_until.is_some()));
                if !pipes[index].is_open() || !may_read {
                    continue;
                }
                let pipe = &mut pipes[index];
                match pipe.read_available() {
                    Read::Data(n) => {
                        first_output_at.get_or_insert_with(Instant::now);
                        let take = n.min(usize::try_from(budget).unwrap_or(usize::MAX));
                        budget -= take as u64;
                        pipe.delivered += take as u64;
                        // Bytes past the budget are dropped unread by anyone.
                        let keep = pipe.buf.len() - (n - take);
                        pipe.buf.truncate(keep);
                        let text = pipe.take_text();
                        pending.extend(text.map(|t| pipe.event(id, t, encoding)));
                        if exited_at.is_some() {
                            pipe.after_exit += take as u64;
                            if pipe.after_exit > DRAIN_LIMIT {
                                // Something outside the group still writes: stop listening.
                                pending.extend(pipe.close().map(|t| pipe.event(id, t, encoding)));
                            }
                        }
                        if take < n {
                            // Past the limit: exactly the budget is delivered, nothing after.
                            stop.get_or_insert(Stop::Output);
                            stop_for_limit(child, &mut kill_at, self.ctx.kill_grace);
                            for pipe in pipes.iter_mut() {
                                let tail = pipe.close();
                                pending.extend(tail.map(|t| pipe.event(id, t, encoding)));
                            }
                        }
                    }
                    Read::Eof => pending.extend(pipe.close().map(|t| pipe.event(id, t, encoding))),
                    Read::Empty if draining => {
                        pending.extend(pipe.close().map(|t| pipe.event(id, t, encoding)))
                    }
                    Read::Empty => {}
                }
            }
            if draining && pipes.iter().all(|p| !p.is_open()) {
                drain_at = None;
            }
        }
        PumpResult {
            stop,
            exited_at: exited_at.unwrap_or_else(Instant::now),
            first_output_at,
            undelivered: pending,
        }
    }

    /// Marks the execution finished, then publishes its terminal event.
    async fn finish(&mut self, event: Event) {
        // Free the id and the gateway-wide slot before the client can see the terminal
        // event, so an `execute` sent in reply to it finds room.
        self.slot = None;
        self.finished.store(true, Ordering::Release);
        self.deliver(event).await;
    }
}

/// The limit a cgroup report shows was hit, if any.
fn cgroup_stop(report: &crate::sandbox::CgroupReport, cpu_ms: u64) -> Option<Stop> {
    if report.oom_killed {
        Some(Stop::Memory)
    } else if report.process_limit_hit {
        Some(Stop::Processes)
    } else if report
        .cpu_usec
        .is_some_and(|used| used >= cpu_ms.saturating_mul(1000))
    {
        Some(Stop::Cpu)
    } else {
        None
    }
}

/// Stops a program that hit a limit: a process is killed at once; a cell is
/// interrupted, and its interpreter killed if it has not stopped after `grace`.
fn stop_for_limit(child: &Program, kill_at: &mut Option<Instant>, grace: std::time::Duration) {
    if child.stops_gently() {
        child.interrupt();
        kill_at.get_or_insert(Instant::now() + grace);
    } else {
        child.kill();
    }
}

struct PumpResult {
    stop: Option<Stop>,
    exited_at: Instant,
    first_output_at: Option<Instant>,
    /// Events read but not yet taken by the socket, in order.
    undelivered: VecDeque<Event>,
}

/// The kernel limit the program ran into, if it did: its kind, value and name.
/// RLIMIT_CPU sends SIGXCPU at the soft limit and SIGKILL a second later. RLIMIT_FSIZE
/// sends SIGXFSZ, or, to a program that ignores it (Python does), fails the write with
/// EFBIG, which leaves a file of exactly the limit's size in the working directory.
fn rlimit_hit(
    reaped: &crate::sys::Reaped,
    limits: &crate::config::EffectiveLimits,
    largest_file: u64,
) -> Option<(LimitKind, u64, &'static str)> {
    let cpu = (LimitKind::Cpu, limits.cpu_ms, "CPU-time (ms)");
    let file_size = (
        LimitKind::FileSize,
        limits.file_size_bytes,
        "file-size (bytes)",
    );
    match reaped.signal {
        Some(libc::SIGXCPU) => Some(cpu),
        Some(libc::SIGKILL) if reaped.cpu.as_secs() >= limits.cpu_ms.div_ceil(1000) => Some(cpu),
        Some(libc::SIGXFSZ) => Some(file_size),
        _ if largest_file >= limits.file_size_bytes => Some(file_size),
        _ => None,
    }
}

/// "exited with status 1" or "was killed by signal 9".
fn describe_end(reaped: &crate::sys::Reaped) -> String {
    match (reaped.exit_code, reaped.signal) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(signal)) => format!("was killed by signal {signal}"),
        (None, None) => "ended".to_owned(),
    }
}

fn millis(d: std::time::Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// The program's stdin. Until the client sends input the pipe stays a plain descriptor
/// (most programs never get any, and registering it with the reactor costs system calls);
/// the first chunk starts a writer task that owns the pipe and the queue from then on.
#[derive(Debug)]
struct StdinFeed {
    /// The program's stdin until the writer task takes it; dropping it closes stdin.
    pipe: Option<std::os::fd::OwnedFd>,
    /// The connection's queue of input; the writer task takes it with the pipe.
    queue: Option<mpsc::Receiver<StdinChunk>>,
    /// Bytes queued and not yet written, shared with the connection's handle.
    queued_bytes: Arc<AtomicUsize>,
    /// The writer task, aborted when the execution ends.
    writer: Option<tokio::task::JoinHandle<()>>,
}

impl StdinFeed {
    fn new(
        pipe: std::os::fd::OwnedFd,
        queue: mpsc::Receiver<StdinChunk>,
        queued_bytes: Arc<AtomicUsize>,
    ) -> Self {
        Self {
            pipe: Some(pipe),
            queue: Some(queue),
            queued_bytes,
            writer: None,
        }
    }

    /// True while nobody has sent input yet and the queue is still open.
    fn is_idle(&self) -> bool {
        self.writer.is_none() && self.queue.is_some()
    }

    async fn next_chunk(&mut self) -> Option<StdinChunk> {
        match &mut self.queue {
            Some(queue) => queue.recv().await,
            None => std::future::pending().await,
        }
    }

    /// Hands the pipe, `first` and the rest of the queue to a writer task.
    fn start(&mut self, first: StdinChunk) {
        let Some(pipe) = self.pipe.take() else { return };
        let queue = self.queue.take();
        match pipe::Sender::from_owned_fd(pipe) {
            Ok(pipe) => {
                let queued = self.queued_bytes.clone();
                self.writer = Some(tokio::spawn(write_stdin(pipe, first, queue, queued)));
            }
            Err(err) => tracing::warn!(%err, "could not set up the program's stdin; closing it"),
        }
    }

    /// Closes the program's stdin without writing anything.
    fn close(&mut self) {
        self.pipe = None;
        self.queue = None;
    }

    fn stop(&mut self) {
        if let Some(writer) = self.writer.take() {
            writer.abort();
        }
        self.close();
    }
}

/// Writes client input to the program. Ends, closing the program's stdin, after `eof`,
/// when the handle is dropped, or when the program stops reading.
async fn write_stdin(
    mut pipe: pipe::Sender,
    first: StdinChunk,
    mut queue: Option<mpsc::Receiver<StdinChunk>>,
    queued_bytes: Arc<AtomicUsize>,
) {
    let mut chunk = Some(first);
    while let Some(StdinChunk { data, eof, memory }) = chunk {
        if let Some(data) = data {
            let written = pipe.write_all(data.as_bytes()).await;
            queued_bytes.fetch_sub(data.len(), Ordering::AcqRel);
            drop(memory);
            if written.is_err() {
                return;
            }
        }
        if eof {
            return;
        }
        chunk = match &mut queue {
            Some(queue) => queue.recv().await,
            None => None,
        };
    }
}
