//! The gateway's log at the default level, as `sluice serve --log-json` writes it: one
//! line when an execution starts and one when it ends (with its outcome and duration),
//! one per refusal (with its error code), and every line about an execution carrying
//! its tenant, session and id (the `execution` span's fields).

use anyhow::{ensure, Context as _, Result};
use serde_json::Value;
use sluice_protocol::EventKind;
use sluice_tests::{patience, request, RawSocket};
use std::io::BufRead as _;
use std::process::{Command, Stdio};
use std::sync::mpsc;

/// Kills the gateway when the test ends, however it ends.
struct Serving(std::process::Child);

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits for the next log line that `wanted` accepts.
fn next_line(lines: &mpsc::Receiver<Value>, wanted: impl Fn(&Value) -> bool) -> Result<Value> {
    let deadline = std::time::Instant::now() + patience();
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = lines
            .recv_timeout(left)
            .context("the log line never came")?;
        if wanted(&line) {
            return Ok(line);
        }
    }
}

fn message(line: &Value) -> &str {
    line["fields"]["message"].as_str().unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executions_and_refusals_each_leave_a_line_that_names_them() -> Result<()> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--log-json",
            "--log",
            "info",
        ])
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let stderr = child.stderr.take().context("no stderr")?;
    let _serving = Serving(child);
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if let Ok(value) = serde_json::from_str::<Value>(&line) {
                if tx.send(value).is_err() {
                    break;
                }
            }
        }
    });
    let listening = next_line(&lines, |l| message(l) == "listening")?;
    let url = listening["fields"]["url"]
        .as_str()
        .context("no url in the listening line")?
        .to_owned();

    let mut socket = RawSocket::connect(&url, None).await?;
    let mut run = request("logged", "python", "print('hi')");
    run.session = Some("log-session".into());
    socket.execute(run).await?;
    let events = socket.events_until_terminal("logged").await?;
    ensure!(
        events.last().map(|e| e.kind) == Some(EventKind::Completed),
        "{events:?}"
    );
    socket.execute(request("refused-one", "cobol", "x")).await?;
    socket.events_until_terminal("refused-one").await?;

    for wanted in ["execution started", "execution ended"] {
        let line = next_line(&lines, |l| message(l) == wanted)?;
        let span = &line["span"];
        ensure!(span["name"] == "execution", "{line}");
        ensure!(span["id"] == "logged", "{line}");
        ensure!(span["session"] == "log-session", "{line}");
        ensure!(span["tenant"] == "anonymous", "{line}");
        ensure!(span["language"] == "python", "{line}");
        ensure!(line["level"] == "INFO", "{line}");
        if wanted == "execution ended" {
            ensure!(line["fields"]["outcome"] == "completed", "{line}");
            ensure!(line["fields"]["duration_ms"].is_number(), "{line}");
        }
    }
    let refusal = next_line(&lines, |l| {
        message(l) == "refused" && l["fields"]["id"] == "refused-one"
    })?;
    ensure!(refusal["fields"]["code"] == "unknown_language", "{refusal}");
    ensure!(refusal["level"] == "INFO", "{refusal}");
    Ok(())
}
