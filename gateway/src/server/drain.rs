//! The end of a gateway: the drain (running executions may finish while new work is
//! refused, the warm pool's interpreters are killed) and the shutdown sequence after it.

use super::build::Built;
use crate::state::GatewayState;
use std::sync::atomic::Ordering;
use tokio_util::sync::CancellationToken;

/// The drain: from now on `/readyz` answers 503 and new connections and executions are
/// refused (`shutting_down`), while the listener still answers; running executions get
/// up to `--drain-timeout` (or until `hurry`) to end on their own.
pub(super) async fn let_running_executions_finish(state: &GatewayState, hurry: &CancellationToken) {
    state.draining.store(true, Ordering::Release);
    // Nothing new starts: the warm interpreters go now.
    close_warm_pool(state).await;
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
pub(super) async fn drain(gateway: Built, hurry: &CancellationToken) {
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
    close_warm_pool(&state).await;
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

/// Kills every warm interpreter and waits until they are reaped and cleaned up (before
/// the cgroups they are in are removed).
async fn close_warm_pool(state: &GatewayState) {
    if let Some(pool) = &state.host.warm {
        pool.close(&state.host).await;
    }
}
