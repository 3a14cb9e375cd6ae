//! Terminal mode (`tty: true`): the program sees a terminal of the size asked for, with
//! its `TERM`; stderr is merged into the one `stdout` stream; typed input is a terminal's
//! (Ctrl-C interrupts, Ctrl-D and `eof` end a read, `read -s` does not echo); `resize`
//! delivers SIGWINCH; the node REPL evaluates what is typed; `bash -i` in a session with
//! a workspace starts in it; a cancel hangs up even a shell that ignores SIGTERM; limits,
//! base64 output and a second attached socket work as for pipes; every refusal has its
//! code.

use anyhow::{bail, ensure, Context as _, Result};
use serde_json::json;
use sluice_gateway::Config;
use sluice_protocol::{
    ClientFrame, Encoding, ErrorCode, Event, EventKind, ExecuteRequest, LimitKind, Limits,
    ResizeFrame,
};
use sluice_tests::{
    assert_socket_refusal, assert_stream_ok, events_of, processes_with, request, skip, text_of,
    unique_marker, wait_until_gone, RawSocket, TestGateway,
};
use std::time::Duration;

/// An execute of `code` in `language` on a terminal of `cols` x `rows`.
fn on_terminal(id: &str, language: &str, code: &str, (cols, rows): (u16, u16)) -> ExecuteRequest {
    ExecuteRequest {
        tty: true,
        cols: Some(cols),
        rows: Some(rows),
        ..request(id, language, code)
    }
}

/// Standard padded base64, decoded; `None` if it is not.
fn decode_base64(text: &str) -> Option<Vec<u8>> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut bytes = Vec::new();
    for quad in text.as_bytes().chunks(4) {
        let mut bits = 0_u32;
        let mut padding = 0;
        for &c in quad {
            bits <<= 6;
            match c {
                b'=' => padding += 1,
                _ => bits |= u32::try_from(ALPHABET.iter().position(|&a| a == c)?).ok()?,
            }
        }
        let [_, a, b, c] = bits.to_be_bytes();
        bytes.extend(&[a, b, c][..3 - padding]);
    }
    Some(bytes)
}

async fn resize(socket: &mut RawSocket, id: &str, cols: u16, rows: u16) -> Result<()> {
    let frame = ClientFrame::Resize(ResizeFrame {
        id: id.to_owned(),
        session: None,
        cols,
        rows,
    });
    socket.send_frame(&frame).await
}

/// `text` without its terminal control sequences (`ESC [ ... final byte`): colours,
/// cursor moves and line clears, which a line editor such as node's scatters through
/// what it prints.
fn without_escapes(text: &str) -> String {
    let mut plain = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\x1b' && chars.peek() == Some(&'[') {
            chars.next();
            // Parameters and intermediates, up to the final byte (@ to ~).
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    plain
}

/// Reads until what `id` printed, control sequences left out, contains `needle`; fails if
/// it ends first. Counts what was received before.
async fn wait_for_plain_stdout(socket: &mut RawSocket, id: &str, needle: &str) -> Result<()> {
    loop {
        let seen: Vec<Event> = events_of(socket.received(), id)
            .into_iter()
            .cloned()
            .collect();
        if without_escapes(&text_of(&seen, EventKind::Stdout)).contains(needle) {
            return Ok(());
        }
        if let Some(end) = seen.iter().find(|e| e.is_terminal()) {
            bail!(
                "{id} ended before printing {needle:?}: {end:?}\noutput: {:?}",
                text_of(&seen, EventKind::Stdout)
            );
        }
        socket
            .next_event_where(|e| e.id.as_deref() == Some(id))
            .await?;
    }
}

/// Everything `id` printed, after its terminal event, which must be `completed` with
/// exit code 0.
async fn completed_output(socket: &mut RawSocket, id: &str) -> Result<(String, Vec<Event>)> {
    let events = socket.events_until_terminal(id).await?;
    let terminal = events.last().context("no events")?;
    ensure!(
        terminal.kind == EventKind::Completed && terminal.exit_code == Some(0),
        "{id} did not complete cleanly: {terminal:?}\noutput: {:?}",
        text_of(&events, EventKind::Stdout)
    );
    Ok((text_of(&events, EventKind::Stdout), events))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminal_program_sees_a_tty_of_its_size_and_term_with_stderr_merged() -> Result<()> {
    let gateway = TestGateway::spawn().await;
    let mut socket = gateway.raw().await?;
    let code = "import os, sys\n\
                print('tty', os.isatty(0), os.isatty(1), os.isatty(2))\n\
                print('size', os.get_terminal_size())\n\
                print('term', os.environ.get('TERM'))\n\
                print('name', os.ttyname(0))\n\
                sys.stdout.flush()\n\
                print('to stderr', file=sys.stderr)\n";
    socket
        .execute(on_terminal("t", "python", code, (100, 30)))
        .await?;
    let (out, events) = completed_output(&mut socket, "t").await?;
    assert_stream_ok(&events);
    ensure!(out.contains("tty True True True"), "{out:?}");
    ensure!(out.contains("columns=100, lines=30"), "{out:?}");
    ensure!(out.contains("term xterm-256color"), "{out:?}");
    // The terminal has a name inside the jail too (`/dev/console` there).
    ensure!(out.contains("name /dev/"), "{out:?}");
    // A terminal turns "\n" into "\r\n", and stderr comes through it, as stdout.
    ensure!(out.contains("to stderr\r\n"), "{out:?}");
    ensure!(
        !events.iter().any(|e| e.kind == EventKind::Stderr),
        "a terminal has no stderr stream: {events:?}"
    );
    // A `term` of the request's own.
    let request = ExecuteRequest {
        term: Some("vt100".to_owned()),
        ..on_terminal("t2", "sh", "echo $TERM", (80, 24))
    };
    socket.execute(request).await?;
    let (out, _) = completed_output(&mut socket, "t2").await?;
    assert_eq!(out, "vt100\r\n");
    socket.close().await?;
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resize_delivers_sigwinch_and_stty_size_follows() -> Result<()> {
    let gateway = TestGateway::spawn().await;
    let mut socket = gateway.raw().await?;
    // SIGWINCH is blocked and waited for, so the resize cannot come too early.
    let code = sluice_tests::WINCH_PROBE;
    socket
        .execute(on_terminal("r", "python", code, (100, 30)))
        .await?;
    socket.wait_for_stdout("r", "ready").await?;
    resize(&mut socket, "r", 50, 10).await?;
    let (out, _) = completed_output(&mut socket, "r").await?;
    let all = text_of(socket.received(), EventKind::Stdout);
    ensure!(all.starts_with("30 100\r\nready"), "{all:?}");
    ensure!(out.contains("winch\r\n10 50\r\n"), "{out:?}");
    socket.close().await?;
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_interrupts_the_python_repl_which_survives_and_ctrl_d_ends_it() -> Result<()> {
    let gateway = TestGateway::spawn().await;
    let mut socket = gateway.raw().await?;
    socket
        .execute(on_terminal("repl", "sh", "exec python3 -i -q", (80, 24)))
        .await?;
    socket.wait_for_stdout("repl", ">>> ").await?;
    socket
        .stdin("repl", Some("import time; time.sleep(1000)\r"), false)
        .await?;
    socket
        .wait_for_stdout("repl", "time.sleep(1000)\r\n")
        .await?;
    // Ctrl-C, typed: the terminal sends SIGINT to the REPL's foreground group.
    socket.stdin("repl", Some("\x03"), false).await?;
    socket.wait_for_stdout("repl", "KeyboardInterrupt").await?;
    socket.stdin("repl", Some("print(6 * 7)\r"), false).await?;
    // The next prompt first: typed ahead, Ctrl-D would reach the terminal before the
    // REPL's line editor takes it (as in any terminal).
    socket.wait_for_stdout("repl", "42\r\n>>> ").await?;
    // Ctrl-D at an empty prompt: end of input, and the REPL exits.
    socket.stdin("repl", Some("\x04"), false).await?;
    completed_output(&mut socket, "repl").await?;
    socket.close().await?;
    gateway.shutdown().await
}

/// True when node runs on this host: the gateway offers the `node` language only then.
fn node_is_installed() -> bool {
    std::process::Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_repl_on_a_terminal_evaluates_typed_lines_and_prints_their_values() -> Result<()> {
    if !node_is_installed() {
        skip("node is not installed");
        return Ok(());
    }
    let gateway = TestGateway::spawn().await;
    let mut socket = gateway.raw().await?;
    // As `sluice shell -l node` starts it.
    socket
        .execute(on_terminal(
            "node",
            "node",
            "require('repl').start();\n",
            (80, 24),
        ))
        .await?;
    wait_for_plain_stdout(&mut socket, "node", "> ").await?;
    // A binding first, then a line that uses it: its value comes from the REPL's own
    // state, and is printed (as the REPL prints a string: quoted, before the next prompt).
    socket
        .stdin("node", Some("const word = 'x'.repeat(3)\r"), false)
        .await?;
    wait_for_plain_stdout(&mut socket, "node", "undefined\r\n> ").await?;
    socket
        .stdin("node", Some("[6 * 7, word].join(':')\r"), false)
        .await?;
    wait_for_plain_stdout(&mut socket, "node", "'42:xxx'\r\n> ").await?;
    socket.stdin("node", Some(".exit\r"), false).await?;
    completed_output(&mut socket, "node").await?;
    assert_stream_ok(socket.received());
    socket.close().await?;
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interactive_bash_in_a_session_with_a_workspace_starts_in_it() -> Result<()> {
    if !sluice_tests::running_as_root() {
        skip("session workspaces need a gateway running as root");
        return Ok(());
    }
    let gateway = TestGateway::spawn().await;
    let mut socket = gateway.raw().await?;
    let session = "shell-ws";
    socket.attach_workspace(session).await?;
    socket
        .send_json(
            &json!({"type": "write_file", "request": "w", "session": session,
                           "path": "from-frame.txt", "data": "x"}),
        )
        .await?;
    let written = socket
        .next_event_where(|e| e.request.as_deref() == Some("w"))
        .await?;
    ensure!(written.kind == EventKind::FileWritten, "{written:?}");
    // Where a pipe execution of the session runs: the workspace.
    let pwd = ExecuteRequest {
        session: Some(session.to_owned()),
        ..request("pwd", "sh", "pwd")
    };
    socket.execute(pwd).await?;
    let events = socket.events_until_terminal("pwd").await?;
    let out = text_of(&events, EventKind::Stdout);
    let workspace = out.trim_end();
    ensure!(
        workspace.starts_with('/'),
        "pwd printed {out:?}: {events:?}"
    );
    let shell = ExecuteRequest {
        session: Some(session.to_owned()),
        ..on_terminal("sh", "bash", "exec bash -i", (80, 24))
    };
    socket.execute(shell).await?;
    socket.wait_for_stdout("sh", "$ ").await?;
    // The echo of the typed line holds `$PWD` unexpanded and no file name: only what the
    // shell runs prints the directory and the file the frame wrote.
    socket
        .stdin("sh", Some("echo \"at:$PWD\"; ls -1; exit\r"), false)
        .await?;
    let (out, _) = completed_output(&mut socket, "sh").await?;
    ensure!(
        out.contains(&format!("at:{workspace}\r\n")),
        "the shell did not start in the workspace {workspace:?}: {out:?}"
    );
    ensure!(
        out.lines().any(|line| line.trim_end() == "from-frame.txt"),
        "ls did not list the file the frame wrote: {out:?}"
    );
    socket.close().await?;
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eof_types_ctrl_d_and_input_goes_on_after_it() -> Result<()> {
    let gateway = TestGateway::spawn().await;
    let mut socket = gateway.raw().await?;
    // Two reads to end of input: a pipe's stdin could end only once.
    let code = "import sys\n\
                print('first', repr(sys.stdin.read()), flush=True)\n\
                print('second', repr(sys.stdin.read()), flush=True)\n";
    socket
        .execute(on_terminal("eof", "python", code, (80, 24)))
        .await?;
    socket.stdin("eof", Some("one\r"), true).await?;
    socket.wait_for_stdout("eof", "first 'one\\n'").await?;
    socket.stdin("eof", Some("two\r"), true).await?;
    let (out, _) = completed_output(&mut socket, "eof").await?;
    ensure!(out.contains("second 'two\\n'"), "{out:?}");
    // The request's own `stdin` is typed too, without ending the input.
    let request = ExecuteRequest {
        stdin: Some("typed\r".to_owned()),
        ..on_terminal("typed", "sh", "read line; echo \"got $line\"", (80, 24))
    };
    socket.execute(request).await?;
    let (out, _) = completed_output(&mut socket, "typed").await?;
    ensure!(out.ends_with("got typed\r\n"), "{out:?}");
    socket.close().await?;
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_s_does_not_echo_a_password() -> Result<()> {
    let gateway = TestGateway::spawn().await;
    let mut socket = gateway.raw().await?;
    let code = "read -s -p 'password: ' pw; echo; echo \"length ${#pw}\"";
    socket
        .execute(on_terminal("pw", "bash", code, (80, 24)))
        .await?;
    socket.wait_for_stdout("pw", "password: ").await?;
    socket.stdin("pw", Some("hunter22\r"), false).await?;
    let (out, _) = completed_output(&mut socket, "pw").await?;
    ensure!(out.contains("length 8"), "{out:?}");
    ensure!(
        !out.contains("hunter22"),
        "the password was echoed: {out:?}"
    );
    socket.close().await?;
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_screen_program_draws_with_escape_sequences_and_takes_keys() -> Result<()> {
    let gateway = TestGateway::spawn().await;
    let mut socket = gateway.raw().await?;
    // curses: the alternate screen, cursor addressing, a redraw on each key, raw keys.
    // Each frame is drawn a row lower, so the redraw writes it whole.
    let code = "import curses\n\
                def main(screen):\n\
                \x20   n = 0\n\
                \x20   while True:\n\
                \x20       screen.erase()\n\
                \x20       screen.addstr(5 + n, 10, f'frame {n}')\n\
                \x20       screen.refresh()\n\
                \x20       if screen.getkey() == 'q':\n\
                \x20           return\n\
                \x20       n += 1\n\
                curses.wrapper(main)\n\
                print('left full screen')\n";
    socket
        .execute(on_terminal("top", "python", code, (80, 24)))
        .await?;
    socket.wait_for_stdout("top", "frame 0").await?;
    socket.stdin("top", Some("x"), false).await?;
    socket.wait_for_stdout("top", "frame 1").await?;
    socket.stdin("top", Some("q"), false).await?;
    let (_, _) = completed_output(&mut socket, "top").await?;
    let all = text_of(socket.received(), EventKind::Stdout);
    // Entered and left the alternate screen; moved the cursor to row 6, column 11.
    ensure!(all.contains("\x1b[?1049h"), "{all:?}");
    ensure!(all.contains("\x1b[?1049l"), "{all:?}");
    ensure!(all.contains("\x1b[6;11H"), "{all:?}");
    ensure!(all.contains("left full screen"), "{all:?}");
    socket.close().await?;
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_hangs_up_an_interactive_shell_and_its_job_without_the_kill_grace() -> Result<()> {
    // A grace longer than any wait here: a cancel that needed SIGKILL would time out.
    let gateway = TestGateway::spawn_with(Config {
        kill_grace: Duration::from_secs(600),
        ..Config::default()
    })
    .await;
    let mut socket = gateway.raw().await?;
    let marker = unique_marker("tty-job");
    socket
        .execute(on_terminal("sh", "bash", "exec bash -i", (80, 24)))
        .await?;
    socket.wait_for_stdout("sh", "$ ").await?;
    // A foreground job, in a process group of its own: the shell's job control.
    let job = format!("python3 -c 'import time; time.sleep(1000)' {marker}\r");
    socket.stdin("sh", Some(&job), false).await?;
    sluice_tests::eventually(sluice_tests::patience(), "the shell's job runs", || {
        !processes_with(&marker).is_empty()
    })
    .await?;
    socket.cancel("sh").await?;
    let events = socket.events_until_terminal("sh").await?;
    let terminal = events.last().context("no events")?;
    assert_eq!(terminal.kind, EventKind::Cancelled, "{terminal:?}");
    wait_until_gone(&marker).await?;
    socket.close().await?;
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_and_base64_work_on_a_terminal() -> Result<()> {
    let gateway = TestGateway::spawn().await;
    let mut socket = gateway.raw().await?;
    let request = ExecuteRequest {
        limits: Limits {
            output_bytes: Some(1000),
            ..Limits::default()
        },
        ..on_terminal("yes", "sh", "yes", (80, 24))
    };
    socket.execute(request).await?;
    let events = socket.events_until_terminal("yes").await?;
    let terminal = events.last().context("no events")?;
    assert_eq!(terminal.kind, EventKind::ResourceLimit, "{terminal:?}");
    assert_eq!(terminal.limit, Some(LimitKind::Output), "{terminal:?}");
    assert_eq!(text_of(&events, EventKind::Stdout).len(), 1000);

    let request = ExecuteRequest {
        encoding: Encoding::Base64,
        ..on_terminal("b64", "sh", "printf 'a\\nb\\377'", (80, 24))
    };
    socket.execute(request).await?;
    let (_, events) = completed_output(&mut socket, "b64").await?;
    let mut bytes = Vec::new();
    for event in events.iter().filter(|e| e.kind == EventKind::Stdout) {
        bytes.extend(decode_base64(&event.data).context("base64")?);
    }
    assert_eq!(bytes, b"a\r\nb\xff");
    socket.close().await?;
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_socket_attached_to_the_session_sees_the_same_terminal_and_may_type() -> Result<()>
{
    let gateway = TestGateway::spawn().await;
    let mut first = gateway.raw().await?;
    let request = ExecuteRequest {
        session: Some("shared-terminal".to_owned()),
        ..on_terminal("cat", "sh", "cat", (80, 24))
    };
    first.execute(request).await?;
    first
        .next_event_where(|e| e.kind == EventKind::Started)
        .await?;
    let mut second = gateway.raw().await?;
    second.attach("shared-terminal", Some(0)).await?;
    second
        .next_event_where(|e| e.kind == EventKind::Started)
        .await?;
    // Typed from the second socket, echoed by the terminal and printed by cat: both see it.
    let frame = ClientFrame::Stdin(sluice_protocol::StdinFrame {
        id: "cat".to_owned(),
        session: Some("shared-terminal".to_owned()),
        data: Some("hello\r".to_owned()),
        eof: false,
    });
    second.send_frame(&frame).await?;
    second.wait_for_stdout("cat", "hello\r\nhello\r\n").await?;
    first.wait_for_stdout("cat", "hello\r\nhello\r\n").await?;
    // And resized from it.
    let frame = ClientFrame::Resize(ResizeFrame {
        id: "cat".to_owned(),
        session: Some("shared-terminal".to_owned()),
        cols: 40,
        rows: 12,
    });
    second.send_frame(&frame).await?;
    first.cancel("cat").await?;
    let first_events = first.events_until_terminal("cat").await?;
    let second_events = second.events_until_terminal("cat").await?;
    assert_eq!(
        text_of(&first_events, EventKind::Stdout),
        text_of(&second_events, EventKind::Stdout)
    );
    // Nothing was refused on either socket.
    for socket in [&first, &second] {
        ensure!(
            !socket.received().iter().any(|e| e.kind == EventKind::Error),
            "{:?}",
            socket.received()
        );
    }
    first.close().await?;
    second.close().await?;
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminal_refusals_have_their_codes_and_the_socket_keeps_working() -> Result<()> {
    let gateway = TestGateway::spawn().await;
    let mut socket = gateway.raw().await?;
    // Resizing a pipe execution.
    socket
        .execute(request("pipe", "sh", "echo ready; read x"))
        .await?;
    socket.wait_for_stdout("pipe", "ready").await?;
    resize(&mut socket, "pipe", 80, 24).await?;
    let refusal = socket.next_socket_error().await?;
    assert_socket_refusal(&refusal, ErrorCode::NotATerminal);
    ensure!(refusal.data.contains("tty"), "{refusal:?}");
    // Resizing nothing.
    resize(&mut socket, "nobody", 80, 24).await?;
    let refusal = socket.next_socket_error().await?;
    assert_socket_refusal(&refusal, ErrorCode::UnknownExecution);
    // Frames that cannot be right.
    let bad = [
        r#"{"type":"resize","id":"pipe","cols":0,"rows":24}"#,
        r#"{"type":"resize","id":"pipe","cols":80,"rows":1001}"#,
        r#"{"type":"resize","id":"pipe","cols":80}"#,
    ];
    for text in bad {
        socket.send_text(text).await?;
        let refusal = socket.next_socket_error().await?;
        assert_eq!(
            refusal.code,
            Some(ErrorCode::BadRequest),
            "{text}: {refusal:?}"
        );
    }
    let bad_executes = [
        (
            r#"{"type":"execute","id":"x1","language":"sh","code":"true","cols":80}"#,
            "\"cols\" is only for a terminal",
        ),
        (
            r#"{"type":"execute","id":"x2","language":"sh","code":"true","tty":true,"rows":0}"#,
            "\"rows\" must be 1 to 1000",
        ),
        (
            r#"{"type":"execute","id":"x3","language":"sh","code":"true","tty":true,"term":"x;rm"}"#,
            "\"term\" must be",
        ),
        (
            r#"{"type":"execute","id":"x4","language":"python","code":"1","tty":true,"persistent":true,"session":"s"}"#,
            "do not go together",
        ),
    ];
    for (text, says) in bad_executes {
        socket.send_text(text).await?;
        let refusal = socket.next_socket_error().await?;
        assert_eq!(
            refusal.code,
            Some(ErrorCode::BadRequest),
            "{text}: {refusal:?}"
        );
        ensure!(refusal.data.contains(says), "{text}: {refusal:?}");
    }
    // The pipe execution never noticed.
    socket.stdin("pipe", Some("go\n"), true).await?;
    let events = socket.events_until_terminal("pipe").await?;
    let terminal = events.last().context("no events")?;
    assert_eq!(terminal.kind, EventKind::Completed, "{terminal:?}");
    socket.assert_still_works().await?;
    socket.close().await?;
    gateway.shutdown().await
}
