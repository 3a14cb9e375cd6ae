//! Standard input (frames, eof, the `stdin` field, a full queue) and cancellation (plain,
//! of programs that ignore SIGTERM, of whole process groups, by dropping a handle).

use anyhow::{Context as _, Result};
use sluice_gateway::Config;
use sluice_protocol::{ErrorCode, EventKind, ExecuteRequest};
use sluice_tests::{
    assert_lifecycle, assert_socket_refusal, assert_stream_ok, drain, events_of, next_within,
    patience, processes_with, request, run, text_of, unique_marker, wait_for_output,
    wait_until_gone, wait_until_running, TestGateway,
};
use std::time::Duration;

/// A program that echoes each input line, then says goodbye at end of input.
const ECHO: &str = "import sys\n\
                    for line in sys.stdin:\n\
                    \x20   print('echo:', line.rstrip('\\n'), flush=True)\n\
                    print('bye')\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdin_round_trip_then_eof() -> Result<()> {
    let gateway = TestGateway::spawn().await;
    let client = gateway.client().await?;
    let mut socket_events = client.socket_events().context("socket events taken")?;
    let mut execution = client.execute(request("echo", "python", ECHO)).await?;
    let mut events = Vec::new();
    // Each answer comes back before the next line is sent: a real round trip.
    for (line, answer) in [("first", "echo: first\n"), ("second é", "echo: second é\n")] {
        execution.send_stdin(format!("{line}\n")).await?;
        wait_for_output(&mut execution, &mut events, answer).await?;
    }
    execution.send_stdin("third\n").await?;
    execution.close_stdin().await?;
    drain(&mut execution, &mut events).await?;

    assert_stream_ok(&events);
    assert_lifecycle(&events);
    assert_eq!(
        text_of(&events, EventKind::Stdout),
        "echo: first\necho: second é\necho: third\nbye\n"
    );
    let terminal = events.last().context("no events")?;
    assert_eq!(terminal.kind, EventKind::Completed);
    assert_eq!(terminal.exit_code, Some(0));
    // Nothing was refused.
    assert_eq!(socket_events.try_recv(), None);
    client.close().await?;
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdin_after_eof_is_refused_with_stdin_closed() -> Result<()> {
    let gateway = TestGateway::spawn().await;
    let mut socket = gateway.raw().await?;
    // Reads to end of input, reports, then stays alive so that later frames find it running.
    let code = "import sys, time\n\
                data = sys.stdin.read()\n\
                print(repr(data), flush=True)\n\
                time.sleep(1000)\n";
    socket.execute(request("reader", "python", code)).await?;
    socket.stdin("reader", Some("one\n"), false).await?;
    socket.stdin("reader", Some("two\n"), true).await?;
    socket.wait_for_stdout("reader", "'one\\ntwo\\n'\n").await?;

    socket.stdin("reader", Some("too late\n"), false).await?;
    let refusal = socket.next_socket_error().await?;
    assert_socket_refusal(&refusal, ErrorCode::StdinClosed);
    assert!(refusal.data.contains("reader"), "{refusal:?}");
    socket.stdin("reader", None, true).await?;
    assert_socket_refusal(&socket.next_socket_error().await?, ErrorCode::StdinClosed);

    socket.cancel("reader").await?;
    let events = socket.events_until_terminal("reader").await?;
    assert_eq!(events.last().map(|e| e.kind), Some(EventKind::Cancelled));
    let all: Vec<_> = events_of(socket.received(), "reader")
        .into_iter()
        .cloned()
        .collect();
    assert_lifecycle(&all);
    assert_eq!(text_of(&all, EventKind::Stdout), "'one\\ntwo\\n'\n");
    socket.assert_still_works().await?;
    assert_stream_ok(socket.received());
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stdin_field_is_the_whole_input() -> Result<()> {
    let gateway = TestGateway::spawn().await;
    let mut socket = gateway.raw().await?;
    let code = "import sys, time\n\
                data = sys.stdin.read()\n\
                print(data.upper(), end='', flush=True)\n\
                time.sleep(1000)\n";
    socket
        .execute(ExecuteRequest {
            stdin: Some("alpha\nbeta é\n".into()),
            ..request("whole", "python", code)
        })
        .await?;
    // The program only prints after end of input: the field was written, then closed.
    socket.wait_for_stdout("whole", "ALPHA\nBETA É\n").await?;
    socket.stdin("whole", Some("more\n"), false).await?;
    assert_socket_refusal(&socket.next_socket_error().await?, ErrorCode::StdinClosed);
    socket.cancel("whole").await?;
    let events = socket.events_until_terminal("whole").await?;
    assert_eq!(events.last().map(|e| e.kind), Some(EventKind::Cancelled));

    // The same with a program that ends by itself.
    socket
        .execute(ExecuteRequest {
            stdin: Some("b\nc\na\n".into()),
            ..request("sorted", "sh", "sort")
        })
        .await?;
    let sorted = socket.events_until_terminal("sorted").await?;
    assert_lifecycle(&sorted);
    assert_eq!(text_of(&sorted, EventKind::Stdout), "a\nb\nc\n");
    assert_eq!(sorted.last().and_then(|e| e.exit_code), Some(0));
    assert_stream_ok(socket.received());
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_stdin_field_is_an_immediate_eof() -> Result<()> {
    let gateway = TestGateway::spawn().await;
    let client = gateway.client().await?;
    let outcome = run(
        &client,
        ExecuteRequest {
            stdin: Some(String::new()),
            ..request(
                "empty",
                "python",
                "import sys\nprint(len(sys.stdin.read()))",
            )
        },
    )
    .await?;
    assert_stream_ok(&outcome.events);
    assert_eq!(outcome.stdout, "0\n");
    assert_eq!(outcome.exit_code(), Some(0));
    client.close().await?;
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdin_to_a_program_that_does_not_read_gets_stdin_full() -> Result<()> {
    const FRAMES: usize = 40;
    let gateway = TestGateway::spawn_with(Config {
        stdin_queue: 2,
        ..Config::default()
    })
    .await;
    let mut socket = gateway.raw().await?;
    let marker = unique_marker("not-reading");
    socket
        .execute(request(
            "deaf",
            "bash",
            &format!("exec -a {marker} sleep 1000"),
        ))
        .await?;
    // 40 frames of 64 KiB: far more than a pipe plus two queued frames hold.
    let chunk = "x".repeat(64 * 1024);
    for _ in 0..FRAMES {
        socket.stdin("deaf", Some(&chunk), false).await?;
    }
    socket.cancel("deaf").await?;
    let events = socket.events_until_terminal("deaf").await?;
    assert_eq!(events.last().map(|e| e.kind), Some(EventKind::Cancelled));

    let refusals: Vec<_> = socket
        .received()
        .iter()
        .filter(|e| e.session.is_none())
        .collect();
    assert!(!refusals.is_empty(), "no stdin_full among {FRAMES} frames");
    assert!(refusals.len() < FRAMES, "every frame was refused");
    for refusal in &refusals {
        assert_socket_refusal(refusal, ErrorCode::StdinFull);
        assert!(refusal.data.contains("deaf"), "{refusal:?}");
    }
    wait_until_gone(&marker).await?;
    socket.assert_still_works().await?;
    assert_stream_ok(socket.received());
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_a_sleeping_program_and_leaves_no_process() -> Result<()> {
    let gateway = TestGateway::spawn().await;
    let client = gateway.client().await?;
    let marker = unique_marker("cancel-sleep");
    let mut execution = client
        .execute(request(
            "sleeper",
            "bash",
            &format!("echo going to sleep\nexec -a {marker} sleep 1000"),
        ))
        .await?;
    let mut events = Vec::new();
    wait_for_output(&mut execution, &mut events, "going to sleep\n").await?;
    wait_until_running(&marker).await?;
    execution.cancel().await?;
    drain(&mut execution, &mut events).await?;

    assert_stream_ok(&events);
    assert_lifecycle(&events);
    let terminal = events.last().context("no events")?;
    assert_eq!(terminal.kind, EventKind::Cancelled, "{events:?}");
    assert_eq!(text_of(&events, EventKind::Stdout), "going to sleep\n");
    wait_until_gone(&marker).await?;
    client.close().await?;
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_kills_a_program_group_that_ignores_sigterm() -> Result<()> {
    let gateway = TestGateway::spawn_with(Config {
        kill_grace: Duration::from_millis(300),
        ..Config::default()
    })
    .await;
    let client = gateway.client().await?;
    let marker = unique_marker("ignores-term");
    // The main process and a background child both ignore SIGTERM (an ignored signal
    // stays ignored across exec); only the SIGKILL after the grace period stops them.
    let code = format!(
        "trap '' TERM\n\
         (exec -a {marker}-child sleep 1000) &\n\
         echo ready\n\
         exec -a {marker}-main sleep 1000\n"
    );
    let mut execution = client.execute(request("stubborn", "bash", &code)).await?;
    let mut events = Vec::new();
    wait_for_output(&mut execution, &mut events, "ready\n").await?;
    sluice_tests::eventually(patience(), "both marked processes run", || {
        processes_with(&marker).len() == 2
    })
    .await?;
    execution.cancel().await?;
    drain(&mut execution, &mut events).await?;

    assert_stream_ok(&events);
    assert_lifecycle(&events);
    assert_eq!(
        events.last().map(|e| e.kind),
        Some(EventKind::Cancelled),
        "{events:?}"
    );
    // Output produced before the cancel is delivered before the terminal event.
    assert_eq!(text_of(&events, EventKind::Stdout), "ready\n");
    wait_until_gone(&marker).await?;
    client.close().await?;
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_kills_a_python_program_that_ignores_sigterm() -> Result<()> {
    let gateway = TestGateway::spawn_with(Config {
        kill_grace: Duration::from_millis(300),
        ..Config::default()
    })
    .await;
    let client = gateway.client().await?;
    let marker = unique_marker("py-ignores-term");
    let code = "import signal, time\n\
                signal.signal(signal.SIGTERM, signal.SIG_IGN)\n\
                print('ready', flush=True)\n\
                while True:\n\
                \x20   time.sleep(1)\n";
    let mut execution = client
        .execute(ExecuteRequest {
            // The marker rides in the command line: python3 main.py MARKER.
            args: vec![marker.clone()],
            ..request("stubborn", "python", code)
        })
        .await?;
    let mut events = Vec::new();
    wait_for_output(&mut execution, &mut events, "ready\n").await?;
    wait_until_running(&marker).await?;
    execution.cancel().await?;
    drain(&mut execution, &mut events).await?;
    assert_stream_ok(&events);
    assert_lifecycle(&events);
    assert_eq!(events.last().map(|e| e.kind), Some(EventKind::Cancelled));
    wait_until_gone(&marker).await?;
    client.close().await?;
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_of_an_unknown_or_finished_id_is_refused() -> Result<()> {
    let gateway = TestGateway::spawn().await;
    let mut socket = gateway.raw().await?;
    socket.cancel("never-started").await?;
    let refusal = socket.next_socket_error().await?;
    assert_socket_refusal(&refusal, ErrorCode::UnknownExecution);
    assert!(refusal.data.contains("never-started"), "{refusal:?}");

    socket.execute(request("quick", "sh", "echo hi")).await?;
    socket.events_until_terminal("quick").await?;
    socket.cancel("quick").await?;
    assert_socket_refusal(
        &socket.next_socket_error().await?,
        ErrorCode::UnknownExecution,
    );
    socket.stdin("quick", Some("x"), false).await?;
    assert_socket_refusal(
        &socket.next_socket_error().await?,
        ErrorCode::UnknownExecution,
    );

    // Cancelled once, the id is finished: a second cancel is refused too.
    socket
        .execute(request("twice", "sh", "exec sleep 1000"))
        .await?;
    socket
        .next_event_where(|e| e.kind == EventKind::Started)
        .await?;
    socket.cancel("twice").await?;
    let events = socket.events_until_terminal("twice").await?;
    assert_eq!(events.last().map(|e| e.kind), Some(EventKind::Cancelled));
    socket.cancel("twice").await?;
    assert_socket_refusal(
        &socket.next_socket_error().await?,
        ErrorCode::UnknownExecution,
    );

    socket.assert_still_works().await?;
    assert_stream_ok(socket.received());
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_an_execution_handle_cancels_it() -> Result<()> {
    let gateway = TestGateway::spawn().await;
    let client = gateway.client().await?;
    let marker = unique_marker("dropped-handle");
    let mut execution = client
        .execute(request(
            "dropped",
            "bash",
            &format!("exec -a {marker} sleep 1000"),
        ))
        .await?;
    let started = next_within(&mut execution).await?;
    assert_eq!(started.kind, EventKind::Started);
    assert_stream_ok(std::slice::from_ref(&started));
    wait_until_running(&marker).await?;
    drop(execution);
    wait_until_gone(&marker).await?;

    let outcome = run(&client, request("after", "sh", "echo still here")).await?;
    assert_stream_ok(&outcome.events);
    assert_eq!(outcome.stdout, "still here\n");
    client.close().await?;
    gateway.shutdown().await
}
