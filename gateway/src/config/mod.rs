//! The gateway's configuration: one plain value with safe defaults, built by `main` from
//! the command line and checked once by [`Config::validate`].

mod runtimes;

pub use runtimes::{RuntimeSpec, FILE_PLACEHOLDER};

use sluice_protocol::Limits;
use std::path::PathBuf;
use std::time::Duration;

/// A limit's server default (used when a request names none) and maximum (a request
/// above it is refused).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitBound {
    /// Applied when the request does not name this limit.
    pub default: u64,
    /// The largest value a request may ask for.
    pub max: u64,
}

/// The per-execution limits the gateway enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitsConfig {
    /// Wall-clock time, in milliseconds.
    pub timeout_ms: LimitBound,
    /// Bytes of stdout plus stderr.
    pub output_bytes: LimitBound,
    /// CPU time of the program's process, in milliseconds (RLIMIT_CPU, whole seconds).
    pub cpu_ms: LimitBound,
    /// Largest file a program may write, in bytes (RLIMIT_FSIZE).
    pub file_size_bytes: LimitBound,
    /// Descriptors a program may have open (RLIMIT_NOFILE).
    pub open_files: LimitBound,
    /// Memory of a program's process tree, in bytes (its cgroup).
    pub memory_bytes: LimitBound,
    /// Processes and threads of a program's tree alive at once (its cgroup).
    pub processes: LimitBound,
    /// Bytes a program may store in its workspace, /tmp and /dev/shm (one tmpfs inside
    /// its jail; enforced with [`Isolation::Namespaces`]).
    pub workspace_bytes: LimitBound,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            timeout_ms: LimitBound {
                default: 30_000,
                max: 600_000,
            },
            output_bytes: LimitBound {
                default: 16 << 20,
                max: 1 << 30,
            },
            cpu_ms: LimitBound {
                default: 30_000,
                max: 600_000,
            },
            file_size_bytes: LimitBound {
                default: 64 << 20,
                max: 1 << 30,
            },
            open_files: LimitBound {
                default: 1_024,
                max: 4_096,
            },
            memory_bytes: LimitBound {
                default: 512 << 20,
                max: 4 << 30,
            },
            processes: LimitBound {
                default: 64,
                max: 1_024,
            },
            workspace_bytes: LimitBound {
                default: 64 << 20,
                max: 1 << 30,
            },
        }
    }
}

/// Limits in force for one execution, after applying defaults and maxima.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct EffectiveLimits {
    pub(crate) timeout: Duration,
    pub(crate) timeout_ms: u64,
    pub(crate) output_bytes: u64,
    pub(crate) cpu_ms: u64,
    pub(crate) file_size_bytes: u64,
    pub(crate) open_files: u64,
    pub(crate) memory_bytes: u64,
    pub(crate) processes: u64,
    pub(crate) workspace_bytes: u64,
}

impl LimitsConfig {
    /// Applies `requested` to the defaults; a value below the limit's minimum
    /// ([`minimum`]) or above the maximum is refused with a message naming the limit and
    /// the allowed range.
    pub(crate) fn resolve(&self, requested: &Limits) -> Result<EffectiveLimits, String> {
        let pick = |name: &str, asked: Option<u64>, bound: LimitBound| match asked {
            None => Ok(bound.default),
            Some(v) if v < minimum(name) || v > bound.max => Err(format!(
                "limits.{name} must be between {} and {} (got {v})",
                minimum(name),
                bound.max
            )),
            Some(v) => Ok(v),
        };
        let timeout_ms = pick("timeout_ms", requested.timeout_ms, self.timeout_ms)?;
        let output_bytes = pick("output_bytes", requested.output_bytes, self.output_bytes)?;
        Ok(EffectiveLimits {
            timeout: Duration::from_millis(timeout_ms),
            timeout_ms,
            output_bytes,
            cpu_ms: pick("cpu_ms", requested.cpu_ms, self.cpu_ms)?,
            file_size_bytes: pick(
                "file_size_bytes",
                requested.file_size_bytes,
                self.file_size_bytes,
            )?,
            open_files: pick("open_files", requested.open_files, self.open_files)?,
            memory_bytes: pick("memory_bytes", requested.memory_bytes, self.memory_bytes)?,
            processes: pick("processes", requested.processes, self.processes)?,
            workspace_bytes: pick(
                "workspace_bytes",
                requested.workspace_bytes,
                self.workspace_bytes,
            )?,
        })
    }
}

/// The smallest value a limit may take: 1, except `memory_bytes`, whose cgroup a
/// gateway thread joins for an instant around each spawn (cgroup v1): below a MiB the
/// kernel cannot charge that thread's own allocations, and the thread could not leave.
pub(crate) fn minimum(limit: &str) -> u64 {
    match limit {
        "memory_bytes" => MIN_MEMORY_BYTES,
        _ => 1,
    }
}

/// See [`minimum`].
pub(crate) const MIN_MEMORY_BYTES: u64 = 1 << 20;

impl LimitsConfig {
    /// These limits with each maximum lowered to `ceilings`' value where it names one
    /// (a credential's claims), and each default to at most its maximum.
    pub(crate) fn narrowed(&self, ceilings: &Limits) -> Self {
        let narrow = |bound: LimitBound, ceiling: Option<u64>| {
            // Ceilings below a limit's minimum never get here: such a token is invalid.
            let max = ceiling.map_or(bound.max, |c| c.min(bound.max));
            LimitBound {
                default: bound.default.min(max),
                max,
            }
        };
        Self {
            timeout_ms: narrow(self.timeout_ms, ceilings.timeout_ms),
            output_bytes: narrow(self.output_bytes, ceilings.output_bytes),
            cpu_ms: narrow(self.cpu_ms, ceilings.cpu_ms),
            file_size_bytes: narrow(self.file_size_bytes, ceilings.file_size_bytes),
            open_files: narrow(self.open_files, ceilings.open_files),
            memory_bytes: narrow(self.memory_bytes, ceilings.memory_bytes),
            processes: narrow(self.processes, ceilings.processes),
            workspace_bytes: narrow(self.workspace_bytes, ceilings.workspace_bytes),
        }
    }
}

/// Who may connect: the credentials the gateway accepts. Nothing configured: every
/// client is anonymous, which `server::run` allows only on a loopback address unless
/// `insecure_no_auth` says otherwise.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthConfig {
    /// A file of API keys, one `TENANT sha256:HEX` per line (`sluice key add`).
    pub api_keys_file: Option<PathBuf>,
    /// A file holding the shared secret of HS256 tokens (at least 32 bytes).
    pub jwt_secret_file: Option<PathBuf>,
    /// A PEM file holding the RSA (RS256) or Ed25519 (EdDSA) public key of tokens.
    pub jwt_public_key_file: Option<PathBuf>,
    /// Tokens must carry this `iss`, when set.
    pub jwt_issuer: Option<String>,
    /// Tokens must carry this `aud`, when set.
    pub jwt_audience: Option<String>,
    /// Serve without authentication on an address other than loopback.
    pub insecure_no_auth: bool,
}

impl AuthConfig {
    /// Whether any credential is configured.
    pub fn is_configured(&self) -> bool {
        self.api_keys_file.is_some()
            || self.jwt_secret_file.is_some()
            || self.jwt_public_key_file.is_some()
    }
}

/// How strongly executions are confined, beyond their process group, clean environment
/// and kernel resource limits (which always apply).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Isolation {
    /// The strongest level this host offers (logged at start-up).
    #[default]
    Auto,
    /// Process group, environment and rlimits only: the fastest start, no memory or
    /// process limit, and a process that leaves its group is not tracked.
    None,
    /// Also a cgroup per execution: memory and process limits for the whole tree, and
    /// every process of the execution killed at its end. Refuses to start without a
    /// writable cgroup (v1 memory or pids, or v2).
    Cgroups,
    /// Also a jail per program (`sluice-jail`): its own PID, mount, IPC, UTS and network
    /// namespaces, an unprivileged user, a read-only system, a private size-limited
    /// workspace and /tmp; plus the cgroup where the host has one. Refuses to start
    /// where the jail cannot run (it needs root, or user namespaces).
    Namespaces,
}

impl std::str::FromStr for Isolation {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "auto" => Ok(Self::Auto),
            "none" => Ok(Self::None),
            "cgroups" => Ok(Self::Cgroups),
            "namespaces" => Ok(Self::Namespaces),
            other => Err(format!(
                "unknown isolation level {other:?}; use auto, none, cgroups or namespaces"
            )),
        }
    }
}

/// Whether programs may use the network.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Network {
    /// Off where the host can do it (a new, empty network namespace per program); on
    /// otherwise, or with [`Isolation::None`]; logged at start-up.
    #[default]
    Auto,
    /// Programs use the host's network.
    On,
    /// No network; refuses to start where the host cannot take it away.
    Off,
}

impl std::str::FromStr for Network {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "auto" => Ok(Self::Auto),
            "on" => Ok(Self::On),
            "off" => Ok(Self::Off),
            other => Err(format!(
                "unknown network setting {other:?}; use auto, on or off"
            )),
        }
    }
}

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
}

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
        }
    }
}

/// The user and group id jailed programs run as by default: one no account on a usual
/// system has, so their files and processes belong to nobody else.
pub const DEFAULT_SANDBOX_ID: u32 = 60_000;

/// A configuration the gateway refuses to start with.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// A size or count that must be positive is zero.
    #[error("{0} must be greater than zero")]
    Zero(&'static str),
    /// A limit's default is above its maximum.
    #[error("the default {0} ({1}) is above its maximum ({2})")]
    DefaultAboveMax(&'static str, u64, u64),
    /// The output chunk cannot fit in a frame a client will accept.
    #[error("chunk size {0} must be at least 1024 bytes")]
    ChunkTooSmall(usize),
    /// A limit's default is below the smallest value it may take.
    #[error("the default {0} ({1}) is below its minimum ({2})")]
    BelowMinimum(&'static str, u64, u64),
    /// The sandbox user or group is root.
    #[error("programs never run as root: the sandbox uid and gid must not be 0")]
    RootSandbox,
}

impl Config {
    /// Checks the values that would make the gateway misbehave.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (name, value) in [
            ("max_frame_bytes", self.max_frame_bytes),
            ("max_connections", self.max_connections),
            ("max_executions", self.max_executions),
            (
                "max_executions_per_connection",
                self.max_executions_per_connection,
            ),
            ("replay_events", self.replay_events),
            ("replay_bytes", self.replay_bytes),
            ("max_sessions", self.max_sessions),
            ("max_kernels", self.max_kernels),
            ("stdin_queue", self.stdin_queue),
            ("stdin_queue_bytes", self.stdin_queue_bytes),
            ("max_connections_per_peer", self.connections_per_peer()),
            ("max_sessions_per_peer", self.sessions_per_peer()),
            ("max_executions_per_peer", self.executions_per_peer()),
            ("max_kernels_per_peer", self.kernels_per_peer()),
            ("idle_timeout", millis(self.idle_timeout)),
            ("ping_interval", millis(self.ping_interval)),
            ("buffer_budget_bytes", self.buffer_budget_bytes.unwrap_or(1)),
            (
                "message_deadline_ms",
                usize::from(!self.message_deadline.is_zero()),
            ),
            ("lead_timeout_ms", usize::from(!self.lead_timeout.is_zero())),
        ] {
            if value == 0 {
                return Err(ConfigError::Zero(name));
            }
        }
        if self.sandbox_uid == 0 || self.sandbox_gid == 0 {
            return Err(ConfigError::RootSandbox);
        }
        if self.chunk_bytes < 1024 {
            return Err(ConfigError::ChunkTooSmall(self.chunk_bytes));
        }
        for (name, bound) in [
            ("timeout_ms", self.limits.timeout_ms),
            ("output_bytes", self.limits.output_bytes),
            ("cpu_ms", self.limits.cpu_ms),
            ("file_size_bytes", self.limits.file_size_bytes),
            ("open_files", self.limits.open_files),
            ("memory_bytes", self.limits.memory_bytes),
            ("processes", self.limits.processes),
            ("workspace_bytes", self.limits.workspace_bytes),
        ] {
            if bound.default == 0 || bound.max == 0 {
                return Err(ConfigError::Zero(name));
            }
            if bound.default < minimum(name) {
                return Err(ConfigError::BelowMinimum(
                    name,
                    bound.default,
                    minimum(name),
                ));
            }
            if bound.default > bound.max {
                return Err(ConfigError::DefaultAboveMax(name, bound.default, bound.max));
            }
        }
        Ok(())
    }
}

/// Whole milliseconds of `d`, saturating (for the zero checks).
fn millis(d: Duration) -> usize {
    usize::try_from(d.as_millis()).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        assert_eq!(Config::default().validate(), Ok(()));
    }

    #[test]
    fn per_peer_caps_default_to_a_quarter_and_refuse_zero() {
        let config = Config {
            max_connections: 2,
            max_executions: 100,
            ..Config::default()
        };
        assert_eq!(config.connections_per_peer(), 1);
        assert_eq!(config.executions_per_peer(), 25);
        assert_eq!(config.sessions_per_peer(), 8_192 / 4);
        let zero = Config {
            max_sessions_per_peer: Some(0),
            ..Config::default()
        };
        assert_eq!(
            zero.validate(),
            Err(ConfigError::Zero("max_sessions_per_peer"))
        );
        let no_idle = Config {
            idle_timeout: Duration::ZERO,
            ..Config::default()
        };
        assert_eq!(no_idle.validate(), Err(ConfigError::Zero("idle_timeout")));
    }

    #[test]
    fn resolve_applies_default_and_refuses_above_max() {
        let limits = LimitsConfig::default();
        let got = limits.resolve(&Limits::default()).unwrap();
        assert_eq!(got.timeout_ms, 30_000);
        let lowered = limits
            .resolve(&Limits {
                timeout_ms: Some(5),
                output_bytes: Some(7),
                cpu_ms: Some(1500),
                ..Limits::default()
            })
            .unwrap();
        assert_eq!((lowered.output_bytes, lowered.cpu_ms), (7, 1500));
        let err = limits.resolve(&Limits {
            timeout_ms: Some(u64::MAX),
            ..Limits::default()
        });
        assert!(err.unwrap_err().contains("timeout_ms"));
        for zero in [
            Limits {
                timeout_ms: Some(0),
                ..Limits::default()
            },
            Limits {
                open_files: Some(0),
                ..Limits::default()
            },
        ] {
            assert!(limits.resolve(&zero).is_err(), "{zero:?}");
        }
    }
}
