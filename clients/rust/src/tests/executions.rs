//! Executions against the scripted peer: routing by id, socket-stream events, stdin, ids,
//! oversized frames, drop-cancels, connection loss and closing.

use super::peer::*;
use crate::{is_synthetic, ClientError, ClientOptions};
use futures::StreamExt;
use sluice_protocol::{ClientFrame, ErrorCode, Event, EventKind, ExecuteRequest};

#[tokio::test]
async fn routes_events_by_id_and_collects_outcomes() {
    within(async {
        let (client, mut peer) = pair(ClientOptions::default()).await;
        let first = client.execute_code_stream("sh", "echo a").await.unwrap();
        let second = client.execute_code_stream("sh", "echo b").await.unwrap();
        assert_eq!((first.id(), second.id()), ("e1", "e2"));
        // A client that cannot reconnect does not acknowledge, and does not say it will.
        match peer.frame().await {
            ClientFrame::Execute(request) => {
                assert_eq!((request.id.as_str(), request.ack), ("e1", false))
            }
            other => panic!("expected an execute, got {other:?}"),
        }
        assert_eq!(peer.execute_id().await, "e2");

        peer.send(&event(EventKind::Started, "e2", 1, "")).await;
        peer.send(&event(EventKind::Started, "e1", 1, "")).await;
        peer.send(&event(EventKind::Stdout, "e1", 2, "a\n")).await;
        peer.send(&event(EventKind::Stdout, "e2", 2, "b\n")).await;
        peer.send(&event(EventKind::Stderr, "e2", 3, "warn\n"))
            .await;
        peer.send(&completed("e2", 4, 1)).await;
        peer.send(&completed("e1", 3, 0)).await;

        let (first, second) = (first.wait().await.unwrap(), second.wait().await.unwrap());
        assert_eq!((first.stdout.as_str(), first.exit_code()), ("a\n", Some(0)));
        assert_eq!(first.session(), Some("session-e1"));
        assert_eq!(
            (second.stdout.as_str(), second.stderr.as_str()),
            ("b\n", "warn\n")
        );
        assert_eq!(second.exit_code(), Some(1));
        assert_eq!(second.events.len(), 4);
    })
    .await;
}

#[tokio::test]
async fn socket_stream_events_reach_socket_events() {
    within(async {
        let (client, mut peer) = pair(ClientOptions::default()).await;
        let mut socket = client.socket_events().unwrap();
        assert!(client.socket_events().is_none(), "only one receiver");

        peer.refuse(ErrorCode::UnknownExecution, "no execution \"zz\"")
            .await;
        let refusal = socket.recv().await.unwrap();
        assert_eq!(refusal.code, Some(ErrorCode::UnknownExecution));
        assert!(!is_synthetic(&refusal));

        // An error naming an id that is not running is not anybody's terminal event.
        peer.send(&Event {
            sequence: 2,
            timestamp: 1.0,
            session: Some("s".into()),
            ..Event::error(Some("ghost".into()), ErrorCode::Internal, "boo")
        })
        .await;
        assert_eq!(socket.recv().await.unwrap().id.as_deref(), Some("ghost"));

        peer.send_raw("{not json").await;
        let garbage = socket.recv().await.unwrap();
        assert!(is_synthetic(&garbage));
        assert_eq!(garbage.code, Some(ErrorCode::Internal));
    })
    .await;
}

#[tokio::test]
async fn undecodable_terminal_ends_its_execution() {
    within(async {
        let (client, mut peer) = pair(ClientOptions::default()).await;
        let execution = client.execute_code_stream("sh", "true").await.unwrap();
        peer.execute_id().await;
        // Missing timestamp and sequence: a broken terminal event for e1.
        peer.send_raw(r#"{"type":"completed","id":"e1","session":"s","exit_code":0}"#)
            .await;
        match execution.wait().await {
            Err(ClientError::Interrupted { id, reason }) => {
                assert_eq!(id, "e1");
                assert!(reason.contains("could not be decoded"), "{reason}");
            }
            other => panic!("expected Interrupted, got {other:?}"),
        }
    })
    .await;
}

#[tokio::test]
async fn dropping_an_execution_cancels_it_and_keeps_its_id_until_terminal() {
    within(async {
        let (client, mut peer) = pair(ClientOptions::default()).await;
        let mut socket = client.socket_events().unwrap();
        let request = |id: &str| ExecuteRequest {
            id: id.to_owned(),
            language: "sh".into(),
            code: "sleep 100".into(),
            ..ExecuteRequest::default()
        };
        let execution = client.execute(request("job")).await.unwrap();
        assert_eq!(peer.execute_id().await, "job");
        peer.send(&event(EventKind::Started, "job", 1, "")).await;
        drop(execution);
        assert!(matches!(peer.frame().await, ClientFrame::Cancel(c) if c.id == "job"));

        // Still running as far as the gateway knows.
        assert!(matches!(
            client.execute(request("job")).await,
            Err(ClientError::DuplicateId(id)) if id == "job"
        ));
        peer.send(&event(EventKind::Stdout, "job", 2, "late")).await;
        peer.send(&event(EventKind::Cancelled, "job", 3, "")).await;
        // Events are read in order: once this arrives, the terminal was processed.
        peer.refuse(ErrorCode::BadRequest, "marker").await;
        assert_eq!(socket.recv().await.unwrap().data, "marker");
        assert!(
            socket.try_recv().is_none(),
            "the abandoned events were discarded"
        );

        let again = client.execute(request("job")).await.unwrap();
        assert_eq!(peer.execute_id().await, "job");
        assert_eq!(again.id(), "job");
    })
    .await;
}

#[tokio::test]
async fn generated_ids_skip_ids_in_use() {
    within(async {
        let (client, mut peer) = pair(ClientOptions::default()).await;
        let taken = ExecuteRequest {
            id: "e1".into(),
            language: "sh".into(),
            code: "true".into(),
            ..ExecuteRequest::default()
        };
        let _first = client.execute(taken).await.unwrap();
        let second = client.execute_code_stream("sh", "true").await.unwrap();
        assert_eq!(second.id(), "e2");
        assert_eq!(peer.execute_id().await, "e1");
        assert_eq!(peer.execute_id().await, "e2");
    })
    .await;
}

#[tokio::test]
async fn stdin_frames_and_finished_executions() {
    within(async {
        let (client, mut peer) = pair(ClientOptions::default()).await;
        let mut execution = client
            .execute_code_stream("python", "input()")
            .await
            .unwrap();
        peer.execute_id().await;
        execution.send_stdin("hi\n").await.unwrap();
        execution.close_stdin().await.unwrap();
        match (peer.frame().await, peer.frame().await) {
            (ClientFrame::Stdin(data), ClientFrame::Stdin(eof)) => {
                assert_eq!((data.data.as_deref(), data.eof), (Some("hi\n"), false));
                assert_eq!((eof.data, eof.eof), (None, true));
            }
            other => panic!("expected two stdin frames, got {other:?}"),
        }
        peer.send(&completed("e1", 1, 0)).await;
        assert!(execution.next().await.unwrap().is_terminal());
        assert!(execution.next().await.is_none());
        assert!(matches!(
            execution.send_stdin("more").await,
            Err(ClientError::ExecutionFinished(_))
        ));
        execution.cancel().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn oversized_frames_are_refused_locally() {
    within(async {
        let options = ClientOptions {
            max_frame_bytes: 200,
            ..ClientOptions::default()
        };
        let (client, _peer) = pair(options).await;
        let code = "x".repeat(300);
        assert!(matches!(
            client.execute_code_stream("sh", &code).await,
            Err(ClientError::FrameTooLarge { max: 200, .. })
        ));
        let execution = client.execute_code_stream("sh", "cat").await.unwrap();
        assert!(matches!(
            execution.send_stdin(code).await,
            Err(ClientError::FrameTooLarge { .. })
        ));
    })
    .await;
}

#[tokio::test]
async fn lost_connection_yields_one_synthetic_terminal() {
    within(async {
        let (client, mut peer) = pair(ClientOptions::default()).await;
        let mut execution = client.execute_code_stream("sh", "sleep 100").await.unwrap();
        let waiting = client.execute_code_stream("sh", "sleep 100").await.unwrap();
        peer.execute_id().await;
        peer.execute_id().await;
        peer.send(&event(EventKind::Started, "e1", 1, "")).await;
        drop(peer);

        assert_eq!(execution.next().await.unwrap().kind, EventKind::Started);
        let last = execution.next().await.unwrap();
        assert!(last.is_terminal() && is_synthetic(&last));
        assert_eq!(last.code, Some(ErrorCode::Internal));
        assert_eq!(last.session.as_deref(), Some("session-e1"));
        assert!(execution.next().await.is_none());
        assert!(matches!(
            waiting.wait().await,
            Err(ClientError::Interrupted { .. })
        ));

        assert!(client.is_closed());
        assert!(matches!(
            client.execute_code_stream("sh", "true").await,
            Err(ClientError::ConnectionClosed { .. })
        ));
        assert!(matches!(
            client.close().await,
            Err(ClientError::ConnectionClosed { .. })
        ));
    })
    .await;
}

#[tokio::test]
async fn close_completes_the_handshake() {
    within(async {
        let (client, mut peer) = pair(ClientOptions::default()).await;
        let execution = client.execute_code_stream("sh", "sleep 100").await.unwrap();
        peer.execute_id().await;
        let gateway = tokio::spawn(async move {
            // Reading the close frame makes tungstenite answer it; then the stream ends.
            while peer.ws.next().await.is_some() {}
        });
        let closing = client.clone();
        let (closed, outcome) = tokio::join!(closing.close(), execution.wait());
        closed.unwrap();
        // The gateway cannot send after answering the close: the execution is interrupted.
        assert!(matches!(outcome, Err(ClientError::Interrupted { .. })));
        assert!(client.is_closed());
        client.close().await.unwrap();
        gateway.await.unwrap();
    })
    .await;
}

/// The review scenario: the first execution floods far more events than the old per-queue
/// slot count (1024) while the consumer waits for the second one first. The second must
/// complete, and the first must then be read in full.
#[tokio::test]
async fn an_unread_execution_does_not_hold_up_another() {
    within(async {
        let (client, mut peer) = pair(ClientOptions::default()).await;
        let flood = client
            .execute_code_stream("python", "for i in range(6000): print(i, flush=True)")
            .await
            .unwrap();
        let quick = client
            .execute_code_stream("sh", "sleep 2; echo b")
            .await
            .unwrap();
        assert_eq!(peer.execute_id().await, "e1");
        assert_eq!(peer.execute_id().await, "e2");
        let lines: u64 = 6000;
        let gateway = tokio::spawn(async move {
            peer.send(&event(EventKind::Started, "e2", 1, "")).await;
            peer.send(&event(EventKind::Started, "e1", 1, "")).await;
            for i in 0..lines {
                peer.send(&event(EventKind::Stdout, "e1", i + 2, &format!("{i}\n")))
                    .await;
            }
            peer.send(&event(EventKind::Stdout, "e2", 2, "b\n")).await;
            peer.send(&completed("e2", 3, 0)).await;
            peer.send(&completed("e1", lines + 2, 0)).await;
            peer
        });

        let quick = quick.wait().await.unwrap();
        assert_eq!((quick.stdout.as_str(), quick.exit_code()), ("b\n", Some(0)));

        let flood = flood.wait().await.unwrap();
        let sequences: Vec<u64> = flood.events.iter().map(|e| e.sequence).collect();
        assert_eq!(sequences, (1..=lines + 2).collect::<Vec<_>>());
        let expected: String = (0..lines).map(|i| format!("{i}\n")).collect();
        assert_eq!(flood.stdout, expected);
        assert_eq!(flood.exit_code(), Some(0));
        gateway.await.unwrap();
    })
    .await;
}
