//! Attacks of the second issue 13 review on the jail's faster start: the program's start
//! that shares init's memory until its exec, the system-call filter looked up by binary
//! search (x32 and foreign-architecture calls through the real kernel), init that skips
//! its final kill when it has no children left, and the descriptors a program gets.
//! Each test needs the jail; where it cannot run the test says why and is skipped.

use crate::isolation::{jail_available, jailed_gateway};
use anyhow::{ensure, Context as _, Result};
use sluice_protocol::EventKind;
use sluice_tests::{request, run};

/// The pids of the host's processes whose command line is exactly `argv`.
fn processes_running(argv: &[&str]) -> Vec<String> {
    let wanted: Vec<u8> = argv
        .iter()
        .flat_map(|a| [a.as_bytes(), b"\0"].concat())
        .collect();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            name.bytes().all(|b| b.is_ascii_digit()).then_some(name)
        })
        .filter(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == wanted))
        .collect()
}

/// The program's first descriptors are its three standard streams, nothing of init's or
/// the jail's (the start shares init's memory, not its descriptor table), and init's
/// memory, descriptors and environment are closed to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jailed_program_holds_only_its_stdio_and_cannot_look_into_init() -> Result<()> {
    if !jail_available() {
        return Ok(());
    }
    let gateway = jailed_gateway().await;
    let client = gateway.client().await?;
    let code = r#"import os
fds = sorted(int(fd) for fd in os.listdir("/proc/self/fd"))
# listdir's own descriptor is closed by now; any other is inherited.
print("fds=%s" % ",".join(str(fd) for fd in fds if os.path.exists("/proc/self/fd/%d" % fd)))
for what in ["mem", "environ", "maps", "fd", "root/"]:
    try:
        if what in ("fd", "root/"):
            os.listdir("/proc/1/" + what)
        else:
            open("/proc/1/" + what, "rb").read(1)
        print("init_%s=open" % what.strip("/"))
    except OSError as err:
        print("init_%s=%s" % (what.strip("/"), type(err).__name__))
"#;
    let outcome = run(&client, request("fds", "python", code)).await?;
    client.close().await?;
    gateway.shutdown().await?;
    ensure!(
        outcome.terminal.exit_code == Some(0),
        "probe failed: {:?} {}",
        outcome.terminal,
        outcome.stderr
    );
    ensure!(
        outcome.stdout.lines().any(|l| l == "fds=0,1,2"),
        "the program holds more than its stdio: {}",
        outcome.stdout
    );
    for what in ["mem", "environ", "maps", "fd", "root"] {
        ensure!(
            outcome
                .stdout
                .lines()
                .any(|l| l == format!("init_{what}=PermissionError")),
            "init's {what} is not closed to the program: {}",
            outcome.stdout
        );
    }
    Ok(())
}

/// Through the real kernel: x32 calls, `clone` and raw `clone3` asking for new
/// namespaces, and a 32-bit (`int 0x80`) call, which the binary-search filter must
/// answer as the list did (EPERM, EPERM, ENOSYS, and death by SIGSYS).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_filter_refuses_x32_namespace_clones_and_kills_foreign_calls() -> Result<()> {
    if !jail_available() || !cfg!(target_arch = "x86_64") {
        return Ok(());
    }
    let gateway = jailed_gateway().await;
    let client = gateway.client().await?;
    let code = r#"import ctypes, errno
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def attempt(name, *args):
    ctypes.set_errno(0)
    result = libc.syscall(*[ctypes.c_long(a) for a in args])
    print("%s=%s" % (name, "allowed" if result != -1 else errno.errorcode.get(ctypes.get_errno(), "?")))
attempt("x32_getpid", 0x40000000 | 39)
attempt("x32_unshare", 0x40000000 | 272, 0x10000000)
attempt("minus_one", -1)
attempt("clone_newuser", 56, 0x10000000 | 17, 0, 0, 0, 0)
attempt("clone_newnet", 56, 0x40000000 | 17, 0, 0, 0, 0)
attempt("clone3", 435, 0, 0)
attempt("setns", 308, 0, 0)
attempt("getpid", 39)
"#;
    let outcome = run(&client, request("x32", "python", code)).await?;
    let facts: Vec<(String, String)> = outcome
        .stdout
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let fact = |name: &str| -> Result<String> {
        facts
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .with_context(|| format!("no {name} in {:?} {}", outcome.stdout, outcome.stderr))
    };
    for (name, expected) in [
        ("x32_getpid", "EPERM"),
        ("x32_unshare", "EPERM"),
        ("minus_one", "EPERM"),
        ("clone_newuser", "EPERM"),
        ("clone_newnet", "EPERM"),
        ("clone3", "ENOSYS"),
        ("setns", "EPERM"),
        ("getpid", "allowed"),
    ] {
        ensure!(
            fact(name)? == expected,
            "{name}: {} not {expected}",
            fact(name)?
        );
    }
    // i386's getpid through int 0x80, from executable memory: the filter kills it.
    let int80 = r#"import ctypes, mmap, sys
code = bytes([0xb8, 0x14, 0, 0, 0, 0xcd, 0x80, 0xc3])
page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
page.write(code)
address = ctypes.addressof(ctypes.c_char.from_buffer(page))
print("calling", flush=True)
ctypes.CFUNCTYPE(ctypes.c_int)(address)()
print("survived", flush=True)
"#;
    let outcome = run(&client, request("int80", "python", int80)).await?;
    client.close().await?;
    gateway.shutdown().await?;
    ensure!(
        outcome.stdout.contains("calling") && !outcome.stdout.contains("survived"),
        "a 32-bit call ran: {:?} {}",
        outcome.stdout,
        outcome.stderr
    );
    ensure!(
        outcome.terminal.signal == Some(libc_sigsys()),
        "not killed by SIGSYS: {:?}",
        outcome.terminal
    );
    Ok(())
}

fn libc_sigsys() -> i32 {
    31
}

/// Processes a program leaves behind in every way init might not see (a double-forked
/// `setsid` daemon, a child made with `CLONE_PARENT` (a sibling of the program, init's
/// own child), a child that is a zombie of the program's when it exits, and a
/// grandchild reparented to a subreaper the program made) are all gone once the
/// execution has ended: init skips its last kill only when it has no child left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_a_program_leaves_behind_outlives_its_execution() -> Result<()> {
    if !jail_available() {
        return Ok(());
    }
    let gateway = jailed_gateway().await;
    let client = gateway.client().await?;
    // Marks unlikely to clash with anything else on the host.
    let marks = ["86391", "86392", "86393", "86394"];
    let code = format!(
        r#"import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def detach():
    null = os.open("/dev/null", os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
def sleeper(mark):
    detach()
    os.execv("/bin/sleep", ["sleep", mark])
# 1: double fork and setsid.
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        sleeper("{0}")
    os._exit(0)
# 2: CLONE_PARENT | SIGCHLD: a child of init's.
pid = libc.syscall(ctypes.c_long(56), ctypes.c_long(0x8000 | 17), ctypes.c_long(0), ctypes.c_long(0), ctypes.c_long(0), ctypes.c_long(0))
if pid == 0:
    sleeper("{1}")
# 3: a subreaper whose grandchild it reparents, then the subreaper leaves.
if os.fork() == 0:
    libc.prctl(36, 1, 0, 0, 0)
    if os.fork() == 0:
        if os.fork() == 0:
            sleeper("{2}")
        os._exit(0)
    os.wait()
    os._exit(0)
# 4: a child that is a zombie when the program exits, and its own child.
if os.fork() == 0:
    if os.fork() == 0:
        sleeper("{3}")
    os._exit(0)
# All four are running (as `sleep MARK`) before the program ends.
wanted = {{b"sleep\0%s\0" % m.encode() for m in ("{0}", "{1}", "{2}", "{3}")}}
while True:
    seen = set()
    for entry in os.listdir("/proc"):
        try:
            with open("/proc/%s/cmdline" % entry, "rb") as f:
                seen.add(f.read())
        except OSError:
            pass
    if wanted <= seen:
        break
print("clone_parent=%d seen=4" % pid, flush=True)
sys.exit(0)
"#,
        marks[0], marks[1], marks[2], marks[3]
    );
    let outcome = run(&client, request("leave", "python", &code)).await?;
    client.close().await?;
    ensure!(
        outcome.kind() == EventKind::Completed && outcome.terminal.exit_code == Some(0),
        "the program failed: {:?} {}",
        outcome.terminal,
        outcome.stderr
    );
    ensure!(
        outcome.stdout.contains("seen=4") && !outcome.stdout.contains("clone_parent=-1"),
        "CLONE_PARENT was refused: {}",
        outcome.stdout
    );
    // Reaped by the time the execution ends (the kernel waits for a PID namespace's
    // processes before its init is gone); allowed a deadline for a slow reaper.
    let deadline = std::time::Instant::now() + sluice_tests::patience();
    let left = loop {
        let left: Vec<(String, Vec<String>)> = marks
            .iter()
            .map(|m| (m.to_string(), processes_running(&["sleep", m])))
            .filter(|(_, pids)| !pids.is_empty())
            .collect();
        if left.is_empty() || std::time::Instant::now() > deadline {
            break left;
        }
        std::thread::yield_now();
    };
    for (_, pids) in &left {
        for pid in pids {
            let _ = std::process::Command::new("kill")
                .args(["-9", pid])
                .status();
        }
    }
    gateway.shutdown().await?;
    ensure!(left.is_empty(), "outlived the execution: {left:?}");
    Ok(())
}
