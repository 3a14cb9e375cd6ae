//! The terminal client, `sluice run` and `sluice attach`, as a user runs it: the built
//! `sluice` binary as a subprocess, against a real gateway on a real socket.
//!
//! The binary is the one cargo builds for this package's tests (`CARGO_BIN_EXE_sluice`),
//! so `cargo test -p sluice-cli` and `cargo test --workspace` both have it. Waits are on output and exit, each bounded by the harness's
//! patience; nothing sleeps to synchronise.

use anyhow::{bail, ensure, Context as _, Result};
use sluice_protocol::{Event, EventKind, ExecuteRequest};
use sluice_tests::{request, unique_marker, wait_for_output, wait_until_gone, within, TestGateway};
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use tokio::sync::mpsc;

/// The `sluice` binary cargo built for these tests.
fn sluice_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_sluice"))
}

/// A `sluice` command aimed at `gateway`, with nothing inherited that could change it.
fn sluice(gateway: &TestGateway, args: &[&str]) -> Result<Command> {
    let mut command = Command::new(sluice_binary());
    command
        .args(args)
        .env("SLUICE_URL", gateway.url())
        .env_remove("SLUICE_TOKEN")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    Ok(command)
}

/// How a finished `sluice` went.
#[derive(Debug)]
struct Finished {
    status: ExitStatus,
    stdout: Vec<u8>,
    stderr: String,
}

impl Finished {
    fn code(&self) -> Option<i32> {
        self.status.code()
    }

    fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// Checks that `sluice` said exactly one line on stderr, `sluice: ...` containing
    /// `needle`.
    fn assert_one_error_line(&self, needle: &str) -> Result<()> {
        let lines: Vec<&str> = self.stderr.lines().collect();
        ensure!(
            lines.len() == 1,
            "expected one line on stderr, got {:?}",
            self.stderr
        );
        ensure!(
            lines[0].starts_with("sluice: ") && lines[0].contains(needle),
            "expected `sluice: ...{needle}...` on stderr, got {:?}",
            self.stderr
        );
        Ok(())
    }
}

/// Runs `sluice ARGS` to its end with `stdin` as its input (none: /dev/null).
async fn finish(gateway: &TestGateway, args: &[&str], stdin: Option<Vec<u8>>) -> Result<Finished> {
    let mut command = sluice(gateway, args)?;
    if stdin.is_some() {
        command.stdin(Stdio::piped());
    }
    let mut child = command.spawn().context("cannot start sluice")?;
    let pid = child.id();
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // A thread of its own: the program reads while we would otherwise block writing.
        std::thread::spawn(move || {
            // The program may stop reading early; its status tells the test.
            let _ = pipe.write_all(&input);
        });
    }
    let waited = tokio::task::spawn_blocking(move || child.wait_with_output());
    let output = within(&format!("sluice {args:?} to exit"), waited)
        .await
        .inspect_err(|_| kill(pid, libc::SIGKILL))?
        .context("the waiting thread panicked")?
        .context("cannot wait for sluice")?;
    Ok(Finished {
        status: output.status,
        stdout: output.stdout,
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    })
}

/// Sends `signal` to a process this test started.
fn kill(pid: u32, signal: i32) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        // SAFETY: plain kill(2) on a child of this test; a gone process is harmless.
        #[allow(unsafe_code)]
        unsafe {
            libc::kill(pid, signal);
        }
    }
}

/// A `sluice` still running, whose stdout is read line by line as it comes.
struct Running {
    /// The process; taken by [`Running::exit`], killed on drop otherwise.
    child: Option<Child>,
    pid: u32,
    lines: mpsc::Receiver<String>,
    stderr: Option<std::thread::JoinHandle<String>>,
    /// Every stdout line received so far.
    seen: Vec<String>,
}

impl Running {
    fn start(mut command: Command) -> Result<Self> {
        let mut child = command.spawn().context("cannot start sluice")?;
        let stdout = child.stdout.take().context("no stdout pipe")?;
        let mut stderr = child.stderr.take().context("no stderr pipe")?;
        let (sender, lines) = mpsc::channel(1024);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if sender.blocking_send(line).is_err() {
                    return;
                }
            }
        });
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            text
        });
        Ok(Self {
            pid: child.id(),
            child: Some(child),
            lines,
            stderr: Some(stderr),
            seen: Vec::new(),
        })
    }

    /// Waits for the next stdout line that satisfies `wanted`.
    async fn line_where(&mut self, what: &str, wanted: impl Fn(&str) -> bool) -> Result<String> {
        let wait = async {
            while let Some(line) = self.lines.recv().await {
                self.seen.push(line.clone());
                if wanted(&line) {
                    return Ok(line);
                }
            }
            bail!("stdout ended before {what}; it had {:?}", self.seen)
        };
        within(what, wait).await?
    }

    /// Waits for it to exit; returns its status, its stderr and the stdout lines seen.
    async fn exit(mut self) -> Result<(ExitStatus, String, Vec<String>)> {
        let mut child = self.child.take().context("already waited for")?;
        let stderr = self.stderr.take();
        let waited = tokio::task::spawn_blocking(move || {
            let status = child.wait();
            let stderr = stderr
                .and_then(|thread| thread.join().ok())
                .unwrap_or_default();
            status.map(|status| (status, stderr))
        });
        let (status, stderr) = within("sluice to exit", waited)
            .await
            .inspect_err(|_| kill(self.pid, libc::SIGKILL))?
            .context("the waiting thread panicked")?
            .context("cannot wait for sluice")?;
        Ok((status, stderr, std::mem::take(&mut self.seen)))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // A test that failed half-way leaves no sluice behind.
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_world_comes_out_exactly() -> Result<()> {
    let gateway = TestGateway::spawn().await;
    let done = finish(
        &gateway,
        &["run", "-l", "python", "-c", "print('hello, world')"],
        None,
    )
    .await?;
    assert_eq!(done.stdout_text(), "hello, world\n");
    assert_eq!(done.stderr, "");
    assert_eq!(done.code(), Some(0));

    // A script file: its extension names the language, and arguments follow `--`.
    let dir = std::env::temp_dir().join(format!("sluice-cli-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let script = dir.join("hello.py");
    std::fs::write(&script, "import sys\nprint('hello', sys.argv[1:])\n")?;
    let path = script.to_string_lossy().into_owned();
    let done = finish(&gateway, &["run", &path, "--", "a", "b c"], None).await?;
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(
        done.stdout_text(),
        "hello ['a', 'b c']\n",
        "{}",
        done.stderr
    );
    assert_eq!(done.code(), Some(0));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdout_and_stderr_stay_apart() -> Result<()> {
    let gateway = TestGateway::spawn().await;
    let code = "echo out; echo err >&2; echo more out; printf 'no newline' >&2";
    let done = finish(&gateway, &["run", "-l", "sh", "-c", code], None).await?;
    assert_eq!(done.stdout_text(), "out\nmore out\n");
    assert_eq!(done.stderr, "err\nno newline");
    assert_eq!(done.code(), Some(0));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_output_and_split_characters_are_byte_exact() -> Result<()> {
    let gateway = TestGateway::spawn().await;
    // "é" written in two halves, flushed apart, then bytes that are not UTF-8 at all.
    let code = "import sys\nout = sys.stdout.buffer\nout.write(b'\\xc3'); out.flush()\n\
                out.write(b'\\xa9\\xff\\x00\\x80end'); out.flush()\n\
                sys.stderr.buffer.write(b'\\xfe\\n')\n";
    let done = finish(&gateway, &["run", "-l", "python", "-c", code], None).await?;
    assert_eq!(done.stdout, b"\xc3\xa9\xff\x00\x80end");
    assert_eq!(
        done.stderr, "\u{fffd}\n",
        "stderr (lossy) holds the one odd byte"
    );
    assert_eq!(done.code(), Some(0));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_status_and_signals_pass_through() -> Result<()> {
    let gateway = TestGateway::spawn().await;
    let done = finish(&gateway, &["run", "-l", "sh", "-c", "exit 3"], None).await?;
    assert_eq!(done.code(), Some(3));
    assert_eq!(
        done.stderr, "",
        "an exit status of the program is not sluice's error"
    );

    let done = finish(&gateway, &["run", "-l", "sh", "-c", "kill -TERM $$"], None).await?;
    assert_eq!(done.code(), Some(128 + libc::SIGTERM), "{}", done.stderr);
    assert_eq!(done.stderr, "");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn piped_stdin_reaches_the_program_then_eof() -> Result<()> {
    let gateway = TestGateway::spawn().await;
    let input = b"first line\nsecond line, then no newline: \xc3\xa9".to_vec();
    let done = finish(
        &gateway,
        &["run", "-l", "sh", "-c", "cat"],
        Some(input.clone()),
    )
    .await?;
    assert_eq!(done.stdout, input, "cat ends only when it gets eof");
    assert_eq!(done.code(), Some(0), "{}", done.stderr);

    // Far more than the gateway queues for a program that does not read yet (1 MiB):
    // the input must still arrive whole and in order.
    let big: Vec<u8> = (0..300_000_u32)
        .flat_map(|i| format!("{i:09}\n").into_bytes())
        .collect();
    let done = finish(
        &gateway,
        // The program is slow to start reading, so the gateway refuses input for a while.
        &["run", "-l", "sh", "-c", "sleep 0.5; exec cat"],
        Some(big.clone()),
    )
    .await?;
    assert_eq!(done.code(), Some(0), "{}", done.stderr);
    ensure!(
        done.stdout == big,
        "{} bytes in, {} bytes out: input was lost or reordered",
        big.len(),
        done.stdout.len()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_have_their_own_exit_status_and_one_line() -> Result<()> {
    let gateway = TestGateway::spawn().await;
    let done = finish(
        &gateway,
        &[
            "run",
            "--timeout-ms",
            "300",
            "-l",
            "sh",
            "-c",
            "exec sleep 1000",
        ],
        None,
    )
    .await?;
    assert_eq!(done.code(), Some(124));
    done.assert_one_error_line("timeout")?;

    let done = finish(
        &gateway,
        &["run", "--output-bytes", "10", "-l", "sh", "-c", "yes"],
        None,
    )
    .await?;
    assert_eq!(done.code(), Some(125));
    assert_eq!(done.stdout, b"y\ny\ny\ny\ny\n", "exactly the output limit");
    done.assert_one_error_line("output")?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mistakes_get_one_clear_line_and_their_status() -> Result<()> {
    let gateway = TestGateway::spawn().await;
    let done = finish(
        &gateway,
        &["run", "-l", "cobol", "-c", "DISPLAY 'HI'."],
        None,
    )
    .await?;
    assert_eq!(done.code(), Some(126));
    done.assert_one_error_line("unknown language \"cobol\"")?;

    let done = finish(
        &gateway,
        &["run", "/nonexistent/sluice-cli/script.py"],
        None,
    )
    .await?;
    assert_eq!(done.code(), Some(66));
    done.assert_one_error_line("/nonexistent/sluice-cli/script.py")?;

    let dir = std::env::temp_dir().join(format!("sluice-cli-ext-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let script = dir.join("main.rb");
    std::fs::write(&script, "puts 1\n")?;
    let done = finish(&gateway, &["run", &script.to_string_lossy()], None).await?;
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(done.code(), Some(2));
    done.assert_one_error_line("--language")?;

    let done = finish(
        &gateway,
        &["run", "-l", "sh", "-c", "true", "--timeout-ms", "0"],
        None,
    )
    .await?;
    assert_eq!(done.code(), Some(126));
    done.assert_one_error_line("invalid_limit")?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_gateway_is_one_line() -> Result<()> {
    // A port that was just free: nothing listens there.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    drop(listener);
    let gateway = TestGateway::spawn().await;
    let url = format!("ws://{addr}/v1/ws");
    let done = finish(
        &gateway,
        &["run", "--url", &url, "-l", "sh", "-c", "echo never"],
        None,
    )
    .await?;
    assert_eq!(done.code(), Some(69));
    done.assert_one_error_line("cannot reach the gateway")?;
    assert_eq!(done.stdout_text(), "");

    let done = finish(&gateway, &["attach", "--url", &url, "any"], None).await?;
    assert_eq!(done.code(), Some(69));
    done.assert_one_error_line("cannot reach the gateway")?;
    // A live gateway at the wrong path (its playground page answers there): the line
    // names the endpoint.
    let page = format!("ws://{}/", gateway.addr());
    let done = finish(
        &gateway,
        &["run", "--url", &page, "-l", "sh", "-c", "echo never"],
        None,
    )
    .await?;
    assert_eq!(done.code(), Some(69));
    done.assert_one_error_line("endpoint is the path /v1/ws")?;
    // A credential in the URL (`?token=`) is not printed with it.
    let with_token = format!("{url}?token=sluice_not-for-the-terminal");
    let done = finish(&gateway, &["attach", "--url", &with_token, "any"], None).await?;
    assert_eq!(done.code(), Some(69));
    done.assert_one_error_line("token=REDACTED")?;
    ensure!(
        !done.stderr.contains("not-for-the-terminal"),
        "the credential was printed: {}",
        done.stderr
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_is_taken_from_the_flag_or_the_environment_and_a_refusal_is_one_line() -> Result<()>
{
    // The key file and its key, made as an operator makes them.
    struct Removed(PathBuf);
    impl Drop for Removed {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    let keys = std::env::temp_dir().join(unique_marker("cli-keys"));
    let _removed = Removed(keys.clone());
    let made = Command::new(sluice_binary())
        .args(["key", "add", "acme", "--file"])
        .arg(&keys)
        .output()
        .context("cannot run sluice key add")?;
    ensure!(made.status.success(), "sluice key add failed: {made:?}");
    let key = String::from_utf8(made.stdout)?.trim().to_owned();
    let mut config = sluice_gateway::Config::default();
    config.auth.api_keys_file = Some(keys.clone());
    let gateway = TestGateway::spawn_with(config).await;

    let hello = ["run", "-l", "sh", "-c", "echo hello"];
    let flag: Vec<&str> = hello.iter().copied().chain(["--token", &key]).collect();
    let done = finish(&gateway, &flag, None).await?;
    assert_eq!(done.stdout_text(), "hello\n", "{}", done.stderr);
    assert_eq!(done.code(), Some(0));

    let mut command = sluice(&gateway, &hello)?;
    command.env("SLUICE_TOKEN", &key);
    let done = within("sluice run with SLUICE_TOKEN", async {
        tokio::task::spawn_blocking(move || command.output()).await
    })
    .await???;
    assert_eq!(String::from_utf8_lossy(&done.stdout), "hello\n");
    assert_eq!(done.status.code(), Some(0));

    // No credential, or a wrong one: status 77 and one line with the gateway's reason.
    let done = finish(&gateway, &hello, None).await?;
    assert_eq!(done.code(), Some(77), "{}", done.stderr);
    done.assert_one_error_line("the gateway refused the credential: a credential is required")?;
    assert_eq!(done.stdout_text(), "");
    let wrong = format!("{key}x");
    let done = finish(&gateway, &["attach", "any", "--token", &wrong], None).await?;
    assert_eq!(done.code(), Some(77), "{}", done.stderr);
    done.assert_one_error_line("the gateway refused the credential: the credential is not valid")?;
    ensure!(
        !done.stderr.contains(&wrong),
        "the credential was echoed: {}",
        done.stderr
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_cancels_the_program() -> Result<()> {
    let gateway = TestGateway::spawn().await;
    let marker = unique_marker("cli-ctrl-c");
    let code = format!("echo ready; exec -a {marker} sleep 1000");
    let mut running = Running::start(sluice(&gateway, &["run", "-l", "bash", "-c", &code])?)?;
    running
        .line_where("the program's marker", |line| line == "ready")
        .await?;
    kill(running.pid, libc::SIGINT);
    let (status, stderr, _) = running.exit().await?;
    assert_eq!(status.code(), Some(130), "{stderr}");
    assert_eq!(
        stderr, "",
        "stderr is no terminal: no hint, and a cancel is no error"
    );
    wait_until_gone(&marker).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_sees_another_clients_execution() -> Result<()> {
    let gateway = TestGateway::spawn().await;
    let client = gateway.client().await?;
    let session = unique_marker("cli-attach");
    let mut execution = client
        .execute(ExecuteRequest {
            session: Some(session.clone()),
            ..request("other", "sh", "echo first; read line; echo \"got $line\"")
        })
        .await?;
    let mut events = Vec::new();
    wait_for_output(&mut execution, &mut events, "first").await?;

    let mut attached =
        Running::start(sluice(&gateway, &["attach", &session, "--until-terminal"])?)?;
    // The attach replays what happened before it...
    let parse = |line: &str| serde_json::from_str::<Event>(line).ok();
    attached
        .line_where("the replayed output", |line| {
            parse(line).is_some_and(|e| e.kind == EventKind::Stdout && e.data == "first\n")
        })
        .await?;
    // ...then follows the session live.
    execution.send_stdin("hello\n").await?;
    execution.close_stdin().await?;
    attached
        .line_where("the live output", |line| {
            parse(line).is_some_and(|e| e.kind == EventKind::Stdout && e.data == "got hello\n")
        })
        .await?;
    let terminal = attached
        .line_where("the terminal event", |line| {
            parse(line).is_some_and(|e| e.is_terminal())
        })
        .await?;
    let (status, stderr, lines) = attached.exit().await?;
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert_eq!(stderr, "");
    let terminal = parse(&terminal).context("the terminal line is an event")?;
    assert_eq!(terminal.kind, EventKind::Completed);
    assert_eq!(terminal.exit_code, Some(0));

    // Every event of the session once, in order: all of the other client's execution.
    let seen = lines
        .iter()
        .map(|line| serde_json::from_str(line).with_context(|| format!("not an event: {line}")))
        .collect::<Result<Vec<Event>>>()?;
    let kinds: Vec<EventKind> = seen.iter().map(|e| e.kind).collect();
    assert_eq!(kinds.first(), Some(&EventKind::Started), "{lines:?}");
    assert_eq!(kinds.last(), Some(&EventKind::Completed), "{lines:?}");
    for (index, event) in seen.iter().enumerate() {
        assert_eq!(event.sequence, index as u64 + 1, "{lines:?}");
        assert_eq!(event.id.as_deref(), Some("other"));
        assert_eq!(event.session.as_deref(), Some(session.as_str()));
    }

    // Later, from a given sequence on, in text.
    let since = (terminal.sequence - 1).to_string();
    let done = finish(
        &gateway,
        &[
            "attach",
            &session,
            "--since",
            &since,
            "--format",
            "text",
            "--until-terminal",
        ],
        None,
    )
    .await?;
    assert_eq!(done.code(), Some(0), "{}", done.stderr);
    assert_eq!(
        done.stdout_text(),
        format!("{} other completed exit_code=0\n", terminal.sequence)
    );

    // A session nobody opened.
    let done = finish(&gateway, &["attach", &unique_marker("cli-nobody")], None).await?;
    assert_eq!(done.code(), Some(126));
    done.assert_one_error_line("unknown_session")?;
    Ok(())
}

/// A gateway that refuses to start after it probed the host's cgroups (here: a
/// configured runtime it cannot find) leaves none of its cgroup directories behind.
/// (The review of the module split: the cgroup probe moved before the runtimes were
/// resolved, and such a start left `sluice-<pid>-*` in every hierarchy.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_that_fails_to_start_leaves_no_cgroup_behind() -> Result<()> {
    let mut child = Command::new(sluice_binary())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--runtime",
            "nosuch=/nonexistent/sluice-test-interpreter",
        ])
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting sluice serve")?;
    let pid = child.id();
    let status = within("sluice serve to refuse to start", async {
        tokio::task::spawn_blocking(move || child.wait()).await
    })
    .await???;
    ensure!(
        !status.success(),
        "sluice serve started with a missing runtime"
    );
    // Every cgroup hierarchy this gateway could have used: top level and one below
    // (v1 controllers mounted together, or the gateway's own cgroup).
    let prefix = format!("sluice-{pid}-");
    let mut left = Vec::new();
    let mut dirs = vec![(PathBuf::from("/sys/fs/cgroup"), 0)];
    while let Some((dir, depth)) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten().filter(|e| e.path().is_dir()) {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(&prefix) {
                left.push(entry.path());
            } else if depth < 2 && !name.starts_with("sluice-") {
                dirs.push((entry.path(), depth + 1));
            }
        }
    }
    ensure!(left.is_empty(), "cgroup directories left behind: {left:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_t_runs_the_program_on_a_terminal() -> Result<()> {
    let gateway = TestGateway::spawn().await;
    // Not started from a terminal: the remote one is 80x24, and this TERM is passed on.
    let mut command = sluice(
        &gateway,
        &[
            "run",
            "-t",
            "-l",
            "sh",
            "-c",
            "test -t 0 && test -t 1 && echo on a terminal; stty size; echo $TERM; echo err >&2",
        ],
    )?;
    command.env("TERM", "vt220");
    let output = within(
        "sluice run -t to exit",
        tokio::task::spawn_blocking(move || command.output()),
    )
    .await?
    .context("the waiting thread panicked")?
    .context("cannot run sluice")?;
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "on a terminal\r\n24 80\r\nvt220\r\nerr\r\n",
        "the terminal's one stream, stderr merged"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shell_types_its_input_and_exits_with_the_shells_status() -> Result<()> {
    let gateway = TestGateway::spawn().await;
    let done = finish(
        &gateway,
        &["shell", "-l", "sh"],
        Some(b"echo answer $((6 * 7))\nexit 3\n".to_vec()),
    )
    .await?;
    assert_eq!(done.code(), Some(3), "{}", done.stderr);
    ensure!(
        done.stdout_text().contains("answer 42\r\n"),
        "{:?}",
        done.stdout_text()
    );
    // Piped input that ends without `exit`: its end is typed as Ctrl-D, and the shell
    // ends there (it waited for more until its time limit).
    let done = finish(
        &gateway,
        &["shell", "-l", "sh"],
        Some(b"echo piped $((6 * 7))\n".to_vec()),
    )
    .await?;
    assert_eq!(done.code(), Some(0), "{}", done.stderr);
    ensure!(
        done.stdout_text().contains("piped 42\r\n"),
        "{:?}",
        done.stdout_text()
    );
    // An unknown language is one clear line.
    let done = finish(&gateway, &["shell", "-l", "cobol"], None).await?;
    assert_eq!(done.code(), Some(2));
    done.assert_one_error_line("bash, sh, python or node")?;
    Ok(())
}

/// A pseudo-terminal to run `sluice` on, as a user's window: its size set and read,
/// its settings read, the child made its session's leader with it as the controlling
/// terminal (so a size change sends it SIGWINCH, as a window's resize does).
#[allow(unsafe_code)] // openpty, ioctl and tcgetattr on descriptors this test owns
mod local_terminal {
    use anyhow::{bail, Result};
    use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
    use std::os::unix::process::CommandExt as _;
    use std::process::Command;

    /// Opens a pseudo-terminal of `rows` x `cols`: (the window's end, the program's end).
    pub(super) fn open(rows: u16, cols: u16) -> Result<(OwnedFd, OwnedFd)> {
        let size = winsize(rows, cols);
        let (mut master, mut slave) = (-1, -1);
        // SAFETY: openpty writes two new descriptors into the two live integers; the
        // name, settings and size pointers are null or point at a live local.
        let opened = unsafe {
            libc::openpty(
                &mut master,
                &mut slave,
                std::ptr::null_mut(),
                std::ptr::null(),
                &size,
            )
        };
        if opened != 0 {
            bail!("openpty: {}", std::io::Error::last_os_error());
        }
        // SAFETY: both were just opened and are owned by nothing else.
        Ok(unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) })
    }

    fn winsize(rows: u16, cols: u16) -> libc::winsize {
        libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        }
    }

    /// Resizes the window: the kernel sends SIGWINCH to the terminal's foreground group.
    pub(super) fn resize(terminal: &OwnedFd, rows: u16, cols: u16) -> Result<()> {
        let size = winsize(rows, cols);
        // SAFETY: TIOCSWINSZ reads the winsize behind the pointer, a live local.
        if unsafe { libc::ioctl(terminal.as_raw_fd(), libc::TIOCSWINSZ, &size) } != 0 {
            bail!("TIOCSWINSZ: {}", std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// The terminal's local, input and output modes.
    pub(super) fn modes(terminal: &OwnedFd) -> Result<(u32, u32, u32)> {
        // SAFETY: a termios is plain data; tcgetattr fills the live local.
        let mut settings = unsafe { std::mem::zeroed::<libc::termios>() };
        // SAFETY: as above, on a descriptor this test owns.
        if unsafe { libc::tcgetattr(terminal.as_raw_fd(), &mut settings) } != 0 {
            bail!("tcgetattr: {}", std::io::Error::last_os_error());
        }
        Ok((settings.c_lflag, settings.c_iflag, settings.c_oflag))
    }

    /// Runs `command` on the terminal whose program end is `slave`: stdin, stdout and
    /// stderr, a session of its own, the terminal its controlling one.
    #[allow(clippy::disallowed_methods)] // setsid and TIOCSCTTY have no std equivalent
    pub(super) fn attach(command: &mut Command, slave: &OwnedFd) -> Result<()> {
        command
            .stdin(slave.try_clone()?)
            .stdout(slave.try_clone()?)
            .stderr(slave.try_clone()?);
        // SAFETY: setsid and one ioctl on descriptor 0, both async-signal-safe, in the
        // child between fork and exec.
        unsafe {
            command.pre_exec(|| {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Ok(())
    }
}

/// `sluice run -t` on a local terminal, as a user runs it: the remote terminal has the
/// window's size, this terminal is raw while the program runs (no echo, no line
/// editing here), a resize of the window reaches the program (`stty size` follows),
/// and the terminal's settings are put back as they were when it exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_t_on_a_local_terminal_goes_raw_follows_resizes_and_restores_it() -> Result<()> {
    use std::sync::mpsc as std_mpsc;
    let gateway = TestGateway::spawn().await;
    let (window, slave) = local_terminal::open(30, 100)?;
    let before = local_terminal::modes(&slave)?;
    ensure!(
        before.0 & libc::ICANON != 0 && before.0 & libc::ECHO != 0,
        "a fresh terminal is in canonical mode with echo: {before:?}"
    );
    let program = "stty size; while read x; do [ \"$x\" = q ] && break; stty size; done; echo bye";
    let mut command = sluice(&gateway, &["run", "-t", "-l", "sh", "-c", program])?;
    local_terminal::attach(&mut command, &slave)?;
    let mut child = command.spawn().context("cannot start sluice")?;
    // What the window shows, read on a thread of its own as it comes.
    let (sender, shown) = std_mpsc::channel::<Vec<u8>>();
    let mut reader = std::fs::File::from(window.try_clone()?);
    std::thread::spawn(move || {
        let mut buffer = [0u8; 4096];
        while let Ok(read) = reader.read(&mut buffer) {
            if read == 0 || sender.send(buffer[..read].to_vec()).is_err() {
                return;
            }
        }
    });
    let mut screen = String::new();
    let patience = std::time::Duration::from_secs(30);
    let mut wait_for = |needle: &str, screen: &mut String| -> Result<()> {
        let deadline = std::time::Instant::now() + patience;
        while !screen.contains(needle) {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let chunk = shown
                .recv_timeout(left)
                .map_err(|_| anyhow::anyhow!("no {needle:?} on the window: {screen:?}"))?;
            screen.push_str(&String::from_utf8_lossy(&chunk));
        }
        Ok(())
    };
    let mut typing = std::fs::File::from(window.try_clone()?);
    wait_for("30 100\r\n", &mut screen)?;
    let during = local_terminal::modes(&slave)?;
    ensure!(
        during.0 & (libc::ICANON | libc::ECHO | libc::ISIG) == 0,
        "raw while the program runs: {during:?}"
    );
    // The window grows; each line typed asks the program for its size again, until
    // the resize has reached it (a line typed before the resize was sent is answered
    // with the old size).
    local_terminal::resize(&window, 40, 120)?;
    let mut answers = 0;
    loop {
        typing.write_all(b"again\r")?;
        answers += 1;
        let before_answer = screen.len();
        wait_for_count(&mut wait_for, &mut screen, before_answer)?;
        if screen[before_answer..].contains("40 120") {
            break;
        }
        ensure!(
            answers < 50,
            "the resize never reached the program: {screen:?}"
        );
    }
    typing.write_all(b"q\r")?;
    wait_for("bye", &mut screen)?;
    let status = within(
        "sluice run -t to exit",
        tokio::task::spawn_blocking(move || child.wait()),
    )
    .await?
    .context("the waiting thread panicked")?
    .context("cannot wait for sluice")?;
    ensure!(status.code() == Some(0), "{status:?}: {screen:?}");
    let after = local_terminal::modes(&slave)?;
    ensure!(
        after == before,
        "settings put back: {before:?} then {after:?}"
    );
    Ok(())
}

/// Waits until the window shows one more `stty size` answer after `from`.
fn wait_for_count(
    wait_for: &mut impl FnMut(&str, &mut String) -> Result<()>,
    screen: &mut String,
    from: usize,
) -> Result<()> {
    let mut tail = screen.split_off(from);
    let answered = |text: &str| {
        text.split("\r\n")
            .any(|line| line.split(' ').filter(|p| p.parse::<u16>().is_ok()).count() == 2)
    };
    while !answered(&tail) {
        let mut more = String::new();
        wait_for("\n", &mut more)?;
        tail.push_str(&more);
    }
    screen.push_str(&tail);
    Ok(())
}

/// `--workspace` keeps a session's files between runs (`sluice run`, then `sluice shell`
/// in the same session), and asks for `--session`. Workspaces need a root gateway:
/// elsewhere the refusal is one clear line (status 126).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workspace_keeps_a_sessions_files_between_runs_and_needs_a_session() -> Result<()> {
    let gateway = TestGateway::spawn().await;
    let done = finish(
        &gateway,
        &["run", "--workspace", "-l", "sh", "-c", "true"],
        None,
    )
    .await?;
    ensure!(done.code() == Some(2), "{done:?}");
    ensure!(done.stderr.contains("--session"), "{}", done.stderr);

    let session = unique_marker("cli-ws");
    let first = [
        "run",
        "--session",
        &session,
        "--workspace",
        "-l",
        "sh",
        "-c",
    ];
    let wrote = finish(
        &gateway,
        &[&first[..], &["echo kept > notes.txt"]].concat(),
        None,
    )
    .await?;
    if !sluice_tests::running_as_root() {
        ensure!(wrote.code() == Some(126), "{wrote:?}");
        return wrote.assert_one_error_line("root");
    }
    ensure!(wrote.code() == Some(0), "{wrote:?}");
    let shell = ["shell", "-l", "sh", "--session", &session, "--workspace"];
    let read = finish(&gateway, &shell, Some(b"cat notes.txt\nexit\n".to_vec())).await?;
    ensure!(read.code() == Some(0), "{read:?}");
    ensure!(
        read.stdout_text().contains("kept\r\n"),
        "{:?}",
        read.stdout_text()
    );
    Ok(())
}
