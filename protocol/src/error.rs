//! Machine-readable error codes carried by `error` events.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Why the gateway refused a frame or could not run an execution.
///
/// The serialized names (`snake_case`) are stable: clients match on them. A client that
/// receives a code it does not know decodes it as [`ErrorCode::Other`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "schema", schemars(transform = crate::schema::open_enum))]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorCode {
    /// The frame is not valid JSON, not an object, has an unknown `type`, or a field is
    /// missing or of the wrong type.
    BadRequest,
    /// The frame exceeds the gateway's maximum frame size and was not processed.
    TooLarge,
    /// An `execute` reused the id of an execution still running on this socket.
    DuplicateId,
    /// A `stdin` or `cancel` named an id that is not running on this socket.
    UnknownExecution,
    /// The `language` of an `execute` is not in the gateway's runtime table.
    UnknownLanguage,
    /// A requested limit is not valid (zero, or above the server maximum).
    InvalidLimit,
    /// The gateway could not start the program (the message names the command).
    SpawnFailed,
    /// Too many executions are running on this socket or on the gateway.
    TooManyExecutions,
    /// Too many sessions are attached to this socket, or open on the gateway.
    TooManySessions,
    /// An `attach`, `detach`, `stdin` or `cancel` named a session that does not exist
    /// (never did, or ended) or that this socket is not attached to.
    UnknownSession,
    /// `stdin` arrived for an execution whose stdin is already closed.
    StdinClosed,
    /// `stdin` arrived faster than the program reads it and the execution's input queue
    /// is full; the data was not delivered.
    StdinFull,
    /// The gateway is shutting down and accepts no new executions.
    ShuttingDown,
    /// Terminal for a cell of a persistent session whose interpreter exited or died
    /// during it: the session's state is lost, and its next execution starts a fresh
    /// interpreter.
    KernelLost,
    /// The gateway's memory budget (replay buffers, messages in flight, queued stdin) is
    /// spent: the new execution or the input was not accepted; retry later.
    GatewayBusy,
    /// An unexpected failure inside the gateway; details are in the gateway's log.
    Internal,
    /// The caller's credential does not allow this: a language or a session name outside
    /// its claims. Follows from the credential alone, so retrying does not help (a quota
    /// reached is `too_many_executions` or `too_many_sessions` instead).
    NotPermitted,
    /// A `resize` named an execution that does not run on a terminal (it was started
    /// without `tty`).
    NotATerminal,
    /// A file frame named a session that keeps no workspace (a gateway-made session, or
    /// a named one that never asked for one), or this gateway cannot keep workspaces.
    NoWorkspace,
    /// A file frame's path is not allowed: absolute, with an empty, `.` or `..`
    /// component, through a symbolic link, one of the gateway's own names, or not what
    /// the frame needs (a directory to read, a file to list, a device).
    InvalidPath,
    /// A file frame named a path that does not exist in the workspace.
    NotFound,
    /// The workspace has no room left for what a `write_file` (or an execute's `files`)
    /// would add: delete something, or ask for a larger workspace.
    WorkspaceFull,
    /// A `complete` or `inspect` arrived while the session's interpreter runs a cell (or
    /// answers another query): it answers one thing at a time. Retry once the cell is over.
    KernelBusy,
    /// A `complete` or `inspect` named a session that has no persistent interpreter (no
    /// persistent cell ran in it yet, or it was restarted or ended since).
    NoKernel,
    /// The interpreter did not answer a `complete` or `inspect` in time (a slow property
    /// or `__getattr__`, say): it was interrupted, and ended if that did not help.
    QueryTimeout,
    /// Never sent by the gateway: the code of the synthetic terminal `error` a client
    /// gives an execution (or a session subscription) whose consumer fell behind, after
    /// cancelling it (see `clients/CONTRACT.md`). The same code in every client.
    SlowConsumer,
    /// A code this version of the protocol crate does not know (sent by a newer gateway).
    #[serde(other)]
    Other,
}

impl ErrorCode {
    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadRequest => "bad_request",
            Self::TooLarge => "too_large",
            Self::DuplicateId => "duplicate_id",
            Self::UnknownExecution => "unknown_execution",
            Self::UnknownLanguage => "unknown_language",
            Self::InvalidLimit => "invalid_limit",
            Self::SpawnFailed => "spawn_failed",
            Self::TooManyExecutions => "too_many_executions",
            Self::TooManySessions => "too_many_sessions",
            Self::UnknownSession => "unknown_session",
            Self::StdinClosed => "stdin_closed",
            Self::StdinFull => "stdin_full",
            Self::ShuttingDown => "shutting_down",
            Self::KernelLost => "kernel_lost",
            Self::GatewayBusy => "gateway_busy",
            Self::Internal => "internal",
            Self::NotPermitted => "not_permitted",
            Self::NotATerminal => "not_a_terminal",
            Self::NoWorkspace => "no_workspace",
            Self::InvalidPath => "invalid_path",
            Self::NotFound => "not_found",
            Self::WorkspaceFull => "workspace_full",
            Self::KernelBusy => "kernel_busy",
            Self::NoKernel => "no_kernel",
            Self::QueryTimeout => "query_timeout",
            Self::SlowConsumer => "slow_consumer",
            Self::Other => "other",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
