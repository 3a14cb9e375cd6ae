//! The warm pool (`--warm-pool`, issue 13): a Python execution that claims a pre-started,
//! jailed interpreter behaves exactly as a cold `python3 main.py` (output, exit status,
//! tracebacks, stdin, `sys.modules`), keeps nothing of another execution, takes the
//! limits of its own request, and a burst larger than the pool starts the rest cold
//! without waiting. Each execution is compared with a cold one on the same gateway (a
//! request with `env` always starts cold). The tests need the jail and skip without it.

use crate::isolation::jail_available;
use crate::observe::{scrape, value};
use anyhow::{ensure, Context as _, Result};
use sluice_client::Outcome;
use sluice_gateway::{Config, Isolation};
use sluice_protocol::{Event, EventKind, ExecuteRequest, LimitKind, Limits};
use sluice_tests::{assert_stream_ok, poll_until, processes_with, request, run, TestGateway};
use std::collections::BTreeMap;

/// A jailed gateway with a warm pool of `size`.
async fn warm_gateway(size: usize) -> TestGateway {
    TestGateway::spawn_with(Config {
        isolation: Isolation::Namespaces,
        warm_pool: Some(size),
        warm_runtimes: Some(vec!["python".into()]),
        ..Config::default()
    })
    .await
}

/// Waits until the pool has at least `ready` interpreters ready (`/metrics`).
pub(crate) async fn pool_ready(gateway: &TestGateway, ready: f64) -> Result<()> {
    let addr = gateway.addr();
    poll_until("the warm pool to fill", async || {
        let metrics = scrape(addr).await?;
        Ok((value(&metrics, "sluice_warm_pool_ready") >= ready).then_some(()))
    })
    .await
}

/// The same request, made to start cold (the pool never serves a request with `env`).
pub(crate) fn cold(request: ExecuteRequest) -> ExecuteRequest {
    let mut env = BTreeMap::new();
    env.insert("SLUICE_TEST_COLD".to_owned(), "1".to_owned());
    ExecuteRequest { env, ..request }
}

fn started(outcome: &Outcome) -> Result<&Event> {
    outcome
        .events
        .iter()
        .find(|e| e.kind == EventKind::Started)
        .context("no started event")
}

/// Whether these events of one execution say it started warm.
pub(crate) fn started_warm(events: &[Event]) -> bool {
    events
        .iter()
        .any(|e| e.kind == EventKind::Started && e.data == "warm")
}

pub(crate) fn is_warm(outcome: &Outcome) -> Result<bool> {
    Ok(started(outcome)?.data == "warm")
}

/// Output with each execution's directory (`.../x<N>/`) made the same.
fn normalised(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("/x") {
        out.push_str(&rest[..at]);
        let after = &rest[at + 2..];
        let digits = after.bytes().take_while(u8::is_ascii_digit).count();
        if digits > 0 && after[digits..].starts_with('/') {
            out.push_str("/x?");
            rest = &after[digits..];
        } else {
            out.push_str("/x");
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// What a test compares between a warm and a cold run.
pub(crate) fn seen(outcome: &Outcome) -> (EventKind, Option<i32>, Option<i32>, String, String) {
    (
        outcome.kind(),
        outcome.terminal.exit_code,
        outcome.terminal.signal,
        normalised(&outcome.stdout),
        normalised(&outcome.stderr),
    )
}

/// Runs `request` warm (once the pool has an interpreter ready) and cold.
pub(crate) async fn warm_and_cold(
    gateway: &TestGateway,
    request: ExecuteRequest,
) -> Result<(Outcome, Outcome)> {
    let client = gateway.client().await?;
    pool_ready(gateway, 1.0).await?;
    let warm = run(&client, request.clone()).await?;
    let cold = run(&client, cold(request)).await?;
    assert_stream_ok(&warm.events);
    assert_stream_ok(&cold.events);
    ensure!(is_warm(&warm)?, "not a warm start: {:?}", started(&warm)?);
    ensure!(!is_warm(&cold)?, "a request with env started warm");
    client.close().await?;
    Ok((warm, cold))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_execution_behaves_exactly_like_python3_main_py() -> Result<()> {
    if !jail_available() {
        return Ok(());
    }
    let gateway = warm_gateway(1).await;
    let cases = [
        ("print", "print(1)\n"),
        ("exit-3", "import sys\nsys.exit(3)\n"),
        (
            "exception",
            "def inner():\n    raise ValueError('boom')\n\ninner()\n",
        ),
        ("interrupt", "raise KeyboardInterrupt\n"),
        ("exit-message", "import sys\nsys.exit('bye')\n"),
        ("syntax", "x = (\n"),
        (
            "identity",
            "import sys, __main__\nprint(__name__, __file__.endswith('/main.py'), sys.argv == [__file__])\nprint(sys.path[0] + '/main.py' == __file__, sys.orig_argv[1:] == sys.argv)\nprint(sorted(vars(__main__)))\nprint(sys._getframe().f_code.co_filename == __file__)\nimport os, stat\nst = os.stat(__file__)\nprint(stat.filemode(st.st_mode), st.st_uid == os.getuid(), sorted(os.listdir('.')))\nprint(sorted(sys.path_importer_cache))\nimport resource\nprint([resource.getrlimit(n) for n in (resource.RLIMIT_CPU, resource.RLIMIT_FSIZE, resource.RLIMIT_NOFILE)])\n",
        ),
    ];
    for (id, code) in cases {
        let (warm, cold) = warm_and_cold(&gateway, request(id, "python", code)).await?;
        assert_eq!(seen(&warm), seen(&cold), "{id}: warm and cold differ");
    }
    // The exit statuses themselves, and a traceback that names only main.py.
    let (exception, _) = warm_and_cold(
        &gateway,
        request("tb", "python", "def f():\n    1 / 0\nf()\n"),
    )
    .await?;
    assert_eq!(exception.terminal.exit_code, Some(1));
    let frames: Vec<&str> = exception
        .stderr
        .lines()
        .filter(|line| line.trim_start().starts_with("File "))
        .collect();
    ensure!(
        frames.len() == 2 && frames.iter().all(|f| f.contains("/main.py\"")),
        "frames other than main.py's: {}",
        exception.stderr
    );
    // The program's stdin starts after the go header: it reads exactly what was sent.
    let echo = ExecuteRequest {
        stdin: Some("one\ntwo\n".into()),
        ..request(
            "echo",
            "python",
            "import sys\ndata = sys.stdin.read()\nprint(repr(data))\n",
        )
    };
    let (warm, cold) = warm_and_cold(&gateway, echo).await?;
    assert_eq!(warm.stdout, "'one\\ntwo\\n'\n");
    assert_eq!(seen(&warm), seen(&cold));
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_crosses_from_one_warm_execution_to_the_next() -> Result<()> {
    if !jail_available() {
        return Ok(());
    }
    let gateway = warm_gateway(2).await;
    let client = gateway.client().await?;
    let probe = "import os, sys\n\
        print('left', os.path.exists('left.txt'), 'marker' in globals())\n\
        open('left.txt', 'w').write('x')\n\
        marker = 1\n\
        print('ns', os.readlink('/proc/self/ns/pid'), os.readlink('/proc/self/ns/mnt'))\n\
        print('modules', sorted(sys.modules))\n";
    let mut outcomes = Vec::new();
    for id in ["first", "second"] {
        pool_ready(&gateway, 1.0).await?;
        let outcome = run(&client, request(id, "python", probe)).await?;
        assert_stream_ok(&outcome.events);
        ensure!(is_warm(&outcome)?, "{id} did not start warm");
        assert_eq!(outcome.terminal.exit_code, Some(0), "{}", outcome.stderr);
        outcomes.push(outcome);
    }
    let cold_run = run(&client, cold(request("cold", "python", probe))).await?;
    let line = |outcome: &Outcome, key: &str| -> String {
        outcome
            .stdout
            .lines()
            .find(|l| l.starts_with(key))
            .unwrap_or_default()
            .to_owned()
    };
    for outcome in &outcomes {
        // A fresh workspace and a fresh module: nothing of the one before.
        assert_eq!(line(outcome, "left"), "left False False", "{}", outcome.id);
        // sys.modules as a cold start has it.
        assert_eq!(line(outcome, "modules"), line(&cold_run, "modules"));
    }
    assert_ne!(
        line(&outcomes[0], "ns"),
        line(&outcomes[1], "ns"),
        "two warm executions shared a namespace"
    );
    client.close().await?;
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_execution_takes_the_limits_of_its_request() -> Result<()> {
    if !jail_available() {
        return Ok(());
    }
    let report = sluice_tests::host_report();
    let gateway = warm_gateway(1).await;
    let with = |id: &str, code: &str, limits: Limits| ExecuteRequest {
        limits,
        ..request(id, "python", code)
    };
    let mut cases = vec![
        (
            with(
                "timeout",
                "import time\ntime.sleep(60)\n",
                Limits {
                    timeout_ms: Some(500),
                    ..Limits::default()
                },
            ),
            LimitKind::Timeout,
        ),
        (
            with(
                "cpu",
                "while True:\n    pass\n",
                Limits {
                    cpu_ms: Some(300),
                    timeout_ms: Some(60_000),
                    ..Limits::default()
                },
            ),
            LimitKind::Cpu,
        ),
    ];
    if report.memory.is_some() {
        cases.push((
            with(
                "memory",
                "chunks = []\nfor _ in range(64):\n    chunks.append(b'x' * (16 << 20))\nprint('survived')\n",
                Limits {
                    memory_bytes: Some(64 << 20),
                    ..Limits::default()
                },
            ),
            LimitKind::Memory,
        ));
    }
    let client = gateway.client().await?;
    for (request, limit) in cases {
        pool_ready(&gateway, 1.0).await?;
        let outcome = run(&client, request).await?;
        assert_stream_ok(&outcome.events);
        ensure!(is_warm(&outcome)?, "{} did not start warm", outcome.id);
        assert_eq!(
            (outcome.kind(), outcome.limit()),
            (EventKind::ResourceLimit, Some(limit)),
            "{}: {:?} {}",
            outcome.id,
            outcome.terminal,
            outcome.stderr
        );
        assert!(!outcome.stdout.contains("survived"));
    }
    client.close().await?;
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_limit_below_what_the_interpreter_holds_starts_cold_and_keeps_it() -> Result<()> {
    if !jail_available() || sluice_tests::host_report().memory.is_none() {
        return Ok(());
    }
    let gateway = warm_gateway(1).await;
    pool_ready(&gateway, 1.0).await?;
    let client = gateway.client().await?;
    let tiny = ExecuteRequest {
        limits: Limits {
            memory_bytes: Some(1 << 20),
            ..Limits::default()
        },
        ..request("tiny", "python", "print(1)")
    };
    let outcome = run(&client, tiny).await?;
    assert_stream_ok(&outcome.events);
    ensure!(!is_warm(&outcome)?, "started warm above its memory limit");
    let metrics = scrape(gateway.addr()).await?;
    assert_eq!(
        value(&metrics, "sluice_warm_pool_misses_total{reason=\"limits\"}"),
        1.0
    );
    // The interpreter stayed, and serves the next request.
    assert_eq!(value(&metrics, "sluice_warm_pool_ready"), 1.0);
    let next = run(&client, request("next", "python", "print(2)")).await?;
    ensure!(is_warm(&next)?, "the interpreter was not kept");
    assert_eq!(next.stdout, "2\n");
    client.close().await?;
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_larger_than_the_pool_starts_the_rest_cold() -> Result<()> {
    if !jail_available() {
        return Ok(());
    }
    let gateway = TestGateway::spawn_with(Config {
        isolation: Isolation::Namespaces,
        warm_pool: Some(1),
        warm_runtimes: Some(vec!["python".into()]),
        warm_pool_refill: 1,
        ..Config::default()
    })
    .await;
    pool_ready(&gateway, 1.0).await?;
    let before = scrape(gateway.addr()).await?;
    let client = gateway.client().await?;
    let burst = 6;
    let runs = (0..burst).map(|n| {
        let client = &client;
        async move {
            run(
                client,
                request(&format!("burst-{n}"), "python", &format!("print({n})")),
            )
            .await
        }
    });
    let outcomes = futures::future::try_join_all(runs).await?;
    let mut warm = 0.0;
    for (n, outcome) in outcomes.iter().enumerate() {
        assert_stream_ok(&outcome.events);
        assert_eq!(outcome.terminal.exit_code, Some(0), "{}", outcome.stderr);
        assert_eq!(outcome.stdout, format!("{n}\n"));
        if is_warm(outcome)? {
            warm += 1.0;
        }
    }
    let after = scrape(gateway.addr()).await?;
    let moved = |series: &str| value(&after, series) - value(&before, series);
    assert_eq!(moved("sluice_warm_pool_hits_total"), warm);
    assert_eq!(
        moved("sluice_warm_pool_misses_total{reason=\"empty\"}"),
        f64::from(burst) - warm,
    );
    ensure!(warm >= 1.0, "the ready interpreter was not used");
    ensure!(
        warm < f64::from(burst),
        "every execution of the burst started warm"
    );
    client.close().await?;
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interpreter_older_than_the_maximum_age_is_replaced() -> Result<()> {
    if !jail_available() {
        return Ok(());
    }
    let gateway = TestGateway::spawn_with(Config {
        isolation: Isolation::Namespaces,
        warm_pool: Some(1),
        warm_runtimes: Some(vec!["python".into()]),
        warm_pool_max_age: std::time::Duration::from_millis(200),
        ..Config::default()
    })
    .await;
    let addr = gateway.addr();
    // Discarded once too old, and replaced: a second one started after it. (Whether a
    // claim finds one young enough depends on timing, which a test must not.)
    poll_until(
        "a stale warm interpreter to be discarded and replaced",
        async || {
            let metrics = scrape(addr).await?;
            let stale = value(
                &metrics,
                "sluice_warm_pool_discards_total{reason=\"stale\"}",
            );
            let starts = value(&metrics, "sluice_warm_pool_starts_total");
            Ok((stale >= 1.0 && starts >= 2.0).then_some(()))
        },
    )
    .await?;
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_pool_off_every_start_is_cold() -> Result<()> {
    let gateway = TestGateway::spawn_with(Config {
        warm_pool: Some(0),
        ..Config::default()
    })
    .await;
    let client = gateway.client().await?;
    let outcome = run(&client, request("cold", "python", "print('hi')")).await?;
    assert_stream_ok(&outcome.events);
    assert_eq!(outcome.stdout, "hi\n");
    assert_eq!(started(&outcome)?.data, "");
    let metrics = scrape(gateway.addr()).await?;
    assert_eq!(value(&metrics, "sluice_warm_pool_size"), 0.0);
    assert_eq!(value(&metrics, "sluice_warm_pool_hits_total"), 0.0);
    assert_eq!(
        value(&metrics, "sluice_warm_pool_misses_total{reason=\"empty\"}"),
        0.0
    );
    client.close().await?;
    gateway.shutdown().await
}

/// A jailed gateway with a pool of `size`, in a work root of its own (whose path its
/// interpreters' command lines name), once the pool is full.
async fn jailed_in_own_root(name: &str, size: usize) -> Result<(TestGateway, std::path::PathBuf)> {
    let root = std::env::temp_dir().join(sluice_tests::unique_marker(name));
    std::fs::create_dir_all(&root)?;
    let gateway = TestGateway::spawn_with(Config {
        isolation: Isolation::Namespaces,
        warm_pool: Some(size),
        warm_runtimes: Some(vec!["python".into()]),
        work_root: Some(root.clone()),
        ..Config::default()
    })
    .await;
    pool_ready(&gateway, size as f64).await?;
    Ok((gateway, root))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_kills_every_warm_interpreter() -> Result<()> {
    if !jail_available() {
        return Ok(());
    }
    let (gateway, root) = jailed_in_own_root("warm-root", 2).await?;
    let marker = root.to_string_lossy().into_owned();
    ensure!(
        processes_with(&marker).len() >= 2,
        "no warm interpreter found under {marker}"
    );
    let metrics = scrape(gateway.addr()).await?;
    ensure!(value(&metrics, "sluice_warm_pool_memory_bytes") > 0.0);
    gateway.shutdown().await?;
    // Shutdown waits until every warm interpreter is reaped.
    let left = processes_with(&marker);
    ensure!(left.is_empty(), "left after shutdown: {left:?}");
    let _ = std::fs::remove_dir_all(&root);
    Ok(())
}

/// An interpreter stopped while it waits (only a process of the same user can: with
/// the jail, a program of another gateway given the same sandbox ids, which
/// docs/operating.md advises against) is discarded at its claim, not handed to an
/// execution that would hang until its timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_interpreter_is_discarded_not_claimed() -> Result<()> {
    if !jail_available() {
        return Ok(());
    }
    let (gateway, root) = jailed_in_own_root("warm-stopped", 1).await?;
    // The interpreter's command line names its main.py under this gateway's work root.
    let marker = root.to_string_lossy().into_owned();
    let waiting = processes_with(&marker);
    ensure!(!waiting.is_empty(), "no waiting interpreter under {marker}");
    for (pid, _) in &waiting {
        let sent = std::process::Command::new("kill")
            .args(["-STOP", &pid.to_string()])
            .status()?;
        ensure!(sent.success(), "kill -STOP {pid}");
    }
    let is_stopped = |pid: u32| {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .is_ok_and(|status| status.lines().any(|l| l.starts_with("State:\tT")))
    };
    sluice_tests::eventually(sluice_tests::patience(), "the interpreter to stop", || {
        waiting.iter().all(|(pid, _)| is_stopped(*pid))
    })
    .await?;
    let client = gateway.client().await?;
    let outcome = run(
        &client,
        ExecuteRequest {
            limits: Limits {
                timeout_ms: Some(20_000),
                ..Limits::default()
            },
            ..request("after", "python", "print('mine')\n")
        },
    )
    .await?;
    client.close().await?;
    assert_eq!(
        (outcome.kind(), outcome.stdout.as_str()),
        (EventKind::Completed, "mine\n"),
        "{}",
        outcome.stderr
    );
    ensure!(!is_warm(&outcome)?, "the stopped interpreter was claimed");
    let metrics = scrape(gateway.addr()).await?;
    ensure!(
        value(
            &metrics,
            "sluice_warm_pool_discards_total{reason=\"stopped\"}"
        ) >= 1.0
    );
    gateway.shutdown().await?;
    let _ = std::fs::remove_dir_all(&root);
    Ok(())
}
