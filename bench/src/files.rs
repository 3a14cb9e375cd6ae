//! Section 6's file round trip: 1 MiB written to a session's workspace with
//! `write_file` (four base64 pieces of 256 KiB, as a client splits an upload) and read
//! back with `read_file` (base64, 16 chunks of 64 KiB), timed from the first frame sent
//! to the last chunk received; against writing and reading the same bytes in a file on
//! a local tmpfs (`/dev/shm`) from this process. Workspaces need a root gateway: without
//! one the row says so.

use super::{next_event, row, Socket};
use anyhow::{bail, Context as _};
use base64::Engine as _;
use futures::SinkExt as _;
use sluice_protocol::{ErrorCode, EventKind};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

/// Bytes written and read back per round trip.
const BYTES: usize = 1 << 20;

/// Bytes of one `write_file` piece.
const PIECE: usize = 256 << 10;

/// Prints the round trip's p50 through the gateway against the local baseline.
pub(crate) async fn round_trip_rows(socket: &mut Socket, runs: usize) -> anyhow::Result<()> {
    let session = "bench-files";
    let attach = serde_json::json!({"type": "attach", "session": session, "workspace": true});
    socket.send(Message::text(attach.to_string())).await?;
    loop {
        let event = next_event(socket).await?;
        match event.kind {
            EventKind::Attached => break,
            EventKind::Error if event.code == Some(ErrorCode::NoWorkspace) => {
                println!("1 MiB file write + read: skipped ({})", event.data);
                return Ok(());
            }
            EventKind::Error => bail!("attach with a workspace refused: {}", event.data),
            _ => {}
        }
    }
    let content: Vec<u8> = (0..BYTES).map(|n| (n % 251) as u8).collect();
    let pieces: Vec<String> = content
        .chunks(PIECE)
        .map(|piece| base64::engine::general_purpose::STANDARD.encode(piece))
        .collect();
    let (mut gateway, mut local) = (Vec::new(), Vec::new());
    for run in 0..runs.max(1) {
        gateway.push(round_trip(socket, session, &pieces, &content, run).await?);
        local.push(local_round_trip(&content, run)?);
    }
    gateway.sort();
    local.sort();
    let (g, l) = (
        super::ms(super::percentile(&gateway, 50)),
        super::ms(super::percentile(&local, 50)),
    );
    row("1 MiB file write + read p50 (ms)", g, l, g / l, "-", true);
    let detach = serde_json::json!({"type": "detach", "session": session});
    socket.send(Message::text(detach.to_string())).await?;
    Ok(())
}

/// One upload and download of `content` through the gateway; checks the bytes.
async fn round_trip(
    socket: &mut Socket,
    session: &str,
    pieces: &[String],
    content: &[u8],
    run: usize,
) -> anyhow::Result<Duration> {
    let path = format!("bench-{run}.bin");
    let started = Instant::now();
    for (n, piece) in pieces.iter().enumerate() {
        let write = serde_json::json!({"type": "write_file", "request": format!("w{run}-{n}"),
            "session": session, "path": path, "data": piece, "encoding": "base64", "append": n > 0});
        socket.send(Message::text(write.to_string())).await?;
    }
    let read = serde_json::json!({"type": "read_file", "request": format!("r{run}"),
        "session": session, "path": path, "encoding": "base64"});
    socket.send(Message::text(read.to_string())).await?;
    let mut back = Vec::with_capacity(content.len());
    loop {
        let event = next_event(socket).await?;
        match event.kind {
            EventKind::FileData => {
                back.extend(base64::engine::general_purpose::STANDARD.decode(&event.data)?);
                if event.last == Some(true) {
                    break;
                }
            }
            EventKind::Error => bail!("a file frame was refused: {}", event.data),
            _ => {}
        }
    }
    let took = started.elapsed();
    if back != content {
        bail!(
            "read back {} bytes that differ from the {} written",
            back.len(),
            content.len()
        );
    }
    let delete = serde_json::json!({"type": "delete_file", "request": format!("d{run}"),
        "session": session, "path": path});
    socket.send(Message::text(delete.to_string())).await?;
    Ok(took)
}

/// The same bytes written to and read from a file on a local tmpfs.
fn local_round_trip(content: &[u8], run: usize) -> anyhow::Result<Duration> {
    let path =
        std::path::Path::new("/dev/shm").join(format!("sluice-bench-{}-{run}", std::process::id()));
    let started = Instant::now();
    std::fs::write(&path, content).context("writing the local baseline's file")?;
    let back = std::fs::read(&path)?;
    let took = started.elapsed();
    std::fs::remove_file(&path)?;
    if back != content {
        bail!("the local baseline read back other bytes");
    }
    Ok(took)
}
