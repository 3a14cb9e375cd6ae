//! The executions this socket started ([`OwnExecutions`]), and the frames routed to a
//! running execution by id: `stdin` (queued within the execution's frame and byte
//! budgets and the gateway's buffer budget), `cancel` and `resize`. With `session`, the id is
//! looked up in that session (which this socket must read); without, among the
//! executions this socket started. Executions belong to their sessions: this is only
//! where they are found from here.

use super::frames::{unknown_session, Connection, Refusal};
use crate::buffer_budget::BufferBudget;
use crate::execution::{self, StdinChunk};
use crate::session::{Known, Session};
use sluice_protocol::{CancelFrame, ErrorCode, ResizeFrame, StdinFrame};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc::error::TrySendError;

/// Executions this socket started, by id, with the session each runs in and its
/// finished flag; and how many of them have not ended.
#[derive(Debug, Default)]
pub(super) struct OwnExecutions {
    started: HashMap<String, (Arc<Session>, Arc<AtomicBool>)>,
    /// Executions this socket started whose task has not ended.
    running: Arc<AtomicUsize>,
}

/// One execution counted in [`OwnExecutions::running`] until dropped (its task ends).
#[derive(Debug)]
pub(super) struct RunningHere(Arc<AtomicUsize>);

impl Drop for RunningHere {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl OwnExecutions {
    /// True if this socket started an execution `id` that has not finished.
    pub(super) fn is_running(&self, id: &str) -> bool {
        self.started
            .get(id)
            .is_some_and(|(_, finished)| !finished.load(Ordering::Acquire))
    }

    /// Executions this socket started whose task has not ended.
    pub(super) fn running(&self) -> usize {
        self.running.load(Ordering::Acquire)
    }

    /// Remembers a new execution; it counts as running until the guard is dropped.
    /// Finished ones are forgotten once there are `2 * max_here` entries.
    pub(super) fn record(
        &mut self,
        id: String,
        session: Arc<Session>,
        finished: Arc<AtomicBool>,
        max_here: usize,
    ) -> RunningHere {
        if self.started.len() >= 2 * max_here {
            self.started
                .retain(|_, (_, finished)| !finished.load(Ordering::Acquire));
        }
        self.started.insert(id, (session, finished));
        self.running.fetch_add(1, Ordering::AcqRel);
        RunningHere(self.running.clone())
    }

    /// The session of the execution `id` this socket started.
    fn session_of(&self, id: &str) -> Option<Arc<Session>> {
        self.started.get(id).map(|(session, _)| session.clone())
    }
}

impl Connection {
    /// The session a `stdin` or `cancel` frame's execution runs in.
    fn session_of(&self, session: Option<&str>, id: &str) -> Result<Arc<Session>, Refusal> {
        match session {
            Some(name) => self.link.session(name).ok_or_else(|| unknown_session(name)),
            None => self.started.session_of(id).ok_or_else(|| not_running(id)),
        }
    }

    /// Runs `act` on the running execution a `stdin` or `cancel` frame names.
    fn with_running(
        &self,
        session: Option<&str>,
        id: &str,
        act: impl FnOnce(&mut execution::ExecutionHandle) -> Result<(), Refusal>,
    ) -> Result<(), Refusal> {
        let session = self.session_of(session, id)?;
        session
            .with_execution(id, |known| match known {
                Known::Running(handle) if !handle.is_finished() => act(handle),
                _ => Err(not_running(id)),
            })
            .unwrap_or_else(|| Err(not_running(id)))
    }

    pub(super) async fn stdin(&mut self, frame: StdinFrame) {
        let StdinFrame {
            id,
            session,
            data,
            eof,
        } = frame;
        let budget = self.state.config.stdin_queue_bytes;
        let memory = &self.buffers;
        let offered = self.with_running(session.as_deref(), &id, |handle| {
            offer_stdin(handle, &id, data, eof, budget, memory)
        });
        if let Err((code, message)) = offered {
            self.refuse(None, code, message).await;
        }
    }

    pub(super) async fn cancel(&mut self, frame: CancelFrame) {
        let CancelFrame { id, session } = frame;
        let cancelled = self.with_running(session.as_deref(), &id, |handle| {
            handle.cancel.cancel();
            Ok(())
        });
        if let Err((code, message)) = cancelled {
            self.refuse(None, code, message).await;
        }
    }
}

impl Connection {
    pub(super) async fn resize(&mut self, frame: ResizeFrame) {
        let ResizeFrame {
            id,
            session,
            cols,
            rows,
        } = frame;
        let resized = self.with_running(session.as_deref(), &id, |handle| {
            let Some(terminal) = &handle.terminal else {
                let message = format!(
                    "execution {id:?} does not run on a terminal: only an execute with \"tty\": true can be resized"
                );
                return Err((ErrorCode::NotATerminal, message));
            };
            terminal.resize(cols, rows).or_else(|err| {
                // The program ended a moment ago and took the terminal with it.
                tracing::debug!(%err, "resizing a terminal failed");
                Ok(())
            })
        });
        if let Err((code, message)) = resized {
            self.refuse(None, code, message).await;
        }
    }
}

/// Queues client input for a running program, within its byte and frame budgets and
/// the gateway's buffer budget (the queued bytes are held against it until written).
fn offer_stdin(
    handle: &mut execution::ExecutionHandle,
    id: &str,
    data: Option<String>,
    eof: bool,
    budget: usize,
    memory: &BufferBudget,
) -> Result<(), Refusal> {
    if handle.stdin_closed {
        let message = format!("stdin of execution {id:?} is already closed");
        return Err((ErrorCode::StdinClosed, message));
    }
    let bytes = data.as_ref().map_or(0, String::len);
    let queued = handle.stdin_queued_bytes.load(Ordering::Acquire);
    if bytes > 0 && queued + bytes > budget {
        let message = format!(
            "execution {id:?} has {queued} bytes of stdin not yet read (at most {budget} may wait); this input was dropped"
        );
        return Err((ErrorCode::StdinFull, message));
    }
    let Some(held) = memory.try_reserve(bytes) else {
        let message = format!(
            "the gateway's buffer budget of {} bytes is spent; this input for execution {id:?} was dropped, retry later",
            memory.limit()
        );
        return Err((ErrorCode::GatewayBusy, message));
    };
    // Counted before it is queued, so the writer's subtraction never comes first.
    handle.stdin_queued_bytes.fetch_add(bytes, Ordering::AcqRel);
    let sent = handle.stdin.try_send(StdinChunk {
        data,
        eof,
        memory: Some(held),
    });
    if sent.is_err() {
        handle.stdin_queued_bytes.fetch_sub(bytes, Ordering::AcqRel);
    }
    match sent {
        Ok(()) => {
            // A terminal's end of input is a typed Ctrl-D: more may follow.
            handle.stdin_closed = eof && handle.terminal.is_none();
            Ok(())
        }
        Err(TrySendError::Full(_)) => Err((
            ErrorCode::StdinFull,
            format!(
                "execution {id:?} is not reading its stdin fast enough; this input was dropped"
            ),
        )),
        Err(TrySendError::Closed(_)) => {
            handle.stdin_closed = true;
            Err((
                ErrorCode::StdinClosed,
                format!("execution {id:?} closed its stdin"),
            ))
        }
    }
}

fn not_running(id: &str) -> Refusal {
    (
        ErrorCode::UnknownExecution,
        format!("no execution {id:?} is running on this socket"),
    )
}
