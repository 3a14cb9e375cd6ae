//! A session's workspace: a directory that outlives the session's executions (every
//! one starts in it, jailed or not, persistent cells included) and ends with the
//! session. Each is a tmpfs of its own (`limits.workspace_bytes`, and as many inodes as
//! a 4 KiB file each) mounted under the work root, so the kernel bounds it, owned by
//! the sandbox ids the session's programs all run as ([`Namespaces::lease_ids`]). That
//! takes a gateway running as root: elsewhere a workspace is refused.
//!
//! Programs of the session may change it at any moment, so everything the gateway does
//! in it (the file frames in `files`, an execution's source and `files`, the snapshots
//! `changes` compares) resolves paths beneath its open root and through no link
//! (`sys::beneath`).

mod changes;
mod files;

pub(crate) use files::FileError;

use crate::sandbox::namespaces::IdLease;
use crate::sandbox::{Namespaces, ProgramUser};
use crate::sys::beneath;
use std::fs::File;
use std::os::fd::AsFd as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Bytes per inode of a workspace's tmpfs (as the jail's scratch file system).
const BYTES_PER_INODE: u64 = 4096;

/// Fewest inodes a workspace offers, whatever its size.
const MIN_INODES: u64 = 1024;

static NEXT_WORKSPACE: AtomicU64 = AtomicU64::new(0);

/// Why a workspace could not be made.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CreateError {
    #[error("this gateway cannot keep workspaces: it does not run as root (each workspace is a tmpfs of its own, which only root may mount)")]
    NotRoot,
    #[error("could not make the workspace: {0}")]
    Io(#[from] std::io::Error),
}

/// A session's workspace; unmounted and removed when the last holder drops it.
#[derive(Debug)]
pub(crate) struct Workspace {
    path: PathBuf,
    /// The workspace's root, opened once: every path is resolved beneath it.
    root: File,
    /// Who owns its files: the ids its programs run as.
    owner: (u32, u32),
    /// The sandbox ids every jail of the session runs as, held while it lives.
    ids: Option<IdLease>,
    /// What the last `files_changed` was computed against.
    seen: Mutex<changes::Snapshot>,
    /// Someone asked what changed since the walk under way began (see `changes`).
    unseen: std::sync::atomic::AtomicBool,
    next_source: AtomicU64,
    /// A unit of the gateway's and the opener's workspace caps, given back on drop.
    _permits: Box<dyn std::fmt::Debug + Send + Sync>,
}

impl Workspace {
    /// Makes a workspace of `bytes` under `work_root` for programs jailed by `jail`, or
    /// run as `program_user`; `permits` are held until it is gone.
    pub(crate) fn create(
        work_root: &Path,
        jail: Option<&Namespaces>,
        program_user: Option<ProgramUser>,
        bytes: u64,
        permits: Box<dyn std::fmt::Debug + Send + Sync>,
    ) -> Result<Self, CreateError> {
        if !crate::sys::is_root() {
            return Err(CreateError::NotRoot);
        }
        let ids = match jail {
            Some(jail) => jail.lease_ids()?,
            None => None,
        };
        let owner = match (jail, program_user) {
            (Some(jail), _) => jail.host_ids(ids.as_ref()),
            (None, Some(user)) => (user.uid, user.gid),
            (None, None) => (crate::sys::effective_uid(), crate::sys::effective_gid()),
        };
        let path = work_root.join(format!(
            "w{}",
            NEXT_WORKSPACE.fetch_add(1, Ordering::Relaxed)
        ));
        use std::os::unix::fs::DirBuilderExt as _;
        std::fs::DirBuilder::new().mode(0o700).create(&path)?;
        let inodes = (bytes / BYTES_PER_INODE).max(MIN_INODES);
        let options = format!(
            "size={},nr_inodes={inodes},mode=0700,uid={},gid={}",
            bytes.max(4096),
            owner.0,
            owner.1
        );
        if let Err(err) = beneath::mount_tmpfs(&path, &options) {
            let _ = std::fs::remove_dir(&path);
            return Err(err.into());
        }
        // The session's package layer (`packages`), there from the start so that every
        // interpreter of the session has it on its path.
        let layer = path.join(crate::packages::LAYER_DIR);
        let made = std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&layer)
            .and_then(|()| std::os::unix::fs::chown(&layer, Some(owner.0), Some(owner.1)));
        let root = match made.and_then(|()| File::open(&path)) {
            Ok(root) => root,
            Err(err) => {
                let _ = beneath::unmount(&path);
                let _ = std::fs::remove_dir(&path);
                return Err(err.into());
            }
        };
        Ok(Self {
            path,
            root,
            owner,
            ids,
            seen: Mutex::new(changes::Snapshot::default()),
            unseen: std::sync::atomic::AtomicBool::new(false),
            next_source: AtomicU64::new(0),
            _permits: permits,
        })
    }

    /// Where it is on the host (and, bound there, in every jail of the session).
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The sandbox ids the session's jails run as.
    pub(crate) fn ids(&self) -> Option<&IdLease> {
        self.ids.as_ref()
    }

    /// A name for an execution's source file at the top of the workspace that no other
    /// execution uses and the file frames cannot reach (`.sluice-<n>-<64 random
    /// bits>-main.py`).
    /// Unguessable as well as unique: a program of the session cannot take the names
    /// of the executions after it (each would fail on a file that exists).
    pub(crate) fn source_name(&self, file_name: &str) -> String {
        let n = self.next_source.fetch_add(1, Ordering::Relaxed);
        let salt = getrandom::u64().unwrap_or_else(|_| {
            // The OS random source failing is not a client's doing: unique still.
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
        });
        format!(
            "{}{n}-{salt:016x}-{file_name}",
            sluice_protocol::RESERVED_PREFIX
        )
    }

    /// Writes an unjailed execution's source file `name` (new, never through a link).
    pub(crate) fn write_source(&self, name: &str, code: &str) -> std::io::Result<()> {
        use std::io::Write as _;
        let mut file = beneath::open_file_for_writing(
            self.root.as_fd(),
            name,
            beneath::Existing::Refuse,
            0o600,
            Some(self.owner),
        )?;
        file.write_all(code.as_bytes())
    }

    /// Writes an execute's `files` (replacing what is there), for an unjailed program.
    pub(crate) fn write_files(&self, files: &[(String, String)]) -> std::io::Result<()> {
        crate::sandbox::jail::write_files(
            &self.path,
            files
                .iter()
                .map(|(name, text)| (name.as_str(), text.as_bytes())),
            Some(self.owner),
            true,
        )
    }

    /// Removes an execution's source file once it is over.
    pub(crate) fn remove_source(&self, name: &str) {
        if let Err(err) = beneath::remove(self.root.as_fd(), name, false) {
            if err.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(%err, name, "could not remove a source file from a workspace");
            }
        }
    }
}

impl Drop for Workspace {
    fn drop(&mut self) {
        if let Err(err) = beneath::unmount(&self.path) {
            tracing::warn!(path = %self.path.display(), %err, "could not unmount a workspace");
            return;
        }
        if let Err(err) = std::fs::remove_dir(&self.path) {
            tracing::warn!(path = %self.path.display(), %err, "could not remove a workspace's mount point");
        }
    }
}
