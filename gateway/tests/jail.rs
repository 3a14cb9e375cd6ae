//! `sluice-jail` as a program: what it says when started by hand with bad arguments,
//! and (where it can run: as root) that it hands back its program's end unchanged.
//! Being an integration test of this package also makes `cargo test` build the jail,
//! which the end-to-end suite's gateways find next to their test executables.

use sluice_gateway::jail::{JailReport, JailSpec, RlimitName};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The jail, with an empty environment as the gateway starts it.
fn jail() -> Command {
    let mut jail = Command::new(env!("CARGO_BIN_EXE_sluice-jail"));
    jail.env_clear();
    jail
}

#[test]
fn bad_arguments_are_explained_not_crashed_on() {
    let output = jail()
        .args([
            "--uid",
            "0",
            "--gid",
            "1",
            "--workspace",
            "/w",
            "--host-dir",
            "/w",
            "--",
            "/bin/true",
        ])
        .output()
        .expect("the jail runs");
    assert_eq!(output.status.code(), Some(125));
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(said.contains("never run as root"), "{said}");
    let output = jail().arg("--frobnicate").output().expect("the jail runs");
    assert_eq!(output.status.code(), Some(125));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--frobnicate"));
}

/// The jail's environment is the gateway's to set, and it sets none: a loader variable
/// there means someone else started it, and the jail stops before it does anything.
#[test]
fn the_jail_refuses_loader_variables_in_its_own_environment() {
    for name in ["LD_PRELOAD", "LD_AUDIT", "LD_LIBRARY_PATH"] {
        let output = jail()
            .env(name, "/nonexistent.so")
            .args(["--workspace", "/w", "--host-dir", "/w", "--", "/bin/true"])
            .output()
            .expect("the jail runs");
        assert_eq!(output.status.code(), Some(125), "{name}");
        let said = String::from_utf8_lossy(&output.stderr);
        assert!(
            said.contains(&format!("refusing to run with {name}")),
            "{said}"
        );
    }
}

/// A spec file is taken only from the jail's own user, and only once.
#[test]
#[allow(clippy::print_stderr)] // the skip reason is for the person reading the test run
fn a_spec_file_of_another_user_is_refused_and_a_read_one_is_gone() {
    use std::os::unix::fs::PermissionsExt as _;
    if !running_as_root() {
        eprintln!("skipped: the jail needs root here");
        return;
    }
    let dir = std::env::temp_dir().join(format!("sluice-jail-specfile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let _scratch = Scratch(dir.clone());
    std::fs::write(dir.join("main.sh"), "echo ran").expect("script");
    let spec = script_spec(&dir, "/bin/sh");
    let args = spec.write(&dir).expect("write the spec");
    let spec_file = dir.join(sluice_gateway::jail::SPEC_FILE);
    // Writable by others: refused, whoever owns it.
    std::fs::set_permissions(&spec_file, std::fs::Permissions::from_mode(0o666)).expect("chmod");
    let output = jail()
        .args(&args)
        .current_dir(&dir)
        .output()
        .expect("the jail runs");
    assert_eq!(output.status.code(), Some(125));
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(said.contains("not a spec file"), "{said}");
    std::fs::set_permissions(&spec_file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let (output, report) = run_spec(&spec);
    assert_eq!(succeeded(&output, report.as_ref()), "ran\n");
    assert!(!spec_file.exists(), "the jail removes its spec once read");
}

fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// A jail that runs `main.sh` of `dir` with `program`, as uid 60000, without network.
fn script_spec(dir: &Path, program: &str) -> JailSpec {
    JailSpec {
        host_dir: dir.to_path_buf(),
        source: Some("main.sh".into()),
        workspace: dir.to_path_buf(),
        scratch_bytes: 1 << 20,
        uid: 60_000,
        gid: 60_000,
        no_network: true,
        env: vec!["PATH=/usr/bin:/bin".into()],
        command: vec![program.into(), "main.sh".into()],
        ..JailSpec::default()
    }
}

/// A scratch directory, removed on drop.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn run_jailed(
    dir: &Path,
    script: &str,
    program: &str,
) -> (std::process::Output, Option<JailReport>) {
    std::fs::write(dir.join("main.sh"), script).expect("write the script");
    run_spec(&script_spec(dir, program))
}

/// Runs the jail (as this process's user) on `spec`, handed over in a spec file as the
/// gateway does; what it did and its report.
fn run_spec(spec: &JailSpec) -> (std::process::Output, Option<JailReport>) {
    let output = jail()
        .args(spec.write(&spec.host_dir).expect("write the spec"))
        .current_dir(&spec.host_dir)
        .stdin(Stdio::null())
        .output()
        .expect("the jail runs");
    (output, JailReport::read(&spec.host_dir))
}

#[test]
#[allow(clippy::print_stderr)] // the skip reason is for the person reading the test run
fn the_jail_ends_the_way_its_program_ended() {
    // The jail needs root to create namespaces.
    let root = running_as_root();
    if !root {
        eprintln!("skipped: the jail needs root");
        return;
    }
    let dir = std::env::temp_dir().join(format!("sluice-jail-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let _scratch = Scratch(dir.clone());
    let (output, report) = run_jailed(&dir, "echo out; echo err >&2; exit 3", "/bin/sh");
    assert_eq!(output.status.code(), Some(3));
    assert_eq!(String::from_utf8_lossy(&output.stdout), "out\n");
    assert_eq!(String::from_utf8_lossy(&output.stderr), "err\n");
    let report = report.expect("a report");
    assert_eq!(report.setup_failed, None);
    let (output, _) = run_jailed(&dir, "kill -USR1 $$", "/bin/sh");
    use std::os::unix::process::ExitStatusExt as _;
    assert_eq!(output.status.signal(), Some(10), "{:?}", output.status);
    let (output, report) = run_jailed(&dir, "", "/no/such/program");
    assert_eq!(output.status.code(), Some(125));
    let why = report
        .and_then(|r| r.setup_failed)
        .expect("a setup failure");
    assert!(why.contains("/no/such/program"), "{why}");
}

/// Runs `script` with `/bin/sh` in a jail started by uid 1000 (so the jail makes a user
/// namespace), with `rlimits`; `None` (and a skip line) where that cannot be done here.
#[allow(clippy::print_stderr)] // the skip reason is for the person reading the test run
fn run_rootless(
    name: &str,
    script: &str,
    rlimits: Vec<(RlimitName, u64)>,
) -> Option<(std::process::Output, Option<JailReport>)> {
    run_rootless_mapped(name, script, rlimits, None)
}

/// As [`run_rootless`], with the sandbox user mapped to the subordinate ids `map_to`.
#[allow(clippy::print_stderr)] // the skip reason is for the person reading the test run
fn run_rootless_mapped(
    name: &str,
    script: &str,
    rlimits: Vec<(RlimitName, u64)>,
    map_to: Option<(u32, u32)>,
) -> Option<(std::process::Output, Option<JailReport>)> {
    let setpriv = Path::new("/usr/bin/setpriv");
    if !running_as_root() || !setpriv.exists() {
        eprintln!("skipped: needs root and setpriv to become an ordinary user");
        return None;
    }
    let dir = std::env::temp_dir().join(format!("sluice-jail-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let _scratch = Scratch(dir.clone());
    std::os::unix::fs::chown(&dir, Some(1000), Some(1000)).expect("chown");
    std::fs::write(dir.join("main.sh"), script).expect("script");
    let spec = JailSpec {
        rlimits,
        map_to,
        ..script_spec(&dir, "/bin/sh")
    };
    let output = Command::new(setpriv)
        .args(["--reuid", "1000", "--regid", "1000", "--clear-groups", "--"])
        .arg(env!("CARGO_BIN_EXE_sluice-jail"))
        .args(spec.to_args())
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .stdin(Stdio::null())
        .output()
        .expect("the jail runs");
    let report = JailReport::read(&dir);
    Some((output, report))
}

/// The jail's stdout, once it is known to have ended with status 0 (otherwise the test
/// fails showing what it printed and reported).
fn succeeded(output: &std::process::Output, report: Option<&JailReport>) -> String {
    let said = String::from_utf8_lossy(&output.stdout).into_owned();
    assert_eq!(
        output.status.code(),
        Some(0),
        "{said} {:?} {report:?}",
        String::from_utf8_lossy(&output.stderr)
    );
    said
}

#[test]
fn without_root_the_jail_uses_a_user_namespace() {
    let script = "id -u; ls /proc | grep '^[0-9]' | sort -n | tail -1; grep CapEff /proc/self/status; touch /etc/x 2>&1; echo end";
    let Some((output, report)) = run_rootless("rootless", script, Vec::new()) else {
        return;
    };
    let said = succeeded(&output, report.as_ref());
    let lines: Vec<&str> = said.lines().collect();
    assert_eq!(lines[0], "60000", "the sandbox id inside: {said}");
    let highest: u32 = lines[1].parse().expect("a pid");
    assert!(highest < 10, "a fresh PID namespace numbers from 1: {said}");
    assert!(
        lines[2].ends_with("0000000000000000"),
        "no capabilities: {said}"
    );
    assert!(lines[3].contains("Read-only"), "{said}");
}

#[test]
fn without_root_the_process_limit_holds_in_the_jails_own_user_namespace() {
    let Some((started, said)) = forks_under_a_limit_of_8("nproc", None) else {
        return;
    };
    // The shell and seven others: the jail and its init are counted, not charged.
    assert_eq!(
        started, 7,
        "background processes with a limit of 8 (the shell is one): {said}"
    );
}

/// Forks in a rootless jail with a process limit of 8 until one fails; how many
/// background processes started, and what the jail printed. (dash gives up on the
/// script when a fork fails: the count is its last line.)
fn forks_under_a_limit_of_8(name: &str, map_to: Option<(u32, u32)>) -> Option<(u32, String)> {
    let script = "n=0; while [ $n -lt 100 ]; do sleep 5 & n=$((n+1)); echo $n; done";
    let (output, _) = run_rootless_mapped(name, script, vec![(RlimitName::Processes, 8)], map_to)?;
    let said = String::from_utf8_lossy(&output.stdout).into_owned();
    let started = said
        .lines()
        .last()
        .and_then(|line| line.parse().ok())
        .unwrap_or(0);
    Some((
        started,
        format!("{said} {}", String::from_utf8_lossy(&output.stderr)),
    ))
}

#[test]
#[allow(clippy::print_stderr)] // the skip reason is for the person reading the test run
fn a_workspace_under_a_hidden_directory_still_gets_its_scratch() {
    if !running_as_root() {
        eprintln!("skipped: the jail needs root (or a user namespace) here");
        return;
    }
    // A work root outside /tmp and /dev/shm, inside a hidden directory (as a rootless
    // gateway's home would be): the jail must make the path anew in the cover.
    let hidden = PathBuf::from(format!("/var/tmp/sluice-hidden-{}", std::process::id()));
    let dir = hidden.join("work").join("x1");
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let _scratch = Scratch(hidden.clone());
    std::fs::write(hidden.join("secret"), "s3cret").expect("a secret");
    std::fs::write(
        dir.join("main.sh"),
        "pwd; ls -A ..; cat ../../secret 2>&1; df -P . /tmp | tail -2 | awk '{print $6}'",
    )
    .expect("script");
    let spec = JailSpec {
        hide: vec![hidden.clone()],
        ..script_spec(&dir, "/bin/sh")
    };
    let (output, report) = run_spec(&spec);
    let said = succeeded(&output, report.as_ref());
    let lines: Vec<&str> = said.lines().collect();
    assert_eq!(lines[0], dir.display().to_string());
    assert_eq!(lines[1], "x1", "only its own workspace next to it: {said}");
    assert!(
        lines[2].contains("No such file"),
        "the hidden secret: {said}"
    );
}

#[test]
fn without_root_a_program_cannot_silence_the_report_through_its_init() {
    // In a rootless jail the program shares its uid with init and may change init's
    // limits; the report is written by the jail outside, which it cannot reach.
    let script =
        "prlimit --pid 1 --fsize=0:0 2>&1; head -c 2000000 /dev/zero > /tmp/fill; echo done";
    let Some((output, report)) = run_rootless("silence", script, Vec::new()) else {
        return;
    };
    let report = report.expect("a report");
    assert!(
        report.scratch_full,
        "{report:?} {}",
        String::from_utf8_lossy(&output.stdout)
    );
}

/// The subordinate ids the host grants uid 1000, or `None` (and a skip line).
#[allow(clippy::print_stderr)] // the skip reason is for the person reading the test run
fn subordinate_ids_of_1000() -> Option<(u32, u32)> {
    let ids = sluice_gateway::jail::subordinate_ids(1000);
    if ids.is_none() {
        eprintln!("skipped: uid 1000 has no /etc/subuid and /etc/subgid range, or newuidmap/newgidmap (uidmap) is missing; scripts/test.sh sets both up when run as root");
    }
    ids
}

#[test]
fn without_root_the_sandbox_user_becomes_a_subordinate_id_where_the_host_grants_one() {
    let Some(ids) = subordinate_ids_of_1000() else {
        return;
    };
    // A file only the gateway's user may read, outside the jail's scratch.
    let secret = PathBuf::from(format!("/var/tmp/sluice-secret-{}", std::process::id()));
    std::fs::write(&secret, "secret\n").expect("write the secret");
    std::os::unix::fs::chown(&secret, Some(1000), Some(1000)).expect("chown");
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let script = format!(
        "cat /proc/self/uid_map /proc/self/gid_map; id -u; id -g
cat {} 2>/dev/null || echo secret-refused
kill -0 1 2>/dev/null || echo init-refused",
        secret.display()
    );
    let ran = run_rootless_mapped("subids", &script, Vec::new(), Some(ids));
    let _ = std::fs::remove_file(&secret);
    let Some((output, report)) = ran else {
        return;
    };
    let said = succeeded(&output, report.as_ref());
    let words: Vec<Vec<&str>> = said
        .lines()
        .map(|line| line.split_whitespace().collect())
        .collect();
    let (uid, gid) = (ids.0.to_string(), ids.1.to_string());
    assert_eq!(
        words,
        [
            vec!["0", "1000", "1"],
            vec!["60000", uid.as_str(), "1"],
            vec!["0", "1000", "1"],
            vec!["60000", gid.as_str(), "1"],
            vec!["60000"],
            vec!["60000"],
            vec!["secret-refused"],
            vec!["init-refused"],
        ],
        "the jail is the gateway's user, the program a subordinate id that owns nothing of it"
    );
    // The process limit counts the program's own processes only (the jail and init are
    // another user).
    let Some((started, said)) = forks_under_a_limit_of_8("subids-nproc", Some(ids)) else {
        return;
    };
    assert_eq!(
        started, 7,
        "with a limit of 8, the shell and seven others: {said}"
    );
}

/// The jail and its init are not dumpable: in a rootless jail the program shares its uid
/// with init, and without this it could open init's `/proc/1/root` (the jail's files as
/// init sees them), `environ` and `mem`. (Entering the user namespace already made the
/// jail non-dumpable here; the jail now sets it in every mode, root's included, and this
/// keeps it so.)
#[test]
fn without_root_a_program_cannot_look_into_its_init() {
    let script = "for f in root/ environ mem; do \
        if ls -d /proc/1/$f/. >/dev/null 2>&1 || head -c1 /proc/1/$f >/dev/null 2>&1; \
        then echo $f=open; else echo $f=closed; fi; done";
    let Some((output, report)) = run_rootless("dumpable", script, Vec::new()) else {
        return;
    };
    let said = succeeded(&output, report.as_ref());
    assert_eq!(said, "root/=closed\nenviron=closed\nmem=closed\n", "{said}");
}

/// `--nice`: where no cpu cgroup gives a program a share below the gateway's, the jail
/// lowers the program's priority before it execs.
#[test]
#[allow(clippy::print_stderr)] // the skip reason is for the person reading the test run
fn the_program_takes_the_niceness_it_is_given() {
    if !running_as_root() {
        eprintln!("skipped: the jail needs root here");
        return;
    }
    let dir = std::env::temp_dir().join(format!("sluice-jail-nice-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let _scratch = Scratch(dir.clone());
    std::fs::write(dir.join("main.sh"), "nice").expect("script");
    let spec = JailSpec {
        nice: Some(10),
        ..script_spec(&dir, "/bin/sh")
    };
    let (output, report) = run_spec(&spec);
    assert_eq!(succeeded(&output, report.as_ref()), "10\n");
}

/// A helper process, killed and reaped on drop (a failed assertion included).
struct Helper(std::process::Child);

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The network namespace of process `pid`, as `/proc` names it (`net:[inode]`).
fn network_of(pid: &str) -> String {
    std::fs::read_link(format!("/proc/{pid}/ns/net"))
        .map(|link| link.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// A network namespace given to the jail (a descriptor of its parent's, as a root
/// gateway hands over one it made ahead of time) is the one its program runs in; one it
/// must not take (its parent's own, which is the host's, or a descriptor that is no
/// namespace at all) is refused, and the jail makes an empty one of its own instead.
#[test]
#[allow(clippy::print_stderr)] // the skip reason is for the person reading the test run
fn the_jail_enters_the_network_namespace_it_is_given_and_only_a_fresh_one() {
    use std::os::fd::AsRawFd as _;
    if !running_as_root() {
        eprintln!("skipped: the jail needs root");
        return;
    }
    // A namespace made beforehand, held by a helper process.
    let Some((holder, made)) = namespace_holder() else {
        return;
    };
    let holder_pid = holder.0.id().to_string();
    let host = network_of("self");
    let given = std::fs::File::open(format!("/proc/{holder_pid}/ns/net")).expect("open it");
    let own_host = std::fs::File::open("/proc/self/ns/net").expect("open the host's");
    let not_a_namespace = std::fs::File::open("/proc/self/status").expect("open a file");
    let dir = std::env::temp_dir().join(format!("sluice-jail-netns-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let _scratch = Scratch(dir.clone());
    std::fs::write(dir.join("main.sh"), "readlink /proc/self/ns/net").expect("the script");
    let inside = |fd: Option<i32>| -> String {
        let spec = JailSpec {
            network_fd: fd,
            ..script_spec(&dir, "/bin/sh")
        };
        let (output, report) = run_spec(&spec);
        succeeded(&output, report.as_ref()).trim().to_owned()
    };
    assert_eq!(
        inside(Some(given.as_raw_fd())),
        made,
        "the given one is entered"
    );
    for refused in [own_host.as_raw_fd(), not_a_namespace.as_raw_fd()] {
        let net = inside(Some(refused));
        assert!(
            !net.is_empty() && net != host && net != made,
            "a namespace of its own instead of descriptor {refused}: {net}"
        );
    }
}

/// Started with its standard streams closed (as a root program may be, by anyone who can
/// run it), the jail still ends the way its program ended and writes its report: without
/// std's runtime start (`#![no_main]`) nothing opens `/dev/null` on descriptors 0 to 2,
/// so the jail's own report file and hand-over pipe take those numbers, and pointing the
/// standard streams at `/dev/null` later closes them.
#[test]
#[allow(clippy::print_stderr)] // the skip reason is for the person reading the test run
fn started_without_standard_streams_the_jail_still_reports_its_program() {
    if !running_as_root() {
        eprintln!("skipped: the jail needs root");
        return;
    }
    let dir = std::env::temp_dir().join(format!("sluice-jail-nostdio-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let _scratch = Scratch(dir.clone());
    std::fs::write(dir.join("main.sh"), "exit 3").expect("the script");
    let spec = script_spec(&dir, "/bin/sh");
    let output = Command::new("/bin/sh")
        .env_clear()
        .arg("-c")
        .arg("exec \"$0\" \"$@\" <&- >&- 2>&-")
        .arg(env!("CARGO_BIN_EXE_sluice-jail"))
        .args(spec.write(&dir).expect("write the spec"))
        .current_dir(&dir)
        .output()
        .expect("the jail runs");
    let report = JailReport::read(&dir);
    assert_eq!(output.status.code(), Some(3), "{report:?}");
    let report = report.expect("a report");
    assert_eq!(report.setup_failed, None);
}

/// `setns` takes a pidfd as well as a namespace: given a descriptor of its parent's that
/// is a process (the gateway holds pidfds of its children, another jail's among them),
/// the jail must not join that process's network namespace (another execution's, or the
/// host's) but make its own. The jail's checks (its own namespace's inode, `setns` with
/// `CLONE_NEWNET`) let a pidfd through (second review): a pidfd's inode never matches,
/// and `setns` joins the process's namespaces; it now asks `NS_GET_NSTYPE`.
#[test]
#[allow(clippy::print_stderr)] // the skip reason is for the person reading the test run
fn a_pidfd_given_as_the_network_namespace_is_refused() {
    use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
    if !running_as_root() {
        eprintln!("skipped: the jail needs root");
        return;
    }
    // Another process in a network namespace of its own, as another jail would be.
    let Some((holder, theirs)) = namespace_holder() else {
        return;
    };
    let host = network_of("self");
    let pid = libc::pid_t::try_from(holder.0.id()).expect("a pid");
    #[allow(unsafe_code)] // pidfd_open has no wrapper in std; it returns a new descriptor
    let pidfd = unsafe {
        let raw = libc::syscall(libc::SYS_pidfd_open, pid, 0);
        assert!(raw >= 0, "pidfd_open: {}", std::io::Error::last_os_error());
        OwnedFd::from_raw_fd(i32::try_from(raw).expect("a descriptor"))
    };
    let dir = std::env::temp_dir().join(format!("sluice-jail-pidfd-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let _scratch = Scratch(dir.clone());
    std::fs::write(dir.join("main.sh"), "readlink /proc/self/ns/net").expect("the script");
    let spec = JailSpec {
        network_fd: Some(pidfd.as_raw_fd()),
        ..script_spec(&dir, "/bin/sh")
    };
    let (output, report) = run_spec(&spec);
    let net = succeeded(&output, report.as_ref()).trim().to_owned();
    assert!(
        !net.is_empty() && net != host && net != theirs,
        "the program runs in another process's network namespace ({net})"
    );
}

/// A helper process (`unshare --net sleep`) holding a network namespace of its own, and
/// that namespace, once it is made (the helper has exec'd sleep); `None`, saying why,
/// where `unshare` cannot run.
#[allow(clippy::print_stderr)] // the skip reason is for the person reading the test run
fn namespace_holder() -> Option<(Helper, String)> {
    let holder = match Command::new("unshare")
        .args(["--net", "sleep", "600"])
        .stdin(Stdio::null())
        .spawn()
    {
        Ok(child) => Helper(child),
        Err(err) => {
            eprintln!("skipped: no unshare to make a network namespace with: {err}");
            return None;
        }
    };
    let holder_pid = holder.0.id().to_string();
    let host = network_of("self");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let comm = std::fs::read_to_string(format!("/proc/{holder_pid}/comm")).unwrap_or_default();
        let net = network_of(&holder_pid);
        if comm.trim() == "sleep" && !net.is_empty() && net != host {
            return Some((holder, net));
        }
        assert!(
            std::time::Instant::now() < deadline,
            "unshare --net did not start"
        );
        std::thread::yield_now();
    }
}

/// A new pseudo-terminal: (control side, program side).
#[allow(unsafe_code)] // openpty has no wrapper in std; it fills two descriptors
fn terminal_pair() -> (std::fs::File, std::fs::File) {
    use std::os::fd::FromRawFd as _;
    let (mut control, mut side) = (-1, -1);
    // SAFETY: openpty writes two descriptors into the locals; the name, termios and
    // window-size arguments may be null.
    let rc = unsafe {
        libc::openpty(
            &mut control,
            &mut side,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: openpty just returned these descriptors, owned by nobody else.
    unsafe {
        (
            std::fs::File::from_raw_fd(control),
            std::fs::File::from_raw_fd(side),
        )
    }
}

/// Runs `script` with `/bin/sh` on a terminal in a jail (`--terminal`), as root or, with
/// `user`, as uid 1000 (a user namespace; `map_to`: subordinate ids); its exit code and
/// what the terminal showed. `None` (and a skip line) where that cannot be done here.
#[allow(clippy::print_stderr)] // the skip reason is for the person reading the test run
fn run_on_terminal(
    name: &str,
    script: &str,
    user: bool,
    map_to: Option<(u32, u32)>,
) -> Option<(Option<i32>, String)> {
    use std::io::Read as _;
    let setpriv = Path::new("/usr/bin/setpriv");
    if !running_as_root() || (user && !setpriv.exists()) {
        eprintln!("skipped: needs root (and setpriv to become an ordinary user)");
        return None;
    }
    let dir = std::env::temp_dir().join(format!("sluice-jail-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let _scratch = Scratch(dir.clone());
    if user {
        std::os::unix::fs::chown(&dir, Some(1000), Some(1000)).expect("chown");
    }
    std::fs::write(dir.join("main.sh"), script).expect("script");
    let spec = JailSpec {
        terminal: true,
        map_to,
        ..script_spec(&dir, "/bin/sh")
    };
    let mut command = if user {
        let mut command = Command::new(setpriv);
        command
            .args(["--reuid", "1000", "--regid", "1000", "--clear-groups", "--"])
            .arg(env!("CARGO_BIN_EXE_sluice-jail"))
            .env_clear()
            .env("PATH", "/usr/bin:/bin");
        command
    } else {
        jail()
    };
    let (mut control, side) = terminal_pair();
    let clone = || side.try_clone().expect("dup the terminal");
    let mut child = command
        .args(spec.to_args())
        .stdin(clone())
        .stdout(clone())
        .stderr(clone())
        .spawn()
        .expect("the jail runs");
    // The command keeps its copies of the program side until it is dropped.
    drop(command);
    drop(side);
    let mut shown = Vec::new();
    // Until every program-side descriptor is closed: EIO, the terminal's end of file.
    let _ = control.read_to_end(&mut shown);
    let status = child.wait().expect("wait for the jail");
    Some((status.code(), String::from_utf8_lossy(&shown).into_owned()))
}

/// The script of the terminal tests: a terminal on stdio, named `/dev/console`, the
/// shell leading a session of its own (field 6 of its stat is its session id), and its
/// own exit status.
const ON_A_TERMINAL: &str = "test -t 0 && test -t 1 && echo isatty\ntty\n\
                             [ \"$(cut -d' ' -f6 /proc/$$/stat)\" = \"$$\" ] && echo leader\n\
                             exit 7\n";

fn assert_on_a_terminal(outcome: Option<(Option<i32>, String)>) {
    let Some((code, shown)) = outcome else {
        return;
    };
    assert_eq!(code, Some(7), "{shown:?}");
    assert_eq!(shown, "isatty\r\n/dev/console\r\nleader\r\n", "{shown:?}");
}

#[test]
fn a_terminal_program_leads_a_session_on_its_terminal_as_root() {
    assert_on_a_terminal(run_on_terminal("tty-root", ON_A_TERMINAL, false, None));
}

#[test]
fn a_terminal_program_leads_a_session_on_its_terminal_without_root() {
    assert_on_a_terminal(run_on_terminal("tty-rootless", ON_A_TERMINAL, true, None));
}

#[test]
fn a_terminal_program_leads_a_session_on_its_terminal_as_a_subordinate_id() {
    let Some(ids) = subordinate_ids_of_1000() else {
        return;
    };
    assert_on_a_terminal(run_on_terminal(
        "tty-mapped",
        ON_A_TERMINAL,
        true,
        Some(ids),
    ));
}

/// What the jail's user database says, seen from its program: the sandbox user's name
/// and home, the names the file lists, whether the program can write it.
const WHO_AM_I: &str =
    "whoami; getent passwd $(id -u) | cut -d: -f6; cut -d: -f1 /etc/passwd | tr '\\n' ' '; echo; \
                        cut -d: -f1 /etc/group | tr '\\n' ' '; echo; \
                        (echo x >> /etc/passwd) 2>/dev/null && echo writable || echo read-only";

fn check_user_database(output: &std::process::Output, home: &Path) {
    let out = String::from_utf8_lossy(&output.stdout);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        [
            "sluice",
            home.to_str().unwrap_or_default(),
            "root sluice nobody ",
            "root sluice nogroup ",
            "read-only"
        ],
        "{out:?} {:?}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
#[allow(clippy::print_stderr)] // the skip reason is for the person reading the test run
fn the_program_has_a_name_and_sees_none_of_the_hosts_users() {
    if !running_as_root() {
        eprintln!("skipped: the jail needs root");
        return;
    }
    let dir =
        std::env::temp_dir().join(format!("sluice-jail-user-database-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let _scratch = Scratch(dir.clone());
    let (output, _) = run_jailed(&dir, WHO_AM_I, "/bin/sh");
    check_user_database(&output, &dir);
    // Without root, in the jail's own user namespace, the same.
    if let Some((output, _)) = run_rootless("users", WHO_AM_I, Vec::new()) {
        let home = String::from_utf8_lossy(&output.stdout)
            .lines()
            .nth(1)
            .map(std::path::PathBuf::from)
            .unwrap_or_default();
        assert!(home.is_absolute(), "{output:?}");
        check_user_database(&output, &home);
    }
}
