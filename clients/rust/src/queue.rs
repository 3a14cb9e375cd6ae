//! The event buffer of one [`Execution`](crate::Execution) or
//! [`SessionEvents`](crate::SessionEvents): a queue bounded in bytes that the connection
//! task fills without ever waiting.
//!
//! The connection task holds the [`EventSender`], the `Execution` the [`EventReceiver`].
//! A push either queues the event and wakes the consumer, or, when the consumer has let
//! more than the budget pile up, marks the queue as overflowed and drops the event. The
//! consumer drains what was queued, then learns of the overflow; only then does it see the
//! queue closed. So one neglected execution can never stall the socket for the others,
//! memory stays bounded, and nothing is lost without the consumer being told.

use sluice_protocol::Event;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

/// What one buffered event counts for, on top of the length of its `data`: the event's
/// own fields and the queue slot.
pub(crate) const EVENT_OVERHEAD_BYTES: usize = 256;

/// The bytes an event counts for against the budget.
pub(crate) fn event_cost(event: &Event) -> usize {
    event.data.len().saturating_add(EVENT_OVERHEAD_BYTES)
}

/// Creates a queue whose unread events may count for at most `limit` bytes, for one
/// execution: its terminal event always fits.
pub(crate) fn event_queue(limit: usize) -> (EventSender, EventReceiver) {
    queue(limit, true)
}

/// Creates a queue whose unread events may count for at most `limit` bytes, for a whole
/// session: the terminal events of its executions count like any other.
pub(crate) fn session_queue(limit: usize) -> (EventSender, EventReceiver) {
    queue(limit, false)
}

fn queue(limit: usize, terminal_fits: bool) -> (EventSender, EventReceiver) {
    let shared = Arc::new(Mutex::new(State {
        events: VecDeque::new(),
        bytes: 0,
        limit,
        terminal_fits,
        waker: None,
        sender_gone: false,
        receiver_gone: false,
        overflow: None,
    }));
    (
        EventSender {
            shared: Arc::clone(&shared),
        },
        EventReceiver { shared },
    )
}

/// The consumer let its unread events grow past the budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Overflow {
    /// The bytes the buffer would have held with the event that did not fit.
    pub(crate) buffered_bytes: usize,
    /// The budget ([`ClientOptions::execution_buffer_bytes`](crate::ClientOptions::execution_buffer_bytes)).
    pub(crate) limit: usize,
}

struct State {
    /// Events not yet received, in arrival order.
    events: VecDeque<Event>,
    /// What `events` counts for ([`event_cost`] summed).
    bytes: usize,
    /// The budget for `bytes`.
    limit: usize,
    /// A terminal event is queued even over the budget (the queue of one execution).
    terminal_fits: bool,
    /// The consumer waiting for an event, if any.
    waker: Option<Waker>,
    /// The sender was dropped: no event follows the ones queued.
    sender_gone: bool,
    /// The receiver was dropped: pushing is pointless.
    receiver_gone: bool,
    /// Set once, when an event did not fit; no event is queued after it.
    overflow: Option<Overflow>,
}

fn lock(shared: &Mutex<State>) -> MutexGuard<'_, State> {
    // The lock is never held across anything that can panic halfway through a change.
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What became of a pushed event.
#[derive(Debug)]
pub(crate) enum Push {
    /// Queued, and the consumer woken.
    Queued,
    /// It did not fit: the queue is now overflowed and takes no more events. The consumer
    /// will receive what was queued, then [`Received::Overflowed`].
    Overflowed(Overflow),
    /// The receiver is gone; here is the event back.
    ReceiverGone(Box<Event>),
}

/// The connection task's half of the queue. Dropping it closes the queue: once the
/// consumer has received everything queued (and the overflow, if any), it sees
/// [`Received::Closed`].
pub(crate) struct EventSender {
    shared: Arc<Mutex<State>>,
}

impl EventSender {
    /// Queues `event` without waiting.
    ///
    /// An event is refused (and the queue overflows) only when it would take the buffered
    /// bytes over the budget while other events are still unread. A terminal event is
    /// always queued: it is the last one, so it cannot make the buffer grow for long, and
    /// losing it would lose how the execution ended. An event that arrives while the
    /// buffer is empty is also always queued, so a consumer that keeps up is never cut
    /// off, however small the budget. Memory is thus bounded by the budget plus one
    /// event.
    pub(crate) fn push(&self, event: Event) -> Push {
        let waker = {
            let mut state = lock(&self.shared);
            if state.receiver_gone {
                return Push::ReceiverGone(Box::new(event));
            }
            if let Some(overflow) = state.overflow {
                return Push::Overflowed(overflow);
            }
            let cost = event_cost(&event);
            let bytes = state.bytes.saturating_add(cost);
            let fits_anyway = state.terminal_fits && event.is_terminal();
            if bytes > state.limit && !state.events.is_empty() && !fits_anyway {
                let overflow = Overflow {
                    buffered_bytes: bytes,
                    limit: state.limit,
                };
                state.overflow = Some(overflow);
                return Push::Overflowed(overflow);
            }
            state.bytes = bytes;
            state.events.push_back(event);
            state.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        Push::Queued
    }

    /// Queues the last event the consumer will receive (a synthetic one saying why the
    /// stream ends), over the budget if need be, then closes the queue. Does nothing if
    /// the queue overflowed (the consumer is told that instead) or the receiver is gone.
    pub(crate) fn finish(self, event: Event) {
        let waker = {
            let mut state = lock(&self.shared);
            if state.receiver_gone || state.overflow.is_some() {
                return;
            }
            state.bytes = state.bytes.saturating_add(event_cost(&event));
            state.events.push_back(event);
            state.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        // Dropping `self` closes the queue.
    }
}

impl Drop for EventSender {
    fn drop(&mut self) {
        let waker = {
            let mut state = lock(&self.shared);
            state.sender_gone = true;
            state.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// What the consumer receives, in this order: every queued event, then the overflow (if
/// the queue overflowed), then `Closed` once the sender is gone.
#[derive(Debug)]
pub(crate) enum Received {
    Event(Box<Event>),
    Overflowed(Overflow),
    Closed,
}

/// The `Execution`'s half of the queue. Dropping it frees the buffered events at once and
/// makes later pushes return [`Push::ReceiverGone`].
pub(crate) struct EventReceiver {
    shared: Arc<Mutex<State>>,
}

impl EventReceiver {
    /// Takes the next item, or registers `cx`'s waker and returns `Pending`.
    ///
    /// After an overflow is returned, this returns `Pending` until the sender is dropped
    /// and `Closed` after; callers stop at the overflow.
    pub(crate) fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Received> {
        let mut state = lock(&self.shared);
        if let Some(event) = state.events.pop_front() {
            state.bytes = state.bytes.saturating_sub(event_cost(&event));
            return Poll::Ready(Received::Event(Box::new(event)));
        }
        if let Some(overflow) = state.overflow.take() {
            return Poll::Ready(Received::Overflowed(overflow));
        }
        if state.sender_gone {
            return Poll::Ready(Received::Closed);
        }
        match &mut state.waker {
            Some(waker) => waker.clone_from(cx.waker()),
            slot @ None => *slot = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

impl Drop for EventReceiver {
    fn drop(&mut self) {
        let events = {
            let mut state = lock(&self.shared);
            state.receiver_gone = true;
            state.bytes = 0;
            state.waker = None;
            std::mem::take(&mut state.events)
        };
        // Freed outside the lock.
        drop(events);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_protocol::EventKind;

    fn output(sequence: u64, data: &str) -> Event {
        let mut event = Event::new(EventKind::Stdout, Some("e1".into()), data);
        event.sequence = sequence;
        event
    }

    fn recv(receiver: &mut EventReceiver) -> Poll<Received> {
        receiver.poll_recv(&mut Context::from_waker(Waker::noop()))
    }

    fn sequence(received: Poll<Received>) -> u64 {
        match received {
            Poll::Ready(Received::Event(event)) => event.sequence,
            other => panic!("expected an event, got {other:?}"),
        }
    }

    #[test]
    fn events_come_out_in_order_then_closed() {
        let (sender, mut receiver) = event_queue(1 << 20);
        assert!(recv(&mut receiver).is_pending());
        for n in 1..=3 {
            assert!(matches!(sender.push(output(n, "x")), Push::Queued));
        }
        drop(sender);
        for n in 1..=3 {
            assert_eq!(sequence(recv(&mut receiver)), n);
        }
        assert!(matches!(recv(&mut receiver), Poll::Ready(Received::Closed)));
    }

    #[test]
    fn overflow_keeps_what_was_queued_and_is_reported_once() {
        let data = "y".repeat(100);
        let cost = event_cost(&output(1, &data));
        let (sender, mut receiver) = event_queue(3 * cost);
        for n in 1..=3 {
            assert!(matches!(sender.push(output(n, &data)), Push::Queued));
        }
        let expected = Overflow {
            buffered_bytes: 4 * cost,
            limit: 3 * cost,
        };
        match sender.push(output(4, &data)) {
            Push::Overflowed(overflow) => assert_eq!(overflow, expected),
            other => panic!("expected an overflow, got {other:?}"),
        }
        // Nothing more is queued, not even after the consumer made room or a terminal.
        assert_eq!(sequence(recv(&mut receiver)), 1);
        assert!(matches!(sender.push(output(5, "")), Push::Overflowed(_)));
        let mut terminal =
            Event::error(Some("e1".into()), sluice_protocol::ErrorCode::Internal, "");
        terminal.sequence = 6;
        assert!(matches!(sender.push(terminal), Push::Overflowed(_)));
        assert_eq!(sequence(recv(&mut receiver)), 2);
        assert_eq!(sequence(recv(&mut receiver)), 3);
        match recv(&mut receiver) {
            Poll::Ready(Received::Overflowed(overflow)) => assert_eq!(overflow, expected),
            other => panic!("expected the overflow, got {other:?}"),
        }
        assert!(recv(&mut receiver).is_pending());
        drop(sender);
        assert!(matches!(recv(&mut receiver), Poll::Ready(Received::Closed)));
    }

    #[test]
    fn an_empty_buffer_takes_any_event_and_a_terminal_always_fits() {
        let (sender, mut receiver) = event_queue(1);
        let big = "z".repeat(10_000);
        assert!(matches!(sender.push(output(1, &big)), Push::Queued));
        let mut terminal = Event::new(EventKind::Completed, Some("e1".into()), "");
        terminal.sequence = 2;
        assert!(matches!(sender.push(terminal), Push::Queued));
        assert_eq!(sequence(recv(&mut receiver)), 1);
        assert_eq!(sequence(recv(&mut receiver)), 2);
        // A consumer that keeps up is never cut off.
        for n in 3..100 {
            assert!(matches!(sender.push(output(n, &big)), Push::Queued));
            assert_eq!(sequence(recv(&mut receiver)), n);
        }
    }

    #[test]
    fn a_session_queue_counts_terminal_events_and_finish_always_fits() {
        let (sender, mut receiver) = session_queue(1);
        assert!(matches!(sender.push(output(1, "a")), Push::Queued));
        let mut terminal = Event::new(EventKind::Completed, Some("e1".into()), "");
        terminal.sequence = 2;
        assert!(matches!(sender.push(terminal), Push::Overflowed(_)));
        assert_eq!(sequence(recv(&mut receiver)), 1);
        assert!(matches!(
            recv(&mut receiver),
            Poll::Ready(Received::Overflowed(_))
        ));

        let (sender, mut receiver) = session_queue(1);
        assert!(matches!(sender.push(output(1, "a")), Push::Queued));
        sender.finish(output(2, "last words"));
        assert_eq!(sequence(recv(&mut receiver)), 1);
        assert_eq!(sequence(recv(&mut receiver)), 2);
        assert!(matches!(recv(&mut receiver), Poll::Ready(Received::Closed)));
    }

    #[test]
    fn dropped_receiver_frees_events_and_refuses_pushes() {
        let (sender, receiver) = event_queue(1 << 20);
        assert!(matches!(sender.push(output(1, "a")), Push::Queued));
        drop(receiver);
        assert!(lock(&sender.shared).events.is_empty());
        match sender.push(output(2, "b")) {
            Push::ReceiverGone(event) => assert_eq!(event.sequence, 2),
            other => panic!("expected the event back, got {other:?}"),
        }
    }

    #[test]
    fn a_push_wakes_the_waiting_consumer() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::task::Wake;

        struct Count(AtomicUsize);
        impl Wake for Count {
            fn wake(self: Arc<Self>) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(Arc::clone(&count));
        let (sender, mut receiver) = event_queue(1 << 20);
        assert!(receiver
            .poll_recv(&mut Context::from_waker(&waker))
            .is_pending());
        sender.push(output(1, "a"));
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert!(receiver
            .poll_recv(&mut Context::from_waker(&waker))
            .is_ready());
        assert!(receiver
            .poll_recv(&mut Context::from_waker(&waker))
            .is_pending());
        drop(sender);
        assert_eq!(count.0.load(Ordering::SeqCst), 2);
    }
}
