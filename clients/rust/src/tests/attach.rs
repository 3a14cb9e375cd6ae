//! Attach bookkeeping against the scripted peer: `attached` and refusals, one `attach` of
//! a session at a time, `detach` and the late events of a session let go.

use super::peer::*;
use crate::ClientError;
use futures::StreamExt;
use sluice_protocol::{ClientFrame, ErrorCode, Event, EventKind};

#[tokio::test]
async fn attach_succeeds_on_attached_and_fails_on_the_refusal_naming_its_session() {
    within(async {
        let (client, mut peer, _peers, _) = reconnecting_pair(reconnecting(3)).await;
        let mut socket = client.socket_events().unwrap();
        let refused = tokio::spawn({
            let client = client.clone();
            async move { client.attach("gone", Some(3)).await }
        });
        let attach = peer.attach().await;
        assert_eq!((attach.session.as_str(), attach.since), ("gone", Some(3)));
        // Refusals of other frames first: one naming no session, one naming another.
        peer.refuse(ErrorCode::UnknownExecution, "no execution \"x\"")
            .await;
        peer.refuse_for("other", ErrorCode::UnknownSession, "no session \"other\"")
            .await;
        // And one naming the session, for another frame than an attach.
        peer.refuse_for("gone", ErrorCode::StdinFull, "stdin of \"x\" is full")
            .await;
        peer.refuse_for(
            "gone",
            ErrorCode::UnknownSession,
            "no session \"gone\" is open",
        )
        .await;
        match refused.await.unwrap() {
            Err(ClientError::AttachRefused {
                session,
                code,
                message,
            }) => {
                assert_eq!(
                    (session.as_str(), code),
                    ("gone", ErrorCode::UnknownSession)
                );
                assert_eq!(message, "no session \"gone\" is open");
            }
            other => panic!("expected AttachRefused, got {other:?}"),
        }
        for code in [
            ErrorCode::UnknownExecution,
            ErrorCode::UnknownSession,
            ErrorCode::StdinFull,
        ] {
            assert_eq!(socket.recv().await.unwrap().code, Some(code));
        }

        let accepted = tokio::spawn({
            let client = client.clone();
            async move { client.attach("here", None).await }
        });
        assert_eq!(peer.attach().await.since, Some(0));
        peer.attached("here", 0).await;
        let mut events = accepted.await.unwrap().unwrap();
        peer.send(&in_session("here", EventKind::Stdout, "other", 1, "hi"))
            .await;
        // The `attached` answer is not an item of the stream.
        let first = events.next().await.unwrap();
        assert_eq!((first.kind, first.data.as_str()), (EventKind::Stdout, "hi"));
        assert_eq!(events.last_sequence(), 1);
        peer.refuse(ErrorCode::BadRequest, "marker").await;
        assert_eq!(socket.recv().await.unwrap().data, "marker");
    })
    .await;
}

#[tokio::test]
async fn one_attach_of_a_session_at_a_time_and_each_subscriber_from_its_own_since() {
    within(async {
        let (client, mut peer, _peers, _) = reconnecting_pair(reconnecting(3)).await;
        let first = tokio::spawn({
            let client = client.clone();
            async move { client.attach("s", Some(5)).await }
        });
        let attach = peer.attach().await;
        // A reconnecting client acknowledges, and says so in the frame.
        assert_eq!((attach.since, attach.ack), (Some(5), true));
        // Two more while the first is on its way: one that it covers, one that needs
        // earlier events. Polled once, their commands are queued.
        let mut covered = Box::pin(client.attach("s", Some(7)));
        let mut earlier = Box::pin(client.attach("s", Some(2)));
        assert!(futures::poll!(&mut covered).is_pending());
        assert!(futures::poll!(&mut earlier).is_pending());
        // A marker: once its frame arrives, both were handled, and sent nothing.
        let _marker = client.execute_code_stream("sh", "true").await.unwrap();
        assert!(matches!(
            peer.frame_skipping_acks().await,
            ClientFrame::Execute(request) if request.ack
        ));

        peer.attached("s", 5).await;
        let mut first = first.await.unwrap().unwrap();
        let mut covered = covered.await.unwrap();
        for sequence in 6..=8 {
            peer.send(&in_session("s", EventKind::Stdout, "x", sequence, "o"))
                .await;
        }
        // Now the one that needs earlier events is asked for.
        assert_eq!(peer.attach().await.since, Some(2));
        // Events of the old position still on their way are not the new subscriber's.
        peer.send(&in_session("s", EventKind::Stdout, "x", 9, "o"))
            .await;
        peer.attached("s", 2).await;
        let mut earlier = earlier.await.unwrap();
        for sequence in 3..=10 {
            peer.send(&in_session("s", EventKind::Stdout, "x", sequence, "o"))
                .await;
        }
        let sequences = |range: std::ops::RangeInclusive<u64>| range.collect::<Vec<_>>();
        for (stream, expected) in [
            (&mut first, sequences(6..=10)),
            (&mut covered, sequences(8..=10)),
            (&mut earlier, sequences(3..=10)),
        ] {
            let mut got = Vec::new();
            while got.len() < expected.len() {
                got.push(stream.next().await.unwrap().sequence);
            }
            assert_eq!(got, expected);
            assert_eq!(stream.last_sequence(), 10);
        }
    })
    .await;
}

#[tokio::test]
async fn the_refused_detach_of_a_session_let_go_and_its_late_events_stay_hidden() {
    within(async {
        let (client, mut peer, _peers, _) = reconnecting_pair(reconnecting(3)).await;
        let mut socket = client.socket_events().unwrap();
        let attaching = tokio::spawn({
            let client = client.clone();
            async move { client.attach("done", None).await }
        });
        peer.attach().await;
        peer.attached("done", 0).await;
        let events = attaching.await.unwrap().unwrap();
        events.detach().await.unwrap();
        match peer.frame_skipping_acks().await {
            ClientFrame::Detach(detach) => assert_eq!(detach.session, "done"),
            other => panic!("expected detach, got {other:?}"),
        }
        // An event that was on its way, then the refusal: the gateway had let go.
        let late = Event {
            session: Some("done".into()),
            ..Event::error(Some("x".into()), ErrorCode::Internal, "late")
        };
        peer.send(&Event {
            sequence: 1,
            timestamp: 1.0,
            ..late
        })
        .await;
        peer.refuse_for("done", ErrorCode::UnknownSession, "no session \"done\"")
            .await;
        peer.refuse(ErrorCode::BadRequest, "marker").await;
        assert_eq!(socket.recv().await.unwrap().data, "marker");
    })
    .await;
}

#[tokio::test]
async fn events_on_their_way_from_before_a_detach_do_not_precede_the_next_attach() {
    within(async {
        let (client, mut peer, _peers, _) = reconnecting_pair(reconnecting(3)).await;
        let mut socket = client.socket_events().unwrap();
        let attaching = tokio::spawn({
            let client = client.clone();
            async move { client.attach("s", None).await }
        });
        peer.attach().await;
        peer.attached("s", 0).await;
        let mut events = attaching.await.unwrap().unwrap();
        peer.send(&in_session("s", EventKind::Started, "x", 1, ""))
            .await;
        assert_eq!(events.next().await.unwrap().sequence, 1);
        events.detach().await.unwrap();
        assert!(matches!(
            peer.frame_skipping_acks().await,
            ClientFrame::Detach(_)
        ));
        let attaching = tokio::spawn({
            let client = client.clone();
            async move { client.attach("s", None).await }
        });
        assert_eq!(peer.attach().await.since, Some(0));
        // Sent before the gateway handled the `detach`: nobody's, not even a socket event.
        let terminal = Event {
            session: Some("s".into()),
            ..Event::error(Some("x".into()), ErrorCode::Internal, "boom")
        };
        let terminal = Event {
            sequence: 2,
            timestamp: 3.0,
            ..terminal
        };
        peer.send(&terminal).await;
        peer.attached("s", 0).await;
        let mut events = attaching.await.unwrap().unwrap();
        peer.send(&in_session("s", EventKind::Started, "x", 1, ""))
            .await;
        peer.send(&terminal).await;
        let replayed = [events.next().await.unwrap(), events.next().await.unwrap()];
        assert_eq!(replayed.map(|e| e.sequence), [1, 2]);
        peer.refuse(ErrorCode::BadRequest, "marker").await;
        assert_eq!(socket.recv().await.unwrap().data, "marker");
    })
    .await;
}

#[tokio::test]
async fn an_attached_nothing_waits_for_is_let_go() {
    within(async {
        let (_client, mut peer, _peers, _) = reconnecting_pair(reconnecting(3)).await;
        peer.attached("stray", 0).await;
        match peer.frame_skipping_acks().await {
            ClientFrame::Detach(detach) => assert_eq!(detach.session, "stray"),
            other => panic!("expected detach, got {other:?}"),
        }
    })
    .await;
}
