//! The reader loop: takes the client's messages one at a time and hands text frames to
//! the connection ([`Connection::handle_text`]), and decides when the socket closes
//! and with which code.
//!
//! Liveness: the writer pings the client every `--ping-interval-ms`; the reader closes
//! a socket from which nothing (no frame, no pong) arrived for two intervals (1001),
//! one that has held no session and no execution for `--idle-timeout-ms` (1000), one
//! whose message is not complete within `--message-deadline-ms` (1008), one whose
//! token has expired (1008: its sessions go on, a fresh token reconnects), and answers a
//! read error with 1013 (no room in the buffer budget for the message in flight) or,
//! when the error is the client's protocol violation ([`Violation`]), with the RFC 6455
//! code that names it: 1002 (framing rules), 1007 (text that is not UTF-8) or 1009 (a
//! frame or message over the transport cap).

use super::frames::Connection;
use super::{
    CLOSE_GOING_AWAY, CLOSE_INVALID_PAYLOAD, CLOSE_NORMAL, CLOSE_POLICY, CLOSE_PROTOCOL_ERROR,
    CLOSE_TOO_BIG, CLOSE_TRY_AGAIN_LATER,
};
use crate::meter::Meter;
use axum::extract::ws::{CloseFrame, Message};
use futures::{Stream, StreamExt as _};
use sluice_protocol::ErrorCode;
use std::sync::atomic::Ordering;

/// What a read error says the client did wrong: each is a way to *fail the WebSocket
/// connection* (RFC 6455 7.1.7), closed with the code that names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Violation {
    /// The framing rules were broken (1002); the reason says which.
    Protocol(&'static str),
    /// A text message (or a close frame's reason) that is not UTF-8 (1007).
    InvalidUtf8,
    /// A frame or message larger than the transport allows (1009).
    TooBig,
}

impl Violation {
    /// The close frame this violation is answered with: its code and a short reason
    /// (RFC 6455 allows at most 123 bytes of reason; these are far shorter).
    fn close_frame(self, transport_cap: usize) -> (u16, String) {
        match self {
            Self::Protocol(what) => (CLOSE_PROTOCOL_ERROR, format!("protocol error: {what}")),
            Self::InvalidUtf8 => (CLOSE_INVALID_PAYLOAD, "text that is not valid UTF-8".into()),
            Self::TooBig => (
                CLOSE_TOO_BIG,
                format!("frame or message larger than {transport_cap} bytes"),
            ),
        }
    }

    /// The violation a WebSocket-layer error stands for; `None` for an error that is
    /// no fault of the client's framing (the connection broke, or ended without a
    /// close frame).
    fn of(err: &tungstenite::Error) -> Option<Self> {
        use tungstenite::error::ProtocolError as P;
        match err {
            tungstenite::Error::Capacity(_) => Some(Self::TooBig),
            tungstenite::Error::Utf8(_) => Some(Self::InvalidUtf8),
            tungstenite::Error::Protocol(protocol) => Some(Self::Protocol(match protocol {
                // The peer went away without a close frame: nobody to tell.
                P::ResetWithoutClosingHandshake => return None,
                P::UnmaskedFrameFromClient => "client frames must be masked",
                P::NonZeroReservedBits => "reserved bits set without an extension",
                P::UnknownDataFrameType(_)
                | P::UnknownControlFrameType(_)
                | P::InvalidOpcode(_) => "reserved opcode",
                P::FragmentedControlFrame => "fragmented control frame",
                P::ControlFrameTooBig => "control frame payload over 125 bytes",
                P::UnexpectedContinueFrame => "continuation frame with no message started",
                P::ExpectedFragment(_) => "new data frame inside a fragmented message",
                P::InvalidCloseSequence => "close frame with a one-byte payload",
                P::ReceivedAfterClosing => "frame after the close frame",
                // The rest belong to the handshake or to our own writes; if one ever
                // comes from a read, it is still a broken rule.
                _ => "invalid frame",
            })),
            _ => None,
        }
    }
}

/// An error reading the socket, as the reader needs to classify it.
pub(crate) trait ReadError: std::fmt::Display {
    /// The client's protocol violation that this error reports, if it reports one.
    fn violation(&self) -> Option<Violation>;
}

impl ReadError for axum::Error {
    fn violation(&self) -> Option<Violation> {
        // axum's `WebSocket` stream hands out tungstenite's error boxed in an
        // `axum::Error`, whose `source()` is that error itself: a downcast recovers
        // its kind without reaching around axum.
        std::error::Error::source(self)
            .and_then(|inner| inner.downcast_ref::<tungstenite::Error>())
            .and_then(Violation::of)
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
    // A token's socket lives as long as the token is valid.
    let credential_expiry = conn.grant.expires_at.map(|at| {
        let left = at
            .duration_since(std::time::SystemTime::now())
            .unwrap_or_default();
        tokio::time::sleep(left)
    });
    let credential_expired = async {
        match credential_expiry {
            Some(sleep) => sleep.await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(credential_expired);
    loop {
        tokio::select! {
            () = closing.cancelled() => break,
            () = &mut credential_expired => {
                tracing::info!("closing: the credential has expired");
                conn.close_with(CLOSE_POLICY, "the credential has expired; reconnect with a fresh one".into());
                break;
            }
            () = meter.overdue(message_deadline) => {
                // The rest of the message may still be arriving.
                meter.linger_on_close();
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
                    // Boxed: a future is as large as its largest state, so what a
                    // frame does (an execute's admission, say) would otherwise take
                    // room in every idle socket's task (sluice-bench --only idle).
                    Box::pin(conn.handle_text(text.as_str())).await;
                }
                Some(Ok(Message::Binary(_))) => {
                    meter.message_done();
                    conn.frame_session = None;
                    Box::pin(conn.refuse(None, ErrorCode::BadRequest, "binary frames are not part of the protocol; send JSON text frames")).await;
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

    /// A read error ends the connection. A protocol violation is said so with the
    /// close code that names it (1002, 1007 or 1009) before the socket closes; a
    /// message in flight that the memory budget has no room for with 1013.
    ///
    /// Either way the client may still be sending (the rest of an oversized frame, say),
    /// so the connection is asked to close gracefully ([`Meter::linger_on_close`]):
    /// shut first, then read until the client closes, and the close frame is not lost
    /// to a reset.
    fn read_failed(&self, err: &impl ReadError, meter: &Meter) {
        if meter.over_budget() {
            meter.linger_on_close();
            tracing::warn!("closing: the buffer budget has no room for the message in flight");
            return self.close_with(
                CLOSE_TRY_AGAIN_LATER,
                "the gateway's buffer budget is spent; retry later".into(),
            );
        }
        match err.violation() {
            Some(violation) => {
                let cap = self.state.config.max_frame_bytes.saturating_mul(4);
                let (code, reason) = violation.close_frame(cap);
                meter.linger_on_close();
                tracing::info!(%err, code, "closing: the client broke the WebSocket protocol");
                self.close_with(code, reason);
            }
            None => tracing::debug!(%err, "socket read failed"),
        }
    }
}
