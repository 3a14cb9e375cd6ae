//! Reconnecting against scripted peers: resuming with each event once, `execute` frames
//! sent again or ended, attaches asked again, and the bounds of the reconnect policy.

use super::peer::*;
use crate::ClientError;
use futures::StreamExt;
use sluice_protocol::{ClientFrame, ErrorCode, Event, EventKind, ExecuteRequest};
use std::sync::atomic::Ordering;

#[tokio::test]
async fn a_dropped_connection_resumes_the_execution_with_each_event_once() {
    within(async {
        let (client, mut peer, mut peers, _) = reconnecting_pair(reconnecting(3)).await;
        let mut socket = client.socket_events().unwrap();
        let mut execution = client.execute_code_stream("sh", "cat").await.unwrap();
        peer.execute_id().await;
        peer.send(&event(EventKind::Started, "e1", 1, "")).await;
        peer.send(&event(EventKind::Stdout, "e1", 2, "a")).await;
        assert_eq!(execution.next().await.unwrap().sequence, 1);
        assert_eq!(execution.next().await.unwrap().sequence, 2);
        drop(peer);

        let mut peer = peers.recv().await.unwrap();
        let attach = peer.attach().await;
        assert_eq!(attach.session, "session-e1");
        assert_eq!(attach.since, Some(2));
        // A new lead inherits acknowledging from where it attached.
        match peer.frame().await {
            ClientFrame::Ack(ack) => {
                assert_eq!((ack.session.as_str(), ack.sequence), ("session-e1", 2))
            }
            other => panic!("expected the ack after the attach, got {other:?}"),
        }
        peer.attached("session-e1", 2).await;
        // Input reaches the execution from a socket that did not start it: it names the
        // session.
        execution.send_stdin("x").await.unwrap();
        match peer.frame_skipping_acks().await {
            ClientFrame::Stdin(stdin) => {
                assert_eq!(stdin.session.as_deref(), Some("session-e1"));
                assert_eq!(stdin.data.as_deref(), Some("x"));
            }
            other => panic!("expected stdin, got {other:?}"),
        }
        // A replay overlapping what was delivered: duplicates are dropped.
        peer.send(&event(EventKind::Stdout, "e1", 2, "a")).await;
        peer.send(&event(EventKind::Stdout, "e1", 3, "b")).await;
        peer.send(&completed("e1", 4, 0)).await;
        let outcome = execution.wait().await.unwrap();
        // Neither the `attached` answer nor a duplicate reached the execution.
        let sequences: Vec<u64> = outcome.events.iter().map(|e| e.sequence).collect();
        assert_eq!(sequences, [3, 4]);
        assert_eq!(outcome.stdout, "b");
        peer.refuse(ErrorCode::BadRequest, "marker").await;
        assert_eq!(socket.recv().await.unwrap().data, "marker");
    })
    .await;
}

#[tokio::test]
async fn unanswered_executes_after_a_drop_named_sent_again_unnamed_ended() {
    within(async {
        let (client, mut peer, mut peers, _) = reconnecting_pair(reconnecting(3)).await;
        let unnamed = client.execute_code_stream("sh", "true").await.unwrap();
        let named = client
            .execute(ExecuteRequest {
                id: "job".into(),
                language: "sh".into(),
                code: "true".into(),
                session: Some("mine".into()),
                ..ExecuteRequest::default()
            })
            .await
            .unwrap();
        assert_eq!(peer.execute_id().await, "e1");
        assert_eq!(peer.execute_id().await, "job");
        drop(peer);

        let mut peer = peers.recv().await.unwrap();
        match peer.frame_skipping_acks().await {
            ClientFrame::Execute(request) => {
                assert_eq!(request.id, "job");
                assert_eq!(request.session.as_deref(), Some("mine"));
            }
            other => panic!("expected the execute again, got {other:?}"),
        }
        match unnamed.wait().await {
            Err(ClientError::Interrupted { reason, .. }) => {
                assert!(reason.contains("may or may not have run"), "{reason}");
            }
            other => panic!("expected Interrupted, got {other:?}"),
        }
        peer.send(&in_session("mine", EventKind::Started, "job", 7, ""))
            .await;
        let done = Event {
            session: Some("mine".into()),
            ..completed("job", 8, 0)
        };
        peer.send(&done).await;
        assert!(named.wait().await.unwrap().success());
    })
    .await;
}

#[tokio::test]
async fn an_execute_sent_again_that_cannot_rejoin_its_session_ends_with_the_refusal() {
    within(async {
        let (client, mut peer, mut peers, _) = reconnecting_pair(reconnecting(3)).await;
        let mut socket = client.socket_events().unwrap();
        let request = |id: &str| ExecuteRequest {
            id: id.to_owned(),
            language: "sh".into(),
            code: "true".into(),
            session: Some("full".into()),
            ..ExecuteRequest::default()
        };
        let first = client.execute(request("one")).await.unwrap();
        let second = client.execute(request("two")).await.unwrap();
        assert_eq!(peer.execute_id().await, "one");
        assert_eq!(peer.execute_id().await, "two");
        drop(peer);

        let mut peer = peers.recv().await.unwrap();
        // Sent again in their order; the session knows both ids, and the new socket may
        // not read one more session: each is refused without an id.
        assert_eq!(peer.execute_id().await, "one");
        assert_eq!(peer.execute_id().await, "two");
        let message = "this socket is already attached to 1 sessions, the maximum";
        peer.refuse_for("full", ErrorCode::TooManySessions, message)
            .await;
        peer.refuse_for("full", ErrorCode::TooManySessions, message)
            .await;
        for execution in [first, second] {
            let outcome = execution.wait().await.unwrap();
            assert_eq!(outcome.error_code(), Some(ErrorCode::TooManySessions));
            assert_eq!(outcome.events.len(), 1);
        }
        peer.refuse(ErrorCode::BadRequest, "marker").await;
        assert_eq!(socket.recv().await.unwrap().data, "marker");
    })
    .await;
}

#[tokio::test]
async fn an_attach_on_its_way_when_the_connection_drops_is_asked_again() {
    within(async {
        let (client, mut peer, mut peers, _) = reconnecting_pair(reconnecting(3)).await;
        let attaching = tokio::spawn({
            let client = client.clone();
            async move { client.attach("s", Some(4)).await }
        });
        assert_eq!(peer.attach().await.since, Some(4));
        drop(peer);
        let mut peer = peers.recv().await.unwrap();
        assert_eq!(peer.attach().await.since, Some(4));
        peer.attached("s", 4).await;
        let mut events = attaching.await.unwrap().unwrap();
        peer.send(&in_session("s", EventKind::Stdout, "x", 5, "o"))
            .await;
        assert_eq!(events.next().await.unwrap().sequence, 5);
    })
    .await;
}

#[tokio::test]
async fn reconnecting_gives_up_after_the_attempts_allowed() {
    within(async {
        let (client, mut peer, _peers, refusing) = reconnecting_pair(reconnecting(3)).await;
        let execution = client.execute_code_stream("sh", "sleep 9").await.unwrap();
        peer.execute_id().await;
        peer.send(&event(EventKind::Started, "e1", 1, "")).await;
        refusing.store(true, Ordering::SeqCst);
        drop(peer);
        match execution.wait().await {
            Err(ClientError::Interrupted { reason, .. }) => {
                assert!(
                    reason.contains("gave up reconnecting after 3 failed attempt(s)"),
                    "{reason}"
                );
                assert!(reason.contains("connection refused"), "{reason}");
            }
            other => panic!("expected Interrupted, got {other:?}"),
        }
        assert!(client.is_closed());
        assert!(matches!(
            client.attach("s", None).await,
            Err(ClientError::ConnectionClosed { .. })
        ));
    })
    .await;
}

#[tokio::test]
async fn connections_dropped_at_once_count_as_one_outage() {
    within(async {
        let (client, mut peer, mut peers, _) = reconnecting_pair(reconnecting(3)).await;
        let execution = client.execute_code_stream("sh", "sleep 9").await.unwrap();
        peer.execute_id().await;
        peer.send(&event(EventKind::Started, "e1", 1, "")).await;
        drop(peer);
        // Every new connection is accepted, then dropped before it delivers anything.
        let dropper = tokio::spawn(async move {
            let mut accepted = 0;
            while let Some(peer) = peers.recv().await {
                accepted += 1;
                drop(peer);
            }
            accepted
        });
        match execution.wait().await {
            Err(ClientError::Interrupted { reason, .. }) => {
                assert!(reason.contains("after 3 failed attempt(s)"), "{reason}");
            }
            other => panic!("expected Interrupted, got {other:?}"),
        }
        drop(client);
        assert_eq!(dropper.await.unwrap(), 3);
    })
    .await;
}

#[tokio::test]
async fn a_reconnect_refused_for_its_credential_is_not_tried_again() {
    use crate::connection::{AttemptError, Connector};
    use crate::Client;
    use std::sync::atomic::AtomicU32;
    use std::sync::Arc;
    use tokio::io::DuplexStream;
    within(async {
        let (client_ws, mut peer) = socket_pair().await;
        let attempts = Arc::new(AtomicU32::new(0));
        let counted = Arc::clone(&attempts);
        let connector: Connector<DuplexStream> = Box::new(move || {
            counted.fetch_add(1, Ordering::SeqCst);
            Box::pin(async { Err(AttemptError::Unauthorized("the token has expired".into())) })
        });
        let client = Client::start(client_ws, reconnecting(5), Some(connector));
        let execution = client.execute_code_stream("sh", "sleep 9").await.unwrap();
        peer.execute_id().await;
        peer.send(&event(EventKind::Started, "e1", 1, "")).await;
        drop(peer);
        match execution.wait().await {
            Err(ClientError::Interrupted { reason, .. }) => {
                assert!(
                    reason.contains("the gateway refused the credential: the token has expired"),
                    "{reason}"
                );
            }
            other => panic!("expected Interrupted, got {other:?}"),
        }
        assert_eq!(attempts.load(Ordering::SeqCst), 1);
        match client.attach("s", None).await {
            Err(ClientError::Unauthorized { reason }) => {
                assert_eq!(reason, "the token has expired");
            }
            other => panic!("expected Unauthorized, got {other:?}"),
        }
    })
    .await;
}

#[tokio::test]
async fn a_read_is_asked_again_after_a_drop_and_a_write_fails() {
    use base64::Engine as _;
    within(async {
        let (client, mut peer, mut peers, _) = reconnecting_pair(reconnecting(3)).await;
        let reading = tokio::spawn({
            let client = client.clone();
            async move { client.read_file("s", "a.txt").await }
        });
        let ClientFrame::ReadFile(first) = peer.frame_skipping_acks().await else {
            panic!("not a read_file");
        };
        let writing = tokio::spawn({
            let client = client.clone();
            async move {
                client
                    .write_file("s", "b.txt", b"x", crate::WriteFileOptions::default())
                    .await
            }
        });
        assert!(matches!(
            peer.frame_skipping_acks().await,
            ClientFrame::WriteFile(_)
        ));
        // A part of the answer, then the connection drops.
        let mut part = Event::file_reply(EventKind::FileData, &*first.request, "a.txt");
        part.data = base64::engine::general_purpose::STANDARD.encode(b"half");
        part.encoding = Some(sluice_protocol::Encoding::Base64);
        part.offset = Some(0);
        part.size = Some(8);
        part.last = Some(false);
        part.sequence = 1;
        part.timestamp = 1.0;
        peer.send(&part).await;
        drop(peer);
        // The write may or may not have happened: it fails.
        let written = writing.await.unwrap();
        assert!(
            matches!(written, Err(ClientError::ConnectionClosed { .. })),
            "{written:?}"
        );
        // The read is asked again, whole, on the new socket, and answered there.
        let mut peer = peers.recv().await.unwrap();
        let again = loop {
            if let ClientFrame::ReadFile(again) = peer.frame_skipping_acks().await {
                break again;
            }
        };
        assert_eq!(
            (again.request.as_str(), again.offset),
            (first.request.as_str(), Some(0))
        );
        let mut whole = part.clone();
        whole.data = base64::engine::general_purpose::STANDARD.encode(b"the file");
        whole.last = Some(true);
        peer.send(&whole).await;
        assert_eq!(reading.await.unwrap().unwrap(), b"the file");
    })
    .await;
}
