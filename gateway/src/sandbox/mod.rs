//! What confines an execution beyond its process group: control groups for the limits
//! that cover a whole process tree (memory, processes, CPU time) and for killing every
//! process an execution started (`cgroup`); the namespace jail (`jail`, the contract
//! with `sluice-jail`, `namespaces`, the gateway's side, and `network_pool`, the network
//! namespaces it makes for jails ahead of time); taking the network away without a jail
//! (`network`); the unprivileged user a root gateway's unjailed programs
//! drop to (`user`); the memory and processes all executions may hold together
//! (`budget`); and the policy that decides, once at start-up, which of these every
//! program gets (`policy`). Kernel resource limits of the process itself (CPU time,
//! file size, open files) are in `sys::Rlimits`. SECURITY.md maps the layers.

pub(crate) mod budget;
pub(crate) mod cgroup;
pub mod jail;
pub(crate) mod namespaces;
pub(crate) mod network;
pub(crate) mod network_pool;
mod policy;
pub(crate) mod user;

pub(crate) use budget::{ExecutionBudget, Reservation};
pub(crate) use cgroup::{
    CgroupReport, Cgroups, CpuSeen, ExecutionCgroup, LimitWatch, HEAVY_CPU_USEC,
};
pub(crate) use namespaces::{Namespaces, JAIL_PROCESSES};
pub(crate) use policy::Sandbox;
pub(crate) use user::ProgramUser;

/// What this host lets the gateway enforce, layer by layer: printed by `sluice doctor`,
/// and used by tests to skip (with the reason) what the host cannot do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostReport {
    /// How the memory limit is enforced, or `None` when it is not.
    pub memory: Option<String>,
    /// How the process limit is enforced, or `None` when it is not.
    pub processes: Option<String>,
    /// How every process of an execution is killed at its end, beyond its process
    /// group, or `None` when only the group is.
    pub kill_tree: Option<String>,
    /// How programs are kept off the network, or `None` when they cannot be.
    pub network: Option<String>,
    /// How the CPU time of a whole process tree is measured (and limited), or `None`
    /// when only each process's own is.
    pub cpu_tree: Option<String>,
    /// How executions share the CPU (a weight each, below the gateway's), or `None`
    /// when only their lower scheduling priority keeps the gateway ahead of them.
    pub cpu_share: Option<String>,
    /// The namespace jail (`--isolation namespaces`): what it gives, or why it cannot
    /// run here.
    pub namespaces: Result<String, String>,
    /// Whether the gateway runs as root.
    pub root: bool,
    /// Settings of this host that slow the gateway down, each with what to do.
    pub hints: Vec<String>,
}

/// The hint for a host whose cgroup moves wait for the kernel: moving a whole process
/// between cgroups (a child joining its v2 cgroup, an execution that forks getting a v1
/// CPU group of its own) takes a lock that waits for an RCU grace period, 15–30 ms a
/// move measured on a 6.18 kernel, unless the kernel expedites them.
pub(crate) fn rcu_hint(uses_v1: bool) -> Option<String> {
    let expedited = std::fs::read_to_string("/sys/kernel/rcu_expedited").ok();
    rcu_hint_for(uses_v1, expedited.as_deref())
}

/// [`rcu_hint`] for what `/sys/kernel/rcu_expedited` says (`None`: unreadable).
fn rcu_hint_for(uses_v1: bool, expedited: Option<&str>) -> Option<String> {
    (uses_v1 && expedited?.trim() == "0").then(|| {
        "cgroup v1 moves wait for RCU grace periods here (/sys/kernel/rcu_expedited is 0), \
         and forks and exits on the host wait with them (15-30 ms a move measured): starts \
         under load and executions that fork are slower; on a host that runs Sluice, \
         `echo 1 > /sys/kernel/rcu_expedited`, or use cgroup v2 (docs/operating.md, \
         \"cgroup v1 hosts and RCU\")"
            .to_owned()
    })
}

impl HostReport {
    /// Probes the host (creates and removes a test cgroup directory).
    pub fn probe() -> Self {
        let namespaces = probe_jail(None);
        let cgroups = Cgroups::probe();
        let caps = cgroups.capabilities();
        let uses_v1 = cgroups.uses_v1();
        cgroups.remove();
        Self {
            memory: caps.memory.map(str::to_owned),
            processes: caps.processes.map(str::to_owned),
            kill_tree: caps.kill_tree.map(str::to_owned),
            network: network::probe()
                .then(|| "off: an empty network namespace per program".to_owned()),
            cpu_tree: caps.cpu_tree.map(str::to_owned),
            cpu_share: caps.cpu_share.map(str::to_owned),
            namespaces,
            root: crate::sys::is_root(),
            hints: rcu_hint(uses_v1).into_iter().collect(),
        }
    }

    /// The report as `sluice doctor` prints it: one line per limit and layer.
    pub fn render(&self) -> String {
        let or_not = |layer: &Option<String>, why: &str| {
            layer
                .clone()
                .unwrap_or_else(|| format!("NOT ENFORCED ({why})"))
        };
        let no_cgroup = "no writable cgroup for the gateway";
        let lines = [
            ("timeout", "gateway timer; the process group is killed".to_owned()),
            ("output", "gateway counts bytes; the process group is killed".to_owned()),
            (
                "cpu",
                match &self.cpu_tree {
                    Some(how) => format!("{how}; RLIMIT_CPU per process as the floor"),
                    None => "RLIMIT_CPU of the program's process (per process)".to_owned(),
                },
            ),
            (
                "cpu share",
                self.cpu_share.clone().unwrap_or_else(|| {
                    "no cpu cgroup: unjailed programs run at nice 10 (below the gateway; no share per execution)".to_owned()
                }),
            ),
            ("file_size", "RLIMIT_FSIZE of the program's process".to_owned()),
            ("open_files", "RLIMIT_NOFILE of the program's process".to_owned()),
            ("memory", or_not(&self.memory, no_cgroup)),
            (
                "processes",
                match (&self.processes, &self.namespaces) {
                    (None, Ok(_)) if !self.root => "RLIMIT_NPROC in each jail's own user namespace (holds, but a refused fork is not reported as resource_limit)".to_owned(),
                    _ => or_not(&self.processes, no_cgroup),
                },
            ),
            (
                "end of execution",
                format!(
                    "process group SIGKILLed; {}{}",
                    if self.namespaces.is_ok() {
                        "the jail's PID namespace ends with the program; "
                    } else {
                        ""
                    },
                    self.kill_tree
                        .clone()
                        .unwrap_or_else(|| "processes that left it (setsid) are NOT tracked".into())
                ),
            ),
            (
                "environment",
                "cleared; only --env, the runtime's and the request's variables".to_owned(),
            ),
            (
                "network (--network auto)",
                match &self.namespaces {
                    Ok(_) => "off: the jail's own, empty network namespace".to_owned(),
                    Err(_) => or_not(
                        &self.network,
                        "no permission to create network namespaces",
                    ),
                },
            ),
            (
                "user, files, /proc, IPC, host name",
                match &self.namespaces {
                    Ok(how) => how.clone(),
                    Err(why) if self.root => format!(
                        "NOT ISOLATED ({why}): programs run as uid {} (--sandbox-uid; never root), all as that one user, with its view of the system; interpreters it cannot start are skipped",
                        crate::config::DEFAULT_SANDBOX_ID
                    ),
                    Err(why) => format!(
                        "NOT ISOLATED ({why}): programs run as the gateway's (unprivileged) user with its view of the system"
                    ),
                },
            ),
            (
                "workspace",
                match &self.namespaces {
                    Ok(_) => "a private tmpfs of limits.workspace_bytes (workspace, /tmp, /dev/shm)".to_owned(),
                    Err(_) => "NOT LIMITED (needs the jail)".to_owned(),
                },
            ),
        ];
        let mut out = String::from("Sluice on this host: what each limit and layer uses\n");
        for (name, how) in lines {
            out.push_str(&format!("  {name:<34} {how}\n"));
        }
        for hint in &self.hints {
            out.push_str(&format!("  hint: {hint}\n"));
        }
        out
    }
}

/// Rehearses the jail in a scratch directory: what it gives, or why it cannot run.
fn probe_jail(jail: Option<&std::path::Path>) -> Result<String, String> {
    // One directory per probe: tests probe from several threads of one process at once.
    static NEXT_PROBE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let serial = NEXT_PROBE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let scratch =
        std::env::temp_dir().join(format!("sluice-doctor-{}-{serial}", std::process::id()));
    // Left by a process that had this pid before, if any.
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch).map_err(|e| format!("{}: {e}", scratch.display()))?;
    // As many jails at once as `serve` with its defaults allows (the id range says so).
    let defaults = crate::Config::default();
    let probed = Namespaces::probe(
        jail,
        &scratch,
        defaults.sandbox_uid,
        defaults.sandbox_gid,
        true,
        defaults.jails_at_most(),
    );
    let _ = std::fs::remove_dir_all(&scratch);
    probed
        .map(|jail| {
            format!(
                "jailed by {}: own PID, mount, IPC, UTS and network namespaces; {}; read-only system",
                jail.program().display(),
                jail.user_description()
            )
        })
        .map_err(|why| why.to_string())
}

#[cfg(test)]
mod rcu_hint_tests {
    use super::rcu_hint_for;

    #[test]
    fn the_hint_is_for_v1_hosts_whose_grace_periods_are_not_expedited() {
        assert!(rcu_hint_for(true, Some("0\n")).is_some_and(|h| h.contains("rcu_expedited")));
        assert_eq!(rcu_hint_for(true, Some("1\n")), None);
        assert_eq!(rcu_hint_for(false, Some("0\n")), None);
        assert_eq!(rcu_hint_for(true, None), None);
    }
}
