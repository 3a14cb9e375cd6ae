//! Attacks of the issue 13 review on this session's gateway changes: the fan-out fast
//! path (a socket skips a stream whose published head is its cursor), the cgroup limit
//! checks, and the split upgrade path. The two lead-pin tests failed against the fast
//! path as first written (fixed in `EventStream::ack` and `remove_reader`).

use anyhow::{ensure, Context as _, Result};
use sluice_client::Outcome;
use sluice_gateway::Config;
use sluice_protocol::{EventKind, ExecuteRequest, LimitKind, Limits};
use sluice_tests::{assert_stream_ok, request, run, RawSocket, TestGateway};
use std::time::Duration;

/// A gateway whose sessions keep four events for replay, in small chunks, and that never
/// times a lead or a slow socket out within a test's patience (only the lead rules
/// decide who waits).
fn four_event_rings() -> Config {
    Config {
        replay_events: 4,
        replay_bytes: 1 << 20,
        chunk_bytes: 1024,
        send_timeout: Duration::from_secs(600),
        lead_timeout: Duration::from_secs(600),
        ..Config::default()
    }
}

/// Prints 64 KiB (many events), then `mark`, waits for a line of input, prints 64 KiB
/// more and exits.
const PAUSES_AT_MARK: &str = "import sys\n\
line = 'x' * 1023 + '\\n'\n\
sys.stdout.write(line * 64 + 'mark\\n')\n\
sys.stdout.flush()\n\
sys.stdin.readline()\n\
sys.stdout.write(line * 64)\n\
sys.stdout.flush()\n";

/// Reads `socket` until the stdout it has seen ends with `suffix`; returns the sequence
/// of the event that completed it.
async fn read_until_stdout_ends_with(socket: &mut RawSocket, suffix: &str) -> Result<u64> {
    let mut text = String::new();
    loop {
        let event = socket.next_event().await?;
        if event.kind == EventKind::Stdout {
            text.push_str(&event.data);
            if text.ends_with(suffix) {
                return Ok(event.sequence);
            }
        }
    }
}

/// A client that reads everything and acknowledges a little late takes the lead of a
/// gateway-made session from a lead that does not acknowledge (PROTOCOL.md: it is that
/// client, resuming). Its later acknowledgements must free the ring: the program runs
/// to its end without waiting for the lead timeout.
///
/// Fails since the fan-out fast path: the take-over pins the ring at the acknowledged
/// sequence, and only a `take` moves the lead's pin up to what it has taken; a socket
/// already at the stream's published head skips `take`, so the program waits for room
/// until the lead timeout (30 s by default, then the client loses the lead).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caught_up_reader_that_takes_the_lead_by_acknowledging_late_does_not_stall_it(
) -> Result<()> {
    let gateway = TestGateway::spawn_with(four_event_rings()).await;
    let mut owner = gateway.raw().await?;
    let mut job = request("job", "python", PAUSES_AT_MARK);
    job.limits.timeout_ms = Some(600_000);
    owner.execute(job).await?;
    let started = owner
        .next_event_where(|e| e.kind == EventKind::Started)
        .await?;
    let session = started.session.context("the execution has a session")?;
    // The owner reads nothing from now on (and never acknowledges): the reader is the
    // client that matters.
    let mut reader = gateway.raw().await?;
    reader.attach(&session, Some(0)).await?;
    let mark = read_until_stdout_ends_with(&mut reader, "mark\n").await?;
    // The program waits for input now: the reader has taken the stream's head. It
    // acknowledges an earlier event first (it has not processed the rest yet), which
    // takes the lead; the refusal of its next frame comes back once the ack is handled.
    reader.ack(&session, 1).await?;
    reader.stdin("nothing-runs", Some("x"), false).await?;
    reader.next_socket_error().await?;
    reader.ack(&session, mark).await?;
    reader.stdin("nothing-runs", Some("x"), false).await?;
    reader.next_socket_error().await?;
    owner.stdin("job", Some("go\n"), false).await?;
    // The reader, now the lead, acknowledges everything it gets: the program must end.
    loop {
        let event = reader.next_event().await?;
        if event.session.as_deref() == Some(session.as_str()) {
            reader.ack(&session, event.sequence).await?;
        }
        if event.id.as_deref() == Some("job") && event.is_terminal() {
            ensure!(
                event.kind == EventKind::Completed && event.exit_code == Some(0),
                "{event:?}"
            );
            break;
        }
    }
    drop(owner);
    gateway.shutdown().await
}

/// `code` in `language` with `limits`, and a wall-clock limit far past the test's
/// patience (a limit the gateway misses shows as a test that times out).
fn limited(id: &str, language: &str, code: &str, limits: Limits) -> ExecuteRequest {
    ExecuteRequest {
        limits: Limits {
            timeout_ms: Some(300_000),
            ..limits
        },
        ..request(id, language, code)
    }
}

/// Runs `request` and checks it ended with `expected` (`None`: completed, exit 0).
async fn ends_with(
    client: &sluice_client::Client,
    request: ExecuteRequest,
    expected: Option<LimitKind>,
) -> Result<Outcome> {
    let outcome = run(client, request).await?;
    assert_stream_ok(&outcome.events);
    match expected {
        Some(limit) => ensure!(
            (outcome.kind(), outcome.limit()) == (EventKind::ResourceLimit, Some(limit)),
            "expected {limit:?}: {:?}",
            outcome.terminal
        ),
        None => ensure!(
            outcome.kind() == EventKind::Completed && outcome.exit_code() == Some(0),
            "expected a clean exit: {:?}",
            outcome.terminal
        ),
    }
    Ok(outcome)
}

/// One after another on one gateway, so each execution reuses the cgroup the one before
/// left in the pool (its counter files opened once, read with `pread`): every limit is
/// still caught while the program runs, and none is blamed on the next execution.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_cgroup_catches_each_limit_again_and_blames_none_on_the_next_run() -> Result<()> {
    let host = sluice_tests::host_report();
    if host.memory.is_none() || host.processes.is_none() {
        sluice_tests::skip("no writable memory and pids cgroups on this host");
        return Ok(());
    }
    let gateway = TestGateway::spawn().await;
    let client = gateway.client().await?;
    let hog =
        "chunks = []\nfor _ in range(64):\n    chunks.append(b'x' * (16 << 20))\nprint('survived')";
    let memory = Limits {
        memory_bytes: Some(64 << 20),
        ..Limits::default()
    };
    // Forks fail at the limit; the program carries on (sleeps) regardless: only the
    // gateway's check while it runs ends it.
    let forks = "for i in $(seq 1 20); do sleep 600 & done 2>/dev/null; exec sleep 600";
    let processes = Limits {
        processes: Some(4),
        ..Limits::default()
    };
    let spin = "while True:\n    pass";
    let cpu = Limits {
        cpu_ms: Some(500),
        ..Limits::default()
    };
    for round in 0..2 {
        ends_with(
            &client,
            limited(&format!("ok-{round}"), "sh", "echo ok", Limits::default()),
            None,
        )
        .await?;
        ends_with(
            &client,
            limited(&format!("hog-{round}"), "python", hog, memory.clone()),
            Some(LimitKind::Memory),
        )
        .await?;
        ends_with(
            &client,
            limited(
                &format!("after-hog-{round}"),
                "sh",
                "echo ok",
                Limits::default(),
            ),
            None,
        )
        .await?;
        ends_with(
            &client,
            limited(&format!("forks-{round}"), "sh", forks, processes.clone()),
            Some(LimitKind::Processes),
        )
        .await?;
        ends_with(
            &client,
            limited(
                &format!("after-forks-{round}"),
                "sh",
                "echo ok",
                Limits::default(),
            ),
            None,
        )
        .await?;
        ends_with(
            &client,
            limited(&format!("spin-{round}"), "python", spin, cpu.clone()),
            Some(LimitKind::Cpu),
        )
        .await?;
        // 300 ms of CPU of a 500 ms budget, on a cgroup that counted 500 ms before.
        let light = "import time\nend = time.process_time() + 0.3\nwhile time.process_time() < end:\n    pass\nprint('done')";
        ends_with(
            &client,
            limited(&format!("after-spin-{round}"), "python", light, cpu.clone()),
            None,
        )
        .await?;
    }
    client.close().await?;
    gateway.shutdown().await
}

/// The same root cause through the other way a lead changes: the lead's socket stops
/// reading (its writer blocks), the buffer fills behind it and the program waits; a
/// second reader of the session has taken everything published. When the gateway
/// closes the lead's socket (send timeout), the reader leads, inheriting the old lead's
/// pin; the gateway wakes it so that its `take` moves the pin up ("the new lead may
/// already be past what pins the ring"), but a socket at the published head skips
/// `take`. The program must still run to its end (the lead timeout is far away).
///
/// Can pass without the bug fixed if the reader is still behind when the lead's
/// socket goes (it then takes, and moves the pin); it fails when the reader is caught
/// up, which a second of send timeout with nothing published makes the usual case.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caught_up_reader_that_inherits_the_lead_does_not_stall_the_program() -> Result<()> {
    let gateway = TestGateway::spawn_with(Config {
        replay_events: 4,
        replay_bytes: 64 * 1024,
        send_timeout: Duration::from_secs(1),
        lead_timeout: Duration::from_secs(600),
        limits: sluice_gateway::LimitsConfig {
            output_bytes: sluice_gateway::LimitBound {
                default: 64 << 20,
                max: 64 << 20,
            },
            ..sluice_gateway::LimitsConfig::default()
        },
        ..Config::default()
    })
    .await;
    let mut owner = gateway.raw().await?;
    owner
        .execute(ExecuteRequest {
            session: Some("handover".into()),
            ..request("ready", "sh", "true")
        })
        .await?;
    owner.events_until_terminal("ready").await?;
    let mut reader = gateway.raw().await?;
    reader.attach("handover", None).await?;
    let attached = reader.next_event().await?;
    ensure!(attached.kind == EventKind::Attached, "{attached:?}");
    // 30 MB: more than the owner's socket buffers hold, so its writer blocks.
    let mut flood = ExecuteRequest {
        session: Some("handover".into()),
        ..request("flood", "python", &sluice_tests::numbered_lines(3_000_000))
    };
    flood.limits.timeout_ms = Some(600_000);
    owner.execute(flood).await?;
    // The owner never reads again; the gateway closes it after the send timeout.
    reader.stop_recording();
    let terminal = reader
        .next_event_where(|e| e.id.as_deref() == Some("flood") && e.is_terminal())
        .await?;
    ensure!(
        terminal.kind == EventKind::Completed && terminal.exit_code == Some(0),
        "{terminal:?}"
    );
    drop(owner);
    gateway.shutdown().await
}

/// Eight processes spin on every core, after a quiet start that stretches the light
/// program's check interval: the tree is still stopped close to its CPU budget (the
/// check comes no later than the rest could be spent with every core busy).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tree_spinning_on_every_core_after_a_quiet_start_is_stopped_near_its_budget() -> Result<()>
{
    let gateway = TestGateway::spawn().await;
    let client = gateway.client().await?;
    let code = "import os, time\ntime.sleep(3)\nfor _ in range(7):\n    if os.fork() == 0:\n        break\nwhile True:\n    pass";
    let outcome = ends_with(
        &client,
        limited(
            "spinners",
            "python",
            code,
            Limits {
                cpu_ms: Some(1_000),
                processes: Some(16),
                ..Limits::default()
            },
        ),
        Some(LimitKind::Cpu),
    )
    .await?;
    let usage = outcome.usage().context("no usage")?;
    // One second of budget; the checks' floor (10 ms) times the cores, and the time
    // to kill eight processes, are the only overshoot allowed.
    ensure!(
        usage.cpu_ms < 1_500.0,
        "stopped after {} ms of CPU with a 1000 ms budget",
        usage.cpu_ms
    );
    client.close().await?;
    gateway.shutdown().await
}
