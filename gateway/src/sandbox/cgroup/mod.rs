//! Control groups: one per execution, under the gateway's own, for the limits and the
//! accounting that must cover a whole process tree (memory, processes, CPU time) and for
//! killing every process of an execution, including ones that left its process group.
//!
//! A program must be inside its cgroup before it runs: moving it after the spawn lets
//! what it forks meanwhile escape (a cgroup move can take milliseconds).
//!
//! * **cgroup v1** (`memory`, `pids`, `cpu`): the thread that spawns moves itself into the
//!   execution's cgroups, spawns (the child is born inside), and moves back. Only v1
//!   moves single threads.
//! * **cgroup v2** (the unified hierarchy) moves whole processes only, so the program's
//!   first process (the jail, an unjailed program, a persistent interpreter or its
//!   jail) is born in it (`clone3` with `CLONE_INTO_CGROUP`) or joins it itself before
//!   its exec, both in `sys::spawn_program`. It gives every execution
//!   `cgroup.kill` and CPU time for the whole tree (`cpu.stat`), and memory and process
//!   limits where the gateway's cgroup has those controllers to delegate.
//!
//! **Fairness.** Every execution cgroup of a gateway lives under one parent,
//! `sluice-<pid>-<n>`. In the CPU controller (v1 `cpu.shares`, v2 `cpu.weight`) that
//! parent weighs half as much as one of the gateway's own threads and each execution
//! has an equal share inside it, so an execution forking 63 spinners gets one share, not
//! 63, and the gateway and light executions stay responsive. Where v1 `cpu` and v2's CPU
//! time are both there, light executions share one group and only ones that fork or
//! turn heavy get their own (`shared_cpu`): a group per execution costs the scheduler at
//! 1000 programs. A
//! persistent interpreter, whose CPU time is counted per cell rather than weighed, has
//! a group of its own from the start (`Cgroups::create_persistent`). The parent also carries the
//! memory and process totals of `ExecutionBudget` (`set_totals`), so the kernel holds
//! the sum even if admission were wrong.

use std::fs;
use std::io::{self, Read as _, Seek as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

static NEXT_GROUP: AtomicU64 = AtomicU64::new(0);

/// Tells apart the gateways of one process (tests run several), so one that stops
/// never removes the directory another still uses.
static NEXT_GATEWAY: AtomicU64 = AtomicU64::new(0);

/// One writable v1 hierarchy: the gateway's own cgroup and our directory under it.
#[derive(Debug, Clone)]
struct Hierarchy {
    /// Where the gateway's threads live (and return to after a spawn).
    home: PathBuf,
    /// `home/sluice-<pid>-<n>`: the parent of every execution cgroup of this gateway.
    ours: PathBuf,
}

/// The gateway's place in the unified (v2) hierarchy, and the controllers it could
/// delegate to its executions' cgroups.
#[derive(Debug, Clone)]
struct Unified {
    /// `<gateway's v2 cgroup>/sluice-<pid>-<n>`: the parent of every execution cgroup.
    ours: PathBuf,
    /// `memory.max` and friends work in execution cgroups.
    memory: bool,
    /// `pids.max` works in execution cgroups.
    pids: bool,
    /// `cpu.weight` works in execution cgroups.
    cpu: bool,
}

/// The CPU weight of the parent of all executions against one of the gateway's threads
/// (v1 `cpu.shares`; a nice-0 thread weighs 1024): half, so a gateway thread that has
/// work gets at least two thirds of a CPU however many executions spin.
const PARENT_CPU_SHARES: u64 = 512;
/// The same in v2 (`cpu.weight`, where a cgroup's default is 100).
const PARENT_CPU_WEIGHT: u64 = 50;
/// Each execution's weight among its siblings: the default, the same for all.
const EXECUTION_CPU_SHARES: u64 = 1024;
const EXECUTION_CPU_WEIGHT: u64 = 100;
/// CPU time after which an execution counts as heavy and its weight drops to a
/// sixteenth: a short program (a `print`, a test, a cell) starts with a full share and
/// keeps it, while a long CPU-bound one still takes whatever the light ones leave (a
/// weight matters only while others want the CPU). Measured with `sluice-bench --only
/// fairness`: a side `print(1)` while 16 executions spin.
pub(crate) const HEAVY_CPU_USEC: u64 = 200_000;
const HEAVY_CPU_DIVISOR: u64 = 16;

/// Where the gateway may create execution cgroups, found at start-up.
#[derive(Debug, Default)]
pub(crate) struct Cgroups {
    memory: Option<Hierarchy>,
    pids: Option<Hierarchy>,
    /// The v1 `cpu` hierarchy: each execution's share of the CPU.
    cpu: Option<Hierarchy>,
    /// The v1 CPU group light executions share (where v2 counts their CPU time).
    shared_cpu: Option<Arc<SharedCpu>>,
    unified: Option<Unified>,
    /// Empty execution cgroups kept for reuse: creating and removing the directories
    /// is most of what a cgroup costs per execution.
    pool: Pool,
    /// Reads running executions' OOM and fork counters, waking one when they move.
    watcher: LimitWatcher,
}

/// Most empty execution cgroups kept for reuse.
const POOL_SIZE: usize = 64;

/// An execution cgroup's directories, one per hierarchy in use.
#[derive(Debug, Default)]
struct Members {
    memory: Option<Member>,
    pids: Option<Member>,
    cpu: Option<Member>,
    unified: Option<Member>,
    /// Its counter files, kept open with it (shared with the limit watcher while an
    /// execution runs).
    counters: Arc<CounterFiles>,
    /// `cgroup.kill` was written to its v2 directory. A process cloned into such a
    /// cgroup (`CLONE_INTO_CGROUP`) is killed at birth on this 6.18 kernel (the kill's
    /// count is compared with the parent's cgroup's), so its programs then join by
    /// writing `cgroup.procs`.
    v2_killed: std::sync::atomic::AtomicBool,
}

type Pool = Arc<Mutex<Vec<Members>>>;

/// What this host's cgroups give, for `sluice doctor` and the start-up log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Capabilities {
    pub(crate) memory: Option<&'static str>,
    pub(crate) processes: Option<&'static str>,
    pub(crate) kill_tree: Option<&'static str>,
    pub(crate) cpu_tree: Option<&'static str>,
    /// How executions share the CPU (a weight each, under a parent below the gateway).
    pub(crate) cpu_share: Option<&'static str>,
}

impl Cgroups {
    /// Finds the gateway's v1 memory and pids cgroups in `/proc/self/cgroup` and
    /// creates a directory for this gateway in each it can write to, the v2 hierarchy
    /// included. Directories left by gateways that are gone are removed.
    pub(crate) fn probe() -> Self {
        let Ok(table) = fs::read_to_string("/proc/self/cgroup") else {
            return Self::default();
        };
        let mut found = Self::default();
        for (id, controllers, path) in membership(&table) {
            let relative = path.trim_start_matches('/');
            let controllers: Vec<&str> = controllers.split(',').collect();
            if id == "0" && controllers == [""] {
                let relative = without_own_leaf(relative);
                found.unified = v2_mount().and_then(|mount| unified_hierarchy(&mount, relative));
            } else if controllers.contains(&"memory") {
                found.memory = hierarchy(
                    Path::new("/sys/fs/cgroup/memory"),
                    relative,
                    "memory.limit_in_bytes",
                );
            } else if controllers.contains(&"pids") {
                found.pids = hierarchy(Path::new("/sys/fs/cgroup/pids"), relative, "pids.max");
            } else if controllers.contains(&"cpu") {
                found.cpu = hierarchy(Path::new("/sys/fs/cgroup/cpu"), relative, "cpu.shares")
                    .filter(|cpu| {
                        write_or_log(&cpu.ours.join("cpu.shares"), PARENT_CPU_SHARES).is_ok()
                    });
            }
        }
        // Light executions share one CPU group only where their CPU time is known, so
        // that one turning heavy is seen and given its own.
        if let (Some(cpu), Some(_)) = (&found.cpu, &found.unified) {
            found.shared_cpu =
                SharedCpu::make(&cpu.ours, &cpu.home, EXECUTION_CPU_SHARES).map(Arc::new);
        }
        found
    }

    /// True when a cgroup v1 hierarchy (memory, pids or cpu) is in use: moving a
    /// process into it is a v1 migration.
    pub(crate) fn uses_v1(&self) -> bool {
        self.memory.is_some() || self.pids.is_some() || self.cpu.is_some()
    }

    pub(crate) fn capabilities(&self) -> Capabilities {
        let unified = self.unified.as_ref();
        Capabilities {
            memory: match (&self.memory, unified) {
                (Some(_), _) => Some("cgroup v1 memory (memory.limit_in_bytes, OOM kills counted)"),
                (None, Some(u)) if u.memory => {
                    Some("cgroup v2 memory (memory.max, no swap; OOM kills counted)")
                }
                _ => None,
            },
            processes: match (&self.pids, unified) {
                (Some(_), _) => Some("cgroup v1 pids (pids.max)"),
                (None, Some(u)) if u.pids => Some("cgroup v2 pids (pids.max)"),
                _ => None,
            },
            kill_tree: match (
                unified,
                self.pids
                    .as_ref()
                    .or(self.memory.as_ref())
                    .or(self.cpu.as_ref()),
            ) {
                (Some(_), _) => Some("cgroup v2 cgroup.kill (every process, at once)"),
                (None, Some(_)) => Some("cgroup v1 membership (every process SIGKILLed)"),
                (None, None) => None,
            },
            cpu_tree: unified.map(|_| "cgroup v2 cpu.stat (the whole tree's CPU time)"),
            cpu_share: match (&self.cpu, unified) {
                (Some(_), _) if self.shared_cpu.is_some() => Some("cgroup v1 cpu.shares (light executions share one group; one that forks gets its own, at a sixteenth of the weight once it has used 200 ms of CPU; all of them half a gateway thread's weight)"),
                (Some(_), _) => Some("cgroup v1 cpu.shares (one equal share per execution, all of them half a gateway thread's weight)"),
                (None, Some(u)) if u.cpu => Some("cgroup v2 cpu.weight (one equal share per execution, all of them half the gateway's weight)"),
                _ => None,
            },
        }
    }

    /// True when executions get a CPU share each from their cgroups; without one, an
    /// unjailed program lowers its own priority before its exec (`sys::spawn_program`).
    pub(crate) fn shares_cpu(&self) -> bool {
        self.cpu.is_some() || self.unified.as_ref().is_some_and(|u| u.cpu)
    }

    /// Limits the parent of all executions to `memory_bytes` and `processes` in total
    /// (each `None`: no total), where the host has the controller. The gateway's own
    /// spawning threads pass through execution cgroups, so the process total gets room
    /// for them on top.
    pub(crate) fn set_totals(&self, memory_bytes: Option<u64>, processes: Option<u64>) {
        let unlimited_v1 = i64::MAX.to_string();
        let memory = memory_bytes.map_or(unlimited_v1, |b| b.to_string());
        if let Some(v1) = &self.memory {
            let _ = write_or_log(&v1.ours.join("memory.limit_in_bytes"), &memory);
        } else if let Some(v2) = self.unified.as_ref().filter(|u| u.memory) {
            let max = memory_bytes.map_or("max".to_owned(), |b| b.to_string());
            let _ = write_or_log(&v2.ours.join("memory.max"), max);
        }
        let pids = processes.map_or("max".to_owned(), |n| {
            pids_max_value(n.saturating_add(SPAWNING_THREADS))
        });
        if let Some(v1) = &self.pids {
            let _ = write_or_log(&v1.ours.join("pids.max"), &pids);
        } else if let Some(v2) = self.unified.as_ref().filter(|u| u.pids) {
            let _ = write_or_log(&v2.ours.join("pids.max"), &pids);
        }
    }

    /// An execution cgroup over `members`, before its limits are set; it goes back to
    /// the pool when dropped.
    fn group(&self, members: Members, limits_v2: (bool, bool), processes: u64) -> ExecutionCgroup {
        ExecutionCgroup {
            members,
            limits_v2,
            processes,
            cpu_share: self.shares_cpu(),
            shared_cpu: self.shared_cpu.clone(),
            own_cpu: Default::default(),
            helpers: 0,
            heavy: Default::default(),
            removed: false,
            pool: Some(self.pool.clone()),
            watcher: Some(self.watcher.clone()),
            baseline: Counters::default(),
            peak: None,
        }
    }

    /// A new cgroup for one execution, with its limits set. `Ok(None)` when the host
    /// offers no cgroup at all.
    pub(crate) fn create(
        &self,
        memory_bytes: u64,
        processes: u64,
    ) -> io::Result<Option<ExecutionCgroup>> {
        self.create_with(memory_bytes, processes, false)
    }

    /// [`Cgroups::create`] for a persistent interpreter: a CPU group of its own from the
    /// start, even where light executions share one. Its CPU time is counted per cell
    /// (`kernel::Replies::cpu`), never by [`ExecutionCgroup::cpu_seen`], so it would
    /// never be found heavy and moved out: a cell forking spinners would keep them in
    /// the shared group, a full task weight each. Not pooled (a pooled cgroup of a light
    /// execution has no CPU group), which costs little: interpreters live long.
    pub(crate) fn create_persistent(
        &self,
        memory_bytes: u64,
        processes: u64,
    ) -> io::Result<Option<ExecutionCgroup>> {
        self.create_with(memory_bytes, processes, true)
    }

    fn create_with(
        &self,
        memory_bytes: u64,
        processes: u64,
        own_cpu: bool,
    ) -> io::Result<Option<ExecutionCgroup>> {
        if self.memory.is_none()
            && self.pids.is_none()
            && self.cpu.is_none()
            && self.unified.is_none()
        {
            return Ok(None);
        }
        let limits_v2 = self.unified.as_ref().map_or((false, false), |u| {
            (
                u.memory && self.memory.is_none(),
                u.pids && self.pids.is_none(),
            )
        });
        let reused = if own_cpu {
            None
        } else {
            self.pool
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .pop()
        };
        if let Some(members) = reused {
            let mut group = self.group(members, limits_v2, processes);
            // A reused cgroup may refuse a limit below what it still has charged (page
            // cache), or keep the peak memory of earlier executions: then it goes
            // (removed, not pooled again) and a fresh one is made.
            if group.set_limits(memory_bytes, processes).is_ok() && group.restart_peak() {
                group.open_counters();
                group.baseline = group.counters();
                return Ok(Some(group));
            }
            group.pool = None;
        }
        let name = format!("x{}", NEXT_GROUP.fetch_add(1, Ordering::Relaxed));
        let make = |parent: Option<(&Path, &Path)>| -> io::Result<Option<Member>> {
            let Some((ours, home)) = parent else {
                return Ok(None);
            };
            let dir = ours.join(&name);
            fs::create_dir(&dir)?;
            Ok(Some(Member {
                dir,
                home: home.to_path_buf(),
            }))
        };
        let v1 = |h: &Option<Hierarchy>| h.as_ref().map(|h| (h.ours.clone(), h.home.clone()));
        let mut group = self.group(Members::default(), limits_v2, processes);
        if own_cpu {
            group.shared_cpu = None;
            group.pool = None;
        }
        // Assigned one by one, so a failure halfway still removes what was made.
        let memory = v1(&self.memory);
        group.members.memory = make(memory.as_ref().map(|(o, h)| (o.as_path(), h.as_path())))?;
        let pids = v1(&self.pids);
        group.members.pids = make(pids.as_ref().map(|(o, h)| (o.as_path(), h.as_path())))?;
        // A light execution shares one CPU group (`shared_cpu`) rather than having its own.
        let cpu = v1(&self.cpu).filter(|_| group.shared_cpu.is_none());
        group.members.cpu = make(cpu.as_ref().map(|(o, h)| (o.as_path(), h.as_path())))?;
        group.members.unified = make(
            self.unified
                .as_ref()
                .map(|u| (u.ours.as_path(), u.ours.as_path())),
        )?;
        // An equal share for every execution (written once: a reused cgroup keeps it).
        if let Some(cpu) = &group.members.cpu {
            fs::write(cpu.dir.join("cpu.shares"), EXECUTION_CPU_SHARES.to_string())?;
        } else if let (Some(v2), true) = (
            &group.members.unified,
            self.unified.as_ref().is_some_and(|u| u.cpu),
        ) {
            fs::write(v2.dir.join("cpu.weight"), EXECUTION_CPU_WEIGHT.to_string())?;
        }
        group.set_limits(memory_bytes, processes)?;
        // A new cgroup's peak counts from zero either way; this finds out whether it can
        // be reset when the cgroup is reused.
        group.restart_peak();
        group.open_counters();
        Ok(Some(group))
    }

    /// The first of this gateway's cgroup directories that can no longer take a
    /// process (gone, or not writable), for `/readyz`: a `stat`-cheap open of its
    /// `cgroup.procs` for writing, which writes nothing.
    pub(crate) fn unwritable(&self) -> Option<PathBuf> {
        let dirs = [&self.memory, &self.pids, &self.cpu]
            .into_iter()
            .flatten()
            .map(|h| &h.ours)
            .chain(self.unified.as_ref().map(|u| &u.ours));
        for dir in dirs {
            let procs = dir.join("cgroup.procs");
            if fs::OpenOptions::new().write(true).open(&procs).is_err() {
                return Some(dir.clone());
            }
        }
        None
    }

    /// Removes this gateway's directories (at shutdown, once every execution is gone).
    pub(crate) fn remove(&self) {
        let pooled: Vec<_> = self
            .pool
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain(..)
            .collect();
        for members in pooled {
            for member in [members.memory, members.pids, members.cpu, members.unified]
                .into_iter()
                .flatten()
            {
                let _ = fs::remove_dir(&member.dir);
            }
        }
        if let Some(shared) = &self.shared_cpu {
            shared.remove();
        }
        for hierarchy in [&self.memory, &self.pids, &self.cpu].into_iter().flatten() {
            let _ = fs::remove_dir(&hierarchy.ours);
        }
        if let Some(unified) = &self.unified {
            let _ = fs::remove_dir(&unified.ours);
        }
    }
}

/// The gateway's cgroup directories go with it, also when it refuses to start after
/// probing (removing is idempotent: `drain` removes them earlier, while tasks that
/// outlived the shutdown grace may still hold the value).
impl Drop for Cgroups {
    fn drop(&mut self) {
        self.remove();
    }
}

/// `<mount>/<relative>` and our `sluice-<pid>-<n>` directory under it, if everything an
/// execution needs works there (a child directory, its `limit` file, moving a thread in
/// and back). Removes the empty directories of gateways that are no longer running.
fn hierarchy(mount: &Path, relative: &str, limit: &str) -> Option<Hierarchy> {
    let home = mount.join(relative);
    remove_stale(&home);
    let ours = home.join(gateway_dir_name());
    let found = Hierarchy { home, ours };
    match fs::create_dir(&found.ours).and_then(|()| rehearse(&found, limit)) {
        Ok(()) => Some(found),
        Err(err) => {
            tracing::debug!(dir = %found.ours.display(), %err, "cgroup hierarchy not usable");
            let _ = fs::remove_dir(&found.ours);
            None
        }
    }
}

/// Room in the executions' process total for the gateway's threads, each of which
/// counts in an execution's cgroup while it spawns a program there (at most the
/// blocking pool's 512 at once).
const SPAWNING_THREADS: u64 = 512;

/// Most processes `pids.max` takes as a number (the kernel's `PID_MAX_LIMIT`): above it
/// a write fails (`EINVAL`, or `ERANGE` past `i64::MAX`), and no host can run that many
/// anyway.
const PIDS_MAX_LIMIT: u64 = 4 << 20;

/// What `pids.max` is written for a limit of `processes`: `max` from
/// [`PIDS_MAX_LIMIT`] on (an operator's "unlimited" is u64::MAX).
pub(super) fn pids_max_value(processes: u64) -> String {
    if processes >= PIDS_MAX_LIMIT {
        "max".to_owned()
    } else {
        processes.to_string()
    }
}

/// Writes `value` to a cgroup file; a failure is logged and returned.
fn write_or_log(file: &Path, value: impl ToString) -> io::Result<()> {
    fs::write(file, value.to_string()).inspect_err(|err| {
        tracing::warn!(file = %file.display(), %err, "could not write a cgroup setting");
    })
}

/// `sluice-<pid>-<n>`: this gateway's directory in a hierarchy.
fn gateway_dir_name() -> String {
    format!(
        "sluice-{}-{}",
        std::process::id(),
        NEXT_GATEWAY.fetch_add(1, Ordering::Relaxed)
    )
}

/// `sluice-<pid>-gateway`: the leaf the gateway moves itself into when its own v2
/// cgroup must have no processes to delegate controllers (`delegate`).
fn own_leaf_name() -> String {
    format!("sluice-{}-gateway", std::process::id())
}

/// The gateway's v2 cgroup from before an earlier probe in this process moved it into
/// its own leaf: that leaf's parent, where the earlier probe delegated controllers.
/// Delegating again from inside the leaf would nest a new leaf in it at every probe.
fn without_own_leaf(relative: &str) -> &str {
    let leaf = own_leaf_name();
    match relative.rsplit_once('/') {
        Some((parent, last)) if last == leaf => parent,
        None if relative == leaf => "",
        _ => relative,
    }
}

/// The lines of a `/proc/<pid>/cgroup` table: each hierarchy's id, its controllers
/// (comma-separated; empty for v2) and the process's cgroup there, from the root.
fn membership(table: &str) -> impl Iterator<Item = (&str, &str, &str)> {
    table.lines().filter_map(|line| {
        let mut fields = line.splitn(3, ':');
        Some((fields.next()?, fields.next()?, fields.next()?))
    })
}

/// Removes the (empty) directories of gateways that are no longer running.
fn remove_stale(home: &Path) {
    for dir in crate::leftovers::left_by_dead_gateways(home) {
        // Execution cgroups first, then the gateway's own (all empty by now).
        if let Ok(children) = fs::read_dir(&dir) {
            for child in children.flatten().filter(|c| c.path().is_dir()) {
                let _ = fs::remove_dir(child.path());
            }
        }
        let _ = fs::remove_dir(&dir);
    }
}

/// Where the v2 hierarchy is mounted, from `/proc/self/mountinfo`.
fn v2_mount() -> Option<PathBuf> {
    let table = fs::read_to_string("/proc/self/mountinfo").ok()?;
    table.lines().find_map(|line| {
        let (before, after) = line.split_once(" - ")?;
        after
            .starts_with("cgroup2 ")
            .then(|| before.split(' ').nth(4).map(PathBuf::from))?
    })
}

/// Our directory in the v2 hierarchy, if execution cgroups can be made, killed and
/// read there; with memory and pids limits when the gateway's cgroup can delegate
/// those controllers.
fn unified_hierarchy(mount: &Path, relative: &str) -> Option<Unified> {
    let home = mount.join(relative);
    remove_stale(&home);
    let ours = home.join(gateway_dir_name());
    let usable = fs::create_dir(&ours).and_then(|()| {
        let rehearsal = ours.join("rehearsal");
        fs::create_dir(&rehearsal)?;
        let works = fs::metadata(rehearsal.join("cgroup.kill"))
            .and_then(|_| fs::read_to_string(rehearsal.join("cpu.stat")));
        let _ = fs::remove_dir(&rehearsal);
        works.map(drop)
    });
    if let Err(err) = usable {
        tracing::debug!(dir = %ours.display(), %err, "cgroup v2 hierarchy not usable");
        let _ = fs::remove_dir(&ours);
        return None;
    }
    let (memory, pids, cpu) = delegate(&home, &ours);
    let cpu = cpu && write_or_log(&ours.join("cpu.weight"), PARENT_CPU_WEIGHT).is_ok();
    Some(Unified {
        ours,
        memory,
        pids,
        cpu,
    })
}

/// Enables the memory, pids and cpu controllers for `ours` and its children, where
/// `home` has them; says which are on. v2 allows controllers only in a cgroup without
/// processes of its own, so when the gateway lives in `home` it first moves itself into
/// a leaf beside `ours` (whose weight it then has, against `ours`).
fn delegate(home: &Path, ours: &Path) -> (bool, bool, bool) {
    let available = fs::read_to_string(home.join("cgroup.controllers")).unwrap_or_default();
    let wanted: Vec<&str> = ["memory", "pids", "cpu"]
        .into_iter()
        .filter(|c| available.split_whitespace().any(|a| a == *c))
        .collect();
    if wanted.is_empty() {
        return (false, false, false);
    }
    let enable = |dir: &Path| -> io::Result<()> {
        let line: Vec<String> = wanted.iter().map(|c| format!("+{c}")).collect();
        fs::write(dir.join("cgroup.subtree_control"), line.join(" "))
    };
    let enabled = enable(home).or_else(|_| {
        let leaf = home.join(own_leaf_name());
        let _ = fs::create_dir(&leaf);
        fs::write(leaf.join("cgroup.procs"), std::process::id().to_string())?;
        enable(home)
    });
    match enabled.and_then(|()| enable(ours)) {
        Ok(()) => (
            wanted.contains(&"memory"),
            wanted.contains(&"pids"),
            wanted.contains(&"cpu"),
        ),
        Err(err) => {
            // Said plainly: the memory and process limits now fall back to rlimits. (Other
            // processes in `home`, which v2 forbids there, are the usual cause.)
            tracing::warn!(
                %err,
                cgroup = %home.display(),
                "cgroup v2 memory, pids and cpu controllers could not be delegated; no memory or process limit for whole trees, no CPU share per execution"
            );
            (false, false, false)
        }
    }
}

/// Does once what every execution will do, so a host that allows only part of it is
/// found out at start-up rather than by every execution failing.
fn rehearse(hierarchy: &Hierarchy, limit: &str) -> io::Result<()> {
    let dir = hierarchy.ours.join("rehearsal");
    fs::create_dir(&dir)?;
    let member = Member {
        dir: dir.clone(),
        home: hierarchy.home.clone(),
    };
    let tried = fs::write(dir.join(limit), "max")
        .or_else(|_| fs::write(dir.join(limit), (1_u64 << 30).to_string()))
        .and_then(|()| {
            fs::write(dir.join("tasks"), execution::THIS_THREAD)?;
            leave(&[&member]);
            Ok(())
        });
    let removed = fs::remove_dir(&dir);
    tried.and(removed)
}

mod counters;
mod execution;
mod shared_cpu;
#[cfg(test)]
mod tests;
mod watch;

use counters::CounterFiles;
pub(crate) use watch::LimitWatch;
use watch::LimitWatcher;

use execution::{leave, Counters, Member};
pub(crate) use execution::{CgroupReport, CpuSeen, ExecutionCgroup};
use shared_cpu::SharedCpu;
