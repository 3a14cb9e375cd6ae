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
//!
//! In a session's workspace, a program of the session may leave links for the `files` of
//! the executions after it: at a file's path or at a directory on its way, pointing out
//! of the workspace. They are never followed.

use anyhow::{ensure, Context as _, Result};
use sluice_gateway::{Config, Isolation};
use sluice_protocol::{ErrorCode, EventKind, ExecuteRequest};
use sluice_tests::{request, skip, text_of, RawSocket, TestGateway};

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
    // it in and says how many of its files were there then. It cannot list the work
    // root, and the directories' numbers are shared by every gateway of the test
    // process (tests run in parallel), so it tries the next few thousand numbers until
    // one exists (still the gateway's: refused), then watches that one closely.
    let watcher = format!(
        "import os, time\n\
         here = os.getcwd()\n\
         root, name = os.path.split(here)\n\
         base = int(name[1:])\n\
         print('watching', flush=True)\n\
         end = time.monotonic() + 60\n\
         names, target = None, None\n\
         while names is None and time.monotonic() < end:\n\
         \x20   for k in [target] if target else range(1, 5000):\n\
         \x20       nxt = os.path.join(root, 'x%d' % (base + k))\n\
         \x20       try:\n\
         \x20           names = os.listdir(nxt)\n\
         \x20           break\n\
         \x20       except PermissionError:\n\
         \x20           target = k\n\
         \x20           break\n\
         \x20       except OSError:\n\
         \x20           pass\n\
         if names is not None:\n\
         \x20   try:\n\
         \x20       n = len(os.listdir(os.path.join(nxt, 'pkg')))\n\
         \x20   except OSError:\n\
         \x20       n = -1\n\
         \x20   print('let in with', n, 'of {FILES} files, source', 'main.py' in names, flush=True)\n"
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
        // It waits for its input to end, so its directory is there until the watcher
        // has looked (on a busy host, the watcher could otherwise miss it).
        ..request(
            "victim",
            "python",
            "import sys\nsys.stdin.read()\nprint('victim')",
        )
    };
    socket.execute(victim).await?;
    socket.wait_for_stdout("watcher", "let in with").await?;
    socket.stdin("victim", None, true).await?;
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

/// Runs `request`, which must complete cleanly: its stdout.
async fn completed(socket: &mut RawSocket, request: ExecuteRequest) -> Result<String> {
    let id = request.id.clone();
    socket.execute(request).await?;
    let events = socket.events_until_terminal(&id).await?;
    let end = events.last().context("no events")?;
    ensure!(
        end.kind == EventKind::Completed && end.exit_code == Some(0),
        "{end:?} stderr {:?}",
        text_of(&events, EventKind::Stderr)
    );
    Ok(text_of(&events, EventKind::Stdout))
}

/// A program of the session plants links out of the workspace (to a directory and to
/// files of the host that everyone may write) where the next execute's `files` go: at a
/// file's own path, at its parent, at a parent of parents still to be made, and deeper
/// down. Each execute is refused before its program runs, nothing outside is written,
/// and the links stay as they were; jailed, and unjailed where the gateway itself, as
/// root, writes the files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_executes_files_never_follow_a_link_a_program_left_in_the_workspace() -> Result<()> {
    if !sluice_tests::running_as_root() {
        skip("session workspaces need a gateway running as root");
        return Ok(());
    }
    use std::os::unix::fs::PermissionsExt as _;
    // Under /var/tmp: the same path in a jail as on the host.
    let outside = sluice_tests::host_shared_dir("outside")?;
    let _removed = RemovedOnDrop(outside.clone());
    std::fs::set_permissions(&outside, std::fs::Permissions::from_mode(0o777))?;
    let victim = outside.join("victim.txt");
    std::fs::write(&victim, "original")?;
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o666))?;
    let out = outside.display();
    let plant = format!(
        "ln -s {out} out; ln -s {out}/victim.txt victim; ln -s {out}/fresh.txt fresh; \
         mkdir real; ln -s {out} real/deeper"
    );
    let links = format!(
        "out -> {out}\nvictim -> {out}/victim.txt\nfresh -> {out}/fresh.txt\nreal/deeper -> {out}\n"
    );
    let paths = [
        "out/evil.txt",
        "out/new/dirs/evil.txt",
        "victim",
        "fresh",
        "real/deeper/evil.txt",
    ];
    let mut checked = Ok(());
    for isolation in [Isolation::Auto, Isolation::None] {
        checked = links_are_not_followed(isolation, &plant, &links, &paths).await;
        if checked.is_err() {
            break;
        }
        let mut left: Vec<String> = std::fs::read_dir(&outside)?
            .map(|entry| entry.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<std::io::Result<_>>()?;
        left.sort();
        let content = std::fs::read_to_string(&victim)?;
        if left != ["victim.txt"] || content != "original" {
            checked = Err(anyhow::anyhow!(
                "{isolation:?}: written outside the workspace: {left:?}, victim.txt holds {content:?}"
            ));
            break;
        }
    }
    checked
}

/// Removes a directory of the host when dropped, however the test ends.
struct RemovedOnDrop(std::path::PathBuf);

impl Drop for RemovedOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn links_are_not_followed(
    isolation: Isolation,
    plant: &str,
    links: &str,
    paths: &[&str],
) -> Result<()> {
    let gateway = TestGateway::spawn_with(Config {
        isolation,
        ..Config::default()
    })
    .await;
    let mut socket = gateway.raw().await?;
    let in_session = |id: &str, code: &str| ExecuteRequest {
        session: Some("links".to_owned()),
        workspace: true,
        ..request(id, "sh", code)
    };
    completed(&mut socket, in_session("plant", plant)).await?;
    for (n, path) in paths.iter().enumerate() {
        let request = ExecuteRequest {
            files: [((*path).to_owned(), "planted by the gateway".to_owned())].into(),
            ..in_session(&format!("through{n}"), "echo ran")
        };
        let end = socket
            .files_refused(request)
            .await
            .with_context(|| format!("{isolation:?}: {path}"))?;
        // `invalid_path` (PROTOCOL.md §8.2), jailed (the jail's init refuses them) or not.
        ensure!(
            end.code == Some(ErrorCode::InvalidPath) && end.data.contains(path),
            "{isolation:?}: {path}: {end:?}"
        );
    }
    // The links are as the program left them, and the session goes on.
    let look = "for l in out victim fresh real/deeper; do echo \"$l -> $(readlink $l)\"; done";
    let seen = completed(&mut socket, in_session("look", look)).await?;
    ensure!(seen == links, "{isolation:?}: {seen:?}");
    let fine = ExecuteRequest {
        files: [("real/fine.txt".to_owned(), "fine".to_owned())].into(),
        ..in_session("fine", "cat real/fine.txt")
    };
    let read = completed(&mut socket, fine).await?;
    ensure!(read == "fine", "{isolation:?}: {read:?}");
    socket.close().await?;
    gateway.shutdown().await
}
