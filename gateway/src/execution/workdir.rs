//! An execution's private working directory: created with the source file in it before
//! the program starts (or empty, for a warm interpreter), removed after its terminal
//! event.

use crate::sandbox::ProgramUser;
use std::io::{self, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

static NEXT_DIR: AtomicU64 = AtomicU64::new(0);

/// A directory under the gateway's work root, unique to one execution.
#[derive(Debug)]
pub(super) struct Workdir {
    path: PathBuf,
    file_name: String,
}

impl Workdir {
    /// Creates the directory (mode 0700) and writes `code` to `file_name` in it, and an
    /// unjailed program's more `files` (see [`crate::sandbox::jail::write_files`]); all
    /// of it belongs to `owner` when the program will run as that user.
    ///
    /// The directory is handed to `owner` only once everything is written in it: before,
    /// a program of the same sandbox user already running (its name is predictable)
    /// could swap a link in for a file or parent directory between the gateway's checks
    /// and its writes, and the gateway (root) would follow it to create or chown a file
    /// anywhere on the host.
    pub(super) fn create(
        root: &Path,
        file_name: &str,
        code: &str,
        files: &[(String, String)],
        owner: Option<ProgramUser>,
    ) -> io::Result<Self> {
        let dir = Self::create_empty(root, file_name, None)?;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(dir.source())?;
        file.write_all(code.as_bytes())?;
        if let Some(owner) = owner {
            std::os::unix::fs::fchown(&file, Some(owner.uid), Some(owner.gid))?;
        }
        if !files.is_empty() {
            dir.write_files(files, owner)?;
        }
        if let Some(owner) = owner {
            owner.give(&dir.path)?;
        }
        Ok(dir)
    }

    /// Creates the directory (mode 0700, belonging to `owner` when given) without the
    /// source file: a warm interpreter's, whose bootstrap writes `file_name` itself when
    /// it is claimed.
    pub(super) fn create_empty(
        root: &Path,
        file_name: &str,
        owner: Option<ProgramUser>,
    ) -> io::Result<Self> {
        let path = root.join(format!("x{}", NEXT_DIR.fetch_add(1, Ordering::Relaxed)));
        std::fs::DirBuilder::new().mode(0o700).create(&path)?;
        let dir = Self {
            path,
            file_name: file_name.to_owned(),
        };
        if let Some(owner) = owner {
            owner.give(&dir.path)?;
        }
        Ok(dir)
    }

    /// Writes an execute's `files` into the directory (an unjailed program's; a jail's
    /// init writes them into its own workspace from a bundle, [`Workdir::write_bundle`]),
    /// belonging to `owner` when the program will run as that user. Only from
    /// [`Workdir::create`], while the directory is still the gateway's alone.
    fn write_files(
        &self,
        files: &[(String, String)],
        owner: Option<ProgramUser>,
    ) -> io::Result<()> {
        crate::sandbox::jail::write_files(
            &self.path,
            files
                .iter()
                .map(|(name, text)| (name.as_str(), text.as_bytes())),
            owner.map(|user| (user.uid, user.gid)),
            false,
        )
    }

    /// Writes an execute's `files` as the bundle a jail's init unpacks into its
    /// workspace; its name, for the jail's spec.
    pub(super) fn write_bundle(&self, files: &[(String, String)]) -> io::Result<&'static str> {
        use crate::sandbox::jail::{write_bundle, FILES_BUNDLE};
        write_bundle(&self.path.join(FILES_BUNDLE), files).map(|()| FILES_BUNDLE)
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    pub(super) fn source(&self) -> PathBuf {
        self.path.join(&self.file_name)
    }

    /// Removes the directory and everything the program left in it. The common case (only
    /// the source file) is two system calls done right here; anything more goes to the
    /// blocking pool so a program that left many files does not stall a worker.
    pub(super) fn remove(mut self) {
        let source = self.source();
        let path = std::mem::take(&mut self.path);
        let quick = std::fs::remove_file(source).and_then(|()| std::fs::remove_dir(&path));
        if quick.is_ok() {
            return;
        }
        tokio::task::spawn_blocking(move || remove_all(&path));
    }
}

impl Workdir {
    /// The size of the largest regular file the program left here (at most a few
    /// hundred entries and three levels are looked at): how a file-size limit that the
    /// program survived (it ignored SIGXFSZ and got EFBIG) is still noticed.
    pub(super) fn largest_file(&self) -> u64 {
        fn walk(dir: &Path, depth: u32, budget: &mut u32, largest: &mut u64) {
            let Ok(entries) = std::fs::read_dir(dir) else {
                return;
            };
            for entry in entries.flatten() {
                if *budget == 0 {
                    return;
                }
                *budget -= 1;
                let Ok(kind) = entry.file_type() else {
                    continue;
                };
                if kind.is_file() {
                    let size = entry.metadata().map_or(0, |m| m.len());
                    *largest = (*largest).max(size);
                } else if kind.is_dir() && depth > 0 {
                    walk(&entry.path(), depth - 1, budget, largest);
                }
            }
        }
        let mut largest = 0;
        walk(&self.path, 2, &mut 256, &mut largest);
        largest
    }
}

impl Drop for Workdir {
    /// A directory not removed by [`Workdir::remove`] (an error or panic path) goes here.
    fn drop(&mut self) {
        if !self.path.as_os_str().is_empty() {
            remove_all(&self.path);
        }
    }
}

fn remove_all(path: &Path) {
    if let Err(err) = std::fs::remove_dir_all(path) {
        tracing::warn!(path = %path.display(), %err, "could not remove working directory");
    }
}
