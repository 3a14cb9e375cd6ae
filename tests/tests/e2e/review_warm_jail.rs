//! An outside attack review of the waiting jails (issue 13, `ac525a0`): every runtime
//! other than Python keeps jails whose program process, already the sandbox user under
//! its filter, waits for a go header and its code on stdin before its exec. Each test
//! compares a warm run with a cold one of the same request on the same gateway (a
//! request with `env` always starts cold), or attacks the pools directly. The findings
//! (tests that failed) were fixed; their doc comments say how. What held is in
//! SECURITY.md.

use crate::warm::{cold, is_warm, pool_ready, seen, started_warm, warm_and_cold};
use crate::warm_jail::pools;
use anyhow::{ensure, Context as _, Result};
use sluice_gateway::{LimitBound, LimitsConfig};
use sluice_protocol::{EventKind, ExecuteRequest, Limits};
use sluice_tests::{assert_stream_ok, request, run};

/// A shell line that prints the size of the program's stdin pipe (`F_GETPIPE_SZ`).
const STDIN_PIPE_SIZE: &str =
    "python3 -c 'import fcntl; print(fcntl.fcntl(0, 1032))' || echo no python3\n";

/// Finding (Low; the first warm review's fix lost for the new entries): code over 64
/// KiB grows the entry's stdin pipe at the claim (up to 1 MiB, so the header and code go
/// in one write), and the program keeps that pipe as its stdin. The Python bootstrap
/// shrinks it back; the waiting jail did not, so a client that sent large code once
/// could park up to 1 MiB of stdin per warm execution in the kernel (64 KiB cold),
/// outside the buffer budget, and a program could tell it started warm. Fixed: the
/// jail's `wait_for_go` shrinks fd 0 back to 64 KiB once it has copied the code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_code_leaves_a_waiting_jails_program_no_larger_stdin_than_cold() -> Result<()> {
    let Some(gateway) = pools(&["bash"], 1, LimitsConfig::default()).await else {
        return Ok(());
    };
    let code = format!("{STDIN_PIPE_SIZE}#{}\n", "x".repeat(600_000));
    let (warm, cold) = warm_and_cold(&gateway, request("big", "bash", &code)).await?;
    assert_eq!(seen(&warm), seen(&cold), "warm and cold stdin pipes differ");
    // Input sent with the request still arrives whole.
    let fed = ExecuteRequest {
        stdin: Some("y".repeat(100_000)),
        ..request("fed", "bash", &format!("wc -c\n#{}\n", "x".repeat(600_000)))
    };
    let (warm, cold) = warm_and_cold(&gateway, fed).await?;
    assert_eq!(warm.stdout, "100000\n");
    assert_eq!(seen(&warm), seen(&cold));
    gateway.shutdown().await
}

/// Finding (Low-medium, Python's entries; `ac525a0` made `fallback` say the code is
/// written under the entry's file-size limit, which holds for a waiting jail only): the
/// bootstrap lowered its rlimits to the request's before it wrote `main.py`, so code
/// larger than the request's `file_size_bytes` (or a request with too few `open_files`
/// to open it) failed warm with a traceback of the bootstrap's own (`File "<string>",
/// line 50`) and never ran, where a cold start (the jail writes the file before any
/// limit) runs it. Fixed: the bootstrap writes `main.py` first, then takes the limits,
/// as the jail does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn code_over_the_requests_file_size_runs_warm_as_cold() -> Result<()> {
    let Some(gateway) = pools(&["python", "bash"], 1, LimitsConfig::default()).await else {
        return Ok(());
    };
    let over = |language: &str, code: &str| ExecuteRequest {
        limits: Limits {
            file_size_bytes: Some(1_000),
            ..Limits::default()
        },
        ..request(
            language,
            language,
            &format!("{code}\n#{}\n", "x".repeat(2_000)),
        )
    };
    for (language, code) in [("python", "print('ran')"), ("bash", "echo ran")] {
        pool_ready(&gateway, 2.0).await?;
        let (warm, cold) = warm_and_cold(&gateway, over(language, code)).await?;
        assert_eq!(seen(&warm), seen(&cold), "{language}: warm and cold differ");
        ensure!(
            warm.stdout == "ran\n",
            "{language}: {} {}",
            warm.stdout,
            warm.stderr
        );
    }
    gateway.shutdown().await
}

/// Finding (Low, an operator's "unlimited"): a configured `processes` maximum of
/// u64::MAX overflowed `processes + 2` (the jail's own two) where each entry's cgroup
/// is made: a panic in a debug build, `pids.max` 2 in a release one, so no entry of any
/// runtime ever started (the filler retried every 30 s). A request asking for that
/// many overflowed the same sum in its budget reservation (a panic of the connection
/// task in a debug build; a reservation of one process in a release one). Fixed: the
/// sums saturate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unlimited_configured_process_count_still_fills_the_pool() -> Result<()> {
    let limits = LimitsConfig {
        processes: LimitBound {
            default: 64,
            max: u64::MAX,
        },
        ..LimitsConfig::default()
    };
    let Some(gateway) = pools(&["bash"], 1, limits).await else {
        return Ok(());
    };
    let (warm, cold) = warm_and_cold(&gateway, request("n", "bash", "ulimit -u; echo ok")).await?;
    assert_eq!(seen(&warm), seen(&cold));
    let client = gateway.client().await?;
    let all = ExecuteRequest {
        limits: Limits {
            processes: Some(u64::MAX),
            ..Limits::default()
        },
        ..request("all", "bash", "echo ok")
    };
    let outcome = run(&client, all).await?;
    assert_stream_ok(&outcome.events);
    ensure!(
        outcome.kind() == EventKind::Error || outcome.stdout == "ok\n",
        "{:?}",
        outcome.terminal
    );
    client.close().await?;
    gateway.shutdown().await
}

/// Finding (Low): where the workspace is too small for the code (an operator's default
/// `workspace_bytes` below the code's size), a cold start fails with `writing
/// .../main.sh: No space left on device`, a waiting jail with `waiting for the warm
/// start's go: ...`, a message that exists only warm. Fixed: the jail tells the code's
/// copy apart from the wait and words its failure as the cold start's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn code_that_does_not_fit_the_workspace_fails_as_cold() -> Result<()> {
    let limits = LimitsConfig {
        workspace_bytes: LimitBound {
            default: 8_192,
            max: 8_192,
        },
        ..LimitsConfig::default()
    };
    let Some(gateway) = pools(&["bash"], 1, limits).await else {
        return Ok(());
    };
    let code = format!("echo ran\n#{}\n", "x".repeat(100_000));
    let (warm, cold) = warm_and_cold(&gateway, request("full", "bash", &code)).await?;
    assert_eq!(warm.kind(), EventKind::Error);
    assert_eq!(
        normalised_error(&warm),
        normalised_error(&cold),
        "warm and cold fail differently"
    );
    gateway.shutdown().await
}

/// An error's message with the execution's directory (`.../x<N>/`) made the same.
fn normalised_error(outcome: &sluice_client::Outcome) -> String {
    let data = &outcome.terminal.data;
    match (data.find("/x"), data.find("/main")) {
        (Some(start), Some(end)) if start < end => {
            format!("{}/x?{}", &data[..start], &data[end..])
        }
        _ => data.clone(),
    }
}

/// Held: what a program sees of its own process and its jail is the same warm as cold
/// (the first review's `identity` case, wider): its status (signals, capabilities,
/// `NoNewPrivs`, seccomp), all its limits, its descriptors, cgroup, the oom score,
/// timer slack, personality and niceness, its session and group, the file system it
/// sees and the process tree. Left out as well, being a matter of timing rather than
/// of the start: the shell's own run state (running or sleeping as `cut` reads it) and
/// init's `SigQ` (signals queued for its whole user, on the host). Two things differ
/// and are documented: the start time of
/// its process and `/proc/self/io` (the entry read its code: its `rchar`/`wchar`). Its
/// v1 CPU group is left out: a program that forks moves to a group of its own at a CPU
/// check (`sandbox/cgroup/shared_cpu.rs`), warm or cold, whenever that check comes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_jails_program_sees_its_process_as_a_cold_one() -> Result<()> {
    let Some(gateway) = pools(&["bash"], 1, LimitsConfig::default()).await else {
        return Ok(());
    };
    let code = "grep -vE '^(Pid|PPid|Tgid|NSpid|NStgid|Vm|Rss|voluntary|nonvoluntary|Uid|Gid)' \
            /proc/self/status\n\
        cat /proc/self/limits /proc/self/oom_score_adj\n\
        grep -v ':cpu:' /proc/self/cgroup\n\
        cat /proc/self/timerslack_ns /proc/self/personality /proc/self/setgroups\n\
        ls -l /proc/self/fd | awk '{print $1, $9, $10}'\n\
        cut -d' ' -f5,6,7,8,9,18,19,20,41 /proc/$$/stat\n\
        ps -e -o pid=,ppid=,pgid=,sid=,stat=,ni=,comm=\n\
        grep -E 'State|Sig(Pnd|Blk|Ign|Cgt)' /proc/1/status\n\
        stat -c '%a %h %s %F' main.sh; ls -la | awk '{print $1, $9}'; umask\n\
        sed 's/^[0-9]* [0-9]* [0-9:]* //' /proc/self/mountinfo; df -k . /tmp | tail -n +2\n"
        .to_owned();
    let (warm, cold) = warm_and_cold(&gateway, request("self", "bash", &code)).await?;
    assert_eq!(seen(&warm), seen(&cold), "warm and cold differ");
    gateway.shutdown().await
}

/// Held: executions cancelled as soon as they are sent, many times over (large code, so
/// the entry is still copying it when the cancel lands; small code, so it has exec'd),
/// each end with `cancelled`, and leave nothing: the work root holds only the waiting
/// entries' directories afterwards, and nothing once the gateway has shut down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_jails_cancelled_in_their_claim_leave_nothing() -> Result<()> {
    let Some(gateway) = pools(&["bash"], 2, LimitsConfig::default()).await else {
        return Ok(());
    };
    let client = gateway.client().await?;
    pool_ready(&gateway, 2.0).await?;
    let probe = run(&client, cold(request("root", "bash", "dirname \"$PWD\""))).await?;
    let root = probe.stdout.trim().to_owned();
    ensure!(root.starts_with('/'), "no work root: {}", probe.stderr);
    client.close().await?;
    let mut socket = gateway.raw().await?;
    let big = format!("sleep 60\n#{}\n", "y".repeat(900_000));
    let mut warm = 0;
    for n in 0..30 {
        if n % 2 == 0 {
            pool_ready(&gateway, 1.0).await?;
        }
        let id = format!("c{n}");
        let code = if n % 3 == 0 {
            "sleep 60\n"
        } else {
            big.as_str()
        };
        socket.execute(request(&id, "bash", code)).await?;
        socket.cancel(&id).await?;
        let events = socket.events_until_terminal(&id).await?;
        let terminal = events.last().context("no terminal event")?;
        assert_eq!(terminal.kind, EventKind::Cancelled, "{terminal:?}");
        warm += usize::from(started_warm(&events));
    }
    socket.close().await?;
    ensure!(warm > 10, "only {warm} cancelled executions started warm");
    pool_ready(&gateway, 2.0).await?;
    let dirs = || {
        std::fs::read_dir(&root)
            .map(|dir| dir.flatten().count())
            .unwrap_or(0)
    };
    sluice_tests::eventually(
        sluice_tests::patience(),
        "only the pool's directories",
        || dirs() == 2,
    )
    .await
    .with_context(|| format!("{} entries in {root}", dirs()))?;
    gateway.shutdown().await?;
    assert_eq!(dirs(), 0, "directories left in {root} after shutdown");
    Ok(())
}

/// Held: a started execution cannot see, signal or reach the entries still waiting:
/// its own PID namespace holds only its jail's init and itself (and what it starts),
/// and `kill -1` (every process it may signal) reaches none of them: the next request
/// still starts warm and runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_program_cannot_reach_the_entries_still_waiting() -> Result<()> {
    let Some(gateway) = pools(&["bash", "sh"], 2, LimitsConfig::default()).await else {
        return Ok(());
    };
    let client = gateway.client().await?;
    pool_ready(&gateway, 4.0).await?;
    let code = "ps -e -o comm= > /tmp/ps; sort /tmp/ps | paste -sd ' '\n\
        kill -STOP -1 2>/dev/null; kill -KILL -1 2>/dev/null; echo never\n";
    let attack = run(&client, request("attack", "bash", code)).await?;
    assert_stream_ok(&attack.events);
    ensure!(is_warm(&attack)?, "the attack started cold");
    assert_eq!(attack.stdout.lines().next(), Some("bash ps sluice-jail"));
    for language in ["bash", "sh", "bash"] {
        pool_ready(&gateway, 4.0).await?;
        let next = run(&client, request("next", language, "echo ok")).await?;
        assert_stream_ok(&next.events);
        ensure!(is_warm(&next)?, "{language}: the next request started cold");
        assert_eq!(next.stdout, "ok\n", "{language}");
    }
    client.close().await?;
    gateway.shutdown().await
}
