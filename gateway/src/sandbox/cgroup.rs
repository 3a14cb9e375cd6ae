//! Control groups: one per execution, under the gateway's own, for the limits and the
//! accounting that must cover a whole process tree (memory, processes) and for killing
//! every process of an execution, including ones that left its process group.
//!
//! A program must be inside its cgroup before it runs: moving it after the spawn lets
//! what it forks meanwhile escape (a cgroup move can take milliseconds). So the thread
//! that spawns moves itself into the execution's cgroup, spawns (the child is born
//! inside), and moves back. Only cgroup v1 moves single threads; on a host with the v2
//! layout alone, memory and process limits are not enforced yet (`sluice doctor` says
//! so).

use std::fs;
use std::io;
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

/// Where the gateway may create execution cgroups, found at start-up.
#[derive(Debug, Default)]
pub(crate) struct Cgroups {
    memory: Option<Hierarchy>,
    pids: Option<Hierarchy>,
    /// Empty execution cgroups kept for reuse: creating and removing the directories
    /// is most of what a cgroup costs per execution.
    pool: Pool,
}

/// Most empty execution cgroups kept for reuse.
const POOL_SIZE: usize = 64;

type Pool = Arc<Mutex<Vec<(Option<Member>, Option<Member>)>>>;

/// What this host's cgroups give, for `sluice doctor` and the start-up log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Capabilities {
    pub(crate) memory: Option<&'static str>,
    pub(crate) processes: Option<&'static str>,
    pub(crate) kill_tree: Option<&'static str>,
}

impl Cgroups {
    /// Finds the gateway's v1 memory and pids cgroups in `/proc/self/cgroup` and
    /// creates a directory for this gateway in each it can write to. Directories left
    /// by gateways that are gone are removed.
    pub(crate) fn probe() -> Self {
        let Ok(table) = fs::read_to_string("/proc/self/cgroup") else {
            return Self::default();
        };
        let mut found = Self::default();
        for line in table.lines() {
            let mut fields = line.splitn(3, ':');
            let (Some(_), Some(controllers), Some(path)) =
                (fields.next(), fields.next(), fields.next())
            else {
                continue;
            };
            let relative = path.trim_start_matches('/');
            let controllers: Vec<&str> = controllers.split(',').collect();
            if controllers.contains(&"memory") {
                found.memory = hierarchy(
                    Path::new("/sys/fs/cgroup/memory"),
                    relative,
                    "memory.limit_in_bytes",
                );
            } else if controllers.contains(&"pids") {
                found.pids = hierarchy(Path::new("/sys/fs/cgroup/pids"), relative, "pids.max");
            }
        }
        found
    }

    pub(crate) fn capabilities(&self) -> Capabilities {
        Capabilities {
            memory: self
                .memory
                .as_ref()
                .map(|_| "cgroup v1 memory (memory.limit_in_bytes, OOM kills counted)"),
            processes: self.pids.as_ref().map(|_| "cgroup v1 pids (pids.max)"),
            kill_tree: self
                .pids
                .as_ref()
                .or(self.memory.as_ref())
                .map(|_| "cgroup v1 membership (every process SIGKILLed)"),
        }
    }

    /// A new cgroup for one execution, with its limits set. `Ok(None)` when the host
    /// offers no cgroup at all.
    pub(crate) fn create(
        &self,
        memory_bytes: u64,
        processes: u64,
    ) -> io::Result<Option<ExecutionCgroup>> {
        if self.memory.is_none() && self.pids.is_none() {
            return Ok(None);
        }
        let reused = self
            .pool
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        if let Some((memory, pids)) = reused {
            let mut group = ExecutionCgroup {
                memory,
                pids,
                processes,
                removed: false,
                pool: Some(self.pool.clone()),
                baseline: (0, 0),
            };
            // A reused cgroup may refuse a limit below what it still has charged (page
            // cache): then it goes (dropped, so removed) and a fresh one is made.
            if group.set_limits(memory_bytes, processes).is_ok() {
                group.baseline = group.counters();
                return Ok(Some(group));
            }
        }
        let name = format!("x{}", NEXT_GROUP.fetch_add(1, Ordering::Relaxed));
        let make = |hierarchy: &Option<Hierarchy>| -> io::Result<Option<Member>> {
            let Some(hierarchy) = hierarchy else {
                return Ok(None);
            };
            let dir = hierarchy.ours.join(&name);
            fs::create_dir(&dir)?;
            Ok(Some(Member {
                dir,
                home: hierarchy.home.clone(),
            }))
        };
        let mut group = ExecutionCgroup {
            memory: None,
            pids: None,
            processes,
            removed: false,
            pool: Some(self.pool.clone()),
            baseline: (0, 0),
        };
        // Assigned one by one, so a failure halfway still removes what was made.
        group.memory = make(&self.memory)?;
        group.pids = make(&self.pids)?;
        group.set_limits(memory_bytes, processes)?;
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
        for (memory, pids) in pooled {
            for member in [memory, pids].into_iter().flatten() {
                let _ = fs::remove_dir(&member.dir);
            }
        }
        for hierarchy in [&self.memory, &self.pids].into_iter().flatten() {
            let _ = fs::remove_dir(&hierarchy.ours);
        }
    }
}

/// `<mount>/<relative>` and our `sluice-<pid>-<n>` directory under it, if everything an
/// execution needs works there (a child directory, its `limit` file, moving a thread in
/// and back). Removes the empty directories of gateways that are no longer running.
fn hierarchy(mount: &Path, relative: &str, limit: &str) -> Option<Hierarchy> {
    let home = mount.join(relative);
    if let Ok(entries) = fs::read_dir(&home) {
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(pid) = name
                .to_str()
                .and_then(|n| n.strip_prefix("sluice-"))
                .and_then(|rest| rest.split('-').next())
            else {
                continue;
            };
            if !Path::new("/proc").join(pid).exists() {
                // Execution cgroups first, then the gateway's own (all empty by now).
                if let Ok(children) = fs::read_dir(entry.path()) {
                    for child in children.flatten().filter(|c| c.path().is_dir()) {
                        let _ = fs::remove_dir(child.path());
                    }
                }
                let _ = fs::remove_dir(entry.path());
            }
        }
    }
    let ours = home.join(format!(
        "sluice-{}-{}",
        std::process::id(),
        NEXT_GATEWAY.fetch_add(1, Ordering::Relaxed)
    ));
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
    memory: Option<Member>,
    pids: Option<Member>,
    /// The process limit; `pids.max` is one higher while a gateway thread is inside.
    processes: u64,
    removed: bool,
    /// Where it goes back when its execution is over.
    pool: Option<Pool>,
    /// The OOM-kill and failed-fork counters when this execution got it (a reused
    /// cgroup's counters keep counting).
    baseline: (u64, u64),
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
        [&self.memory, &self.pids].into_iter().flatten()
    }

    /// Runs `spawn` with the calling thread inside this cgroup, so the process it
    /// creates is born inside; the thread moves back before this returns.
    pub(crate) fn spawn_inside<T>(&self, spawn: impl FnOnce() -> T) -> io::Result<T> {
        let tid = crate::sys::thread_id().to_string();
        // The spawning thread counts while it is inside: room for it, then the limit.
        let pids_max = |n: u64| match &self.pids {
            Some(pids) => fs::write(pids.dir.join("pids.max"), n.to_string()),
            None => Ok(()),
        };
        pids_max(self.processes.saturating_add(1))?;
        let mut entered = Vec::new();
        for member in self.members() {
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
        if let Some(memory) = &self.memory {
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
        }
        if let Some(pids) = &self.pids {
            fs::write(pids.dir.join("pids.max"), processes.to_string())?;
        }
        Ok(())
    }

    /// The OOM-kill and failed-fork counters as the kernel has them now.
    fn counters(&self) -> (u64, u64) {
        let counter = |dir: Option<&PathBuf>, file: &str, key: &str| -> u64 {
            dir.and_then(|dir| fs::read_to_string(dir.join(file)).ok())
                .and_then(|text| {
                    text.lines().find_map(|line| {
                        let (name, value) = line.split_once(' ')?;
                        (name == key).then(|| value.trim().parse().ok())?
                    })
                })
                .unwrap_or(0)
        };
        (
            counter(
                self.memory.as_ref().map(|m| &m.dir),
                "memory.oom_control",
                "oom_kill",
            ),
            counter(self.pids.as_ref().map(|m| &m.dir), "pids.events", "max"),
        )
    }

    /// What the limits caught so far.
    pub(crate) fn report(&self) -> CgroupReport {
        let memory = self.memory.as_ref().map(|m| &m.dir);
        let (oom, forks) = self.counters();
        CgroupReport {
            oom_killed: oom > self.baseline.0,
            process_limit_hit: forks > self.baseline.1,
            peak_memory_bytes: memory
                .and_then(|dir| fs::read_to_string(dir.join("memory.max_usage_in_bytes")).ok())
                .and_then(|text| text.trim().parse().ok()),
        }
    }

    /// SIGKILLs every process in the cgroup, wherever it moved in its process tree.
    pub(crate) fn kill_all(&self) {
        for member in self.members() {
            for pid in members(&member.dir) {
                let _ = crate::sys::kill(pid);
            }
        }
    }

    /// True once no process is left in it.
    pub(crate) fn is_empty(&self) -> bool {
        self.members().all(|member| members(&member.dir).is_empty())
    }

    /// Gives the (empty) cgroup back for another execution, or removes it when the
    /// pool is full.
    pub(crate) fn recycle(&mut self) {
        if let Some(pool) = self.pool.take() {
            let mut pool = pool.lock().unwrap_or_else(PoisonError::into_inner);
            if pool.len() < POOL_SIZE && self.is_empty() {
                pool.push((self.memory.take(), self.pids.take()));
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
