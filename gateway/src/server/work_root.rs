//! The work root: the private directory holding every execution's working directory,
//! made at start-up (where it is cheapest: `/dev/shm` when a tmpfs), opened to the
//! program user where one is needed, and removed when the gateway stops; the ones that
//! dead gateways left behind are removed when the next one starts.

use super::GatewayError;
use crate::sandbox::ProgramUser;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// The directory holding every execution's working directory; removed when dropped.
#[derive(Debug)]
pub(super) struct WorkRoot {
    pub(super) path: PathBuf,
}

impl WorkRoot {
    pub(super) fn create(base: Option<&Path>) -> Result<Self, GatewayError> {
        let base = base
            .map(Path::to_path_buf)
            .unwrap_or_else(default_work_base);
        remove_stale_roots(&base);
        std::fs::create_dir_all(&base).map_err(|cause| GatewayError::WorkRoot {
            path: base.clone(),
            cause,
        })?;
        // A fresh, private directory: never reuse one someone else prepared. Several
        // gateways may share a process (tests, embedders) and the clock may be coarse, so a
        // name already taken means "try the next one", never "fail".
        static NEXT_ROOT: AtomicU64 = AtomicU64::new(0);
        let path = loop {
            let serial = NEXT_ROOT.fetch_add(1, Ordering::Relaxed);
            let path = base.join(format!(
                "sluice-{}-{}-{serial}",
                std::process::id(),
                nanos()
            ));
            use std::os::unix::fs::DirBuilderExt as _;
            match std::fs::DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => break path,
                Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(cause) => return Err(GatewayError::WorkRoot { path, cause }),
            }
        };
        tracing::info!(path = %path.display(), "execution working directories go here");
        Ok(Self { path })
    }

    /// Lets `user` search (not list) the root, so each program can enter the working
    /// directory it is given; refuses when a directory above shuts that user out.
    pub(super) fn open_to(&self, user: ProgramUser) -> Result<(), GatewayError> {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&self.path, std::fs::Permissions::from_mode(0o711)).map_err(
            |cause| GatewayError::WorkRoot {
                path: self.path.clone(),
                cause,
            },
        )?;
        user.can_enter(&self.path).map_err(|why| {
            GatewayError::Isolation(format!(
                "the work directory {} is out of reach of the sandbox user that programs run as without the jail: {why}; choose a --work-dir that other users can reach",
                self.path.display()
            ))
        })
    }
}

/// Removes work roots left by gateways that died without cleaning up (`sluice-PID-...`
/// whose PID no longer runs).
fn remove_stale_roots(base: &Path) {
    for root in crate::leftovers::left_by_dead_gateways(base) {
        // Session workspaces (a tmpfs each) a dead gateway left mounted go first.
        for mount in crate::leftovers::mounts_under(&root) {
            if let Err(err) = crate::sys::beneath::unmount(&mount) {
                tracing::debug!(path = %mount.display(), %err, "could not unmount a stale workspace");
            }
        }
        match std::fs::remove_dir_all(&root) {
            Ok(()) => tracing::info!(path = %root.display(), "removed a stale work root"),
            Err(err) => {
                tracing::debug!(path = %root.display(), %err, "could not remove a stale work root")
            }
        }
    }
}

/// `/dev/shm` when it is a tmpfs (creating a directory and a file there costs a few
/// microseconds; on a disk file system it can cost a hundred), else the temp directory.
fn default_work_base() -> PathBuf {
    let shm = Path::new("/dev/shm");
    let on_tmpfs = std::fs::read_to_string("/proc/self/mounts")
        .map(|mounts| {
            mounts.lines().any(|line| {
                let mut fields = line.split_whitespace().skip(1);
                fields.next() == Some("/dev/shm") && fields.next() == Some("tmpfs")
            })
        })
        .unwrap_or(false);
    let writable =
        on_tmpfs && std::fs::metadata(shm).is_ok_and(|m| m.is_dir() && !m.permissions().readonly());
    if writable {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

impl Drop for WorkRoot {
    fn drop(&mut self) {
        // A workspace still held somewhere (it is unmounted when let go) must not keep
        // the root: detached now, it goes once the last holder closes it.
        for mount in crate::leftovers::mounts_under(&self.path) {
            let _ = crate::sys::beneath::unmount(&mount);
        }
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

fn nanos() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
}
