//! When a running program's cgroup is looked at. The limits the kernel counts as they
//! are hit (an OOM kill, a refused fork) are two cheap `pread`s, checked every
//! [`LIMITS_CHECK`]. CPU time is dearer (reading `cpu.stat` flushes the kernel's per-CPU
//! statistics), so it is read no earlier than the moment the remaining budget could
//! have been spent with every core busy ([`next_cpu_check`]): a thousand light programs
//! then cost the gateway almost nothing, and a spinning one is still stopped close to
//! its limit.

use crate::sandbox::HEAVY_CPU_USEC;
use std::sync::OnceLock;
use std::time::Duration;

/// How often a running program's cgroup is checked for a memory or process-limit hit.
pub(super) const LIMITS_CHECK: Duration = Duration::from_millis(100);

/// The shortest wait between two reads of CPU time: close to the limit, the wait
/// shrinks with what is left, down to this.
const MIN_CPU_CHECK: Duration = Duration::from_millis(10);

/// The longest wait between two reads of CPU time of a program that is not heavy yet
/// (its CPU weight drops once it is): a fairness heuristic, not a limit, so it is
/// looked at less often the longer a program has run light, up to this.
const MAX_LIGHT_CHECK: Duration = Duration::from_secs(2);

/// The cores a program's processes can run on at once.
fn cores() -> u64 {
    static CORES: OnceLock<u64> = OnceLock::new();
    *CORES.get_or_init(|| {
        std::thread::available_parallelism().map_or(1, |n| u64::try_from(n.get()).unwrap_or(1))
    })
}

/// How long after a CPU-time reading (`used_usec`, at `elapsed` since the start) the
/// next one is due, for a limit of `limit_usec`.
pub(super) fn next_cpu_check(
    elapsed: Duration,
    used_usec: u64,
    limit_usec: u64,
    heavy: bool,
) -> Duration {
    next_cpu_check_on(elapsed, used_usec, limit_usec, heavy, cores())
}

fn next_cpu_check_on(
    elapsed: Duration,
    used_usec: u64,
    limit_usec: u64,
    heavy: bool,
    cores: u64,
) -> Duration {
    let cores = cores.max(1);
    // The soonest the rest of the budget could be spent: every core busy.
    let until_limit = Duration::from_micros(limit_usec.saturating_sub(used_usec) / cores);
    let mut next = until_limit.max(MIN_CPU_CHECK);
    if !heavy {
        let until_heavy = Duration::from_micros(HEAVY_CPU_USEC.saturating_sub(used_usec) / cores);
        let light = (elapsed / 4).clamp(LIMITS_CHECK, MAX_LIGHT_CHECK);
        next = next.min(until_heavy.max(light));
    }
    next
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1000;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_light_program_is_read_less_often_the_longer_it_runs() {
        let limit = 10_000 * MS;
        assert_eq!(next_cpu_check_on(ms(0), 0, limit, false, 2), ms(100));
        assert_eq!(
            next_cpu_check_on(ms(1000), 2 * MS, limit, false, 2),
            ms(250)
        );
        assert_eq!(
            next_cpu_check_on(ms(60_000), 50 * MS, limit, false, 2),
            ms(2000)
        );
    }

    #[test]
    fn a_heavy_program_is_read_when_its_budget_could_be_spent() {
        // 1 s of 10 s used on 2 cores: 4.5 s could spend the rest.
        assert_eq!(
            next_cpu_check_on(ms(500), 1000 * MS, 10_000 * MS, true, 2),
            ms(4500)
        );
        // Close to the limit the wait shrinks, but not below the floor.
        assert_eq!(
            next_cpu_check_on(ms(500), 995 * MS, 1000 * MS, true, 1),
            ms(10)
        );
        assert_eq!(
            next_cpu_check_on(ms(500), 2000 * MS, 1000 * MS, true, 4),
            ms(10)
        );
    }

    #[test]
    fn a_program_about_to_turn_heavy_or_spend_its_budget_is_read_in_time() {
        // 150 ms used on one core: heavy 50 ms from now at the earliest.
        assert_eq!(
            next_cpu_check_on(ms(150), 150 * MS, 10_000 * MS, false, 1),
            ms(100)
        );
        assert_eq!(
            next_cpu_check_on(ms(9000), 150 * MS, 10_000 * MS, false, 1),
            ms(2000)
        );
        // A limit below the heavy mark comes first.
        assert_eq!(next_cpu_check_on(ms(0), 0, 40 * MS, false, 2), ms(20));
    }
}
