//! The executions' budget: the memory and processes all running executions may hold
//! together, added up from their limits.
//!
//! Each execution reserves its `memory_bytes` and `processes` limits (plus the jail's own
//! processes) when it is admitted, next to its execution slot, and gives them back when
//! its slot is freed; a persistent interpreter reserves the limits it was started with
//! for its whole life, and its cells reserve nothing more. An execute whose limits do
//! not fit what remains is refused with `too_many_executions` (one that could never fit
//! with `invalid_limit`) and starts nothing. The parent cgroup of all executions gets
//! the same totals (`Cgroups::set_totals`), so the kernel holds the sum too.
//!
//! Memory limits are added up against the total times `--memory-overcommit` (default
//! 8): a limit is a ceiling most programs stay far below (the default is 512 MiB; a
//! Python `print` uses about 10 MiB), so admitting only what fits at every limit at
//! once would turn clients away from an idle host. The parent cgroup holds the real
//! total: should the running executions together reach it, the kernel kills the
//! largest of them, which ends with `resource_limit` `memory`. `--memory-overcommit 1`
//! admits only what fits at every limit at once.
//!
//! One principal (a peer address; a tenant once clients authenticate) may hold at most
//! `--budget-share-per-peer` percent (default 25) of each total, so one client cannot
//! take what the others need by asking for large limits.
//!
//! Defaults come from the host: memory is `MemTotal` less a reserve for the system and
//! the gateway (a quarter, at least 1 GiB); processes are half the kernel's
//! `threads-max`. A total of 0 means the operator overcommits without bound: nothing is
//! added up and the parent cgroup has no limit.

use crate::admission::Principal;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// Memory kept back from the executions' default total: a quarter of the host's, at
/// least this much.
const MIN_RESERVE_BYTES: u64 = 1 << 30;

/// One resource's total and what admitted executions hold of it.
#[derive(Debug)]
struct Pool {
    /// What the executions may use together (the parent cgroup's limit).
    total: u64,
    /// What their limits may add up to: `total` times the overcommit ratio.
    admitted: u64,
    used: AtomicU64,
}

impl Pool {
    /// Takes `amount` if it fits.
    fn take(&self, amount: u64) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(amount)
                    .filter(|after| *after <= self.admitted)
            })
            .is_ok()
    }

    fn give_back(&self, amount: u64) {
        self.used.fetch_sub(amount, Ordering::AcqRel);
    }

    fn free(&self) -> u64 {
        self.admitted
            .saturating_sub(self.used.load(Ordering::Acquire))
    }
}

/// The gateway's totals for its executions; `None` for a resource not added up.
#[derive(Debug, Default)]
pub(crate) struct ExecutionBudget {
    memory: Option<Pool>,
    processes: Option<Pool>,
    /// Percent of each total one principal may hold.
    share_percent: u64,
    /// What each principal holds now (memory, processes); holders only.
    held: Mutex<HashMap<Principal, (u64, u64)>>,
}

/// What one admitted execution (or persistent interpreter) holds of the budget; given
/// back on drop.
#[derive(Debug, Default)]
pub(crate) struct Reservation {
    budget: Option<(Arc<ExecutionBudget>, Principal)>,
    memory: u64,
    processes: u64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Some((budget, principal)) = self.budget.take() {
            if let Some(pool) = &budget.memory {
                pool.give_back(self.memory);
            }
            if let Some(pool) = &budget.processes {
                pool.give_back(self.processes);
            }
            let mut held = budget.held.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(mine) = held.get_mut(&principal) {
                mine.0 = mine.0.saturating_sub(self.memory);
                mine.1 = mine.1.saturating_sub(self.processes);
                if *mine == (0, 0) {
                    held.remove(&principal);
                }
            }
        }
    }
}

/// Why a reservation was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RefusalKind {
    /// No execution may ever hold this much here: the request's limit is too large.
    Exceeds,
    /// Running executions hold the budget (all of them, or the principal's share) now.
    Busy,
}

/// A refused reservation: its kind and the message for the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub(crate) kind: RefusalKind,
    pub(crate) message: String,
}

impl ExecutionBudget {
    /// The budget with these totals: `None` takes the host's default, `Some(0)` adds
    /// nothing up (overcommit without bound). Memory limits may add up to
    /// `memory_overcommit` times the memory total (at least once).
    pub(crate) fn new(
        memory_bytes: Option<u64>,
        memory_overcommit: u32,
        processes: Option<u64>,
        share_percent: u32,
    ) -> Self {
        let pool = |total: u64, ratio: u32| {
            (total > 0).then(|| Pool {
                total,
                admitted: total.saturating_mul(u64::from(ratio.max(1))),
                used: AtomicU64::new(0),
            })
        };
        Self {
            memory: pool(
                memory_bytes.unwrap_or_else(host_memory_default),
                memory_overcommit,
            ),
            processes: pool(processes.unwrap_or_else(host_processes_default), 1),
            share_percent: u64::from(share_percent.clamp(1, 100)),
            held: Mutex::default(),
        }
    }

    /// What one principal may hold of `pool`'s admitted total.
    fn share_of(&self, pool: &Pool) -> u64 {
        (u128::from(pool.admitted) * u128::from(self.share_percent) / 100)
            .try_into()
            .unwrap_or(u64::MAX)
    }

    /// The budget `config` asks for, logged, with the parent cgroup of all executions
    /// limited to it.
    pub(crate) fn start(config: &crate::Config, cgroups: &super::Cgroups) -> Arc<Self> {
        let budget = Self::new(
            config.memory_budget_bytes,
            config.memory_overcommit,
            config.process_budget,
            config.budget_share_per_peer,
        );
        cgroups.set_totals(budget.memory_total(), budget.processes_total());
        let total =
            |t: Option<u64>| t.map_or("not added up (overcommit)".to_owned(), |t| t.to_string());
        tracing::info!(
            memory_bytes = %total(budget.memory_total()),
            memory_overcommit = config.memory_overcommit.max(1),
            processes = %total(budget.processes_total()),
            "executions' budget: their limits added up must fit (memory: its total times the overcommit)"
        );
        let default_memory = config.limits.memory_bytes.default;
        if budget.memory_total().is_some_and(|t| t < default_memory) {
            tracing::warn!(
                default_memory,
                "the default memory limit is above the executions' memory budget: executes must ask for less"
            );
        }
        Arc::new(budget)
    }

    /// The budget of session workspaces: their sizes added up, never overcommitted (a
    /// workspace's files are memory), `--workspace-budget-bytes` or a third of the
    /// executions' memory total; shared per peer as the executions' is.
    pub(crate) fn for_workspaces(config: &crate::Config, executions: &Self) -> Arc<Self> {
        let total = match config.workspace_budget_bytes {
            Some(bytes) => Some(bytes),
            None => Some(executions.memory_total().map_or(0, |total| total / 3)),
        };
        let budget = Self::new(total, 1, Some(0), config.budget_share_per_peer);
        tracing::info!(
            bytes = %budget.memory_total().map_or("not added up".to_owned(), |t| t.to_string()),
            "session workspaces' budget: their sizes added up must fit"
        );
        Arc::new(budget)
    }

    /// The memory total, if memory is added up.
    pub(crate) fn memory_total(&self) -> Option<u64> {
        self.memory.as_ref().map(|p| p.total)
    }

    /// The process total, if processes are added up.
    pub(crate) fn processes_total(&self) -> Option<u64> {
        self.processes.as_ref().map(|p| p.total)
    }

    /// Reserves `memory_bytes` and `processes` for one execution of `principal`, or
    /// says why not (and takes nothing).
    pub(crate) fn reserve(
        self: &Arc<Self>,
        principal: Principal,
        memory_bytes: u64,
        processes: u64,
    ) -> Result<Reservation, Refusal> {
        for (pool, asked, what) in [
            (&self.memory, memory_bytes, "memory_bytes"),
            (&self.processes, processes, "processes"),
        ] {
            if let Some(pool) = pool.as_ref().filter(|p| asked > p.total) {
                return Err(Refusal {
                    kind: RefusalKind::Exceeds,
                    message: format!(
                        "limits.{what} ({asked}) is more than this gateway gives all its executions together ({})",
                        pool.total
                    ),
                });
            }
        }
        // Held while the pools are taken from, so a principal's share is checked and
        // taken at once.
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let mine = held.get(&principal).copied().unwrap_or((0, 0));
        for (pool, holds, asked, what) in [
            (&self.memory, mine.0, memory_bytes, "memory"),
            (&self.processes, mine.1, processes, "process"),
        ] {
            // A share of 100 percent is the pool's own check below.
            let Some(pool) = pool.as_ref().filter(|_| self.share_percent < 100) else {
                continue;
            };
            let share = self.share_of(pool);
            if holds.saturating_add(asked) > share {
                return Err(Refusal {
                    kind: RefusalKind::Busy,
                    message: format!(
                        "your {principal}'s running executions hold {holds} of the {share} their limits may add up to ({} percent of the gateway's {what} budget, --budget-share-per-peer); this execution asks for {asked}: try again when one ends, or ask for less",
                        self.share_percent
                    ),
                });
            }
        }
        if let Some(pool) = &self.memory {
            if !pool.take(memory_bytes) {
                return Err(Refusal {
                    kind: RefusalKind::Busy,
                    message: format!(
                        "the running executions hold the gateway's memory budget: their limits may add up to {} bytes and {} are free, this execution's memory limit is {memory_bytes}; try again later or ask for less (limits.memory_bytes)",
                        pool.admitted,
                        pool.free()
                    ),
                });
            }
        }
        if let Some(pool) = &self.processes {
            if !pool.take(processes) {
                if let Some(memory) = &self.memory {
                    memory.give_back(memory_bytes);
                }
                return Err(Refusal {
                    kind: RefusalKind::Busy,
                    message: format!(
                        "the running executions hold the gateway's process budget: {} of {} are free, this execution may have {processes}; try again later or ask for fewer (limits.processes)",
                        pool.free(),
                        pool.total
                    ),
                });
            }
        }
        let entry = held.entry(principal.clone()).or_insert((0, 0));
        entry.0 = entry.0.saturating_add(memory_bytes);
        entry.1 = entry.1.saturating_add(processes);
        Ok(Reservation {
            budget: Some((self.clone(), principal)),
            memory: memory_bytes,
            processes,
        })
    }
}

/// The host's memory less a reserve for the system and the gateway.
fn host_memory_default() -> u64 {
    let total = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .map_or(0, |kib| kib.saturating_mul(1024));
    memory_after_reserve(total)
}

/// `total` less a quarter of it (at least `MIN_RESERVE_BYTES`); 1 GiB when that leaves
/// nothing or the host's memory is unknown, so executions still fit somewhere.
fn memory_after_reserve(total: u64) -> u64 {
    let reserve = (total / 4).max(MIN_RESERVE_BYTES);
    match total.saturating_sub(reserve) {
        0 => 1 << 30,
        left => left,
    }
}

/// Half the kernel's `threads-max` (processes and threads count alike in `pids`).
fn host_processes_default() -> u64 {
    std::fs::read_to_string("/proc/sys/kernel/threads-max")
        .ok()
        .and_then(|text| text.trim().parse::<u64>().ok())
        .map_or(32_768, |max| (max / 2).max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: Principal = Principal::Address(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));
    const YOU: Principal =
        Principal::Address(std::net::IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2)));

    #[test]
    fn one_principal_holds_at_most_its_share() {
        let budget = Arc::new(ExecutionBudget::new(Some(100), 1, Some(100), 50));
        let mine = budget.reserve(ME, 50, 10).expect("half is mine to take");
        let refused = budget.reserve(ME, 1, 1).expect_err("my share is spent");
        assert_eq!(refused.kind, RefusalKind::Busy);
        assert!(
            refused.message.contains("budget-share-per-peer"),
            "{}",
            refused.message
        );
        let yours = budget
            .reserve(YOU, 50, 10)
            .expect("the other half is yours");
        drop(mine);
        let again = budget.reserve(ME, 50, 10).expect("given back");
        drop((yours, again));
        assert!(budget.held.lock().unwrap().is_empty(), "holders only");
    }

    #[test]
    fn reservations_add_up_and_are_given_back() {
        let budget = Arc::new(ExecutionBudget::new(Some(100), 1, Some(10), 100));
        let first = budget.reserve(ME, 60, 4).expect("fits");
        let refused = budget.reserve(ME, 60, 4).expect_err("memory spent");
        assert_eq!(refused.kind, RefusalKind::Busy);
        assert!(
            refused.message.contains("100 bytes and 40 are free"),
            "{}",
            refused.message
        );
        let small = budget.reserve(ME, 40, 4).expect("the rest fits");
        let refused = budget.reserve(ME, 0, 4).expect_err("processes spent");
        assert!(
            refused.message.contains("process budget"),
            "{}",
            refused.message
        );
        // A refusal takes nothing: memory was not held back by the process refusal.
        drop(small);
        let again = budget.reserve(ME, 40, 6).expect("given back");
        assert_eq!(
            budget.reserve(ME, 101, 1).expect_err("never fits").kind,
            RefusalKind::Exceeds
        );
        drop((first, again));
        assert_eq!(budget.memory.as_ref().map(Pool::free), Some(100));
        assert_eq!(budget.processes.as_ref().map(Pool::free), Some(10));
    }

    #[test]
    fn memory_limits_add_up_to_the_total_times_the_overcommit() {
        let budget = Arc::new(ExecutionBudget::new(Some(100), 4, None, 100));
        let held: Vec<_> = (0..4)
            .map(|_| budget.reserve(ME, 100, 1).expect("four times the total"))
            .collect();
        assert_eq!(
            budget.reserve(ME, 1, 1).expect_err("spent").kind,
            RefusalKind::Busy
        );
        assert_eq!(
            budget
                .reserve(ME, 101, 1)
                .expect_err("above the real total")
                .kind,
            RefusalKind::Exceeds,
            "one execution never gets more than the parent cgroup holds"
        );
        drop(held);
    }

    #[test]
    fn zero_overcommits_on_purpose() {
        let budget = Arc::new(ExecutionBudget::new(Some(0), 8, Some(0), 25));
        assert_eq!(budget.memory_total(), None);
        let held: Vec<_> = (0..1000)
            .map(|_| {
                budget
                    .reserve(ME, u64::MAX / 2, 1 << 20)
                    .expect("no budget")
            })
            .collect();
        assert_eq!(held.len(), 1000);
    }

    #[test]
    fn the_host_default_keeps_a_reserve() {
        assert_eq!(memory_after_reserve(24 << 30), 18 << 30);
        assert_eq!(memory_after_reserve(2 << 30), 1 << 30);
        assert_eq!(memory_after_reserve(0), 1 << 30);
        assert!(host_memory_default() > 0);
        assert!(host_processes_default() > 0);
    }
}
