//! What a running gateway can be told ([`Signal`]: stop, reload), followed on a task of
//! its own ([`Signals`]), and the credentials read again on each reload.

use crate::state::GatewayState;
use std::future::Future;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

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
pub(super) fn stop_when(
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> impl futures::Stream<Item = Signal> + Send + 'static {
    futures::stream::once(async move {
        shutdown.await;
        Signal::Stop
    })
}

/// The signals a gateway heeds, as the serving code waits for them: drain, then hurry
/// (the first and the second `Stop`), and each `Reload`.
#[derive(Debug, Clone)]
pub(super) struct Signals {
    /// The first `Stop`: drain.
    pub(super) drain: CancellationToken,
    /// A second `Stop`: stop waiting.
    pub(super) hurry: CancellationToken,
    /// Bumped by each `Reload`.
    pub(super) reloads: tokio::sync::watch::Receiver<u64>,
}

impl Signals {
    /// Follows `signals` on a task of its own.
    pub(super) fn watch(signals: impl futures::Stream<Item = Signal> + Send + 'static) -> Self {
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
pub(super) async fn reload_credentials(
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
