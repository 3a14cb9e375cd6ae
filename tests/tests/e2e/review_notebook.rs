//! Review of the notebook features and `ack` as an outsider (hostile client, hostile
//! program): display records in stdout (PROTOCOL.md §10.1), the Python kernel's
//! exception reports on its control socket, the `restart` frame, and `ack: true`.
//!
//! Tests that pass document what holds; the ones marked FINDING fail until the gateway
//! is fixed (the fix is in each test's comment and in SECURITY.md's review entry).

use anyhow::{ensure, Context as _, Result};
use sluice_gateway::Config;
use sluice_protocol::{
    AttachFrame, ClientFrame, ErrorCode, Event, EventKind, ExecuteRequest, Limits, RestartFrame,
};
use sluice_tests::{assert_stream_ok, request, text_of, RawSocket, TestGateway};
use std::time::Duration;

/// A python cell in the persistent session `session`.
fn cell(session: &str, id: &str, code: &str) -> ExecuteRequest {
    ExecuteRequest {
        session: Some(session.into()),
        persistent: true,
        ..request(id, "python", code)
    }
}

fn restart(session: &str) -> ClientFrame {
    ClientFrame::Restart(RestartFrame {
        session: session.to_owned(),
    })
}

async fn run_to_end(socket: &mut RawSocket, execute: ExecuteRequest) -> Result<Vec<Event>> {
    let id = execute.id.clone();
    socket.execute(execute).await?;
    socket.events_until_terminal(&id).await
}

fn last(events: &[Event]) -> Result<&Event> {
    events.last().context("no terminal event")
}

// ---------------------------------------------------------------------------------------
// Display records: CPU and output accounting
// ---------------------------------------------------------------------------------------

/// CPU time (user + system) of this process's threads named `name` (a runtime made for
/// one test names its threads so that other tests' threads do not count).
fn threads_cpu(name: &str) -> Duration {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Duration::ZERO;
    };
    let ticks: u64 = tasks
        .flatten()
        .filter_map(|task| {
            let stat = std::fs::read_to_string(task.path().join("stat")).ok()?;
            let open = stat.find('(')?;
            let close = stat.rfind(')')?;
            if &stat[open + 1..close] != name {
                return None;
            }
            // Fields after the name: state is field 3; utime and stime are 14 and 15.
            let rest: Vec<&str> = stat[close + 2..].split(' ').collect();
            let utime: u64 = rest.get(11)?.parse().ok()?;
            let stime: u64 = rest.get(12)?.parse().ok()?;
            Some(utime + stime)
        })
        .sum();
    // USER_HZ is 100 on every Linux the gateway supports.
    Duration::from_millis(ticks * 10)
}

/// A program that writes the start of a display record and 6 MiB of its body at once,
/// says so on stderr, then trickles one more byte of the record every millisecond for four
/// seconds (using almost no CPU itself), and ends the record. (While the gateway is
/// busy with stdout its stderr waits: the pump prefers stdout.) `record: false`: the same
/// bytes as plain text.
fn trickle(record: bool) -> String {
    let start = if record {
        r"b'\x1b]sluice;display;'"
    } else {
        "b''"
    };
    format!(
        r#"
import os, sys, time
def write_all(data):
    view = memoryview(data)
    while view:
        view = view[os.write(1, view):]
write_all({start} + b"x" * (6 << 20))
os.write(2, b"bulk written\n")
end = time.monotonic() + 4
while time.monotonic() < end:
    os.write(1, b"x")
    time.sleep(0.001)
os.write(2, b"trickle over\n")
os.write(1, b"\x07")
"#
    )
}

/// Runs [`trickle`] and returns the gateway runtime's CPU time while it ran (the
/// runtime also runs this test's socket, which receives little in either case).
async fn cpu_of_trickle(socket: &mut RawSocket, id: &str, record: bool) -> Result<Duration> {
    let before = threads_cpu(CPU_THREADS);
    socket
        .execute(request(id, "python", &trickle(record)))
        .await?;
    let events = socket.events_until_terminal(id).await?;
    let used = threads_cpu(CPU_THREADS).saturating_sub(before);
    ensure!(
        text_of(&events, EventKind::Stderr).contains("trickle over"),
        "{id} did not run to its end: {:?}",
        last(&events)?
    );
    Ok(used)
}

const CPU_THREADS: &str = "review-nb-cpu";

/// FINDING (high: gateway CPU exhaustion by any program). The scanner keeps an
/// unfinished record in `held` and, for every read, builds `held + new` as a fresh
/// String, searches it again from the start for the record's start and its end, and
/// copies it back into `held`: O(record size) work per read. A program that writes
/// 6 MiB of a record's body and then one byte at a time, slowly (its own CPU is
/// nothing), keeps one gateway core busy for as long as it runs (its timeout, up to
/// 600 s), and each further execution doing the same takes another core: a handful of
/// executions stall every client of the gateway. (A quick writer is no problem: reads
/// then grow to the chunk size.)
///
/// Fix: scan incrementally. Keep the held record in a buffer that is appended to (never
/// rebuilt), remember how far it was searched for BEL (search only the new bytes), and
/// once a record start is seen stop searching for further starts; or cap what may be
/// held at a size whose rescan is cheap.
#[test]
fn a_slowly_written_record_does_not_keep_a_gateway_core_busy() -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(CPU_THREADS)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let gateway = TestGateway::spawn().await;
        let mut socket = gateway.raw().await?;
        // The same bytes as plain text: what the trickle costs the gateway anyway.
        let plain = cpu_of_trickle(&mut socket, "plain", false).await?;
        let record = cpu_of_trickle(&mut socket, "record", true).await?;
        ensure!(
            record < plain + Duration::from_secs(1),
            "four seconds of a record trickled one byte at a time after 6 MiB cost the gateway {record:?} of CPU (the same bytes as text: {plain:?})"
        );
        gateway.shutdown().await
    })
}

/// FINDING (medium: output limit bypass and amplification, memory). A record of an
/// unknown kind is reported on stderr with the kind `{:?}`-formatted in full: a kind of
/// 2 MB of control characters becomes a single 10 MB stderr event (each `\x01` is
/// `\u{1}`), which no output limit counts (the budget counted the 2 MB read). Up to the
/// 8 MiB record cap this is ~40 MiB of string plus ~48 MiB of JSON per record, per
/// execution, in the gateway's memory and on the wire, beyond `output_bytes`. The same
/// holds for a MIME type that is not one (`{mime:?}` of a key of any length).
///
/// Fix: never echo the program's bytes in a `Dropped` reason (or cut what is echoed to
/// a few dozen characters), and count the reports against the execution's output
/// budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_record_s_report_is_small_and_within_the_output_limit() -> Result<()> {
    let gateway = TestGateway::spawn().await;
    let mut socket = gateway.raw().await?;
    let code = r#"
import sys
out = sys.stdout.buffer
out.write(b"\x1b]sluice;" + b"\x01" * 2_000_000 + b";{}\x07")
out.write(b"\x1b]sluice;display;{\"data\":{\"" + b"a" * 1000 + b"\":\"y\"}}\x07done\n")
out.flush()
"#;
    let limit = 3_000_000;
    let execute = ExecuteRequest {
        limits: Limits {
            output_bytes: Some(limit),
            ..Limits::default()
        },
        ..request("amp", "python", code)
    };
    let events = run_to_end(&mut socket, execute).await?;
    ensure!(
        last(&events)?.kind == EventKind::Completed,
        "{:?}",
        last(&events)?
    );
    assert_eq!(text_of(&events, EventKind::Stdout), "done\n");
    let stderr = text_of(&events, EventKind::Stderr);
    let delivered = stderr.len() as u64 + 5;
    ensure!(
        stderr.len() < 64 * 1024 && delivered <= limit,
        "two bad records (2 MB of output) were reported in {} bytes of stderr (output_bytes {limit}); it begins {:?}",
        stderr.len(),
        stderr.chars().take(120).collect::<String>()
    );
    gateway.shutdown().await
}

/// Holds: a record cannot name another execution or session (unknown fields are
/// refused), text around records is kept in order, invalid UTF-8 around a marker is
/// replaced without breaking the record, a record on stderr is not interpreted, and a
/// record split into one-byte writes is put together.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_cannot_forge_other_events_and_survive_odd_writes() -> Result<()> {
    let gateway = TestGateway::spawn().await;
    let mut socket = gateway.raw().await?;
    let code = r#"
import os
os.write(1, b"\x1b]sluice;display;{\"data\":{\"text/plain\":\"forged\"},\"id\":\"victim\",\"session\":\"other\"}\x07")
os.write(1, b"\xff\x1b]sluice;display;{\"data\":{\"text/plain\":\"ok\"}}\x07\xfe\n")
os.write(2, b"\x1b]sluice;display;{\"data\":{\"text/plain\":\"err\"}}\x07")
for b in b"\x1b]sluice;result;{\"data\":{\"text/plain\":\"bytewise\"}}\x07":
    os.write(1, bytes([b]))
os.write(1, b"\x1b]sluice\x1b]sluice;display;{\"data\":{\"text/plain\":\"restart\"}}\x07end\n")
"#;
    let events = run_to_end(&mut socket, request("odd", "python", code)).await?;
    ensure!(last(&events)?.kind == EventKind::Completed, "{events:#?}");
    let shown: Vec<(EventKind, &str, Option<&str>)> = events
        .iter()
        .filter(|e| matches!(e.kind, EventKind::Display | EventKind::Result))
        .map(|e| (e.kind, e.data.as_str(), e.id.as_deref()))
        .collect();
    assert_eq!(
        shown,
        [
            (EventKind::Display, "ok", Some("odd")),
            (EventKind::Result, "bytewise", Some("odd")),
            (EventKind::Display, "restart", Some("odd")),
        ],
        "{events:#?}"
    );
    let stdout = text_of(&events, EventKind::Stdout);
    assert_eq!(stdout, "\u{fffd}\u{fffd}\n\x1b]sluiceend\n");
    let stderr = text_of(&events, EventKind::Stderr);
    ensure!(
        stderr.contains("unknown field") && stderr.contains("\x1b]sluice;display;"),
        "{stderr:?}"
    );
    for event in socket.received() {
        ensure!(
            event.id.as_deref().is_none_or(|id| id == "odd"),
            "an event of another execution: {event:?}"
        );
    }
    assert_stream_ok(socket.received());
    gateway.shutdown().await
}

// ---------------------------------------------------------------------------------------
// The kernel's exception report on the control socket
// ---------------------------------------------------------------------------------------

/// Runs `raising` as the second cell of a fresh session (after `x = 5`) and checks that
/// the cell ends with its exception and that the interpreter, with `x`, survives it.
async fn interpreter_survives(session: &str, raising: &str, ename: &str) -> Result<()> {
    let gateway = TestGateway::spawn().await;
    let mut socket = gateway.raw().await?;
    let first = run_to_end(&mut socket, cell(session, "set", "x = 5")).await?;
    ensure!(last(&first)?.exit_code == Some(0), "{first:#?}");
    let raised = run_to_end(&mut socket, cell(session, "raise", raising)).await?;
    let end = last(&raised)?;
    ensure!(
        end.kind == EventKind::Completed
            && end.exit_code == Some(1)
            && end
                .exception
                .as_ref()
                .is_some_and(|e| e.ename.starts_with(ename)),
        "the raising cell should complete with its {ename}: {:?} {:?} {:?}",
        end.kind,
        end.exit_code,
        end.data
    );
    let after = run_to_end(&mut socket, cell(session, "after", "x")).await?;
    let value = after
        .iter()
        .find(|e| e.kind == EventKind::Result)
        .map(|e| e.data.clone());
    ensure!(
        value.as_deref() == Some("5"),
        "the interpreter lost its state: {:?}",
        last(&after)?
    );
    gateway.shutdown().await
}

/// FINDING (low: a notebook loses its whole state to an ordinary exception). The driver
/// cuts the report to 10 000 characters of message and 61 lines of 2 000 characters,
/// but measures characters, while the reply line is `json.dumps` with ensure_ascii:
/// every non-ASCII character is 6 bytes (12 outside the BMP), a control character 6.
/// A message of 100 lines of accented text makes a reply of ~800 KB, over the gateway's
/// 256 KiB line limit: the gateway takes the line for a hostile interpreter, kills it,
/// and every variable of the notebook is gone.
///
/// Fix: in `bounded()`, cut by the encoded size (e.g. `json.dumps(..., ensure_ascii=
/// False)` and bytes of UTF-8, or shrink parts until the encoded line is under a
/// budget well below MAX_REPLY_BYTES).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exception_with_a_long_accented_message_keeps_the_interpreter() -> Result<()> {
    interpreter_survives(
        "accents",
        "raise ValueError(('é' * 1999 + '\\n') * 100)",
        "ValueError",
    )
    .await
}

/// FINDING (low, same consequence): `ename`, the exception's class name, is not cut at
/// all by the driver; a class named with 300 000 characters makes an overlong reply and
/// the interpreter is killed.
///
/// Fix: cut `ename` in `bounded()` too (the gateway cuts it to 16 KiB anyway).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exception_with_a_long_class_name_keeps_the_interpreter() -> Result<()> {
    interpreter_survives(
        "ename",
        "raise type('E' * 300_000, (Exception,), {})('boom')",
        "EEEE",
    )
    .await
}

/// FINDING (low): `report()` calls `str(error)` under `except Exception`; an exception
/// whose `__str__` raises SystemExit (or KeyboardInterrupt) escapes `run()` and ends the
/// driver: the interpreter exits and the notebook's state is gone. (traceback itself
/// uses a bare `except` for this.)
///
/// Fix: `except BaseException` around `str(error)` (and around the whole of
/// `report()`), so nothing a cell raised can end the driver's loop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exception_whose_str_raises_system_exit_keeps_the_interpreter() -> Result<()> {
    let code =
        "class Odd(Exception):\n    def __str__(self):\n        raise SystemExit(0)\nraise Odd()";
    interpreter_survives("oddstr", code, "Odd").await
}

// ---------------------------------------------------------------------------------------
// restart
// ---------------------------------------------------------------------------------------

/// The head of `session` as an `attach` past it reveals (the refusal names it), without
/// attaching.
async fn head_of(socket: &mut RawSocket, session: &str) -> Result<u64> {
    socket
        .send_frame(&ClientFrame::Attach(AttachFrame {
            session: session.to_owned(),
            since: Some(u64::MAX / 2),
            workspace: false,
            ack: false,
        }))
        .await?;
    let refused = socket.next_socket_error().await?;
    ensure!(refused.code == Some(ErrorCode::BadRequest), "{refused:?}");
    refused
        .data
        .rsplit(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("no head in {:?}", refused.data))
}

/// FINDING (medium: unbounded gateway memory from any socket of the tenant; with
/// anonymous clients, from anyone). Every `restart` frame spawns a task that, holding
/// the seat, publishes a `restarted` event with `EventStream::publish`, which never
/// waits for room: past the replay caps it evicts only what the lead has taken, so in a
/// session whose client is away (within `session_grace`) or does not read, every such
/// event is kept. A socket that need not even attach sends restart frames in a loop
/// (~60 bytes each) and the session's replay ring grows without bound (~250 bytes per
/// frame), past `replay_events`/`replay_bytes`, into the gateway-wide buffer budget:
/// once that is spent every client's new executions get `gateway_busy`.
///
/// Fix: coalesce (no new `restarted` while one is pending: only the frame that turns
/// the flag on spawns the task, `if !restart.swap(true)`), and publish `restarted`
/// through `room()` like every producer (or refuse `restart` with `too_many_requests`
/// while one is in flight).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_storm_does_not_grow_a_detached_session_s_buffer_past_its_caps() -> Result<()> {
    let replay_events = 50;
    let gateway = TestGateway::spawn_with(Config {
        replay_events,
        ..Config::default()
    })
    .await;
    // The notebook's client runs a cell and goes away (it will come back within the grace).
    let mut owner = gateway.raw().await?;
    let first = run_to_end(&mut owner, cell("stormed", "c1", "x = 1")).await?;
    ensure!(last(&first)?.exit_code == Some(0), "{first:#?}");
    owner.close().await?;
    // Another socket, never attached, restarts it over and over.
    let mut storm = gateway.raw().await?;
    let frames = 3_000;
    for _ in 0..frames {
        storm.send_frame(&restart("stormed")).await?;
    }
    // Wait (by polling the head) until many restarted events are in.
    let base = 10;
    let mut head = 0;
    for _ in 0..10_000 {
        head = head_of(&mut storm, "stormed").await?;
        if head >= base + 20 * replay_events as u64 {
            break;
        }
        tokio::task::yield_now().await;
    }
    // Everyone coming back (the owner) replays from the start: the ring holds at most its
    // caps, so a gap skips all but the last `replay_events` events.
    let mut back = gateway.raw().await?;
    back.attach("stormed", Some(0)).await?;
    let attached = back.next_event().await?;
    ensure!(attached.kind == EventKind::Attached, "{attached:?}");
    let mut replayed = 0u64;
    let mut gap = None;
    loop {
        let event = back.next_event().await?;
        if event.kind == EventKind::Gap {
            gap = Some(event.resume_from);
            continue;
        }
        replayed += 1;
        if event.sequence >= head {
            break;
        }
    }
    ensure!(
        replayed <= replay_events as u64 + 5,
        "after {frames} restart frames the detached session's ring replayed {replayed} events up to {head} (gap: {gap:?}), over its cap of {replay_events}"
    );
    // Shutdown still finishes with the storm's tasks.
    gateway.shutdown().await
}

/// Holds: a restart storm racing cells (some queued behind it, some sent during it)
/// leaves no cell without a terminal event, the interpreter is fresh afterwards, and
/// shutdown finishes (no seat task or interpreter left behind).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_racing_cells_end_every_cell_and_shutdown_finishes() -> Result<()> {
    let gateway = TestGateway::spawn().await;
    let mut socket = gateway.raw().await?;
    let mut ids = Vec::new();
    for round in 0..20 {
        let id = format!("c{round}");
        socket
            .execute(cell("race", &id, "import time\ntime.sleep(0.05)\ny = 1"))
            .await?;
        socket.send_frame(&restart("race")).await?;
        ids.push(id);
    }
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    socket.wait_for_terminals(&refs).await?;
    // The last restart was asked after the last cell: the next cell finds no `y`.
    let after = run_to_end(&mut socket, cell("race", "after", "y")).await?;
    ensure!(
        socket
            .received()
            .iter()
            .any(|e| e.kind == EventKind::Restarted),
        "no restarted event"
    );
    let end = last(&after)?;
    ensure!(
        end.kind == EventKind::Completed
            && end
                .exception
                .as_ref()
                .is_some_and(|e| e.ename == "NameError"),
        "{end:?}"
    );
    assert_stream_ok(socket.received());
    gateway.shutdown().await
}

// ---------------------------------------------------------------------------------------
// ack: true
// ---------------------------------------------------------------------------------------

/// Holds: another socket's `attach` with `ack: true` (and its acknowledgements) does not
/// take the lead from the socket that runs the session, so it can neither pin nor
/// unpin its ring: the owner's output keeps flowing while the observer reads nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledging_observer_does_not_take_the_lead() -> Result<()> {
    let gateway = TestGateway::spawn_with(Config {
        replay_events: 20,
        ..Config::default()
    })
    .await;
    let mut owner = gateway.raw().await?;
    let warm = run_to_end(
        &mut owner,
        request("warm", "sh", "true").with_session("led"),
    )
    .await?;
    ensure!(last(&warm)?.kind == EventKind::Completed, "{warm:#?}");
    let mut observer = gateway.raw().await?;
    observer
        .send_frame(&ClientFrame::Attach(AttachFrame {
            session: "led".into(),
            since: Some(0),
            workspace: false,
            ack: true,
        }))
        .await?;
    observer
        .next_event_where(|e| e.kind == EventKind::Attached)
        .await?;
    observer.ack("led", 0).await?;
    // 200 lines, one event each, through a ring of 20: only the lead paces them, so if
    // the observer (reading nothing, acknowledging nothing) led, this would stall.
    let loud = request(
        "loud",
        "sh",
        "i=0; while [ $i -lt 200 ]; do echo $i; i=$((i+1)); done",
    )
    .with_session("led");
    let events = run_to_end(&mut owner, loud).await?;
    ensure!(
        last(&events)?.kind == EventKind::Completed,
        "{:?}",
        last(&events)?
    );
    assert_eq!(text_of(&events, EventKind::Stdout).lines().count(), 200);
    gateway.shutdown().await
}

trait WithSession {
    fn with_session(self, session: &str) -> Self;
}

impl WithSession for ExecuteRequest {
    fn with_session(self, session: &str) -> Self {
        Self {
            session: Some(session.to_owned()),
            ..self
        }
    }
}
