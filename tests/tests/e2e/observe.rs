//! Observability end to end: `/metrics` parses as Prometheus text and its counters move
//! by exactly the executions that ran; its bearer token is required when configured;
//! `/readyz` turns 503 when the gateway drains (read on the metrics listener, which
//! serves until the drain is over); the audit log gets one JSON line per execution
//! with the code's hash, and an audit log that cannot be written stops nothing.

use anyhow::{bail, ensure, Context as _, Result};
use sluice_gateway::Config;
use sluice_protocol::{EventKind, Limits};
use sluice_tests::{
    forced_isolation, patience, poll_until, processes_with, request, unique_marker,
    wait_until_running, within, TestGateway,
};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use tokio::net::{TcpListener, TcpStream};

/// A GET with extra request headers; the status and the body.
async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Result<(u16, String)> {
    sluice_tests::http_get_with(addr, path, headers).await
}

/// Parses the Prometheus text format (0.0.4), checking every line's grammar: `# HELP`
/// and `# TYPE` lines, and samples `name{label="value",...} number` whose family was
/// declared by a `# TYPE` line before them. Returns each sample's value by its name and
/// labels as written.
fn parse_metrics(text: &str) -> Result<BTreeMap<String, f64>> {
    fn is_name(s: &str) -> bool {
        let mut chars = s.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    }
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut samples = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let at = || format!("line {}: {line:?}", n + 1);
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut words = rest.splitn(3, ' ');
            let (keyword, name) = (words.next(), words.next());
            let name = name.with_context(at)?;
            ensure!(is_name(name), "bad metric name: {}", at());
            match keyword {
                Some("HELP") => {}
                Some("TYPE") => {
                    let kind = words.next().with_context(at)?;
                    ensure!(
                        ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                        "unknown type: {}",
                        at()
                    );
                    types.insert(name.to_owned(), kind.to_owned());
                }
                _ => bail!("unknown comment: {}", at()),
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').with_context(at)?;
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().with_context(at)?,
        };
        let (name, labels) = match series.split_once('{') {
            None => (series, None),
            Some((name, rest)) => (name, Some(rest.strip_suffix('}').with_context(at)?)),
        };
        ensure!(is_name(name), "bad metric name: {}", at());
        if let Some(labels) = labels {
            // label="value" pairs, values escaped; no label here contains `",` itself.
            for pair in labels.split("\",").filter(|p| !p.is_empty()) {
                let (label, quoted) = pair.split_once('=').with_context(at)?;
                ensure!(is_name(label), "bad label name: {}", at());
                ensure!(quoted.starts_with('"'), "unquoted label value: {}", at());
            }
            ensure!(labels.ends_with('"'), "unterminated label value: {}", at());
        }
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| {
                name.strip_suffix(suffix)
                    .filter(|base| types.get(*base).is_some_and(|t| t == "histogram"))
            })
            .unwrap_or(name);
        ensure!(
            types.contains_key(family),
            "a sample of an undeclared metric: {}",
            at()
        );
        ensure!(
            samples.insert(series.to_owned(), value).is_none(),
            "a series twice: {}",
            at()
        );
    }
    Ok(samples)
}

/// The metrics of the gateway listening on `addr`, parsed.
pub(crate) async fn scrape(addr: SocketAddr) -> Result<BTreeMap<String, f64>> {
    let (status, body) = get(addr, "/metrics", &[]).await?;
    ensure!(status == 200, "GET /metrics: {status} {body}");
    parse_metrics(&body)
}

/// A series' value; a series not (yet) present counts as 0.
pub(crate) fn value(metrics: &BTreeMap<String, f64>, series: &str) -> f64 {
    metrics.get(series).copied().unwrap_or(0.0)
}

/// How much each series in `series` moved between two scrapes.
fn deltas<'a>(
    before: &BTreeMap<String, f64>,
    after: &BTreeMap<String, f64>,
    series: &[&'a str],
) -> Vec<(&'a str, f64)> {
    series
        .iter()
        .map(|s| (*s, value(after, s) - value(before, s)))
        .collect()
}

/// A fresh, empty directory for a test's files.
fn scratch_dir(label: &str) -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(unique_marker(label));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_and_count_exactly_the_executions_that_ran() -> Result<()> {
    let gateway = TestGateway::spawn().await;
    let before = scrape(gateway.addr()).await?;
    ensure!(
        before.contains_key(
            "sluice_executions_ended_total{outcome=\"completed\",language=\"python\"}"
        ),
        "each configured language's series is there from the start: {before:?}"
    );
    let mut socket = gateway.raw().await?;
    for n in 0..3 {
        let id = format!("ok-{n}");
        socket
            .execute(request(&id, "python", "print('hi')"))
            .await?;
        let events = socket.events_until_terminal(&id).await?;
        ensure!(
            events.last().map(|e| e.kind) == Some(EventKind::Completed),
            "{events:?}"
        );
    }
    let mut loud = request("loud", "python", "print('x' * 100000)");
    loud.limits = Limits {
        output_bytes: Some(1024),
        ..Limits::default()
    };
    socket.execute(loud).await?;
    let events = socket.events_until_terminal("loud").await?;
    ensure!(
        events.last().map(|e| e.kind) == Some(EventKind::ResourceLimit),
        "{events:?}"
    );
    socket
        .execute(request("unknown", "no-such-language", "x"))
        .await?;
    let refusal = socket.events_until_terminal("unknown").await?;
    ensure!(
        refusal.last().map(|e| e.kind) == Some(EventKind::Error),
        "{refusal:?}"
    );

    let after = scrape(gateway.addr()).await?;
    let moved = deltas(
        &before,
        &after,
        &[
            "sluice_executions_ended_total{outcome=\"completed\",language=\"python\"}",
            "sluice_executions_ended_total{outcome=\"resource_limit\",language=\"python\"}",
            "sluice_executions_ended_total{outcome=\"cancelled\",language=\"python\"}",
            "sluice_executions_ended_total{outcome=\"error\",language=\"python\"}",
            "sluice_executions_resource_limit_total{limit=\"output\"}",
            "sluice_tenant_executions_ended_total{tenant=\"anonymous\",outcome=\"completed\"}",
            "sluice_tenant_executions_ended_total{tenant=\"anonymous\",outcome=\"resource_limit\"}",
            "sluice_refusals_total{code=\"unknown_language\"}",
            "sluice_spawn_seconds_count",
            "sluice_first_output_seconds_count",
        ],
    );
    let expected = [3.0, 1.0, 0.0, 0.0, 1.0, 3.0, 1.0, 1.0, 4.0, 4.0];
    for ((series, got), want) in moved.iter().zip(expected) {
        ensure!(*got == want, "{series} moved by {got}, not {want}");
    }
    // Everything ended, and the socket was written what it read.
    ensure!(
        value(&after, "sluice_executions_running") == 0.0,
        "{after:?}"
    );
    ensure!(value(&after, "sluice_connections_open") == 1.0, "{after:?}");
    ensure!(
        value(&after, "sluice_events_delivered_total")
            > value(&before, "sluice_events_delivered_total"),
        "{after:?}"
    );
    ensure!(
        value(&after, "sluice_delivered_bytes_total")
            > value(&before, "sluice_delivered_bytes_total"),
        "{after:?}"
    );
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_token_is_required_when_configured() -> Result<()> {
    let dir = scratch_dir("metrics-token")?;
    let token_file = dir.join("token");
    std::fs::write(&token_file, "s3cret-token\n")?;
    let gateway = TestGateway::spawn_with(Config {
        metrics_token_file: Some(token_file),
        ..Config::default()
    })
    .await;
    let addr = gateway.addr();
    for headers in [
        &[][..],
        &[("Authorization", "Bearer wrong")][..],
        &[("Authorization", "Bearer ")][..],
        &[("Authorization", "s3cret-token")][..],
    ] {
        let (status, body) = get(addr, "/metrics", headers).await?;
        ensure!(status == 401, "{headers:?}: {status} {body}");
        ensure!(!body.contains("sluice_"), "{headers:?} got metrics: {body}");
    }
    let (status, body) = get(
        addr,
        "/metrics",
        &[("Authorization", "Bearer s3cret-token")],
    )
    .await?;
    ensure!(status == 200, "{status} {body}");
    parse_metrics(&body)?;
    // Health and readiness need no token.
    ensure!(get(addr, "/healthz", &[]).await?.0 == 200);
    ensure!(get(addr, "/readyz", &[]).await? == (200, "ready\n".to_owned()));
    gateway.shutdown().await?;
    std::fs::remove_dir_all(dir)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_turns_503_while_the_gateway_drains() -> Result<()> {
    let main = TcpListener::bind("127.0.0.1:0").await?;
    let metrics = TcpListener::bind("127.0.0.1:0").await?;
    let (main_addr, metrics_addr) = (main.local_addr()?, metrics.local_addr()?);
    let mut config = Config {
        // The drain waits this long for a program that ignores SIGTERM; the test kills
        // it itself once it has seen the 503.
        kill_grace: patience() * 2,
        ..Config::default()
    };
    if let Some(level) = forced_isolation() {
        config.isolation = level;
    }
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let gateway = tokio::spawn(sluice_gateway::run_with_metrics_listener(
        main,
        Some(metrics),
        config,
        async move {
            let _ = stopped.await;
        },
    ));

    ensure!(get(main_addr, "/readyz", &[]).await? == (200, "ready\n".to_owned()));
    ensure!(get(metrics_addr, "/readyz", &[]).await? == (200, "ready\n".to_owned()));
    ensure!(get(metrics_addr, "/healthz", &[]).await?.0 == 200);
    // With a listener of its own, /metrics is served there and not on the main one.
    parse_metrics(&get(metrics_addr, "/metrics", &[]).await?.1)?;
    ensure!(get(main_addr, "/metrics", &[]).await?.0 == 404);
    ensure!(get(metrics_addr, "/v1/ws", &[]).await?.0 == 404);

    let url = format!("ws://{main_addr}{}", sluice_protocol::WS_PATH);
    let mut socket = sluice_tests::RawSocket::connect(&url, None).await?;
    let marker = unique_marker("drain-readyz");
    let mut stubborn = request(
        "stubborn",
        "python",
        "import signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('up', flush=True)\nwhile True:\n    signal.pause()\n",
    );
    stubborn.args = vec![marker.clone()];
    socket.execute(stubborn).await?;
    socket.wait_for_stdout("stubborn", "up").await?;
    wait_until_running(&marker).await?;

    let _ = stop.send(());
    // The drain has begun once the shutdown signal is taken; it lasts while the program
    // lives, and the metrics listener serves until it is over.
    let body = poll_until(
        "/readyz answers 503 after the shutdown signal",
        async || {
            let (status, body) = get(metrics_addr, "/readyz", &[]).await?;
            ensure!(status == 200 || status == 503, "{status} {body}");
            Ok((status == 503).then_some(body))
        },
    )
    .await?;
    ensure!(body == "draining\n", "{body}");
    for (pid, _) in processes_with(&marker) {
        let killed = std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()?;
        ensure!(killed.success(), "could not kill {pid}");
    }
    within("the gateway to finish draining", gateway)
        .await??
        .context("the gateway returned an error")?;
    // Closed by then; a program the gateway was starting as it stopped (a warm entry
    // between its fork and its exec, which closes the gateway's descriptors) may still
    // hold the socket for a moment, so the refusal is polled for.
    poll_until(
        "the metrics listener is closed once the drain is over",
        async || {
            Ok(TcpStream::connect(metrics_addr)
                .await
                .is_err()
                .then_some(()))
        },
    )
    .await?;
    Ok(())
}

/// The audit log's lines, once there are `count` of them.
async fn audit_lines(path: &Path, count: usize) -> Result<Vec<serde_json::Value>> {
    let complete = poll_until(&format!("{count} audit lines"), async || {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let complete: Vec<String> = text
            .split_inclusive('\n')
            .filter(|l| l.ends_with('\n'))
            .map(str::to_owned)
            .collect();
        ensure!(
            complete.len() <= count,
            "more lines than executions: {text}"
        );
        Ok((complete.len() == count).then_some(complete))
    })
    .await?;
    complete
        .iter()
        .map(|line| serde_json::from_str(line).with_context(|| format!("not JSON: {line:?}")))
        .collect()
}

fn sha256_hex(text: &str) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_log_has_one_json_line_per_execution() -> Result<()> {
    let dir = scratch_dir("audit")?;
    let path = dir.join("audit.jsonl");
    let gateway = TestGateway::spawn_with(Config {
        audit_log: Some(path.clone()),
        ..Config::default()
    })
    .await;
    let mut socket = gateway.raw().await?;
    let runs = [
        ("first", "print('one')", "completed", Some(0)),
        ("second", "import sys\nsys.exit(3)", "completed", Some(3)),
    ];
    for (id, code, _, _) in runs {
        let mut req = request(id, "python", code);
        req.session = Some("audited".into());
        socket.execute(req).await?;
        socket.events_until_terminal(id).await?;
    }
    let lines = audit_lines(&path, runs.len()).await?;
    for (id, code, outcome, exit_code) in runs {
        let line = lines
            .iter()
            .find(|l| l["id"] == id)
            .with_context(|| format!("no line for {id}: {lines:?}"))?;
        ensure!(line["code_sha256"] == sha256_hex(code), "{line}");
        ensure!(line["session"] == "audited", "{line}");
        ensure!(line["language"] == "python", "{line}");
        ensure!(line["outcome"] == outcome, "{line}");
        ensure!(line["exit_code"] == serde_json::json!(exit_code), "{line}");
        ensure!(line["peer"] == "127.0.0.1", "{line}");
        ensure!(line["tenant"].is_null(), "{line}");
        ensure!(line["limit"].is_null(), "{line}");
        ensure!(
            line["duration_ms"].as_f64().is_some_and(|d| d > 0.0),
            "{line}"
        );
        ensure!(
            line["time"].as_str().is_some_and(|t| t.ends_with('Z')),
            "{line}"
        );
    }
    ensure!(lines[0]["output_bytes"] == 4, "{}", lines[0]);
    gateway.shutdown().await?;
    std::fs::remove_dir_all(dir)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_audit_log_that_cannot_be_written_stops_nothing() -> Result<()> {
    let dir = scratch_dir("audit-unwritable")?;
    // A full disk (every write fails), and a path that cannot be opened as a file.
    for path in [PathBuf::from("/dev/full"), dir.clone()] {
        if !path.exists() {
            sluice_tests::skip(format!("{} does not exist here", path.display()));
            continue;
        }
        let gateway = TestGateway::spawn_with(Config {
            audit_log: Some(path.clone()),
            ..Config::default()
        })
        .await;
        let mut socket = gateway.raw().await?;
        for n in 0..2 {
            let id = format!("run-{n}");
            socket
                .execute(request(&id, "python", "print('still here')"))
                .await?;
            let events = socket.events_until_terminal(&id).await?;
            ensure!(
                events.last().map(|e| e.kind) == Some(EventKind::Completed),
                "{}: {events:?}",
                path.display()
            );
        }
        // Both lines were dropped and counted, not retried.
        let what = format!("{}: 2 lines counted as dropped", path.display());
        poll_until(&what, async || {
            let dropped = value(
                &scrape(gateway.addr()).await?,
                "sluice_audit_lines_dropped_total",
            );
            ensure!(dropped <= 2.0, "{dropped} lines dropped for 2 executions");
            Ok((dropped == 2.0).then_some(()))
        })
        .await?;
        ensure!(get(gateway.addr(), "/readyz", &[]).await?.0 == 200);
        gateway.shutdown().await?;
    }
    std::fs::remove_dir_all(dir)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_turns_503_when_the_jail_program_is_gone() -> Result<()> {
    if let Err(why) = sluice_tests::host_report().namespaces {
        sluice_tests::skip(format!("no namespace jail here: {why}"));
        return Ok(());
    }
    // The jail cargo built, beside the test binary's `deps` directory.
    let built = std::env::current_exe()?
        .parent()
        .and_then(Path::parent)
        .map(|dir| dir.join("sluice-jail"))
        .context("no directory above the test binary")?;
    ensure!(built.exists(), "build the jail first: {}", built.display());
    let dir = scratch_dir("readyz-jail")?;
    let jail = dir.join("sluice-jail");
    std::fs::copy(&built, &jail)?;
    let gateway = TestGateway::spawn_with(Config {
        isolation: sluice_gateway::Isolation::Namespaces,
        jail_program: Some(jail.clone()),
        ..Config::default()
    })
    .await;
    ensure!(get(gateway.addr(), "/readyz", &[]).await? == (200, "ready\n".to_owned()));
    std::fs::remove_file(&jail)?;
    let (status, body) = get(gateway.addr(), "/readyz", &[]).await?;
    ensure!(status == 503, "{status} {body}");
    ensure!(body.contains("jail program"), "{body}");
    // Liveness is another question: the process still serves.
    ensure!(get(gateway.addr(), "/healthz", &[]).await?.0 == 200);
    gateway.shutdown().await?;
    std::fs::remove_dir_all(dir)?;
    Ok(())
}
