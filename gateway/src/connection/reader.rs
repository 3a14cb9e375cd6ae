//! The reader loop: takes the client's messages one at a time and hands text frames to
//! the connection ([`Connection::handle_text`]), and decides when the socket closes
//! and with which code.
//!
//! Liveness: the writer pings the client every `--ping-interval-ms`; the reader closes
//! a socket from which nothing (no frame, no pong) arrived for two intervals (1001),
//! one that has held no session and no execution for `--idle-timeout-ms` (1000), one
//! whose message is not complete within `--message-deadline-ms` (1008), and answers a
//! read error with 1009 (a frame over the transport cap) or 1013 (no room in the
//! buffer budget for the message in flight).

use super::frames::Connection;
use super::{CLOSE_GOING_AWAY, CLOSE_NORMAL, CLOSE_POLICY, CLOSE_TOO_BIG, CLOSE_TRY_AGAIN_LATER};
use crate::meter::Meter;
use axum::extract::ws::{CloseFrame, Message};
use futures::{Stream, StreamExt as _};
use sluice_protocol::ErrorCode;
use std::sync::atomic::Ordering;

/// An error reading the socket, as the reader needs to classify it.
pub(crate) trait ReadError: std::fmt::Display {
    /// True if the client sent a frame or message larger than the transport allows.
    fn too_big(&self) -> bool;
}

impl ReadError for axum::Error {
    fn too_big(&self) -> bool {
        // axum wraps the WebSocket layer's error as its source.
        let inner = std::error::Error::source(self);
        matches!(
            inner.and_then(|e| e.downcast_ref::<tungstenite::Error>()),
            Some(tungstenite::Error::Capacity(_))
        )
    }
}

/// Reads the client's messages until it leaves, the connection is closing (shutdown,
/// or the writer gave up), or a liveness rule closes it.
pub(super) async fn read_loop<R, E>(conn: &mut Connection, mut frames: R, meter: &Meter)
where
    R: Stream<Item = Result<Message, E>> + Unpin,
    E: ReadError,
{
    let config = &conn.state.config;
    let message_deadline = config.message_deadline;
    let (ping_interval, idle_timeout) = (config.ping_interval, config.idle_timeout);
    let closing = conn.closing.clone();
    let silent_for = ping_interval.saturating_mul(2);
    let mut last_heard = tokio::time::Instant::now();
    let silence = tokio::time::sleep(silent_for);
    tokio::pin!(silence);
    let mut idle_since = last_heard;
    let idle_check = tokio::time::sleep(idle_timeout);
    tokio::pin!(idle_check);
    loop {
        tokio::select! {
            () = closing.cancelled() => break,
            () = meter.overdue(message_deadline) => {
                conn.message_overdue();
                break;
            }
            () = &mut silence => {
                let due = last_heard + silent_for;
                if due > tokio::time::Instant::now() {
                    silence.as_mut().reset(due);
                    continue;
                }
                tracing::info!(?silent_for, "closing: nothing from the client, not even a pong");
                let reason = format!("no answer to ping within {} ms", silent_for.as_millis());
                conn.close_with(CLOSE_GOING_AWAY, reason);
                break;
            }
            () = &mut idle_check => {
                let now = tokio::time::Instant::now();
                if conn.holds_something() {
                    // Look again soon: it may stop holding anything between two looks.
                    idle_since = now;
                    idle_check.as_mut().reset(now + idle_timeout / 4);
                    continue;
                }
                let since = idle_since.max(conn.busy_at);
                if now < since + idle_timeout {
                    idle_check.as_mut().reset(since + idle_timeout);
                    continue;
                }
                tracing::debug!(?idle_timeout, "closing: idle, holding no session and no execution");
                let reason = format!(
                    "idle for {} ms with no session and no execution",
                    idle_timeout.as_millis()
                );
                conn.close_with(CLOSE_NORMAL, reason);
                break;
            }
            frame = frames.next() => {
                last_heard = tokio::time::Instant::now();
                match frame {
                Some(Ok(Message::Text(text))) => {
                    meter.message_done();
                    conn.handle_text(text.as_str()).await;
                }
                Some(Ok(Message::Binary(_))) => {
                    meter.message_done();
                    conn.frame_session = None;
                    conn.refuse(None, ErrorCode::BadRequest, "binary frames are not part of the protocol; send JSON text frames").await;
                }
                Some(Ok(Message::Ping(payload) | Message::Pong(payload))) => {
                    meter.control_done(payload.len());
                }
                Some(Ok(Message::Close(_))) => {
                    conn.peer_closed.store(true, Ordering::Release);
                    break;
                }
                None => break,
                Some(Err(err)) => {
                    conn.read_failed(&err, meter);
                    break;
                }
            }},
        }
    }
}

impl Connection {
    /// Asks the writer to end with this close frame.
    pub(super) fn close_with(&self, code: u16, reason: String) {
        *self
            .close_reason
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(CloseFrame {
            code,
            reason: reason.into(),
        });
    }

    /// Closes the socket (1008) because a message it started did not arrive whole
    /// within the deadline.
    fn message_overdue(&self) {
        let deadline = self.state.config.message_deadline;
        tracing::info!(
            ?deadline,
            "closing: a message was not completed within the message deadline"
        );
        let reason = format!("message not completed within {} ms", deadline.as_millis());
        self.close_with(CLOSE_POLICY, reason);
    }

    /// A read error ends the connection; a frame over the transport cap is said so with
    /// close code 1009 before the socket closes, a message in flight that the memory
    /// budget has no room for with 1013.
    fn read_failed(&self, err: &impl ReadError, meter: &Meter) {
        if meter.over_budget() {
            tracing::warn!("closing: the buffer budget has no room for the message in flight");
            return self.close_with(
                CLOSE_TRY_AGAIN_LATER,
                "the gateway's buffer budget is spent; retry later".into(),
            );
        }
        if err.too_big() {
            let cap = self.state.config.max_frame_bytes.saturating_mul(4);
            tracing::info!(%err, "closing: frame over the transport cap");
            self.close_with(CLOSE_TOO_BIG, format!("frame larger than {cap} bytes"));
        } else {
            tracing::debug!(%err, "socket read failed");
        }
    }
}
