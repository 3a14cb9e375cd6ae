//! Review of `execute.files`: attacks that worked, each kept as a test.
//!
//! Unjailed under a root gateway every program runs as the one sandbox user, and an
//! execution's working directory (`x0`, `x1`, ...: predictable) was handed to that user
//! before the gateway, as root, wrote the source and the files in it. A program of the
//! same user already running could then swap a parent directory for a link between the
//! gateway's check and its write (or its chown), and root would create, or chown, a file
//! anywhere on the host. The directory must stay the gateway's until all is written.
//!
//! A name longer than the file system's 255 bytes passed the path rules and failed when
//! written: `internal` unjailed (the gateway's error log and sandbox-failure metric),
//! `spawn_failed` jailed. And 256 paths nested 400 deep made 102,400 directories (on the
//! host's disk, unjailed; against the jail's inode budget) that `workspace_bytes` did not
//! count: each directory now counts 4096 bytes.

use anyhow::{ensure, Context as _, Result};
use sluice_gateway::{Config, Isolation};
use sluice_protocol::{ErrorCode, EventKind, ExecuteRequest};
use sluice_tests::{request, skip, text_of, TestGateway};

/// Files under one parent, as many as the watcher must see at once.
const FILES: usize = 64;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unjailed_workdir_is_handed_over_only_once_its_files_are_written() -> Result<()> {
    if !sluice_tests::running_as_root() {
        skip("needs a root gateway: unjailed programs run as a sandbox user only then");
        return Ok(());
    }
    let gateway = TestGateway::spawn_with(Config {
        isolation: Isolation::None,
        warm_pool: Some(0),
        ..Config::default()
    })
    .await;
    let mut socket = gateway.raw().await?;
    // The watcher: as the sandbox user, waits for the next execution's directory to let
    // it in and says how many of its files were there at that moment.
    let watcher = format!(
        "import os, time\n\
         here = os.getcwd()\n\
         root, name = os.path.split(here)\n\
         nxt = os.path.join(root, 'x%d' % (int(name[1:]) + 1))\n\
         print('watching', flush=True)\n\
         end = time.monotonic() + 60\n\
         while time.monotonic() < end:\n\
         \x20   try:\n\
         \x20       names = os.listdir(nxt)\n\
         \x20   except OSError:\n\
         \x20       continue\n\
         \x20   try:\n\
         \x20       n = len(os.listdir(os.path.join(nxt, 'pkg')))\n\
         \x20   except OSError:\n\
         \x20       n = -1\n\
         \x20   print('let in with', n, 'of {FILES} files, source', 'main.py' in names, flush=True)\n\
         \x20   break\n"
    );
    socket
        .execute(request("watcher", "python", &watcher))
        .await?;
    socket
        .next_event_where(|e| e.kind == EventKind::Stdout && e.id.as_deref() == Some("watcher"))
        .await?;
    let victim = ExecuteRequest {
        files: (0..FILES)
            .map(|i| (format!("pkg/f{i}"), String::new()))
            .collect(),
        ..request("victim", "python", "print('victim')")
    };
    socket.execute(victim).await?;
    socket.wait_for_terminals(&["watcher", "victim"]).await?;
    let of = |id: &str| -> Vec<sluice_protocol::Event> {
        socket
            .received()
            .iter()
            .filter(|e| e.id.as_deref() == Some(id))
            .cloned()
            .collect()
    };
    let (events, victim) = (of("watcher"), of("victim"));
    let out = text_of(&events, EventKind::Stdout);
    let terminal = events.last().context("no events")?;
    ensure!(
        terminal.kind == EventKind::Completed,
        "{terminal:?} {out:?}"
    );
    ensure!(
        out.contains(&format!("let in with {FILES} of {FILES} files, source True")),
        "the sandbox user got into the next execution's directory before the gateway had written in it: {out:?}"
    );
    ensure!(
        text_of(&victim, EventKind::Stdout) == "victim\n",
        "{victim:?}"
    );
    socket.close().await?;
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_too_long_for_the_file_system_is_the_requests_fault() -> Result<()> {
    let gateway = TestGateway::spawn().await;
    let mut socket = gateway.raw().await?;
    let name = format!("pkg/{}.py", "n".repeat(300));
    let frame = ExecuteRequest {
        files: [(name, String::new())].into_iter().collect(),
        ..request("long", "python", "print(1)")
    };
    socket.execute(frame).await?;
    let refusal = socket.next_socket_error().await?;
    assert_eq!(refusal.code, Some(ErrorCode::BadRequest), "{refusal:?}");
    ensure!(refusal.data.contains("255 bytes"), "{refusal:?}");
    socket.assert_still_works().await?;
    socket.close().await?;
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_directories_files_make_count_against_the_workspace() -> Result<()> {
    let gateway = TestGateway::spawn().await;
    let mut socket = gateway.raw().await?;
    // 256 empty files, each 400 directories deep: no bytes, 102,400 directories.
    let deep = vec!["d"; 400].join("/");
    let frame = ExecuteRequest {
        files: (0..256)
            .map(|i| (format!("{i}/{deep}/f"), String::new()))
            .collect(),
        ..request("deep", "python", "print(1)")
    };
    socket.execute(frame).await?;
    let refusal = socket.next_socket_error().await?;
    assert_eq!(refusal.code, Some(ErrorCode::InvalidLimit), "{refusal:?}");
    ensure!(refusal.data.contains("workspace_bytes"), "{refusal:?}");
    // A few directories still fit.
    let frame = ExecuteRequest {
        files: [("a/b/c/d.txt".to_owned(), "x".to_owned())]
            .into_iter()
            .collect(),
        ..request("shallow", "python", "print(open('a/b/c/d.txt').read())")
    };
    socket.execute(frame).await?;
    let events = socket.events_until_terminal("shallow").await?;
    ensure!(text_of(&events, EventKind::Stdout) == "x\n", "{events:?}");
    socket.close().await?;
    gateway.shutdown().await
}
