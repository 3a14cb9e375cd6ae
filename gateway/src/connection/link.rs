//! [`SocketLink`]: the streams one socket reads and where it is in each, shared by the
//! connection's reader (which attaches and detaches) and its writer (which takes events).

use crate::fanout::{attached_event, gap_event, EventStream, Lead, SocketId};
use crate::session::{Session, SessionRegistry};
use axum::extract::ws::Utf8Bytes;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use tokio::sync::Notify;

/// How many finished gateway-made sessions a socket keeps after taking all their
/// events. Events taken are not yet events received: if the connection drops, what was
/// still in flight can be replayed from these (they enter the grace period with the
/// socket's other sessions). Older ones end as newer ones finish.
const KEEP_FINISHED: usize = 16;

/// One stream this socket reads.
#[derive(Debug)]
struct Subscription {
    source: Source,
    /// The last sequence taken.
    cursor: u64,
    /// A gateway-made session whose events are all taken: kept for a reconnect only.
    /// The number orders them, oldest first.
    finished: Option<u64>,
    /// `attach` frames not yet answered: each gets an `attached` before the next frame.
    announce: u32,
}

/// Where a subscription's events come from.
#[derive(Debug)]
enum Source {
    /// The socket's own stream (refusals that belong to no session).
    Own(Arc<EventStream>),
    Session(Arc<Session>),
}

impl Subscription {
    fn stream(&self) -> &EventStream {
        match &self.source {
            Source::Own(stream) => stream,
            Source::Session(session) => &session.stream,
        }
    }

    fn session(&self) -> Option<&Arc<Session>> {
        match &self.source {
            Source::Own(_) => None,
            Source::Session(session) => Some(session),
        }
    }

    fn is(&self, session: &Session) -> bool {
        self.session().is_some_and(|s| std::ptr::eq(&**s, session))
    }
}

/// The socket's side of its subscriptions.
#[derive(Debug)]
pub(crate) struct SocketLink {
    pub(crate) socket: SocketId,
    /// Notified by every stream this socket reads when it has a new event.
    pub(crate) wake: Arc<Notify>,
    subscriptions: Mutex<Vec<Subscription>>,
    /// Where the writer starts its next pass, so no stream starves the others.
    next_start: Mutex<usize>,
    /// Counts finished gateway-made sessions, to order them (from 1; 0 marks one the
    /// client has acknowledged, which ends at once).
    finished_count: std::sync::atomic::AtomicU64,
}

/// What the writer took in one pass.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    pub(crate) frames: Vec<Utf8Bytes>,
    pub(crate) bytes: usize,
    /// `gap` frames among `frames`, and the events they say were missed (for metrics).
    pub(crate) gaps: u64,
    pub(crate) missed: u64,
    /// The byte cap stopped the take with events still untaken: nothing will announce
    /// them again, so the writer must take again without waiting for news.
    pub(crate) more: bool,
    /// Sessions this socket reads that had not finished as of this take: with two or
    /// more, events come from producers that do not wait for each other.
    pub(crate) live_sessions: usize,
}

impl SocketLink {
    pub(crate) fn new(socket: SocketId, own: Arc<EventStream>) -> Self {
        let wake = Arc::new(Notify::new());
        own.add_reader(socket, wake.clone(), Lead::Take, 0);
        Self {
            socket,
            wake,
            subscriptions: Mutex::new(vec![Subscription {
                source: Source::Own(own),
                cursor: 0,
                finished: None,
                announce: 0,
            }]),
            next_start: Mutex::new(0),
            finished_count: std::sync::atomic::AtomicU64::new(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Subscription>> {
        self.subscriptions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// True if this socket reads `session`.
    pub(crate) fn reads(&self, session: &Session) -> bool {
        self.lock().iter().any(|s| s.is(session))
    }

    /// The session named `name` that this socket reads.
    pub(crate) fn session(&self, name: &str) -> Option<Arc<Session>> {
        self.lock()
            .iter()
            .filter_map(Subscription::session)
            .find(|s| s.id() == name)
            .cloned()
    }

    /// True if this socket reads a session for more than a possible reconnect: any but
    /// a finished gateway-made one it has taken everything of (for the idle timeout).
    pub(crate) fn holds_session(&self) -> bool {
        self.lock()
            .iter()
            .any(|s| s.session().is_some() && s.finished.is_none())
    }

    /// Named sessions this socket reads.
    pub(crate) fn named_sessions(&self) -> usize {
        self.lock()
            .iter()
            .filter(|s| s.session().is_some_and(|x| !x.ephemeral))
            .count()
    }

    /// Starts reading `session` after `cursor` (or moves the cursor if it already does).
    /// `lead`: whether this socket may pace the session. `announce`: answer with an
    /// `attached` event before its first frame. Returns true if it was not read before
    /// (the caller has attached it once).
    pub(crate) fn subscribe(
        &self,
        session: &Arc<Session>,
        cursor: u64,
        lead: Lead,
        announce: bool,
    ) -> bool {
        let mut subscriptions = self.lock();
        session
            .stream
            .add_reader(self.socket, self.wake.clone(), lead, cursor);
        let existing = subscriptions.iter_mut().find(|s| s.is(session));
        let fresh = match existing {
            Some(subscription) => {
                subscription.cursor = cursor;
                subscription.finished = None;
                subscription.announce += u32::from(announce);
                false
            }
            None => {
                subscriptions.push(Subscription {
                    source: Source::Session(session.clone()),
                    cursor,
                    finished: None,
                    announce: u32::from(announce),
                });
                true
            }
        };
        drop(subscriptions);
        self.wake.notify_one();
        fresh
    }

    /// Stops reading `session`; false if this socket did not read it.
    pub(crate) fn unsubscribe(
        &self,
        session: &Arc<Session>,
        registry: &Arc<SessionRegistry>,
    ) -> bool {
        let removed = {
            let mut subscriptions = self.lock();
            let at = subscriptions.iter().position(|s| s.is(session));
            at.map(|at| subscriptions.swap_remove(at))
        };
        match removed {
            Some(subscription) => {
                self.release(subscription, registry);
                true
            }
            None => false,
        }
    }

    /// Stops reading every session (the socket is going away). Events taken may not
    /// have reached the client, so every session, finished or not, gets the grace
    /// period for a reconnect.
    pub(crate) fn unsubscribe_all(&self, registry: &Arc<SessionRegistry>) {
        let removed: Vec<Subscription> = {
            let mut subscriptions = self.lock();
            let (sessions, own): (Vec<_>, Vec<_>) =
                subscriptions.drain(..).partition(|s| s.session().is_some());
            *subscriptions = own;
            sessions
        };
        for subscription in removed {
            if let Some(session) = subscription.session() {
                session.stream.remove_reader(self.socket);
                registry.detach(session, false);
            }
        }
    }

    /// Lets go of a session whose events the client has (or never needs).
    fn release(&self, subscription: Subscription, registry: &Arc<SessionRegistry>) {
        if let Some(session) = subscription.session() {
            session.stream.remove_reader(self.socket);
            let took_everything = subscription.cursor >= session.stream.head();
            registry.detach(session, took_everything);
        }
    }

    /// Takes up to about `max_bytes` of frames from the streams this socket reads,
    /// announcing gaps in place. A gateway-made session whose execution has ended and
    /// whose events are all taken is let go.
    pub(crate) fn take(&self, max_bytes: usize, registry: &Arc<SessionRegistry>) -> Batch {
        let mut batch = Batch::default();
        let mut finished = Vec::new();
        {
            let mut subscriptions = self.lock();
            let count = subscriptions.len();
            let mut start = self
                .next_start
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let mut done = false;
            for step in 0..count {
                if batch.bytes >= max_bytes {
                    // Start the next pass where this one ran out of room.
                    *start = (*start + step) % count;
                    batch.more = true;
                    break;
                }
                let index = (*start + step) % count;
                let subscription = &mut subscriptions[index];
                if subscription.finished.is_some() {
                    // Kept for a reconnect, unless the client has acknowledged it all.
                    if subscription.stream().acknowledged_by(self.socket) {
                        subscription.finished = Some(0);
                        done = true;
                    }
                    continue;
                }
                let before = batch.frames.len();
                // Read before taking: a session that completes between the two would
                // otherwise look finished while its last event is still untaken.
                let complete_before = subscription
                    .session()
                    .is_some_and(|session| session.is_complete());
                // Nothing new since this socket's last take: skip the stream's lock.
                if subscription.announce == 0
                    && !complete_before
                    && subscription.cursor == subscription.stream().published()
                {
                    continue;
                }
                for _ in 0..std::mem::take(&mut subscription.announce) {
                    let session = subscription.stream().session_id().map(|s| &**s);
                    batch
                        .frames
                        .push(attached_event(session, subscription.cursor));
                }
                let after_announce = batch.frames.len();
                let stream = subscription.stream();
                let taken = stream.take(
                    self.socket,
                    subscription.cursor,
                    max_bytes - batch.bytes,
                    &mut batch.frames,
                );
                if let Some((missed_from, resume_from)) = taken.gap {
                    batch.gaps += 1;
                    batch.missed += resume_from.saturating_sub(missed_from);
                    let session = stream.session_id().map(|s| &**s);
                    let gap = gap_event(session, missed_from, resume_from);
                    batch.frames.insert(after_announce, gap);
                }
                batch.bytes += batch.frames[before..]
                    .iter()
                    .map(|frame| frame.as_str().len())
                    .sum::<usize>();
                subscription.cursor = taken.cursor;
                batch.more |= taken.cursor < taken.head;
                let complete = complete_before && taken.cursor >= taken.head;
                if complete {
                    subscription.finished = Some(
                        self.finished_count
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                    );
                    done = true;
                }
            }
            batch.live_sessions = subscriptions
                .iter()
                .filter(|s| s.finished.is_none() && matches!(s.source, Source::Session(_)))
                .count();
            if done {
                // Keep the newest finished sessions; the older ones (and those the client
                // acknowledged, marked 0) end now.
                let mut kept: Vec<u64> = subscriptions
                    .iter()
                    .filter_map(|s| s.finished)
                    .filter(|n| *n > 0)
                    .collect();
                kept.sort_unstable();
                let oldest_kept = kept
                    .len()
                    .checked_sub(KEEP_FINISHED)
                    .map_or(1, |excess| kept[excess]);
                let mut index = 0;
                while index < subscriptions.len() {
                    if subscriptions[index]
                        .finished
                        .is_some_and(|n| n < oldest_kept)
                    {
                        finished.push(subscriptions.swap_remove(index));
                    } else {
                        index += 1;
                    }
                }
                *start = 0;
            }
        }
        for subscription in finished {
            self.release(subscription, registry);
        }
        batch
    }
}
