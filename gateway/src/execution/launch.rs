//! Launching a program of its own: its cgroup, its working directory with the source
//! file, its environment and rlimits, and the spawn (through the jail when there is one);
//! or, when the warm pool (`warm/`) has a fitting interpreter ready, claiming it.

use super::process::Launch;
use super::program::Program;
use super::workdir::Workdir;
use super::{ExecutionSpec, Host};
use crate::config::EffectiveLimits;
use crate::observe::SandboxStage;
use sluice_protocol::{ErrorCode, Event};
use std::path::Path;
use tokio::net::unix::pipe;
use tokio::time::Instant;

/// The kernel-enforced floor for a program's process: CPU seconds (rounded up), file
/// size and open descriptors.
pub(super) fn rlimits(limits: &EffectiveLimits) -> crate::sys::Rlimits {
    crate::sys::Rlimits {
        cpu_seconds: Some(limits.cpu_ms.div_ceil(1000)),
        file_size_bytes: Some(limits.file_size_bytes),
        open_files: Some(limits.open_files),
    }
}

/// A program (or cell) that started, with the gateway's ends of its pipes.
#[derive(Debug)]
pub(super) struct Launched {
    /// A program's own directory, removed after it; a cell uses its kernel's.
    pub(super) workdir: Option<Workdir>,
    pub(super) program: Program,
    /// Registered with the reactor only when the client first sends input.
    pub(super) stdin: std::os::fd::OwnedFd,
    pub(super) stdout: pipe::Receiver,
    /// None on a terminal, which merges it into stdout.
    pub(super) stderr: Option<pipe::Receiver>,
    pub(super) started_at: Instant,
    /// Claimed from the warm pool rather than started for this execution.
    pub(super) warm: bool,
    /// The name of its source file in the session's workspace, removed after it.
    pub(super) workspace_source: Option<String>,
}

/// Processes the jail adds to a program's cgroup (the jail and its init), if any.
pub(super) fn jail_processes(host: &Host) -> u64 {
    if host.jail.is_some() {
        crate::sandbox::JAIL_PROCESSES
    } else {
        0
    }
}

/// Writes the source file and starts the program; a failure becomes the execution's
/// terminal `error`.
pub(super) fn launch(spec: &ExecutionSpec, host: &Host) -> Result<Launched, Box<Event>> {
    // A warm entry's stdio are pipes, and it writes only its source file in a workspace
    // of its own: a terminal program, one with more files, or one in a session's
    // workspace always starts cold.
    let cold = spec.terminal.is_some() || !spec.files.is_empty() || spec.workspace.is_some();
    if let (Some(pool), false) = (&host.warm, cold) {
        if let Some(launched) = pool.claim(spec, host) {
            return Ok(launched);
        }
    }
    let id = Some(spec.id.clone());
    let terminal = match spec.terminal.as_deref().map(super::TerminalControl::open) {
        None => None,
        Some(Ok(terminal)) => Some(terminal),
        Some(Err(err)) => {
            host.observe.metrics.sandbox_failed(SandboxStage::Spawn);
            tracing::warn!(%err, "could not open a terminal");
            let message = format!("could not open a terminal for the program: {err}");
            return Err(Box::new(Event::error(id, ErrorCode::SpawnFailed, message)));
        }
    };
    let cgroup = match host.cgroups.create(
        spec.limits.memory_bytes,
        spec.limits.processes.saturating_add(jail_processes(host)),
    ) {
        Ok(cgroup) => cgroup,
        Err(err) => {
            host.observe.metrics.sandbox_failed(SandboxStage::Cgroup);
            tracing::error!(%err, "could not create the execution's cgroup");
            let message = "could not set up the execution's resource limits";
            return Err(Box::new(Event::error(id, ErrorCode::Internal, message)));
        }
    };
    // In a session's workspace the source goes under a name of its own, so programs
    // of the session running at once do not overwrite each other's.
    let workspace = spec.workspace.as_deref();
    let source_name = match workspace {
        Some(ws) => ws.source_name(&spec.runtime.file_name),
        None => spec.runtime.file_name.clone(),
    };
    if let (Some(ws), None) = (workspace, &host.jail) {
        write_into_workspace(spec, host, ws, &source_name)?;
    }
    // An unjailed program's files are written with its source, before its directory is
    // its user's; a jail's init writes them from a bundle.
    let files: &[(String, String)] = match (&host.jail, workspace) {
        (Some(_), _) | (None, Some(_)) => &[],
        (None, None) => &spec.files,
    };
    let workdir = match Workdir::create(
        &host.work_root,
        &source_name,
        &spec.code,
        files,
        host.program_user,
    ) {
        Ok(dir) => dir,
        Err(err) if err.kind() == std::io::ErrorKind::InvalidInput => {
            let message = format!("could not write the files: {err}");
            return Err(Box::new(Event::error(id, ErrorCode::BadRequest, message)));
        }
        Err(err) => {
            host.observe.metrics.sandbox_failed(SandboxStage::Workdir);
            tracing::error!(%err, "could not prepare the working directory");
            let message = "could not prepare the working directory";
            return Err(Box::new(Event::error(id, ErrorCode::Internal, message)));
        }
    };
    let bundle = match write_files(spec, host, &workdir) {
        Ok(bundle) => bundle,
        Err(refusal) => {
            workdir.remove();
            return Err(refusal);
        }
    };
    let home = workspace.map_or(workdir.path(), |ws| ws.path());
    let source = home.join(&source_name);
    let packages = host.package_env(&spec.runtime, workspace);
    let mut env = environment(
        &spec.runtime,
        &spec.env,
        &host.base_env,
        home,
        host.gives_network(&spec.runtime),
        &packages,
    );
    if let Some(control) = &spec.terminal {
        // Before the request's own variables, which may name another.
        let at = env.len() - spec.env.len();
        env.insert(at, ("TERM", control.term()));
    }
    let launch = Launch {
        runtime: &spec.runtime,
        workdir: workdir.path(),
        source: &source,
        args: &spec.args,
        env,
        rlimits: rlimits(&spec.limits),
        cgroup,
        no_network: host.no_network,
        jail: host.jail.as_deref(),
        user: host.program_user,
        scratch_bytes: spec.limits.workspace_bytes,
        processes: spec.limits.processes,
        warm: None,
        terminal: terminal.as_ref(),
        files: bundle,
        workspace,
        package_proxy: host.package_proxy(&spec.runtime),
        principal: Some(&spec.principal),
    };
    let started_at = Instant::now();
    let spawned = launch.spawn();
    // The program has its copies of the terminal's program side (and the jail's init
    // gives its own up): once they are all closed, reading the terminal ends.
    drop(terminal);
    host.observe.metrics.spawned(started_at.elapsed());
    match spawned {
        Ok(spawned) => Ok(Launched {
            workdir: Some(workdir),
            program: Program::Process(Box::new(spawned.child)),
            stdin: spawned.stdin,
            stdout: spawned.stdout,
            stderr: spawned.stderr,
            started_at,
            warm: false,
            workspace_source: workspace.map(|_| source_name),
        }),
        Err(err) => {
            if let Some(ws) = workspace {
                ws.remove_source(&source_name);
            }
            host.observe.metrics.sandbox_failed(SandboxStage::Spawn);
            tracing::warn!(%err, "spawn failed");
            workdir.remove();
            Err(Box::new(Event::error(
                id,
                ErrorCode::SpawnFailed,
                err.to_string(),
            )))
        }
    }
}

/// Writes a jailed program's `files` as a bundle in its working directory for the
/// jail's init to write into its workspace (whose name it returns; an unjailed
/// program's are written by [`Workdir::create`]). A failure becomes the execution's
/// terminal `error`.
fn write_files(
    spec: &ExecutionSpec,
    host: &Host,
    workdir: &Workdir,
) -> Result<Option<&'static str>, Box<Event>> {
    if spec.files.is_empty() || host.jail.is_none() {
        return Ok(None);
    }
    workdir.write_bundle(&spec.files).map(Some).map_err(|err| {
        let id = Some(spec.id.clone());
        if err.kind() == std::io::ErrorKind::InvalidInput {
            let message = format!("could not write the files: {err}");
            return Box::new(Event::error(id, ErrorCode::BadRequest, message));
        }
        host.observe.metrics.sandbox_failed(SandboxStage::Workdir);
        tracing::error!(%err, "could not write the execution's files");
        let message = "could not write the program's files";
        Box::new(Event::error(id, ErrorCode::Internal, message))
    })
}

/// Writes an unjailed program's source and `files` into its session's workspace (where
/// programs of the session may be running: every path resolved beneath it). A failure
/// becomes the execution's terminal `error`.
fn write_into_workspace(
    spec: &ExecutionSpec,
    host: &Host,
    ws: &crate::workspace::Workspace,
    source_name: &str,
) -> Result<(), Box<Event>> {
    let written = ws
        .write_source(source_name, &spec.code)
        .and_then(|()| ws.write_files(&spec.files));
    written.map_err(|err| {
        ws.remove_source(source_name);
        let id = Some(spec.id.clone());
        // Full: by the errno, or (from `jail::write_files`, which names the path) the kind.
        if crate::sandbox::jail::is_full(&err) {
            let message = "the session's workspace has no room for the program's files";
            Box::new(Event::error(id, ErrorCode::WorkspaceFull, message))
        } else if err.kind() == std::io::ErrorKind::InvalidInput {
            let message = format!("could not write the files: {err}");
            Box::new(Event::error(id, ErrorCode::InvalidPath, message))
        } else {
            host.observe.metrics.sandbox_failed(SandboxStage::Workdir);
            tracing::error!(%err, "could not write into a session's workspace");
            let message = "could not write the program's files into the workspace";
            Box::new(Event::error(id, ErrorCode::Internal, message))
        }
    })
}

/// What a program without the network gets in its environment: package managers that
/// would retry a host they cannot reach (pip for about 8 s, npm for minutes) give up at
/// the first failure. Before the runtime's and the request's variables, which may set
/// them otherwise.
const OFFLINE_ENV: [(&str, &str); 2] = [("PIP_RETRIES", "0"), ("NPM_CONFIG_FETCH_RETRIES", "0")];

/// The program's whole environment, later entries winning: the gateway's base, the
/// working directory as HOME and TMPDIR, [`OFFLINE_ENV`] when it has no `network`, its
/// runtime's package index (`Host::package_env`), the runtime's own variables, then the
/// request's.
pub(super) fn environment<'a>(
    runtime: &'a crate::runtime::Runtime,
    request_env: &'a [(String, String)],
    base_env: &'a [(String, String)],
    workdir: &'a Path,
    network: bool,
    packages: &'a [(String, String)],
) -> Vec<(&'a str, &'a str)> {
    let dir = workdir.to_str().unwrap_or("/tmp");
    let pairs = |list: &'a [(String, String)]| list.iter().map(|(k, v)| (k.as_str(), v.as_str()));
    let mut env: Vec<(&str, &str)> = pairs(base_env).collect();
    env.extend([("HOME", dir), ("TMPDIR", dir)]);
    if !network {
        env.extend(OFFLINE_ENV);
    }
    env.extend(pairs(packages));
    env.extend(pairs(&runtime.env));
    env.extend(pairs(request_env));
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_rlimit_is_rounded_up_to_whole_seconds() {
        let limits = crate::config::LimitsConfig::default()
            .resolve(&sluice_protocol::Limits {
                cpu_ms: Some(1500),
                ..sluice_protocol::Limits::default()
            })
            .unwrap_or_else(|err| panic!("{err}"));
        let rlimits = rlimits(&limits);
        assert_eq!(rlimits.cpu_seconds, Some(2));
        assert_eq!(rlimits.file_size_bytes, Some(limits.file_size_bytes));
        assert_eq!(rlimits.open_files, Some(limits.open_files));
    }
}
