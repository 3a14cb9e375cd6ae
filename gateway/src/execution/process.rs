//! A program started for an execution: its own process group, its pipes, and the
//! guarantee that the whole group is killed and the program reaped, even on drop.

use crate::runtime::{Runtime, FILE_PLACEHOLDER};
use crate::sandbox::jail::JailSpec;
use crate::sandbox::namespaces::{rlimit_list, IdLease};
use crate::sandbox::{CgroupReport, CpuSeen, ExecutionCgroup, LimitWatch, Namespaces, ProgramUser};
use crate::sys::{self, Reaped, Signal};
use std::io;
use std::os::fd::{AsFd as _, OwnedFd};
use std::path::Path;
use std::sync::Arc;
use tokio::io::unix::AsyncFd;
use tokio::net::unix::pipe;

/// Pipe buffer requested for stdout and stderr.
const PIPE_BYTES: usize = 1 << 20;

/// What a program needs to start.
#[derive(Debug)]
pub(crate) struct Launch<'a> {
    pub(crate) runtime: &'a Runtime,
    pub(crate) workdir: &'a Path,
    pub(crate) source: &'a Path,
    pub(crate) args: &'a [String],
    /// The whole environment, in order of precedence (later wins).
    pub(crate) env: Vec<(&'a str, &'a str)>,
    /// Kernel limits set in the child before it starts.
    pub(crate) rlimits: sys::Rlimits,
    /// The execution's cgroup, if the host gives one: the child joins it at once.
    pub(crate) cgroup: Option<ExecutionCgroup>,
    /// Start an unjailed program in a new, empty network namespace (a jail makes its
    /// own).
    pub(crate) no_network: bool,
    /// The jail the program starts in, if the gateway isolates with namespaces; it sets
    /// the rlimits itself, before the program runs.
    pub(crate) jail: Option<&'a Namespaces>,
    /// The user an unjailed program drops to before it execs (a root gateway's).
    pub(crate) user: Option<ProgramUser>,
    /// Size of the jail's scratch file system (workspace, /tmp, /dev/shm).
    pub(crate) scratch_bytes: u64,
    /// The process limit, for a jail that must enforce it without a cgroup.
    pub(crate) processes: u64,
    /// A warm-pool entry: no source file is copied into the jail, the entry writes it
    /// when it is claimed (see `warm/`).
    pub(crate) warm: Option<WarmWait<'a>>,
    /// Run on this terminal instead of pipes (see `execution::terminal`).
    pub(crate) terminal: Option<&'a sys::Terminal>,
    /// A jailed program's bundle of more files in `workdir` (`JailSpec::files`); an
    /// unjailed program's are written in `workdir` already.
    pub(crate) files: Option<&'a str>,
    /// A session's workspace to start in (bound into the jail at its own path, or the
    /// unjailed program's working directory): `workdir` is then only the host
    /// directory the jail's spec and source copy travel through.
    pub(crate) workspace: Option<&'a crate::workspace::Workspace>,
    /// Serve the runtime's package index to the jailed program through the gateway's
    /// proxy (`Host::package_proxy`).
    pub(crate) package_proxy: Option<&'a Arc<crate::packages::Packages>>,
    /// Who runs it: whose share of the proxy's connections it uses (`None` for a warm
    /// entry, attributed when claimed: [`ChildGroup::attribute_package_proxy`]).
    pub(crate) principal: Option<&'a crate::admission::Principal>,
}

/// How a warm-pool entry waits for its execution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WarmWait<'a> {
    /// The runtime's program runs `-c BOOTSTRAP SOURCE` instead of its usual arguments.
    Interpreter(&'a str),
    /// The jail's program process waits before its exec (`JailSpec::wait_for_go`);
    /// only with the jail.
    Jail,
}

/// A started program and the gateway's ends of its pipes; or, on a terminal, two
/// handles on the terminal's control side (stdin writes to it, stdout reads from it) and
/// no stderr (the terminal merges it).
#[derive(Debug)]
pub(crate) struct Spawned {
    pub(crate) child: ChildGroup,
    /// Registered with the reactor only when the client first sends input.
    pub(crate) stdin: OwnedFd,
    pub(crate) stdout: pipe::Receiver,
    pub(crate) stderr: Option<pipe::Receiver>,
}

/// Why a program did not start; the message names the command.
#[derive(Debug, thiserror::Error)]
#[error("could not start {program} for {language}: {source}")]
pub(crate) struct SpawnError {
    program: String,
    language: String,
    #[source]
    source: io::Error,
}

/// The leader of an execution's process group, and its cgroup when the host gives one.
/// Dropping it kills the group (and everything in the cgroup) and reaps the leader, so
/// no exit path leaves a process behind.
#[derive(Debug)]
pub(crate) struct ChildGroup {
    pid: u32,
    /// Readable once the leader has exited (it stays a zombie until [`ChildGroup::reap`]).
    exit: AsyncFd<OwnedFd>,
    reaped: bool,
    cgroup: Option<ExecutionCgroup>,
    /// What the cgroup saw, collected when the leader is reaped.
    report: Option<CgroupReport>,
    /// A terminal's program: a cancel hangs its terminal up (SIGHUP, then SIGTERM).
    hangs_up: bool,
    /// The package proxy serving it, ended with it.
    package_proxy_handle: Option<crate::packages::ProxyHandle>,
    /// A jailed program's own sandbox ids, given back after the group (its drop kills
    /// and reaps it) is gone: declared last, it is dropped last.
    _sandbox_ids: Option<IdLease>,
}

/// Serves `runtime`'s package index to a jail whose `lease` holds the socket made
/// inside its namespace for the proxy, when one was asked for (`packages`).
pub(crate) fn serve_packages(
    runtime: &Runtime,
    packages: Option<&Arc<crate::packages::Packages>>,
    lease: Option<&mut IdLease>,
    owner: Option<&crate::admission::Principal>,
) -> io::Result<Option<crate::packages::ProxyHandle>> {
    let (Some(packages), Some(index)) = (packages, &runtime.package_index) else {
        return Ok(None);
    };
    let listener = lease.and_then(IdLease::take_listener).ok_or_else(|| {
        io::Error::other("no socket was made for the package proxy in the jail's network")
    })?;
    crate::packages::serve(listener, index.clone(), packages.clone(), owner.cloned()).map(Some)
}

impl Launch<'_> {
    /// Starts the program in a session (and process group) of its own with piped stdio
    /// or its terminal, with [`sys::spawn_program`] (the gateway's memory never copied,
    /// born in its v2 cgroup where the kernel can do that): unjailed, with its limits,
    /// network and user set in the child before exec; jailed, `sluice-jail` as it is
    /// given, which sets all of that up inside.
    pub(crate) fn spawn(self) -> Result<Spawned, SpawnError> {
        let fail = |source: io::Error| SpawnError {
            program: self.runtime.program.display().to_string(),
            language: self.runtime.name.clone(),
            source,
        };
        let source = self.source.as_os_str();
        let mut argv: Vec<std::ffi::OsString> = vec![self.runtime.program.clone().into()];
        let bootstrap = match self.warm {
            Some(WarmWait::Interpreter(bootstrap)) => Some(bootstrap),
            _ => None,
        };
        if let Some(bootstrap) = bootstrap {
            argv.extend(["-c".into(), bootstrap.into(), source.to_owned()]);
        }
        for arg in self.runtime.args.iter().filter(|_| bootstrap.is_none()) {
            if arg == FILE_PLACEHOLDER {
                argv.push(source.to_owned());
            } else {
                argv.push(
                    arg.replace(FILE_PLACEHOLDER, &self.source.to_string_lossy())
                        .into(),
                );
            }
        }
        argv.extend(self.args.iter().map(Into::into));
        let mut sandbox_ids = None;
        let mut package_proxy = None;
        let cgroup = self.cgroup.as_ref();
        let cgroup_dir = cgroup.and_then(ExecutionCgroup::unified_dir);
        let born_inside = cgroup.is_some_and(ExecutionCgroup::can_be_born_inside);
        let started = match self.jail {
            Some(jail) => {
                let (command, mut lease) = jail
                    .command(
                        JailSpec {
                            host_dir: self.workdir.to_path_buf(),
                            source: self
                                .source
                                .file_name()
                                .filter(|_| self.warm.is_none())
                                .map(Into::into),
                            wait_for_go: self
                                .source
                                .file_name()
                                .filter(|_| self.warm == Some(WarmWait::Jail))
                                .map(Into::into),
                            workspace: self
                                .workspace
                                .map_or(self.workdir, |ws| ws.path())
                                .to_path_buf(),
                            shared_workspace: self.workspace.is_some(),
                            scratch_bytes: self.scratch_bytes,
                            expose: jail.exposure_for(&self.runtime.program),
                            rlimits: rlimit_list(&self.rlimits, self.processes),
                            no_network: !self.runtime.network,
                            env: crate::sandbox::jail::environment(self.env.iter().copied()),
                            nice: (!self
                                .cgroup
                                .as_ref()
                                .is_some_and(ExecutionCgroup::shares_cpu))
                            .then_some(sys::PROGRAM_NICE),
                            command: argv,
                            terminal: self.terminal.is_some(),
                            files: self.files.map(Into::into),
                            ..JailSpec::default()
                        },
                        self.runtime.offline,
                        self.workspace.and_then(|ws| ws.ids()),
                        self.package_proxy.map(|_| crate::packages::PROXY_PORT),
                    )
                    .map_err(fail)?;
                package_proxy = serve_packages(
                    self.runtime,
                    self.package_proxy,
                    lease.as_mut(),
                    self.principal,
                )
                .map_err(fail)?;
                sandbox_ids = lease;
                let jail = JailLaunch::of(&command, self.workdir);
                let plan = sys::ProgramPlan {
                    terminal: self.terminal.map(|terminal| terminal.program_side.as_fd()),
                    terminal_as_stdio_only: true,
                    ..jail.plan(cgroup_dir, born_inside)
                };
                self.start_inside_cgroup(|| sys::spawn_program(&plan))
            }
            None if self.warm == Some(WarmWait::Jail) => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "a waiting warm entry needs the namespace jail",
            )),
            None => {
                let plan = sys::ProgramPlan {
                    program: &self.runtime.program,
                    argv: &argv,
                    env: &self.env,
                    cwd: self.workspace.map_or(self.workdir, |ws| ws.path()),
                    rlimits: self.rlimits,
                    // A runtime allowed the network keeps the host's.
                    no_network: (self.no_network || self.runtime.offline) && !self.runtime.network,
                    user: self.user.map(|user| (user.uid, user.gid)),
                    cgroup: cgroup_dir,
                    born_inside,
                    lower_priority: !self
                        .cgroup
                        .as_ref()
                        .is_some_and(ExecutionCgroup::shares_cpu),
                    terminal: self.terminal.map(|terminal| terminal.program_side.as_fd()),
                    terminal_as_stdio_only: false,
                    stdio: None,
                    control: None,
                    subreaper: false,
                };
                self.start_inside_cgroup(|| sys::spawn_program(&plan))
            }
        }
        .map_err(fail)?;
        let pid = started.pid;
        // From here on the group must be killed if anything fails.
        let exit = match sys::exit_watcher(pid) {
            Ok(exit) => exit,
            Err(err) => {
                let _ = sys::signal_group(pid, Signal::Kill);
                let _ = sys::reap_blocking(pid);
                return Err(fail(err));
            }
        };
        let mut cgroup = self.cgroup;
        if let (Some(cgroup), Some(_)) = (&mut cgroup, self.jail) {
            cgroup.set_helpers(crate::sandbox::JAIL_PROCESSES);
        }
        let group = ChildGroup {
            pid,
            exit,
            reaped: false,
            cgroup,
            report: None,
            hangs_up: self.terminal.is_some(),
            package_proxy_handle: package_proxy,
            _sandbox_ids: sandbox_ids,
        };
        match (started.pipes, self.terminal) {
            (Some(pipes), _) => {
                // A 1 MiB pipe lets a fast writer hand over more per wakeup: measured with
                // sluice-bench, about 15% less gateway CPU per MiB and ~1.4x the
                // throughput.
                sys::set_pipe_size(&pipes.stdout, PIPE_BYTES);
                sys::set_pipe_size(&pipes.stderr, PIPE_BYTES);
                Ok(Spawned {
                    stdin: pipes.stdin,
                    stdout: pipe::Receiver::from_owned_fd(pipes.stdout).map_err(fail)?,
                    stderr: Some(pipe::Receiver::from_owned_fd(pipes.stderr).map_err(fail)?),
                    child: group,
                })
            }
            (None, Some(terminal)) => {
                let control = || terminal.control.try_clone();
                // The control side is not a pipe, but reads and waits the same way (its
                // end of file is EIO, once every program-side descriptor is closed).
                let stdout = control()
                    .and_then(pipe::Receiver::from_owned_fd_unchecked)
                    .map_err(fail)?;
                Ok(Spawned {
                    stdin: control().map_err(fail)?,
                    stdout,
                    stderr: None,
                    child: group,
                })
            }
            (None, None) => Err(fail(io::Error::other("stdio pipes missing"))),
        }
    }

    /// Runs `start` with the calling thread inside the execution's cgroup, if there is
    /// one, so the program is born in it.
    fn start_inside_cgroup(
        &self,
        start: impl FnOnce() -> io::Result<sys::StartedProgram>,
    ) -> io::Result<sys::StartedProgram> {
        match &self.cgroup {
            Some(cgroup) => cgroup.spawn_inside(start).and_then(|started| started),
            None => start(),
        }
    }
}

/// The jail's command (`sluice-jail` as the sandbox gives it, a `Command` so that its
/// rehearsal can run it as one) as the parts [`sys::spawn_program`] takes.
#[derive(Debug)]
pub(crate) struct JailLaunch {
    program: std::path::PathBuf,
    argv: Vec<std::ffi::OsString>,
    cwd: std::path::PathBuf,
}

impl JailLaunch {
    /// `command`'s program and arguments, and its directory (else `cwd`).
    pub(crate) fn of(command: &std::process::Command, cwd: &Path) -> Self {
        Self {
            program: command.get_program().into(),
            argv: std::iter::once(command.get_program())
                .chain(command.get_args())
                .map(Into::into)
                .collect(),
            cwd: command.get_current_dir().unwrap_or(cwd).to_path_buf(),
        }
    }

    /// Starts it as an unjailed program is (no copy of the gateway's memory, born in
    /// its v2 `cgroup` where the kernel can do that), as it is given: no environment, no
    /// limits or user of its own (it sets the program's), in a session of its own
    /// without a controlling terminal, piped stdio unless the caller says otherwise.
    pub(crate) fn plan<'a>(
        &'a self,
        cgroup: Option<&'a Path>,
        born_inside: bool,
    ) -> sys::ProgramPlan<'a> {
        sys::ProgramPlan {
            cgroup,
            born_inside,
            ..sys::ProgramPlan::new(&self.program, &self.argv, &self.cwd)
        }
    }
}

impl ChildGroup {
    /// Takes charge of child `pid`, started in its own process group (inside `cgroup`,
    /// if given).
    pub(crate) fn watch(
        pid: u32,
        cgroup: Option<ExecutionCgroup>,
        sandbox_ids: Option<IdLease>,
        package_proxy: Option<crate::packages::ProxyHandle>,
    ) -> io::Result<Self> {
        match sys::exit_watcher(pid) {
            Ok(exit) => Ok(Self {
                pid,
                exit,
                reaped: false,
                cgroup,
                report: None,
                hangs_up: false,
                package_proxy_handle: package_proxy,
                _sandbox_ids: sandbox_ids,
            }),
            Err(err) => {
                let _ = sys::signal_group(pid, Signal::Kill);
                let _ = sys::reap_blocking(pid);
                Err(err)
            }
        }
    }

    /// Says who runs the program, for its package proxy's share (a warm entry's,
    /// started before its claim).
    pub(crate) fn attribute_package_proxy(&self, principal: &crate::admission::Principal) {
        if let Some(proxy) = &self.package_proxy_handle {
            proxy.attribute(principal);
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    /// Signals every process in the group. Safe to call until the leader is reaped: the
    /// unreaped leader keeps the group id from being reused.
    pub(crate) fn signal(&self, signal: Signal) {
        if self.reaped {
            return;
        }
        // Closing a terminal hangs it up: an interactive shell ignores SIGTERM but not
        // SIGHUP.
        if self.hangs_up && signal == Signal::Terminate {
            if let Err(err) = sys::signal_group(self.pid, Signal::HangUp) {
                tracing::warn!(pid = self.pid, %err, "could not hang up a terminal's group");
            }
        }
        if let Err(err) = sys::signal_group(self.pid, signal) {
            tracing::warn!(pid = self.pid, ?signal, %err, "could not signal process group");
        }
        if signal == Signal::Kill {
            // Processes that left the group (setsid) are still in the cgroup.
            if let Some(cgroup) = &self.cgroup {
                cgroup.kill_all();
            }
        }
    }

    /// True once the leader has exited (it is a zombie until reaped).
    pub(crate) fn has_exited(&self) -> bool {
        self.reaped
            || std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).map_or(true, |stat| {
                stat.rsplit_once(')')
                    .and_then(|(_, rest)| rest.trim_start().chars().next())
                    .is_some_and(|state| matches!(state, 'Z' | 'X'))
            })
    }

    /// What the cgroup's limits have caught so far (`None` without a cgroup).
    pub(crate) fn cgroup_report(&self) -> Option<CgroupReport> {
        self.report
            .or_else(|| self.cgroup.as_ref().map(ExecutionCgroup::report))
    }

    /// The limits the cgroup counts as they are hit (OOM kills, refused forks): a cheap
    /// check (`None` without a cgroup).
    pub(crate) fn cgroup_limits_hit(&self) -> Option<CgroupReport> {
        self.report
            .or_else(|| self.cgroup.as_ref().map(ExecutionCgroup::limits_hit))
    }

    /// A watch that wakes when the cgroup's OOM or fork counter moves (`None` without
    /// a cgroup).
    pub(crate) fn cgroup_limit_watch(&self) -> Option<LimitWatch> {
        self.cgroup.as_ref().and_then(ExecutionCgroup::watch_limits)
    }

    /// Gives a cgroup made ahead of its execution (a warm interpreter's) the
    /// execution's limits, and starts its counters from now; without a cgroup, nothing.
    pub(crate) fn hand_over_cgroup(&mut self, memory_bytes: u64, processes: u64) -> io::Result<()> {
        match &mut self.cgroup {
            Some(cgroup) => cgroup.hand_over(memory_bytes, processes),
            None => Ok(()),
        }
    }

    /// True when the group's cgroup limits its processes.
    pub(crate) fn cgroup_limits_processes(&self) -> bool {
        self.cgroup
            .as_ref()
            .is_some_and(ExecutionCgroup::limits_processes)
    }

    /// The file listing every process in the group's cgroup, where it has one.
    pub(crate) fn cgroup_procs_file(&self) -> Option<std::path::PathBuf> {
        self.cgroup.as_ref().and_then(ExecutionCgroup::procs_file)
    }

    /// The memory the group's cgroup counts now, where it counts it.
    pub(crate) fn cgroup_memory(&self) -> Option<u64> {
        self.cgroup
            .as_ref()
            .and_then(ExecutionCgroup::memory_current)
    }

    /// The whole tree's CPU time so far, where the cgroup counts it.
    pub(crate) fn cgroup_cpu(&self) -> Option<CpuSeen> {
        self.cgroup.as_ref().and_then(ExecutionCgroup::cpu_seen)
    }

    /// Resolves once the leader has exited.
    pub(crate) async fn exited(&self) {
        match self.exit.readable().await {
            // A pidfd stays readable after exit; there is no readiness to clear.
            Ok(mut guard) => guard.retain_ready(),
            Err(err) => {
                tracing::error!(pid = self.pid, %err, "pidfd poll failed; treating as exited")
            }
        }
    }

    /// Kills what is left of the group, then reaps the leader. Call after [`exited`].
    ///
    /// [`exited`]: ChildGroup::exited
    pub(crate) async fn reap(&mut self) -> io::Result<Reaped> {
        self.signal(Signal::Kill);
        if let Some(reaped) = sys::try_reap(self.pid)? {
            self.reaped = true;
            self.release_cgroup().await;
            return Ok(reaped);
        }
        // The leader had not quite exited; wait for it off the runtime's threads.
        let pid = self.pid;
        let reaped = tokio::task::spawn_blocking(move || sys::reap_blocking(pid))
            .await
            .map_err(io::Error::other)??;
        self.reaped = true;
        self.release_cgroup().await;
        Ok(reaped)
    }

    /// Kills whatever is left in the cgroup (processes that escaped the group), waits
    /// until it is empty, keeps its report and removes it.
    async fn release_cgroup(&mut self) {
        let Some(mut cgroup) = self.cgroup.take() else {
            return;
        };
        self.report = Some(cgroup.report());
        cgroup.kill_all();
        if cgroup.is_empty() {
            cgroup.recycle();
            return;
        }
        // SIGKILLed processes take a moment to leave; wait off the runtime's threads.
        let _ = tokio::task::spawn_blocking(move || empty_and_remove(cgroup)).await;
    }
}

/// Waits (a bounded time) for a killed cgroup to empty, then removes it.
fn empty_and_remove(mut cgroup: ExecutionCgroup) {
    for _ in 0..2_000 {
        if cgroup.is_empty() {
            cgroup.recycle();
            return;
        }
        cgroup.kill_all();
        // Runs on a blocking-pool or dedicated thread, never a runtime worker; a v1
        // cgroup offers no event for "empty", so this polls.
        #[allow(clippy::disallowed_methods)]
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    tracing::warn!("an execution cgroup did not empty within 2 s; leaving it");
}

impl Drop for ChildGroup {
    fn drop(&mut self) {
        if let Some(cgroup) = self.cgroup.take() {
            cgroup.kill_all();
            let emptier = std::thread::Builder::new()
                .name("sluice-cgroup".into())
                .spawn(move || empty_and_remove(cgroup));
            if let Err(err) = emptier {
                tracing::error!(%err, "could not start a thread to remove a cgroup");
            }
        }
        if self.reaped {
            return;
        }
        self.signal(Signal::Kill);
        let pid = self.pid;
        if matches!(sys::try_reap(pid), Ok(Some(_))) {
            return;
        }
        // SIGKILL is not instant; reap on a plain thread so drop never blocks a worker.
        let reaper = std::thread::Builder::new()
            .name("sluice-reaper".into())
            .spawn(move || sys::reap_blocking(pid));
        if let Err(err) = reaper {
            tracing::error!(pid, %err, "could not start a reaper thread; the zombie stays");
        }
    }
}
