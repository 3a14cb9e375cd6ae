//! Admitting a WebSocket upgrade on `GET /v1/ws`: origin, credential, shutdown, the
//! gateway's and the caller's connection caps, then the socket's transport settings
//! and its connection task.

use crate::admission::{Peer, Principal};
use crate::connection;
use crate::observe::metrics::UpgradeRefusal;
use crate::state::GatewayState;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tracing::Instrument as _;

/// The WebSocket layer's read buffer, per socket (see its use).
const READ_BUFFER_BYTES: usize = 4 * 1024;

/// Admits a WebSocket upgrade, in an order that reveals nothing to a caller without a
/// credential:
/// 1. Browsers let any page open a socket to localhost, so a request that carries an
///    `Origin` header (every browser request does) is refused unless that origin is
///    allowed; one with two `Origin` headers is refused outright (which would count?).
/// 2. Where clients authenticate, the credential (`auth`): HTTP 401 with a short reason.
/// 3. Shutdown, then the gateway's socket limit (503), then the caller's share: its
///    tenant's, or where clients are anonymous its address's (429).
pub(super) async fn upgrade(
    ws: WebSocketUpgrade,
    State(state): State<Arc<GatewayState>>,
    ConnectInfo(Peer {
        addr: peer,
        upgrading,
    }): ConnectInfo<Peer>,
    headers: axum::http::HeaderMap,
    uri: axum::http::Uri,
) -> Response {
    let refused = |why| state.observe.metrics.upgrade_refused(why);
    if let Err(refusal) = check_origin(&state, &headers, peer, "upgrade") {
        refused(refusal.metric());
        return refusal.into_response();
    }
    let grant = match authenticate(&state, &headers, &uri, peer, "upgrade") {
        Ok(grant) => grant,
        Err(unauthorized) => {
            refused(UpgradeRefusal::Unauthenticated);
            return unauthorized.into_response();
        }
    };
    if state.shutdown.is_cancelled() || state.draining.load(Ordering::Acquire) {
        refused(UpgradeRefusal::ShuttingDown);
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down: the gateway is draining for a restart; connect to another one\n",
        )
            .into_response();
    }
    let Ok(permit) = state.connection_slots.clone().try_acquire_owned() else {
        tracing::warn!(%peer, "connection refused: at the connection limit");
        refused(UpgradeRefusal::Connections);
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "too many connections; retry later\n",
        )
            .into_response();
    };
    let principal = match &grant.tenant {
        Some(tenant) => Principal::Tenant(tenant.clone()),
        None => Principal::of_peer(peer),
    };
    let peer_permit = match state.connections_per_peer.try_acquire(&principal) {
        Ok(permit) => permit,
        Err(exceeded) => {
            tracing::warn!(%peer, %principal, max = exceeded.max, "connection refused: at the per-peer connection limit");
            refused(UpgradeRefusal::ConnectionsPerPeer);
            let message = format!(
                "too many connections from your {principal} ({}, the maximum per peer); close one and retry\n",
                exceeded.max
            );
            return (StatusCode::TOO_MANY_REQUESTS, message).into_response();
        }
    };
    let transport_cap = state.config.max_frame_bytes.saturating_mul(4);
    upgrading.accept();
    let meter = state.meters.get(&peer).unwrap_or_else(|| {
        tracing::warn!(%peer, "no byte meter for this connection; its messages have no deadline");
        crate::meter::Meter::detached(&state.buffers)
    });
    let id = state.next_connection_id.fetch_add(1, Ordering::Relaxed);
    let grant = Arc::new(grant);
    // Only `sluice.v1` is ever chosen: a credential offered as a subprotocol is not echoed.
    ws.protocols([sluice_protocol::SUBPROTOCOL])
        .max_message_size(transport_cap)
        .max_frame_size(transport_cap)
        // tungstenite zero-fills its read buffer up to this size before every read,
        // so an idle socket keeps all of it resident: a page rather than 16 KiB saves
        // about 8 KiB per idle socket (sluice-bench --only idle). A frame of any size up
        // to the transport cap is still read whole (the buffer grows to hold it), in
        // reads of at most this size.
        .read_buffer_size(READ_BUFFER_BYTES)
        .on_upgrade(move |socket| {
            let tenant = grant.tenant.as_deref().unwrap_or("-").to_owned();
            let span = tracing::info_span!("connection", id, %peer, %tenant);
            let shutdown = state.shutdown.child_token();
            let tracker = state.connections.clone();
            // The halves and the serve future are made here, and the permits dropped by
            // a `map`: an async block awaiting the serve future would keep room for the
            // socket and for that future twice (captured, and awaited) in every
            // socket's task, idle or not.
            let (sink, frames) = futures::StreamExt::split(socket);
            let caller = connection::Caller {
                principal,
                grant,
                peer: peer.ip(),
            };
            let served = connection::serve(sink, frames, state, shutdown, id, caller, meter);
            tracker.track_future(
                futures::FutureExt::map(served, move |()| drop((permit, peer_permit)))
                    .instrument(span),
            )
        })
}

/// Browsers let any page send requests to localhost, so a request that carries an
/// `Origin` header (every browser WebSocket upgrade does, and every cross-origin
/// request) is refused with HTTP 403 unless that origin is allowed (or, while the
/// playground is served, is the gateway's own address: `playground::is_own_origin`); one with two
/// `Origin` headers with HTTP 400 (which would count?). The refusal is logged for
/// `what` (the route).
pub(super) fn check_origin(
    state: &GatewayState,
    headers: &axum::http::HeaderMap,
    peer: std::net::SocketAddr,
    what: &str,
) -> Result<(), OriginRefused> {
    let mut origins = headers.get_all(axum::http::header::ORIGIN).iter();
    if let (Some(_), Some(_)) = (origins.next(), origins.next()) {
        tracing::warn!(%peer, "{} refused: more than one Origin header", what);
        return Err(OriginRefused::TwoOrigins);
    }
    if let Some(origin) = headers.get(axum::http::header::ORIGIN) {
        let allowed = &state.config.allowed_origins;
        let host = headers
            .get(axum::http::header::HOST)
            .and_then(|h| h.to_str().ok());
        let ok = origin.to_str().is_ok_and(|o| {
            allowed
                .iter()
                .any(|a| a == "*" || a.eq_ignore_ascii_case(o))
                // The playground page the gateway served itself.
                || (state.config.playground && super::playground::is_own_origin(o, host))
        });
        if !ok {
            tracing::warn!(%peer, ?origin, "{} refused: origin not allowed (see --allow-origin)", what);
            return Err(OriginRefused::NotAllowed);
        }
    }
    Ok(())
}

/// Why [`check_origin`] refused a request.
#[derive(Debug, Clone, Copy)]
pub(super) enum OriginRefused {
    TwoOrigins,
    NotAllowed,
}

impl OriginRefused {
    /// The refusal, as the upgrade metrics count it.
    fn metric(self) -> UpgradeRefusal {
        match self {
            Self::TwoOrigins => UpgradeRefusal::TwoOrigins,
            Self::NotAllowed => UpgradeRefusal::Origin,
        }
    }
}

impl IntoResponse for OriginRefused {
    fn into_response(self) -> Response {
        match self {
            Self::TwoOrigins => (
                StatusCode::BAD_REQUEST,
                "a request may carry at most one Origin header\n",
            )
                .into_response(),
            Self::NotAllowed => (
                StatusCode::FORBIDDEN,
                "this origin may not use this Sluice gateway; start the gateway with --allow-origin ORIGIN\n",
            )
                .into_response(),
        }
    }
}

/// A refused credential: the gateway's one-line reason, answered as HTTP 401.
pub(super) struct Unauthorized(String);

impl IntoResponse for Unauthorized {
    fn into_response(self) -> Response {
        (
            StatusCode::UNAUTHORIZED,
            [(
                axum::http::header::WWW_AUTHENTICATE,
                "Bearer realm=\"sluice\"",
            )],
            format!("{}\n", self.0),
        )
            .into_response()
    }
}

/// The caller's grant: where clients authenticate, its credential checked (`auth`);
/// otherwise everything the gateway allows. A refusal carries a short reason, never the
/// credential, and is logged for `what` (the route).
pub(super) fn authenticate(
    state: &GatewayState,
    headers: &axum::http::HeaderMap,
    uri: &axum::http::Uri,
    peer: std::net::SocketAddr,
    what: &str,
) -> Result<crate::auth::Grant, Unauthorized> {
    let authenticator = state
        .authenticator
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    let Some(authenticator) = authenticator else {
        return Ok(crate::auth::Grant::default());
    };
    authenticator.authenticate(headers, uri).map_err(|denied| {
        tracing::warn!(%peer, reason = %denied, detail = denied.detail(), "{} refused: not authenticated", what);
        Unauthorized(denied.to_string())
    })
}
