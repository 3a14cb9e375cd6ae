//! The writer task: the only code that writes to a socket. It takes batches of shared
//! frames from every stream the socket reads ([`SocketLink::take`]), feeds them with
//! one flush per batch (at most one per [`WRITE_INTERVAL`] once the socket is busy),
//! pings the client on a clock, gives up on a client that does not read within the
//! send timeout, and ends with the close frame the reader asked for (or 1001 on
//! shutdown). It counts what it writes, the gaps it announces and the sockets it gives
//! up on (`observe::Metrics`).

use super::link::{Batch, SocketLink};
use super::{CLOSE_GOING_AWAY, SHUTDOWN_SEND_GRACE};
use crate::state::GatewayState;
use axum::extract::ws::{CloseFrame, Message};
use futures::{Sink, SinkExt as _};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tokio_util::sync::CancellationToken;

/// Most bytes of frames the writer takes from its streams before writing them out.
const WRITE_BATCH_BYTES: usize = 256 * 1024;

/// Shortest time between two writes to a busy socket. Events that come within it of
/// the last write wait for its end and go out together: one `send` and one wakeup of
/// the client for all of them instead of one each, which is most of the gateway's CPU
/// per event when many programs print a line at a time. A socket is busy when it reads
/// two or more sessions still running and had [`QUICK_WRITES`] writes in a row, each
/// within [`BUSY_GAP`] of the one before. A socket that follows one execution or cell
/// at a time (a request, its events, the next request) never waits: its next event may
/// be what its client waits for before it sends anything else.
pub(super) const WRITE_INTERVAL: std::time::Duration = std::time::Duration::from_millis(2);

/// Writes in a row that go out at once before a socket counts as busy.
pub(super) const QUICK_WRITES: u32 = 4;

/// Two writes at most this far apart are in the same run (twice the interval, so a
/// busy socket written once per interval stays busy).
const BUSY_GAP: std::time::Duration = std::time::Duration::from_millis(4);

/// What the writer task needs.
pub(super) struct Writer<S> {
    pub(super) sink: S,
    pub(super) link: Arc<SocketLink>,
    pub(super) state: Arc<GatewayState>,
    /// Cancelled by the writer when it gives up on the socket (the reader stops then).
    pub(super) failed: CancellationToken,
    pub(super) shutdown: CancellationToken,
    /// Cancelled by the reader: write what is left, then close.
    pub(super) finish: CancellationToken,
    /// The close frame the reader asked for (a frame over the transport cap, idle...).
    pub(super) close_reason: Arc<Mutex<Option<CloseFrame>>>,
    /// The client sent a close frame: no more events, only the close reply.
    pub(super) peer_closed: Arc<AtomicBool>,
}

/// Takes events from every stream the socket reads and writes them, one flush per
/// batch. A batch that cannot be written within the send timeout (the client stopped
/// reading) ends the connection: a slow consumer must not hold the gateway forever.
pub(super) async fn write_loop<S>(writer: Writer<S>)
where
    S: Sink<Message> + Unpin,
    S::Error: std::fmt::Display,
{
    let Writer {
        mut sink,
        link,
        state,
        failed,
        shutdown,
        finish,
        close_reason,
        peer_closed,
    } = writer;
    let send_timeout = state.config.send_timeout;
    let ping_interval = state.config.ping_interval;
    let mut next_ping = tokio::time::Instant::now() + ping_interval;
    // When the last write went out: news within WRITE_INTERVAL of it waits for the
    // interval's end. `just_wrote`: the next pass waits for news instead of taking.
    let mut last_write: Option<tokio::time::Instant> = None;
    // Writes in the current run (each within BUSY_GAP of the one before).
    let mut run_of_writes: u32 = 0;
    // The last take saw two or more sessions still running on this socket.
    let mut concurrent = false;
    let mut just_wrote = false;
    loop {
        let wake = link.wake.notified();
        tokio::pin!(wake);
        wake.as_mut().enable();
        if peer_closed.load(Ordering::Acquire) {
            // The client said goodbye: the close reply is all it may still get.
            break;
        }
        // Right after a write, whatever was published during it has notified `wake`
        // (a notification the last pass did not consume carries over), so this pass
        // waits for it below rather than taking it at once.
        let batch = if std::mem::take(&mut just_wrote) && !finish.is_cancelled() {
            Batch::default()
        } else {
            link.take(WRITE_BATCH_BYTES, &state.sessions)
        };
        // Pinged on a clock, busy or not: a client that only reads answers pings only.
        let now = tokio::time::Instant::now();
        let ping = now >= next_ping && !finish.is_cancelled();
        if batch.frames.is_empty() && !ping {
            if finish.is_cancelled() {
                break;
            }
            let woken = tokio::select! {
                () = wake => true,
                () = finish.cancelled() => false,
                () = tokio::time::sleep_until(next_ping) => false,
            };
            let hold = last_write.map(|at| at + WRITE_INTERVAL).filter(|until| {
                woken
                    && concurrent
                    && run_of_writes >= QUICK_WRITES
                    && tokio::time::Instant::now() < *until
            });
            if let Some(until) = hold {
                // A busy socket: gather what comes until the interval is over, then
                // send it with one write.
                tokio::select! {
                    () = tokio::time::sleep_until(until) => {}
                    () = finish.cancelled() => {}
                }
            }
            continue;
        }
        if ping {
            next_ping = now + ping_interval;
        }
        let (events, bytes) = (batch.frames.len(), batch.bytes);
        let more = batch.more;
        concurrent = batch.live_sessions >= 2;
        let (gaps, missed) = (batch.gaps, batch.missed);
        let write = async {
            if ping {
                sink.feed(Message::Ping(bytes::Bytes::new())).await?;
            }
            for frame in batch.frames {
                sink.feed(Message::Text(frame)).await?;
            }
            sink.flush().await
        };
        // On shutdown a client gets a short last chance to take what is left (its
        // `cancelled` events and the close frame), not the whole send timeout.
        let shutdown_deadline = async {
            shutdown.cancelled().await;
            tokio::time::sleep(SHUTDOWN_SEND_GRACE).await;
        };
        let result = tokio::select! {
            result = tokio::time::timeout(send_timeout, write) => match result {
                Ok(result) => result,
                Err(_) => {
                    state.observe.metrics.slow_reader_disconnected();
                    tracing::warn!(?send_timeout, "closing: the client has not read its socket within the send timeout");
                    failed.cancel();
                    return;
                }
            },
            () = shutdown_deadline => {
                tracing::debug!("closing: the client did not take its last events during shutdown");
                failed.cancel();
                return;
            }
        };
        if let Err(err) = result {
            tracing::debug!(%err, "socket write failed");
            failed.cancel();
            return;
        }
        let now = tokio::time::Instant::now();
        run_of_writes = match last_write {
            Some(at) if now.duration_since(at) <= BUSY_GAP => run_of_writes.saturating_add(1),
            _ => 1,
        };
        last_write = Some(now);
        // What was published during the write notified `wake`; what the byte cap left
        // behind did not, and is taken at once.
        just_wrote = !more;
        let metrics = &state.observe.metrics;
        metrics.delivered(events, bytes);
        if gaps > 0 {
            metrics.gaps(gaps, missed);
        }
    }
    let requested = close_reason
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take();
    let close = requested.or_else(|| {
        shutdown.is_cancelled().then(|| CloseFrame {
            code: CLOSE_GOING_AWAY,
            reason: "gateway shutting down".into(),
        })
    });
    let goodbye = async {
        // After the client's close frame the WebSocket layer sends the reply itself.
        if let Some(close) = close.filter(|_| !peer_closed.load(Ordering::Acquire)) {
            let _ = sink.send(Message::Close(Some(close))).await;
        }
        let _ = sink.close().await;
    };
    let _ = tokio::time::timeout(send_timeout.min(SHUTDOWN_SEND_GRACE), goodbye).await;
}
