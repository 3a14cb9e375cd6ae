//! `sluice serve` and its signals: SIGTERM drains (running programs finish, new work is
//! refused), a second SIGTERM ends the gateway at once, and what still ran is gone.

mod common;

use anyhow::{ensure, Context as _, Result};
use common::{message, Serving};
use sluice_protocol::{ErrorCode, EventKind};
use sluice_tests::{
    poll_until, request, unique_marker, wait_until_gone, wait_until_running, RawSocket,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_a_second_one_ends_at_once() -> Result<()> {
    // A drain long enough that only the second signal can end it within the test.
    let mut serving = Serving::start(&["--drain-timeout-ms", "3600000"])?;
    let mut socket = RawSocket::connect(&serving.url, None).await?;
    socket
        .execute(request(
            "reader",
            "sh",
            "echo up; read line; echo got $line",
        ))
        .await?;
    socket.wait_for_stdout("reader", "up").await?;
    let marker = unique_marker("signals");
    let mut long = request("long", "sh", "echo up; sleep 3600");
    long.args = vec![marker.clone()];
    socket.execute(long).await?;
    socket.wait_for_stdout("long", "up").await?;
    wait_until_running(&marker).await?;

    serving.signal("TERM")?;
    let draining = serving.next_line(|l| message(l).starts_with("draining"))?;
    ensure!(draining["fields"]["running"] == 2, "{draining}");
    // New work is refused; the running program still gets its input and finishes.
    socket.execute(request("late", "sh", "echo never")).await?;
    let refused = socket.events_until_terminal("late").await?;
    ensure!(
        refused.last().and_then(|e| e.code) == Some(ErrorCode::ShuttingDown),
        "{refused:?}"
    );
    socket.stdin("reader", Some("it\n"), false).await?;
    let finished = socket.events_until_terminal("reader").await?;
    let last = finished.last().context("no events")?;
    ensure!(last.kind == EventKind::Completed, "{last:?}");

    serving.signal("TERM")?;
    let child = &mut serving.child;
    let status = poll_until("sluice serve ends after a second SIGTERM", async || {
        Ok(child.try_wait()?)
    })
    .await?;
    ensure!(status.success(), "sluice serve exited with {status}");
    wait_until_gone(&marker).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reads_the_api_keys_again() -> Result<()> {
    let dir = std::env::temp_dir().join(unique_marker("sighup"));
    std::fs::create_dir_all(&dir)?;
    let keys = dir.join("keys");
    let add = |tenant: &str| -> Result<String> {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["key", "add", tenant, "--file"])
            .arg(&keys)
            .output()?;
        ensure!(out.status.success(), "sluice key add failed: {out:?}");
        Ok(String::from_utf8(out.stdout)?.trim().to_owned())
    };
    let first = add("first")?;
    let keys_arg = keys.display().to_string();
    let serving = Serving::start(&["--api-keys", &keys_arg])?;
    let bearer = |key: &str| format!("Bearer {key}");
    RawSocket::connect_with_headers(&serving.url, &[("Authorization", &bearer(&first))])
        .await?
        .close()
        .await?;
    // The first key revoked (its line removed), a second added.
    std::fs::remove_file(&keys)?;
    let second = add("second")?;
    serving.signal("HUP")?;
    serving.next_line(|l| message(l).starts_with("credentials reloaded"))?;
    let (status, _) =
        sluice_tests::refused_upgrade(&serving.url, &[("Authorization", &bearer(&first))]).await?;
    ensure!(status == 401, "a revoked key still connects: {status}");
    RawSocket::connect_with_headers(&serving.url, &[("Authorization", &bearer(&second))])
        .await?
        .close()
        .await?;
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
