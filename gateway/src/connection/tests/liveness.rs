//! How a socket ends, and the writer's order: pings on a clock and the close after two
//! silent intervals, the idle timeout (never while the socket holds an execution),
//! close codes for read errors, the client's close and shutdown, a client that stops
//! reading, every stream's order kept when the writer interleaves streams, and the
//! writer's interval between writes to a busy socket. Timers run on a paused clock.

use super::*;
use tungstenite::error::CapacityError;

#[tokio::test(start_paused = true)]
async fn a_client_that_answers_pings_stays_and_one_that_does_not_is_closed_with_1001() {
    let mut gateway = Gateway::new(Config {
        ping_interval: Duration::from_secs(10),
        ..config()
    })
    .await;
    let mut peer = gateway.connect();
    for _ in 0..5 {
        assert!(
            matches!(peer.message().await, Some(Message::Ping(_))),
            "pinged on the clock"
        );
        peer.send_message(Message::Pong(Default::default()));
    }
    // Silent from here: pinged once or twice more, then closed.
    let close = peer.close_frame().await.expect("a close frame");
    assert_eq!(close.code, 1001);
    assert!(close.reason.contains("ping"), "{close:?}");
    peer.served().await;
}

#[tokio::test(start_paused = true)]
async fn a_socket_is_closed_with_1000_once_idle_but_never_while_it_runs_something() {
    let idle = Duration::from_secs(10);
    let mut config = config();
    config.idle_timeout = idle;
    config.limits.timeout_ms.default = 600_000;
    let mut gateway = Gateway::new(config).await;

    // The program never ends while the clock is paused: an exit needs real time, which
    // the paused clock would skip past.
    let mut busy = gateway.connect();
    busy.execute("wait", "read line");
    assert_eq!(busy.event().await.kind, EventKind::Started);
    tokio::time::advance(idle * 6).await;
    // Still open: a frame is still answered.
    busy.send_text("not json");
    busy.refusal(ErrorCode::BadRequest).await;
    let mut idle_peer = gateway.connect();
    let close = idle_peer.close_frame().await.expect("a close frame");
    assert_eq!(close.code, 1000);
    assert!(close.reason.contains("idle"), "{close:?}");
}

#[tokio::test]
async fn protocol_violations_close_with_their_code_and_other_read_errors_without_a_frame() {
    use tungstenite::error::ProtocolError;
    let mut gateway = Gateway::start().await;
    let cases = [
        (
            tungstenite::Error::Capacity(CapacityError::MessageTooLong {
                size: 1 << 30,
                max_size: 1 << 22,
            }),
            1009,
            "larger than",
        ),
        (
            tungstenite::Error::Protocol(ProtocolError::UnmaskedFrameFromClient),
            1002,
            "masked",
        ),
        (
            tungstenite::Error::Protocol(ProtocolError::UnknownDataFrameType(3)),
            1002,
            "reserved opcode",
        ),
        (
            tungstenite::Error::Utf8("invalid utf-8 sequence".into()),
            1007,
            "UTF-8",
        ),
    ];
    for (err, code, said) in cases {
        let mut peer = gateway.connect();
        peer.fail_read(axum::Error::new(err));
        let close = peer.close_frame().await.expect("a close frame");
        assert_eq!(close.code, code, "{close:?}");
        assert!(close.reason.contains(said), "{close:?}");
        peer.served().await;
    }

    // Errors that are no fault of the client's framing end the socket without a frame.
    let mut broken = gateway.connect();
    broken.fail_read(axum::Error::new(std::io::Error::other("connection reset")));
    assert!(broken.close_frame().await.is_none());
    broken.served().await;
    let mut vanished = gateway.connect();
    vanished.fail_read(axum::Error::new(tungstenite::Error::Protocol(
        ProtocolError::ResetWithoutClosingHandshake,
    )));
    assert!(vanished.close_frame().await.is_none());
    vanished.served().await;
}

#[tokio::test]
async fn after_the_clients_close_frame_the_gateway_sends_nothing() {
    let mut gateway = Gateway::start().await;
    let mut peer = gateway.connect();
    peer.execute("job", "echo hi");
    peer.execution("job").await;
    peer.send_message(Message::Close(None));
    // The WebSocket layer answers the close itself; the writer only lets go.
    assert!(peer.close_frame().await.is_none());
    peer.served().await;
}

#[tokio::test]
async fn on_shutdown_a_running_execution_is_cancelled_then_the_socket_closes_with_1001() {
    let mut gateway = Gateway::start().await;
    let mut peer = gateway.connect();
    peer.execute("wait", "read line");
    assert_eq!(peer.event().await.kind, EventKind::Started);
    // As `server::run` does: cancel everything, let the executions' tracker drain.
    gateway.state.shutdown.cancel();
    gateway.state.executions.close();
    assert_eq!(kinds(&peer.execution("wait").await), [EventKind::Cancelled]);
    let close = peer.close_frame().await.expect("a close frame");
    assert_eq!(close.code, 1001);
    assert_eq!(close.reason.as_str(), "gateway shutting down");
    peer.served().await;
}

#[tokio::test(start_paused = true)]
async fn a_client_that_stops_reading_is_let_go_after_the_send_timeout() {
    let mut gateway = Gateway::new(Config {
        send_timeout: Duration::from_secs(5),
        ..config()
    })
    .await;
    // A socket that holds a single message, which the client never takes.
    let mut peer = gateway.connect_with_buffer(0);
    for _ in 0..8 {
        peer.send_text("not json");
    }
    peer.served().await;
    let mut delivered = 0;
    while let Some(message) = peer.message().await {
        assert!(matches!(message, Message::Text(_)), "{message:?}");
        delivered += 1;
    }
    assert!(delivered < 8, "the writer gave up: {delivered} delivered");
}

#[tokio::test]
async fn the_writer_keeps_every_streams_order_while_it_interleaves_them() {
    let mut gateway = Gateway::start().await;
    let mut peer = gateway.connect();
    let lines = "for i in 1 2 3 4 5 6 7 8; do echo $i; echo $i >&2; done";
    peer.execute_in("left", "l", lines);
    peer.send_text("refused 1");
    peer.execute_in("right", "r", lines);
    peer.send_text("refused 2");
    peer.execute("solo", lines);
    peer.send_text("refused 3");

    let mut terminal = 0;
    let mut by_stream: std::collections::BTreeMap<Option<String>, Vec<Event>> = Default::default();
    while terminal < 3 || by_stream.get(&None).map_or(0, Vec::len) < 3 {
        let event = peer.event().await;
        if event.is_terminal() {
            terminal += 1;
        }
        by_stream
            .entry(event.session.clone())
            .or_default()
            .push(event);
    }
    assert_eq!(by_stream.len(), 4, "own, left, right and solo's session");
    for (stream, events) in &by_stream {
        assert_consecutive(events, 1);
        if stream.is_some() {
            assert_eq!(events[0].kind, EventKind::Started);
            assert!(events.last().is_some_and(Event::is_terminal));
            assert_eq!(stdout(events), "1\n2\n3\n4\n5\n6\n7\n8\n");
        }
    }
}

/// A sink that records what each flush wrote, and when (on the test's clock).
#[derive(Default)]
struct FlushLog {
    feeding: Vec<String>,
    flushed: Vec<(tokio::time::Instant, Vec<String>)>,
}

#[derive(Clone, Default)]
struct RecordingSink {
    log: Arc<std::sync::Mutex<FlushLog>>,
    flushed: Arc<tokio::sync::Notify>,
}

impl futures::Sink<Message> for RecordingSink {
    type Error = std::convert::Infallible;

    fn poll_ready(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn start_send(self: std::pin::Pin<&mut Self>, message: Message) -> Result<(), Self::Error> {
        if let Message::Text(text) = message {
            let event: Event =
                serde_json::from_str(text.as_str()).expect("the writer sends events");
            let mut log = self.log.lock().expect("log");
            log.feeding.push(event.data);
        }
        Ok(())
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        let mut log = self.log.lock().expect("log");
        if !log.feeding.is_empty() {
            let frames = std::mem::take(&mut log.feeding);
            log.flushed.push((tokio::time::Instant::now(), frames));
            self.flushed.notify_one();
        }
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_close(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.poll_flush(cx)
    }
}

/// A writer task over a [`RecordingSink`], reading its socket's own stream: the stream
/// (to publish on), the sink (to read the writes from), the token that finishes the
/// writer, and the task.
struct WriterUnderTest {
    _gateway: Gateway,
    /// The socket's own stream.
    own: Arc<crate::fanout::EventStream>,
    /// The sessions it reads; the test publishes on the first, else on `own`.
    sessions: Vec<Arc<crate::session::Session>>,
    sink: RecordingSink,
    finish: tokio_util::sync::CancellationToken,
    writer: tokio::task::JoinHandle<()>,
}

impl WriterUnderTest {
    async fn start() -> Self {
        Self::reading_sessions(0).await
    }

    /// The same, its socket reading `sessions` gateway-made sessions as well (still
    /// running), the first of which the test publishes on.
    async fn reading_sessions(sessions: usize) -> Self {
        use crate::connection::writer::{write_loop, Writer};
        let gateway = Gateway::start().await;
        let state = gateway.state.clone();
        let own = Arc::new(crate::fanout::EventStream::new(
            None,
            crate::fanout::ReplayCaps::from_config(&state.config),
            &state.buffers,
        ));
        let link = Arc::new(crate::connection::link::SocketLink::new(9_999, own.clone()));
        let opener = Principal::of_peer(std::net::SocketAddr::from(([127, 0, 0, 1], 1)));
        let mut opened = Vec::new();
        for _ in 0..sessions {
            let session = state
                .sessions
                .open_ephemeral(&opener, None)
                .expect("a session");
            link.subscribe(&session, 0, crate::fanout::Lead::Take, false);
            opened.push(session);
        }
        let sink = RecordingSink::default();
        let finish = tokio_util::sync::CancellationToken::new();
        let writer = tokio::spawn(write_loop(Writer {
            sink: sink.clone(),
            link,
            state: state.clone(),
            failed: tokio_util::sync::CancellationToken::new(),
            shutdown: state.shutdown.child_token(),
            finish: finish.clone(),
            close_reason: Arc::default(),
            peer_closed: Arc::default(),
        }));
        Self {
            _gateway: gateway,
            own,
            sessions: opened,
            sink,
            finish,
            writer,
        }
    }

    /// Publishes `data` (as an event) where the test publishes.
    fn publish(&self, data: &str) {
        let event = Event::new(EventKind::Error, None, data);
        match self.sessions.first() {
            Some(session) => session.stream.publish(event),
            None => self.own.publish(event),
        };
    }

    /// Waits until the sink has seen `n` flushes.
    async fn flushes(&self, n: usize) {
        tokio::time::timeout(PATIENCE, async {
            loop {
                let flushed = self.sink.flushed.notified();
                if self.sink.log.lock().expect("log").flushed.len() >= n {
                    break;
                }
                flushed.await;
            }
        })
        .await
        .expect("the writer flushes");
    }
}

#[tokio::test(start_paused = true)]
async fn a_busy_socket_gets_one_write_per_interval_and_an_exchange_goes_at_once() {
    // Two sessions running on the socket: producers that do not wait for each other.
    let mut test = WriterUnderTest::reading_sessions(2).await;

    use crate::connection::writer::{QUICK_WRITES, WRITE_INTERVAL};
    let quick = QUICK_WRITES as usize;
    let start = tokio::time::Instant::now();
    // An exchange on a quiet socket (started, a line, completed...) goes out at once,
    // one write per event, however close together.
    for n in 0..quick {
        test.publish(&format!("q{n}"));
        test.flushes(n + 1).await;
    }
    // Now busy: b and c, within the interval of the last write, wait for its end and
    // share a write.
    test.publish("b");
    tokio::time::advance(Duration::from_millis(1)).await;
    test.publish("c");
    test.flushes(quick + 1).await;
    // A socket quiet for longer than the interval sends at once.
    tokio::time::advance(Duration::from_millis(50)).await;
    let quiet = tokio::time::Instant::now();
    test.publish("d");
    test.flushes(quick + 2).await;
    test.finish.cancel();
    (&mut test.writer).await.expect("the writer ends");

    let log = test.sink.log.lock().expect("log");
    let groups: Vec<Vec<String>> = log.flushed.iter().map(|(_, f)| f.clone()).collect();
    let mut expected: Vec<Vec<String>> = (0..quick).map(|n| vec![format!("q{n}")]).collect();
    expected.push(vec!["b".into(), "c".into()]);
    expected.push(vec!["d".into()]);
    assert_eq!(groups, expected);
    let at: Vec<Duration> = log.flushed.iter().map(|(at, _)| *at - start).collect();
    assert!(
        at[..quick].iter().all(|at| at.is_zero()),
        "the first events of a run wait for nothing: {at:?}"
    );
    assert_eq!(at[quick], WRITE_INTERVAL);
    assert_eq!(
        log.flushed[quick + 1].0,
        quiet,
        "nor does one on a socket that was quiet"
    );
}

/// More than a batch waits in the stream and nothing more is published (a program
/// that printed its buffer full and exited): the writer takes the rest at once, batch
/// after batch, instead of waiting for news after each write (which stalled such a
/// socket until the next ping, half a minute a batch).
#[tokio::test(start_paused = true)]
async fn what_a_batch_leaves_behind_is_taken_without_news() {
    let mut test = WriterUnderTest::start().await;
    let big = "z".repeat(64 << 10);
    let count = 16; // 1 MiB: four batches at least
    for _ in 0..count {
        test.publish(&big);
    }
    let start = tokio::time::Instant::now();
    let all_written = async {
        loop {
            let flushed = test.sink.flushed.notified();
            let (events, writes) = {
                let log = test.sink.log.lock().expect("log");
                let events: usize = log.flushed.iter().map(|(_, frames)| frames.len()).sum();
                (events, log.flushed.len())
            };
            if events >= count {
                return writes;
            }
            flushed.await;
        }
    };
    let writes = tokio::time::timeout(PATIENCE, all_written)
        .await
        .expect("the writer writes every event");
    assert!(writes > 1, "more than one batch: {writes}");
    // Virtual time (the clock is paused): only the write interval may pass, no ping.
    let took = tokio::time::Instant::now() - start;
    assert!(
        took < Duration::from_millis(100),
        "the writer waited {took:?} between batches"
    );
    test.finish.cancel();
    (&mut test.writer).await.expect("the writer ends");
}

/// A socket that follows one execution at a time (a request, its events, the next
/// request: the bench's latency loop, a notebook's cells) never waits for the write
/// interval, however quickly its writes follow each other: its next event may be what
/// its client waits for before it sends anything else.
#[tokio::test(start_paused = true)]
async fn a_socket_following_one_session_never_waits_for_the_interval() {
    let mut test = WriterUnderTest::reading_sessions(1).await;
    let start = tokio::time::Instant::now();
    let count = 4 * crate::connection::writer::QUICK_WRITES as usize;
    for n in 0..count {
        test.publish(&format!("e{n}"));
        test.flushes(n + 1).await;
    }
    test.finish.cancel();
    (&mut test.writer).await.expect("the writer ends");
    let log = test.sink.log.lock().expect("log");
    assert_eq!(log.flushed.len(), count, "one write per event");
    assert!(
        log.flushed.iter().all(|(at, _)| *at == start),
        "no write waited: {:?}",
        log.flushed
            .iter()
            .map(|(at, _)| *at - start)
            .collect::<Vec<_>>()
    );
}
