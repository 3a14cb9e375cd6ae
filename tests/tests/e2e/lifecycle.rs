//! Ownership and endings: sockets share named sessions, a session whose last socket is
//! gone (past the grace period) or a gateway shutdown cancels what runs, and no process
//! outlives its execution.

use anyhow::{Context as _, Result};
use sluice_gateway::Config;
use sluice_protocol::{EventKind, ExecuteRequest};
use sluice_tests::{
    assert_lifecycle, assert_stream_ok, events_of, processes_with, request, text_of, unique_marker,
    wait_until_gone, wait_until_running, TestGateway,
};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// A gateway that ends a session as soon as its last socket goes.
fn no_grace() -> Config {
    Config {
        session_grace: std::time::Duration::ZERO,
        ..Config::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_named_session_is_shared_by_the_sockets_that_run_in_it() -> Result<()> {
    let gateway = TestGateway::spawn().await;
    let mut first = gateway.raw().await?;
    let mut second = gateway.raw().await?;
    let in_shared = |id: &str, text: &str| ExecuteRequest {
        session: Some("shared".into()),
        ..request(id, "sh", &format!("echo {text}"))
    };
    first.execute(in_shared("one", "from-first")).await?;
    let events = first.events_until_terminal("one").await?;
    assert_lifecycle(&events);

    // A second socket attaches (getting the session's events so far, replayed) and runs
    // in the same session: it continues the session's numbering, and the first socket,
    // still reading the session, sees that execution too.
    second.attach("shared", None).await?;
    second.execute(in_shared("two", "from-second")).await?;
    let theirs = second.events_until_terminal("two").await?;
    assert_lifecycle(&theirs);
    assert_eq!(theirs[0].sequence, events.len() as u64 + 1);
    assert_eq!(
        events_of(second.received(), "one").len(),
        events.len(),
        "the first execution, replayed on attach"
    );
    assert_eq!(text_of(&theirs, EventKind::Stdout), "from-second\n");
    let seen_by_first = first.events_until_terminal("two").await?;
    assert_eq!(
        seen_by_first.iter().map(|e| e.sequence).collect::<Vec<_>>(),
        theirs.iter().map(|e| e.sequence).collect::<Vec<_>>()
    );
    assert_stream_ok(first.received());
    assert_stream_ok(second.received());
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_closes_mid_stream_gets_a_clean_close_reply() -> Result<()> {
    let gateway = TestGateway::spawn().await;
    let mut socket = gateway.raw().await?;
    socket.execute(request("flood", "sh", "yes")).await?;
    socket
        .next_event_where(|e| e.kind == EventKind::Stdout)
        .await?;
    // Events are still being written when the client says goodbye.
    socket.close_with_handshake().await?;
    let mut next = gateway.raw().await?;
    next.assert_still_works().await?;
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_a_socket_mid_run_leaves_no_process() -> Result<()> {
    let gateway = TestGateway::spawn_with(no_grace()).await;
    let mut socket = gateway.raw().await?;
    let marker = unique_marker("socket-closed");
    socket
        .execute(request(
            "orphan",
            "bash",
            &format!("(exec -a {marker}-child sleep 1000) &\nexec -a {marker}-main sleep 1000"),
        ))
        .await?;
    socket
        .next_event_where(|e| e.kind == EventKind::Started)
        .await?;
    sluice_tests::eventually(
        sluice_tests::patience(),
        "both marked processes run",
        || processes_with(&marker).len() == 2,
    )
    .await?;
    assert_stream_ok(socket.received());
    // Gone without a close handshake: the TCP connection just drops.
    drop(socket);
    wait_until_gone(&marker).await?;

    // The gateway is fine: another socket works.
    let mut next = gateway.raw().await?;
    next.assert_still_works().await?;
    assert_stream_ok(next.received());
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_close_mid_run_leaves_no_process() -> Result<()> {
    let gateway = TestGateway::spawn_with(no_grace()).await;
    let mut socket = gateway.raw().await?;
    let marker = unique_marker("socket-closed-cleanly");
    socket
        .execute(request(
            "running",
            "bash",
            &format!("exec -a {marker} sleep 1000"),
        ))
        .await?;
    socket.started_and_running(&marker).await?;
    assert_stream_ok(socket.received());
    socket.close().await?;
    wait_until_gone(&marker).await?;
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_left_behind_by_a_finished_program_are_killed() -> Result<()> {
    let gateway = TestGateway::spawn().await;
    let mut socket = gateway.raw().await?;
    let marker = unique_marker("left-behind");
    // The background child keeps the output pipes open; the main process waits for a
    // line of input, then exits.
    let code = format!("(exec -a {marker} sleep 1000) &\nread line\necho bye $line");
    socket.execute(request("parent", "bash", &code)).await?;
    socket.started_and_running(&marker).await?;
    socket.stdin("parent", Some("now\n"), true).await?;
    socket.events_until_terminal("parent").await?;
    let events: Vec<_> = events_of(socket.received(), "parent")
        .into_iter()
        .cloned()
        .collect();
    assert_lifecycle(&events);
    let terminal = events.last().context("no events")?;
    assert_eq!(terminal.kind, EventKind::Completed, "{terminal:?}");
    assert_eq!(terminal.exit_code, Some(0));
    assert_eq!(text_of(&events, EventKind::Stdout), "bye now\n");
    wait_until_gone(&marker).await?;
    assert_stream_ok(socket.received());
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_shutdown_cancels_executions_and_leaves_no_process() -> Result<()> {
    let gateway = TestGateway::spawn().await;
    let mut socket = gateway.raw().await?;
    let marker = unique_marker("shutdown");
    socket
        .execute(request(
            "long",
            "bash",
            &format!("echo working\nexec -a {marker} sleep 1000"),
        ))
        .await?;
    socket.wait_for_stdout("long", "working\n").await?;
    wait_until_running(&marker).await?;

    // `shutdown` returns once run() has returned, which waits for every process group
    // to be reaped: nothing may be left at that point.
    gateway.shutdown().await?;
    let left = processes_with(&marker);
    assert!(left.is_empty(), "still running after shutdown: {left:?}");

    // The socket learns that its execution was cancelled, then is closed (going away).
    let close = socket.closed().await?;
    assert_stream_ok(socket.received());
    let events: Vec<_> = events_of(socket.received(), "long")
        .into_iter()
        .cloned()
        .collect();
    assert_lifecycle(&events);
    assert_eq!(
        events.last().map(|e| e.kind),
        Some(EventKind::Cancelled),
        "{events:?}"
    );
    let close = close.context("the socket ended without a close frame")?;
    assert_eq!(close.code, CloseCode::Away, "{close:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_gateway_leaves_no_process() -> Result<()> {
    let gateway = TestGateway::spawn().await;
    let mut socket = gateway.raw().await?;
    let marker = unique_marker("dropped-gateway");
    socket
        .execute(request(
            "long",
            "bash",
            &format!("exec -a {marker} sleep 1000"),
        ))
        .await?;
    socket.started_and_running(&marker).await?;
    drop(gateway);
    wait_until_gone(&marker).await?;
    socket.closed().await?;
    assert_stream_ok(socket.received());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_socket_is_closed_with_going_away_on_shutdown() -> Result<()> {
    // (Whether the port refuses connections afterwards is not checked: once released, a
    // gateway of a test running in parallel may bind the same port.)
    let gateway = TestGateway::spawn().await;
    let mut socket = gateway.raw().await?;
    socket.assert_still_works().await?;
    gateway.shutdown().await?;
    let close = socket.closed().await?;
    let code = close.map(|frame| u16::from(frame.code));
    assert_eq!(
        code,
        Some(1001),
        "an idle socket should be closed with 1001 (going away)"
    );
    assert_stream_ok(socket.received());
    Ok(())
}
