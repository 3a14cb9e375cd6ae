//! [`EventStream`]: one numbered stream of events and its replay buffer.
//!
//! Publishing stamps an event (sequence, timestamp), encodes it once and appends the
//! frame to a bounded ring; every socket reading the stream is a cursor into that ring
//! and takes shared copies of the same bytes. One reader, the *lead*, paces the
//! producers: an event the lead has not taken is never evicted, so when the ring is full
//! the programs wait (and block in `write`). Other readers never slow anyone down; one
//! that falls behind the ring's start is told so with a `gap` and continues from there.
//!
//! Only a reader allowed to lead ([`Lead`]) ever does, and a lead that frees no room for
//! the lead timeout while producers wait loses the lead (the ring then evicts freely
//! until another lead comes). Once the stream is idle (no execution runs), the ring keeps
//! only a short tail plus what some reader has not yet taken (or, if it acknowledges, not
//! acknowledged). Every byte of the ring is counted against the gateway's
//! [`BufferBudget`]; while the budget is spent, frames no lead needs are evicted at once.

use crate::buffer_budget::{BufferBudget, Reservation};
use axum::extract::ws::Utf8Bytes;
use sluice_protocol::{Event, EventKind};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::Notify;
use tokio::time::Instant;

/// Identifies a socket among a stream's readers.
pub(crate) type SocketId = u64;

/// How much of a stream stays buffered for replay (at least: events the lead has not
/// taken stay beyond it while the producers wait), and how long a lead may keep the
/// producers waiting without freeing room.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ReplayCaps {
    pub(crate) events: usize,
    pub(crate) bytes: usize,
    pub(crate) lead_timeout: Duration,
    /// How long an idle stream keeps what a reader that acknowledged and went away has
    /// not acknowledged (the session's grace period: it may be back, resuming).
    pub(crate) departed_grace: Duration,
}

/// Readers that acknowledged and went away whose positions an idle stream remembers.
const REMEMBERED_DEPARTED: usize = 16;

/// Bytes an idle stream keeps beyond what its readers still need, for a late `attach`
/// or a resent `execute`.
pub(crate) const IDLE_TAIL_BYTES: usize = 256 * 1024;

/// Whether a new reader may pace the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lead {
    /// It leads from now on (the socket whose `execute` made the stream).
    Take,
    /// It may lead: it does if the stream has no lead, or later when the lead leaves,
    /// and it takes the lead from a lead that does not acknowledge by acknowledging
    /// (any reader of a gateway-made session, whose 128-bit id is as good as a
    /// credential: typically its client, reconnected).
    May,
    /// It leads only while the seat is vacant: when the stream has no lead (the socket
    /// that executes in it went away), or when the lead leaves; it never takes the lead
    /// from a lead that is there, however it acknowledges (every reader of a named
    /// session: anyone who knows the name may attach or execute there, so it is
    /// typically the executing client reconnected, but may be anyone).
    IfVacant,
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
    /// It may become the lead (false once it lost the lead for stalling).
    may_lead: bool,
    /// It may take the lead from a lead that does not acknowledge, by acknowledging.
    may_take_over: bool,
    /// The last sequence it has taken.
    taken: u64,
    /// The highest sequence it has acknowledged.
    acked: u64,
}

impl Reader {
    /// The last sequence it no longer needs kept.
    fn done_with(&self) -> u64 {
        if self.acknowledges {
            self.acked.min(self.taken)
        } else {
            self.taken
        }
    }
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
    /// The last lead lost the lead for keeping the producers waiting: nothing is pinned
    /// until a new lead comes.
    unpinned: bool,
    /// No execution runs: keep only [`IDLE_TAIL_BYTES`] beyond what readers need.
    idle: bool,
    /// Since when producers wait for room that the lead does not free.
    stuck_since: Option<Instant>,
    /// What acknowledging readers that went away had acknowledged, and when they left.
    departed: VecDeque<(u64, Instant)>,
    /// The ring's bytes, held against the gateway's budget.
    memory: Reservation,
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
            || self.unpinned
            || self
                .ring
                .front()
                .is_some_and(|frame| frame.sequence <= self.pinned())
    }

    /// Evicts from the front while `over` says the ring holds too much and the lead
    /// does not pin the front frame.
    fn evict_while(&mut self, over: impl Fn(&Self) -> bool) {
        while over(self) && self.front_evictable() {
            let Some(frame) = self.ring.pop_front() else {
                break;
            };
            self.ring_bytes -= frame.text.as_str().len();
            self.memory.shrink(frame.text.as_str().len());
        }
    }

    /// For an idle stream: drops what every reader (and the last lead) is done with,
    /// beyond the idle tail.
    fn trim_idle(&mut self, departed_grace: Duration) {
        if !self.idle {
            return;
        }
        let lead_pin = if self.unpinned {
            u64::MAX
        } else {
            self.pinned()
        };
        let now = Instant::now();
        self.departed
            .retain(|(_, gone)| now < *gone + departed_grace);
        let floor = self
            .readers
            .iter()
            .map(Reader::done_with)
            .chain(self.departed.iter().map(|(acked, _)| *acked))
            .fold(lead_pin, u64::min);
        while self.ring.front().is_some_and(|f| {
            f.sequence <= floor && self.ring_bytes - f.text.as_str().len() >= IDLE_TAIL_BYTES
        }) {
            let Some(frame) = self.ring.pop_front() else {
                break;
            };
            self.ring_bytes -= frame.text.as_str().len();
            self.memory.shrink(frame.text.as_str().len());
        }
        if self.ring.is_empty() {
            // Give the VecDeque's buffer back too.
            self.ring = VecDeque::new();
        }
    }

    /// A (new) lead: it pins from `cursor` on.
    fn set_lead(&mut self, socket: SocketId, cursor: u64) {
        self.lead = Some(socket);
        self.lead_taken = cursor;
        if self.lead_acked.is_some() {
            self.lead_acked = Some(cursor);
        }
        self.unpinned = false;
        self.stuck_since = None;
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
    pub(crate) fn new(session: Option<Arc<str>>, caps: ReplayCaps, budget: &BufferBudget) -> Self {
        Self {
            session,
            caps: ReplayCaps {
                events: caps.events.max(1),
                bytes: caps.bytes.max(1),
                lead_timeout: caps.lead_timeout,
                departed_grace: caps.departed_grace,
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
                unpinned: false,
                idle: false,
                stuck_since: None,
                departed: VecDeque::new(),
                memory: budget.empty(),
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
    /// A lead that frees no room for the lead timeout meanwhile loses the lead, and so
    /// does the pin a departed lead left: the ring evicts freely until a new lead comes.
    pub(crate) async fn room(&self) {
        loop {
            let notified = self.room.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let deadline = {
                let mut inner = self.lock();
                if inner.has_room(self.caps) {
                    // Room came: whatever waited before is not the lead's doing now.
                    inner.stuck_since = None;
                    return;
                }
                *inner.stuck_since.get_or_insert_with(Instant::now) + self.caps.lead_timeout
            };
            tokio::select! {
                () = notified => {}
                () = tokio::time::sleep_until(deadline) => self.demote_stuck_lead(),
            }
        }
    }

    /// Takes the lead from a lead that has kept the producers waiting past the lead
    /// timeout (or drops the pin of a departed one).
    fn demote_stuck_lead(&self) {
        let mut inner = self.lock();
        let stuck = inner
            .stuck_since
            .is_some_and(|since| since + self.caps.lead_timeout <= Instant::now());
        if !stuck || inner.has_room(self.caps) {
            return;
        }
        tracing::info!(
            session = self.session.as_deref().unwrap_or("(socket)"),
            lead = ?inner.lead,
            timeout = ?self.caps.lead_timeout,
            "the session's lead freed no room within the lead timeout: it no longer paces the programs"
        );
        if let Some(lead) = inner.lead.take() {
            if let Some(reader) = inner.readers.iter_mut().find(|r| r.socket == lead) {
                reader.may_lead = false;
                reader.may_take_over = false;
            }
        }
        inner.unpinned = true;
        inner.stuck_since = None;
        drop(inner);
        self.room.notify_waiters();
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
        inner.memory.grow(text.as_str().len());
        inner.ring.push_back(Frame { sequence, text });
        let caps = self.caps;
        // While the gateway's budget is spent, keep only what the lead needs (and the
        // newest frame).
        inner.evict_while(|inner| {
            inner.over_caps(caps) || (inner.ring.len() > 1 && inner.memory.budget_spent())
        });
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
        if let Some(reader) = inner.readers.iter_mut().find(|r| r.socket == socket) {
            reader.taken = taken.cursor;
        }
        inner.trim_idle(self.caps.departed_grace);
        if inner.lead == Some(socket) && taken.cursor > inner.lead_taken {
            inner.lead_taken = taken.cursor;
            inner.stuck_since = None;
            drop(inner);
            self.room.notify_waiters();
        }
        taken
    }

    /// Adds a reader that is woken on every event, after `cursor`. It becomes the lead
    /// if `lead` says so, or if it may lead and the stream has none. A socket that reads
    /// the stream already keeps its permission to lead.
    pub(crate) fn add_reader(&self, socket: SocketId, wake: Arc<Notify>, lead: Lead, cursor: u64) {
        let mut inner = self.lock();
        let before = inner.readers.iter().find(|r| r.socket == socket);
        let was_demoted = before.is_some_and(|r| !r.may_lead);
        let could_take_over = before.is_some_and(|r| r.may_take_over);
        inner.readers.retain(|r| r.socket != socket);
        let may_lead = !was_demoted;
        let may_take_over = may_lead && (could_take_over || lead != Lead::IfVacant);
        inner.readers.push(Reader {
            socket,
            wake,
            acknowledges: false,
            may_lead,
            may_take_over,
            taken: cursor,
            acked: cursor,
        });
        if lead == Lead::Take || (may_lead && inner.lead.is_none()) {
            inner.set_lead(socket, cursor);
            drop(inner);
            self.room.notify_waiters();
        }
    }

    /// The socket (a reader already) executes in the session: it leads if the stream
    /// has no lead, unless it lost the lead before for keeping the programs waiting.
    pub(crate) fn allow_lead(&self, socket: SocketId) {
        let mut inner = self.lock();
        let Some(reader) = inner.readers.iter_mut().find(|r| r.socket == socket) else {
            return;
        };
        if !reader.may_lead {
            return;
        }
        let cursor = reader.taken;
        if inner.lead.is_none() {
            inner.set_lead(socket, cursor);
            drop(inner);
            self.room.notify_waiters();
        }
    }

    /// The client behind `socket` has received everything up to `sequence`. Only the
    /// lead's acknowledgements pace the stream. A reader that may lead and acknowledges
    /// takes the lead from one that does not (say an observer that inherited it when the
    /// acknowledging client's old connection went away): it is that client, resuming.
    /// A reader that may not lead never does, however it acknowledges.
    pub(crate) fn ack(&self, socket: SocketId, sequence: u64) {
        let mut inner = self.lock();
        let head = inner.next_sequence - 1;
        let sequence = sequence.min(head);
        let Some(reader) = inner.readers.iter_mut().find(|r| r.socket == socket) else {
            return;
        };
        reader.acknowledges = true;
        reader.acked = reader.acked.max(sequence);
        let (may_lead, may_take_over) = (reader.may_lead, reader.may_take_over);
        inner.trim_idle(self.caps.departed_grace);
        if inner.lead != Some(socket) {
            let lead_acknowledges = inner
                .readers
                .iter()
                .any(|r| Some(r.socket) == inner.lead && r.acknowledges);
            let vacant = inner.lead.is_none();
            if !may_lead || (!vacant && (lead_acknowledges || !may_take_over)) {
                return;
            }
            inner.set_lead(socket, sequence);
            inner.lead_acked = Some(sequence);
        } else {
            let acked = inner.lead_acked.unwrap_or(0).max(sequence);
            if inner.lead_acked.is_none_or(|before| acked > before) {
                inner.stuck_since = None;
            }
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
        let leaving = inner.readers.iter().position(|r| r.socket == socket);
        if let Some(reader) = leaving.map(|at| inner.readers.remove(at)) {
            // The lead's position is kept anyway (it pins the ring).
            if reader.acknowledges && inner.lead != Some(socket) {
                if inner.departed.len() == REMEMBERED_DEPARTED {
                    inner.departed.pop_front();
                }
                inner
                    .departed
                    .push_back((reader.done_with(), Instant::now()));
            }
        }
        if inner.lead == Some(socket) {
            let next = inner.readers.iter().rev().find(|r| r.may_lead);
            if let Some(reader) = next {
                // The new lead may already be past what pins the ring.
                reader.wake.notify_one();
            }
            inner.lead = next.map(|r| r.socket);
        }
        inner.trim_idle(self.caps.departed_grace);
    }

    /// Whether an execution runs in the stream's session. Once none does, the ring
    /// keeps only [`IDLE_TAIL_BYTES`] beyond what its readers (and its last lead) still
    /// need, for a late `attach`.
    pub(crate) fn set_idle(&self, idle: bool) {
        let mut inner = self.lock();
        inner.idle = idle;
        inner.trim_idle(self.caps.departed_grace);
    }

    /// Bytes buffered for replay now.
    #[cfg(test)]
    pub(crate) fn buffered_bytes(&self) -> usize {
        self.lock().ring_bytes
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
        inner.ring = VecDeque::new();
        inner.ring_bytes = 0;
        inner.memory.clear();
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
                lead_timeout: Duration::from_secs(3600),
                departed_grace: Duration::from_secs(60),
            },
            &BufferBudget::unlimited(),
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
        s.add_reader(1, Arc::new(Notify::new()), Lead::Take, 0);
        s.add_reader(2, Arc::new(Notify::new()), Lead::May, 0);
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
        s.add_reader(1, Arc::new(Notify::new()), Lead::Take, 0);
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
        s.add_reader(1, Arc::new(Notify::new()), Lead::Take, 0);
        s.ack(1, 0);
        publish(&s, 3);
        let mut out = Vec::new();
        assert_eq!(s.take(1, 0, usize::MAX, &mut out).cursor, 3);
        assert!(!s.has_room(), "taken is not received");
        s.ack(1, 2);
        assert!(s.has_room());
        // A new lead inherits acknowledging, from where it attached.
        s.remove_reader(1);
        s.add_reader(2, Arc::new(Notify::new()), Lead::May, 2);
        publish(&s, 1);
        out.clear();
        assert_eq!(s.take(2, 2, usize::MAX, &mut out).gap, None);
        assert_eq!(out.len(), 2);
    }

    #[test]
    fn an_acknowledging_reader_takes_the_lead_from_one_that_does_not() {
        let s = stream(2);
        s.add_reader(1, Arc::new(Notify::new()), Lead::Take, 0);
        s.ack(1, 0);
        s.add_reader(2, Arc::new(Notify::new()), Lead::May, 0);
        publish(&s, 2);
        // The acknowledging lead leaves; the observer inherits the lead, never acks.
        s.remove_reader(1);
        s.add_reader(3, Arc::new(Notify::new()), Lead::May, 0);
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
        s.add_reader(1, Arc::new(Notify::new()), Lead::Take, 0);
        s.add_reader(2, Arc::new(Notify::new()), Lead::May, 0);
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
        s.add_reader(1, Arc::new(Notify::new()), Lead::Take, 0);
        publish(&s, 2);
        s.remove_reader(1);
        assert!(!s.has_room());
        s.add_reader(2, Arc::new(Notify::new()), Lead::May, 0);
        let mut out = Vec::new();
        assert_eq!(s.take(2, 0, usize::MAX, &mut out).cursor, 2);
        assert!(s.has_room());
    }

    #[test]
    fn a_reader_that_only_attached_leads_only_while_the_seat_is_vacant() {
        let s = stream(2);
        s.add_reader(1, Arc::new(Notify::new()), Lead::Take, 0);
        s.add_reader(2, Arc::new(Notify::new()), Lead::IfVacant, 0);
        s.ack(2, 0);
        publish(&s, 3);
        let mut out = Vec::new();
        s.take(1, 0, usize::MAX, &mut out);
        assert!(
            s.has_room(),
            "the observer's ack took nothing from the lead"
        );
        s.remove_reader(1);
        publish(&s, 2);
        assert!(
            !s.has_room(),
            "the seat is vacant: the attached reader leads, and what it has not taken is pinned"
        );
        s.take(2, 0, usize::MAX, &mut out);
        assert!(s.has_room(), "its pace frees the ring");
    }

    #[tokio::test]
    async fn a_lead_that_frees_no_room_within_the_timeout_loses_the_lead() {
        let s = EventStream::new(
            Some(Arc::from("s")),
            ReplayCaps {
                events: 2,
                bytes: 1 << 20,
                lead_timeout: Duration::from_millis(50),
                departed_grace: Duration::from_secs(60),
            },
            &BufferBudget::unlimited(),
        );
        s.add_reader(1, Arc::new(Notify::new()), Lead::Take, 0);
        publish(&s, 2);
        assert!(!s.has_room());
        // Nobody takes anything: the wait ends only by the lead timeout firing.
        s.room().await;
        assert!(s.has_room());
        publish(&s, 10);
        assert!(s.has_room(), "nothing is pinned any more");
        // The demoted reader cannot take the lead back by acknowledging.
        s.ack(1, 0);
        publish(&s, 10);
        assert!(s.has_room());
    }

    #[test]
    fn an_idle_stream_keeps_a_tail_and_what_readers_still_need() {
        let s = EventStream::new(
            Some(Arc::from("s")),
            ReplayCaps {
                events: 100_000,
                bytes: 64 << 20,
                lead_timeout: Duration::from_secs(3600),
                departed_grace: Duration::from_secs(60),
            },
            &BufferBudget::unlimited(),
        );
        s.add_reader(1, Arc::new(Notify::new()), Lead::Take, 0);
        s.add_reader(2, Arc::new(Notify::new()), Lead::IfVacant, 0);
        let big = "x".repeat(64 * 1024);
        for _ in 0..32 {
            s.publish(Event::new(EventKind::Stdout, Some("e".into()), big.clone()));
        }
        let mut out = Vec::new();
        s.take(1, 0, usize::MAX, &mut out);
        s.set_idle(true);
        assert!(
            s.buffered_bytes() > 2 << 20,
            "reader 2 has taken nothing yet"
        );
        s.take(2, 0, usize::MAX, &mut out);
        let kept = s.buffered_bytes();
        assert!(
            (IDLE_TAIL_BYTES..IDLE_TAIL_BYTES + 70 * 1024).contains(&kept),
            "{kept}"
        );
    }

    #[test]
    fn an_idle_stream_keeps_what_a_departed_acknowledging_reader_has_not_acknowledged() {
        let s = stream(100_000);
        s.add_reader(1, Arc::new(Notify::new()), Lead::Take, 0);
        s.add_reader(2, Arc::new(Notify::new()), Lead::IfVacant, 0);
        let big = "x".repeat(64 * 1024);
        for _ in 0..16 {
            s.publish(Event::new(EventKind::Stdout, Some("e".into()), big.clone()));
        }
        let mut out = Vec::new();
        s.take(1, 0, usize::MAX, &mut out);
        s.take(2, 0, usize::MAX, &mut out);
        s.ack(2, 1);
        // The observer's connection drops; it will be back, resuming after 1.
        s.remove_reader(2);
        s.set_idle(true);
        let mut resumed = Vec::new();
        s.add_reader(3, Arc::new(Notify::new()), Lead::IfVacant, 1);
        assert_eq!(s.take(3, 1, usize::MAX, &mut resumed).gap, None);
        assert_eq!(resumed.len(), 15);
    }

    #[test]
    fn while_the_budget_is_spent_frames_the_lead_took_are_evicted() {
        let budget = BufferBudget::new(4096, 100);
        let s = EventStream::new(
            Some(Arc::from("s")),
            ReplayCaps {
                events: 1000,
                bytes: 1 << 20,
                lead_timeout: Duration::from_secs(3600),
                departed_grace: Duration::from_secs(60),
            },
            &budget,
        );
        s.add_reader(1, Arc::new(Notify::new()), Lead::Take, 0);
        let line = "y".repeat(1000);
        for _ in 0..10 {
            s.publish(Event::new(
                EventKind::Stdout,
                Some("e".into()),
                line.clone(),
            ));
        }
        assert!(
            budget.is_spent(),
            "the lead's frames are kept, over the budget"
        );
        let mut out = Vec::new();
        s.take(1, 0, usize::MAX, &mut out);
        s.publish(Event::new(
            EventKind::Stdout,
            Some("e".into()),
            line.clone(),
        ));
        assert!(!budget.is_spent(), "taken frames were evicted");
        assert!(s.buffered_bytes() < 4096, "{}", s.buffered_bytes());
        assert_eq!(budget.used(), s.buffered_bytes());
        s.close();
        assert_eq!(budget.used(), 0);
    }
}
