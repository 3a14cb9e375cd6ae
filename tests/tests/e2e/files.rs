//! An execute's `files`: a project of several files, written in the program's working
//! directory (parents made) before it starts, jailed or not; and every refusal: paths
//! that climb out or are absolute, a file in place of the program's own source, a file
//! that is also a directory, files in a persistent cell, files that do not fit in the
//! workspace.

use anyhow::{ensure, Context as _, Result};
use sluice_protocol::{ErrorCode, EventKind, ExecuteRequest, Limits};
use sluice_tests::{request, text_of, TestGateway};
use std::collections::BTreeMap;

fn with_files(id: &str, language: &str, code: &str, files: &[(&str, &str)]) -> ExecuteRequest {
    ExecuteRequest {
        files: files
            .iter()
            .map(|(path, text)| ((*path).to_owned(), (*text).to_owned()))
            .collect::<BTreeMap<_, _>>(),
        ..request(id, language, code)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_project_of_several_files_runs_with_its_modules_and_data() -> Result<()> {
    let gateway = TestGateway::spawn().await;
    let mut socket = gateway.raw().await?;
    let code = "from util import greet\n\
                from pkg.deep import answer\n\
                import os\n\
                print(greet('files'), answer())\n\
                print(open('data/input.txt').read().strip())\n\
                print(oct(os.stat('util.py').st_mode & 0o777), sorted(os.listdir('.')))\n";
    let files = [
        ("util.py", "def greet(who):\n    return f'hello {who}'\n"),
        ("pkg/__init__.py", ""),
        ("pkg/deep.py", "def answer():\n    return 42\n"),
        ("data/input.txt", "données\n"),
    ];
    socket
        .execute(with_files("project", "python", code, &files))
        .await?;
    let events = socket.events_until_terminal("project").await?;
    let terminal = events.last().context("no events")?;
    let out = text_of(&events, EventKind::Stdout);
    ensure!(
        terminal.kind == EventKind::Completed && terminal.exit_code == Some(0),
        "{terminal:?} {:?}",
        text_of(&events, EventKind::Stderr)
    );
    ensure!(out.contains("hello files 42\n"), "{out:?}");
    ensure!(out.contains("données\n"), "{out:?}");
    ensure!(
        out.contains("0o600 ['data', 'main.py', 'pkg', 'util.py']"),
        "{out:?}"
    );
    socket.close().await?;
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_that_cannot_be_are_refused_with_their_reason() -> Result<()> {
    let gateway = TestGateway::spawn().await;
    let mut socket = gateway.raw().await?;
    let refused = [
        (r#"{"../escape.py": ""}"#, "\"..\""),
        (r#"{"a/../../b": ""}"#, "\"..\""),
        (r#"{"/etc/passwd": ""}"#, "absolute"),
        (r#"{"a//b": ""}"#, "empty component"),
        (r#"{"a/": ""}"#, "empty component"),
        (r#"{"": ""}"#, "empty"),
        (r#"{"a": "", "a/b": ""}"#, "is a file"),
        (r#"{"main.py": "print(2)"}"#, "the program's own"),
        (r#"{"main.py/x": ""}"#, "the program's own"),
        (r#"{"x": "nul\u0000"}"#, "NUL"),
    ];
    for (n, (files, says)) in refused.iter().enumerate() {
        let text = format!(
            r#"{{"type":"execute","id":"f{n}","language":"python","code":"print(1)","files":{files}}}"#
        );
        socket.send_text(text).await?;
        let refusal = socket.next_socket_error().await?;
        assert_eq!(
            refusal.code,
            Some(ErrorCode::BadRequest),
            "{files}: {refusal:?}"
        );
        ensure!(refusal.data.contains(says), "{files}: {refusal:?}");
    }
    // In a persistent cell.
    let text = r#"{"type":"execute","id":"cell","language":"python","code":"1","session":"s","persistent":true,"files":{"a.py":""}}"#;
    socket.send_text(text).await?;
    let refusal = socket.next_socket_error().await?;
    assert_eq!(refusal.code, Some(ErrorCode::BadRequest), "{refusal:?}");
    // More than the workspace holds.
    let big = "x".repeat(70_000);
    let request = ExecuteRequest {
        limits: Limits {
            workspace_bytes: Some(64 << 10),
            ..Limits::default()
        },
        ..with_files("big", "python", "print(1)", &[("big.txt", &big)])
    };
    socket.execute(request).await?;
    let refusal = socket.next_socket_error().await?;
    assert_eq!(refusal.code, Some(ErrorCode::InvalidLimit), "{refusal:?}");
    ensure!(refusal.data.contains("workspace_bytes"), "{refusal:?}");
    // Nothing of it ran, and the socket works.
    socket.assert_still_works().await?;
    socket.close().await?;
    gateway.shutdown().await
}
