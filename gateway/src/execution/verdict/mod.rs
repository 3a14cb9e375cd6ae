//! The verdict: which terminal event an execution ends with.
//!
//! A pure function of what was observed once the program was gone: why the gateway
//! stopped it (if it did), how it ended (exit status or signal, or lost), what its
//! cgroup and its jail reported, the largest file it left, and whether a cell's
//! interpreter was lost. Nothing here does I/O or logs; the supervisor gathers the
//! observations, asks for the verdict and attaches the usage report. The rules are
//! PROTOCOL.md's terminal rules, in their order of precedence:
//!
//! 1. a stop the gateway decided (cancel, timeout, output, or a cgroup limit seen while
//!    it ran or in the final report) names that cause;
//! 2. a jail that could not set up the program is a `spawn_failed` error;
//! 3. a kernel-enforced limit (RLIMIT_CPU's signals, RLIMIT_FSIZE's signal or a file
//!    of exactly the limit's size) is that limit;
//! 4. a full scratch file system is the workspace limit;
//! 5. a lost interpreter is `kernel_lost`;
//! 6. otherwise the program completed, with its exit code or signal;
//! 7. a program the gateway could not reap is an `internal` error.
//!
//! A cell whose interpreter had to be killed to stop it says so after rule 1's message.

use crate::config::EffectiveLimits;
use crate::sandbox::CgroupReport;
use crate::sys::Reaped;
use sluice_protocol::{ErrorCode, Event, LimitKind};
use std::time::Duration;

/// The sentence every message about a lost interpreter ends with.
pub(super) const STATE_LOST: &str =
    "the session's state is lost and its next execution starts a fresh interpreter";

/// Why the gateway ended the program early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stop {
    Cancelled,
    Timeout,
    Output,
    /// The cgroup's OOM killer struck.
    Memory,
    /// A fork failed at the cgroup's process limit.
    Processes,
    /// The whole tree used its CPU time (cgroup v2 `cpu.stat`).
    Cpu,
}

/// How the program (or the cell's interpreter) ended.
#[derive(Debug)]
pub(super) enum Ending {
    /// Reaped: its exit status and what it used.
    Reaped(Reaped),
    /// A cell's interpreter died or was killed during the cell; `because` is the
    /// gateway's reason when it ended the interpreter on its own account.
    InterpreterLost {
        reaped: Reaped,
        because: Option<String>,
    },
    /// The gateway could not reap it.
    Unknown,
}

/// What the jail reported about a jailed program (none for unjailed programs).
#[derive(Debug, Default, Clone)]
pub(super) struct JailSeen {
    /// The jail could not set up the program's sandbox; the program never ran.
    pub(super) setup_failed: Option<String>,
    /// The scratch file system was full.
    pub(super) scratch_full: bool,
    pub(super) scratch_used_bytes: u64,
}

/// Everything the verdict depends on.
#[derive(Debug)]
pub(super) struct Observed {
    /// What the pump stopped the program for, if anything.
    pub(super) stop: Option<Stop>,
    pub(super) ending: Ending,
    /// The program's cgroup at the end (a cell's: its interpreter's, once it died).
    pub(super) cgroup: Option<CgroupReport>,
    pub(super) jail: JailSeen,
    /// The largest regular file the program left in its workspace.
    pub(super) largest_file: u64,
    /// The usage report's figures the limit events quote.
    pub(super) peak_memory_bytes: u64,
    pub(super) cpu_ms: f64,
}

/// The limit a cgroup report shows was hit, if any.
pub(super) fn cgroup_stop(report: &CgroupReport, cpu_ms: u64) -> Option<Stop> {
    if report.oom_killed {
        Some(Stop::Memory)
    } else if report.process_limit_hit {
        Some(Stop::Processes)
    } else if report
        .cpu_usec
        .is_some_and(|used| used >= cpu_ms.saturating_mul(1000))
    {
        Some(Stop::Cpu)
    } else {
        None
    }
}

/// The terminal event of execution `id`.
pub(super) fn verdict(id: &str, seen: &Observed, limits: &EffectiveLimits) -> Event {
    // A limit the cgroup caught after the last check (or that ended the program).
    let stop = seen.stop.or_else(|| {
        seen.cgroup
            .as_ref()
            .and_then(|r| cgroup_stop(r, limits.cpu_ms))
    });
    let lost = matches!(seen.ending, Ending::InterpreterLost { .. });
    let mut event = match stop {
        Some(stop) => stopped(id, stop, seen, limits),
        None => ended(id, seen, limits),
    };
    if lost && stop.is_some() {
        event
            .data
            .push_str("; the interpreter had to be killed, so ");
        event.data.push_str(STATE_LOST);
    }
    event
}

/// The event for a stop the gateway decided.
fn stopped(id: &str, stop: Stop, seen: &Observed, limits: &EffectiveLimits) -> Event {
    match stop {
        Stop::Cancelled => Event::cancelled(id, "execution cancelled"),
        Stop::Timeout => Event::resource_limit(
            id,
            LimitKind::Timeout,
            limits.timeout_ms,
            None,
            format!("wall-clock limit of {} ms reached", limits.timeout_ms),
        ),
        Stop::Output => Event::resource_limit(
            id,
            LimitKind::Output,
            limits.output_bytes,
            None,
            format!("output limit of {} bytes reached", limits.output_bytes),
        ),
        Stop::Memory => Event::resource_limit(
            id,
            LimitKind::Memory,
            limits.memory_bytes,
            Some(seen.peak_memory_bytes),
            format!(
                "memory limit of {} bytes reached (the kernel's OOM killer ended a process)",
                limits.memory_bytes
            ),
        ),
        Stop::Processes => Event::resource_limit(
            id,
            LimitKind::Processes,
            limits.processes,
            None,
            format!(
                "process limit of {} reached (a fork failed)",
                limits.processes
            ),
        ),
        Stop::Cpu => Event::resource_limit(
            id,
            LimitKind::Cpu,
            limits.cpu_ms,
            seen.cgroup.and_then(|r| r.cpu_usec).map(|usec| usec / 1000),
            format!(
                "CPU-time limit of {} ms reached by the program's processes together",
                limits.cpu_ms
            ),
        ),
    }
}

/// The event for a program the gateway did not stop.
fn ended(id: &str, seen: &Observed, limits: &EffectiveLimits) -> Event {
    if let Some(why) = &seen.jail.setup_failed {
        // The source or files did not fit in the workspace (marked where the write
        // failed, warm or cold; another step's ENOSPC stays a sandbox failure).
        if why.starts_with(crate::sandbox::jail::WORKSPACE_FULL) {
            return Event::error(Some(id.to_owned()), ErrorCode::WorkspaceFull, why.clone());
        }
        // A path of the request's `files` that the session's programs made unusable (a
        // link, a device): the request's to change, as when the gateway writes them.
        if let Some(refused) = why.strip_prefix(crate::sandbox::jail::FILES_REFUSED) {
            let message = format!("cannot write the program's files into the workspace: {refused}");
            return Event::error(Some(id.to_owned()), ErrorCode::InvalidPath, message);
        }
        return Event::error(Some(id.to_owned()), ErrorCode::SpawnFailed, why.clone());
    }
    let reaped = match &seen.ending {
        Ending::Reaped(reaped) => reaped,
        Ending::InterpreterLost { reaped, because } => {
            let message = match because {
                Some(why) => {
                    format!(
                        "the gateway ended the interpreter during this cell: {why}; {STATE_LOST}"
                    )
                }
                None => format!(
                    "the interpreter {} during this cell; {STATE_LOST}",
                    describe_end(reaped)
                ),
            };
            return Event::error(Some(id.to_owned()), ErrorCode::KernelLost, message);
        }
        Ending::Unknown => {
            return Event::error(
                Some(id.to_owned()),
                ErrorCode::Internal,
                "the gateway lost track of the program",
            );
        }
    };
    if let Some((kind, value, what)) = rlimit_hit(reaped, limits, seen.largest_file) {
        let observed = match kind {
            LimitKind::FileSize => Some(seen.largest_file),
            _ => Some(seen.cpu_ms as u64),
        };
        return Event::resource_limit(
            id,
            kind,
            value,
            observed,
            format!("{what} limit of {value} reached"),
        );
    }
    if seen.jail.scratch_full {
        return Event::resource_limit(
            id,
            LimitKind::Workspace,
            limits.workspace_bytes,
            Some(seen.jail.scratch_used_bytes),
            format!(
                "workspace limit of {} bytes reached (workspace, /tmp and /dev/shm together)",
                limits.workspace_bytes
            ),
        );
    }
    Event::completed(id, reaped.exit_code, reaped.signal)
}

/// The kernel limit the program ran into, if it did: its kind, value and name.
/// RLIMIT_CPU sends SIGXCPU at the soft limit and SIGKILL a second later. RLIMIT_FSIZE
/// sends SIGXFSZ, or, to a program that ignores it (Python does), fails the write with
/// EFBIG, which leaves a file of exactly the limit's size in the working directory.
fn rlimit_hit(
    reaped: &Reaped,
    limits: &EffectiveLimits,
    largest_file: u64,
) -> Option<(LimitKind, u64, &'static str)> {
    let cpu = (LimitKind::Cpu, limits.cpu_ms, "CPU-time (ms)");
    let file_size = (
        LimitKind::FileSize,
        limits.file_size_bytes,
        "file-size (bytes)",
    );
    match reaped.signal {
        Some(libc::SIGXCPU) => Some(cpu),
        Some(libc::SIGKILL) if reaped.cpu.as_secs() >= limits.cpu_ms.div_ceil(1000) => Some(cpu),
        Some(libc::SIGXFSZ) => Some(file_size),
        _ if largest_file >= limits.file_size_bytes => Some(file_size),
        _ => None,
    }
}

/// "exited with status 1" or "was killed by signal 9".
fn describe_end(reaped: &Reaped) -> String {
    match (reaped.exit_code, reaped.signal) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(signal)) => format!("was killed by signal {signal}"),
        (None, None) => "ended".to_owned(),
    }
}

/// The terminal event of a cell its interpreter never took (it did not read the cell
/// in time, or could not): the interpreter is killed, so the session's state is lost.
pub(super) fn cell_not_taken(
    id: &str,
    cancelled: bool,
    timed_out: bool,
    err: &std::io::Error,
    limits: &EffectiveLimits,
) -> Event {
    let lost = format!("the interpreter did not take the cell and was killed; {STATE_LOST}");
    if cancelled {
        Event::cancelled(id, format!("execution cancelled; {lost}"))
    } else if timed_out {
        Event::resource_limit(
            id,
            LimitKind::Timeout,
            limits.timeout_ms,
            None,
            format!(
                "wall-clock limit of {} ms reached; {lost}",
                limits.timeout_ms
            ),
        )
    } else {
        Event::error(
            Some(id.to_owned()),
            ErrorCode::KernelLost,
            format!("the interpreter could not take the cell ({err}); {STATE_LOST}"),
        )
    }
}

/// The end of a cell whose fresh interpreter reached the cell's `limit` (its CPU time
/// or its wall-clock time) before it had started (a slow start, or code run at it: a
/// session's `sitecustomize`, say); the interpreter was killed. `usage`: what the start
/// used.
pub(super) fn cell_start_over(
    id: &str,
    limits: &EffectiveLimits,
    limit: LimitKind,
    usage: sluice_protocol::Usage,
) -> Event {
    let (what, value, observed) = match limit {
        LimitKind::Cpu => ("CPU-time", limits.cpu_ms, usage.cpu_ms),
        _ => ("wall-clock", limits.timeout_ms, usage.duration_ms),
    };
    let mut event = Event::resource_limit(
        id,
        limit,
        value,
        // Whole milliseconds, as the other limit events say them.
        Some(observed as u64),
        format!(
            "{what} limit of {value} ms reached while the interpreter started; it was \
             killed, and the session's next execution starts a fresh one"
        ),
    );
    event.usage = Some(usage);
    event
}

/// Milliseconds with microsecond resolution, as the usage report gives them.
pub(super) fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

#[cfg(test)]
mod tests;
