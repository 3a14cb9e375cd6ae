//! The v1 CPU group that light executions share ([`SharedCpu`]), and the move of an
//! execution's processes into a CPU group of its own once it forks or turns heavy.
//!
//! A CPU cgroup per execution costs the scheduler at every wake-up and tick (a run queue
//! per group and CPU, a weight to update up the tree) and costs a directory to make and
//! remove: at 1000 live programs that doubled the time to start them and took a third of
//! the 50 ms p99 event-latency target (`sluice load --live 1000`). Most executions never
//! use much CPU or fork, so they share one group (where each task weighs the same, and a
//! single-process execution is one task). The fairness that per-execution groups gave is
//! kept where it matters: an execution found, at one of its CPU checks, with more
//! processes than its program (and the jail's two) gets a group of its own at the full
//! weight, so its processes count once between them; and at [`super::HEAVY_CPU_USEC`]
//! of CPU an execution gets (or keeps) a group of its own at a sixteenth of the weight,
//! for the rest of its run. That needs the whole tree's CPU time, which only the v2
//! hierarchy counts, so without it every execution keeps a group of its own from the
//! start.
//!
//! Only v1 can do this: v2 moves a process between cgroups in every controller at once,
//! so an execution's CPU group is its memory and process group too.

use super::execution::{members, Member};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// The name of the shared group's directory, under the gateway's own CPU cgroup.
const LIGHT: &str = "light";

/// Most passes over an execution's processes when moving them: a pass moves what the
/// previous ones had not seen (what was forked meanwhile), so a tree that forks faster
/// than it is moved keeps what is left where it was (logged), within its process limit.
const MOVE_PASSES: usize = 16;

static NEXT_OWN_GROUP: AtomicU64 = AtomicU64::new(0);

/// Most groups of their own kept for a later removal (see [`SharedCpu::stale`]).
const MAX_STALE: usize = 1024;

/// The group light executions share, and where heavy ones get their own.
#[derive(Debug)]
pub(crate) struct SharedCpu {
    /// `<gateway's cpu cgroup>/sluice-<pid>-<n>/light`.
    light: Member,
    /// `<gateway's cpu cgroup>/sluice-<pid>-<n>`: the parent of both.
    ours: PathBuf,
    /// Groups of their own that could not be removed yet (a process of the execution
    /// was still exiting in one: `EBUSY`), tried again at the next removal and at the
    /// end; the gateway's next start removes what is left after a crash.
    stale: std::sync::Mutex<Vec<PathBuf>>,
}

impl SharedCpu {
    /// Makes the shared group under `ours`, weighing `shares` (`cpu.shares`).
    pub(super) fn make(ours: &Path, home: &Path, shares: u64) -> Option<Self> {
        let dir = ours.join(LIGHT);
        let made = fs::create_dir(&dir)
            .and_then(|()| fs::write(dir.join("cpu.shares"), shares.to_string()));
        match made {
            Ok(()) => Some(Self {
                light: Member {
                    dir,
                    home: home.to_path_buf(),
                },
                ours: ours.to_path_buf(),
                stale: std::sync::Mutex::default(),
            }),
            Err(err) => {
                tracing::warn!(dir = %dir.display(), %err, "no shared CPU group for light executions; each gets its own");
                let _ = fs::remove_dir(&dir);
                None
            }
        }
    }

    /// The shared group's directory, which the spawning thread enters.
    pub(super) fn light(&self) -> &Member {
        &self.light
    }

    /// Gives the execution whose processes `listing` lists a group of its own weighing
    /// `shares`, and moves them there; with it, whether every one moved (see
    /// [`SharedCpu::sweep`]). `None` when the group cannot be made (logged; the execution
    /// stays in the shared one).
    pub(super) fn own_group(&self, listing: &Path, shares: u64) -> Option<(Member, bool)> {
        let name = format!("h{}", NEXT_OWN_GROUP.fetch_add(1, Ordering::Relaxed));
        let dir = self.ours.join(name);
        let made = fs::create_dir(&dir)
            .and_then(|()| fs::write(dir.join("cpu.shares"), shares.to_string()));
        if let Err(err) = made {
            tracing::warn!(dir = %dir.display(), %err, "could not give a heavy execution a CPU group of its own");
            let _ = fs::remove_dir(&dir);
            return None;
        }
        let complete = move_processes(listing, &dir, &self.light.home, &self.light.dir);
        let member = Member {
            dir,
            home: self.light.home.clone(),
        };
        Some((member, complete))
    }

    /// Gives `own` the weight `shares`; false when that fails (logged).
    pub(super) fn reweigh(&self, own: &Member, shares: u64) -> bool {
        let file = own.dir.join("cpu.shares");
        match fs::write(&file, shares.to_string()) {
            Ok(()) => true,
            Err(err) => {
                tracing::warn!(file = %file.display(), %err, "could not lower a heavy execution's CPU weight");
                false
            }
        }
    }

    /// Moves into `own` what `listing` still lists outside it; true when nothing is
    /// left outside.
    pub(super) fn sweep(&self, listing: &Path, own: &Member) -> bool {
        move_processes(listing, &own.dir, &self.light.home, &self.light.dir)
    }

    /// True when the execution `listing` lists has more live threads than `own` holds:
    /// some are still outside it. Threads on both sides (v2 `cgroup.threads` or v1
    /// `tasks`, against v1 `tasks`), never `pids.current`, which counts zombies that no
    /// listing shows (an unreaped child would make every check sweep).
    pub(super) fn left_behind(&self, listing: &Path, own: &Member) -> bool {
        live_threads(listing) > live_threads(&own.dir)
    }

    /// Moves what `listing` lists back into the shared group and removes `own` (or,
    /// while a process of the execution is still exiting in it, keeps it for later).
    /// Nothing is moved once `own` holds no process: the execution is over, and its
    /// `listing` (a pooled cgroup) may already be another execution's.
    pub(super) fn back_to_shared(&self, listing: &Path, own: Member) {
        if !members(&own.dir).is_empty() {
            move_processes(listing, &self.light.dir, &self.light.home, &self.light.dir);
        }
        self.remove_own(own);
    }

    /// Removes `own`, or keeps it in [`Self::stale`] while a process is still exiting in
    /// it; tries the ones kept before again.
    fn remove_own(&self, own: Member) {
        let mut stale = self
            .stale
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        stale.retain(|dir| {
            fs::remove_dir(dir).is_err_and(|err| err.kind() != std::io::ErrorKind::NotFound)
        });
        match fs::remove_dir(&own.dir) {
            Ok(()) => {}
            Err(err) if err.raw_os_error() == Some(libc::EBUSY) && stale.len() < MAX_STALE => {
                stale.push(own.dir);
            }
            Err(err) => {
                tracing::warn!(dir = %own.dir.display(), %err, "could not remove an execution's CPU group");
            }
        }
    }

    /// Removes the shared group (at shutdown, once every execution is gone).
    pub(super) fn remove(&self) {
        let stale = self
            .stale
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for dir in stale.iter() {
            let _ = fs::remove_dir(dir);
        }
        drop(stale);
        let _ = fs::remove_dir(&self.light.dir);
    }
}

/// [`move_processes_now`], without holding up the other tasks of the caller's async
/// worker: a whole-process move can wait for an RCU grace period (15-30 ms measured on a
/// v1 host), and the CPU checks that call this run on the pumps' workers. On a
/// multi-threaded runtime the worker hands its other tasks to another thread for the
/// duration (`block_in_place`); anywhere else (a blocking thread, a current-thread
/// runtime, no runtime) it runs as it is.
fn move_processes(listing: &Path, to: &Path, home: &Path, light: &Path) -> bool {
    let on_a_worker = tokio::runtime::Handle::try_current().is_ok_and(|runtime| {
        runtime.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread
    });
    if on_a_worker {
        tokio::task::block_in_place(|| move_processes_now(listing, to, home, light))
    } else {
        move_processes_now(listing, to, home, light)
    }
}

/// Moves every process `listing` (another hierarchy's directory of the same execution)
/// lists into the v1 CPU cgroup `to`. A process forked before its parent moved shows up
/// in the next pass; one forked after is born in `to`. Done when a pass moves nothing.
///
/// The pids come from the kernel's own listing, never from the program, but a listed
/// process may exit and its pid be reused before it is written (a program can churn
/// through the 32768 pids in seconds, and a pass over 1000 processes takes a while): so
/// each process is held by a pidfd ([`crate::sys::ProcessHandle`]) from before its
/// `/proc/<pid>/cgroup` is read until after its write. The table must show it still in
/// the execution's (`listing`) and not yet in `to`, so that another execution's process
/// or the gateway's own (a v1 `cgroup.procs` write moves a thread's whole process) is
/// not moved, and a pid reused inside the execution is not taken for one already moved;
/// it is written only while unreaped (its pid can name no other process), and if it was
/// reaped by the time the write returned, whatever has the pid now is checked and, if
/// it is not the execution's, put back ([`put_back`]).
/// False when it gave up with processes left behind.
fn move_processes_now(listing: &Path, to: &Path, home: &Path, light: &Path) -> bool {
    let moved = move_listed(
        listing,
        to,
        |v2, cpu| v2.is_some_and(|v2| names(listing, v2)) && !cpu.is_some_and(|cpu| names(to, cpu)),
        |pid| {
            keep_gateway_home(to, home);
            put_back(pid, listing, to, home, light);
        },
    );
    if !moved {
        tracing::warn!(to = %to.display(), "an execution forked faster than it could be moved between CPU groups; the rest is moved at its next CPU check");
    }
    moved
}

/// After a write into `to` raced with a pid's reuse: if the pid went to one of the
/// gateway's own threads (a new blocking-pool thread, say), the v1 write moved the
/// whole gateway into `to`; it goes back to its own group `home`. Checked on the
/// gateway's own table, since a thread that is not its process's leader cannot be held
/// by a pidfd, and the gateway's pid cannot be reused while it runs.
fn keep_gateway_home(to: &Path, home: &Path) {
    let gateway = std::process::id();
    let moved = cgroup_table(gateway)
        .is_some_and(|table| whereabouts(&table).1.is_some_and(|cpu| names(to, cpu)));
    if moved {
        tracing::error!(to = %to.display(), "a pid reused while a process was moved between CPU groups was one of the gateway's threads; the gateway is put back in its own group");
        let _ = fs::write(home.join("cgroup.procs"), gateway.to_string());
    }
}

/// The passes both moves make: each process `listed` lists, held by a pidfd, whose
/// `/proc/<pid>/cgroup` table (its v2 and v1 cpu paths) passes `to_move`, is written
/// into `to` while unreaped; `raced` is told of a pid whose process was reaped by the
/// time the write returned. False when processes were left (a tree forking faster than
/// the passes, or one that could not be looked at).
fn move_listed(
    listed: &Path,
    to: &Path,
    to_move: impl Fn(Option<&str>, Option<&str>) -> bool,
    raced: impl Fn(u32),
) -> bool {
    let procs = to.join("cgroup.procs");
    for _ in 0..MOVE_PASSES {
        let mut moved_any = false;
        let mut unseen = false;
        for pid in members(listed) {
            let process = match crate::sys::ProcessHandle::open(pid) {
                Ok(process) => process,
                // Gone meanwhile: not an error.
                Err(err) if err.raw_os_error() == Some(libc::ESRCH) => continue,
                // Not looked at (out of descriptors, say): the move is not complete.
                Err(_) => {
                    unseen = true;
                    continue;
                }
            };
            let Some(table) = cgroup_table(pid) else {
                continue;
            };
            let (v2, cpu) = whereabouts(&table);
            if !to_move(v2, cpu) || !process.unreaped() {
                continue;
            }
            // A process that has exited meanwhile is not an error.
            let _ = fs::write(&procs, pid.to_string());
            if !process.unreaped() {
                raced(pid);
            }
            moved_any = true;
        }
        if !moved_any {
            return !unseen;
        }
    }
    false
}

/// After a write of `pid` into `to` raced with the end of the process it was meant for:
/// if whatever has the pid now is in `to` but not of the execution (`listing`), the
/// write moved it, and it goes back where such a process belongs: another execution's
/// into the shared group `light` (its own CPU checks move it on if it has a group of its
/// own), any other (the gateway's, most likely: its threads share the pid space) into
/// the gateway's own group `home`. The pid must have been reused between two system
/// calls, so this is logged as an error.
fn put_back(pid: u32, listing: &Path, to: &Path, home: &Path, light: &Path) {
    // The newcomer held as the moved process was: checked and written as one.
    let Ok(newcomer) = crate::sys::ProcessHandle::open(pid) else {
        return;
    };
    let Some(table) = cgroup_table(pid) else {
        return;
    };
    let (v2, cpu) = whereabouts(&table);
    if v2.is_some_and(|v2| names(listing, v2)) || !cpu.is_some_and(|cpu| names(to, cpu)) {
        return;
    }
    let back = if v2.is_some_and(|v2| a_sibling(listing, v2)) {
        light
    } else {
        home
    };
    // Where it would go back to is where it is (another light execution's process,
    // moved into the shared group): nothing was changed.
    if back == to || !newcomer.unreaped() {
        return;
    }
    tracing::error!(pid, to = %to.display(), back = %back.display(), "a pid was reused while its process was being moved between CPU groups; the new process is put back");
    let _ = fs::write(back.join("cgroup.procs"), pid.to_string());
}

/// True when the cgroup the kernel names `path` is another execution's: a sibling of
/// `listing` (the same parent, under the gateway's directory).
fn a_sibling(listing: &Path, path: &str) -> bool {
    let relative = Path::new(path.trim_start_matches('/'));
    match (listing.parent(), relative.parent()) {
        (Some(ours), Some(theirs)) if !theirs.as_os_str().is_empty() => {
            ours.ends_with(theirs) && !names(listing, path)
        }
        _ => false,
    }
}

/// How many threads a cgroup directory lists (v2 `cgroup.threads`, v1 `tasks`). A
/// gateway thread spawning into the execution counts while it passes through: at worst
/// one sweep that finds nothing to move.
fn live_threads(dir: &Path) -> usize {
    fs::read_to_string(dir.join("cgroup.threads"))
        .or_else(|_| fs::read_to_string(dir.join("tasks")))
        .map(|listed| {
            listed
                .lines()
                .filter(|line| !line.trim().is_empty())
                .count()
        })
        .unwrap_or(0)
}

/// `/proc/<pid>/cgroup` of a process, as one of its live threads sees it: a leader
/// that has exited while its threads run on (a zombie until the last one ends) shows
/// the root there, which would have it moved again at every pass. `None` for a process
/// on its way out (every thread shows the root): no execution's live process is there.
fn cgroup_table(pid: u32) -> Option<String> {
    let table = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    if !shows_the_root(&table) {
        return Some(table);
    }
    // A process that is exiting shows the root too: with no live thread elsewhere, it
    // is not moved (and not counted as moved).
    let threads = fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    threads
        .flatten()
        .filter(|entry| entry.file_name().to_str() != Some(pid.to_string().as_str()))
        .filter_map(|entry| fs::read_to_string(entry.path().join("cgroup")).ok())
        .find(|table| !shows_the_root(table))
}

/// True when a `/proc/<pid>/cgroup` table puts the process at the root of its v1 `cpu`
/// hierarchy (no execution's process is ever there).
fn shows_the_root(table: &str) -> bool {
    whereabouts(table).1 == Some("/")
}

/// A process's v2 cgroup and its v1 `cpu` cgroup, from its `/proc/<pid>/cgroup`, as the
/// kernel names them (from the hierarchy's root).
fn whereabouts(table: &str) -> (Option<&str>, Option<&str>) {
    let (mut v2, mut cpu) = (None, None);
    for (id, controllers, path) in super::membership(table) {
        if id == "0" && controllers.is_empty() {
            v2 = Some(path);
        } else if controllers.split(',').any(|c| c == "cpu") {
            cpu = Some(path);
        }
    }
    (v2, cpu)
}

/// True when `dir` (a directory under a hierarchy's mount) is the cgroup the kernel names
/// `path`: the root (`/`) never matches, an execution's cgroup is never the root.
fn names(dir: &Path, path: &str) -> bool {
    let relative = path.trim_start_matches('/');
    !relative.is_empty() && dir.ends_with(relative)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str =
        "9:name=systemd:/\n8:pids:/\n2:cpuacct:/\n1:cpu:/sluice-7-1/h3\n0::/sluice-7-2/x5\n";

    #[test]
    fn a_process_is_found_in_its_v2_and_v1_cpu_cgroups() {
        assert_eq!(
            whereabouts(TABLE),
            (Some("/sluice-7-2/x5"), Some("/sluice-7-1/h3"))
        );
        assert_eq!(whereabouts("garbage"), (None, None));
        let listing = Path::new("/sys/fs/cgroup/unified/sluice-7-2/x5");
        assert!(names(listing, "/sluice-7-2/x5"));
        // Another execution's, the gateway's (the root) and a longer name do not match.
        assert!(!names(listing, "/sluice-7-2/x6"));
        assert!(!names(listing, "/"));
        assert!(!names(listing, "/sluice-7-2/x55"));
        assert!(names(
            Path::new("/sys/fs/cgroup/cpu/sluice-7-1/h3"),
            "/sluice-7-1/h3"
        ));
    }

    #[test]
    fn another_executions_process_is_told_from_the_gateways() {
        let listing = Path::new("/sys/fs/cgroup/unified/sluice-7-2/x5");
        assert!(a_sibling(listing, "/sluice-7-2/x6"));
        assert!(!a_sibling(listing, "/sluice-7-2/x5"));
        assert!(!a_sibling(listing, "/"));
        assert!(!a_sibling(listing, "/system.slice/sshd.service"));
        assert!(!a_sibling(listing, "/sluice-7-2"));
    }

    #[test]
    fn a_process_handle_tells_a_reaped_process() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("sleep");
        let handle = crate::sys::ProcessHandle::open(child.id()).expect("pidfd");
        assert!(handle.unreaped());
        let _ = child.kill();
        let _ = child.wait();
        assert!(!handle.unreaped());
    }
}
