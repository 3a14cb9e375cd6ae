//! `sluice run -t` and `sluice shell`: a program on a remote terminal, driven from this
//! one as `ssh -t` drives one. This terminal goes into raw mode (every key, Ctrl-C and
//! Ctrl-D included, is typed into the remote terminal; nothing is echoed here) and is
//! restored on every way out; its window size is sent at the start and on each SIGWINCH;
//! the remote terminal's bytes are written here as they come. SIGTERM or SIGHUP to
//! `sluice` cancels the program (twice: exit at once). Exits with the program's status,
//! as `sluice run` does.

use super::raw::{window_size, RawMode};
use super::run::ending;
use super::{exit, output_bytes, say, write_failure, write_out, Failure, GatewayArgs, Interrupts};
use super::{random_hex, Sink};
use clap::Args;
use futures::StreamExt as _;
use sluice_client::protocol::{
    Encoding, EventKind, ExecuteRequest, Limits, DEFAULT_TERM, MAX_TERMINAL_SIDE, MAX_TERM_BYTES,
};
use sluice_client::{ClientError, Execution};
use std::io::{IsTerminal as _, Read as _};
use std::time::Duration;
use tokio::sync::mpsc;

/// Shown at the end of `sluice shell --help`.
pub(crate) const SHELL_AFTER_HELP: &str = "\
The shell runs on the gateway, jailed like any program, on a terminal of this window's
size; Ctrl-C, Ctrl-D and Ctrl-Z go to it. It exits with the shell's status (see
`sluice run --help` for the statuses of sluice's own).

Examples:
  sluice shell
  sluice shell -l python
  sluice shell --session ide-7            (others may follow: sluice attach ide-7)
  sluice shell --session ide-7 --workspace   (in the session's workspace, kept between runs)
  SLUICE_URL=ws://host:7878/v1/ws SLUICE_TOKEN=... sluice shell";

/// An interactive shell or REPL on the gateway.
#[derive(Debug, Args)]
pub(crate) struct ShellArgs {
    /// What to start: bash (an interactive shell), sh, python (the REPL) or node (the
    /// REPL).
    #[arg(short = 'l', long, value_name = "LANGUAGE", default_value = "bash")]
    language: String,

    #[command(flatten)]
    gateway: GatewayArgs,

    /// Run in this named session, so that others can follow it with `sluice attach`.
    #[arg(long, value_name = "NAME")]
    session: Option<String>,

    /// Start in the session's workspace, a directory that outlives the shell: files the
    /// session's earlier executions left are there, and what the shell writes stays for
    /// its later ones, until the session ends (once no client has been attached for the
    /// gateway's grace period, 60 s by default). Needs --session and a gateway running
    /// as root (PROTOCOL.md 7.7).
    #[arg(long, requires = "session")]
    workspace: bool,

    /// Add a variable to the shell's environment. Repeatable.
    #[arg(long = "env", value_name = "KEY=VALUE", value_parser = super::parse_env)]
    env: Vec<(String, String)>,

    /// Wall-clock limit of the whole shell, in milliseconds. By default the longest the
    /// gateway allows this client (its `timeout_ms` maximum, as `GET /v1/runtimes`
    /// lists it), as the playground's terminal gets: an interactive shell waits for a
    /// person.
    #[arg(long, value_name = "MS")]
    timeout_ms: Option<u64>,
}

/// What Ctrl-D types: at the start of a line, the end of input for the program reading
/// the terminal.
const END_OF_INPUT: &str = "\u{4}";

/// Runs `sluice shell` and returns the status to exit with.
pub(crate) fn shell_main(args: ShellArgs) -> i32 {
    super::block_on(async move {
        let request = match shell_request(&args) {
            Ok(request) => request,
            Err(failure) => return failure.report(),
        };
        match run(request, &args.gateway, true).await {
            Ok(code) => code,
            Err(failure) => failure.report(),
        }
    })
}

/// The program that starts each language's interactive shell or REPL.
fn shell_program(language: &str) -> Option<&'static str> {
    match language {
        "bash" => Some("exec bash -i"),
        "sh" => Some("exec sh -i"),
        // Without a script and with a terminal on stdin, the interpreter is its REPL.
        "python" => Some("import os, sys\nos.execv(sys.executable, [sys.executable, '-q'])\n"),
        "node" => Some("require('repl').start();\n"),
        _ => None,
    }
}

fn shell_request(args: &ShellArgs) -> Result<ExecuteRequest, Failure> {
    let code = shell_program(&args.language).ok_or_else(|| {
        Failure::new(
            exit::USAGE,
            format!(
                "sluice shell starts bash, sh, python or node, not {:?}; for another \
                 language, run a program with `sluice run -t`",
                args.language
            ),
        )
    })?;
    Ok(ExecuteRequest {
        id: format!("shell-{}", random_hex()),
        language: args.language.clone(),
        code: code.to_owned(),
        session: args.session.clone(),
        workspace: args.workspace,
        env: args.env.iter().cloned().collect(),
        limits: Limits {
            timeout_ms: args.timeout_ms,
            ..Limits::default()
        },
        ..ExecuteRequest::default()
    })
}

/// The `TERM` to ask for: this terminal's, where the protocol takes it.
fn term() -> String {
    std::env::var("TERM")
        .ok()
        .filter(|term| {
            !term.is_empty()
                && term.len() <= MAX_TERM_BYTES
                && term
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".+-_".contains(&b))
        })
        .unwrap_or_else(|| DEFAULT_TERM.to_owned())
}

/// The window's size as the protocol takes it (1 to 1000 each way).
fn protocol_size((cols, rows): (u16, u16)) -> (u16, u16) {
    (
        cols.clamp(1, MAX_TERMINAL_SIDE),
        rows.clamp(1, MAX_TERMINAL_SIDE),
    )
}

/// Runs `request` on a remote terminal driven from this one; the status to exit with.
/// Without a `timeout_ms` in `request`, `longest` asks for the longest the gateway
/// allows (a shell), else its default applies (`sluice run -t`).
pub(crate) async fn run(
    mut request: ExecuteRequest,
    gateway: &GatewayArgs,
    longest: bool,
) -> Result<i32, Failure> {
    let mut interrupts = Interrupts::install()?;
    let mut winch =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())
            .map_err(|err| Failure::new(exit::IO, format!("cannot listen for SIGWINCH: {err}")))?;
    let (cols, rows) = protocol_size(window_size().unwrap_or((80, 24)));
    request.tty = true;
    request.cols = Some(cols);
    request.rows = Some(rows);
    request.term = Some(term());
    // Exact bytes: a terminal's stream is not always UTF-8.
    request.encoding = Encoding::Base64;
    let client = tokio::select! {
        client = gateway.connect() => client?,
        () = interrupts.recv() => return Ok(exit::CANCELLED),
    };
    if request.limits.timeout_ms.is_none() && longest {
        // The longest the gateway allows (the catalog's maximum for this credential);
        // without an answer, the gateway's default applies.
        request.limits.timeout_ms = client
            .runtimes()
            .await
            .ok()
            .and_then(|catalog| catalog.limits.get("timeout_ms").map(|range| range.max));
    }
    let mut socket_events = client.socket_events();
    let execution = client.execute(request).await.map_err(|err| match err {
        ClientError::Unauthorized { reason } => Failure::new(
            exit::UNAUTHORIZED,
            format!("the gateway refused the credential: {reason}"),
        ),
        ClientError::InvalidSession { session, reason } => Failure::new(
            exit::USAGE,
            format!("invalid session name {session:?}: {reason}"),
        ),
        other => Failure::new(exit::UNAVAILABLE, other.to_string()),
    })?;
    // From here until this function returns, keys go to the remote terminal.
    let raw = RawMode::enter();
    let result = drive(
        execution,
        &mut interrupts,
        &mut winch,
        &mut socket_events,
        raw.is_some(),
    )
    .await;
    drop(raw);
    let _ = tokio::time::timeout(Duration::from_secs(3), client.close()).await;
    result
}

/// Moves keys there and output here until the program ends.
async fn drive(
    execution: Execution,
    interrupts: &mut Interrupts,
    winch: &mut tokio::signal::unix::Signal,
    socket_events: &mut Option<sluice_client::SocketEvents>,
    raw: bool,
) -> Result<i32, Failure> {
    let mut execution = execution;
    let mut keys = Some(read_keys()?);
    let mut carry = Vec::new();
    let mut cancelled = false;
    loop {
        tokio::select! {
            () = interrupts.recv() => {
                if cancelled {
                    return Ok(exit::CANCELLED);
                }
                cancelled = true;
                let _ = execution.cancel().await;
            }
            _ = winch.recv() => {
                if let Some(size) = window_size() {
                    let (cols, rows) = protocol_size(size);
                    let _ = execution.resize(cols, rows).await;
                }
            }
            read = recv_keys(&mut keys) => match read {
                Some(bytes) => {
                    let text = decode_keys(&mut carry, &bytes);
                    if !text.is_empty() && execution.send_stdin(text).await.is_err() {
                        keys = None;
                    }
                }
                // Input that is not a terminal ended: type its end (Ctrl-D), once, as a
                // person would at the remote terminal; a closed stdin means nothing to
                // a program reading a terminal.
                None => {
                    keys = None;
                    let _ = execution.send_stdin(END_OF_INPUT.to_owned()).await;
                }
            },
            Some(event) = next_refusal(socket_events) => {
                if event.code.is_some() {
                    let line = format!("sluice: input not delivered: {}", event.data);
                    say_on_terminal(&line, raw);
                }
            }
            event = execution.next() => {
                let Some(event) = event else {
                    return Err(Failure::new(
                        exit::UNAVAILABLE,
                        "the connection ended before the program did",
                    ));
                };
                match event.kind {
                    EventKind::Stdout | EventKind::Stderr => {
                        let bytes = output_bytes(&event)
                            .map_err(|why| Failure::new(exit::UNAVAILABLE, why))?;
                        if let Err(err) = write_out(Sink::Stdout, &bytes) {
                            let _ = execution.cancel().await;
                            return Err(write_failure(Sink::Stdout, &err));
                        }
                    }
                    _ if event.is_terminal() => return ending(&event, cancelled),
                    _ => {}
                }
            }
        }
    }
}

/// A line for the user while this terminal may be raw (where "\n" does not return the
/// carriage).
fn say_on_terminal(line: &str, raw: bool) {
    if raw {
        let _ = write_out(Sink::Stderr, format!("\r\n{line}\r\n").as_bytes());
    } else {
        say(line);
    }
}

async fn next_refusal(
    events: &mut Option<sluice_client::SocketEvents>,
) -> Option<sluice_client::protocol::Event> {
    match events {
        Some(events) => events.recv().await,
        None => std::future::pending().await,
    }
}

async fn recv_keys(keys: &mut Option<mpsc::Receiver<Vec<u8>>>) -> Option<Vec<u8>> {
    match keys {
        Some(keys) => keys.recv().await,
        None => std::future::pending().await,
    }
}

/// Bytes read from stdin, in a thread of its own (a blocking read of a terminal cannot
/// be interrupted, and `sluice` must be able to exit while one waits); the channel
/// closes at the end of input.
fn read_keys() -> Result<mpsc::Receiver<Vec<u8>>, Failure> {
    let (sender, receiver) = mpsc::channel(16);
    let interactive = std::io::stdin().is_terminal();
    std::thread::Builder::new()
        .name("keys".to_owned())
        .spawn(move || {
            let mut stdin = std::io::stdin().lock();
            // A key at a time from a terminal; a piped script in larger pieces.
            let mut buf = vec![0_u8; if interactive { 4096 } else { 64 * 1024 }];
            loop {
                match stdin.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if sender.blocking_send(buf[..n].to_vec()).is_err() {
                            return;
                        }
                    }
                }
            }
        })
        .map_err(|err| Failure::new(exit::IO, format!("cannot read stdin: {err}")))?;
    Ok(receiver)
}

/// `bytes` appended to what an earlier read left of an unfinished character, as text:
/// an unfinished character at the end waits in `carry` for the next read; bytes that
/// are not UTF-8 become U+FFFD (the protocol carries input as text).
fn decode_keys(carry: &mut Vec<u8>, bytes: &[u8]) -> String {
    carry.extend_from_slice(bytes);
    let keep = match std::str::from_utf8(carry) {
        Ok(_) => 0,
        Err(err) if err.error_len().is_none() => carry.len() - err.valid_up_to(),
        Err(_) => 0,
    };
    let tail = carry.split_off(carry.len() - keep);
    let text = String::from_utf8_lossy(carry).into_owned();
    *carry = tail;
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_character_split_between_reads_is_kept_whole() {
        let mut carry = Vec::new();
        let euro = "€".as_bytes();
        assert_eq!(decode_keys(&mut carry, &[b'a', euro[0], euro[1]]), "a");
        assert_eq!(decode_keys(&mut carry, &[euro[2], b'b']), "€b");
        assert!(carry.is_empty());
        assert_eq!(decode_keys(&mut carry, &[0xff, b'c']), "\u{fffd}c");
    }

    #[test]
    fn every_language_sluice_shell_names_has_a_program() {
        for language in ["bash", "sh", "python", "node"] {
            assert!(shell_program(language).is_some(), "{language}");
        }
        assert!(shell_program("ruby").is_none());
    }

    #[test]
    fn a_huge_window_is_clamped_to_what_the_protocol_takes() {
        assert_eq!(protocol_size((5000, 0)), (1000, 1));
        assert_eq!(protocol_size((80, 24)), (80, 24));
    }
}
