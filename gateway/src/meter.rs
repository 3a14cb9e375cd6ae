//! Messages in flight: what a client has sent of a WebSocket message it has not
//! finished. The WebSocket layer buffers a message until it is complete and does not
//! say how much it holds, so [`Metering`] wraps each accepted connection's reads and
//! counts, per connection, the bytes read since the last complete message ([`Meter`]).
//! Those bytes are held against the gateway's [`BufferBudget`] (the first
//! [`FREE_IN_FLIGHT`] always, more only while the budget allows: past it the read fails
//! and the socket closes), and the time the first of them arrived starts the message's
//! deadline, which the connection's reader enforces ([`Meter::overdue`]).
//!
//! The meter reaches the upgrade handler through [`Meters`], keyed by the peer's
//! address (unique among open connections). Since it is how the connection reaches
//! its own TCP socket, it also carries the request for a lingering close
//! ([`Meter::linger_on_close`], [`Lingering`]).

use crate::admission::Principal;
use crate::buffer_budget::{BufferBudget, Reservation};
use crate::io_hook::{Hooked, Linger, Lingering, ReadHook};
use axum::serve::Listener;
use dashmap::DashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::Context;
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// Bytes of an unfinished message a socket may hold whatever the budget says (small
/// frames must get a clean `gateway_busy` refusal, not a closed socket).
pub(crate) const FREE_IN_FLIGHT: usize = 64 * 1024;

/// Bytes of a client's control frame besides its payload: a 2-byte header (payloads are
/// at most 125 bytes) and a 4-byte mask.
const CONTROL_FRAME_HEADER: usize = 6;

/// One connection's bytes in flight.
#[derive(Debug)]
pub(crate) struct Meter {
    /// Counting starts when the connection is a WebSocket (the HTTP request is not a
    /// message).
    armed: AtomicBool,
    state: Mutex<MeterState>,
    /// Notified when a message starts arriving.
    started: Notify,
    /// A read failed because the budget is spent.
    over_budget: AtomicBool,
    /// Whether the connection, once dropped, closes gracefully ([`Lingering`]).
    linger: Arc<Linger>,
}

#[derive(Debug)]
struct MeterState {
    held: Reservation,
    /// When the first byte since the last complete message was read.
    since: Option<Instant>,
}

impl Meter {
    fn new(budget: &BufferBudget) -> Self {
        Self {
            armed: AtomicBool::new(false),
            state: Mutex::new(MeterState {
                held: budget.empty(),
                since: None,
            }),
            started: Notify::new(),
            over_budget: AtomicBool::new(false),
            linger: Arc::default(),
        }
    }

    /// A meter that no connection feeds (when the connection's cannot be found).
    pub(crate) fn detached(budget: &BufferBudget) -> Arc<Self> {
        Arc::new(Self::new(budget))
    }

    fn lock(&self) -> MutexGuard<'_, MeterState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The connection is a WebSocket now: count from here.
    pub(crate) fn arm(&self) {
        self.message_done();
        self.armed.store(true, Ordering::Release);
    }

    /// A data message was completed: nothing is in flight.
    pub(crate) fn message_done(&self) {
        let mut state = self.lock();
        state.held.clear();
        state.since = None;
    }

    /// A control frame with `payload` bytes arrived; a data message may still be in
    /// flight around it (control frames may come between the fragments of a message),
    /// so exactly the frame's own bytes are discounted (a client's control frame is a
    /// 2-byte header, a 4-byte mask and at most 125 bytes), and nothing is in flight
    /// only when nothing is left: a fragment as small as a header must not pass for
    /// one.
    pub(crate) fn control_done(&self, payload: usize) {
        let mut state = self.lock();
        state.held.shrink(payload + CONTROL_FRAME_HEADER);
        if state.held.bytes() == 0 {
            state.held.clear();
            state.since = None;
        }
    }

    /// The gateway closes this connection over something the client sent, which may
    /// still be arriving: once dropped, it closes gracefully, so that the client can
    /// read the close frame instead of a reset.
    pub(crate) fn linger_on_close(&self) {
        self.linger.request();
    }

    /// True if a read failed because the gateway's buffer budget is spent.
    pub(crate) fn over_budget(&self) -> bool {
        self.over_budget.load(Ordering::Acquire)
    }

    /// Counts `bytes` just read; false if they do not fit in the budget.
    fn count(&self, bytes: usize) -> bool {
        if bytes == 0 || !self.armed.load(Ordering::Acquire) {
            return true;
        }
        let mut state = self.lock();
        if state.since.is_none() {
            state.since = Some(Instant::now());
            self.started.notify_waiters();
        }
        let free = FREE_IN_FLIGHT.saturating_sub(state.held.bytes()).min(bytes);
        state.held.grow(free);
        let ok = state.held.try_grow(bytes - free);
        if !ok {
            self.over_budget.store(true, Ordering::Release);
        }
        ok
    }

    /// Resolves once a message has been in flight (started, not completed) for longer
    /// than `deadline`.
    pub(crate) async fn overdue(&self, deadline: Duration) {
        loop {
            let started = self.started.notified();
            tokio::pin!(started);
            started.as_mut().enable();
            let Some(since) = self.lock().since else {
                started.await;
                continue;
            };
            tokio::time::sleep_until(since + deadline).await;
            if self.lock().since == Some(since) {
                return;
            }
        }
    }
}

/// The meters of open connections, by peer address.
#[derive(Debug, Clone, Default)]
pub(crate) struct Meters(Arc<DashMap<SocketAddr, Arc<Meter>>>);

impl Meters {
    /// The meter of the connection from `peer`.
    pub(crate) fn get(&self, peer: &SocketAddr) -> Option<Arc<Meter>> {
        self.0.get(peer).map(|entry| entry.value().clone())
    }
}

/// A listener whose connections count what they read ([`Metered`]).
#[derive(Debug)]
pub(crate) struct Metering<L> {
    inner: L,
    meters: Meters,
    budget: BufferBudget,
}

impl<L> Metering<L> {
    pub(crate) fn new(inner: L, meters: Meters, budget: BufferBudget) -> Self {
        Self {
            inner,
            meters,
            budget,
        }
    }
}

impl<L: Listener<Addr = SocketAddr>> Listener for Metering<L> {
    type Io = Metered<Lingering<L::Io>>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (io, addr) = self.inner.accept().await;
        // The peer's share of the budget holds what it has in flight.
        let meter = Arc::new(Meter::new(
            &self.budget.for_principal(Principal::of_peer(addr)),
        ));
        self.meters.0.insert(addr, meter.clone());
        let io = Hooked {
            io: Lingering::new(io, meter.linger.clone()),
            hook: MeteredReads {
                meter,
                peer: addr,
                meters: self.meters.clone(),
            },
        };
        (io, addr)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// An accepted connection whose reads are counted by its [`Meter`] (which also says
/// whether it lingers when closed).
pub(crate) type Metered<T> = Hooked<T, MeteredReads>;

/// A connection's meter, as its reads see it; leaves [`Meters`] with the connection.
#[derive(Debug)]
pub(crate) struct MeteredReads {
    meter: Arc<Meter>,
    peer: SocketAddr,
    meters: Meters,
}

impl Drop for MeteredReads {
    fn drop(&mut self) {
        let meter = &self.meter;
        self.meters
            .0
            .remove_if(&self.peer, |_, m| Arc::ptr_eq(m, meter));
        // What was in flight is gone with the connection.
        meter.message_done();
    }
}

impl ReadHook for MeteredReads {
    fn before_read(&mut self, _: &mut Context<'_>) -> Option<io::Error> {
        None
    }

    fn after_read(&mut self, bytes: usize) -> io::Result<()> {
        if self.meter.count(bytes) {
            Ok(())
        } else {
            Err(io::Error::other(
                "the gateway's buffer budget is spent: no room for this message",
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_in_flight_draw_from_the_budget_beyond_the_free_allowance() {
        let budget = BufferBudget::new(100 * 1024, 100);
        let meter = Meter::new(&budget);
        assert!(
            meter.count(1 << 20),
            "not armed: the HTTP request is not counted"
        );
        meter.arm();
        assert!(meter.count(FREE_IN_FLIGHT));
        assert!(meter.count(30 * 1024));
        assert!(!meter.count(10 * 1024), "over the budget");
        assert!(meter.over_budget());
        meter.message_done();
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn a_control_frame_between_fragments_keeps_the_message_in_flight() {
        let budget = BufferBudget::unlimited();
        let meter = Meter::new(&budget);
        meter.arm();
        meter.count(1000 + 131);
        meter.control_done(125);
        assert!(
            meter.lock().since.is_some(),
            "the fragment is still in flight"
        );
        meter.message_done();
        meter.count(125 + 6);
        meter.control_done(125);
        assert!(
            meter.lock().since.is_none(),
            "a lone ping leaves nothing in flight"
        );
    }
}
