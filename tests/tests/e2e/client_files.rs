//! The Rust client's file methods against a real gateway: a session's workspace written,
//! read (whole, in pieces, ranged), listed and deleted through `sluice-client`, what a
//! program wrote read back, and refusals as `ClientError::FileRefused`.

use anyhow::{ensure, Context as _, Result};
use sluice_client::{ClientError, WriteFileOptions};
use sluice_protocol::{ErrorCode, ExecuteRequest, FileKind};
use sluice_tests::{request, run, skip, TestGateway};

fn refused_with(result: Result<impl std::fmt::Debug, ClientError>, code: ErrorCode) -> Result<()> {
    match result {
        Err(ClientError::FileRefused { code: got, .. }) if got == code => Ok(()),
        other => anyhow::bail!("expected a {code} refusal, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_client_reaches_a_sessions_workspace() -> Result<()> {
    if !sluice_tests::running_as_root() {
        skip("session workspaces need a gateway running as root");
        return Ok(());
    }
    let gateway = TestGateway::spawn().await;
    let client = gateway.client().await?;
    let made = ExecuteRequest {
        session: Some("rs".to_owned()),
        workspace: true,
        ..request("make", "sh", "printf 'from the program' > made.txt")
    };
    let outcome = run(&client, made).await?;
    ensure!(
        outcome.terminal.exit_code == Some(0),
        "{:?}",
        outcome.terminal
    );
    // Held while the file methods run: the client reads the session.
    let _reading = client.attach("rs", None).await?;
    ensure!(client.read_file("rs", "made.txt").await? == b"from the program");
    // 600 KiB: three pieces of at most 256 KiB.
    let big: Vec<u8> = (0..600 * 1024).map(|n| (n % 253) as u8).collect();
    let size = client
        .write_file("rs", "data/big.bin", &big, WriteFileOptions::default())
        .await?;
    ensure!(size == big.len() as u64, "{size}");
    ensure!(client.read_file("rs", "data/big.bin").await? == big);
    let range = client
        .read_file_range("rs", "data/big.bin", 70_000, Some(5))
        .await?;
    ensure!(range == big[70_000..70_005], "{range:?}");
    let appended = client
        .write_file(
            "rs",
            "made.txt",
            b", and more",
            WriteFileOptions {
                append: true,
                mode: None,
            },
        )
        .await?;
    ensure!(appended == 26, "{appended}");
    let listed = client.list_files("rs", "").await?;
    let names: Vec<(&str, FileKind)> = listed
        .entries
        .iter()
        .map(|e| (e.name.as_str(), e.kind))
        .collect();
    ensure!(
        names == [("data", FileKind::Dir), ("made.txt", FileKind::File)] && !listed.truncated,
        "{listed:?}"
    );
    client.delete_file("rs", "data", true).await?;
    refused_with(
        client.read_file("rs", "data/big.bin").await,
        ErrorCode::NotFound,
    )?;
    refused_with(
        client.read_file("rs", "../etc/passwd").await,
        ErrorCode::InvalidPath,
    )?;
    refused_with(
        client.list_files("nobody-reads-this", "").await,
        ErrorCode::UnknownSession,
    )?;
    client.close().await?;
    gateway.shutdown().await
}

/// `attach_with` a workspace opens the session with one before any execution: a file
/// written then is there for the first program; a gateway-made session is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_client_opens_a_workspace_by_attaching() -> Result<()> {
    if !sluice_tests::running_as_root() {
        skip("session workspaces need a gateway running as root");
        return Ok(());
    }
    let gateway = TestGateway::spawn().await;
    let client = gateway.client().await?;
    let options = sluice_client::AttachOptions {
        since: None,
        workspace: true,
    };
    let _reading = client.attach_with("ide", options).await?;
    client
        .write_file(
            "ide",
            "util.py",
            b"def twice(x):\n    return 2 * x\n",
            WriteFileOptions::default(),
        )
        .await?;
    let uses = ExecuteRequest {
        session: Some("ide".to_owned()),
        ..request("use", "python", "from util import twice\nprint(twice(21))")
    };
    let outcome = run(&client, uses).await?;
    ensure!(outcome.stdout_bytes()? == b"42\n", "{:?}", outcome.terminal);
    // A gateway-made session keeps no workspace (asked while its program runs: once it
    // has ended and been let go, its name is free for a named session).
    let mut running = client.execute(request("plain", "sh", "read line")).await?;
    let made = sluice_tests::next_within(&mut running)
        .await?
        .session
        .context("the gateway-made session")?;
    let refused = client.attach_with(&made, options).await;
    running.cancel().await?;
    running.wait().await?;
    ensure!(
        matches!(
            &refused,
            Err(ClientError::AttachRefused {
                code: ErrorCode::NoWorkspace,
                ..
            })
        ),
        "{refused:?}"
    );
    client.close().await?;
    gateway.shutdown().await
}
