//! Waiting jails (issue 13): every runtime other than Python keeps jails started ahead of
//! their executions (`--warm-pool`), whose program process, already the sandbox user
//! under its filter, waits before its exec. A claimed one runs the program exactly as a
//! cold start would (output, status, stdin, files, limits, what it sees of its jail),
//! takes the code byte for byte and the limits of its own request, and code its entry
//! cannot take starts cold. Each run is compared with a cold one on the same gateway (a
//! request with `env` always starts cold). The tests need the jail and skip without it.

use crate::isolation::jail_available;
use crate::observe::{scrape, value};
use crate::warm::{cold, is_warm, pool_ready, seen, warm_and_cold};
use anyhow::{ensure, Result};
use sluice_gateway::{Config, Isolation, LimitBound, LimitsConfig};
use sluice_protocol::{ExecuteRequest, Limits};
use sluice_tests::{assert_stream_ok, request, run, TestGateway};

/// A jailed gateway keeping `size` entries for each of `runtimes`, or `None` (the test
/// passes, skipped) where this host has no jail.
pub(crate) async fn pools(
    runtimes: &[&str],
    size: usize,
    limits: LimitsConfig,
) -> Option<TestGateway> {
    if !jail_available() {
        return None;
    }
    Some(
        TestGateway::spawn_with(Config {
            isolation: Isolation::Namespaces,
            warm_pool: Some(size),
            warm_runtimes: Some(runtimes.iter().map(|r| (*r).to_owned()).collect()),
            limits,
            ..Config::default()
        })
        .await,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_shell_program_runs_exactly_as_a_cold_one() -> Result<()> {
    let Some(gateway) = pools(&["bash"], 1, LimitsConfig::default()).await else {
        return Ok(());
    };
    let cases = [
        ("status", "echo hi; exit 3"),
        ("signal", "echo err >&2; kill -TERM $$"),
        (
            "identity",
            "ulimit -a\n\
             stat -c '%a %s %n' *; [ \"$(stat -c %u main.sh)\" = \"$(id -u)\" ] && echo owned\n\
             [ \"$PWD/main.sh\" = \"$0\" ] && echo here; echo \"$#\"\n\
             grep -E '^(NoNewPrivs|Seccomp|Cap(Inh|Prm|Eff|Bnd|Amb)):' /proc/self/status\n\
             tr '\\0' ' ' < /proc/1/cmdline; echo\n\
             ps -e -o pid=,ppid=,comm= > /tmp/ps; cat /tmp/ps; rm /tmp/ps\n\
             ls -a /tmp /dev/shm; umask\n\
             trap -p; ps -o pid=,ppid=,stat= -p $$\n",
        ),
    ];
    for (id, code) in cases {
        let (warm, cold) = warm_and_cold(&gateway, request(id, "bash", code)).await?;
        assert_eq!(seen(&warm), seen(&cold), "{id}: warm and cold differ");
    }
    // Its stdin starts after the go header and the code, even input that looks like one.
    let echo = ExecuteRequest {
        stdin: Some("SLUICE 5 1 2 3\nabc".into()),
        ..request("echo", "bash", "cat; echo; echo done")
    };
    let (warm, cold) = warm_and_cold(&gateway, echo).await?;
    assert_eq!(warm.stdout, "SLUICE 5 1 2 3\nabc\ndone\n");
    assert_eq!(seen(&warm), seen(&cold));
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_program_gets_its_requests_limits_and_its_code_byte_for_byte() -> Result<()> {
    let Some(gateway) = pools(&["bash"], 1, LimitsConfig::default()).await else {
        return Ok(());
    };
    let limited = ExecuteRequest {
        limits: Limits {
            cpu_ms: Some(3_000),
            file_size_bytes: Some(100_000),
            open_files: Some(64),
            ..Limits::default()
        },
        ..request("limits", "bash", "ulimit -t -f -n; ulimit -H -t -f -n")
    };
    let (warm, cold) = warm_and_cold(&gateway, limited).await?;
    ensure!(
        warm.stdout.contains("(seconds, -t) 3\n") && warm.stdout.contains("(-n) 64\n"),
        "{}",
        warm.stdout
    );
    assert_eq!(seen(&warm), seen(&cold));
    // Larger than the pipe an entry starts with and than the copy buffer, with bytes
    // that are not text: the file is the code, byte for byte.
    let mut code = String::from("wc -c < main.sh; cksum < main.sh; exit 0\n");
    for n in 0..6_000 {
        code.push_str(&format!("# {n} ünïcödé \u{7f}\t\r\n"));
    }
    let (warm, cold) = warm_and_cold(&gateway, request("big", "bash", &code)).await?;
    let size = warm.stdout.lines().next().unwrap_or_default().to_owned();
    assert_eq!(size, code.len().to_string(), "{}", warm.stdout);
    assert_eq!(seen(&warm), seen(&cold));
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sh_and_node_programs_start_warm_too() -> Result<()> {
    let Some(gateway) = pools(&["sh", "node"], 1, LimitsConfig::default()).await else {
        return Ok(());
    };
    let client = gateway.client().await?;
    let has_node = std::process::Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let cases: &[(&str, &str, &str)] = if has_node {
        &[
            ("sh", "echo $((6 * 7))", "42\n"),
            ("node", "console.log(6 * 7)", "42\n"),
        ]
    } else {
        &[("sh", "echo $((6 * 7))", "42\n")]
    };
    for (language, code, expected) in cases {
        pool_ready(&gateway, cases.len() as f64).await?;
        let outcome = run(&client, request(language, language, code)).await?;
        assert_stream_ok(&outcome.events);
        ensure!(is_warm(&outcome)?, "{language} started cold");
        assert_eq!(outcome.stdout, *expected, "{language}");
        assert_eq!(outcome.exit_code(), Some(0));
    }
    client.close().await?;
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn code_its_entry_could_not_write_starts_cold_and_runs() -> Result<()> {
    // An entry writes the code under its file-size limit (the largest a request may
    // ask for); a cold start's code is written by the jail, before any limit.
    let limits = LimitsConfig {
        file_size_bytes: LimitBound {
            default: 4_096,
            max: 4_096,
        },
        ..LimitsConfig::default()
    };
    let Some(gateway) = pools(&["bash"], 1, limits).await else {
        return Ok(());
    };
    let client = gateway.client().await?;
    pool_ready(&gateway, 1.0).await?;
    let code = format!("echo ran\n#{}\n", "x".repeat(5_000));
    let outcome = run(&client, request("big", "bash", &code)).await?;
    ensure!(
        !is_warm(&outcome)?,
        "code over the entry's file-size limit started warm"
    );
    assert_eq!(outcome.stdout, "ran\n");
    let as_cold = run(&client, cold(request("big-cold", "bash", &code))).await?;
    assert_eq!(seen(&outcome), seen(&as_cold));
    let metrics = scrape(gateway.addr()).await?;
    assert_eq!(
        value(&metrics, "sluice_warm_pool_misses_total{reason=\"code\"}"),
        1.0
    );
    // The entry is still there for the next request.
    let small = run(&client, request("small", "bash", "echo ok")).await?;
    ensure!(is_warm(&small)?, "the entry was not kept");
    let again = run(&client, cold(request("cold", "bash", "echo ok"))).await?;
    assert_eq!(seen(&small), seen(&again));
    client.close().await?;
    gateway.shutdown().await
}
