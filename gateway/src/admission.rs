//! Admission at the TCP level: at most a fixed number of accepted connections exist at
//! once, upgraded or not (and per peer, at most its WebSocket share plus a little: one
//! more is closed at once), and a connection that has not become a WebSocket within the
//! handshake timeout is closed, so idle or slow HTTP clients can neither use up the
//! gateway's file descriptors nor hold its slots. WebSocket sockets are limited
//! separately (and get HTTP 503); the TCP bound is that limit plus headroom for health
//! checks and refusals.
//!
//! Also the per-client caps: a [`Quota`] counts what each [`Principal`] (today the
//! peer's address; with authentication, its tenant) holds of one resource, and hands
//! out [`QuotaGuard`]s that give their unit back when dropped, so a refusal holds
//! nothing and nothing leaks.

use crate::io_hook::{Hooked, ReadHook};
use axum::serve::Listener;
use std::collections::HashMap;
use std::future::Future as _;
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::Context;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;

/// Bytes a connection may send before it is a WebSocket (its upgrade request, or plain
/// HTTP requests such as health checks): an upgrade request is a few hundred bytes, a
/// browser's with cookies a few KiB. The HTTP server would buffer a request head of
/// up to about 400 KiB, and thousands of unfinished ones would hold gigabytes.
const MAX_BYTES_BEFORE_UPGRADE: usize = 32 << 10;

/// A listener that accepts only while it holds a free slot; the slot travels with the
/// connection (also through a WebSocket upgrade) and frees itself when it closes.
#[derive(Debug)]
pub(crate) struct Admitting<L> {
    inner: L,
    /// One permit per open TCP connection; each `Admitted` holds its own.
    slots: Arc<Semaphore>,
    /// Open TCP connections per peer; each `Admitted` holds its unit.
    per_peer: Quota,
    handshake_timeout: Duration,
}

impl<L> Admitting<L> {
    /// At most `limit` TCP connections at once, `per_peer` of them from one peer.
    pub(crate) fn new(
        inner: L,
        limit: usize,
        per_peer: usize,
        handshake_timeout: Duration,
    ) -> Self {
        Self {
            inner,
            slots: Arc::new(Semaphore::new(limit)),
            per_peer: Quota::new(per_peer),
            handshake_timeout,
        }
    }
}

impl<L: Listener<Addr = SocketAddr>> Listener for Admitting<L> {
    type Io = Admitted<L::Io>;
    type Addr = L::Addr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        // Wait for a slot before taking the next connection off the kernel's queue.
        let permit = loop {
            match self.slots.clone().acquire_owned().await {
                Ok(permit) => break permit,
                // The semaphore is never closed; if it were, admit nothing more.
                Err(_) => std::future::pending::<()>().await,
            }
        };
        loop {
            let (io, addr) = self.inner.accept().await;
            // A peer at its share is closed at once: its connections must not fill
            // the bound others need (they would wait in the kernel's queue).
            let peer_unit = match self.per_peer.try_acquire(&Principal::of_peer(addr)) {
                Ok(unit) => unit,
                Err(full) => {
                    tracing::debug!(%addr, max = full.max, "closing a TCP connection: its peer holds its share");
                    drop(io);
                    continue;
                }
            };
            let admission = Admission {
                _permit: permit,
                _peer_unit: peer_unit,
                upgrading: Upgrading::default(),
                handshake_deadline: Some(Box::pin(tokio::time::sleep(self.handshake_timeout))),
                bytes_before_upgrade: 0,
            };
            return (
                Hooked {
                    io,
                    hook: admission,
                },
                addr,
            );
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// Set by the upgrade handler once it accepts a WebSocket handshake; from then on the
/// connection has no handshake deadline.
#[derive(Debug, Clone, Default)]
pub(crate) struct Upgrading(Arc<AtomicBool>);

impl Upgrading {
    pub(crate) fn accept(&self) {
        self.0.store(true, Ordering::Release);
    }

    fn accepted(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// An accepted connection and its admission slot.
pub(crate) type Admitted<T> = Hooked<T, Admission>;

/// What an admitted connection holds and how its reads are watched until it is a
/// WebSocket.
#[derive(Debug)]
pub(crate) struct Admission {
    /// Returned to the listener when the connection is dropped.
    _permit: OwnedSemaphorePermit,
    /// The peer's unit of the per-peer TCP share, returned likewise.
    _peer_unit: QuotaGuard,
    upgrading: Upgrading,
    /// Fires while the connection is still plain HTTP; `None` once it is a WebSocket.
    handshake_deadline: Option<Pin<Box<Sleep>>>,
    /// Bytes read while it was still plain HTTP.
    bytes_before_upgrade: usize,
}

impl ReadHook for Admission {
    fn before_read(&mut self, cx: &mut Context<'_>) -> Option<io::Error> {
        let deadline = self.handshake_deadline.as_mut()?;
        if self.upgrading.accepted() {
            self.handshake_deadline = None;
            None
        } else if deadline.as_mut().poll(cx).is_ready() {
            // hyper reads whenever it waits for a request, so an idle connection ends
            // up here and is closed.
            Some(io::Error::new(
                io::ErrorKind::TimedOut,
                "no WebSocket handshake within the handshake timeout",
            ))
        } else if self.bytes_before_upgrade > MAX_BYTES_BEFORE_UPGRADE {
            Some(io::Error::new(
                io::ErrorKind::InvalidData,
                "more than 32 KiB sent before a WebSocket handshake",
            ))
        } else {
            None
        }
    }

    fn after_read(&mut self, bytes: usize) -> io::Result<()> {
        if self.handshake_deadline.is_some() {
            self.bytes_before_upgrade += bytes;
        }
        Ok(())
    }
}

/// The peer address of an admitted connection and the flag that lifts its handshake
/// deadline, for `ConnectInfo`.
#[derive(Debug, Clone)]
pub(crate) struct Peer {
    pub(crate) addr: std::net::SocketAddr,
    pub(crate) upgrading: Upgrading,
}

impl<L> axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, Admitting<L>>>
    for Peer
where
    L: Listener<Addr = std::net::SocketAddr>,
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, Admitting<L>>) -> Self {
        Self {
            addr: *stream.remote_addr(),
            upgrading: stream.io().hook.upgrading.clone(),
        }
    }
}

/// Who a per-client cap counts against: the peer's address where clients do not
/// authenticate, their tenant where they do (`auth`). Sessions are named within a
/// tenant: two tenants' sessions never meet.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Principal {
    /// A tenant, as its credential names it (an API key's name, a token's `sub`).
    Tenant(Arc<str>),
    /// An IPv4 address, or the /64 prefix of an IPv6 address: one subscriber usually
    /// holds a whole /64, so counting its addresses one by one would cap nothing.
    Address(IpAddr),
}

impl Principal {
    /// The principal of a connection from `peer` (IPv4-mapped IPv6 counts as IPv4).
    pub(crate) fn of_peer(peer: SocketAddr) -> Self {
        let ip = match peer.ip() {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => {
                    let prefix = u128::from(v6) & !((1_u128 << 64) - 1);
                    IpAddr::V6(Ipv6Addr::from(prefix))
                }
            },
            v4 @ IpAddr::V4(_) => v4,
        };
        Self::Address(ip)
    }

    /// How a cap on this principal is named in messages: "per peer" or "per tenant".
    pub(crate) fn cap_scope(&self) -> &'static str {
        match self {
            Self::Tenant(_) => "per tenant",
            Self::Address(_) => "per peer",
        }
    }

    /// The tenant whose namespace this principal's sessions live in; `None` where clients
    /// do not authenticate (one namespace for everybody, as on a loopback gateway).
    pub(crate) fn tenant(&self) -> Option<&Arc<str>> {
        match self {
            Self::Tenant(name) => Some(name),
            Self::Address(_) => None,
        }
    }
}

impl std::fmt::Display for Principal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tenant(name) => write!(f, "tenant {name}"),
            Self::Address(IpAddr::V4(ip)) => write!(f, "address {ip}"),
            Self::Address(IpAddr::V6(ip)) => write!(f, "network {ip}/64"),
        }
    }
}

/// At most `max` units of one resource per principal (connections, sessions or
/// executions), counted with RAII guards.
#[derive(Debug, Clone)]
pub(crate) struct Quota {
    max: usize,
    held: Arc<Mutex<HashMap<Principal, usize>>>,
}

/// `principal` already holds `max` units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct QuotaExceeded {
    pub(crate) max: usize,
}

impl Quota {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            max,
            held: Arc::default(),
        }
    }

    /// One more unit for `principal`, unless it holds `max` already.
    pub(crate) fn try_acquire(&self, principal: &Principal) -> Result<QuotaGuard, QuotaExceeded> {
        self.try_acquire_within(principal, None)
    }

    /// One more unit for `principal`, unless it holds `max` already, or `narrower` (a
    /// credential's own quota, which can only lower the gateway's).
    pub(crate) fn try_acquire_within(
        &self,
        principal: &Principal,
        narrower: Option<usize>,
    ) -> Result<QuotaGuard, QuotaExceeded> {
        let max = narrower.map_or(self.max, |n| n.min(self.max));
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        if held.get(principal).copied().unwrap_or(0) >= max {
            return Err(QuotaExceeded { max });
        }
        *held.entry(principal.clone()).or_insert(0) += 1;
        Ok(QuotaGuard {
            held: self.held.clone(),
            principal: principal.clone(),
        })
    }

    /// Units `principal` holds now.
    #[cfg(test)]
    fn held_by(&self, principal: &Principal) -> usize {
        let held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        held.get(principal).copied().unwrap_or(0)
    }
}

/// One unit of a [`Quota`]; given back when dropped. A principal that holds nothing
/// has no entry, so the table is as large as the set of current holders.
#[derive(Debug)]
pub(crate) struct QuotaGuard {
    held: Arc<Mutex<HashMap<Principal, usize>>>,
    principal: Principal,
}

impl QuotaGuard {
    /// Whose unit this is.
    pub(crate) fn principal(&self) -> &Principal {
        &self.principal
    }
}

impl Drop for QuotaGuard {
    fn drop(&mut self) {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = held.get_mut(&self.principal) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                held.remove(&self.principal);
            }
        }
    }
}

/// What a running execution holds: its gateway-wide slot and its principal's share;
/// both are given back together, just before the terminal event.
#[derive(Debug)]
pub(crate) struct ExecutionSlot {
    _gateway: OwnedSemaphorePermit,
    _principal: QuotaGuard,
}

impl ExecutionSlot {
    pub(crate) fn new(gateway: OwnedSemaphorePermit, principal: QuotaGuard) -> Self {
        Self {
            _gateway: gateway,
            _principal: principal,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(text: &str) -> Principal {
        Principal::of_peer(SocketAddr::new(text.parse().unwrap(), 1234))
    }

    #[test]
    fn a_quota_counts_per_principal_and_guards_give_back() {
        let quota = Quota::new(2);
        let (a, b) = (peer("127.0.0.1"), peer("127.0.0.2"));
        let first = quota.try_acquire(&a).unwrap();
        let second = quota.try_acquire(&a).unwrap();
        assert_eq!(quota.try_acquire(&a).unwrap_err(), QuotaExceeded { max: 2 });
        // Another principal is not affected, and a refusal holds nothing.
        let other = quota.try_acquire(&b).unwrap();
        assert_eq!(quota.held_by(&a), 2);
        drop(first);
        let third = quota.try_acquire(&a).unwrap();
        drop((second, third, other));
        assert_eq!(quota.held_by(&a), 0);
        assert!(
            quota.held.lock().unwrap().is_empty(),
            "no entry is left behind"
        );
    }

    #[test]
    fn a_credentials_quota_only_narrows_the_gateways() {
        let quota = Quota::new(3);
        let tenant = Principal::Tenant("acme".into());
        let one = quota.try_acquire_within(&tenant, Some(1)).unwrap();
        assert_eq!(
            quota.try_acquire_within(&tenant, Some(1)).unwrap_err(),
            QuotaExceeded { max: 1 }
        );
        // A credential asking for more than the gateway allows gets the gateway's.
        let two = quota.try_acquire_within(&tenant, Some(100)).unwrap();
        let three = quota.try_acquire_within(&tenant, Some(100)).unwrap();
        assert_eq!(
            quota.try_acquire_within(&tenant, Some(100)).unwrap_err(),
            QuotaExceeded { max: 3 }
        );
        // Tenants are counted apart from addresses and from each other.
        let other = quota
            .try_acquire(&Principal::Tenant("zeta".into()))
            .unwrap();
        drop((one, two, three, other));
        assert_eq!(quota.held_by(&tenant), 0);
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() {
        assert_eq!(peer("2001:db8::1"), peer("2001:db8::ffff:1"));
        assert_ne!(peer("2001:db8::1"), peer("2001:db8:0:1::1"));
        assert_eq!(peer("::ffff:10.0.0.1"), peer("10.0.0.1"));
        assert_eq!(peer("2001:db8::1").to_string(), "network 2001:db8::/64");
    }
}
