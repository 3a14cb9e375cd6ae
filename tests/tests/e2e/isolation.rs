//! Escape attempts against the namespace jail (`--isolation namespaces`): who a program
//! runs as, what it can see and write, whom it can signal, what of the gateway's
//! environment reaches it, and the workspace's size limit. Each test needs the jail; on a
//! host where it cannot run (no root, no `sluice-jail` built) the test says why and is
//! skipped (see `sluice doctor`).

use anyhow::{ensure, Context as _, Result};
use sluice_gateway::{Config, Isolation};
use sluice_protocol::{EventKind, ExecuteRequest, LimitKind, Limits};
use sluice_tests::{assert_stream_ok, request, run, skip, TestGateway};

/// False (and a line on stderr saying why) when this host cannot run the jail.
#[allow(clippy::print_stderr)] // the skip reason is for the person reading the test run
pub(crate) fn jail_available() -> bool {
    match sluice_tests::host_report().namespaces {
        Ok(_) => true,
        Err(why) => {
            skip(format!(
                "no namespace jail on this host ({why}; see `sluice doctor`)"
            ));
            false
        }
    }
}

/// A gateway that refuses to start without the jail, so these tests never pass by
/// running unjailed.
pub(crate) async fn jailed_gateway() -> TestGateway {
    TestGateway::spawn_with(Config {
        isolation: Isolation::Namespaces,
        ..Config::default()
    })
    .await
}

fn with_limits(request: ExecuteRequest, limits: Limits) -> ExecuteRequest {
    ExecuteRequest { limits, ..request }
}

/// Runs a Python program that prints `name=value` lines and returns them.
async fn facts(gateway: &TestGateway, code: &str) -> Result<Vec<(String, String)>> {
    let client = gateway.client().await?;
    let outcome = run(&client, request("facts", "python", code)).await?;
    assert_stream_ok(&outcome.events);
    ensure!(
        outcome.terminal.exit_code == Some(0),
        "the probe program failed: {:?}\nstdout: {}\nstderr: {}",
        outcome.terminal,
        outcome.stdout,
        outcome.stderr
    );
    client.close().await?;
    Ok(outcome
        .stdout
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect())
}

fn fact<'a>(facts: &'a [(String, String)], name: &str) -> Result<&'a str> {
    facts
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .with_context(|| format!("the program did not report {name}: {facts:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_program_runs_unprivileged_and_sees_only_its_own_processes() -> Result<()> {
    if !jail_available() {
        return Ok(());
    }
    let gateway = jailed_gateway().await;
    let gateway_pid = std::process::id();
    let code = format!(
        r#"import os, signal
print("uid=%d" % os.getuid())
print("gid=%d" % os.getgid())
print("pids=%s" % ",".join(sorted(p for p in os.listdir("/proc") if p.isdigit())))
print("gateway_visible=%s" % os.path.exists("/proc/{gateway_pid}"))
print("hostname=%s" % os.uname().nodename)
for target in (1, {gateway_pid}):
    try:
        os.kill(target, signal.SIGKILL)
        print("kill_%d=sent" % target)
    except OSError as err:
        print("kill_%d=%s" % (target, type(err).__name__))
"#
    );
    let facts = facts(&gateway, &code).await?;
    assert_ne!(fact(&facts, "uid")?, "0", "runs as root");
    assert_ne!(fact(&facts, "gid")?, "0", "runs in group root");
    assert_eq!(fact(&facts, "gateway_visible")?, "False");
    let pids: Vec<&str> = fact(&facts, "pids")?.split(',').collect();
    assert!(
        pids.len() <= 3,
        "a fresh PID namespace holds the jail's init and the program: {pids:?}"
    );
    assert_eq!(fact(&facts, "hostname")?, "sluice");
    assert_eq!(fact(&facts, "kill_1")?, "PermissionError");
    // The gateway's pid means nothing (or another jailed process) inside.
    assert_ne!(fact(&facts, &format!("kill_{gateway_pid}"))?, "sent");
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_program_writes_only_its_workspace_and_tmp() -> Result<()> {
    if !jail_available() {
        return Ok(());
    }
    let gateway = jailed_gateway().await;
    let code = r#"import os
def attempt(name, path):
    try:
        with open(path, "w") as f:
            f.write("x")
        print("%s=written" % name)
    except OSError as err:
        print("%s=%s" % (name, type(err).__name__))
attempt("workspace", "here.txt")
attempt("tmp", "/tmp/t.txt")
attempt("shm", "/dev/shm/s.txt")
attempt("etc", "/etc/sluice-escape")
attempt("usr", "/usr/sluice-escape")
attempt("root", "/root/sluice-escape")
attempt("var_tmp", "/var/tmp/sluice-escape")
print("cwd=%s" % os.getcwd())
print("others=%s" % ",".join(sorted(os.listdir(os.path.dirname(os.getcwd())))))
"#;
    let facts = facts(&gateway, code).await?;
    for writable in ["workspace", "tmp", "shm"] {
        assert_eq!(fact(&facts, writable)?, "written", "{writable}");
    }
    for closed in ["etc", "usr", "root", "var_tmp"] {
        assert_ne!(fact(&facts, closed)?, "written", "{closed} is writable");
    }
    for escaped in [
        "/etc/sluice-escape",
        "/usr/sluice-escape",
        "/var/tmp/sluice-escape",
    ] {
        assert!(!std::path::Path::new(escaped).exists(), "{escaped} exists");
    }
    // No other execution's directory is visible next to this one's.
    let cwd = fact(&facts, "cwd")?;
    let own = cwd.rsplit('/').next().unwrap_or_default();
    assert_eq!(fact(&facts, "others")?, own);
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_of_the_gateways_environment_reaches_a_program() -> Result<()> {
    if !jail_available() {
        return Ok(());
    }
    let gateway = jailed_gateway().await;
    let code = "import os\nfor k, v in os.environ.items():\n    print('%s=%s' % (k, v))\n";
    let facts = facts(&gateway, code).await?;
    // What the gateway gives every program, and what the python runtime sets itself.
    let given = ["PATH", "LANG", "HOME", "TMPDIR", "PWD", "LC_CTYPE"];
    let runtime_own: Vec<String> = sluice_gateway::RuntimeSpec::defaults()
        .into_iter()
        .filter(|spec| spec.name == "python")
        .flat_map(|spec| spec.env.into_iter().map(|(k, _)| k))
        .collect();
    for (name, value) in std::env::vars() {
        if given.contains(&name.as_str()) || runtime_own.contains(&name) {
            continue;
        }
        assert!(
            !facts.iter().any(|(k, _)| *k == name),
            "the gateway's {name} reached the program"
        );
        if value.len() >= 8 {
            assert!(
                !facts.iter().any(|(_, v)| *v == value),
                "the value of the gateway's {name} reached the program"
            );
        }
    }
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filling_the_workspace_ends_with_resource_limit_workspace() -> Result<()> {
    if !jail_available() {
        return Ok(());
    }
    let gateway = jailed_gateway().await;
    let client = gateway.client().await?;
    // 32 MiB in 1 MiB files (none near the file-size limit) into an 8 MiB workspace.
    let fill = "import os\nfor i in range(32):\n    with open('f%d' % i, 'wb') as f:\n        f.write(b'x' * (1 << 20))\nprint('all written')";
    let outcome = run(
        &client,
        with_limits(
            request("fill", "python", fill),
            Limits {
                workspace_bytes: Some(8 << 20),
                ..Limits::default()
            },
        ),
    )
    .await?;
    assert_stream_ok(&outcome.events);
    assert_eq!(
        (outcome.kind(), outcome.limit()),
        (EventKind::ResourceLimit, Some(LimitKind::Workspace)),
        "{:?} stderr: {}",
        outcome.terminal,
        outcome.stderr
    );
    assert_eq!(outcome.terminal.limit_value, Some(8 << 20));
    let observed = outcome
        .terminal
        .limit_observed
        .context("no observed usage")?;
    assert!(
        observed > 7 << 20 && observed <= 9 << 20,
        "observed {observed}"
    );
    assert!(!outcome.stdout.contains("all written"));
    // A program well inside its workspace completes normally.
    let small = "with open('/tmp/small', 'wb') as f:\n    f.write(b'x' * 1000)\nprint('ok')";
    let outcome = run(&client, request("small", "python", small)).await?;
    assert_eq!(
        outcome.kind(),
        EventKind::Completed,
        "{:?}",
        outcome.terminal
    );
    assert_eq!(outcome.stdout, "ok\n");
    client.close().await?;
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_big_file_in_tmp_ends_with_resource_limit_file_size() -> Result<()> {
    if !jail_available() {
        return Ok(());
    }
    let gateway = jailed_gateway().await;
    let client = gateway.client().await?;
    // Python ignores SIGXFSZ; the write fails with EFBIG and the jail's init sees the file.
    let big = "with open('/tmp/big', 'wb') as f:\n    for _ in range(100):\n        f.write(b'x' * (1 << 20))";
    let outcome = run(
        &client,
        with_limits(
            request("big", "python", big),
            Limits {
                file_size_bytes: Some(10 << 20),
                workspace_bytes: Some(64 << 20),
                ..Limits::default()
            },
        ),
    )
    .await?;
    assert_eq!(
        (outcome.kind(), outcome.limit()),
        (EventKind::ResourceLimit, Some(LimitKind::FileSize)),
        "{:?}",
        outcome.terminal
    );
    assert_eq!(outcome.terminal.limit_observed, Some(10 << 20));
    client.close().await?;
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jailed_programs_exit_code_and_signal_reach_the_client() -> Result<()> {
    if !jail_available() {
        return Ok(());
    }
    let gateway = jailed_gateway().await;
    let client = gateway.client().await?;
    // The jail ends the way its program did: same signal, same exit code.
    let outcome = run(&client, request("sig", "sh", "kill -TERM $$")).await?;
    assert_eq!(
        outcome.kind(),
        EventKind::Completed,
        "{:?}",
        outcome.terminal
    );
    assert_eq!(outcome.terminal.signal, Some(libc::SIGTERM));
    let outcome = run(&client, request("code", "sh", "exit 7")).await?;
    assert_eq!(outcome.terminal.exit_code, Some(7));
    // Something left running in the background does not outlive the program.
    let outcome = run(&client, request("bg", "sh", "sleep 1000 & echo started")).await?;
    assert_eq!(outcome.terminal.exit_code, Some(0));
    client.close().await?;
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_that_widen_the_kernels_reach_are_refused_and_ordinary_ones_work() -> Result<()> {
    if !jail_available() {
        return Ok(());
    }
    let gateway = jailed_gateway().await;
    let code = r#"import ctypes, errno, subprocess, threading
libc = ctypes.CDLL(None, use_errno=True)
def attempt(name, call):
    ctypes.set_errno(0)
    result = call()
    print("%s=%s" % (name, "allowed" if result != -1 else errno.errorcode.get(ctypes.get_errno(), "?")))
attempt("unshare_user", lambda: libc.unshare(0x10000000))
attempt("ptrace", lambda: libc.ptrace(0, 0, 0, 0))
attempt("io_uring", lambda: libc.syscall(425, 1, None))
attempt("mount", lambda: libc.mount(b"none", b"/tmp", b"tmpfs", 0, None))
thread = threading.Thread(target=lambda: None)
thread.start()
thread.join()
print("thread=ok")
print("subprocess=%s" % subprocess.run(["/bin/echo", "child"], capture_output=True).stdout.decode().strip())
"#;
    let facts = facts(&gateway, code).await?;
    for refused in ["unshare_user", "ptrace", "io_uring", "mount"] {
        assert_eq!(fact(&facts, refused)?, "EPERM", "{refused}");
    }
    assert_eq!(fact(&facts, "thread")?, "ok");
    assert_eq!(fact(&facts, "subprocess")?, "child");
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpu_time_is_limited_for_the_whole_tree() -> Result<()> {
    if !jail_available() {
        return Ok(());
    }
    if sluice_tests::host_report().cpu_tree.is_none() {
        skip("no CPU accounting for a whole tree (cgroup v2 cpu.stat) on this host");
        return Ok(());
    }
    let gateway = jailed_gateway().await;
    let client = gateway.client().await?;
    // Four processes, each well inside the per-process limit (2 s with a 1 s limit,
    // rounded up, plus the second before SIGKILL), together far past it.
    let spinners = r#"import os, time
def spin(seconds):
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass
children = []
for _ in range(4):
    pid = os.fork()
    if pid == 0:
        spin(0.9)
        os._exit(0)
    children.append(pid)
for pid in children:
    os.waitpid(pid, 0)
print("all done")
"#;
    let outcome = run(
        &client,
        with_limits(
            request("spinners", "python", spinners),
            Limits {
                cpu_ms: Some(1_000),
                ..Limits::default()
            },
        ),
    )
    .await?;
    assert_stream_ok(&outcome.events);
    assert_eq!(
        (outcome.kind(), outcome.limit()),
        (EventKind::ResourceLimit, Some(LimitKind::Cpu)),
        "{:?}",
        outcome.terminal
    );
    let observed = outcome.terminal.limit_observed.context("no observed CPU")?;
    assert!((1_000..3_000).contains(&observed), "observed {observed} ms");
    assert!(!outcome.stdout.contains("all done"));
    client.close().await?;
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_jails_dev_run_and_cgroups_reveal_nothing_of_the_host() -> Result<()> {
    if !jail_available() {
        return Ok(());
    }
    let gateway = jailed_gateway().await;
    let code = r#"import os
print("dev=%s" % ",".join(sorted(os.listdir("/dev"))))
print("run=%s" % ",".join(sorted(os.listdir("/run"))) if os.path.isdir("/run") else "run=")
print("cgroups=%s" % ",".join(sorted(os.listdir("/sys/fs/cgroup"))))
print("interfaces=%s" % ",".join(sorted(os.listdir("/sys/class/net"))))
print("own_cgroup=%s" % open("/proc/self/cgroup").read().strip().replace("\n", ";"))
try:
    os.utime("/dev/null")
    print("device_inode=changed")
except OSError as err:
    print("device_inode=%s" % type(err).__name__)
ptys = []
try:
    while len(ptys) < 1000:
        ptys.append(os.openpty())
except OSError as err:
    print("ptys=%d" % len(ptys))
"#;
    let facts = facts(&gateway, code).await?;
    assert_eq!(
        fact(&facts, "dev")?,
        "fd,full,null,ptmx,pts,random,shm,stderr,stdin,stdout,tty,urandom,zero"
    );
    assert_eq!(
        fact(&facts, "run")?,
        "",
        "the host's /run (its sockets) is hidden"
    );
    assert_eq!(
        fact(&facts, "cgroups")?,
        "",
        "the host's cgroups are hidden"
    );
    assert_eq!(
        fact(&facts, "interfaces")?,
        "lo",
        "only the jail's own network interfaces"
    );
    assert!(
        fact(&facts, "own_cgroup")?
            .split(';')
            .all(|line| line.ends_with(":/")),
        "{facts:?}"
    );
    assert_eq!(
        fact(&facts, "device_inode")?,
        "OSError",
        "host device inodes stay as they are"
    );
    // The jail's own devpts: a few ptys, never the host's.
    let ptys: usize = fact(&facts, "ptys")?.parse()?;
    assert!((1..=8).contains(&ptys), "{ptys} ptys");
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn millions_of_empty_files_end_with_resource_limit_workspace() -> Result<()> {
    if !jail_available() {
        return Ok(());
    }
    let gateway = jailed_gateway().await;
    let client = gateway.client().await?;
    // Empty files cost inodes (kernel memory), not bytes: the scratch file system has an
    // inode budget that goes with its size.
    let many = "import os\nfor i in range(1_000_000):\n    open('/tmp/f%d' % i, 'w').close()\nprint('all made')";
    let outcome = run(
        &client,
        with_limits(
            request("many", "python", many),
            Limits {
                workspace_bytes: Some(8 << 20),
                ..Limits::default()
            },
        ),
    )
    .await?;
    assert_eq!(
        (outcome.kind(), outcome.limit()),
        (EventKind::ResourceLimit, Some(LimitKind::Workspace)),
        "{:?} {}",
        outcome.terminal,
        outcome.stderr
    );
    assert!(!outcome.stdout.contains("all made"));
    client.close().await?;
    gateway.shutdown().await
}

/// Without the jail (`--isolation none`, or `cgroups`), a gateway running as root still
/// never starts a program as root: programs drop to the sandbox user before they exec,
/// their workspace is theirs, the interpreter chosen is one that user can start, and the
/// limits set before exec hold. Needs a root gateway (a non-root gateway's programs run
/// as its own, unprivileged, user).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_jail_a_root_gateway_still_never_runs_a_program_as_root() -> Result<()> {
    if !sluice_tests::host_report().root {
        skip("the gateway is not root here, so its programs cannot be");
        return Ok(());
    }
    let uid = sluice_gateway::DEFAULT_SANDBOX_ID;
    let gateway = TestGateway::spawn_with(Config {
        isolation: Isolation::None,
        ..Config::default()
    })
    .await;
    let client = gateway.client().await?;
    let shell = run(
        &client,
        with_limits(
            request(
                "who",
                "sh",
                "id -u; id -g; id -G; echo mine > own && cat own
touch /root/sluice-was-here 2>/dev/null && echo wrote-root
kill -0 1 2>/dev/null && echo signalled-init
ulimit -n",
            ),
            Limits {
                open_files: Some(77),
                ..Limits::default()
            },
        ),
    )
    .await?;
    assert_stream_ok(&shell.events);
    assert_eq!(shell.terminal.exit_code, Some(0), "{}", shell.stderr);
    assert_eq!(
        shell.stdout,
        format!("{uid}\n{uid}\n{uid}\nmine\n77\n"),
        "uid, gid, no other group, a writable workspace, nothing of root's, the limit; stderr: {}",
        shell.stderr
    );
    let python = run(
        &client,
        request(
            "py",
            "python",
            "import os\nprint(os.getuid(), os.getgid(), os.getgroups())",
        ),
    )
    .await?;
    assert_eq!(python.terminal.exit_code, Some(0), "{}", python.stderr);
    assert_eq!(python.stdout, format!("{uid} {uid} []\n"));
    // A persistent interpreter drops too.
    let cell = ExecuteRequest {
        session: Some("nb".into()),
        persistent: true,
        ..request("cell", "python", "import os\nprint(os.getuid())")
    };
    let kernel = run(&client, cell).await?;
    assert_eq!(kernel.terminal.exit_code, Some(0), "{}", kernel.stderr);
    assert_eq!(kernel.stdout, format!("{uid}\n"));
    client.close().await?;
    gateway.shutdown().await
}

/// Regression test for finding 6 of issue 10 (failed before the fix: the program's lock
/// on a host file it can only read made the host's own lock attempt fail). A jailed
/// program's file locks lock nothing on the host, while SQLite in its workspace still
/// works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_program_cannot_hold_a_lock_on_a_host_file() -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    if !jail_available() {
        return Ok(());
    }
    // Readable by everyone, outside /tmp (which is the jail's own).
    let dir = sluice_tests::host_shared_dir("host-lock")?;
    let target = dir.join("build.lock");
    std::fs::write(&target, "")?;
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o644))?;
    let gateway = jailed_gateway().await;
    let mut socket = gateway.raw().await?;
    let code = format!(
        r#"import fcntl, sqlite3, struct, sys
f = open({target:?})
fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
fcntl.fcntl(f, fcntl.F_SETLK, struct.pack("hhqqi", fcntl.F_RDLCK, 0, 0, 0, 0))
db = sqlite3.connect("notes.db")
db.execute("create table t (x)")
db.execute("insert into t values (42)")
db.commit()
print("locked", db.execute("select x from t").fetchone()[0])
sys.stdout.flush()
sys.stdin.read()
"#,
        target = target.display().to_string()
    );
    socket.execute(request("locker", "python", &code)).await?;
    socket.wait_for_stdout("locker", "locked 42").await?;
    // The host's own program: an exclusive flock and a write lock, without waiting.
    let host = std::process::Command::new("python3")
        .arg("-c")
        .arg(
            "import fcntl, sys\n\
             f = open(sys.argv[1], 'r+')\n\
             fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)\n\
             fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)\n",
        )
        .arg(&target)
        .output()?;
    socket.stdin("locker", None, true).await?;
    let events = socket.events_until_terminal("locker").await?;
    socket.close().await?;
    let _ = std::fs::remove_dir_all(&dir);
    ensure!(
        host.status.success(),
        "the host could not lock its own file while a program ran: {}",
        String::from_utf8_lossy(&host.stderr)
    );
    ensure!(
        events
            .last()
            .is_some_and(|event| event.kind == EventKind::Completed),
        "the program should end normally: {events:?}"
    );
    gateway.shutdown().await
}

/// Regression test for finding 6 of issue 10 (failed before the fix: every jail ran as
/// uid 60000, so one program that took the user's 128 inotify instances made inotify
/// fail in every other). Each jail alive runs as its own uid and gid, so per-user kernel
/// counts are its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_jail_has_its_own_ids_and_per_user_kernel_counts() -> Result<()> {
    if !jail_available() {
        return Ok(());
    }
    let gateway = jailed_gateway().await;
    let mut socket = gateway.raw().await?;
    let hog = r#"import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
held = []
while len(held) < 100000:
    fd = libc.inotify_init()
    if fd < 0:
        break
    held.append(fd)
print("held=%d uid=%d gid=%d" % (len(held), os.getuid(), os.getgid()))
sys.stdout.flush()
sys.stdin.read()
"#;
    socket.execute(request("hog", "python", hog)).await?;
    let events = socket.wait_for_stdout("hog", "held=").await?;
    let hog_said = sluice_tests::text_of(&events, EventKind::Stdout);
    let probe = r#"import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
fd = libc.inotify_init()
print("inotify=%s uid=%d gid=%d" % ("ok" if fd >= 0 else os.strerror(ctypes.get_errno()), os.getuid(), os.getgid()))
"#;
    socket.execute(request("probe", "python", probe)).await?;
    let events = socket.events_until_terminal("probe").await?;
    let probe_said = sluice_tests::text_of(&events, EventKind::Stdout);
    socket.stdin("hog", None, true).await?;
    socket.events_until_terminal("hog").await?;
    socket.close().await?;
    let ids = |said: &str| -> Vec<String> {
        said.split_whitespace()
            .filter(|word| word.starts_with("uid=") || word.starts_with("gid="))
            .map(str::to_owned)
            .collect()
    };
    ensure!(
        probe_said.contains("inotify=ok"),
        "another execution's inotify failed while one held {hog_said:?}: {probe_said:?}"
    );
    let (hog_ids, probe_ids) = (ids(&hog_said), ids(&probe_said));
    ensure!(
        hog_ids.len() == 2 && probe_ids.len() == 2,
        "{hog_said:?} {probe_said:?}"
    );
    ensure!(
        hog_ids[0] != probe_ids[0] && hog_ids[1] != probe_ids[1],
        "two jails alive at once share ids: {hog_ids:?} {probe_ids:?}"
    );
    gateway.shutdown().await
}

/// A cancel that arrives at any point of a jailed start (before the jail runs, while it
/// sets up, just after the program starts) ends the execution with `cancelled` long
/// before the kill grace: the SIGTERM that reached the jail or init before the program
/// existed is passed on to it (it used to wait, held, until the grace ran out and
/// SIGKILL followed: issue 13). The grace here is far longer than the test's patience,
/// so a cancel that waits for it fails the test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_at_any_point_of_a_jailed_start_does_not_wait_for_the_kill_grace() -> Result<()> {
    if !jail_available() {
        return Ok(());
    }
    let gateway = TestGateway::spawn_with(Config {
        isolation: Isolation::Namespaces,
        kill_grace: sluice_tests::patience() * 10,
        ..Config::default()
    })
    .await;
    let mut socket = gateway.raw().await?;
    // Delays in microseconds between the execute and its cancel: from none (the cancel
    // is read right behind the execute) across the jail's few milliseconds of setup.
    let delays = [
        0_u64, 0, 50, 200, 500, 1_000, 1_500, 2_000, 3_000, 4_000, 6_000, 10_000,
    ];
    for round in 0..3 {
        for (n, delay) in delays.iter().enumerate() {
            let id = format!("c{round}-{n}");
            socket.execute(request(&id, "sh", "sleep 600")).await?;
            if *delay > 0 {
                // Not a wait for anything: the point is to land the cancel at a moment.
                tokio::time::sleep(std::time::Duration::from_micros(*delay)).await;
            }
            socket.cancel(&id).await?;
            let events = socket.events_until_terminal(&id).await?;
            let last = events.last().context("no events")?;
            ensure!(
                last.kind == EventKind::Cancelled,
                "{id} (cancel after {delay} us) ended with {last:?}"
            );
        }
    }
    assert_stream_ok(socket.received());
    gateway.shutdown().await
}

/// Every jail alive has a network namespace of its own, made for it alone (a root
/// gateway makes them ahead of time, off the request path): never the gateway's, never
/// another jail's, and empty (a loopback interface, down). More jails start at once than
/// the gateway keeps ready, so those that make their own are checked too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_jail_alive_has_an_empty_network_namespace_of_its_own() -> Result<()> {
    if !jail_available() {
        return Ok(());
    }
    let gateway = jailed_gateway().await;
    let gateways = std::fs::read_link("/proc/self/ns/net")?;
    let mut socket = gateway.raw().await?;
    let probe = r#"import os, sys
up = []
for name in sorted(os.listdir("/sys/class/net")):
    with open("/sys/class/net/%s/operstate" % name) as f:
        up.append("%s:%s" % (name, f.read().strip()))
print("net=%s devices=%s" % (os.readlink("/proc/self/ns/net"), ",".join(up)))
sys.stdout.flush()
sys.stdin.read()
"#;
    let jails = 20;
    let mut said = Vec::new();
    for n in 0..jails {
        let id = format!("n{n}");
        socket.execute(request(&id, "python", probe)).await?;
        // The whole line: the probe writes it at once, and waits.
        let events = socket.wait_for_stdout(&id, "\n").await?;
        said.push(sluice_tests::text_of(&events, EventKind::Stdout));
    }
    // All alive until each has spoken: a namespace's number is reused only once it is gone.
    for n in 0..jails {
        let id = format!("n{n}");
        socket.stdin(&id, None, true).await?;
        socket.events_until_terminal(&id).await?;
    }
    socket.close().await?;
    let mut seen = std::collections::HashSet::new();
    for line in &said {
        let (net, devices) = line
            .trim()
            .strip_prefix("net=")
            .and_then(|rest| rest.split_once(" devices="))
            .with_context(|| format!("unexpected probe output {line:?}"))?;
        ensure!(
            std::path::Path::new(net) != gateways,
            "a jail in the gateway's network namespace: {line:?}"
        );
        ensure!(seen.insert(net.to_owned()), "two jails share {net}");
        ensure!(
            devices == "lo:down",
            "a jail's network namespace is not empty: {line:?}"
        );
    }
    gateway.shutdown().await
}

/// A program the jail cannot start (its interpreter is under `/run`, which the jail
/// covers when the program has no network) ends in `spawn_failed`, saying which program
/// and why, and the jail goes on starting the others: the failure is told from the
/// program's start (which shares init's memory until its exec) back to init.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_program_the_jail_cannot_start_ends_in_spawn_failed_saying_why() -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    if !jail_available() {
        return Ok(());
    }
    let dir = std::path::PathBuf::from(format!("/run/sluice-test-{}", std::process::id()));
    if std::fs::create_dir_all(&dir).is_err() {
        skip("cannot write under /run here");
        return Ok(());
    }
    let program = dir.join("hidden-interpreter");
    std::fs::write(&program, "#!/bin/sh\necho unreachable\n")?;
    std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755))?;
    let mut runtimes = sluice_gateway::RuntimeSpec::defaults();
    runtimes.push(sluice_gateway::RuntimeSpec {
        name: "hidden".into(),
        program: program.to_string_lossy().into_owned(),
        args: vec![sluice_gateway::FILE_PLACEHOLDER.into()],
        file_name: "main.sh".into(),
        env: Vec::new(),
        locate: None,
        optional: false,
        network: false,
        package_index: None,
    });
    let gateway = TestGateway::spawn_with(Config {
        isolation: Isolation::Namespaces,
        runtimes,
        ..Config::default()
    })
    .await;
    let client = gateway.client().await?;
    let outcome = run(&client, request("hidden", "hidden", "true")).await;
    let after = run(&client, request("after", "sh", "echo fine")).await;
    client.close().await?;
    gateway.shutdown().await?;
    let _ = std::fs::remove_dir_all(&dir);
    let (outcome, after) = (outcome?, after?);
    assert_eq!(outcome.kind(), EventKind::Error, "{:?}", outcome.terminal);
    assert_eq!(
        outcome.terminal.code,
        Some(sluice_protocol::ErrorCode::SpawnFailed)
    );
    let message = &outcome.terminal.data;
    ensure!(
        message.contains("could not start") && message.contains("hidden-interpreter"),
        "the message says which program could not start: {message:?}"
    );
    assert_eq!(after.stdout, "fine\n");
    Ok(())
}
