//! The gateway's configuration: one plain value with safe defaults ([`Config`]), built
//! by `main` from the command line and checked once by [`Config::validate`]. This file
//! owns `Config`, its defaults and the per-peer caps derived from it; the settings of
//! one concept have their own files: `limits` (per execution), `auth` (credentials),
//! `isolation` (confinement and network), `runtimes` (languages), `validate` (what is
//! refused). The observability settings (`metrics_listen`, `metrics_token_file`,
//! `audit_log`) stay plain fields of `Config`, where `sluice serve` sets them.

mod auth;
mod isolation;
mod limits;
mod runtimes;
mod validate;

pub use auth::AuthConfig;
pub use isolation::{Isolation, Network, DEFAULT_SANDBOX_ID};
pub(crate) use limits::{minimum, EffectiveLimits};
pub use limits::{LimitBound, LimitsConfig};
pub use runtimes::{AllowedHost, PackageIndex, RuntimeSpec, FILE_PLACEHOLDER};
pub use validate::ConfigError;

use std::path::PathBuf;
use std::time::Duration;

/// The package cache's default size: 256 MiB (memory, where the work root is a tmpfs).
pub const DEFAULT_PACKAGE_CACHE_BYTES: u64 = 256 << 20;

/// Everything the gateway needs to run. `Config::default()` is a safe, working setup.
#[derive(Debug, Clone)]
pub struct Config {
    /// Largest text frame a client may send, in bytes. Larger frames get `too_large`; frames
    /// above four times this close the socket (WebSocket close code 1009).
    pub max_frame_bytes: usize,
    /// Most raw output bytes carried by one `stdout`/`stderr` event.
    pub chunk_bytes: usize,
    /// Time between SIGTERM and SIGKILL when an execution is cancelled.
    pub kill_grace: Duration,
    /// Per-execution limits.
    pub limits: LimitsConfig,
    /// WebSocket connections served at once; more are answered with HTTP 503.
    pub max_connections: usize,
    /// Executions running at once on the whole gateway.
    pub max_executions: usize,
    /// Executions running at once on one socket.
    pub max_executions_per_connection: usize,
    /// Named sessions one socket may read at once (by executing in them or attaching).
    pub max_sessions_per_connection: usize,
    /// `stdin` frames queued for one execution before further ones get `stdin_full`.
    pub stdin_queue: usize,
    /// The languages the gateway runs, resolved to executables at start-up.
    pub runtimes: Vec<RuntimeSpec>,
    /// Variables every execution gets (before the runtime's and the request's own).
    pub base_env: Vec<(String, String)>,
    /// Directory under which each execution gets its own working directory; `None`
    /// uses the system temporary directory.
    pub work_root: Option<PathBuf>,
    /// How long shutdown waits for connections to finish after cancelling executions.
    pub shutdown_grace: Duration,
    /// How long a draining gateway (the first shutdown signal) lets running executions
    /// finish, refusing new connections and executions with `shutting_down`, before it
    /// cancels what still runs. Zero (the library's default) cancels at once; `sluice
    /// serve` defaults to 30 s.
    pub drain_timeout: Duration,
    /// How long a socket may refuse to take written events (the client is not reading)
    /// before the gateway closes it; its sessions then get the grace period.
    pub send_timeout: Duration,
    /// Bytes of `stdin` data queued for one execution before further frames get
    /// `stdin_full`.
    pub stdin_queue_bytes: usize,
    /// Browser origins allowed to open a socket (`Origin` header). Requests without an
    /// `Origin` header (non-browser clients) are always allowed; `*` allows every origin.
    pub allowed_origins: Vec<String>,
    /// How long an accepted TCP connection may stay without becoming a WebSocket
    /// (health checks and refusals included) before the gateway closes it.
    pub handshake_timeout: Duration,
    /// Events kept per session for replay to sockets that attach or resume.
    pub replay_events: usize,
    /// Bytes of encoded events kept per session for replay.
    pub replay_bytes: usize,
    /// How long a session with no socket attached lives on (its executions running)
    /// before it is ended and its executions cancelled. Zero ends it at once.
    pub session_grace: Duration,
    /// Sessions open on the whole gateway (gateway-made ones included).
    pub max_sessions: usize,
    /// Persistent interpreters (one per persistent session) alive at once.
    pub max_kernels: usize,
    /// Session workspaces kept at once, each a tmpfs of up to its `workspace_bytes`
    /// (so at most this many times the largest `workspace_bytes` of memory).
    pub max_workspaces: usize,
    /// Session workspaces one peer's sessions may keep at once. `None`: a quarter of
    /// `max_workspaces`.
    pub max_workspaces_per_peer: Option<usize>,
    /// Bytes all session workspaces may hold together, adding up their sizes (their
    /// files are memory, not overcommitted); each peer may hold
    /// `budget_share_per_peer` percent of it. `None`: a third of the executions'
    /// memory budget (a quarter of the host's memory); `Some(0)`: not added up.
    pub workspace_budget_bytes: Option<u64>,
    /// How strongly executions are confined (see [`Isolation`]).
    pub isolation: Isolation,
    /// Whether programs may use the network (see [`Network`]).
    pub network: Network,
    /// The unprivileged user and group programs run as (never 0): jailed ones, and a
    /// root gateway's unjailed ones.
    pub sandbox_uid: u32,
    /// See `sandbox_uid`.
    pub sandbox_gid: u32,
    /// The `sluice-jail` launcher; `None` looks next to the running executable.
    pub jail_program: Option<PathBuf>,
    // Fairness between executions (issue 10, section 4).
    /// Bytes of memory all running executions may hold together, adding up their
    /// `memory_bytes` limits (persistent interpreters: the limit they started with); an
    /// execute that does not fit gets `too_many_executions`. Also the limit of the parent
    /// cgroup of all executions. `None`: the host's memory less a quarter (at least
    /// 1 GiB); `Some(0)`: not added up, the operator overcommits on purpose.
    pub memory_budget_bytes: Option<u64>,
    /// How many times `memory_budget_bytes` the running executions' memory limits may
    /// add up to (1: only what fits at every limit at once). The parent cgroup holds
    /// the real total whatever this is.
    pub memory_overcommit: u32,
    /// Percent of each budget one peer may hold (1 to 100): of the memory and process
    /// budgets (as admitted) for its executions and interpreters, and of the buffer
    /// budget for its sessions, sockets and input.
    pub budget_share_per_peer: u32,
    /// Persistent interpreters one peer's sessions may have alive at once. `None`: a
    /// quarter of `max_kernels`.
    pub max_kernels_per_peer: Option<usize>,
    /// Processes all running executions may hold together, adding up their `processes`
    /// limits, as for `memory_budget_bytes`. `None`: half the kernel's `threads-max`;
    /// `Some(0)`: not added up.
    pub process_budget: Option<u64>,
    // One client must not lock out the others: per-peer caps and socket liveness.
    /// WebSocket connections one peer (IPv4 address or IPv6 /64) may hold at once; more
    /// get HTTP 429. `None`: a quarter of `max_connections` (at least 1).
    pub max_connections_per_peer: Option<usize>,
    /// Sessions one peer may have open at once (the ones it opened, named or
    /// gateway-made, until they end). `None`: a quarter of `max_sessions`.
    pub max_sessions_per_peer: Option<usize>,
    /// Executions one peer may have running at once. `None`: a quarter of
    /// `max_executions`.
    pub max_executions_per_peer: Option<usize>,
    /// How long a socket may hold no session and no execution before it is closed.
    pub idle_timeout: Duration,
    /// How often every socket is pinged; a socket from which nothing (no frame, no pong)
    /// has arrived for two intervals is closed.
    pub ping_interval: Duration,
    // Issue 10, section 3 and 5: memory in total, message deadline, lead timeout.
    /// Bytes that replay buffers, partial messages and queued stdin may hold in total;
    /// past it new executions and stdin get `gateway_busy` and large messages in flight
    /// close their socket. `None`: a quarter of the host's memory (or of the gateway's
    /// cgroup limit, when lower).
    pub buffer_budget_bytes: Option<usize>,
    /// How long a client may take to finish sending a message it has started; past it
    /// the socket is closed (close code 1008).
    pub message_deadline: Duration,
    /// How long a session's lead may leave its programs waiting for room in the replay
    /// buffer without freeing any before it loses the lead.
    pub lead_timeout: Duration,
    /// Who may connect (see [`AuthConfig`]). Where clients authenticate, the per-peer
    /// caps above count per tenant.
    pub auth: AuthConfig,
    // Issue 12, observability.
    /// A second listener serving only `/metrics`, `/healthz` and `/readyz`; when set,
    /// the main listener does not serve `/metrics`.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// A file holding the bearer token `/metrics` requires (`Authorization: Bearer
    /// TOKEN`). Without one, the main listener serves `/metrics` to loopback peers only.
    pub metrics_token_file: Option<PathBuf>,
    /// Where to append one JSON line per finished execution (the audit log).
    pub audit_log: Option<PathBuf>,
    // Issue 13, warm starts.
    /// Entries kept started ahead of their executions, per runtime (`--warm-pool`):
    /// Python interpreters, jails waiting before their exec for the other runtimes; 0
    /// turns the pools off. `None`: [`DEFAULT_WARM_POOL`] when programs run in the jail,
    /// else 0.
    pub warm_pool: Option<usize>,
    /// The runtimes that get a warm pool (`--warm-runtimes`); `None`: all of them.
    pub warm_runtimes: Option<Vec<String>>,
    /// Most warm entries started per second, per runtime (`--warm-pool-refill`).
    pub warm_pool_refill: u32,
    /// A warm entry older than this is discarded rather than used
    /// (`--warm-pool-max-age-ms`).
    pub warm_pool_max_age: Duration,
    // Issue 14, the playground page.
    /// Serve the playground page on the main listener (`GET /` and its two assets), and
    /// let a page of the gateway's own origin open sockets when that origin is an IP
    /// address or `localhost` (`--no-playground` turns both off).
    pub playground: bool,
    // Issue 15, package environments.
    /// The most bytes of package archives the gateway keeps for every session to share
    /// (`--package-cache-bytes`; 0 keeps none).
    pub package_cache_bytes: u64,
}

impl Config {
    /// The most jails alive at once, each with a sandbox id of its own: every
    /// execution, every persistent interpreter, every warm entry waiting for its claim,
    /// and one per session workspace (the ids its session's jails share).
    pub fn jails_at_most(&self) -> usize {
        self.max_executions
            .saturating_add(self.max_kernels)
            .saturating_add(self.warm_entries_at_most())
            .saturating_add(self.max_workspaces)
    }

    /// The most warm entries that can wait at once: `--warm-pool` (or its default) for
    /// each runtime that may get a pool. An upper bound, known before the runtimes are
    /// resolved (each may still turn out not installed).
    pub(crate) fn warm_entries_at_most(&self) -> usize {
        let per_runtime = self.warm_pool.unwrap_or(DEFAULT_WARM_POOL);
        let mut names: Vec<&str> = self.runtimes.iter().map(|r| r.name.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        let runtimes = match &self.warm_runtimes {
            Some(wanted) => names
                .iter()
                .filter(|n| wanted.iter().any(|w| w == *n))
                .count(),
            None => names.len(),
        };
        per_runtime.saturating_mul(runtimes)
    }
}

/// The warm pool's size when not configured and programs run in the jail.
pub const DEFAULT_WARM_POOL: usize = 2;

/// A quarter of a gateway-wide cap, at least 1: the per-peer default, so one client
/// leaves room for others.
fn quarter(cap: usize) -> usize {
    (cap / 4).max(1)
}

impl Config {
    /// The per-peer interpreter cap in force.
    pub(crate) fn kernels_per_peer(&self) -> usize {
        self.max_kernels_per_peer
            .unwrap_or_else(|| quarter(self.max_kernels))
    }

    /// The per-peer workspace cap in force.
    pub(crate) fn workspaces_per_peer(&self) -> usize {
        self.max_workspaces_per_peer
            .unwrap_or_else(|| quarter(self.max_workspaces))
    }

    /// The per-peer connection cap in force.
    pub(crate) fn connections_per_peer(&self) -> usize {
        self.max_connections_per_peer
            .unwrap_or_else(|| quarter(self.max_connections))
    }

    /// The per-peer session cap in force.
    pub(crate) fn sessions_per_peer(&self) -> usize {
        self.max_sessions_per_peer
            .unwrap_or_else(|| quarter(self.max_sessions))
    }

    /// The per-peer execution cap in force.
    pub(crate) fn executions_per_peer(&self) -> usize {
        self.max_executions_per_peer
            .unwrap_or_else(|| quarter(self.max_executions))
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_frame_bytes: 1 << 20,
            chunk_bytes: sluice_protocol::DEFAULT_CHUNK_BYTES,
            kill_grace: Duration::from_millis(2_000),
            limits: LimitsConfig::default(),
            max_connections: 4_096,
            max_executions: 1_024,
            max_executions_per_connection: 128,
            max_sessions_per_connection: 256,
            stdin_queue: 64,
            runtimes: RuntimeSpec::defaults(),
            base_env: vec![
                ("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into()),
                ("LANG".into(), "C.UTF-8".into()),
            ],
            work_root: None,
            shutdown_grace: Duration::from_secs(10),
            drain_timeout: Duration::ZERO,
            send_timeout: Duration::from_secs(30),
            stdin_queue_bytes: 1 << 20,
            allowed_origins: Vec::new(),
            handshake_timeout: Duration::from_secs(10),
            replay_events: 10_000,
            replay_bytes: 8 << 20,
            session_grace: Duration::from_secs(60),
            max_sessions: 8_192,
            max_kernels: 64,
            max_workspaces: 64,
            max_workspaces_per_peer: None,
            workspace_budget_bytes: None,
            isolation: Isolation::Auto,
            network: Network::Auto,
            sandbox_uid: DEFAULT_SANDBOX_ID,
            sandbox_gid: DEFAULT_SANDBOX_ID,
            jail_program: None,
            memory_budget_bytes: None,
            memory_overcommit: 8,
            budget_share_per_peer: 25,
            max_kernels_per_peer: None,
            process_budget: None,
            max_connections_per_peer: None,
            max_sessions_per_peer: None,
            max_executions_per_peer: None,
            idle_timeout: Duration::from_secs(60),
            ping_interval: Duration::from_secs(30),
            buffer_budget_bytes: None,
            message_deadline: Duration::from_secs(10),
            lead_timeout: Duration::from_secs(30),
            auth: AuthConfig::default(),
            metrics_listen: None,
            metrics_token_file: None,
            audit_log: None,
            warm_pool: None,
            warm_runtimes: None,
            warm_pool_refill: 20,
            warm_pool_max_age: Duration::from_secs(300),
            playground: true,
            package_cache_bytes: DEFAULT_PACKAGE_CACHE_BYTES,
        }
    }
}
