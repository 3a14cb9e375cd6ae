//! Persistent interpreters ("kernels") for notebook-style sessions.
//!
//! A [`Kernel`] is one interpreter process that runs a session's cells one at a time, so
//! variables, imports and files persist between executions. Each cell gets fresh pipes
//! for stdin, stdout and stderr, handed to the interpreter over a Unix socket
//! (`SCM_RIGHTS`), so a cell's output reaches end-of-file like a program's and the
//! execution pump treats it the same way. The interpreter answers each cell with one JSON
//! line saying how it ended. Python and Node have kernels ([`KernelKind`]); Node cannot
//! take descriptors, so its interpreter's own stdout and stderr are carried to each
//! cell's pipes instead (`forward.rs`), and its cells have no stdin.
//!
//! A cell's processes end with it: when the interpreter has answered (the cell ended,
//! was interrupted by a limit or a cancel), [`Kernel::end_cell_processes`] kills every
//! process in the interpreter's cgroup but the interpreter itself (and, jailed, the
//! jail and its init), so nothing a cell started runs on, unmetered, for the session's
//! life. Without a cgroup, the interpreter's process group stands in for it.
//!
//! Between cells the interpreter must be idle: a watchdog measures its CPU time (its
//! cgroup's, else its process group's threads) from the end of each cell and kills it
//! once it used more than [`IDLE_CPU_ALLOWANCE`] plus [`IDLE_CPU_PERCENT`] of the time
//! since while no cell ran (a thread a cell left spinning, or a cell that faked its
//! completion; a light background thread, a heartbeat, stays under the share). Cells are numbered and the
//! interpreter's lines must name the running cell: a line while no cell runs, or a
//! second reply for one cell, ends the interpreter too. Either way the session's next
//! cell starts a fresh interpreter and is told why.

mod cell_processes;
mod forward;
mod replies;
mod seat;

pub(crate) use seat::{InterpreterSeat, Turn};

use super::process::{ChildGroup, JailLaunch};
use super::workdir::Workdir;
use crate::runtime::Runtime;
use crate::sandbox::jail::JailSpec;
use crate::sandbox::namespaces::rlimit_list;
use crate::sys::{self, Reaped, Signal};
use replies::{lock, read_replies, watch_idle, CellState, Replies};
use std::io;
use std::os::fd::{AsFd as _, AsRawFd as _, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncWriteExt as _, BufReader};
use tokio::net::unix::pipe;
use tokio::net::UnixStream;
use tokio::sync::Notify;

/// The Python driver, written into the kernel's working directory and run by the
/// session's interpreter.
const PYTHON_DRIVER: &str = include_str!("python_driver.py");

/// The Node driver, likewise.
const NODE_DRIVER: &str = include_str!("node_driver.js");

/// Pipe buffer requested for a cell's stdout and stderr (as for programs).
const PIPE_BYTES: usize = 1 << 20;

/// CPU time an interpreter has in hand, when it starts, to use while no cell of its
/// session runs (see [`IDLE_CPU_PERCENT`]).
pub(crate) const IDLE_CPU_ALLOWANCE: Duration = Duration::from_millis(200);

/// Percent of the wall time while no cell runs that an interpreter earns as CPU time in
/// hand (a thread that polls or sends heartbeats uses a few percent; a spinner, a
/// hundred). The balance is kept across cells, so trivial cells do not refill it.
pub(crate) const IDLE_CPU_PERCENT: u32 = 10;

/// The most CPU time an interpreter holds in hand: a long idle time does not bank a
/// long burst.
pub(crate) const IDLE_CPU_BANK: Duration = Duration::from_secs(2);

/// The most of a query's CPU time excused from the idle budget: a completion or a
/// docstring takes a few milliseconds; the rest (a lookup that spins, threads running
/// beside a lookup that sleeps) counts as idle CPU, so chained queries keep nothing
/// running.
const QUERY_CPU_EXCUSED: Duration = Duration::from_millis(100);

/// How often an idle interpreter's CPU time is checked.
const IDLE_CHECK: Duration = Duration::from_millis(500);

/// How long the interpreter has to answer a query (`complete`, `inspect`) before it is
/// interrupted: looking a name up may run the program's own code (a property).
pub(crate) const QUERY_TIME: Duration = Duration::from_secs(5);

/// How long after that interrupt it has to answer before it is ended.
pub(crate) const QUERY_GRACE: Duration = Duration::from_secs(1);

/// What a `restarted` event says.
pub(crate) const RESTARTED_MESSAGE: &str =
    "the session's interpreter was restarted: its state is gone, and the next cell starts a fresh one";

/// Why a query got no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum QueryFailure {
    /// It did not answer within [`QUERY_TIME`]; `ended` when it did not answer the
    /// interrupt either and was ended.
    TimedOut { ended: bool },
    /// The interpreter is gone (it exited, or answered out of step).
    Lost,
    /// It answered that it could not (the message is the interpreter's).
    Failed(String),
}

/// Languages that can run persistent sessions, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KernelKind {
    Python,
    Node,
}

impl KernelKind {
    /// The kernel for `runtime`, if its interpreter has one.
    pub(crate) fn for_runtime(runtime: &Runtime) -> Option<Self> {
        let program = runtime.program.file_name()?.to_str()?;
        if program.starts_with("python") {
            Some(Self::Python)
        } else if program == "node" || program.starts_with("nodejs") {
            Some(Self::Node)
        } else {
            None
        }
    }

    /// The driver's file name and text.
    fn driver(self) -> (&'static str, &'static str) {
        match self {
            Self::Python => ("sluice_kernel.py", PYTHON_DRIVER),
            Self::Node => ("sluice_kernel.js", NODE_DRIVER),
        }
    }

    /// The interpreter's options before the driver: Node's driver takes the REPL's
    /// top-level `await` rewrite from Node's internals.
    fn options(self) -> &'static [&'static str] {
        match self {
            Self::Python => &[],
            Self::Node => &["--expose-internals"],
        }
    }

    /// The interpreter takes each cell's pipes over the control socket; otherwise its
    /// own stdout and stderr are carried to them.
    fn takes_descriptors(self) -> bool {
        matches!(self, Self::Python)
    }
}

/// How a cell ended, as the interpreter reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CellReply {
    pub(crate) exit_code: i32,
    /// The cell's number in its interpreter.
    pub(crate) number: u64,
    /// The exception it raised, if it did.
    pub(crate) exception: Option<sluice_protocol::CellException>,
}

/// A running interpreter for one session.
#[derive(Debug)]
pub(crate) struct Kernel {
    kind: KernelKind,
    child: ChildGroup,
    control: tokio::net::unix::OwnedWriteHalf,
    replies: Arc<Replies>,
    /// The carriers of its stdout and stderr to the cell's pipes, for a kind that does
    /// not take descriptors.
    forwarders: Option<[forward::Forwarder; 2]>,
    reader: tokio::task::JoinHandle<()>,
    watchdog: tokio::task::JoinHandle<()>,
    workdir: Option<Workdir>,
    /// The interpreter's cgroup's process list: everything a cell started is there.
    procs: Option<PathBuf>,
    /// The interpreter runs in the jail (its leader is the jail, with init below it).
    jailed: bool,
    /// It has a network: the host's, which its runtime or the gateway's `--network`
    /// gave it and no credential took away (`Host::gives_network`).
    network: bool,
    /// Without one: its namespace's counts of refused attempts, which its cells' pumps
    /// look at (`network_blocked`).
    network_counters: Option<Arc<Mutex<crate::execution::network_watch::NamespaceCounters>>>,
    /// The runtime (language) it was started for: a cell of another language of the
    /// same kind runs in it too.
    language: String,
    /// The limits it holds for its session's life.
    limits: KernelLimits,
    /// This interpreter's place under `--max-kernels` and its peer's
    /// `--max-kernels-per-peer`, and the limits it holds of the executions' budget.
    _slot: super::Slot,
}

/// What an interpreter is started with, from the execute that starts it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct KernelLimits {
    /// Per-process kernel limits (no CPU limit: it would add up over every cell).
    pub(crate) rlimits: sys::Rlimits,
    /// The jail's scratch file system, when jailed.
    pub(crate) scratch_bytes: u64,
    /// The process limit, for a jail that must enforce it without a cgroup.
    pub(crate) processes: u64,
    /// The memory limit of its cgroup (kept to compare with a later cell's ceilings).
    pub(crate) memory_bytes: u64,
}

/// A cell sent to the kernel: the gateway's ends of its pipes.
#[derive(Debug)]
pub(crate) struct CellPipes {
    pub(crate) stdin: OwnedFd,
    pub(crate) stdout: pipe::Receiver,
    pub(crate) stderr: pipe::Receiver,
}

impl Kernel {
    /// Starts an interpreter in its own process group and working directory: the
    /// session's `workspace` when it keeps one (its driver there under a name of the
    /// gateway's, left until the workspace goes).
    #[allow(clippy::too_many_arguments)] // each is one part of what the interpreter gets
    pub(crate) fn start(
        workspace: Option<&crate::workspace::Workspace>,
        kind: KernelKind,
        runtime: &Runtime,
        host: &super::Host,
        env: &[(&str, &str)],
        limits: KernelLimits,
        cgroup: Option<crate::sandbox::ExecutionCgroup>,
        slot: super::Slot,
    ) -> io::Result<Self> {
        let work_root: &Path = &host.work_root;
        let (file_name, driver) = kind.driver();
        let file_name = match workspace {
            Some(ws) => ws.source_name(file_name),
            None => file_name.to_owned(),
        };
        let workdir = Workdir::create(work_root, &file_name, driver, &[], host.program_user)?;
        if let (Some(ws), None) = (workspace, &host.jail) {
            ws.write_source(&file_name, driver)?;
        }
        let start_dir = workspace
            .map_or(workdir.path(), |ws| ws.path())
            .to_path_buf();
        let driver_path = start_dir.join(&file_name);
        let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
        let theirs = OwnedFd::from(theirs);
        let home = start_dir.to_string_lossy().into_owned();
        let env = env
            .iter()
            .copied()
            .chain([("HOME", home.as_str()), ("TMPDIR", home.as_str())]);
        let env: Vec<(&str, &str)> = env.collect();
        let cgroup_dir = cgroup
            .as_ref()
            .and_then(crate::sandbox::ExecutionCgroup::unified_dir);
        let born_inside = cgroup
            .as_ref()
            .is_some_and(crate::sandbox::ExecutionCgroup::can_be_born_inside);
        let shares_cpu = cgroup
            .as_ref()
            .is_some_and(crate::sandbox::ExecutionCgroup::shares_cpu);
        let (jail_command, mut sandbox_ids) = match &host.jail {
            Some(jail) => {
                let (command, lease) = jail.command(
                    JailSpec {
                        host_dir: workdir.path().to_path_buf(),
                        source: Some(file_name.clone().into()),
                        workspace: start_dir.clone(),
                        shared_workspace: workspace.is_some(),
                        scratch_bytes: limits.scratch_bytes,
                        expose: jail.exposure_for(&runtime.program),
                        rlimits: rlimit_list(&limits.rlimits, limits.processes),
                        keep_fd: Some(sys::CONTROL_FD),
                        no_network: !runtime.network,
                        env: crate::sandbox::jail::environment(env.iter().copied()),
                        nice: (!shares_cpu).then_some(sys::PROGRAM_NICE),
                        command: std::iter::once(runtime.program.clone().into_os_string())
                            .chain(kind.options().iter().map(Into::into))
                            .chain([driver_path.clone().into_os_string()])
                            .collect(),
                        ..JailSpec::default()
                    },
                    runtime.offline,
                    workspace.and_then(|ws| ws.ids()),
                    host.package_proxy(runtime)
                        .map(|_| crate::packages::PROXY_PORT),
                )?;
                (Some(command), lease)
            }
            None => (None, None),
        };
        let package_proxy = crate::execution::process::serve_packages(
            runtime,
            host.package_proxy(runtime),
            sandbox_ids.as_mut(),
            None,
        )?;
        let null = std::fs::File::options()
            .read(true)
            .write(true)
            .open("/dev/null")?;
        let mut outputs = None;
        let mut write_ends = None;
        if !kind.takes_descriptors() {
            let (stdout_read, stdout_write) = std::io::pipe()?;
            let (stderr_read, stderr_write) = std::io::pipe()?;
            sys::set_pipe_size(&stdout_read, PIPE_BYTES);
            sys::set_pipe_size(&stderr_read, PIPE_BYTES);
            outputs = Some((stdout_read, stderr_read));
            write_ends = Some((OwnedFd::from(stdout_write), OwnedFd::from(stderr_write)));
        }
        let stdio = match &write_ends {
            Some((stdout, stderr)) => [null.as_fd(), stdout.as_fd(), stderr.as_fd()],
            None => [null.as_fd(); 3],
        };
        // Started as programs are (`sys::spawn_program`: no copy of the gateway's memory,
        // born in its v2 cgroup where the kernel can do that), in a session of its own
        // without a controlling terminal, with the control socket as its descriptor 3.
        // Jailed: `sluice-jail` as it is given (it sets up the interpreter's limits,
        // network and user inside), starting where its spec is.
        let jail = jail_command
            .as_ref()
            .map(|command| JailLaunch::of(command, workdir.path()));
        let unjailed_argv: Vec<std::ffi::OsString>;
        let plan = match &jail {
            Some(jail) => sys::ProgramPlan {
                stdio: Some(stdio),
                control: Some(theirs.as_fd()),
                ..jail.plan(cgroup_dir, born_inside)
            },
            None => {
                unjailed_argv = std::iter::once(runtime.program.clone().into_os_string())
                    .chain(kind.options().iter().map(Into::into))
                    .chain([driver_path.clone().into_os_string()])
                    .collect();
                sys::ProgramPlan {
                    program: &runtime.program,
                    argv: &unjailed_argv,
                    env: &env,
                    cwd: &start_dir,
                    rlimits: limits.rlimits,
                    no_network: (host.no_network || runtime.offline) && !runtime.network,
                    user: host.program_user.map(|user| (user.uid, user.gid)),
                    cgroup: cgroup_dir,
                    born_inside,
                    lower_priority: !shares_cpu,
                    terminal: None,
                    terminal_as_stdio_only: false,
                    stdio: Some(stdio),
                    control: Some(theirs.as_fd()),
                    // Orphans of its cells stay in its tree (for `end_cell_processes`).
                    subreaper: true,
                }
            }
        };
        let started = match &cgroup {
            Some(cgroup) => cgroup
                .spawn_inside(|| sys::spawn_program(&plan))
                .and_then(|spawned| spawned),
            None => sys::spawn_program(&plan),
        };
        // The interpreter holds its ends now.
        drop((theirs, write_ends, null, jail_command));
        let pid = match started {
            Ok(started) => started.pid,
            Err(err) => {
                workdir.remove();
                return Err(err);
            }
        };
        let procs = cgroup
            .as_ref()
            .and_then(crate::sandbox::ExecutionCgroup::procs_file);
        let cgroup_dir = cgroup
            .as_ref()
            .and_then(crate::sandbox::ExecutionCgroup::unified_dir)
            .map(Path::to_path_buf);
        let child = ChildGroup::watch(pid, cgroup, sandbox_ids, package_proxy)?;
        let pid = child.pid();
        let network = host.gives_network(runtime);
        ours.set_nonblocking(true)?;
        let (read, control) = UnixStream::from_std(ours)?.into_split();
        let replies = Arc::new(Replies {
            pid: child.pid(),
            current: Mutex::new(CellState {
                in_hand_usec: i64::try_from(IDLE_CPU_ALLOWANCE.as_micros()).unwrap_or(0),
                ..CellState::default()
            }),
            arrived: Notify::new(),
            cgroup_dir,
            procs: procs.clone(),
            ready: std::sync::atomic::AtomicBool::new(false),
        });
        let forwarders = match outputs {
            Some((stdout, stderr)) => Some([
                forward::Forwarder::start(
                    pipe::Receiver::from_owned_fd(OwnedFd::from(stdout))?,
                    replies.clone(),
                ),
                forward::Forwarder::start(
                    pipe::Receiver::from_owned_fd(OwnedFd::from(stderr))?,
                    replies.clone(),
                ),
            ]),
            None => None,
        };
        let reader = tokio::spawn(read_replies(BufReader::new(read), replies.clone()));
        let watchdog = tokio::spawn(watch_idle(replies.clone()));
        Ok(Self {
            kind,
            child,
            control,
            replies,
            forwarders,
            reader,
            watchdog,
            workdir: Some(workdir),
            procs,
            jailed: host.jail.is_some(),
            network,
            network_counters: (!network)
                .then(|| crate::execution::network_watch::NamespaceCounters::of(pid)),
            language: runtime.name.clone(),
            limits,
            _slot: slot,
        })
    }

    /// Its namespace's counts of refused attempts to use the network, when it has none.
    pub(crate) fn network_counters(
        &self,
    ) -> Option<Arc<Mutex<crate::execution::network_watch::NamespaceCounters>>> {
        self.network_counters.clone()
    }

    pub(crate) fn kind(&self) -> KernelKind {
        self.kind
    }

    /// The runtime (language) it was started for.
    pub(crate) fn language(&self) -> &str {
        &self.language
    }

    /// What this interpreter holds beyond what a cell's sender may have: a language its
    /// credential does not allow, the network where the sender's program would have none
    /// (`network`: `Host::gives_network` of the cell's runtime, after its credential),
    /// or a session-long limit
    /// above one of its credential's ceilings. Every cell runs with what the
    /// interpreter holds, so such a cell must not run in it (another grant of the
    /// tenant may have started it).
    pub(crate) fn beyond(&self, network: bool, grant: &crate::auth::Grant) -> Option<String> {
        if !grant.allows_language(&self.language) {
            return Some(format!(
                "language {:?}, which your credential does not allow",
                self.language
            ));
        }
        if self.network && !network {
            return Some("the network, which your credential does not allow".to_owned());
        }
        let ceilings = &grant.narrowing.limits;
        let held = &self.limits;
        [
            ("open_files", held.rlimits.open_files, ceilings.open_files),
            (
                "file_size_bytes",
                held.rlimits.file_size_bytes,
                ceilings.file_size_bytes,
            ),
            (
                "memory_bytes",
                Some(held.memory_bytes),
                ceilings.memory_bytes,
            ),
            ("processes", Some(held.processes), ceilings.processes),
            (
                "workspace_bytes",
                Some(held.scratch_bytes),
                ceilings.workspace_bytes,
            ),
        ]
        .into_iter()
        .find_map(|(name, held, ceiling)| match (held, ceiling) {
            (Some(held), Some(ceiling)) if held > ceiling => Some(format!(
                "limits.{name} {held}, above the {ceiling} your credential allows"
            )),
            _ => None,
        })
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// Why the interpreter cannot take the next cell although no cell ran, checked
    /// when one is about to start: the gateway ended it (see [`IDLE_CPU_ALLOWANCE`]),
    /// or it exited.
    pub(crate) fn ended_while_idle(&self) -> Option<String> {
        if let Some(why) = self.replies.check_idle() {
            return Some(why);
        }
        self.child
            .has_exited()
            .then(|| "it exited while no cell ran".to_owned())
    }

    /// Why the gateway ended the interpreter, if it did.
    pub(crate) fn ended_because(&self) -> Option<String> {
        lock(&self.replies.current).ended.clone()
    }

    /// Marks the current cell over: from now on the interpreter must stay idle. Call
    /// once what the cell started was ended, with the tree's CPU time then
    /// ([`Kernel::tree_cpu`]), from which the idle watchdog counts.
    pub(crate) fn idle(&self, cpu: Duration) {
        let mut cell = lock(&self.replies.current);
        cell.awaited = false;
        cell.idle_from = Some((cpu, std::time::Instant::now()));
    }

    /// Waits until the interpreter has started and reads cells (its driver said so),
    /// or is gone (then [`Kernel::send`] fails). A cell is sent only after this, so one
    /// cancelled while the interpreter starts never reaches it.
    pub(crate) async fn ready(&self) {
        loop {
            let arrived = self.replies.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            if self
                .replies
                .ready
                .load(std::sync::atomic::Ordering::Acquire)
                || lock(&self.replies.current).reply.is_some()
            {
                return;
            }
            arrived.await;
        }
    }

    /// Sends a cell; returns the gateway's ends of its pipes.
    pub(crate) async fn send(&mut self, code: &str) -> io::Result<CellPipes> {
        let number = {
            let mut cell = lock(&self.replies.current);
            let number = cell.number + 1;
            *cell = CellState {
                number,
                awaited: true,
                ended: cell.ended.take(),
                in_hand_usec: cell.in_hand_usec,
                ..CellState::default()
            };
            number
        };
        let (stdin_read, stdin_write) = std::io::pipe()?;
        let (stdout_read, stdout_write) = std::io::pipe()?;
        let (stderr_read, stderr_write) = std::io::pipe()?;
        sys::set_pipe_size(&stdout_read, PIPE_BYTES);
        sys::set_pipe_size(&stderr_read, PIPE_BYTES);
        let mut header = [0u8; 16];
        header[..8].copy_from_slice(&u64::try_from(code.len()).unwrap_or(u64::MAX).to_le_bytes());
        header[8..].copy_from_slice(&number.to_le_bytes());
        // The interpreter's ends, sent with the header (and closed here once sent), or
        // handed to the carriers of its own streams.
        let theirs: Vec<OwnedFd> = match &self.forwarders {
            None => vec![stdin_read.into(), stdout_write.into(), stderr_write.into()],
            // The cell's output comes through the interpreter's own streams; it has
            // no stdin (its read end closes here, so input is refused).
            Some([stdout, stderr]) => {
                drop(stdin_read);
                stdout
                    .hand(pipe::Sender::from_owned_fd(stdout_write.into())?)
                    .await?;
                stderr
                    .hand(pipe::Sender::from_owned_fd(stderr_write.into())?)
                    .await?;
                Vec::new()
            }
        };
        let fds: Vec<_> = theirs.iter().map(|fd| fd.as_raw_fd()).collect();
        // The header and the descriptors travel in one message; the socket is empty
        // between cells, so it only waits if the interpreter stopped reading.
        let mut sent = 0;
        while sent < header.len() {
            self.control.as_ref().writable().await?;
            match self
                .control
                .as_ref()
                .try_io(tokio::io::Interest::WRITABLE, || {
                    if sent == 0 {
                        sys::send_with_fds(self.control.as_ref(), &header, &fds)
                    } else {
                        sys::send_with_fds(self.control.as_ref(), &header[sent..], &[])
                    }
                }) {
                Ok(n) => sent += n,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
                Err(err) => return Err(err),
            }
        }
        self.control.write_all(code.as_bytes()).await?;
        // The interpreter holds its own copies now.
        drop(theirs);
        Ok(CellPipes {
            stdin: OwnedFd::from(stdin_write),
            stdout: pipe::Receiver::from_owned_fd(OwnedFd::from(stdout_read))?,
            stderr: pipe::Receiver::from_owned_fd(OwnedFd::from(stderr_read))?,
        })
    }

    /// Resolves once the current cell has ended or the interpreter is gone (where the
    /// output is carried: once its end has passed too, so none is cut short).
    pub(crate) async fn cell_done(&self) {
        let number = loop {
            let arrived = self.replies.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            if let Some(reply) = &lock(&self.replies.current).reply {
                break reply.as_ref().map_or(u64::MAX, |reply| reply.number);
            }
            tokio::select! {
                () = arrived => {}
                () = self.child.exited() => return,
            }
        };
        if let Some([stdout, stderr]) = &self.forwarders {
            tokio::select! {
                ((), ()) = async { tokio::join!(stdout.ended(number), stderr.ended(number)) } => {}
                () = self.child.exited() => {}
            }
        }
    }

    /// Resolves once the interpreter (its jail, if any) has exited.
    pub(crate) async fn exited(&self) {
        self.child.exited().await;
    }

    /// How the current cell ended: `None` when the interpreter died instead (also when
    /// it answered but was killed right after, say by the kill that escalates a cancel).
    pub(crate) fn reply(&self) -> Option<CellReply> {
        if self.child.has_exited() {
            return None;
        }
        lock(&self.replies.current)
            .reply
            .clone()
            .and_then(Result::ok)
    }

    /// Asks the interpreter a query (`complete` or `inspect`: the JSON object the driver
    /// reads) between cells, and returns its answer. What the query started is ended
    /// with it, and its CPU time is not counted as the idle interpreter's.
    pub(crate) async fn query(
        &mut self,
        query: &serde_json::Value,
    ) -> Result<serde_json::Value, QueryFailure> {
        // The idle budget is brought up to now, then paused for the query.
        self.replies.check_idle();
        let cpu_before = self.tree_cpu();
        let started = std::time::Instant::now();
        let was_idle = {
            let mut cell = lock(&self.replies.current);
            cell.query = true;
            cell.awaited = true;
            cell.answer = None;
            cell.idle_from.take().is_some()
        };
        let answer = self.ask(query.to_string().as_bytes()).await;
        self.end_cell_processes();
        let cpu_after = self.tree_cpu();
        let used = cpu_after.saturating_sub(cpu_before);
        // The lookup's own work is excused (one core for the query's time, at most
        // QUERY_CPU_EXCUSED); what ran beside it spends the idle budget.
        let excused = used.min(started.elapsed()).min(QUERY_CPU_EXCUSED);
        let mut cell = lock(&self.replies.current);
        cell.query = false;
        cell.awaited = false;
        if was_idle {
            cell.idle_from = Some((
                cpu_after.saturating_sub(used - excused),
                std::time::Instant::now(),
            ));
        }
        drop(cell);
        self.replies.check_idle();
        match answer? {
            serde_json::Value::Object(mut fields) => match fields.remove("error") {
                Some(why) => Err(QueryFailure::Failed(why.as_str().unwrap_or("").to_owned())),
                None => Ok(serde_json::Value::Object(fields)),
            },
            _ => Err(QueryFailure::Failed(
                "an answer that is not an object".to_owned(),
            )),
        }
    }

    /// Sends a query (cell number 0, no descriptors) and waits for its answer: an
    /// interrupt after [`QUERY_TIME`], the end of the interpreter after [`QUERY_GRACE`]
    /// more.
    async fn ask(&mut self, body: &[u8]) -> Result<serde_json::Value, QueryFailure> {
        let mut header = [0u8; 16];
        header[..8].copy_from_slice(&u64::try_from(body.len()).unwrap_or(u64::MAX).to_le_bytes());
        let sent = tokio::time::timeout(QUERY_TIME, async {
            self.control.write_all(&header).await?;
            self.control.write_all(body).await
        })
        .await;
        match sent {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(QueryFailure::Lost),
            Err(_) => {
                self.end_for("it did not read a query within its time");
                return Err(QueryFailure::TimedOut { ended: true });
            }
        }
        if let Ok(answer) = tokio::time::timeout(QUERY_TIME, self.answered()).await {
            return answer;
        }
        self.child.signal(Signal::Interrupt);
        match tokio::time::timeout(QUERY_GRACE, self.answered()).await {
            Ok(Ok(_)) => Err(QueryFailure::TimedOut { ended: false }),
            Ok(Err(lost)) => Err(lost),
            Err(_) => {
                self.end_for("it did not answer a query, nor the interrupt that followed");
                Err(QueryFailure::TimedOut { ended: true })
            }
        }
    }

    /// Resolves with the query's answer, or once the interpreter is gone.
    async fn answered(&self) -> Result<serde_json::Value, QueryFailure> {
        loop {
            let arrived = self.replies.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            match lock(&self.replies.current).answer.clone() {
                Some(Ok(answer)) => return Ok(answer),
                Some(Err(())) => return Err(QueryFailure::Lost),
                None => {}
            }
            tokio::select! {
                () = arrived => {}
                () = self.child.exited() => return Err(QueryFailure::Lost),
            }
        }
    }

    /// Ends the interpreter for `why`: the session's next cell starts a fresh one and
    /// is told.
    fn end_for(&self, why: &str) {
        let mut cell = lock(&self.replies.current);
        self.replies.end(&mut cell, why.to_owned());
    }

    /// Interrupts the running cell: SIGINT to the interpreter's group once the cell has
    /// started (earlier, the interpreter would discard it as stale).
    pub(crate) fn interrupt(&self) {
        let mut cell = lock(&self.replies.current);
        if cell.started {
            drop(cell);
            self.child.signal(Signal::Interrupt);
        } else {
            cell.interrupt_wanted = true;
        }
    }

    /// Kills every process the cells started, leaving the interpreter (and its jail):
    /// called when a cell is over, however it ended. Repeats while it finds processes
    /// alive, so a fork that was under way in the first pass is caught in the next.
    pub(crate) fn end_cell_processes(&self) {
        cell_processes::kill_all(self.pid(), self.jailed, self.procs.as_deref());
    }

    /// Says whose share of the package proxy's connections the interpreter uses: the
    /// principal whose cell started it (its driver runs no cell before that).
    pub(crate) fn attribute_package_proxy(&self, principal: &crate::admission::Principal) {
        self.child.attribute_package_proxy(principal);
    }

    /// Kills the interpreter with everything it started.
    pub(crate) fn kill(&self) {
        self.child.signal(Signal::Kill);
    }

    /// CPU time the interpreter and everything it started have used so far: its
    /// cgroup's count where cgroup v2 keeps one, else every thread of it and its
    /// descendants. What a cell's `cpu_ms` is checked against.
    pub(crate) fn tree_cpu(&self) -> Duration {
        self.replies.cpu()
    }

    /// The interpreter's peak resident memory (the largest of its tree's processes: the
    /// jail and its init come first when jailed, the interpreter below them) and the CPU
    /// time of its tree ([`Kernel::tree_cpu`]), from one look at the tree: what a cell's
    /// end reports.
    pub(crate) fn usage_now(&self) -> (u64, Duration) {
        let tree = cell_processes::descendants(self.pid());
        let cpu = self.replies.cpu_of(Some(&tree));
        (Self::peak_memory_of(self.pid(), tree), cpu)
    }

    /// The largest peak resident memory (`VmHWM`) of `pid` and its `tree`.
    fn peak_memory_of(pid: u32, mut tree: Vec<u32>) -> u64 {
        tree.push(pid);
        tree.into_iter()
            .filter_map(|pid| {
                let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
                let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
                line.split_whitespace().nth(1)?.parse::<u64>().ok()
            })
            .max()
            .map_or(0, |kib| kib * 1024)
    }

    /// Kills the interpreter and reaps it; returns how it ended and what its cgroup
    /// saw (an OOM kill, say).
    pub(crate) async fn shut_down(
        mut self,
    ) -> (io::Result<Reaped>, Option<crate::sandbox::CgroupReport>) {
        lock(&self.replies.current).closed = true;
        self.reader.abort();
        self.watchdog.abort();
        let reaped = self.child.reap().await;
        if let Some(workdir) = self.workdir.take() {
            workdir.remove();
        }
        (reaped, self.child.cgroup_report())
    }
}

impl Drop for Kernel {
    fn drop(&mut self) {
        lock(&self.replies.current).closed = true;
        self.reader.abort();
        self.watchdog.abort();
        // The group is killed and reaped by ChildGroup's own drop.
        if let Some(workdir) = self.workdir.take() {
            workdir.remove();
        }
    }
}
