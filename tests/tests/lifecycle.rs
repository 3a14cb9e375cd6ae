//! Ownership and endings: sessions belong to their socket, a closed socket or a gateway
//! shutdown cancels what runs, and no process outlives its execution.

use anyhow::{Context as _, Result};
use sluice_protocol::{ErrorCode, EventKind, ExecuteRequest};
use sluice_tests::{
    assert_lifecycle, assert_stream_ok, events_of, processes_with, request, text_of, unique_marker,
    wait_until_gone, wait_until_running, TestGateway,
};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_named_by_another_socket_is_in_use() -> Result<()> {
    let gateway = TestGateway::spawn().await;
    let mut owner = gateway.raw().await?;
    let mut intruder = gateway.raw().await?;
    let in_shared = |id: &str| ExecuteRequest {
        session: Some("shared".into()),
        ..request(id, "sh", "echo owner")
    };
    owner.execute(in_shared("mine")).await?;
    let events = owner.events_until_terminal("mine").await?;
    assert_lifecycle(&events);

    // The session outlives its execution: it belongs to the owner's socket.
    intruder.execute(in_shared("theirs")).await?;
    let refusal = intruder.next_event().await?;
    assert_eq!(refusal.kind, EventKind::Error);
    assert_eq!(refusal.code, Some(ErrorCode::SessionInUse));
    assert_eq!(refusal.id.as_deref(), Some("theirs"));
    assert_eq!(refusal.session, None);
    assert_eq!(refusal.sequence, 1);

    // Both sockets carry on; the owner keeps numbering its session from where it was.
    intruder.assert_still_works().await?;
    owner.execute(in_shared("mine-again")).await?;
    let again = owner.events_until_terminal("mine-again").await?;
    assert_eq!(again[0].sequence, events.len() as u64 + 1);
    assert_stream_ok(owner.received());
    assert_stream_ok(intruder.received());
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_a_socket_mid_run_leaves_no_process() -> Result<()> {
    let gateway = TestGateway::spawn().await;
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
    sluice_tests::eventually(sluice_tests::PATIENCE, "both marked processes run", || {
        processes_with(&marker).len() == 2
    })
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
    let gateway = TestGateway::spawn().await;
    let mut socket = gateway.raw().await?;
    let marker = unique_marker("socket-closed-cleanly");
    socket
        .execute(request(
            "running",
            "bash",
            &format!("exec -a {marker} sleep 1000"),
        ))
        .await?;
    socket
        .next_event_where(|e| e.kind == EventKind::Started)
        .await?;
    wait_until_running(&marker).await?;
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
    socket
        .next_event_where(|e| e.kind == EventKind::Started)
        .await?;
    wait_until_running(&marker).await?;
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
    socket
        .next_event_where(|e| e.kind == EventKind::Started)
        .await?;
    wait_until_running(&marker).await?;
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
