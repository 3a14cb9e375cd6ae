//! The end-to-end test harness: a real gateway on a loopback port, a raw WebSocket for
//! the frames no well-behaved client sends, and the checks every test applies to every
//! stream it saw.
//!
//! Nothing here sleeps to synchronise. Tests wait for events (each wait bounded by
//! [`patience`], so a hang fails instead of blocking the suite), and use [`eventually`]
//! only for what no event announces: processes appearing in or leaving `/proc`.
//!
//! How long a wait may take scales with `SLUICE_TEST_PATIENCE`, a factor (default 1):
//! `SLUICE_TEST_PATIENCE=3` gives every wait of the suite three times as long, for a
//! machine much slower or busier than the two loaded cores the defaults are made for.
//! Only the bounds on waiting scale ([`patience`], and [`patient`] for a test's own
//! bound); the gateway's timeouts that tests exercise do not.

use anyhow::{anyhow, bail, ensure, Context as _, Result};
use futures::{SinkExt as _, StreamExt as _};
use sluice_client::{Client, Execution, Outcome};
use sluice_gateway::{Config, GatewayError, HostReport, Isolation};
use sluice_protocol::{
    AckFrame, AttachFrame, CancelFrame, ClientFrame, DetachFrame, Encoding, ErrorCode, Event,
    EventKind, ExecuteRequest, StdinFrame,
};
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::handshake::client::Request;
use tokio_tungstenite::tungstenite::http::header::{ORIGIN, SEC_WEBSOCKET_PROTOCOL};
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub mod proxy;

/// How long any single wait may take before the test fails, before scaling: generous on
/// purpose, as the suite must pass on a loaded two-core machine, and a healthy wait ends
/// long before.
const BASE_PATIENCE: Duration = Duration::from_secs(30);

/// How long any single wait may take before the test fails: 30 s times
/// `SLUICE_TEST_PATIENCE` (see the crate's documentation).
pub fn patience() -> Duration {
    patient(BASE_PATIENCE)
}

/// `bound` (a test's own bound on waiting for something) times `SLUICE_TEST_PATIENCE`.
///
/// # Panics
///
/// When `SLUICE_TEST_PATIENCE` is set to anything but a positive number: a suite told to
/// be patient must not silently run with the default.
pub fn patient(bound: Duration) -> Duration {
    static FACTOR: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    let factor = *FACTOR.get_or_init(|| match std::env::var("SLUICE_TEST_PATIENCE") {
        Err(_) => 1.0,
        Ok(text) => match text.trim().parse::<f64>() {
            Ok(factor) if factor.is_finite() && factor > 0.0 => factor,
            _ => panic!("SLUICE_TEST_PATIENCE={text:?}: expected a positive factor, such as 3"),
        },
    });
    bound.mul_f64(factor)
}

/// How often [`eventually`] re-checks its condition.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Runs `future`, failing with a message naming `what` if it takes longer than
/// [`patience`].
pub async fn within<T>(what: &str, future: impl Future<Output = T>) -> Result<T> {
    let patience = patience();
    tokio::time::timeout(patience, future)
        .await
        .map_err(|_| anyhow!("timed out after {patience:?} waiting for {what}"))
}

// ---------------------------------------------------------------------------------------
// The gateway under test
// ---------------------------------------------------------------------------------------

/// A gateway served in-process on the test's runtime, on a fresh loopback port.
///
/// Dropping it signals shutdown without waiting; [`TestGateway::shutdown`] signals and
/// waits until `run` has returned (every execution cancelled and reaped).
#[derive(Debug)]
pub struct TestGateway {
    addr: SocketAddr,
    /// Sending half of the shutdown signal. `run`'s shutdown future holds the receiver and
    /// resolves when this is used or dropped, so dropping the gateway shuts it down.
    stop: Option<oneshot::Sender<()>>,
    /// The task running `sluice_gateway::run`; yields what `run` returned.
    task: Option<JoinHandle<Result<(), GatewayError>>>,
}

impl TestGateway {
    /// A gateway with the default configuration.
    pub async fn spawn() -> Self {
        Self::spawn_with(Config::default()).await
    }

    /// A gateway with `config`. The listener is bound before this returns, so clients may
    /// connect at once (the handshake waits until the gateway serves).
    pub async fn spawn_with(mut config: Config) -> Self {
        log_when_asked();
        if let Some(level) = forced_isolation() {
            config.isolation = level;
        }
        // The warm pool starts interpreters in the background, which tests that count
        // processes, jails or metrics do not expect: off unless a test asks for it (or
        // `SLUICE_TEST_WARM_POOL=N` turns it on for every test gateway).
        if config.warm_pool.is_none() {
            config.warm_pool = Some(forced_warm_pool().unwrap_or(0));
        }
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port for the test gateway");
        let addr = listener
            .local_addr()
            .expect("the test gateway's listener has an address");
        let (stop, stopped) = oneshot::channel::<()>();
        let shutdown = async move {
            // Sent or dropped: either way, shut down.
            let _ = stopped.await;
        };
        let task = tokio::spawn(async move {
            let result = sluice_gateway::run(listener, config, shutdown).await;
            #[allow(clippy::print_stderr)] // for the person reading a failed test's output
            if let Err(err) = &result {
                // Said at once: a test that fails to connect shows why the gateway is gone.
                eprintln!("the test gateway stopped with an error: {err}");
            }
            result
        });
        Self {
            addr,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// The address the gateway listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The WebSocket endpoint, `ws://127.0.0.1:PORT/v1/ws`.
    pub fn url(&self) -> String {
        format!("ws://{}{}", self.addr, sluice_protocol::WS_PATH)
    }

    /// A connected Rust client.
    pub async fn client(&self) -> Result<Client> {
        let url = self.url();
        within("the client to connect", Client::connect(&url))
            .await?
            .with_context(|| format!("connecting the client to {url}"))
    }

    /// A connected raw socket that offers no subprotocol.
    pub async fn raw(&self) -> Result<RawSocket> {
        RawSocket::connect(&self.url(), None).await
    }

    /// A connected raw socket from the loopback address `source` (any of 127.0.0.0/8),
    /// so the gateway sees a peer other than 127.0.0.1.
    pub async fn raw_from(&self, source: std::net::Ipv4Addr) -> Result<RawSocket> {
        let url = self.url();
        let tcp = connect_from(source, self.addr).await?;
        let handshake = tokio_tungstenite::client_async(url.as_str(), MaybeTlsStream::Plain(tcp));
        let (ws, _) = within("the WebSocket handshake", handshake)
            .await?
            .with_context(|| format!("connecting a raw socket to {url} from {source}"))?;
        Ok(RawSocket {
            ws,
            received: Vec::new(),
            subprotocol: None,
            ending: None,
            recording: true,
        })
    }

    /// Signals shutdown and waits until `run` returns, failing if it returned an error or
    /// took longer than [`patience`].
    pub async fn shutdown(mut self) -> Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let Some(task) = self.task.take() else {
            return Ok(());
        };
        within("the gateway to shut down", task)
            .await?
            .context("the gateway task panicked")?
            .context("the gateway returned an error")
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        // Dropping the sender resolves the shutdown future; the task finishes on its own.
        self.stop.take();
    }
}

/// A TCP connection to `addr` from the local address `source` (port chosen by the
/// kernel).
pub async fn connect_from(source: std::net::Ipv4Addr, addr: SocketAddr) -> Result<TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket
        .bind(SocketAddr::from((source, 0)))
        .with_context(|| format!("binding {source} as the source address"))?;
    let tcp = within("the TCP connection", socket.connect(addr)).await??;
    tcp.set_nodelay(true)?;
    Ok(tcp)
}

// ---------------------------------------------------------------------------------------
// Frames
// ---------------------------------------------------------------------------------------

/// The isolation level every test gateway is forced to by `SLUICE_TEST_ISOLATION`
/// (`none`, `cgroups`, ...): how the suite checks that tests needing a stronger layer
/// skip with their reason and that the rlimit-enforced limits hold without it.
pub fn forced_isolation() -> Option<sluice_gateway::Isolation> {
    let level = std::env::var("SLUICE_TEST_ISOLATION").ok()?;
    match level.parse() {
        Ok(level) => Some(level),
        Err(why) => panic!("SLUICE_TEST_ISOLATION: {why}"),
    }
}

/// The warm pool size `SLUICE_TEST_WARM_POOL` gives every test gateway that does not
/// set one itself: how the whole suite can be run against warm starts.
pub fn forced_warm_pool() -> Option<usize> {
    let size = std::env::var("SLUICE_TEST_WARM_POOL").ok()?;
    match size.parse() {
        Ok(size) => Some(size),
        Err(why) => panic!("SLUICE_TEST_WARM_POOL: {why}"),
    }
}

/// What this host lets a test gateway enforce: [`HostReport::probe`], minus the layers
/// `SLUICE_TEST_ISOLATION` turns off.
pub fn host_report() -> HostReport {
    let mut report = HostReport::probe();
    let forced = "turned off by SLUICE_TEST_ISOLATION";
    match forced_isolation() {
        Some(Isolation::None) => {
            report.memory = None;
            report.processes = None;
            report.kill_tree = None;
            report.network = None;
            report.cpu_share = None;
            report.namespaces = Err(forced.into());
        }
        Some(Isolation::Cgroups) => report.namespaces = Err(forced.into()),
        _ => {}
    }
    report
}

/// Sends the gateway's log to the test output when `SLUICE_TEST_LOG` holds a filter
/// (`SLUICE_TEST_LOG=sluice_gateway=debug cargo test ...`), for chasing a failure.
fn log_when_asked() {
    if let Ok(filter) = std::env::var("SLUICE_TEST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
    }
}

/// Says on stderr, on one line, that the running test skips what it checks (or a part
/// of it) on this host and why: `skipped NAME: WHY`, the test named as libtest names it
/// (see [`current_test_name`]). `scripts/test.sh` and the VM check show these lines.
#[allow(clippy::print_stderr)] // the skip reason is for the person reading the test run
pub fn skip(why: impl fmt::Display) {
    let why = why.to_string();
    let why = why.trim_end().replace(['\n', '\r'], " ");
    eprintln!("skipped {}: {why}", current_test_name());
}

/// The running test's name (`isolation::a_program_runs_...`): libtest runs each test on a
/// thread named after it, and a `#[tokio::test]`'s own body runs on that thread. Called
/// from elsewhere (a task the test spawned), the name is not known.
pub fn current_test_name() -> String {
    match std::thread::current().name() {
        Some(name) if name != "main" && !name.starts_with("tokio-") => name.to_owned(),
        _ => "(a test on another thread)".to_owned(),
    }
}

/// True when the tests run as root: a root gateway's programs drop to the sandbox user,
/// and only root may keep session workspaces (a tmpfs each).
pub fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata("/proc/self").is_ok_and(|meta| meta.uid() == 0)
}

/// A python cell `id` in the persistent session `session`.
pub fn cell(session: &str, id: &str, code: &str) -> ExecuteRequest {
    ExecuteRequest {
        session: Some(session.into()),
        persistent: true,
        ..request(id, "python", code)
    }
}

/// An `execute` request with everything optional left out.
pub fn request(id: &str, language: &str, code: &str) -> ExecuteRequest {
    ExecuteRequest {
        id: id.to_owned(),
        language: language.to_owned(),
        code: code.to_owned(),
        ..ExecuteRequest::default()
    }
}

/// A fresh execution id for probes, unique within the test process.
fn probe_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!("probe-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

// ---------------------------------------------------------------------------------------
// The raw socket
// ---------------------------------------------------------------------------------------

/// An upgrade request for `url` carrying `headers`.
fn request_with_headers(url: &str, headers: &[(&str, &str)]) -> Result<Request> {
    let mut request = url.into_client_request()?;
    for (name, value) in headers {
        request.headers_mut().append(
            tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(name.as_bytes())?,
            HeaderValue::from_str(value)?,
        );
    }
    Ok(request)
}

/// The HTTP status and body with which the gateway refuses an upgrade request for `url`
/// carrying `headers`; an error if it upgrades instead.
pub async fn refused_upgrade(url: &str, headers: &[(&str, &str)]) -> Result<(u16, String)> {
    let request = request_with_headers(url, headers)?;
    match within(
        "the WebSocket handshake",
        tokio_tungstenite::connect_async(request),
    )
    .await?
    {
        Ok(_) => bail!("the gateway upgraded a request it should have refused"),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            let body = response
                .body()
                .as_deref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            Ok((response.status().as_u16(), body))
        }
        Err(other) => Err(other).context("the handshake failed without an HTTP answer"),
    }
}

/// A WebSocket to the gateway with no client logic in between: it sends exactly the
/// frames it is given and records every event it receives, in arrival order.
pub struct RawSocket {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// Every event received so far, in arrival order (for [`assert_stream_ok`]).
    received: Vec<Event>,
    /// The subprotocol the gateway selected in its handshake answer.
    subprotocol: Option<String>,
    /// How the socket ended without a close frame, once [`RawSocket::closed`] saw it.
    ending: Option<String>,
    /// Off for tests that stream more than is worth keeping: events are not recorded.
    recording: bool,
}

impl fmt::Debug for RawSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawSocket")
            .field("received", &self.received.len())
            .field("subprotocol", &self.subprotocol)
            .finish_non_exhaustive()
    }
}

impl RawSocket {
    /// Connects to `url`, offering `subprotocol` when given.
    pub async fn connect(url: &str, subprotocol: Option<&str>) -> Result<Self> {
        let mut request = url.into_client_request()?;
        if let Some(offer) = subprotocol {
            request
                .headers_mut()
                .insert(SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_str(offer)?);
        }
        Self::handshake(url, request).await
    }

    /// Connects to `url` with extra request headers (a credential, an `Origin`, a
    /// subprotocol list).
    pub async fn connect_with_headers(url: &str, headers: &[(&str, &str)]) -> Result<Self> {
        Self::handshake(url, request_with_headers(url, headers)?).await
    }

    /// Connects to `url` with an `Origin` header, as a browser page at `origin` would.
    pub async fn connect_with_origin(url: &str, origin: &str) -> Result<Self> {
        let mut request = url.into_client_request()?;
        request
            .headers_mut()
            .insert(ORIGIN, HeaderValue::from_str(origin)?);
        Self::handshake(url, request).await
    }

    async fn handshake(url: &str, request: Request) -> Result<Self> {
        let (ws, response) = within(
            "the WebSocket handshake",
            tokio_tungstenite::connect_async(request),
        )
        .await?
        .with_context(|| format!("connecting a raw socket to {url}"))?;
        let subprotocol = response
            .headers()
            .get(SEC_WEBSOCKET_PROTOCOL)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        Ok(Self {
            ws,
            received: Vec::new(),
            subprotocol,
            ending: None,
            recording: true,
        })
    }

    /// The client end's local address (to find the connection in `/proc/net/tcp`).
    pub fn local_addr(&self) -> Result<SocketAddr> {
        match self.ws.get_ref() {
            MaybeTlsStream::Plain(tcp) => Ok(tcp.local_addr()?),
            _ => bail!("not a plain TCP socket"),
        }
    }

    /// The subprotocol the gateway selected, if any.
    pub fn subprotocol(&self) -> Option<&str> {
        self.subprotocol.as_deref()
    }

    /// Stops recording received events (for streams too large to keep).
    pub fn stop_recording(&mut self) {
        self.recording = false;
    }

    /// Every event received so far, in arrival order.
    pub fn received(&self) -> &[Event] {
        &self.received
    }

    /// Sends one text frame, exactly as given.
    pub async fn send_text(&mut self, text: impl Into<String>) -> Result<()> {
        let text: String = text.into();
        within("a text frame to be sent", self.ws.send(Message::text(text)))
            .await?
            .context("sending a text frame")
    }

    /// Sends a JSON value as one text frame.
    pub async fn send_json(&mut self, value: &serde_json::Value) -> Result<()> {
        self.send_text(value.to_string()).await
    }

    /// Sends a binary frame.
    pub async fn send_binary(&mut self, bytes: Vec<u8>) -> Result<()> {
        within(
            "a binary frame to be sent",
            self.ws.send(Message::binary(bytes)),
        )
        .await?
        .context("sending a binary frame")
    }

    /// Sends a well-formed client frame.
    pub async fn send_frame(&mut self, frame: &ClientFrame) -> Result<()> {
        self.send_text(frame.to_json()).await
    }

    /// Writes `bytes` to the TCP connection as they are, under the WebSocket layer: for
    /// frames no WebSocket library sends, such as one that never ends.
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<()> {
        within(
            "raw bytes to be written",
            self.ws.get_mut().write_all(bytes),
        )
        .await?
        .context("writing raw bytes")?;
        within("raw bytes to be flushed", self.ws.get_mut().flush())
            .await?
            .context("flushing raw bytes")
    }

    /// Starts a masked text frame that announces `announced` payload bytes and sends
    /// only the first `sent` of them: a message the gateway must hold until it is
    /// complete, which it never will be.
    pub async fn send_unfinished_frame(&mut self, announced: u64, sent: usize) -> Result<()> {
        let mut bytes = vec![0x81, 0x80 | 127];
        bytes.extend_from_slice(&announced.to_be_bytes());
        bytes.extend_from_slice(&[1, 2, 3, 4]); // the mask
        bytes.resize(bytes.len() + sent, b'x');
        self.send_raw(&bytes).await
    }

    /// Sends an `execute` frame.
    pub async fn execute(&mut self, request: ExecuteRequest) -> Result<()> {
        self.send_frame(&ClientFrame::Execute(request)).await
    }

    /// Sends a `stdin` frame.
    pub async fn stdin(&mut self, id: &str, data: Option<&str>, eof: bool) -> Result<()> {
        self.send_frame(&ClientFrame::Stdin(StdinFrame {
            id: id.to_owned(),
            session: None,
            data: data.map(str::to_owned),
            eof,
        }))
        .await
    }

    /// Sends a `cancel` frame.
    pub async fn cancel(&mut self, id: &str) -> Result<()> {
        self.send_frame(&ClientFrame::Cancel(CancelFrame {
            id: id.to_owned(),
            session: None,
        }))
        .await
    }

    /// Sends an `attach` frame.
    pub async fn attach(&mut self, session: &str, since: Option<u64>) -> Result<()> {
        self.send_frame(&ClientFrame::Attach(AttachFrame {
            session: session.to_owned(),
            since,
            workspace: false,
            ack: false,
        }))
        .await
    }

    /// Waits for a `started` event, then until a process marked `marker` runs: the
    /// program is really up (not only spawned), so what the test does next hits it.
    pub async fn started_and_running(&mut self, marker: &str) -> Result<Event> {
        let started = self
            .next_event_where(|e| e.kind == EventKind::Started)
            .await?;
        wait_until_running(marker).await?;
        Ok(started)
    }

    /// Sends an `ack` frame.
    pub async fn ack(&mut self, session: &str, sequence: u64) -> Result<()> {
        self.send_frame(&ClientFrame::Ack(AckFrame {
            session: session.to_owned(),
            sequence,
        }))
        .await
    }

    /// Sends a `detach` frame.
    pub async fn detach(&mut self, session: &str) -> Result<()> {
        self.send_frame(&ClientFrame::Detach(DetachFrame {
            session: session.to_owned(),
        }))
        .await
    }

    /// The next event, decoded and checked with `Event::decode`. Fails if none arrives
    /// within [`patience`], if the socket closes, or if the gateway sends anything else.
    pub async fn next_event(&mut self) -> Result<Event> {
        loop {
            let message = within("the next event", self.ws.next()).await?;
            match message {
                Some(Ok(Message::Text(text))) => {
                    let event = Event::decode(text.as_str())
                        .map_err(|e| anyhow!("the gateway sent an invalid event: {e}: {text}"))?;
                    if self.recording {
                        self.received.push(event.clone());
                    }
                    return Ok(event);
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Close(frame))) => bail!("the socket closed: {frame:?}"),
                Some(Ok(other)) => bail!("the gateway sent a non-text frame: {other:?}"),
                Some(Err(err)) => bail!("reading the socket failed: {err}"),
                None => bail!("the socket ended"),
            }
        }
    }

    /// Reads events (all recorded) until one satisfies `wanted`, and returns it.
    pub async fn next_event_where(&mut self, wanted: impl Fn(&Event) -> bool) -> Result<Event> {
        loop {
            let event = self.next_event().await?;
            if wanted(&event) {
                return Ok(event);
            }
        }
    }

    /// The next refusal on the socket stream (`session: null`), skipping (and recording)
    /// other events.
    pub async fn next_socket_error(&mut self) -> Result<Event> {
        let event = self.next_event_where(|e| e.session.is_none()).await?;
        ensure!(
            event.kind == EventKind::Error,
            "a socket-stream event that is not an error: {event:?}"
        );
        Ok(event)
    }

    /// Runs an execute whose `files` must be refused and returns its terminal `error`;
    /// fails if it ends otherwise, or if its program (which should print) ran.
    pub async fn files_refused(&mut self, request: ExecuteRequest) -> Result<Event> {
        let id = request.id.clone();
        self.execute(request).await?;
        let events = self.events_until_terminal(&id).await?;
        let end = events.last().context("no events")?;
        ensure!(
            end.kind == EventKind::Error,
            "{id}'s files were not refused: {events:?}"
        );
        ensure!(
            text_of(&events, EventKind::Stdout).is_empty(),
            "{id}'s program ran: {events:?}"
        );
        Ok(end.clone())
    }

    /// Attaches to `session` asking for its workspace, and fails unless attached.
    pub async fn attach_workspace(&mut self, session: &str) -> Result<()> {
        self.send_json(
            &serde_json::json!({"type": "attach", "session": session, "workspace": true}),
        )
        .await?;
        let attached = self
            .next_event_where(|e| matches!(e.kind, EventKind::Attached | EventKind::Error))
            .await?;
        ensure!(attached.kind == EventKind::Attached, "{attached:?}");
        Ok(())
    }

    /// Reads until the terminal event of execution `id` and returns that execution's
    /// events (from the first one read, up to and including the terminal). Events of
    /// other executions are recorded but not returned.
    pub async fn events_until_terminal(&mut self, id: &str) -> Result<Vec<Event>> {
        let mut events = Vec::new();
        loop {
            let event = self.next_event().await?;
            if event.id.as_deref() != Some(id) {
                continue;
            }
            let terminal = event.is_terminal();
            events.push(event);
            if terminal {
                return Ok(events);
            }
        }
    }

    /// Reads events until each of `ids` has ended (its latest recorded event is
    /// terminal), counting events already received.
    pub async fn wait_for_terminals(&mut self, ids: &[&str]) -> Result<()> {
        let ended = |received: &[Event], id: &str| {
            received
                .iter()
                .rev()
                .find(|e| e.id.as_deref() == Some(id))
                .is_some_and(Event::is_terminal)
        };
        while !ids.iter().all(|id| ended(&self.received, id)) {
            self.next_event().await?;
        }
        Ok(())
    }

    /// Reads the events of execution `id` until its stdout contains `needle`, and returns
    /// them. Fails if the execution ends first.
    pub async fn wait_for_stdout(&mut self, id: &str, needle: &str) -> Result<Vec<Event>> {
        let mut events = Vec::new();
        loop {
            let event = self.next_event().await?;
            if event.id.as_deref() != Some(id) {
                continue;
            }
            ensure!(
                !event.is_terminal(),
                "execution {id} ended before printing {needle:?}: {event:?}"
            );
            events.push(event);
            if text_of(&events, EventKind::Stdout).contains(needle) {
                return Ok(events);
            }
        }
    }

    /// Waits until the gateway closes the socket and returns its close frame, if it sent
    /// one. Events that arrive first are recorded.
    pub async fn closed(&mut self) -> Result<Option<CloseFrame>> {
        loop {
            let message = within("the socket to close", self.ws.next()).await?;
            match message {
                Some(Ok(Message::Text(text))) => {
                    let event = Event::decode(text.as_str())
                        .map_err(|e| anyhow!("the gateway sent an invalid event: {e}: {text}"))?;
                    self.received.push(event);
                }
                Some(Ok(Message::Close(frame))) => return Ok(frame),
                Some(Ok(_)) => {}
                // The transport ended without a close frame.
                Some(Err(err)) => {
                    self.ending = Some(format!("read error: {err}"));
                    return Ok(None);
                }
                None => {
                    self.ending = Some("the stream ended".to_owned());
                    return Ok(None);
                }
            }
        }
    }

    /// How the socket ended when [`RawSocket::closed`] found no close frame.
    pub fn ending(&self) -> Option<&str> {
        self.ending.as_deref()
    }

    /// Runs a hello world in `sh` and checks its outcome: proof that the socket still
    /// works after whatever the test did to it.
    pub async fn assert_still_works(&mut self) -> Result<()> {
        let id = probe_id();
        self.execute(request(&id, "sh", "echo hello")).await?;
        let events = self.events_until_terminal(&id).await?;
        let terminal = events.last().context("no events")?;
        ensure!(
            terminal.kind == EventKind::Completed && terminal.exit_code == Some(0),
            "the probe did not complete with status 0: {events:?}"
        );
        ensure!(
            text_of(&events, EventKind::Stdout) == "hello\n",
            "the probe printed something else: {events:?}"
        );
        Ok(())
    }

    /// Closes the socket from the client side (a close frame, then the TCP close).
    pub async fn close(mut self) -> Result<()> {
        within("the socket to close", self.ws.close(None))
            .await?
            .context("closing the socket")
    }

    /// Sends a close frame and reads until the gateway's close reply; fails if the
    /// connection ends without one (no clean closing handshake).
    pub async fn close_with_handshake(mut self) -> Result<()> {
        within("the close frame to be sent", self.ws.close(None))
            .await?
            .context("sending the close frame")?;
        loop {
            match within("the gateway's close reply", self.ws.next()).await? {
                Some(Ok(Message::Close(_))) | None => return Ok(()),
                Some(Ok(_)) => {}
                // tungstenite reports the end of a completed handshake this way.
                Some(Err(tokio_tungstenite::tungstenite::Error::ConnectionClosed)) => return Ok(()),
                Some(Err(err)) => bail!("the socket ended without a clean close: {err}"),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Event helpers
// ---------------------------------------------------------------------------------------

/// The text of every `kind` (stdout or stderr) event in `events`, joined in order.
/// Meant for UTF-8 mode; base64 events are joined undecoded.
pub fn text_of(events: &[Event], kind: EventKind) -> String {
    events
        .iter()
        .filter(|e| e.kind == kind)
        .map(|e| e.data.as_str())
        .collect()
}

/// The events of execution `id` among `events`.
pub fn events_of<'a>(events: &'a [Event], id: &str) -> Vec<&'a Event> {
    events
        .iter()
        .filter(|e| e.id.as_deref() == Some(id))
        .collect()
}

/// Every event of the given outcomes, execution after execution. Valid input for
/// [`assert_stream_ok`] when each execution had a session of its own.
pub fn all_events<'a>(outcomes: impl IntoIterator<Item = &'a Outcome>) -> Vec<Event> {
    outcomes
        .into_iter()
        .flat_map(|o| o.events.iter().cloned())
        .collect()
}

/// True for a session id the gateway made: 32 lowercase hexadecimal characters.
pub fn is_gateway_session(session: &str) -> bool {
    session.len() == 32
        && session
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Runs `request` on `client` and waits (at most [`patience`]) for its outcome.
pub async fn run(client: &Client, request: ExecuteRequest) -> Result<Outcome> {
    let execution = client.execute(request).await?;
    let id = execution.id().to_owned();
    within(&format!("execution {id} to end"), execution.wait())
        .await?
        .with_context(|| format!("execution {id}"))
}

/// The next event of `execution`, within [`patience`]; fails if the stream has ended.
pub async fn next_within(execution: &mut Execution) -> Result<Event> {
    let id = execution.id().to_owned();
    within(&format!("the next event of {id}"), execution.next())
        .await?
        .with_context(|| format!("the event stream of {id} ended"))
}

/// Reads events of `execution` into `events` until its stdout contains `needle`. Fails
/// if the execution ends first.
pub async fn wait_for_output(
    execution: &mut Execution,
    events: &mut Vec<Event>,
    needle: &str,
) -> Result<()> {
    while !text_of(events, EventKind::Stdout).contains(needle) {
        let event = next_within(execution).await?;
        ensure!(
            !event.is_terminal(),
            "execution {} ended before printing {needle:?}: {event:?}",
            execution.id()
        );
        events.push(event);
    }
    Ok(())
}

/// Reads the remaining events of `execution` into `events`, up to its terminal event.
pub async fn drain(execution: &mut Execution, events: &mut Vec<Event>) -> Result<()> {
    loop {
        let event = next_within(execution).await?;
        let terminal = event.is_terminal();
        events.push(event);
        if terminal {
            return Ok(());
        }
    }
}

// ---------------------------------------------------------------------------------------
// The stream checker
// ---------------------------------------------------------------------------------------

/// Where an execution is in its lifecycle, as seen in its stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Running,
    Ended,
}

/// Checks the rules every stream obeys, for every stream in `events`.
///
/// `events` are events of ONE socket, in arrival order; they may be a subset made of
/// whole streams (for example the events of several executions that each had a session
/// of its own, concatenated). For each stream (one per session, plus the socket stream
/// for `session: null`):
///
/// - sequences start at 1 and increase by exactly 1 (gap-free, no duplicates);
/// - timestamps never decrease (`attached` and `gap` markers are stamped when sent);
/// - `attached` and `gap` markers are not numbered: each says where the stream
///   continues;
///
/// and for each execution id within a stream: `started` (with a pid) comes first, output
/// only while running, exactly one terminal event ends it, the terminal of a started
/// execution carries `usage`, and a refusal (an `error` with no `started` before it)
/// carries none. Every event also passes `Event::validate`, and output events carry
/// `encoding` only when it is base64.
///
/// Panics with a description of the first broken rule and the stream around it.
pub fn assert_stream_ok(events: &[Event]) {
    let mut streams: Vec<(Option<String>, Vec<&Event>)> = Vec::new();
    for event in events {
        if let Err(err) = event.validate() {
            panic!("invalid event: {err}: {event:?}");
        }
        match streams.iter_mut().find(|(key, _)| *key == event.session) {
            Some((_, stream)) => stream.push(event),
            None => streams.push((event.session.clone(), vec![event])),
        }
    }
    for (session, stream) in &streams {
        let name = session.as_deref().unwrap_or("<socket stream>");
        // `attached` and `gap` are markers, not numbered events: each says where the
        // stream continues.
        let mut expected = 1;
        let mut joined_late = false;
        for event in stream {
            match event.kind {
                EventKind::Attached | EventKind::Gap => {
                    let resume = event.resume_from.unwrap_or(expected);
                    joined_late |= resume > 1;
                    expected = resume;
                }
                _ => {
                    assert_eq!(
                        event.sequence, expected,
                        "stream {name}: sequences are not consecutive in arrival order: {event:?}"
                    );
                    expected += 1;
                }
            }
        }
        for pair in stream.windows(2) {
            assert!(
                pair[1].timestamp >= pair[0].timestamp
                    || matches!(pair[0].kind, EventKind::Attached | EventKind::Gap)
                    || matches!(pair[1].kind, EventKind::Attached | EventKind::Gap),
                "stream {name}: timestamp decreases from {:?} to {:?}",
                pair[0],
                pair[1]
            );
        }
        check_lifecycles(name, stream, joined_late);
    }
}

/// `joined_late`: the socket joined the stream after its start, so an execution whose
/// `started` it never saw is only checked from what it did see.
fn check_lifecycles(name: &str, stream: &[&Event], joined_late: bool) {
    let mut phases: HashMap<&str, Phase> = HashMap::new();
    for event in stream {
        let Some(id) = event.id.as_deref() else {
            assert!(
                matches!(
                    event.kind,
                    EventKind::Error
                        | EventKind::Attached
                        | EventKind::Gap
                        | EventKind::Runtimes
                        | EventKind::Restarted
                        | EventKind::CompleteReply
                        | EventKind::InspectReply
                        | EventKind::FilesChanged
                ),
                "stream {name}: only refusals and markers may have no id: {event:?}"
            );
            continue;
        };
        let mut phase = phases.get(id).copied();
        if phase.is_none() && joined_late && event.kind != EventKind::Started {
            phase = Some(Phase::Running);
        }
        let next = match event.kind {
            EventKind::Started => {
                assert_ne!(
                    phase,
                    Some(Phase::Running),
                    "stream {name}: execution {id} started twice: {event:?}"
                );
                Phase::Running
            }
            EventKind::Stdout
            | EventKind::Stderr
            | EventKind::Display
            | EventKind::UpdateDisplay
            | EventKind::Result
            | EventKind::InputRequest
            | EventKind::NetworkBlocked
            | EventKind::FilesChanged => {
                assert_eq!(
                    phase,
                    Some(Phase::Running),
                    "stream {name}: output of {id} outside started..terminal: {event:?}"
                );
                assert!(
                    matches!(event.encoding, None | Some(Encoding::Base64)),
                    "stream {name}: output names an encoding other than base64: {event:?}"
                );
                Phase::Running
            }
            kind if kind.is_terminal() => {
                if phase == Some(Phase::Running) {
                    assert!(
                        event.usage.is_some(),
                        "stream {name}: the terminal event of started {id} has no usage: {event:?}"
                    );
                } else {
                    // Refused, or a cell cancelled while it waited for its turn.
                    assert!(
                        matches!(kind, EventKind::Error | EventKind::Cancelled),
                        "stream {name}: {id} ended without starting: {event:?}"
                    );
                    assert!(
                        event.usage.is_none(),
                        "stream {name}: a refusal of {id} carries usage: {event:?}"
                    );
                }
                Phase::Ended
            }
            _ => panic!("stream {name}: unexpected event type: {event:?}"),
        };
        phases.insert(id, next);
    }
}

/// Checks that `events` of one execution form a whole lifecycle: `started` with a pid
/// first (sequence 1 when the execution had its session to itself), one terminal event
/// last, nothing in between but output.
pub fn assert_lifecycle(events: &[Event]) {
    let first = events.first().expect("an execution has events");
    let last = events.last().expect("an execution has events");
    assert_eq!(first.kind, EventKind::Started, "first event: {first:?}");
    assert!(
        first.pid.is_some_and(|p| p > 0),
        "started has no pid: {first:?}"
    );
    assert!(last.is_terminal(), "last event is not terminal: {last:?}");
    for event in &events[1..events.len() - 1] {
        assert!(
            matches!(event.kind, EventKind::Stdout | EventKind::Stderr),
            "between started and the terminal: {event:?}"
        );
    }
    assert!(
        last.usage.is_some(),
        "terminal event has no usage: {last:?}"
    );
}

/// Asserts that `event` is a refusal on the socket stream with `code`, naming no
/// execution.
pub fn assert_socket_refusal(event: &Event, code: ErrorCode) {
    assert_eq!(event.kind, EventKind::Error, "{event:?}");
    assert_eq!(event.code, Some(code), "{event:?}");
    assert_eq!(event.id, None, "{event:?}");
    assert_eq!(event.session, None, "{event:?}");
}

// ---------------------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------------------

/// A fresh directory on the host that every process can read, jailed programs
/// included: under `/var/tmp`, because a jail replaces `/tmp` (where a checkout, and with
/// it `CARGO_TARGET_TMPDIR`, may live) with its own. Removed by the caller.
pub fn host_shared_dir(name: &str) -> Result<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let dir = std::path::Path::new("/var/tmp").join(format!(
        "sluice-test-{name}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
    Ok(dir)
}

/// A Python program for a terminal: it prints `stty size`, then `ready`, waits for
/// SIGWINCH (blocked first, so a resize cannot come too early), prints `winch` and
/// `stty size` again.
pub const WINCH_PROBE: &str = "import signal, subprocess\n\
    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGWINCH])\n\
    subprocess.run(['stty', 'size'])\n\
    print('ready', flush=True)\n\
    signal.sigwait([signal.SIGWINCH])\n\
    print('winch', flush=True)\n\
    subprocess.run(['stty', 'size'])\n";

/// A string unique to this call, to put in a program's command line (for example with
/// `exec -a MARKER sleep 1000` in bash) and look for in `/proc` afterwards.
pub fn unique_marker(label: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "sluice-e2e-{label}-{}-{}-{nanos}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// The live processes whose command line contains `marker`, as `(pid, command line)`.
/// A zombie has an empty command line, so only processes that can still run count.
pub fn processes_with(marker: &str) -> Vec<(u32, String)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            // The process may be gone by now; that is the common case, not an error.
            let raw = std::fs::read(entry.path().join("cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
            cmdline.contains(marker).then_some((pid, cmdline))
        })
        .collect()
}

/// Polls `condition` until it holds, failing with `what` if it does not within `timeout`.
/// Only for conditions no event announces, such as the state of `/proc`.
pub async fn eventually(
    timeout: Duration,
    what: &str,
    mut condition: impl FnMut() -> bool,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("not true after {timeout:?}: {what}");
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Polls `check` until it yields a value, failing with `what` if it has not within the
/// harness's patience. Like [`eventually`], only for what no event announces: a file a
/// background writer appends to, a counter on `/metrics`, a process's exit status.
pub async fn poll_until<T>(
    what: &str,
    mut check: impl AsyncFnMut() -> Result<Option<T>>,
) -> Result<T> {
    let deadline = Instant::now() + patience();
    loop {
        if let Some(found) = check().await? {
            return Ok(found);
        }
        if Instant::now() >= deadline {
            bail!("not true after {:?}: {what}", patience());
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Waits until a process whose command line contains `marker` is running.
pub async fn wait_until_running(marker: &str) -> Result<()> {
    eventually(
        patience(),
        &format!("a process marked {marker} runs"),
        || !processes_with(marker).is_empty(),
    )
    .await
}

/// Waits until no process whose command line contains `marker` is left.
pub async fn wait_until_gone(marker: &str) -> Result<()> {
    let result = eventually(
        patience(),
        &format!("no process marked {marker} is left"),
        || processes_with(marker).is_empty(),
    )
    .await;
    result.with_context(|| format!("still running: {:?}", processes_with(marker)))
}

// ---------------------------------------------------------------------------------------
// Plain HTTP
// ---------------------------------------------------------------------------------------

/// A minimal HTTP/1.1 GET: returns the status code and the body (headers dropped).
pub async fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    http_get_with(addr, path, &[]).await
}

/// [`http_get`] with extra request headers.
pub async fn http_get_with(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(u16, String)> {
    let response = http_get_raw(addr, path, headers).await?;
    let response = String::from_utf8_lossy(&response).into_owned();
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no status line in {response:?}"))?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// The whole response to `GET path` with `headers`, head and body, as bytes (the
/// connection is closed after it), within [`patience`].
pub async fn http_get_raw(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Vec<u8>> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        let mut head = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        anyhow::Ok(response)
    };
    within(&format!("GET {path}"), exchange).await?
}

#[cfg(test)]
mod tests {
    //! The checker must catch what it claims to catch; `catch_unwind` stands in for
    //! `#[should_panic]` so that one test can check several broken streams.

    use super::*;
    use sluice_protocol::Usage;

    fn event(kind: EventKind, session: Option<&str>, id: Option<&str>, sequence: u64) -> Event {
        let mut event = Event::new(kind, id.map(str::to_owned), "");
        event.session = session.map(str::to_owned);
        event.sequence = sequence;
        event.timestamp = 1_700_000_000.0 + sequence as f64;
        match kind {
            EventKind::Started => event.pid = Some(42),
            EventKind::Completed => {
                event.exit_code = Some(0);
                event.usage = Some(Usage::default());
            }
            EventKind::Cancelled => event.usage = Some(Usage::default()),
            EventKind::Error => event.code = Some(ErrorCode::BadRequest),
            _ => {}
        }
        event
    }

    fn run_of(session: &str, id: &str, first: u64) -> Vec<Event> {
        vec![
            event(EventKind::Started, Some(session), Some(id), first),
            event(EventKind::Stdout, Some(session), Some(id), first + 1),
            event(EventKind::Completed, Some(session), Some(id), first + 2),
        ]
    }

    fn rejects(events: &[Event]) -> bool {
        let events = events.to_vec();
        std::panic::catch_unwind(move || assert_stream_ok(&events)).is_err()
    }

    #[test]
    fn accepts_interleaved_streams() {
        let mut events = run_of("s1", "a", 1);
        events.insert(1, event(EventKind::Error, None, None, 1));
        events.extend(run_of("s2", "b", 1));
        events.push(event(EventKind::Error, None, None, 2));
        // An id may be reused once its execution ended.
        events.extend(run_of("s1", "a", 4));
        assert_stream_ok(&events);
    }

    #[test]
    fn rejects_broken_sequences() {
        let mut gap = run_of("s", "a", 1);
        gap[2].sequence = 4;
        assert!(rejects(&gap));
        let late_start = run_of("s", "a", 2);
        assert!(rejects(&late_start));
        let mut swapped = run_of("s", "a", 1);
        swapped.swap(1, 2);
        assert!(rejects(&swapped));
        let mut socket = vec![event(EventKind::Error, None, None, 1)];
        socket.push(event(EventKind::Error, None, None, 1));
        assert!(rejects(&socket));
    }

    #[test]
    fn rejects_decreasing_timestamps() {
        let mut events = run_of("s", "a", 1);
        events[2].timestamp = events[1].timestamp - 0.5;
        assert!(rejects(&events));
    }

    #[test]
    fn rejects_broken_lifecycles() {
        let output_first = vec![
            event(EventKind::Stdout, Some("s"), Some("a"), 1),
            event(EventKind::Completed, Some("s"), Some("a"), 2),
        ];
        assert!(rejects(&output_first));
        let mut after_terminal = run_of("s", "a", 1);
        after_terminal.push(event(EventKind::Stdout, Some("s"), Some("a"), 4));
        assert!(rejects(&after_terminal));
        let mut no_usage = run_of("s", "a", 1);
        no_usage[2].usage = None;
        assert!(rejects(&no_usage));
        let unstarted_completion = vec![event(EventKind::Completed, Some("s"), Some("a"), 1)];
        assert!(rejects(&unstarted_completion));
    }
}

// ---------------------------------------------------------------------------------------
// Large outputs
// ---------------------------------------------------------------------------------------

/// A program that writes `lines` numbered lines of 10 bytes each (`000000000\n`, ...).
pub fn numbered_lines(lines: u32) -> String {
    format!("import sys\nsys.stdout.write(''.join(f'{{i:09d}}\\n' for i in range({lines})))\n")
}

/// Checks a numbered-lines stream chunk by chunk without keeping it.
#[derive(Debug, Default)]
pub struct LineChecker {
    /// Bytes of a line not yet complete.
    pub partial: String,
    /// The number of the next line expected.
    pub next: u32,
}

impl LineChecker {
    /// Checks `chunk`, the next piece of the stream.
    pub fn feed(&mut self, chunk: &str) -> Result<()> {
        self.partial.push_str(chunk);
        let complete = self.partial.rfind('\n').map_or(0, |at| at + 1);
        for line in self.partial[..complete].lines() {
            let expected = format!("{:09}", self.next);
            ensure!(
                line == expected,
                "line {} is {line:?}: a byte was lost or repeated",
                self.next
            );
            self.next += 1;
        }
        self.partial.drain(..complete);
        Ok(())
    }
}
