//! The Rust client's sessions against a real gateway: `attach`, and the transparent
//! reconnect with resume, with a proxy between client and gateway that cuts the TCP
//! connection mid-stream.

use anyhow::{bail, ensure, Context as _, Result};
use futures::StreamExt as _;
use sluice_client::{is_synthetic, Client, ClientError, ClientOptions, Reconnect, SessionEvents};
use sluice_gateway::Config;
use sluice_protocol::{ErrorCode, Event, EventKind, ExecuteRequest};
use sluice_tests::proxy::Proxy;
use sluice_tests::{
    drain, next_within, numbered_lines, request, run, text_of, unique_marker, wait_for_output,
    wait_until_gone, wait_until_running, within, LineChecker, TestGateway,
};
use std::time::Duration;

/// Checks that a stream's events come one sequence after the other.
#[derive(Debug, Default)]
struct Sequence {
    last: u64,
}

impl Sequence {
    fn accept(&mut self, event: &Event) -> Result<()> {
        ensure!(
            event.sequence == self.last + 1,
            "sequence {} after {}: an event was lost or repeated: {event:?}",
            event.sequence,
            self.last
        );
        self.last = event.sequence;
        Ok(())
    }
}

/// Client options with a reconnect policy suited to tests: quick first attempts, and a
/// bound of `give_up_after`.
fn options(give_up_after: Duration) -> ClientOptions {
    ClientOptions {
        reconnect: Some(Reconnect {
            initial_delay: Duration::from_millis(50),
            max_delay: Duration::from_millis(200),
            give_up_after,
            ..Reconnect::default()
        }),
        ..ClientOptions::default()
    }
}

async fn connect(url: &str, options: ClientOptions) -> Result<Client> {
    within("the client to connect", Client::connect_with(url, options))
        .await?
        .with_context(|| format!("connecting to {url}"))
}

/// The next event of an attached session, within the harness's patience.
async fn next_of(events: &mut SessionEvents) -> Result<Event> {
    within("the next event of the session", events.next())
        .await?
        .context("the session's stream ended")
}

fn in_session(session: &str, id: &str, language: &str, code: &str) -> ExecuteRequest {
    ExecuteRequest {
        session: Some(session.into()),
        ..request(id, language, code)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_10_mb_output_cut_four_times_arrives_whole_and_once() -> Result<()> {
    const LINES: u32 = 1_000_000; // 10 MB
    let gateway = TestGateway::spawn().await;
    let proxy = Proxy::start(gateway.addr()).await?;
    // Every connection is torn down after 2 MB from the gateway (mid-frame), four times.
    proxy.cut_every(2_000_000, 4);
    let client = connect(
        &proxy.url(),
        options(sluice_tests::patient(Duration::from_secs(20))),
    )
    .await?;
    let mut execution = client
        .execute(request("big", "python", &numbered_lines(LINES)))
        .await?;
    let mut sequence = Sequence::default();
    let mut lines = LineChecker::default();
    loop {
        let event = next_within(&mut execution).await?;
        sequence.accept(&event)?;
        match event.kind {
            EventKind::Started => {}
            EventKind::Stdout => lines.feed(&event.data)?,
            EventKind::Completed => {
                ensure!(event.exit_code == Some(0), "{event:?}");
                break;
            }
            other => bail!("unexpected {other} event: {event:?}"),
        }
    }
    ensure!(
        lines.next == LINES && lines.partial.is_empty(),
        "{} lines",
        lines.next
    );
    ensure!(
        execution.next().await.is_none(),
        "events after the terminal"
    );
    ensure!(proxy.cuts() == 4, "{} cuts", proxy.cuts());
    ensure!(proxy.accepted() >= 5, "{} connections", proxy.accepted());
    client.close().await?;
    gateway.shutdown().await
}

const ECHO: &str = "import sys\n\
                    for line in sys.stdin:\n\
                    \x20   print('echo:', line.rstrip('\\n'), flush=True)\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdin_and_cancel_reach_an_execution_across_reconnects() -> Result<()> {
    let gateway = TestGateway::spawn().await;
    let proxy = Proxy::start(gateway.addr()).await?;
    let client = connect(
        &proxy.url(),
        options(sluice_tests::patient(Duration::from_secs(20))),
    )
    .await?;
    let mut socket_events = client.socket_events().context("socket events taken")?;
    let mut execution = client.execute(request("echo", "python", ECHO)).await?;
    let mut events = Vec::new();
    execution.send_stdin("one\n").await?;
    wait_for_output(&mut execution, &mut events, "echo: one\n").await?;

    ensure!(proxy.cut() == 1, "no connection to cut");
    // Input written to a socket that then drops may be lost, so wait until the client
    // has noticed the cut (it is reconnecting) before typing again.
    proxy.wait_for_connections(2).await?;
    execution.send_stdin("two\n").await?;
    wait_for_output(&mut execution, &mut events, "echo: two\n").await?;

    // A cancel is sent again after a reconnect if need be: no need to wait.
    ensure!(proxy.cut() == 1, "no connection to cut");
    execution.cancel().await?;
    drain(&mut execution, &mut events).await?;
    let mut sequence = Sequence::default();
    for event in &events {
        sequence.accept(event)?;
    }
    let terminal = events.last().context("no events")?;
    ensure!(terminal.kind == EventKind::Cancelled, "{terminal:?}");
    ensure!(!is_synthetic(terminal));
    assert_eq!(
        text_of(&events, EventKind::Stdout),
        "echo: one\necho: two\n"
    );
    ensure!(proxy.accepted() >= 3, "{} connections", proxy.accepted());
    // A cut takes effect a moment after `cut` returns, so the first cancel may have
    // reached the gateway after all: then the one the client sent again is refused, and
    // that is the only thing that may have been.
    let session = terminal.session.clone();
    while let Some(event) = socket_events.try_recv() {
        ensure!(
            event.code == Some(ErrorCode::UnknownExecution) && event.for_session == session,
            "unexpected socket event: {event:?}"
        );
    }
    client.close().await?;
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_client_attaches_and_sees_the_same_events() -> Result<()> {
    let gateway = TestGateway::spawn().await;
    let runner = gateway.client().await?;
    let watcher = gateway.client().await?;
    let code = "echo ready; read line; for i in $(seq 1 200); do echo \"$line $i\"; done";
    let mut execution = runner.execute(request("job", "bash", code)).await?;
    let mut seen = Vec::new();
    wait_for_output(&mut execution, &mut seen, "ready\n").await?;
    let session = execution.session().context("no session yet")?.to_owned();

    let mut attached = within("the attach", watcher.attach(&session, None)).await??;
    assert_eq!(attached.session(), session);
    execution.send_stdin("line\n").await?;
    let mut events = seen;
    drain(&mut execution, &mut events).await?;
    // The watcher gets the same events, byte for byte, from the first one on.
    let mut watched = Vec::new();
    while watched.len() < events.len() {
        watched.push(next_of(&mut attached).await?);
    }
    assert_eq!(watched, events);
    assert_eq!(attached.last_sequence(), events.len() as u64);
    let out = text_of(&events, EventKind::Stdout);
    assert_eq!(out.lines().count(), 201, "{out}");
    attached.detach().await.context("detach")?;
    runner.close().await.context("runner close")?;
    watcher.close().await.context("watcher close")?;
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attaching_an_unknown_session_fails_clearly() -> Result<()> {
    let gateway = TestGateway::spawn().await;
    let client = gateway.client().await?;
    let mut socket_events = client.socket_events().context("socket events taken")?;
    match within("the attach", client.attach("no-such-session", None)).await? {
        Err(ClientError::AttachRefused {
            session,
            code,
            message,
        }) => {
            assert_eq!(session, "no-such-session");
            assert_eq!(code, ErrorCode::UnknownSession);
            assert!(message.contains("no-such-session"), "{message}");
        }
        other => bail!("expected AttachRefused, got {other:?}"),
    }
    // A session that exists, but not that far.
    let outcome = sluice_tests::run(&client, in_session("known", "hi", "sh", "echo hi")).await?;
    assert_eq!(outcome.stdout, "hi\n");
    match within("the attach", client.attach("known", Some(1000))).await? {
        Err(ClientError::AttachRefused { code, .. }) => assert_eq!(code, ErrorCode::BadRequest),
        other => bail!("expected AttachRefused, got {other:?}"),
    }
    // A name the gateway would refuse is refused before anything is sent.
    assert!(matches!(
        client.attach("", None).await,
        Err(ClientError::InvalidSession { .. })
    ));
    // The refusals were the attaches' answers, not socket events; the client still works.
    let outcome = sluice_tests::run(&client, request("after", "sh", "echo ok")).await?;
    assert_eq!(outcome.stdout, "ok\n");
    assert_eq!(socket_events.try_recv(), None);
    client.close().await?;
    gateway.shutdown().await
}

/// Reads `events` up to and including sequence `last`, and checks that they are exactly
/// the session's events after `since`.
async fn expect_session_events(
    events: &mut SessionEvents,
    session: &[Event],
    since: u64,
    last: u64,
) -> Result<()> {
    let mut got = Vec::new();
    while got.last().is_none_or(|event: &Event| event.sequence < last) {
        got.push(next_of(events).await?);
    }
    let expected: Vec<&Event> = session
        .iter()
        .filter(|event| event.sequence > since)
        .collect();
    ensure!(
        got.iter().eq(expected.iter().copied()),
        "after {since}: got {:?}, expected {:?}",
        got.iter().map(|e| e.sequence).collect::<Vec<_>>(),
        expected.iter().map(|e| e.sequence).collect::<Vec<_>>()
    );
    ensure!(events.last_sequence() == last);
    Ok(())
}

/// Several subscribers to one session on one client, asking at once for different
/// starting points, and one more later while the client reads the session already (the
/// gateway then rewinds the socket, and replays what the others have): each receives
/// exactly the session's events after its own `since`, in order, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_of_one_session_each_get_the_events_after_their_since() -> Result<()> {
    let gateway = TestGateway::spawn().await;
    let client = gateway.client().await?;
    let mut socket_events = client.socket_events().context("socket events taken")?;
    let code = "for i in 1 2 3 4 5 6; do echo $i; done";
    let first = run(&client, in_session("shared", "first", "sh", code)).await?;
    let head = first.terminal.sequence;
    ensure!(head >= 3, "{head} events");
    let (all, middle, end) = within("the attaches", async {
        tokio::join!(
            client.attach("shared", None),
            client.attach("shared", Some(head / 2)),
            client.attach("shared", Some(head)),
        )
    })
    .await?;
    let (mut all, mut middle, mut end) = (all?, middle?, end?);
    let second = run(&client, in_session("shared", "second", "sh", "echo more")).await?;
    let last = second.terminal.sequence;
    let mut rewound = within("the attach", client.attach("shared", Some(1))).await??;
    let session: Vec<Event> = first.events.iter().chain(&second.events).cloned().collect();
    expect_session_events(&mut all, &session, 0, last).await?;
    expect_session_events(&mut middle, &session, head / 2, last).await?;
    expect_session_events(&mut end, &session, head, last).await?;
    expect_session_events(&mut rewound, &session, 1, last).await?;
    // One more event reaches all four once.
    let third = run(&client, in_session("shared", "third", "sh", "true")).await?;
    for stream in [&mut all, &mut middle, &mut end, &mut rewound] {
        let event = next_of(stream).await?;
        ensure!(event.sequence == last + 1, "{event:?}");
        ensure!(event == third.events[0], "{event:?}");
    }
    assert_eq!(socket_events.try_recv(), None);
    client.close().await?;
    gateway.shutdown().await
}

/// A client follows another client's gateway-made session to its end and detaches; the
/// gateway may have let go of the finished session first, and then refuses the `detach`:
/// that refusal is the client's business, not a socket event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn following_a_gateway_made_session_to_its_end_leaves_no_refusal_behind() -> Result<()> {
    let gateway = TestGateway::spawn().await;
    let runner = gateway.client().await?;
    let watcher = gateway.client().await?;
    let mut socket_events = watcher.socket_events().context("socket events taken")?;
    for round in 0..5 {
        let id = format!("job{round}");
        let mut execution = runner
            .execute(request(&id, "sh", "read line; echo \"$line\""))
            .await?;
        let started = next_within(&mut execution).await?;
        let session = started.session.clone().context("no session")?;
        let mut events = within("the attach", watcher.attach(&session, None)).await??;
        execution.send_stdin("hi\n").await?;
        let outcome = within("the run", execution.wait()).await??;
        ensure!(outcome.stdout == "hi\n", "{outcome:?}");
        let mut watched = Vec::new();
        while watched.len() < outcome.events.len() + 1 {
            watched.push(next_of(&mut events).await?);
        }
        ensure!(watched[0] == started && watched[1..] == outcome.events[..]);
        events.detach().await?;
        // Attaching again: refused once the session has ended, accepted before.
        match within("the attach", watcher.attach(&session, None)).await? {
            Ok(again) => again.detach().await?,
            Err(ClientError::AttachRefused { code, .. }) => {
                ensure!(code == ErrorCode::UnknownSession, "{code}");
            }
            Err(other) => return Err(other.into()),
        }
    }
    // Refusals arrive in the order of the frames: once this one is in, any refusal of
    // the detaches above has arrived too.
    match within("the attach", watcher.attach("no-such-session", None)).await? {
        Err(ClientError::AttachRefused { code, .. }) => {
            ensure!(code == ErrorCode::UnknownSession, "{code}");
        }
        other => bail!("expected AttachRefused, got {other:?}"),
    }
    assert_eq!(socket_events.try_recv(), None);
    runner.close().await?;
    watcher.close().await?;
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attached_session_resumes_across_cuts() -> Result<()> {
    const LINES: u32 = 200_000; // 2 MB, within the gateway's replay buffer
    let gateway = TestGateway::spawn().await;
    let runner = gateway.client().await?;
    // Open the session and get a first event in it.
    let first =
        sluice_tests::run(&runner, in_session("watched", "hello", "sh", "echo hello")).await?;
    ensure!(first.success());

    let proxy = Proxy::start(gateway.addr()).await?;
    proxy.cut_every(300_000, 3);
    let watcher = connect(
        &proxy.url(),
        options(sluice_tests::patient(Duration::from_secs(20))),
    )
    .await?;
    let mut attached = within("the attach", watcher.attach("watched", Some(0))).await??;
    let big = runner
        .execute(in_session(
            "watched",
            "big",
            "python",
            &numbered_lines(LINES),
        ))
        .await?;
    let outcome = within("the big run", big.wait()).await??;
    ensure!(outcome.success());

    let mut sequence = Sequence::default();
    let mut lines = LineChecker::default();
    loop {
        let event = next_of(&mut attached).await?;
        sequence.accept(&event)?;
        if event.id.as_deref() == Some("big") {
            if event.kind == EventKind::Stdout {
                lines.feed(&event.data)?;
            }
            if event.is_terminal() {
                break;
            }
        }
    }
    ensure!(lines.next == LINES, "{} lines", lines.next);
    ensure!(proxy.cuts() == 3, "{} cuts", proxy.cuts());
    attached.detach().await?;
    watcher.close().await?;
    runner.close().await?;
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_attach_is_told_what_the_gateway_no_longer_has() -> Result<()> {
    let gateway = TestGateway::spawn_with(Config {
        replay_events: 10,
        ..Config::default()
    })
    .await;
    let runner = gateway.client().await?;
    // One event per line: each line is written after the previous one was read.
    let mut execution = runner
        .execute(in_session(
            "short-memory",
            "lines",
            "bash",
            "for i in $(seq 1 30); do echo $i; read; done",
        ))
        .await?;
    let mut events = Vec::new();
    for i in 1..=30 {
        wait_for_output(&mut execution, &mut events, &format!("{i}\n")).await?;
        execution.send_stdin("\n").await?;
    }
    let outcome = within("the run", execution.wait()).await??;
    let head = outcome.terminal.sequence;

    let watcher = gateway.client().await?;
    let mut late = within("the attach", watcher.attach("short-memory", None)).await??;
    let gap = next_of(&mut late).await?;
    assert_eq!(gap.kind, EventKind::Gap, "{gap:?}");
    assert_eq!(gap.missed_from, Some(1));
    assert_eq!(
        gap.resume_from,
        Some(head - 9),
        "the last ten are still buffered"
    );
    for expected in head - 9..=head {
        let event = next_of(&mut late).await?;
        assert_eq!(event.sequence, expected, "{event:?}");
    }
    runner.close().await?;
    watcher.close().await?;
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnecting_gives_up_after_its_bound_when_the_gateway_is_unreachable() -> Result<()> {
    let gateway = TestGateway::spawn_with(Config {
        session_grace: Duration::from_millis(300),
        ..Config::default()
    })
    .await;
    let proxy = Proxy::start(gateway.addr()).await?;
    let client = connect(&proxy.url(), options(Duration::from_secs(1))).await?;
    let marker = unique_marker("partitioned");
    let mut execution = client
        .execute(in_session(
            "partitioned",
            "sleeper",
            "bash",
            &format!("echo up; exec -a {marker} sleep 1000"),
        ))
        .await?;
    let mut events = Vec::new();
    wait_for_output(&mut execution, &mut events, "up\n").await?;
    let mut attached = within("the attach", client.attach("partitioned", None)).await??;
    wait_until_running(&marker).await?;

    proxy.refuse(true);
    ensure!(proxy.cut() == 1, "no connection to cut");
    // The execution ends with one synthetic terminal event saying why.
    let last = loop {
        let event = next_within(&mut execution).await?;
        if event.is_terminal() {
            break event;
        }
    };
    ensure!(is_synthetic(&last), "{last:?}");
    ensure!(last.data.contains("gave up reconnecting"), "{}", last.data);
    ensure!(execution.next().await.is_none());
    // So does the attached session's stream (after replaying what it had not seen).
    let last = loop {
        let event = next_of(&mut attached).await?;
        if is_synthetic(&event) {
            break event;
        }
    };
    ensure!(last.kind == EventKind::Error, "{last:?}");
    ensure!(attached.next().await.is_none());
    ensure!(client.is_closed());
    match client.execute_code_stream("sh", "true").await {
        Err(ClientError::ConnectionClosed { reason }) => {
            ensure!(reason.contains("gave up reconnecting"), "{reason}");
        }
        other => bail!("expected ConnectionClosed, got {other:?}"),
    }
    ensure!(proxy.accepted() >= 2, "the client never tried again");
    // Nobody came back within the grace period: the gateway ended the session.
    wait_until_gone(&marker).await?;
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnecting_gives_up_when_the_gateway_has_shut_down() -> Result<()> {
    let gateway = TestGateway::spawn().await;
    let proxy = Proxy::start(gateway.addr()).await?;
    let client = connect(&proxy.url(), options(Duration::from_secs(1))).await?;
    let outcome = sluice_tests::run(&client, in_session("kept", "hi", "sh", "echo hi")).await?;
    ensure!(outcome.success());
    let mut attached = within("the attach", client.attach("kept", None)).await??;
    // Replayed from the start.
    let mut replayed = Vec::new();
    while replayed.len() < outcome.events.len() {
        replayed.push(next_of(&mut attached).await?);
    }
    assert_eq!(replayed, outcome.events);

    // New connections find nothing behind the proxy (refusing rather than forwarding to
    // a freed port that another test's gateway may have taken).
    proxy.refuse(true);
    gateway.shutdown().await?;
    let last = next_of(&mut attached).await?;
    ensure!(
        is_synthetic(&last) && last.kind == EventKind::Error,
        "{last:?}"
    );
    ensure!(last.data.contains("gave up reconnecting"), "{}", last.data);
    ensure!(attached.next().await.is_none());
    ensure!(client.is_closed());
    Ok(())
}

/// A reconnect can attach before the gateway has noticed that the old socket is gone:
/// the new socket is then not the session's lead. When the old one is removed, the new
/// one must take the lead (and its acknowledged mode), or the program would block for
/// good once the replay buffer is full.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_whose_lead_leaves_after_a_resume_still_flows() -> Result<()> {
    let gateway = TestGateway::spawn_with(Config {
        replay_events: 4,
        replay_bytes: 64 * 1024,
        ..Config::default()
    })
    .await;
    let mut old = gateway.raw().await?;
    old.execute(request("flood", "python", &numbered_lines(200_000)))
        .await?;
    let first = old.next_event().await?;
    let session = first.session.clone().context("no session")?;
    old.ack(&session, first.sequence).await?;
    // The new socket attaches while the old one is still there: it is not the lead.
    let mut new = gateway.raw().await?;
    new.attach(&session, Some(first.sequence)).await?;
    let replayed = new.next_event().await?;
    new.ack(&session, replayed.sequence).await?;
    drop(old);
    loop {
        let event = new.next_event().await?;
        new.ack(&session, event.sequence).await?;
        if event.is_terminal() {
            ensure!(event.kind == EventKind::Completed, "{event:?}");
            break;
        }
    }
    gateway.shutdown().await
}
