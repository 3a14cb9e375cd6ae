//! `sluice attach`: prints the events of a session live, whoever runs programs in it.
//!
//! Replays what the gateway still buffers after `--since`, then follows the session; the
//! client reconnects on its own and resumes after the last event printed, so a dropped
//! connection neither loses nor repeats an event. One JSON object per line by default
//! (the event exactly as the gateway sent it), or one line of text per event.

use super::{exit, output_bytes, say, write_failure, write_out, Failure, GatewayArgs};
use super::{Interrupts, Sink};
use clap::{Args, ValueEnum};
use futures::StreamExt as _;
use sluice_client::protocol::{ErrorCode, Event, EventKind};
use sluice_client::{is_synthetic, ClientError};

/// The exit statuses and formats, shown at the end of `sluice attach --help`.
pub(crate) const AFTER_HELP: &str = "\
Output (--format json, the default): one event per line, the JSON object the gateway
sent (see PROTOCOL.md); stdout/stderr data as the session's executions asked for it
(base64 when \"encoding\" says so).
Output (--format text): one line per event: SEQUENCE ID TYPE DETAILS, with program
output decoded and quoted, for example
  3 run-1 stdout \"hello\\n\"
  4 run-1 completed exit_code=0

Exit status:
  0        --until-terminal: an execution ended
  126      the gateway refused: no such session is open (it never was, or it ended),
           or --since is past its last event
  130      stopped by Ctrl-C (or SIGTERM, SIGHUP)
  69       the gateway cannot be reached, or the connection was lost for good
  77       the gateway refused the credential (--token or SLUICE_TOKEN): missing,
           unknown or expired
  74       writing to stdout failed (141 if the reader went away)

Examples:
  sluice attach notebook-7
  sluice attach notebook-7 --since 42 --format text";

/// Print a session's events live.
#[derive(Debug, Args)]
pub(crate) struct AttachArgs {
    /// The session: a name (as given to `sluice run --session`) or a gateway-made
    /// session id.
    #[arg(value_name = "SESSION")]
    session: String,

    /// Print only the events after this sequence number [default: every event the
    /// gateway still buffers].
    #[arg(long, value_name = "N")]
    since: Option<u64>,

    /// How to print events.
    #[arg(long, value_enum, default_value_t = Format::Json)]
    format: Format,

    /// Exit (status 0) after printing the first terminal event of an execution
    /// (completed, cancelled, resource_limit or error).
    #[arg(long)]
    until_terminal: bool,

    #[command(flatten)]
    gateway: GatewayArgs,
}

/// How `sluice attach` prints an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    /// One JSON object per line, as the gateway sent it.
    Json,
    /// One line of text per event, for people.
    Text,
}

/// Runs `sluice attach` and returns the status to exit with.
pub(crate) fn main(args: AttachArgs) -> i32 {
    super::block_on(async move {
        match attach(args).await {
            Ok(code) => code,
            Err(failure) => failure.report(),
        }
    })
}

async fn attach(args: AttachArgs) -> Result<i32, Failure> {
    let mut interrupts = Interrupts::install()?;
    let client = tokio::select! {
        client = args.gateway.connect() => client?,
        () = interrupts.recv() => return Ok(exit::CANCELLED),
    };
    let attached = tokio::select! {
        attached = client.attach(&args.session, args.since) => attached,
        () = interrupts.recv() => return Ok(exit::CANCELLED),
    };
    let mut events = attached.map_err(|err| match err {
        ClientError::AttachRefused { code, message, .. } => Failure::new(
            exit::REFUSED,
            format!(
                "cannot attach to session {:?}: {message} ({code})",
                args.session
            ),
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
    let result = loop {
        tokio::select! {
            () = interrupts.recv() => break Ok(exit::CANCELLED),
            event = events.next() => {
                let Some(event) = event else {
                    break Err(Failure::new(exit::UNAVAILABLE, "the session's stream ended"));
                };
                if is_synthetic(&event) && event.kind == EventKind::Error {
                    let code = if event.code == Some(ErrorCode::UnknownSession) {
                        exit::REFUSED
                    } else {
                        exit::UNAVAILABLE
                    };
                    break Err(Failure::new(code, event.data));
                }
                let line = match args.format {
                    Format::Json => serde_json::to_string(&event)
                        .unwrap_or_else(|err| format!("{{\"unprintable_event\":{:?}}}", err.to_string())),
                    Format::Text => text_line(&event),
                };
                if let Err(err) = write_out(Sink::Stdout, format!("{line}\n").as_bytes()) {
                    break Err(write_failure(Sink::Stdout, &err));
                }
                if args.until_terminal && event.is_terminal() {
                    break Ok(0);
                }
            }
        }
    };
    drop(events);
    if tokio::time::timeout(std::time::Duration::from_secs(3), client.close())
        .await
        .is_err()
    {
        say("warning: the gateway did not answer the close in time");
    }
    result
}

/// One line of text for `event`: `SEQUENCE ID TYPE DETAILS`.
fn text_line(event: &Event) -> String {
    let id = event.id.as_deref().unwrap_or("-");
    let details = match event.kind {
        EventKind::Started => event
            .pid
            .map(|pid| format!("pid={pid}"))
            .unwrap_or_default(),
        EventKind::Stdout | EventKind::Stderr => match output_bytes(event) {
            Ok(bytes) => format!("{:?}", String::from_utf8_lossy(&bytes)),
            Err(why) => format!("(undecodable: {why})"),
        },
        EventKind::Completed => match (event.exit_code, event.signal) {
            (Some(code), _) => format!("exit_code={code}"),
            (None, Some(signal)) => format!("signal={signal}"),
            (None, None) => String::new(),
        },
        EventKind::ResourceLimit => format!(
            "limit={} value={} {:?}",
            event.limit.map_or("?", |limit| limit.as_str()),
            event.limit_value.unwrap_or_default(),
            event.data
        ),
        EventKind::Error => format!(
            "code={} {:?}",
            event.code.map_or("?", ErrorCode::as_str),
            event.data
        ),
        EventKind::Gap => format!(
            "missed={}..{} {:?}",
            event.missed_from.unwrap_or_default(),
            event.resume_from.unwrap_or_default().saturating_sub(1),
            event.data
        ),
        _ if event.data.is_empty() => String::new(),
        _ => format!("{:?}", event.data),
    };
    let line = format!("{} {id} {} {details}", event.sequence, event.kind);
    line.trim_end().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_client::protocol::Encoding;

    fn event(kind: EventKind, data: &str) -> Event {
        let mut event = Event::new(kind, Some("run-1".into()), data);
        event.sequence = 3;
        event.session = Some("s".into());
        event
    }

    #[test]
    fn text_lines() {
        let mut out = event(EventKind::Stdout, "aGkK");
        out.encoding = Some(Encoding::Base64);
        assert_eq!(text_line(&out), "3 run-1 stdout \"hi\\n\"");
        let mut done = event(EventKind::Completed, "");
        done.exit_code = Some(0);
        assert_eq!(text_line(&done), "3 run-1 completed exit_code=0");
        let mut killed = event(EventKind::Completed, "");
        killed.signal = Some(9);
        assert_eq!(text_line(&killed), "3 run-1 completed signal=9");
        let mut error = event(EventKind::Error, "no cobol");
        error.code = Some(ErrorCode::UnknownLanguage);
        assert_eq!(
            text_line(&error),
            "3 run-1 error code=unknown_language \"no cobol\""
        );
    }
}
