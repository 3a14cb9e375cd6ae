//! The terminal client: `sluice run` (and `run -t`, `shell`, on a remote terminal) and
//! `sluice attach`, built on the Rust client
//! (`sluice-client`), which speaks the protocol, reconnects and resumes.
//!
//! This module holds what both commands share: the exit codes, the one-line `sluice:`
//! error, the gateway URL and credential flags, signal handling, and writing to the terminal's stdout and
//! stderr (a CLI writes there on purpose, so it goes through locked [`std::io::Write`]
//! handles rather than `print!`).

pub(crate) mod attach;
pub(crate) mod interactive;
mod raw;
pub(crate) mod run;

use clap::Args;
use sluice_client::{Client, ClientError, ClientOptions, Token};
use std::io::Write as _;
use std::time::Duration;

/// The exit statuses of `sluice run` and `sluice attach` that are their own rather than
/// the program's (`run` otherwise exits with the program's status).
pub(crate) mod exit {
    /// Bad command line (clap's own status for usage errors), or a script whose language
    /// cannot be told from its extension.
    pub(crate) const USAGE: i32 = 2;
    /// The script file cannot be read (sysexits `EX_NOINPUT`).
    pub(crate) const NO_INPUT: i32 = 66;
    /// The gateway cannot be reached, or the connection was lost for good
    /// (sysexits `EX_UNAVAILABLE`).
    pub(crate) const UNAVAILABLE: i32 = 69;
    /// The gateway refused the credential (`--token` / `SLUICE_TOKEN`): missing, unknown,
    /// expired (sysexits `EX_NOPERM`).
    pub(crate) const UNAUTHORIZED: i32 = 77;
    /// Writing to the terminal's stdout or stderr failed (sysexits `EX_IOERR`).
    pub(crate) const IO: i32 = 74;
    /// The program hit its wall-clock limit (as coreutils `timeout`).
    pub(crate) const TIMEOUT: i32 = 124;
    /// The program hit another limit: output, CPU, memory, file size, processes,
    /// workspace.
    pub(crate) const LIMIT: i32 = 125;
    /// The gateway refused or could not run the request: unknown language, invalid
    /// limit, too many executions, spawn failure, shutting down, an internal error; for
    /// `attach`, an unknown session.
    pub(crate) const REFUSED: i32 = 126;
    /// Cancelled: by Ctrl-C, or by another client (128 + SIGINT).
    pub(crate) const CANCELLED: i32 = 130;
    /// The reader of our stdout went away (128 + SIGPIPE), as a program killed by
    /// SIGPIPE would exit.
    pub(crate) const BROKEN_PIPE: i32 = 141;
}

/// A failure of the terminal client: one line for the user and the status to exit with.
#[derive(Debug)]
pub(crate) struct Failure {
    /// What went wrong, without the `sluice:` prefix.
    pub(crate) message: String,
    /// The exit status (see [`exit`]).
    pub(crate) code: i32,
}

impl Failure {
    pub(crate) fn new(code: i32, message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            code,
        }
    }

    /// Prints the message (if any) and returns the status.
    pub(crate) fn report(self) -> i32 {
        if !self.message.is_empty() {
            say(&self.message);
        }
        self.code
    }
}

/// The flags both commands take to find the gateway and prove who they are.
#[derive(Debug, Args)]
pub(crate) struct GatewayArgs {
    /// The gateway's WebSocket endpoint.
    #[arg(
        long,
        env = "SLUICE_URL",
        default_value = "ws://127.0.0.1:7878/v1/ws",
        value_name = "URL"
    )]
    pub(crate) url: String,

    /// The credential for a gateway that requires one: an API key (`sluice key add`) or a
    /// signed token, sent as `Authorization: Bearer`. Prefer SLUICE_TOKEN: a flag's value
    /// is visible to other users in the process list.
    #[arg(
        long,
        env = "SLUICE_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub(crate) token: Option<Token>,
}

/// How long the first connection may take before `sluice` gives up on the gateway.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

impl GatewayArgs {
    /// Connects to the gateway, or fails with one line and [`exit::UNAVAILABLE`]
    /// ([`exit::UNAUTHORIZED`] when it refuses the credential).
    pub(crate) async fn connect(&self) -> Result<Client, Failure> {
        let options = ClientOptions {
            close_timeout: Duration::from_secs(2),
            token: self.token.clone(),
            ..ClientOptions::default()
        };
        let unreachable = |why: String| {
            let hint = sluice_protocol::endpoint_hint(&self.url).unwrap_or_else(|| {
                "is `sluice serve` running there? set --url or SLUICE_URL".to_owned()
            });
            Failure::new(
                exit::UNAVAILABLE,
                format!(
                    "cannot reach the gateway at {}: {why} ({hint})",
                    sluice_client::redact_url(&self.url)
                ),
            )
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, Client::connect_with(&self.url, options)).await
        {
            Ok(Ok(client)) => Ok(client),
            Ok(Err(ClientError::Unauthorized { reason })) => Err(Failure::new(
                exit::UNAUTHORIZED,
                format!("the gateway refused the credential: {reason}"),
            )),
            Ok(Err(ClientError::Connect { source, .. })) => Err(unreachable(source.to_string())),
            Ok(Err(other)) => Err(unreachable(other.to_string())),
            Err(_) => Err(unreachable(format!(
                "no answer within {} s",
                CONNECT_TIMEOUT.as_secs()
            ))),
        }
    }
}

/// Builds the runtime the commands run on (two workers: one may block writing to a slow
/// terminal while the connection task goes on), runs `command`, and returns its status.
pub(crate) fn block_on<F>(command: F) -> i32
where
    F: std::future::Future<Output = i32>,
{
    match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(command),
        Err(err) => {
            Failure::new(exit::IO, format!("cannot start the async runtime: {err}")).report()
        }
    }
}

/// Prints `sluice: MESSAGE` as one line on stderr (newlines in the message become spaces).
pub(crate) fn say(message: &str) {
    let line = message.trim_end().replace(['\n', '\r'], " ");
    let mut stderr = std::io::stderr().lock();
    // Nothing better to do if stderr itself is gone.
    let _ = writeln!(stderr, "sluice: {line}");
    let _ = stderr.flush();
}

/// Which of the terminal's output streams to write to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sink {
    Stdout,
    Stderr,
}

/// Writes `bytes` to the terminal's stdout or stderr and flushes them, without holding up
/// the runtime's other tasks while a slow reader (a pager, a full pipe) blocks the write.
pub(crate) fn write_out(sink: Sink, bytes: &[u8]) -> std::io::Result<()> {
    tokio::task::block_in_place(|| match sink {
        Sink::Stdout => {
            let mut out = std::io::stdout().lock();
            out.write_all(bytes)?;
            out.flush()
        }
        Sink::Stderr => {
            let mut out = std::io::stderr().lock();
            out.write_all(bytes)?;
            out.flush()
        }
    })
}

/// The status for a failed write to the terminal: quiet 141 when the reader went away,
/// otherwise one line and [`exit::IO`].
pub(crate) fn write_failure(sink: Sink, err: &std::io::Error) -> Failure {
    if err.kind() == std::io::ErrorKind::BrokenPipe {
        return Failure::new(exit::BROKEN_PIPE, "");
    }
    let name = match sink {
        Sink::Stdout => "stdout",
        Sink::Stderr => "stderr",
    };
    Failure::new(exit::IO, format!("cannot write to {name}: {err}"))
}

/// The signals that stop a command: SIGINT (Ctrl-C), SIGTERM and SIGHUP.
#[derive(Debug)]
pub(crate) struct Interrupts {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Interrupts {
    /// Takes over SIGINT, SIGTERM and SIGHUP from now on.
    pub(crate) fn install() -> Result<Self, Failure> {
        use tokio::signal::unix::{signal, SignalKind};
        let listen = |kind: SignalKind, name: &str| {
            signal(kind)
                .map_err(|err| Failure::new(exit::IO, format!("cannot listen for {name}: {err}")))
        };
        Ok(Self {
            int: listen(SignalKind::interrupt(), "SIGINT")?,
            term: listen(SignalKind::terminate(), "SIGTERM")?,
            hup: listen(SignalKind::hangup(), "SIGHUP")?,
        })
    }

    /// Waits for the next of those signals.
    pub(crate) async fn recv(&mut self) {
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
            _ = self.hup.recv() => {}
        }
    }
}

/// Parses `KEY=VALUE` for `--env`.
pub(crate) fn parse_env(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("{text:?}: expected KEY=VALUE")),
    }
}

/// Decodes the `data` of a `stdout`/`stderr` event into the program's exact bytes.
pub(crate) fn output_bytes(event: &sluice_client::protocol::Event) -> Result<Vec<u8>, String> {
    use base64::Engine as _;
    match event.encoding {
        Some(sluice_client::protocol::Encoding::Base64) => {
            base64::engine::general_purpose::STANDARD
                .decode(event.data.as_bytes())
                .map_err(|err| {
                    format!(
                        "the gateway sent {} output that is not valid base64 (event {}): {err}",
                        event.kind, event.sequence
                    )
                })
        }
        _ => Ok(event.data.as_bytes().to_vec()),
    }
}

/// Sixteen random hexadecimal digits (from the clock and the process id if the system's
/// random source fails), for names that must not collide with anyone else's.
pub(crate) fn random_hex() -> String {
    let mut bytes = [0_u8; 8];
    if getrandom::fill(&mut bytes).is_err() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_nanos());
        let mixed = (nanos as u64) ^ (u64::from(std::process::id()) << 32);
        bytes = mixed.to_be_bytes();
    }
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}
