//! Abuse of named sessions without credentials (issue 10, section 5): answering another
//! client's `execute` with output of one's own by reusing its id, and stalling a
//! session's programs by taking its lead and not reading.

use anyhow::{ensure, Context as _, Result};
use sluice_gateway::Config;
use sluice_protocol::{ErrorCode, EventKind, ExecuteRequest};
use sluice_tests::{
    assert_socket_refusal, assert_stream_ok, numbered_lines, request, text_of, RawSocket,
    TestGateway,
};
use std::time::Duration;

/// `request` run in the named session `session`.
fn in_session(session: &str, id: &str, language: &str, code: &str) -> ExecuteRequest {
    ExecuteRequest {
        session: Some(session.into()),
        ..request(id, language, code)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_id_with_other_code_is_refused_not_answered_with_the_old_run() -> Result<()> {
    let gateway = TestGateway::spawn().await;
    // The attacker runs `cell-1` first, with its own code.
    let mut attacker = gateway.raw().await?;
    attacker
        .execute(in_session("notebook", "cell-1", "sh", "echo spoofed"))
        .await?;
    let spoofed = attacker.events_until_terminal("cell-1").await?;
    ensure!(text_of(&spoofed, EventKind::Stdout) == "spoofed\n");
    // The victim's `cell-1` differs: refused, and the attacker's output is not shown.
    let mut victim = gateway.raw().await?;
    victim
        .execute(in_session("notebook", "cell-1", "sh", "echo mine"))
        .await?;
    let refusal = victim.next_event().await?;
    assert_socket_refusal(&refusal, ErrorCode::DuplicateId);
    ensure!(
        refusal.for_session.as_deref() == Some("notebook"),
        "the refusal names the session: {refusal:?}"
    );
    // A refusal creates nothing: the victim does not read the session now.
    victim.assert_still_works().await?;
    ensure!(
        victim
            .received()
            .iter()
            .all(|e| e.session.as_deref() != Some("notebook")),
        "the victim received the session's events: {:?}",
        victim.received()
    );
    // The same request repeated is still answered with the original's events.
    let mut resend = gateway.raw().await?;
    resend
        .execute(in_session("notebook", "cell-1", "sh", "echo spoofed"))
        .await?;
    let replayed = resend.events_until_terminal("cell-1").await?;
    ensure!(replayed == spoofed, "{replayed:?} != {spoofed:?}");
    assert_stream_ok(victim.received());
    gateway.shutdown().await
}

/// A gateway whose sessions fill their replay buffer after a few events and that never
/// closes a socket for not reading (so only the lead rules decide who waits).
fn small_buffers() -> Config {
    Config {
        replay_events: 4,
        replay_bytes: 64 * 1024,
        send_timeout: Duration::from_secs(600),
        ..Config::default()
    }
}

/// Waits for `id`'s terminal event on `socket`: the program ran to its end, exit 0.
async fn runs_to_its_end(socket: &mut RawSocket, id: &str) -> Result<()> {
    let terminal = socket
        .next_event_where(|e| e.id.as_deref() == Some(id) && e.is_terminal())
        .await?;
    ensure!(
        terminal.kind == EventKind::Completed && terminal.exit_code == Some(0),
        "{terminal:?}"
    );
    Ok(())
}

/// A program that prints `lines` numbered lines, with a generous timeout.
fn flood(session: &str, id: &str, lines: u32) -> ExecuteRequest {
    let mut request = in_session(session, id, "python", &numbered_lines(lines));
    request.limits.timeout_ms = Some(600_000);
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attached_reader_that_acknowledges_cannot_stall_the_session() -> Result<()> {
    let gateway = TestGateway::spawn_with(small_buffers()).await;
    let mut owner = gateway.raw().await?;
    owner
        .execute(in_session("shared", "ready", "sh", "true"))
        .await?;
    owner.events_until_terminal("ready").await?;
    // Anyone may attach to a named session; this one acknowledges once, then never
    // reads again.
    let mut intruder = gateway.raw().await?;
    intruder.attach("shared", Some(0)).await?;
    let attached = intruder.next_event().await?;
    ensure!(attached.kind == EventKind::Attached, "{attached:?}");
    intruder.ack("shared", 0).await?;
    // The owner's program runs to its end while the intruder reads nothing.
    owner.stop_recording();
    owner.execute(flood("shared", "flood", 20_000)).await?;
    runs_to_its_end(&mut owner, "flood").await?;
    drop(intruder);
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lead_that_keeps_the_buffer_full_past_the_timeout_loses_the_lead() -> Result<()> {
    let gateway = TestGateway::spawn_with(Config {
        lead_timeout: Duration::from_millis(500),
        ..small_buffers()
    })
    .await;
    let mut lead = gateway.raw().await?;
    lead.execute(in_session("paced", "ready", "sh", "true"))
        .await?;
    let ready = lead.events_until_terminal("ready").await?;
    let last = ready.last().context("no events")?.sequence;
    // Acknowledged mode: from now on only the lead's acknowledgements free the buffer.
    lead.ack("paced", last).await?;
    let mut watcher = gateway.raw().await?;
    watcher.attach("paced", Some(last)).await?;
    lead.execute(flood("paced", "flood", 20_000)).await?;
    // The lead neither reads nor acknowledges again. Once it has kept the program
    // waiting for the lead timeout, it no longer paces it: the program finishes, and a
    // reader that keeps up sees it end.
    watcher.stop_recording();
    runs_to_its_end(&mut watcher, "flood").await?;
    drop(lead);
    gateway.shutdown().await
}

/// Regression test for the second review (failed before the fix: an intruder that
/// executed once in the named session could lead, and took the lead from the owner,
/// who does not acknowledge, with one `ack`; the owner then received nothing until the
/// lead timeout, again and again): in a named session nobody takes the lead from a
/// lead that is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_intruder_that_executes_once_cannot_take_the_lead_by_acknowledging() -> Result<()> {
    let gateway = TestGateway::spawn_with(Config {
        // A stolen lead would hold the program far longer than the test waits.
        lead_timeout: Duration::from_secs(600),
        ..small_buffers()
    })
    .await;
    let mut owner = gateway.raw().await?;
    owner
        .execute(in_session("victim", "ready", "sh", "true"))
        .await?;
    owner.events_until_terminal("ready").await?;
    let mut intruder = gateway.raw().await?;
    intruder
        .execute(in_session("victim", "intrude", "sh", "true"))
        .await?;
    let intruded = intruder.events_until_terminal("intrude").await?;
    let last = intruded.last().context("no events")?.sequence;
    intruder.ack("victim", last).await?;
    // The intruder's ack is handled before its next frame; the refusal of that frame
    // (input for nothing running) comes back once both are.
    intruder.stdin("nothing-runs", Some("x"), false).await?;
    intruder.next_socket_error().await?;
    // The owner's program runs to its end while the intruder reads nothing more.
    owner.stop_recording();
    owner.execute(flood("victim", "flood", 20_000)).await?;
    runs_to_its_end(&mut owner, "flood").await?;
    drop(intruder);
    gateway.shutdown().await
}

/// Two sockets sending the same `execute` in one named session at the same moment (a
/// client's resend on its new socket while its old socket's frame is still being
/// handled): it runs once, however the two interleave. A third socket that replays the
/// session sees one `started`. Many rounds, to meet the interleavings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_execute_from_two_sockets_at_once_runs_once() -> Result<()> {
    let gateway = TestGateway::spawn().await;
    let mut first = gateway.raw().await?;
    let mut second = gateway.raw().await?;
    let mut witness = gateway.raw().await?;
    for round in 0..25 {
        let session = format!("twice-{round}");
        let request = ExecuteRequest {
            session: Some(session.clone()),
            ..request("once", "sh", "echo ran")
        };
        let frame = sluice_protocol::ClientFrame::Execute(request);
        let (a, b) = tokio::join!(first.send_frame(&frame), second.send_frame(&frame));
        a?;
        b?;
        // Whichever socket's execute started it, the first reads the session.
        let events = first.events_until_terminal("once").await?;
        let ended = events.last().map(|e| e.kind);
        assert_eq!(
            ended,
            Some(EventKind::Completed),
            "round {round}: {events:?}"
        );
        witness.attach(&session, Some(0)).await?;
        let replayed = witness.events_until_terminal("once").await?;
        let started = replayed
            .iter()
            .filter(|e| e.kind == EventKind::Started)
            .count();
        assert_eq!(
            started, 1,
            "round {round}: ran {started} times: {replayed:?}"
        );
        for socket in [&mut first, &mut second, &mut witness] {
            socket.detach(&session).await?;
        }
    }
    ensure!(
        !first
            .received()
            .iter()
            .chain(second.received())
            .any(|e| e.kind == EventKind::Error),
        "a refusal: {:?} {:?}",
        first.received(),
        second.received()
    );
    first.close().await?;
    second.close().await?;
    witness.close().await?;
    gateway.shutdown().await
}
