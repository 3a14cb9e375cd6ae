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
//!   first process joins it itself, before it starts anything: the jail (`sluice-jail
//!   --cgroup`), or an unjailed program's child before its exec (`sys::spawn_program`,
//!   or a persistent interpreter's pre_exec hook). It gives every execution
//!   `cgroup.kill` and CPU time for the whole tree (`cpu.stat`), and memory and process
//!   limits where the gateway's cgroup has those controllers to delegate.
//!
//! **Fairness.** Every execution cgroup of a gateway lives under one parent,
//! `sluice-<pid>-<n>`. In the CPU controller (v1 `cpu.shares`, v2 `cpu.weight`) that
//! parent weighs half as much as one of the gateway's own threads and each execution
//! has an equal share inside it, so an execution forking 63 spinners gets one share, not
//! 63, and the gateway and light executions stay responsive. The parent also carries the
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
const HEAVY_CPU_USEC: u64 = 200_000;
const HEAVY_CPU_DIVISOR: u64 = 16;

/// Where the gateway may create execution cgroups, found at start-up.
#[derive(Debug, Default)]
pub(crate) struct Cgroups {
    memory: Option<Hierarchy>,
    pids: Option<Hierarchy>,
    /// The v1 `cpu` hierarchy: each execution's share of the CPU.
    cpu: Option<Hierarchy>,
    unified: Option<Unified>,
    /// Empty execution cgroups kept for reuse: creating and removing the directories
    /// is most of what a cgroup costs per execution.
    pool: Pool,
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
        for line in table.lines() {
            let mut fields = line.splitn(3, ':');
            let (Some(id), Some(controllers), Some(path)) =
                (fields.next(), fields.next(), fields.next())
            else {
                continue;
            };
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
        found
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
            n.saturating_add(SPAWNING_THREADS).to_string()
        });
        if let Some(v1) = &self.pids {
            let _ = write_or_log(&v1.ours.join("pids.max"), &pids);
        } else if let Some(v2) = self.unified.as_ref().filter(|u| u.pids) {
            let _ = write_or_log(&v2.ours.join("pids.max"), &pids);
        }
    }

    /// A new cgroup for one execution, with its limits set. `Ok(None)` when the host
    /// offers no cgroup at all.
    pub(crate) fn create(
        &self,
        memory_bytes: u64,
        processes: u64,
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
        let reused = self
            .pool
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        if let Some(members) = reused {
            let mut group = ExecutionCgroup {
                members,
                limits_v2,
                processes,
                cpu_share: self.shares_cpu(),
                heavy: Default::default(),
                removed: false,
                pool: Some(self.pool.clone()),
                baseline: Counters::default(),
                peak: None,
            };
            // A reused cgroup may refuse a limit below what it still has charged (page
            // cache), or keep the peak memory of earlier executions: then it goes
            // (removed, not pooled again) and a fresh one is made.
            if group.set_limits(memory_bytes, processes).is_ok() && group.restart_peak() {
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
        let mut group = ExecutionCgroup {
            members: Members::default(),
            limits_v2,
            processes,
            cpu_share: self.shares_cpu(),
            heavy: Default::default(),
            removed: false,
            pool: Some(self.pool.clone()),
            baseline: Counters::default(),
            peak: None,
        };
        // Assigned one by one, so a failure halfway still removes what was made.
        let memory = v1(&self.memory);
        group.members.memory = make(memory.as_ref().map(|(o, h)| (o.as_path(), h.as_path())))?;
        let pids = v1(&self.pids);
        group.members.pids = make(pids.as_ref().map(|(o, h)| (o.as_path(), h.as_path())))?;
        let cpu = v1(&self.cpu);
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
        Ok(Some(group))
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
        for hierarchy in [&self.memory, &self.pids, &self.cpu].into_iter().flatten() {
            let _ = fs::remove_dir(&hierarchy.ours);
        }
        if let Some(unified) = &self.unified {
            let _ = fs::remove_dir(&unified.ours);
        }
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
            let tid = crate::sys::thread_id().to_string();
            fs::write(dir.join("tasks"), &tid)?;
            leave(&[&member], &tid);
            Ok(())
        });
    let removed = fs::remove_dir(&dir);
    tried.and(removed)
}

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

/// The monotonic counters of a cgroup; a reused one's keep counting, so each execution
/// starts from a baseline.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Counters {
    oom_kills: u64,
    failed_forks: u64,
    cpu_usec: u64,
}

/// An execution cgroup's directory in one hierarchy.
#[derive(Debug)]
struct Member {
    dir: PathBuf,
    /// The gateway's own cgroup in that hierarchy.
    home: PathBuf,
}

/// One execution's cgroup (a directory in each hierarchy in use). Dropping it kills
/// what is inside and removes it (best effort), so no failure path leaks a directory.
#[derive(Debug)]
pub(crate) struct ExecutionCgroup {
    members: Members,
    /// Whether the v2 directory carries the memory and the process limit (when v1
    /// does not).
    limits_v2: (bool, bool),
    /// The process limit; `pids.max` is one higher while a gateway thread is inside.
    processes: u64,
    /// It has a CPU share of its own (v1 `cpu` or v2 `cpu.weight`).
    cpu_share: bool,
    /// Its weight has dropped: it used more than [`HEAVY_CPU_USEC`] of CPU.
    heavy: std::sync::atomic::AtomicBool,
    removed: bool,
    /// Where it goes back when its execution is over.
    pool: Option<Pool>,
    /// The counters when this execution got it.
    baseline: Counters,
    /// The v2 `memory.peak`, opened and reset for this execution (see `restart_peak`).
    peak: Option<fs::File>,
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
    fn members(&self) -> impl Iterator<Item = &Member> {
        let m = &self.members;
        [&m.memory, &m.pids, &m.cpu, &m.unified]
            .into_iter()
            .flatten()
    }

    /// The v1 directories, which the spawning thread moves through.
    fn v1_members(&self) -> impl Iterator<Item = &Member> {
        let m = &self.members;
        [&m.memory, &m.pids, &m.cpu].into_iter().flatten()
    }

    /// One directory that lists every process of the execution, for killing them one
    /// by one (v1 or v2: each holds the whole tree).
    fn listing(&self) -> Option<&Path> {
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

    /// The directory holding `pids.max`, and whether it is v2.
    fn pids_dir(&self) -> Option<&Path> {
        match (&self.members.pids, &self.members.unified) {
            (Some(v1), _) => Some(&v1.dir),
            (None, Some(v2)) if self.limits_v2.1 => Some(&v2.dir),
            _ => None,
        }
    }

    /// Runs `spawn` with the calling thread inside this cgroup, so the process it
    /// creates is born inside; the thread moves back before this returns.
    pub(crate) fn spawn_inside<T>(&self, spawn: impl FnOnce() -> T) -> io::Result<T> {
        let tid = crate::sys::thread_id().to_string();
        // The spawning thread counts while it is inside: room for it, then the limit.
        let pids_max = |n: u64| match &self.members.pids {
            Some(pids) => fs::write(pids.dir.join("pids.max"), n.to_string()),
            None => Ok(()),
        };
        pids_max(self.processes.saturating_add(1))?;
        let mut entered = Vec::new();
        for member in self.v1_members() {
            if let Err(err) = fs::write(member.dir.join("tasks"), &tid) {
                leave(&entered, &tid);
                return Err(err);
            }
            entered.push(member);
        }
        let spawned = spawn();
        leave(&entered, &tid);
        pids_max(self.processes)?;
        Ok(spawned)
    }

    /// Writes the limits, and starts the peak-memory count afresh.
    fn set_limits(&self, memory_bytes: u64, processes: u64) -> io::Result<()> {
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
            fs::write(dir.join("pids.max"), processes.to_string())?;
        }
        Ok(())
    }

    /// Starts the v2 peak-memory count afresh for this execution. A write to
    /// `memory.peak` resets it (from Linux 6.12) only for reads through the same open
    /// file, so that file is kept for `report`. False where the peak cannot be reset
    /// (older kernels: `memory.peak` is read-only and counts from the cgroup's creation):
    /// then the cgroup must not be reused. True without a v2 memory limit.
    fn restart_peak(&mut self) -> bool {
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

    /// The monotonic counters as the kernel has them now.
    fn counters(&self) -> Counters {
        let counter = |dir: Option<&Path>, file: &str, key: &str| -> u64 {
            dir.and_then(|dir| fs::read_to_string(dir.join(file)).ok())
                .and_then(|text| {
                    text.lines().find_map(|line| {
                        let (name, value) = line.split_once(' ')?;
                        (name == key).then(|| value.trim().parse().ok())?
                    })
                })
                .unwrap_or(0)
        };
        let v2 = self.members.unified.as_ref().map(|m| m.dir.as_path());
        let oom_kills = match (&self.members.memory, self.limits_v2.0) {
            (Some(v1), _) => counter(Some(&v1.dir), "memory.oom_control", "oom_kill"),
            (None, true) => counter(v2, "memory.events", "oom_kill"),
            (None, false) => 0,
        };
        Counters {
            oom_kills,
            failed_forks: counter(self.pids_dir(), "pids.events", "max"),
            cpu_usec: counter(v2, "cpu.stat", "usage_usec"),
        }
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

    /// Sets this execution's CPU weight: a sixteenth of the default once it is `heavy`,
    /// the default again when not (a reused cgroup starts light). Written only on a
    /// change; CPU time is known where cgroup v2 counts it, so on v1 alone every
    /// execution keeps an equal share.
    fn weigh(&self, heavy: bool) {
        use std::sync::atomic::Ordering;
        if !self.cpu_share || self.heavy.swap(heavy, Ordering::Relaxed) == heavy {
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
            // Every process inside, at once, forks in flight included.
            let _ = fs::write(v2.dir.join("cgroup.kill"), "1");
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
            let reusable = !self.limits_v2.0 || self.peak.is_some();
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

/// Moves the calling thread back home in every hierarchy it entered.
fn leave(entered: &[&Member], tid: &str) {
    for member in entered {
        if let Err(err) = fs::write(member.home.join("tasks"), tid) {
            tracing::error!(%err, home = %member.home.display(), "a gateway thread could not leave an execution cgroup");
        }
    }
}

/// The processes in a cgroup, never the gateway itself: a gateway thread that could not
/// move back out after a spawn (logged) would otherwise make the gateway a member.
fn members(dir: &Path) -> Vec<u32> {
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

#[cfg(test)]
mod tests {
    //! The cgroup v2 path against a directory laid out like cgroupfs: what is written and
    //! how the kernel's counters are read. (These machines mount memory and pids as v1,
    //! so the v2 limits never run against a kernel in the end-to-end suite.)
    use super::*;

    /// A scratch directory standing in for a v2 cgroup; removed on drop.
    struct FakeCgroup(PathBuf);

    impl FakeCgroup {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir()
                .join(format!("sluice-fake-cgroup-{}-{name}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).expect("scratch directory");
            Self(dir)
        }

        fn write(&self, file: &str, text: &str) {
            fs::write(self.0.join(file), text).expect("write a fake cgroup file");
        }

        fn read(&self, file: &str) -> String {
            fs::read_to_string(self.0.join(file)).unwrap_or_default()
        }
    }

    impl Drop for FakeCgroup {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn v2_group(fake: &FakeCgroup) -> ExecutionCgroup {
        ExecutionCgroup {
            members: Members {
                unified: Some(Member {
                    dir: fake.0.clone(),
                    home: fake.0.clone(),
                }),
                ..Members::default()
            },
            limits_v2: (true, true),
            processes: 16,
            cpu_share: false,
            heavy: Default::default(),
            removed: true, // nothing to remove or recycle in a scratch directory
            pool: None,
            baseline: Counters::default(),
            peak: None,
        }
    }

    #[test]
    fn v2_limits_are_written_and_its_counters_read() {
        let fake = FakeCgroup::new("limits");
        let mut group = v2_group(&fake);
        group.set_limits(256 << 20, 16).expect("limits written");
        assert_eq!(fake.read("memory.max"), (256u64 << 20).to_string());
        assert_eq!(fake.read("memory.swap.max"), "0");
        assert_eq!(fake.read("pids.max"), "16");
        fake.write("memory.events", "low 0\nhigh 0\nmax 4\noom 1\noom_kill 2\n");
        fake.write("pids.events", "max 3\n");
        fake.write(
            "cpu.stat",
            "usage_usec 1500000\nuser_usec 1000000\nsystem_usec 500000\n",
        );
        fake.write("memory.peak", "123456\n");
        // A reused cgroup: what was counted before this execution does not count.
        group.baseline = Counters {
            oom_kills: 2,
            failed_forks: 1,
            cpu_usec: 500_000,
        };
        let report = group.report();
        assert!(!report.oom_killed, "no new OOM kill since the baseline");
        assert!(report.process_limit_hit);
        assert_eq!(report.cpu_usec, Some(1_000_000));
        assert_eq!(report.peak_memory_bytes, Some(123_456));
        group.kill_all();
        assert_eq!(fake.read("cgroup.kill"), "1");
    }

    #[test]
    fn a_gateway_already_in_its_own_leaf_delegates_from_the_leafs_parent() {
        let leaf = own_leaf_name();
        assert_eq!(
            without_own_leaf(&format!("system.slice/s.service/{leaf}")),
            "system.slice/s.service"
        );
        assert_eq!(without_own_leaf(&leaf), "");
        assert_eq!(
            without_own_leaf("system.slice/s.service"),
            "system.slice/s.service"
        );
        assert_eq!(without_own_leaf("a/sluice-1-gateway"), "a/sluice-1-gateway");
        assert_eq!(without_own_leaf(""), "");
    }

    /// Runs `command` with `sh` inside `group` (moved in before it starts) and waits.
    fn run_inside(group: &ExecutionCgroup, command: &str) -> std::process::ExitStatus {
        use std::process::{Command, Stdio};
        let mut child = Command::new("/bin/sh")
            .arg("-c")
            .arg(format!("read _ && exec {command}"))
            .stdin(Stdio::piped())
            .spawn()
            .expect("sh starts");
        let dir = group.unified_dir().expect("a v2 cgroup");
        fs::write(dir.join("cgroup.procs"), child.id().to_string()).expect("into the cgroup");
        let mut go = child.stdin.take().expect("stdin");
        go.write_all(b"go\n").expect("go");
        drop(go);
        child.wait().expect("reaped")
    }

    /// The v2 path against the running kernel, where this process can make cgroups with
    /// memory and pids delegated (root on a host whose only hierarchy is cgroup2:
    /// scripts/vm/cgroup2-check.sh boots one); skipped elsewhere.
    #[test]
    #[allow(clippy::print_stderr)] // the skip reason is for the person reading the test run
    fn on_a_real_v2_hierarchy_the_limits_hold_and_a_reused_cgroup_counts_afresh() {
        let cgroups = Cgroups::probe();
        let v2_only = cgroups.memory.is_none() && cgroups.pids.is_none();
        if !(v2_only && cgroups.unified.as_ref().is_some_and(|u| u.memory && u.pids)) {
            cgroups.remove();
            eprintln!("skipped: no cgroup v2 hierarchy with memory and pids to delegate here");
            return;
        }
        // Another gateway of this process (the first may have moved it into a leaf)
        // delegates from the same place.
        let again = Cgroups::probe();
        let parent = |c: &Cgroups| {
            c.unified
                .as_ref()
                .and_then(|u| u.ours.parent().map(Path::to_path_buf))
        };
        assert!(again.unified.as_ref().is_some_and(|u| u.memory && u.pids));
        assert_eq!(parent(&again), parent(&cgroups));
        again.remove();

        // dd touches a 64 MiB buffer.
        let hog = "dd if=/dev/zero of=/dev/null bs=64M count=1";
        let first = cgroups
            .create(256 << 20, 16)
            .expect("create")
            .expect("a cgroup");
        assert!(run_inside(&first, hog).success());
        let report = first.report();
        assert!(
            report
                .peak_memory_bytes
                .is_some_and(|peak| peak >= 64 << 20),
            "{report:?}"
        );
        assert!(report.cpu_usec.is_some(), "{report:?}");
        drop(first);
        // The next execution (in the same cgroup where its peak can be reset) counts its own.
        let second = cgroups
            .create(256 << 20, 16)
            .expect("create")
            .expect("a cgroup");
        assert!(run_inside(&second, "true").success());
        let report = second.report();
        assert!(
            report.peak_memory_bytes.is_some_and(|peak| peak < 32 << 20),
            "an earlier execution's peak: {report:?}"
        );
        assert!(
            !report.oom_killed && !report.process_limit_hit,
            "{report:?}"
        );
        drop(second);

        // Without swap accounting a host with swap would page the hog out instead.
        let swap = fs::read_to_string("/proc/swaps").is_ok_and(|s| s.lines().count() > 1);
        let small = cgroups
            .create(32 << 20, 16)
            .expect("create")
            .expect("a cgroup");
        let swap_limited = small
            .unified_dir()
            .is_some_and(|dir| dir.join("memory.swap.max").exists());
        if !swap || swap_limited {
            assert!(!run_inside(&small, hog).success());
            assert!(small.report().oom_killed, "{:?}", small.report());
        }
        drop(small);

        let alone = cgroups
            .create(256 << 20, 1)
            .expect("create")
            .expect("a cgroup");
        // The shell is the one process: its fork fails.
        assert!(!run_inside(&alone, "sh -c '/bin/true; /bin/true'").success());
        assert!(alone.report().process_limit_hit, "{:?}", alone.report());
        drop(alone);
        cgroups.remove();
    }

    #[test]
    fn v2_controllers_are_delegated_where_the_parent_has_them() {
        let home = FakeCgroup::new("home");
        let ours = home.0.join("ours");
        fs::create_dir_all(&ours).expect("ours");
        home.write("cgroup.controllers", "cpuset cpu io memory pids\n");
        assert_eq!(delegate(&home.0, &ours), (true, true, true));
        assert_eq!(home.read("cgroup.subtree_control"), "+memory +pids +cpu");
        assert_eq!(
            fs::read_to_string(ours.join("cgroup.subtree_control")).unwrap_or_default(),
            "+memory +pids +cpu"
        );
        home.write("cgroup.controllers", "cpu io\n");
        assert_eq!(delegate(&home.0, &ours), (false, false, true));
        home.write("cgroup.controllers", "io\n");
        assert_eq!(delegate(&home.0, &ours), (false, false, false));
    }
}
