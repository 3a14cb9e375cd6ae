//! Per-consumer buffering against the scripted peer: a consumer that lags within its
//! budget loses nothing, one that falls behind is told (code `slow_consumer`) and let go
//! (an execution cancelled, a session subscription detached), one that keeps up is never
//! cut off.

use super::peer::*;
use crate::{is_synthetic, ClientError, ClientOptions};
use futures::StreamExt;
use sluice_protocol::{ClientFrame, ErrorCode, EventKind, ExecuteRequest};

#[tokio::test]
async fn a_lagging_consumer_loses_nothing_within_its_budget() {
    within(async {
        let (client, mut peer) = pair(ClientOptions::default()).await;
        let mut socket = client.socket_events().unwrap();
        let execution = client.execute_code_stream("sh", "yes").await.unwrap();
        peer.execute_id().await;
        let count = 500;
        let sender = tokio::spawn(async move {
            peer.send(&event(EventKind::Started, "e1", 1, "")).await;
            for sequence in 2..count {
                peer.send(&event(EventKind::Stdout, "e1", sequence, "y\n"))
                    .await;
            }
            peer.send(&completed("e1", count, 0)).await;
            peer
        });
        // The consumer reads nothing until the peer has written every event (more than
        // the socket's in-memory buffer holds, so the client has taken them all in).
        let mut peer = sender.await.unwrap();
        peer.refuse(ErrorCode::BadRequest, "marker").await;
        assert_eq!(socket.recv().await.unwrap().data, "marker");
        let outcome = execution.wait().await.unwrap();
        let sequences: Vec<u64> = outcome.events.iter().map(|e| e.sequence).collect();
        assert_eq!(sequences, (1..=count).collect::<Vec<_>>());
        assert_eq!(outcome.stdout.len(), 2 * (count as usize - 2));
    })
    .await;
}

#[tokio::test]
async fn a_slow_consumer_can_still_cancel() {
    within(async {
        let (client, mut peer) = pair(ClientOptions::default()).await;
        let execution = client.execute_code_stream("sh", "yes").await.unwrap();
        peer.execute_id().await;
        // Events pile up unread.
        peer.send(&event(EventKind::Started, "e1", 1, "")).await;
        peer.send(&event(EventKind::Stdout, "e1", 2, "y\n")).await;
        peer.send(&event(EventKind::Stdout, "e1", 3, "y\n")).await;
        execution.cancel().await.unwrap();
        assert!(matches!(peer.frame().await, ClientFrame::Cancel(c) if c.id == "e1"));
        execution.cancel().await.unwrap();
        peer.send(&event(EventKind::Cancelled, "e1", 4, "")).await;
        let outcome = execution.wait().await.unwrap();
        assert!(outcome.cancelled());
        assert_eq!(outcome.events.len(), 4);
        // The second cancel was not sent: the next frame is the next execute.
        client.execute_code_stream("sh", "true").await.unwrap();
        assert!(matches!(peer.frame().await, ClientFrame::Execute(_)));
    })
    .await;
}

/// Budget for the slow-consumer tests: `started` (256 bytes) and nine 100-byte `stdout`
/// events (356 bytes each) fit; the tenth `stdout` does not.
const OUTPUT: usize = 100;
const SLOW_BUDGET: usize = 10 * (OUTPUT + 256);
const FITTING_EVENTS: u64 = 10;

/// Sends `started` and enough output for `id` to overflow [`SLOW_BUDGET`], then expects
/// the client's `cancel`, sends some late output and the gateway's `cancelled`, and
/// checks that none of the discarded events reached the socket stream.
async fn overflow_execution(peer: &mut Peer, socket: &mut crate::SocketEvents, id: &str) {
    let data = "o".repeat(OUTPUT);
    peer.send(&event(EventKind::Started, id, 1, "")).await;
    let last_output = FITTING_EVENTS + 5;
    for sequence in 2..=last_output {
        peer.send(&event(EventKind::Stdout, id, sequence, &data))
            .await;
    }
    assert!(matches!(peer.frame().await, ClientFrame::Cancel(c) if c.id == id));
    peer.send(&event(EventKind::Stdout, id, last_output + 1, "late"))
        .await;
    peer.send(&event(EventKind::Cancelled, id, last_output + 2, ""))
        .await;
    // Events are read in order: once this arrives, the terminal was processed.
    peer.refuse(ErrorCode::BadRequest, "marker").await;
    assert_eq!(socket.recv().await.unwrap().data, "marker");
    assert!(socket.try_recv().is_none(), "discarded events were dropped");
}

#[tokio::test]
async fn a_consumer_that_falls_behind_is_cancelled_and_told() {
    within(async {
        let options = ClientOptions {
            execution_buffer_bytes: SLOW_BUDGET,
            ..ClientOptions::default()
        };
        let (client, mut peer) = pair(options).await;
        let mut socket = client.socket_events().unwrap();
        let request = |id: &str| ExecuteRequest {
            id: id.to_owned(),
            language: "sh".into(),
            code: "yes".into(),
            ..ExecuteRequest::default()
        };

        // Streaming: everything buffered, then exactly one synthetic terminal event.
        let mut streamed = client.execute(request("s")).await.unwrap();
        assert_eq!(peer.execute_id().await, "s");
        overflow_execution(&mut peer, &mut socket, "s").await;
        for sequence in 1..=FITTING_EVENTS {
            assert_eq!(streamed.next().await.unwrap().sequence, sequence);
        }
        let last = streamed.next().await.unwrap();
        assert!(last.is_terminal() && is_synthetic(&last), "{last:?}");
        assert_eq!(last.kind, EventKind::Error);
        assert_eq!(last.code, Some(ErrorCode::SlowConsumer));
        assert_eq!(last.id.as_deref(), Some("s"));
        assert_eq!(last.session.as_deref(), Some("session-s"));
        assert!(last.data.contains("fell behind"), "{}", last.data);
        assert!(streamed.next().await.is_none());
        assert!(matches!(
            streamed.send_stdin("x").await,
            Err(ClientError::ExecutionFinished(_))
        ));
        // The gateway's `cancelled` arrived: the id is free again.
        drop(streamed);
        let again = client.execute(request("s")).await.unwrap();
        assert_eq!(peer.execute_id().await, "s");

        // Waiting: `wait` reports the slow consumer; stdin is refused meanwhile.
        let waited = client.execute(request("w")).await.unwrap();
        assert_eq!(peer.execute_id().await, "w");
        overflow_execution(&mut peer, &mut socket, "w").await;
        // `started`, the nine `stdout` that fit and the one that did not.
        let expected_bytes = 256 + 10 * (OUTPUT + 256);
        match waited.wait().await {
            Err(ClientError::SlowConsumer {
                id,
                buffered_bytes,
                limit,
            }) => {
                assert_eq!(id, "w");
                assert_eq!((buffered_bytes, limit), (expected_bytes, SLOW_BUDGET));
            }
            other => panic!("expected SlowConsumer, got {other:?}"),
        }

        // The other executions on the client were not affected.
        peer.send(&completed("s", 1, 0)).await;
        assert!(again.wait().await.unwrap().success());
    })
    .await;
}

#[tokio::test]
async fn stdin_after_falling_behind_reports_the_slow_consumer() {
    within(async {
        let options = ClientOptions {
            execution_buffer_bytes: SLOW_BUDGET,
            ..ClientOptions::default()
        };
        let (client, mut peer) = pair(options).await;
        let execution = client.execute_code_stream("sh", "yes").await.unwrap();
        peer.execute_id().await;
        let data = "o".repeat(OUTPUT);
        peer.send(&event(EventKind::Started, "e1", 1, "")).await;
        for sequence in 2..=FITTING_EVENTS + 1 {
            peer.send(&event(EventKind::Stdout, "e1", sequence, &data))
                .await;
        }
        assert!(matches!(peer.frame().await, ClientFrame::Cancel(c) if c.id == "e1"));
        assert!(matches!(
            execution.send_stdin("more").await,
            Err(ClientError::SlowConsumer { id, .. }) if id == "e1"
        ));
        // Cancelling again sends nothing more: the next frame is the next execute.
        execution.cancel().await.unwrap();
        client.execute_code_stream("sh", "true").await.unwrap();
        assert!(matches!(peer.frame().await, ClientFrame::Execute(_)));
        assert!(matches!(
            execution.wait().await,
            Err(ClientError::SlowConsumer { .. })
        ));
    })
    .await;
}

#[tokio::test]
async fn a_consumer_that_keeps_up_is_never_cut_off() {
    within(async {
        // A budget smaller than one event: each event still arrives while the buffer is
        // empty, so a consumer reading one event at a time loses nothing.
        let options = ClientOptions {
            execution_buffer_bytes: 1,
            ..ClientOptions::default()
        };
        let (client, mut peer) = pair(options).await;
        let mut execution = client.execute_code_stream("sh", "yes").await.unwrap();
        peer.execute_id().await;
        peer.send(&event(EventKind::Started, "e1", 1, "")).await;
        assert_eq!(execution.next().await.unwrap().sequence, 1);
        for sequence in 2..50 {
            peer.send(&event(EventKind::Stdout, "e1", sequence, "y\n"))
                .await;
            assert_eq!(execution.next().await.unwrap().sequence, sequence);
        }
        // A terminal event is taken even over the budget.
        peer.send(&event(EventKind::Stdout, "e1", 50, "y\n")).await;
        peer.send(&completed("e1", 51, 0)).await;
        let outcome = execution.wait().await.unwrap();
        let sequences: Vec<u64> = outcome.events.iter().map(|e| e.sequence).collect();
        assert_eq!(sequences, vec![50, 51]);
    })
    .await;
}

#[tokio::test]
async fn a_session_subscriber_that_falls_behind_is_detached_and_told() {
    within(async {
        // A session's events count like an execution's: ten 100-byte events fit.
        let options = ClientOptions {
            execution_buffer_bytes: SLOW_BUDGET,
            ..ClientOptions::default()
        };
        let (client, mut peer) = pair(options).await;
        let attaching = tokio::spawn({
            let client = client.clone();
            async move { client.attach("s", None).await }
        });
        assert_eq!(peer.attach().await.since, Some(0));
        peer.attached("s", 0).await;
        let mut events = attaching.await.unwrap().unwrap();
        let data = "o".repeat(OUTPUT);
        for sequence in 1..=FITTING_EVENTS + 5 {
            peer.send(&in_session("s", EventKind::Stdout, "x", sequence, &data))
                .await;
        }
        // Nothing else here reads the session: the client lets go of it.
        assert!(matches!(peer.frame().await, ClientFrame::Detach(d) if d.session == "s"));
        for sequence in 1..=FITTING_EVENTS {
            assert_eq!(events.next().await.unwrap().sequence, sequence);
        }
        let last = events.next().await.unwrap();
        assert!(is_synthetic(&last), "{last:?}");
        assert_eq!(last.kind, EventKind::Error);
        assert_eq!(last.code, Some(ErrorCode::SlowConsumer));
        assert_eq!(last.code.map(ErrorCode::as_str), Some("slow_consumer"));
        assert_eq!(
            (last.id.as_deref(), last.session.as_deref()),
            (None, Some("s"))
        );
        assert!(last.data.contains("fell behind"), "{}", last.data);
        assert!(events.next().await.is_none());
        // The client goes on: a new subscription to the session is a new `attach`.
        let again = tokio::spawn({
            let client = client.clone();
            async move { client.attach("s", Some(FITTING_EVENTS)).await }
        });
        assert_eq!(peer.attach().await.since, Some(FITTING_EVENTS));
        peer.attached("s", FITTING_EVENTS).await;
        assert_eq!(
            again.await.unwrap().unwrap().last_sequence(),
            FITTING_EVENTS
        );
    })
    .await;
}
