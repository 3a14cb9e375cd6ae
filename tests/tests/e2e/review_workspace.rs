//! The outside review of session workspaces (SECURITY.md, "Review of session
//! workspaces"): a program of the session racing the jail's hand-over of the next
//! source file, walks and deletes of trees deeper than any frame can name, and the
//! gateway's own names kept out of an execute's `files`.

use anyhow::{ensure, Context as _, Result};
use serde_json::json;
use sluice_protocol::{ErrorCode, EventKind, ExecuteRequest};
use sluice_tests::{request, skip, text_of, RawSocket, TestGateway};

fn in_session(id: &str, session: &str, language: &str, code: &str) -> ExecuteRequest {
    ExecuteRequest {
        session: Some(session.to_owned()),
        workspace: true,
        ..request(id, language, code)
    }
}

async fn attached(socket: &mut RawSocket, session: &str) -> Result<()> {
    socket
        .send_json(&json!({"type": "attach", "session": session, "workspace": true}))
        .await?;
    let answer = socket
        .next_event_where(|e| matches!(e.kind, EventKind::Attached | EventKind::Error))
        .await?;
    ensure!(answer.kind == EventKind::Attached, "{answer:?}");
    Ok(())
}

/// A program waiting (inotify) for the next execution's source file to appear in the
/// workspace and renaming a link to `/etc/hostname` over it at once: the jail's init,
/// root, once changed the file's owner by its name after writing it, so it followed the
/// link (28 of 40 tries in the review; only the read-only root stopped it there). The
/// owner is now changed through the open file.
const RACER: &str = r#"
import ctypes, os, struct
libc = ctypes.CDLL(None, use_errno=True)
fd = libc.inotify_init()
libc.inotify_add_watch(fd, b".", 0x100)
print("racing", flush=True)
i = 0
os.symlink("/etc/hostname", ".l0")
while True:
    buf = os.read(fd, 4096)
    off = 0
    while off < len(buf):
        _, _, _, ln = struct.unpack_from("iIII", buf, off)
        name = buf[off + 16:off + 16 + ln].rstrip(b"\0").decode()
        off += 16 + ln
        if name.startswith(".sluice-") and name.endswith("-main.sh"):
            try:
                os.rename(".l%d" % i, name)
                i += 1
                os.symlink("/etc/hostname", ".l%d" % i)
            except OSError:
                pass
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_program_swapping_the_next_source_for_a_link_steers_no_chown() -> Result<()> {
    if !sluice_tests::running_as_root() {
        skip("session workspaces need a gateway running as root");
        return Ok(());
    }
    if let Err(why) = sluice_tests::host_report().namespaces {
        skip(format!("the race is the jail's: {why}"));
        return Ok(());
    }
    let gateway = TestGateway::spawn().await;
    let mut socket = gateway.raw().await?;
    attached(&mut socket, "race").await?;
    socket
        .execute(in_session("racer", "race", "python", RACER))
        .await?;
    socket.wait_for_stdout("racer", "racing").await?;
    // A large source widens the window between the file's creation and its hand-over.
    let filler = format!("# {}\necho ran", "x".repeat(900_000));
    for n in 0..20 {
        let id = format!("victim{n}");
        socket
            .execute(in_session(&id, "race", "sh", &filler))
            .await?;
        let events = socket.events_until_terminal(&id).await?;
        let end = events.last().context("no events")?;
        ensure!(
            !end.data.contains("handing the source"),
            "run {n}: the jail followed the link: {end:?}"
        );
        // The program ran its own source, or the link (and failed): never anything else.
        let out = text_of(&events, EventKind::Stdout);
        ensure!(out.is_empty() || out == "ran\n", "run {n}: {out:?}");
    }
    let host = std::fs::metadata("/etc/hostname")?;
    use std::os::unix::fs::MetadataExt as _;
    ensure!(
        host.uid() == 0,
        "/etc/hostname now belongs to uid {}",
        host.uid()
    );
    socket.cancel("racer").await?;
    socket.events_until_terminal("racer").await?;
    socket.close().await?;
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trees_deeper_than_a_walk_looks_are_cut_short_and_still_deleted() -> Result<()> {
    if !sluice_tests::running_as_root() {
        skip("session workspaces need a gateway running as root");
        return Ok(());
    }
    let gateway = TestGateway::spawn().await;
    let mut socket = gateway.raw().await?;
    attached(&mut socket, "deep").await?;
    // 300 levels: past the walk's 64, within what a delete empties.
    let code = "import os\np = 'top'\nfor i in range(300):\n    p += '/d'\nos.makedirs(p)\nopen(p + '/leaf', 'w').write('x')\n";
    socket
        .execute(in_session("nest", "deep", "python", code))
        .await?;
    let events = socket.events_until_terminal("nest").await?;
    let told = events
        .iter()
        .find(|e| e.kind == EventKind::FilesChanged)
        .context("no files_changed")?;
    let created = told.changes.as_ref().map_or(0, |c| c.created.len());
    ensure!(
        told.truncated == Some(true) && (1..=64).contains(&created),
        "{created} paths told, truncated {:?}",
        told.truncated
    );
    socket
        .send_json(&json!({"type": "delete_file", "request": "rm", "session": "deep", "path": "top", "recursive": true}))
        .await?;
    let answer = socket
        .next_event_where(|e| e.request.as_deref() == Some("rm"))
        .await?;
    ensure!(answer.kind == EventKind::FileDeleted, "{answer:?}");
    let (out, _) = {
        socket
            .execute(in_session("look", "deep", "sh", "ls"))
            .await?;
        let events = socket.events_until_terminal("look").await?;
        (text_of(&events, EventKind::Stdout), events)
    };
    ensure!(out.is_empty(), "{out:?}");
    socket.close().await?;
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_executes_files_cannot_take_the_gateways_names() -> Result<()> {
    let gateway = TestGateway::spawn().await;
    let mut socket = gateway.raw().await?;
    socket
        .send_text(r#"{"type":"execute","id":"f","language":"sh","code":"true","files":{".sluice-1-main.sh":"x"}}"#)
        .await?;
    let refusal = socket.next_socket_error().await?;
    ensure!(
        refusal.code == Some(ErrorCode::BadRequest) && refusal.data.contains(".sluice-"),
        "{refusal:?}"
    );
    socket.assert_still_works().await?;
    socket.close().await?;
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_program_cannot_take_the_source_names_of_the_executions_after_it() -> Result<()> {
    if !sluice_tests::running_as_root() {
        skip("session workspaces need a gateway running as root");
        return Ok(());
    }
    let gateway = TestGateway::spawn().await;
    let mut socket = gateway.raw().await?;
    attached(&mut socket, "names").await?;
    // The names as they once were (a counter): taken ahead for the next hundred.
    let squat = "for n in $(seq 0 100); do for f in main.sh main.py main.js; do : > .sluice-$n-$f; done; done";
    socket
        .execute(in_session("squat", "names", "sh", squat))
        .await?;
    socket.events_until_terminal("squat").await?;
    for n in 0..3 {
        let id = format!("after{n}");
        socket
            .execute(in_session(&id, "names", "sh", "echo still runs"))
            .await?;
        let events = socket.events_until_terminal(&id).await?;
        ensure!(
            text_of(&events, EventKind::Stdout) == "still runs\n",
            "{id}: {events:?}"
        );
    }
    socket.close().await?;
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_holding_a_name_the_wire_cannot_carry_is_still_deleted() -> Result<()> {
    if !sluice_tests::running_as_root() {
        skip("session workspaces need a gateway running as root");
        return Ok(());
    }
    let gateway = TestGateway::spawn().await;
    let mut socket = gateway.raw().await?;
    attached(&mut socket, "bytes").await?;
    let code = "import os\nos.makedirs('d/sub')\nopen(b'd/sub/\\xff\\xfe', 'w').write('x')\n";
    socket
        .execute(in_session("odd", "bytes", "python", code))
        .await?;
    socket.events_until_terminal("odd").await?;
    socket
        .send_json(&json!({"type": "delete_file", "request": "rm", "session": "bytes", "path": "d", "recursive": true}))
        .await?;
    let answer = socket
        .next_event_where(|e| e.request.as_deref() == Some("rm"))
        .await?;
    ensure!(answer.kind == EventKind::FileDeleted, "{answer:?}");
    socket.close().await?;
    gateway.shutdown().await
}
