//! What every connection shares: configuration, credentials, runtimes, sessions,
//! capacity (gateway-wide and per peer or tenant), the shutdown signal and the drain
//! flag, and the metrics.

use crate::admission::Quota;
use crate::config::Config;
use crate::runtime::RuntimeTable;
use crate::session::SessionRegistry;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Shared, read-mostly gateway state; one `Arc` of it per connection.
#[derive(Debug)]
pub(crate) struct GatewayState {
    pub(crate) config: Config,
    pub(crate) runtimes: RuntimeTable,
    pub(crate) sessions: Arc<SessionRegistry>,
    /// Every execution task; shutdown waits for them (they outlive their sockets).
    pub(crate) executions: TaskTracker,
    /// One permit per running execution, gateway-wide; each execution task owns its permit.
    pub(crate) execution_slots: Arc<Semaphore>,
    /// One permit per persistent interpreter; each kernel owns its permit.
    pub(crate) kernel_slots: Arc<Semaphore>,
    /// One permit per open connection; each connection task owns its permit.
    pub(crate) connection_slots: Arc<Semaphore>,
    /// Connections each peer holds (`--max-connections-per-peer`).
    pub(crate) connections_per_peer: Quota,
    /// Executions each peer has running (`--max-executions-per-peer`); each execution's
    /// `ExecutionSlot` holds its unit.
    pub(crate) executions_per_peer: Quota,
    pub(crate) kernels_per_peer: Quota,
    /// Session workspaces, gateway-wide (`--max-workspaces`).
    pub(crate) workspace_slots: Arc<Semaphore>,
    /// Session workspaces per peer.
    pub(crate) workspaces_per_peer: Quota,
    /// The bytes all workspaces may hold together (`--workspace-budget-bytes`), and
    /// each peer's share of them.
    pub(crate) workspace_budget: Arc<crate::sandbox::ExecutionBudget>,
    /// The root of the cancellation tree: cancelled once on shutdown.
    pub(crate) shutdown: CancellationToken,
    /// Tracks connection tasks so shutdown can wait for them.
    pub(crate) connections: TaskTracker,
    pub(crate) next_connection_id: AtomicU64,
    /// Where and how programs start: work root, base environment, cgroups.
    pub(crate) host: crate::execution::Host,
    /// What replay buffers, partial messages and queued stdin draw from, in total.
    pub(crate) buffers: crate::buffer_budget::BufferBudget,
    /// Each open connection's bytes in flight, by peer address.
    pub(crate) meters: crate::meter::Meters,
    /// Checks each upgrade's credential; `None` where clients do not authenticate.
    /// Replaced whole when the credentials are reloaded (`Signal::Reload`).
    pub(crate) authenticator: std::sync::RwLock<Option<Arc<crate::auth::Authenticator>>>,
    /// Set once the gateway starts draining (today: when the shutdown signal arrives,
    /// just before every execution is cancelled). From then on `GET /readyz` answers
    /// 503, so a load balancer sends new clients elsewhere; it is never cleared.
    pub(crate) draining: AtomicBool,
    /// Metrics and the audit log (the same `Observer` every execution's `Host` has).
    pub(crate) observe: crate::observe::Observer,
    /// The bearer token `/metrics` requires (`--metrics-token-file`), if any.
    pub(crate) metrics_token: Option<crate::observe::MetricsToken>,
    /// The interpreters' versions, asked once each (`runtimes`).
    pub(crate) versions: crate::catalog::Versions,
}

impl GatewayState {
    /// What the caller holding `grant` may run, and with which limits (the `runtimes`
    /// frame, `GET /v1/runtimes`). Blocks the first time, while each interpreter says
    /// its version: call it from a blocking thread. Asked as the user unjailed programs
    /// run as, where there is one (it was checked to be able to start them); otherwise
    /// as the gateway's own user, as the start-up step that finds each interpreter
    /// (`runtime::unwrap_shim`) asks it for its path: an interpreter under a directory
    /// only the jail exposes (`/root/.pyenv`) cannot be started by the sandbox user
    /// outside the jail.
    pub(crate) fn catalog(&self, grant: &crate::auth::Grant) -> sluice_protocol::Catalog {
        let user = self.host.program_user.map(|u| (u.uid, u.gid));
        // Programs keep the host's network where neither the jail nor their own start
        // takes it away (`--network on`, `--isolation none`, a host that cannot).
        let host_network = match &self.host.jail {
            Some(jail) => !jail.no_network(),
            None => !self.host.no_network,
        };
        crate::catalog::catalog(
            &self.runtimes,
            &self.config.limits,
            grant,
            &self.versions,
            user,
            host_network,
        )
    }
}
