//! `sluice serve` as a test runs it: the built binary on a free loopback port, logging
//! JSON lines, read line by line on a thread of its own; killed when the test ends.

#![allow(dead_code)] // each test binary uses its own part

use anyhow::{Context as _, Result};
use serde_json::Value;
use sluice_tests::patience;
use std::io::BufRead as _;
use std::process::{Command, Stdio};
use std::sync::mpsc;

/// A running `sluice serve` and its log.
pub(crate) struct Serving {
    pub(crate) child: std::process::Child,
    pub(crate) lines: mpsc::Receiver<Value>,
    /// The WebSocket URL it logged.
    pub(crate) url: String,
}

impl Serving {
    /// Starts `sluice serve --listen 127.0.0.1:0 --log-json` with `args`, and waits for
    /// its `listening` line.
    pub(crate) fn start(args: &[&str]) -> Result<Self> {
        Self::start_command(Command::new(env!("CARGO_BIN_EXE_sluice")), args)
    }

    /// As [`Serving::start`], with the gateway started in the cgroup v2 directory
    /// `cgroup` (a shell moves itself there, then execs it).
    pub(crate) fn start_in_cgroup(cgroup: &std::path::Path, args: &[&str]) -> Result<Self> {
        let mut command = Command::new("sh");
        command.args(["-c", "echo $$ > \"$0/cgroup.procs\" && exec \"$@\""]);
        command.arg(cgroup).arg(env!("CARGO_BIN_EXE_sluice"));
        Self::start_command(command, args)
    }

    fn start_command(mut command: Command, args: &[&str]) -> Result<Self> {
        let mut child = command
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--log-json",
                "--log",
                "info",
            ])
            .args(args)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        let stderr = child.stderr.take().context("no stderr")?;
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
        let mut serving = Self {
            child,
            lines,
            url: String::new(),
        };
        let listening = serving.next_line(|l| message(l) == "listening")?;
        serving.url = listening["fields"]["url"]
            .as_str()
            .context("no url in the listening line")?
            .to_owned();
        Ok(serving)
    }

    /// Waits (up to the harness's patience) for the next log line that `wanted` accepts.
    pub(crate) fn next_line(&self, wanted: impl Fn(&Value) -> bool) -> Result<Value> {
        let deadline = std::time::Instant::now() + patience();
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .context("the log line never came")?;
            if wanted(&line) {
                return Ok(line);
            }
        }
    }

    /// Sends `signal` to the gateway.
    pub(crate) fn signal(&self, signal: &str) -> Result<()> {
        let sent = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()?;
        anyhow::ensure!(sent.success(), "kill -{signal} failed");
        Ok(())
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A log line's message.
pub(crate) fn message(line: &Value) -> &str {
    line["fields"]["message"].as_str().unwrap_or("")
}
