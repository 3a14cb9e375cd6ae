//! Persistent interpreters ("kernels") for notebook-style sessions.
//!
//! A [`Kernel`] is one interpreter process that runs a session's cells one at a time, so
//! variables, imports and files persist between executions. Each cell gets fresh pipes
//! for stdin, stdout and stderr, handed to the interpreter over a Unix socket
//! (`SCM_RIGHTS`), so a cell's output reaches end-of-file like a program's and the
//! execution pump treats it the same way. The interpreter answers each cell with one JSON
//! line saying how it ended. Only Python has a kernel today; [`KernelKind`] is where
//! another language's driver would go.
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

use super::process::ChildGroup;
use super::workdir::Workdir;
use crate::runtime::Runtime;
use crate::sandbox::jail::JailSpec;
use crate::sandbox::namespaces::rlimit_list;
use crate::sys::{self, Reaped, Signal};
use std::io;
use std::os::fd::{AsRawFd as _, OwnedFd};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::unix::pipe;
use tokio::net::UnixStream;
use tokio::sync::Notify;

/// The Python driver, written into the kernel's working directory and run by the
/// session's interpreter.
const PYTHON_DRIVER: &str = include_str!("kernel_python.py");

/// Pipe buffer requested for a cell's stdout and stderr (as for programs).
const PIPE_BYTES: usize = 1 << 20;

/// CPU time an interpreter may use while no cell of its session runs, on top of
/// [`IDLE_CPU_PERCENT`] of the time since the last cell ended.
pub(crate) const IDLE_CPU_ALLOWANCE: Duration = Duration::from_millis(200);

/// Percent of one CPU an idle interpreter may use over time (a thread that polls or
/// sends heartbeats uses a few percent; a spinner, a hundred).
pub(crate) const IDLE_CPU_PERCENT: u32 = 10;

/// How often an idle interpreter's CPU time is checked.
const IDLE_CHECK: Duration = Duration::from_millis(500);

/// Languages that can run persistent sessions, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KernelKind {
    Python,
}

impl KernelKind {
    /// The kernel for `runtime`, if its interpreter has one.
    pub(crate) fn for_runtime(runtime: &Runtime) -> Option<Self> {
        let program = runtime.program.file_name()?.to_str()?;
        program.starts_with("python").then_some(Self::Python)
    }

    fn driver(self) -> (&'static str, &'static str) {
        match self {
            Self::Python => ("sluice_kernel.py", PYTHON_DRIVER),
        }
    }
}

/// How a cell ended, as the interpreter reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CellReply {
    pub(crate) exit_code: i32,
}

/// One line from the interpreter.
#[derive(Debug, serde::Deserialize)]
struct Line {
    /// The cell it is about.
    cell: Option<u64>,
    #[serde(default)]
    started: bool,
    exit_code: Option<i32>,
}

/// The current cell as the control socket's reader and the cell's pump see it.
#[derive(Debug, Default)]
struct CellState {
    /// The interpreter has discarded stale interrupts and runs the cell: an interrupt
    /// sent from now on is meant for it.
    started: bool,
    /// An interrupt asked for before `started`, sent as soon as the cell starts.
    interrupt_wanted: bool,
    /// How the cell ended; `Err` once the interpreter is gone.
    reply: Option<Result<CellReply, ()>>,
    /// The cell's number (the interpreter's first cell is 1).
    number: u64,
    /// The cell was sent and has not been answered: a line from the interpreter is
    /// expected only now.
    awaited: bool,
    /// No cell runs: the interpreter's CPU time when the last one was over.
    idle_from: Option<(Duration, std::time::Instant)>,
    /// Why the gateway ended the interpreter, once it did.
    ended: Option<String>,
    /// The interpreter is being reaped: its pid must not be signalled any more.
    closed: bool,
}

/// What the control socket's reader and the idle watchdog share with the kernel.
#[derive(Debug)]
struct Replies {
    pid: u32,
    current: Mutex<CellState>,
    arrived: Notify,
    /// The v2 cgroup's directory, whose `cpu.stat` counts the whole tree's CPU time and
    /// whose `cgroup.kill` ends it.
    cgroup_dir: Option<PathBuf>,
    /// The cgroup's process list (also v1).
    procs: Option<PathBuf>,
}

impl Replies {
    /// CPU time the interpreter has used: its cgroup's where cgroup v2 counts it, else
    /// every thread of it and its descendants.
    fn cpu(&self) -> Duration {
        let counted = self.cgroup_dir.as_ref().and_then(|dir| {
            let text = std::fs::read_to_string(dir.join("cpu.stat")).ok()?;
            text.lines().find_map(|line| {
                let (name, value) = line.split_once(' ')?;
                (name == "usage_usec").then(|| value.trim().parse::<u64>().ok())?
            })
        });
        if let Some(usec) = counted {
            return Duration::from_micros(usec);
        }
        let mut pids = descendants(self.pid);
        pids.push(self.pid);
        pids.into_iter().map(threads_cpu).sum()
    }

    /// Ends the interpreter for `why` (once), with everything in its group and cgroup.
    /// Called with the state locked, so a reap cannot come in between.
    fn end(&self, cell: &mut CellState, why: String) {
        if cell.closed || cell.ended.is_some() {
            return;
        }
        tracing::warn!(pid = self.pid, %why, "ending a persistent interpreter");
        cell.ended = Some(why);
        let _ = sys::signal_group(self.pid, Signal::Kill);
        if let Some(dir) = &self.cgroup_dir {
            let _ = std::fs::write(dir.join("cgroup.kill"), "1");
        }
        if let Some(file) = &self.procs {
            for pid in listed(file) {
                let _ = sys::kill(pid);
            }
        }
    }

    /// Checks an idle interpreter's CPU time, ending it past the allowance; returns why
    /// the gateway ended it, if it did.
    fn check_idle(&self) -> Option<String> {
        let mut cell = lock(&self.current);
        if let (Some((from, since)), None) = (cell.idle_from, &cell.ended) {
            let used = self.cpu().saturating_sub(from);
            let idle_for = since.elapsed();
            let allowed = IDLE_CPU_ALLOWANCE + idle_for * IDLE_CPU_PERCENT / 100;
            if used > allowed {
                let why = format!(
                    "it used {} ms of CPU time while no cell ran, in the {} ms since its last cell ended (at most {} ms plus {IDLE_CPU_PERCENT} % of that time are allowed)",
                    used.as_millis(),
                    idle_for.as_millis(),
                    IDLE_CPU_ALLOWANCE.as_millis()
                );
                self.end(&mut cell, why);
            }
        }
        cell.ended.clone()
    }
}

/// CPU time of every thread of process `pid` (`/proc/<pid>/task/*/schedstat`).
fn threads_cpu(pid: u32) -> Duration {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Duration::ZERO;
    };
    tasks
        .flatten()
        .filter_map(|task| {
            let text = std::fs::read_to_string(task.path().join("schedstat")).ok()?;
            text.split_whitespace().next()?.parse::<u64>().ok()
        })
        .map(Duration::from_nanos)
        .sum()
}

/// Checks an idle interpreter's CPU time every [`IDLE_CHECK`] until it ends it.
async fn watch_idle(replies: Arc<Replies>) {
    let mut tick = tokio::time::interval(IDLE_CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if replies.check_idle().is_some() {
            return;
        }
    }
}

/// A running interpreter for one session.
#[derive(Debug)]
pub(crate) struct Kernel {
    kind: KernelKind,
    child: ChildGroup,
    control: tokio::net::unix::OwnedWriteHalf,
    replies: Arc<Replies>,
    reader: tokio::task::JoinHandle<()>,
    watchdog: tokio::task::JoinHandle<()>,
    workdir: Option<Workdir>,
    /// The interpreter's cgroup's process list: everything a cell started is there.
    procs: Option<PathBuf>,
    /// The interpreter runs in the jail (its leader is the jail, with init below it).
    jailed: bool,
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
}

/// A cell sent to the kernel: the gateway's ends of its pipes.
#[derive(Debug)]
pub(crate) struct CellPipes {
    pub(crate) stdin: OwnedFd,
    pub(crate) stdout: pipe::Receiver,
    pub(crate) stderr: pipe::Receiver,
}

impl Kernel {
    /// Starts an interpreter in its own process group and working directory.
    pub(crate) fn start(
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
        let workdir = Workdir::create(work_root, file_name, driver, host.program_user)?;
        let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
        let theirs = OwnedFd::from(theirs);
        let home = workdir.path().to_string_lossy().into_owned();
        let env = env
            .iter()
            .copied()
            .chain([("HOME", home.as_str()), ("TMPDIR", home.as_str())]);
        let (mut command, sandbox_ids) = match &host.jail {
            Some(jail) => jail.command(JailSpec {
                host_dir: workdir.path().to_path_buf(),
                source: Some(file_name.into()),
                workspace: workdir.path().to_path_buf(),
                scratch_bytes: limits.scratch_bytes,
                expose: jail.exposure_for(&runtime.program),
                cgroups: cgroup
                    .as_ref()
                    .and_then(crate::sandbox::ExecutionCgroup::unified_dir)
                    .map(Path::to_path_buf)
                    .into_iter()
                    .collect(),
                rlimits: rlimit_list(&limits.rlimits, limits.processes),
                keep_fd: Some(sys::CONTROL_FD),
                no_network: !runtime.network,
                env: crate::sandbox::jail::environment(env),
                nice: (!cgroup
                    .as_ref()
                    .is_some_and(crate::sandbox::ExecutionCgroup::shares_cpu))
                .then_some(sys::PROGRAM_NICE),
                command: vec![
                    runtime.program.clone().into(),
                    workdir.source().into_os_string(),
                ],
                ..JailSpec::default()
            })?,
            None => (
                {
                    let mut command = Command::new(&runtime.program);
                    command.arg(workdir.source());
                    // First: v2 moves whole processes, so the child joins before it execs.
                    if let Some(dir) = cgroup
                        .as_ref()
                        .and_then(crate::sandbox::ExecutionCgroup::unified_dir)
                    {
                        sys::join_cgroup_on_exec(&mut command, &dir.join("cgroup.procs"))?;
                    }
                    // Orphans of its cells stay in its tree (for `end_cell_processes`).
                    sys::child_subreaper_on_exec(&mut command);
                    limits.rlimits.apply_on_exec(&mut command);
                    if host.no_network && !runtime.network {
                        sys::no_network_on_exec(&mut command);
                    }
                    if !cgroup
                        .as_ref()
                        .is_some_and(crate::sandbox::ExecutionCgroup::shares_cpu)
                    {
                        sys::lower_priority_on_exec(&mut command);
                    }
                    // Last: the hooks before it may need root.
                    if let Some(user) = host.program_user {
                        sys::drop_to_user_on_exec(&mut command, user.uid, user.gid);
                    }
                    command.env_clear().envs(env);
                    command
                },
                None,
            ),
        };
        command
            .current_dir(workdir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0);
        let child = match &cgroup {
            Some(cgroup) => cgroup
                .spawn_inside(|| sys::spawn_with_fd3(&mut command, &theirs))
                .and_then(|spawned| spawned),
            None => sys::spawn_with_fd3(&mut command, &theirs),
        };
        drop(theirs);
        let child = match child {
            Ok(child) => child,
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
        let child = ChildGroup::watch(child, cgroup, sandbox_ids)?;
        ours.set_nonblocking(true)?;
        let (read, control) = UnixStream::from_std(ours)?.into_split();
        let replies = Arc::new(Replies {
            pid: child.pid(),
            current: Mutex::default(),
            arrived: Notify::new(),
            cgroup_dir,
            procs: procs.clone(),
        });
        let reader = tokio::spawn(read_replies(BufReader::new(read), replies.clone()));
        let watchdog = tokio::spawn(watch_idle(replies.clone()));
        Ok(Self {
            kind,
            child,
            control,
            replies,
            reader,
            watchdog,
            workdir: Some(workdir),
            procs,
            jailed: host.jail.is_some(),
            _slot: slot,
        })
    }

    pub(crate) fn kind(&self) -> KernelKind {
        self.kind
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
    /// once what the cell started was ended.
    pub(crate) fn idle(&self) {
        let cpu = self.replies.cpu();
        let mut cell = lock(&self.replies.current);
        cell.awaited = false;
        cell.idle_from = Some((cpu, std::time::Instant::now()));
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
        let fds = [
            stdin_read.as_raw_fd(),
            stdout_write.as_raw_fd(),
            stderr_write.as_raw_fd(),
        ];
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
        drop((stdin_read, stdout_write, stderr_write));
        Ok(CellPipes {
            stdin: OwnedFd::from(stdin_write),
            stdout: pipe::Receiver::from_owned_fd(OwnedFd::from(stdout_read))?,
            stderr: pipe::Receiver::from_owned_fd(OwnedFd::from(stderr_read))?,
        })
    }

    /// Resolves once the current cell has ended or the interpreter is gone.
    pub(crate) async fn cell_done(&self) {
        loop {
            let arrived = self.replies.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            if lock(&self.replies.current).reply.is_some() {
                return;
            }
            tokio::select! {
                () = arrived => {}
                () = self.child.exited() => return,
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
        lock(&self.replies.current).reply.and_then(Result::ok)
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
        let leader = self.pid();
        let own_depth = namespace_depth("self");
        let mut killed = std::collections::HashSet::new();
        for _ in 0..CELL_KILL_PASSES {
            let candidates = match &self.procs {
                Some(file) => listed(file),
                None => descendants(leader),
            };
            let mut found = false;
            for pid in candidates.into_iter().filter(|pid| *pid != leader) {
                if killed.contains(&pid) {
                    continue;
                }
                let Some(process) = ProcessView::read(pid) else {
                    continue;
                };
                let interpreter_side =
                    self.jailed && process.depth == own_depth + 1 && process.inner_pid <= 2;
                if process.alive && !interpreter_side {
                    let _ = sys::kill(pid);
                    killed.insert(pid);
                    found = true;
                }
            }
            if !found {
                return;
            }
        }
        tracing::warn!("a cell's processes kept forking while they were being killed");
    }

    /// Kills the interpreter with everything it started.
    pub(crate) fn kill(&self) {
        self.child.signal(Signal::Kill);
    }

    /// CPU time the interpreter has used so far and its peak resident memory.
    pub(crate) fn usage(&self) -> (Duration, u64) {
        let pid = self.pid();
        let cpu = std::fs::read_to_string(format!("/proc/{pid}/schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
            .map_or(Duration::ZERO, Duration::from_nanos);
        let peak = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|status| {
                let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
                line.split_whitespace().nth(1)?.parse::<u64>().ok()
            })
            .map_or(0, |kib| kib * 1024);
        (cpu, peak)
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

/// Passes of [`Kernel::end_cell_processes`] before it gives up on a tree that keeps
/// forking (each pass kills what it found; a killed process forks no more).
const CELL_KILL_PASSES: usize = 64;

/// What `/proc/<pid>/status` says about a process, for telling a cell's processes from
/// the interpreter's.
#[derive(Debug)]
struct ProcessView {
    /// Not a zombie (a killed process stays listed until reaped).
    alive: bool,
    /// How many PID namespaces it is seen in (`NSpid` entries).
    depth: usize,
    /// Its pid in its innermost PID namespace.
    inner_pid: u32,
}

impl ProcessView {
    fn read(pid: u32) -> Option<Self> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let field = |name: &str| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .map(str::trim)
        };
        let state = field("State:")?;
        let nspid: Vec<u32> = field("NSpid:")?
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect();
        Some(Self {
            alive: !(state.starts_with('Z') || state.starts_with('X')),
            depth: nspid.len(),
            inner_pid: nspid.last().copied().unwrap_or(pid),
        })
    }
}

/// How many PID namespaces `/proc/<which>` is seen in.
fn namespace_depth(which: &str) -> usize {
    std::fs::read_to_string(format!("/proc/{which}/status"))
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("NSpid:"))?;
            Some(line.split_whitespace().count() - 1)
        })
        .unwrap_or(1)
}

/// The pids in a `cgroup.procs` file.
fn listed(file: &Path) -> Vec<u32> {
    std::fs::read_to_string(file)
        .map(|text| text.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

/// The processes in process group `group`, from `/proc` (without a cgroup; a process
/// that left the group with `setsid` is not found).
/// Most processes [`descendants`] lists: a tree that large is being killed, not read.
const MAX_DESCENDANTS: usize = 4096;

/// Every descendant of `root` (not `root` itself), through the `children` lists of
/// each thread in `/proc`. The interpreter is a child subreaper (an unjailed one through
/// its start's pre-exec hook; in the jail, init reaps), so orphans stay in its tree;
/// reading a few files per process is far cheaper than scanning all of `/proc` at every
/// cell's end.
fn descendants(root: u32) -> Vec<u32> {
    let mut found = Vec::new();
    let mut next = vec![root];
    while let Some(pid) = next.pop() {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let Ok(children) = std::fs::read_to_string(task.path().join("children")) else {
                continue;
            };
            for child in children.split_whitespace().filter_map(|p| p.parse().ok()) {
                if found.len() >= MAX_DESCENDANTS {
                    return found;
                }
                found.push(child);
                next.push(child);
            }
        }
    }
    found
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Reads the interpreter's replies, one JSON line per cell.
async fn read_replies(
    mut control: BufReader<tokio::net::unix::OwnedReadHalf>,
    replies: Arc<Replies>,
) {
    let mut line = String::new();
    loop {
        line.clear();
        // One reply is a short JSON line; anything longer is not the driver talking.
        let read = (&mut control).take(4096).read_line(&mut line).await;
        let parsed = match read {
            Ok(0) | Err(_) => Err(()),
            Ok(_) if !line.ends_with('\n') => {
                tracing::warn!("the interpreter sent an overlong line; treating it as gone");
                Err(())
            }
            Ok(_) => serde_json::from_str::<Line>(&line).map_err(|err| {
                tracing::warn!(%err, "the interpreter sent an unreadable reply");
            }),
        };
        let mut cell = lock(&replies.current);
        // Only the cell being waited for may be answered, once: anything else is not
        // the driver talking in step (a cell faking its end, or the real end after it).
        let in_step = parsed.as_ref().map_or(true, |line| {
            cell.awaited && line.cell == Some(cell.number) && !(line.started && cell.started)
        });
        if !in_step {
            replies.end(
                &mut cell,
                "it wrote to the gateway out of step (a reply while no cell ran, or a second reply for one cell)".to_owned(),
            );
            cell.reply = Some(Err(()));
            drop(cell);
            replies.arrived.notify_waiters();
            return;
        }
        match parsed {
            Ok(Line { started: true, .. }) => {
                cell.started = true;
                if std::mem::take(&mut cell.interrupt_wanted) {
                    drop(cell);
                    if let Err(err) = sys::signal_group(replies.pid, Signal::Interrupt) {
                        tracing::warn!(%err, "could not interrupt the interpreter");
                    }
                }
                continue;
            }
            Ok(Line { exit_code, .. }) => {
                cell.awaited = false;
                cell.reply = Some(Ok(CellReply {
                    exit_code: exit_code.unwrap_or(1),
                }));
            }
            Err(()) => {
                cell.reply = Some(Err(()));
                drop(cell);
                replies.arrived.notify_waiters();
                return;
            }
        }
        drop(cell);
        replies.arrived.notify_waiters();
    }
}
