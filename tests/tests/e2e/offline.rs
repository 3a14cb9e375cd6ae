//! A program without the network (issue 15): it is told so, fast. Package managers give
//! up at the first failure (`PIP_RETRIES=0`, `NPM_CONFIG_FETCH_RETRIES=0` in its
//! environment), and a program that tried to reach another host gets one
//! `network_blocked` event beside its own error (loopback is down too, and counts);
//! nothing of the kind where the network is given, nor for an ordinary error.

use anyhow::{ensure, Context as _, Result};
use sluice_gateway::{Config, Network};
use sluice_protocol::{Event, EventKind};
use sluice_tests::{assert_stream_ok, request, text_of, RawSocket, TestGateway};

async fn events_of(
    socket: &mut RawSocket,
    id: &str,
    language: &str,
    code: &str,
) -> Result<Vec<Event>> {
    socket.execute(request(id, language, code)).await?;
    socket.events_until_terminal(id).await
}

/// What discovery says of the `python` runtime's network (a gateway that cannot take
/// it away gives it).
async fn python_has_network(gateway: &TestGateway) -> Result<bool> {
    let (status, text) =
        sluice_tests::http_get(gateway.addr(), sluice_protocol::RUNTIMES_PATH).await?;
    ensure!(status == 200, "{status} {text}");
    let catalog: sluice_protocol::Catalog = serde_json::from_str(&text)?;
    catalog
        .runtimes
        .iter()
        .find(|r| r.language == "python")
        .map(|r| r.network)
        .context("no python runtime")
}

fn blocked(events: &[Event]) -> usize {
    events
        .iter()
        .filter(|e| e.kind == EventKind::NetworkBlocked)
        .count()
}

/// Tries a name lookup and a connection to an outside address, and prints each error.
const REACH_OUT: &str = r#"
import socket, sys
for attempt in (lambda: socket.getaddrinfo("pypi.org", 443), lambda: socket.create_connection(("192.0.2.1", 443), timeout=2)):
    try:
        attempt()
        print("reached", file=sys.stderr)
    except OSError as error:
        print("failed:", error, file=sys.stderr)
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_program_without_the_network_is_told_so_once_and_package_managers_fail_fast() -> Result<()>
{
    let gateway = TestGateway::spawn().await;
    if python_has_network(&gateway).await? {
        sluice_tests::skip("this gateway cannot take the network from its programs");
        return gateway.shutdown().await;
    }
    let mut socket = gateway.raw().await?;
    let events = events_of(&mut socket, "out", "python", REACH_OUT).await?;
    let stderr = text_of(&events, EventKind::Stderr);
    ensure!(!stderr.contains("reached"), "{stderr}");
    ensure!(blocked(&events) == 1, "one notice: {events:#?}");
    let at = events
        .iter()
        .position(|e| e.kind == EventKind::NetworkBlocked)
        .context("the notice")?;
    let notice = &events[at];
    ensure!(
        notice.data.contains("no network") && notice.id.as_deref() == Some("out"),
        "{notice:?}"
    );
    ensure!(
        events[..at].iter().any(|e| e.kind == EventKind::Stderr),
        "after the program's own error: {events:#?}"
    );
    ensure!(events.last().is_some_and(|e| e.kind.is_terminal()));
    // Loopback is down too, and counts as an attempt; an error that is not the
    // network's says nothing.
    let events = events_of(
        &mut socket,
        "local",
        "python",
        "import socket, sys\ntry:\n    socket.create_connection(('127.0.0.1', 9), timeout=2)\nexcept OSError as e:\n    print('failed:', e, file=sys.stderr)",
    )
    .await?;
    ensure!(blocked(&events) == 1, "{events:#?}");
    let events = events_of(
        &mut socket,
        "ordinary",
        "python",
        "import sys\nprint('a warning', file=sys.stderr)\nraise SystemExit('an ordinary failure')",
    )
    .await?;
    ensure!(
        text_of(&events, EventKind::Stderr).contains("an ordinary failure"),
        "{events:#?}"
    );
    ensure!(blocked(&events) == 0, "{events:#?}");
    // Package managers are told not to retry.
    let events = events_of(
        &mut socket,
        "env",
        "sh",
        "echo \"$PIP_RETRIES $NPM_CONFIG_FETCH_RETRIES\"",
    )
    .await?;
    assert_eq!(text_of(&events, EventKind::Stdout), "0 0\n");
    // A request may still ask for retries.
    let mut asks = request("env2", "sh", "echo \"$PIP_RETRIES\"");
    asks.env.insert("PIP_RETRIES".into(), "3".into());
    socket.execute(asks).await?;
    let events = socket.events_until_terminal("env2").await?;
    assert_eq!(text_of(&events, EventKind::Stdout), "3\n");
    assert_stream_ok(socket.received());
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cells_are_told_of_their_own_attempts_only() -> Result<()> {
    let gateway = TestGateway::spawn().await;
    if python_has_network(&gateway).await? {
        sluice_tests::skip("this gateway cannot take the network from its programs");
        return gateway.shutdown().await;
    }
    let mut socket = gateway.raw().await?;
    {
        let mut run_cell = async |id: &str, language: &str, code: &str| -> Result<Vec<Event>> {
            socket
                .execute(sluice_protocol::ExecuteRequest {
                    language: language.into(),
                    ..sluice_tests::cell(&format!("nb-{language}"), id, code)
                })
                .await?;
            socket.events_until_terminal(id).await
        };
        let events = run_cell("try", "python", REACH_OUT).await?;
        ensure!(blocked(&events) == 1, "{events:#?}");
        // The interpreter's namespace outlives the cell: the next one is told only of its own.
        let events = run_cell(
            "quiet",
            "python",
            "import sys\nprint('just a warning', file=sys.stderr)",
        )
        .await?;
        ensure!(blocked(&events) == 0, "{events:#?}");
        let events = run_cell("again", "python", REACH_OUT).await?;
        ensure!(blocked(&events) == 1, "{events:#?}");
        // A Node cell's lookup.
        let events = run_cell(
            "node",
            "node",
            "await require('node:dns').promises.lookup('pypi.org').catch((e) => console.error('failed:', e.code))",
        )
        .await?;
        ensure!(
            text_of(&events, EventKind::Stderr).contains("failed:") && blocked(&events) == 1,
            "{events:#?}"
        );
    }
    assert_stream_ok(socket.received());
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_program_with_the_network_gets_neither_the_notice_nor_the_settings() -> Result<()> {
    let gateway = TestGateway::spawn_with(Config {
        network: Network::On,
        ..Config::default()
    })
    .await;
    let mut socket = gateway.raw().await?;
    // An address that routes nowhere from here, refused or timing out: no notice.
    let events = events_of(
        &mut socket,
        "env",
        "sh",
        "echo \"[$PIP_RETRIES] [$NPM_CONFIG_FETCH_RETRIES]\"; echo some error >&2",
    )
    .await?;
    assert_eq!(text_of(&events, EventKind::Stdout), "[] []\n");
    ensure!(blocked(&events) == 0, "{events:#?}");
    assert_stream_ok(socket.received());
    gateway.shutdown().await
}
