//! Refused frames: each gets its error code on the socket stream (id null unless the
//! protocol says otherwise), and the socket keeps working afterwards, except above the
//! transport cap, where it closes with 1009 and other sockets carry on.

use anyhow::{bail, Result};
use serde_json::json;
use sluice_gateway::Config;
use sluice_protocol::{ErrorCode, EventKind, ExecuteRequest};
use sluice_tests::{
    assert_socket_refusal, assert_stream_ok, events_of, request, RawSocket, TestGateway,
};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// Sends `frame`, expects one refusal with `code` and no id, then proves the socket
/// still works.
async fn refused(socket: &mut RawSocket, frame: &str, code: ErrorCode) -> Result<()> {
    socket.send_text(frame).await?;
    let refusal = socket.next_event().await?;
    assert_socket_refusal(&refusal, code);
    assert!(
        !refusal.data.is_empty(),
        "a refusal without a message: {refusal:?}"
    );
    socket.assert_still_works().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_get_bad_request_and_the_socket_keeps_working() -> Result<()> {
    let gateway = TestGateway::spawn().await;
    let mut socket = gateway.raw().await?;
    let frames = [
        // Not JSON.
        "{not json",
        "",
        // JSON, but not an object.
        "[1, 2, 3]",
        "\"execute\"",
        "null",
        // No type, a non-string type, unknown types (the match is case-sensitive).
        r#"{"id":"x","language":"sh","code":"echo"}"#,
        r#"{"type":7,"id":"x"}"#,
        r#"{"type":"launch","id":"x"}"#,
        r#"{"type":"Execute","id":"x","language":"sh","code":"echo"}"#,
        // An execute whose id is missing, not a string, empty, or too long.
        r#"{"type":"execute","language":"sh","code":"echo"}"#,
        r#"{"type":"execute","id":5,"language":"sh","code":"echo"}"#,
        r#"{"type":"execute","id":"","language":"sh","code":"echo"}"#,
        // Malformed stdin and cancel frames.
        r#"{"type":"stdin","id":"x"}"#,
        r#"{"type":"stdin","data":"x"}"#,
        r#"{"type":"cancel"}"#,
        r#"{"type":"cancel","id":["x"]}"#,
    ];
    for frame in frames {
        refused(&mut socket, frame, ErrorCode::BadRequest).await?;
    }
    let long_id = "i".repeat(129);
    let frame = json!({"type": "execute", "id": long_id, "language": "sh", "code": "echo"});
    refused(&mut socket, &frame.to_string(), ErrorCode::BadRequest).await?;
    assert_stream_ok(socket.received());
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_execute_with_a_usable_id_is_refused_under_that_id() -> Result<()> {
    let gateway = TestGateway::spawn().await;
    let mut socket = gateway.raw().await?;
    let frames = [
        json!({"type": "execute", "id": "no-language", "code": "echo"}),
        json!({"type": "execute", "id": "no-code", "language": "sh"}),
        json!({"type": "execute", "id": "bad-encoding", "language": "sh", "code": "echo", "encoding": "utf16"}),
        json!({"type": "execute", "id": "bad-env", "language": "sh", "code": "echo", "env": {"A=B": "c"}}),
        json!({"type": "execute", "id": "nul-arg", "language": "sh", "code": "echo", "args": ["a\u{0}b"]}),
        json!({"type": "execute", "id": "empty-lang", "language": "", "code": "echo"}),
    ];
    for frame in frames {
        let id = frame["id"].as_str().unwrap_or_default().to_owned();
        socket.send_json(&frame).await?;
        let refusal = socket.next_event().await?;
        assert_eq!(refusal.kind, EventKind::Error, "{refusal:?}");
        assert_eq!(refusal.code, Some(ErrorCode::BadRequest), "{refusal:?}");
        assert_eq!(refusal.id.as_deref(), Some(id.as_str()), "{refusal:?}");
        assert_eq!(refusal.session, None, "{refusal:?}");
        socket.assert_still_works().await?;
    }
    assert_stream_ok(socket.received());
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_fields_are_ignored() -> Result<()> {
    let gateway = TestGateway::spawn().await;
    let mut socket = gateway.raw().await?;
    let frame = json!({
        "type": "execute", "id": "extra", "language": "sh", "code": "echo fine",
        "priority": 9, "limits": {"timeout_ms": 10000, "cpu_ms": 5}, "future": {"nested": true}
    });
    socket.send_json(&frame).await?;
    let events = socket.events_until_terminal("extra").await?;
    sluice_tests::assert_lifecycle(&events);
    assert_eq!(sluice_tests::text_of(&events, EventKind::Stdout), "fine\n");
    assert_stream_ok(socket.received());
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binary_frame_is_a_bad_request() -> Result<()> {
    let gateway = TestGateway::spawn().await;
    let mut socket = gateway.raw().await?;
    let frame = json!({"type": "execute", "id": "b", "language": "sh", "code": "echo"});
    socket.send_binary(frame.to_string().into_bytes()).await?;
    let refusal = socket.next_event().await?;
    assert_socket_refusal(&refusal, ErrorCode::BadRequest);
    socket.assert_still_works().await?;
    assert_stream_ok(socket.received());
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_id_is_refused_without_touching_the_running_execution() -> Result<()> {
    let gateway = TestGateway::spawn().await;
    let mut socket = gateway.raw().await?;
    socket
        .execute(request("dup", "sh", "read line; echo got $line"))
        .await?;
    socket
        .next_event_where(|e| e.kind == EventKind::Started)
        .await?;
    socket
        .execute(request("dup", "sh", "echo impostor"))
        .await?;
    let refusal = socket.next_socket_error().await?;
    assert_socket_refusal(&refusal, ErrorCode::DuplicateId);
    assert!(refusal.data.contains("dup"), "{refusal:?}");

    // The original runs on, undisturbed.
    socket.stdin("dup", Some("input\n"), true).await?;
    socket.events_until_terminal("dup").await?;
    let events: Vec<_> = events_of(socket.received(), "dup")
        .into_iter()
        .cloned()
        .collect();
    sluice_tests::assert_lifecycle(&events);
    assert_eq!(
        sluice_tests::text_of(&events, EventKind::Stdout),
        "got input\n"
    );
    assert_eq!(events.last().and_then(|e| e.exit_code), Some(0));
    socket.assert_still_works().await?;
    assert_stream_ok(socket.received());
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdin_and_cancel_for_unknown_ids_are_refused() -> Result<()> {
    let gateway = TestGateway::spawn().await;
    let mut socket = gateway.raw().await?;
    refused(
        &mut socket,
        r#"{"type":"stdin","id":"ghost","data":"boo"}"#,
        ErrorCode::UnknownExecution,
    )
    .await?;
    refused(
        &mut socket,
        r#"{"type":"stdin","id":"ghost","eof":true}"#,
        ErrorCode::UnknownExecution,
    )
    .await?;
    refused(
        &mut socket,
        r#"{"type":"cancel","id":"ghost"}"#,
        ErrorCode::UnknownExecution,
    )
    .await?;
    // An execution of another socket is unknown here too.
    let mut other = gateway.raw().await?;
    other
        .execute(request("theirs", "sh", "read line; echo $line"))
        .await?;
    other
        .next_event_where(|e| e.kind == EventKind::Started)
        .await?;
    refused(
        &mut socket,
        r#"{"type":"cancel","id":"theirs"}"#,
        ErrorCode::UnknownExecution,
    )
    .await?;
    other.stdin("theirs", Some("mine\n"), true).await?;
    let events = other.events_until_terminal("theirs").await?;
    assert_eq!(events.last().map(|e| e.kind), Some(EventKind::Completed));
    assert_stream_ok(socket.received());
    assert_stream_ok(other.received());
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_above_max_frame_bytes_is_too_large() -> Result<()> {
    let gateway = TestGateway::spawn_with(Config {
        max_frame_bytes: 4096,
        ..Config::default()
    })
    .await;
    let mut socket = gateway.raw().await?;
    // A well-formed execute of 5000 bytes: refused unread, so it must not run.
    let mut frame = request("big", "sh", "");
    frame.code = format!("echo never #{}", "x".repeat(5000));
    let text = sluice_protocol::ClientFrame::Execute(frame).to_json();
    assert!(text.len() > 4096 && text.len() < 4 * 4096);
    socket.send_text(text).await?;
    let refusal = socket.next_event().await?;
    assert_socket_refusal(&refusal, ErrorCode::TooLarge);
    socket.assert_still_works().await?;
    assert!(events_of(socket.received(), "big").is_empty());

    // Exactly max_frame_bytes is still accepted.
    let mut exact = ExecuteRequest {
        code: "echo at the limit #".into(),
        ..request("exact", "sh", "")
    };
    let overhead = sluice_protocol::ClientFrame::Execute(exact.clone())
        .to_json()
        .len();
    exact.code.push_str(&"y".repeat(4096 - overhead));
    let text = sluice_protocol::ClientFrame::Execute(exact).to_json();
    assert_eq!(text.len(), 4096);
    socket.send_text(text).await?;
    let events = socket.events_until_terminal("exact").await?;
    assert_eq!(
        sluice_tests::text_of(&events, EventKind::Stdout),
        "at the limit\n"
    );
    assert_stream_ok(socket.received());
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_above_the_transport_cap_closes_only_its_socket() -> Result<()> {
    let gateway = TestGateway::spawn_with(Config {
        max_frame_bytes: 4096,
        ..Config::default()
    })
    .await;
    let mut bystander = gateway.raw().await?;
    bystander
        .execute(request("calm", "sh", "read line; echo got $line"))
        .await?;
    bystander
        .next_event_where(|e| e.kind == EventKind::Started)
        .await?;

    let mut offender = gateway.raw().await?;
    offender.assert_still_works().await?;
    offender.send_text("x".repeat(4 * 4096 + 1)).await?;
    match offender.closed().await? {
        Some(frame) => assert_eq!(frame.code, CloseCode::Size, "{frame:?}"),
        None => match offender.ending() {
            Some(ending) => bail!("no close frame ({ending}); expected close code 1009"),
            None => bail!("a close frame without a status code; expected close code 1009"),
        },
    }
    assert_stream_ok(offender.received());

    // The other socket and its running execution are untouched.
    bystander.stdin("calm", Some("still here\n"), true).await?;
    let events = bystander.events_until_terminal("calm").await?;
    assert_eq!(
        sluice_tests::text_of(&events, EventKind::Stdout),
        "got still here\n"
    );
    bystander.assert_still_works().await?;
    assert_stream_ok(bystander.received());
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_language_is_a_terminal_error_before_any_session() -> Result<()> {
    let gateway = TestGateway::spawn().await;
    let mut socket = gateway.raw().await?;
    socket
        .execute(request("cobol", "cobol", "DISPLAY 'HI'."))
        .await?;
    let events = socket.events_until_terminal("cobol").await?;
    assert_eq!(events.len(), 1, "{events:?}");
    let error = &events[0];
    assert_eq!(error.kind, EventKind::Error);
    assert_eq!(error.code, Some(ErrorCode::UnknownLanguage));
    assert_eq!(error.id.as_deref(), Some("cobol"));
    // Checked before any session is opened: on the socket stream.
    assert_eq!(error.session, None, "{error:?}");
    assert_eq!(error.sequence, 1);
    assert_eq!(error.usage, None);
    assert!(error.data.contains("cobol"), "{error:?}");

    // Also for an execute naming a session: its session is not touched, and the
    // refusal names it in `for_session`.
    let named = |id: &str, language: &str| ExecuteRequest {
        session: Some("nb".into()),
        ..request(id, language, "echo in nb")
    };
    socket.execute(named("first", "sh")).await?;
    socket.events_until_terminal("first").await?;
    socket.execute(named("second", "Python")).await?;
    let events = socket.events_until_terminal("second").await?;
    assert_eq!(events[0].code, Some(ErrorCode::UnknownLanguage));
    assert_eq!(events[0].session, None);
    assert_eq!(events[0].for_session.as_deref(), Some("nb"));
    assert_eq!(events[0].sequence, 2);
    socket.assert_still_works().await?;
    assert_stream_ok(socket.received());
    gateway.shutdown().await
}
