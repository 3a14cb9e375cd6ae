//! Frames one socket sends: refusals of what does not decode or is not allowed (on the
//! socket's own stream, with the right code, and the socket goes on working), an
//! `execute` from `started` to its terminal event, and `stdin`/`cancel` routed by id
//! with and without a session.

use super::*;

#[tokio::test]
async fn undecodable_frames_are_refused_on_the_own_stream_and_the_socket_goes_on() {
    let mut gateway = Gateway::new(Config {
        max_frame_bytes: 4_096,
        ..config()
    })
    .await;
    let mut peer = gateway.connect();

    peer.send_text("this is not JSON");
    let not_json = peer.refusal(ErrorCode::BadRequest).await;
    assert_eq!(not_json.id, None);

    // An `execute` with a usable id is refused terminally for that id.
    peer.send(json!({"type": "execute", "id": "no-code", "language": "sh"}));
    let no_code = peer.refusal(ErrorCode::BadRequest).await;
    assert_eq!(no_code.id.as_deref(), Some("no-code"));

    peer.send_message(Message::Binary(vec![1, 2, 3].into()));
    let binary = peer.refusal(ErrorCode::BadRequest).await;
    assert!(binary.data.contains("binary"), "{binary:?}");

    peer.send_text(&format!(
        r#"{{"type":"ack","pad":"{}"}}"#,
        "x".repeat(5_000)
    ));
    let too_large = peer.refusal(ErrorCode::TooLarge).await;
    assert_eq!(too_large.id, None);

    peer.send(json!({"type": "execute", "id": "cobol", "language": "cobol", "code": "x"}));
    let unknown = peer.refusal(ErrorCode::UnknownLanguage).await;
    assert_eq!(unknown.id.as_deref(), Some("cobol"));

    peer.send(json!({"type": "attach", "session": "nowhere"}));
    let attach = peer.refusal(ErrorCode::UnknownSession).await;
    assert_eq!(attach.for_session.as_deref(), Some("nowhere"));
    assert_eq!(attach.id, None);

    // The own stream is numbered like any other.
    assert_consecutive(&[not_json, no_code, binary, too_large, unknown, attach], 1);

    // And the socket still works.
    peer.execute("after", "echo still here");
    let events = peer.execution("after").await;
    assert_eq!(stdout(&events), "still here\n");
    assert_eq!(events.last().map(|e| e.kind), Some(EventKind::Completed));
}

#[tokio::test]
async fn an_execute_streams_started_output_and_one_terminal_event_in_sequence() {
    let mut gateway = Gateway::start().await;
    let mut peer = gateway.connect();
    peer.execute("job", "echo out; echo err >&2; exit 3");
    let events = peer.execution("job").await;

    assert_consecutive(&events, 1);
    assert_eq!(events[0].kind, EventKind::Started, "{events:#?}");
    assert!(events[0].pid.is_some(), "started carries the pid");
    let last = events.last().expect("a terminal event");
    assert_eq!(last.kind, EventKind::Completed);
    assert_eq!(last.exit_code, Some(3));
    assert_eq!(events.iter().filter(|e| e.is_terminal()).count(), 1);
    assert_eq!(stdout(&events), "out\n");
    let stderr: String = events
        .iter()
        .filter(|e| e.kind == EventKind::Stderr)
        .map(|e| e.data.as_str())
        .collect();
    assert_eq!(stderr, "err\n");
    // Every event is the execution's, in its gateway-made session (128 random bits).
    let session = events[0].session.clone().expect("a gateway-made session");
    assert_eq!(session.len(), 32, "{session}");
    for event in &events {
        assert_eq!(event.id.as_deref(), Some("job"));
        assert_eq!(event.session.as_deref(), Some(session.as_str()));
    }

    // A second execution gets a session of its own, numbered from 1 again.
    peer.execute("again", "true");
    let again = peer.execution("again").await;
    assert_consecutive(&again, 1);
    assert_ne!(again[0].session.as_deref(), Some(session.as_str()));
}

#[tokio::test]
async fn stdin_and_cancel_find_an_execution_of_this_socket_by_id() {
    let mut gateway = Gateway::start().await;
    let mut peer = gateway.connect();

    peer.execute("echo", r#"read line; echo "got $line""#);
    assert_eq!(peer.event().await.kind, EventKind::Started);
    peer.send(json!({"type": "stdin", "id": "echo", "data": "abc\n"}));
    let events = peer.execution("echo").await;
    assert_eq!(stdout(&events), "got abc\n");
    assert_eq!(events.last().map(|e| e.exit_code), Some(Some(0)));

    // Finished, or never started: nothing runs under that id.
    peer.send(json!({"type": "stdin", "id": "echo", "data": "late\n"}));
    peer.refusal(ErrorCode::UnknownExecution).await;
    peer.send(json!({"type": "cancel", "id": "nobody"}));
    let unknown = peer.refusal(ErrorCode::UnknownExecution).await;
    assert_eq!(unknown.id, None, "a refusal of a cancel is not terminal");

    peer.execute("stuck", "read line");
    assert_eq!(peer.event().await.kind, EventKind::Started);
    peer.send(json!({"type": "cancel", "id": "stuck"}));
    let events = peer.execution("stuck").await;
    assert_eq!(kinds(&events), [EventKind::Cancelled]);
}

#[tokio::test]
async fn stdin_and_cancel_with_a_session_look_in_that_session() {
    let mut gateway = Gateway::start().await;
    let mut peer = gateway.connect();

    peer.execute_in("work", "one", r#"read line; echo "one: $line""#);
    let started = peer.event().await;
    assert_eq!(started.kind, EventKind::Started);
    assert_eq!(started.session.as_deref(), Some("work"));

    // A session this socket does not read is unknown to it, whatever runs there.
    peer.send(json!({"type": "stdin", "id": "one", "session": "elsewhere", "data": "x\n"}));
    let elsewhere = peer.refusal(ErrorCode::UnknownSession).await;
    assert_eq!(elsewhere.for_session.as_deref(), Some("elsewhere"));

    peer.send(json!({"type": "stdin", "id": "one", "session": "work", "data": "hi\n"}));
    let events = peer.execution("one").await;
    assert_eq!(stdout(&events), "one: hi\n");

    peer.execute_in("work", "two", "read line");
    assert_eq!(peer.event().await.kind, EventKind::Started);
    peer.send(json!({"type": "cancel", "id": "two", "session": "work"}));
    let events = peer.execution("two").await;
    assert_eq!(kinds(&events), [EventKind::Cancelled]);
    // One stream for the session: started, stdout, completed, started, cancelled.
    assert_eq!(events[0].sequence, 5);
}

#[tokio::test]
async fn stdin_after_eof_is_refused_while_the_program_runs_on() {
    let mut gateway = Gateway::start().await;
    let mut peer = gateway.connect();
    peer.execute("cat", "cat; echo done; sleep 600");
    assert_eq!(peer.event().await.kind, EventKind::Started);
    peer.send(json!({"type": "stdin", "id": "cat", "data": "x", "eof": true}));
    let output = peer
        .events_until(|e| e.kind == EventKind::Stdout && e.data.contains("done"))
        .await;
    assert_eq!(stdout(&output), "xdone\n");
    peer.send(json!({"type": "stdin", "id": "cat", "data": "more"}));
    let closed = peer.refusal(ErrorCode::StdinClosed).await;
    assert_eq!(closed.id, None);
    peer.send(json!({"type": "cancel", "id": "cat"}));
    assert_eq!(kinds(&peer.execution("cat").await), [EventKind::Cancelled]);
}

#[tokio::test]
async fn a_running_id_is_a_duplicate_and_the_socket_cap_refuses_terminally() {
    let mut gateway = Gateway::new(Config {
        max_executions_per_connection: 1,
        ..config()
    })
    .await;
    let mut peer = gateway.connect();
    peer.execute("a", "read line");
    assert_eq!(peer.event().await.kind, EventKind::Started);

    // The id names a running execution: the refusal is not its terminal event.
    peer.execute("a", "true");
    let duplicate = peer.refusal(ErrorCode::DuplicateId).await;
    assert_eq!(duplicate.id, None);

    // A fresh id over this socket's cap: terminal for that id.
    peer.execute("b", "true");
    let capped = peer.refusal(ErrorCode::TooManyExecutions).await;
    assert_eq!(capped.id.as_deref(), Some("b"));

    peer.send(json!({"type": "cancel", "id": "a"}));
    assert_eq!(kinds(&peer.execution("a").await), [EventKind::Cancelled]);
}
