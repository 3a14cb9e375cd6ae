//! The HTTP routes: the main listener (`/v1/ws`, `/v1/runtimes`, `/healthz`, `/readyz`,
//! the playground page at `/` unless `--no-playground`, and `/metrics` unless it has a
//! listener of its own), how its connections are admitted and metered
//! before HTTP, and the metrics listener (`--metrics-listen`).

use super::build::Built;
use super::drain::let_running_executions_finish;
use super::signals::Signals;
use super::upgrade::upgrade;
use crate::admission::{Admitting, Peer};
use crate::state::GatewayState;
use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::serve::ListenerExt as _;
use axum::Router;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// TCP connections admitted beyond `max_connections`, for health checks and for the
/// HTTP 503 answers to sockets over the limit.
const TCP_HEADROOM: usize = 64;

/// TCP connections one peer may hold beyond its WebSocket share
/// (`--max-connections-per-peer`): room for its health checks and its refused upgrades.
/// One more is closed as soon as it is accepted.
const TCP_HEADROOM_PER_PEER: usize = 16;

/// Serves the routes on `listener` (every connection admitted, metered and counted)
/// until `shutdown` resolves; then stops taking connections and cancels the rest.
/// `/metrics` is served here unless `separate_metrics` (it has a listener of its own).
pub(super) async fn serve(
    listener: TcpListener,
    gateway: &Built,
    separate_metrics: bool,
    signals: Signals,
) -> std::io::Result<()> {
    let state = &gateway.state;
    let mut app = Router::new()
        .route(sluice_protocol::WS_PATH, get(upgrade))
        .route(sluice_protocol::RUNTIMES_PATH, get(runtimes))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz));
    if !separate_metrics {
        app = app.route("/metrics", get(metrics_on_main));
    }
    if state.config.playground {
        app = app.merge(super::playground::routes());
    }
    let app = app
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                "not found; the Sluice WebSocket endpoint is /v1/ws (GET /v1/runtimes lists its languages)\n",
            )
        })
        .with_state(state.clone());
    let listener = listener.tap_io(|tcp| {
        if let Err(err) = tcp.set_nodelay(true) {
            tracing::debug!(%err, "could not set TCP_NODELAY");
        }
    });
    let tcp_limit = state.config.max_connections.saturating_add(TCP_HEADROOM);
    // Counts each connection's bytes of an unfinished message (memory budget, deadline).
    let listener =
        crate::meter::Metering::new(listener, state.meters.clone(), state.buffers.clone());
    // Per peer: its WebSocket share, plus room for health checks and refusals.
    let tcp_per_peer = state
        .config
        .connections_per_peer()
        .saturating_add(TCP_HEADROOM_PER_PEER);
    let listener = Admitting::new(
        listener,
        tcp_limit,
        tcp_per_peer,
        state.config.handshake_timeout,
    );
    tracing::info!(
        languages = %state.runtimes.names().join(", "),
        "ready"
    );
    let stopping = state.clone();
    axum::serve(listener, app.into_make_service_with_connect_info::<Peer>())
        .with_graceful_shutdown(async move {
            signals.drain.cancelled().await;
            let_running_executions_finish(&stopping, &signals.hurry).await;
            tracing::info!("shutting down: cancelling executions and closing sockets");
            stopping.shutdown.cancel();
            stopping.executions.close();
        })
        .await
}

/// Serves `/metrics`, `/healthz` and `/readyz` (nothing else) on the metrics listener
/// until `stop` is cancelled (after the drain).
pub(super) async fn serve_metrics(
    listener: TcpListener,
    state: Arc<GatewayState>,
    stop: CancellationToken,
) -> std::io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "serving /metrics, /healthz and /readyz");
    }
    let app = Router::new()
        .route(
            "/metrics",
            get(
                |State(state): State<Arc<GatewayState>>, headers: axum::http::HeaderMap| async move {
                    metrics_response(&state, &headers, true)
                },
            ),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                "not found; this listener serves /metrics, /healthz and /readyz\n",
            )
        })
        .with_state(state);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await
}

/// `GET /readyz`: 200 while the gateway takes new work; 503 once it drains
/// (`GatewayState::draining`) or when the isolation its configuration demands is
/// broken (the jail program is gone, the cgroup directories cannot be written): a
/// few `stat`s and an `open`, no spawn.
async fn readyz(State(state): State<Arc<GatewayState>>) -> Response {
    if state.draining.load(Ordering::Acquire) || state.shutdown.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining\n").into_response();
    }
    if let Some(broken) = isolation_broken(&state.host) {
        tracing::warn!(%broken, "not ready: the isolation the configuration demands is broken");
        let body = format!("not ready: {broken}\n");
        return (StatusCode::SERVICE_UNAVAILABLE, body).into_response();
    }
    "ready\n".into_response()
}

/// What is wrong with the isolation the gateway started with, if anything.
fn isolation_broken(host: &crate::execution::Host) -> Option<String> {
    if let Some(jail) = &host.jail {
        use std::os::unix::fs::PermissionsExt as _;
        let program = jail.program();
        let runnable = std::fs::metadata(program)
            .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0);
        if !runnable {
            return Some(format!(
                "the jail program {} is missing or not executable",
                program.display()
            ));
        }
    }
    host.cgroups
        .unwritable()
        .map(|dir| format!("the cgroup directory {} is not writable", dir.display()))
}

/// `GET /metrics` on the main listener: with a token configured, for whoever presents
/// it; without one, for loopback peers only.
async fn metrics_on_main(
    State(state): State<Arc<GatewayState>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    headers: axum::http::HeaderMap,
) -> Response {
    metrics_response(&state, &headers, peer.addr.ip().is_loopback())
}

/// The metrics as Prometheus text, if the request may have them: it presents the
/// token when one is configured; else `open` (a loopback peer, or the metrics
/// listener the operator chose) decides.
fn metrics_response(state: &GatewayState, headers: &axum::http::HeaderMap, open: bool) -> Response {
    match &state.metrics_token {
        Some(token) => {
            let presented = headers
                .get(axum::http::header::AUTHORIZATION)
                .map(axum::http::HeaderValue::as_bytes);
            if !token.admits(presented) {
                return (
                    StatusCode::UNAUTHORIZED,
                    [(axum::http::header::WWW_AUTHENTICATE, "Bearer")],
                    "a valid bearer token is required\n",
                )
                    .into_response();
            }
        }
        None if !open => {
            return (
                StatusCode::FORBIDDEN,
                "metrics are served to loopback peers only; configure --metrics-token-file or --metrics-listen\n",
            )
                .into_response();
        }
        None => {}
    }
    let in_use =
        |total: usize, semaphore: &Semaphore| total.saturating_sub(semaphore.available_permits());
    let config = &state.config;
    let now = crate::observe::Snapshot {
        connections: in_use(config.max_connections, &state.connection_slots),
        sessions: state.sessions.open_count(),
        executions: in_use(config.max_executions, &state.execution_slots),
        interpreters: in_use(config.max_kernels, &state.kernel_slots),
        warm_size: state.host.warm.as_ref().map_or(0, |pool| pool.size()),
        warm_ready: state
            .host
            .warm
            .as_ref()
            .map_or(0, |pool| pool.ready_count()),
        warm_memory_bytes: state
            .host
            .warm
            .as_ref()
            .map_or(0, |pool| pool.memory_bytes()),
    };
    match state.observe.metrics.render(now) {
        Ok(text) => (
            [(
                axum::http::header::CONTENT_TYPE,
                crate::observe::metrics::CONTENT_TYPE,
            )],
            text,
        )
            .into_response(),
        Err(err) => {
            tracing::error!(%err, "could not encode the metrics");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// `GET /v1/runtimes`: what the caller may run and with which limits, as JSON (the
/// answer a `runtimes` frame gets), with the same origin check and credential an
/// upgrade needs.
async fn runtimes(
    State(state): State<Arc<GatewayState>>,
    ConnectInfo(Peer { addr: peer, .. }): ConnectInfo<Peer>,
    headers: axum::http::HeaderMap,
    uri: axum::http::Uri,
) -> Response {
    if let Err(refusal) = super::upgrade::check_origin(&state, &headers, peer, "runtimes") {
        return refusal.into_response();
    }
    let grant = match super::upgrade::authenticate(&state, &headers, &uri, peer, "runtimes") {
        Ok(grant) => grant,
        Err(unauthorized) => return unauthorized.into_response(),
    };
    match tokio::task::spawn_blocking(move || state.catalog(&grant)).await {
        Ok(catalog) => (
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            serde_json::to_string(&catalog).unwrap_or_default(),
        )
            .into_response(),
        Err(err) => {
            tracing::error!(%err, "listing the runtimes failed");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "could not list the runtimes\n",
            )
                .into_response()
        }
    }
}
