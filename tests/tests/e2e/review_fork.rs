//! Outside review of the shared CPU group's fork rule (an execution found at a CPU check
//! with more tasks than its program and the jail's two gets a v1 CPU group of its own):
//! threads, programs that never fork (jailed, unjailed, warm), children born after the
//! move, and the own group's removal however the execution ends. Asserted structurally
//! (which v1 `cpu` cgroup a process is in), never by timing.

use crate::isolation::jail_available;
use anyhow::{ensure, Context as _, Result};
use sluice_gateway::{Config, Isolation};
use sluice_protocol::{EventKind, ExecuteRequest, Limits};
use sluice_tests::{
    assert_stream_ok, eventually, forced_isolation, patience, processes_with, request, skip,
    unique_marker, wait_until_gone, wait_until_running, TestGateway,
};
use std::path::{Path, PathBuf};

/// The v1 `cpu` cgroup of `pid`, if it is alive.
fn v1_cpu_cgroup(pid: u32) -> Option<PathBuf> {
    v1_cpu_in(&std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?)
}

/// The v1 `cpu` cgroup a `/proc/<pid>/cgroup` table names.
fn v1_cpu_in(table: &str) -> Option<PathBuf> {
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

/// The one group of `marker`'s processes, once they are all in one.
fn group_of(marker: &str) -> Option<PathBuf> {
    let groups = groups_of(marker);
    (groups.len() == 1).then(|| groups[0].clone())
}

fn is_light(dir: &Path) -> bool {
    dir.file_name().is_some_and(|name| name == "light")
}

fn is_own(dir: &Path) -> bool {
    dir.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with('h'))
}

/// The executions' own groups (`h<N>`) under `ours`.
fn own_groups(ours: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(ours)
        .map(|entries| {
            entries
                .flatten()
                .map(|entry| entry.path())
                .filter(|path| path.is_dir() && is_own(path))
                .collect()
        })
        .unwrap_or_default()
}

fn shared_cpu_group_here() -> bool {
    let shared = sluice_tests::host_report()
        .cpu_share
        .is_some_and(|how| how.contains("share one group"));
    if !shared {
        skip("light executions do not share a CPU group here (needs v1 cpu and v2 cpu.stat)");
    }
    shared
}

/// A bash program with two sleeping children marked `{marker}-kid` (no CPU time: it
/// never turns heavy), then sleeping as `{marker}-main`.
fn forking(marker: &str) -> String {
    format!(
        "(exec -a {marker}-kid sleep 1000) &\n(exec -a {marker}-kid sleep 1000) &\nexec -a {marker}-main sleep 1000"
    )
}

/// Starts a forked control execution `id` and waits until it has a group of its own:
/// a CPU check has happened for it, so one for every execution started before it
/// (checks come first 100 ms after the start) has too.
async fn forked_control(socket: &mut sluice_tests::RawSocket, id: &str) -> Result<PathBuf> {
    let marker = unique_marker(id);
    socket
        .execute(request(id, "bash", &forking(&marker)))
        .await?;
    let kids = format!("{marker}-kid");
    wait_until_running(&kids).await?;
    eventually(patience(), "the control leaves the shared group", || {
        group_of(&marker).is_some_and(|g| is_own(&g))
    })
    .await?;
    group_of(&marker).context("the control's group")
}

/// pids.current (v1 and v2) counts threads, so a single process with many threads is
/// taken for a forked one: right, since in the shared group each thread weighs as much
/// as a whole light execution (64 spinning threads would be 64 shares until 200 ms).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_with_threads_leaves_the_shared_group_like_a_forked_one() -> Result<()> {
    if !shared_cpu_group_here() {
        return Ok(());
    }
    let gateway = TestGateway::spawn().await;
    let mut socket = gateway.raw().await?;
    let marker = unique_marker("threads");
    let code = format!(
        "exec -a {marker} python3 -c 'import threading, time\nfor _ in range(8): threading.Thread(target=time.sleep, args=(1000,), daemon=True).start()\ntime.sleep(1000)'"
    );
    socket.execute(request("threads", "bash", &code)).await?;
    wait_until_running(&marker).await?;
    let moved = eventually(patience(), "the threaded process leaves `light`", || {
        group_of(&marker).is_some_and(|g| is_own(&g))
    })
    .await;
    let seen = groups_of(&marker);
    socket.cancel("threads").await?;
    socket.events_until_terminal("threads").await?;
    wait_until_gone(&marker).await?;
    moved.with_context(|| format!("in {seen:?}"))?;
    assert_stream_ok(socket.received());
    gateway.shutdown().await
}

/// A single-process program stays in the shared group at its checks, jailed (the jail
/// and its init are not counted as forks) and unjailed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_program_that_never_forks_stays_shared_jailed_and_unjailed() -> Result<()> {
    if !shared_cpu_group_here() || forced_isolation().is_some() {
        return Ok(());
    }
    let mut levels = vec![Isolation::Cgroups];
    if jail_available() {
        levels.push(Isolation::Namespaces);
    }
    for isolation in levels {
        let gateway = TestGateway::spawn_with(Config {
            isolation,
            ..Config::default()
        })
        .await;
        let mut socket = gateway.raw().await?;
        let single = unique_marker("single");
        socket
            .execute(request(
                "single",
                "bash",
                &format!("exec -a {single} sleep 1000"),
            ))
            .await?;
        socket.started_and_running(&single).await?;
        forked_control(&mut socket, "control").await?;
        let group = group_of(&single);
        for id in ["single", "control"] {
            socket.cancel(id).await?;
            socket.events_until_terminal(id).await?;
        }
        wait_until_gone(&single).await?;
        ensure!(
            group.as_deref().is_some_and(is_light),
            "{isolation:?}: a single-process program is in {group:?}"
        );
        assert_stream_ok(socket.received());
        gateway.shutdown().await?;
    }
    Ok(())
}

/// The pid of the process whose `comm` is `name`.
fn pid_by_comm(name: &str) -> Option<u32> {
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let comm = std::fs::read_to_string(entry.path().join("comm")).ok()?;
            (comm.trim() == name).then_some(pid)
        })
}

/// A warm entry waits in a group of its own, weighed down, and keeps it at the full
/// weight from its claim (moving it back to the shared group would wait for an RCU grace
/// period and hold up every fork meanwhile); a cold start of the same program, one
/// process, is in the shared group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claimed_warm_program_keeps_its_own_group_at_the_full_weight() -> Result<()> {
    if !shared_cpu_group_here() || forced_isolation().is_some() || !jail_available() {
        return Ok(());
    }
    let gateway = TestGateway::spawn_with(Config {
        isolation: Isolation::Namespaces,
        warm_pool: Some(1),
        warm_runtimes: Some(vec!["python".into()]),
        ..Config::default()
    })
    .await;
    let mut socket = gateway.raw().await?;
    let comm = format!("rf{}", std::process::id() % 1_000_000);
    let code = format!(
        "import time\nopen('/proc/self/comm', 'w').write('{comm}')\nprint('up', flush=True)\ntime.sleep(1000)\n"
    );
    // Warm (the pool full first), then cold (an `env` entry always starts cold).
    crate::warm::pool_ready(&gateway, 1.0).await?;
    let mut groups = Vec::new();
    for (id, env) in [("warm", None), ("cold", Some(("A", "1")))] {
        let mut execute = request(id, "python", &code);
        execute.env = env
            .map(|(k, v)| [(k.to_owned(), v.to_owned())].into())
            .unwrap_or_default();
        socket.execute(execute).await?;
        socket.wait_for_stdout(id, "up\n").await?;
        forked_control(&mut socket, &format!("{id}-control")).await?;
        let pid = pid_by_comm(&comm).context("the python program")?;
        let group = v1_cpu_cgroup(pid);
        let weight = group
            .as_deref()
            .and_then(|dir| std::fs::read_to_string(dir.join("cpu.shares")).ok());
        groups.push((group, weight));
        for id in [id.to_owned(), format!("{id}-control")] {
            socket.cancel(&id).await?;
            socket.events_until_terminal(&id).await?;
        }
        eventually(patience(), "the program is gone", || {
            pid_by_comm(&comm).is_none()
        })
        .await?;
    }
    let (warm, cold) = (&groups[0], &groups[1]);
    ensure!(
        warm.0.as_deref().is_some_and(is_own) && warm.1.as_deref().map(str::trim) == Some("1024"),
        "the warm program was in {warm:?}"
    );
    ensure!(
        cold.0.as_deref().is_some_and(is_light),
        "the cold program was in {cold:?}"
    );
    assert_stream_ok(socket.received());
    gateway.shutdown().await
}

/// A child forked after the move is born in the execution's own group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_forked_after_the_move_is_born_in_the_own_group() -> Result<()> {
    if !shared_cpu_group_here() {
        return Ok(());
    }
    let gateway = TestGateway::spawn().await;
    let mut socket = gateway.raw().await?;
    let marker = unique_marker("late");
    // Forks, waits (by its own /proc/self/cgroup) until it has been moved, then forks
    // again.
    let code = format!(
        "(exec -a {marker}-early sleep 1000) &\n\
         until grep -q '^[0-9]*:cpu:.*/h[0-9]*$' /proc/self/cgroup; do read -t 0.05 < /dev/zero 2>/dev/null || true; done\n\
         (exec -a {marker}-late sleep 1000) &\n\
         exec -a {marker}-main sleep 1000"
    );
    socket.execute(request("late", "bash", &code)).await?;
    wait_until_running(&format!("{marker}-late")).await?;
    let (early, late) = (
        group_of(&format!("{marker}-early")),
        group_of(&format!("{marker}-late")),
    );
    socket.cancel("late").await?;
    socket.events_until_terminal("late").await?;
    wait_until_gone(&marker).await?;
    ensure!(
        early.as_deref().is_some_and(is_own) && early == late,
        "before the move's fork in {early:?}, after it in {late:?}"
    );
    assert_stream_ok(socket.received());
    gateway.shutdown().await
}

/// The v1 `cpu` cgroups of the live threads of `pid`, leader left out.
fn thread_groups(pid: u32) -> Vec<PathBuf> {
    let Ok(threads) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut groups: Vec<PathBuf> = threads
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|tid| *tid != pid)
        .filter_map(|tid| {
            v1_cpu_in(&std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/cgroup")).ok()?)
        })
        .collect();
    groups.sort();
    groups.dedup();
    groups
}

/// The process one of whose threads has `marker` in its command line (a leader that
/// has exited shows none).
fn process_with_a_thread_marked(marker: &str) -> Option<u32> {
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let tasks = std::fs::read_dir(entry.path().join("task")).ok()?;
            tasks
                .flatten()
                .any(|task| {
                    std::fs::read(task.path().join("cmdline"))
                        .is_ok_and(|raw| String::from_utf8_lossy(&raw).contains(marker))
                })
                .then_some(pid)
        })
}

/// A process whose leader thread has exited while its other threads run on (the leader
/// a zombie, whose own `/proc/<pid>/cgroup` shows the root) is moved like any other:
/// its threads reach the execution's own group, and the execution ends as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn threads_outliving_their_leader_reach_the_own_group() -> Result<()> {
    if !shared_cpu_group_here() {
        return Ok(());
    }
    let gateway = TestGateway::spawn().await;
    let mut socket = gateway.raw().await?;
    let marker = unique_marker("leaderless");
    // Eight sleeping threads (more tasks than a single program), then the main thread
    // ends itself alone with the raw exit system call.
    let code = format!(
        "exec -a {marker} python3 -c 'import ctypes, threading, time\n\
         for _ in range(8): threading.Thread(target=time.sleep, args=(1000,)).start()\n\
         ctypes.CDLL(None).syscall(60, 0)'"
    );
    socket.execute(request("leaderless", "bash", &code)).await?;
    // Found by its threads: once the leader has exited, its own command line reads empty.
    let mut found = None;
    eventually(patience(), "a thread of the program runs", || {
        found = process_with_a_thread_marked(&marker);
        found.is_some()
    })
    .await?;
    let pid = found.context("the program")?;
    let moved = eventually(patience(), "the threads leave `light`", || {
        let groups = thread_groups(pid);
        groups.len() == 1 && is_own(&groups[0])
    })
    .await;
    let seen = thread_groups(pid);
    socket.cancel("leaderless").await?;
    let events = socket.events_until_terminal("leaderless").await?;
    moved.with_context(|| format!("the threads are in {seen:?}"))?;
    ensure!(
        events
            .last()
            .is_some_and(|e| e.kind == EventKind::Cancelled),
        "it ended with {:?}",
        events.last()
    );
    assert_stream_ok(socket.received());
    gateway.shutdown().await
}

/// However a forked (light) execution ends, its own group goes with it; one still
/// running at shutdown too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forked_executions_group_goes_however_it_ends() -> Result<()> {
    if !shared_cpu_group_here() {
        return Ok(());
    }
    let gateway = TestGateway::spawn().await;
    let mut socket = gateway.raw().await?;
    let marker = unique_marker("fork-end");
    let kids = format!("{marker}-kid");
    let wait_moved = || async {
        eventually(patience(), "the execution leaves the shared group", || {
            group_of(&marker).is_some_and(|g| is_own(&g))
        })
        .await
        .with_context(|| format!("its processes are in {:?}", groups_of(&marker)))
    };
    let mut ours = None;
    let cases: [(&str, String, Limits); 5] = [
        ("cancelled", forking(&marker), Limits::default()),
        (
            "timeout",
            forking(&marker),
            Limits {
                timeout_ms: Some(3_000),
                ..Limits::default()
            },
        ),
        (
            // The program exits, its children are left behind (and killed).
            "exits",
            format!(
                "(exec -a {marker}-kid sleep 1000) &\n(exec -a {marker}-kid sleep 1000) &\n\
                 until grep -q '^[0-9]*:cpu:.*/h[0-9]*$' /proc/self/cgroup; do read -t 0.05 < /dev/zero 2>/dev/null || true; done\nexit 3"
            ),
            Limits::default(),
        ),
        (
            "output",
            format!(
                "(exec -a {marker}-kid sleep 1000) &\n(exec -a {marker}-kid sleep 1000) &\n\
                 until grep -q '^[0-9]*:cpu:.*/h[0-9]*$' /proc/self/cgroup; do read -t 0.05 < /dev/zero 2>/dev/null || true; done\nexec -a {marker}-main yes"
            ),
            Limits {
                output_bytes: Some(100_000),
                ..Limits::default()
            },
        ),
        (
            "memory",
            format!(
                "(exec -a {marker}-kid sleep 1000) &\n(exec -a {marker}-kid sleep 1000) &\n\
                 until grep -q '^[0-9]*:cpu:.*/h[0-9]*$' /proc/self/cgroup; do read -t 0.05 < /dev/zero 2>/dev/null || true; done\nexec -a {marker}-main python3 -c 'x = bytearray(1 << 30)'"
            ),
            Limits {
                memory_bytes: Some(64 << 20),
                ..Limits::default()
            },
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
        if id == "cancelled" || id == "timeout" {
            wait_until_running(&kids).await?;
            wait_moved().await?;
            let own = group_of(&marker).context("the own group")?;
            ours = own.parent().map(Path::to_path_buf);
            if id == "cancelled" {
                socket.cancel(id).await?;
            }
        }
        let events = socket.events_until_terminal(id).await?;
        wait_until_gone(&marker).await?;
        let ours = ours.as_deref().context("the gateway's cpu directory")?;
        eventually(
            patience(),
            &format!("{id}: no own group left ({events:?})"),
            || own_groups(ours).is_empty(),
        )
        .await
        .with_context(|| format!("{:?}", own_groups(ours)))?;
    }
    // Running (moved) at shutdown.
    socket
        .execute(request("left", "bash", &forking(&marker)))
        .await?;
    wait_until_running(&kids).await?;
    wait_moved().await?;
    assert_stream_ok(socket.received());
    drop(socket);
    gateway.shutdown().await?;
    let ours = ours.context("the gateway's cpu directory")?;
    ensure!(!ours.exists(), "{} is left after shutdown", ours.display());
    Ok(())
}
