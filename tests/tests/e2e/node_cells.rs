//! Persistent Node cells over a real socket (issue 15): state kept between cells,
//! top-level `await`, the last expression's value as the result, displays, structured
//! errors without the kernel's frames, cancel of a busy loop and of a pending `await`,
//! large output in order, a child process's inherited output, completion, and a
//! session switching language.

use anyhow::{ensure, Context as _, Result};
use sluice_protocol::{ClientFrame, CompleteFrame, EventKind, ExecuteRequest};
use sluice_tests::{assert_stream_ok, text_of, RawSocket, TestGateway};

fn node_cell(session: &str, id: &str, code: &str) -> ExecuteRequest {
    ExecuteRequest {
        language: "node".into(),
        ..sluice_tests::cell(session, id, code)
    }
}

/// Runs a cell to its terminal event and returns its events.
async fn run(
    socket: &mut RawSocket,
    session: &str,
    id: &str,
    code: &str,
) -> Result<Vec<sluice_protocol::Event>> {
    socket.execute(node_cell(session, id, code)).await?;
    socket.events_until_terminal(id).await
}

fn result_text(events: &[sluice_protocol::Event]) -> Option<&str> {
    events
        .iter()
        .find(|e| e.kind == EventKind::Result)?
        .bundle
        .as_ref()?
        .get("text/plain")?
        .as_str()
}

fn completed(events: &[sluice_protocol::Event], code: i32) -> Result<&sluice_protocol::Event> {
    let last = events.last().context("no terminal event")?;
    ensure!(
        last.kind == EventKind::Completed && last.exit_code == Some(code),
        "expected completed with {code}: {events:#?}"
    );
    Ok(last)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_cells_keep_state_await_at_the_top_level_and_show_values() -> Result<()> {
    let gateway = TestGateway::spawn().await;
    let mut socket = gateway.raw().await?;
    let events = run(
        &mut socket,
        "js",
        "one",
        "let x = 41;\nconst next = (n) => n + 1;\nvar seen = [];",
    )
    .await?;
    completed(&events, 0)?;
    ensure!(result_text(&events).is_none(), "{events:#?}");
    let events = run(
        &mut socket,
        "js",
        "two",
        "console.log('x is', x);\nconst later = await new Promise((done) => setTimeout(() => done(x), 5));\nnext(later)",
    )
    .await?;
    let last = completed(&events, 0)?;
    assert_eq!(text_of(&events, EventKind::Stdout), "x is 41\n");
    assert_eq!(result_text(&events), Some("42"), "{events:#?}");
    assert_eq!(last.execution_count, Some(2));
    // Declarations made under `await` persist too, and displays come in order.
    let events = run(
        &mut socket,
        "js",
        "three",
        "console.log('before');\ndisplay.html('<b>bold</b>');\nconst handle = display({ a: 1 }, { display_id: 'counter' });\nhandle.update('two');\nconsole.error('on stderr');\nlater + 1",
    )
    .await?;
    completed(&events, 0)?;
    let order: Vec<String> = events
        .iter()
        .filter(|e| !matches!(e.kind, EventKind::Started | EventKind::Completed))
        .map(|e| {
            let html = e.bundle.as_ref().and_then(|b| b.get("text/html")?.as_str());
            format!("{}:{}", e.kind, html.unwrap_or(e.data.trim_end()))
        })
        .collect();
    let stdout_side: Vec<&String> = order.iter().filter(|o| !o.starts_with("stderr")).collect();
    assert_eq!(
        stdout_side,
        [
            "stdout:before",
            "display:<b>bold</b>",
            "display:{ a: 1 }",
            "update_display:'two'",
            "result:42"
        ],
        "{events:#?}"
    );
    assert_eq!(text_of(&events, EventKind::Stderr), "on stderr\n");
    let update = events
        .iter()
        .find(|e| e.kind == EventKind::UpdateDisplay)
        .context("no update_display")?;
    assert_eq!(update.display_id.as_deref(), Some("counter"));
    let html = events
        .iter()
        .find(|e| e.kind == EventKind::Display)
        .and_then(|e| e.bundle.as_ref()?.get("text/html")?.as_str());
    assert_eq!(html, Some("<b>bold</b>"));
    assert_stream_ok(socket.received());
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_cell_errors_are_structured_and_the_state_survives() -> Result<()> {
    let gateway = TestGateway::spawn().await;
    let mut socket = gateway.raw().await?;
    completed(
        &run(&mut socket, "js", "setup", "let kept = 'still here'").await?,
        0,
    )?;
    let events = run(
        &mut socket,
        "js",
        "throws",
        "function inner() { throw new TypeError('bad value'); }\ninner()",
    )
    .await?;
    let last = completed(&events, 1)?;
    let exception = last.exception.as_ref().context("no exception")?;
    assert_eq!(exception.ename, "TypeError");
    assert_eq!(exception.evalue, "bad value");
    ensure!(
        exception.traceback.iter().any(|l| l.contains("inner")),
        "{exception:?}"
    );
    ensure!(
        !exception
            .traceback
            .iter()
            .any(|l| l.contains("sluice_kernel") || l.contains("node:")),
        "the kernel's frames leaked: {exception:?}"
    );
    ensure!(
        text_of(&events, EventKind::Stderr).contains("TypeError: bad value"),
        "{events:#?}"
    );
    // A syntax error, a rejected await, and a thrown non-Error.
    let last = completed(&run(&mut socket, "js", "syntax", "for (").await?, 1)?.clone();
    assert_eq!(
        last.exception.as_ref().map(|e| e.ename.as_str()),
        Some("SyntaxError")
    );
    let events = run(
        &mut socket,
        "js",
        "rejects",
        "await Promise.reject(new RangeError('out of range'))",
    )
    .await?;
    assert_eq!(
        completed(&events, 1)?
            .exception
            .as_ref()
            .map(|e| e.evalue.as_str()),
        Some("out of range")
    );
    let events = run(&mut socket, "js", "plain", "throw 7").await?;
    assert_eq!(
        completed(&events, 1)?
            .exception
            .as_ref()
            .map(|e| (e.ename.as_str(), e.evalue.as_str())),
        Some(("number", "7"))
    );
    // process.exit ends the cell, not the interpreter.
    completed(
        &run(&mut socket, "js", "exits", "process.exit(3)").await?,
        3,
    )?;
    let events = run(&mut socket, "js", "after", "kept").await?;
    completed(&events, 0)?;
    assert_eq!(result_text(&events), Some("'still here'"));
    assert_stream_ok(socket.received());
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_interrupts_a_busy_node_loop_and_a_pending_await() -> Result<()> {
    let gateway = TestGateway::spawn().await;
    let mut socket = gateway.raw().await?;
    completed(&run(&mut socket, "js", "setup", "let spins = 0").await?, 0)?;
    for (id, code) in [
        (
            "busy",
            "while (true) { spins++; if (spins === 100000) console.log('spinning'); }",
        ),
        (
            "waits",
            "console.log('spinning'); await new Promise(() => {})",
        ),
    ] {
        socket.execute(node_cell("js", id, code)).await?;
        // Cancelled once it has printed: the cell runs by then.
        socket
            .next_event_where(|e| e.id.as_deref() == Some(id) && e.kind == EventKind::Stdout)
            .await?;
        socket.cancel(id).await?;
        let events = socket.events_until_terminal(id).await?;
        let last = events.last().context("no terminal event")?;
        ensure!(
            last.kind == EventKind::Cancelled && last.data == "execution cancelled",
            "{id}: {events:#?}"
        );
    }
    // The interpreter and its state stayed.
    let events = run(&mut socket, "js", "after", "spins > 0").await?;
    completed(&events, 0)?;
    assert_eq!(result_text(&events), Some("true"));
    assert_stream_ok(socket.received());
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_cell_output_is_whole_and_child_processes_write_to_the_cell() -> Result<()> {
    let gateway = TestGateway::spawn().await;
    let mut socket = gateway.raw().await?;
    // Three megabytes, more than the pipes hold, ending with a write that stops in an
    // escape sequence (the start of a cell's end marker), finished by the next write.
    let code = "const line = 'x'.repeat(1023) + '\\n';\nfor (let i = 0; i < 3072; i++) process.stdout.write(line);\nprocess.stdout.write('\\x1b');\nconsole.log('[0m')";
    let events = run(&mut socket, "js", "big", code).await?;
    completed(&events, 0)?;
    let text = text_of(&events, EventKind::Stdout);
    ensure!(
        text.len() == 3072 * 1024 + "\x1b[0m\n".len(),
        "got {} bytes",
        text.len()
    );
    ensure!(
        text.ends_with("x\n\x1b[0m\n"),
        "{:?}",
        &text[text.len() - 40..]
    );
    // A child process that inherits the interpreter's streams writes into the cell.
    let events = run(
        &mut socket,
        "js",
        "child",
        "require('node:child_process').execSync('echo from the child; echo to stderr >&2', { stdio: 'inherit' }); 'done'",
    )
    .await?;
    completed(&events, 0)?;
    assert_eq!(text_of(&events, EventKind::Stdout), "from the child\n");
    assert_eq!(text_of(&events, EventKind::Stderr), "to stderr\n");
    // Cells have no stdin: a read sees its end at once.
    let events = run(
        &mut socket,
        "js",
        "reads",
        "require('node:fs').readFileSync(0, 'utf8').length",
    )
    .await?;
    completed(&events, 0)?;
    assert_eq!(result_text(&events), Some("0"), "{events:#?}");
    assert_stream_ok(socket.received());
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_completions_come_from_the_live_state_and_languages_do_not_mix() -> Result<()> {
    let gateway = TestGateway::spawn().await;
    let mut socket = gateway.raw().await?;
    completed(
        &run(
            &mut socket,
            "js",
            "setup",
            "const greeting = 'hi';\nglobalThis.gadget = { colour: 'red', count: 2 };",
        )
        .await?,
        0,
    )?;
    for (request, code, wanted) in [
        ("a", "greeting.toUpp", "toUpperCase"),
        ("b", "gree", "greeting"),
        ("c", "'😀'; gadget.col", "colour"),
    ] {
        socket
            .send_frame(&ClientFrame::Complete(CompleteFrame {
                request: request.into(),
                session: "js".into(),
                code: code.into(),
                cursor_pos: code.chars().count() as u64,
            }))
            .await?;
        let reply = socket
            .next_event_where(|e| e.request.as_deref() == Some(request))
            .await?;
        ensure!(
            reply.kind == EventKind::CompleteReply
                && reply
                    .matches
                    .as_ref()
                    .is_some_and(|m| m.contains(&wanted.to_owned())),
            "{code:?}: {reply:?}"
        );
        // Cursors count code points: the astral character counts once.
        let typed = code
            .rsplit(['.', ' '])
            .next()
            .unwrap_or(code)
            .chars()
            .count() as u64;
        ensure!(
            reply.cursor_start == Some(code.chars().count() as u64 - typed),
            "{code:?}: {reply:?}"
        );
    }
    // The same session's Python cell starts a Python interpreter (the Node state is
    // gone with it), and back.
    socket
        .execute(sluice_tests::cell("js", "py", "print('python here')"))
        .await?;
    let events = socket.events_until_terminal("py").await?;
    completed(&events, 0)?;
    assert_eq!(text_of(&events, EventKind::Stdout), "python here\n");
    let events = run(&mut socket, "js", "again", "typeof greeting").await?;
    completed(&events, 0)?;
    assert_eq!(result_text(&events), Some("'undefined'"));
    assert_stream_ok(socket.received());
    gateway.shutdown().await
}

/// From the outside review of the Node kernel: the driver's end marker written by a cell
/// (many at once, the attack that kept a gateway core busy) ends the interpreter at once;
/// an error message that is long in bytes (not characters) still gives a structured
/// error; a line on the control socket that is not an answer ends the interpreter rather
/// than leaving the cell to its timeout, for Python as for Node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn markers_garbage_and_long_errors_from_cells_end_cleanly() -> Result<()> {
    let gateway = TestGateway::spawn().await;
    let mut socket = gateway.raw().await?;
    completed(&run(&mut socket, "js", "setup", "let kept = 1").await?, 0)?;
    let events = run(
        &mut socket,
        "js",
        "markers",
        "process.stdout.write('\\x1b]sluice;cell_end\\x07'.repeat(3640)); await new Promise(() => {})",
    )
    .await?;
    let last = events.last().context("no terminal event")?;
    ensure!(
        last.kind == EventKind::Error
            && last.code == Some(sluice_protocol::ErrorCode::KernelLost)
            && last.data.contains("end marker"),
        "{events:#?}"
    );
    // The next cell runs in a fresh interpreter.
    let events = run(&mut socket, "js", "fresh", "typeof kept").await?;
    completed(&events, 0)?;
    assert_eq!(result_text(&events), Some("'undefined'"));
    // Long in bytes: CJK and control characters.
    for (id, unit) in [("cjk", "漢"), ("controls", "\\x01")] {
        let code = format!("throw new Error(('{unit}'.repeat(2000) + '\\n').repeat(70))");
        let events = run(&mut socket, "js", id, &code).await?;
        let last = completed(&events, 1)?;
        ensure!(
            last.exception.as_ref().is_some_and(|e| e.ename == "Error"),
            "{last:?}"
        );
    }
    // One marker, then a stream of output no cell can take: ended too (a second pass).
    let events = run(
        &mut socket,
        "js",
        "after-marker",
        "process.stdout.write('\\x1b]sluice;cell_end\\x07'); for (;;) process.stdout.write('y'.repeat(1 << 20))",
    )
    .await?;
    let last = events.last().context("no terminal event")?;
    ensure!(
        last.kind == EventKind::Error
            && last.code == Some(sluice_protocol::ErrorCode::KernelLost)
            && last.data.contains("while no cell ran"),
        "{events:#?}"
    );
    // A thrown value whose getters throw or never return: still a structured error,
    // at once, and the state stays.
    for (id, code) in [
        (
            "getter-loops",
            "{ const e = new Error('x'); Object.defineProperty(e, 'message', { get() { for (;;) {} } }); throw e }",
        ),
        (
            "getter-throws",
            "{ const e = new Error('x'); Object.defineProperty(e, 'name', { get() { throw new Error('no') } }); throw e }",
        ),
        (
            "proxy",
            "throw new Proxy({}, { get() { throw new Error('trap') }, getPrototypeOf() { throw new Error('trap') } })",
        ),
    ] {
        let events = run(&mut socket, "js", id, code).await?;
        let last = completed(&events, 1)?;
        ensure!(
            last.exception
                .as_ref()
                .is_some_and(|e| e.evalue.contains("could not be read")),
            "{id}: {events:#?}"
        );
    }
    // An error message with a lone surrogate (text cut inside an emoji), from both.
    for (session, language, code) in [
        ("js", "node", "throw new Error('a\\ud800b')"),
        ("py-surrogate", "python", "raise ValueError('a\\ud800b')"),
    ] {
        let mut request = node_cell(session, &format!("{session}-surrogate"), code);
        request.language = language.into();
        let id = request.id.clone();
        socket.execute(request).await?;
        let events = socket.events_until_terminal(&id).await?;
        let last = completed(&events, 1)?;
        ensure!(
            last.exception
                .as_ref()
                .is_some_and(|e| e.evalue.starts_with('a') && e.evalue.ends_with('b')),
            "{language}: {events:#?}"
        );
    }
    // A line on the control socket that is not an answer (not JSON, not UTF-8), from
    // both kinds of cells.
    for (n, session, language, code) in [
        (
            "py-bytes",
            "python",
            "import os, time\nos.write(3, b'\\xff\\n')\ntime.sleep(60)",
        ),
        (
            "js",
            "node",
            "require('node:fs').writeSync(3, Buffer.from([0xff, 0x0a])); await new Promise(() => {})",
        ),
        (
            "py-garbage",
            "python",
            "import os, time\nos.write(3, b'not an answer\\n')\ntime.sleep(60)",
        ),
        (
            "js",
            "node",
            "require('node:fs').writeSync(3, 'not an answer\\n'); await new Promise(() => {})",
        ),
    ]
    .into_iter()
    .enumerate()
    .map(|(n, (session, language, code))| (n, session, language, code))
    {
        let mut request = node_cell(session, &format!("{session}-garbage-{n}"), code);
        request.language = language.into();
        request.limits.timeout_ms = Some(120_000);
        let id = request.id.clone();
        socket.execute(request).await?;
        let events = socket.events_until_terminal(&id).await?;
        let last = events.last().context("no terminal event")?;
        ensure!(
            last.kind == EventKind::Error
                && last.code == Some(sluice_protocol::ErrorCode::KernelLost),
            "{language}: {events:#?}"
        );
    }
    assert_stream_ok(socket.received());
    gateway.shutdown().await
}

/// A persistent cell's `peak_memory_bytes` is the interpreter's (jailed, not the jail's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cells_peak_memory_is_the_interpreters() -> Result<()> {
    let gateway = TestGateway::spawn().await;
    let mut socket = gateway.raw().await?;
    let mut request = node_cell("mem", "big", "block = bytearray(120 * 1024 * 1024)");
    request.language = "python".into();
    socket.execute(request).await?;
    let events = socket.events_until_terminal("big").await?;
    let last = completed(&events, 0)?;
    let peak = last.usage.as_ref().map_or(0, |u| u.peak_memory_bytes);
    ensure!(peak >= 120 * 1024 * 1024, "peak {peak}: {last:?}");
    gateway.shutdown().await
}
