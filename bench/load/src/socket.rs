//! The sockets of a run, each a task owning one WebSocket and speaking the wire
//! protocol directly (tokio-tungstenite, `sluice-protocol` types): a program socket
//! sends its executions' frames and hands every frame it receives to the [`Run`],
//! drops itself when the scenario says so and resumes; a watcher attaches to the
//! sessions of its program socket. Both reconnect when the gateway closes them.

use crate::driver::{Action, DriveError, Run};
use crate::scenario::Scenario;
use crate::schedule::Rng;
use crate::verify::{Kind, StreamCheck};
use futures::{SinkExt as _, StreamExt as _};
use sluice_protocol::{AckFrame, AttachFrame, ClientFrame, DetachFrame};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

/// Frames queued for one socket's writer, and commands for one socket, at most.
pub(crate) const QUEUE: usize = 1024;

/// Commands to a program socket.
#[derive(Debug)]
pub(crate) enum Cmd {
    Execute(usize, usize),
}

/// Commands to a watcher socket.
#[derive(Debug)]
pub(crate) enum WatchCmd {
    Attach(String),
}

/// One open WebSocket: frames out through a writer task, frames in here.
pub(crate) struct Conn {
    out: mpsc::Sender<Message>,
    incoming: futures::stream::SplitStream<
        tokio_tungstenite::WebSocketStream<
            tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
        >,
    >,
    writer: tokio::task::JoinHandle<()>,
}

impl Conn {
    /// Queues a frame for the writer (waiting while the queue is full: the gateway
    /// reads slower than this socket writes).
    async fn send(&self, frame: &ClientFrame) {
        let _ = self.out.send(Message::text(frame.to_json())).await;
    }

    /// Ends the connection: politely (a close frame) or as a network would (`abrupt`).
    fn close(self, abrupt: bool) {
        if abrupt {
            self.writer.abort();
        } else {
            // A full queue means the gateway is not reading: then end as a network would.
            if self.out.try_send(Message::Close(None)).is_err() {
                self.writer.abort();
            }
        }
    }
}

/// Opens a socket to the scenario's gateway, with its credential.
/// Longest wait for a gateway to accept a connection and answer its upgrade.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) async fn connect(scenario: &Scenario) -> Result<Conn, DriveError> {
    let fail = |reason: String| DriveError::Connect {
        url: scenario.url.clone(),
        reason: match sluice_protocol::endpoint_hint(&scenario.url) {
            Some(hint) => format!("{reason} ({hint})"),
            None => reason,
        },
    };
    let mut request = scenario
        .url
        .as_str()
        .into_client_request()
        .map_err(|err| fail(err.to_string()))?;
    if let Some(token) = &scenario.token {
        let value = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| fail("the token is not a valid header value".into()))?;
        request.headers_mut().insert("authorization", value);
    }
    let connecting =
        tokio::time::timeout(CONNECT_TIMEOUT, tokio_tungstenite::connect_async(request));
    let Ok(connected) = connecting.await else {
        return Err(fail(format!(
            "no answer to the WebSocket upgrade within {} s",
            CONNECT_TIMEOUT.as_secs()
        )));
    };
    let (ws, _) = match connected {
        Ok(done) => done,
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            // The gateway's refusals are one line; anything else (a page) is not shown.
            let body = response
                .body()
                .as_deref()
                .map(|b| String::from_utf8_lossy(b).trim().to_owned())
                .unwrap_or_default();
            let shown = match body.lines().next() {
                Some(line) if !line.starts_with('<') && body.len() <= 500 => format!(": {line}"),
                Some(_) => " (a page, not a WebSocket endpoint)".to_owned(),
                None => String::new(),
            };
            return Err(fail(format!("HTTP {}{shown}", response.status())));
        }
        Err(err) => return Err(fail(err.to_string())),
    };
    let (mut sink, incoming) = ws.split();
    let (out, mut queue) = mpsc::channel::<Message>(QUEUE);
    let writer = tokio::spawn(async move {
        while let Some(first) = queue.recv().await {
            let closing = matches!(first, Message::Close(_));
            if sink.feed(first).await.is_err() {
                return;
            }
            while let Ok(next) = queue.try_recv() {
                if sink.feed(next).await.is_err() {
                    return;
                }
            }
            if sink.flush().await.is_err() || closing {
                return;
            }
        }
    });
    Ok(Conn {
        out,
        incoming,
        writer,
    })
}

/// A socket that runs programs: sends their frames, checks what comes back, drops and
/// resumes when asked to.
pub(crate) async fn program_socket(
    run: Arc<Run>,
    socket: usize,
    mut conn: Conn,
    mut cmds: mpsc::Receiver<Cmd>,
    watchers: Vec<mpsc::Sender<WatchCmd>>,
) {
    let scenario = &run.scenario;
    let mut rng = Rng::new(scenario.seed ^ (socket as u64 + 1).wrapping_mul(0x1234_5678_9ABC));
    let next_drop = |rng: &mut Rng| {
        scenario
            .disconnect_every
            .map(|every| every / 2 + rng.below(every.max(1)) + 1)
    };
    let mut drop_after = next_drop(&mut rng);
    let mut received = 0u64;
    let mut socket_stream = StreamCheck::default();
    let mut resuming = std::collections::HashSet::new();
    loop {
        let lost = tokio::select! {
            () = run.over.cancelled() => break,
            () = run.ready[socket].notified() => {
                let released: Vec<(usize, usize)> = {
                    let mut state = run.lock();
                    let ready = std::mem::take(&mut state.ready[socket]);
                    ready.into_iter().map(|n| (n, state.execs[n].program)).collect()
                };
                for (n, program) in released {
                    for frame in run.stdin_frames(n, program, false) {
                        conn.send(&frame).await;
                    }
                }
                false
            }
            cmd = cmds.recv() => {
                match cmd {
                    Some(Cmd::Execute(n, program)) => conn.send(&run.request(n, program)).await,
                    None => break,
                }
                false
            }
            frame = conn.incoming.next() => match frame {
                Some(Ok(Message::Text(text))) => {
                    received += 1;
                    let actions = run.on_program_frame(socket, text.as_str(), &mut socket_stream, &mut resuming);
                    for action in actions {
                        match action {
                            Action::Stdin(n) => {
                                let program = run.lock().execs[n].program;
                                for frame in run.stdin_frames(n, program, false) {
                                    conn.send(&frame).await;
                                }
                            }
                            Action::Ack(session, sequence) => {
                                conn.send(&ClientFrame::Ack(AckFrame { session, sequence })).await;
                            }
                            Action::Detach(session) => {
                                conn.send(&ClientFrame::Detach(DetachFrame { session })).await;
                            }
                            Action::WatchersAttach(session) => {
                                for w in &watchers {
                                    let _ = w.send(WatchCmd::Attach(session.clone())).await;
                                }
                            }
                        }
                    }
                    if drop_after.is_some_and(|after| received >= after) {
                        drop_after = next_drop(&mut rng);
                        received = 0;
                        run.lock().resumes += 1;
                        true
                    } else {
                        false
                    }
                }
                Some(Ok(Message::Binary(_))) => {
                    run.lock().violations.add(Kind::InvalidEvent, || format!("socket {socket}: a binary frame"));
                    false
                }
                Some(Ok(_)) => false,
                Some(Err(_)) | None => {
                    run.lock().connections_lost += 1;
                    true
                }
            }
        };
        if lost {
            conn.close(true);
            // Reconnect and resume every session this socket still runs, from the last
            // sequence it saw; then resend each execute (a resend starts nothing, and
            // starts the one that never reached the gateway).
            let Some(new) = reconnect(&run).await else {
                return;
            };
            conn = new;
            socket_stream = StreamCheck::default();
            let pending: Vec<(usize, usize, Option<String>, u64, bool)> = run
                .lock()
                .execs
                .iter()
                .enumerate()
                .filter(|(_, e)| e.socket == socket && e.ended.is_none())
                .map(|(n, e)| {
                    // Released but silent: its go line may have been lost with the socket.
                    let go_again = e.released && e.first_output.is_none();
                    (n, e.program, e.session.clone(), e.stream.last(), go_again)
                })
                .collect();
            for (n, program, session, since, go_again) in pending {
                let Some(session) = session else { continue };
                resuming.insert(session.clone());
                conn.send(&ClientFrame::Attach(AttachFrame {
                    session,
                    since: Some(since),
                    workspace: false,
                    ack: run.acknowledges(),
                }))
                .await;
                if scenario.named_sessions() {
                    conn.send(&run.request(n, program)).await;
                }
                if go_again {
                    for frame in run.stdin_frames(n, program, true) {
                        conn.send(&frame).await;
                    }
                }
            }
        }
    }
    conn.close(false);
}

/// A watcher: attaches to the sessions its program socket runs, from their start.
pub(crate) async fn watcher_socket(
    run: Arc<Run>,
    socket: usize,
    w: usize,
    mut conn: Conn,
    mut cmds: mpsc::Receiver<WatchCmd>,
) {
    loop {
        let lost = tokio::select! {
            () = run.over.cancelled() => break,
            cmd = cmds.recv() => match cmd {
                Some(WatchCmd::Attach(session)) => {
                    conn.send(&ClientFrame::Attach(AttachFrame { session, since: Some(0), workspace: false, ack: false })).await;
                    false
                }
                None => break,
            },
            frame = conn.incoming.next() => match frame {
                Some(Ok(Message::Text(text))) => {
                    if let Some(session) = run.on_watcher_frame(w, text.as_str()) {
                        conn.send(&ClientFrame::Detach(DetachFrame { session })).await;
                    }
                    false
                }
                Some(Ok(_)) => false,
                Some(Err(_)) | None => true,
            }
        };
        if lost {
            // Closed under it (an idle socket, a network): reattach where it stopped.
            run.lock().connections_lost += 1;
            conn.close(true);
            let Some(new) = reconnect(&run).await else {
                return;
            };
            conn = new;
            let sessions: Vec<(String, u64)> = run
                .lock()
                .execs
                .iter()
                .filter(|e| e.socket == socket && !e.refused && e.started.is_some())
                .filter_map(|e| {
                    let watcher = e.watchers.get(w).filter(|v| !v.done)?;
                    Some((e.session.clone()?, watcher.stream.last()))
                })
                .collect();
            for (session, since) in sessions {
                conn.send(&ClientFrame::Attach(AttachFrame {
                    session,
                    since: Some(since),
                    workspace: false,
                    ack: false,
                }))
                .await;
            }
        }
    }
    conn.close(false);
}

/// Connects again, retrying every 100 ms until the run is over.
async fn reconnect(run: &Run) -> Option<Conn> {
    loop {
        match connect(&run.scenario).await {
            Ok(conn) => return Some(conn),
            Err(_) if !run.over.is_cancelled() => {
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(100)) => {}
                    () = run.over.cancelled() => return None,
                }
            }
            Err(_) => return None,
        }
    }
}
