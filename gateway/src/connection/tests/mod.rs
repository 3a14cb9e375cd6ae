//! Unit tests of one connection through a fake peer. A pair of channels stands in for
//! the WebSocket ([`Peer`]); behind it is a real [`GatewayState`] (isolation none, the
//! `sh` and `bash` runtimes, real child processes) without a listener ([`Gateway`]).
//! They reach what end-to-end tests reach slowly or not at all: refusals and their
//! codes, routing by id, cursors and replay, fan-out, repeated ids, the grace period,
//! the writer's order, and liveness on a paused clock.
//!
//! Every wait is for an event, with a deadline ([`PATIENCE`]) that only turns a hang
//! into a failure.
//!
//! - [`frames`]: decoding, refusals, execute, stdin and cancel.
//! - [`sessions`]: attach, detach, ack, replay, fan-out, repeated ids, grace.
//! - [`liveness`]: pings, the idle timeout, close codes, the writer's order.

mod frames;
mod liveness;
mod sessions;

use super::serve;
use crate::admission::Principal;
use crate::config::{Config, Isolation, Network};
use crate::meter::Meter;
use crate::runtime::RuntimeSpec;
use crate::state::GatewayState;
use axum::extract::ws::{CloseFrame, Message};
use futures::channel::mpsc;
use futures::StreamExt as _;
use serde_json::{json, Value};
use sluice_protocol::{ErrorCode, Event, EventKind};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;

/// How long a test waits for something the gateway owes it before it fails. Only a
/// hang ever takes this long.
const PATIENCE: Duration = Duration::from_secs(30);

/// Messages the fake socket buffers towards the peer before the writer waits.
const PEER_BUFFER: usize = 1024;

/// A configuration for unit tests: no isolation, `sh` and `bash` only, and timers
/// (ping, idle) far enough away that only tests about them meet them.
fn config() -> Config {
    Config {
        isolation: Isolation::None,
        network: Network::On,
        runtimes: RuntimeSpec::defaults()
            .into_iter()
            .filter(|r| r.name == "sh" || r.name == "bash")
            .collect(),
        ping_interval: Duration::from_secs(3_600),
        idle_timeout: Duration::from_secs(3_600),
        ..Config::default()
    }
}

/// A gateway without a listener: the state every connection shares, built by
/// `server::build` exactly as `server::run` builds it.
struct Gateway {
    state: Arc<GatewayState>,
    /// Holds the work root (removed on drop).
    _built: crate::server::Built,
    next_peer_port: u16,
}

impl Gateway {
    async fn new(config: Config) -> Self {
        let built = crate::server::build(config)
            .await
            .unwrap_or_else(|err| panic!("the test gateway builds: {err}"));
        assert!(
            built.state.runtimes.get("sh").is_some(),
            "the connection tests need `sh` on PATH"
        );
        Self {
            state: built.state.clone(),
            _built: built,
            next_peer_port: 40_000,
        }
    }

    /// A gateway with the unit-test configuration.
    async fn start() -> Self {
        Self::new(config()).await
    }

    /// Serves a new fake socket.
    fn connect(&mut self) -> Peer {
        self.connect_with_buffer(PEER_BUFFER)
    }

    /// Serves a new fake socket that holds `buffer` + 1 messages the peer has not read.
    fn connect_with_buffer(&mut self, buffer: usize) -> Peer {
        let (to_gateway, frames) = mpsc::unbounded();
        let (sink, from_gateway) = mpsc::channel(buffer);
        let state = self.state.clone();
        let socket_id = state.next_connection_id.fetch_add(1, Ordering::Relaxed);
        self.next_peer_port += 1;
        let addr = SocketAddr::from(([127, 0, 0, 1], self.next_peer_port));
        let meter = Meter::detached(&state.buffers);
        let shutdown = state.shutdown.child_token();
        let served = tokio::spawn(serve(
            sink,
            frames,
            state,
            shutdown,
            socket_id,
            crate::connection::Caller::anonymous(addr),
            meter,
        ));
        Peer {
            to_gateway,
            from_gateway,
            served,
        }
    }

    /// The live session named `name`, if any.
    fn session(&self, name: &str) -> Option<Arc<crate::session::Session>> {
        // Anonymous clients share one namespace, whatever their address.
        let anyone = Principal::of_peer(SocketAddr::from(([127, 0, 0, 1], 1)));
        self.state.sessions.get(&anyone, name)
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        // Ends every execution (their process groups are killed as their tasks go).
        self.state.shutdown.cancel();
    }
}

/// The client's end of a fake socket.
struct Peer {
    to_gateway: mpsc::UnboundedSender<Result<Message, axum::Error>>,
    from_gateway: mpsc::Receiver<Message>,
    served: JoinHandle<()>,
}

impl Peer {
    /// Sends one message to the gateway.
    fn send_message(&self, message: Message) {
        self.to_gateway
            .unbounded_send(Ok(message))
            .expect("the connection still reads");
    }

    /// Sends one text frame.
    fn send_text(&self, text: &str) {
        self.send_message(Message::Text(text.into()));
    }

    /// Sends one JSON frame.
    fn send(&self, frame: Value) {
        self.send_text(&frame.to_string());
    }

    /// Makes the socket's next read fail with `err`.
    fn fail_read(&self, err: axum::Error) {
        self.to_gateway
            .unbounded_send(Err(err))
            .expect("the connection still reads");
    }

    /// Sends an `execute` of `code` in `sh`.
    fn execute(&self, id: &str, code: &str) {
        self.send(json!({"type": "execute", "id": id, "language": "sh", "code": code}));
    }

    /// Sends an `execute` of `code` in `sh` in the session `session`.
    fn execute_in(&self, session: &str, id: &str, code: &str) {
        self.send(json!({
            "type": "execute", "id": id, "language": "sh", "code": code, "session": session
        }));
    }

    /// The next message the gateway writes, pings included; `None` once it closed the
    /// socket.
    async fn message(&mut self) -> Option<Message> {
        tokio::time::timeout(PATIENCE, self.from_gateway.next())
            .await
            .expect("the gateway wrote nothing within the test's patience")
    }

    /// The next event's text as the gateway wrote it (pings are skipped).
    async fn text(&mut self) -> String {
        loop {
            match self.message().await {
                Some(Message::Text(text)) => return text.as_str().to_owned(),
                Some(Message::Ping(_)) => continue,
                other => panic!("expected an event, got {other:?}"),
            }
        }
    }

    /// The next event, decoded and checked against the protocol.
    async fn event(&mut self) -> Event {
        let text = self.text().await;
        Event::decode(&text).unwrap_or_else(|err| panic!("invalid event {text}: {err}"))
    }

    /// Events up to and including the first that `last` accepts.
    async fn events_until(&mut self, last: impl Fn(&Event) -> bool) -> Vec<Event> {
        let mut events = Vec::new();
        loop {
            let event = self.event().await;
            let done = last(&event);
            events.push(event);
            if done {
                return events;
            }
        }
    }

    /// The events of execution `id`, from the next one to its terminal event.
    async fn execution(&mut self, id: &str) -> Vec<Event> {
        self.events_until(|e| e.is_terminal() && e.id.as_deref() == Some(id))
            .await
    }

    /// The next event, which must be a refusal with `code` on the socket's own stream.
    async fn refusal(&mut self, code: ErrorCode) -> Event {
        let event = self.event().await;
        assert_eq!(event.kind, EventKind::Error, "{event:?}");
        assert_eq!(event.code, Some(code), "{event:?}");
        assert_eq!(
            event.session, None,
            "refusals are on the own stream: {event:?}"
        );
        event
    }

    /// The close frame the gateway ends with (skipping pings; failing on events), or
    /// `None` if it closed the socket without one.
    async fn close_frame(&mut self) -> Option<CloseFrame> {
        loop {
            match self.message().await {
                Some(Message::Ping(_)) => continue,
                Some(Message::Close(frame)) => {
                    assert!(self.message().await.is_none(), "nothing after the close");
                    return frame;
                }
                None => return None,
                Some(other) => panic!("expected the close, got {other:?}"),
            }
        }
    }

    /// Goes away without a close frame (the TCP connection dropped), and waits until
    /// the connection has let go of everything.
    async fn vanish(self) {
        let Self {
            to_gateway,
            from_gateway,
            served,
        } = self;
        drop(to_gateway);
        drop(from_gateway);
        tokio::time::timeout(PATIENCE, served)
            .await
            .expect("the connection ends when its socket does")
            .expect("the connection task does not fail");
    }

    /// Waits until the connection task has ended.
    async fn served(&mut self) {
        tokio::time::timeout(PATIENCE, &mut self.served)
            .await
            .expect("the connection ends")
            .expect("the connection task does not fail");
    }
}

/// The events' sequence numbers.
fn sequences(events: &[Event]) -> Vec<u64> {
    events.iter().map(|e| e.sequence).collect()
}

/// The events' kinds.
fn kinds(events: &[Event]) -> Vec<EventKind> {
    events.iter().map(|e| e.kind).collect()
}

/// What the events carry on stdout, concatenated.
fn stdout(events: &[Event]) -> String {
    events
        .iter()
        .filter(|e| e.kind == EventKind::Stdout)
        .map(|e| e.data.as_str())
        .collect()
}

/// Asserts `events` are numbered `first`, `first + 1`, ... without a gap.
fn assert_consecutive(events: &[Event], first: u64) {
    let expected: Vec<u64> = (first..).take(events.len()).collect();
    assert_eq!(sequences(events), expected, "{events:#?}");
}
