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

/// Milliseconds with microsecond resolution, as the usage report gives them.
pub(super) fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

#[cfg(test)]
mod tests {
    //! One row per terminal rule of PROTOCOL.md: what was observed, and the kind,
    //! limit, value, observed value, code and exit status the event must carry.

    use super::*;
    use sluice_protocol::EventKind;

    fn limits() -> EffectiveLimits {
        EffectiveLimits {
            timeout: Duration::from_millis(5_000),
            timeout_ms: 5_000,
            output_bytes: 1_000,
            cpu_ms: 2_000,
            file_size_bytes: 4_096,
            open_files: 64,
            memory_bytes: 64 << 20,
            processes: 32,
            workspace_bytes: 1 << 20,
        }
    }

    fn exited(code: i32) -> Reaped {
        Reaped {
            exit_code: Some(code),
            signal: None,
            cpu: Duration::from_millis(10),
            peak_memory_bytes: 1 << 20,
        }
    }

    fn signalled(signal: i32, cpu: Duration) -> Reaped {
        Reaped {
            exit_code: None,
            signal: Some(signal),
            cpu,
            peak_memory_bytes: 1 << 20,
        }
    }

    fn report(oom: bool, forks: bool, cpu_usec: Option<u64>) -> CgroupReport {
        CgroupReport {
            oom_killed: oom,
            process_limit_hit: forks,
            peak_memory_bytes: Some(60 << 20),
            cpu_usec,
        }
    }

    fn seen(stop: Option<Stop>, ending: Ending) -> Observed {
        Observed {
            stop,
            ending,
            cgroup: None,
            jail: JailSeen::default(),
            largest_file: 0,
            peak_memory_bytes: 60 << 20,
            cpu_ms: 2_100.0,
        }
    }

    /// What a row expects of the event.
    #[derive(Debug, PartialEq)]
    struct Expect {
        kind: EventKind,
        limit: Option<LimitKind>,
        value: Option<u64>,
        observed: Option<u64>,
        code: Option<ErrorCode>,
        exit_code: Option<i32>,
        signal: Option<i32>,
        says: &'static str,
    }

    fn expect(kind: EventKind, says: &'static str) -> Expect {
        Expect {
            kind,
            limit: None,
            value: None,
            observed: None,
            code: None,
            exit_code: None,
            signal: None,
            says,
        }
    }

    fn limit(kind: LimitKind, value: u64, observed: Option<u64>, says: &'static str) -> Expect {
        Expect {
            limit: Some(kind),
            value: Some(value),
            observed,
            ..expect(EventKind::ResourceLimit, says)
        }
    }

    fn error(code: ErrorCode, says: &'static str) -> Expect {
        Expect {
            code: Some(code),
            ..expect(EventKind::Error, says)
        }
    }

    /// The event as the stream would publish it (numbered and stamped).
    fn published(mut event: Event) -> Event {
        event.sequence = 1;
        event.timestamp = 1.0;
        event.session = Some("s".into());
        event
    }

    fn check(row: &str, observed: Observed, want: Expect) {
        let event = verdict("e1", &observed, &limits());
        let got = Expect {
            kind: event.kind,
            limit: event.limit,
            value: event.limit_value,
            observed: event.limit_observed,
            code: event.code,
            exit_code: event.exit_code,
            signal: event.signal,
            says: want.says,
        };
        assert_eq!(got, want, "row {row}: {event:?}");
        assert!(
            event.data.contains(want.says),
            "row {row}: {:?} does not say {:?}",
            event.data,
            want.says
        );
        assert_eq!(event.id.as_deref(), Some("e1"), "row {row}");
        assert!(event.is_terminal(), "row {row}");
        published(event)
            .validate()
            .unwrap_or_else(|err| panic!("row {row}: invalid event: {err}"));
    }

    #[test]
    fn every_terminal_rule() {
        let killed = || signalled(libc::SIGKILL, Duration::from_millis(50));
        let rows: Vec<(&str, Observed, Expect)> = vec![
            (
                "exit 0",
                seen(None, Ending::Reaped(exited(0))),
                Expect {
                    exit_code: Some(0),
                    ..expect(EventKind::Completed, "")
                },
            ),
            (
                "exit 3",
                seen(None, Ending::Reaped(exited(3))),
                Expect {
                    exit_code: Some(3),
                    ..expect(EventKind::Completed, "")
                },
            ),
            (
                "killed by a signal the gateway did not send",
                seen(
                    None,
                    Ending::Reaped(signalled(libc::SIGSEGV, Duration::ZERO)),
                ),
                Expect {
                    signal: Some(libc::SIGSEGV),
                    ..expect(EventKind::Completed, "")
                },
            ),
            (
                "cancelled",
                seen(Some(Stop::Cancelled), Ending::Reaped(killed())),
                expect(EventKind::Cancelled, "execution cancelled"),
            ),
            (
                "cancel wins over a limit the cgroup saw afterwards",
                Observed {
                    cgroup: Some(report(true, false, None)),
                    ..seen(Some(Stop::Cancelled), Ending::Reaped(killed()))
                },
                expect(EventKind::Cancelled, "execution cancelled"),
            ),
            (
                "timeout",
                seen(Some(Stop::Timeout), Ending::Reaped(killed())),
                limit(
                    LimitKind::Timeout,
                    5_000,
                    None,
                    "wall-clock limit of 5000 ms",
                ),
            ),
            (
                "output",
                seen(Some(Stop::Output), Ending::Reaped(killed())),
                limit(LimitKind::Output, 1_000, None, "output limit of 1000 bytes"),
            ),
            (
                "memory, seen while running",
                seen(Some(Stop::Memory), Ending::Reaped(killed())),
                limit(LimitKind::Memory, 64 << 20, Some(60 << 20), "OOM killer"),
            ),
            (
                "memory, seen only in the final report",
                Observed {
                    cgroup: Some(report(true, false, None)),
                    ..seen(None, Ending::Reaped(killed()))
                },
                limit(LimitKind::Memory, 64 << 20, Some(60 << 20), "OOM killer"),
            ),
            (
                "processes, from the final report",
                Observed {
                    cgroup: Some(report(false, true, None)),
                    ..seen(None, Ending::Reaped(exited(1)))
                },
                limit(LimitKind::Processes, 32, None, "a fork failed"),
            ),
            (
                "OOM before the process limit in one report",
                Observed {
                    cgroup: Some(report(true, true, None)),
                    ..seen(None, Ending::Reaped(killed()))
                },
                limit(LimitKind::Memory, 64 << 20, Some(60 << 20), "OOM killer"),
            ),
            (
                "whole-tree CPU, from the cgroup",
                Observed {
                    cgroup: Some(report(false, false, Some(2_300_000))),
                    ..seen(None, Ending::Reaped(killed()))
                },
                limit(LimitKind::Cpu, 2_000, Some(2_300), "processes together"),
            ),
            (
                "CPU under the limit in the cgroup is no stop",
                Observed {
                    cgroup: Some(report(false, false, Some(1_000))),
                    ..seen(None, Ending::Reaped(exited(0)))
                },
                Expect {
                    exit_code: Some(0),
                    ..expect(EventKind::Completed, "")
                },
            ),
            (
                "RLIMIT_CPU soft limit: SIGXCPU",
                seen(
                    None,
                    Ending::Reaped(signalled(libc::SIGXCPU, Duration::from_secs(2))),
                ),
                limit(
                    LimitKind::Cpu,
                    2_000,
                    Some(2_100),
                    "CPU-time (ms) limit of 2000",
                ),
            ),
            (
                "RLIMIT_CPU hard limit: SIGKILL after the CPU seconds",
                seen(
                    None,
                    Ending::Reaped(signalled(libc::SIGKILL, Duration::from_secs(3))),
                ),
                limit(LimitKind::Cpu, 2_000, Some(2_100), "CPU-time (ms) limit"),
            ),
            (
                "SIGKILL with little CPU is not the CPU limit",
                seen(None, Ending::Reaped(killed())),
                Expect {
                    signal: Some(libc::SIGKILL),
                    ..expect(EventKind::Completed, "")
                },
            ),
            (
                "RLIMIT_FSIZE: SIGXFSZ",
                Observed {
                    largest_file: 4_096,
                    ..seen(
                        None,
                        Ending::Reaped(signalled(libc::SIGXFSZ, Duration::ZERO)),
                    )
                },
                limit(
                    LimitKind::FileSize,
                    4_096,
                    Some(4_096),
                    "file-size (bytes) limit of 4096",
                ),
            ),
            (
                "RLIMIT_FSIZE ignored (EFBIG): a file of the limit's size",
                Observed {
                    largest_file: 4_096,
                    ..seen(None, Ending::Reaped(exited(1)))
                },
                limit(LimitKind::FileSize, 4_096, Some(4_096), "file-size (bytes)"),
            ),
            (
                "scratch file system full",
                Observed {
                    jail: JailSeen {
                        scratch_full: true,
                        scratch_used_bytes: 1 << 20,
                        ..JailSeen::default()
                    },
                    ..seen(None, Ending::Reaped(exited(1)))
                },
                limit(
                    LimitKind::Workspace,
                    1 << 20,
                    Some(1 << 20),
                    "workspace limit",
                ),
            ),
            (
                "a file-size hit wins over a full scratch",
                Observed {
                    largest_file: 4_096,
                    jail: JailSeen {
                        scratch_full: true,
                        ..JailSeen::default()
                    },
                    ..seen(None, Ending::Reaped(exited(1)))
                },
                limit(LimitKind::FileSize, 4_096, Some(4_096), "file-size"),
            ),
            (
                "the jail could not set up the program",
                Observed {
                    jail: JailSeen {
                        setup_failed: Some("mount failed".into()),
                        ..JailSeen::default()
                    },
                    ..seen(None, Ending::Reaped(exited(127)))
                },
                error(ErrorCode::SpawnFailed, "mount failed"),
            ),
            (
                "interpreter died during the cell",
                seen(
                    None,
                    Ending::InterpreterLost {
                        reaped: signalled(libc::SIGSEGV, Duration::ZERO),
                        because: None,
                    },
                ),
                error(
                    ErrorCode::KernelLost,
                    "was killed by signal 11 during this cell",
                ),
            ),
            (
                "interpreter exited during the cell",
                seen(
                    None,
                    Ending::InterpreterLost {
                        reaped: exited(0),
                        because: None,
                    },
                ),
                error(
                    ErrorCode::KernelLost,
                    "exited with status 0 during this cell",
                ),
            ),
            (
                "the gateway ended the interpreter during the cell",
                seen(
                    None,
                    Ending::InterpreterLost {
                        reaped: killed(),
                        because: Some("it used too much CPU while idle".into()),
                    },
                ),
                error(
                    ErrorCode::KernelLost,
                    "the gateway ended the interpreter during this cell: it used too much CPU",
                ),
            ),
            (
                "a cell stopped by the timeout whose interpreter had to be killed",
                seen(
                    Some(Stop::Timeout),
                    Ending::InterpreterLost {
                        reaped: killed(),
                        because: None,
                    },
                ),
                limit(
                    LimitKind::Timeout,
                    5_000,
                    None,
                    "; the interpreter had to be killed, so the session's state is lost",
                ),
            ),
            (
                "not reaped",
                seen(None, Ending::Unknown),
                error(ErrorCode::Internal, "lost track of the program"),
            ),
            (
                "a stop wins over not being reaped",
                seen(Some(Stop::Cancelled), Ending::Unknown),
                expect(EventKind::Cancelled, "execution cancelled"),
            ),
        ];
        for (row, observed, want) in rows {
            check(row, observed, want);
        }
    }

    #[test]
    fn a_cell_the_interpreter_did_not_take() {
        let limits = limits();
        let err = std::io::Error::other("broken pipe");
        let cancelled = cell_not_taken("e1", true, false, &err, &limits);
        assert_eq!(cancelled.kind, EventKind::Cancelled);
        assert!(cancelled.data.contains("did not take the cell"));
        let timed_out = cell_not_taken("e1", false, true, &err, &limits);
        assert_eq!(timed_out.limit, Some(LimitKind::Timeout));
        assert_eq!(timed_out.limit_value, Some(5_000));
        let lost = cell_not_taken("e1", false, false, &err, &limits);
        assert_eq!(lost.code, Some(ErrorCode::KernelLost));
        assert!(lost.data.contains("(broken pipe)"));
        for event in [cancelled, timed_out, lost] {
            assert!(event.data.contains(STATE_LOST), "{event:?}");
            published(event)
                .validate()
                .unwrap_or_else(|err| panic!("{err}"));
        }
    }
}
