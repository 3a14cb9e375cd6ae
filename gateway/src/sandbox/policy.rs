//! The isolation policy: from `--isolation` and `--network` and what this host offers,
//! decide once at start-up how every program is confined ([`Sandbox`]), refusing to
//! start where going on would fail open, and say in the log what programs get.

use super::{Cgroups, ExecutionBudget, Namespaces, ProgramUser};
use crate::config::{Config, Isolation, Network};
use std::path::Path;
use std::sync::Arc;

/// How every program of this gateway is confined.
#[derive(Debug)]
pub(crate) struct Sandbox {
    /// The jail every program starts in, when the gateway isolates with namespaces.
    pub(crate) jail: Option<Arc<Namespaces>>,
    /// The user unjailed programs of a root gateway drop to (never root).
    pub(crate) program_user: Option<ProgramUser>,
    /// The cgroups executions get (none without a writable hierarchy).
    pub(crate) cgroups: Arc<Cgroups>,
    /// The memory and processes all executions may hold together.
    pub(crate) budget: Arc<ExecutionBudget>,
    /// Unjailed programs start in an empty network namespace.
    pub(crate) no_network: bool,
}

/// The configuration asks for isolation this host cannot give; the message says what
/// to do instead.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct Unavailable(pub(crate) String);

impl Sandbox {
    /// Probes the host (off the async workers) and decides; `work_root` is where the
    /// jail's workspaces live.
    pub(crate) async fn prepare(config: &Config, work_root: &Path) -> Result<Self, Unavailable> {
        let jail = match config.isolation {
            Isolation::None | Isolation::Cgroups => None,
            Isolation::Auto | Isolation::Namespaces => probe_jail(config, work_root).await?,
        };
        // A root gateway never starts a program as root: without the jail, programs drop
        // to the sandbox user, which must reach their interpreters and workspaces.
        let program_user =
            ProgramUser::for_unjailed(jail.is_some(), config.sandbox_uid, config.sandbox_gid);
        let cgroups = match config.isolation {
            Isolation::None => Cgroups::default(),
            Isolation::Auto | Isolation::Cgroups | Isolation::Namespaces => {
                tokio::task::spawn_blocking(Cgroups::probe)
                    .await
                    .unwrap_or_default()
            }
        };
        if config.isolation == Isolation::Cgroups && cgroups.capabilities().kill_tree.is_none() {
            return Err(Unavailable(
                "--isolation cgroups needs a writable cgroup under the gateway's own (a v1 memory or pids hierarchy, or the v2 one; see `sluice doctor`); this host has none".into(),
            ));
        }
        let budget = ExecutionBudget::start(config, &cgroups);
        // A jail takes the network away itself; without one, the program's own start
        // does (unshare before exec), where the gateway may.
        let no_network = match (config.network, config.isolation, &jail) {
            (_, _, Some(_)) | (Network::On, _, _) | (Network::Auto, Isolation::None, _) => false,
            (Network::Auto | Network::Off, _, None) => {
                tokio::task::spawn_blocking(super::network::probe)
                    .await
                    .unwrap_or(false)
            }
        };
        let sandbox = Self {
            jail,
            program_user,
            cgroups: Arc::new(cgroups),
            budget,
            no_network,
        };
        if config.network == Network::Off && !sandbox.network_off() {
            return Err(Unavailable(
                "--network off without the jail needs permission to create network namespaces (root); see `sluice doctor`".into(),
            ));
        }
        sandbox.log(config);
        Ok(sandbox)
    }

    /// Programs get no network (the jail's namespace, or one of their own).
    fn network_off(&self) -> bool {
        self.jail.as_ref().is_some_and(|j| j.no_network()) || self.no_network
    }

    /// Says in the log how programs are confined.
    fn log(&self, config: &Config) {
        match &self.jail {
            Some(jail) => tracing::info!(
                jail = %jail.program().display(),
                user = %jail.user_description(),
                "programs run jailed: own PID, mount, IPC, UTS{} namespaces, unprivileged user, read-only system, private workspace and /tmp",
                if jail.no_network() { " and network" } else { "" }
            ),
            None if self.program_user.is_some() => tracing::warn!(
                uid = config.sandbox_uid,
                gid = config.sandbox_gid,
                "programs run without a namespace jail, as the sandbox user: they share it with each other and see the host's files as it may; use --isolation namespaces (or auto with sluice-jail installed) to contain them"
            ),
            None => tracing::info!("programs run without a namespace jail, as the gateway's user"),
        }
        tracing::info!(
            network = if self.network_off() {
                "off (a network namespace per program)"
            } else {
                "on (the host's network)"
            },
            "program network access"
        );
        let caps = self.cgroups.capabilities();
        let or_not = |layer: Option<&str>| {
            layer
                .unwrap_or("not enforced: no writable cgroup")
                .to_owned()
        };
        tracing::info!(
            memory = %or_not(caps.memory),
            processes = %or_not(caps.processes),
            kill_tree = %or_not(caps.kill_tree),
            "resource limits beyond rlimits"
        );
        if let Some(hint) = super::rcu_hint(self.cgroups.uses_v1()) {
            tracing::warn!("{hint}");
        }
    }
}

/// The namespace jail, if `--isolation auto|namespaces` gets one here. `namespaces`
/// insists on it; `auto` goes on without it only where the host lacks namespaces (a
/// jail that fails on this configuration would be failing open).
async fn probe_jail(
    config: &Config,
    work_root: &Path,
) -> Result<Option<Arc<Namespaces>>, Unavailable> {
    let program = config.jail_program.clone();
    let root = work_root.to_path_buf();
    let (uid, gid) = (config.sandbox_uid, config.sandbox_gid);
    let no_network = config.network != Network::On;
    let jails = config.jails_at_most();
    let probed = tokio::task::spawn_blocking(move || {
        Namespaces::probe(program.as_deref(), &root, uid, gid, no_network, jails)
    })
    .await
    .map_err(|err| Unavailable(format!("probing the namespace jail failed: {err}")))?;
    match probed {
        Ok(jail) => Ok(Some(Arc::new(jail))),
        Err(why) if config.isolation == Isolation::Namespaces => Err(Unavailable(format!(
            "--isolation namespaces: {why} (see `sluice doctor`)"
        ))),
        Err(why) if !why.host_lacks_namespaces() => Err(Unavailable(format!(
            "the namespace jail does not work with this configuration: {why}; fix it, or choose --isolation cgroups or none explicitly"
        ))),
        Err(why) => {
            tracing::warn!(%why, "no namespace jail: programs run as the gateway's user with its view of the system");
            Ok(None)
        }
    }
}
