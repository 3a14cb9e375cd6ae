//! The user a program runs as when no jail gives it one. A gateway running as root never
//! starts a program as root: without the jail, each program drops to the sandbox uid and
//! gid (`--sandbox-uid`, `--sandbox-gid`, no supplementary groups) before it execs. What
//! that user can reach of the host's files decides which interpreters can serve and
//! where workspaces may live; this module answers both, from the files' mode bits.

use std::fmt;
use std::io::{self, Read as _};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

/// The unprivileged user and group unjailed programs of a root gateway run as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProgramUser {
    pub(crate) uid: u32,
    pub(crate) gid: u32,
}

/// Why the program user cannot use a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Unreachable {
    /// The path that stops it (the file itself, or a directory on the way).
    blocker: PathBuf,
    /// What it lacks there: "search", "execute" or "read".
    lacks: &'static str,
    mode: u32,
    owner: u32,
    user: ProgramUser,
}

impl fmt::Display for Unreachable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "uid {} cannot {} {} (mode {:04o}, owner uid {})",
            self.user.uid,
            self.lacks,
            self.blocker.display(),
            self.mode & 0o7777,
            self.owner
        )
    }
}

/// Permission bits, as in a file's mode.
const READ: u32 = 0o4;
const EXECUTE: u32 = 0o1;

impl ProgramUser {
    /// The user programs must drop to: the sandbox ids when the gateway is root and no
    /// jail runs its programs; `None` when they run as the gateway's own, unprivileged,
    /// user (or the jail picks their user).
    pub(crate) fn for_unjailed(jailed: bool, uid: u32, gid: u32) -> Option<Self> {
        (!jailed && crate::sys::is_root()).then_some(Self { uid, gid })
    }

    /// Whether this user can start `program`: search every directory on its way, and
    /// execute it (and read it, when it is a `#!` script). Mode bits only: an ACL that
    /// grants more is not counted, so the answer errs on the side of "no".
    pub(crate) fn can_run(&self, program: &Path) -> Result<(), Unreachable> {
        let program = program
            .canonicalize()
            .unwrap_or_else(|_| program.to_path_buf());
        self.can_search_to(&program)?;
        let wanted = if is_script(&program) {
            READ | EXECUTE
        } else {
            EXECUTE
        };
        self.allowed(&program, wanted)
    }

    /// Whether this user can search its way into `dir` (every directory down to it, and
    /// `dir` itself).
    pub(crate) fn can_enter(&self, dir: &Path) -> Result<(), Unreachable> {
        let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
        self.can_search_to(&dir)?;
        self.allowed(&dir, EXECUTE)
    }

    /// Hands `path` to this user (its workspace and the source file in it).
    pub(crate) fn give(&self, path: &Path) -> io::Result<()> {
        std::os::unix::fs::chown(path, Some(self.uid), Some(self.gid))
    }

    /// Every directory above `path` must be searchable.
    fn can_search_to(&self, path: &Path) -> Result<(), Unreachable> {
        let mut above: Vec<&Path> = path.ancestors().skip(1).collect();
        above.reverse();
        above
            .into_iter()
            .try_for_each(|dir| self.allowed(dir, EXECUTE))
    }

    /// Whether the mode bits of `path` that apply to this user grant `wanted`. A path
    /// that cannot be examined counts as not granted.
    fn allowed(&self, path: &Path, wanted: u32) -> Result<(), Unreachable> {
        let refuse = |mode: u32, owner: u32| Unreachable {
            blocker: path.to_path_buf(),
            lacks: if path.is_dir() {
                "search"
            } else if wanted & READ != 0 {
                "read and execute"
            } else {
                "execute"
            },
            mode,
            owner,
            user: *self,
        };
        let Ok(meta) = path.metadata() else {
            return Err(refuse(0, 0));
        };
        let mode = meta.mode();
        let granted = if meta.uid() == self.uid {
            mode >> 6
        } else if meta.gid() == self.gid {
            mode >> 3
        } else {
            mode
        } & 0o7;
        if granted & wanted == wanted {
            Ok(())
        } else {
            Err(refuse(mode, meta.uid()))
        }
    }
}

/// Whether `path` starts with `#!` (the kernel then needs to read it, not only map it).
fn is_script(path: &Path) -> bool {
    let mut start = [0_u8; 2];
    std::fs::File::open(path)
        .and_then(|mut file| file.read_exact(&mut start))
        .is_ok_and(|()| &start == b"#!")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn user() -> ProgramUser {
        ProgramUser {
            uid: 60_123,
            gid: 60_123,
        }
    }

    fn set_mode(path: &Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .expect("chmod in a scratch directory");
    }

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("sluice-user-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("inner")).expect("scratch directory");
        set_mode(&dir, 0o755);
        set_mode(&dir.join("inner"), 0o755);
        dir
    }

    #[test]
    fn a_program_behind_a_closed_directory_cannot_be_run() {
        let dir = scratch("closed");
        let program = dir.join("inner/tool");
        std::fs::write(&program, b"\x7fELF").expect("write");
        set_mode(&program, 0o755);
        assert_eq!(user().can_run(&program), Ok(()));
        set_mode(&dir.join("inner"), 0o700);
        let refused = user().can_run(&program).expect_err("inner is closed");
        assert_eq!(refused.blocker, dir.join("inner"));
        assert!(refused.to_string().contains("cannot search"), "{refused}");
        assert!(refused.to_string().contains("mode 0700"), "{refused}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_script_must_be_readable_a_binary_only_executable() {
        let dir = scratch("script");
        let binary = dir.join("inner/binary");
        let script = dir.join("inner/script");
        std::fs::write(&binary, b"\x7fELF").expect("write");
        std::fs::write(&script, b"#!/bin/sh\n").expect("write");
        set_mode(&binary, 0o711);
        set_mode(&script, 0o711);
        assert_eq!(user().can_run(&binary), Ok(()));
        let refused = user().can_run(&script).expect_err("an unreadable script");
        assert_eq!(refused.lacks, "read and execute");
        set_mode(&script, 0o755);
        assert_eq!(user().can_run(&script), Ok(()));
        set_mode(&binary, 0o700);
        assert!(user().can_run(&binary).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_owner_bits_apply_to_the_owner() {
        let dir = scratch("owner");
        let owned_by_us = ProgramUser {
            uid: crate::sys::effective_uid(),
            gid: 60_123,
        };
        set_mode(&dir.join("inner"), 0o700);
        assert_eq!(owned_by_us.can_enter(&dir.join("inner")), Ok(()));
        assert!(user().can_enter(&dir.join("inner")).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
