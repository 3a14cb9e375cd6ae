//! Per-execution limits (timeout, output, CPU time, file size, open files) and capacity
//! limits (executions, sessions, connections).

use anyhow::{bail, Context as _, Result};
use sluice_gateway::{Config, LimitBound, LimitsConfig};
use sluice_protocol::{ErrorCode, EventKind, ExecuteRequest, LimitKind, Limits};
use sluice_tests::{
    assert_lifecycle, assert_stream_ok, request, run, text_of, unique_marker, wait_until_gone,
    TestGateway,
};
use tokio_tungstenite::tungstenite;

fn with_limits(
    request: ExecuteRequest,
    timeout_ms: Option<u64>,
    output_bytes: Option<u64>,
) -> ExecuteRequest {
    ExecuteRequest {
        limits: Limits {
            timeout_ms,
            output_bytes,
            ..Limits::default()
        },
        ..request
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_ends_the_execution_with_resource_limit() -> Result<()> {
    let gateway = TestGateway::spawn().await;
    let client = gateway.client().await?;
    let marker = unique_marker("timeout");
    let code = format!("echo started\nexec -a {marker} sleep 1000");
    let outcome = run(
        &client,
        with_limits(request("slow", "bash", &code), Some(500), None),
    )
    .await?;
    assert_stream_ok(&outcome.events);
    assert_lifecycle(&outcome.events);
    assert_eq!(
        outcome.kind(),
        EventKind::ResourceLimit,
        "{:?}",
        outcome.events
    );
    assert_eq!(outcome.limit(), Some(LimitKind::Timeout));
    assert_eq!(outcome.terminal.limit_value, Some(500));
    assert_eq!(outcome.stdout, "started\n");
    let usage = outcome.usage().context("no usage")?;
    assert!(usage.duration_ms >= 500.0, "{usage:?}");
    wait_until_gone(&marker).await?;
    client.close().await?;
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_timeout_applies_when_none_is_requested() -> Result<()> {
    let gateway = TestGateway::spawn_with(Config {
        limits: LimitsConfig {
            timeout_ms: LimitBound {
                default: 400,
                max: 10_000,
            },
            ..LimitsConfig::default()
        },
        ..Config::default()
    })
    .await;
    let client = gateway.client().await?;
    let outcome = run(&client, request("slow", "sh", "exec sleep 1000")).await?;
    assert_stream_ok(&outcome.events);
    assert_lifecycle(&outcome.events);
    assert_eq!(
        outcome.limit(),
        Some(LimitKind::Timeout),
        "{:?}",
        outcome.events
    );
    assert_eq!(outcome.terminal.limit_value, Some(400));
    client.close().await?;
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_output_limit_delivers_exactly_the_limit() -> Result<()> {
    const LIMIT: u64 = 100_000;
    let gateway = TestGateway::spawn().await;
    let client = gateway.client().await?;
    // `yes` writes without end, in large blocks that do not line up with the limit.
    let outcome = run(
        &client,
        with_limits(
            request("flood", "sh", "exec yes abcdefg"),
            None,
            Some(LIMIT),
        ),
    )
    .await?;
    assert_stream_ok(&outcome.events);
    assert_lifecycle(&outcome.events);
    assert_eq!(
        outcome.kind(),
        EventKind::ResourceLimit,
        "{:?}",
        outcome.terminal
    );
    assert_eq!(outcome.limit(), Some(LimitKind::Output));
    assert_eq!(outcome.terminal.limit_value, Some(LIMIT));
    assert_eq!(outcome.stdout.len() as u64, LIMIT);
    let expected: String = "abcdefg\n".repeat(LIMIT as usize / 8 + 1);
    assert_eq!(outcome.stdout, expected[..LIMIT as usize]);
    let usage = outcome.usage().context("no usage")?;
    assert_eq!(usage.stdout_bytes + usage.stderr_bytes, LIMIT);
    client.close().await?;
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_output_limit_counts_stdout_and_stderr_together() -> Result<()> {
    const LIMIT: u64 = 1000;
    let gateway = TestGateway::spawn().await;
    let client = gateway.client().await?;
    let code = "import sys\n\
                for i in range(10000):\n\
                \x20   stream = sys.stdout if i % 2 == 0 else sys.stderr\n\
                \x20   stream.write('0123456789' * 3)\n\
                \x20   stream.flush()\n";
    let outcome = run(
        &client,
        with_limits(request("both", "python", code), None, Some(LIMIT)),
    )
    .await?;
    assert_stream_ok(&outcome.events);
    assert_lifecycle(&outcome.events);
    assert_eq!(
        outcome.limit(),
        Some(LimitKind::Output),
        "{:?}",
        outcome.terminal
    );
    assert_eq!((outcome.stdout.len() + outcome.stderr.len()) as u64, LIMIT);
    // Whatever the split, each stream is a prefix of what the program wrote to it.
    for text in [&outcome.stdout, &outcome.stderr] {
        assert!(
            text.bytes()
                .zip(b"0123456789".iter().cycle())
                .all(|(a, b)| a == *b),
            "{text:?}"
        );
    }
    let usage = outcome.usage().context("no usage")?;
    assert_eq!(usage.stdout_bytes, outcome.stdout.len() as u64);
    assert_eq!(usage.stderr_bytes, outcome.stderr.len() as u64);
    client.close().await?;
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_exactly_at_the_limit_completes() -> Result<()> {
    let gateway = TestGateway::spawn().await;
    let client = gateway.client().await?;
    let outcome = run(
        &client,
        with_limits(request("exact", "sh", "printf 12345"), None, Some(5)),
    )
    .await?;
    assert_stream_ok(&outcome.events);
    // Five bytes under a five-byte limit: nothing was cut, so the program may complete;
    // a gateway that counts the limit as reached may also end it with resource_limit.
    assert_eq!(outcome.stdout, "12345");
    match outcome.kind() {
        EventKind::Completed => assert_eq!(outcome.exit_code(), Some(0)),
        EventKind::ResourceLimit => assert_eq!(outcome.limit(), Some(LimitKind::Output)),
        other => bail!("unexpected terminal {other}: {:?}", outcome.terminal),
    }
    client.close().await?;
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_above_the_maximum_or_zero_are_invalid() -> Result<()> {
    let gateway = TestGateway::spawn_with(Config {
        limits: LimitsConfig {
            timeout_ms: LimitBound {
                default: 5_000,
                max: 10_000,
            },
            output_bytes: LimitBound {
                default: 1 << 20,
                max: 2 << 20,
            },
            ..LimitsConfig::default()
        },
        ..Config::default()
    })
    .await;
    let mut socket = gateway.raw().await?;
    let cases = [
        ("timeout-above", Some(10_001), None),
        ("timeout-zero", Some(0), None),
        ("output-above", None, Some((2 << 20) + 1)),
        ("output-zero", None, Some(0)),
    ];
    for (id, timeout_ms, output_bytes) in cases {
        socket
            .execute(with_limits(
                request(id, "sh", "echo never"),
                timeout_ms,
                output_bytes,
            ))
            .await?;
        let events = socket.events_until_terminal(id).await?;
        assert_eq!(events.len(), 1, "{events:?}");
        let error = &events[0];
        assert_eq!(error.kind, EventKind::Error, "{error:?}");
        assert_eq!(error.code, Some(ErrorCode::InvalidLimit), "{error:?}");
        assert_eq!(error.id.as_deref(), Some(id));
        // Refused before any session is opened: on the socket stream.
        assert_eq!(error.session, None, "{error:?}");
        assert_eq!(error.usage, None);
    }
    // Exactly the maximum is allowed.
    socket
        .execute(with_limits(
            request("at-max", "sh", "echo fine"),
            Some(10_000),
            Some(2 << 20),
        ))
        .await?;
    let events = socket.events_until_terminal("at-max").await?;
    assert_lifecycle(&events);
    assert_eq!(text_of(&events, EventKind::Stdout), "fine\n");

    // A negative limit is not a well-formed limit at all: bad_request, before any session.
    socket
        .send_text(r#"{"type":"execute","id":"negative","language":"sh","code":"echo","limits":{"timeout_ms":-1}}"#)
        .await?;
    let refusal = socket.next_event().await?;
    assert_eq!(refusal.kind, EventKind::Error);
    assert_eq!(refusal.code, Some(ErrorCode::BadRequest));
    assert_eq!(refusal.id.as_deref(), Some("negative"));
    assert_eq!(refusal.session, None);

    socket.assert_still_works().await?;
    assert_stream_ok(socket.received());
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_executions_on_one_socket() -> Result<()> {
    let gateway = TestGateway::spawn_with(Config {
        max_executions_per_connection: 2,
        ..Config::default()
    })
    .await;
    let mut socket = gateway.raw().await?;
    for id in ["w1", "w2"] {
        socket
            .execute(request(id, "sh", "read line; echo got $line"))
            .await?;
        socket
            .next_event_where(|e| e.id.as_deref() == Some(id) && e.kind == EventKind::Started)
            .await?;
    }
    socket.execute(request("w3", "sh", "echo never")).await?;
    let events = socket.events_until_terminal("w3").await?;
    let error = &events[0];
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(error.code, Some(ErrorCode::TooManyExecutions), "{error:?}");
    // Refused before any session is opened: on the socket stream.
    assert_eq!(error.sequence, 1);
    assert_eq!(error.session, None, "{error:?}");

    // Once one ends, there is room again.
    socket.stdin("w1", Some("x\n"), true).await?;
    socket.events_until_terminal("w1").await?;
    socket.assert_still_works().await?;
    socket.stdin("w2", Some("y\n"), true).await?;
    socket.wait_for_terminals(&["w2"]).await?;
    assert_stream_ok(socket.received());
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_executions_on_the_gateway() -> Result<()> {
    let gateway = TestGateway::spawn_with(Config {
        max_executions: 1,
        ..Config::default()
    })
    .await;
    let mut first = gateway.raw().await?;
    let mut second = gateway.raw().await?;
    let marker = unique_marker("gateway-wide");
    first
        .execute(request(
            "busy",
            "bash",
            &format!("exec -a {marker} sleep 1000"),
        ))
        .await?;
    first
        .next_event_where(|e| e.kind == EventKind::Started)
        .await?;
    second
        .execute(request("refused", "sh", "echo never"))
        .await?;
    let events = second.events_until_terminal("refused").await?;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].code, Some(ErrorCode::TooManyExecutions));
    assert_eq!(events[0].sequence, 1);

    first.cancel("busy").await?;
    first.events_until_terminal("busy").await?;
    // An execution that sent its terminal event no longer counts: there is room at once.
    second.assert_still_works().await?;
    wait_until_gone(&marker).await?;
    assert_stream_ok(first.received());
    assert_stream_ok(second.received());
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_sessions_on_one_socket() -> Result<()> {
    let gateway = TestGateway::spawn_with(Config {
        max_sessions_per_connection: 2,
        ..Config::default()
    })
    .await;
    let mut socket = gateway.raw().await?;
    for (id, session) in [("s1", "one"), ("s2", "two"), ("s1b", "one")] {
        socket
            .execute(ExecuteRequest {
                session: Some(session.into()),
                ..request(id, "sh", "echo ok")
            })
            .await?;
        let events = socket.events_until_terminal(id).await?;
        assert_lifecycle(&events);
    }
    socket
        .execute(ExecuteRequest {
            session: Some("three".into()),
            ..request("s3", "sh", "echo never")
        })
        .await?;
    let refusal = socket.next_event().await?;
    assert_eq!(refusal.kind, EventKind::Error);
    assert_eq!(refusal.code, Some(ErrorCode::TooManySessions));
    assert_eq!(refusal.id.as_deref(), Some("s3"));
    assert_eq!(refusal.session, None);
    // Executions without a named session are not client sessions and still run.
    socket.assert_still_works().await?;
    assert_stream_ok(socket.received());
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_beyond_the_maximum_gets_503() -> Result<()> {
    let gateway = TestGateway::spawn_with(Config {
        max_connections: 1,
        ..Config::default()
    })
    .await;
    let mut first = gateway.raw().await?;
    first.assert_still_works().await?;
    match tokio_tungstenite::connect_async(gateway.url()).await {
        Err(tungstenite::Error::Http(response)) => assert_eq!(response.status(), 503),
        Err(other) => bail!("expected HTTP 503, got {other}"),
        Ok(_) => bail!("a second connection was accepted beyond max_connections = 1"),
    }
    first.assert_still_works().await?;
    assert_stream_ok(first.received());
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_group_leaves_no_process() -> Result<()> {
    let gateway = TestGateway::spawn().await;
    let mut socket = gateway.raw().await?;
    let marker = unique_marker("timeout-group");
    // A background child and the main process; the timeout must take both.
    let code = format!("(exec -a {marker}-child sleep 1000) &\nexec -a {marker}-main sleep 1000");
    socket
        .execute(with_limits(
            request("group", "bash", &code),
            Some(3_000),
            None,
        ))
        .await?;
    socket.started_and_running(&marker).await?;
    let events = socket.events_until_terminal("group").await?;
    let terminal = events.last().context("no events")?;
    assert_eq!(terminal.limit, Some(LimitKind::Timeout), "{terminal:?}");
    wait_until_gone(&marker).await?;
    assert_stream_ok(socket.received());
    gateway.shutdown().await
}

/// `request` with only the given kernel-enforced limits set.
fn with_kernel_limits(request: ExecuteRequest, limits: Limits) -> ExecuteRequest {
    ExecuteRequest { limits, ..request }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cpu_spin_ends_with_resource_limit_cpu_after_about_its_cpu_time() -> Result<()> {
    let gateway = TestGateway::spawn().await;
    let client = gateway.client().await?;
    let outcome = run(
        &client,
        with_kernel_limits(
            request("spin", "python", "while True:\n    pass"),
            Limits {
                cpu_ms: Some(1_000),
                timeout_ms: Some(60_000),
                ..Limits::default()
            },
        ),
    )
    .await?;
    assert_stream_ok(&outcome.events);
    assert_eq!(
        outcome.kind(),
        EventKind::ResourceLimit,
        "{:?}",
        outcome.terminal
    );
    assert_eq!(outcome.limit(), Some(LimitKind::Cpu));
    assert_eq!(outcome.terminal.limit_value, Some(1_000));
    let usage = outcome.usage().context("no usage")?;
    assert!(
        (500.0..3_500.0).contains(&usage.cpu_ms),
        "stopped after {} ms of CPU",
        usage.cpu_ms
    );
    client.close().await?;
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_past_its_size_limit_ends_with_resource_limit_file_size() -> Result<()> {
    let gateway = TestGateway::spawn().await;
    let client = gateway.client().await?;
    let limit = 10_000_000;
    // Python ignores SIGXFSZ, so its write fails (EFBIG) and it raises; a shell's child
    // is killed by the signal. Both are reported as the file-size limit.
    let python = "with open('big', 'wb') as f:\n    for _ in range(100):\n        f.write(b'x' * 1_000_000)\n";
    let shell = "head -c 100000000 /dev/zero > big";
    for (language, code) in [("python", python), ("sh", shell)] {
        let outcome = run(
            &client,
            with_kernel_limits(
                request("writer", language, code),
                Limits {
                    file_size_bytes: Some(limit),
                    ..Limits::default()
                },
            ),
        )
        .await?;
        assert_eq!(
            (outcome.kind(), outcome.limit()),
            (EventKind::ResourceLimit, Some(LimitKind::FileSize)),
            "{language}: {:?}",
            outcome.terminal
        );
        assert_eq!(outcome.terminal.limit_value, Some(limit));
    }
    client.close().await?;
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_files_past_the_limit_fail_in_the_program() -> Result<()> {
    let gateway = TestGateway::spawn().await;
    let client = gateway.client().await?;
    let code = "import os\nfds = []\ntry:\n    while True:\n        fds.append(os.open('/dev/null', os.O_RDONLY))\nexcept OSError as e:\n    print(len(fds), e.errno)\n";
    let outcome = run(
        &client,
        with_kernel_limits(
            request("fds", "python", code),
            Limits {
                open_files: Some(64),
                ..Limits::default()
            },
        ),
    )
    .await?;
    assert_eq!(outcome.exit_code(), Some(0), "{:?}", outcome.terminal);
    let (opened, errno) = outcome.stdout.trim().split_once(' ').context("no output")?;
    let opened: u64 = opened.parse()?;
    assert!(
        opened < 64,
        "opened {opened} descriptors with a limit of 64"
    );
    assert_eq!(errno, "24", "EMFILE");
    client.close().await?;
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kernel_limits_hold_at_their_defaults_and_refuse_zero() -> Result<()> {
    let gateway = TestGateway::spawn_with(Config {
        limits: LimitsConfig {
            cpu_ms: LimitBound {
                default: 1_000,
                max: 2_000,
            },
            ..LimitsConfig::default()
        },
        ..Config::default()
    })
    .await;
    let client = gateway.client().await?;
    let outcome = run(&client, request("spin", "sh", "while :; do :; done")).await?;
    assert_eq!(
        outcome.limit(),
        Some(LimitKind::Cpu),
        "{:?}",
        outcome.terminal
    );
    assert_eq!(outcome.terminal.limit_value, Some(1_000));
    for limits in [
        Limits {
            cpu_ms: Some(3_000),
            ..Limits::default()
        },
        Limits {
            file_size_bytes: Some(0),
            ..Limits::default()
        },
    ] {
        let refused = run(
            &client,
            with_kernel_limits(request("bad", "sh", "true"), limits),
        )
        .await?;
        assert_eq!(
            refused.terminal.code,
            Some(ErrorCode::InvalidLimit),
            "{:?}",
            refused.terminal
        );
    }
    client.close().await?;
    gateway.shutdown().await
}

/// Each limit a request leaves out holds at the server's default (set low here, so each
/// program reaches it quickly): output, file size and open files everywhere; memory where
/// the host has a cgroup for it, the workspace where the jail runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_limit_holds_at_its_default_when_the_request_names_none() -> Result<()> {
    let bound = |default: u64| LimitBound {
        default,
        max: default * 16,
    };
    let gateway = TestGateway::spawn_with(Config {
        limits: LimitsConfig {
            output_bytes: bound(64 << 10),
            file_size_bytes: bound(1 << 20),
            open_files: bound(40),
            memory_bytes: bound(128 << 20),
            workspace_bytes: bound(4 << 20),
            ..LimitsConfig::default()
        },
        ..Config::default()
    })
    .await;
    let client = gateway.client().await?;
    let reached = |outcome: &sluice_client::Outcome| (outcome.kind(), outcome.limit());

    let output = run(&client, request("yes", "sh", "yes")).await?;
    assert_eq!(
        reached(&output),
        (EventKind::ResourceLimit, Some(LimitKind::Output))
    );
    assert_eq!(
        output.stdout.len(),
        64 << 10,
        "exactly the default delivered"
    );

    let big = run(
        &client,
        request("big", "sh", "head -c 3000000 /dev/zero > big"),
    )
    .await?;
    assert_eq!(
        reached(&big),
        (EventKind::ResourceLimit, Some(LimitKind::FileSize)),
        "{:?}",
        big.terminal
    );
    assert_eq!(big.terminal.limit_value, Some(1 << 20));

    let fds = "import os\nfds = []\ntry:\n    while True:\n        fds.append(os.open('/dev/null', os.O_RDONLY))\nexcept OSError as e:\n    print(len(fds), e.errno)\n";
    let files = run(&client, request("fds", "python", fds)).await?;
    let (opened, errno) = files
        .stdout
        .trim()
        .split_once(' ')
        .with_context(|| format!("no count: {:?} {}", files.terminal, files.stderr))?;
    assert!(
        opened.parse::<u64>()? < 40,
        "opened {opened} with a default of 40"
    );
    assert_eq!(errno, "24", "EMFILE");

    let report = sluice_tests::host_report();
    if report.memory.is_some() {
        let hog = "chunks = []\nfor _ in range(16):\n    chunks.append(b'x' * (64 << 20))\nprint('survived')";
        let memory = run(&client, request("hog", "python", hog)).await?;
        assert_eq!(
            reached(&memory),
            (EventKind::ResourceLimit, Some(LimitKind::Memory)),
            "{:?}",
            memory.terminal
        );
        assert_eq!(memory.terminal.limit_value, Some(128 << 20));
    } else {
        sluice_tests::skip("memory at its default: no memory cgroup here; see `sluice doctor`");
    }
    if report.namespaces.is_ok() {
        // Files under the size limit, together past the workspace.
        let fill = "for i in 1 2 3 4 5 6 7 8; do head -c 900000 /dev/zero > part$i || exit 9; done";
        let workspace = run(&client, request("fill", "sh", fill)).await?;
        assert_eq!(
            reached(&workspace),
            (EventKind::ResourceLimit, Some(LimitKind::Workspace)),
            "{:?}",
            workspace.terminal
        );
        assert_eq!(workspace.terminal.limit_value, Some(4 << 20));
    } else {
        sluice_tests::skip("workspace at its default: no namespace jail here; see `sluice doctor`");
    }
    client.close().await?;
    gateway.shutdown().await
}

/// A memory limit below a MiB is refused (`invalid_limit`): with cgroup v1 a gateway
/// thread joins the execution's cgroup for an instant around the spawn, and under a
/// limit of a few bytes it could not leave it again, which froze the gateway (found by
/// the issue 12 review). The smallest allowed limit runs, and the gateway serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_limit_below_a_mib_is_invalid_and_the_smallest_runs() -> Result<()> {
    let gateway = TestGateway::spawn().await;
    let mut socket = gateway.raw().await?;
    for (id, bytes) in [("one-byte", 1_u64), ("below", (1 << 20) - 1)] {
        let tiny = ExecuteRequest {
            limits: Limits {
                memory_bytes: Some(bytes),
                ..Limits::default()
            },
            ..request(id, "sh", "echo never")
        };
        socket.execute(tiny).await?;
        let events = socket.events_until_terminal(id).await?;
        let last = events.last().context("no events")?;
        assert_eq!(last.code, Some(ErrorCode::InvalidLimit), "{last:?}");
        assert!(last.data.contains("1048576"), "{last:?}");
    }
    let smallest = ExecuteRequest {
        limits: Limits {
            memory_bytes: Some(1 << 20),
            ..Limits::default()
        },
        ..request("smallest", "sh", "echo small")
    };
    socket.execute(smallest).await?;
    let events = socket.events_until_terminal("smallest").await?;
    let last = events.last().context("no events")?;
    assert!(
        matches!(last.kind, EventKind::Completed | EventKind::ResourceLimit),
        "{last:?}"
    );
    // The gateway still runs programs for everyone.
    socket.assert_still_works().await?;
    let mut other = gateway.raw().await?;
    other.assert_still_works().await?;
    gateway.shutdown().await
}

/// Unjailed programs are born in their execution's cgroup (`clone3` with
/// `CLONE_INTO_CGROUP`), which a kernel refuses for a cgroup whose `cgroup.kill` was
/// written (it kills the newborn). A program that leaves a process behind has it killed
/// that way at its end: the executions after it must run whole, in a cgroup of their own,
/// with their process limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executions_after_one_whose_leftovers_were_killed_run_in_their_cgroup() -> Result<()> {
    let host = sluice_tests::host_report();
    if !host.root || host.kill_tree.is_none() || sluice_tests::forced_isolation().is_some() {
        sluice_tests::skip("needs a root gateway with cgroup v2 kills");
        return Ok(());
    }
    let gateway = TestGateway::spawn_with(Config {
        isolation: sluice_gateway::Isolation::Cgroups,
        ..Config::default()
    })
    .await;
    let client = gateway.client().await?;
    let marker = unique_marker("leftover");
    let left = run(
        &client,
        request(
            "left",
            "bash",
            &format!("(exec -a {marker} sleep 1000) &\necho started"),
        ),
    )
    .await?;
    assert_eq!(left.terminal.exit_code, Some(0), "{}", left.stderr);
    assert_eq!(left.stdout, "started\n");
    wait_until_gone(&marker).await?;
    for round in 0..3 {
        let next = run(
            &client,
            request(
                &format!("next-{round}"),
                "bash",
                "echo ok; grep '^0::' /proc/self/cgroup",
            ),
        )
        .await?;
        assert_stream_ok(&next.events);
        assert_eq!(next.terminal.exit_code, Some(0), "{}", next.stderr);
        let mut lines = next.stdout.lines();
        assert_eq!(lines.next(), Some("ok"), "{}", next.stdout);
        let v2 = lines.next().unwrap_or_default();
        // This gateway's execution cgroups (`sluice-<pid>-<n>/x<m>`; the gateway runs in
        // this process).
        let ours = format!("/sluice-{}-", std::process::id());
        assert!(v2.contains(&ours), "not in an execution's cgroup: {v2:?}");
        let limited = run(
            &client,
            ExecuteRequest {
                limits: Limits {
                    processes: Some(4),
                    ..Limits::default()
                },
                ..request(
                    &format!("limited-{round}"),
                    "bash",
                    "for i in 1 2 3 4 5 6 7 8; do sleep 5 & done; wait",
                )
            },
        )
        .await?;
        assert_eq!(
            limited.terminal.limit,
            Some(LimitKind::Processes),
            "{:?}",
            limited.terminal
        );
    }
    client.close().await?;
    gateway.shutdown().await
}
