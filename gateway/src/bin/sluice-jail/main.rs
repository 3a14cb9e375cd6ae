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
//!   system-call filter (`seccomp.rs`), and execs.
//!
//! What the mounts look like inside: `/` read-only and nosuid (recursively), a fresh
//! `/proc` for the new PID namespace, one tmpfs of `--scratch-bytes` serving `/tmp`,
//! `/dev/shm` and the workspace (the same path as outside), and `--expose` directories
//! bound read-only where an unreadable ancestor (like `/root`) would hide them.

mod os;
mod seccomp;

use os::Forked;
use sluice_gateway::jail::{JailReport, JailSpec, RlimitName, REPORT_FILE};
use std::collections::HashSet;
use std::fs::File;
use std::io::{self, Read as _, Write as _};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

/// Exit code when the jail itself cannot run (bad arguments, no namespaces); the
/// gateway reads the reason from the report when there is one.
const SETUP_FAILED: i32 = 125;

/// Largest source file copied into the workspace.
const MAX_SOURCE_BYTES: u64 = 64 << 20;

/// Files examined when looking for the largest file: a program that made millions of
/// files is not worth a long walk.
const MAX_FILES_EXAMINED: usize = 100_000;

fn main() {
    let spec = match JailSpec::parse(std::env::args_os().skip(1)) {
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
    let fail = |what: &str, err: io::Error| -> ! {
        write_report(
            &report,
            &JailReport {
                setup_failed: Some(format!("{what}: {err}")),
                ..JailReport::default()
            },
        );
        std::process::exit(SETUP_FAILED)
    };
    // Into the execution's v2 cgroup before anything else happens, so everything the
    // jail starts is counted, limited and killed with it.
    for dir in &spec.cgroups {
        if let Err(err) = std::fs::write(dir.join("cgroup.procs"), "0") {
            fail(&format!("joining the cgroup {}", dir.display()), err);
        }
    }
    // A mirrored SIGSEGV must not write a core file.
    let _ = os::set_rlimit(libc::RLIMIT_CORE, 0, 0);
    if let Err(err) = os::hold_signals() {
        fail("blocking signals", err);
    }
    let (status_read, status_write) = os::pipe().unwrap_or_else(|err| fail("pipe", err));
    let mut namespaces =
        libc::CLONE_NEWNS | libc::CLONE_NEWPID | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS;
    if spec.no_network {
        namespaces |= libc::CLONE_NEWNET;
    }
    // Without root, a user namespace makes the rest possible: the sandbox ids inside
    // map to the gateway's own outside, and no other id exists there.
    let (outer_uid, outer_gid) = os::effective_ids();
    let rootless = outer_uid != 0;
    if rootless {
        namespaces |= libc::CLONE_NEWUSER;
    }
    if let Err(err) = os::unshare(namespaces) {
        fail("creating namespaces", err);
    }
    if rootless {
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
    match os::fork() {
        Err(err) => fail("starting init", err),
        Ok(Forked::Child) => {
            drop(status_read);
            init(spec, &report, status_write, rootless)
        }
        Ok(Forked::Parent(init_pid)) => {
            drop(status_write);
            if let Some(fd) = spec.keep_fd {
                os::close(fd);
            }
            quiet_standard_streams();
            let mut status = [0u8; 4];
            let reported = File::from(status_read).read_exact(&mut status).is_ok();
            let init_end = os::wait(init_pid).map(|(_, status)| status);
            let status = if reported {
                i32::from_ne_bytes(status)
            } else {
                // init died before the program ended (killed from outside): end as it did.
                init_end.unwrap_or(libc::SIGKILL)
            };
            mirror(status)
        }
    }
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

/// Points stdin, stdout and stderr at /dev/null, so only the program holds the
/// gateway's pipes.
fn quiet_standard_streams() {
    if let Ok(null) = File::options().read(true).write(true).open("/dev/null") {
        let null = OwnedFd::from(null);
        for target in 0..=2 {
            let _ = os::dup_onto(&null, target);
        }
    }
}

/// Pid 1 inside: set up the mounts, run the program, report, hand over its status.
fn init(spec: &JailSpec, report_file: &File, status_write: OwnedFd, rootless: bool) -> ! {
    // A jail killed from outside takes its namespace with it (its init dies, and with it
    // every process inside).
    let _ = os::die_with_parent();
    if let Err(why) = set_up(spec) {
        write_report(
            report_file,
            &JailReport {
                setup_failed: Some(why),
                ..JailReport::default()
            },
        );
        std::process::exit(SETUP_FAILED)
    }
    // Told by the program's side of a close-on-exec pipe whether exec worked.
    let (exec_read, exec_write) = match os::pipe() {
        Ok(pair) => pair,
        Err(err) => fail_init(report_file, &format!("pipe: {err}")),
    };
    let program_pid = match os::fork() {
        Err(err) => fail_init(report_file, &format!("starting the program: {err}")),
        Ok(Forked::Child) => {
            drop(exec_read);
            start_program(spec, exec_write, rootless)
        }
        Ok(Forked::Parent(pid)) => pid,
    };
    drop(exec_write);
    if let Some(fd) = spec.keep_fd {
        os::close(fd);
    }
    quiet_standard_streams();
    let mut exec_error = String::new();
    let _ = File::from(exec_read).read_to_string(&mut exec_error);
    let status = loop {
        match os::wait(-1) {
            Ok((pid, status)) if pid == program_pid => break status,
            Ok(_) => continue, // an orphan, reaped
            Err(_) => break libc::SIGKILL,
        }
    };
    // The program is gone: nothing it started outlives it.
    os::kill_namespace();
    while os::wait(-1).is_ok() {}
    let mut report = scratch_report(spec);
    if !exec_error.is_empty() {
        report.setup_failed = Some(exec_error);
    }
    write_report(report_file, &report);
    let _ = File::from(status_write).write_all(&status.to_ne_bytes());
    std::process::exit(0)
}

fn fail_init(report_file: &File, why: &str) -> ! {
    write_report(
        report_file,
        &JailReport {
            setup_failed: Some(why.to_owned()),
            ..JailReport::default()
        },
    );
    std::process::exit(SETUP_FAILED)
}

/// Pid 2 inside: become the unprivileged user, take the limits, exec. Only a failed
/// exec returns, and says why on the pipe.
fn start_program(spec: &JailSpec, exec_write: OwnedFd, rootless: bool) -> ! {
    let mut pipe = File::from(exec_write);
    let mut filter = seccomp::filter();
    let result = (|| -> Result<io::Error, String> {
        std::env::set_current_dir(&spec.workspace)
            .map_err(|err| format!("entering {}: {err}", spec.workspace.display()))?;
        os::drop_privileges(spec.uid, spec.gid, rootless)
            .map_err(|err| format!("dropping privileges: {err}"))?;
        for &(name, value) in &spec.rlimits {
            // CPU: SIGXCPU at the limit, SIGKILL a second later (the gateway tells the
            // two apart from other kills by the CPU time used), as without a jail.
            let (resource, soft, hard) = match name {
                RlimitName::Cpu => (libc::RLIMIT_CPU, value, value.saturating_add(1)),
                RlimitName::FileSize => (libc::RLIMIT_FSIZE, value, value),
                RlimitName::OpenFiles => (libc::RLIMIT_NOFILE, value, value),
            };
            os::set_rlimit(resource, soft, hard)
                .map_err(|err| format!("setting the {name:?} limit: {err}"))?;
        }
        os::reset_signals().map_err(|err| format!("resetting signals: {err}"))?;
        // Last: from here on the denied calls fail, in the jail's code too.
        os::install_filter(&mut filter)
            .map_err(|err| format!("installing the system-call filter: {err}"))?;
        Ok(os::exec(&spec.command))
    })();
    let why = match result {
        Ok(exec_error) => format!(
            "could not start {}: {exec_error}",
            spec.command
                .first()
                .map_or_else(String::new, |c| c.to_string_lossy().into_owned())
        ),
        Err(why) => why,
    };
    let _ = pipe.write_all(why.as_bytes());
    std::process::exit(SETUP_FAILED)
}

/// The mounts and names of the sandbox, made by init before the program starts.
fn set_up(spec: &JailSpec) -> Result<(), String> {
    let err = |what: String| move |e: io::Error| format!("{what}: {e}");
    let source = match &spec.source {
        Some(name) => Some(
            read_source(&spec.host_dir.join(name))
                .map_err(err(format!("reading {}", name.to_string_lossy())))?,
        ),
        None => None,
    };
    // Nothing done here reaches the host's mount table.
    os::mount(
        "none",
        Path::new("/"),
        None,
        libc::MS_REC | libc::MS_PRIVATE,
        None,
    )
    .map_err(err("making mounts private".into()))?;
    // Copies of the exposed trees, taken before anything covers their ancestors.
    let exposed = spec
        .expose
        .iter()
        .map(|dir| {
            let tree = os::clone_tree(dir).map_err(err(format!("cloning {}", dir.display())))?;
            os::set_clone_attributes(
                &tree,
                os::MOUNT_ATTR_RDONLY | os::MOUNT_ATTR_NOSUID | os::MOUNT_ATTR_NODEV,
            )
            .map_err(err(format!("making {} read-only", dir.display())))?;
            Ok((dir, tree))
        })
        .collect::<Result<Vec<_>, String>>()?;
    os::set_tree_attributes(
        Path::new("/"),
        os::MOUNT_ATTR_RDONLY | os::MOUNT_ATTR_NOSUID,
    )
    .map_err(err("making the system read-only".into()))?;
    let nosuid_nodev = libc::MS_NOSUID | libc::MS_NODEV;
    os::mount(
        "proc",
        Path::new("/proc"),
        Some("proc"),
        nosuid_nodev | libc::MS_NOEXEC,
        None,
    )
    .map_err(err("mounting /proc".into()))?;
    let scratch = format!("size={},mode=1777", spec.scratch_bytes.max(4096));
    os::mount(
        "tmpfs",
        Path::new("/tmp"),
        Some("tmpfs"),
        nosuid_nodev,
        Some(&scratch),
    )
    .map_err(err("mounting /tmp".into()))?;
    if Path::new("/dev/shm").is_dir() {
        os::mount("/tmp", Path::new("/dev/shm"), None, libc::MS_BIND, None)
            .map_err(err("mounting /dev/shm".into()))?;
    }
    // The workspace keeps its outside path. Under /tmp or /dev/shm it is on the scratch
    // file system already; elsewhere its parent gets a scratch tmpfs of its own, which
    // also hides the other executions' directories.
    let on_scratch = spec.workspace.starts_with("/tmp") || spec.workspace.starts_with("/dev/shm");
    if !on_scratch {
        let parent = spec.workspace.parent().unwrap_or(Path::new("/"));
        os::mount("tmpfs", parent, Some("tmpfs"), nosuid_nodev, Some(&scratch)).map_err(err(
            format!("mounting a workspace file system on {}", parent.display()),
        ))?;
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(&spec.workspace)
        .map_err(err(format!("creating {}", spec.workspace.display())))?;
    std::os::unix::fs::chown(&spec.workspace, Some(spec.uid), Some(spec.gid))
        .map_err(err("handing the workspace to the sandbox user".into()))?;
    std::fs::set_permissions(&spec.workspace, std::fs::Permissions::from_mode(0o700))
        .map_err(err("protecting the workspace".into()))?;
    if let (Some(name), Some(code)) = (&spec.source, source) {
        let path = spec.workspace.join(name);
        let mut file = File::options()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(err(format!("writing {}", path.display())))?;
        file.write_all(&code)
            .map_err(err(format!("writing {}", path.display())))?;
        std::os::unix::fs::chown(&path, Some(spec.uid), Some(spec.gid))
            .map_err(err("handing the source to the sandbox user".into()))?;
    }
    expose(exposed)?;
    os::set_hostname("sluice").map_err(err("setting the host name".into()))?;
    Ok(())
}

/// Binds each exposed tree back at its own path, after covering the highest ancestor the
/// sandbox user cannot enter with an empty, read-only-to-them tmpfs.
fn expose(exposed: Vec<(&PathBuf, OwnedFd)>) -> Result<(), String> {
    let mut covered = HashSet::new();
    for (dir, tree) in exposed {
        if let Some(closed) = highest_closed_ancestor(dir) {
            if covered.insert(closed.clone()) {
                os::mount(
                    "tmpfs",
                    &closed,
                    Some("tmpfs"),
                    libc::MS_NOSUID | libc::MS_NODEV,
                    Some("size=65536,mode=0755"),
                )
                .map_err(|e| format!("covering {}: {e}", closed.display()))?;
            }
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(dir)
                .map_err(|e| format!("creating {}: {e}", dir.display()))?;
        }
        os::attach_tree(&tree, dir).map_err(|e| format!("binding {}: {e}", dir.display()))?;
    }
    Ok(())
}

/// The highest ancestor of `dir` (itself included) that others may not enter, if any.
fn highest_closed_ancestor(dir: &Path) -> Option<PathBuf> {
    let mut ancestors: Vec<&Path> = dir.ancestors().filter(|a| a.parent().is_some()).collect();
    ancestors.reverse();
    ancestors.into_iter().find_map(|ancestor| {
        let mode = std::fs::metadata(ancestor).ok()?.permissions().mode();
        (mode & 0o001 == 0).then(|| ancestor.to_path_buf())
    })
}

fn read_source(path: &Path) -> io::Result<Vec<u8>> {
    let mut code = Vec::new();
    File::open(path)?
        .take(MAX_SOURCE_BYTES)
        .read_to_end(&mut code)?;
    Ok(code)
}

/// How full the scratch file system got and the largest file on it.
fn scratch_report(spec: &JailSpec) -> JailReport {
    let (scratch_used_bytes, scratch_full) = os::usage(Path::new("/tmp")).unwrap_or((0, false));
    let mut largest = 0;
    let mut examined = 0;
    let mut pending = vec![PathBuf::from("/tmp"), spec.workspace.clone()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            examined += 1;
            if examined > MAX_FILES_EXAMINED {
                break;
            }
            match entry.metadata() {
                Ok(meta) if meta.is_dir() => pending.push(entry.path()),
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
