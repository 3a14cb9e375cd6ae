//! An outside review of terminal mode (`tty: true`) and of what a program can reach of
//! terminals: each test here is an attack that worked before its fix.

use anyhow::{bail, ensure, Context as _, Result};
use sluice_gateway::{Config, Isolation};
use sluice_protocol::{EventKind, ExecuteRequest};
use sluice_tests::{current_test_name, patience, request, text_of, unique_marker, TestGateway};
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::process::{Command, Stdio};

/// Set in the copy of the test binary that runs with a controlling terminal.
const ON_A_TERMINAL: &str = "SLUICE_REVIEW_TTY_ON_A_TERMINAL";

/// What a program writes to `/dev/tty` if it can open it.
const MARKER_VARIABLE: &str = "SLUICE_REVIEW_TTY_MARKER";

/// A new pseudo-terminal: (control side, program side), both close-on-exec.
#[allow(unsafe_code)] // open and two ioctls, each descriptor owned at once.
fn open_pty() -> Result<(OwnedFd, OwnedFd)> {
    // SAFETY: plain calls on integers and a NUL-terminated literal; each descriptor
    // returned is owned here at once.
    unsafe {
        let control = libc::open(
            c"/dev/ptmx".as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        );
        ensure!(
            control >= 0,
            "/dev/ptmx: {}",
            std::io::Error::last_os_error()
        );
        let control = OwnedFd::from_raw_fd(control);
        let unlock: libc::c_int = 0;
        ensure!(
            libc::ioctl(control.as_raw_fd(), libc::TIOCSPTLCK, &unlock) == 0,
            "unlocking the terminal: {}",
            std::io::Error::last_os_error()
        );
        let side = libc::ioctl(
            control.as_raw_fd(),
            libc::TIOCGPTPEER,
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        );
        ensure!(
            side >= 0,
            "TIOCGPTPEER: {}",
            std::io::Error::last_os_error()
        );
        Ok((control, OwnedFd::from_raw_fd(side)))
    }
}

/// A gateway run from a terminal (an operator's shell, `sluice serve` in the foreground)
/// has it as its controlling terminal, and so had every program and interpreter it
/// started: in the gateway's session, a program (jailed or not, as the sandbox user)
/// could open `/dev/tty`, which opens the caller's controlling terminal whatever the
/// node's owner, write there, and type there with `TIOCSTI`: commands for the
/// operator's shell. Now the jail leaves the terminal before it starts anything, an
/// unjailed program leads a session of its own, and an unjailed interpreter leaves it.
///
/// The gateway runs in this test's process, so the test runs itself again in a session
/// of its own with a pseudo-terminal as its controlling terminal, and reads that
/// terminal afterwards for anything a program wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_program_reaches_the_terminal_the_gateway_runs_in() -> Result<()> {
    if std::env::var_os(ON_A_TERMINAL).is_some() {
        return programs_cannot_open_the_controlling_terminal().await;
    }
    let (control, side) = open_pty()?;
    let marker = unique_marker("ctty");
    let name = current_test_name();
    let mut command = Command::new(std::env::current_exe()?);
    command
        .args([name.as_str(), "--exact", "--nocapture", "--test-threads=1"])
        .env(ON_A_TERMINAL, "1")
        .env(MARKER_VARIABLE, &marker)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    in_a_session_on(&mut command, &side);
    let child = command.spawn().context("running this test again")?;
    drop(side);
    let output = tokio::time::timeout(
        patience() * 4,
        tokio::task::spawn_blocking(move || child.wait_with_output()),
    )
    .await
    .context("the copy on a terminal did not finish")???;
    let seen = waiting_output(&control);
    ensure!(
        !seen.contains(&marker),
        "a program wrote to the gateway's controlling terminal: {seen:?}"
    );
    ensure!(
        output.status.success(),
        "the copy on a terminal failed ({}):\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

/// The part run with a controlling terminal: every kind of program tries `/dev/tty`.
async fn programs_cannot_open_the_controlling_terminal() -> Result<()> {
    let marker = std::env::var(MARKER_VARIABLE).context("no marker")?;
    // The test is only worth anything if this process really has the terminal.
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .context("this copy of the test has no controlling terminal")?;
    let shell = format!(
        "if printf '{marker} ' 2>/dev/null >/dev/tty; then echo reached; else echo unreachable; fi"
    );
    let python = format!(
        "import os\n\
         try:\n    fd = os.open('/dev/tty', os.O_RDWR)\n    os.write(fd, b'{marker} ')\n    print('reached')\n\
         except OSError:\n    print('unreachable')\n"
    );
    for isolation in [Isolation::Auto, Isolation::None] {
        let gateway = TestGateway::spawn_with(Config {
            isolation,
            ..Config::default()
        })
        .await;
        let mut socket = gateway.raw().await?;
        let session = unique_marker("ctty-cell");
        let requests = [
            request("shell", "sh", &shell),
            request("program", "python", &python),
            ExecuteRequest {
                session: Some(session),
                persistent: true,
                ..request("cell", "python", &python)
            },
        ];
        for execute in requests {
            let id = execute.id.clone();
            socket.execute(execute).await?;
            let events = socket.events_until_terminal(&id).await?;
            let out = text_of(&events, EventKind::Stdout);
            if !out.contains("unreachable") {
                bail!(
                    "{isolation:?}: {id} opened the gateway's controlling terminal: {out:?} {:?} {:?}",
                    text_of(&events, EventKind::Stderr),
                    events.last()
                );
            }
        }
        gateway.shutdown().await?;
    }
    Ok(())
}

/// Makes `command`'s child lead a session of its own whose controlling terminal is
/// `side`.
#[allow(unsafe_code)] // setsid and one ioctl in the child, on an integer.
fn in_a_session_on(command: &mut Command, side: &OwnedFd) {
    use std::os::unix::process::CommandExt as _;
    let side = side.as_raw_fd();
    // SAFETY: the hook runs in the child between fork and exec and only calls setsid and
    // ioctl on an integer captured before the fork.
    #[allow(clippy::disallowed_methods)] // the session must be made in the child
    unsafe {
        command.pre_exec(move || {
            if libc::setsid() < 0 || libc::ioctl(side, libc::TIOCSCTTY, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// What waits to be read on a terminal's control side, without blocking.
#[allow(unsafe_code)] // poll and read on a descriptor we own, into live locals.
fn waiting_output(control: &OwnedFd) -> String {
    let mut seen = Vec::new();
    let mut buf = [0_u8; 4096];
    loop {
        let mut poll = libc::pollfd {
            fd: control.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: a poll of one live local, then a read into a live buffer of its length.
        let n = unsafe {
            if libc::poll(&mut poll, 1, 0) != 1 || poll.revents & libc::POLLIN == 0 {
                break;
            }
            libc::read(control.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len())
        };
        let Ok(n @ 1..) = usize::try_from(n) else {
            break;
        };
        seen.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&seen).into_owned()
}
