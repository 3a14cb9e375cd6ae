//! [`EventStream`]: one numbered stream of events and its replay buffer.
//!
//! Publishing stamps an event (sequence, timestamp), encodes it once and appends the
//! frame to a bounded ring; every socket reading the stream is a cursor into that ring
//! and takes shared copies of the same bytes. One reader, the *lead*, paces the
//! producers: an event the lead has not taken is never evicted, so when the ring is full
//! the programs wait (and block in `write`). Other readers never slow anyone down; one
//! that falls behind the ring's start is told so with a `gap` and continues from there.

use axum::extract::ws::Utf8Bytes;
use sluice_protocol::{Event, EventKind};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::Notify;

/// Identifies a socket among a stream's readers.
pub(crate) type SocketId = u64;

/// How much of a stream stays buffered for replay (at least: events the lead has not
/// taken stay beyond it while the producers wait).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ReplayCaps {
    pub(crate) events: usize,
    pub(crate) bytes: usize,
}

/// One encoded event in the ring.
#[derive(Debug)]
struct Frame {
    sequence: u64,
    text: Utf8Bytes,
}

/// A reader of the stream and how to wake it.
#[derive(Debug)]
struct Reader {
    socket: SocketId,
    wake: Arc<Notify>,
    /// It has sent an `ack` for this stream.
    acknowledges: bool,
}

#[derive(Debug)]
struct Inner {
    next_sequence: u64,
    last_timestamp: f64,
    ring: VecDeque<Frame>,
    ring_bytes: usize,
    readers: Vec<Reader>,
    /// The reader whose pace limits the producers, if one is attached.
    lead: Option<SocketId>,
    /// The highest sequence the lead (current or last) has taken.
    lead_taken: u64,
    /// The highest sequence the lead has acknowledged, once it acknowledges at all. A
    /// new lead inherits acknowledging (from the sequence it attached after).
    lead_acked: Option<u64>,
    /// Nobody will read any more: evict freely, never make a producer wait.
    closed: bool,
}

impl Inner {
    fn first_sequence(&self) -> u64 {
        self.ring
            .front()
            .map_or(self.next_sequence, |frame| frame.sequence)
    }

    fn over_caps(&self, caps: ReplayCaps) -> bool {
        self.ring.len() > caps.events || self.ring_bytes > caps.bytes
    }

    /// Frames after this are kept even when the ring is over its caps: the lead has
    /// not taken them, or (if it acknowledges) not acknowledged them.
    fn pinned(&self) -> u64 {
        self.lead_acked
            .map_or(self.lead_taken, |acked| acked.min(self.lead_taken))
    }

    fn front_evictable(&self) -> bool {
        self.closed
            || self
                .ring
                .front()
                .is_some_and(|frame| frame.sequence <= self.pinned())
    }

    fn has_room(&self, caps: ReplayCaps) -> bool {
        self.closed
            || (self.ring.len() < caps.events && self.ring_bytes < caps.bytes)
            || self.front_evictable()
    }
}

/// What [`EventStream::take`] found for one reader.
#[derive(Debug, Default)]
pub(crate) struct Taken {
    /// Events the reader will never get: `(missed_from, resume_from)`.
    pub(crate) gap: Option<(u64, u64)>,
    /// The reader's new cursor: the last sequence it has now taken (or skipped).
    pub(crate) cursor: u64,
    /// The last sequence published so far.
    pub(crate) head: u64,
}

/// One ordered stream of events: a session's, or a socket's own (refusals that belong
/// to no session).
#[derive(Debug)]
pub(crate) struct EventStream {
    /// `None` for a socket's own stream.
    session: Option<Arc<str>>,
    caps: ReplayCaps,
    inner: Mutex<Inner>,
    /// Producers waiting for room in the ring.
    room: Notify,
}

impl EventStream {
    pub(crate) fn new(session: Option<Arc<str>>, caps: ReplayCaps) -> Self {
        Self {
            session,
            caps: ReplayCaps {
                events: caps.events.max(1),
                bytes: caps.bytes.max(1),
            },
            inner: Mutex::new(Inner {
                next_sequence: 1,
                last_timestamp: 0.0,
                ring: VecDeque::new(),
                ring_bytes: 0,
                readers: Vec::new(),
                lead: None,
                lead_taken: 0,
                lead_acked: None,
                closed: false,
            }),
            room: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn session_id(&self) -> Option<&Arc<str>> {
        self.session.as_ref()
    }

    /// The last sequence published (0 before the first event).
    pub(crate) fn head(&self) -> u64 {
        self.lock().next_sequence - 1
    }

    /// Waits until the ring can take another event without dropping one the lead has
    /// not taken.
    pub(crate) async fn room(&self) {
        loop {
            let notified = self.room.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.lock().has_room(self.caps) {
                return;
            }
            notified.await;
        }
    }

    /// True when [`EventStream::room`] would return at once.
    #[cfg(test)]
    pub(crate) fn has_room(&self) -> bool {
        self.lock().has_room(self.caps)
    }

    /// Stamps, encodes and appends `event`, evicts what the caps allow, and wakes every
    /// reader. Returns the event's sequence.
    pub(crate) fn publish(&self, mut event: Event) -> u64 {
        event.session = self.session.as_deref().map(str::to_owned);
        let mut inner = self.lock();
        let sequence = inner.next_sequence;
        inner.next_sequence += 1;
        event.sequence = sequence;
        // Round to microseconds and never step back, even if the wall clock does.
        let now = (unix_now() * 1e6).round() / 1e6;
        inner.last_timestamp = inner.last_timestamp.max(now);
        event.timestamp = inner.last_timestamp;
        let text = Utf8Bytes::from(event.to_json());
        inner.ring_bytes += text.as_str().len();
        inner.ring.push_back(Frame { sequence, text });
        while inner.over_caps(self.caps) && inner.front_evictable() {
            if let Some(frame) = inner.ring.pop_front() {
                inner.ring_bytes -= frame.text.as_str().len();
            }
        }
        for reader in &inner.readers {
            reader.wake.notify_one();
        }
        sequence
    }

    /// Appends to `out` the frames after `cursor`, up to about `max_bytes` (at least one
    /// frame when there is one). Taking as the lead lets waiting producers go on.
    pub(crate) fn take(
        &self,
        socket: SocketId,
        cursor: u64,
        max_bytes: usize,
        out: &mut Vec<Utf8Bytes>,
    ) -> Taken {
        let mut inner = self.lock();
        let first = inner.first_sequence();
        let head = inner.next_sequence - 1;
        let mut taken = Taken {
            gap: None,
            cursor: cursor.min(head),
            head,
        };
        if taken.cursor + 1 < first {
            taken.gap = Some((taken.cursor + 1, first));
            taken.cursor = first - 1;
        }
        let skip = usize::try_from(taken.cursor + 1 - first).unwrap_or(usize::MAX);
        let mut bytes = 0;
        for frame in inner.ring.iter().skip(skip) {
            if bytes > 0 && bytes + frame.text.as_str().len() > max_bytes {
                break;
            }
            bytes += frame.text.as_str().len();
            out.push(frame.text.clone());
            taken.cursor = frame.sequence;
        }
        if inner.lead == Some(socket) && taken.cursor > inner.lead_taken {
            inner.lead_taken = taken.cursor;
            drop(inner);
            self.room.notify_waiters();
        }
        taken
    }

    /// Adds a reader that is woken on every event. It becomes the lead if asked to, or
    /// if the stream has none.
    pub(crate) fn add_reader(&self, socket: SocketId, wake: Arc<Notify>, lead: bool, cursor: u64) {
        let mut inner = self.lock();
        inner.readers.retain(|r| r.socket != socket);
        inner.readers.push(Reader {
            socket,
            wake,
            acknowledges: false,
        });
        if lead || inner.lead.is_none() {
            inner.lead = Some(socket);
            inner.lead_taken = cursor;
            if inner.lead_acked.is_some() {
                inner.lead_acked = Some(cursor);
            }
            drop(inner);
            self.room.notify_waiters();
        }
    }

    /// The client behind `socket` has received everything up to `sequence`. Only the
    /// lead's acknowledgements pace the stream. A reader that acknowledges takes the
    /// lead from one that does not (say an observer that inherited it when the
    /// acknowledging client's old connection went away): it is that client, resuming.
    pub(crate) fn ack(&self, socket: SocketId, sequence: u64) {
        let mut inner = self.lock();
        let head = inner.next_sequence - 1;
        let sequence = sequence.min(head);
        let Some(reader) = inner.readers.iter_mut().find(|r| r.socket == socket) else {
            return;
        };
        reader.acknowledges = true;
        if inner.lead != Some(socket) {
            let lead_acknowledges = inner
                .readers
                .iter()
                .any(|r| Some(r.socket) == inner.lead && r.acknowledges);
            if lead_acknowledges {
                return;
            }
            inner.lead = Some(socket);
            inner.lead_acked = Some(sequence);
        } else {
            let acked = inner.lead_acked.unwrap_or(0).max(sequence);
            inner.lead_acked = Some(acked);
        }
        drop(inner);
        self.room.notify_waiters();
    }

    /// Removes a reader. When it was the lead, the most recently added other reader
    /// (typically the same client, reconnected) leads from now on, inheriting what the
    /// old lead had taken or acknowledged; with no reader left, the stream keeps what the
    /// lead had not taken: the producers wait once the ring is full, until a reader
    /// attaches or the stream closes.
    pub(crate) fn remove_reader(&self, socket: SocketId) {
        let mut inner = self.lock();
        inner.readers.retain(|r| r.socket != socket);
        if inner.lead == Some(socket) {
            inner.lead = inner.readers.last().map(|r| r.socket);
            if let Some(reader) = inner.readers.last() {
                // The new lead may already be past what pins the ring.
                reader.wake.notify_one();
            }
        }
    }

    /// True when `socket` leads the stream and has acknowledged every event in it.
    pub(crate) fn acknowledged_by(&self, socket: SocketId) -> bool {
        let inner = self.lock();
        inner.lead == Some(socket)
            && inner
                .lead_acked
                .is_some_and(|acked| acked + 1 >= inner.next_sequence)
    }

    /// Wakes every reader (something about the stream changed that they re-check).
    pub(crate) fn wake_readers(&self) {
        for reader in &self.lock().readers {
            reader.wake.notify_one();
        }
    }

    /// Nobody will read again: the buffer is freed and producers never wait from now on.
    pub(crate) fn close(&self) {
        let mut inner = self.lock();
        inner.closed = true;
        inner.ring.clear();
        inner.ring_bytes = 0;
        drop(inner);
        self.room.notify_waiters();
    }
}

/// The `attached` event that answers an `attach`: events after `since` follow.
pub(crate) fn attached_event(session: Option<&str>, since: u64) -> Utf8Bytes {
    let mut event = Event::new(
        EventKind::Attached,
        None,
        format!("attached; events after {since} follow"),
    );
    event.session = session.map(str::to_owned);
    event.sequence = since;
    event.timestamp = (unix_now() * 1e6).round() / 1e6;
    event.resume_from = Some(since + 1);
    Utf8Bytes::from(event.to_json())
}

/// A `gap` event for a reader that will not get `missed_from..resume_from`.
pub(crate) fn gap_event(session: Option<&str>, missed_from: u64, resume_from: u64) -> Utf8Bytes {
    let mut event = Event::new(
        EventKind::Gap,
        None,
        format!(
            "events {missed_from} to {} are no longer buffered for this socket; the stream continues at {resume_from}",
            resume_from - 1
        ),
    );
    event.session = session.map(str::to_owned);
    event.sequence = resume_from - 1;
    event.timestamp = (unix_now() * 1e6).round() / 1e6;
    event.missed_from = Some(missed_from);
    event.resume_from = Some(resume_from);
    Utf8Bytes::from(event.to_json())
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(events: usize) -> EventStream {
        EventStream::new(
            Some(Arc::from("s")),
            ReplayCaps {
                events,
                bytes: 1 << 20,
            },
        )
    }

    fn publish(stream: &EventStream, n: usize) {
        for _ in 0..n {
            stream.publish(Event::new(EventKind::Stdout, Some("e".into()), "x"));
        }
    }

    #[test]
    fn a_lossy_reader_behind_the_ring_gets_a_gap_then_the_rest() {
        let s = stream(3);
        s.add_reader(1, Arc::new(Notify::new()), true, 0);
        s.add_reader(2, Arc::new(Notify::new()), false, 0);
        let mut out = Vec::new();
        for _ in 0..5 {
            publish(&s, 1);
            s.take(1, s.head() - 1, usize::MAX, &mut out);
        }
        out.clear();
        let taken = s.take(2, 0, usize::MAX, &mut out);
        assert_eq!(taken.gap, Some((1, 3)));
        assert_eq!((taken.cursor, out.len()), (5, 3));
    }

    #[test]
    fn frames_the_lead_has_not_taken_are_kept_and_producers_wait() {
        let s = stream(2);
        s.add_reader(1, Arc::new(Notify::new()), true, 0);
        publish(&s, 2);
        assert!(!s.has_room());
        publish(&s, 1);
        let mut out = Vec::new();
        let taken = s.take(1, 0, usize::MAX, &mut out);
        assert_eq!((taken.gap, out.len()), (None, 3));
        assert!(s.has_room());
    }

    #[test]
    fn an_acknowledging_lead_keeps_what_it_has_taken_but_not_acknowledged() {
        let s = stream(2);
        s.add_reader(1, Arc::new(Notify::new()), true, 0);
        s.ack(1, 0);
        publish(&s, 3);
        let mut out = Vec::new();
        assert_eq!(s.take(1, 0, usize::MAX, &mut out).cursor, 3);
        assert!(!s.has_room(), "taken is not received");
        s.ack(1, 2);
        assert!(s.has_room());
        // A new lead inherits acknowledging, from where it attached.
        s.remove_reader(1);
        s.add_reader(2, Arc::new(Notify::new()), false, 2);
        publish(&s, 1);
        out.clear();
        assert_eq!(s.take(2, 2, usize::MAX, &mut out).gap, None);
        assert_eq!(out.len(), 2);
    }

    #[test]
    fn an_acknowledging_reader_takes_the_lead_from_one_that_does_not() {
        let s = stream(2);
        s.add_reader(1, Arc::new(Notify::new()), true, 0);
        s.ack(1, 0);
        s.add_reader(2, Arc::new(Notify::new()), false, 0);
        publish(&s, 2);
        // The acknowledging lead leaves; the observer inherits the lead, never acks.
        s.remove_reader(1);
        s.add_reader(3, Arc::new(Notify::new()), false, 0);
        assert!(!s.has_room());
        // The client, reconnected as reader 3, acknowledges: it leads again.
        s.ack(3, 2);
        let mut out = Vec::new();
        s.take(3, 0, usize::MAX, &mut out);
        assert!(s.has_room(), "reader 3's acknowledgements pace the stream");
    }

    #[test]
    fn when_the_lead_leaves_another_reader_leads() {
        let s = stream(2);
        s.add_reader(1, Arc::new(Notify::new()), true, 0);
        s.add_reader(2, Arc::new(Notify::new()), false, 0);
        publish(&s, 2);
        assert!(!s.has_room());
        s.remove_reader(1);
        let mut out = Vec::new();
        s.take(2, 0, usize::MAX, &mut out);
        assert!(s.has_room(), "the remaining reader paces the stream now");
    }

    #[test]
    fn without_a_lead_the_ring_holds_for_the_next_one() {
        let s = stream(2);
        s.add_reader(1, Arc::new(Notify::new()), true, 0);
        publish(&s, 2);
        s.remove_reader(1);
        assert!(!s.has_room());
        s.add_reader(2, Arc::new(Notify::new()), false, 0);
        let mut out = Vec::new();
        assert_eq!(s.take(2, 0, usize::MAX, &mut out).cursor, 2);
        assert!(s.has_room());
    }
}
