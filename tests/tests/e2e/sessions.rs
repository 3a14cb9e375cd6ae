//! Sessions over real sockets: fan-out to many attached sockets, resume after a cut
//! connection with nothing lost or repeated, announced gaps, the grace period, and
//! idempotent submits.

use anyhow::{bail, ensure, Context as _, Result};
use sluice_gateway::Config;
use sluice_protocol::{AttachFrame, ClientFrame, ErrorCode, Event, EventKind, ExecuteRequest};
use sluice_tests::{
    assert_stream_ok, events_of, numbered_lines, processes_with, request, text_of, unique_marker,
    wait_until_gone, LineChecker, RawSocket, TestGateway,
};
use std::time::Duration;

/// `request` run in the named session `session`.
fn in_session(session: &str, id: &str, language: &str, code: &str) -> ExecuteRequest {
    ExecuteRequest {
        session: Some(session.into()),
        ..request(id, language, code)
    }
}

/// Follows one session's numbering across reconnects: every event must be the next
/// sequence, or a `gap` that says exactly what was skipped.
#[derive(Debug, Default)]
struct Follower {
    last: u64,
    gaps: Vec<(u64, u64)>,
}

impl Follower {
    fn accept(&mut self, event: &Event) -> Result<()> {
        if event.kind == EventKind::Attached {
            // The answer to our attach: it continues from where we said we were.
            ensure!(
                event.sequence == self.last,
                "attached after {} but we had {}",
                event.sequence,
                self.last
            );
            return Ok(());
        }
        if event.kind == EventKind::Gap {
            let (from, to) = (
                event.missed_from.context("gap without missed_from")?,
                event.resume_from.context("gap without resume_from")?,
            );
            ensure!(
                from == self.last + 1,
                "gap starts at {from}, after {}",
                self.last
            );
            self.gaps.push((from, to));
            self.last = to - 1;
            return Ok(());
        }
        ensure!(
            event.sequence == self.last + 1,
            "sequence {} after {}: {event:?}",
            event.sequence,
            self.last
        );
        self.last = event.sequence;
        Ok(())
    }
}

/// The next event of `session` on `socket` (skipping nothing: the socket must read only
/// that session).
async fn next_of(socket: &mut RawSocket, session: &str) -> Result<Event> {
    let event = socket.next_event().await?;
    ensure!(
        event.session.as_deref() == Some(session),
        "an event of another stream: {event:?}"
    );
    Ok(event)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_attached_sockets_receive_identical_gap_free_streams() -> Result<()> {
    let gateway = TestGateway::spawn().await;
    let mut runner = gateway.raw().await?;
    runner
        .execute(in_session("fan", "hello", "sh", "echo hello"))
        .await?;
    runner.events_until_terminal("hello").await?;
    let mut watchers = Vec::new();
    for _ in 0..19 {
        let mut watcher = gateway.raw().await?;
        watcher.attach("fan", Some(0)).await?;
        watchers.push(watcher);
    }
    // Two executions stream at once, their events interleaved in the session.
    let lines = |tag: &str| format!("for i in $(seq 1 400); do echo {tag}-$i; done");
    runner
        .execute(in_session("fan", "a", "bash", &lines("a")))
        .await?;
    runner
        .execute(in_session("fan", "b", "bash", &lines("b")))
        .await?;
    runner.wait_for_terminals(&["a", "b"]).await?;
    let reference: Vec<Event> = runner.received().to_vec();
    assert_stream_ok(&reference);
    for expected in ["a", "b"] {
        let out = text_of(
            &events_of(&reference, expected)
                .into_iter()
                .cloned()
                .collect::<Vec<_>>(),
            EventKind::Stdout,
        );
        assert_eq!(out.lines().count(), 400, "{expected}: {out}");
    }
    for (n, watcher) in watchers.iter_mut().enumerate() {
        // The answer to its attach first, then exactly the runner's stream: same types,
        // data, sequences and timestamps.
        while watcher.received().len() < reference.len() + 1 {
            watcher.next_event().await?;
        }
        let attached = &watcher.received()[0];
        assert_eq!(attached.kind, EventKind::Attached, "{attached:?}");
        assert_eq!((attached.sequence, attached.resume_from), (0, Some(1)));
        assert_eq!(
            &watcher.received()[1..],
            &reference[..],
            "watcher {n} saw a different stream"
        );
    }
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_cut_off_mid_stream_resumes_with_every_byte_once() -> Result<()> {
    const LINES: u32 = 1_000_000; // 10 MB
    let gateway = TestGateway::spawn().await;
    let mut socket = gateway.raw().await?;
    socket.stop_recording();
    socket
        .execute(request("big", "python", &numbered_lines(LINES)))
        .await?;
    let first = socket.next_event().await?;
    ensure!(first.kind == EventKind::Started, "{first:?}");
    let session = first.session.clone().context("no session")?;
    let mut follower = Follower::default();
    follower.accept(&first)?;
    // Acknowledging makes the gateway keep what is in flight until it is received.
    socket.ack(&session, first.sequence).await?;
    let mut lines = LineChecker::default();
    let mut cuts = 0;
    let mut since_cut = 0_usize;
    loop {
        let event = next_of(&mut socket, &session).await?;
        follower.accept(&event)?;
        match event.kind {
            EventKind::Attached => {}
            EventKind::Stdout => {
                lines.feed(&event.data)?;
                since_cut += event.data.len();
                socket.ack(&session, event.sequence).await?;
            }
            EventKind::Completed => break,
            other => bail!("unexpected {other} event: {event:?}"),
        }
        // Every 2 MB, the TCP connection drops without a close handshake.
        if since_cut >= 2_000_000 && cuts < 4 {
            drop(socket);
            socket = gateway.raw().await?;
            socket.stop_recording();
            socket.attach(&session, Some(follower.last)).await?;
            cuts += 1;
            since_cut = 0;
        }
    }
    ensure!(cuts == 4, "only {cuts} cuts happened");
    ensure!(follower.gaps.is_empty(), "gaps: {:?}", follower.gaps);
    ensure!(
        lines.next == LINES && lines.partial.is_empty(),
        "{} lines",
        lines.next
    );
    gateway.shutdown().await
}

/// An `execute` (or `attach`) with `ack` keeps every event the client has not
/// acknowledged from the very first on: a connection cut before the client's first
/// `ack` could reach the gateway resumes without a gap, in a gateway-made session and
/// in a named one. Without it, what the gateway had written to the dead socket by then
/// was no longer kept once the buffer filled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_before_the_first_ack_loses_nothing_when_the_execute_says_it_acknowledges(
) -> Result<()> {
    const LINES: u32 = 1_000_000; // 10 MB: far more events than the buffer holds
    let gateway = TestGateway::spawn_with(Config {
        replay_events: 64,
        ..Config::default()
    })
    .await;
    for named in [false, true] {
        let mut socket = gateway.raw().await?;
        socket.stop_recording();
        let mut execute = request("kept", "python", &numbered_lines(LINES));
        if named {
            execute.session = Some(unique_marker("acknowledged"));
        }
        execute.ack = true;
        socket.execute(execute).await?;
        let started = socket.next_event().await?;
        ensure!(started.kind == EventKind::Started, "{started:?}");
        let session = started.session.clone().context("no session")?;
        // The client reads some output, never acknowledges it, and loses the socket.
        let output = next_of(&mut socket, &session).await?;
        ensure!(output.kind == EventKind::Stdout, "{output:?}");
        drop(socket);

        let mut socket = gateway.raw().await?;
        socket.stop_recording();
        socket
            .send_frame(&ClientFrame::Attach(AttachFrame {
                session: session.clone(),
                since: Some(started.sequence),
                workspace: false,
                ack: true,
            }))
            .await?;
        let mut follower = Follower {
            last: started.sequence,
            gaps: Vec::new(),
        };
        let mut lines = LineChecker::default();
        loop {
            let event = next_of(&mut socket, &session).await?;
            follower.accept(&event)?;
            match event.kind {
                EventKind::Attached | EventKind::Gap => {}
                EventKind::Stdout => {
                    lines.feed(&event.data)?;
                    socket.ack(&session, event.sequence).await?;
                }
                EventKind::Completed => break,
                other => bail!("unexpected {other} event: {event:?}"),
            }
        }
        ensure!(
            follower.gaps.is_empty(),
            "named {named}: gaps {:?}",
            follower.gaps
        );
        ensure!(
            lines.next == LINES && lines.partial.is_empty(),
            "named {named}: {} lines",
            lines.next
        );
    }
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resuming_from_before_the_buffer_announces_the_gap_then_the_rest() -> Result<()> {
    let gateway = TestGateway::spawn_with(Config {
        replay_events: 10,
        ..Config::default()
    })
    .await;
    let mut runner = gateway.raw().await?;
    // One event per line: each line is written after the previous one was read.
    runner
        .execute(in_session(
            "short-memory",
            "lines",
            "bash",
            "for i in $(seq 1 30); do echo $i; read; done",
        ))
        .await?;
    let mut last = None;
    for _ in 1..=30 {
        let out = runner
            .next_event_where(|e| e.kind == EventKind::Stdout)
            .await?;
        last = Some(out);
        runner.stdin("lines", Some("\n"), false).await?;
    }
    let events = runner.events_until_terminal("lines").await?;
    let head = events.last().map(|e| e.sequence).context("no terminal")?;
    ensure!(last.is_some());

    let mut late = gateway.raw().await?;
    late.attach("short-memory", Some(0)).await?;
    let attached = late.next_event().await?;
    assert_eq!(attached.kind, EventKind::Attached, "{attached:?}");
    assert_eq!(attached.session.as_deref(), Some("short-memory"));
    let gap = late.next_event().await?;
    assert_eq!(gap.kind, EventKind::Gap, "{gap:?}");
    assert_eq!(gap.session.as_deref(), Some("short-memory"));
    assert_eq!(gap.missed_from, Some(1));
    let resume = gap.resume_from.context("no resume_from")?;
    assert_eq!(resume, head - 9, "the last ten events are still buffered");
    let mut follower = Follower::default();
    follower.accept(&gap)?;
    for _ in resume..=head {
        let event = late.next_event().await?;
        follower.accept(&event)?;
    }
    assert_eq!(follower.last, head);
    late.assert_still_works().await?;
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn within_the_grace_period_a_session_waits_and_another_socket_resumes_it() -> Result<()> {
    let gateway = TestGateway::spawn().await;
    let mut first = gateway.raw().await?;
    first
        .execute(in_session(
            "kept",
            "echo",
            "sh",
            "echo ready; read line; echo got $line",
        ))
        .await?;
    first.wait_for_stdout("echo", "ready\n").await?;
    let seen = first.received().last().map(|e| e.sequence).unwrap_or(0);
    drop(first);

    // The program still runs; a new socket resumes the session and types into it.
    let mut second = gateway.raw().await?;
    second.attach("kept", Some(seen)).await?;
    second
        .send_json(&serde_json::json!({
            "type": "stdin", "id": "echo", "session": "kept", "data": "hello\n", "eof": true
        }))
        .await?;
    let rest = second.events_until_terminal("echo").await?;
    assert_eq!(rest[0].sequence, seen + 1, "{rest:?}");
    assert_eq!(text_of(&rest, EventKind::Stdout), "got hello\n");
    assert_eq!(rest.last().and_then(|e| e.exit_code), Some(0));
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_grace_period_the_session_ends_and_its_execution_is_cancelled() -> Result<()> {
    let gateway = TestGateway::spawn_with(Config {
        session_grace: Duration::from_millis(200),
        ..Config::default()
    })
    .await;
    let mut socket = gateway.raw().await?;
    let marker = unique_marker("grace");
    socket
        .execute(in_session(
            "brief",
            "sleeper",
            "bash",
            &format!("exec -a {marker} sleep 1000"),
        ))
        .await?;
    socket.started_and_running(&marker).await?;
    drop(socket);
    wait_until_gone(&marker).await?;

    let mut late = gateway.raw().await?;
    late.attach("brief", Some(0)).await?;
    let refusal = late.next_event().await?;
    assert_eq!(refusal.code, Some(ErrorCode::UnknownSession), "{refusal:?}");
    assert_eq!(refusal.id, None);
    assert_eq!(refusal.session, None);
    assert_eq!(
        refusal.for_session.as_deref(),
        Some("brief"),
        "names the session asked for"
    );
    ensure!(processes_with(&marker).is_empty());
    late.assert_still_works().await?;
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_execute_repeated_in_a_session_runs_once() -> Result<()> {
    let gateway = TestGateway::spawn().await;
    let mut socket = gateway.raw().await?;
    let once = || in_session("idem", "job", "sh", "echo ran");
    socket.execute(once()).await?;
    socket.execute(once()).await?;
    let events = socket.events_until_terminal("job").await?;
    assert_eq!(text_of(&events, EventKind::Stdout), "ran\n");
    socket.assert_still_works().await?;
    // A reconnecting client that sends the same execute gets the run replayed, not a
    // second run.
    let mut again = gateway.raw().await?;
    again.execute(once()).await?;
    let replayed = again.events_until_terminal("job").await?;
    assert_eq!(replayed, events);
    let started = events_of(socket.received(), "job")
        .iter()
        .chain(events_of(again.received(), "job").iter())
        .filter(|e| e.kind == EventKind::Started)
        .count();
    assert_eq!(started, 2, "one run, seen once on each socket");
    assert_stream_ok(socket.received());
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_attached_socket_may_cancel_and_a_detached_one_hears_nothing() -> Result<()> {
    let gateway = TestGateway::spawn().await;
    let mut owner = gateway.raw().await?;
    let marker = unique_marker("remote-cancel");
    owner
        .execute(in_session(
            "shared-control",
            "long",
            "bash",
            &format!("echo up; exec -a {marker} sleep 1000"),
        ))
        .await?;
    owner.wait_for_stdout("long", "up\n").await?;
    let mut helper = gateway.raw().await?;
    let mut leaver = gateway.raw().await?;
    helper.attach("shared-control", None).await?;
    leaver.attach("shared-control", None).await?;
    leaver.detach("shared-control").await?;
    // Detaching again changes nothing and is not refused: the next thing the socket
    // hears about is its own refused cancel (it is not attached any more).
    leaver.detach("shared-control").await?;
    leaver
        .send_json(
            &serde_json::json!({"type": "cancel", "id": "long", "session": "shared-control"}),
        )
        .await?;
    let refusal = leaver.next_socket_error().await?;
    assert_eq!(refusal.code, Some(ErrorCode::UnknownSession));
    assert_eq!(refusal.for_session.as_deref(), Some("shared-control"));
    helper
        .send_json(
            &serde_json::json!({"type": "cancel", "id": "long", "session": "shared-control"}),
        )
        .await?;
    let events = owner.events_until_terminal("long").await?;
    assert_eq!(events.last().map(|e| e.kind), Some(EventKind::Cancelled));
    wait_until_gone(&marker).await?;
    let seen_by_helper = helper.events_until_terminal("long").await?;
    assert_eq!(
        seen_by_helper.last().map(|e| e.kind),
        Some(EventKind::Cancelled)
    );
    // The leaver got the replay up to its detach at most, never the terminal.
    ensure!(
        events_of(leaver.received(), "long")
            .iter()
            .all(|e| !e.is_terminal()),
        "a detached socket received the terminal event"
    );
    // Without `session`, stdin and cancel only find executions this socket started.
    helper.cancel("long").await?;
    let refusal = helper.next_socket_error().await?;
    assert_eq!(refusal.code, Some(ErrorCode::UnknownExecution));
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_execute_naming_a_gateway_made_session_is_refused() -> Result<()> {
    let gateway = TestGateway::spawn().await;
    let mut socket = gateway.raw().await?;
    socket.execute(request("lone", "sh", "echo lone")).await?;
    let events = socket.events_until_terminal("lone").await?;
    let session = events[0].session.clone().context("no session")?;
    socket
        .execute(in_session(&session, "second", "sh", "echo second"))
        .await?;
    let refusal = socket.next_socket_error().await?;
    assert_eq!(refusal.code, Some(ErrorCode::BadRequest), "{refusal:?}");
    assert_eq!(refusal.id.as_deref(), Some("second"));
    assert_eq!(refusal.for_session.as_deref(), Some(session.as_str()));
    socket.assert_still_works().await?;
    gateway.shutdown().await
}
