//! [`Execution`]: the handle to one running program, a stream of its events.

use crate::command::{call, Command};
use crate::queue::{EventReceiver, Overflow, Received};
use crate::shared::Shared;
use crate::synthetic::{is_synthetic, slow_consumer_error, synthetic_error};
use crate::{ClientError, Outcome};
use futures::{Stream, StreamExt};
use sluice_protocol::{Event, EventKind};
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use tokio::sync::mpsc;

/// One execution started by [`Client::execute`](crate::Client::execute).
///
/// A [`Stream`] of the execution's [`Event`]s in the order the gateway sent them:
/// `started`, `stdout`/`stderr`, then exactly one terminal event (`completed`,
/// `cancelled`, `resource_limit` or `error`), after which the stream ends. If the
/// connection ends before the terminal event arrives, the stream yields a synthetic
/// terminal `error` event (code `internal`, `sequence` 0, see
/// [`is_synthetic`]) instead, so a consumer always sees exactly one
/// terminal event.
///
/// # Reconnecting
///
/// When the connection drops and the client reconnects (see
/// [`ClientOptions::reconnect`](crate::ClientOptions::reconnect)), the stream simply goes
/// on: the client resumes the execution's session after the last event it received, so
/// every event arrives exactly once, in order. Only if the gateway no longer had some of
/// them (it keeps every event the client has not acknowledged, so this takes another
/// socket leading the session meanwhile) does the stream carry a `gap` event where they
/// were; [`wait`](Self::wait) then fails with [`ClientError::EventsLost`]. If the
/// connection cannot be re-established within the policy's bound, the stream ends with a
/// synthetic terminal `error` as above.
///
/// Input sent with [`send_stdin`](Self::send_stdin) while the client is reconnecting is
/// queued and sent once it is connected again. Input already written to a socket that
/// then dropped may or may not have reached the program (it is never sent twice).
///
/// # Buffering, and consumers that fall behind
///
/// Events wait in this execution's own buffer until the stream is polled. The connection
/// never waits for a consumer, so executions on one client are independent: an execution
/// whose events are not being read does not hold up any other, and it is fine to run two
/// executions and [`wait`](Self::wait) for the second one first.
///
/// The buffer is bounded by [`ClientOptions::execution_buffer_bytes`](crate::ClientOptions::execution_buffer_bytes)
/// (16 MiB by default; an event counts for its `data` plus 256 bytes). If more than that
/// piles up unread, the consumer has fallen behind, and the client:
///
/// 1. sends `cancel` for the execution (the gateway stops the program);
/// 2. discards the execution's later events, including the gateway's terminal event;
/// 3. still delivers every event buffered so far, in order, followed by exactly one
///    synthetic terminal `error` event: code `slow_consumer`, `sequence` 0 (see
///    [`is_synthetic`]), and a message saying the consumer fell behind.
///
/// [`wait`](Self::wait) then returns [`ClientError::SlowConsumer`]. Nothing is dropped
/// without the consumer being told. The execution id stays in use until the gateway's
/// terminal event arrives.
///
/// # Dropping
///
/// Dropping an `Execution` before its terminal event cancels the execution (best effort,
/// without blocking: if the command queue is full at that moment, the cancel is sent
/// when the connection next finds the execution's queue gone, that is at its next
/// event). Its later events are discarded; its id stays in use until the gateway sends
/// the terminal event.
pub struct Execution {
    id: String,
    /// Tells this execution apart from others that used the same id before or after it.
    serial: u64,
    /// Receiving half of this execution's event buffer; the connection task holds the
    /// sender and drops it after the terminal event, when the buffer overflows, or when
    /// the connection ends.
    events: EventReceiver,
    /// Sending half of the connection's command queue (stdin, cancel, and the
    /// abandon-on-drop notice).
    commands: mpsc::Sender<Command>,
    shared: Arc<Shared>,
    /// The terminal event (real or synthetic) has been yielded; the stream is over.
    finished: bool,
    /// The session, once an event named it.
    session: Option<String>,
    /// The buffer overflowed and the synthetic terminal event saying so was yielded.
    fell_behind: Option<Overflow>,
    /// The first `gap` yielded: events of the session that may have been this
    /// execution's were lost.
    lost: Option<(u64, u64)>,
}

impl fmt::Debug for Execution {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Execution")
            .field("id", &self.id)
            .field("session", &self.session)
            .field("finished", &self.finished)
            .finish_non_exhaustive()
    }
}

impl Execution {
    pub(crate) fn new(
        id: String,
        serial: u64,
        events: EventReceiver,
        commands: mpsc::Sender<Command>,
        shared: Arc<Shared>,
    ) -> Self {
        Self {
            id,
            serial,
            events,
            commands,
            shared,
            finished: false,
            session: None,
            fell_behind: None,
            lost: None,
        }
    }

    /// The execution id (chosen by the caller, or generated by the client).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The session the execution runs in, once one of its events has been received.
    pub fn session(&self) -> Option<&str> {
        self.session.as_deref()
    }

    /// Writes `data` to the program's standard input.
    ///
    /// Returns once the frame is queued on the socket. The gateway reports problems
    /// (`stdin_full` when the program does not read, `stdin_closed` after
    /// [`close_stdin`](Self::close_stdin)) as `error` events with no id, which arrive on
    /// [`Client::socket_events`](crate::Client::socket_events). Data larger than one frame
    /// ([`ClientOptions::max_frame_bytes`](crate::ClientOptions::max_frame_bytes)) is
    /// refused with [`ClientError::FrameTooLarge`]: split it into several calls.
    pub async fn send_stdin(&self, data: impl Into<String>) -> Result<(), ClientError> {
        self.stdin(Some(data.into()), false).await
    }

    /// Closes the program's standard input (end of file). On a terminal (`tty`) it types
    /// the terminal's end-of-file character (Ctrl-D) instead, and input may go on.
    pub async fn close_stdin(&self) -> Result<(), ClientError> {
        self.stdin(None, true).await
    }

    /// Gives a terminal execution's (`tty`) terminal a new size; its program gets
    /// SIGWINCH. The gateway refuses it for an execution without a terminal
    /// (`not_a_terminal`, on [`Client::socket_events`](crate::Client::socket_events)).
    pub async fn resize(&self, cols: u16, rows: u16) -> Result<(), ClientError> {
        if self.finished {
            return Err(ClientError::ExecutionFinished(self.id.clone()));
        }
        call(&self.commands, &self.shared, |reply| Command::Resize {
            id: self.id.clone(),
            serial: self.serial,
            cols,
            rows,
            reply,
        })
        .await
    }

    async fn stdin(&self, data: Option<String>, eof: bool) -> Result<(), ClientError> {
        if self.finished {
            return Err(ClientError::ExecutionFinished(self.id.clone()));
        }
        call(&self.commands, &self.shared, |reply| Command::Stdin {
            id: self.id.clone(),
            serial: self.serial,
            data,
            eof,
            reply,
        })
        .await
    }

    /// Asks the gateway to stop the program (SIGTERM, then SIGKILL after its grace period).
    ///
    /// Keep reading the stream: output produced before the kill still arrives, then the
    /// `cancelled` terminal event. Cancelling twice sends one `cancel` frame; cancelling
    /// an execution that already ended does nothing.
    pub async fn cancel(&self) -> Result<(), ClientError> {
        if self.finished {
            return Ok(());
        }
        call(&self.commands, &self.shared, |reply| Command::Cancel {
            id: self.id.clone(),
            serial: self.serial,
            reply,
        })
        .await
    }

    /// Reads every remaining event and collects them into an [`Outcome`].
    ///
    /// Fails with [`ClientError::Interrupted`] if the connection ended (for good) before
    /// the terminal event, with [`ClientError::SlowConsumer`] if the execution was
    /// cancelled because its events piled up unread (see [the type's documentation](Self)),
    /// with [`ClientError::EventsLost`] if a `gap` says some of its events were lost, and
    /// with [`ClientError::Protocol`] if base64 output does not decode.
    pub async fn wait(mut self) -> Result<Outcome, ClientError> {
        let mut events = Vec::new();
        while let Some(event) = self.next().await {
            events.push(event);
        }
        if let Some(overflow) = self.fell_behind {
            return Err(ClientError::SlowConsumer {
                id: self.id.clone(),
                buffered_bytes: overflow.buffered_bytes,
                limit: overflow.limit,
            });
        }
        match events.last() {
            Some(last) if is_synthetic(last) => Err(ClientError::Interrupted {
                id: self.id.clone(),
                reason: last.data.clone(),
            }),
            _ => match self.lost {
                Some((missed_from, resume_from)) => Err(ClientError::EventsLost {
                    id: self.id.clone(),
                    missed_from,
                    resume_from,
                }),
                None => Outcome::from_events(self.id.clone(), events),
            },
        }
    }

    /// The synthetic terminal event for a connection that ended first.
    fn lost(&self) -> Event {
        let reason = self.shared.end_reason();
        let message = format!("connection lost before the terminal event: {reason}");
        synthetic_error(Some(self.id.clone()), self.session.clone(), message)
    }

    /// The synthetic terminal event for a consumer that fell behind.
    fn slow(&mut self, overflow: Overflow) -> Event {
        self.fell_behind = Some(overflow);
        let message = format!(
            "the consumer fell behind: {} bytes of events would have been buffered unread, \
             over the execution_buffer_bytes limit of {} bytes; the client cancelled the \
             execution and discarded its later events",
            overflow.buffered_bytes, overflow.limit
        );
        slow_consumer_error(Some(self.id.clone()), self.session.clone(), message)
    }
}

impl Stream for Execution {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        let this = &mut *self;
        if this.finished {
            return Poll::Ready(None);
        }
        let event = match ready!(this.events.poll_recv(cx)) {
            Received::Event(event) => *event,
            Received::Overflowed(overflow) => this.slow(overflow),
            // The connection task dropped the sender without a terminal event: it ended.
            Received::Closed => this.lost(),
        };
        if event.is_terminal() {
            this.finished = true;
        }
        if event.kind == EventKind::Gap && this.lost.is_none() {
            if let (Some(from), Some(to)) = (event.missed_from, event.resume_from) {
                this.lost = Some((from, to));
            }
        }
        if this.session.is_none() {
            this.session.clone_from(&event.session);
        }
        Poll::Ready(Some(event))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        if self.finished {
            (0, Some(0))
        } else {
            (1, None)
        }
    }
}

impl Drop for Execution {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let notice = Command::Abandon {
            id: std::mem::take(&mut self.id),
            serial: self.serial,
        };
        if let Err(mpsc::error::TrySendError::Full(_)) = self.commands.try_send(notice) {
            tracing::debug!(
                "command queue full: the dropped execution is cancelled at its next event"
            );
        }
    }
}
