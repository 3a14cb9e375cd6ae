//! `sluice load` against a hostile or broken "gateway" (issue 13 review): the harness is
//! a client, so the worst a gateway may do to it is make it report nonsense. It must
//! neither hang forever nor panic. Each test bounds the run with a generous deadline.

use futures::{SinkExt as _, StreamExt as _};
use sluice_load::LoadArgs;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

/// Far longer than the runs below take when they end on their own (about 2 s).
const DEADLINE: Duration = Duration::from_secs(60);

/// One execution, a 1 s run, 1 s of drain: the run is over in about 2 s.
fn short_run(url: String) -> LoadArgs {
    LoadArgs {
        url: Some(url),
        executions: Some(1),
        duration: Some(Duration::from_secs(1)),
        drain_timeout: Some(Duration::from_secs(1)),
        no_progress: true,
        ..LoadArgs::default()
    }
}

/// Runs `args` in a task of its own; the error names a hang or a panic.
async fn run_bounded(args: LoadArgs) -> Result<(), String> {
    let scenario = sluice_load::scenario::resolve(&args).map_err(|e| e.to_string())?;
    let run = tokio::spawn(sluice_load::run(scenario, false));
    match tokio::time::timeout(DEADLINE, run).await {
        Err(_) => Err(format!("the run did not end within {DEADLINE:?}")),
        Ok(Err(join)) => Err(format!("the run panicked: {join}")),
        Ok(Ok(_report_or_error)) => Ok(()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_that_never_answers_the_upgrade_does_not_hang_the_run() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    // Accepts connections and holds them, never answering.
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    let result = run_bounded(short_run(format!("ws://{addr}/v1/ws"))).await;
    silent.abort();
    assert_eq!(result, Ok(()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn impossible_sequence_numbers_are_violations_not_a_panic() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let hostile = tokio::spawn(async move {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
            return;
        };
        // The first execute is `e0`; answer it with sequences no gateway sends.
        let _execute = ws.next().await;
        let max = u64::MAX;
        let frames = [
            format!(
                r#"{{"type":"started","id":"e0","session":"s","sequence":{max},"timestamp":1.0,"data":""}}"#
            ),
            format!(
                r#"{{"type":"stdout","id":"e0","session":"s","sequence":{max},"timestamp":1.0,"data":"x"}}"#
            ),
            format!(
                r#"{{"type":"gap","session":"s","sequence":0,"timestamp":1.0,"missed_from":{max},"resume_from":0}}"#
            ),
            r#"{"type":"stdout","id":"e0","session":"s","sequence":1,"timestamp":1.0,"data":"x"}"#
                .to_owned(),
        ];
        for frame in frames {
            if ws.send(Message::text(frame)).await.is_err() {
                return;
            }
        }
        // Then holds the socket open, reading what comes.
        while let Some(Ok(_)) = ws.next().await {}
    });
    let result = run_bounded(short_run(format!("ws://{addr}/v1/ws"))).await;
    hostile.abort();
    assert_eq!(result, Ok(()));
}
