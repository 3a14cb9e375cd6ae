//! Outside review of the shared CPU group (light executions share one v1 `cpu` group;
//! one that has used 200 ms of CPU is moved into a group of its own): what a hostile
//! program does to stay in the shared group, and what a persistent cell does. Asserted
//! structurally (which v1 `cpu` cgroup a process is in, and its `cpu.shares`), never by
//! timing.

use anyhow::{ensure, Context as _, Result};
use sluice_protocol::{EventKind, ExecuteRequest, Limits};
use sluice_tests::{
    assert_stream_ok, cell, eventually, patience, processes_with, request, skip, unique_marker,
    wait_until_gone, wait_until_running, TestGateway,
};
use std::path::PathBuf;

/// The v1 `cpu` cgroup of `pid`, if it is alive and the host has one.
fn v1_cpu_cgroup(pid: u32) -> Option<PathBuf> {
    let table = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    table.lines().find_map(|line| {
        let mut fields = line.splitn(3, ':');
        let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
        controllers
            .split(',')
            .any(|c| c == "cpu")
            .then(|| PathBuf::from("/sys/fs/cgroup/cpu").join(path.trim_start_matches('/')))
    })
}

/// The v1 `cpu` cgroups of the live processes whose command line holds `marker`.
fn groups_of(marker: &str) -> Vec<PathBuf> {
    let mut groups: Vec<PathBuf> = processes_with(marker)
        .into_iter()
        .filter_map(|(pid, _)| v1_cpu_cgroup(pid))
        .collect();
    groups.sort();
    groups.dedup();
    groups
}

fn shares(dir: &std::path::Path) -> Result<u64> {
    let file = dir.join("cpu.shares");
    let text = std::fs::read_to_string(&file).with_context(|| file.display().to_string())?;
    Ok(text.trim().parse()?)
}

/// True where the gateway says light executions share one v1 CPU group: what this
/// module reviews.
fn shared_cpu_group_here() -> bool {
    let shared = sluice_tests::host_report()
        .cpu_share
        .is_some_and(|how| how.contains("share one group"));
    if !shared {
        skip("light executions do not share a CPU group here (needs v1 cpu and v2 cpu.stat)");
    }
    shared
}

/// Starts a light neighbour (a sleeper marked `marker`) and returns its v1 CPU group:
/// the shared one, `.../sluice-<pid>-<n>/light`.
async fn light_group(socket: &mut sluice_tests::RawSocket, marker: &str) -> Result<PathBuf> {
    socket
        .execute(request(
            "neighbour",
            "bash",
            &format!("exec -a {marker} sleep 1000"),
        ))
        .await?;
    socket.started_and_running(marker).await?;
    let groups = groups_of(marker);
    ensure!(groups.len() == 1, "the neighbour in {groups:?}");
    let light = groups[0].clone();
    ensure!(
        light.file_name().is_some_and(|name| name == "light"),
        "a light execution's CPU group is {}",
        light.display()
    );
    Ok(light)
}

/// Before the shared group, a persistent interpreter had a v1 CPU group of its own, so a
/// cell forking spinners weighed one share. A persistent interpreter's CPU time is never
/// read by `ExecutionCgroup::cpu_seen` (cells count CPU through `Replies::cpu`), so it
/// is never found heavy: with the shared group, its spinners stay in `light` for as long
/// as the cell runs, one full task weight each against every light program.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_cells_spinners_do_not_stay_in_the_shared_cpu_group() -> Result<()> {
    if !shared_cpu_group_here() {
        return Ok(());
    }
    let gateway = TestGateway::spawn().await;
    let mut socket = gateway.raw().await?;
    let neighbour = unique_marker("cell-neighbour");
    let light = light_group(&mut socket, &neighbour).await?;

    let spin = unique_marker("cell-spin");
    let code = format!(
        "import subprocess, time\nfor _ in range(4):\n    subprocess.Popen(['bash', '-c', 'exec -a {spin} bash -c \"while :; do :; done\"'])\nprint('spinning', flush=True)\ntime.sleep(1000)\n"
    );
    socket.execute(cell("nb", "spin", &code)).await?;
    socket.wait_for_stdout("spin", "spinning\n").await?;
    wait_until_running(&spin).await?;

    // 4 spinners on a two-core machine use 200 ms of CPU in well under a second; a
    // plain execution doing this is moved out of `light` at its next CPU check.
    let outside = eventually(
        patience(),
        "the cell's spinners leave the shared CPU group",
        || {
            let groups = groups_of(&spin);
            !groups.is_empty() && groups.iter().all(|g| *g != light)
        },
    )
    .await;
    let seen = groups_of(&spin);
    socket.cancel("spin").await?;
    socket.events_until_terminal("spin").await?;
    socket.cancel("neighbour").await?;
    socket.events_until_terminal("neighbour").await?;
    wait_until_gone(&spin).await?;
    outside.with_context(|| format!("the cell's spinners are in {seen:?}"))?;
    for group in &seen {
        ensure!(
            shares(group)? <= shares(&light)?,
            "{} outweighs {}",
            group.display(),
            light.display()
        );
    }
    assert_stream_ok(socket.received());
    gateway.shutdown().await
}

/// A process that forks its successor and exits at once ("hops") is a new pid at every
/// pass of `move_processes`: each pass finds a new one, the 16 passes run out, and the
/// hopper stays in `light` for the rest of the execution (the move is made once, when
/// the execution turns heavy). Meanwhile it spins in the shared group with a full task
/// weight.
/// How many hopping processes.
const HOPPERS: usize = 25;

/// How many looks in a row must see every hopper moved.
const LOOKS: usize = 25;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hopping_process_does_not_stay_in_the_shared_cpu_group() -> Result<()> {
    if !shared_cpu_group_here() {
        return Ok(());
    }
    let gateway = TestGateway::spawn().await;
    let mut socket = gateway.raw().await?;
    let neighbour = unique_marker("hop-neighbour");
    let light = light_group(&mut socket, &neighbour).await?;

    let marker = unique_marker("hop");
    // Two spinners (the execution turns heavy) and the hoppers: each forks its successor
    // and exits every few milliseconds, so the hopping process changes pid many times
    // during one pass of moves (a move takes milliseconds), keeping the marked command
    // line. Not faster: an exited hopper counts against `processes` until the jail's init
    // has reaped it, and a loaded machine delays that; at the limit the execution ends.
    let hopper = format!(
        "(exec -a {marker}-hop python3 -c '\
import os, time
while True:
    time.sleep(0.005)
    if os.fork():
        os._exit(0)
') &\n"
    );
    let code = format!(
        "(exec -a {marker}-spin bash -c 'while :; do :; done') &\n\
         (exec -a {marker}-spin bash -c 'while :; do :; done') &\n\
         {}exec -a {marker}-main sleep 1000",
        hopper.repeat(HOPPERS)
    );
    socket
        .execute(ExecuteRequest {
            limits: Limits {
                processes: Some(1024),
                ..Limits::default()
            },
            ..request("hop", "bash", &code)
        })
        .await?;
    socket
        .next_event_where(|e| e.kind == EventKind::Started)
        .await?;
    wait_until_running(&format!("{marker}-hop")).await?;
    // The execution turns heavy: its spinners leave `light`.
    let spin = format!("{marker}-spin");
    eventually(patience(), "the spinners leave the shared group", || {
        let groups = groups_of(&spin);
        groups.len() == 1 && groups[0] != light
    })
    .await?;
    let heavy = groups_of(&spin).remove(0);
    // Every process of a heavy execution is in its own group, hoppers included.
    let hop = format!("{marker}-hop");
    // A hopper lives for a moment, so one look can miss one: the hoppers count as moved
    // once a run of looks in a row sees one in the heavy group and none in the shared
    // one. (One that is exiting shows the root group: it has left every cgroup.)
    let mut in_a_row = 0;
    let moved = eventually(patience(), "the hoppers leave the shared group", || {
        let groups = groups_of(&hop);
        if groups.contains(&heavy) && !groups.contains(&light) {
            in_a_row += 1;
        } else {
            in_a_row = 0;
        }
        in_a_row >= LOOKS
    })
    .await;
    let seen = groups_of(&hop);
    socket.cancel("hop").await?;
    let ending = socket.events_until_terminal("hop").await?;
    let ending = ending.last().map(|e| format!("{:?} {}", e.kind, e.data));
    socket.cancel("neighbour").await?;
    socket.events_until_terminal("neighbour").await?;
    wait_until_gone(&marker).await?;
    moved.with_context(|| {
        format!(
            "the hoppers are in {seen:?}, the heavy group is {}, the execution ended {ending:?}",
            heavy.display()
        )
    })?;
    assert_stream_ok(socket.received());
    gateway.shutdown().await
}

/// The heavy groups (`h<N>`) under `ours`, the gateway's directory in the v1 `cpu`
/// hierarchy.
fn heavy_groups(ours: &std::path::Path) -> Vec<PathBuf> {
    std::fs::read_dir(ours)
        .map(|entries| {
            entries
                .flatten()
                .map(|entry| entry.path())
                .filter(|path| {
                    path.is_dir()
                        && path
                            .file_name()
                            .and_then(|n| n.to_str())
                            .is_some_and(|n| n.starts_with('h'))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// However a heavy execution ends (cancel, timeout, its CPU limit, its own exit), its
/// own CPU group goes with it, and the shared group and the gateway's directory go at
/// shutdown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heavy_executions_group_goes_however_it_ends() -> Result<()> {
    if !shared_cpu_group_here() {
        return Ok(());
    }
    let gateway = TestGateway::spawn().await;
    let mut socket = gateway.raw().await?;
    let neighbour = unique_marker("leak-neighbour");
    let light = light_group(&mut socket, &neighbour).await?;
    let ours = light
        .parent()
        .context("the gateway's cpu directory")?
        .to_owned();
    let marker = unique_marker("leak");
    let spin =
        |n: usize| format!("(exec -a {marker}-spin bash -c 'while :; do :; done') &\n").repeat(n);
    let cases: [(&str, String, Limits); 4] = [
        ("cancelled", format!("{}exec -a {marker}-main sleep 1000", spin(2)), Limits::default()),
        (
            "timeout",
            format!("{}exec -a {marker}-main sleep 1000", spin(2)),
            Limits {
                timeout_ms: Some(2_000),
                ..Limits::default()
            },
        ),
        (
            "cpu",
            format!("{}exec -a {marker}-main sleep 1000", spin(2)),
            Limits {
                cpu_ms: Some(600),
                ..Limits::default()
            },
        ),
        (
            "exits",
            format!("{}exec -a {marker}-main bash -c 'end=$((SECONDS+2)); while [ $SECONDS -lt $end ]; do :; done'", spin(1)),
            Limits::default(),
        ),
    ];
    for (id, code, limits) in cases {
        socket
            .execute(ExecuteRequest {
                limits,
                ..request(id, "bash", &code)
            })
            .await?;
        socket
            .next_event_where(|e| e.kind == EventKind::Started)
            .await?;
        if id == "cancelled" {
            let spinners = format!("{marker}-spin");
            eventually(patience(), "the spinners leave the shared group", || {
                let groups = groups_of(&spinners);
                groups.len() == 1 && groups[0] != light
            })
            .await?;
            socket.cancel(id).await?;
        }
        let events = socket.events_until_terminal(id).await?;
        wait_until_gone(&marker).await?;
        eventually(
            patience(),
            &format!("{id}: no heavy group left ({events:?})"),
            || heavy_groups(&ours).is_empty(),
        )
        .await
        .with_context(|| format!("{:?}", heavy_groups(&ours)))?;
    }
    socket.cancel("neighbour").await?;
    socket.events_until_terminal("neighbour").await?;
    assert_stream_ok(socket.received());
    gateway.shutdown().await?;
    ensure!(!ours.exists(), "{} is left after shutdown", ours.display());
    Ok(())
}
