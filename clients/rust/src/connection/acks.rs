//! Acknowledgements: the `ack` frames that tell the gateway which events of a session
//! every consumer here has received, so that it keeps every event still in flight (when
//! reconnecting is on). A session is acknowledged every [`ACK_EVERY_EVENTS`] events or
//! [`ACK_EVERY_BYTES`] bytes, whenever the socket has nothing more to read, after each
//! `attach` (see [`super::attach`]), and to its end when a gateway-made session's
//! execution has ended.

use super::{Connection, Purpose};
use sluice_protocol::{AckFrame, ClientFrame};
use tokio::io::{AsyncRead, AsyncWrite};

/// Acknowledge a session after at most this many events...
pub(super) const ACK_EVERY_EVENTS: usize = 256;

/// ...or this many bytes of frames, whichever comes first (and whenever the socket has
/// nothing more to read).
pub(super) const ACK_EVERY_BYTES: usize = 1 << 20;

impl<S> Connection<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    /// Counts an event of `name` processed (`bytes` long) towards its next `ack`, and
    /// sends that `ack` once the session has gone [`ACK_EVERY_EVENTS`] events or
    /// [`ACK_EVERY_BYTES`] bytes without one.
    pub(super) fn note_unacked(&mut self, name: &str, bytes: usize) {
        if !self.acks {
            return;
        }
        let Some(state) = self.sessions.get_mut(name) else {
            return;
        };
        state.unacked_events += 1;
        state.unacked_bytes = state.unacked_bytes.saturating_add(bytes);
        if state.unacked_events >= ACK_EVERY_EVENTS || state.unacked_bytes >= ACK_EVERY_BYTES {
            self.send_ack(name);
        } else if !self.unacked.contains(name) {
            self.unacked.insert(name.to_owned());
        }
    }

    /// Acknowledges what every consumer of `name` has received, if that moved.
    fn send_ack(&mut self, name: &str) {
        let point = self.resume_point(name);
        let Some(state) = self.sessions.get_mut(name) else {
            return;
        };
        state.unacked_events = 0;
        state.unacked_bytes = 0;
        let Some(point) = point else {
            return;
        };
        if point <= state.acked {
            return;
        }
        state.acked = point;
        let frame = ClientFrame::Ack(AckFrame {
            session: name.to_owned(),
            sequence: point,
        });
        self.enqueue_frame(&frame, Purpose::Other);
    }

    /// Acknowledges every session with events processed since its last `ack`.
    pub(super) fn ack_all(&mut self) {
        if self.unacked.is_empty() || self.sink.is_none() {
            return;
        }
        for name in std::mem::take(&mut self.unacked) {
            self.send_ack(&name);
        }
    }

    /// Forgets a gateway-made session whose execution has ended, after acknowledging it
    /// to the end: the gateway then lets go of it at once (instead of keeping it for a
    /// reconnect).
    pub(super) fn forget_finished(&mut self, name: &str) {
        if self.acks && !self.closing && self.sink.is_some() {
            self.send_ack(name);
        }
        self.sessions.remove(name);
        self.unacked.remove(name);
    }
}
