//! The gateway's side of namespace isolation: finding `sluice-jail`, rehearsing it once
//! at start-up, handing every jail alive its own sandbox ids and, from the
//! [`NetworkPool`], a network namespace made ahead of time ([`IdLease`]), and turning
//! an execution into the jail's command. What happens
//! inside the jail is in `src/bin/sluice-jail`; the contract between the two is
//! [`super::jail`].

use super::jail::{JailReport, JailSpec, RlimitName};
use super::network_pool::NetworkPool;
use crate::sys::Rlimits;
use std::os::fd::{AsFd as _, AsRawFd as _, OwnedFd};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

/// Ids held in reserve beyond one per jail that may run at once: a lease is given back
/// only once its jail is reaped, which may trail the freeing of its slot a little.
const SPARE_IDS: u32 = 64;

/// Processes the jail adds to every execution's tree (the jail and its init), counted
/// by the process limit's cgroup on top of the program's own.
pub(crate) const JAIL_PROCESSES: u64 = 2;

/// A working jail and what every jailed program gets.
#[derive(Debug, Clone)]
pub(crate) struct Namespaces {
    program: PathBuf,
    uid: u32,
    gid: u32,
    no_network: bool,
    /// Covered inside every jail: a gateway that is not root runs its programs as its
    /// own uid outside the user namespace, so its home (whose files they would own) is
    /// hidden.
    hide: Vec<PathBuf>,
    /// Ptys each jail may open: the host's pool shared out between the jails that can
    /// run at once.
    ptys: u32,
    /// A gateway that is not root: the subordinate uid and gid its sandbox user becomes
    /// outside the jail, when the host grants it a range and has the tools to map it.
    map_to: Option<(u32, u32)>,
    /// How many subordinate ids from `map_to` on the host grants.
    map_range: u32,
    /// One id per jail alive, so per-user kernel counts (inotify instances, processes,
    /// message queues) are each jail's own: as root, the sandbox uid and gid are
    /// `uid + offset` and `gid + offset`; with subordinate ids, the outside ids are. A
    /// gateway that maps the sandbox user to its own ids has one id to give: `None`.
    ids: Option<Arc<IdPool>>,
    /// Empty network namespaces made ahead of time, one per jail that takes the network
    /// away, when the gateway is root (a jail in a user namespace of its own could not
    /// enter them).
    network_pool: Option<Arc<NetworkPool>>,
}

/// The offsets of the sandbox ids not in use by a live jail.
#[derive(Debug)]
struct IdPool {
    free: Mutex<Vec<u32>>,
    size: u32,
}

impl IdPool {
    fn new(size: u32) -> Arc<Self> {
        Arc::new(Self {
            // Handed out lowest first: popped from the end.
            free: Mutex::new((0..size).rev().collect()),
            size,
        })
    }
}

/// What one jail holds of the gateway's until it has been reaped (and with it every
/// process of its PID namespace): its sandbox ids, given back when the lease is dropped,
/// and the gateway's descriptor of the network namespace made for it, which the jail
/// copies while it starts and which is closed (never handed out again) with the lease.
/// Held that long so that its number names nothing else (another jail's namespace) while
/// the jail may still copy it: the jail reads it from the gateway by number.
#[derive(Debug)]
pub(crate) struct IdLease {
    ids: Option<(Arc<IdPool>, u32)>,
    network: Option<OwnedFd>,
    /// A socket listening on the loopback interface of that namespace, for the caller
    /// to serve (the package proxy), until taken.
    listener: Option<std::net::TcpListener>,
}

impl IdLease {
    /// The socket made inside the jail's network namespace (`listen_on` of
    /// [`Namespaces::command`]), once.
    pub(crate) fn take_listener(&mut self) -> Option<std::net::TcpListener> {
        self.listener.take()
    }
}

impl Drop for IdLease {
    fn drop(&mut self) {
        if let Some((pool, offset)) = &self.ids {
            if let Ok(mut free) = pool.free.lock() {
                free.push(*offset);
            }
        }
    }
}

/// Why the jail cannot be used on this host.
#[derive(Debug, thiserror::Error)]
pub(crate) enum JailUnavailable {
    #[error("sluice-jail was not found at {0} (it is built and installed next to sluice)")]
    Missing(PathBuf),
    #[error("the jail's rehearsal failed: {0}")]
    Rehearsal(String),
}

impl JailUnavailable {
    /// True when the host cannot give namespaces at all (no binary, no permission),
    /// rather than the jail failing on this configuration: only then may `auto` go on
    /// without it.
    pub(crate) fn host_lacks_namespaces(&self) -> bool {
        match self {
            Self::Missing(_) => true,
            Self::Rehearsal(why) => {
                why.starts_with("creating namespaces")
                    || why.starts_with("mapping the sandbox user")
            }
        }
    }
}

impl Namespaces {
    /// The jail at `program` (or next to the running executable), if it runs here: tried
    /// once with `/bin/true` in a scratch directory under `work_root`.
    pub(crate) fn probe(
        program: Option<&Path>,
        work_root: &Path,
        uid: u32,
        gid: u32,
        no_network: bool,
        jails_at_once: usize,
    ) -> Result<Self, JailUnavailable> {
        let program = match program {
            Some(path) => path.to_path_buf(),
            None => default_location(),
        };
        if !program.is_file() {
            return Err(JailUnavailable::Missing(program));
        }
        let hide = if crate::sys::is_root() {
            Vec::new()
        } else {
            std::env::var_os("HOME")
                .map(PathBuf::from)
                .filter(|home| home.is_absolute() && home.parent().is_some() && home.is_dir())
                .into_iter()
                .collect()
        };
        let wanted = u32::try_from(jails_at_once)
            .unwrap_or(u32::MAX)
            .saturating_add(SPARE_IDS);
        let subordinate = if crate::sys::is_root() {
            None
        } else {
            super::jail::subordinate_range(crate::sys::effective_uid())
        };
        let mut jail = Self {
            program,
            uid,
            gid,
            no_network,
            hide,
            ptys: ptys_per_jail(jails_at_once),
            map_to: subordinate.map(|(first, _)| first),
            map_range: subordinate.map_or(0, |(_, count)| count),
            ids: None,
            // Only a root gateway's jails can enter a namespace it made.
            network_pool: if no_network && crate::sys::is_root() {
                NetworkPool::start()
            } else {
                None
            },
        };
        jail.ids = jail.id_pool(wanted);
        if let Some(ids) = jail.map_to {
            match jail.rehearse(work_root) {
                Ok(()) => return Ok(jail),
                Err(why) => {
                    tracing::warn!(subordinate = ?ids, %why, "the jail cannot map the sandbox user to the gateway's subordinate ids; it maps it to the gateway's own");
                    jail.map_to = None;
                    jail.ids = None;
                }
            }
        }
        jail.rehearse(work_root)?;
        Ok(jail)
    }

    /// The pool of `wanted` sandbox ids, as many as the ids available allow.
    fn id_pool(&self, wanted: u32) -> Option<Arc<IdPool>> {
        let available = if crate::sys::is_root() {
            // Up to the top of the id space (u32::MAX itself means "no id").
            (u32::MAX - self.uid.max(self.gid)).min(wanted)
        } else if self.map_to.is_some() {
            self.map_range.min(wanted)
        } else {
            return None;
        };
        if available < wanted {
            tracing::warn!(
                wanted,
                available,
                "fewer sandbox ids than jails that may run at once: a jail beyond them fails to start"
            );
        }
        (available > 0).then(|| IdPool::new(available))
    }

    /// The range of ids jails run as.
    fn id_description(&self) -> String {
        match &self.ids {
            Some(pool) if crate::sys::is_root() => format!(
                "uids {}-{} and gids {}-{}, one pair per jail alive",
                self.uid,
                self.uid + (pool.size - 1),
                self.gid,
                self.gid + (pool.size - 1)
            ),
            Some(pool) => match self.map_to {
                Some((uid, gid)) => format!(
                    "subordinate uids {uid}-{} and gids {gid}-{} outside, one pair per jail alive",
                    uid + (pool.size - 1),
                    gid + (pool.size - 1)
                ),
                None => "one pair".to_owned(),
            },
            None => "every jail shares the gateway's own uid outside its user namespace".to_owned(),
        }
    }

    /// Who jailed programs are, for `sluice doctor` and the start-up log.
    pub(crate) fn user_description(&self) -> String {
        match self.map_to {
            _ if crate::sys::is_root() => format!("not root: {}", self.id_description()),
            Some(_) => format!(
                "uid {} inside, {} (/etc/subuid, newuidmap): nothing of the gateway's user is theirs",
                self.uid,
                self.id_description()
            ),
            None => format!(
                "uid {} inside, the gateway's own uid outside (no /etc/subuid range or no newuidmap): files of the gateway's user are theirs",
                self.uid
            ),
        }
    }

    fn rehearse(&self, work_root: &Path) -> Result<(), JailUnavailable> {
        let failed = |why: String| JailUnavailable::Rehearsal(why);
        let dir = work_root.join("jail-rehearsal");
        std::fs::create_dir(&dir).map_err(|e| failed(format!("{}: {e}", dir.display())))?;
        // The lease is kept until the rehearsal jail has been reaped: its network
        // namespace's descriptor must name that namespace while the jail may copy it
        // (the second review: dropped here, the number could name the next namespace the
        // pool made, which a later jail is given too).
        let (mut command, _lease) = self
            .command(
                JailSpec {
                    host_dir: dir.clone(),
                    workspace: dir.clone(),
                    scratch_bytes: 1 << 20,
                    no_network: true,
                    command: vec!["/bin/true".into()],
                    ..JailSpec::default()
                },
                false,
                None,
                None,
            )
            .map_err(|e| failed(format!("writing the jail's spec in {}: {e}", dir.display())))?;
        let status = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output();
        let report = JailReport::read(&dir);
        let _ = std::fs::remove_dir_all(&dir);
        let output = status.map_err(|e| failed(format!("{}: {e}", self.program.display())))?;
        if let Some(why) = report.and_then(|r| r.setup_failed) {
            return Err(failed(why));
        }
        if !output.status.success() {
            return Err(failed(format!(
                "{} ended with {}: {}",
                self.program.display(),
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            )));
        }
        Ok(())
    }

    /// The path of the jail program, for logs and `sluice doctor`.
    pub(crate) fn program(&self) -> &Path {
        &self.program
    }

    /// Whether [`Namespaces::command`] can listen inside a jail's network namespace:
    /// the gateway makes them (root).
    pub(crate) fn can_listen_inside(&self) -> bool {
        self.network_pool.is_some()
    }

    /// Whether jailed programs get an empty network namespace.
    pub(crate) fn no_network(&self) -> bool {
        self.no_network
    }

    /// The command that runs `spec` jailed; the jail's own settings (user, network)
    /// fill in the rest. `spec.no_network` says whether this program's runtime may lose
    /// the network: it does when the jail takes it away. The spec (the program's
    /// environment and arguments with it) is written into `spec.host_dir`, where the
    /// command starts, with an empty environment: callers add nothing to either. The
    /// lease of the jail's own ids must be kept until the jail has been reaped.
    ///
    /// `shared_ids`: the ids of a session's workspace ([`Namespaces::lease_ids`]), which
    /// every jail of the session runs as, so that each can use what the others left;
    /// without, the jail gets ids of its own.
    ///
    /// `listen_on`: a port to listen on at `127.0.0.1` inside the jail's network
    /// namespace, its loopback interface up (the package proxy's), when the jail has no
    /// network and the gateway makes its namespaces (root); the socket comes back in the
    /// lease ([`IdLease::take_listener`]).
    pub(crate) fn command(
        &self,
        spec: JailSpec,
        offline: bool,
        shared_ids: Option<&IdLease>,
        listen_on: Option<u16>,
    ) -> std::io::Result<(Command, Option<IdLease>)> {
        let shared_offset = shared_ids.and_then(|lease| lease.ids.as_ref().map(|(_, o)| *o));
        let ids = match (&self.ids, shared_offset) {
            (Some(_), Some(_)) | (None, _) => None,
            (Some(_), None) => self.take_ids()?.ids.take(),
        };
        // The gateway's `--network` decides, unless the program must be offline anyway
        // (a credential without the network: `offline`).
        let no_network = spec.no_network && (self.no_network || offline);
        // Held from here on, so a failure below gives the ids back. The namespace is
        // taken only for a jail that will use it, so none is wasted.
        let mut lease = IdLease {
            ids,
            network: self
                .network_pool
                .as_ref()
                .filter(|_| no_network)
                .and_then(|pool| pool.take()),
            listener: None,
        };
        if let (Some(port), Some(_), true) = (listen_on, &self.network_pool, no_network) {
            // None ready (a burst): one made now, on a thread of its own.
            if lease.network.is_none() {
                let made = std::thread::Builder::new()
                    .name("sluice-netns".into())
                    .spawn(crate::sys::new_network_namespace)?
                    .join()
                    .map_err(|_| std::io::Error::other("making a network namespace panicked"))?;
                lease.network = Some(made.map_err(std::io::Error::other)?);
            }
            if let Some(namespace) = &lease.network {
                lease.listener = Some(crate::sys::listen_in_network_namespace(
                    namespace.as_fd(),
                    port,
                )?);
            }
        }
        let offset = lease
            .ids
            .as_ref()
            .map(|(_, offset)| *offset)
            .or(shared_offset)
            .unwrap_or(0);
        let (uid, gid, map_to) = match self.map_to {
            _ if crate::sys::is_root() => (self.uid + offset, self.gid + offset, None),
            Some((uid, gid)) => (self.uid, self.gid, Some((uid + offset, gid + offset))),
            None => (self.uid, self.gid, None),
        };
        let spec = JailSpec {
            uid,
            gid,
            no_network,
            network_fd: lease.network.as_ref().map(|fd| fd.as_raw_fd()),
            hide: self.hide.clone(),
            ptys: Some(self.ptys),
            map_to,
            ..spec
        };
        let mut jailed = Command::new(&self.program);
        jailed
            .args(spec.write(&spec.host_dir)?)
            .env_clear()
            .current_dir(&spec.host_dir);
        let holds = lease.ids.is_some() || lease.network.is_some();
        Ok((jailed, holds.then_some(lease)))
    }

    /// Sandbox ids of their own for a session's workspace, held while it lives: every
    /// jail of the session runs as them ([`Namespaces::command`]'s `shared_ids`), and
    /// they own its files. `None` when the gateway has one id to give (not root, no
    /// subordinate ids).
    pub(crate) fn lease_ids(&self) -> std::io::Result<Option<IdLease>> {
        if self.ids.is_none() {
            return Ok(None);
        }
        self.take_ids().map(Some)
    }

    /// The uid and gid programs run as outside the jail with `lease` (as
    /// [`Namespaces::command`] picks them): who owns what they write.
    pub(crate) fn host_ids(&self, lease: Option<&IdLease>) -> (u32, u32) {
        let offset = lease
            .and_then(|lease| lease.ids.as_ref())
            .map_or(0, |(_, offset)| *offset);
        match self.map_to {
            _ if crate::sys::is_root() => (self.uid + offset, self.gid + offset),
            Some((uid, gid)) => (uid + offset, gid + offset),
            None => (crate::sys::effective_uid(), crate::sys::effective_gid()),
        }
    }

    /// A lease of one offset from the pool (none without a pool).
    fn take_ids(&self) -> std::io::Result<IdLease> {
        let ids = match &self.ids {
            Some(pool) => {
                let offset = pool.free.lock().ok().and_then(|mut free| free.pop());
                let offset = offset.ok_or_else(|| {
                    std::io::Error::other(format!(
                        "all {} sandbox ids are in use by running jails",
                        pool.size
                    ))
                })?;
                Some((pool.clone(), offset))
            }
            None => None,
        };
        Ok(IdLease {
            ids,
            network: None,
            listener: None,
        })
    }

    /// What a runtime installed where the sandbox user cannot reach it needs exposed:
    /// the installation prefix (`.../bin/python3` -> `...`), when an ancestor of the
    /// executable is closed to others (a pyenv under /root, say) or hidden in the jail
    /// (a pyenv in a rootless gateway's home).
    pub(crate) fn exposure_for(&self, executable: &Path) -> Vec<PathBuf> {
        let hidden = self.hide.iter().any(|dir| executable.starts_with(dir));
        let closed = executable.ancestors().skip(1).any(|dir| {
            std::fs::metadata(dir).is_ok_and(|meta| meta.permissions().mode() & 0o001 == 0)
        });
        if !hidden && !closed {
            return Vec::new();
        }
        let prefix = executable
            .parent()
            .filter(|bin| bin.file_name().is_some_and(|name| name == "bin"))
            .and_then(Path::parent)
            .or_else(|| executable.parent());
        // Never bind back what is hidden, nor a directory holding it (an interpreter in
        // `$HOME/bin` would expose the whole home): such a runtime fails to start in the
        // jail instead, with a message naming its interpreter.
        prefix
            .filter(|prefix| !self.hide.iter().any(|hidden| hidden.starts_with(prefix)))
            .map(Path::to_path_buf)
            .into_iter()
            .collect()
    }
}

/// Most ptys one jail gets.
const MAX_PTYS_PER_JAIL: u32 = 8;

/// The host's ptys that namespaces other than the initial one may use
/// (`kernel.pty.max` less `kernel.pty.reserve`), shared out between `jails` jails, one
/// to [`MAX_PTYS_PER_JAIL`] each, so jails together cannot use up the pool. A terminal
/// execution's own terminal comes from the same pool (the gateway's, which stops at the
/// same mark: `sys::open_terminal`), so each jail's share keeps one for it: the jails'
/// ptys cannot leave the terminal executions none.
fn ptys_per_jail(jails: usize) -> u32 {
    let read = crate::sys::pty_setting;
    let pool = match (read("max"), read("reserve")) {
        (Some(max), Some(reserve)) => max.saturating_sub(reserve),
        _ => return 1,
    };
    share_of(pool, jails)
}

/// One jail's ptys out of `pool` shared by `jails`, less the one kept for a terminal.
fn share_of(pool: u64, jails: usize) -> u32 {
    let share = (pool / u64::try_from(jails.max(1)).unwrap_or(u64::MAX)).saturating_sub(1);
    u32::try_from(share)
        .unwrap_or(u32::MAX)
        .clamp(1, MAX_PTYS_PER_JAIL)
}

/// The rlimits in the jail's terms, with the process limit (which the jail applies only
/// in a user namespace of its own, where it counts that jail's processes alone).
pub(crate) fn rlimit_list(rlimits: &Rlimits, processes: u64) -> Vec<(RlimitName, u64)> {
    [
        (RlimitName::Cpu, rlimits.cpu_seconds),
        (RlimitName::FileSize, rlimits.file_size_bytes),
        (RlimitName::OpenFiles, rlimits.open_files),
        (RlimitName::Processes, Some(processes)),
    ]
    .into_iter()
    .filter_map(|(name, value)| value.map(|v| (name, v)))
    .collect()
}

/// `sluice-jail` in the directory of the running executable; for tests (whose executable
/// is in `target/<profile>/deps`), the directory above it.
fn default_location() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let dir = exe.parent().unwrap_or(Path::new("."));
    let beside = dir.join("sluice-jail");
    if beside.is_file() {
        return beside;
    }
    match dir.parent() {
        Some(up) if dir.file_name().is_some_and(|name| name == "deps") => up.join("sluice-jail"),
        _ => beside,
    }
}

#[cfg(test)]
mod tests {
    use super::share_of;

    #[test]
    fn each_jails_ptys_keep_one_for_its_terminal() {
        // 4096 less the 1024 reserve, 1024 executions: three each, one kept back.
        assert_eq!(share_of(3072, 1024), 2);
        // Jails and their terminals together stay within the pool.
        for jails in [1_usize, 100, 383, 384, 1000, 1024, 1535, 1536] {
            let share = u64::from(share_of(3072, jails));
            if share > 1 {
                assert!((share + 1) * jails as u64 <= 3072, "{jails}");
            }
        }
        assert_eq!(share_of(3072, 1), super::MAX_PTYS_PER_JAIL);
        assert_eq!(share_of(0, 10), 1);
    }
}
