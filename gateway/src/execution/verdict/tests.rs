//! Table tests of the verdict: one row per terminal rule of PROTOCOL.md: what was observed, and the kind,
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
