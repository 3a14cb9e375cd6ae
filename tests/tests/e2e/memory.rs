//! The gateway's memory in total (issue 10, section 3): messages a client starts and
//! never finishes are closed at the message deadline, a message in flight beyond the
//! buffer budget closes its socket, and while the budget (or a peer's share of it) is
//! spent new executions and stdin are refused with `gateway_busy`; other clients are
//! served throughout.

use anyhow::{ensure, Context as _, Result};
use sluice_gateway::Config;
use sluice_protocol::{ErrorCode, EventKind, ExecuteRequest};
use sluice_tests::{assert_socket_refusal, request, text_of, RawSocket, TestGateway};
use std::time::Duration;

/// Waits for the gateway to close `socket` and returns the close code and reason.
async fn close_of(socket: &mut RawSocket) -> Result<(u16, String)> {
    let frame = socket
        .closed()
        .await?
        .with_context(|| format!("closed without a close frame: {:?}", socket.ending()))?;
    Ok((u16::from(frame.code), frame.reason.to_string()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_never_finished_are_closed_at_the_deadline_and_others_are_served() -> Result<()> {
    let gateway = TestGateway::spawn_with(Config {
        message_deadline: Duration::from_millis(1_000),
        ..Config::default()
    })
    .await;
    let mut holders = Vec::new();
    for _ in 0..20 {
        let mut socket = gateway.raw().await?;
        // 3 MiB announced (under the 4 MiB transport cap), 512 KiB sent.
        socket.send_unfinished_frame(3 << 20, 512 << 10).await?;
        holders.push(socket);
    }
    let mut other = gateway.raw().await?;
    other.assert_still_works().await?;
    for socket in &mut holders {
        let (code, reason) = close_of(socket).await?;
        ensure!(code == 1008, "close code {code}: {reason}");
        ensure!(reason.contains("not completed within 1000 ms"), "{reason}");
    }
    other.assert_still_works().await?;
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_in_flight_beyond_the_memory_budget_closes_its_socket() -> Result<()> {
    let gateway = TestGateway::spawn_with(Config {
        buffer_budget_bytes: Some(1 << 20),
        ..Config::default()
    })
    .await;
    let mut greedy = gateway.raw().await?;
    greedy.send_unfinished_frame(3 << 20, 2 << 20).await?;
    let (code, reason) = close_of(&mut greedy).await?;
    ensure!(code == 1013, "close code {code}: {reason}");
    ensure!(reason.contains("buffer budget"), "{reason}");
    // What it held is given back: others are served.
    let mut other = gateway.raw().await?;
    other.assert_still_works().await?;
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_budget_is_spent_executions_and_stdin_get_gateway_busy() -> Result<()> {
    let gateway = TestGateway::spawn_with(Config {
        buffer_budget_bytes: Some(1 << 20),
        ..Config::default()
    })
    .await;
    let mut owner = gateway.raw().await?;
    owner
        .execute(request("sink", "sh", "read line; echo got $line"))
        .await?;
    owner
        .next_event_where(|e| e.id.as_deref() == Some("sink") && e.kind == EventKind::Started)
        .await?;
    // 2 MB of output kept for an acknowledging client that acknowledges none of it:
    // more than the whole budget.
    let mut flood: ExecuteRequest = request(
        "flood",
        "python",
        "import sys\nsys.stdout.write('z' * 2_000_000)\n",
    );
    flood.limits.timeout_ms = Some(600_000);
    owner.execute(flood).await?;
    let first = owner
        .next_event_where(|e| e.id.as_deref() == Some("flood"))
        .await?;
    let session = first.session.clone().context("no session")?;
    owner.ack(&session, first.sequence).await?;
    let events = owner.events_until_terminal("flood").await?;
    let terminal = events.last().context("no events")?;
    ensure!(terminal.kind == EventKind::Completed, "{terminal:?}");
    // New work is refused, cleanly.
    let mut other = gateway.raw().await?;
    other.execute(request("late", "sh", "echo late")).await?;
    let refusal = other.next_event().await?;
    ensure!(
        refusal.code == Some(ErrorCode::GatewayBusy) && refusal.id.as_deref() == Some("late"),
        "{refusal:?}"
    );
    ensure!(refusal.session.is_none(), "nothing was opened: {refusal:?}");
    owner.stdin("sink", Some("x\n"), false).await?;
    let refusal = owner.next_socket_error().await?;
    assert_socket_refusal(&refusal, ErrorCode::GatewayBusy);
    // Acknowledging frees the buffer; then everything works again. The stdin is taken
    // after the ack (one socket's frames are handled in order), and the sink's output
    // is published after it: once that arrives, the acknowledged frames are gone.
    owner.ack(&session, terminal.sequence).await?;
    owner.stdin("sink", Some("x\n"), false).await?;
    let sink = owner.events_until_terminal("sink").await?;
    ensure!(text_of(&sink, EventKind::Stdout) == "got x\n", "{sink:?}");
    other.assert_still_works().await?;
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_session_keeps_only_a_tail_of_what_its_readers_have_taken() -> Result<()> {
    let gateway = TestGateway::spawn().await;
    let mut owner = gateway.raw().await?;
    let mut flood = request(
        "flood",
        "python",
        "import sys\nsys.stdout.write('z' * 2_000_000)\n",
    );
    flood.session = Some("idle".into());
    owner.execute(flood).await?;
    let events = owner.events_until_terminal("flood").await?;
    let terminal = events.last().context("no events")?.clone();
    ensure!(terminal.kind == EventKind::Completed, "{terminal:?}");
    // Every event was taken and nothing runs: a late reader finds only the tail.
    let mut late = gateway.raw().await?;
    late.attach("idle", Some(0)).await?;
    let attached = late.next_event().await?;
    ensure!(attached.kind == EventKind::Attached, "{attached:?}");
    let gap = late.next_event().await?;
    ensure!(
        gap.kind == EventKind::Gap && gap.missed_from == Some(1),
        "{gap:?}"
    );
    let replayed = late.events_until_terminal("flood").await?;
    ensure!(replayed.last() == Some(&terminal));
    let tail = text_of(&replayed, EventKind::Stdout).len();
    ensure!(
        (256 << 10..512 << 10).contains(&tail),
        "{tail} bytes of output replayed"
    );
    gateway.shutdown().await
}

/// Regression test for the re-check of the second review (failed before the fix: a ping
/// after each 8-byte fragment made the meter take everything in flight for the ping's
/// own bytes, so an unfinished message never met its deadline nor the budget): control
/// frames between fragments discount exactly their own bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pings_between_tiny_fragments_do_not_hide_an_unfinished_message() -> Result<()> {
    let gateway = TestGateway::spawn_with(Config {
        message_deadline: Duration::from_millis(500),
        ..Config::default()
    })
    .await;
    let mut trickler = gateway.raw().await?;
    let mask = [1_u8, 2, 3, 4];
    // A text message's first fragment (no FIN), then continuations, 8 bytes each, each
    // followed by an empty ping: all masked, as a client's frames are.
    let fragment = |first: bool| {
        let mut frame = vec![if first { 0x01 } else { 0x00 }, 0x80 | 8];
        frame.extend_from_slice(&mask);
        frame.extend_from_slice(&[b'x'; 8]);
        frame.extend_from_slice(&[0x89, 0x80]);
        frame.extend_from_slice(&mask);
        frame
    };
    let started = tokio::time::Instant::now();
    let mut first = true;
    // The attack's own pace; the gateway must close the socket long before the loop
    // gives up (20 times the deadline).
    while started.elapsed() < sluice_tests::patient(Duration::from_secs(10)) {
        if trickler.send_raw(&fragment(first)).await.is_err() {
            break;
        }
        first = false;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (code, reason) = close_of(&mut trickler).await?;
    ensure!(code == 1008, "close code {code}: {reason}");
    let mut other = gateway.raw().await?;
    other.assert_still_works().await?;
    gateway.shutdown().await
}

/// Regression test for the re-check of the second review (failed before the fix: one
/// address pinned replay it never acknowledged in session after session until the
/// whole buffer budget was spent, and every other client got `gateway_busy`): one
/// peer's sessions, sockets and input hold at most its share of the budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_peer_holds_at_most_its_share_of_the_buffer_budget() -> Result<()> {
    let gateway = TestGateway::spawn_with(Config {
        buffer_budget_bytes: Some(4 << 20),
        budget_share_per_peer: 25,
        ..Config::default()
    })
    .await;
    let mut hoarder = gateway.raw().await?;
    // 2 MB of output in acknowledged mode, acknowledged once: all of it stays pinned,
    // twice the peer's 1 MiB share, half the budget.
    let mut flood = request(
        "flood",
        "python",
        "import sys\nsys.stdout.write('z' * 2_000_000)\n",
    );
    flood.limits.timeout_ms = Some(600_000);
    hoarder.execute(flood).await?;
    let first = hoarder
        .next_event_where(|e| e.id.as_deref() == Some("flood"))
        .await?;
    let session = first.session.clone().context("no session")?;
    hoarder.ack(&session, first.sequence).await?;
    hoarder.events_until_terminal("flood").await?;
    // Its next execute is refused, saying why; nothing was opened.
    hoarder.execute(request("more", "sh", "echo more")).await?;
    let refusal = hoarder.next_event().await?;
    ensure!(
        refusal.code == Some(ErrorCode::GatewayBusy)
            && refusal.data.contains("budget-share-per-peer"),
        "{refusal:?}"
    );
    // Another peer is served.
    let mut other = gateway
        .raw_from(std::net::Ipv4Addr::new(127, 0, 0, 2))
        .await?;
    other.assert_still_works().await?;
    gateway.shutdown().await
}
