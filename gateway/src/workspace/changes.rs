//! `files_changed`: what changed in a workspace since the last look, by comparing two
//! snapshots (each path's kind, size, modification time and inode), taken at the end of
//! each execution and after each file frame. A diff rather than inotify: nothing to
//! watch while nobody asks, no watch per directory to run out of, and a program cannot
//! flood the gateway with events; the price is a walk of the workspace per look, bounded
//! in entries ([`MAX_SNAPSHOT_ENTRIES`]), depth ([`MAX_SNAPSHOT_DEPTH`]) and time
//! ([`SNAPSHOT_TIME`]), each directory opened through its parent (so depth costs
//! nothing extra), one walk at a time per workspace.

use super::files::entries_of;
use super::Workspace;
use crate::sys::beneath;
use sluice_protocol::{FileChanges, MAX_CHANGED_PATHS};
use std::collections::BTreeMap;
use std::os::fd::{AsFd as _, OwnedFd};
use std::os::unix::fs::MetadataExt as _;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::{PoisonError, TryLockError};
use std::time::{Duration, Instant};

/// The most entries a snapshot records; a workspace with more is compared in part
/// (and the `files_changed` says `truncated`).
const MAX_SNAPSHOT_ENTRIES: usize = 20_000;

/// How deep a snapshot looks below the workspace; deeper entries are not compared.
const MAX_SNAPSHOT_DEPTH: usize = 64;

/// How long one snapshot may walk; what it has not reached by then is not compared.
const SNAPSHOT_TIME: Duration = Duration::from_millis(250);

/// What a path was when looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seen {
    is_dir: bool,
    size: u64,
    mtime_ns: i128,
    inode: u64,
}

/// Every path of a workspace (relative to it) and what it was.
#[derive(Debug, Default, Clone)]
pub(super) struct Snapshot {
    paths: BTreeMap<String, Seen>,
    /// The walk stopped short (entries, depth or time): what it did not reach is
    /// carried forward from the snapshot before.
    partial: bool,
}

/// A directory still to be walked: opened through its parent, which stays open until
/// its last pending child is.
struct Pending {
    parent: Rc<OwnedFd>,
    name: String,
    path: String,
    depth: usize,
}

impl Workspace {
    /// What changed since the last look (the first: since the workspace was made), and
    /// whether the answer is cut short. `wait`: an execution's end, which waits its turn
    /// and always gets its own answer (its `files_changed`, with its id, comes before
    /// its terminal event). Otherwise (a file frame) `None` when a look is under way:
    /// that look then walks once more for it when it is done, so a burst of frames costs
    /// at most two walks at a time instead of one each, and no ask waits on another's.
    /// Blocking: a walk.
    pub(crate) fn changes(&self, wait: bool) -> Option<(FileChanges, bool)> {
        let mut seen = if wait {
            self.seen.lock().unwrap_or_else(PoisonError::into_inner)
        } else {
            match self.seen.try_lock() {
                Ok(seen) => seen,
                Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
                Err(TryLockError::WouldBlock) => {
                    self.unseen.store(true, Ordering::SeqCst);
                    return None;
                }
            }
        };
        self.unseen.store(false, Ordering::SeqCst);
        let mut now = self.snapshot(&seen);
        // Once more (and only once) for the frames that asked during the walk.
        if self.unseen.swap(false, Ordering::SeqCst) {
            now = self.snapshot(&seen);
        }
        let (changes, cut) = compare(&seen, &now);
        let truncated = cut || now.partial;
        *seen = now;
        Some((changes, truncated))
    }

    /// The workspace now. Where the walk stops short (entries, depth, time, a directory
    /// cut or gone), what `before` had there is carried forward, so that what was not
    /// looked at is never reported as deleted (nor, next time, as created).
    fn snapshot(&self, before: &Snapshot) -> Snapshot {
        let started = Instant::now();
        let mut snapshot = Snapshot::default();
        let mut unreached = Vec::new();
        let Ok(root) = beneath::open(self.root.as_fd(), "", DIRECTORY, 0) else {
            return before.clone();
        };
        let mut pending = Vec::new();
        self.look_into(
            &mut snapshot,
            &mut pending,
            &mut unreached,
            Rc::new(root),
            "",
            0,
        );
        while let Some(next) = pending.pop() {
            if started.elapsed() > SNAPSHOT_TIME || snapshot.paths.len() >= MAX_SNAPSHOT_ENTRIES {
                unreached.push(next.path);
                unreached.extend(pending.drain(..).map(|p| p.path));
                break;
            }
            // Relative to its parent, one name: a walk costs the same at any depth.
            let Ok(dir) = beneath::open(next.parent.as_fd(), &next.name, DIRECTORY, 0) else {
                // Gone or swapped for a link meanwhile: what it held is looked at next time.
                unreached.push(next.path);
                continue;
            };
            drop(next.parent);
            let path = next.path;
            self.look_into(
                &mut snapshot,
                &mut pending,
                &mut unreached,
                Rc::new(dir),
                &path,
                next.depth,
            );
        }
        snapshot.partial = !unreached.is_empty();
        for dir in unreached {
            carry_forward(before, &mut snapshot, &dir);
        }
        snapshot
    }

    /// Records the entries of `dir` (at `dir_path`) and queues its directories; a
    /// directory cut short, or too deep to walk, joins `unreached`.
    fn look_into(
        &self,
        snapshot: &mut Snapshot,
        pending: &mut Vec<Pending>,
        unreached: &mut Vec<String>,
        dir: Rc<OwnedFd>,
        dir_path: &str,
        depth: usize,
    ) {
        let room = MAX_SNAPSHOT_ENTRIES.saturating_sub(snapshot.paths.len());
        let Ok((entries, more)) = entries_of(dir.as_fd(), dir_path.is_empty(), room) else {
            unreached.push(dir_path.to_owned());
            return;
        };
        if more {
            unreached.push(dir_path.to_owned());
        }
        for (name, meta) in entries {
            let path = if dir_path.is_empty() {
                name.clone()
            } else {
                format!("{dir_path}/{name}")
            };
            let seen = Seen {
                is_dir: meta.is_dir(),
                size: if meta.is_dir() { 0 } else { meta.len() },
                mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
                inode: meta.ino(),
            };
            if seen.is_dir {
                if depth + 1 < MAX_SNAPSHOT_DEPTH {
                    pending.push(Pending {
                        parent: Rc::clone(&dir),
                        name,
                        path: path.clone(),
                        depth: depth + 1,
                    });
                } else {
                    unreached.push(path.clone());
                }
            }
            snapshot.paths.insert(path, seen);
        }
    }
}

/// Copies into `now` what `before` had under the directory `dir` (`""`: the whole
/// workspace) and `now` lacks: the part of the workspace a walk did not look at.
fn carry_forward(before: &Snapshot, now: &mut Snapshot, dir: &str) {
    let prefix = if dir.is_empty() {
        String::new()
    } else {
        format!("{dir}/")
    };
    for (path, seen) in before.paths.range(prefix.clone()..) {
        if !path.starts_with(&prefix) {
            break;
        }
        now.paths.entry(path.clone()).or_insert(*seen);
    }
}

/// How directories are opened for a walk.
const DIRECTORY: i32 = libc::O_RDONLY | libc::O_DIRECTORY;

/// The paths created, modified and deleted from `before` to `after`, at most
/// [`MAX_CHANGED_PATHS`] in all; and whether there were more. A directory whose
/// entries changed is not itself reported as modified (its entries are).
fn compare(before: &Snapshot, after: &Snapshot) -> (FileChanges, bool) {
    let mut changes = FileChanges::default();
    let mut count = 0;
    let mut cut = false;
    let mut note = |list: &mut Vec<String>, path: &str| {
        if count < MAX_CHANGED_PATHS {
            list.push(path.to_owned());
            count += 1;
        } else {
            cut = true;
        }
    };
    for (path, now) in &after.paths {
        match before.paths.get(path) {
            None => note(&mut changes.created, path),
            Some(was) if was.is_dir && now.is_dir => {}
            Some(was) if was != now => note(&mut changes.modified, path),
            Some(_) => {}
        }
    }
    for path in before.paths.keys() {
        if !after.paths.contains_key(path) {
            note(&mut changes.deleted, path);
        }
    }
    (changes, cut)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(entries: &[(&str, bool, u64, i128)]) -> Snapshot {
        Snapshot {
            paths: entries
                .iter()
                .map(|&(path, is_dir, size, mtime_ns)| {
                    let seen = Seen {
                        is_dir,
                        size,
                        mtime_ns,
                        inode: 1,
                    };
                    (path.to_owned(), seen)
                })
                .collect(),
            partial: false,
        }
    }

    #[test]
    fn created_modified_and_deleted_paths_are_told_apart() {
        let before = snapshot(&[("a", false, 1, 1), ("d", true, 0, 1), ("d/x", false, 1, 1)]);
        let after = snapshot(&[("a", false, 2, 2), ("d", true, 0, 5), ("n", false, 0, 3)]);
        let (changes, cut) = compare(&before, &after);
        assert!(!cut);
        assert_eq!(changes.created, ["n"]);
        assert_eq!(changes.modified, ["a"]);
        assert_eq!(changes.deleted, ["d/x"]);
    }

    #[test]
    fn what_a_walk_did_not_reach_is_carried_forward_not_deleted() {
        let before = snapshot(&[
            ("a", true, 0, 1),
            ("a/x", false, 1, 1),
            ("b", true, 0, 1),
            ("b/y", false, 1, 1),
            ("by", false, 1, 1),
        ]);
        // The walk reached the top and `a` (whose `x` is gone), not `b`.
        let mut now = snapshot(&[("a", true, 0, 1), ("b", true, 0, 1), ("by", false, 1, 1)]);
        carry_forward(&before, &mut now, "b");
        let (changes, _) = compare(&before, &now);
        assert_eq!(changes.deleted, ["a/x"]);
        assert!(changes.created.is_empty() && changes.modified.is_empty());
        // A cut at the top keeps everything the walk did not see.
        let mut nothing = Snapshot::default();
        carry_forward(&before, &mut nothing, "");
        assert_eq!(compare(&before, &nothing).0, FileChanges::default());
    }

    #[test]
    fn a_long_list_is_cut_and_says_so() {
        let names: Vec<String> = (0..MAX_CHANGED_PATHS + 5)
            .map(|n| format!("f{n}"))
            .collect();
        let after = Snapshot {
            paths: names
                .iter()
                .map(|name| {
                    let seen = Seen {
                        is_dir: false,
                        size: 0,
                        mtime_ns: 0,
                        inode: 1,
                    };
                    (name.clone(), seen)
                })
                .collect(),
            partial: false,
        };
        let (changes, cut) = compare(&Snapshot::default(), &after);
        assert!(cut);
        assert_eq!(changes.created.len(), MAX_CHANGED_PATHS);
    }
}
