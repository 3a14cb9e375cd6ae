//! Session workspaces: a directory that outlives a named session's executions (programs
//! and persistent cells start in it and see what earlier ones left), the file frames
//! that write, read (ranged, in chunks), list and delete its files, `files_changed`, the
//! end of the workspace with its session, and every refusal: paths that climb out,
//! through a link or onto something that is not a file (a FIFO, a device node, a link to
//! a device), a full workspace, the caps, a session without a workspace, and a socket not
//! attached to the session.

use anyhow::{ensure, Context as _, Result};
use base64::Engine as _;
use serde_json::{json, Value};
use sluice_gateway::{Config, Isolation};
use sluice_protocol::{ErrorCode, Event, EventKind, ExecuteRequest, FileKind, Limits};
use sluice_tests::{request, skip, text_of, RawSocket, TestGateway};
use std::time::Duration;

/// Workspaces need a root gateway (each is a tmpfs of its own); says so and skips
/// elsewhere.
fn can_keep_workspaces() -> bool {
    if !sluice_tests::running_as_root() {
        skip("session workspaces need a gateway running as root");
    }
    sluice_tests::running_as_root()
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Sends a file frame and returns its answers: up to the one that ends it (an `error`,
/// or the last `file_data`, or the only answer of the other frames).
async fn ask(socket: &mut RawSocket, frame: Value) -> Result<Vec<Event>> {
    let request = frame["request"]
        .as_str()
        .context("a file frame without request")?
        .to_owned();
    socket.send_json(&frame).await?;
    let mut answers = Vec::new();
    loop {
        let event = socket
            .next_event_where(|e| e.request.as_deref() == Some(request.as_str()))
            .await?;
        ensure!(
            event.session.is_none(),
            "an answer on a session's stream: {event:?}"
        );
        let done = event.kind != EventKind::FileData || event.last == Some(true);
        answers.push(event);
        if done {
            return Ok(answers);
        }
    }
}

/// The one answer of a file frame, which must be of `kind`.
async fn ask_one(socket: &mut RawSocket, frame: Value, kind: EventKind) -> Result<Event> {
    let mut answers = ask(socket, frame).await?;
    let answer = answers.pop().context("no answer")?;
    ensure!(answer.kind == kind, "expected {kind}, got {answer:?}");
    Ok(answer)
}

/// A file frame's refusal, which must have `code`.
async fn refused(socket: &mut RawSocket, frame: Value, code: ErrorCode) -> Result<Event> {
    let answer = ask(socket, frame.clone())
        .await?
        .pop()
        .context("no answer")?;
    ensure!(
        answer.kind == EventKind::Error && answer.code == Some(code),
        "{frame} should be refused with {code}: {answer:?}"
    );
    ensure!(
        !answer.data.is_empty(),
        "a refusal without a message: {answer:?}"
    );
    Ok(answer)
}

/// The whole of a file, from base64 `file_data` answers.
async fn read_bytes(socket: &mut RawSocket, session: &str, path: &str, n: u32) -> Result<Vec<u8>> {
    let frame = json!({"type": "read_file", "request": format!("read{n}"), "session": session,
                       "path": path, "encoding": "base64"});
    let mut bytes = Vec::new();
    for chunk in ask(socket, frame).await? {
        ensure!(chunk.kind == EventKind::FileData, "{chunk:?}");
        ensure!(
            chunk.offset == Some(bytes.len() as u64),
            "out of order: {chunk:?}"
        );
        bytes.extend(base64::engine::general_purpose::STANDARD.decode(&chunk.data)?);
    }
    Ok(bytes)
}

fn in_session(id: &str, session: &str, language: &str, code: &str) -> ExecuteRequest {
    ExecuteRequest {
        session: Some(session.to_owned()),
        ..request(id, language, code)
    }
}

/// Runs `request` to its end: its stdout, and its events.
async fn run(socket: &mut RawSocket, request: ExecuteRequest) -> Result<(String, Vec<Event>)> {
    let id = request.id.clone();
    socket.execute(request).await?;
    let events = socket.events_until_terminal(&id).await?;
    let terminal = events.last().context("no events")?;
    ensure!(
        terminal.kind == EventKind::Completed && terminal.exit_code == Some(0),
        "{terminal:?} stderr {:?}",
        text_of(&events, EventKind::Stderr)
    );
    Ok((text_of(&events, EventKind::Stdout), events))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_written_by_frames_reach_programs_and_what_they_write_comes_back() -> Result<()> {
    if !can_keep_workspaces() {
        return Ok(());
    }
    let gateway = TestGateway::spawn().await;
    let mut socket = gateway.raw().await?;
    socket.attach_workspace("ide").await?;
    let written = ask_one(
        &mut socket,
        json!({"type": "write_file", "request": "w1", "session": "ide",
               "path": "pkg/util.py", "data": "def greet():\n    return 'hello from util'\n"}),
        EventKind::FileWritten,
    )
    .await?;
    ensure!(
        written.size == Some(42) && written.path.as_deref() == Some("pkg/util.py"),
        "{written:?}"
    );
    // The change is told to the session's readers.
    let changed = socket
        .next_event_where(|e| e.kind == EventKind::FilesChanged)
        .await?;
    let changes = changed.changes.clone().context("no changes")?;
    ensure!(
        changes.created == ["pkg", "pkg/util.py"] && changed.id.is_none(),
        "{changed:?}"
    );
    let binary: Vec<u8> = (0..=255).collect();
    ask_one(
        &mut socket,
        json!({"type": "write_file", "request": "w2", "session": "ide", "path": "data.bin",
               "data": b64(&binary), "encoding": "base64", "mode": 0o600}),
        EventKind::FileWritten,
    )
    .await?;
    let code = "import os\n\
                from pkg.util import greet\n\
                print(greet(), len(open('data.bin', 'rb').read()), oct(os.stat('data.bin').st_mode & 0o777))\n\
                open('out/result.txt', 'w').write('made by the program') if os.makedirs('out') is None else None\n";
    let (out, events) = run(&mut socket, in_session("p1", "ide", "python", code)).await?;
    ensure!(out == "hello from util 256 0o600\n", "{out:?}");
    // What the program made is told before its terminal event, with its id.
    let told = events
        .iter()
        .position(|e| e.kind == EventKind::FilesChanged)
        .context("no files_changed")?;
    ensure!(
        told == events.len() - 2,
        "files_changed is not just before the end: {events:?}"
    );
    let changes = events[told].changes.clone().context("no changes")?;
    ensure!(
        events[told].id.as_deref() == Some("p1"),
        "{:?}",
        events[told]
    );
    ensure!(changes.created == ["out", "out/result.txt"], "{changes:?}");
    ensure!(read_bytes(&mut socket, "ide", "out/result.txt", 1).await? == b"made by the program");
    ensure!(read_bytes(&mut socket, "ide", "data.bin", 2).await? == binary);
    // The listing: sorted, with kinds, sizes and modes; the program's source is not in it.
    let listed = ask_one(
        &mut socket,
        json!({"type": "list_files", "request": "l1", "session": "ide"}),
        EventKind::FileList,
    )
    .await?;
    let entries = listed.entries.context("no entries")?;
    let names: Vec<(&str, FileKind)> = entries.iter().map(|e| (e.name.as_str(), e.kind)).collect();
    ensure!(
        names
            == [
                ("data.bin", FileKind::File),
                ("out", FileKind::Dir),
                ("pkg", FileKind::Dir)
            ],
        "{entries:?}"
    );
    ensure!(entries[0].size == 256 && entries[0].mode == 0o600 && entries[0].mtime > 0.0);
    let inner = ask_one(
        &mut socket,
        json!({"type": "list_files", "request": "l2", "session": "ide", "path": "pkg"}),
        EventKind::FileList,
    )
    .await?;
    ensure!(
        inner.entries.as_deref().map(<[_]>::len) == Some(1),
        "{inner:?}"
    );
    // Deleting: a file, then a directory with what is in it.
    ask_one(
        &mut socket,
        json!({"type": "delete_file", "request": "d1", "session": "ide", "path": "data.bin"}),
        EventKind::FileDeleted,
    )
    .await?;
    refused(
        &mut socket,
        json!({"type": "delete_file", "request": "d2", "session": "ide", "path": "pkg"}),
        ErrorCode::BadRequest,
    )
    .await?;
    ask_one(
        &mut socket,
        json!({"type": "delete_file", "request": "d3", "session": "ide", "path": "pkg", "recursive": true}),
        EventKind::FileDeleted,
    )
    .await?;
    let (out, _) = run(&mut socket, in_session("p2", "ide", "sh", "ls")).await?;
    ensure!(out == "out\n", "{out:?}");
    socket.close().await?;
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_workspace_outlives_executions_and_cells_share_it() -> Result<()> {
    if !can_keep_workspaces() {
        return Ok(());
    }
    let gateway = TestGateway::spawn().await;
    let mut socket = gateway.raw().await?;
    // Opted into by the first execute.
    let first = ExecuteRequest {
        workspace: true,
        ..in_session("one", "proj", "sh", "echo first > notes.txt; pwd")
    };
    let (cwd, _) = run(&mut socket, first).await?;
    let (out, _) = run(
        &mut socket,
        in_session(
            "two",
            "proj",
            "sh",
            "echo second >> notes.txt; cat notes.txt; pwd",
        ),
    )
    .await?;
    ensure!(
        out == format!("first\nsecond\n{cwd}"),
        "{out:?} (first ran in {cwd:?})"
    );
    // A persistent cell starts there too, and what it writes stays.
    let cell = ExecuteRequest {
        persistent: true,
        ..in_session("cell", "proj", "python", "import os\nprint(open('notes.txt').read().split(), os.getcwd())\n_ = open('from_cell.txt', 'w').write('cell')")
    };
    let (out, _) = run(&mut socket, cell).await?;
    ensure!(out == format!("['first', 'second'] {cwd}"), "{out:?}");
    let (out, _) = run(
        &mut socket,
        in_session("three", "proj", "sh", "cat from_cell.txt"),
    )
    .await?;
    ensure!(out == "cell", "{out:?}");
    // `files` on a later execute replace what is there, and the program sees them.
    let replaced = ExecuteRequest {
        files: [("notes.txt".to_owned(), "replaced\n".to_owned())].into(),
        ..in_session("four", "proj", "sh", "cat notes.txt")
    };
    let (out, _) = run(&mut socket, replaced).await?;
    ensure!(out == "replaced\n", "{out:?}");
    socket.close().await?;
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executions_running_at_once_in_one_workspace_keep_their_own_code() -> Result<()> {
    if !can_keep_workspaces() {
        return Ok(());
    }
    let gateway = TestGateway::spawn().await;
    let mut socket = gateway.raw().await?;
    socket.attach_workspace("many").await?;
    let ids: Vec<String> = (0..4).map(|n| format!("e{n}")).collect();
    for (n, id) in ids.iter().enumerate() {
        let code = format!("import time\ntime.sleep(0.2)\nprint('I am {n}')\n");
        socket
            .execute(in_session(id, "many", "python", &code))
            .await?;
    }
    let all: Vec<&str> = ids.iter().map(String::as_str).collect();
    socket.wait_for_terminals(&all).await?;
    for (n, id) in ids.iter().enumerate() {
        let events: Vec<Event> = sluice_tests::events_of(socket.received(), id)
            .into_iter()
            .cloned()
            .collect();
        let out = text_of(&events, EventKind::Stdout);
        ensure!(out == format!("I am {n}\n"), "{id}: {out:?} {events:?}");
        let end = events.last().context("no events")?;
        ensure!(
            end.kind == EventKind::Completed && end.exit_code == Some(0),
            "{end:?}"
        );
    }
    socket.close().await?;
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_workspace_ends_with_its_session() -> Result<()> {
    if !can_keep_workspaces() {
        return Ok(());
    }
    let gateway = TestGateway::spawn_with(Config {
        session_grace: Duration::ZERO,
        ..Config::default()
    })
    .await;
    let mut socket = gateway.raw().await?;
    socket.attach_workspace("brief").await?;
    ask_one(
        &mut socket,
        json!({"type": "write_file", "request": "w", "session": "brief", "path": "keep.txt", "data": "x"}),
        EventKind::FileWritten,
    )
    .await?;
    let (cwd, _) = run(&mut socket, in_session("where", "brief", "sh", "pwd")).await?;
    let path = std::path::PathBuf::from(cwd.trim_end());
    ensure!(
        path.join("keep.txt").is_file(),
        "{path:?} holds no keep.txt"
    );
    // The last socket goes; with no grace the session ends, and its workspace with it.
    socket.close().await?;
    sluice_tests::eventually(sluice_tests::patience(), "the workspace to be gone", || {
        !path.exists()
    })
    .await?;
    let mounts = std::fs::read_to_string("/proc/self/mounts")?;
    ensure!(
        !mounts.contains(path.to_string_lossy().as_ref()),
        "still mounted: {path:?}"
    );
    // The same name later is a new, empty workspace.
    let mut socket = gateway.raw().await?;
    socket.attach_workspace("brief").await?;
    let listed = ask_one(
        &mut socket,
        json!({"type": "list_files", "request": "l", "session": "brief"}),
        EventKind::FileList,
    )
    .await?;
    ensure!(listed.entries.as_deref() == Some(&[][..]), "{listed:?}");
    socket.close().await?;
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_are_ranged_and_come_in_chunks_in_order() -> Result<()> {
    if !can_keep_workspaces() {
        return Ok(());
    }
    let gateway = TestGateway::spawn().await;
    let mut socket = gateway.raw().await?;
    socket.attach_workspace("big").await?;
    // 200 KiB uploaded in four pieces: the first replaces, the others append.
    let content: Vec<u8> = (0..200 * 1024).map(|n| (n % 251) as u8).collect();
    for (n, piece) in content.chunks(50 * 1024).enumerate() {
        let answer = ask_one(
            &mut socket,
            json!({"type": "write_file", "request": format!("up{n}"), "session": "big",
                   "path": "blob", "data": b64(piece), "encoding": "base64", "append": n > 0}),
            EventKind::FileWritten,
        )
        .await?;
        ensure!(
            answer.size == Some(((n + 1) * 50 * 1024) as u64),
            "{answer:?}"
        );
    }
    let chunks = ask(
        &mut socket,
        json!({"type": "read_file", "request": "all", "session": "big", "path": "blob", "encoding": "base64"}),
    )
    .await?;
    ensure!(chunks.len() == 4, "200 KiB in {} chunks", chunks.len());
    ensure!(chunks.iter().all(|c| c.size == Some(200 * 1024)));
    ensure!(read_bytes(&mut socket, "big", "blob", 1).await? == content);
    let range = ask(
        &mut socket,
        json!({"type": "read_file", "request": "range", "session": "big", "path": "blob",
               "offset": 1000, "length": 10, "encoding": "base64"}),
    )
    .await?;
    ensure!(range.len() == 1 && range[0].offset == Some(1000) && range[0].last == Some(true));
    let bytes = base64::engine::general_purpose::STANDARD.decode(&range[0].data)?;
    ensure!(bytes == content[1000..1010], "{bytes:?}");
    // Past the end: nothing, and the last chunk says so.
    let past = ask(
        &mut socket,
        json!({"type": "read_file", "request": "past", "session": "big", "path": "blob", "offset": 999_999}),
    )
    .await?;
    ensure!(
        past.len() == 1 && past[0].data.is_empty() && past[0].last == Some(true),
        "{past:?}"
    );
    // Text: characters are never split between chunks.
    let text = "é".repeat(40_000);
    ask_one(
        &mut socket,
        json!({"type": "write_file", "request": "t", "session": "big", "path": "text.txt", "data": text}),
        EventKind::FileWritten,
    )
    .await?;
    let chunks = ask(
        &mut socket,
        json!({"type": "read_file", "request": "tr", "session": "big", "path": "text.txt"}),
    )
    .await?;
    ensure!(chunks.len() == 2, "{} chunks", chunks.len());
    let read: String = chunks.iter().map(|c| c.data.as_str()).collect();
    ensure!(
        read == text,
        "{} chars read of {}",
        read.chars().count(),
        text.chars().count()
    );
    ensure!(
        chunks[1].offset == Some(chunks[0].data.len() as u64),
        "{:?}",
        chunks[1].offset
    );
    socket.close().await?;
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_that_climb_out_or_through_links_are_refused() -> Result<()> {
    if !can_keep_workspaces() {
        return Ok(());
    }
    let gateway = TestGateway::spawn().await;
    let mut socket = gateway.raw().await?;
    socket.attach_workspace("walls").await?;
    // A program plants a link out, a link to a file, a FIFO and a directory.
    let plant = "ln -s /etc out; ln -s /etc/passwd pw; mkfifo pipe; mkdir dir; echo hi > dir/f";
    run(&mut socket, in_session("plant", "walls", "sh", plant)).await?;
    let invalid = [
        json!({"type": "read_file", "path": "../etc/passwd"}),
        json!({"type": "read_file", "path": "/etc/passwd"}),
        json!({"type": "read_file", "path": "dir//f"}),
        json!({"type": "read_file", "path": ".sluice-0-main.py"}),
        json!({"type": "read_file", "path": "out/passwd"}),
        json!({"type": "read_file", "path": "pw"}),
        json!({"type": "read_file", "path": "pipe"}),
        json!({"type": "read_file", "path": "dir"}),
        json!({"type": "write_file", "path": "out/evil", "data": "x"}),
        json!({"type": "write_file", "path": "pw", "data": "x"}),
        json!({"type": "write_file", "path": "pipe", "data": "x"}),
        json!({"type": "write_file", "path": "dir/f/under", "data": "x"}),
        json!({"type": "list_files", "path": "out"}),
        json!({"type": "list_files", "path": "dir/f"}),
        json!({"type": "delete_file", "path": "out/passwd"}),
    ];
    for (n, mut frame) in invalid.into_iter().enumerate() {
        frame["request"] = json!(format!("bad{n}"));
        frame["session"] = json!("walls");
        refused(&mut socket, frame, ErrorCode::InvalidPath).await?;
    }
    for (n, mut frame) in [
        json!({"type": "read_file", "path": "nothing"}),
        json!({"type": "list_files", "path": "no/dir"}),
        json!({"type": "delete_file", "path": "nothing"}),
    ]
    .into_iter()
    .enumerate()
    {
        frame["request"] = json!(format!("missing{n}"));
        frame["session"] = json!("walls");
        refused(&mut socket, frame, ErrorCode::NotFound).await?;
    }
    for (n, mut frame) in [
        json!({"type": "write_file", "path": "m", "data": "x", "mode": 0o4755}),
        json!({"type": "write_file", "path": "b", "data": "%%%", "encoding": "base64"}),
        json!({"type": "write_file", "path": "b", "data": "nul\u{0}"}),
    ]
    .into_iter()
    .enumerate()
    {
        frame["request"] = json!(format!("badreq{n}"));
        frame["session"] = json!("walls");
        refused(&mut socket, frame, ErrorCode::BadRequest).await?;
    }
    // A link itself may be deleted (never what it points to).
    ask_one(
        &mut socket,
        json!({"type": "delete_file", "request": "unlink", "session": "walls", "path": "pw"}),
        EventKind::FileDeleted,
    )
    .await?;
    ensure!(
        std::fs::metadata("/etc/passwd").is_ok(),
        "the link's target went too"
    );
    socket.assert_still_works().await?;
    socket.close().await?;
    gateway.shutdown().await
}

/// No program can make a real device (`mknod` needs a capability no program has), but
/// since Linux 5.8 anyone may make the whiteout device (character, 0:0) overlayfs uses:
/// a device node a program of the session can leave in its workspace. It, and links to
/// the host's devices, are refused by every frame and by an execute's `files`, and stay
/// as they were; jailed and not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_node_or_a_link_to_a_device_a_program_left_is_never_read_or_written() -> Result<()>
{
    if !can_keep_workspaces() {
        return Ok(());
    }
    for isolation in [Isolation::Auto, Isolation::None] {
        let gateway = TestGateway::spawn_with(Config {
            isolation,
            ..Config::default()
        })
        .await;
        let mut socket = gateway.raw().await?;
        socket.attach_workspace("devices").await?;
        let plant = "import os, stat\n\
                     os.symlink('/dev/null', 'null')\n\
                     os.symlink('/dev/zero', 'zero')\n\
                     try:\n\
                     \x20   os.mknod('dev', 0o666 | stat.S_IFCHR, os.makedev(0, 0))\n\
                     \x20   print('made', end='')\n\
                     except OSError as err:\n\
                     \x20   print(err, end='')\n";
        let (made, _) = run(&mut socket, in_session("plant", "devices", "python", plant)).await?;
        let mut refusals = vec![
            json!({"type": "read_file", "path": "null"}),
            json!({"type": "read_file", "path": "zero", "length": 10}),
            json!({"type": "write_file", "path": "null", "data": "x"}),
            json!({"type": "write_file", "path": "zero", "data": "x", "append": true}),
            json!({"type": "list_files", "path": "null"}),
        ];
        let mut names = vec!["null", "zero"];
        if made == "made" {
            refusals.extend([
                json!({"type": "read_file", "path": "dev"}),
                json!({"type": "write_file", "path": "dev", "data": "x"}),
                json!({"type": "write_file", "path": "dev", "data": "x", "append": true}),
                json!({"type": "list_files", "path": "dev"}),
            ]);
            names.push("dev");
        } else {
            skip(format!(
                "{isolation:?}: a program cannot make a device node here ({made}); links to devices only"
            ));
        }
        for (n, mut frame) in refusals.into_iter().enumerate() {
            frame["request"] = json!(format!("bad{n}"));
            frame["session"] = json!("devices");
            refused(&mut socket, frame, ErrorCode::InvalidPath)
                .await
                .with_context(|| format!("{isolation:?}"))?;
        }
        for name in &names {
            let id = format!("files-{name}");
            let request = ExecuteRequest {
                files: [((*name).to_owned(), "x".to_owned())].into(),
                ..in_session(&id, "devices", "sh", "echo ran")
            };
            let end = socket.files_refused(request).await?;
            // `invalid_path` (PROTOCOL.md §8.2), jailed or not; nothing is written and
            // the program never runs.
            ensure!(
                end.code == Some(ErrorCode::InvalidPath),
                "{isolation:?}: {name}: {end:?}"
            );
        }
        // Listed for what they are, and left as they were.
        let listed = ask_one(
            &mut socket,
            json!({"type": "list_files", "request": "list", "session": "devices"}),
            EventKind::FileList,
        )
        .await?;
        let entries = listed.entries.context("no entries")?;
        let kinds: Vec<(&str, FileKind)> =
            entries.iter().map(|e| (e.name.as_str(), e.kind)).collect();
        let mut expected = vec![("null", FileKind::Symlink), ("zero", FileKind::Symlink)];
        if names.contains(&"dev") {
            expected.insert(0, ("dev", FileKind::Other));
        }
        ensure!(kinds == expected, "{isolation:?}: {entries:?}");
        let (out, _) = run(
            &mut socket,
            in_session("look", "devices", "sh", "stat -c '%n %F' *"),
        )
        .await?;
        let mut want = String::new();
        if names.contains(&"dev") {
            want.push_str("dev character special file\n");
        }
        want.push_str("null symbolic link\nzero symbolic link\n");
        ensure!(out == want, "{isolation:?}: {out:?}");
        socket.assert_still_works().await?;
        socket.close().await?;
        gateway.shutdown().await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_frames_need_a_workspace_and_an_attached_socket() -> Result<()> {
    let gateway = TestGateway::spawn().await;
    let mut socket = gateway.raw().await?;
    // A named session without a workspace.
    run(&mut socket, in_session("plain", "plain", "sh", "true")).await?;
    refused(
        &mut socket,
        json!({"type": "list_files", "request": "a", "session": "plain"}),
        ErrorCode::NoWorkspace,
    )
    .await?;
    // A gateway-made session: no workspace, and none to be had.
    socket.execute(request("made", "sh", "true")).await?;
    let events = socket.events_until_terminal("made").await?;
    let made = events[0].session.clone().context("no session")?;
    refused(
        &mut socket,
        json!({"type": "read_file", "request": "b", "session": made, "path": "x"}),
        ErrorCode::NoWorkspace,
    )
    .await?;
    socket
        .send_json(&json!({"type": "attach", "session": made, "workspace": true}))
        .await?;
    let refusal = socket.next_socket_error().await?;
    ensure!(refusal.code == Some(ErrorCode::NoWorkspace), "{refusal:?}");
    // `workspace` on an execute needs a session.
    socket
        .send_json(&json!({"type": "execute", "id": "w", "language": "sh", "code": "true", "workspace": true}))
        .await?;
    let refusal = socket.next_socket_error().await?;
    ensure!(refusal.code == Some(ErrorCode::BadRequest), "{refusal:?}");
    if can_keep_workspaces() {
        socket.attach_workspace("theirs").await?;
        // Another socket, not attached: the session is not its to reach.
        let mut other = gateway.raw().await?;
        refused(
            &mut other,
            json!({"type": "write_file", "request": "c", "session": "theirs", "path": "x", "data": "y"}),
            ErrorCode::UnknownSession,
        )
        .await?;
        other.close().await?;
    }
    socket.assert_still_works().await?;
    socket.close().await?;
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_workspace_and_the_workspace_caps_are_refused_clearly() -> Result<()> {
    if !can_keep_workspaces() {
        return Ok(());
    }
    let gateway = TestGateway::spawn_with(Config {
        max_workspaces_per_peer: Some(1),
        ..Config::default()
    })
    .await;
    let mut socket = gateway.raw().await?;
    // A workspace of 256 KiB, made by an execute that asks for that size.
    let small = ExecuteRequest {
        workspace: true,
        limits: Limits {
            workspace_bytes: Some(256 * 1024),
            ..Limits::default()
        },
        ..in_session("small", "tight", "sh", "true")
    };
    run(&mut socket, small).await?;
    // A program meets the wall: its write fails, the gateway goes on.
    let (out, _) = run(
        &mut socket,
        in_session(
            "over",
            "tight",
            "sh",
            "head -c 300000 /dev/zero > c 2>/dev/null || echo no room; rm -f c",
        ),
    )
    .await?;
    ensure!(out == "no room\n", "{out:?}");
    let piece = b64(&vec![7u8; 200 * 1024]);
    ask_one(
        &mut socket,
        json!({"type": "write_file", "request": "fits", "session": "tight", "path": "a", "data": piece, "encoding": "base64"}),
        EventKind::FileWritten,
    )
    .await?;
    refused(
        &mut socket,
        json!({"type": "write_file", "request": "full", "session": "tight", "path": "b", "data": piece, "encoding": "base64"}),
        ErrorCode::WorkspaceFull,
    )
    .await?;
    // An execute whose source does not fit any more is refused as such.
    socket
        .execute(in_session(
            "late",
            "tight",
            "sh",
            &format!("# {}\ntrue", "x".repeat(100_000)),
        ))
        .await?;
    let events = socket.events_until_terminal("late").await?;
    let end = events.last().context("no events")?;
    ensure!(end.code == Some(ErrorCode::WorkspaceFull), "{end:?}");
    // So is one whose `files` do not fit (the jail's init, or the gateway, writes them).
    let late_files = ExecuteRequest {
        files: [("big.txt".to_owned(), "y".repeat(100_000))].into(),
        ..in_session("late-files", "tight", "sh", "echo ran")
    };
    let end = socket.files_refused(late_files).await?;
    ensure!(end.code == Some(ErrorCode::WorkspaceFull), "{end:?}");
    // One workspace per peer here: a second is refused, and no session is left behind.
    socket
        .send_json(&json!({"type": "attach", "session": "second", "workspace": true}))
        .await?;
    let refusal = socket.next_socket_error().await?;
    ensure!(
        refusal.code == Some(ErrorCode::TooManySessions),
        "{refusal:?}"
    );
    ensure!(refusal.data.contains("workspaces"), "{refusal:?}");
    socket.attach("second", None).await?;
    let refusal = socket.next_socket_error().await?;
    ensure!(
        refusal.code == Some(ErrorCode::UnknownSession),
        "{refusal:?}"
    );
    socket.assert_still_works().await?;
    socket.close().await?;
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jailed_program_cannot_see_another_sessions_workspace() -> Result<()> {
    if !can_keep_workspaces() {
        return Ok(());
    }
    if let Err(why) = sluice_tests::host_report().namespaces {
        skip(format!("no namespace jail here: {why}"));
        return Ok(());
    }
    let gateway = TestGateway::spawn().await;
    let mut socket = gateway.raw().await?;
    let mine = ExecuteRequest {
        workspace: true,
        ..in_session("mine", "a", "sh", "echo secret > s.txt; pwd")
    };
    let (path_a, _) = run(&mut socket, mine).await?;
    let theirs = ExecuteRequest {
        workspace: true,
        ..in_session(
            "theirs",
            "b",
            "sh",
            &format!(
                "cat {}/s.txt 2>/dev/null || echo unseen; ls $(dirname $PWD)",
                path_a.trim_end()
            ),
        )
    };
    let (out, _) = run(&mut socket, theirs).await?;
    let own = out.lines().last().unwrap_or_default().to_owned();
    ensure!(out.starts_with("unseen\n"), "{out:?}");
    // Only its own workspace is in the work root it sees.
    ensure!(out.lines().count() == 2 && !own.is_empty(), "{out:?}");
    socket.close().await?;
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workspaces_hold_their_size_of_the_workspace_budget() -> Result<()> {
    if !can_keep_workspaces() {
        return Ok(());
    }
    // Room for one default workspace (64 MiB) and not two.
    let gateway = TestGateway::spawn_with(Config {
        workspace_budget_bytes: Some(100 << 20),
        budget_share_per_peer: 100,
        session_grace: Duration::ZERO,
        ..Config::default()
    })
    .await;
    let mut socket = gateway.raw().await?;
    socket.attach_workspace("first").await?;
    socket
        .send_json(&json!({"type": "attach", "session": "second", "workspace": true}))
        .await?;
    let refusal = socket.next_socket_error().await?;
    ensure!(
        refusal.code == Some(ErrorCode::TooManySessions)
            && refusal.data.contains("--workspace-budget-bytes"),
        "{refusal:?}"
    );
    // The first one's end (no grace here: its last socket detaches) gives its share
    // back at once.
    socket.detach("first").await?;
    socket.attach_workspace("second").await?;
    socket.close().await?;
    gateway.shutdown().await
}
