//! Per-execution resource limits a client may request.

use serde::{Deserialize, Serialize};

/// Limits requested for one execution. Every field is optional: an absent field takes the
/// gateway's default; a present one may lower the limit down to 1, never raise it above
/// the gateway's maximum (such a request is refused with `invalid_limit`).
///
/// Unknown fields are ignored, so a client may send limits a newer gateway understands.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Limits {
    /// Wall-clock time from start to the end of the program, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Bytes of stdout plus stderr delivered; output past it is cut at exactly this count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_bytes: Option<u64>,
    /// CPU time of the program's process, in milliseconds (enforced in whole seconds,
    /// rounded up).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_ms: Option<u64>,
    /// Largest file the program may write, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_size_bytes: Option<u64>,
    /// Files (descriptors) the program may have open at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_files: Option<u64>,
    /// Memory of the program's whole process tree (resident plus page cache it
    /// charges; no swap), in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    /// Processes (and threads) of the program's tree alive at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processes: Option<u64>,
    /// Bytes the program may store in its workspace, /tmp and /dev/shm together (one
    /// private file system; enforced when the gateway isolates with namespaces).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace_bytes: Option<u64>,
}

impl Limits {
    /// True when no limit is requested.
    pub fn is_empty(&self) -> bool {
        self == &Self::default()
    }
}
