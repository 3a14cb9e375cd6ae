//! Building a gateway ready to serve ([`Built`]): the configuration checked, the
//! process set up, the isolation decided, the runtimes resolved and the state every
//! connection shares made.

use super::work_root::WorkRoot;
use super::GatewayError;
use crate::admission::Quota;
use crate::config::Config;
use crate::runtime::RuntimeTable;
use crate::sandbox::Sandbox;
use crate::session::SessionRegistry;
use crate::state::GatewayState;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A gateway ready to serve: what every connection shares, and what outlives them
/// until the drain.
pub(crate) struct Built {
    pub(crate) state: Arc<GatewayState>,
    /// Removed (with everything under it) when the gateway stops.
    pub(super) work_root: WorkRoot,
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
    let workspace_budget =
        crate::sandbox::ExecutionBudget::for_workspaces(&config, &sandbox.budget);
    let host = crate::execution::Host {
        work_root: Arc::from(work_root.path.as_path()),
        base_env: config.base_env.clone().into(),
        cgroups: sandbox.cgroups,
        budget: sandbox.budget,
        no_network: sandbox.no_network,
        jail: sandbox.jail,
        program_user: sandbox.program_user,
        observe: observe.clone(),
        warm: None,
        packages: runtimes.all().any(|r| r.package_index.is_some()).then(|| {
            Arc::new(crate::packages::Packages::new(
                &work_root.path.join("package-cache"),
                config.package_cache_bytes,
            ))
        }),
    };
    let warm = warm_pools(&config, &runtimes, &host);
    if let Some(pools) = &warm {
        pools.start(&host);
    }
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
        workspace_slots: Arc::new(Semaphore::new(config.max_workspaces)),
        workspaces_per_peer: Quota::new(config.workspaces_per_peer()),
        workspace_budget,
        shutdown: shutdown_token,
        connections: TaskTracker::new(),
        next_connection_id: AtomicU64::new(1),
        host: crate::execution::Host { warm, ..host },
        buffers,
        meters: crate::meter::Meters::default(),
        authenticator: std::sync::RwLock::new(authenticator.map(Arc::new)),
        draining: AtomicBool::new(false),
        observe,
        metrics_token,
        versions: crate::catalog::Versions::default(),
        config,
    });
    Ok(Built { state, work_root })
}

/// The warm pools (`--warm-pool`), one per runtime, when they are on and programs run in
/// the jail: Python gets interpreters started ahead (when run as `INTERPRETER FILE`),
/// every other runtime jails waiting before their exec. Without the jail every program
/// runs as the one sandbox user and could tamper with the entries waiting for later
/// executions (stop them, lower their limits with `prlimit`, trace them), and there is
/// no jail to wait in: the pools are off there, whatever `--warm-pool` says.
fn warm_pools(
    config: &Config,
    runtimes: &RuntimeTable,
    host: &crate::execution::Host,
) -> Option<Arc<crate::execution::warm::WarmPools>> {
    use crate::execution::warm;
    let size = config.warm_pool.unwrap_or(if host.jail.is_some() {
        crate::config::DEFAULT_WARM_POOL
    } else {
        0
    });
    if size == 0 {
        return None;
    }
    if host.jail.is_none() {
        tracing::warn!(
            size,
            "no warm pool: it needs the namespace jail (without it every program shares one \
             user and could tamper with the programs waiting for later executions)"
        );
        return None;
    }
    let limits = warm::entry_limits(&config.limits)?;
    let settings = warm::WarmSettings {
        size,
        refill_per_second: config.warm_pool_refill,
        max_age: config.warm_pool_max_age,
    };
    if let Some(unknown) = config
        .warm_runtimes
        .iter()
        .flatten()
        .find(|name| runtimes.get(name).is_none())
    {
        tracing::warn!(language = %unknown, "--warm-runtimes names a runtime that is not configured");
    }
    let wanted = |name: &str| {
        config
            .warm_runtimes
            .as_ref()
            .is_none_or(|list| list.iter().any(|w| w == name))
    };
    let pools: Vec<Arc<warm::WarmPool>> = runtimes
        .names()
        .into_iter()
        .filter(|name| wanted(name))
        .filter_map(|name| runtimes.get(name))
        .map(|runtime| Arc::new(warm::WarmPool::new(Arc::clone(runtime), limits, settings)))
        .collect();
    for pool in &pools {
        tracing::info!(
            language = %pool.runtime_name(),
            size,
            refill_per_second = config.warm_pool_refill,
            kind = match pool.kind() {
                warm::WarmKind::Interpreter => "interpreters",
                warm::WarmKind::Jail => "jails waiting before their exec",
            },
            "warm pool: started ahead of their executions"
        );
    }
    if pools.is_empty() {
        return None;
    }
    Some(Arc::new(warm::WarmPools::new(pools)))
}
