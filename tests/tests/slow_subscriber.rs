//! A subscriber that does not read while 200 MB stream through its session: the gateway's
//! memory stays bounded, the session's lead receives everything, and the slow one is told
//! what it missed when it reads again. Alone in its own test binary, so the process's
//! peak memory is this test's.

use anyhow::{bail, ensure, Context as _, Result};
use sluice_gateway::Config;
use sluice_protocol::{EventKind, ExecuteRequest, Limits};
use sluice_tests::{request, TestGateway};
use std::time::Duration;

const FLOOD_BYTES: u64 = 200_000_000;

/// Peak resident memory of this process so far, in bytes (`VmHWM`).
fn peak_rss() -> Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .context("no VmHWM")?;
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .context("no value")?
        .parse()?;
    Ok(kib * 1024)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_never_reads_costs_bounded_memory_and_is_told_it_lagged() -> Result<()> {
    let gateway = TestGateway::spawn_with(Config {
        // The slow socket must not be closed for not reading while the flood runs.
        send_timeout: Duration::from_secs(300),
        ..Config::default()
    })
    .await;
    let in_flood = |id: &str, code: &str| ExecuteRequest {
        session: Some("flood".into()),
        limits: Limits {
            timeout_ms: Some(300_000),
            output_bytes: Some(FLOOD_BYTES * 2),
            ..Limits::default()
        },
        ..request(id, "sh", code)
    };
    let mut lead = gateway.raw().await?;
    lead.execute(in_flood("ready", "echo ready")).await?;
    lead.events_until_terminal("ready").await?;
    let mut slow = gateway.raw().await?;
    slow.attach("flood", None).await?;
    lead.stop_recording();
    slow.stop_recording();
    let before = peak_rss()?;

    lead.execute(in_flood(
        "flood",
        &format!("head -c {FLOOD_BYTES} /dev/zero | tr '\\0' x"),
    ))
    .await?;
    let mut received = 0_u64;
    let head = loop {
        let event = lead.next_event().await?;
        match event.kind {
            EventKind::Started => {}
            EventKind::Stdout => received += event.data.len() as u64,
            EventKind::Completed => break event.sequence,
            other => bail!("unexpected {other}: {event:?}"),
        }
    };
    assert_eq!(received, FLOOD_BYTES, "the lead receives every byte");
    let growth = peak_rss()?.saturating_sub(before);
    ensure!(
        growth < 128 << 20,
        "peak memory grew by {} MiB while {} MB went past a subscriber that did not read",
        growth >> 20,
        FLOOD_BYTES / 1_000_000
    );

    // The slow subscriber reads now: what was in flight, then a gap it is told about,
    // then the rest, up to the flood's end. Nothing arrives out of order.
    let mut last = 0;
    let mut gaps = Vec::new();
    loop {
        let event = slow.next_event().await?;
        if event.kind == EventKind::Attached {
            continue;
        }
        if event.kind == EventKind::Gap {
            let from = event.missed_from.context("no missed_from")?;
            let to = event.resume_from.context("no resume_from")?;
            ensure!(from == last + 1, "gap from {from} after {last}");
            gaps.push((from, to));
            last = to - 1;
            continue;
        }
        ensure!(
            event.sequence == last + 1,
            "sequence {} after {last}",
            event.sequence
        );
        last = event.sequence;
        if event.sequence == head {
            ensure!(event.kind == EventKind::Completed, "{event:?}");
            break;
        }
    }
    ensure!(
        !gaps.is_empty(),
        "the slow subscriber was never told it lagged"
    );
    gateway.shutdown().await
}
