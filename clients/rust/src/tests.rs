//! Tests of the connection task against a scripted in-memory peer: routing, per-execution
//! buffering and slow consumers, drop-cancels, connection loss and closing, with no
//! gateway and no network.

use crate::{is_synthetic, Client, ClientError, ClientOptions};
use futures::{SinkExt, StreamExt};
use sluice_protocol::{ClientFrame, ErrorCode, Event, EventKind, ExecuteRequest};
use std::future::Future;
use std::time::Duration;
use tokio::io::DuplexStream;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// The gateway's side of an in-memory socket, driven by the test.
struct Peer {
    ws: WebSocketStream<DuplexStream>,
    /// The peer's socket-stream counter.
    socket_sequence: u64,
}

impl Peer {
    async fn frame(&mut self) -> ClientFrame {
        loop {
            match self.ws.next().await {
                Some(Ok(Message::Text(text))) => {
                    return ClientFrame::decode(text.as_str()).unwrap()
                }
                Some(Ok(_)) => continue,
                other => panic!("expected a frame, got {other:?}"),
            }
        }
    }

    async fn execute_id(&mut self) -> String {
        match self.frame().await {
            ClientFrame::Execute(request) => request.id,
            other => panic!("expected execute, got {other:?}"),
        }
    }

    async fn send(&mut self, event: &Event) {
        self.ws.send(Message::text(event.to_json())).await.unwrap();
    }

    async fn send_raw(&mut self, text: &str) {
        self.ws.send(Message::text(text.to_owned())).await.unwrap();
    }

    /// A socket-stream `error` (id null), as the gateway sends for refused stdin/cancel.
    async fn refuse(&mut self, code: ErrorCode, message: &str) {
        self.socket_sequence += 1;
        let mut event = Event::error(None, code, message);
        event.sequence = self.socket_sequence;
        event.timestamp = 1.0;
        self.send(&event).await;
    }
}

async fn pair(options: ClientOptions) -> (Client, Peer) {
    let (client_io, peer_io) = tokio::io::duplex(64 * 1024);
    let client_ws = WebSocketStream::from_raw_socket(client_io, Role::Client, None).await;
    let peer_ws = WebSocketStream::from_raw_socket(peer_io, Role::Server, None).await;
    (
        Client::start(client_ws, options, None),
        Peer {
            ws: peer_ws,
            socket_sequence: 0,
        },
    )
}

fn event(kind: EventKind, id: &str, sequence: u64, data: &str) -> Event {
    let mut event = Event::new(kind, Some(id.to_owned()), data);
    event.sequence = sequence;
    event.timestamp = 1.0 + sequence as f64;
    event.session = Some(format!("session-{id}"));
    if kind == EventKind::Started {
        event.pid = Some(4242);
    }
    event
}

fn completed(id: &str, sequence: u64, exit_code: i32) -> Event {
    Event {
        exit_code: Some(exit_code),
        ..event(EventKind::Completed, id, sequence, "")
    }
}

async fn within<T>(future: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), future)
        .await
        .expect("test timed out")
}

#[tokio::test]
async fn routes_events_by_id_and_collects_outcomes() {
    within(async {
        let (client, mut peer) = pair(ClientOptions::default()).await;
        let first = client.execute_code_stream("sh", "echo a").await.unwrap();
        let second = client.execute_code_stream("sh", "echo b").await.unwrap();
        assert_eq!((first.id(), second.id()), ("e1", "e2"));
        assert_eq!(peer.execute_id().await, "e1");
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
async fn a_lagging_consumer_loses_nothing_within_its_budget() {
    within(async {
        let (client, mut peer) = pair(ClientOptions::default()).await;
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
        // Let the peer get ahead of the consumer.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let outcome = execution.wait().await.unwrap();
        let sequences: Vec<u64> = outcome.events.iter().map(|e| e.sequence).collect();
        assert_eq!(sequences, (1..=count).collect::<Vec<_>>());
        assert_eq!(outcome.stdout.len(), 2 * (count as usize - 2));
        sender.await.unwrap();
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
        assert_eq!(last.code, Some(ErrorCode::Other));
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

// ---------------------------------------------------------------------------------------
// Reconnecting
// ---------------------------------------------------------------------------------------

use crate::connection::Connector;
use crate::Reconnect;
use sluice_protocol::AttachFrame;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc;

/// Options that reconnect at once, `attempts` times at most.
fn reconnecting(attempts: u32) -> ClientOptions {
    ClientOptions {
        reconnect: Some(Reconnect {
            initial_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(5),
            max_attempts: Some(attempts),
            ..Reconnect::default()
        }),
        ..ClientOptions::default()
    }
}

/// A client whose reconnects reach new in-memory peers, handed to the test through the
/// receiver; while the flag is set, connecting fails.
async fn reconnecting_pair(
    options: ClientOptions,
) -> (Client, Peer, mpsc::Receiver<Peer>, Arc<AtomicBool>) {
    let (client_io, peer_io) = tokio::io::duplex(64 * 1024);
    let client_ws = WebSocketStream::from_raw_socket(client_io, Role::Client, None).await;
    let peer_ws = WebSocketStream::from_raw_socket(peer_io, Role::Server, None).await;
    let (peers, next_peers) = mpsc::channel(4);
    let refusing = Arc::new(AtomicBool::new(false));
    let refuse = Arc::clone(&refusing);
    let connector: Connector<DuplexStream> = Box::new(move || {
        let peers = peers.clone();
        let refuse = Arc::clone(&refuse);
        Box::pin(async move {
            if refuse.load(Ordering::SeqCst) {
                return Err("connection refused".to_owned());
            }
            let (client_io, peer_io) = tokio::io::duplex(64 * 1024);
            let client_ws = WebSocketStream::from_raw_socket(client_io, Role::Client, None).await;
            let ws = WebSocketStream::from_raw_socket(peer_io, Role::Server, None).await;
            let peer = Peer {
                ws,
                socket_sequence: 0,
            };
            peers.send(peer).await.map_err(|_| "test over".to_owned())?;
            Ok(client_ws)
        })
    });
    let client = Client::start(client_ws, options, Some(connector));
    let peer = Peer {
        ws: peer_ws,
        socket_sequence: 0,
    };
    (client, peer, next_peers, refusing)
}

impl Peer {
    /// The next frame that is not an `ack`.
    async fn frame_skipping_acks(&mut self) -> ClientFrame {
        loop {
            match self.frame().await {
                ClientFrame::Ack(_) => continue,
                other => return other,
            }
        }
    }

    /// Expects an `attach` (after any acks), and returns it.
    async fn attach(&mut self) -> AttachFrame {
        match self.frame_skipping_acks().await {
            ClientFrame::Attach(attach) => attach,
            other => panic!("expected attach, got {other:?}"),
        }
    }

    /// Accepts an `attach` as the gateway does: `attached` on the session's stream.
    async fn attached(&mut self, session: &str, since: u64) {
        let mut event = Event::new(
            EventKind::Attached,
            None,
            format!("attached; events after {since} follow"),
        );
        event.session = Some(session.to_owned());
        event.sequence = since;
        event.timestamp = 1.0;
        event.resume_from = Some(since + 1);
        self.send(&event).await;
    }

    /// Refuses a frame that named `session`, as the gateway does: on the socket stream,
    /// with `for_session`.
    async fn refuse_for(&mut self, session: &str, code: ErrorCode, message: &str) {
        self.socket_sequence += 1;
        let mut event = Event::error(None, code, message);
        event.sequence = self.socket_sequence;
        event.timestamp = 1.0;
        event.for_session = Some(session.to_owned());
        self.send(&event).await;
    }
}

/// An event of execution `id` in session `session`.
fn in_session(session: &str, kind: EventKind, id: &str, sequence: u64, data: &str) -> Event {
    Event {
        session: Some(session.to_owned()),
        ..event(kind, id, sequence, data)
    }
}

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
        assert_eq!(peer.attach().await.since, Some(5));
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
            ClientFrame::Execute(_)
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
