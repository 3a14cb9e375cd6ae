//! Events the gateway sends: one flat envelope for every type.

use crate::files::{FileChanges, FileEntry};
use crate::{Catalog, Encoding, ErrorCode, LimitRange, RuntimeInfo};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// The `type` of an [`Event`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "schema", schemars(transform = crate::schema::open_enum))]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum EventKind {
    /// The program started; the first event of an execution that started.
    Started,
    /// A chunk of standard output.
    Stdout,
    /// A chunk of standard error.
    Stderr,
    /// Terminal: the program ended by itself (or by a signal it did not get from Sluice).
    Completed,
    /// Terminal: the program was stopped by a `cancel` frame, the end of its session
    /// (no socket came back within the grace period) or the gateway shutting down.
    Cancelled,
    /// Terminal: the program hit a limit and was killed.
    ResourceLimit,
    /// Terminal when it carries an execution `id`; otherwise a refusal of a frame that
    /// belongs to no execution.
    Error,
    /// Not an execution's event: the answer to an `attach`. From here this socket
    /// receives `session`'s events after `sequence` (the attach's `since`), first the
    /// buffered ones, then live; `resume_from` is `sequence + 1`. It comes before any of
    /// them (a `gap` may follow it if the buffer no longer reaches back that far).
    Attached,
    /// Not an execution's event: this socket will not receive events `missed_from` to
    /// `resume_from - 1` of `session` (they left the replay buffer before it took them);
    /// the session's stream continues at `resume_from`. `sequence` is `resume_from - 1`.
    Gap,
    /// Not an execution's event: the answer to a `runtimes` frame, on the socket's own
    /// stream: the languages the caller may run (`runtimes`) and each limit's range
    /// (`limits`).
    Runtimes,
    /// The answer to a `write_file`, on the socket's own stream: `path` now holds
    /// `size` bytes.
    FileWritten,
    /// Part of the answer to a `read_file`, on the socket's own stream: the bytes of
    /// `path` from `offset` (`data`, base64 when `encoding` says so), `size` the file's
    /// whole size; the last has `last: true`.
    FileData,
    /// The answer to a `list_files`, on the socket's own stream: the directory `path`'s
    /// `entries` (`truncated` when there were more).
    FileList,
    /// The answer to a `delete_file`, on the socket's own stream: `path` is gone.
    FileDeleted,
    /// On a session's stream: paths of its workspace that changed since the previous
    /// `files_changed` (`changes`), seen when the execution `id` ended, or after a file
    /// frame (no `id`). Before that execution's terminal event.
    FilesChanged,
    /// Rich output of an execution: a MIME bundle (`bundle`, MIME type to data) with
    /// `metadata`, and `data` its `text/plain` form. With a `display_id`, a later
    /// `update_display` of that id replaces it.
    Display,
    /// Replaces what the `display` (and earlier updates) of the same `display_id` in the
    /// session showed; the same fields as `display`.
    UpdateDisplay,
    /// The value of a persistent cell's last expression, as a MIME bundle like
    /// `display`'s, with the cell's `execution_count`.
    Result,
    /// The execution waits for a line of input: `data` is the prompt to show, and
    /// `password` says whether to hide what is typed. The answer goes in a `stdin` frame.
    InputRequest,
    /// On a session's stream, no execution's: the answer to a `restart`. The session's
    /// persistent interpreter is gone (its cells were cancelled); the next cell starts a
    /// fresh one.
    Restarted,
    /// The answer to a `complete`, on the socket's own stream: the `matches` that may
    /// replace the code points `cursor_start` to `cursor_end` of the query's code
    /// (`truncated` when there were more).
    CompleteReply,
    /// The answer to an `inspect`, on the socket's own stream: `found`, and when found a
    /// `bundle` whose `text/plain` describes the name (signature, type, documentation).
    InspectReply,
    /// An execution without the network tried to reach a host outside its sandbox and
    /// was refused: `data` says so, for a front end to show beside the program's own
    /// error (a failed name lookup, `Network is unreachable`). At most one per
    /// execution, on its session's stream, before its terminal event.
    NetworkBlocked,
    /// A type this version of the protocol crate does not know (sent by a newer gateway).
    #[serde(other)]
    Unknown,
}

impl EventKind {
    /// True for the types that end an execution: exactly one per execution.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Completed | Self::Cancelled | Self::ResourceLimit | Self::Error
        )
    }

    /// The type as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Started => "started",
            Self::Stdout => "stdout",
            Self::Stderr => "stderr",
            Self::Completed => "completed",
            Self::Cancelled => "cancelled",
            Self::ResourceLimit => "resource_limit",
            Self::Error => "error",
            Self::Attached => "attached",
            Self::Gap => "gap",
            Self::Runtimes => "runtimes",
            Self::FileWritten => "file_written",
            Self::FileData => "file_data",
            Self::FileList => "file_list",
            Self::FileDeleted => "file_deleted",
            Self::FilesChanged => "files_changed",
            Self::Display => "display",
            Self::UpdateDisplay => "update_display",
            Self::Result => "result",
            Self::InputRequest => "input_request",
            Self::Restarted => "restarted",
            Self::CompleteReply => "complete_reply",
            Self::InspectReply => "inspect_reply",
            Self::NetworkBlocked => "network_blocked",
            Self::Unknown => "unknown",
        }
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The limit named by a `resource_limit` event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "schema", schemars(transform = crate::schema::open_enum))]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum LimitKind {
    /// Wall-clock time (`limits.timeout_ms`).
    Timeout,
    /// Bytes of stdout plus stderr (`limits.output_bytes`).
    Output,
    /// CPU time (`limits.cpu_ms`).
    Cpu,
    /// The size of a file the program wrote (`limits.file_size_bytes`).
    FileSize,
    /// Memory of the process tree (`limits.memory_bytes`).
    Memory,
    /// Processes alive at once (`limits.processes`).
    Processes,
    /// Bytes stored in the workspace, /tmp and /dev/shm (`limits.workspace_bytes`).
    Workspace,
    /// A limit this version of the protocol crate does not know.
    #[serde(other)]
    Other,
}

impl LimitKind {
    /// The limit as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::Output => "output",
            Self::Cpu => "cpu",
            Self::FileSize => "file_size",
            Self::Memory => "memory",
            Self::Processes => "processes",
            Self::Workspace => "workspace",
            Self::Other => "other",
        }
    }
}

/// What an execution used, reported on its terminal event once it had started.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Usage {
    /// Wall time from spawn to exit, in milliseconds.
    pub duration_ms: f64,
    /// Time from spawn to the first byte of stdout or stderr, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_output_ms: Option<f64>,
    /// User plus system CPU time of the program's main process and the children it
    /// waited for, in milliseconds.
    pub cpu_ms: f64,
    /// Peak resident memory of the largest of those processes, in bytes.
    pub peak_memory_bytes: u64,
    /// Bytes of stdout delivered (before encoding).
    pub stdout_bytes: u64,
    /// Bytes of stderr delivered (before encoding).
    pub stderr_bytes: u64,
}

/// One event from the gateway.
///
/// Every event carries the envelope `type`, `data`, `timestamp`, `sequence`, `id` and
/// `session`; the optional fields appear on the types documented for each.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "schema", schemars(transform = crate::schema::event_rules))]
pub struct Event {
    /// The event type.
    #[serde(rename = "type")]
    pub kind: EventKind,
    /// Output text (base64 when `encoding` is `base64`), or a human message.
    #[serde(default)]
    pub data: String,
    /// Unix time in seconds, with microsecond precision; never decreases within a stream (a session's,
    /// or the socket's own).
    #[cfg_attr(feature = "schema", schemars(extend("exclusiveMinimum" = 0)))]
    pub timestamp: f64,
    /// Position in the session's event stream: starts at 1, increases by exactly 1.
    /// Events with no session count on their socket's own stream, also from 1.
    pub sequence: u64,
    /// The execution this event belongs to; `null` for errors that belong to none.
    #[serde(default)]
    pub id: Option<String>,
    /// The session the execution runs in; `null` for errors that belong to no execution.
    #[serde(default)]
    pub session: Option<String>,
    /// `started`: the program's process id (as seen by the gateway).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// `stdout`/`stderr`: present (as `base64`) only when `data` is base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoding: Option<Encoding>,
    /// `completed`: the exit status, when the program exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// `completed`: the signal number, when a signal killed the program.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// `resource_limit`: which limit was hit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<LimitKind>,
    /// `resource_limit`: the limit's configured value (milliseconds or bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit_value: Option<u64>,
    /// `resource_limit`: what the program was seen to use of that limit, in the same
    /// unit, where the gateway can know it (absent otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit_observed: Option<u64>,
    /// `error`: the machine-readable code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<ErrorCode>,
    /// Terminal events of an execution that started: what it used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// `gap`: the first sequence this socket will not receive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missed_from: Option<u64>,
    /// `gap`: the sequence the session's stream continues at on this socket;
    /// `attached`: the first sequence the attach will deliver (`sequence + 1`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume_from: Option<u64>,
    /// A refusal of a frame that named a session (`attach`, `detach`, `stdin` or
    /// `cancel` with `session`, `execute`): that session. Such refusals travel on the
    /// socket's own stream, so `session` is null; this says which request they answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub for_session: Option<String>,
    /// `runtimes`: the languages the caller may run, sorted by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtimes: Option<Vec<RuntimeInfo>>,
    /// `runtimes`: each limit's default and maximum for the caller, by the name a
    /// request's `limits` uses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<BTreeMap<String, LimitRange>>,
    /// The answers to a file frame or a query (`complete`, `inspect`), and their `error`:
    /// the frame's `request`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<String>,
    /// `file_written`, `file_data`, `file_list`, `file_deleted`: the path, relative to
    /// the workspace (`""` for the workspace itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// `file_data`: where in the file `data` starts, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// `file_written`, `file_data`: the file's whole size in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// `file_data`: true on the last chunk of the answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<bool>,
    /// `file_list`: the directory's entries, sorted by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entries: Option<Vec<FileEntry>>,
    /// `files_changed`: what changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changes: Option<FileChanges>,
    /// `file_list`, `files_changed`, `complete_reply`: true when the list was cut short.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub truncated: Option<bool>,
    /// `display`, `update_display`, `result`: MIME type to data: text (`image/png` and
    /// other binary types base64), or any JSON value for `application/json` and the
    /// `+json` types.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle: Option<BTreeMap<String, serde_json::Value>>,
    /// `display`, `update_display`, `result`: the bundle's metadata (a JSON object, e.g.
    /// an image's `width`), as the program gave it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<serde_json::Value>,
    /// `display` (optional), `update_display`: the id that ties an update to what it
    /// replaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_id: Option<String>,
    /// `result`, and the terminal event of a persistent cell that its interpreter
    /// answered: the cell's number in its interpreter, from 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution_count: Option<u64>,
    /// `input_request`: the input is a password (not to be shown as it is typed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<bool>,
    /// `completed` of a persistent cell that raised: the exception.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exception: Option<CellException>,
    /// `complete_reply`: the completions, each to replace the code points from
    /// `cursor_start` to `cursor_end` of the query's code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matches: Option<Vec<String>>,
    /// `complete_reply`: where the text the matches replace starts, in code points.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor_start: Option<u64>,
    /// `complete_reply`: where it ends, in code points.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor_end: Option<u64>,
    /// `inspect_reply`: whether the interpreter knew the name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub found: Option<bool>,
}

/// The exception a persistent cell ended with (Jupyter's `error` content).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct CellException {
    /// The exception's type, e.g. `ZeroDivisionError`.
    pub ename: String,
    /// Its message, e.g. `division by zero`.
    pub evalue: String,
    /// The traceback as the interpreter prints it, one line per entry, without the
    /// kernel's own frames.
    pub traceback: Vec<String>,
}

/// The most bytes of one display record a program writes (its JSON, PROTOCOL.md §10.1):
/// a larger one is dropped, and the program is told on its stderr.
pub const MAX_DISPLAY_BYTES: usize = 8 << 20;

/// An event that decodes as JSON but breaks a rule of the protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidEvent(pub String);

impl fmt::Display for InvalidEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for InvalidEvent {}

impl Event {
    /// An event of `kind` with an empty payload; the gateway fills `timestamp` and
    /// `sequence` when it publishes the event.
    pub fn new(kind: EventKind, id: Option<String>, data: impl Into<String>) -> Self {
        Self {
            kind,
            data: data.into(),
            timestamp: 0.0,
            sequence: 0,
            id,
            session: None,
            pid: None,
            encoding: None,
            exit_code: None,
            signal: None,
            limit: None,
            limit_value: None,
            limit_observed: None,
            code: None,
            usage: None,
            missed_from: None,
            resume_from: None,
            for_session: None,
            runtimes: None,
            limits: None,
            request: None,
            path: None,
            offset: None,
            size: None,
            last: None,
            entries: None,
            changes: None,
            truncated: None,
            bundle: None,
            metadata: None,
            display_id: None,
            execution_count: None,
            password: None,
            exception: None,
            matches: None,
            cursor_start: None,
            cursor_end: None,
            found: None,
        }
    }

    /// The answer to a file frame: `kind` for `request`, about `path`.
    pub fn file_reply(
        kind: EventKind,
        request: impl Into<String>,
        path: impl Into<String>,
    ) -> Self {
        Self {
            request: Some(request.into()),
            path: Some(path.into()),
            ..Self::new(kind, None, "")
        }
    }

    /// `network_blocked`: execution `id`, which has no network, tried to reach another
    /// host.
    pub fn network_blocked(id: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(EventKind::NetworkBlocked, Some(id.into()), message)
    }

    /// `files_changed`: what changed in a session's workspace, seen at the end of the
    /// execution `id` (or after a file frame, `None`).
    pub fn files_changed(id: Option<String>, changes: FileChanges, truncated: bool) -> Self {
        Self {
            changes: Some(changes),
            truncated: truncated.then_some(true),
            ..Self::new(EventKind::FilesChanged, id, "")
        }
    }

    /// `runtimes`: the answer to a `runtimes` frame.
    pub fn runtimes(catalog: Catalog) -> Self {
        Self {
            runtimes: Some(catalog.runtimes),
            limits: Some(catalog.limits),
            ..Self::new(EventKind::Runtimes, None, "")
        }
    }

    /// An `error` event with `code` and a human message.
    pub fn error(id: Option<String>, code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code: Some(code),
            ..Self::new(EventKind::Error, id, message)
        }
    }

    /// `started` for execution `id`: the program's process id and, when the gateway has
    /// something to say about the start (a fresh interpreter), a note.
    pub fn started(id: impl Into<String>, pid: u32, note: impl Into<String>) -> Self {
        Self {
            pid: Some(pid),
            ..Self::new(EventKind::Started, Some(id.into()), note)
        }
    }

    /// A `stdout` or `stderr` chunk; `encoding` is stated only when it is base64.
    pub fn output(
        kind: EventKind,
        id: impl Into<String>,
        data: String,
        encoding: Encoding,
    ) -> Self {
        Self {
            encoding: (encoding == Encoding::Base64).then_some(Encoding::Base64),
            ..Self::new(kind, Some(id.into()), data)
        }
    }

    /// `completed`: the program ended on its own, with an exit code or a signal.
    pub fn completed(id: impl Into<String>, exit_code: Option<i32>, signal: Option<i32>) -> Self {
        Self {
            exit_code,
            signal,
            ..Self::new(EventKind::Completed, Some(id.into()), "")
        }
    }

    /// `cancelled`, with a message saying what happened.
    pub fn cancelled(id: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(EventKind::Cancelled, Some(id.into()), message)
    }

    /// `resource_limit`: the execution reached `limit`, whose value is `value`;
    /// `observed` is what the gateway saw (when it knows).
    pub fn resource_limit(
        id: impl Into<String>,
        limit: LimitKind,
        value: u64,
        observed: Option<u64>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            limit: Some(limit),
            limit_value: Some(value),
            limit_observed: observed,
            ..Self::new(EventKind::ResourceLimit, Some(id.into()), message)
        }
    }

    /// What a `runtimes` event says, if this is one.
    pub fn catalog(&self) -> Option<Catalog> {
        match (self.kind, &self.runtimes, &self.limits) {
            (EventKind::Runtimes, Some(runtimes), Some(limits)) => Some(Catalog {
                runtimes: runtimes.clone(),
                limits: limits.clone(),
            }),
            _ => None,
        }
    }

    /// True for the event that ends an execution.
    pub fn is_terminal(&self) -> bool {
        self.kind.is_terminal() && self.id.is_some()
    }

    /// Decodes one text frame from the gateway and checks it with [`Event::validate`].
    pub fn decode(text: &str) -> Result<Self, InvalidEvent> {
        let event: Self =
            serde_json::from_str(text).map_err(|e| InvalidEvent(format!("not an event: {e}")))?;
        event.validate()?;
        Ok(event)
    }

    /// Encodes the event as JSON text (the same text serde would write, faster).
    pub fn to_json(&self) -> String {
        let mut out = String::new();
        self.encode_into(&mut out);
        out
    }

    /// Appends the event's JSON encoding to `out`.
    pub fn encode_into(&self, out: &mut String) {
        crate::json::write_event(out, self);
    }

    /// Checks the per-type rules that the flat struct cannot express.
    pub fn validate(&self) -> Result<(), InvalidEvent> {
        let fail = |why: &str| Err(InvalidEvent(format!("{} event {why}", self.kind)));
        if self.sequence == 0 && self.kind != EventKind::Attached {
            return fail("has sequence 0; sequences start at 1");
        }
        if !self.timestamp.is_finite() || self.timestamp <= 0.0 {
            return fail("has no valid timestamp");
        }
        // An `execute` refused before it joined a session is the one event that names
        // an execution on the socket's own stream.
        if self.id.is_some() && self.session.is_none() && self.kind != EventKind::Error {
            return fail("names an execution but no session");
        }
        match self.kind {
            EventKind::Started if self.pid.is_none() => fail("has no pid"),
            EventKind::ResourceLimit if self.limit_value.is_none() => fail("has no limit_value"),
            EventKind::Started | EventKind::Stdout | EventKind::Stderr | EventKind::Cancelled
                if self.id.is_none() =>
            {
                fail("has no execution id")
            }
            EventKind::Completed if self.exit_code.is_some() == self.signal.is_some() => {
                fail("needs exactly one of exit_code and signal")
            }
            EventKind::Completed if self.id.is_none() => fail("has no execution id"),
            EventKind::ResourceLimit if self.limit.is_none() || self.id.is_none() => {
                fail("needs an execution id and a limit")
            }
            EventKind::Error if self.code.is_none() => fail("has no code"),
            EventKind::Attached
                if self.session.is_none() || self.resume_from != Some(self.sequence + 1) =>
            {
                fail("needs a session and resume_from = sequence + 1")
            }
            EventKind::Runtimes
                if self.runtimes.is_none() || self.limits.is_none() || self.session.is_some() =>
            {
                fail("needs runtimes and limits, and no session")
            }
            EventKind::FileWritten
            | EventKind::FileData
            | EventKind::FileList
            | EventKind::FileDeleted
                if self.request.is_none() || self.path.is_none() || self.session.is_some() =>
            {
                fail("needs a request and a path, and no session")
            }
            EventKind::FileData
                if self.offset.is_none() || self.size.is_none() || self.last.is_none() =>
            {
                fail("needs offset, size and last")
            }
            EventKind::FileWritten if self.size.is_none() => fail("needs size"),
            EventKind::FileList if self.entries.is_none() => fail("needs entries"),
            EventKind::FilesChanged if self.session.is_none() || self.changes.is_none() => {
                fail("needs a session and changes")
            }
            EventKind::Display | EventKind::UpdateDisplay | EventKind::Result
                if self.id.is_none() || self.bundle.is_none() =>
            {
                fail("needs an execution id and a bundle")
            }
            EventKind::UpdateDisplay if self.display_id.is_none() => fail("needs a display_id"),
            EventKind::NetworkBlocked if self.id.is_none() => fail("needs an execution id"),
            EventKind::InputRequest if self.id.is_none() || self.password.is_none() => {
                fail("needs an execution id and password")
            }
            EventKind::CompleteReply | EventKind::InspectReply
                if self.request.is_none() || self.session.is_some() || self.id.is_some() =>
            {
                fail("needs a request, and no session or execution id")
            }
            EventKind::CompleteReply
                if self.matches.is_none()
                    || !matches!((self.cursor_start, self.cursor_end), (Some(a), Some(b)) if a <= b) =>
            {
                fail("needs matches and cursor_start <= cursor_end")
            }
            EventKind::InspectReply
                if self.found.is_none() || (self.found == Some(true) && self.bundle.is_none()) =>
            {
                fail("needs found, and a bundle when found")
            }
            EventKind::Restarted if self.session.is_none() || self.id.is_some() => {
                fail("needs a session and no execution id")
            }
            EventKind::Gap => match (self.session.is_some(), self.missed_from, self.resume_from) {
                (true, Some(from), Some(to)) if from < to && self.sequence + 1 == to => Ok(()),
                _ => {
                    fail("needs a session, missed_from < resume_from and sequence resume_from - 1")
                }
            },
            _ => Ok(()),
        }
    }
}
