//! Sessions as sockets see them: `attach` with `since` replay (and a `gap` when the
//! ring no longer reaches back), `detach`, `ack` letting a finished session go, a
//! second socket seeing the same events, an id reused by a different request
//! (`duplicate_id`), a repeated `execute` answered from the session, and the grace
//! period after the last socket left.

use super::*;
use crate::session::Known;

/// The answer to an `attach` of `session` after `since`.
fn assert_attached(event: &Event, session: &str, since: u64) {
    assert_eq!(event.kind, EventKind::Attached, "{event:?}");
    assert_eq!(event.session.as_deref(), Some(session));
    assert_eq!(event.sequence, since);
    assert_eq!(event.resume_from, Some(since + 1));
}

#[tokio::test]
async fn attach_replays_after_since_and_detach_stops_reading() {
    let mut gateway = Gateway::start().await;
    let mut runner = gateway.connect();
    runner.execute_in("s", "one", "echo a");
    let ran = runner.execution("one").await;
    assert_consecutive(&ran, 1);
    let head = ran.len() as u64;

    let mut reader = gateway.connect();
    reader.send(json!({"type": "attach", "session": "s"}));
    assert_attached(&reader.event().await, "s", 0);
    let replayed = reader.execution("one").await;
    assert_eq!(replayed, ran, "the same events, byte for byte");

    // Attaching again moves the cursor.
    reader.send(json!({"type": "attach", "session": "s", "since": 1}));
    assert_attached(&reader.event().await, "s", 1);
    assert_eq!(reader.execution("one").await, ran[1..]);

    reader.send(json!({"type": "attach", "session": "s", "since": head + 1}));
    let past = reader.refusal(ErrorCode::BadRequest).await;
    assert_eq!(past.for_session.as_deref(), Some("s"));

    reader.send(json!({"type": "detach", "session": "s"}));
    // Detached: the session is not this socket's any more.
    reader.send(json!({"type": "stdin", "id": "one", "session": "s", "data": "x"}));
    reader.refusal(ErrorCode::UnknownSession).await;
    // Detaching twice is not an error: the next event answers the next frame.
    reader.send(json!({"type": "detach", "session": "s"}));
    reader.send_text("{");
    reader.refusal(ErrorCode::BadRequest).await;
}

#[tokio::test]
async fn a_reader_behind_the_ring_gets_a_gap_right_after_attached() {
    let mut gateway = Gateway::new(Config {
        replay_events: 4,
        ..config()
    })
    .await;
    let mut runner = gateway.connect();
    // Each `true` is two events: started and completed.
    for id in ["a", "b", "c"] {
        runner.execute_in("g", id, "true");
        assert_eq!(runner.execution(id).await.len(), 2);
    }

    let mut late = gateway.connect();
    late.send(json!({"type": "attach", "session": "g", "since": 0}));
    assert_attached(&late.event().await, "g", 0);
    let gap = late.event().await;
    assert_eq!(gap.kind, EventKind::Gap, "{gap:?}");
    assert_eq!((gap.missed_from, gap.resume_from), (Some(1), Some(3)));
    let rest = late.execution("c").await;
    assert_consecutive(&rest, 3);
    assert_eq!(rest.len(), 4);
}

#[tokio::test]
async fn a_second_socket_on_a_session_sees_the_same_events() {
    let mut gateway = Gateway::start().await;
    let mut runner = gateway.connect();
    runner.execute_in("shared", "x", r#"read line; echo "$line"; echo done >&2"#);
    let started = runner.event().await;
    assert_eq!(started.kind, EventKind::Started);

    let mut watcher = gateway.connect();
    watcher.send(json!({"type": "attach", "session": "shared"}));
    assert_attached(&watcher.event().await, "shared", 0);
    assert_eq!(watcher.event().await, started);

    runner.send(json!({"type": "stdin", "id": "x", "data": "hello\n"}));
    let mut seen_by_runner = vec![started];
    seen_by_runner.extend(runner.execution("x").await);
    let mut seen_by_watcher = vec![seen_by_runner[0].clone()];
    seen_by_watcher.extend(watcher.execution("x").await);
    assert_eq!(seen_by_watcher, seen_by_runner);
    assert_consecutive(&seen_by_runner, 1);
    assert_eq!(stdout(&seen_by_runner), "hello\n");
}

#[tokio::test]
async fn acknowledging_a_finished_gateway_made_session_lets_it_go() {
    let mut gateway = Gateway::start().await;
    let mut peer = gateway.connect();
    peer.execute("job", "echo hi");
    let events = peer.execution("job").await;
    let id = events[0].session.clone().expect("a gateway-made session");
    let last = events.last().map_or(0, |e| e.sequence);
    // Everything taken is not everything received: kept for a reconnect.
    let session = gateway.session(&id).expect("kept after its execution");

    peer.send(json!({"type": "ack", "session": id, "sequence": last}));
    tokio::time::timeout(PATIENCE, session.cancel.cancelled())
        .await
        .expect("the acknowledged session ends");
    assert!(gateway.session(&id).is_none());
    // An ack for a session this socket no longer reads is ignored, not refused.
    peer.send(json!({"type": "ack", "session": id, "sequence": last}));
    peer.send_text("[]");
    peer.refusal(ErrorCode::BadRequest).await;
}

#[tokio::test]
async fn an_id_reused_by_a_different_request_is_a_duplicate() {
    let mut gateway = Gateway::start().await;
    let mut peer = gateway.connect();
    peer.execute_in("d", "x", "echo first");
    assert_eq!(stdout(&peer.execution("x").await), "first\n");

    peer.execute_in("d", "x", "echo second");
    let duplicate = peer.refusal(ErrorCode::DuplicateId).await;
    assert_eq!(
        duplicate.id, None,
        "not the terminal event of the existing x"
    );
    assert_eq!(duplicate.for_session.as_deref(), Some("d"));
}

#[tokio::test]
async fn a_repeated_execute_is_answered_from_the_session_and_runs_once() {
    let mut gateway = Gateway::start().await;
    let mut first = gateway.connect();
    let frame = json!({
        "type": "execute", "id": "once", "language": "sh", "code": "echo ran", "session": "i"
    });
    first.send(frame.clone());
    let ran = first.execution("once").await;
    assert_eq!(stdout(&ran), "ran\n");

    // Another socket (a client reconnected) sends the same request: it reads the
    // session from the start, without an `attached`.
    let mut again = gateway.connect();
    again.send(frame.clone());
    assert_eq!(again.execution("once").await, ran);
    // The socket that already reads the session: nothing happens at all.
    first.send(frame);
    first.send_text("not json");
    first.refusal(ErrorCode::BadRequest).await;

    let session = gateway.session("i").expect("the session is open");
    let finished = session.with_execution("once", |known| matches!(known, Known::Finished));
    assert_eq!(finished, Some(true), "nothing ran a second time");
    assert_eq!(session.stream.head(), ran.len() as u64);
}

#[tokio::test(start_paused = true)]
async fn a_session_ends_when_nobody_comes_back_within_the_grace_period() {
    let grace = Duration::from_secs(10);
    let mut gateway = Gateway::new(Config {
        session_grace: grace,
        ..config()
    })
    .await;
    let mut runner = gateway.connect();
    runner.execute_in("g", "wait", "read line");
    assert_eq!(runner.event().await.kind, EventKind::Started);
    let session = gateway.session("g").expect("the session is open");
    runner.vanish().await;

    tokio::time::advance(grace / 2).await;
    assert!(!session.is_ended(), "within the grace period");
    let mut back = gateway.connect();
    back.send(json!({"type": "attach", "session": "g"}));
    assert_attached(&back.event().await, "g", 0);
    assert_eq!(back.event().await.kind, EventKind::Started);
    back.vanish().await;

    // The grace counts from the last socket to leave.
    tokio::time::advance(grace * 3 / 4).await;
    assert!(!session.is_ended(), "the second socket's grace is not over");
    tokio::time::timeout(PATIENCE, session.cancel.cancelled())
        .await
        .expect("the session ends after the grace period");
    assert!(session.is_ended());
    assert!(gateway.session("g").is_none());
    let mut late = gateway.connect();
    late.send(json!({"type": "attach", "session": "g"}));
    late.refusal(ErrorCode::UnknownSession).await;
}
