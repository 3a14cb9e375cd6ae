//! Fairness between executions (issue 10, section 4): an execution's CPU share however
//! many processes it forks, the memory and process budget that admission adds up, and
//! the processes of a persistent cell ending with the cell. Asserted structurally (the
//! cgroups' weights, refusals, `/proc`), never by timing: the latency figure is the
//! bench's.

use anyhow::{ensure, Context as _, Result};
use sluice_gateway::{Config, LimitBound, LimitsConfig};
use sluice_protocol::{ErrorCode, EventKind, ExecuteRequest, Limits};
use sluice_tests::{
    assert_stream_ok, cell, eventually, patience, processes_with, request, skip, text_of,
    unique_marker, wait_until_gone, wait_until_running, TestGateway,
};
use std::path::PathBuf;

/// The CPU cgroup of `pid` and the file holding its weight there: v1 `cpu.shares`, or
/// v2 `cpu.weight`.
fn cpu_cgroup(pid: &str) -> Option<(PathBuf, &'static str)> {
    let table = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let v1 = table.lines().find_map(|line| {
        let mut fields = line.splitn(3, ':');
        let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
        controllers
            .split(',')
            .any(|c| c == "cpu")
            .then(|| PathBuf::from("/sys/fs/cgroup/cpu").join(path.trim_start_matches('/')))
    });
    if let Some(dir) = v1 {
        return Some((dir, "cpu.shares"));
    }
    let path = table.lines().find_map(|line| line.strip_prefix("0::"))?;
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mount = mounts.lines().find_map(|line| {
        let (before, after) = line.split_once(" - ")?;
        after
            .starts_with("cgroup2 ")
            .then(|| before.split(' ').nth(4).map(PathBuf::from))?
    })?;
    Some((mount.join(path.trim_start_matches('/')), "cpu.weight"))
}

/// Whether a gateway in this process could give executions cgroups with a CPU weight:
/// a writable v1 `cpu` hierarchy, or the v2 `cpu` controller, where this process lives
/// (checked apart from the gateway, so a gateway that ignores it fails the test).
fn host_offers_cpu_cgroup() -> bool {
    if sluice_tests::host_report().kill_tree.is_none() {
        return false;
    }
    match cpu_cgroup("self") {
        Some((dir, "cpu.shares")) => {
            let probe = dir.join(format!("sluice-fairness-probe-{}", std::process::id()));
            let made = std::fs::create_dir(&probe).is_ok();
            let _ = std::fs::remove_dir(&probe);
            made
        }
        Some((dir, _)) => {
            // The gateway may have moved into a leaf of its own: its parent delegates.
            [Some(dir.as_path()), dir.parent()]
                .into_iter()
                .flatten()
                .any(|d| {
                    std::fs::read_to_string(d.join("cgroup.controllers"))
                        .is_ok_and(|c| c.split_whitespace().any(|c| c == "cpu"))
                })
        }
        None => false,
    }
}

/// How the gateway shares the CPU here (the host report's words), or `None` (skipped,
/// said why) where the host has no cpu cgroup for it; an error where the host has one
/// and the gateway does not use it.
fn cpu_share_here() -> Result<Option<String>> {
    if !host_offers_cpu_cgroup() {
        skip("no writable cpu cgroup here (or the test gateways run without cgroups)");
        return Ok(None);
    }
    sluice_tests::host_report()
        .cpu_share
        .context("the host has a writable cpu cgroup but the gateway gives no CPU share")
        .map(Some)
}

fn weight(dir: &std::path::Path, file: &str) -> Result<u64> {
    let text = std::fs::read_to_string(dir.join(file))
        .with_context(|| format!("{}/{file}", dir.display()))?;
    Ok(text.trim().parse()?)
}

/// A bash program that starts `spinners` busy loops marked `{marker}-spin` and then
/// sleeps as `{marker}-main`.
fn spinners(marker: &str, spinners: usize) -> String {
    let spin = format!("(exec -a {marker}-spin bash -c 'while :; do :; done') &\n");
    format!("{}exec -a {marker}-main sleep 1000", spin.repeat(spinners))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_execution_forking_spinners_gets_one_cpu_share_and_others_still_run() -> Result<()> {
    let Some(how) = cpu_share_here()? else {
        return Ok(());
    };
    let gateway = TestGateway::spawn().await;
    let mut hog = gateway.raw().await?;
    let mut other = gateway.raw().await?;
    let marker = unique_marker("spinners");
    let neighbour = unique_marker("neighbour");
    hog.execute(request("spin", "bash", &spinners(&marker, 8)))
        .await?;
    hog.next_event_where(|e| e.kind == EventKind::Started)
        .await?;
    eventually(patience(), "eight spinners run", || {
        processes_with(&format!("{marker}-spin")).len() == 8
    })
    .await?;
    other
        .execute(request(
            "quiet",
            "bash",
            &format!("exec -a {neighbour} sleep 1000"),
        ))
        .await?;
    other.started_and_running(&neighbour).await?;

    let (pid, _) = processes_with(&neighbour)
        .into_iter()
        .next()
        .context("the neighbour runs")?;
    let (quiet, file) = cpu_cgroup(&pid.to_string()).context("the neighbour's cpu cgroup")?;
    // Where light executions share one CPU group, the spinners leave it for one of their
    // own once their execution has used 200 ms of CPU time.
    let shared = how.contains("share one group");
    let spinner_groups = || -> Vec<PathBuf> {
        let mut groups: Vec<PathBuf> = processes_with(&format!("{marker}-spin"))
            .iter()
            .filter_map(|(pid, _)| cpu_cgroup(&pid.to_string()).map(|(dir, _)| dir))
            .collect();
        groups.sort();
        groups.dedup();
        groups
    };
    eventually(
        patience(),
        "the spinners share one cgroup, not the neighbour's",
        || {
            let groups = spinner_groups();
            groups.len() == 1 && groups[0] != quiet
        },
    )
    .await
    .with_context(|| format!("{how}: spinners in {:?}", spinner_groups()))?;
    // Every spinner is in one cgroup, its execution's...
    let spinning = spinner_groups().remove(0);
    let (gateway_cgroup, _) = cpu_cgroup("self").context("the test's own cpu cgroup")?;
    ensure!(
        spinning != gateway_cgroup,
        "the spinners share the gateway's cpu cgroup {}",
        spinning.display()
    );
    // ...a sibling of the neighbour's, weighing no more: one share (a sixteenth once heavy)
    // however many processes it forked.
    ensure!(
        quiet.parent() == spinning.parent(),
        "{quiet:?} / {spinning:?}"
    );
    let (spinning_weight, quiet_weight) = (weight(&spinning, file)?, weight(&quiet, file)?);
    ensure!(
        spinning_weight <= quiet_weight,
        "{how}: the spinners weigh {spinning_weight}, the neighbour {quiet_weight}"
    );
    if shared {
        // It left the shared group when it forked, at the full weight, and its weight
        // drops once it has used 200 ms of CPU.
        eventually(patience(), "the spinners' group to weigh less", || {
            weight(&spinning, file).is_ok_and(|w| w < quiet_weight)
        })
        .await
        .with_context(|| format!("{how}: the spinners' group still weighs {quiet_weight}"))?;
    }
    // ...under a parent that weighs less than one of the gateway's threads (a nice-0
    // thread weighs 1024 in v1, a cgroup 100 in v2).
    let parent = spinning.parent().context("a parent")?;
    let default = if file == "cpu.shares" { 1024 } else { 100 };
    let parent_weight = weight(parent, file)?;
    ensure!(
        parent_weight < default,
        "{}: {parent_weight}",
        parent.display()
    );

    // Another client's short program still runs to the end meanwhile.
    let mut client = gateway.raw().await?;
    client
        .execute(request("light", "python", "print(1)"))
        .await?;
    let events = client.events_until_terminal("light").await?;
    assert_eq!(text_of(&events, EventKind::Stdout), "1\n");
    assert_eq!(events.last().map(|e| e.kind), Some(EventKind::Completed));

    hog.cancel("spin").await?;
    other.cancel("quiet").await?;
    hog.events_until_terminal("spin").await?;
    other.events_until_terminal("quiet").await?;
    wait_until_gone(&marker).await?;
    for socket in [&hog, &other, &client] {
        assert_stream_ok(socket.received());
    }
    gateway.shutdown().await
}

/// A bash execution that sleeps as `marker`, with these limits.
fn sleeper(id: &str, marker: &str, limits: Limits) -> ExecuteRequest {
    ExecuteRequest {
        limits,
        ..request(id, "bash", &format!("exec -a {marker} sleep 1000"))
    }
}

fn memory(bytes: u64) -> Limits {
    Limits {
        memory_bytes: Some(bytes),
        ..Limits::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_adds_up_memory_limits_against_the_budget() -> Result<()> {
    const MIB: u64 = 1 << 20;
    let gateway = TestGateway::spawn_with(Config {
        memory_budget_bytes: Some(96 * MIB),
        memory_overcommit: 1,
        budget_share_per_peer: 100,
        limits: LimitsConfig {
            memory_bytes: LimitBound {
                default: 32 * MIB,
                max: 128 * MIB,
            },
            ..LimitsConfig::default()
        },
        ..Config::default()
    })
    .await;
    let mut socket = gateway.raw().await?;
    let (big, small) = (unique_marker("budget-big"), unique_marker("budget-small"));
    socket
        .execute(sleeper("big", &big, memory(64 * MIB)))
        .await?;
    socket.started_and_running(&big).await?;

    // 64 MiB more does not fit in the 32 MiB left: refused, nothing started.
    let refused = unique_marker("budget-refused");
    socket
        .execute(sleeper("refused", &refused, memory(64 * MIB)))
        .await?;
    let events = socket.events_until_terminal("refused").await?;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].code, Some(ErrorCode::TooManyExecutions));
    let message = &events[0].data;
    ensure!(message.contains("memory budget"), "{message}");
    assert!(processes_with(&refused).is_empty());
    // One that can never fit says so.
    socket
        .execute(sleeper("never", &refused, memory(128 * MIB)))
        .await?;
    let events = socket.events_until_terminal("never").await?;
    assert_eq!(events[0].code, Some(ErrorCode::InvalidLimit), "{events:?}");

    // 32 MiB (the default) fits exactly.
    socket
        .execute(sleeper("small", &small, Limits::default()))
        .await?;
    socket.started_and_running(&small).await?;

    // The parent of every execution cgroup carries the total, where there is one.
    if sluice_tests::host_report().memory.is_some() {
        let (pid, _) = processes_with(&big)
            .into_iter()
            .next()
            .context("big runs")?;
        let table = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
        let limit = table.lines().find_map(|line| {
            let mut fields = line.splitn(3, ':');
            let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
            controllers.split(',').any(|c| c == "memory").then(|| {
                let dir = PathBuf::from("/sys/fs/cgroup/memory").join(path.trim_start_matches('/'));
                dir.parent().map(|p| p.join("memory.limit_in_bytes"))
            })?
        });
        match limit {
            Some(file) => assert_eq!(
                std::fs::read_to_string(&file)?.trim(),
                (96 * MIB).to_string(),
                "{}",
                file.display()
            ),
            None => skip(
                "the parent's memory total: no v1 memory cgroup (v2 is checked in the unit tests)",
            ),
        }
    }

    // Once the big one has ended, its memory is free again.
    socket.cancel("big").await?;
    socket.events_until_terminal("big").await?;
    let again = unique_marker("budget-again");
    socket
        .execute(sleeper("again", &again, memory(64 * MIB)))
        .await?;
    socket.started_and_running(&again).await?;
    for id in ["small", "again"] {
        socket.cancel(id).await?;
        socket.events_until_terminal(id).await?;
    }
    for marker in [&big, &small, &again] {
        wait_until_gone(marker).await?;
    }
    assert_stream_ok(socket.received());
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_adds_up_process_limits_against_the_budget() -> Result<()> {
    let gateway = TestGateway::spawn_with(Config {
        // One execution of 15 processes fits (17 with the jail's two), two do not.
        process_budget: Some(20),
        budget_share_per_peer: 100,
        ..Config::default()
    })
    .await;
    let mut socket = gateway.raw().await?;
    let marker = unique_marker("process-budget");
    let fifteen = Limits {
        processes: Some(15),
        ..Limits::default()
    };
    socket
        .execute(sleeper("first", &marker, fifteen.clone()))
        .await?;
    socket.started_and_running(&marker).await?;
    socket.execute(sleeper("second", &marker, fifteen)).await?;
    let events = socket.events_until_terminal("second").await?;
    assert_eq!(
        events[0].code,
        Some(ErrorCode::TooManyExecutions),
        "{events:?}"
    );
    let message = &events[0].data;
    ensure!(message.contains("process budget"), "{message}");
    socket.cancel("first").await?;
    socket.events_until_terminal("first").await?;
    wait_until_gone(&marker).await?;
    assert_stream_ok(socket.received());
    gateway.shutdown().await
}

/// Python that starts `bash -c 'exec -a MARKER COMMAND'` in the background, in a new
/// session (it leaves the interpreter's process group), and does not wait for it.
fn background(marker: &str, command: &str) -> String {
    format!(
        "import subprocess\nsubprocess.Popen(['bash', '-c', 'exec -a {marker} {command}'], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cells_background_processes_end_with_the_cell_and_the_interpreter_stays() -> Result<()> {
    if sluice_tests::host_report().kill_tree.is_none() {
        skip("no cgroup here: a process that leaves the interpreter's group is not tracked");
        return Ok(());
    }
    let gateway = TestGateway::spawn().await;
    let mut socket = gateway.raw().await?;

    // A cell that ends normally, leaving a sleeper behind.
    let sleeper = unique_marker("cell-sleeper");
    let code = format!(
        "kept = 41\n{}print('started')",
        background(&sleeper, "sleep 1000")
    );
    socket.execute(cell("nb", "first", &code)).await?;
    let events = socket.events_until_terminal("first").await?;
    assert_eq!(
        text_of(&events, EventKind::Stdout),
        "started\n",
        "{events:?}"
    );
    wait_until_gone(&sleeper).await?;

    // A cell stopped by its timeout, with a spinner in the background.
    let spinner = unique_marker("cell-spinner");
    let code = format!(
        "{}import time\nprint('spinning', flush=True)\ntime.sleep(1000)",
        background(&spinner, "bash -c \"while :; do :; done\"")
    );
    socket
        .execute(ExecuteRequest {
            limits: Limits {
                timeout_ms: Some(3_000),
                ..Limits::default()
            },
            ..cell("nb", "second", &code)
        })
        .await?;
    socket.wait_for_stdout("second", "spinning\n").await?;
    wait_until_running(&spinner).await?;
    let events = socket.events_until_terminal("second").await?;
    let last = events.last().context("a terminal event")?;
    assert_eq!(last.kind, EventKind::ResourceLimit, "{last:?}");
    wait_until_gone(&spinner).await?;

    // The interpreter and its state are still there.
    socket
        .execute(cell("nb", "third", "print(kept + 1)"))
        .await?;
    let events = socket.events_until_terminal("third").await?;
    assert_eq!(text_of(&events, EventKind::Stdout), "42\n", "{events:?}");
    assert_stream_ok(socket.received());
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_programs_share_a_cpu_group_and_one_that_forks_gets_its_own() -> Result<()> {
    let Some(how) = cpu_share_here()? else {
        return Ok(());
    };
    if !how.contains("share one group") {
        skip("light executions get a CPU group each here (no v1 cpu with v2 CPU time)");
        return Ok(());
    }
    let gateway = TestGateway::spawn().await;
    let mut socket = gateway.raw().await?;
    let (one, two, forked) = (
        unique_marker("share-one"),
        unique_marker("share-two"),
        unique_marker("forked"),
    );
    for (id, marker) in [("one", &one), ("two", &two)] {
        socket
            .execute(request(id, "bash", &format!("exec -a {marker} sleep 1000")))
            .await?;
        socket.started_and_running(marker).await?;
    }
    // Two sleeping children: no CPU time at all, so it never turns heavy.
    let code =
        format!("(exec -a {forked}-a sleep 1000) &\n(exec -a {forked}-b sleep 1000) &\nwait");
    socket.execute(request("forked", "bash", &code)).await?;
    eventually(patience(), "both children run", || {
        processes_with(&format!("{forked}-")).len() == 2
    })
    .await?;
    let group_of = |marker: &str| -> Option<PathBuf> {
        let (pid, _) = processes_with(marker).into_iter().next()?;
        cpu_cgroup(&pid.to_string()).map(|(dir, _)| dir)
    };
    // The two single programs share one group...
    let shared = group_of(&one).context("the first program's cpu cgroup")?;
    assert_eq!(group_of(&two), Some(shared.clone()));
    // ...and the one that forked leaves it for its own, at the full weight: its
    // processes count once between them, as one execution.
    eventually(
        patience(),
        "the forked execution has a group of its own",
        || {
            let groups: Vec<Option<PathBuf>> = [format!("{forked}-a"), format!("{forked}-b")]
                .iter()
                .map(|m| group_of(m))
                .collect();
            groups[0].is_some() && groups[0] == groups[1] && groups[0].as_ref() != Some(&shared)
        },
    )
    .await?;
    let own = group_of(&format!("{forked}-a")).context("the children's cpu cgroup")?;
    assert_eq!(own.parent(), shared.parent());
    assert_eq!(weight(&own, "cpu.shares")?, weight(&shared, "cpu.shares")?);
    for id in ["one", "two", "forked"] {
        socket.cancel(id).await?;
        socket.events_until_terminal(id).await?;
    }
    for marker in [&one, &two, &forked] {
        wait_until_gone(marker).await?;
    }
    assert_stream_ok(socket.received());
    gateway.shutdown().await
}
