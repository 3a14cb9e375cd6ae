//! The gateway's life: [`run`] reads build → serve → drain. Each step has its file:
//! `build` (check the configuration, decide the isolation, make the shared state),
//! `work_root` (the directory under which executions work), `routes` (the HTTP routes
//! on the main listener and on the metrics listener), `upgrade` (admitting a WebSocket
//! upgrade), `exposure` (refusing to serve anonymously beyond loopback), `playground`
//! (the page at `GET /`), `signals` (stop and reload) and `drain` (the shutdown
//! sequence). This file owns the entry points and [`GatewayError`].

mod build;
mod drain;
mod exposure;
mod playground;
mod routes;
mod signals;
mod upgrade;
mod work_root;

pub(crate) use build::build;
/// What the fake-peer tests of `connection` hold to keep a built gateway alive.
#[cfg(test)]
pub(crate) use build::Built;
pub use exposure::{check_credentials, check_exposure};
pub use signals::Signal;

use crate::config::{Config, ConfigError};
use crate::runtime::RuntimeError;
use drain::drain;
use exposure::check_metrics_exposure;
use routes::{serve, serve_metrics};
use signals::{reload_credentials, stop_when, Signals};
use std::future::Future;
use std::path::PathBuf;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

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
