//! [`SessionEvents`]: the events of one session, from [`Client::attach`](crate::Client::attach).

use crate::command::{call, Command};
use crate::queue::{EventReceiver, Overflow, Received};
use crate::shared::Shared;
use crate::synthetic::slow_consumer_error;
use crate::ClientError;
use futures::Stream;
use sluice_protocol::{Event, EventKind};
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use tokio::sync::mpsc;

/// The events of one session, from [`Client::attach`](crate::Client::attach).
///
/// A [`Stream`] of every event of the session after the `since` it was attached with, in
/// sequence order, each exactly once, whichever executions (this client's or anybody's)
/// they belong to. It survives reconnects: after the connection drops, the client attaches
/// again after the last sequence it delivered, so the stream goes on with no gap and no
/// duplicate. The gateway's `attached` answers (to the first `attach`, and to each one a
/// reconnect makes) are not yielded: every item is an event of the session, a `gap`, or
/// the synthetic `error` that ends the stream.
///
/// Events the gateway no longer had when they were asked for (the session's replay buffer
/// is bounded) are announced by one `gap` event (`missed_from`, `resume_from`, `sequence` =
/// `resume_from - 1`) in their place: nothing is skipped without the consumer being told.
///
/// The stream does not end when the session's executions end (a session can always run
/// more): stop reading it with [`detach`](Self::detach) or by dropping it. It ends by
/// itself, after one synthetic `error` event (`sequence` 0, see
/// [`is_synthetic`](crate::is_synthetic)), when the connection ends for good (closed, or
/// reconnecting gave up), when the session could not be resumed after a reconnect (the
/// gateway's code, for example `unknown_session`: it ended meanwhile), or when the
/// consumer fell behind.
///
/// # Buffering
///
/// Like an [`Execution`](crate::Execution)'s, the buffer holds at most
/// [`ClientOptions::execution_buffer_bytes`](crate::ClientOptions::execution_buffer_bytes)
/// of unread events. A consumer that falls further behind is detached: it receives what
/// was buffered, then a synthetic `error` (code `slow_consumer`), and the stream ends. The
/// session's executions are not affected.
///
/// # Dropping
///
/// Dropping it detaches (best effort, without blocking). The client stops reading the
/// session when nothing else of it needs it.
pub struct SessionEvents {
    session: String,
    /// This subscription among the client's.
    key: u64,
    events: EventReceiver,
    commands: mpsc::Sender<Command>,
    shared: Arc<Shared>,
    /// The last sequence yielded (or the `since` it was attached after).
    last: u64,
    /// The stream has ended.
    finished: bool,
    /// The subscription was already given up (detached, or ended by the client).
    released: bool,
}

impl fmt::Debug for SessionEvents {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionEvents")
            .field("session", &self.session)
            .field("last", &self.last)
            .field("finished", &self.finished)
            .finish_non_exhaustive()
    }
}

impl SessionEvents {
    pub(crate) fn new(
        session: String,
        key: u64,
        since: u64,
        events: EventReceiver,
        commands: mpsc::Sender<Command>,
        shared: Arc<Shared>,
    ) -> Self {
        Self {
            session,
            key,
            events,
            commands,
            shared,
            last: since,
            finished: false,
            released: false,
        }
    }

    /// The session's name.
    pub fn session(&self) -> &str {
        &self.session
    }

    /// The sequence of the last event yielded (for a `gap`, `resume_from - 1`), or the
    /// `since` the stream was attached after. Attaching again after it (from another
    /// client, for example) continues where this stream stopped.
    pub fn last_sequence(&self) -> u64 {
        self.last
    }

    /// Stops receiving the session's events: the stream ends at once (events still
    /// buffered are dropped), and the client stops reading the session if none of its
    /// executions runs there and nothing else attached it. The session and its
    /// executions go on.
    pub async fn detach(mut self) -> Result<(), ClientError> {
        self.released = true;
        self.finished = true;
        let key = self.key;
        call(&self.commands, &self.shared, |reply| Command::Detach {
            key,
            reply: Some(reply),
        })
        .await
    }

    /// The synthetic event for a consumer that fell behind.
    fn slow(&mut self, overflow: Overflow) -> Event {
        let message = format!(
            "the consumer fell behind: {} bytes of events would have been buffered unread, \
             over the execution_buffer_bytes limit of {} bytes; the client detached from \
             the session",
            overflow.buffered_bytes, overflow.limit
        );
        slow_consumer_error(None, Some(self.session.clone()), message)
    }
}

impl Stream for SessionEvents {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        let this = &mut *self;
        if this.finished {
            return Poll::Ready(None);
        }
        match ready!(this.events.poll_recv(cx)) {
            Received::Event(event) => {
                let event = *event;
                if event.kind == EventKind::Gap {
                    if let Some(resume_from) = event.resume_from {
                        this.last = resume_from.saturating_sub(1);
                    }
                } else if event.sequence > 0 {
                    this.last = event.sequence;
                }
                Poll::Ready(Some(event))
            }
            Received::Overflowed(overflow) => {
                this.finished = true;
                this.released = true;
                Poll::Ready(Some(this.slow(overflow)))
            }
            Received::Closed => {
                this.finished = true;
                this.released = true;
                Poll::Ready(None)
            }
        }
    }
}

impl Drop for SessionEvents {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        let notice = Command::Detach {
            key: self.key,
            reply: None,
        };
        if let Err(mpsc::error::TrySendError::Full(_)) = self.commands.try_send(notice) {
            tracing::debug!(
                "command queue full: the dropped session subscription ends at its next event"
            );
        }
    }
}
