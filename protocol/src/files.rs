//! A session's workspace on the wire: the frames that write, read, list and delete its
//! files, and what their answers and the `files_changed` notification carry.
//!
//! Every file frame names a named session this socket is attached to and a `request`
//! id of the client's choosing, which its answer (or its `error`) repeats. Paths are
//! relative to the workspace and plain ([`crate::check_file_path`]).

use crate::Encoding;
use serde::{Deserialize, Serialize};

/// The most bytes of a file one `file_data` event carries (before encoding).
pub const FILE_CHUNK_BYTES: usize = 64 * 1024;

/// The most entries one `file_list` event carries; a longer directory is cut short
/// (`truncated: true`).
pub const MAX_LIST_ENTRIES: usize = 10_000;

/// The most paths one `files_changed` event names, all three lists together; more
/// changes than that are cut short (`truncated: true`).
pub const MAX_CHANGED_PATHS: usize = 1_000;

/// The permission bits a written file may ask for, at most (no set-id or sticky bits).
pub const MAX_FILE_MODE: u32 = 0o777;

/// The permission bits of a file `write_file` creates without a `mode`.
pub const DEFAULT_FILE_MODE: u32 = 0o644;

/// File names starting with this are the gateway's own (an execution's source file
/// while it runs): listings and `files_changed` leave them out, and file frames
/// refuse them.
pub const RESERVED_PREFIX: &str = ".sluice-";

/// The `write_file` frame: create or replace (or append to) a file of the session's
/// workspace; its parent directories are made as needed. Answered by `file_written`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "schema", schemars(transform = crate::schema::text_without_nul))]
pub struct WriteFileFrame {
    /// Client-chosen; the answer repeats it.
    #[cfg_attr(feature = "schema", schemars(length(min = 1, max = 128)))]
    pub request: String,
    /// The named session whose workspace it is; this socket must be attached to it.
    #[cfg_attr(feature = "schema", schemars(length(min = 1, max = 128)))]
    pub session: String,
    /// Relative to the workspace.
    #[cfg_attr(feature = "schema", schemars(transform = crate::schema::file_path))]
    pub path: String,
    /// The content: text, or base64 when `encoding` is `base64`.
    pub data: String,
    /// How `data` is carried; `utf8` by default.
    #[serde(default, skip_serializing_if = "Encoding::is_utf8")]
    pub encoding: Encoding,
    /// Add `data` to the end of the file (created if missing) instead of replacing it:
    /// how a file larger than one frame is uploaded, in pieces.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub append: bool,
    /// Permission bits (0 to 0o777, as a number: 420 is 0o644) of a file this write
    /// creates; 0o644 by default. An existing file keeps its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", schemars(range(min = 0, max = 511)))]
    pub mode: Option<u32>,
}

/// The `read_file` frame: a file of the session's workspace, or `length` bytes of it
/// from `offset`, answered by `file_data` events of at most 64 KiB each, in order, the
/// last with `last: true`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ReadFileFrame {
    /// Client-chosen; every answer repeats it.
    #[cfg_attr(feature = "schema", schemars(length(min = 1, max = 128)))]
    pub request: String,
    /// The named session whose workspace it is; this socket must be attached to it.
    #[cfg_attr(feature = "schema", schemars(length(min = 1, max = 128)))]
    pub session: String,
    /// Relative to the workspace.
    #[cfg_attr(feature = "schema", schemars(transform = crate::schema::file_path))]
    pub path: String,
    /// The first byte to read; 0 by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// How many bytes to read at most; to the end of the file by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub length: Option<u64>,
    /// How the content is carried: `utf8` (the default: bytes that are not UTF-8 become
    /// U+FFFD, and a character is never split between two events) or `base64` (exact).
    #[serde(default, skip_serializing_if = "Encoding::is_utf8")]
    pub encoding: Encoding,
}

/// The `list_files` frame: the entries of a directory of the session's workspace (not
/// recursive), answered by one `file_list` event.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ListFilesFrame {
    /// Client-chosen; the answer repeats it.
    #[cfg_attr(feature = "schema", schemars(length(min = 1, max = 128)))]
    pub request: String,
    /// The named session whose workspace it is; this socket must be attached to it.
    #[cfg_attr(feature = "schema", schemars(length(min = 1, max = 128)))]
    pub session: String,
    /// The directory, relative to the workspace; absent: the workspace itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", schemars(transform = crate::schema::file_path))]
    pub path: Option<String>,
}

/// The `delete_file` frame: remove a file, or a directory (with everything in it only
/// when `recursive`), of the session's workspace. Answered by `file_deleted`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct DeleteFileFrame {
    /// Client-chosen; the answer repeats it.
    #[cfg_attr(feature = "schema", schemars(length(min = 1, max = 128)))]
    pub request: String,
    /// The named session whose workspace it is; this socket must be attached to it.
    #[cfg_attr(feature = "schema", schemars(length(min = 1, max = 128)))]
    pub session: String,
    /// Relative to the workspace.
    #[cfg_attr(feature = "schema", schemars(transform = crate::schema::file_path))]
    pub path: String,
    /// Remove a directory that is not empty, with everything in it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub recursive: bool,
}

/// What an entry of a workspace is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "schema", schemars(transform = crate::schema::open_enum))]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum FileKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link (never followed by the file frames).
    Symlink,
    /// Anything else (a FIFO or socket a program made), or a kind this version of the
    /// protocol crate does not know.
    #[serde(other)]
    Other,
}

/// One entry of a `file_list`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct FileEntry {
    /// Its name in the directory listed.
    pub name: String,
    /// What it is.
    pub kind: FileKind,
    /// Its size in bytes (a directory's as the file system reports it).
    pub size: u64,
    /// Its permission bits (0 to 0o7777).
    pub mode: u32,
    /// When its content last changed: Unix time in seconds.
    pub mtime: f64,
}

/// The paths of a workspace that changed, relative to it, each list sorted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct FileChanges {
    /// Paths that did not exist before (a new directory is named, and each file in it).
    pub created: Vec<String>,
    /// Paths whose size, modification time or kind changed.
    pub modified: Vec<String>,
    /// Paths that no longer exist.
    pub deleted: Vec<String>,
}

impl FileChanges {
    /// True when nothing changed.
    pub fn is_empty(&self) -> bool {
        self.created.is_empty() && self.modified.is_empty() && self.deleted.is_empty()
    }
}
