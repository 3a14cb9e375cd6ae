//! The listener: HTTP routes (`/v1/ws`, `/healthz`, `/readyz`, `/metrics`), connection
//! admission, the optional second listener for metrics (`--metrics-listen`), and the
//! shutdown sequence.

use crate::admission::{Admitting, Peer, Principal, Quota};
use crate::config::{Config, ConfigError};
use crate::connection;
use crate::observe::metrics::UpgradeRefusal;
use crate::runtime::{RuntimeError, RuntimeTable};
use crate::sandbox::{ProgramUser, Sandbox};
use crate::session::SessionRegistry;
use crate::state::GatewayState;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::serve::ListenerExt as _;
use axum::Router;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

/// TCP connections admitted beyond `max_connections`, for health checks and for the
/// HTTP 503 answers to sockets over the limit.
const TCP_HEADROOM: usize = 64;

/// TCP connections one peer may hold beyond its WebSocket share
/// (`--max-connections-per-peer`): room for its health checks and its refused upgrades.
/// One more is closed as soon as it is accepted.
const TCP_HEADROOM_PER_PEER: usize = 16;

/// Why the gateway could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The configuration is invalid.
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    /// A configured runtime cannot be used.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// The working-directory root cannot be created.
    #[error("cannot create the work directory {path}: {cause}")]
    WorkRoot {
        /// The directory.
        path: PathBuf,
        /// The cause (in the message, so not also a `source`).
        cause: std::io::Error,
    },
    /// The isolation level asked for is not available on this host.
    #[error("{0}")]
    Isolation(String),
    /// The configured credentials cannot be loaded (the message names the file).
    #[error(transparent)]
    Auth(#[from] crate::auth::AuthSetupError),
    /// Asked to listen beyond loopback with no authentication configured.
    #[error("refusing to serve {0} without authentication: anyone who can reach it could run code here. Configure credentials (--api-keys FILE, made with `sluice key add`, or --jwt-secret-file FILE / --jwt-public-key-file FILE; see docs/operating.md section 12), listen on a loopback address, or pass --insecure-no-auth if something in front of the gateway authenticates")]
    Unprotected(std::net::SocketAddr),
    /// The server failed while accepting connections.
    #[error("server error: {0}")]
    Serve(#[source] std::io::Error),
    /// The metrics listener or its token could not be set up.
    #[error("{0}")]
    Metrics(String),
}

/// Serves Sluice on `listener` until `shutdown` resolves, then cancels every execution,
/// closes every socket (close code 1001) and returns once all process groups are reaped
/// or the shutdown grace period has passed.
///
/// With `config.metrics_listen`, `/metrics`, `/healthz` and `/readyz` are also served
/// on a listener bound to that address (see [`run_with_metrics_listener`]).
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), GatewayError> {
    run_with_signals(listener, config, stop_when(shutdown)).await
}

/// What a running gateway can be told (`sluice serve`: SIGTERM or SIGINT, and SIGHUP).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// The first drains the gateway, a second ends it at once.
    Stop,
    /// Read the credentials again (the API key file, the token keys): new connections
    /// are checked against them; sockets already open keep the grant they were given.
    /// A file that no longer loads leaves the credentials as they were (logged).
    Reload,
}

/// A signal stream that says `Stop` once `shutdown` resolves.
fn stop_when(
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> impl futures::Stream<Item = Signal> + Send + 'static {
    futures::stream::once(async move {
        shutdown.await;
        Signal::Stop
    })
}

/// [`run`], told what to do by a stream of [`Signal`]s. The first `Stop` drains the
/// gateway (new connections and executions refused, running ones given
/// `config.drain_timeout` to finish, then cancelled with their terminal events
/// delivered); a second ends it at once, without waiting for the drain or the grace
/// periods (what is still running is killed as the gateway's tasks are dropped). The
/// stream ending counts as a `Stop`. `Reload` reads the credentials again.
pub async fn run_with_signals(
    listener: TcpListener,
    config: Config,
    signals: impl futures::Stream<Item = Signal> + Send + 'static,
) -> Result<(), GatewayError> {
    let metrics_listener = match config.metrics_listen {
        None => None,
        Some(addr) => Some(TcpListener::bind(addr).await.map_err(|err| {
            GatewayError::Metrics(format!("cannot listen for metrics on {addr}: {err}"))
        })?),
    };
    serve_until(listener, metrics_listener, config, Signals::watch(signals)).await
}

/// [`run`], with `/metrics`, `/healthz` and `/readyz` served on `metrics_listener`
/// (which takes the place of `config.metrics_listen`) instead of `/metrics` on the
/// main listener. The metrics listener serves until the drain is over, so readiness
/// (503 while draining) and the metrics can be read during it.
pub async fn run_with_metrics_listener(
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), GatewayError> {
    let signals = Signals::watch(stop_when(shutdown));
    serve_until(listener, metrics_listener, config, signals).await
}

/// As Redis's protected mode: a gateway serves anonymous clients only on a loopback
/// address, unless told (`insecure_no_auth`). `run` checks it; `sluice serve` checks it
/// too, before it says it listens.
pub fn check_exposure(listen: std::net::SocketAddr, config: &Config) -> Result<(), GatewayError> {
    let anonymous = !config.auth.is_configured() && !config.auth.insecure_no_auth;
    if anonymous && !listen.ip().is_loopback() {
        return Err(GatewayError::Unprotected(listen));
    }
    if let Some(metrics) = config.metrics_listen {
        check_metrics_exposure(metrics, config)?;
    }
    Ok(())
}

/// Loads the credentials the configuration names (the API key file, the token keys)
/// and drops them: what `run` would refuse to start with, said before anything binds.
pub fn check_credentials(config: &Config) -> Result<(), GatewayError> {
    crate::auth::Authenticator::from_config(&config.auth)?;
    Ok(())
}

/// The metrics (tenant names among them) are not served beyond loopback without their
/// token, unless told.
fn check_metrics_exposure(
    metrics: std::net::SocketAddr,
    config: &Config,
) -> Result<(), GatewayError> {
    if !metrics.ip().is_loopback()
        && config.metrics_token_file.is_none()
        && !config.auth.insecure_no_auth
    {
        return Err(GatewayError::Metrics(format!(
            "refusing to serve /metrics on {metrics} without --metrics-token-file: the metrics name tenants and what they run. Give it a token, listen on a loopback address, or pass --insecure-no-auth"
        )));
    }
    Ok(())
}

/// The signals a gateway heeds, as the serving code waits for them: drain, then hurry
/// (the first and the second `Stop`), and each `Reload`.
#[derive(Debug, Clone)]
struct Signals {
    /// The first `Stop`: drain.
    drain: CancellationToken,
    /// A second `Stop`: stop waiting.
    hurry: CancellationToken,
    /// Bumped by each `Reload`.
    reloads: tokio::sync::watch::Receiver<u64>,
}

impl Signals {
    /// Follows `signals` on a task of its own.
    fn watch(signals: impl futures::Stream<Item = Signal> + Send + 'static) -> Self {
        use futures::StreamExt as _;
        let (reloaded, reloads) = tokio::sync::watch::channel(0_u64);
        let tokens = Self {
            drain: CancellationToken::new(),
            hurry: CancellationToken::new(),
            reloads,
        };
        let (drain, hurry) = (tokens.drain.clone(), tokens.hurry.clone());
        tokio::spawn(async move {
            let mut signals = std::pin::pin!(signals);
            loop {
                match signals.next().await {
                    Some(Signal::Reload) => reloaded.send_modify(|n| *n += 1),
                    Some(Signal::Stop) | None if !drain.is_cancelled() => drain.cancel(),
                    Some(Signal::Stop) => {
                        tracing::warn!("a second shutdown signal: ending now, without waiting");
                        hurry.cancel();
                        return;
                    }
                    None => return,
                }
            }
        });
        tokens
    }
}

/// Reads the credentials again on each `Reload`, until the gateway stops.
async fn reload_credentials(
    state: Arc<GatewayState>,
    mut reloads: tokio::sync::watch::Receiver<u64>,
) {
    while reloads.changed().await.is_ok() {
        match crate::auth::Authenticator::from_config(&state.config.auth) {
            Ok(fresh) => {
                *state
                    .authenticator
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = fresh.map(Arc::new);
                tracing::info!("credentials reloaded; new connections are checked against them");
                state.observe.metrics.credentials_reloaded(true);
            }
            Err(err) => {
                tracing::error!(
                    %err,
                    "could not reload the credentials; the ones loaded before stay in force"
                );
                state.observe.metrics.credentials_reloaded(false);
            }
        }
    }
}

/// Serves until `signals` say stop, then drains and shuts down.
async fn serve_until(
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    config: Config,
    signals: Signals,
) -> Result<(), GatewayError> {
    let address = listener.local_addr().map_err(GatewayError::Serve)?;
    check_exposure(address, &config)?;
    if let Some(metrics) = &metrics_listener {
        let metrics = metrics.local_addr().map_err(GatewayError::Serve)?;
        check_metrics_exposure(metrics, &config)?;
    }
    let gateway = build(config).await?;
    let reloading = tokio::spawn(reload_credentials(
        gateway.state.clone(),
        signals.reloads.clone(),
    ));
    let separate = metrics_listener.is_some();
    let metrics_served = CancellationToken::new();
    let metrics_server = metrics_listener.map(|listener| {
        tokio::spawn(serve_metrics(
            listener,
            gateway.state.clone(),
            metrics_served.clone(),
        ))
    });
    let served = serve(listener, &gateway, separate, signals.clone()).await;
    reloading.abort();
    drain(gateway, &signals.hurry).await;
    metrics_served.cancel();
    if let Some(server) = metrics_server {
        match server.await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => tracing::warn!(%err, "the metrics listener failed"),
            Err(err) => tracing::warn!(%err, "the metrics listener's task failed"),
        }
    }
    served.map_err(GatewayError::Serve)
}

/// A gateway ready to serve: what every connection shares, and what outlives them
/// until the drain.
pub(crate) struct Built {
    pub(crate) state: Arc<GatewayState>,
    /// Removed (with everything under it) when the gateway stops.
    work_root: WorkRoot,
}

/// Checks the configuration, sets up the process, decides the isolation policy
/// (`sandbox::Sandbox`), resolves the runtimes and builds the shared state.
pub(crate) async fn build(config: Config) -> Result<Built, GatewayError> {
    config.validate()?;
    let authenticator = crate::auth::Authenticator::from_config(&config.auth)?;
    match &authenticator {
        Some(accepted) => tracing::info!(accepts = %accepted.summary(), "clients authenticate"),
        None => tracing::info!("clients are anonymous (no credentials configured)"),
    }
    let mut config = config;
    // A program cannot be given more descriptors than the gateway may have itself.
    if let Some(hard) = crate::sys::open_files_hard_limit() {
        let bound = &mut config.limits.open_files;
        if bound.max > hard {
            tracing::warn!(
                configured = bound.max,
                hard,
                "the open-files maximum is above the gateway's own hard limit; using the hard limit"
            );
            bound.max = hard;
            bound.default = bound.default.min(hard);
        }
    }
    crate::sys::keep_freed_memory();
    crate::sys::close_inherited_descriptors_on_exec();
    let work_root = WorkRoot::create(config.work_root.as_deref())?;
    let sandbox = Sandbox::prepare(&config, &work_root.path)
        .await
        .map_err(|err| GatewayError::Isolation(err.0))?;
    // A refusal from here on drops the sandbox, and with it the cgroup directories
    // the probe made (`Cgroups` removes them when dropped).
    if let Some(user) = sandbox.program_user {
        work_root.open_to(user)?;
    }
    let specs = config.runtimes.clone();
    let program_user = sandbox.program_user;
    // Locating interpreters runs them once; keep that off the async workers.
    let runtimes = tokio::task::spawn_blocking(move || RuntimeTable::resolve(&specs, program_user))
        .await
        .map_err(|e| GatewayError::Serve(std::io::Error::other(e)))??;
    let metrics_token = match &config.metrics_token_file {
        None => None,
        Some(path) => {
            Some(crate::observe::MetricsToken::read(path).map_err(GatewayError::Metrics)?)
        }
    };
    let observe = crate::observe::Observer::new(&runtimes.names(), config.audit_log.as_deref());
    if let Some(path) = &config.audit_log {
        tracing::info!(path = %path.display(), "audit log: one JSON line per finished execution");
    }
    let shutdown_token = CancellationToken::new();
    let buffers = crate::buffer_budget::BufferBudget::new(
        config
            .buffer_budget_bytes
            .unwrap_or_else(crate::buffer_budget::default_budget_bytes),
        config.budget_share_per_peer,
    );
    tracing::info!(
        bytes = buffers.limit(),
        "memory budget for replay buffers, messages in flight and queued stdin"
    );
    tokio::spawn(
        buffers
            .clone()
            .return_memory_after_peaks(shutdown_token.clone()),
    );
    let sessions = SessionRegistry::new(
        crate::fanout::ReplayCaps::from_config(&config),
        buffers.clone(),
        config.session_grace,
        config.max_sessions,
        config.sessions_per_peer(),
        shutdown_token.clone(),
    );
    let state = Arc::new(GatewayState {
        runtimes,
        sessions: Arc::new(sessions),
        executions: TaskTracker::new(),
        execution_slots: Arc::new(Semaphore::new(config.max_executions)),
        kernel_slots: Arc::new(Semaphore::new(config.max_kernels)),
        connection_slots: Arc::new(Semaphore::new(config.max_connections)),
        connections_per_peer: Quota::new(config.connections_per_peer()),
        executions_per_peer: Quota::new(config.executions_per_peer()),
        kernels_per_peer: Quota::new(config.kernels_per_peer()),
        shutdown: shutdown_token,
        connections: TaskTracker::new(),
        next_connection_id: AtomicU64::new(1),
        host: crate::execution::Host {
            work_root: Arc::from(work_root.path.as_path()),
            base_env: config.base_env.clone().into(),
            cgroups: sandbox.cgroups,
            budget: sandbox.budget,
            no_network: sandbox.no_network,
            jail: sandbox.jail,
            program_user: sandbox.program_user,
            observe: observe.clone(),
        },
        buffers,
        meters: crate::meter::Meters::default(),
        authenticator: std::sync::RwLock::new(authenticator.map(Arc::new)),
        draining: AtomicBool::new(false),
        observe,
        metrics_token,
        config,
    });
    Ok(Built { state, work_root })
}

/// Serves the routes on `listener` (every connection admitted, metered and counted)
/// until `shutdown` resolves; then stops taking connections and cancels the rest.
/// `/metrics` is served here unless `separate_metrics` (it has a listener of its own).
async fn serve(
    listener: TcpListener,
    gateway: &Built,
    separate_metrics: bool,
    signals: Signals,
) -> std::io::Result<()> {
    let state = &gateway.state;
    let mut app = Router::new()
        .route(sluice_protocol::WS_PATH, get(upgrade))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz));
    if !separate_metrics {
        app = app.route("/metrics", get(metrics_on_main));
    }
    let app = app
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                "not found; the Sluice WebSocket endpoint is /v1/ws\n",
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

/// The drain: from now on `/readyz` answers 503 and new connections and executions are
/// refused (`shutting_down`), while the listener still answers; running executions get
/// up to `--drain-timeout` (or until `hurry`) to end on their own.
async fn let_running_executions_finish(state: &GatewayState, hurry: &CancellationToken) {
    state.draining.store(true, Ordering::Release);
    // Closing lets `wait` resolve once the running ones are over; nothing new starts.
    state.executions.close();
    let running = state.executions.len();
    let timeout = state.config.drain_timeout;
    if running == 0 || timeout.is_zero() {
        return;
    }
    tracing::info!(
        running,
        ?timeout,
        "draining: new connections and executions are refused; running executions may finish"
    );
    tokio::select! {
        () = state.executions.wait() => tracing::info!("drained: every execution ended on its own"),
        () = tokio::time::sleep(timeout) => tracing::warn!(
            running = state.executions.len(),
            "the drain timeout passed; cancelling the executions still running"
        ),
        () = hurry.cancelled() => {}
    }
}

/// The shutdown sequence: cancel everything, wait (up to the grace periods) for the
/// sockets and executions, end the sessions and their interpreters, remove the cgroups
/// and the work root.
async fn drain(gateway: Built, hurry: &CancellationToken) {
    let Built { state, work_root } = gateway;
    state.draining.store(true, Ordering::Release);
    state.shutdown.cancel();
    state.executions.close();
    state.connections.close();
    let deadline = state.config.shutdown_grace + state.config.kill_grace;
    let waited = |what: &'static str, done| async move {
        tokio::select! {
            finished = tokio::time::timeout(deadline, done) => if finished.is_err() {
                tracing::warn!(?deadline, "{what} after the shutdown grace period");
            },
            () = hurry.cancelled() => {}
        }
    };
    waited("connections still open", state.connections.wait()).await;
    waited("executions still running", state.executions.wait()).await;
    if hurry.is_cancelled() {
        // What still runs is killed as its tasks are dropped with the runtime.
        state.host.cgroups.remove();
        drop(work_root);
        return;
    }
    // Persistent interpreters go with their sessions.
    state.sessions.end_all().await;
    state.host.cgroups.remove();
    drop(work_root);
}

/// Serves `/metrics`, `/healthz` and `/readyz` (nothing else) on the metrics listener
/// until `stop` is cancelled (after the drain).
async fn serve_metrics(
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

/// Admits a WebSocket upgrade, in an order that reveals nothing to a caller without a
/// credential:
/// 1. Browsers let any page open a socket to localhost, so a request that carries an
///    `Origin` header (every browser request does) is refused unless that origin is
///    allowed; one with two `Origin` headers is refused outright (which would count?).
/// 2. Where clients authenticate, the credential (`auth`): HTTP 401 with a short reason.
/// 3. Shutdown, then the gateway's socket limit (503), then the caller's share: its
///    tenant's, or where clients are anonymous its address's (429).
async fn upgrade(
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
    let mut origins = headers.get_all(axum::http::header::ORIGIN).iter();
    if let (Some(_), Some(_)) = (origins.next(), origins.next()) {
        tracing::warn!(%peer, "upgrade refused: more than one Origin header");
        refused(UpgradeRefusal::TwoOrigins);
        return (
            StatusCode::BAD_REQUEST,
            "a request may carry at most one Origin header\n",
        )
            .into_response();
    }
    if let Some(origin) = headers.get(axum::http::header::ORIGIN) {
        let allowed = &state.config.allowed_origins;
        let ok = origin.to_str().is_ok_and(|o| {
            allowed
                .iter()
                .any(|a| a == "*" || a.eq_ignore_ascii_case(o))
        });
        if !ok {
            tracing::warn!(%peer, ?origin, "upgrade refused: origin not allowed (see --allow-origin)");
            refused(UpgradeRefusal::Origin);
            return (
                StatusCode::FORBIDDEN,
                "this origin may not open a Sluice socket; start the gateway with --allow-origin ORIGIN\n",
            )
                .into_response();
        }
    }
    let authenticator = state
        .authenticator
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    let grant = match authenticator {
        None => crate::auth::Grant::default(),
        Some(authenticator) => match authenticator.authenticate(&headers, &uri) {
            Ok(grant) => grant,
            Err(denied) => {
                // The reason, never the credential.
                tracing::warn!(%peer, reason = %denied, detail = denied.detail(), "upgrade refused: not authenticated");
                refused(UpgradeRefusal::Unauthenticated);
                return (
                    StatusCode::UNAUTHORIZED,
                    [(
                        axum::http::header::WWW_AUTHENTICATE,
                        "Bearer realm=\"sluice\"",
                    )],
                    format!("{denied}\n"),
                )
                    .into_response();
            }
        },
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
        .read_buffer_size(16 * 1024)
        .on_upgrade(move |socket| {
            let tenant = grant.tenant.as_deref().unwrap_or("-").to_owned();
            let span = tracing::info_span!("connection", id, %peer, %tenant);
            let shutdown = state.shutdown.child_token();
            let tracker = state.connections.clone();
            tracker.track_future(
                async move {
                    let (sink, frames) = futures::StreamExt::split(socket);
                    let caller = connection::Caller {
                        principal,
                        grant,
                        peer: peer.ip(),
                    };
                    connection::serve(sink, frames, state, shutdown, id, caller, meter).await;
                    drop((permit, peer_permit));
                }
                .instrument(span),
            )
        })
}

/// The directory holding every execution's working directory; removed when dropped.
#[derive(Debug)]
struct WorkRoot {
    path: PathBuf,
}

impl WorkRoot {
    fn create(base: Option<&Path>) -> Result<Self, GatewayError> {
        let base = base
            .map(Path::to_path_buf)
            .unwrap_or_else(default_work_base);
        remove_stale_roots(&base);
        std::fs::create_dir_all(&base).map_err(|cause| GatewayError::WorkRoot {
            path: base.clone(),
            cause,
        })?;
        // A fresh, private directory: never reuse one someone else prepared. Several
        // gateways may share a process (tests, embedders) and the clock may be coarse, so a
        // name already taken means "try the next one", never "fail".
        static NEXT_ROOT: AtomicU64 = AtomicU64::new(0);
        let path = loop {
            let serial = NEXT_ROOT.fetch_add(1, Ordering::Relaxed);
            let path = base.join(format!(
                "sluice-{}-{}-{serial}",
                std::process::id(),
                nanos()
            ));
            use std::os::unix::fs::DirBuilderExt as _;
            match std::fs::DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => break path,
                Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(cause) => return Err(GatewayError::WorkRoot { path, cause }),
            }
        };
        tracing::info!(path = %path.display(), "execution working directories go here");
        Ok(Self { path })
    }

    /// Lets `user` search (not list) the root, so each program can enter the working
    /// directory it is given; refuses when a directory above shuts that user out.
    fn open_to(&self, user: ProgramUser) -> Result<(), GatewayError> {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&self.path, std::fs::Permissions::from_mode(0o711)).map_err(
            |cause| GatewayError::WorkRoot {
                path: self.path.clone(),
                cause,
            },
        )?;
        user.can_enter(&self.path).map_err(|why| {
            GatewayError::Isolation(format!(
                "the work directory {} is out of reach of the sandbox user that programs run as without the jail: {why}; choose a --work-dir that other users can reach",
                self.path.display()
            ))
        })
    }
}

/// Removes work roots left by gateways that died without cleaning up (`sluice-PID-...`
/// whose PID no longer runs).
fn remove_stale_roots(base: &Path) {
    for root in crate::leftovers::left_by_dead_gateways(base) {
        match std::fs::remove_dir_all(&root) {
            Ok(()) => tracing::info!(path = %root.display(), "removed a stale work root"),
            Err(err) => {
                tracing::debug!(path = %root.display(), %err, "could not remove a stale work root")
            }
        }
    }
}

/// `/dev/shm` when it is a tmpfs (creating a directory and a file there costs a few
/// microseconds; on a disk file system it can cost a hundred), else the temp directory.
fn default_work_base() -> PathBuf {
    let shm = Path::new("/dev/shm");
    let on_tmpfs = std::fs::read_to_string("/proc/self/mounts")
        .map(|mounts| {
            mounts.lines().any(|line| {
                let mut fields = line.split_whitespace().skip(1);
                fields.next() == Some("/dev/shm") && fields.next() == Some("tmpfs")
            })
        })
        .unwrap_or(false);
    let writable =
        on_tmpfs && std::fs::metadata(shm).is_ok_and(|m| m.is_dir() && !m.permissions().readonly());
    if writable {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

impl Drop for WorkRoot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

fn nanos() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
}
