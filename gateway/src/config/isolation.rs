//! How programs are confined, as configured: the isolation level ([`Isolation`]),
//! whether they may use the network ([`Network`]) and the default sandbox user. What
//! the host can do is decided at start-up by `sandbox::policy`.

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

/// The user and group id jailed programs run as by default: one no account on a usual
/// system has, so their files and processes belong to nobody else.
pub const DEFAULT_SANDBOX_ID: u32 = 60_000;
