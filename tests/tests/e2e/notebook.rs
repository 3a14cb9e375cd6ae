//! Rich output over a real socket (issue 15): `display`, `update_display` and `result`
//! events from persistent Python cells (`_repr_*_` methods, a PNG, a cell's value), the
//! display records any program may write on its stdout, their place among the text, and
//! records that are refused.

use anyhow::{ensure, Context as _, Result};
use base64::Engine as _;
use sluice_protocol::{Encoding, Event, EventKind, ExecuteRequest};
use sluice_tests::{assert_stream_ok, cell, request, text_of, RawSocket, TestGateway};

async fn run(socket: &mut RawSocket, execute: ExecuteRequest) -> Result<Vec<Event>> {
    let id = execute.id.clone();
    socket.execute(execute).await?;
    let events = socket.events_until_terminal(&id).await?;
    let last = events.last().context("no terminal event")?;
    ensure!(
        last.kind == EventKind::Completed && last.exit_code == Some(0),
        "{id} failed: {events:#?}"
    );
    Ok(events)
}

fn of_kind(events: &[Event], kind: EventKind) -> Vec<&Event> {
    events.iter().filter(|e| e.kind == kind).collect()
}

fn mime<'a>(event: &'a Event, mime: &str) -> Option<&'a serde_json::Value> {
    event.bundle.as_ref()?.get(mime)
}

/// A minimal valid PNG of one red pixel, written with nothing but the standard library.
const PNG_WRITER: &str = r#"
import struct, zlib
def chunk(kind, body):
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xffffffff)
def png(rgb):
    raw = b"\x00" + bytes(rgb)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
class Pixel:
    def _repr_png_(self):
        return png((255, 0, 0))
    def __repr__(self):
        return "<red pixel>"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cells_show_html_tables_images_and_their_result_in_order() -> Result<()> {
    let gateway = TestGateway::spawn().await;
    let mut socket = gateway.raw().await?;
    run(&mut socket, cell("nb", "setup", PNG_WRITER)).await?;
    let code = r#"
class Table:
    """What pandas-like tables offer: HTML, and text for everyone else."""
    def __init__(self, rows):
        self.rows = rows
    def _repr_html_(self):
        cells = "".join(f"<tr><td>{a}</td><td>{b}</td></tr>" for a, b in self.rows)
        return f"<table>{cells}</table>"
    def __repr__(self):
        return f"Table({len(self.rows)} rows)"
print("before")
display(Table([(1, 2), (3, 4)]))
print("between")
display(Pixel())
print("after")
Table([(5, 6)])
"#;
    let events = run(&mut socket, cell("nb", "show", code)).await?;
    let order: Vec<String> = events
        .iter()
        .filter(|e| !matches!(e.kind, EventKind::Started | EventKind::Completed))
        .map(|e| format!("{}:{}", e.kind, e.data.trim_end()))
        .collect();
    assert_eq!(
        order,
        [
            "stdout:before",
            "display:Table(2 rows)",
            "stdout:between",
            "display:<red pixel>",
            "stdout:after",
            "result:Table(1 rows)"
        ],
        "{events:#?}"
    );
    let displays = of_kind(&events, EventKind::Display);
    assert_eq!(
        mime(displays[0], "text/html").and_then(|v| v.as_str()),
        Some("<table><tr><td>1</td><td>2</td></tr><tr><td>3</td><td>4</td></tr></table>")
    );
    let png = mime(displays[1], "image/png")
        .and_then(|v| v.as_str())
        .context("no image/png")?;
    let bytes = base64::engine::general_purpose::STANDARD.decode(png)?;
    ensure!(
        bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
        "not a PNG: {bytes:?}"
    );
    let result = of_kind(&events, EventKind::Result);
    assert_eq!(result.len(), 1);
    assert_eq!(
        mime(result[0], "text/html").and_then(|v| v.as_str()),
        Some("<table><tr><td>5</td><td>6</td></tr></table>")
    );
    assert_eq!(result[0].execution_count, Some(2), "the second cell");
    assert_eq!(result[0].metadata, Some(serde_json::json!({})));
    // Nothing of the records leaks into the text.
    assert_eq!(
        text_of(&events, EventKind::Stdout),
        "before\nbetween\nafter\n"
    );
    assert_stream_ok(socket.received());
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_display_is_updated_by_its_id_and_mimebundles_carry_json_and_metadata() -> Result<()> {
    let gateway = TestGateway::spawn().await;
    let mut socket = gateway.raw().await?;
    let code = r#"
class Chart:
    def _repr_mimebundle_(self, include=None, exclude=None):
        return ({"application/vnd.example+json": {"points": [1, 2]}, "text/plain": "chart"},
                {"application/vnd.example+json": {"height": 200}})
handle = display("0%", display_id=True)
handle.update("50%")
update_display("100%", display_id=handle.display_id)
display(Chart())
display({"text/markdown": "**raw**"}, raw=True)
"#;
    let events = run(&mut socket, cell("ids", "c1", code)).await?;
    let shown = of_kind(&events, EventKind::Display);
    let updates = of_kind(&events, EventKind::UpdateDisplay);
    assert_eq!(shown.len(), 3, "{events:#?}");
    assert_eq!(updates.len(), 2, "{events:#?}");
    let id = shown[0].display_id.clone().context("no display_id")?;
    assert_eq!(shown[0].data, "'0%'");
    assert_eq!(
        updates
            .iter()
            .map(|e| (e.display_id.clone(), e.data.as_str()))
            .collect::<Vec<_>>(),
        [(Some(id.clone()), "'50%'"), (Some(id), "'100%'")]
    );
    assert_eq!(
        mime(shown[1], "application/vnd.example+json"),
        Some(&serde_json::json!({"points": [1, 2]}))
    );
    assert_eq!(
        shown[1].metadata,
        Some(serde_json::json!({"application/vnd.example+json": {"height": 200}}))
    );
    assert_eq!(
        mime(shown[2], "text/markdown").and_then(|v| v.as_str()),
        Some("**raw**")
    );
    assert_eq!(shown[2].data, "", "a raw bundle without text/plain");
    assert_stream_ok(socket.received());
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_program_can_write_display_records_and_bad_ones_are_reported_on_stderr() -> Result<()> {
    let gateway = TestGateway::spawn().await;
    let mut socket = gateway.raw().await?;
    // A shell script: one record written in two pieces, one that is not valid, text around.
    let code = r#"printf 'one\n'
printf '\033]sluice;display;{"data":{"text/html":"<i>x</i>",'
printf '"text/plain":"x"}}\007two\n'
printf '\033]sluice;display;{"data":{"image/png":7}}\007three\n'"#;
    let events = run(&mut socket, request("sh", "sh", code)).await?;
    let displays = of_kind(&events, EventKind::Display);
    assert_eq!(displays.len(), 1, "{events:#?}");
    assert_eq!(
        mime(displays[0], "text/html").and_then(|v| v.as_str()),
        Some("<i>x</i>")
    );
    assert_eq!(text_of(&events, EventKind::Stdout), "one\ntwo\nthree\n");
    let stderr = text_of(&events, EventKind::Stderr);
    ensure!(
        stderr.contains(
            "sluice: a display record was dropped: the data of image/png must be a string"
        ),
        "{stderr}"
    );
    // With base64 output (bytes, not text) nothing is interpreted.
    let raw = ExecuteRequest {
        encoding: Encoding::Base64,
        ..request(
            "b64",
            "sh",
            r#"printf '\033]sluice;display;{"data":{"text/plain":"x"}}\007'"#,
        )
    };
    let events = run(&mut socket, raw).await?;
    ensure!(
        of_kind(&events, EventKind::Display).is_empty(),
        "{events:#?}"
    );
    assert_stream_ok(socket.received());
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_display_is_refused_in_the_cell_that_asked() -> Result<()> {
    let gateway = TestGateway::spawn().await;
    let mut socket = gateway.raw().await?;
    let code = r#"
try:
    display({"text/plain": "x" * (9 << 20)}, raw=True)
except ValueError as error:
    print("refused:", error)
display("small")
"#;
    let events = run(&mut socket, cell("big", "c", code)).await?;
    let out = text_of(&events, EventKind::Stdout);
    ensure!(
        out.starts_with("refused: this display is") && out.contains("over the 8388608 bytes"),
        "{out}"
    );
    let displays = of_kind(&events, EventKind::Display);
    assert_eq!(displays.len(), 1);
    assert_eq!(displays[0].data, "'small'");
    assert_stream_ok(socket.received());
    gateway.shutdown().await
}

/// A display's bytes count against the cell's `output_bytes` as output does: the first
/// of two 40 KB bundles fits a 64 KiB limit and arrives whole, the second crosses it
/// and ends the cell with `resource_limit` (output) instead of arriving; the session's
/// interpreter goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn displays_count_against_the_cells_output_limit() -> Result<()> {
    let gateway = TestGateway::spawn().await;
    let mut socket = gateway.raw().await?;
    let code = r#"
display({"text/plain": "a" * 40000}, raw=True)
display({"text/plain": "b" * 40000}, raw=True)
print("not reached")
"#;
    let mut limited = cell("bounded", "c", code);
    limited.limits.output_bytes = Some(64 << 10);
    socket.execute(limited).await?;
    let events = socket.events_until_terminal("c").await?;
    let last = events.last().context("no terminal event")?;
    ensure!(
        last.kind == EventKind::ResourceLimit
            && last.limit == Some(sluice_protocol::LimitKind::Output),
        "{last:?}"
    );
    let displays = of_kind(&events, EventKind::Display);
    ensure!(displays.len() == 1, "{displays:?}");
    let first = mime(displays[0], "text/plain").and_then(|v| v.as_str());
    ensure!(first.map(str::len) == Some(40000), "the first bundle whole");
    ensure!(!text_of(&events, EventKind::Stdout).contains("not reached"));
    // Each cell has its own output budget: the next one shows a bundle again.
    let events = run(&mut socket, cell("bounded", "d", "display('again')")).await?;
    ensure!(
        of_kind(&events, EventKind::Display).len() == 1,
        "{events:#?}"
    );
    assert_stream_ok(socket.received());
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matplotlib_figures_appear_as_png_images() -> Result<()> {
    let gateway = TestGateway::spawn().await;
    let mut socket = gateway.raw().await?;
    let probe = run(
        &mut socket,
        cell(
            "plots",
            "probe",
            "import importlib.util\nprint(importlib.util.find_spec('matplotlib') is not None)",
        ),
    )
    .await?;
    if text_of(&probe, EventKind::Stdout) != "True\n" {
        sluice_tests::skip(
            "matplotlib is not installed for the gateway's python (scripts/test.sh installs it)",
        );
        return gateway.shutdown().await;
    }
    // One figure shown by plt.show(), one left open when the cell ends: both appear, in
    // order, and no window or backend warning appears anywhere.
    let code = "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3])\nplt.show()\nprint('between')\nplt.figure()\nplt.bar([1, 2], [3, 4])\n";
    let events = run(&mut socket, cell("plots", "plot", code)).await?;
    let shown: Vec<&Event> = of_kind(&events, EventKind::Display);
    assert_eq!(shown.len(), 2, "{events:#?}");
    for display in &shown {
        let png = mime(display, "image/png")
            .and_then(|v| v.as_str())
            .context("no image/png")?;
        let bytes = base64::engine::general_purpose::STANDARD.decode(png)?;
        ensure!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
        ensure!(bytes.len() > 1000, "a tiny image: {} bytes", bytes.len());
    }
    let order: Vec<EventKind> = events.iter().map(|e| e.kind).collect();
    let between = events
        .iter()
        .position(|e| e.kind == EventKind::Stdout)
        .context("no stdout")?;
    ensure!(
        order.iter().position(|k| *k == EventKind::Display) < Some(between),
        "the shown figure comes before the text printed after show(): {order:?}"
    );
    assert_eq!(text_of(&events, EventKind::Stderr), "");
    assert_stream_ok(socket.received());
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_client_gives_an_outcome_s_displays_and_value() -> Result<()> {
    let gateway = TestGateway::spawn().await;
    let client = gateway.client().await?;
    let code = "h = display('draft', display_id=True)\nh.update('final')\n6 * 7";
    let outcome = sluice_tests::run(&client, cell("rust-nb", "c1", code)).await?;
    ensure!(outcome.success(), "{outcome:?}");
    let shown: Vec<(EventKind, &str)> = outcome
        .displays()
        .map(|e| (e.kind, e.data.as_str()))
        .collect();
    assert_eq!(
        shown,
        [
            (EventKind::Display, "'draft'"),
            (EventKind::UpdateDisplay, "'final'")
        ]
    );
    let value = outcome.value().context("no result")?;
    assert_eq!(
        (value.data.as_str(), value.execution_count),
        ("42", Some(1))
    );
    assert_eq!(outcome.stdout, "");
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cell_that_raises_ends_with_a_structured_exception_and_every_cell_is_counted(
) -> Result<()> {
    let gateway = TestGateway::spawn().await;
    let mut socket = gateway.raw().await?;
    let ends = |events: &[Event]| events.last().cloned().context("no terminal event");
    socket.execute(cell("errors", "ok", "x = 1")).await?;
    let first = ends(&socket.events_until_terminal("ok").await?)?;
    assert_eq!(
        (first.execution_count, first.exception.is_none()),
        (Some(1), true)
    );

    let code = "def inner():\n    return 1 / 0\n\ninner()";
    socket.execute(cell("errors", "raise", code)).await?;
    let raised = ends(&socket.events_until_terminal("raise").await?)?;
    assert_eq!(
        (raised.kind, raised.exit_code, raised.execution_count),
        (EventKind::Completed, Some(1), Some(2))
    );
    let exception = raised.exception.context("no exception")?;
    assert_eq!(exception.ename, "ZeroDivisionError");
    assert_eq!(exception.evalue, "division by zero");
    let traceback = exception.traceback.join("\n");
    ensure!(
        traceback.starts_with("Traceback (most recent call last):")
            && traceback.contains("<cell>")
            && traceback.contains("in inner")
            && traceback.ends_with("ZeroDivisionError: division by zero"),
        "{traceback}"
    );
    ensure!(
        !traceback.contains("python_driver") && !traceback.contains("sluice"),
        "{traceback}"
    );

    // A syntax error shows where in the cell, and no frame of the parser.
    socket
        .execute(cell("errors", "syntax", "x = (1,\nprint(x"))
        .await?;
    let events = socket.events_until_terminal("syntax").await?;
    let syntax = ends(&events)?;
    let exception = syntax.exception.context("no exception")?;
    assert_eq!(exception.ename, "SyntaxError");
    let traceback = exception.traceback.join("\n");
    ensure!(
        !traceback.contains("ast.py")
            && !traceback.contains("Traceback")
            && traceback.contains("<cell>"),
        "{traceback}"
    );
    // The same report on stderr, for clients that only show text.
    let stderr = text_of(&events, EventKind::Stderr);
    ensure!(
        !stderr.contains("ast.py") && stderr.contains("SyntaxError"),
        "{stderr}"
    );
    assert_eq!(syntax.execution_count, Some(3));

    // sys.exit is no exception: it ends the cell with its status.
    socket
        .execute(cell("errors", "exit", "import sys\nsys.exit(3)"))
        .await?;
    let exited = ends(&socket.events_until_terminal("exit").await?)?;
    assert_eq!(
        (
            exited.exit_code,
            exited.exception.is_none(),
            exited.execution_count
        ),
        (Some(3), true, Some(4))
    );
    assert_stream_ok(socket.received());
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_cancels_the_cells_and_the_next_one_starts_afresh() -> Result<()> {
    use sluice_protocol::{ClientFrame, ErrorCode, RestartFrame};
    let restart = |session: &str| {
        ClientFrame::Restart(RestartFrame {
            session: session.to_owned(),
        })
    };
    let gateway = TestGateway::spawn().await;
    let mut socket = gateway.raw().await?;
    run(&mut socket, cell("rs", "a", "x = 41")).await?;
    // One cell runs, one waits behind it: the restart cancels both.
    socket
        .execute(cell(
            "rs",
            "long",
            "import time\nprint('sleeping', flush=True)\ntime.sleep(60)",
        ))
        .await?;
    socket
        .execute(cell("rs", "queued", "print('never')"))
        .await?;
    socket.wait_for_stdout("long", "sleeping").await?;
    socket.send_frame(&restart("rs")).await?;
    let restarted = socket
        .next_event_where(|e| e.kind == EventKind::Restarted)
        .await?;
    assert_eq!(
        (restarted.session.as_deref(), restarted.id.as_deref()),
        (Some("rs"), None)
    );
    let ended: std::collections::BTreeSet<(String, String)> = socket
        .received()
        .iter()
        .filter(|e| e.is_terminal())
        .filter_map(|e| Some((e.id.clone()?, e.kind.to_string())))
        .collect();
    let expected = [
        ("a", EventKind::Completed),
        ("long", EventKind::Cancelled),
        ("queued", EventKind::Cancelled),
    ]
    .map(|(id, kind)| (id.to_owned(), kind.to_string()));
    assert_eq!(
        ended,
        expected.into(),
        "both cells end before the restart is announced"
    );
    // The state is gone: a fresh interpreter, counting from 1.
    socket.execute(cell("rs", "after", "x")).await?;
    let events = socket.events_until_terminal("after").await?;
    let last = events.last().context("no terminal")?;
    assert_eq!(
        (
            last.exception.as_ref().map(|e| e.ename.as_str()),
            last.execution_count
        ),
        (Some("NameError"), Some(1)),
        "{events:#?}"
    );
    // A session that is not open, and one the gateway made, cannot be restarted.
    socket.send_frame(&restart("no-such")).await?;
    let refused = socket.next_socket_error().await?;
    assert_eq!(
        (refused.code, refused.for_session.as_deref()),
        (Some(ErrorCode::UnknownSession), Some("no-such"))
    );
    socket.execute(request("own", "sh", "true")).await?;
    let own = socket.events_until_terminal("own").await?;
    let made = own[0].session.clone().context("no session")?;
    socket.send_frame(&restart(&made)).await?;
    let refused = socket.next_socket_error().await?;
    assert_eq!(refused.code, Some(ErrorCode::BadRequest), "{refused:?}");
    // Restarting a session with no interpreter is answered too.
    socket.send_frame(&restart("rs")).await?;
    socket
        .next_event_where(|e| e.kind == EventKind::Restarted)
        .await?;
    assert_stream_ok(socket.received());
    gateway.shutdown().await
}

/// A restart clears the interpreter's state and keeps the session's workspace: a file a
/// cell wrote there is read by the fresh interpreter's first cell, whose variables are
/// gone. Workspaces need a root gateway; elsewhere the test says so and skips.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_the_sessions_workspace() -> Result<()> {
    use sluice_protocol::{ClientFrame, RestartFrame};
    if !sluice_tests::running_as_root() {
        sluice_tests::skip("session workspaces need a gateway running as root");
        return Ok(());
    }
    let gateway = TestGateway::spawn().await;
    let mut socket = gateway.raw().await?;
    let kept = |id: &str, code: &str| ExecuteRequest {
        workspace: true,
        ..cell("ws-restart", id, code)
    };
    run(
        &mut socket,
        kept("write", "x = 41\nopen('notes.txt', 'w').write('kept')"),
    )
    .await?;
    socket
        .send_frame(&ClientFrame::Restart(RestartFrame {
            session: "ws-restart".to_owned(),
        }))
        .await?;
    socket
        .next_event_where(|e| e.kind == EventKind::Restarted)
        .await?;
    let code = "print(open('notes.txt').read(), 'x' in globals())";
    let events = run(&mut socket, kept("read", code)).await?;
    ensure!(
        text_of(&events, EventKind::Stdout) == "kept False\n",
        "{events:#?}"
    );
    assert_stream_ok(socket.received());
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_client_restarts_an_interpreter() -> Result<()> {
    let gateway = TestGateway::spawn().await;
    let client = gateway.client().await?;
    let first = sluice_tests::run(&client, cell("rust-rs", "a", "x = 1")).await?;
    ensure!(first.success(), "{first:?}");
    let mut long = client
        .execute(cell(
            "rust-rs",
            "long",
            "import time\nprint('up', flush=True)\ntime.sleep(60)",
        ))
        .await?;
    sluice_tests::wait_for_output(&mut long, &mut Vec::new(), "up").await?;
    sluice_tests::within("the restart", client.restart("rust-rs")).await??;
    let stopped = sluice_tests::within("the long cell", long.wait()).await??;
    assert_eq!(stopped.kind(), EventKind::Cancelled);
    let after = sluice_tests::run(&client, cell("rust-rs", "b", "x")).await?;
    assert_eq!(
        (
            after.exception().map(|e| e.ename.as_str()),
            after.execution_count()
        ),
        (Some("NameError"), Some(1))
    );
    // A session this client does not read: refused before anything is sent.
    match client.restart("never-opened").await {
        Err(sluice_client::ClientError::RestartRefused { code, .. }) => {
            assert_eq!(code, sluice_protocol::ErrorCode::BadRequest);
        }
        other => anyhow::bail!("expected a refusal, got {other:?}"),
    }
    gateway.shutdown().await
}
