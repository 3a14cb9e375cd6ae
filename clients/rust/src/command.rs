//! The commands the handles ([`Client`](crate::Client), [`Execution`](crate::Execution),
//! [`SessionEvents`](crate::SessionEvents)) send the connection task, and [`call`], the
//! round trip of one that is answered.
//!
//! This is the only vocabulary between the two sides, as async-nats' `Command` is between
//! its `Client` and its `ConnectionHandler`: the handles build commands and never see the
//! task's state; the task ([`crate::connection`]) receives them from one bounded queue and
//! never sees a handle. Neither side imports the other.

use crate::queue::EventSender;
use crate::shared::Shared;
use crate::ClientError;
use sluice_protocol::Catalog;
use tokio::sync::{mpsc, oneshot};

/// The reply channel of a command; dropped unanswered only when the connection ends.
pub(crate) type Reply<T> = oneshot::Sender<Result<T, ClientError>>;

/// What handles ask of the connection task.
pub(crate) enum Command {
    /// Register a route for `id` and send its `execute` frame (already encoded), unless
    /// `id` is still running.
    Execute {
        id: String,
        serial: u64,
        /// The session named in the request, if any.
        session: Option<String>,
        frame: String,
        events: EventSender,
        reply: Reply<()>,
    },
    /// Send a `stdin` frame, if the execution is still running.
    Stdin {
        id: String,
        serial: u64,
        data: Option<String>,
        eof: bool,
        reply: Reply<()>,
    },
    /// Send a `resize` frame, if the execution is still running.
    Resize {
        id: String,
        serial: u64,
        cols: u16,
        rows: u16,
        reply: Reply<()>,
    },
    /// Send a `cancel` frame once, if the execution is still running.
    Cancel {
        id: String,
        serial: u64,
        reply: Reply<()>,
    },
    /// The `Execution` was dropped before its terminal event: discard its events until the
    /// terminal one, and cancel it.
    Abandon { id: String, serial: u64 },
    /// Deliver `session`'s events after `since` to a new subscriber `key`; answered once
    /// the gateway has accepted or refused the `attach`.
    Attach {
        key: u64,
        session: String,
        since: u64,
        /// Open the session with a workspace if it has none (`attach`'s `workspace`).
        workspace: bool,
        events: EventSender,
        reply: Reply<()>,
    },
    /// Stop delivering to subscriber `key` (and stop reading its session if nothing else
    /// here needs it).
    Detach { key: u64, reply: Option<Reply<()>> },
    /// Send a `runtimes` frame; answered by the `runtimes` event that answers it.
    Runtimes { reply: Reply<Catalog> },
    /// Send a `restart` of a session's interpreter; the reply waits for `restarted`.
    Restart { session: String, reply: Reply<()> },
    /// Send a file frame (already encoded) whose answers carry `request`; answered with
    /// them all once the last has come (or with the refusal). `retry`: sent again on a
    /// new socket if the connection drops before the answer (a read or a list), else
    /// failed then (a write or a delete may or may not have happened).
    File {
        request: String,
        frame: String,
        retry: bool,
        reply: Reply<Vec<sluice_protocol::Event>>,
    },
    /// Close the connection.
    Close,
}

/// Sends a command that carries a reply channel and waits for the reply.
pub(crate) async fn call<T>(
    commands: &mpsc::Sender<Command>,
    shared: &Shared,
    command: impl FnOnce(Reply<T>) -> Command,
) -> Result<T, ClientError> {
    let (reply, response) = oneshot::channel();
    if commands.send(command(reply)).await.is_err() {
        return Err(shared.closed_error());
    }
    // The task drops the reply sender unanswered only when the connection ends.
    response
        .await
        .unwrap_or_else(|_| Err(shared.closed_error()))
}
