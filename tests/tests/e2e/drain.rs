//! Graceful drain: the first shutdown signal refuses new connections and executions
//! (`shutting_down`, `/readyz` 503) while running executions may finish; what still runs
//! at `drain_timeout` is cancelled with its terminal event delivered and every socket
//! closes with 1001; a second signal ends the gateway without waiting.

use anyhow::{ensure, Context as _, Result};
use futures::channel::mpsc;
use sluice_gateway::Config;
use sluice_protocol::{ErrorCode, EventKind};
use sluice_tests::{
    forced_isolation, http_get, patience, poll_until, refused_upgrade, request, unique_marker,
    wait_until_gone, wait_until_running, within, RawSocket,
};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// A gateway stopped by the signals sent on the returned channel.
struct Draining {
    addr: SocketAddr,
    signals: mpsc::UnboundedSender<sluice_gateway::Signal>,
    task: JoinHandle<Result<(), sluice_gateway::GatewayError>>,
}

impl Draining {
    async fn start(mut config: Config) -> Result<Self> {
        if let Some(level) = forced_isolation() {
            config.isolation = level;
        }
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (signals, stream) = mpsc::unbounded();
        let task = tokio::spawn(sluice_gateway::run_with_signals(listener, config, stream));
        Ok(Self {
            addr,
            signals,
            task,
        })
    }

    fn url(&self) -> String {
        format!("ws://{}{}", self.addr, sluice_protocol::WS_PATH)
    }

    fn signal(&self) -> Result<()> {
        self.signals
            .unbounded_send(sluice_gateway::Signal::Stop)
            .context("the gateway no longer takes signals")
    }

    /// Waits until `/readyz` says the gateway drains: from then on it refuses new work.
    async fn until_draining(&self) -> Result<()> {
        let body = poll_until(
            "/readyz answers 503 after the shutdown signal",
            async || {
                let (status, body) = http_get(self.addr, "/readyz").await?;
                ensure!(status == 200 || status == 503, "/readyz: {status} {body}");
                Ok((status == 503).then_some(body))
            },
        )
        .await?;
        ensure!(body == "draining\n", "{body}");
        Ok(())
    }

    async fn stopped(self) -> Result<()> {
        within("the gateway to stop", self.task)
            .await?
            .context("the gateway task panicked")?
            .context("the gateway returned an error")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_lets_a_running_program_finish_and_refuses_new_work() -> Result<()> {
    let gateway = Draining::start(Config {
        // Long: the drain must end because the program did, not because time ran out.
        drain_timeout: patience() * 4,
        ..Config::default()
    })
    .await?;
    let mut socket = RawSocket::connect(&gateway.url(), None).await?;
    socket
        .execute(request(
            "reader",
            "sh",
            "echo up; read line; echo finished $line",
        ))
        .await?;
    socket.wait_for_stdout("reader", "up").await?;
    gateway.signal()?;
    gateway.until_draining().await?;
    // New executions on an open socket, and new sockets, are refused.
    socket.execute(request("late", "sh", "echo never")).await?;
    let refusal = socket.events_until_terminal("late").await?;
    let last = refusal.last().context("no refusal")?;
    ensure!(last.code == Some(ErrorCode::ShuttingDown), "{last:?}");
    let (status, body) = refused_upgrade(&gateway.url(), &[]).await?;
    ensure!(
        status == 503 && body.starts_with("shutting_down"),
        "{status} {body}"
    );
    // The running program still gets its input and ends on its own.
    socket.stdin("reader", Some("in time\n"), false).await?;
    let events = socket.events_until_terminal("reader").await?;
    let last = events.last().context("no events")?;
    ensure!(
        last.kind == EventKind::Completed && last.exit_code == Some(0),
        "{last:?}"
    );
    ensure!(
        sluice_tests::text_of(&events, EventKind::Stdout) == "finished in time\n",
        "{events:?}"
    );
    // With nothing left running the drain is over: the socket closes as going away.
    let close = socket.closed().await?.context("no close frame")?;
    ensure!(u16::from(close.code) == 1001, "{close:?}");
    gateway.stopped().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_program_past_the_drain_timeout_is_cancelled_with_its_terminal_event() -> Result<()> {
    let gateway = Draining::start(Config {
        drain_timeout: Duration::from_millis(300),
        ..Config::default()
    })
    .await?;
    let mut socket = RawSocket::connect(&gateway.url(), None).await?;
    socket
        .execute(request("long", "sh", "echo up; sleep 600"))
        .await?;
    socket.wait_for_stdout("long", "up").await?;
    gateway.signal()?;
    let events = socket.events_until_terminal("long").await?;
    let last = events.last().context("no events")?;
    ensure!(last.kind == EventKind::Cancelled, "{last:?}");
    let close = socket.closed().await?.context("no close frame")?;
    ensure!(u16::from(close.code) == 1001, "{close:?}");
    gateway.stopped().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_ends_the_drain_at_once() -> Result<()> {
    let marker = unique_marker("hurry");
    let gateway = Draining::start(Config {
        // Without the second signal this test would outlast its patience.
        drain_timeout: Duration::from_secs(3_600),
        ..Config::default()
    })
    .await?;
    let mut socket = RawSocket::connect(&gateway.url(), None).await?;
    let mut long = request("long", "sh", "echo up; sleep 3600");
    long.args = vec![marker.clone()];
    socket.execute(long).await?;
    socket.wait_for_stdout("long", "up").await?;
    wait_until_running(&marker).await?;
    gateway.signal()?;
    gateway.until_draining().await?;
    gateway.signal()?;
    gateway.stopped().await?;
    wait_until_gone(&marker).await
}
