//! When a running program's CPU time is read. The limits the kernel counts as they are
//! hit (an OOM kill, a refused fork) are watched for every execution at once by the
//! gateway's limit watcher (`sandbox::cgroup::watch`). CPU time is dearer (reading `cpu.stat` flushes the kernel's per-CPU
//! statistics), so it is read no earlier than the moment the remaining budget could
//! have been spent with every core busy ([`next_cpu_check`]): a thousand light programs
//! then cost the gateway almost nothing, and a spinning one is still stopped close to
//! its limit.

use crate::sandbox::HEAVY_CPU_USEC;
use std::sync::OnceLock;
use std::time::Duration;

/// The shortest wait between two reads of CPU time: close to the limit, the wait
/// shrinks with what is left, down to this.
const MIN_CPU_CHECK: Duration = Duration::from_millis(10);

/// The shortest wait between two reads of CPU time of a program that is not heavy yet.
const MIN_LIGHT_CHECK: Duration = Duration::from_millis(100);

/// The longest wait between two reads of CPU time of a program that is not heavy yet
/// (its CPU weight drops once it is): a fairness heuristic, not a limit, so it is
/// looked at less often the longer a program has run light, up to this.
const MAX_LIGHT_CHECK: Duration = Duration::from_secs(2);

// `Duration::clamp` panics on an empty range.
const _: () = assert!(MIN_LIGHT_CHECK.as_nanos() <= MAX_LIGHT_CHECK.as_nanos());

/// The cores a program's processes could run on at once: every online CPU, not the
/// gateway's own share (a program can reset its affinity, and a quota on the gateway's
/// cgroup need not cover its executions'), so a check is never late.
fn cores() -> u64 {
    static CORES: OnceLock<u64> = OnceLock::new();
    *CORES.get_or_init(|| {
        let affine =
            std::thread::available_parallelism().map_or(1, |n| u64::try_from(n.get()).unwrap_or(1));
        let online = std::fs::read_to_string("/sys/devices/system/cpu/online")
            .ok()
            .and_then(|list| count_cpus(&list))
            .unwrap_or(0);
        affine.max(online)
    })
}

/// The number of CPUs in a kernel CPU list such as `0-3,6,8-9`.
fn count_cpus(list: &str) -> Option<u64> {
    list.trim().split(',').try_fold(0_u64, |total, range| {
        let count = match range.split_once('-') {
            Some((first, last)) => {
                let (first, last): (u64, u64) = (first.parse().ok()?, last.parse().ok()?);
                last.checked_sub(first)? + 1
            }
            None => range.parse::<u64>().map(|_| 1).ok()?,
        };
        Some(total + count)
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
        let light = (elapsed / 4).clamp(MIN_LIGHT_CHECK, MAX_LIGHT_CHECK);
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
    fn cpu_lists_are_counted() {
        assert_eq!(count_cpus("0-1\n"), Some(2));
        assert_eq!(count_cpus("0-3,6,8-9"), Some(7));
        assert_eq!(count_cpus("0"), Some(1));
        assert_eq!(count_cpus("x"), None);
        assert_eq!(count_cpus("3-1"), None);
        assert!(cores() >= 1);
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
