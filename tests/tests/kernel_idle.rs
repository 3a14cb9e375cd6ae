//! A persistent interpreter must be idle while no cell of its session runs: a cell that
//! fakes its completion and spins on, or leaves a thread spinning, gets its interpreter
//! ended, and the session's next cell runs in a fresh one and is told why. Replies out of
//! step (a forged one, then the driver's real one) end the interpreter too. An ordinary
//! session with idle gaps between its cells keeps its interpreter.

use anyhow::{ensure, Context as _, Result};
use sluice_protocol::{ErrorCode, Event, EventKind, ExecuteRequest, Limits};
use sluice_tests::{eventually, request, text_of, RawSocket, TestGateway, PATIENCE};

/// A python cell in the persistent session `session`, with the limits of the finding.
fn cell(session: &str, id: &str, code: &str) -> ExecuteRequest {
    ExecuteRequest {
        session: Some(session.into()),
        persistent: true,
        limits: Limits {
            timeout_ms: Some(3_000),
            cpu_ms: Some(1_000),
            ..Limits::default()
        },
        ..request(id, "python", code)
    }
}

/// Runs one cell and returns its events.
async fn run(socket: &mut RawSocket, session: &str, id: &str, code: &str) -> Result<Vec<Event>> {
    socket.execute(cell(session, id, code)).await?;
    socket.events_until_terminal(id).await
}

/// The cell's `started` event.
fn started(events: &[Event]) -> Result<&Event> {
    events
        .iter()
        .find(|e| e.kind == EventKind::Started)
        .context("no started event")
}

/// True while `pid` exists and is not a zombie.
fn is_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            .is_some_and(|state| state != 'Z')
    })
}

/// Waits until the interpreter `pid` (and so whatever spun in it) is gone.
async fn wait_until_ended(pid: u32) -> Result<()> {
    eventually(PATIENCE, "the spinning interpreter is ended", || {
        !is_alive(pid)
    })
    .await
}

/// The session's next cell runs in a fresh interpreter (not `old`), without the old
/// state, and its `started` says why.
async fn next_cell_is_fresh(
    socket: &mut RawSocket,
    session: &str,
    old: u32,
    why: &str,
) -> Result<()> {
    let events = run(socket, session, "after", "print('x' in globals())").await?;
    let started = started(&events)?;
    ensure!(
        started.data.contains(why) && started.data.contains("fresh interpreter"),
        "the next cell is not told why: {started:?}"
    );
    ensure!(started.pid != Some(old), "{started:?}");
    assert_eq!(text_of(&events, EventKind::Stdout), "False\n", "{events:?}");
    let last = events.last().context("no terminal")?;
    assert_eq!(last.kind, EventKind::Completed, "{last:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cell_that_fakes_its_completion_is_ended_and_the_next_cell_starts_afresh() -> Result<()> {
    let gateway = TestGateway::spawn().await;
    let mut socket = gateway.raw().await?;
    // The finding as reported: the driver's reply, written by the cell, then a spin.
    let code = "x = 1\nimport os\nos.write(3, b'{\"exit_code\":0}\\n')\nwhile True: pass";
    let events = run(&mut socket, "fake", "fake", code).await?;
    let pid = started(&events)?.pid.context("no pid")?;
    let last = events.last().context("no terminal")?;
    ensure!(
        last.kind == EventKind::Error
            && last.code == Some(ErrorCode::KernelLost)
            && last.data.contains("out of step"),
        "a reply that names no cell is not the driver's: {last:?}"
    );
    wait_until_ended(pid).await?;
    let events = run(&mut socket, "fake", "after", "print('x' in globals())").await?;
    ensure!(started(&events)?.pid != Some(pid), "{events:?}");
    assert_eq!(text_of(&events, EventKind::Stdout), "False\n", "{events:?}");
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cell_that_fakes_its_completion_with_its_number_is_ended_while_idle() -> Result<()> {
    let gateway = TestGateway::spawn().await;
    let mut socket = gateway.raw().await?;
    // A forger that knows the driver: the first cell of an interpreter is number 1.
    let code =
        "x = 1\nimport os\nos.write(3, b'{\"cell\": 1, \"exit_code\": 0}\\n')\nwhile True: pass";
    let events = run(&mut socket, "forged", "fake", code).await?;
    let pid = started(&events)?.pid.context("no pid")?;
    let last = events.last().context("no terminal")?;
    // The gateway cannot tell this reply from the driver's; the spin after it is idle
    // CPU time.
    assert_eq!(last.kind, EventKind::Completed, "{last:?}");
    wait_until_ended(pid).await?;
    next_cell_is_fresh(&mut socket, "forged", pid, "while no cell ran").await?;
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thread_a_cell_leaves_spinning_ends_the_interpreter() -> Result<()> {
    let gateway = TestGateway::spawn().await;
    let mut socket = gateway.raw().await?;
    let code = "x = 1\nimport threading\nthreading.Thread(target=lambda: [0 for _ in iter(int, 1)], daemon=True).start()\nprint('spinning')";
    let events = run(&mut socket, "thread", "spin", code).await?;
    let pid = started(&events)?.pid.context("no pid")?;
    let last = events.last().context("no terminal")?;
    assert_eq!(last.exit_code, Some(0), "{events:?}");
    wait_until_ended(pid).await?;
    next_cell_is_fresh(&mut socket, "thread", pid, "while no cell ran").await?;
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_reply_for_one_cell_ends_the_interpreter() -> Result<()> {
    let gateway = TestGateway::spawn().await;
    let mut socket = gateway.raw().await?;
    // A forged reply, then the cell ends and the driver sends the real one.
    let code = "x = 1\nimport os\nos.write(3, b'{\"cell\": 1, \"exit_code\": 0}\\n')";
    let events = run(&mut socket, "twice", "fake", code).await?;
    let pid = started(&events)?.pid.context("no pid")?;
    wait_until_ended(pid).await?;
    // The real reply reached the gateway either before the next cell (which then runs
    // afresh) or while it ran (which then ends with kernel_lost): never as its answer.
    let events = run(&mut socket, "twice", "next", "print('x' in globals())").await?;
    let last = events.last().context("no terminal")?;
    if last.kind == EventKind::Error {
        ensure!(
            last.code == Some(ErrorCode::KernelLost) && last.data.contains("out of step"),
            "{last:?}"
        );
        let events = run(&mut socket, "twice", "after", "print('x' in globals())").await?;
        assert_eq!(text_of(&events, EventKind::Stdout), "False\n", "{events:?}");
    } else {
        let started = started(&events)?;
        ensure!(started.data.contains("out of step"), "{started:?}");
        assert_eq!(text_of(&events, EventKind::Stdout), "False\n", "{events:?}");
    }
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ordinary_session_with_idle_gaps_keeps_its_interpreter() -> Result<()> {
    let gateway = TestGateway::spawn().await;
    let mut socket = gateway.raw().await?;
    let mut pids = Vec::new();
    for (id, code) in [("a", "x = 1"), ("b", "x += 1"), ("c", "print(x + 1)")] {
        let events = run(&mut socket, "calm", id, code).await?;
        let started = started(&events)?;
        ensure!(started.data.is_empty(), "{started:?}");
        pids.extend(started.pid);
        let last = events.last().context("no terminal")?;
        assert_eq!(last.exit_code, Some(0), "{events:?}");
        // An idle gap of several checks: an ordinary program in the same session.
        let gap = ExecuteRequest {
            session: Some("calm".into()),
            ..request(
                &format!("gap-{id}"),
                "python",
                "import time\ntime.sleep(1.5)",
            )
        };
        socket.execute(gap).await?;
        socket.events_until_terminal(&format!("gap-{id}")).await?;
        ensure!(pids.iter().all(|pid| is_alive(*pid)), "{pids:?}");
    }
    ensure!(pids.windows(2).all(|w| w[0] == w[1]), "{pids:?}");
    let events = run(&mut socket, "calm", "d", "print(x)").await?;
    assert_eq!(text_of(&events, EventKind::Stdout), "2\n", "{events:?}");
    gateway.shutdown().await
}
