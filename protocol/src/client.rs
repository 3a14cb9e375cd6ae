//! Frames a client sends to the gateway, and their decoding.

use crate::files::{
    DeleteFileFrame, ListFilesFrame, ReadFileFrame, WriteFileFrame, MAX_FILE_MODE, RESERVED_PREFIX,
};
use crate::{ErrorCode, Limits, MAX_ID_BYTES};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// One frame from a client. Serialized as a JSON object whose `type` names the variant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(tag = "type", rename_all = "snake_case")]
// A frame is decoded once and handled at once; boxing `execute` (the common, large one)
// would add an allocation to every frame for nothing.
#[allow(clippy::large_enum_variant)]
pub enum ClientFrame {
    /// Run a program.
    Execute(ExecuteRequest),
    /// Write to a running program's stdin, or close it.
    Stdin(StdinFrame),
    /// Stop a running program.
    Cancel(CancelFrame),
    /// Receive a session's events on this socket, replaying those after `since`.
    Attach(AttachFrame),
    /// Stop receiving a session's events on this socket.
    Detach(DetachFrame),
    /// Tell the gateway which of a session's events the client has received.
    Ack(AckFrame),
    /// Ask which languages the gateway runs and which limits a request may ask for; the
    /// answer is a `runtimes` event on the socket's own stream.
    Runtimes(RuntimesFrame),
    /// Change the size of a terminal execution's terminal (its program gets SIGWINCH).
    Resize(ResizeFrame),
    /// Create, replace or append to a file of a session's workspace.
    WriteFile(WriteFileFrame),
    /// Read a file of a session's workspace (or a range of it), in chunks.
    ReadFile(ReadFileFrame),
    /// List a directory of a session's workspace.
    ListFiles(ListFilesFrame),
    /// Remove a file or directory of a session's workspace.
    DeleteFile(DeleteFileFrame),
    /// Restart a session's persistent interpreter: its cells are cancelled and the next
    /// one starts a fresh interpreter (the workspace stays).
    Restart(RestartFrame),
    /// Ask a session's persistent interpreter for completions at a cursor position; the
    /// answer is a `complete_reply` on the socket's own stream.
    Complete(CompleteFrame),
    /// Ask a session's persistent interpreter about the name at a cursor position
    /// (signature, type, documentation); the answer is an `inspect_reply` on the socket's
    /// own stream.
    Inspect(InspectFrame),
}

/// How program output is carried in `stdout`/`stderr` events.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    /// Text; bytes that are not valid UTF-8 are replaced by U+FFFD, and a character is
    /// never split across two events.
    #[default]
    Utf8,
    /// Standard base64 (with padding) of the exact bytes; each event decodes on its own.
    Base64,
}

impl Encoding {
    pub(crate) fn is_utf8(&self) -> bool {
        *self == Self::Utf8
    }
}

/// The `execute` frame: run `code` in `language`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "schema", schemars(transform = crate::schema::persistent_needs_session))]
#[cfg_attr(feature = "schema", schemars(transform = crate::schema::terminal_only_with_tty))]
pub struct ExecuteRequest {
    /// Client-chosen id, unique among this socket's running executions; every event of
    /// the execution carries it.
    #[cfg_attr(feature = "schema", schemars(length(min = 1, max = 128)))]
    pub id: String,
    /// A name from the gateway's runtime table, e.g. `python`, `bash`, `sh`, `node`.
    #[cfg_attr(feature = "schema", schemars(length(min = 1, max = 128)))]
    pub language: String,
    /// The program text.
    pub code: String,
    /// Session to run in; executions naming the same session share its sequence numbers.
    /// Absent: the execution gets a fresh session of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", schemars(length(min = 1, max = 128)))]
    pub session: Option<String>,
    /// Initial standard input. When present it is the whole input: stdin is closed after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin: Option<String>,
    /// Environment variables added to the runtime's base environment.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[cfg_attr(feature = "schema", schemars(transform = crate::schema::env_names_and_values))]
    pub env: BTreeMap<String, String>,
    /// Arguments passed to the program after the source file.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[cfg_attr(feature = "schema", schemars(inner(regex(pattern = crate::schema::NO_NUL))))]
    pub args: Vec<String>,
    /// Requested limits; absent ones take the gateway's defaults.
    #[serde(default, skip_serializing_if = "Limits::is_empty")]
    pub limits: Limits,
    /// How output is carried; `utf8` by default.
    #[serde(default, skip_serializing_if = "Encoding::is_utf8")]
    pub encoding: Encoding,
    /// Run as a cell in the session's persistent interpreter (a notebook kernel):
    /// variables, imports and files persist between the session's persistent
    /// executions, which run one at a time in the order they were sent. Needs `session`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub persistent: bool,
    /// Run the program on a pseudo-terminal (inside its jail): its stdout, stderr and
    /// stdin are the terminal, output comes as one `stdout` stream of the terminal's
    /// bytes, and `stdin` data is typed into it. Not with `persistent`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tty: bool,
    /// The terminal's width in columns (1 to 1000; default 80). Only with `tty`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", schemars(range(min = 1, max = 1000)))]
    pub cols: Option<u16>,
    /// The terminal's height in rows (1 to 1000; default 24). Only with `tty`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", schemars(range(min = 1, max = 1000)))]
    pub rows: Option<u16>,
    /// More files of the program (a project of several files: `main.py` importing
    /// `util.py`), by path relative to its working directory, written there (parent
    /// directories made) before it starts; text. Not with `persistent`. Paths: at most
    /// 1024 bytes, no empty, `.` or `..` component, none longer than 255 bytes, not
    /// absolute, no NUL; at most 256 files. Their bytes, and 4096 for each directory
    /// they make, count against `limits.workspace_bytes`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[cfg_attr(feature = "schema", schemars(transform = crate::schema::file_paths))]
    pub files: BTreeMap<String, String>,
    /// The program's `TERM` (default `xterm-256color`): letters, digits and `.+-_`, at
    /// most 64 bytes. Only with `tty`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", schemars(length(min = 1, max = 64), regex(pattern = crate::schema::TERM_NAME)))]
    pub term: Option<String>,
    /// Give the session a workspace (if it has none yet) that outlives this execution:
    /// this execution and every later one of the session start in it and see what
    /// earlier ones left there, and the file frames reach it. Needs a named `session`;
    /// the workspace ends with the session. See `attach`'s `workspace`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub workspace: bool,
    /// The client will acknowledge this session's events with `ack` frames: the gateway
    /// keeps every event of the session after the last one this socket acknowledged
    /// from the very first on, as if an `ack` of the session's last event before this
    /// execution came with the frame. Without it, the events written before the
    /// client's first `ack` arrives can be lost to a dropped connection.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ack: bool,
}

/// Files an `execute` may carry, at most.
pub const MAX_FILES: usize = 256;

/// The longest path of a file an `execute` carries, in bytes.
pub const MAX_FILE_PATH_BYTES: usize = 1024;

/// The longest component of such a path (a file or directory name), in bytes.
pub const MAX_FILE_NAME_BYTES: usize = 255;

/// Columns and rows a terminal may have, at most.
pub const MAX_TERMINAL_SIDE: u16 = 1000;

/// The terminal size a `tty` execution gets when it names none: 80 columns, 24 rows.
pub const DEFAULT_TERMINAL_SIZE: (u16, u16) = (80, 24);

/// The `TERM` a `tty` execution gets when it names none.
pub const DEFAULT_TERM: &str = "xterm-256color";

/// The longest `term` an execute may name.
pub const MAX_TERM_BYTES: usize = 64;

impl ExecuteRequest {
    /// The terminal's size, `(cols, rows)`, with the defaults filled in.
    pub fn terminal_size(&self) -> (u16, u16) {
        (
            self.cols.unwrap_or(DEFAULT_TERMINAL_SIZE.0),
            self.rows.unwrap_or(DEFAULT_TERMINAL_SIZE.1),
        )
    }
}

/// The `stdin` frame: `data` is written to the program, then stdin is closed if `eof`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "schema", schemars(transform = crate::schema::data_or_eof))]
pub struct StdinFrame {
    /// The execution to write to.
    #[cfg_attr(feature = "schema", schemars(length(min = 1, max = 128)))]
    pub id: String,
    /// The session the execution runs in. Absent: an execution this socket started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", schemars(length(min = 1, max = 128)))]
    pub session: Option<String>,
    /// Text to write (UTF-8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    /// Close the program's stdin after writing `data`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub eof: bool,
}

/// The `cancel` frame: stop an execution (SIGTERM, then SIGKILL after a grace period).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct CancelFrame {
    /// The execution to stop.
    #[cfg_attr(feature = "schema", schemars(length(min = 1, max = 128)))]
    pub id: String,
    /// The session the execution runs in. Absent: an execution this socket started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", schemars(length(min = 1, max = 128)))]
    pub session: Option<String>,
}

/// The `attach` frame: deliver `session`'s events to this socket, starting after `since`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct AttachFrame {
    /// The session to receive.
    #[cfg_attr(feature = "schema", schemars(length(min = 1, max = 128)))]
    pub session: String,
    /// The last sequence the client already has; every buffered event after it is
    /// replayed, then events continue live. Absent: 0, everything still buffered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<u64>,
    /// Open the session (creating it when it does not exist) with a workspace (made
    /// when it has none): how a client uploads files before anything runs.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub workspace: bool,
    /// The client will acknowledge the session's events with `ack` frames: as if an
    /// `ack` of `since` came with the frame, before any event is replayed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ack: bool,
}

/// The `ack` frame: the client has received `session`'s events up to `sequence`. A
/// session's lead that acknowledges keeps every event it has not acknowledged buffered
/// (the programs wait once the buffer is full), so a connection that drops loses
/// nothing in flight.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct AckFrame {
    /// The session whose events are acknowledged.
    #[cfg_attr(feature = "schema", schemars(length(min = 1, max = 128)))]
    pub session: String,
    /// The last sequence received.
    pub sequence: u64,
}

/// The `runtimes` frame: which languages may this caller run, with which limits. It
/// has no fields.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct RuntimesFrame {}

/// The `resize` frame: give a terminal execution's terminal a new size; its program gets
/// SIGWINCH. Refused with `not_a_terminal` for an execution without `tty`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ResizeFrame {
    /// The execution whose terminal changes size.
    #[cfg_attr(feature = "schema", schemars(length(min = 1, max = 128)))]
    pub id: String,
    /// The session the execution runs in. Absent: an execution this socket started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", schemars(length(min = 1, max = 128)))]
    pub session: Option<String>,
    /// Columns, 1 to 1000.
    #[cfg_attr(feature = "schema", schemars(range(min = 1, max = 1000)))]
    pub cols: u16,
    /// Rows, 1 to 1000.
    #[cfg_attr(feature = "schema", schemars(range(min = 1, max = 1000)))]
    pub rows: u16,
}

/// The `detach` frame: stop delivering `session`'s events to this socket.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct DetachFrame {
    /// The session to stop receiving.
    #[cfg_attr(feature = "schema", schemars(length(min = 1, max = 128)))]
    pub session: String,
}

/// The `restart` frame: end `session`'s persistent interpreter, cancelling its running
/// and waiting cells; the next cell starts a fresh one. Answered by a `restarted` event
/// on the session's stream.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct RestartFrame {
    /// The session whose interpreter restarts.
    #[cfg_attr(feature = "schema", schemars(length(min = 1, max = 128)))]
    pub session: String,
}

/// The `complete` frame: the completions of the name that ends at `cursor_pos` in
/// `code`, from `session`'s persistent interpreter (its variables, imports and
/// attributes). Answered on the socket's own stream by a `complete_reply` naming
/// `request`, or an `error` naming it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct CompleteFrame {
    /// Client-chosen id of the query, echoed in its answer.
    #[cfg_attr(feature = "schema", schemars(length(min = 1, max = 128)))]
    pub request: String,
    /// The session whose interpreter answers; this socket must be attached to it.
    #[cfg_attr(feature = "schema", schemars(length(min = 1, max = 128)))]
    pub session: String,
    /// The text being edited (a cell).
    pub code: String,
    /// The cursor's position in `code`, in Unicode code points (as Jupyter counts).
    pub cursor_pos: u64,
}

/// The `inspect` frame: what the interpreter knows about the name at `cursor_pos` in
/// `code` (the name under the cursor, or the callee of the call the cursor is in).
/// Answered on the socket's own stream by an `inspect_reply` naming `request`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct InspectFrame {
    /// Client-chosen id of the query, echoed in its answer.
    #[cfg_attr(feature = "schema", schemars(length(min = 1, max = 128)))]
    pub request: String,
    /// The session whose interpreter answers; this socket must be attached to it.
    #[cfg_attr(feature = "schema", schemars(length(min = 1, max = 128)))]
    pub session: String,
    /// The text being edited (a cell).
    pub code: String,
    /// The cursor's position in `code`, in Unicode code points (as Jupyter counts).
    pub cursor_pos: u64,
    /// 0 (the default): signature, type, value and documentation; 1: the source too,
    /// where the interpreter has it.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(range(max = 1)))]
    pub detail_level: u8,
}

/// A frame the gateway could not accept, classified for the `error` event it becomes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameError {
    /// The machine-readable code.
    pub code: ErrorCode,
    /// A human explanation, safe to send back to the client.
    pub message: String,
    /// The frame's `type`, when it had a string one.
    pub frame_type: Option<String>,
    /// The frame's `id`, when it had a string one.
    pub id: Option<String>,
    /// A file frame's `request`, when it had a string one.
    pub request: Option<String>,
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for FrameError {}

/// Just enough of a frame to classify a decoding failure.
#[derive(Deserialize)]
struct FrameProbe {
    #[serde(rename = "type")]
    frame_type: Option<serde_json::Value>,
    id: Option<serde_json::Value>,
    request: Option<serde_json::Value>,
}

const FRAME_TYPES: &str = "execute, stdin, cancel, attach, detach, ack, runtimes, resize, \
                           write_file, read_file, list_files, delete_file, restart, complete, \
                           inspect";

impl ClientFrame {
    /// Decodes one text frame and checks the constraints serde cannot express (id length,
    /// non-empty `stdin`). Unknown fields are ignored.
    pub fn decode(text: &str) -> Result<Self, FrameError> {
        match serde_json::from_str::<ClientFrame>(text) {
            Ok(frame) => frame.validate().map(|()| frame),
            Err(err) => Err(classify(text, &err)),
        }
    }

    /// Encodes the frame as JSON text.
    pub fn to_json(&self) -> String {
        // Serializing these types cannot fail: every map key is a string.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The execution id this frame names; `attach` and `detach` name none.
    pub fn id(&self) -> Option<&str> {
        match self {
            Self::Execute(e) => Some(&e.id),
            Self::Stdin(s) => Some(&s.id),
            Self::Cancel(c) => Some(&c.id),
            Self::Resize(r) => Some(&r.id),
            Self::Attach(_)
            | Self::Detach(_)
            | Self::Ack(_)
            | Self::Runtimes(_)
            | Self::WriteFile(_)
            | Self::ReadFile(_)
            | Self::ListFiles(_)
            | Self::DeleteFile(_)
            | Self::Restart(_)
            | Self::Complete(_)
            | Self::Inspect(_) => None,
        }
    }

    /// A file frame's or a query's `request` id.
    pub fn request(&self) -> Option<&str> {
        match self {
            Self::Complete(q) => Some(&q.request),
            Self::Inspect(q) => Some(&q.request),
            Self::WriteFile(f) => Some(&f.request),
            Self::ReadFile(f) => Some(&f.request),
            Self::ListFiles(f) => Some(&f.request),
            Self::DeleteFile(f) => Some(&f.request),
            _ => None,
        }
    }

    /// A file frame's path (`list_files` may name none: the workspace itself).
    fn file_path(&self) -> Option<&str> {
        match self {
            Self::WriteFile(f) => Some(&f.path),
            Self::ReadFile(f) => Some(&f.path),
            Self::ListFiles(f) => f.path.as_deref(),
            Self::DeleteFile(f) => Some(&f.path),
            _ => None,
        }
    }

    /// The session this frame names, if any.
    pub fn session(&self) -> Option<&str> {
        match self {
            Self::Execute(e) => e.session.as_deref(),
            Self::Stdin(s) => s.session.as_deref(),
            Self::Cancel(c) => c.session.as_deref(),
            Self::Resize(r) => r.session.as_deref(),
            Self::Attach(a) => Some(&a.session),
            Self::Detach(d) => Some(&d.session),
            Self::Ack(a) => Some(&a.session),
            Self::WriteFile(f) => Some(&f.session),
            Self::ReadFile(f) => Some(&f.session),
            Self::ListFiles(f) => Some(&f.session),
            Self::DeleteFile(f) => Some(&f.session),
            Self::Restart(r) => Some(&r.session),
            Self::Complete(q) => Some(&q.session),
            Self::Inspect(q) => Some(&q.session),
            Self::Runtimes(_) => None,
        }
    }

    fn type_name(&self) -> &'static str {
        match self {
            Self::Execute(_) => "execute",
            Self::Stdin(_) => "stdin",
            Self::Cancel(_) => "cancel",
            Self::Attach(_) => "attach",
            Self::Detach(_) => "detach",
            Self::Ack(_) => "ack",
            Self::Runtimes(_) => "runtimes",
            Self::Resize(_) => "resize",
            Self::WriteFile(_) => "write_file",
            Self::ReadFile(_) => "read_file",
            Self::ListFiles(_) => "list_files",
            Self::DeleteFile(_) => "delete_file",
            Self::Restart(_) => "restart",
            Self::Complete(_) => "complete",
            Self::Inspect(_) => "inspect",
        }
    }

    /// Checks the constraints serde cannot express (what [`ClientFrame::decode`] checks
    /// after decoding): a client can refuse a frame before sending it.
    pub fn validate(&self) -> Result<(), FrameError> {
        let bad = |message: String| FrameError {
            code: ErrorCode::BadRequest,
            message,
            frame_type: Some(self.type_name().to_owned()),
            id: self.id().map(str::to_owned),
            request: self.request().map(str::to_owned),
        };
        if let Some(id) = self.id() {
            check_name("id", id).map_err(bad)?;
        }
        if let Some(request) = self.request() {
            check_name("request", request).map_err(bad)?;
        }
        if let Some(path) = self.file_path() {
            check_workspace_path(path).map_err(|why| FrameError {
                code: ErrorCode::InvalidPath,
                ..bad(format!("path {:?}: {why}", clip(path)))
            })?;
        }
        if let Some(session) = self.session() {
            check_name("session", session).map_err(bad)?;
        }
        match self {
            Self::Execute(e) => {
                check_name("language", &e.language).map_err(bad)?;
                if e.persistent && e.session.is_none() {
                    return Err(bad(
                        "\"persistent\": true needs a \"session\" for the interpreter to live in"
                            .to_owned(),
                    ));
                }
                if let Some(key) = e
                    .env
                    .keys()
                    .find(|k| k.is_empty() || k.contains(['=', '\0']))
                {
                    return Err(bad(format!(
                        "env name {key:?} is empty or contains '=' or NUL"
                    )));
                }
                if e.args
                    .iter()
                    .chain(e.env.values())
                    .any(|v| v.contains('\0'))
                {
                    return Err(bad("args and env values may not contain NUL".to_owned()));
                }
                check_terminal(e).map_err(bad)?;
                check_files(e).map_err(bad)?;
                if e.workspace && e.session.is_none() {
                    return Err(bad(
                        "\"workspace\": true needs a \"session\" for the workspace to live in"
                            .to_owned(),
                    ));
                }
            }
            Self::WriteFile(f) => {
                if let Some(mode) = f.mode.filter(|&mode| mode > MAX_FILE_MODE) {
                    return Err(bad(format!(
                        "\"mode\" {mode:#o} has bits beyond 0o777 (no set-id or sticky bits)"
                    )));
                }
                if f.encoding.is_utf8() && f.data.contains('\0') {
                    return Err(bad("text may not contain NUL; send it as base64".to_owned()));
                }
            }
            Self::Resize(r) => check_side("cols", Some(r.cols))
                .and_then(|()| check_side("rows", Some(r.rows)))
                .map_err(bad)?,
            Self::Complete(q) => check_cursor(&q.code, q.cursor_pos).map_err(bad)?,
            Self::Inspect(q) => {
                check_cursor(&q.code, q.cursor_pos).map_err(bad)?;
                if q.detail_level > 1 {
                    return Err(bad(format!(
                        "\"detail_level\" is 0 or 1, not {}",
                        q.detail_level
                    )));
                }
            }
            Self::Stdin(s) if s.data.is_none() && !s.eof => {
                return Err(bad(
                    "stdin frame needs \"data\", \"eof\": true, or both".to_owned()
                ));
            }
            Self::Stdin(_)
            | Self::Cancel(_)
            | Self::Attach(_)
            | Self::Detach(_)
            | Self::Ack(_)
            | Self::Runtimes(_)
            | Self::ReadFile(_)
            | Self::ListFiles(_)
            | Self::DeleteFile(_)
            | Self::Restart(_) => {}
        }
        Ok(())
    }
}

/// A query's cursor: within its code, counted in code points.
fn check_cursor(code: &str, cursor_pos: u64) -> Result<(), String> {
    let length = code.chars().count() as u64;
    if cursor_pos > length {
        return Err(format!(
            "\"cursor_pos\" {cursor_pos} is past the end of \"code\", which has {length} code points"
        ));
    }
    Ok(())
}

/// The terminal fields of an `execute`: only with `tty`, never with `persistent`, sizes
/// and `term` in range.
fn check_terminal(e: &ExecuteRequest) -> Result<(), String> {
    if !e.tty {
        if let Some(field) = [
            ("cols", e.cols.is_some()),
            ("rows", e.rows.is_some()),
            ("term", e.term.is_some()),
        ]
        .into_iter()
        .find_map(|(field, given)| given.then_some(field))
        {
            return Err(format!(
                "\"{field}\" is only for a terminal: add \"tty\": true"
            ));
        }
        return Ok(());
    }
    if e.persistent {
        return Err(
            "\"tty\" and \"persistent\" do not go together: a cell runs in the session's \
             interpreter, which has no terminal"
                .to_owned(),
        );
    }
    check_side("cols", e.cols)?;
    check_side("rows", e.rows)?;
    if let Some(term) = &e.term {
        let fine = |b: u8| b.is_ascii_alphanumeric() || b".+-_".contains(&b);
        if term.is_empty() || term.len() > MAX_TERM_BYTES || !term.bytes().all(fine) {
            return Err(format!(
                "\"term\" must be 1 to {MAX_TERM_BYTES} letters, digits or .+-_ (like \"{DEFAULT_TERM}\"), not {:?}",
                clip(term)
            ));
        }
    }
    Ok(())
}

/// The `files` of an `execute`: not with `persistent`, at most [`MAX_FILES`], each path
/// relative and plain (see [`check_file_path`]).
fn check_files(e: &ExecuteRequest) -> Result<(), String> {
    if e.files.is_empty() {
        return Ok(());
    }
    if e.persistent {
        return Err(
            "\"files\" are for a program of its own: a persistent cell runs in the session's \
             interpreter"
                .to_owned(),
        );
    }
    if e.files.len() > MAX_FILES {
        return Err(format!(
            "{} files, more than the {MAX_FILES} an execute may carry",
            e.files.len()
        ));
    }
    for (path, content) in &e.files {
        check_workspace_path(path).map_err(|why| format!("file {:?}: {why}", clip(path)))?;
        if content.contains('\0') {
            return Err(format!("file {:?}: text may not contain NUL", clip(path)));
        }
        // A file cannot also be a directory of another.
        let mut parent = path.as_str();
        while let Some((up, _)) = parent.rsplit_once('/') {
            if e.files.contains_key(up) {
                return Err(format!(
                    "{:?} is a file, so it cannot hold {:?}",
                    clip(up),
                    clip(path)
                ));
            }
            parent = up;
        }
    }
    Ok(())
}

/// A path of `files`: relative, its components plain names (not empty, `.` or `..`, at
/// most [`MAX_FILE_NAME_BYTES`]), no NUL, at most [`MAX_FILE_PATH_BYTES`]. Why not, if it is not.
pub fn check_file_path(path: &str) -> Result<(), &'static str> {
    if path.is_empty() {
        return Err("the path is empty");
    }
    if path.len() > MAX_FILE_PATH_BYTES {
        return Err("the path is longer than 1024 bytes");
    }
    if path.starts_with('/') {
        return Err("the path is absolute; paths are relative to the working directory");
    }
    if path.contains('\0') {
        return Err("the path contains NUL");
    }
    for component in path.split('/') {
        match component {
            "" => return Err("the path has an empty component (\"//\" or a trailing \"/\")"),
            "." | ".." => return Err("the path has a \".\" or \"..\" component"),
            // The file system's NAME_MAX: a longer name fails when written, which is the
            // request's fault, not the gateway's (or the jail's).
            name if name.len() > MAX_FILE_NAME_BYTES => {
                return Err("a component of the path is longer than 255 bytes")
            }
            _ => {}
        }
    }
    Ok(())
}

/// A path a file frame names: plain ([`check_file_path`]), and not one of the gateway's
/// own names at the top of the workspace ([`RESERVED_PREFIX`]).
pub fn check_workspace_path(path: &str) -> Result<(), &'static str> {
    check_file_path(path)?;
    if path.starts_with(RESERVED_PREFIX) {
        return Err(
            "names starting with \".sluice-\" at the top of the workspace are the gateway's own",
        );
    }
    Ok(())
}

/// A terminal's columns or rows: 1 to [`MAX_TERMINAL_SIDE`].
fn check_side(field: &str, value: Option<u16>) -> Result<(), String> {
    match value {
        Some(side) if side == 0 || side > MAX_TERMINAL_SIDE => Err(format!(
            "\"{field}\" must be 1 to {MAX_TERMINAL_SIDE}, not {side}"
        )),
        _ => Ok(()),
    }
}

fn check_name(field: &str, value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err(format!("\"{field}\" must not be empty"));
    }
    if value.len() > MAX_ID_BYTES {
        return Err(format!("\"{field}\" is longer than {MAX_ID_BYTES} bytes"));
    }
    Ok(())
}

fn classify(text: &str, err: &serde_json::Error) -> FrameError {
    let bad = |message: String, frame_type: Option<String>, id: Option<String>| FrameError {
        code: ErrorCode::BadRequest,
        message,
        frame_type,
        id,
        request: None,
    };
    if err.is_syntax() || err.is_eof() {
        return bad(format!("frame is not valid JSON: {err}"), None, None);
    }
    let not_object = || bad("frame must be a JSON object".to_owned(), None, None);
    if !text.trim_start().starts_with('{') {
        // serde would read an array into the probe's fields by position.
        return not_object();
    }
    let probe = match serde_json::from_str::<FrameProbe>(text) {
        Ok(probe) => probe,
        Err(_) => return not_object(),
    };
    let id = probe.id.and_then(|v| v.as_str().map(str::to_owned));
    let request = probe.request.and_then(|v| v.as_str().map(str::to_owned));
    let with_request = |mut err: FrameError| {
        err.request.clone_from(&request);
        err
    };
    with_request(match probe.frame_type {
        None => bad("frame has no \"type\" field".to_owned(), None, id),
        Some(serde_json::Value::String(t)) if !FRAME_TYPES.split(", ").any(|k| k == t) => bad(
            format!(
                "unknown frame type {:?}; expected one of {FRAME_TYPES}",
                clip(&t)
            ),
            Some(t),
            id,
        ),
        Some(serde_json::Value::String(t)) => bad(
            format!("invalid {t} frame: {}", strip_position(err)),
            Some(t),
            id,
        ),
        Some(_) => bad("\"type\" must be a string".to_owned(), None, id),
    })
}

/// Client text quoted back in a message, cut to a readable length.
fn clip(text: &str) -> String {
    const MAX: usize = 64;
    match text.char_indices().nth(MAX) {
        Some((at, _)) => format!("{}...", &text[..at]),
        None => text.to_owned(),
    }
}

/// serde_json appends "at line 1 column 57", which means nothing to a client that did
/// not lay out the frame by hand.
fn strip_position(err: &serde_json::Error) -> String {
    let text = err.to_string();
    match text.rfind(" at line ") {
        Some(at) => text[..at].to_owned(),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_minimal_execute() {
        let frame =
            ClientFrame::decode(r#"{"type":"execute","id":"a","language":"sh","code":"echo"}"#)
                .unwrap();
        let ClientFrame::Execute(e) = frame else {
            panic!("not execute")
        };
        assert_eq!(e.encoding, Encoding::Utf8);
        assert!(e.limits.is_empty());
    }

    #[test]
    fn classifies_unknown_type_with_id() {
        let err = ClientFrame::decode(r#"{"type":"launch","id":"x"}"#).unwrap_err();
        assert_eq!(err.code, ErrorCode::BadRequest);
        assert_eq!(err.frame_type.as_deref(), Some("launch"));
        assert_eq!(err.id.as_deref(), Some("x"));
        assert!(
            err.message.contains("unknown frame type"),
            "{}",
            err.message
        );
    }

    #[test]
    fn an_array_is_not_a_frame() {
        let err = ClientFrame::decode(r#"["execute", "x"]"#).unwrap_err();
        assert_eq!(err.message, "frame must be a JSON object");
    }

    #[test]
    fn a_long_unknown_type_is_clipped_in_the_message() {
        let long = "x".repeat(10_000);
        let err = ClientFrame::decode(&format!(r#"{{"type":"{long}"}}"#)).unwrap_err();
        assert!(err.message.len() < 300, "{}", err.message);
    }

    #[test]
    fn missing_field_names_it() {
        let err = ClientFrame::decode(r#"{"type":"execute","id":"x","code":"1"}"#).unwrap_err();
        assert!(err.message.contains("language"), "{}", err.message);
        assert!(!err.message.contains("line 1"), "{}", err.message);
        assert_eq!(err.id.as_deref(), Some("x"));
    }

    #[test]
    fn round_trips_execute() {
        let frame = ClientFrame::Execute(ExecuteRequest {
            id: "e1".into(),
            language: "python".into(),
            code: "print(1)".into(),
            encoding: Encoding::Base64,
            limits: Limits {
                timeout_ms: Some(5),
                cpu_ms: Some(1000),
                ..Limits::default()
            },
            ..ExecuteRequest::default()
        });
        assert_eq!(ClientFrame::decode(&frame.to_json()).unwrap(), frame);
    }
}
