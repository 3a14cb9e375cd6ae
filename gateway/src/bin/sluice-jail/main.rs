//! `sluice-jail`: starts one program for the Sluice gateway inside new namespaces, as an
//! unprivileged user, with a read-only view of the system and a private, size-limited
//! scratch file system. The gateway starts it; it is not meant to be run by hand.
//!
//! Three processes, each with one job:
//!
//! ```text
//! gateway ── jail (outside) ── init (pid 1 inside) ── program (pid 2 inside)
//! ```
//!
//! * The **jail** creates the namespaces, then waits and dies the way the program died
//!   (same exit code, or the same signal), so the gateway reads the program's end from
//!   its own child. It holds back the signals a cancel sends; the program gets them.
//! * **init** sets up the mounts, starts the program, reaps whatever gets orphaned, and
//!   when the program ends kills everything else in the namespace, writes the
//!   [`JailReport`] into the execution's host-side directory and hands the program's wait
//!   status to the jail.
//! * The **program** drops to the unprivileged user, takes its rlimits and its
//!   system-call filter (`seccomp.rs`), and execs; init starts it the way `posix_spawn`
//!   does (sharing init's memory until the exec, so none of it is copied).
//!
//! What the mounts look like inside: `/` read-only and nosuid (recursively), a fresh
//! `/proc` for the new PID namespace, one tmpfs of `--scratch-bytes` serving `/tmp`,
//! `/dev/shm` and the workspace (the same path as outside), and `--expose` directories
//! bound read-only where an unreadable ancestor (like `/root`) would hide them.
//!
//! The process starts at `os::main`, not through std's runtime start (which reads
//! `/proc/self/maps` and sets up a stack-overflow handler: about 0.1 ms of every jail's
//! start, for nothing the jail uses).

// Unit tests keep the test harness's own start.
#![cfg_attr(not(test), no_main)]

mod mounts;
mod os;
mod seccomp;

use os::Forked;
use sluice_gateway::jail::{JailReport, JailSpec, RlimitName, REPORT_FILE};
use std::fs::File;
use std::io::{self, Read as _, Write as _};
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

/// Exit code when the jail itself cannot run (bad arguments, no namespaces); the
/// gateway reads the reason from the report when there is one.
const SETUP_FAILED: i32 = 125;

/// Files examined when looking for the largest file: a program that made millions of
/// files is not worth a long walk.
const MAX_FILES_EXAMINED: usize = 100_000;

/// Most bytes init hands over to the jail outside (a status and a short report).
const MAX_HAND_OVER_BYTES: u64 = 64 << 10;

/// Bytes of directory paths the walk may hold waiting at once.
const MAX_PENDING_PATH_BYTES: usize = 1 << 20;

/// What the process does, called from `os::main`.
#[cfg_attr(test, allow(dead_code))]
fn run() -> ! {
    // The jail runs with root's powers over the host until the program's exec: it takes
    // nothing from its environment (the gateway starts it with none), and a loader
    // variable there means something else started it.
    if let Some(name) = std::env::vars_os()
        .map(|(name, _)| name)
        .find(|name| name.as_encoded_bytes().starts_with(b"LD_"))
    {
        let _ = writeln!(
            io::stderr(),
            "sluice-jail: refusing to run with {} in its environment",
            name.to_string_lossy()
        );
        std::process::exit(SETUP_FAILED);
    }
    let spec = match JailSpec::from_command_line(
        std::env::args_os().skip(1).collect(),
        os::effective_ids().0,
    ) {
        Ok(spec) => spec,
        Err(err) => {
            // Printed for a person; the gateway never gets here.
            let _ = writeln!(io::stderr(), "{err}");
            std::process::exit(SETUP_FAILED);
        }
    };
    jail(&spec)
}

/// Outside the namespaces: create them, start init, and end like the program did.
fn jail(spec: &JailSpec) -> ! {
    // Created now, while the host's file systems are writable: inside, they will not be.
    let report = match File::options()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(spec.host_dir.join(REPORT_FILE))
    {
        Ok(file) => file,
        Err(err) => {
            let _ = writeln!(
                io::stderr(),
                "sluice-jail: cannot write its report in {}: {err}",
                spec.host_dir.display()
            );
            std::process::exit(SETUP_FAILED)
        }
    };
    let fail = |what: &str, err: io::Error| -> ! { fail_with(&report, &format!("{what}: {err}")) };
    // Already in the execution's v2 cgroup: born there, or joined before its exec
    // (the gateway's `sys::spawn_program`), so everything it starts is counted, limited
    // and killed with it.
    // A mirrored SIGSEGV must not write a core file.
    let _ = os::set_rlimit(libc::RLIMIT_CORE, 0, 0);
    if let Err(err) = os::hold_signals() {
        fail("blocking signals", err);
    }
    // Nothing inside may reach the terminal the gateway runs in.
    if let Err(err) = os::leave_controlling_terminal() {
        fail("leaving the gateway's controlling terminal", err);
    }
    let (status_read, status_write) = os::pipe().unwrap_or_else(|err| fail("pipe", err));
    // A cgroup namespace made inside the execution's cgroup: /proc/self/cgroup shows "/"
    // inside.
    let mut namespaces = libc::CLONE_NEWNS
        | libc::CLONE_NEWPID
        | libc::CLONE_NEWIPC
        | libc::CLONE_NEWUTS
        | libc::CLONE_NEWCGROUP;
    if spec.no_network {
        namespaces |= libc::CLONE_NEWNET;
    }
    // Without root, a user namespace makes the rest possible. With subordinate ids the
    // jail is root inside (the gateway's ids outside) and the sandbox user a subordinate
    // id of the gateway's; otherwise the sandbox ids map to the gateway's own and no
    // other id exists there.
    let (outer_uid, outer_gid) = os::effective_ids();
    let users = match (outer_uid, spec.map_to) {
        (0, _) => Users::Host,
        (_, Some(_)) => Users::Subordinate,
        (_, None) => Users::GatewaysOwn,
    };
    if users != Users::Host {
        namespaces |= libc::CLONE_NEWUSER;
    }
    // A root gateway may have made the empty network namespace ahead of time, for this
    // jail alone: entered, it spares making one here (the dearest step of the start).
    // Anything amiss with it and the jail makes its own, as without one.
    if let (true, Users::Host, Some(fd)) = (spec.no_network, users, spec.network_fd) {
        if os::enter_parents_network(fd).is_ok() {
            namespaces &= !libc::CLONE_NEWNET;
        }
    }
    // The mapping tools must run in the gateway's user namespace: started before it
    // is left.
    let mapper = spec
        .map_to
        .filter(|_| users == Users::Subordinate)
        .map(|subordinate| {
            IdMapper::start(spec, (outer_uid, outer_gid), subordinate)
                .unwrap_or_else(|err| fail("starting the id mapping", err))
        });
    if let Err(err) = os::unshare(namespaces) {
        fail("creating namespaces", err);
    }
    match (users, mapper) {
        (Users::Subordinate, Some(mapper)) => {
            if let Err(why) = mapper.map() {
                fail_with(&report, &format!("mapping subordinate ids: {why}"));
            }
        }
        (Users::GatewaysOwn, _) => {
            let mapped = std::fs::write("/proc/self/setgroups", "deny")
                .and_then(|()| {
                    std::fs::write("/proc/self/uid_map", format!("{} {outer_uid} 1", spec.uid))
                })
                .and_then(|()| {
                    std::fs::write("/proc/self/gid_map", format!("{} {outer_gid} 1", spec.gid))
                });
            if let Err(err) = mapped {
                fail("mapping the sandbox user in the user namespace", err);
            }
        }
        _ => {}
    }
    // From here on no other process may look into this one or its init (`/proc/PID/root`
    // shows the jail's files, `mem`, `environ`); set only now because mapping ids needs
    // this process's `/proc` entry to be its user's. The program's own exec, as the
    // sandbox user, makes it an ordinary process again.
    if let Err(err) = os::set_non_dumpable() {
        fail("making the jail non-dumpable", err);
    }
    // Opened now, before init builds the jail's /dev in the mount namespace the two
    // share: opened later, it could be the plain file init has just made to bind the
    // device onto, and that open file would stop init making /dev read-only (EBUSY).
    let null = open_null();
    match os::fork() {
        Err(err) => fail("starting init", err),
        Ok(Forked::Child) => {
            drop(null);
            drop(status_read);
            // Only the jail outside writes the report: init shares its uid with the
            // program in a rootless jail, which could otherwise tamper with init's limits
            // and so with the report.
            drop(report);
            init(spec, File::from(status_write), users)
        }
        Ok(Forked::Parent(init_pid)) => {
            // A cancel that came while the jail was setting up waits here, held: send it
            // to the whole group again, where init holds it until the program exists
            // (init passes on what waits on it once it has forked the program, and from
            // then on the program is in the group and gets it directly).
            for signal in os::pending_held() {
                os::send(0, signal);
            }
            drop(status_write);
            if let Some(fd) = spec.keep_fd {
                os::close(fd);
            }
            quiet_standard_streams(null);
            let mut handed_over = Vec::new();
            let _ = File::from(status_read)
                .take(MAX_HAND_OVER_BYTES)
                .read_to_end(&mut handed_over);
            let init_end = os::wait(init_pid).map(|(_, status)| status);
            match handed_over.split_first_chunk::<4>() {
                Some((status, text)) => {
                    let text = String::from_utf8_lossy(text);
                    write_report(&report, &JailReport::parse(&text));
                    mirror(i32::from_ne_bytes(*status))
                }
                // init died before the program ended (killed from outside): end as it did.
                None => mirror(init_end.unwrap_or(libc::SIGKILL)),
            }
        }
    }
}

/// Whose ids the jail's processes have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Users {
    /// The gateway is root: the host's ids, no user namespace.
    Host,
    /// A user namespace where the jail is root (the gateway's ids outside) and the
    /// sandbox user is a subordinate id: the program shares nothing with the jail.
    Subordinate,
    /// A user namespace where the sandbox user is the gateway's own ids, shared by the
    /// jail, its init and the program.
    GatewaysOwn,
}

/// A child left in the gateway's user namespace to map the jail's new one with
/// `newuidmap` and `newgidmap` (setuid helpers that check `/etc/subuid` and
/// `/etc/subgid`; a process inside the new namespace could not run them as such).
struct IdMapper {
    pid: libc::pid_t,
    go: File,
    outcome: File,
}

impl IdMapper {
    /// Forks the mapper; it waits until [`IdMapper::map`] says the namespace exists.
    fn start(spec: &JailSpec, outer: (u32, u32), subordinate: (u32, u32)) -> io::Result<Self> {
        let target = std::process::id().to_string();
        // Root inside is the gateway; the sandbox user and group are subordinate ids.
        let mapping = |outer: u32, sandbox: u32, subordinate: u32| {
            [0, outer, 1, sandbox, subordinate, 1].map(|id| id.to_string())
        };
        let uid_map = mapping(outer.0, spec.uid, subordinate.0);
        let gid_map = mapping(outer.1, spec.gid, subordinate.1);
        let (go_read, go_write) = os::pipe()?;
        let (outcome_read, outcome_write) = os::pipe()?;
        match os::fork()? {
            Forked::Child => {
                drop(go_write);
                drop(outcome_read);
                let mut go = [0_u8; 1];
                // The jail ended before its namespace existed: nothing to map.
                if File::from(go_read).read(&mut go).unwrap_or(0) != 1 {
                    std::process::exit(0)
                }
                let outcome = run_id_tool("newuidmap", &target, &uid_map)
                    .and_then(|()| run_id_tool("newgidmap", &target, &gid_map));
                let message = match outcome {
                    Ok(()) => "mapped".to_owned(),
                    Err(why) => why,
                };
                let _ = File::from(outcome_write).write_all(message.as_bytes());
                std::process::exit(0)
            }
            Forked::Parent(pid) => Ok(Self {
                pid,
                go: File::from(go_write),
                outcome: File::from(outcome_read),
            }),
        }
    }

    /// Has the mapper map this process's new user namespace; why it could not, if not.
    fn map(mut self) -> Result<(), String> {
        let told = self.go.write_all(&[1]);
        drop(self.go);
        let mut outcome = String::new();
        let _ = self.outcome.read_to_string(&mut outcome);
        let _ = os::wait(self.pid);
        told.map_err(|err| format!("telling the mapper: {err}"))?;
        match outcome.as_str() {
            "mapped" => Ok(()),
            "" => Err("the mapper ended without mapping".to_owned()),
            why => Err(why.to_owned()),
        }
    }
}

/// Runs `newuidmap` or `newgidmap` for `target` with `mapping` (triples of inside,
/// outside, count).
fn run_id_tool(name: &str, target: &str, mapping: &[String]) -> Result<(), String> {
    let tool =
        sluice_gateway::jail::id_mapper(name).ok_or_else(|| format!("{name} is not installed"))?;
    let output = std::process::Command::new(&tool)
        .arg(target)
        .args(mapping)
        .env_clear()
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .output()
        .map_err(|err| format!("{}: {err}", tool.display()))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{} {}: {} ({})",
            tool.display(),
            mapping.join(" "),
            String::from_utf8_lossy(&output.stderr).trim(),
            output.status
        ))
    }
}

/// Ends the jail before anything ran, saying why in the report.
fn fail_with(report: &File, why: &str) -> ! {
    write_report(
        report,
        &JailReport {
            setup_failed: Some(why.to_owned()),
            ..JailReport::default()
        },
    );
    std::process::exit(SETUP_FAILED)
}

/// Ends this process with the program's wait status.
fn mirror(status: libc::c_int) -> ! {
    if libc::WIFSIGNALED(status) {
        os::die_by(libc::WTERMSIG(status))
    }
    if libc::WIFEXITED(status) {
        std::process::exit(libc::WEXITSTATUS(status))
    }
    std::process::exit(SETUP_FAILED)
}

/// `/dev/null`, for reading and writing.
fn open_null() -> Option<OwnedFd> {
    File::options()
        .read(true)
        .write(true)
        .open("/dev/null")
        .ok()
        .map(OwnedFd::from)
}

/// Points stdin, stdout and stderr at `null` (`/dev/null`), so only the program holds
/// the gateway's pipes.
fn quiet_standard_streams(null: Option<OwnedFd>) {
    if let Some(null) = null {
        for target in 0..=2 {
            let _ = os::dup_onto(&null, target);
        }
    }
}

/// Pid 1 inside: set up the mounts, run the program, and hand the program's wait status
/// and the report to the jail outside.
fn init(spec: &JailSpec, hand_over: File, users: Users) -> ! {
    // A jail killed from outside takes its namespace with it (its init dies, and with it
    // every process inside).
    let _ = os::die_with_parent();
    if let Err(why) = mounts::set_up(spec) {
        setup_failed(hand_over, why)
    }
    let (start, limit_names) = match program_start(spec, users) {
        Ok(prepared) => prepared,
        Err(why) => setup_failed(hand_over, why),
    };
    // The program inherits the gateway's pipes as its stdio, the kept descriptor, and
    // nothing else: init's own are close-on-exec.
    let (program_pid, failed) = match start.start() {
        Ok(started) => started,
        Err(err) => setup_failed(hand_over, format!("starting the program: {err}")),
    };
    // What reached the group before the program existed waits, held, on init (the
    // program did not inherit it): pass it on. Anything later reaches the program in its
    // group directly (or, before its exec, waits blocked on it until it unblocks). A
    // terminal program is in a session of its own: init passes on everything, below.
    if !spec.terminal {
        for signal in os::pending_held() {
            os::send(program_pid, signal);
        }
    }
    if let Some(fd) = spec.keep_fd {
        os::close(fd);
    }
    // The jail's /dev is complete (and read-only) by now.
    quiet_standard_streams(open_null());
    let exec_error = failed
        .map(|(step, err)| start_failure(spec, &limit_names, step, &err))
        .unwrap_or_default();
    let status = if spec.terminal {
        os::wait_passing_hangups(program_pid)
    } else {
        loop {
            match os::wait(-1) {
                Ok((pid, status)) if pid == program_pid => break status,
                Ok(_) => continue, // an orphan, reaped
                Err(_) => break libc::SIGKILL,
            }
        }
    };
    // The program is gone: nothing it started outlives it. Every other process in the
    // namespace descends from init (an orphan is handed to init, or to a subreaper that
    // itself descends from init), so an init without children is alone there, and the
    // kill, which the kernel carries out by looking at every process of the host, is
    // spared.
    if !os::reap_ended_children_alone() {
        os::kill_namespace();
        while os::wait(-1).is_ok() {}
    }
    let mut report = scratch_report();
    if !exec_error.is_empty() {
        report.setup_failed = Some(exec_error);
    }
    hand_over_and_exit(hand_over, status, &report)
}

/// Hands a setup failure over as an exit with [`SETUP_FAILED`].
fn setup_failed(hand_over: File, why: String) -> ! {
    let report = JailReport {
        setup_failed: Some(why),
        ..JailReport::default()
    };
    hand_over_and_exit(hand_over, SETUP_FAILED << 8, &report)
}

/// Sends the wait status (4 bytes) and the report's text to the jail outside; exits.
fn hand_over_and_exit(mut hand_over: File, status: libc::c_int, report: &JailReport) -> ! {
    let mut message = status.to_ne_bytes().to_vec();
    message.extend_from_slice(report.render().as_bytes());
    let _ = hand_over.write_all(&message);
    std::process::exit(0)
}

/// How pid 2 inside starts: as the unprivileged user, with its limits and the
/// system-call filter, in the workspace (see [`os::ProgramStart::start`]). Prepared
/// here, in init, because the child shares init's memory until its exec. With it, the
/// name of each of its limits, in order.
fn program_start(
    spec: &JailSpec,
    users: Users,
) -> Result<(os::ProgramStart, Vec<RlimitName>), String> {
    let mut limits = Vec::new();
    let mut names = Vec::new();
    for &(name, value) in &spec.rlimits {
        // CPU: SIGXCPU at the limit, SIGKILL a second later (the gateway tells the two
        // apart from other kills by the CPU time used), as without a jail.
        let (resource, soft, hard) = match name {
            RlimitName::Cpu => (libc::RLIMIT_CPU, value, value.saturating_add(1)),
            RlimitName::FileSize => (libc::RLIMIT_FSIZE, value, value),
            RlimitName::OpenFiles => (libc::RLIMIT_NOFILE, value, value),
            // Processes are counted per user, and per user namespace: in the jail's own
            // one the sandbox user has only this jail's processes (and, when it is the
            // gateway's own uid, the jail and its init too: two more). As root, the
            // cgroup limits them instead.
            RlimitName::Processes => match users {
                Users::Host => continue,
                Users::Subordinate => (libc::RLIMIT_NPROC, value, value),
                Users::GatewaysOwn => {
                    let with_jail = value.saturating_add(2);
                    (libc::RLIMIT_NPROC, with_jail, with_jail)
                }
            },
        };
        names.push(name);
        limits.push((
            resource,
            libc::rlimit {
                rlim_cur: soft,
                rlim_max: hard,
            },
        ));
    }
    let command = os::ProgramStart::command(&spec.command, &spec.env)
        .map_err(|err| format!("could not start {}: {err}", program_name(spec)))?;
    os::ProgramStart::new(
        &spec.workspace,
        (spec.uid, spec.gid),
        users == Users::GatewaysOwn,
        limits,
        spec.nice,
        seccomp::filter(),
        command,
        spec.wait_for_go
            .as_ref()
            .map(|name| spec.workspace.join(name))
            .as_deref(),
        spec.terminal,
    )
    .map(|start| (start, names))
    .map_err(|err| format!("entering {}: {err}", spec.workspace.display()))
}

/// The program as the request named it, for messages.
fn program_name(spec: &JailSpec) -> String {
    spec.command
        .first()
        .map_or_else(String::new, |c| c.to_string_lossy().into_owned())
}

/// What the report says when the program's start failed at `step`.
fn start_failure(
    spec: &JailSpec,
    limit_names: &[RlimitName],
    step: os::StartStep,
    err: &io::Error,
) -> String {
    match step {
        os::StartStep::Directory => format!("entering {}: {err}", spec.workspace.display()),
        os::StartStep::Privileges => format!("dropping privileges: {err}"),
        os::StartStep::Limit(at) => match limit_names.get(at) {
            Some(name) => format!("setting the {name:?} limit: {err}"),
            None => format!("setting a limit: {err}"),
        },
        os::StartStep::Priority => format!("lowering the priority: {err}"),
        os::StartStep::Signals => format!("resetting signals: {err}"),
        os::StartStep::Filter => format!("installing the system-call filter: {err}"),
        os::StartStep::Go => format!("waiting for the warm start's go: {err}"),
        // Worded as a cold start's copy of the source (`mounts::workspace`).
        os::StartStep::Source => {
            let what = match &spec.wait_for_go {
                Some(name) => format!("writing {}", spec.workspace.join(name).display()),
                None => "writing the source".to_owned(),
            };
            sluice_gateway::jail::write_failure(&what, err)
        }
        os::StartStep::Exec => format!("could not start {}: {err}", program_name(spec)),
        os::StartStep::Terminal => format!("taking the terminal as the controlling one: {err}"),
    }
}

/// How full the scratch file system got and the largest file on it. The walk is bounded
/// in entries and in the bytes of paths it keeps, so a program that left a huge or deep
/// tree cannot make init use much memory (which its cgroup would count as the program's).
fn scratch_report() -> JailReport {
    let (scratch_used_bytes, scratch_full) = os::usage(Path::new("/tmp")).unwrap_or((0, false));
    let mut largest = 0;
    let mut examined = 0;
    // /tmp is the scratch file system in every layout (the workspace is on it too), and
    // its entries are examined without following links: a link the program planted
    // cannot point this root-owned walk elsewhere.
    let mut pending = vec![PathBuf::from("/tmp")];
    let mut pending_bytes = 0;
    while let Some(dir) = pending.pop() {
        pending_bytes -= dir.as_os_str().len().min(pending_bytes);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            examined += 1;
            if examined > MAX_FILES_EXAMINED {
                break;
            }
            match entry.metadata() {
                Ok(meta) if meta.is_dir() => {
                    let path = entry.path();
                    if pending_bytes + path.as_os_str().len() <= MAX_PENDING_PATH_BYTES {
                        pending_bytes += path.as_os_str().len();
                        pending.push(path);
                    }
                }
                Ok(meta) if meta.is_file() => largest = largest.max(meta.len()),
                _ => {}
            }
        }
    }
    JailReport {
        setup_failed: None,
        scratch_used_bytes,
        scratch_full,
        largest_file_bytes: largest,
    }
}

fn write_report(mut file: &File, report: &JailReport) {
    if let Err(err) = file.write_all(report.render().as_bytes()) {
        let _ = writeln!(
            io::stderr(),
            "sluice-jail: could not write its report: {err}"
        );
    }
}
