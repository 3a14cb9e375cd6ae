//! Persistent sessions (notebook kernels) over a real socket: state that persists between
//! cells, exceptions, interrupts that keep the state, an interpreter that dies or must be
//! killed, input inside cells, ordering, and no interpreter left behind.

use anyhow::{ensure, Context as _, Result};
use sluice_gateway::Config;
use sluice_protocol::{ErrorCode, Event, EventKind, ExecuteRequest};
use sluice_tests::{assert_stream_ok, cell, eventually, patience, text_of, RawSocket, TestGateway};
use std::time::Duration;

/// Runs one cell and returns its events.
async fn run(socket: &mut RawSocket, session: &str, id: &str, code: &str) -> Result<Vec<Event>> {
    socket.execute(cell(session, id, code)).await?;
    socket.events_until_terminal(id).await
}

fn stdout(events: &[Event]) -> String {
    text_of(events, EventKind::Stdout)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn variables_persist_and_an_exception_leaves_the_session_working() -> Result<()> {
    let gateway = TestGateway::spawn().await;
    let mut socket = gateway.raw().await?;
    let first = run(&mut socket, "nb", "a", "x = 41").await?;
    assert_eq!(first.last().and_then(|e| e.exit_code), Some(0), "{first:?}");
    let second = run(&mut socket, "nb", "b", "print(x + 1)").await?;
    assert_eq!(stdout(&second), "42\n");
    // The last expression of a cell is its result, as in a notebook.
    let shown = run(&mut socket, "nb", "c", "x * 2").await?;
    let result = shown.iter().find(|e| e.kind == EventKind::Result);
    assert_eq!(result.map(|e| e.data.as_str()), Some("82"), "{shown:?}");
    assert_eq!(stdout(&shown), "");

    let failed = run(&mut socket, "nb", "d", "y = 1\n1 / 0").await?;
    let last = failed.last().context("no terminal")?;
    assert_eq!(last.kind, EventKind::Completed);
    assert_eq!(last.exit_code, Some(1), "an exception is exit status 1");
    let traceback = text_of(&failed, EventKind::Stderr);
    ensure!(
        traceback.contains("ZeroDivisionError") && traceback.contains("<cell>"),
        "{traceback}"
    );
    ensure!(
        !traceback.contains("sluice_kernel"),
        "the kernel's own frames leak into the traceback: {traceback}"
    );
    let after = run(&mut socket, "nb", "e", "print(x, y)").await?;
    assert_eq!(stdout(&after), "41 1\n");
    let usage = after
        .last()
        .and_then(|e| e.usage.clone())
        .context("no usage")?;
    ensure!(usage.stdout_bytes == 5, "{usage:?}");
    assert_stream_ok(socket.received());
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cells_run_one_at_a_time_in_the_order_sent() -> Result<()> {
    let gateway = TestGateway::spawn().await;
    let mut socket = gateway.raw().await?;
    // Sent back to back: each must see the one before it complete.
    socket
        .execute(cell(
            "order",
            "one",
            "import time\ntime.sleep(0.2)\nlog = ['one']",
        ))
        .await?;
    socket
        .execute(cell("order", "two", "log.append('two')"))
        .await?;
    socket.execute(cell("order", "three", "print(log)")).await?;
    let events = socket.events_until_terminal("three").await?;
    assert_eq!(stdout(&events), "['one', 'two']\n");
    // In the session's stream each cell's events are whole: started .. terminal.
    let order: Vec<(String, EventKind)> = socket
        .received()
        .iter()
        .filter(|e| e.kind == EventKind::Started || e.is_terminal())
        .map(|e| (e.id.clone().unwrap_or_default(), e.kind))
        .collect();
    let ids: Vec<&str> = order.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(
        ids,
        ["one", "one", "two", "two", "three", "three"],
        "{order:?}"
    );
    assert_stream_ok(socket.received());
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_interrupts_a_cell_and_the_state_survives() -> Result<()> {
    let gateway = TestGateway::spawn().await;
    let mut socket = gateway.raw().await?;
    run(&mut socket, "spin", "set", "x = 'kept'").await?;
    socket
        .execute(cell(
            "spin",
            "loop",
            "print('spinning', flush=True)\nwhile True:\n    pass",
        ))
        .await?;
    socket.wait_for_stdout("loop", "spinning\n").await?;
    socket.cancel("loop").await?;
    let events = socket.events_until_terminal("loop").await?;
    let last = events.last().context("no terminal")?;
    assert_eq!(last.kind, EventKind::Cancelled, "{last:?}");
    ensure!(
        !last.data.contains("killed"),
        "the interpreter should have survived an interrupt: {}",
        last.data
    );
    ensure!(text_of(&events, EventKind::Stderr).contains("KeyboardInterrupt"));
    let after = run(&mut socket, "spin", "check", "print(x)").await?;
    assert_eq!(stdout(&after), "kept\n");
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cell_that_ignores_interrupts_is_killed_and_the_next_gets_a_fresh_interpreter(
) -> Result<()> {
    let gateway = TestGateway::spawn_with(Config {
        kill_grace: Duration::from_millis(300),
        ..Config::default()
    })
    .await;
    let mut socket = gateway.raw().await?;
    run(&mut socket, "stubborn", "set", "x = 1").await?;
    let code = "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nprint('deaf', flush=True)\nwhile True:\n    pass";
    socket.execute(cell("stubborn", "deaf", code)).await?;
    socket.wait_for_stdout("deaf", "deaf\n").await?;
    socket.cancel("deaf").await?;
    let events = socket.events_until_terminal("deaf").await?;
    let last = events.last().context("no terminal")?;
    assert_eq!(last.kind, EventKind::Cancelled);
    ensure!(last.data.contains("fresh interpreter"), "{}", last.data);
    let after = run(&mut socket, "stubborn", "check", "print('x' in globals())").await?;
    assert_eq!(stdout(&after), "False\n");
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interpreter_that_exits_is_reported_and_replaced() -> Result<()> {
    let gateway = TestGateway::spawn().await;
    let mut socket = gateway.raw().await?;
    run(&mut socket, "fragile", "set", "x = 1").await?;
    let events = run(&mut socket, "fragile", "exit", "import os\nos._exit(1)").await?;
    let last = events.last().context("no terminal")?;
    assert_eq!(last.kind, EventKind::Error);
    assert_eq!(last.code, Some(ErrorCode::KernelLost), "{last:?}");
    ensure!(last.data.contains("status 1"), "{}", last.data);
    let after = run(&mut socket, "fragile", "check", "print('x' in globals())").await?;
    assert_eq!(stdout(&after), "False\n");
    assert_stream_ok(socket.received());
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn input_inside_a_cell_reads_stdin_frames() -> Result<()> {
    let gateway = TestGateway::spawn().await;
    let mut socket = gateway.raw().await?;
    socket
        .execute(cell(
            "ask",
            "q",
            "name = input('name? ')\nprint('hello', name)",
        ))
        .await?;
    // input() asks with an `input_request` event (its prompt is not printed).
    let asked = socket
        .next_event_where(|e| e.kind == EventKind::InputRequest)
        .await?;
    assert_eq!(
        (asked.data.as_str(), asked.password),
        ("name? ", Some(false))
    );
    socket.stdin("q", Some("ada\n"), false).await?;
    let events = socket.events_until_terminal("q").await?;
    assert_eq!(stdout(socket.received()), "hello ada\n");
    assert_eq!(events.last().and_then(|e| e.exit_code), Some(0));
    // The next cell's stdin is its own: what the request carries, then end of input.
    socket
        .execute(ExecuteRequest {
            stdin: Some("fresh".into()),
            ..cell("ask", "r", "import sys\nprint(repr(sys.stdin.read()))")
        })
        .await?;
    let next = socket.events_until_terminal("r").await?;
    assert_eq!(stdout(&next), "'fresh'\n");
    // getpass() asks for a hidden line; an input() at the end of input is an EOFError.
    let code = "import getpass\nsecret = getpass.getpass()\nprint(len(secret))\ninput('more? ')";
    socket.execute(cell("ask", "s", code)).await?;
    let asked = socket
        .next_event_where(|e| e.kind == EventKind::InputRequest)
        .await?;
    assert_eq!(
        (asked.data.as_str(), asked.password),
        ("Password: ", Some(true))
    );
    socket.stdin("s", Some("hunter2\n"), true).await?;
    let events = socket.events_until_terminal("s").await?;
    assert_eq!(stdout(&events), "7\n");
    let ended = events.last().context("no terminal")?;
    assert_eq!(
        ended.exception.as_ref().map(|e| e.ename.as_str()),
        Some("EOFError"),
        "{events:?}"
    );
    assert_stream_ok(socket.received());
    gateway.shutdown().await
}

/// The interpreter's pid, from the cell's `started` event.
fn interpreter_pid(events: &[Event]) -> Result<u32> {
    events
        .iter()
        .find(|e| e.kind == EventKind::Started)
        .and_then(|e| e.pid)
        .context("no started event with a pid")
}

/// True while `pid` exists and is not a zombie.
fn is_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            .is_some_and(|state| state != 'Z')
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ending_the_session_and_shutting_down_leave_no_interpreter() -> Result<()> {
    let gateway = TestGateway::spawn_with(Config {
        session_grace: Duration::ZERO,
        ..Config::default()
    })
    .await;
    let mut socket = gateway.raw().await?;
    let events = run(&mut socket, "gone", "a", "print('up')").await?;
    let first = interpreter_pid(&events)?;
    ensure!(is_alive(first), "the interpreter is not running");
    // The only socket leaves: with no grace period the session ends, and so does its
    // interpreter.
    socket.close().await?;
    eventually(
        patience(),
        "the ended session's interpreter is gone",
        || !is_alive(first),
    )
    .await?;

    let mut other = gateway.raw().await?;
    let events = run(&mut other, "second", "a", "print('up')").await?;
    let second = interpreter_pid(&events)?;
    ensure!(is_alive(second));
    gateway.shutdown().await?;
    ensure!(!is_alive(second), "an interpreter outlived the gateway");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interpreter_that_stops_taking_cells_cannot_hold_the_session() -> Result<()> {
    let gateway = TestGateway::spawn().await;
    let mut socket = gateway.raw().await?;
    // The cell makes the kernel stop reading its control socket after it.
    let wedge =
        "import sys, time\nsys.modules['__main__'].receive = lambda control: time.sleep(10**6)";
    run(&mut socket, "wedged", "wedge", wedge).await?;
    // A cell bigger than the socket's buffer cannot be handed over: its timeout ends
    // it all the same, and the interpreter is replaced.
    let big = format!("x = 1\n#{}\n", "y".repeat(600_000));
    socket
        .execute(ExecuteRequest {
            limits: sluice_protocol::Limits {
                timeout_ms: Some(1_000),
                ..sluice_protocol::Limits::default()
            },
            ..cell("wedged", "big", &big)
        })
        .await?;
    let events = socket.events_until_terminal("big").await?;
    let last = events.last().context("no terminal")?;
    assert_eq!(last.kind, EventKind::ResourceLimit, "{last:?}");
    ensure!(last.data.contains("fresh interpreter"), "{}", last.data);
    let after = run(&mut socket, "wedged", "after", "print('fresh')").await?;
    assert_eq!(stdout(&after), "fresh\n");
    gateway.shutdown().await
}

/// A cell that ignores the interrupt of its CPU stop is killed once it uses a margin
/// more (half its limit, at least 1 s: `pump::cpu_grace_margin_usec`), not after the
/// whole kill grace: with a 10 s grace, a spinner would otherwise use ten times its
/// limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cell_that_ignores_its_cpu_stop_gets_no_more_cpu_in_the_grace() -> Result<()> {
    let gateway = TestGateway::spawn_with(sluice_gateway::Config {
        kill_grace: std::time::Duration::from_secs(10),
        ..sluice_gateway::Config::default()
    })
    .await;
    let mut socket = gateway.raw().await?;
    let burn = ExecuteRequest {
        limits: sluice_protocol::Limits {
            cpu_ms: Some(1000),
            ..sluice_protocol::Limits::default()
        },
        ..cell(
            "grace",
            "burn",
            "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True: pass",
        )
    };
    socket.execute(burn).await?;
    let events = socket.events_until_terminal("burn").await?;
    let last = events.last().context("no terminal")?;
    ensure!(
        last.kind == EventKind::ResourceLimit
            && last.limit == Some(sluice_protocol::LimitKind::Cpu),
        "{events:?}"
    );
    let used = last.usage.as_ref().context("no usage")?.cpu_ms;
    // 1000 ms, the 100 ms margin, and a check's lateness: far below the 11 s a spinner
    // would reach by the end of the grace.
    ensure!(
        (1000.0..3000.0).contains(&used),
        "used {used} ms of a 1000 ms limit"
    );
    assert_stream_ok(socket.received());
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cell_that_burns_its_cpu_ms_is_interrupted_and_the_state_survives() -> Result<()> {
    let gateway = TestGateway::spawn().await;
    let mut socket = gateway.raw().await?;
    socket.execute(cell("cpu", "setup", "kept = 'yes'")).await?;
    socket.events_until_terminal("setup").await?;
    let burn = ExecuteRequest {
        limits: sluice_protocol::Limits {
            cpu_ms: Some(300),
            ..sluice_protocol::Limits::default()
        },
        ..cell("cpu", "burn", "while True: pass")
    };
    socket.execute(burn).await?;
    let events = socket.events_until_terminal("burn").await?;
    let last = events.last().context("no terminal")?;
    assert_eq!(
        (last.kind, last.limit, last.limit_value),
        (
            EventKind::ResourceLimit,
            Some(sluice_protocol::LimitKind::Cpu),
            Some(300)
        ),
        "{events:?}"
    );
    let used = last.usage.as_ref().context("no usage")?.cpu_ms;
    ensure!(used >= 300.0, "stopped before its limit: {used} ms");
    // Interrupted, not killed: the session's state is still there.
    socket.execute(cell("cpu", "after", "print(kept)")).await?;
    let after = socket.events_until_terminal("after").await?;
    assert_eq!(stdout(&after), "yes\n");
    assert_stream_ok(socket.received());
    gateway.shutdown().await
}
