//! `sluice load` as a user runs it: the built binary against a real gateway (in-process,
//! on a loopback port). Clean runs of each kind of scenario pass verification with sane
//! counts; a run through a WebSocket proxy that drops, duplicates, reorders or alters
//! one event frame fails, naming the violation. The JSON report parses and the HTML one
//! holds its SVG plots. Nothing is timed: only counts and verdicts are asserted.

use anyhow::{bail, ensure, Context as _, Result};
use futures::{SinkExt as _, StreamExt as _};
use serde_json::Value;
use sluice_gateway::Config;
use sluice_tests::{patient, unique_marker, TestGateway};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

/// A finished `sluice load`.
#[derive(Debug)]
struct Loaded {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    json: Option<Value>,
    html: Option<String>,
}

/// Runs `sluice load --url URL ARGS --json --html --no-progress` and collects it all.
async fn load(url: &str, args: &[&str]) -> Result<Loaded> {
    let dir = std::env::temp_dir().join(unique_marker("load"));
    std::fs::create_dir_all(&dir)?;
    let (json, html) = (dir.join("report.json"), dir.join("report.html"));
    let mut command = Command::new(PathBuf::from(env!("CARGO_BIN_EXE_sluice")));
    // How long the harness waits for an execution to end: generous, as the suite runs
    // on loaded machines (a test that means a shorter one gives its own, later).
    let drain = format!("{}s", patient(Duration::from_secs(90)).as_secs());
    command
        .arg("load")
        .args(["--url", url, "--no-progress"])
        .args(args)
        .args(
            (!args.contains(&"--drain-timeout"))
                .then_some(["--drain-timeout", drain.as_str()])
                .into_iter()
                .flatten(),
        )
        .arg("--json")
        .arg(&json)
        .arg("--html")
        .arg(&html)
        .env_remove("SLUICE_TOKEN")
        .env_remove("SLUICE_URL");
    let output = tokio::time::timeout(
        patient(Duration::from_secs(180)),
        tokio::task::spawn_blocking(move || command.output()),
    )
    .await
    .context("sluice load did not finish in time")???;
    let loaded = Loaded {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        json: std::fs::read_to_string(&json)
            .ok()
            .map(|text| serde_json::from_str(&text))
            .transpose()
            .context("the JSON report does not parse")?,
        html: std::fs::read_to_string(&html).ok(),
    };
    let _ = std::fs::remove_dir_all(&dir);
    Ok(loaded)
}

impl Loaded {
    fn json(&self) -> Result<&Value> {
        self.json.as_ref().context("no JSON report")
    }

    /// A clean run: exit 0, no violation, every execution finished.
    fn assert_clean(&self, executions: u64) -> Result<&Value> {
        ensure!(
            self.code == Some(0),
            "sluice load exited {:?}\nstdout:\n{}\nstderr:\n{}",
            self.code,
            self.stdout,
            self.stderr
        );
        let json = self.json()?;
        ensure!(json["verdict"] == "ok", "verdict {}", json["verdict"]);
        ensure!(json["violations"]["total"] == 0, "{}", json["violations"]);
        let counts = &json["executions"];
        for (field, want) in [
            ("issued", executions),
            ("started", executions),
            ("finished", executions),
            ("refused", 0),
            ("unfinished", 0),
        ] {
            ensure!(
                counts[field].as_u64() == Some(want),
                "executions.{field} is {} where {want} was expected: {counts}",
                counts[field]
            );
        }
        for latency in [
            "execute_to_started",
            "execute_to_first_output",
            "execute_to_terminal",
        ] {
            ensure!(
                json["latency"][latency]["count"].as_u64() == Some(executions),
                "latency.{latency}: {}",
                json["latency"][latency]
            );
        }
        ensure!(
            self.stdout.contains("no violation"),
            "the summary does not say so:\n{}",
            self.stdout
        );
        Ok(json)
    }

    /// A failed run naming `kind`.
    fn assert_violation(&self, kind: &str) -> Result<()> {
        ensure!(
            self.code == Some(1),
            "sluice load exited {:?}, not 1\nstdout:\n{}\nstderr:\n{}",
            self.code,
            self.stdout,
            self.stderr
        );
        let json = self.json()?;
        ensure!(
            json["verdict"] == "violations",
            "verdict {}",
            json["verdict"]
        );
        ensure!(
            json["violations"]["by_kind"][kind].as_u64().unwrap_or(0) >= 1,
            "no {kind} among the violations: {}",
            json["violations"]
        );
        ensure!(
            self.stdout.contains(&format!("  {kind}: ")),
            "the summary does not name {kind}:\n{}",
            self.stdout
        );
        ensure!(
            json["violations"]["examples"]
                .as_array()
                .is_some_and(|examples| examples.iter().any(|e| e["kind"] == kind)),
            "no example of {kind}: {}",
            json["violations"]
        );
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_loop_with_stdin_passes_and_reports() -> Result<()> {
    let gateway = TestGateway::spawn().await;
    let run = load(
        &gateway.url(),
        &[
            "--sockets",
            "2",
            "--executions",
            "8",
            "--concurrency",
            "4",
            "--output-bytes",
            "70000",
            "--stdin-bytes",
            "40000",
        ],
    )
    .await?;
    let json = run.assert_clean(8)?;
    for field in ["scenario", "throughput", "refusals", "lag", "timeline"] {
        ensure!(!json[field].is_null(), "the JSON report has no {field}");
    }
    ensure!(json["scenario"]["mode"]["kind"] == "closed");
    ensure!(json["throughput"]["events"].as_u64().unwrap_or(0) >= 8 * 3);
    // 8 executions' output and echo, at least, came back.
    ensure!(json["throughput"]["bytes"].as_u64().unwrap_or(0) >= 8 * 110_000);
    let html = run.html.as_deref().context("no HTML report")?;
    ensure!(html.starts_with("<!doctype html>"));
    ensure!(
        html.matches("<svg").count() >= 3,
        "the HTML report has fewer than 3 SVG plots"
    );
    ensure!(
        !html.contains("src=\"http") && !html.contains("href=\"http"),
        "the HTML report is not self-contained"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mix_from_a_scenario_file_passes() -> Result<()> {
    let gateway = TestGateway::spawn().await;
    let dir = std::env::temp_dir().join(unique_marker("load-scenario"));
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("mix.toml");
    std::fs::write(
        &file,
        "sockets = 2\nexecutions = 6\nconcurrency = 3\nseed = 3\n\n\
         [[program]]\nkind = \"pattern\"\noutput_bytes = 5000\nstdin_bytes = 50\nweight = 2\n\n\
         [[program]]\nkind = \"clock\"\nduration = \"300ms\"\ninterval = \"100ms\"\n",
    )?;
    let path = file.to_string_lossy().into_owned();
    let run = load(&gateway.url(), &["--scenario", &path]).await;
    let _ = std::fs::remove_dir_all(&dir);
    let run = run?;
    let json = run.assert_clean(6)?;
    ensure!(
        json["scenario"]["programs"].as_array().map(Vec::len) == Some(2),
        "{}",
        json["scenario"]
    );
    ensure!(json["scenario"]["sockets"] == 2);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_loop_passes() -> Result<()> {
    let gateway = TestGateway::spawn().await;
    let run = load(
        &gateway.url(),
        &[
            "--rate",
            "20/s",
            "--executions",
            "6",
            "--output-bytes",
            "300",
        ],
    )
    .await?;
    let json = run.assert_clean(6)?;
    ensure!(json["scenario"]["mode"]["kind"] == "open");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_clock_programs_measure_lag_on_every_line() -> Result<()> {
    let gateway = TestGateway::spawn().await;
    let run = load(
        &gateway.url(),
        &[
            "--sockets",
            "2",
            "--live",
            "4",
            "--program",
            "clock",
            "--duration",
            "1s",
            "--interval",
            "100ms",
        ],
    )
    .await?;
    let json = run.assert_clean(4)?;
    // Each program prints exactly 10 lines, and each line is one lag sample.
    ensure!(
        json["lag"]["all"]["count"].as_u64() == Some(40),
        "lag samples: {}",
        json["lag"]
    );
    ensure!(json["lag"]["window"].is_string());
    ensure!(run.stdout.contains("delivery lag"), "{}", run.stdout);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_see_identical_streams() -> Result<()> {
    let gateway = TestGateway::spawn().await;
    let run = load(
        &gateway.url(),
        &[
            "--executions",
            "4",
            "--concurrency",
            "2",
            "--watchers",
            "2",
            // More than an idle session keeps (256 KiB): the programs wait for their
            // watchers to attach before printing, so nothing is gone when they do.
            "--output-bytes",
            "300000",
            "--stdin-bytes",
            "1000",
        ],
    )
    .await?;
    let json = run.assert_clean(4)?;
    ensure!(json["scenario"]["watchers"] == 2);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watched_clocks_survive_dropped_sockets() -> Result<()> {
    let gateway = TestGateway::spawn().await;
    let run = load(
        &gateway.url(),
        &[
            "--executions",
            "4",
            "--concurrency",
            "2",
            "--watchers",
            "1",
            "--disconnect-every",
            "4",
            "--program",
            "clock",
            "--program-duration",
            "500ms",
        ],
    )
    .await?;
    let json = run.assert_clean(4)?;
    ensure!(
        json["executions"]["resumes"].as_u64().unwrap_or(0) >= 1,
        "no socket was dropped: {}",
        json["executions"]
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_sockets_resume_without_loss() -> Result<()> {
    let gateway = TestGateway::spawn().await;
    let run = load(
        &gateway.url(),
        &[
            "--executions",
            "6",
            "--concurrency",
            "3",
            "--disconnect-every",
            "3",
            "--output-bytes",
            "2000",
            "--stdin-bytes",
            "100",
            "--program-duration",
            "200ms",
        ],
    )
    .await?;
    let json = run.assert_clean(6)?;
    ensure!(
        json["executions"]["resumes"].as_u64().unwrap_or(0) >= 1,
        "no socket was dropped: {}",
        json["executions"]
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_load_says_which_flags_make_room() -> Result<()> {
    let gateway = TestGateway::spawn_with(Config {
        max_executions: 2,
        ..Config::default()
    })
    .await;
    let run = load(
        &gateway.url(),
        &["--live", "4", "--program", "clock", "--duration", "2s"],
    )
    .await?;
    ensure!(run.code == Some(2), "exit {:?}\n{}", run.code, run.stdout);
    let json = run.json()?;
    ensure!(
        json["refusals"]["too_many_executions"]
            .as_u64()
            .unwrap_or(0)
            >= 1,
        "{}",
        json["refusals"]
    );
    ensure!(
        run.stderr.contains("--max-executions-per-peer"),
        "the error does not say how to make room: {}",
        run.stderr
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_is_presented_and_a_missing_one_is_refused() -> Result<()> {
    let dir = std::env::temp_dir().join(unique_marker("load-keys"));
    std::fs::create_dir_all(&dir)?;
    let keys = dir.join("keys");
    let key = sluice_gateway::auth::keys::add_key(&keys, "loadtest")?;
    let mut config = Config::default();
    config.auth.api_keys_file = Some(keys);
    let gateway = TestGateway::spawn_with(config).await;
    let with = load(&gateway.url(), &["--executions", "2", "--token", &key]).await;
    let without = load(&gateway.url(), &["--executions", "2"]).await;
    let _ = std::fs::remove_dir_all(&dir);
    with?.assert_clean(2)?;
    let without = without?;
    ensure!(without.code == Some(2), "exit {:?}", without.code);
    ensure!(
        without.stderr.contains("cannot connect") && without.stderr.contains("401"),
        "the refusal is not explained: {}",
        without.stderr
    );
    Ok(())
}

/// The gateway closes sockets that hold nothing for its idle timeout: between two
/// executions of a slow open loop, the program socket and its watcher are closed under
/// the harness, which reconnects and carries on without losing anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sockets_the_gateway_closes_are_reconnected() -> Result<()> {
    let gateway = TestGateway::spawn_with(Config {
        idle_timeout: Duration::from_millis(200),
        ..Config::default()
    })
    .await;
    let run = load(
        &gateway.url(),
        &["--rate", "2/s", "--executions", "4", "--watchers", "1"],
    )
    .await?;
    run.assert_clean(4)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_that_refuses_everything_is_not_flooded() -> Result<()> {
    let gateway = TestGateway::spawn().await;
    let run = load(
        &gateway.url(),
        &[
            "--language",
            "no-such-language",
            "--duration",
            "1h",
            "--concurrency",
            "4",
        ],
    )
    .await?;
    ensure!(run.code == Some(2), "exit {:?}\n{}", run.code, run.stdout);
    let json = run.json()?;
    let refused = json["refusals"]["unknown_language"].as_u64().unwrap_or(0);
    let issued = json["executions"]["issued"].as_u64().unwrap_or(0);
    ensure!(
        (100..=104).contains(&refused) && issued == refused,
        "refused {refused} of {issued}: {}",
        json["executions"]
    );
    Ok(())
}

#[test]
fn an_unreachable_gateway_is_an_error() -> Result<()> {
    let output = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["load", "--url", "ws://127.0.0.1:1/v1/ws", "--no-progress"])
        .output()?;
    ensure!(output.status.code() == Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(stderr.contains("cannot connect"), "{stderr}");
    Ok(())
}

// -------------------------------------------------------------------------------------
// A broken path: a WebSocket proxy that forwards every frame but breaks one event.

#[derive(Debug, Clone, Copy)]
enum Fault {
    /// The first stdout event is not forwarded.
    Drop,
    /// The first stdout event is forwarded twice.
    Duplicate,
    /// The first stdout event is forwarded after the frame that follows it.
    Reorder,
    /// The first completed event is not forwarded.
    DropTerminal,
    /// The first stdout event's data is changed.
    Alter,
}

/// Starts the proxy in front of `gateway`; its URL.
async fn faulty_proxy(gateway: SocketAddr, fault: Fault) -> Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let done = Arc::new(AtomicBool::new(false));
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(forward(tcp, gateway, fault, Arc::clone(&done)));
        }
    });
    Ok(format!("ws://{addr}{}", sluice_protocol::WS_PATH))
}

async fn forward(
    tcp: tokio::net::TcpStream,
    gateway: SocketAddr,
    fault: Fault,
    done: Arc<AtomicBool>,
) -> Result<()> {
    let client = tokio_tungstenite::accept_async(tcp).await?;
    let url = format!("ws://{gateway}{}", sluice_protocol::WS_PATH);
    let (upstream, _) = tokio_tungstenite::connect_async(url.as_str()).await?;
    let (mut to_client, mut from_client) = client.split();
    let (mut to_gateway, mut from_gateway) = upstream.split();
    let up = async move {
        while let Some(Ok(message)) = from_client.next().await {
            if to_gateway.send(message).await.is_err() {
                break;
            }
        }
    };
    let down = async move {
        let mut held: Option<Message> = None;
        while let Some(Ok(message)) = from_gateway.next().await {
            let mut out = vec![message.clone()];
            if let Message::Text(text) = &message {
                let event: Value = serde_json::from_str(text.as_str()).unwrap_or_default();
                let wanted = match fault {
                    Fault::DropTerminal => "completed",
                    _ => "stdout",
                };
                if event["type"] == wanted && !done.swap(true, Ordering::SeqCst) {
                    out = match fault {
                        Fault::Drop | Fault::DropTerminal => vec![],
                        Fault::Duplicate => vec![message.clone(), message.clone()],
                        Fault::Reorder => {
                            held = Some(message.clone());
                            vec![]
                        }
                        Fault::Alter => {
                            let mut event = event.clone();
                            let data = event["data"].as_str().unwrap_or_default().to_uppercase();
                            event["data"] = Value::String(data);
                            vec![Message::text(event.to_string())]
                        }
                    };
                } else if let Some(late) = held.take() {
                    out.push(late);
                }
            }
            for message in out {
                if to_client.send(message).await.is_err() {
                    return;
                }
            }
        }
    };
    tokio::select! {
        () = up => {}
        () = down => {}
    }
    Ok(())
}

/// A run of 3 sequential executions, each printing in several pieces, through `fault`.
async fn broken_run(fault: Fault) -> Result<Loaded> {
    let gateway = TestGateway::spawn().await;
    let url = faulty_proxy(gateway.addr(), fault).await?;
    load(
        &url,
        &[
            "--executions",
            "3",
            "--concurrency",
            "1",
            "--output-bytes",
            "640",
            "--program-duration",
            "300ms",
        ]
        .into_iter()
        .chain(
            match fault {
                // The lost terminal event is waited for this long.
                Fault::DropTerminal => ["--drain-timeout", "5s"].as_slice(),
                _ => [].as_slice(),
            }
            .iter()
            .copied(),
        )
        .collect::<Vec<_>>(),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_event_is_a_gap() -> Result<()> {
    let run = broken_run(Fault::Drop).await?;
    run.assert_violation("gap")?;
    run.assert_violation("wrong_output")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicated_event_is_a_duplicate() -> Result<()> {
    broken_run(Fault::Duplicate)
        .await?
        .assert_violation("duplicate")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reordered_event_is_out_of_order() -> Result<()> {
    broken_run(Fault::Reorder)
        .await?
        .assert_violation("out_of_order")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_terminal_event_is_missing() -> Result<()> {
    broken_run(Fault::DropTerminal)
        .await?
        .assert_violation("missing_terminal")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn altered_output_is_wrong_output() -> Result<()> {
    let run = broken_run(Fault::Alter).await?;
    run.assert_violation("wrong_output")?;
    let json = run.json()?;
    if json["violations"]["by_kind"]["gap"].as_u64().unwrap_or(0) > 0 {
        bail!("an altered event is not a lost one: {}", json["violations"]);
    }
    Ok(())
}
