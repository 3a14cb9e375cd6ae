//! [`EventStream`]: one numbered stream of events, its replay ring and its readers.
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

use super::{unix_now, Lead, ReplayCaps, SocketId};
use crate::buffer_budget::{BufferBudget, Reservation};
use axum::extract::ws::Utf8Bytes;
use sluice_protocol::Event;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// Readers that acknowledged and went away whose positions an idle stream remembers.
const REMEMBERED_DEPARTED: usize = 16;

/// Bytes an idle stream keeps beyond what its readers still need, for a late `attach`
/// or a resent `execute`.
pub(crate) const IDLE_TAIL_BYTES: usize = 256 * 1024;

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
    /// The last sequence published, readable without the lock: a reader with nothing
    /// new to take skips the stream (a socket may read thousands).
    published: AtomicU64,
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
            published: AtomicU64::new(0),
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

    /// The last sequence published, without taking the lock: a reader whose cursor is
    /// there has nothing to take (a publish after this read wakes it).
    pub(crate) fn published(&self) -> u64 {
        self.published.load(Ordering::Acquire)
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
    pub(crate) fn publish(&self, event: Event) -> u64 {
        let mut inner = self.lock();
        self.publish_locked(&mut inner, event)
    }

    /// Publishes events from the front of `pending` for as long as the ring has room
    /// (as [`EventStream::room`] would return at once), under one lock, so a producer
    /// with room skips waiting for it. Returns how many it published.
    pub(crate) fn publish_with_room(&self, pending: &mut VecDeque<Event>) -> usize {
        let mut inner = self.lock();
        let mut published = 0;
        while inner.has_room(self.caps) {
            let Some(event) = pending.pop_front() else {
                break;
            };
            inner.stuck_since = None;
            self.publish_locked(&mut inner, event);
            published += 1;
        }
        published
    }

    fn publish_locked(&self, inner: &mut Inner, mut event: Event) -> u64 {
        event.session = self.session.as_deref().map(str::to_owned);
        let sequence = inner.next_sequence;
        inner.next_sequence += 1;
        self.published.store(sequence, Ordering::Release);
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
            // What it has taken already is past the pin only its acknowledgements hold.
            let taken = inner
                .readers
                .iter()
                .find(|r| r.socket == socket)
                .map_or(sequence, |r| r.taken);
            inner.lead_taken = inner.lead_taken.max(taken);
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
            let next = inner
                .readers
                .iter()
                .rev()
                .find(|r| r.may_lead)
                .map(|r| (r.socket, r.taken, r.acknowledges.then_some(r.acked)));
            inner.lead = next.map(|(socket, ..)| socket);
            if let Some((_, taken, acked)) = next {
                // The new lead may already be past what pins the ring: what it took, and
                // what it acknowledged while the old lead's acknowledgements counted.
                inner.lead_taken = inner.lead_taken.max(taken);
                if let (Some(lead_acked), Some(acked)) = (inner.lead_acked, acked) {
                    inner.lead_acked = Some(lead_acked.max(acked));
                }
                inner.trim_idle(self.caps.departed_grace);
                drop(inner);
                self.room.notify_waiters();
                return;
            }
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
