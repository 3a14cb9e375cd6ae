//! Finding the processes a cell started, so they end with the cell: the interpreter's
//! cgroup's process list, or without a cgroup its descendants through `/proc`, told
//! apart from the interpreter (and, jailed, the jail and its init) by PID namespace.

use crate::sys;
use std::path::Path;

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
pub(super) fn listed(file: &Path) -> Vec<u32> {
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
pub(super) fn descendants(root: u32) -> Vec<u32> {
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

/// Kills every process the cells of interpreter `leader` started, leaving the
/// interpreter (and, `jailed`, its jail and init): called when a cell is over, however
/// it ended. Repeats while it finds processes alive, so a fork that was under way in the
/// first pass is caught in the next.
pub(super) fn kill_all(leader: u32, jailed: bool, procs: Option<&Path>) {
    // The gateway's own depth never changes: read once.
    static OWN_DEPTH: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let own_depth = *OWN_DEPTH.get_or_init(|| namespace_depth("self"));
    let mut killed = std::collections::HashSet::new();
    for _ in 0..CELL_KILL_PASSES {
        let candidates = match procs {
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
                jailed && process.depth == own_depth + 1 && process.inner_pid <= 2;
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
