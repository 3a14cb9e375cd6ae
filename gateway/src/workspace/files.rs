//! The file frames' work in a workspace: write, read (in chunks), list and delete, each
//! path resolved beneath the workspace's root through no link, each failure a
//! [`FileError`] with the protocol's code.

use super::Workspace;
use crate::sys::beneath;
use sluice_protocol::{ErrorCode, FileEntry, FileKind, MAX_LIST_ENTRIES, RESERVED_PREFIX};
use std::fs::File;
use std::io::{Read as _, Seek as _, Write as _};
use std::os::fd::{AsFd as _, AsRawFd as _, BorrowedFd};
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _, PermissionsExt as _};

/// Mode of the parent directories a `write_file` makes.
const DIR_MODE: u32 = 0o755;

/// A file frame that could not be done: the code and message of its `error`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FileError {
    pub(crate) code: ErrorCode,
    pub(crate) message: String,
}

impl FileError {
    fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// What a system call's failure on `path` means to the client.
    fn io(path: &str, err: &std::io::Error) -> Self {
        let shown = if path.is_empty() { "." } else { path };
        match err.raw_os_error() {
            Some(libc::ENOENT) => Self::new(
                ErrorCode::NotFound,
                format!("{shown:?} does not exist in the workspace"),
            ),
            Some(libc::ELOOP | libc::EXDEV) => Self::new(
                ErrorCode::InvalidPath,
                format!("{shown:?} goes through a symbolic link (links are never followed)"),
            ),
            Some(libc::ENOTDIR) => Self::new(
                ErrorCode::InvalidPath,
                format!("{shown:?}: a part of the path that must be a directory is not one"),
            ),
            Some(libc::EISDIR) => {
                Self::new(ErrorCode::InvalidPath, format!("{shown:?} is a directory"))
            }
            Some(libc::EINVAL | libc::EACCES | libc::ENXIO) => Self::new(
                ErrorCode::InvalidPath,
                format!("{shown:?} is not a regular file"),
            ),
            Some(libc::ENOSPC | libc::EDQUOT | libc::EFBIG) => Self::new(
                ErrorCode::WorkspaceFull,
                format!("the workspace has no room left for {shown:?}: delete something, or open the session with a larger workspace"),
            ),
            Some(libc::ENOTEMPTY) => Self::new(
                ErrorCode::BadRequest,
                format!("{shown:?} is a directory with entries; send \"recursive\": true to delete it all"),
            ),
            _ => {
                tracing::warn!(path = shown, %err, "a file frame failed");
                Self::new(ErrorCode::Internal, format!("could not access {shown:?}"))
            }
        }
    }
}

/// An open file being read for a `read_file`: `remaining` bytes from `offset`.
#[derive(Debug)]
pub(crate) struct FileReader {
    file: File,
    /// The file's whole size when it was opened.
    pub(crate) size: u64,
    /// Where the next chunk starts.
    pub(crate) offset: u64,
    remaining: u64,
}

impl FileReader {
    /// The next chunk, at most `max` bytes (empty at the end).
    pub(crate) fn next_chunk(&mut self, max: usize) -> Result<Vec<u8>, FileError> {
        let want = usize::try_from(self.remaining)
            .unwrap_or(usize::MAX)
            .min(max);
        let mut chunk = vec![0; want];
        let mut filled = 0;
        while filled < want {
            match self.file.read(&mut chunk[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
                Err(err) => return Err(FileError::io("", &err)),
            }
        }
        chunk.truncate(filled);
        self.offset += filled as u64;
        self.remaining = if filled < want {
            0
        } else {
            self.remaining - filled as u64
        };
        Ok(chunk)
    }

    /// True once everything asked for was read (or the file ended).
    pub(crate) fn is_done(&self) -> bool {
        self.remaining == 0
    }
}

/// The kind of a file from its mode.
fn kind_of(file_type: std::fs::FileType) -> FileKind {
    if file_type.is_symlink() {
        FileKind::Symlink
    } else if file_type.is_dir() {
        FileKind::Dir
    } else if file_type.is_file() {
        FileKind::File
    } else {
        FileKind::Other
    }
}

/// The entries of the directory open as `dir` (through its descriptor, so the path it
/// was found by does not matter any more), `..` and `.` left out, at most `max`, with
/// the names the wire can carry (UTF-8; at the top, not the gateway's own); and whether
/// there were more.
pub(super) fn entries_of(
    dir: BorrowedFd<'_>,
    top: bool,
    max: usize,
) -> std::io::Result<(Vec<(String, std::fs::Metadata)>, bool)> {
    let (raw, more) = raw_entries_of(dir, max, |name| {
        name.to_str()
            .is_some_and(|name| !(top && name.starts_with(RESERVED_PREFIX)))
    })?;
    let entries = raw
        .into_iter()
        .filter_map(|(name, meta)| Some((name.into_string().ok()?, meta)))
        .collect();
    Ok((entries, more))
}

/// The entries of `dir` that `keep` keeps, by their names as they are (bytes), at most
/// `max`; and whether there were more.
fn raw_entries_of(
    dir: BorrowedFd<'_>,
    max: usize,
    keep: impl Fn(&std::ffi::OsStr) -> bool,
) -> std::io::Result<(Vec<(std::ffi::OsString, std::fs::Metadata)>, bool)> {
    let listing = std::fs::read_dir(format!("/proc/self/fd/{}", dir.as_raw_fd()))?;
    let mut entries = Vec::new();
    for entry in listing {
        let entry = entry?;
        let name = entry.file_name();
        if !keep(&name) {
            continue;
        }
        if entries.len() == max {
            return Ok((entries, true));
        }
        // Not followed: the entry's own metadata, relative to the open directory.
        let meta = entry.metadata()?;
        entries.push((name, meta));
    }
    Ok((entries, false))
}

fn mtime(meta: &std::fs::Metadata) -> f64 {
    meta.mtime() as f64 + f64::from(u32::try_from(meta.mtime_nsec()).unwrap_or(0)) / 1e9
}

impl Workspace {
    /// Writes `data` to `path` (replacing it, or after its end when `append`), parents
    /// made; a new file gets `mode`. The file's size after.
    pub(crate) fn write(
        &self,
        path: &str,
        data: &[u8],
        append: bool,
        mode: u32,
    ) -> Result<u64, FileError> {
        let root = self.root.as_fd();
        let fail = |err: std::io::Error| FileError::io(path, &err);
        beneath::make_parents(root, path, DIR_MODE, Some(self.owner)).map_err(fail)?;
        let existing = if append {
            beneath::Existing::Append
        } else {
            beneath::Existing::Replace
        };
        let mut file = beneath::open_file_for_writing(root, path, existing, mode, Some(self.owner))
            .map_err(fail)?;
        file.write_all(data).map_err(fail)?;
        file.metadata().map(|meta| meta.len()).map_err(fail)
    }

    /// Opens `path` to read `length` bytes (to its end when `None`) from `offset`.
    pub(crate) fn open_for_reading(
        &self,
        path: &str,
        offset: u64,
        length: Option<u64>,
    ) -> Result<FileReader, FileError> {
        let fail = |err: std::io::Error| FileError::io(path, &err);
        let fd = beneath::open(
            self.root.as_fd(),
            path,
            libc::O_RDONLY | libc::O_NONBLOCK,
            0,
        )
        .map_err(fail)?;
        let mut file = File::from(fd);
        let meta = file.metadata().map_err(fail)?;
        if meta.is_dir() {
            return Err(FileError::io(
                path,
                &std::io::Error::from_raw_os_error(libc::EISDIR),
            ));
        }
        if !meta.is_file() || meta.file_type().is_fifo() {
            return Err(FileError::io(
                path,
                &std::io::Error::from_raw_os_error(libc::EINVAL),
            ));
        }
        let size = meta.len();
        let start = offset.min(size);
        file.seek(std::io::SeekFrom::Start(start)).map_err(fail)?;
        let remaining = length.map_or(size - start, |length| length.min(size - start));
        Ok(FileReader {
            file,
            size,
            offset: start,
            remaining,
        })
    }

    /// The entries of the directory `path` (`""`: the workspace), sorted by name, and
    /// whether there were more than [`MAX_LIST_ENTRIES`].
    pub(crate) fn list(&self, path: &str) -> Result<(Vec<FileEntry>, bool), FileError> {
        let fail = |err: std::io::Error| FileError::io(path, &err);
        let dir = beneath::open(
            self.root.as_fd(),
            path,
            libc::O_RDONLY | libc::O_DIRECTORY,
            0,
        )
        .map_err(fail)?;
        let (found, truncated) =
            entries_of(dir.as_fd(), path.is_empty(), MAX_LIST_ENTRIES).map_err(fail)?;
        let mut entries: Vec<FileEntry> = found
            .into_iter()
            .map(|(name, meta)| FileEntry {
                name,
                kind: kind_of(meta.file_type()),
                size: meta.len(),
                mode: meta.permissions().mode() & 0o7777,
                mtime: mtime(&meta),
            })
            .collect();
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        Ok((entries, truncated))
    }

    /// Removes `path`: a file or link, an empty directory, or with `recursive` a
    /// directory and everything in it.
    pub(crate) fn delete(&self, path: &str, recursive: bool) -> Result<(), FileError> {
        let root = self.root.as_fd();
        let fail = |err: std::io::Error| FileError::io(path, &err);
        let (parent, name) = path.rsplit_once('/').unwrap_or(("", path));
        let parent =
            beneath::open(root, parent, libc::O_PATH | libc::O_DIRECTORY, 0).map_err(fail)?;
        let stat = beneath::stat(parent.as_fd(), name).map_err(fail)?;
        let is_dir = stat.st_mode & libc::S_IFMT == libc::S_IFDIR;
        if is_dir && recursive {
            let dir = beneath::open(parent.as_fd(), name, DIRECTORY, 0).map_err(fail)?;
            empty_directory(dir.as_fd(), 0).map_err(fail)?;
        }
        beneath::remove(parent.as_fd(), name, is_dir).map_err(fail)
    }
}

/// How directories are opened to be emptied.
const DIRECTORY: i32 = libc::O_RDONLY | libc::O_DIRECTORY;

/// Deeper than any path a frame can name; a program could nest further, and what is
/// left then fails the last removal (`ENOTEMPTY`) instead of the stack.
const MAX_DELETE_DEPTH: u32 = 512;

/// Passes over one directory at most: a program of the session that keeps making
/// entries in it cannot keep the gateway deleting for ever (the removal then fails).
const MAX_DELETE_PASSES: u32 = 16;

/// Removes everything in the directory open as `dir`, depth first, each subdirectory
/// opened through its parent (one name, no link), so depth costs nothing extra.
fn empty_directory(dir: BorrowedFd<'_>, depth: u32) -> std::io::Result<()> {
    if depth > MAX_DELETE_DEPTH {
        return Err(std::io::Error::from_raw_os_error(libc::ENOTEMPTY));
    }
    for _ in 0..MAX_DELETE_PASSES {
        // Up to 4096 entries a pass; the next pass takes the rest (and anything a
        // program of the session added meanwhile).
        let (entries, _) = raw_entries_of(dir, 4096, |_| true)?;
        if entries.is_empty() {
            return Ok(());
        }
        for (name, meta) in &entries {
            let is_dir = meta.is_dir();
            if is_dir {
                match beneath::open(dir, name, DIRECTORY, 0) {
                    Ok(child) => empty_directory(child.as_fd(), depth + 1)?,
                    Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(err) => return Err(err),
                }
            }
            match beneath::remove(dir, name, is_dir) {
                Err(err) if err.kind() != std::io::ErrorKind::NotFound => return Err(err),
                _ => {}
            }
        }
    }
    Err(std::io::Error::from_raw_os_error(libc::ENOTEMPTY))
}
