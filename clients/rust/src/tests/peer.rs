//! The scripted peer the client's unit tests talk to: the gateway's side of an in-memory
//! WebSocket, driven frame by frame by the test, and the event builders and options the
//! tests share. No gateway, no network.

use crate::connection::{AttemptError, Connector};
use crate::{Client, ClientOptions, Reconnect};
use futures::{SinkExt, StreamExt};
use sluice_protocol::{AttachFrame, ClientFrame, ErrorCode, Event, EventKind};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::DuplexStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// The gateway's side of an in-memory socket, driven by the test.
pub(super) struct Peer {
    /// The server end of the socket; the client's connection task holds the other end.
    pub(super) ws: WebSocketStream<DuplexStream>,
    /// The peer's socket-stream counter.
    pub(super) socket_sequence: u64,
}

/// A connected in-memory socket: the client's end, and the peer on the other.
pub(super) async fn socket_pair() -> (WebSocketStream<DuplexStream>, Peer) {
    let (client_io, peer_io) = tokio::io::duplex(64 * 1024);
    let client_ws = WebSocketStream::from_raw_socket(client_io, Role::Client, None).await;
    let ws = WebSocketStream::from_raw_socket(peer_io, Role::Server, None).await;
    let peer = Peer {
        ws,
        socket_sequence: 0,
    };
    (client_ws, peer)
}

impl Peer {
    pub(super) async fn frame(&mut self) -> ClientFrame {
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

    pub(super) async fn execute_id(&mut self) -> String {
        match self.frame().await {
            ClientFrame::Execute(request) => request.id,
            other => panic!("expected execute, got {other:?}"),
        }
    }

    pub(super) async fn send(&mut self, event: &Event) {
        self.ws.send(Message::text(event.to_json())).await.unwrap();
    }

    pub(super) async fn send_raw(&mut self, text: &str) {
        self.ws.send(Message::text(text.to_owned())).await.unwrap();
    }

    /// A socket-stream `error` (id null), as the gateway sends for refused stdin/cancel.
    pub(super) async fn refuse(&mut self, code: ErrorCode, message: &str) {
        self.socket_sequence += 1;
        let mut event = Event::error(None, code, message);
        event.sequence = self.socket_sequence;
        event.timestamp = 1.0;
        self.send(&event).await;
    }
}

pub(super) async fn pair(options: ClientOptions) -> (Client, Peer) {
    let (client_ws, peer) = socket_pair().await;
    (Client::start(client_ws, options, None), peer)
}

pub(super) fn event(kind: EventKind, id: &str, sequence: u64, data: &str) -> Event {
    let mut event = Event::new(kind, Some(id.to_owned()), data);
    event.sequence = sequence;
    event.timestamp = 1.0 + sequence as f64;
    event.session = Some(format!("session-{id}"));
    if kind == EventKind::Started {
        event.pid = Some(4242);
    }
    event
}

pub(super) fn completed(id: &str, sequence: u64, exit_code: i32) -> Event {
    Event {
        exit_code: Some(exit_code),
        ..event(EventKind::Completed, id, sequence, "")
    }
}

pub(super) async fn within<T>(future: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), future)
        .await
        .expect("test timed out")
}

/// Options that reconnect at once, `attempts` times at most.
pub(super) fn reconnecting(attempts: u32) -> ClientOptions {
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
pub(super) async fn reconnecting_pair(
    options: ClientOptions,
) -> (Client, Peer, mpsc::Receiver<Peer>, Arc<AtomicBool>) {
    let (client_ws, peer) = socket_pair().await;
    let (peers, next_peers) = mpsc::channel(4);
    let refusing = Arc::new(AtomicBool::new(false));
    let refuse = Arc::clone(&refusing);
    let connector: Connector<DuplexStream> = Box::new(move || {
        let peers = peers.clone();
        let refuse = Arc::clone(&refuse);
        Box::pin(async move {
            if refuse.load(Ordering::SeqCst) {
                return Err("connection refused".to_owned().into());
            }
            let (client_ws, peer) = socket_pair().await;
            peers
                .send(peer)
                .await
                .map_err(|_| AttemptError::from("test over".to_owned()))?;
            Ok(client_ws)
        })
    });
    let client = Client::start(client_ws, options, Some(connector));
    (client, peer, next_peers, refusing)
}

impl Peer {
    /// The next frame that is not an `ack`.
    pub(super) async fn frame_skipping_acks(&mut self) -> ClientFrame {
        loop {
            match self.frame().await {
                ClientFrame::Ack(_) => continue,
                other => return other,
            }
        }
    }

    /// Expects an `attach` (after any acks), and returns it.
    pub(super) async fn attach(&mut self) -> AttachFrame {
        match self.frame_skipping_acks().await {
            ClientFrame::Attach(attach) => attach,
            other => panic!("expected attach, got {other:?}"),
        }
    }

    /// Accepts an `attach` as the gateway does: `attached` on the session's stream.
    pub(super) async fn attached(&mut self, session: &str, since: u64) {
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
    pub(super) async fn refuse_for(&mut self, session: &str, code: ErrorCode, message: &str) {
        self.socket_sequence += 1;
        let mut event = Event::error(None, code, message);
        event.sequence = self.socket_sequence;
        event.timestamp = 1.0;
        event.for_session = Some(session.to_owned());
        self.send(&event).await;
    }
}

/// An event of execution `id` in session `session`.
pub(super) fn in_session(
    session: &str,
    kind: EventKind,
    id: &str,
    sequence: u64,
    data: &str,
) -> Event {
    Event {
        session: Some(session.to_owned()),
        ..event(kind, id, sequence, data)
    }
}
