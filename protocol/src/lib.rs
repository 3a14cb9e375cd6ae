//! Sluice protocol v1: every type that crosses the WebSocket, and nothing else.
//!
//! This crate is the single source of truth for the wire format. The gateway and the Rust
//! client depend on it; the Python and TypeScript clients are tested against the JSON
//! fixtures in `protocol/fixtures/`, which this crate's tests check as well.
//!
//! It is a pure leaf: serde types and their encoding, no I/O, no async runtime.
//!
//! - [`ClientFrame`]: what a client sends (`execute`, `stdin`, `cancel`, `attach`,
//!   `detach`, `ack`), decoded with [`ClientFrame::decode`], which classifies every
//!   failure as a [`FrameError`].
//! - [`Event`]: what the gateway sends, one flat `{type, data, timestamp, sequence, id,
//!   session}` envelope with optional per-type fields.
//! - [`ErrorCode`]: the stable, machine-readable codes carried by `error` events.
//! - `schema` (feature `schema`): the JSON Schema of frames and events, generated from
//!   these types; the committed copy is `protocol/schema/`.

#![warn(missing_docs)]

mod client;
mod error;
mod event;
mod files;
mod json;
mod limits;
mod runtimes;
#[cfg(feature = "schema")]
pub mod schema;

pub use client::{
    check_file_path, check_workspace_path, AckFrame, AttachFrame, CancelFrame, ClientFrame,
    CompleteFrame, DetachFrame, Encoding, ExecuteRequest, FrameError, InspectFrame, ResizeFrame,
    RestartFrame, RuntimesFrame, StdinFrame, DEFAULT_TERM, DEFAULT_TERMINAL_SIZE, MAX_FILES,
    MAX_FILE_NAME_BYTES, MAX_FILE_PATH_BYTES, MAX_TERMINAL_SIDE, MAX_TERM_BYTES,
};
pub use error::ErrorCode;
pub use event::{
    CellException, Event, EventKind, InvalidEvent, LimitKind, Usage, MAX_DISPLAY_BYTES,
};
pub use files::{
    DeleteFileFrame, FileChanges, FileEntry, FileKind, ListFilesFrame, ReadFileFrame,
    WriteFileFrame, DEFAULT_FILE_MODE, FILE_CHUNK_BYTES, MAX_CHANGED_PATHS, MAX_FILE_MODE,
    MAX_LIST_ENTRIES, RESERVED_PREFIX,
};
pub use limits::Limits;
pub use runtimes::{Catalog, LimitRange, PackageInfo, RuntimeInfo};

/// The protocol version this crate describes.
pub const PROTOCOL_VERSION: u32 = 1;

/// The WebSocket subprotocol a client may offer; the gateway selects it when offered.
pub const SUBPROTOCOL: &str = "sluice.v1";

/// The HTTP path of the WebSocket endpoint.
pub const WS_PATH: &str = "/v1/ws";

/// The HTTP path that answers what a `runtimes` frame does, as JSON ([`Catalog`]).
pub const RUNTIMES_PATH: &str = "/v1/runtimes";

/// Default upper bound on the output bytes carried by one `stdout`/`stderr` event.
pub const DEFAULT_CHUNK_BYTES: usize = 64 * 1024;

/// Longest accepted execution id, session id or language name, in bytes.
pub const MAX_ID_BYTES: usize = 128;
