//! `complete` and `inspect` over a real socket (issue 15, PROTOCOL.md 4.11): answers from
//! the session's live interpreter, cursors in code points, and every refusal (no
//! interpreter, a cell running, a socket not attached, a lookup that never returns).

use anyhow::{ensure, Context as _, Result};
use sluice_protocol::{ClientFrame, CompleteFrame, ErrorCode, Event, EventKind, InspectFrame};
use sluice_tests::{assert_stream_ok, cell, RawSocket, TestGateway};

async fn run_cell(socket: &mut RawSocket, session: &str, id: &str, code: &str) -> Result<()> {
    socket.execute(cell(session, id, code)).await?;
    let events = socket.events_until_terminal(id).await?;
    let last = events.last().context("no terminal event")?;
    ensure!(
        last.kind == EventKind::Completed && last.exit_code == Some(0),
        "{id} failed: {events:#?}"
    );
    Ok(())
}

/// Sends a query and returns the socket-stream event that answers `request`.
async fn ask(socket: &mut RawSocket, frame: ClientFrame) -> Result<Event> {
    let request = frame
        .request()
        .context("a query names a request")?
        .to_owned();
    socket.send_frame(&frame).await?;
    socket
        .next_event_where(|e| e.session.is_none() && e.request.as_deref() == Some(&request))
        .await
}

fn complete(request: &str, session: &str, code: &str, cursor_pos: u64) -> ClientFrame {
    ClientFrame::Complete(CompleteFrame {
        request: request.into(),
        session: session.into(),
        code: code.into(),
        cursor_pos,
    })
}

fn inspect(request: &str, session: &str, code: &str, cursor_pos: u64, detail: u8) -> ClientFrame {
    ClientFrame::Inspect(InspectFrame {
        request: request.into(),
        session: session.into(),
        code: code.into(),
        cursor_pos,
        detail_level: detail,
    })
}

/// An answer's `text/plain`, or `""`.
fn plain_text(event: &Event) -> &str {
    event
        .bundle
        .as_ref()
        .and_then(|b| b.get("text/plain"))
        .and_then(|t| t.as_str())
        .unwrap_or_default()
}

fn chars(text: &str) -> u64 {
    text.chars().count() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_come_from_the_sessions_live_state() -> Result<()> {
    let gateway = TestGateway::spawn().await;
    let mut socket = gateway.raw().await?;
    run_cell(
        &mut socket,
        "nb",
        "setup",
        "import math\nvalue_one = 1\nvalue_two = 2\nclass Thing:\n    colour = 'red'\nthing = Thing()",
    )
    .await?;
    // An attribute: the part after the dot is replaced.
    let code = "x = math.sq";
    let reply = ask(&mut socket, complete("a", "nb", code, chars(code))).await?;
    ensure!(reply.kind == EventKind::CompleteReply, "{reply:?}");
    let matches = reply.matches.clone().unwrap_or_default();
    ensure!(matches.contains(&"sqrt".to_owned()), "{reply:?}");
    ensure!(
        reply.cursor_start == Some(chars(code) - 2) && reply.cursor_end == Some(chars(code)),
        "{reply:?}"
    );
    // Globals the cells made, sorted; the cursor inside a name replaces all of it.
    let code = "print(valu_)";
    let cursor = chars("print(valu");
    let reply = ask(&mut socket, complete("b", "nb", code, cursor)).await?;
    let matches = reply.matches.clone().unwrap_or_default();
    ensure!(
        matches.iter().filter(|m| m.starts_with("value_")).count() == 2,
        "{reply:?}"
    );
    ensure!(
        reply.cursor_start == Some(chars("print("))
            && reply.cursor_end == Some(chars("print(valu_")),
        "{reply:?}"
    );
    // Cursors count code points: an astral character before the cursor counts once.
    let code = "s = '😀'; thing.col";
    let reply = ask(&mut socket, complete("c", "nb", code, chars(code))).await?;
    ensure!(
        reply.matches.as_deref() == Some(&["colour".to_owned()][..]),
        "{reply:?}"
    );
    ensure!(reply.cursor_start == Some(chars(code) - 3), "{reply:?}");
    // Nothing matches: an empty list, not an error.
    let code = "zzz_nothing_like_it";
    let reply = ask(&mut socket, complete("d", "nb", code, chars(code))).await?;
    ensure!(reply.matches.as_deref() == Some(&[][..]), "{reply:?}");
    // A query leaves the cell count alone.
    socket
        .execute(cell("nb", "after", "value_one + value_two"))
        .await?;
    let events = socket.events_until_terminal("after").await?;
    let result = events
        .iter()
        .find(|e| e.kind == EventKind::Result)
        .context("the cell's result")?;
    ensure!(result.execution_count == Some(2), "{result:?}");
    assert_stream_ok(socket.received());
    gateway.shutdown().await
}

/// A completion's matches (and the whole answer, for messages).
async fn matches(
    socket: &mut RawSocket,
    request: &str,
    code: &str,
) -> Result<(Vec<String>, Event)> {
    let reply = ask(socket, complete(request, "nb", code, chars(code))).await?;
    ensure!(
        reply.kind == EventKind::CompleteReply,
        "{code:?}: {reply:?}"
    );
    Ok((reply.matches.clone().unwrap_or_default(), reply))
}

/// What rlcompleter alone cannot give: module names after `import` and `from`, a
/// module's names after `from M import`, a dict's keys inside `d["`, and a callee's
/// keyword arguments (first) where an argument goes; none of it imports or runs code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_know_imports_dict_keys_and_keyword_arguments() -> Result<()> {
    let gateway = TestGateway::spawn().await;
    let mut socket = gateway.raw().await?;
    run_cell(
        &mut socket,
        "nb",
        "setup",
        "import sys\nprices = {'apple': 1, 'apricot': 2, 'banana': 3, 7: 'seven'}\ndef order(item, count=1, *, express=False, **rest): pass",
    )
    .await?;
    let (found, reply) = matches(&mut socket, "a", "import js").await?;
    ensure!(found.contains(&"json".to_owned()), "{reply:?}");
    ensure!(reply.cursor_start == Some(7), "{reply:?}");
    let (found, reply) = matches(&mut socket, "b", "import os, xml.e").await?;
    ensure!(
        found == ["etree"],
        "a package not imported lists its submodules: {reply:?}"
    );
    let (found, reply) = matches(&mut socket, "c", "from sys import getre").await?;
    ensure!(found.contains(&"getrefcount".to_owned()), "{reply:?}");
    let (found, reply) = matches(&mut socket, "d", "prices['ap").await?;
    ensure!(found == ["apple", "apricot"], "{reply:?}");
    ensure!(reply.cursor_start == Some(8), "{reply:?}");
    let (found, reply) = matches(&mut socket, "e", "order('tea', ex").await?;
    ensure!(
        found.first().map(String::as_str) == Some("express="),
        "{reply:?}"
    );
    let (found, reply) = matches(&mut socket, "f", "order(").await?;
    ensure!(
        found.starts_with(&[
            "item=".to_owned(),
            "count=".to_owned(),
            "express=".to_owned()
        ]),
        "{reply:?}"
    );
    ensure!(
        found.contains(&"prices".to_owned()),
        "names follow the keywords: {reply:?}"
    );
    // Looking up a package found nothing was imported by it.
    socket
        .execute(cell("nb", "after", "print('xml.etree' in sys.modules)"))
        .await?;
    let events = socket.events_until_terminal("after").await?;
    let printed: String = events
        .iter()
        .filter(|e| e.kind == EventKind::Stdout)
        .map(|e| e.data.as_str())
        .collect();
    ensure!(printed == "False\n", "{events:#?}");
    assert_stream_ok(socket.received());
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspect_describes_the_name_under_the_cursor_or_the_callee() -> Result<()> {
    let gateway = TestGateway::spawn().await;
    let mut socket = gateway.raw().await?;
    run_cell(
        &mut socket,
        "nb",
        "setup",
        "import json\ndef greet(name, punctuation='!'):\n    \"\"\"Says hello to someone.\"\"\"\n    return 'hello ' + name + punctuation",
    )
    .await?;
    // In a call's parentheses: the callee, with its signature and docstring.
    let code = "greet('ada', ";
    let reply = ask(&mut socket, inspect("a", "nb", code, chars(code), 0)).await?;
    ensure!(
        reply.kind == EventKind::InspectReply && reply.found == Some(true),
        "{reply:?}"
    );
    let text = plain_text(&reply).to_owned();
    ensure!(text.contains("greet(name, punctuation='!')"), "{text}");
    ensure!(text.contains("Says hello to someone."), "{text}");
    ensure!(
        !text.contains("return 'hello '"),
        "no source at level 0: {text}"
    );
    // Level 1 adds the source, where the interpreter keeps it (a module's); the cursor
    // on the name works too.
    let reply = ask(&mut socket, inspect("b", "nb", "json.dumps", 7, 1)).await?;
    let text = plain_text(&reply);
    ensure!(
        text.contains("Signature: json.dumps(") && text.contains("Source:\ndef dumps("),
        "{reply:?}"
    );
    // A builtin is found; a name nobody defined is not (and is not an error).
    let reply = ask(&mut socket, inspect("c", "nb", "len(", 4, 0)).await?;
    ensure!(reply.found == Some(true), "{reply:?}");
    let reply = ask(&mut socket, inspect("d", "nb", "nobody_defined_this", 3, 0)).await?;
    ensure!(
        reply.found == Some(false) && reply.bundle.is_none(),
        "{reply:?}"
    );
    // The code is never run: an inspect of a call does not call it.
    run_cell(
        &mut socket,
        "nb",
        "counter",
        "calls = []\ndef count():\n    calls.append(1)",
    )
    .await?;
    let reply = ask(&mut socket, inspect("e", "nb", "count()", 5, 0)).await?;
    ensure!(reply.found == Some(true), "{reply:?}");
    let reply = ask(&mut socket, inspect("f", "nb", "count(count())", 6, 0)).await?;
    ensure!(reply.found == Some(true), "{reply:?}");
    socket
        .execute(cell("nb", "check", "print(len(calls))"))
        .await?;
    let events = socket.events_until_terminal("check").await?;
    let printed = sluice_tests::text_of(&events, EventKind::Stdout);
    ensure!(printed == "0\n", "the inspect ran the call: {printed:?}");
    assert_stream_ok(socket.received());
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_are_refused_without_an_interpreter_while_a_cell_runs_and_off_the_session(
) -> Result<()> {
    let gateway = TestGateway::spawn().await;
    let mut socket = gateway.raw().await?;
    let refused = |event: &Event, code: ErrorCode| {
        ensure!(
            event.kind == EventKind::Error && event.code == Some(code) && event.id.is_none(),
            "expected {code}: {event:?}"
        );
        Ok(())
    };
    // A socket not attached to the session.
    let event = ask(&mut socket, complete("a", "nowhere", "x", 1)).await?;
    refused(&event, ErrorCode::UnknownSession)?;
    ensure!(event.for_session.as_deref() == Some("nowhere"), "{event:?}");
    // A session whose executions are programs, not cells: no interpreter.
    socket
        .execute(sluice_protocol::ExecuteRequest {
            session: Some("plain".into()),
            ..sluice_tests::request("p", "bash", "true")
        })
        .await?;
    socket.events_until_terminal("p").await?;
    let event = ask(&mut socket, inspect("b", "plain", "x", 1, 0)).await?;
    refused(&event, ErrorCode::NoKernel)?;
    // A cell running: busy, and the cell is not disturbed.
    socket
        .execute(cell(
            "nb",
            "busy",
            "import sys\nprint('go', flush=True)\nsys.stdin.readline()\nprint('done')",
        ))
        .await?;
    socket.wait_for_stdout("busy", "go\n").await?;
    let event = ask(&mut socket, complete("c", "nb", "pri", 3)).await?;
    refused(&event, ErrorCode::KernelBusy)?;
    socket.stdin("busy", Some("\n"), true).await?;
    let events = socket.events_until_terminal("busy").await?;
    ensure!(
        sluice_tests::text_of(&events, EventKind::Stdout) == "done\n",
        "{events:#?}"
    );
    // Once the cell is over, the same query is answered.
    let reply = ask(&mut socket, complete("d", "nb", "pri", 3)).await?;
    ensure!(
        reply
            .matches
            .as_ref()
            .is_some_and(|m| m.contains(&"print".to_owned())),
        "{reply:?}"
    );
    // Frames the protocol refuses: a cursor past the end (in code points).
    socket
        .send_text(r#"{"type":"complete","request":"e","session":"nb","code":"é","cursor_pos":2}"#)
        .await?;
    let event = socket
        .next_event_where(|e| e.request.as_deref() == Some("e"))
        .await?;
    refused(&event, ErrorCode::BadRequest)?;
    assert_stream_ok(socket.received());
    gateway.shutdown().await
}

/// A lookup that never returns is interrupted after the query's time: `query_timeout`.
/// One that sleeps costs nothing and the session's state survives; one that spins spends
/// the idle budget past what a query is excused (1 s), and the interpreter is ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lookup_that_never_returns_times_out_and_a_spinning_one_costs_the_interpreter(
) -> Result<()> {
    let gateway = TestGateway::spawn().await;
    let mut socket = gateway.raw().await?;
    run_cell(
        &mut socket,
        "nb",
        "setup",
        "import time\nclass Slow:\n    @property\n    def sleeps(self):\n        time.sleep(1000)\n    @property\n    def spins(self):\n        while True:\n            pass\nslow = Slow()\nkept = 'still here'",
    )
    .await?;
    let code = "slow.sleeps";
    let event = ask(&mut socket, inspect("a", "nb", code, chars(code), 0)).await?;
    ensure!(
        event.kind == EventKind::Error && event.code == Some(ErrorCode::QueryTimeout),
        "{event:?}"
    );
    socket.execute(cell("nb", "after", "print(kept)")).await?;
    let events = socket.events_until_terminal("after").await?;
    ensure!(
        sluice_tests::text_of(&events, EventKind::Stdout) == "still here\n",
        "the session's state was lost: {events:#?}"
    );
    let code = "slow.spins";
    let event = ask(&mut socket, inspect("b", "nb", code, chars(code), 0)).await?;
    ensure!(
        event.kind == EventKind::Error && event.code == Some(ErrorCode::QueryTimeout),
        "{event:?}"
    );
    socket
        .execute(cell("nb", "fresh", "print('kept' in dir())"))
        .await?;
    let events = socket.events_until_terminal("fresh").await?;
    let started = events
        .iter()
        .find(|e| e.kind == EventKind::Started)
        .context("started")?;
    ensure!(
        started.data.contains("while no cell ran")
            && sluice_tests::text_of(&events, EventKind::Stdout) == "False\n",
        "the spinning lookup was excused: {events:#?}"
    );
    assert_stream_ok(socket.received());
    gateway.shutdown().await
}

/// The Rust client's `complete` and `inspect`, and its typed refusal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_client_completes_and_inspects() -> Result<()> {
    let gateway = TestGateway::spawn().await;
    let client = gateway.client().await?;
    let refused = client.complete("nb", "x", 1).await;
    ensure!(
        matches!(
            &refused,
            Err(sluice_client::ClientError::QueryRefused {
                code: ErrorCode::UnknownSession,
                ..
            })
        ),
        "{refused:?}"
    );
    let outcome = sluice_tests::run(&client, cell("nb", "setup", "import os\nanswer = 42")).await?;
    ensure!(outcome.exit_code() == Some(0), "{outcome:?}");
    let code = "os.pa";
    let completions = client.complete("nb", code, chars(code)).await?;
    ensure!(
        completions.matches.contains(&"path".to_owned())
            && completions.cursor_start == 3
            && completions.cursor_end == 5,
        "{completions:?}"
    );
    let inspection = client.inspect("nb", "answer", 6, 0).await?;
    ensure!(
        inspection.found && inspection.text().contains("String form: 42"),
        "{inspection:?}"
    );
    let past_end = client.inspect("nb", "answer", 7, 0).await;
    ensure!(
        matches!(
            &past_end,
            Err(sluice_client::ClientError::QueryRefused {
                code: ErrorCode::BadRequest,
                ..
            })
        ),
        "{past_end:?}"
    );
    client.close().await?;
    gateway.shutdown().await
}
