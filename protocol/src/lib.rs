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

/// What may be wrong with `url` as a gateway's WebSocket endpoint, for the message of a
/// connection that failed: a scheme other than `ws://` or `wss://`, or a path that does
/// not end in [`WS_PATH`] (a proxy may mount the gateway under a prefix of its own).
pub fn endpoint_hint(url: &str) -> Option<String> {
    let example = format!("ws://127.0.0.1:7878{WS_PATH}");
    let Some((scheme, rest)) = url.split_once("://") else {
        return Some(format!(
            "a gateway's URL starts with ws:// or wss://, e.g. {example}"
        ));
    };
    if !matches!(scheme.to_ascii_lowercase().as_str(), "ws" | "wss") {
        return Some(format!(
            "a gateway's URL starts with ws:// or wss://, not {scheme}://, e.g. {example}"
        ));
    }
    let before_query = rest.split(['?', '#']).next().unwrap_or_default();
    let path = before_query.find('/').map_or("", |at| &before_query[at..]);
    (!path.trim_end_matches('/').ends_with(WS_PATH))
        .then(|| format!("the gateway's WebSocket endpoint is the path {WS_PATH}, e.g. {example}"))
}

/// The HTTP path that answers what a `runtimes` frame does, as JSON ([`Catalog`]).
pub const RUNTIMES_PATH: &str = "/v1/runtimes";

/// Default upper bound on the output bytes carried by one `stdout`/`stderr` event.
pub const DEFAULT_CHUNK_BYTES: usize = 64 * 1024;

/// Longest accepted execution id, session id or language name, in bytes.
pub const MAX_ID_BYTES: usize = 128;

#[cfg(test)]
mod endpoint_tests {
    use super::endpoint_hint;

    #[test]
    fn a_wrong_scheme_or_path_gets_a_hint_and_the_endpoint_none() {
        assert!(endpoint_hint("ws://127.0.0.1:7878/v1/ws").is_none());
        assert!(endpoint_hint("wss://example.com/sluice/v1/ws/?token=x").is_none());
        for wrong in [
            "ws://127.0.0.1:7878/",
            "ws://127.0.0.1:7878",
            "ws://h/v1/runtimes",
            "http://127.0.0.1:7878/v1/ws",
            "127.0.0.1:7878",
        ] {
            let hint = endpoint_hint(wrong).unwrap_or_default();
            assert!(hint.contains("/v1/ws"), "{wrong}: {hint}");
        }
        assert!(endpoint_hint("http://h/v1/ws").is_some_and(|hint| hint.contains("not http://")));
    }
}
