//! The gateway's log at the default level, as `sluice serve --log-json` writes it: one
//! line when an execution starts and one when it ends (with its outcome and duration),
//! one per refusal (with its error code), and every line about an execution carrying
//! its tenant, session and id (the `execution` span's fields).

mod common;

use anyhow::{ensure, Result};
use common::{message, Serving};
use sluice_protocol::EventKind;
use sluice_tests::{request, RawSocket};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executions_and_refusals_each_leave_a_line_that_names_them() -> Result<()> {
    let serving = Serving::start(&[])?;
    let (lines, url) = (&serving, &serving.url);

    let mut socket = RawSocket::connect(url, None).await?;
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
        let line = lines.next_line(|l| message(l) == wanted)?;
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
    let refusal =
        lines.next_line(|l| message(l) == "refused" && l["fields"]["id"] == "refused-one")?;
    ensure!(refusal["fields"]["code"] == "unknown_language", "{refusal}");
    ensure!(refusal["level"] == "INFO", "{refusal}");
    Ok(())
}
