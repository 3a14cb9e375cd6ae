//! The client scenarios of `protocol/fixtures/scenarios` (its README gives the format): a
//! scripted peer plays the gateway on a tokio-tungstenite server on port 0 while the
//! scenario's script drives this crate's public API. Every scenario file in that folder is
//! replayed; the test reports every scenario that fails, not only the first.

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use sluice_client::protocol::{ClientFrame, Event};
use sluice_client::{Client, ClientOptions, Execution, Reconnect};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// A bound on one scenario, so a client that never sends what the peer expects fails.
const DEADLINE: Duration = Duration::from_secs(30);

type Socket = WebSocketStream<TcpStream>;

fn scenario_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../protocol/fixtures/scenarios")
}

fn scenario_files() -> Vec<PathBuf> {
    let dir = scenario_dir();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|err| panic!("cannot read {}: {err}", dir.display()))
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no scenario in {}", dir.display());
    files
}

/// `value` has every field `pattern` names, equal; `null` also matches a missing field.
fn matches(pattern: &Value, value: Option<&Value>) -> bool {
    match (pattern, value) {
        (Value::Null, None | Some(Value::Null)) => true,
        (Value::Object(fields), Some(Value::Object(object))) => fields
            .iter()
            .all(|(key, want)| matches(want, object.get(key))),
        (want, Some(got)) => want == got,
        (_, None) => false,
    }
}

/// Answers the handshake with the `sluice.v1` subprotocol the clients offer.
#[allow(clippy::result_large_err)] // The signature is tungstenite's `Callback`.
fn answer(_: &Request, mut response: Response) -> Result<Response, ErrorResponse> {
    response.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_static("sluice.v1"),
    );
    Ok(response)
}

/// Accepts WebSocket connections and hands them on.
async fn accept(listener: TcpListener, connections: mpsc::Sender<Socket>) {
    while let Ok((tcp, _)) = listener.accept().await {
        if let Ok(socket) = tokio_tungstenite::accept_hdr_async(tcp, answer).await {
            if connections.send(socket).await.is_err() {
                return;
            }
        }
    }
}

/// Runs the peer's steps, keeping the frames it read (acks included) in `received`;
/// returns the connection in use at the end, for the caller to keep open.
async fn run_peer(
    steps: &[Value],
    connections: &mut mpsc::Receiver<Socket>,
    labels: &watch::Sender<Vec<String>>,
    received: &mut Vec<Value>,
) -> Result<Option<Socket>, String> {
    let mut current: Option<Socket> = None;
    for (index, step) in steps.iter().enumerate() {
        if let Some(name) = step.get("label").and_then(Value::as_str) {
            labels.send_modify(|labels| labels.push(name.to_owned()));
            continue;
        }
        if step.get("drop").is_some() {
            // Dropping the stream closes the TCP connection without a close handshake.
            drop(current.take());
            continue;
        }
        if current.is_none() {
            current = connections.recv().await;
        }
        let socket = current
            .as_mut()
            .ok_or_else(|| format!("peer step {index}: no connection"))?;
        if let Some(event) = step.get("send") {
            let text = event.to_string();
            // The scenario must send what a gateway could.
            Event::decode(&text)
                .map_err(|err| format!("peer step {index}: not a valid event: {err}: {text}"))?;
            socket
                .send(Message::text(text))
                .await
                .map_err(|err| format!("peer step {index}: send failed: {err}"))?;
        } else if let Some(pattern) = step.get("expect") {
            loop {
                let text = match socket.next().await {
                    Some(Ok(Message::Text(text))) => text.as_str().to_owned(),
                    Some(Ok(_)) => continue,
                    other => {
                        return Err(format!(
                            "peer step {index}: expected a frame like {pattern}, got {other:?}"
                        ))
                    }
                };
                let frame: Value = serde_json::from_str(&text)
                    .map_err(|err| format!("peer step {index}: not JSON: {err}: {text}"))?;
                received.push(frame.clone());
                if frame["type"] == "ack" && pattern["type"] != "ack" {
                    continue;
                }
                if !matches(pattern, Some(&frame)) {
                    return Err(format!(
                        "peer step {index}: expected a frame like {pattern}, got {text}"
                    ));
                }
                break;
            }
        } else {
            return Err(format!("peer step {index}: unknown step {step}"));
        }
    }
    Ok(current)
}

/// Runs the scenario's client script with the crate's public API; returns the events read.
async fn run_client(
    client: &Client,
    script: &[Value],
    mut labels: watch::Receiver<Vec<String>>,
) -> Result<Vec<Value>, String> {
    let mut observed = Vec::new();
    let mut execution: Option<Execution> = None;
    for step in script {
        let Some((action, argument)) = step.as_object().and_then(|step| step.iter().next()) else {
            return Err(format!("not a client step: {step}"));
        };
        match action.as_str() {
            "execute" => {
                let mut frame = argument.clone();
                frame["type"] = json!("execute");
                let request = match ClientFrame::decode(&frame.to_string()) {
                    Ok(ClientFrame::Execute(request)) => request,
                    other => return Err(format!("not an execute request: {other:?}")),
                };
                let started = client.execute(request).await;
                execution = Some(started.map_err(|err| format!("execute failed: {err}"))?);
            }
            "read" => {
                let stream = execution.as_mut().ok_or("read before execute")?;
                for _ in 0..argument.as_u64().unwrap_or(0) {
                    let event = stream.next().await.ok_or_else(|| {
                        format!("the stream ended after {} events", observed.len())
                    })?;
                    observed.push(to_value(&event)?);
                }
            }
            "read_to_end" => {
                let stream = execution.as_mut().ok_or("read before execute")?;
                while let Some(event) = stream.next().await {
                    observed.push(to_value(&event)?);
                }
            }
            "send_stdin" => {
                let stream = execution.as_ref().ok_or("stdin before execute")?;
                let data = argument.as_str().unwrap_or_default().to_owned();
                stream
                    .send_stdin(data)
                    .await
                    .map_err(|err| format!("send_stdin failed: {err}"))?;
            }
            "close_stdin" => {
                let stream = execution.as_ref().ok_or("stdin before execute")?;
                stream
                    .close_stdin()
                    .await
                    .map_err(|err| format!("close_stdin failed: {err}"))?;
            }
            "cancel" => {
                let stream = execution.as_ref().ok_or("cancel before execute")?;
                stream
                    .cancel()
                    .await
                    .map_err(|err| format!("cancel failed: {err}"))?;
            }
            // Dropping the handle is how a Rust caller leaves.
            "leave" => drop(execution.take()),
            "await" => {
                let name = argument.as_str().unwrap_or_default();
                labels
                    .wait_for(|labels| labels.iter().any(|label| label == name))
                    .await
                    .map_err(|_| format!("the peer ended before label {name}"))?;
            }
            other => return Err(format!("unknown client step {other}")),
        }
    }
    Ok(observed)
}

fn to_value(event: &Event) -> Result<Value, String> {
    serde_json::from_str(&event.to_json()).map_err(|err| format!("event is not JSON: {err}"))
}

/// Replays one scenario file; the error says what went wrong.
async fn replay(path: &Path) -> Result<(), String> {
    let text = std::fs::read_to_string(path).map_err(|err| err.to_string())?;
    let scenario: Value = serde_json::from_str(&text).map_err(|err| err.to_string())?;
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|err| err.to_string())?;
    let port = listener.local_addr().map_err(|err| err.to_string())?.port();
    let (connections_tx, mut connections) = mpsc::channel(4);
    let acceptor = tokio::spawn(accept(listener, connections_tx));

    let mut options = ClientOptions {
        reconnect: Some(Reconnect {
            initial_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(100),
            give_up_after: Duration::from_secs(10),
            ..Reconnect::default()
        }),
        ..ClientOptions::default()
    };
    if let Some(bytes) = scenario["client"]["options"]["execution_buffer_bytes"].as_u64() {
        options.execution_buffer_bytes = usize::try_from(bytes).map_err(|err| err.to_string())?;
    }
    let client = Client::connect_with(&format!("ws://127.0.0.1:{port}/v1/ws"), options)
        .await
        .map_err(|err| format!("connect failed: {err}"))?;

    let steps = scenario["peer"].as_array().cloned().unwrap_or_default();
    let script = scenario["client"]["script"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let (labels, labels_rx) = watch::channel(Vec::new());
    let mut received = Vec::new();
    let peer = run_peer(&steps, &mut connections, &labels, &mut received);
    let program = run_client(&client, &script, labels_rx);
    // Both sides run to their end; a peer that fails ends the replay at once.
    let outcome = tokio::time::timeout(DEADLINE, async {
        tokio::pin!(peer);
        tokio::pin!(program);
        let (mut peer_done, mut observed) = (None, None);
        while peer_done.is_none() || observed.is_none() {
            tokio::select! {
                done = &mut peer, if peer_done.is_none() => {
                    let failed = done.is_err();
                    peer_done = Some(done);
                    if failed {
                        break;
                    }
                }
                read = &mut program, if observed.is_none() => observed = Some(read),
            }
        }
        (peer_done, observed)
    })
    .await;
    let (peer_done, observed) = outcome.unwrap_or_default();
    let peer_done = match peer_done {
        Some(Ok(Some(mut socket))) => {
            // Read on, so that the client's close handshake is answered (and frames
            // after the last `expect` are taken, unchecked).
            tokio::spawn(async move { while socket.next().await.is_some() {} });
            Some(Ok(()))
        }
        Some(Ok(None)) => Some(Ok(())),
        Some(Err(err)) => Some(Err(err)),
        None => None,
    };
    let _ = client.close().await;
    acceptor.abort();
    if let Some(Err(err)) = peer_done {
        return Err(err);
    }
    if peer_done.is_none() && observed.is_none() {
        return Err(format!("not done within {DEADLINE:?}"));
    }
    let observed = observed.ok_or("the peer failed before the client's script ended")??;

    let patterns = scenario["observe"].as_array().cloned().unwrap_or_default();
    if observed.len() != patterns.len() {
        return Err(format!(
            "read {} events, expected {}: {observed:?}",
            observed.len(),
            patterns.len()
        ));
    }
    for (index, (event, pattern)) in observed.iter().zip(&patterns).enumerate() {
        if !matches(pattern, Some(event)) {
            return Err(format!("event {index}: {event} does not match {pattern}"));
        }
    }
    Ok(())
}

#[tokio::test]
async fn every_scenario() {
    let mut failures = Vec::new();
    for path in scenario_files() {
        let name = path
            .file_stem()
            .map(|name| name.to_string_lossy().into_owned());
        if let Err(err) = replay(&path).await {
            failures.push(format!("{}: {err}", name.unwrap_or_default()));
        }
    }
    assert!(
        failures.is_empty(),
        "failed scenarios:\n{}",
        failures.join("\n")
    );
}
