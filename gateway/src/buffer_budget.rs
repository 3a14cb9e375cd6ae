//! [`BufferBudget`]: one byte budget for what clients make the gateway hold (replay
//! buffers, partial WebSocket messages, queued stdin), so that memory is bounded in total
//! and not only per unit. Holders take [`Reservation`]s, which give their bytes back when
//! dropped. What may be refused (a new execution, a stdin frame, a large message in
//! flight) asks with [`BufferBudget::try_reserve`]; what must not be lost (events of a
//! running execution) is counted with [`Reservation::grow`] and may go over, which
//! makes the budget spent until it is freed again.
//!
//! One principal (a peer address; a tenant once clients authenticate) may hold at most
//! a share of it (`--budget-share-per-peer`): [`BufferBudget::for_principal`] is the
//! view of the budget its sessions, sockets and stdin draw from, spent when either the
//! whole budget or its share is.

use crate::admission::Principal;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The gateway-wide byte budget, or one principal's view of it; cheap to clone (all
/// clones share one count).
#[derive(Debug, Clone)]
pub(crate) struct BufferBudget {
    shared: Arc<Counter>,
    /// The principal's own count, in a view from [`BufferBudget::for_principal`].
    share: Option<Arc<AtomicUsize>>,
}

#[derive(Debug)]
struct Counter {
    limit: usize,
    used: AtomicUsize,
    /// The most used since [`BufferBudget::return_memory_after_peaks`] last looked.
    peak: AtomicUsize,
    /// What one principal may hold.
    share_limit: usize,
    /// Each principal's count (pruned of principals that hold nothing).
    shares: Mutex<HashMap<Principal, Arc<AtomicUsize>>>,
}

/// Principals remembered before the table is pruned of those that hold nothing.
const SHARES_BEFORE_PRUNING: usize = 1024;

/// How often the gateway checks whether usage has come down from a peak.
const TRIM_INTERVAL: Duration = Duration::from_secs(5);

/// How far usage must have come down from its peak for the gateway to give memory back.
const TRIM_AFTER_FREED: usize = 16 << 20;

impl BufferBudget {
    /// A budget of `limit` bytes, of which one principal may hold `share_percent`.
    pub(crate) fn new(limit: usize, share_percent: u32) -> Self {
        let share_limit = u128::try_from(limit).unwrap_or(u128::MAX)
            * u128::from(share_percent.clamp(1, 100))
            / 100;
        Self {
            shared: Arc::new(Counter {
                limit,
                used: AtomicUsize::new(0),
                peak: AtomicUsize::new(0),
                share_limit: usize::try_from(share_limit).unwrap_or(usize::MAX),
                shares: Mutex::default(),
            }),
            share: None,
        }
    }

    /// The view of the budget that `principal`'s holders draw from: spent when the
    /// whole budget or the principal's share is.
    pub(crate) fn for_principal(&self, principal: Principal) -> Self {
        let mut shares = self
            .shared
            .shares
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if shares.len() >= SHARES_BEFORE_PRUNING {
            shares
                .retain(|_, used| Arc::strong_count(used) > 1 || used.load(Ordering::Acquire) > 0);
        }
        let share = shares.entry(principal).or_default().clone();
        Self {
            shared: self.shared.clone(),
            share: Some(share),
        }
    }

    /// True when this view's principal holds its whole share.
    pub(crate) fn share_spent(&self) -> bool {
        self.share
            .as_ref()
            .is_some_and(|share| share.load(Ordering::Acquire) >= self.shared.share_limit)
    }

    /// What one principal may hold.
    pub(crate) fn share_limit(&self) -> usize {
        self.shared.share_limit
    }

    /// A budget nothing can spend.
    #[cfg(test)]
    pub(crate) fn unlimited() -> Self {
        Self::new(usize::MAX, 100)
    }

    pub(crate) fn limit(&self) -> usize {
        self.shared.limit
    }

    /// Bytes reserved now, in all.
    pub(crate) fn used(&self) -> usize {
        self.shared.used.load(Ordering::Acquire)
    }

    /// True when nothing more may be reserved with [`BufferBudget::try_reserve`]: the
    /// whole budget, or (in a principal's view) its share, is spent.
    pub(crate) fn is_spent(&self) -> bool {
        self.used() >= self.shared.limit || self.share_spent()
    }

    /// An empty reservation, to grow later.
    pub(crate) fn empty(&self) -> Reservation {
        Reservation {
            budget: self.clone(),
            bytes: 0,
        }
    }

    /// `bytes` if they fit in what is left, else `None`.
    pub(crate) fn try_reserve(&self, bytes: usize) -> Option<Reservation> {
        let mut reservation = self.empty();
        reservation.try_grow(bytes).then_some(reservation)
    }

    fn take(&self, bytes: usize, over: bool) -> bool {
        let limit = self.shared.share_limit;
        if let Some(share) = &self.share {
            let took = share.fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                let after = used.saturating_add(bytes);
                (over || after <= limit).then_some(after)
            });
            if took.is_err() {
                return false;
            }
        }
        let taken = self
            .shared
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                let after = used.saturating_add(bytes);
                (over || after <= self.shared.limit).then_some(after)
            });
        match taken {
            Ok(before) => {
                self.shared
                    .peak
                    .fetch_max(before.saturating_add(bytes), Ordering::AcqRel);
                true
            }
            Err(_) => {
                if let Some(share) = &self.share {
                    share.fetch_sub(bytes, Ordering::AcqRel);
                }
                false
            }
        }
    }

    /// Until `stop`: every few seconds, if what the budget counts has come down by
    /// [`TRIM_AFTER_FREED`] or more from its peak since the last look, gives the freed
    /// memory back to the kernel ([`crate::sys::return_freed_memory`]), so the
    /// gateway's resident size comes down after a peak instead of staying there.
    pub(crate) async fn return_memory_after_peaks(self, stop: CancellationToken) {
        let mut ticks = tokio::time::interval(TRIM_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                () = stop.cancelled() => return,
            }
            let used = self.used();
            let peak = self.shared.peak.swap(used, Ordering::AcqRel);
            if peak.saturating_sub(used) >= TRIM_AFTER_FREED {
                let trimmed = tokio::task::spawn_blocking(crate::sys::return_freed_memory).await;
                if let Err(err) = trimmed {
                    tracing::warn!(%err, "could not give freed memory back");
                }
                tracing::debug!(peak, used, "gave freed memory back to the kernel");
            }
        }
    }

    fn give_back(&self, bytes: usize) {
        self.shared.used.fetch_sub(bytes, Ordering::AcqRel);
        if let Some(share) = &self.share {
            share.fetch_sub(bytes, Ordering::AcqRel);
        }
    }
}

/// Bytes held against a [`BufferBudget`]; given back when dropped.
#[derive(Debug)]
pub(crate) struct Reservation {
    budget: BufferBudget,
    bytes: usize,
}

impl Reservation {
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Adds `bytes` if they fit in what is left of the budget; false (and nothing
    /// changed) if not.
    pub(crate) fn try_grow(&mut self, bytes: usize) -> bool {
        let ok = bytes == 0 || self.budget.take(bytes, false);
        if ok {
            self.bytes += bytes;
        }
        ok
    }

    /// Adds `bytes`, going over the budget if need be.
    pub(crate) fn grow(&mut self, bytes: usize) {
        self.budget.take(bytes, true);
        self.bytes += bytes;
    }

    /// Gives back up to `bytes`.
    pub(crate) fn shrink(&mut self, bytes: usize) {
        let bytes = bytes.min(self.bytes);
        self.bytes -= bytes;
        self.budget.give_back(bytes);
    }

    /// True when the budget this reservation draws from is spent.
    pub(crate) fn budget_spent(&self) -> bool {
        self.budget.is_spent()
    }

    /// Gives back everything held.
    pub(crate) fn clear(&mut self) {
        self.shrink(self.bytes);
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.clear();
    }
}

/// The default budget: a quarter of the memory the gateway may use, which is the host's
/// `MemTotal` or, when lower, the limit of the cgroup the gateway runs in (v2
/// `memory.max`, v1 `memory.limit_in_bytes`). 1 GiB when neither can be read.
pub(crate) fn default_budget_bytes() -> usize {
    let host = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| parse_meminfo_total(&text));
    let cgroup = own_cgroup_limit();
    let memory = match (host, cgroup) {
        (Some(h), Some(c)) => h.min(c),
        (Some(m), None) | (None, Some(m)) => m,
        (None, None) => 4 << 30,
    };
    usize::try_from(memory / 4).unwrap_or(usize::MAX)
}

/// `MemTotal` of `/proc/meminfo`, in bytes.
fn parse_meminfo_total(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// The memory limit of the gateway's own cgroup, if it has one.
fn own_cgroup_limit() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let mut limits = Vec::new();
    for line in text.lines() {
        let mut fields = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let path = path.trim_start_matches('/');
        let file = if controllers.is_empty() {
            format!("/sys/fs/cgroup/{path}/memory.max")
        } else if controllers.split(',').any(|c| c == "memory") {
            format!("/sys/fs/cgroup/memory/{path}/memory.limit_in_bytes")
        } else {
            continue;
        };
        // "max" (v2) or a huge number (v1) mean no limit.
        if let Some(limit) = std::fs::read_to_string(file)
            .ok()
            .and_then(|t| t.trim().parse::<u64>().ok())
        {
            limits.push(limit);
        }
    }
    limits.into_iter().filter(|l| *l < (1 << 60)).min()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_principal_holds_at_most_its_share_and_gives_it_back() {
        use std::net::{IpAddr, Ipv4Addr};
        let budget = BufferBudget::new(100, 50);
        let me = budget.for_principal(Principal::Address(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        let you = budget.for_principal(Principal::Address(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2))));
        let mine = me.try_reserve(50).expect("my half");
        assert!(me.is_spent() && me.share_spent(), "my share is spent");
        assert!(me.try_reserve(1).is_none());
        assert!(!you.is_spent(), "yours is not");
        let yours = you.try_reserve(50).expect("your half");
        assert!(budget.is_spent(), "the whole budget is");
        drop((mine, yours));
        assert_eq!(budget.used(), 0);
        assert!(!me.is_spent());
    }

    #[test]
    fn reservations_give_their_bytes_back_when_dropped() {
        let budget = BufferBudget::new(100, 100);
        let a = budget.try_reserve(60).expect("fits");
        assert!(budget.try_reserve(41).is_none(), "over the budget");
        let mut b = budget.try_reserve(40).expect("fits exactly");
        assert!(budget.is_spent());
        b.shrink(10);
        assert_eq!(budget.used(), 90);
        drop(a);
        drop(b);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn forced_reservations_go_over_and_spend_the_budget() {
        let budget = BufferBudget::new(10, 100);
        let mut forced = budget.empty();
        forced.grow(25);
        assert_eq!((budget.used(), forced.bytes()), (25, 25));
        assert!(budget.is_spent());
        assert!(budget.try_reserve(1).is_none());
        assert!(budget.try_reserve(0).is_some(), "nothing always fits");
        drop(forced);
        assert!(budget.try_reserve(10).is_some());
    }

    #[test]
    fn meminfo_total_is_read_in_bytes() {
        let text = "MemTotal:       24576000 kB\nMemFree:         100 kB\n";
        assert_eq!(parse_meminfo_total(text), Some(24_576_000 * 1024));
        assert!(default_budget_bytes() > 0);
    }
}
