//! One execution's cgroup ([`ExecutionCgroup`]): a directory in each hierarchy in use,
//! entered before the program runs, read for its report (OOM kills, failed forks, peak
//! memory, CPU time) against a baseline (a reused cgroup's counters keep counting),
//! weighted down once it is heavy, and killed and emptied when the execution ends.

use super::*;

/// How an execution's cgroup saw it end.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct CgroupReport {
    /// The kernel's OOM killer killed one of its processes.
    pub(crate) oom_killed: bool,
    /// A fork or clone failed because the process limit was reached.
    pub(crate) process_limit_hit: bool,
    /// Peak memory of the whole tree, when the kernel reports it.
    pub(crate) peak_memory_bytes: Option<u64>,
    /// CPU time of the whole tree so far, in microseconds, when the kernel reports it.
    pub(crate) cpu_usec: Option<u64>,
}

/// An execution's CPU time as its cgroup counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CpuSeen {
    /// The whole tree's CPU time since the execution started, in microseconds.
    pub(crate) used_usec: u64,
    /// It has used at least [`HEAVY_CPU_USEC`]: its CPU weight has dropped.
    pub(crate) heavy: bool,
}

/// The monotonic counters of a cgroup; a reused one's keep counting, so each execution
/// starts from a baseline.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Counters {
    pub(super) oom_kills: u64,
    pub(super) failed_forks: u64,
    pub(super) cpu_usec: u64,
}

/// An execution's own CPU group, where light executions share one.
#[derive(Debug)]
pub(super) struct OwnCpu {
    pub(super) member: Member,
    /// Every one of its processes was moved there (see `SharedCpu::sweep`).
    pub(super) complete: bool,
    /// It has a heavy execution's weight.
    pub(super) heavy: bool,
}

impl OwnCpu {
    /// Moves into this group what of the execution is still outside it. A move that gave
    /// up (a tree forking faster than it was moved) is swept again; so is one that said
    /// it was complete while the execution lists live threads this group does not hold
    /// (seen in CI, cause unknown): two reads per CPU check make the outcome right
    /// whatever left them behind.
    fn settle(&mut self, shared: &SharedCpu, listing: &Path) {
        if self.complete && !shared.left_behind(listing, &self.member) {
            return;
        }
        self.complete = shared.sweep(listing, &self.member);
    }
}

/// An execution cgroup's directory in one hierarchy.
#[derive(Debug, Clone)]
pub(super) struct Member {
    pub(super) dir: PathBuf,
    /// The gateway's own cgroup in that hierarchy.
    pub(super) home: PathBuf,
}

/// One execution's cgroup (a directory in each hierarchy in use). Dropping it kills
/// what is inside and removes it (best effort), so no failure path leaks a directory.
#[derive(Debug)]
pub(crate) struct ExecutionCgroup {
    pub(super) members: Members,
    /// Whether the v2 directory carries the memory and the process limit (when v1
    /// does not).
    pub(super) limits_v2: (bool, bool),
    /// The process limit; `pids.max` is one higher while a gateway thread is inside.
    pub(super) processes: u64,
    /// It has a CPU share of its own (v1 `cpu` or v2 `cpu.weight`).
    pub(super) cpu_share: bool,
    /// The CPU group it shares while light, where light executions share one.
    pub(super) shared_cpu: Option<Arc<SharedCpu>>,
    /// Its own CPU group once it forked or turned heavy, where light executions share
    /// one.
    pub(super) own_cpu: Mutex<Option<OwnCpu>>,
    /// Processes of its own the gateway starts in it besides the program (the jail and
    /// its init): more than these and the program means the program forked.
    pub(super) helpers: u64,
    /// Its weight has dropped: it used more than [`HEAVY_CPU_USEC`] of CPU.
    pub(super) heavy: std::sync::atomic::AtomicBool,
    pub(super) removed: bool,
    /// Where it goes back when its execution is over.
    pub(super) pool: Option<Pool>,
    /// The gateway's limit watcher.
    pub(super) watcher: Option<LimitWatcher>,
    /// The counters when this execution got it.
    pub(super) baseline: Counters,
    /// The v2 `memory.peak`, opened and reset for this execution (see `restart_peak`).
    pub(super) peak: Option<fs::File>,
}

impl Drop for ExecutionCgroup {
    fn drop(&mut self) {
        if !self.removed {
            self.kill_all();
            self.recycle();
        }
    }
}

impl ExecutionCgroup {
    pub(super) fn members(&self) -> impl Iterator<Item = &Member> {
        let m = &self.members;
        [&m.memory, &m.pids, &m.cpu, &m.unified]
            .into_iter()
            .flatten()
    }

    /// One directory that lists every process of the execution, for killing them one
    /// by one (v1 or v2: each holds the whole tree).
    pub(super) fn listing(&self) -> Option<&Path> {
        let m = &self.members;
        [&m.unified, &m.pids, &m.memory, &m.cpu]
            .into_iter()
            .flatten()
            .map(|member| member.dir.as_path())
            .next()
    }

    /// True when this execution has a CPU share of its own; without one, an unjailed
    /// program lowers its own priority before its exec (`sys::ProgramPlan`).
    pub(crate) fn shares_cpu(&self) -> bool {
        self.cpu_share
    }

    /// The v2 directory a jailed program's jail joins, if there is one.
    pub(crate) fn unified_dir(&self) -> Option<&Path> {
        self.members.unified.as_ref().map(|m| m.dir.as_path())
    }

    /// True once its v2 `cgroup.kill` was written (see `Members::v2_killed`).
    fn was_killed(&self) -> bool {
        self.members
            .v2_killed
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// True when a program may be born in its v2 cgroup (`CLONE_INTO_CGROUP`) rather
    /// than join it: see `Members::v2_killed`.
    pub(crate) fn can_be_born_inside(&self) -> bool {
        self.members.unified.is_some() && !self.was_killed()
    }

    /// The directory holding `pids.max`, and whether it is v2.
    pub(super) fn pids_dir(&self) -> Option<&Path> {
        match (&self.members.pids, &self.members.unified) {
            (Some(v1), _) => Some(&v1.dir),
            (None, Some(v2)) if self.limits_v2.1 => Some(&v2.dir),
            _ => None,
        }
    }

    /// Runs `spawn` with the calling thread inside this cgroup, so the process it
    /// creates is born inside; the thread moves back before this returns.
    pub(crate) fn spawn_inside<T>(&self, spawn: impl FnOnce() -> T) -> io::Result<T> {
        // The spawning thread counts while it is inside: room for it, then the limit.
        let pids_max = |n: u64| match &self.members.pids {
            Some(pids) => fs::write(pids.dir.join("pids.max"), pids_max_value(n)),
            None => Ok(()),
        };
        pids_max(self.processes.saturating_add(1))?;
        // An execution given a CPU group of its own before its processes exist (a warm
        // entry, weighed down until it is claimed) has them born there, not in the
        // shared group, which no check would move them out of.
        let own = self
            .own_cpu
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|group| group.member.clone());
        let shared = self.shared_cpu.as_deref().map(SharedCpu::light);
        let m = &self.members;
        let cpu_group = own.as_ref().or(shared);
        let mut entered = Vec::new();
        for member in [
            m.memory.as_ref(),
            m.pids.as_ref(),
            m.cpu.as_ref(),
            cpu_group,
        ]
        .into_iter()
        .flatten()
        {
            if let Err(err) = fs::write(member.dir.join("tasks"), THIS_THREAD) {
                leave(&entered);
                return Err(err);
            }
            entered.push(member);
        }
        let spawned = spawn();
        leave(&entered);
        pids_max(self.processes)?;
        Ok(spawned)
    }

    /// Hands a cgroup made ahead of its execution (a warm interpreter's, made with the
    /// pool's limits) to that execution: its limits become the execution's, its peak
    /// memory and its counters (CPU time, OOM kills, refused forks) start from now. An
    /// error (the memory in use is already above the new limit, say) means the cgroup
    /// must not be used for this execution.
    pub(crate) fn hand_over(&mut self, memory_bytes: u64, processes: u64) -> io::Result<()> {
        if self
            .memory_current()
            .is_some_and(|used| used > memory_bytes)
        {
            return Err(io::Error::other(
                "memory in use is above the execution's limit",
            ));
        }
        self.set_limits(memory_bytes, processes)?;
        self.processes = processes;
        self.restart_peak();
        self.baseline = self.counters();
        if !self.lighten_in_place() {
            self.weigh(false);
        }
        Ok(())
    }

    /// At a warm entry's claim: gives the group of its own it waited in the full weight
    /// (one write), which it keeps, as an execution that forked does. Moving its
    /// processes back to the shared group would move whole processes, which waits for an
    /// RCU grace period when no other move came just before (5-30 ms measured on a 6.18
    /// kernel), and while it waits every fork on the host waits: done in the background
    /// after the claim, it still held up the next execution's start (cold jailed starts
    /// measured 11.6-13.4 ms p50 back to back with it, 3.2 ms without). False when there
    /// is no such group or the write failed (then it is left now, as [`Self::weigh`]
    /// does).
    fn lighten_in_place(&self) -> bool {
        use std::sync::atomic::Ordering;
        let Some(shared) = self.shared_cpu.as_deref().filter(|_| self.cpu_share) else {
            return false;
        };
        let mut own = self.own_cpu.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(group) = own.as_mut() else {
            return false;
        };
        if !shared.reweigh(&group.member, EXECUTION_CPU_SHARES) {
            return false;
        }
        group.heavy = false;
        self.heavy.store(false, Ordering::Relaxed);
        true
    }

    /// Gives a cgroup made ahead of its execution the CPU weight of a heavy one until
    /// [`ExecutionCgroup::hand_over`]: starting interpreters for later must not take
    /// the CPU from the programs running now.
    pub(crate) fn weigh_down_until_handed_over(&self) {
        self.weigh(true);
    }

    /// True when the cgroup limits the number of processes (a `pids` controller).
    pub(crate) fn limits_processes(&self) -> bool {
        self.pids_dir().is_some()
    }

    /// The memory its processes use now, where a memory controller counts it.
    pub(crate) fn memory_current(&self) -> Option<u64> {
        let read =
            |path: PathBuf| -> Option<u64> { fs::read_to_string(path).ok()?.trim().parse().ok() };
        match (&self.members.memory, &self.members.unified) {
            (Some(v1), _) => read(v1.dir.join("memory.usage_in_bytes")),
            (None, Some(v2)) if self.limits_v2.0 => read(v2.dir.join("memory.current")),
            _ => None,
        }
    }

    /// Writes the limits, and starts the peak-memory count afresh.
    pub(super) fn set_limits(&self, memory_bytes: u64, processes: u64) -> io::Result<()> {
        if let Some(memory) = &self.members.memory {
            // memsw (memory plus swap) must stay at or above the memory limit, so the
            // order depends on the direction; both are tried, swap accounting is optional.
            let memsw = memory.dir.join("memory.memsw.limit_in_bytes");
            let _ = fs::write(&memsw, memory_bytes.to_string());
            fs::write(
                memory.dir.join("memory.limit_in_bytes"),
                memory_bytes.to_string(),
            )?;
            // No escape into swap, where the kernel accounts it.
            let _ = fs::write(&memsw, memory_bytes.to_string());
            let _ = fs::write(memory.dir.join("memory.max_usage_in_bytes"), "0");
        } else if let (Some(v2), true) = (&self.members.unified, self.limits_v2.0) {
            fs::write(v2.dir.join("memory.max"), memory_bytes.to_string())?;
            let _ = fs::write(v2.dir.join("memory.swap.max"), "0");
        }
        if let Some(dir) = self.pids_dir() {
            fs::write(dir.join("pids.max"), pids_max_value(processes))?;
        }
        Ok(())
    }

    /// Starts the v2 peak-memory count afresh for this execution. A write to
    /// `memory.peak` resets it (from Linux 6.12) only for reads through the same open
    /// file, so that file is kept for `report`. False where the peak cannot be reset
    /// (older kernels: `memory.peak` is read-only and counts from the cgroup's creation):
    /// then the cgroup must not be reused. True without a v2 memory limit.
    pub(super) fn restart_peak(&mut self) -> bool {
        let Some(v2) = self.members.unified.as_ref().filter(|_| self.limits_v2.0) else {
            return true;
        };
        self.peak = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(v2.dir.join("memory.peak"))
            .and_then(|mut file| file.write_all(b"0").map(|()| file))
            .ok();
        self.peak.is_some()
    }

    /// Opens the counter files (once: a pooled cgroup keeps them open).
    pub(super) fn open_counters(&mut self) {
        let v2 = self.members.unified.as_ref().map(|m| m.dir.clone());
        let oom = match (&self.members.memory, self.limits_v2.0) {
            (Some(v1), _) => Some(v1.dir.join("memory.oom_control")),
            (None, true) => v2.as_ref().map(|dir| dir.join("memory.events")),
            (None, false) => None,
        };
        let forks = self.pids_dir().map(|dir| dir.join("pids.events"));
        let cpu = v2.map(|dir| dir.join("cpu.stat"));
        // Only a cgroup nobody watches is opened (a new one, or a reused one whose
        // files are open already).
        if let Some(files) = Arc::get_mut(&mut self.members.counters) {
            files.open(oom.as_deref(), forks.as_deref(), cpu.as_deref());
        }
    }

    /// The monotonic counters as the kernel has them now.
    pub(super) fn counters(&self) -> Counters {
        let files = &self.members.counters;
        Counters {
            oom_kills: files.oom_kills(),
            failed_forks: files.failed_forks(),
            cpu_usec: files.cpu_usec().unwrap_or(0),
        }
    }

    /// What the limits the kernel counts as they are hit (OOM kills, refused forks)
    /// caught so far: two `pread`s, cheap enough to check often. Peak memory and CPU
    /// time are left out (see [`ExecutionCgroup::cpu_seen`] and [`ExecutionCgroup::report`]).
    pub(crate) fn limits_hit(&self) -> CgroupReport {
        let files = &self.members.counters;
        CgroupReport {
            oom_killed: files.oom_kills() > self.baseline.oom_kills,
            process_limit_hit: files.failed_forks() > self.baseline.failed_forks,
            peak_memory_bytes: None,
            cpu_usec: None,
        }
    }

    /// Starts watching this execution's OOM and fork counters (from its baseline); the
    /// watch wakes when either moves. `None` outside a Tokio runtime.
    pub(crate) fn watch_limits(&self) -> Option<LimitWatch> {
        self.watcher.as_ref()?.watch(
            Arc::clone(&self.members.counters),
            self.baseline.oom_kills,
            self.baseline.failed_forks,
        )
    }

    /// The whole tree's CPU time so far, where cgroup v2 counts it, and whether the
    /// execution now counts as heavy (its weight drops past [`HEAVY_CPU_USEC`]).
    pub(crate) fn cpu_seen(&self) -> Option<CpuSeen> {
        let used_usec = self
            .members
            .counters
            .cpu_usec()?
            .saturating_sub(self.baseline.cpu_usec);
        let heavy = used_usec >= HEAVY_CPU_USEC;
        if heavy {
            self.weigh(true);
        } else {
            self.leave_shared_if_forked();
        }
        Some(CpuSeen { used_usec, heavy })
    }

    /// What the limits caught so far.
    pub(crate) fn report(&self) -> CgroupReport {
        let now = self.counters();
        let read = |dir: &Path, file: &str| -> Option<u64> {
            fs::read_to_string(dir.join(file)).ok()?.trim().parse().ok()
        };
        let peak_memory_bytes = match (&self.members.memory, &self.members.unified) {
            (Some(v1), _) => read(&v1.dir, "memory.max_usage_in_bytes"),
            (None, Some(v2)) if self.limits_v2.0 => match &self.peak {
                // Through the file that was reset: this execution's peak.
                Some(file) => {
                    let mut file = file;
                    let mut text = String::new();
                    file.rewind()
                        .and_then(|()| file.read_to_string(&mut text))
                        .ok()
                        .and_then(|_| text.trim().parse().ok())
                }
                // A cgroup made for this execution: its peak since creation.
                None => read(&v2.dir, "memory.peak"),
            },
            _ => None,
        };
        let cpu_usec = self
            .members
            .unified
            .as_ref()
            .map(|_| now.cpu_usec.saturating_sub(self.baseline.cpu_usec));
        if cpu_usec.is_some_and(|used| used >= HEAVY_CPU_USEC) {
            self.weigh(true);
        }
        CgroupReport {
            oom_killed: now.oom_kills > self.baseline.oom_kills,
            process_limit_hit: now.failed_forks > self.baseline.failed_forks,
            peak_memory_bytes,
            cpu_usec,
        }
    }

    /// Says how many processes the gateway starts in it besides the program (a jail and
    /// its init).
    pub(crate) fn set_helpers(&mut self, helpers: u64) {
        self.helpers = helpers;
    }

    /// Where light executions share one CPU group, gives one whose program has forked
    /// (more processes than the program and the gateway's helpers) a group of its own at
    /// the full weight: in the shared group each of its processes would weigh as much as
    /// a whole light execution until it turned heavy.
    fn leave_shared_if_forked(&self) {
        let (Some(shared), Some(listing)) = (&self.shared_cpu, self.listing()) else {
            return;
        };
        let mut own = self.own_cpu.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(group) = own.as_mut() {
            group.settle(shared, listing);
            return;
        }
        if self.task_count(listing) <= self.helpers.saturating_add(1) {
            return;
        }
        *own = shared
            .own_group(listing, EXECUTION_CPU_SHARES)
            .map(|(member, complete)| OwnCpu {
                member,
                complete,
                heavy: false,
            });
    }

    /// How many tasks (threads, each a full weight in the shared group) it has:
    /// `pids.current` where a `pids` controller counts them (v1 or v2), else the
    /// listing's threads (v2 `cgroup.threads`, v1 `tasks`). Not its processes: a single
    /// process spinning 64 threads weighs 64 light executions there.
    fn task_count(&self, listing: &Path) -> u64 {
        let read = |file: PathBuf| fs::read_to_string(file).ok();
        let current = self
            .pids_dir()
            .and_then(|dir| read(dir.join("pids.current"))?.trim().parse().ok());
        current.unwrap_or_else(|| {
            let threads = read(listing.join("cgroup.threads"))
                .or_else(|| read(listing.join("tasks")))
                .unwrap_or_default();
            threads.lines().filter(|l| !l.trim().is_empty()).count() as u64
        })
    }

    /// Sets this execution's CPU weight: a sixteenth of the default once it is `heavy`,
    /// the default again when not (a reused cgroup starts light). Written only on a
    /// change; CPU time is known where cgroup v2 counts it, so on v1 alone every
    /// execution keeps an equal share.
    pub(super) fn weigh(&self, heavy: bool) {
        use std::sync::atomic::Ordering;
        if !self.cpu_share {
            return;
        }
        if let (Some(shared), Some(listing)) = (&self.shared_cpu, self.listing()) {
            // Under the lock, so two calls cannot leave the flag and the group apart.
            let mut own = self.own_cpu.lock().unwrap_or_else(PoisonError::into_inner);
            self.heavy.store(heavy, Ordering::Relaxed);
            let heavy_shares = EXECUTION_CPU_SHARES / HEAVY_CPU_DIVISOR;
            match (heavy, own.take()) {
                (true, None) => {
                    *own = shared
                        .own_group(listing, heavy_shares)
                        .map(|(member, complete)| OwnCpu {
                            member,
                            complete,
                            heavy: true,
                        });
                }
                // Already in a group of its own: its weight drops once, and what a move
                // that gave up left behind (a tree forking faster than it was moved) is
                // swept again at each CPU check until none is.
                (true, Some(mut group)) => {
                    if !group.heavy {
                        group.heavy = shared.reweigh(&group.member, heavy_shares);
                    }
                    group.settle(shared, listing);
                    *own = Some(group);
                }
                (false, Some(group)) => shared.back_to_shared(listing, group.member),
                (false, None) => {}
            }
            return;
        }
        if self.heavy.swap(heavy, Ordering::Relaxed) == heavy {
            return;
        }
        let (file, default) = match (&self.members.cpu, &self.members.unified) {
            (Some(v1), _) => (v1.dir.join("cpu.shares"), EXECUTION_CPU_SHARES),
            (None, Some(v2)) => (v2.dir.join("cpu.weight"), EXECUTION_CPU_WEIGHT),
            (None, None) => return,
        };
        let weight = if heavy {
            (default / HEAVY_CPU_DIVISOR).max(2)
        } else {
            default
        };
        if let Err(err) = fs::write(&file, weight.to_string()) {
            tracing::debug!(file = %file.display(), %err, "could not change an execution's CPU weight");
        }
    }

    /// SIGKILLs every process in the cgroup, wherever it moved in its process tree.
    pub(crate) fn kill_all(&self) {
        if let Some(v2) = &self.members.unified {
            // Every process inside, at once, forks in flight included; not written to
            // an empty one (nothing in it can fork), which a later program can then be
            // born in (see `Members::v2_killed`).
            let empty = fs::read_to_string(v2.dir.join("cgroup.procs"))
                .is_ok_and(|procs| procs.trim().is_empty());
            if !empty {
                self.members
                    .v2_killed
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                let _ = fs::write(v2.dir.join("cgroup.kill"), "1");
            }
        }
        // One v1 listing is enough: each hierarchy holds the same processes.
        let v1 = [&self.members.pids, &self.members.memory, &self.members.cpu]
            .into_iter()
            .flatten()
            .next();
        if let Some(member) = v1 {
            for pid in members(&member.dir) {
                let _ = crate::sys::kill(pid);
            }
        }
    }

    /// The file listing every process of the execution (`cgroup.procs` of one of its
    /// directories), for a persistent interpreter that ends what each cell started.
    pub(crate) fn procs_file(&self) -> Option<PathBuf> {
        self.listing().map(|dir| dir.join("cgroup.procs"))
    }

    /// True once no process is left in it.
    pub(crate) fn is_empty(&self) -> bool {
        self.members().all(|member| members(&member.dir).is_empty())
    }

    /// Gives the (empty) cgroup back for another execution, or removes it when the
    /// pool is full.
    pub(crate) fn recycle(&mut self) {
        self.weigh(false);
        if let Some(pool) = self.pool.take() {
            let mut pool = pool.lock().unwrap_or_else(PoisonError::into_inner);
            // A v2 cgroup whose peak memory cannot be reset would report an earlier
            // execution's peak: not reused.
            // Nor one whose `cgroup.kill` was written: a program could not be born in it
            // (see `Members::v2_killed`).
            let reusable = (!self.limits_v2.0 || self.peak.is_some()) && !self.was_killed();
            if pool.len() < POOL_SIZE && reusable && self.is_empty() {
                pool.push(std::mem::take(&mut self.members));
                self.removed = true;
                return;
            }
        }
        self.remove();
    }

    /// Removes the directories (the cgroup must be empty).
    pub(crate) fn remove(&mut self) {
        self.removed = true;
        for member in self.members() {
            if let Err(err) = fs::remove_dir(&member.dir) {
                tracing::warn!(dir = %member.dir.display(), %err, "could not remove an execution cgroup");
            }
        }
    }
}

/// What a v1 `tasks` file takes to move the calling thread: "0" names the caller.
/// Its own thread id would do the same, but the kernel then takes its global
/// thread-group lock, whose write side waits for an RCU grace period when no other
/// move came just before: about 8 ms of every spawn on an idle 6.18 host (0.04 ms with
/// "0", which moves the caller without that lock).
pub(super) const THIS_THREAD: &str = "0";

/// Moves the calling thread back home in every hierarchy it entered.
pub(super) fn leave(entered: &[&Member]) {
    for member in entered {
        if let Err(err) = fs::write(member.home.join("tasks"), THIS_THREAD) {
            tracing::error!(%err, home = %member.home.display(), "a gateway thread could not leave an execution cgroup");
        }
    }
}

/// The processes in a cgroup, never the gateway itself: a gateway thread that could not
/// move back out after a spawn (logged) would otherwise make the gateway a member.
pub(super) fn members(dir: &Path) -> Vec<u32> {
    let gateway = std::process::id();
    fs::read_to_string(dir.join("cgroup.procs"))
        .map(|text| {
            text.lines()
                .filter_map(|l| l.trim().parse().ok())
                .filter(|pid| *pid != gateway)
                .collect()
        })
        .unwrap_or_default()
}
