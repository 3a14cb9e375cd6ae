//! One client connection: how a socket is served, from the first frame to the close.
//!
//! The socket reads streams, not queues: its own stream (refusals that belong to no
//! session) and every session it is attached to, each through a cursor into that
//! stream's replay buffer ([`link::SocketLink`]). Executions belong to their session,
//! not to the socket: when the socket goes away they run on, and the session ends them
//! if no socket comes back within the grace period.
//!
//! [`serve`] takes the socket as a pair: a [`Sink`] of messages the writer task alone
//! writes to ([`writer`]), and a [`Stream`] of messages the reader loop decodes
//! ([`reader`]). In production that is the two halves of axum's `WebSocket` (static
//! dispatch, nothing boxed per message); the unit tests (`tests`) pass a pair of
//! channels standing in for a client.
//!
//! - [`reader`]: the reader loop, liveness (pings answered, idle timeout, message
//!   deadline) and the close codes it asks for.
//! - [`writer`]: the writer task: batches from every stream, pings on a clock, the
//!   send timeout, the close frame.
//! - [`frames`]: what the reader does with a text frame: decoding, refusals on the
//!   socket's own stream, `attach`/`detach`/`ack`.
//! - [`execute`]: an `execute`: every check and the capacity it takes, then its
//!   session, then its task.
//! - [`own`]: the executions this socket started, and `stdin`/`cancel` routed to them.

mod execute;
mod files;
mod frames;
mod link;
mod own;
mod query;
mod reader;
#[cfg(test)]
mod tests;
mod writer;

use crate::admission::Principal;
use crate::fanout::EventStream;
use crate::meter::Meter;
use crate::state::GatewayState;
use axum::extract::ws::Message;
use frames::Connection;
use futures::{Sink, Stream};
use link::SocketLink;
pub(crate) use reader::ReadError;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Close code sent when the gateway shuts down (RFC 6455 "going away").
const CLOSE_GOING_AWAY: u16 = 1001;

/// How long a socket may keep shutdown waiting while it takes its last events.
const SHUTDOWN_SEND_GRACE: Duration = Duration::from_secs(1);

/// Close code sent when a frame exceeds the transport cap (RFC 6455 "message too big").
const CLOSE_TOO_BIG: u16 = 1009;

/// Close code sent when the client breaks the framing rules (RFC 6455 "protocol
/// error"): an unmasked frame, reserved bits or opcodes, a control frame fragmented or
/// over 125 bytes, fragments out of order.
const CLOSE_PROTOCOL_ERROR: u16 = 1002;

/// Close code sent when a text message is not UTF-8 (RFC 6455 "invalid frame payload
/// data").
const CLOSE_INVALID_PAYLOAD: u16 = 1007;

/// Close code sent to a socket closed for holding nothing past the idle timeout.
const CLOSE_NORMAL: u16 = 1000;

/// Close code sent when a message is not completed within the message deadline (RFC
/// 6455 "policy violation").
const CLOSE_POLICY: u16 = 1008;

/// Close code sent when the buffer budget has no room for a message in flight (IANA
/// "try again later").
const CLOSE_TRY_AGAIN_LATER: u16 = 1013;

/// Who is on the other end of a socket: whom its sessions and executions count against,
/// and what its credential allows.
#[derive(Debug, Clone)]
pub(crate) struct Caller {
    /// The tenant (or, with anonymous clients, the address) its caps count against and
    /// whose namespace its session names live in.
    pub(crate) principal: Principal,
    /// What its credential allows; everything the gateway does for an anonymous one.
    pub(crate) grant: Arc<crate::auth::Grant>,
    /// The address it connected from (for the audit log).
    pub(crate) peer: std::net::IpAddr,
}

impl Caller {
    /// An anonymous caller from `peer` (no authentication configured).
    #[cfg(test)]
    pub(crate) fn anonymous(peer: std::net::SocketAddr) -> Self {
        Self {
            principal: Principal::of_peer(peer),
            grant: Arc::default(),
            peer: peer.ip(),
        }
    }
}

/// Serves one upgraded socket, given as its two halves, until the client leaves or
/// `shutdown` is cancelled.
pub(crate) async fn serve<S, R, E>(
    sink: S,
    frames: R,
    state: Arc<GatewayState>,
    shutdown: CancellationToken,
    socket_id: u64,
    caller: Caller,
    meter: Arc<Meter>,
) where
    S: Sink<Message> + Unpin + Send + 'static,
    S::Error: std::fmt::Display,
    R: Stream<Item = Result<Message, E>> + Unpin,
    E: ReadError,
{
    meter.arm();
    // What this socket holds (its own stream, its stdin) counts against its peer's share.
    let buffers = state.buffers.for_principal(caller.principal.clone());
    let own = Arc::new(EventStream::new(
        None,
        crate::fanout::ReplayCaps::from_config(&state.config),
        &buffers,
    ));
    let link = Arc::new(SocketLink::new(socket_id, own.clone()));
    // Cancelled on gateway shutdown, or by the writer when it can no longer write (the
    // client stopped reading past the send timeout, or the socket broke).
    let closing = shutdown.child_token();
    // Tells the writer to write what is left, then close.
    let finish = CancellationToken::new();
    let close_reason = Arc::default();
    let peer_closed: Arc<std::sync::atomic::AtomicBool> = Arc::default();
    let writer = tokio::spawn(writer::write_loop(writer::Writer {
        sink,
        link: link.clone(),
        state: state.clone(),
        failed: closing.clone(),
        shutdown: shutdown.clone(),
        finish: finish.clone(),
        close_reason: Arc::clone(&close_reason),
        peer_closed: peer_closed.clone(),
    }));
    let mut conn = Connection::new(
        state.clone(),
        link.clone(),
        own,
        closing,
        close_reason,
        peer_closed,
        caller,
        buffers,
    );
    tracing::debug!("connected");
    reader::read_loop(&mut conn, frames, &meter).await;
    if shutdown.is_cancelled() {
        // Every execution is being cancelled; let their last events reach this socket.
        let deadline = state.config.kill_grace + SHUTDOWN_SEND_GRACE;
        let _ = tokio::time::timeout(deadline, state.executions.wait()).await;
    }
    finish.cancel();
    if let Err(err) = writer.await {
        tracing::error!(%err, "socket writer task failed");
    }
    link.unsubscribe_all(&state.sessions);
    tracing::debug!("disconnected");
}
