//! The warm pool: Python interpreters started ahead of their executions, each confined
//! exactly as a cold start would be (own cgroup, own working directory, the jail), each
//! used for one execution and then gone.
//!
//! A background task keeps up to `--warm-pool` entries ready, starting at most
//! `--warm-pool-refill` a second, each weighed down in its cgroup until its claim. An
//! entry runs `warm_bootstrap.py` (`python3 -c`), which writes [`READY`] to its stdout
//! and blocks reading stdin. A claim (`launch::launch`, when the request fits:
//! [`fallback`]) gives the entry's cgroup the request's limits and starts its counters
//! afresh, writes the go [`header`] (the code's length and the request's rlimits, which
//! the bootstrap sets: the gateway may not set another user's) and the code to its
//! stdin, and hands over a [`Launched`] like a cold start's, with `started_at` = the
//! claim. The bootstrap then writes `main.py` and runs it as `python3 main.py` would.
//! Anything that does not fit (no entry, `env` or `args`, other limits, a failed claim
//! step) starts cold: a claim never waits. An entry that died, printed anything or is
//! older than `--warm-pool-max-age-ms` is discarded, killed and cleaned up like a
//! finished execution.

use super::launch::{self, Launched};
use super::process::{ChildGroup, Launch};
use super::program::Program;
use super::workdir::Workdir;
use super::{ExecutionSpec, Host};
use crate::config::EffectiveLimits;
use crate::runtime::{Runtime, FILE_PLACEHOLDER};
use crate::sys::{self, Signal};
use std::collections::VecDeque;
use std::io::{self, Write as _};
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::net::unix::pipe;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What `started` says (its `data`) for a warm start.
pub(super) const STARTED_NOTE: &str = "warm";

/// The bootstrap every warm interpreter runs.
const BOOTSTRAP: &str = include_str!("warm_bootstrap.py");

/// What the bootstrap writes to stdout once the interpreter has started.
const READY: &[u8] = b"sluice-warm-ready\n";

/// What it writes instead when the interpreter is older than it supports (3.11); as
/// long as [`READY`].
const TOO_OLD: &[u8] = b"sluice-warm-older\n";

/// The go header's length: `SLUICE`, then the code's length and the rlimits (CPU
/// seconds, file size, open files) as decimal numbers separated by spaces, padded with
/// spaces, then `\n`.
const HEADER_BYTES: usize = 128;

/// The stdin pipe asked for, so the header and code go in one write that never blocks.
const STDIN_PIPE_BYTES: usize = 1 << 20;

/// How long an interpreter may take to become ready before it is given up.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// The longest pause between two starts after failures.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The pool's settings (`--warm-pool`, `--warm-pool-refill`, `--warm-pool-max-age-ms`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WarmSettings {
    /// Entries kept ready.
    pub(crate) size: usize,
    /// Most entries started per second.
    pub(crate) refill_per_second: u32,
    /// An entry older than this is discarded rather than claimed.
    pub(crate) max_age: Duration,
}

/// Why an execution started cold (the `reason` label of the misses).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Miss {
    /// No entry was ready.
    Empty,
    /// Another runtime, or the same with other settings (network, arguments).
    Runtime,
    /// The request sets environment variables, which the interpreter reads at start.
    Env,
    /// The request passes arguments.
    Args,
    /// A limit the entry cannot take (a workspace size of its own; processes where no
    /// cgroup counts them).
    Limits,
    /// The code does not fit in one write to the entry's stdin.
    CodeSize,
    /// A claim step failed (the entry is discarded).
    ClaimFailed,
    /// The gateway is shutting down.
    Closed,
}

impl Miss {
    #[cfg(test)]
    const ALL: [Self; 8] = [
        Self::Empty,
        Self::Runtime,
        Self::Env,
        Self::Args,
        Self::Limits,
        Self::CodeSize,
        Self::ClaimFailed,
        Self::Closed,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Empty => "empty",
            Self::Runtime => "runtime",
            Self::Env => "env",
            Self::Args => "args",
            Self::Limits => "limits",
            Self::CodeSize => "code_size",
            Self::ClaimFailed => "claim_failed",
            Self::Closed => "closed",
        }
    }
}

/// Why an entry was discarded (the `reason` label of the discards).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Discard {
    /// It could not be started, or never said it was ready.
    StartFailed,
    /// Its interpreter exited.
    Dead,
    /// It wrote something before its claim.
    Output,
    /// It was older than the maximum age.
    Stale,
    /// Its claim failed.
    ClaimFailed,
    /// The gateway shut down.
    Shutdown,
}

impl Discard {
    #[cfg(test)]
    const ALL: [Self; 6] = [
        Self::StartFailed,
        Self::Dead,
        Self::Output,
        Self::Stale,
        Self::ClaimFailed,
        Self::Shutdown,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::StartFailed => "start_failed",
            Self::Dead => "dead",
            Self::Output => "output",
            Self::Stale => "stale",
            Self::ClaimFailed => "claim_failed",
            Self::Shutdown => "shutdown",
        }
    }
}

/// The go header for `code_bytes` of code, to run with `rlimits` (each one set: the
/// entry starts with all three).
pub(super) fn header(code_bytes: usize, rlimits: sys::Rlimits) -> [u8; HEADER_BYTES] {
    // u64::MAX has 20 digits: four numbers and the spaces take at most 90 bytes.
    let text = format!(
        "SLUICE {code_bytes} {} {} {}",
        rlimits.cpu_seconds.unwrap_or(u64::MAX),
        rlimits.file_size_bytes.unwrap_or(u64::MAX),
        rlimits.open_files.unwrap_or(u64::MAX),
    );
    let mut header = [b' '; HEADER_BYTES];
    let bytes = text.as_bytes();
    let n = bytes.len().min(HEADER_BYTES - 1);
    header[..n].copy_from_slice(&bytes[..n]);
    header[HEADER_BYTES - 1] = b'\n';
    header
}

/// The runtimes a pool can serve: the program is run as `INTERPRETER FILE` (the
/// bootstrap replaces exactly that), and it is Python.
pub(crate) fn serves(runtime: &Runtime) -> bool {
    runtime.name == "python"
        && runtime.args == [FILE_PLACEHOLDER]
        && runtime.file_name.ends_with(".py")
}

/// The limits an entry starts with: the maxima for what a claim can lower (CPU time,
/// file size, descriptors, memory, processes) and the default workspace size (the
/// jail's scratch file system is sized at start).
pub(crate) fn entry_limits(config: &crate::config::LimitsConfig) -> Option<EffectiveLimits> {
    let base = config.resolve(&sluice_protocol::Limits::default()).ok()?;
    Some(EffectiveLimits {
        cpu_ms: config.cpu_ms.max,
        file_size_bytes: config.file_size_bytes.max,
        open_files: config.open_files.max,
        memory_bytes: config.memory_bytes.max,
        processes: config.processes.max,
        ..base
    })
}

/// Whether a request must start cold instead of claiming an entry started for
/// `runtime` with `limits`; `lowers_processes`: a claim can give an entry any lower
/// process limit (its cgroup limits processes, or, without the jail, nothing does, as
/// for a cold start); `None`: not known yet, no entry has started.
pub(super) fn fallback(
    runtime: &Runtime,
    limits: &EffectiveLimits,
    lowers_processes: Option<bool>,
    spec: &ExecutionSpec,
) -> Option<Miss> {
    let same_runtime = spec.runtime.name == runtime.name
        && spec.runtime.program == runtime.program
        && spec.runtime.args == runtime.args
        && spec.runtime.file_name == runtime.file_name
        && spec.runtime.env == runtime.env
        && spec.runtime.network == runtime.network;
    let asked = &spec.limits;
    let limits_fit = asked.cpu_ms <= limits.cpu_ms
        && asked.file_size_bytes <= limits.file_size_bytes
        && asked.open_files <= limits.open_files
        && asked.memory_bytes <= limits.memory_bytes
        && asked.processes <= limits.processes
        && (lowers_processes != Some(false) || asked.processes == limits.processes)
        && asked.workspace_bytes == limits.workspace_bytes;
    if !same_runtime {
        Some(Miss::Runtime)
    } else if !spec.env.is_empty() {
        Some(Miss::Env)
    } else if !spec.args.is_empty() {
        Some(Miss::Args)
    } else if !limits_fit {
        Some(Miss::Limits)
    } else if spec.code.len() > STDIN_PIPE_BYTES - HEADER_BYTES {
        Some(Miss::CodeSize)
    } else {
        None
    }
}

/// One ready interpreter.
#[derive(Debug)]
struct Entry {
    workdir: Workdir,
    child: ChildGroup,
    stdin: OwnedFd,
    stdout: pipe::Receiver,
    stderr: pipe::Receiver,
    /// The interpreter's pid, where it is the group's leader (no jail).
    program_pid: Option<u32>,
    /// How much one write to its stdin can hold.
    stdin_capacity: usize,
    born: Instant,
}

impl Entry {
    /// Why the entry cannot be claimed any more, if it cannot.
    fn spoiled(&self, max_age: Duration) -> Option<Discard> {
        if self.child.has_exited() {
            return Some(Discard::Dead);
        }
        let wrote = |pipe: &pipe::Receiver| sys::pending_bytes(pipe).map_or(true, |n| n > 0);
        if wrote(&self.stdout) || wrote(&self.stderr) {
            return Some(Discard::Output);
        }
        (self.born.elapsed() > max_age).then_some(Discard::Stale)
    }

    /// The memory it holds: its cgroup's count, else (unjailed) its interpreter's
    /// resident set, else 0.
    fn memory_bytes(&self) -> u64 {
        if let Some(used) = self.child.cgroup_memory() {
            return used;
        }
        let Some(pid) = self.program_pid else {
            return 0;
        };
        std::fs::read_to_string(format!("/proc/{pid}/statm"))
            .ok()
            .and_then(|statm| statm.split_whitespace().nth(1)?.parse::<u64>().ok())
            .map_or(0, |pages| pages * 4096)
    }
}

/// What a claim does to an entry, in order; an error leaves the entry to be discarded.
fn hand_over(entry: &mut Entry, spec: &ExecutionSpec, host: &Host) -> io::Result<()> {
    let limits = &spec.limits;
    let code = spec.code.as_bytes();
    if code.len() + HEADER_BYTES > entry.stdin_capacity {
        return Err(io::Error::other(
            "the code does not fit in the entry's stdin",
        ));
    }
    entry.child.hand_over_cgroup(
        limits.memory_bytes,
        limits.processes + launch::jail_processes(host),
    )?;
    if entry.child.has_exited() {
        return Err(io::Error::other("the interpreter exited"));
    }
    // The pipe is empty and holds `stdin_capacity` bytes: these writes do not block.
    // The bootstrap sets the rlimits itself (the gateway may lack the right to set
    // another user's, CAP_SYS_RESOURCE): each is at most the entry's, so it can.
    let mut stdin = std::fs::File::from(entry.stdin.try_clone()?);
    stdin.write_all(&header(code.len(), launch::rlimits(limits)))?;
    stdin.write_all(code)?;
    Ok(())
}

/// The entries ready, and whether the pool still takes new ones.
#[derive(Debug, Default)]
struct Ready {
    entries: VecDeque<Entry>,
    closed: bool,
    /// Whether a claim can lower an entry's process limit (the same for all entries),
    /// once one started: see [`fallback`].
    lowers_processes: Option<bool>,
}

/// The warm pool of one runtime (the `python` one, with its network setting).
#[derive(Debug)]
pub(crate) struct WarmPool {
    runtime: Arc<Runtime>,
    limits: EffectiveLimits,
    settings: WarmSettings,
    ready: Mutex<Ready>,
    /// Woken by each claim: the filler has room again.
    wake: Notify,
    closing: CancellationToken,
    /// The filler and the discards in flight, waited for by [`WarmPool::close`].
    tasks: TaskTracker,
}

impl WarmPool {
    pub(crate) fn new(
        runtime: Arc<Runtime>,
        limits: EffectiveLimits,
        settings: WarmSettings,
    ) -> Self {
        Self {
            runtime,
            limits,
            settings,
            ready: Mutex::new(Ready::default()),
            wake: Notify::new(),
            closing: CancellationToken::new(),
            tasks: TaskTracker::new(),
        }
    }

    /// The configured size.
    pub(crate) fn size(&self) -> usize {
        self.settings.size
    }

    /// Entries ready now.
    pub(crate) fn ready_count(&self) -> usize {
        self.lock().entries.len()
    }

    /// The memory the ready entries hold together.
    pub(crate) fn memory_bytes(&self) -> u64 {
        self.lock().entries.iter().map(Entry::memory_bytes).sum()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ready> {
        self.ready.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts the task that keeps the pool filled; `host` starts the entries (its own
    /// `warm` is not used).
    pub(crate) fn start(self: &Arc<Self>, host: Host) {
        let pool = Arc::clone(self);
        self.tasks.spawn(async move { pool.fill(host).await });
    }

    /// A ready entry, handed over to `spec`, or `None` (counted with its reason): the
    /// execution then starts cold. Never waits.
    pub(super) fn claim(&self, spec: &ExecutionSpec, host: &Host) -> Option<Launched> {
        let metrics = &host.observe.metrics;
        let claimed_at = Instant::now();
        let miss = |why: Miss| {
            metrics.warm_missed(why.as_str());
            None
        };
        let lowers_processes = self.lock().lowers_processes;
        if let Some(why) = fallback(&self.runtime, &self.limits, lowers_processes, spec) {
            return miss(why);
        }
        let mut entry = loop {
            let taken = {
                let mut ready = self.lock();
                if ready.closed {
                    return miss(Miss::Closed);
                }
                ready.entries.pop_front()
            };
            let Some(entry) = taken else {
                return miss(Miss::Empty);
            };
            self.wake.notify_one();
            match entry.spoiled(self.settings.max_age) {
                Some(why) => self.discard(entry, why, host),
                None => break entry,
            }
        };
        // An interpreter already using more memory than the request allows stays for
        // another request; this one starts cold (and meets its limit there).
        if entry
            .child
            .cgroup_memory()
            .is_some_and(|used| used > spec.limits.memory_bytes)
        {
            let mut ready = self.lock();
            if !ready.closed {
                ready.entries.push_front(entry);
                return miss(Miss::Limits);
            }
            drop(ready);
            self.discard(entry, Discard::Shutdown, host);
            return miss(Miss::Closed);
        }
        if let Err(err) = hand_over(&mut entry, spec, host) {
            tracing::warn!(%err, "could not hand a warm interpreter over; starting cold");
            self.discard(entry, Discard::ClaimFailed, host);
            return miss(Miss::ClaimFailed);
        }
        metrics.warm_hit();
        // A warm start's spawn is its claim.
        metrics.spawned(claimed_at.elapsed());
        let Entry {
            workdir,
            child,
            stdin,
            stdout,
            stderr,
            ..
        } = entry;
        Some(Launched {
            workdir: Some(workdir),
            program: Program::Process(Box::new(child)),
            stdin,
            stdout,
            stderr,
            started_at: Instant::now(),
            warm: true,
        })
    }

    /// Kills an entry and cleans up after it as after a finished execution (its group
    /// killed and reaped, its cgroup emptied and removed, its directory removed).
    fn discard(&self, entry: Entry, why: Discard, host: &Host) {
        host.observe.metrics.warm_discarded(why.as_str());
        tracing::debug!(reason = why.as_str(), "warm interpreter discarded");
        let Entry {
            workdir, mut child, ..
        } = entry;
        if tokio::runtime::Handle::try_current().is_err() {
            // Outside a runtime: the drops kill, reap and remove.
            return;
        }
        self.tasks.spawn(async move {
            child.signal(Signal::Kill);
            child.exited().await;
            if let Err(err) = child.reap().await {
                tracing::warn!(%err, "could not reap a warm interpreter");
            }
            workdir.remove();
        });
    }

    /// Stops filling, discards every entry and waits until they are gone.
    pub(crate) async fn close(&self, host: &Host) {
        let entries = {
            let mut ready = self.lock();
            ready.closed = true;
            std::mem::take(&mut ready.entries)
        };
        self.closing.cancel();
        for entry in entries {
            self.discard(entry, Discard::Shutdown, host);
        }
        self.tasks.close();
        self.tasks.wait().await;
    }

    /// Keeps the pool filled until it is closed: one start at a time, at most
    /// `refill_per_second` a second (so a burst of claims cannot make the refills take
    /// the CPU from the programs), backing off after failures.
    async fn fill(&self, host: Host) {
        let pause = Duration::from_secs(1) / self.settings.refill_per_second.max(1);
        let sweep_every = (self.settings.max_age / 2).max(Duration::from_millis(100));
        let mut failures: u32 = 0;
        loop {
            self.sweep(&host);
            if self.ready_count() >= self.settings.size {
                tokio::select! {
                    () = self.closing.cancelled() => return,
                    () = self.wake.notified() => {}
                    () = tokio::time::sleep(sweep_every) => {}
                }
                continue;
            }
            let started = tokio::select! {
                () = self.closing.cancelled() => return,
                started = self.start_entry(&host) => started,
            };
            match started {
                Ok(entry) => {
                    failures = 0;
                    host.observe.metrics.warm_started();
                    let refused = {
                        let mut ready = self.lock();
                        if ready.closed {
                            Some(entry)
                        } else {
                            // Without the jail nothing but a cgroup limits
                            // processes, so a cold start is no stricter.
                            ready.lowers_processes =
                                Some(entry.child.cgroup_limits_processes() || host.jail.is_none());
                            ready.entries.push_back(entry);
                            None
                        }
                    };
                    if let Some(entry) = refused {
                        self.discard(entry, Discard::Shutdown, &host);
                        return;
                    }
                }
                Err(err) if err.kind() == io::ErrorKind::Unsupported => {
                    host.observe
                        .metrics
                        .warm_discarded(Discard::StartFailed.as_str());
                    tracing::warn!(%err, "no warm pool: every execution starts cold");
                    return;
                }
                Err(err) => {
                    failures = failures.saturating_add(1);
                    host.observe
                        .metrics
                        .warm_discarded(Discard::StartFailed.as_str());
                    tracing::warn!(%err, failures, "could not start a warm interpreter");
                }
            }
            let wait = match failures {
                0 => pause,
                n => (Duration::from_secs(1) * 2_u32.saturating_pow(n.min(5))).min(MAX_BACKOFF),
            };
            tokio::select! {
                () = self.closing.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Discards the entries that died, wrote something or grew too old.
    fn sweep(&self, host: &Host) {
        let spoiled: Vec<(Entry, Discard)> = {
            let mut ready = self.lock();
            let mut kept = VecDeque::with_capacity(ready.entries.len());
            let mut spoiled = Vec::new();
            for entry in ready.entries.drain(..) {
                match entry.spoiled(self.settings.max_age) {
                    Some(why) => spoiled.push((entry, why)),
                    None => kept.push_back(entry),
                }
            }
            ready.entries = kept;
            spoiled
        };
        for (entry, why) in spoiled {
            self.discard(entry, why, host);
        }
    }

    /// Starts one interpreter with the bootstrap and waits until it says it is ready.
    async fn start_entry(&self, host: &Host) -> io::Result<Entry> {
        let (runtime, limits, blocking_host) = (self.runtime.clone(), self.limits, host.clone());
        let (workdir, spawned) = tokio::task::spawn_blocking(move || {
            let host = blocking_host;
            let cgroup = host.cgroups.create(
                limits.memory_bytes,
                limits.processes + launch::jail_processes(&host),
            )?;
            // Until its claim it weighs like a heavy program: warming up must not take
            // the CPU from the programs running now.
            if let Some(cgroup) = &cgroup {
                cgroup.weigh_down_until_handed_over();
            }
            let workdir =
                Workdir::create_empty(&host.work_root, &runtime.file_name, host.program_user)?;
            let source = workdir.source();
            let spawned = Launch {
                runtime: &runtime,
                workdir: workdir.path(),
                source: &source,
                args: &[],
                env: launch::environment(&runtime, &[], &host.base_env, workdir.path()),
                rlimits: launch::rlimits(&limits),
                cgroup,
                no_network: host.no_network,
                jail: host.jail.as_deref(),
                user: host.program_user,
                scratch_bytes: limits.workspace_bytes,
                processes: limits.processes,
                bootstrap: Some(BOOTSTRAP),
            }
            .spawn()
            .map_err(io::Error::other)?;
            Ok::<_, io::Error>((workdir, spawned))
        })
        .await
        .map_err(io::Error::other)??;
        let stdin = OwnedFd::from(spawned.stdin);
        sys::set_pipe_size(&stdin, STDIN_PIPE_BYTES);
        let stdin_capacity = sys::pipe_capacity(&stdin)?;
        tokio::time::timeout(READY_TIMEOUT, read_ready(&spawned.stdout))
            .await
            .map_err(|_| io::Error::other("the interpreter did not become ready in time"))??;
        let program_pid = host.jail.is_none().then(|| spawned.child.pid());
        Ok(Entry {
            workdir,
            child: spawned.child,
            stdin,
            stdout: spawned.stdout,
            stderr: spawned.stderr,
            program_pid,
            stdin_capacity,
            born: Instant::now(),
        })
    }
}

/// Reads exactly [`READY`] from a new interpreter's stdout.
async fn read_ready(stdout: &pipe::Receiver) -> io::Result<()> {
    let mut got = Vec::with_capacity(READY.len());
    let mut buf = [0_u8; READY.len()];
    while got.len() < READY.len() {
        stdout.readable().await?;
        match stdout.try_read(&mut buf[..READY.len() - got.len()]) {
            Ok(0) => {
                return Err(io::Error::other(
                    "the interpreter exited before it was ready",
                ))
            }
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
            Err(err) => return Err(err),
        }
        if got == TOO_OLD {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "warm starts need Python 3.11 or later",
            ));
        }
        if !READY.starts_with(&got) && !TOO_OLD.starts_with(&got) {
            return Err(io::Error::other(
                "the interpreter wrote something unexpected",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_protocol::Encoding;

    fn python() -> Runtime {
        Runtime {
            name: "python".into(),
            program: "/usr/bin/python3".into(),
            args: vec![FILE_PLACEHOLDER.into()],
            file_name: "main.py".into(),
            env: vec![("PYTHONUNBUFFERED".into(), "1".into())],
            network: false,
        }
    }

    fn limits() -> EffectiveLimits {
        entry_limits(&crate::config::LimitsConfig::default()).unwrap_or_else(|| panic!("limits"))
    }

    fn spec(runtime: Runtime, code: &str) -> ExecutionSpec {
        ExecutionSpec {
            id: "x".into(),
            runtime: Arc::new(runtime),
            code: code.into(),
            args: Vec::new(),
            env: Vec::new(),
            stdin: None,
            encoding: Encoding::Utf8,
            limits: crate::config::LimitsConfig::default()
                .resolve(&sluice_protocol::Limits::default())
                .unwrap_or_else(|err| panic!("{err}")),
        }
    }

    #[test]
    fn the_header_is_fixed_length_and_carries_the_length_and_the_rlimits() {
        let rlimits = sys::Rlimits {
            cpu_seconds: Some(2),
            file_size_bytes: Some(1 << 20),
            open_files: Some(64),
        };
        let header = header(1234, rlimits);
        assert_eq!(header.len(), HEADER_BYTES);
        assert_eq!(header[HEADER_BYTES - 1], b'\n');
        let text = std::str::from_utf8(&header).unwrap_or_default();
        let fields: Vec<&str> = text.split_whitespace().collect();
        assert_eq!(fields, ["SLUICE", "1234", "2", "1048576", "64"]);
        // The largest values still fit, with the newline last.
        let most = super::header(usize::MAX, sys::Rlimits::default());
        let text = std::str::from_utf8(&most).unwrap_or_default();
        assert_eq!(text.split_whitespace().count(), 5);
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn a_plain_python_request_with_default_limits_is_warm() {
        let entry = limits();
        assert_eq!(
            fallback(&python(), &entry, Some(true), &spec(python(), "print(1)")),
            None
        );
        // Lower limits are set at the claim.
        let mut lower = spec(python(), "print(1)");
        lower.limits.memory_bytes = 16 << 20;
        lower.limits.cpu_ms = 100;
        lower.limits.processes = 1;
        assert_eq!(fallback(&python(), &entry, Some(true), &lower), None);
    }

    #[test]
    fn what_changes_the_start_falls_back_to_cold() {
        let entry = limits();
        let check =
            |spec: &ExecutionSpec, lowers: bool| fallback(&python(), &entry, Some(lowers), spec);
        let mut env = spec(python(), "");
        env.env.push(("A".into(), "1".into()));
        assert_eq!(check(&env, true), Some(Miss::Env));
        let mut args = spec(python(), "");
        args.args.push("a".into());
        assert_eq!(check(&args, true), Some(Miss::Args));
        let networked = Runtime {
            network: true,
            ..python()
        };
        assert_eq!(check(&spec(networked, ""), true), Some(Miss::Runtime));
        let bash = Runtime {
            name: "bash".into(),
            ..python()
        };
        assert_eq!(check(&spec(bash, ""), true), Some(Miss::Runtime));
        let mut workspace = spec(python(), "");
        workspace.limits.workspace_bytes += 1;
        assert_eq!(check(&workspace, true), Some(Miss::Limits));
        let mut memory = spec(python(), "");
        memory.limits.memory_bytes = entry.memory_bytes + 1;
        assert_eq!(check(&memory, true), Some(Miss::Limits));
        // Fewer processes need a cgroup that counts them.
        let mut processes = spec(python(), "");
        processes.limits.processes = entry.processes - 1;
        assert_eq!(check(&processes, false), Some(Miss::Limits));
        assert_eq!(check(&processes, true), None);
        // Not known before the first entry started (the pool is empty then).
        assert_eq!(fallback(&python(), &entry, None, &processes), None);
        let big = "x".repeat(STDIN_PIPE_BYTES);
        assert_eq!(check(&spec(python(), &big), true), Some(Miss::CodeSize));
    }

    #[test]
    fn the_markers_have_the_same_length() {
        assert_eq!(READY.len(), TOO_OLD.len());
        assert!(BOOTSTRAP.contains(std::str::from_utf8(&READY[..READY.len() - 1]).unwrap_or("?")));
        assert!(
            BOOTSTRAP.contains(std::str::from_utf8(&TOO_OLD[..TOO_OLD.len() - 1]).unwrap_or("?"))
        );
    }

    #[test]
    fn the_metric_labels_are_the_reasons() {
        let misses: Vec<&str> = Miss::ALL.iter().map(|m| m.as_str()).collect();
        assert_eq!(misses, crate::observe::metrics::WARM_MISS_REASONS);
        let discards: Vec<&str> = Discard::ALL.iter().map(|d| d.as_str()).collect();
        assert_eq!(discards, crate::observe::metrics::WARM_DISCARD_REASONS);
    }

    #[test]
    fn only_python_run_as_interpreter_and_file_is_served() {
        assert!(serves(&python()));
        let wrapped = Runtime {
            args: vec!["-X".into(), "dev".into(), FILE_PLACEHOLDER.into()],
            ..python()
        };
        assert!(!serves(&wrapped));
        let node = Runtime {
            name: "node".into(),
            file_name: "main.js".into(),
            ..python()
        };
        assert!(!serves(&node));
    }
}
