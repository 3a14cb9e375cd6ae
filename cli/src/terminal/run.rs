//! `sluice run`: runs one program on a gateway as if it ran here.
//!
//! The program's stdout and stderr come out on the terminal's stdout and stderr as they
//! arrive, byte for byte (the output travels base64-encoded); the terminal's stdin goes to
//! the program, then `eof`; Ctrl-C cancels it (twice: exit at once); and `sluice run`
//! exits with the program's status, or with one of its own (see [`AFTER_HELP`]).
//!
//! Input is sent one frame at a time, each followed by a barrier: an `attach` to a session
//! name nobody uses, whose refusal comes back on the socket stream after the refusal of
//! the `stdin` frame before it, if that one was refused. A frame refused with `stdin_full`
//! (the program reads more slowly than the input arrives) is sent again a little later,
//! so input is never lost nor reordered however fast it comes.

use super::{exit, parse_env, say, write_failure, write_out, Failure, GatewayArgs, Interrupts};
use super::{output_bytes, random_hex, Sink};
use clap::Args;
use futures::future::BoxFuture;
use futures::StreamExt as _;
use sluice_client::protocol::{
    Encoding, ErrorCode, Event, EventKind, ExecuteRequest, LimitKind, Limits,
};
use sluice_client::{is_synthetic, Client, ClientError, Execution, SocketEvents};
use std::io::{IsTerminal as _, Read as _};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// The exit statuses, shown at the end of `sluice run --help`.
pub(crate) const AFTER_HELP: &str = "\
Exit status:
  N        the program's own exit status (0-255)
  128+N    the program was killed by signal N (143 for SIGTERM, 137 for SIGKILL)
  124      the program hit its wall-clock limit (--timeout-ms), as with timeout(1)
  125      the program hit another limit: output, CPU, memory, file size, processes,
           workspace (stderr says which)
  126      the gateway refused or could not run it: unknown language, invalid limit,
           too many executions, spawn failure, shutting down, internal error
  130      cancelled: by Ctrl-C, or by another client or the gateway's shutdown
  2        bad command line, or a script whose language the extension does not tell
  66       the script file cannot be read
  69       the gateway cannot be reached, or the connection was lost for good
  77       the gateway refused the credential (--token or SLUICE_TOKEN): missing,
           unknown or expired
  74       writing to stdout or stderr failed (141 if the reader went away)
Every failure of sluice's own is one line on stderr starting with `sluice:`.

Input: stdin is forwarded as it is read (line by line from a terminal), then closed
at its end (Ctrl-D at a terminal). It travels as UTF-8 text: bytes that are not
valid UTF-8 reach the program as U+FFFD. Output is passed on byte for byte.

With -t the program runs on a terminal instead: keys are typed into it as they are
pressed (Ctrl-C there interrupts the program, not sluice), and its output is the
terminal's one stream. `sluice shell` starts an interactive shell that way.

Examples:
  sluice run hello.py
  sluice run -t top.py
  sluice run -l python -c 'print(input().upper())' <<< hi
  sluice run --timeout-ms 5000 --env DEBUG=1 build.sh -- --fast
  SLUICE_URL=ws://host:7878/v1/ws sluice run job.js
  SLUICE_TOKEN=$(cat ~/.sluice-key) sluice run job.py";

/// Run a program on the gateway and stream its output here.
#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    /// The script to run. Its extension names the language (.py python, .sh sh, .bash
    /// bash, .js node) unless --language does.
    #[arg(
        value_name = "FILE",
        required_unless_present = "code",
        conflicts_with = "code"
    )]
    file: Option<PathBuf>,

    /// Run this program text instead of a file (needs --language).
    #[arg(short = 'c', long, value_name = "CODE", requires = "language")]
    code: Option<String>,

    /// The gateway runtime to run it with: python, sh, bash, node, or one the gateway
    /// operator added.
    #[arg(short = 'l', long, value_name = "LANGUAGE")]
    language: Option<String>,

    #[command(flatten)]
    gateway: GatewayArgs,

    /// Run the program on a terminal, driven from this one as `ssh -t` does: this
    /// terminal goes raw (every key, Ctrl-C included, is typed into the program's
    /// terminal), its window size is followed, and it is restored on exit. Output is
    /// the terminal's one stream (stderr merged).
    #[arg(short = 't', long)]
    tty: bool,

    /// Run in this named session (created if it is not open), so that others can follow
    /// it with `sluice attach NAME`. Default: a session of its own.
    #[arg(long, value_name = "NAME")]
    session: Option<String>,

    /// Keep the session's workspace: the program starts in a directory that outlives it,
    /// where earlier executions of the session left their files and later ones (and
    /// `sluice shell --workspace`) find them; it ends with the session, once no client
    /// has been attached for the gateway's grace period (60 s by default). Needs
    /// --session and a gateway running as root (PROTOCOL.md 7.7).
    #[arg(long, requires = "session")]
    workspace: bool,

    /// Add a variable to the program's environment. Repeatable.
    #[arg(long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
    env: Vec<(String, String)>,

    /// Wall-clock limit, in milliseconds (exit status 124 when reached).
    #[arg(long, value_name = "MS")]
    timeout_ms: Option<u64>,

    /// Limit on stdout plus stderr, in bytes (exactly that much is printed; status 125).
    #[arg(long, value_name = "BYTES")]
    output_bytes: Option<u64>,

    /// CPU-time limit, in milliseconds (status 125).
    #[arg(long, value_name = "MS")]
    cpu_ms: Option<u64>,

    /// Memory limit of the program's whole process tree, in bytes (status 125).
    #[arg(long, value_name = "BYTES")]
    memory_bytes: Option<u64>,

    /// Processes and threads the program may have alive at once (status 125).
    #[arg(long, value_name = "N")]
    processes: Option<u64>,

    /// Largest file the program may write, in bytes (status 125).
    #[arg(long, value_name = "BYTES")]
    file_size_bytes: Option<u64>,

    /// Descriptors the program may have open at once.
    #[arg(long, value_name = "N")]
    open_files: Option<u64>,

    /// Bytes the program may store in its workspace, /tmp and /dev/shm (status 125).
    #[arg(long, value_name = "BYTES")]
    workspace_bytes: Option<u64>,

    /// Arguments for the program, after `--`.
    #[arg(last = true, value_name = "ARGS")]
    args: Vec<String>,
}

/// Runs `sluice run` and returns the status to exit with.
pub(crate) fn main(args: RunArgs) -> i32 {
    super::block_on(async move {
        match run(args).await {
            Ok(code) => code,
            Err(failure) => failure.report(),
        }
    })
}

async fn run(args: RunArgs) -> Result<i32, Failure> {
    if args.tty {
        return super::interactive::run(args.request()?, &args.gateway, false).await;
    }
    let mut interrupts = Interrupts::install()?;
    let request = args.request()?;
    let client = tokio::select! {
        client = args.gateway.connect() => client?,
        () = interrupts.recv() => return Ok(exit::CANCELLED),
    };
    let socket_events = client.socket_events();
    let execution = client.execute(request).await.map_err(|err| match err {
        ClientError::FrameTooLarge { size, max } => Failure::new(
            exit::REFUSED,
            format!("the program is too large to send: {size} bytes, the most is {max}"),
        ),
        ClientError::InvalidSession { session, reason } => Failure::new(
            exit::USAGE,
            format!("invalid session name {session:?}: {reason}"),
        ),
        ClientError::Unauthorized { reason } => Failure::new(
            exit::UNAUTHORIZED,
            format!("the gateway refused the credential: {reason}"),
        ),
        other => Failure::new(exit::UNAVAILABLE, other.to_string()),
    })?;
    let runner = Runner {
        execution,
        input: Input::start()?,
        barrier: Barrier {
            client: client.clone(),
            session: format!("sluice-cli-barrier-{}", random_hex()),
        },
        socket_events,
        cancelled: false,
    };
    let result = runner.run(&mut interrupts).await;
    // Ends the connection cleanly (cancelling the program if it still runs), so the
    // gateway frees its session now rather than after its grace period.
    let _ = tokio::time::timeout(Duration::from_secs(3), client.close()).await;
    result
}

impl RunArgs {
    /// The `execute` request: the program, its language, and the options.
    fn request(&self) -> Result<ExecuteRequest, Failure> {
        let (language, code) = match (&self.code, &self.file) {
            (Some(code), _) => (self.language.clone().unwrap_or_default(), code.clone()),
            (None, Some(file)) => {
                let code = read_script(file)?;
                let language = match &self.language {
                    Some(language) => language.clone(),
                    None => language_of(file)?.to_owned(),
                };
                (language, code)
            }
            (None, None) => {
                return Err(Failure::new(
                    exit::USAGE,
                    "nothing to run: name a FILE, or give -c CODE with --language",
                ))
            }
        };
        // A unique id: in a named session, an id the session knows would start nothing.
        let id = format!("run-{}", random_hex());
        Ok(ExecuteRequest {
            id,
            language,
            code,
            session: self.session.clone(),
            workspace: self.workspace,
            env: self.env.iter().cloned().collect(),
            args: self.args.clone(),
            limits: Limits {
                timeout_ms: self.timeout_ms,
                output_bytes: self.output_bytes,
                cpu_ms: self.cpu_ms,
                file_size_bytes: self.file_size_bytes,
                open_files: self.open_files,
                memory_bytes: self.memory_bytes,
                processes: self.processes,
                workspace_bytes: self.workspace_bytes,
            },
            encoding: Encoding::Base64,
            ..ExecuteRequest::default()
        })
    }
}

fn read_script(file: &Path) -> Result<String, Failure> {
    let bytes = std::fs::read(file).map_err(|err| {
        Failure::new(
            exit::NO_INPUT,
            format!("cannot read {}: {err}", file.display()),
        )
    })?;
    String::from_utf8(bytes).map_err(|err| {
        Failure::new(
            exit::NO_INPUT,
            format!(
                "{} is not UTF-8 text (invalid byte at offset {}); programs are sent as text",
                file.display(),
                err.utf8_error().valid_up_to()
            ),
        )
    })
}

/// The language a script's extension names.
fn language_of(file: &Path) -> Result<&'static str, Failure> {
    let extension = file.extension().and_then(|ext| ext.to_str()).unwrap_or("");
    match extension {
        "py" => Ok("python"),
        "sh" => Ok("sh"),
        "bash" => Ok("bash"),
        "js" => Ok("node"),
        _ => Err(Failure::new(
            exit::USAGE,
            format!(
                "cannot tell the language of {} from its extension (.py, .sh, .bash or .js); \
                 name it with --language",
                file.display()
            ),
        )),
    }
}

/// One execution being run: its events go to the terminal, the terminal's input to it.
struct Runner {
    execution: Execution,
    input: Input,
    barrier: Barrier,
    socket_events: Option<SocketEvents>,
    /// A Ctrl-C (or SIGTERM, SIGHUP) asked for the program to be cancelled.
    cancelled: bool,
}

impl Runner {
    async fn run(mut self, interrupts: &mut Interrupts) -> Result<i32, Failure> {
        loop {
            tokio::select! {
                () = interrupts.recv() => {
                    if self.cancelled {
                        return Ok(exit::CANCELLED);
                    }
                    self.cancelled = true;
                    if std::io::stderr().is_terminal() {
                        say("cancelling the program; press Ctrl-C again to exit at once");
                    }
                    // On failure the connection is gone and the stream ends on its own.
                    let _ = self.execution.cancel().await;
                }
                event = self.execution.next() => {
                    let Some(event) = event else {
                        return Err(Failure::new(
                            exit::UNAVAILABLE,
                            "the connection ended before the program did",
                        ));
                    };
                    if let Some(code) = self.on_event(&event).await? {
                        return Ok(code);
                    }
                }
                Some(event) = next_socket_event(&mut self.socket_events) => {
                    self.input.on_refusal(&event);
                }
                () = barrier_passed(&mut self.input.barrier), if self.input.barrier.is_some() => {
                    self.drain_socket_events();
                    self.input.after_barrier();
                }
                () = sleep_until(self.input.retry_at), if self.input.retry_at.is_some() => {
                    self.input.retry_at = None;
                    self.send_pending().await;
                }
                item = recv_input(&mut self.input.receiver), if self.input.ready() => {
                    self.input.pending = Some(item.unwrap_or(Chunk::Eof));
                    self.send_pending().await;
                }
            }
        }
    }

    /// Handles one event of the execution; `Some(status)` once it has ended.
    async fn on_event(&mut self, event: &Event) -> Result<Option<i32>, Failure> {
        match event.kind {
            EventKind::Stdout | EventKind::Stderr => {
                let sink = if event.kind == EventKind::Stdout {
                    Sink::Stdout
                } else {
                    Sink::Stderr
                };
                let bytes =
                    output_bytes(event).map_err(|why| Failure::new(exit::UNAVAILABLE, why))?;
                if let Err(err) = write_out(sink, &bytes) {
                    let _ = self.execution.cancel().await;
                    return Err(write_failure(sink, &err));
                }
                Ok(None)
            }
            EventKind::NetworkBlocked => {
                say(&event.data);
                Ok(None)
            }
            EventKind::Gap => {
                say(&format!(
                    "warning: events {} to {} of the session were lost; output may be incomplete",
                    event.missed_from.unwrap_or_default(),
                    event.resume_from.unwrap_or_default().saturating_sub(1)
                ));
                Ok(None)
            }
            _ if event.is_terminal() => ending(event, self.cancelled).map(Some),
            _ => Ok(None),
        }
    }

    /// Sends the chunk of input waiting to go, then a barrier behind it.
    async fn send_pending(&mut self) {
        let Some(chunk) = &self.input.pending else {
            return;
        };
        let sent = match chunk {
            Chunk::Text(text) => self.execution.send_stdin(text.clone()).await,
            Chunk::Eof => self.execution.close_stdin().await,
        };
        match sent {
            Ok(()) => {
                self.input.refused_full = false;
                self.input.barrier = Some(self.barrier.start());
            }
            // The program ended, or the connection did: no more input to send.
            Err(_) => self.input.stop(),
        }
    }

    /// Takes the socket-stream events already received (the barrier's refusal came after
    /// them).
    fn drain_socket_events(&mut self) {
        if let Some(events) = &mut self.socket_events {
            while let Some(event) = events.try_recv() {
                self.input.on_refusal(&event);
            }
        }
    }
}

/// The status and message for the execution's terminal event.
pub(crate) fn ending(event: &Event, cancelled_by_us: bool) -> Result<i32, Failure> {
    match event.kind {
        EventKind::Completed => match (event.exit_code, event.signal) {
            (Some(code), _) if (0..=255).contains(&code) => Ok(code),
            (Some(code), _) => Err(Failure::new(
                1,
                format!("the program exited with status {code}"),
            )),
            (None, Some(signal)) => Ok(128 + signal.clamp(0, 127)),
            (None, None) => Ok(1),
        },
        EventKind::Cancelled if cancelled_by_us => Ok(exit::CANCELLED),
        EventKind::Cancelled => Err(Failure::new(
            exit::CANCELLED,
            format!(
                "the program was cancelled on the gateway: {}",
                message(event)
            ),
        )),
        EventKind::ResourceLimit => {
            let limit = event.limit.unwrap_or(LimitKind::Other);
            let code = if limit == LimitKind::Timeout {
                exit::TIMEOUT
            } else {
                exit::LIMIT
            };
            let what = if event.data.is_empty() {
                format!(
                    "{} limit of {} reached",
                    limit.as_str(),
                    event.limit_value.unwrap_or_default()
                )
            } else {
                event.data.clone()
            };
            Err(Failure::new(
                code,
                format!(
                    "the program was stopped: {what} (limit: {})",
                    limit.as_str()
                ),
            ))
        }
        _ if is_synthetic(event) => Err(Failure::new(
            exit::UNAVAILABLE,
            format!("the program's end is unknown: {}", message(event)),
        )),
        _ => {
            let code = event.code.unwrap_or(ErrorCode::Other);
            Err(Failure::new(
                exit::REFUSED,
                format!("{} ({})", message(event), code.as_str()),
            ))
        }
    }
}

fn message(event: &Event) -> &str {
    if event.data.is_empty() {
        event.kind.as_str()
    } else {
        &event.data
    }
}

/// A piece of the terminal's input.
#[derive(Debug)]
enum Chunk {
    Text(String),
    Eof,
}

/// The terminal's input on its way to the program.
struct Input {
    /// Chunks read from stdin by the reader thread; `None` once input is over (sent to
    /// the end, or the program no longer takes it).
    receiver: Option<mpsc::Receiver<Chunk>>,
    /// The chunk sent and not yet known to be accepted, or waiting to be sent again.
    pending: Option<Chunk>,
    /// The barrier behind the pending chunk, until it comes back.
    barrier: Option<BoxFuture<'static, ()>>,
    /// The gateway refused input with `stdin_full` since the pending chunk was sent.
    refused_full: bool,
    /// When to send the pending chunk again.
    retry_at: Option<Instant>,
    /// The pause before the next attempt after a `stdin_full`.
    backoff: Duration,
}

/// The first pause after a `stdin_full`; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(5);
const MAX_BACKOFF: Duration = Duration::from_millis(200);
/// Bytes of stdin read at once: one `stdin` frame at most (JSON escaping may make it six
/// times longer, still far below the gateway's 1 MiB frame limit).
const READ_BYTES: usize = 64 * 1024;

impl Input {
    /// Starts the thread that reads the terminal's stdin.
    ///
    /// A thread of its own rather than the runtime's: a blocking read of a terminal cannot
    /// be interrupted, and `sluice run` must be able to exit while one waits.
    fn start() -> Result<Self, Failure> {
        let (sender, receiver) = mpsc::channel(4);
        std::thread::Builder::new()
            .name("stdin".to_owned())
            .spawn(move || read_stdin(&sender))
            .map_err(|err| Failure::new(exit::IO, format!("cannot read stdin: {err}")))?;
        Ok(Self {
            receiver: Some(receiver),
            pending: None,
            barrier: None,
            refused_full: false,
            retry_at: None,
            backoff: FIRST_BACKOFF,
        })
    }

    /// True when the next chunk may be taken from stdin.
    fn ready(&self) -> bool {
        self.receiver.is_some() && self.pending.is_none()
    }

    /// Notes a refusal on the socket stream that concerns the input.
    fn on_refusal(&mut self, event: &Event) {
        match event.code {
            Some(ErrorCode::StdinFull) => self.refused_full = true,
            // The program closed its stdin or ended: it takes no more input.
            Some(ErrorCode::StdinClosed | ErrorCode::UnknownExecution) => self.stop(),
            _ => {}
        }
    }

    /// The barrier behind the pending chunk came back: it was accepted, or refused.
    fn after_barrier(&mut self) {
        self.barrier = None;
        if self.pending.is_none() {
            return;
        }
        if self.refused_full {
            self.refused_full = false;
            self.retry_at = Some(Instant::now() + self.backoff);
            self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
            return;
        }
        self.backoff = FIRST_BACKOFF;
        if matches!(self.pending.take(), Some(Chunk::Eof)) {
            self.receiver = None;
        }
    }

    /// Sends no more input.
    fn stop(&mut self) {
        self.receiver = None;
        self.pending = None;
        self.barrier = None;
        self.retry_at = None;
    }
}

/// Session-name `attach` frames used as barriers (see the module documentation).
struct Barrier {
    client: Client,
    /// A session name nobody else uses, so the `attach` is refused.
    session: String,
}

impl Barrier {
    /// Sends a barrier; the future resolves once the gateway has answered it.
    fn start(&self) -> BoxFuture<'static, ()> {
        let client = self.client.clone();
        let session = self.session.clone();
        Box::pin(async move {
            // Refused (the point), or the connection is gone: either way it is done.
            if let Ok(events) = client.attach(&session, None).await {
                // Somebody uses the name after all: stop reading their session.
                let _ = events.detach().await;
            }
        })
    }
}

/// Waits for the barrier in `slot`.
async fn barrier_passed(slot: &mut Option<BoxFuture<'static, ()>>) {
    match slot {
        Some(barrier) => barrier.await,
        None => std::future::pending().await,
    }
}

async fn next_socket_event(events: &mut Option<SocketEvents>) -> Option<Event> {
    match events {
        Some(events) => events.recv().await,
        None => std::future::pending().await,
    }
}

async fn recv_input(receiver: &mut Option<mpsc::Receiver<Chunk>>) -> Option<Chunk> {
    match receiver {
        Some(receiver) => receiver.recv().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Reads stdin to its end, sending it on as UTF-8 text, then [`Chunk::Eof`]. A read
/// error counts as the end of the input.
fn read_stdin(sender: &mpsc::Sender<Chunk>) {
    let mut stdin = std::io::stdin().lock();
    let mut buffer = vec![0_u8; READ_BYTES];
    let mut decoder = Utf8Decoder::default();
    loop {
        let read = match stdin.read(&mut buffer) {
            Ok(read) => read,
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(err) => {
                say(&format!(
                    "cannot read stdin any further: {err}; closing the program's"
                ));
                0
            }
        };
        let text = match buffer.get(..read) {
            Some(bytes) if read > 0 => decoder.feed(bytes),
            _ => decoder.finish(),
        };
        if !text.is_empty() && sender.blocking_send(Chunk::Text(text)).is_err() {
            return;
        }
        if read == 0 {
            let _ = sender.blocking_send(Chunk::Eof);
            return;
        }
    }
}

/// Turns a byte stream into UTF-8 text piece by piece: a character split between two
/// reads is kept whole, and bytes that are not UTF-8 become U+FFFD.
#[derive(Debug, Default)]
struct Utf8Decoder {
    /// The start of a character whose remaining bytes have not been read yet.
    partial: Vec<u8>,
}

impl Utf8Decoder {
    fn feed(&mut self, bytes: &[u8]) -> String {
        let mut input = std::mem::take(&mut self.partial);
        input.extend_from_slice(bytes);
        let mut text = String::with_capacity(input.len());
        let mut rest = input.as_slice();
        loop {
            match std::str::from_utf8(rest) {
                Ok(valid) => {
                    text.push_str(valid);
                    break;
                }
                Err(err) => {
                    let (valid, after) = rest.split_at(err.valid_up_to());
                    text.push_str(&String::from_utf8_lossy(valid));
                    match err.error_len() {
                        Some(bad) => {
                            text.push(char::REPLACEMENT_CHARACTER);
                            rest = after.get(bad..).unwrap_or_default();
                        }
                        None => {
                            self.partial = after.to_vec();
                            break;
                        }
                    }
                }
            }
        }
        text
    }

    /// The end of the input: a character left incomplete becomes U+FFFD.
    fn finish(&mut self) -> String {
        if std::mem::take(&mut self.partial).is_empty() {
            String::new()
        } else {
            char::REPLACEMENT_CHARACTER.to_string()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoder_keeps_split_characters_whole() {
        let mut decoder = Utf8Decoder::default();
        assert_eq!(decoder.feed(b"h\xc3"), "h");
        assert_eq!(decoder.feed(b"\xa9!"), "\u{e9}!");
        assert_eq!(decoder.feed(b"\xe2\x82"), "");
        assert_eq!(decoder.feed(b"\xac"), "\u{20ac}");
        assert_eq!(decoder.finish(), "");
    }

    #[test]
    fn decoder_replaces_invalid_bytes() {
        let mut decoder = Utf8Decoder::default();
        assert_eq!(decoder.feed(b"a\xffb\xc3"), "a\u{fffd}b");
        assert_eq!(decoder.finish(), "\u{fffd}");
        assert_eq!(decoder.feed(b"\xc3("), "\u{fffd}(");
    }

    #[test]
    fn languages_come_from_extensions() {
        assert_eq!(language_of(Path::new("a/b.py")).ok(), Some("python"));
        assert_eq!(language_of(Path::new("x.sh")).ok(), Some("sh"));
        assert_eq!(language_of(Path::new("x.bash")).ok(), Some("bash"));
        assert_eq!(language_of(Path::new("x.js")).ok(), Some("node"));
        let failure = language_of(Path::new("x.rb")).err().map(|f| f.code);
        assert_eq!(failure, Some(exit::USAGE));
        assert!(language_of(Path::new("Makefile")).is_err());
    }
}
