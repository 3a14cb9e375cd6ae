//! Section 9, idle sockets (`--only idle`): the gateway's memory per idle WebSocket.
//!
//! Starts a gateway process (this binary, re-executed with [`GATEWAY_ENV`] set), reads
//! its resident size, then opens idle sockets in stages (1,000, 5,000, then all;
//! `SLUICE_BENCH_IDLE_SOCKETS`, default 10,000). Each socket completes the upgrade and
//! one round trip through the protocol (a `cancel` naming no execution, answered with
//! `unknown_execution`), then stays open and answers the gateway's pings. After each
//! stage, once the gateway's resident size has settled, it prints the size and KiB per
//! socket = (size now - size before the first socket) / sockets open, as `VmRSS`
//! (`/proc/PID/status`) and as `Pss` and `Private_Dirty` (`/proc/PID/smaps_rollup`).
//!
//! With `SLUICE_BENCH_IDLE_TRAFFIC=BYTES`, each socket first carries traffic before it
//! idles: an `execute` frame of about BYTES (its program padded with a comment) whose
//! program prints BYTES, all read; then it detaches from the execution's session (which
//! ends) and idles. What the WebSocket layer keeps of its buffers afterwards then shows
//! (use fewer sockets: 1,000 of 256 KiB move half a GB). The `sessions` column (from
//! `/metrics`) shows that no session is left holding events.
//!
//! All the sockets come from one address, so the run raises the gateway's per-peer and
//! total connection caps (`--max-connections` and `--max-connections-per-peer` at the
//! socket count plus headroom) and its idle timeout (`--idle-timeout-ms`, one hour: a
//! socket that holds no session is otherwise closed after a minute); both processes
//! raise their soft descriptor limit to the hard one. Isolation is off: it concerns
//! executions, not sockets.

use anyhow::{bail, Context as _};
use futures::{SinkExt as _, StreamExt as _};
use sluice_gateway::Config;
use sluice_protocol::{ClientFrame, Event, EventKind, ExecuteRequest};
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

/// Set (to the socket count) in the environment of the gateway process this section
/// starts: `main` then serves a gateway sized for it instead of benchmarking.
const GATEWAY_ENV: &str = "SLUICE_BENCH_IDLE_GATEWAY";

/// How many idle sockets the last stage holds, when the environment does not say.
const DEFAULT_SOCKETS: usize = 10_000;

/// Connections the gateway admits beyond the sockets held: the warm-up's, and room.
const HEADROOM: usize = 64;

/// Sockets being opened at once.
const OPENING_AT_ONCE: usize = 64;

/// Sockets opened, held and closed before the baseline is read, so that what the first
/// connection sets up once (thread-local buffers, lazily built tables, code paged in)
/// is not counted per socket.
const WARM_UP: usize = 16;

/// The resident size has settled once it moved by no more than this over
/// [`SETTLE_SAMPLES`] samples [`SETTLE_EVERY`] apart.
const SETTLE_BYTES: u64 = 64 << 10;
const SETTLE_SAMPLES: usize = 10;
const SETTLE_EVERY: Duration = Duration::from_millis(200);
/// Reported as not settled past this.
const SETTLE_DEADLINE: Duration = Duration::from_secs(30);

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Whether this process is the gateway [`run`] started.
pub(crate) fn is_gateway_process() -> bool {
    std::env::var_os(GATEWAY_ENV).is_some()
}

/// The gateway process: a default configuration with the caps raised for the sockets
/// to come (see the module's doc), on 127.0.0.1:0, printing its port; it stops when its
/// stdin closes.
pub(crate) fn serve_gateway() -> anyhow::Result<()> {
    let sockets: usize = std::env::var(GATEWAY_ENV)?
        .parse()
        .context("the socket count")?;
    sluice_gateway::raise_open_files_limit().context("raise the descriptor limit")?;
    let caps = sockets + HEADROOM;
    crate::serve_on_loopback(Config {
        max_connections: caps,
        max_connections_per_peer: Some(caps),
        idle_timeout: Duration::from_secs(3_600),
        isolation: sluice_gateway::Isolation::None,
        network: sluice_gateway::Network::On,
        ..Config::default()
    })
}

/// `--only idle`: the section, against a gateway process of its own.
pub(crate) fn run() -> anyhow::Result<()> {
    let sockets = match std::env::var("SLUICE_BENCH_IDLE_SOCKETS") {
        Ok(text) => text
            .parse::<usize>()
            .context("SLUICE_BENCH_IDLE_SOCKETS must be a number")?,
        Err(_) => DEFAULT_SOCKETS,
    };
    if sockets == 0 {
        bail!("SLUICE_BENCH_IDLE_SOCKETS must be at least 1");
    }
    let traffic = match std::env::var("SLUICE_BENCH_IDLE_TRAFFIC") {
        Ok(text) => text
            .parse::<usize>()
            .context("SLUICE_BENCH_IDLE_TRAFFIC must be a number of bytes")?,
        Err(_) => 0,
    };
    let limit = sluice_gateway::raise_open_files_limit().context("raise the descriptor limit")?;
    let needed = u64::try_from(sockets + HEADROOM)?;
    if limit < needed {
        bail!("{sockets} sockets need {needed} descriptors in each process, and the hard limit is {limit}: raise it (ulimit -Hn, LimitNOFILE=)");
    }
    let mut gateway = std::process::Command::new(std::env::current_exe()?)
        .env(GATEWAY_ENV, sockets.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("start the gateway process")?;
    let mut port_line = String::new();
    let stdout = gateway.stdout.take().context("gateway stdout")?;
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut port_line)?;
    let port: u16 = match port_line.trim().parse() {
        Ok(port) => port,
        Err(_) => {
            let status = gateway.wait()?;
            bail!("the gateway refused to start ({status}); its error is above");
        }
    };
    let client_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let result = client_rt.block_on(measure(addr, gateway.id(), sockets, traffic));
    drop(gateway.stdin.take());
    let status = gateway.wait()?;
    if !status.success() {
        bail!("the gateway process exited with {status}");
    }
    result
}

/// The stages: open sockets up to each count, let the gateway settle, print a row.
async fn measure(addr: SocketAddr, pid: u32, sockets: usize, traffic: usize) -> anyhow::Result<()> {
    let url = format!("ws://{addr}{}", sluice_protocol::WS_PATH);
    println!(
        "sluice-bench --only idle; {} cores; gateway pid {pid}, --isolation none, \
         --max-connections {caps} --max-connections-per-peer {caps} --idle-timeout-ms 3600000",
        std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
        caps = sockets + HEADROOM,
    );
    if traffic == 0 {
        println!(
            "each socket: upgrade, `cancel` -> `unknown_execution`, then idle (pings answered)"
        );
    } else {
        println!("each socket: upgrade, `cancel` -> `unknown_execution`, an `execute` frame of {traffic} bytes printing {traffic} bytes, then idle (pings answered)");
    }
    // Warm up, then close: what the first connections set up once is in the baseline.
    let warm: Vec<Socket> = open_many(&url, WARM_UP, 0, 0).await?;
    for mut socket in warm {
        socket.close(None).await?;
        while let Some(Ok(_)) = socket.next().await {}
    }
    let (baseline, settled) = settle(pid).await?;
    println!(
        "{:>8} {:>10} {:>10} {:>10} {:>12} {:>12} {:>18} {:>9}",
        "sockets",
        "VmRSS MiB",
        "Pss MiB",
        "open s",
        "KiB/socket",
        "Pss KiB/s.",
        "Private_Dirty KiB/s.",
        "sessions"
    );
    println!(
        "{:>8} {:>10.1} {:>10.1} {:>10} {:>12} {:>12} {:>18}{}",
        0,
        mib(baseline.rss),
        mib(baseline.pss),
        "-",
        "-",
        "-",
        "-",
        unsettled(settled)
    );
    let closed = Arc::new(AtomicUsize::new(0));
    let mut open = 0;
    let mut stages: Vec<usize> = [1_000, 5_000]
        .into_iter()
        .filter(|&n| n < sockets)
        .collect();
    stages.push(sockets);
    for stage in stages {
        let started = Instant::now();
        for socket in open_many(&url, stage - open, open, traffic).await? {
            tokio::spawn(hold(socket, closed.clone()));
        }
        let opening = started.elapsed();
        open = stage;
        let (now, settled) = settle(pid).await?;
        // The memory is the sockets' own: no session (nor its replay buffer) is open.
        let sessions = gauge(addr, "sluice_sessions_open").await?;
        let per =
            |after: u64, before: u64| after.saturating_sub(before) as f64 / 1024.0 / open as f64;
        println!(
            "{:>8} {:>10.1} {:>10.1} {:>10.1} {:>12.1} {:>12.1} {:>18.1} {:>9}{}",
            open,
            mib(now.rss),
            mib(now.pss),
            opening.as_secs_f64(),
            per(now.rss, baseline.rss),
            per(now.pss, baseline.pss),
            per(now.private_dirty, baseline.private_dirty),
            sessions,
            unsettled(settled)
        );
        let lost = closed.load(Ordering::Relaxed);
        if lost > 0 {
            bail!("{lost} idle sockets were closed by the gateway during the run");
        }
    }
    Ok(())
}

fn unsettled(settled: bool) -> &'static str {
    if settled {
        ""
    } else {
        "  (not settled)"
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1 << 20)
}

/// Opens `count` sockets (numbered from `first`), [`OPENING_AT_ONCE`] at a time, each
/// through its round trip and its `traffic`.
async fn open_many(
    url: &str,
    count: usize,
    first: usize,
    traffic: usize,
) -> anyhow::Result<Vec<Socket>> {
    futures::stream::iter(first..first + count)
        .map(|n| open_one(url, n, traffic))
        .buffer_unordered(OPENING_AT_ONCE)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect()
}

/// One socket: the upgrade, then a `cancel` naming no execution, answered on the
/// socket's own stream with `unknown_execution`; then, with `traffic`, an execution
/// (see the module's doc) run to its end.
async fn open_one(url: &str, n: usize, traffic: usize) -> anyhow::Result<Socket> {
    // The client's own buffers small: 10,000 sockets of tungstenite's default 128 KiB
    // read buffer would be more than a GiB on this side.
    let config = WebSocketConfig::default()
        .read_buffer_size(4 << 10)
        .write_buffer_size(0);
    let (mut socket, _) = tokio_tungstenite::connect_async_with_config(url, Some(config), true)
        .await
        .with_context(|| format!("open idle socket {n}"))?;
    let cancel = serde_json::json!({"type": "cancel", "id": format!("idle-{n}")});
    socket.send(Message::text(cancel.to_string())).await?;
    let answer = next_event(&mut socket, n).await?;
    if answer.kind != EventKind::Error {
        bail!("idle socket {n}: expected an error event, got {answer:?}");
    }
    if traffic > 0 {
        let id = format!("traffic-{n}");
        let code = format!(
            "head -c {traffic} /dev/zero | tr '\\0' x\n# {}\n",
            "x".repeat(traffic)
        );
        let request = ExecuteRequest {
            id: id.clone(),
            language: "sh".into(),
            code,
            ..ExecuteRequest::default()
        };
        let frame = ClientFrame::Execute(request).to_json();
        socket.send(Message::text(frame)).await?;
        let mut printed = 0;
        let session = loop {
            let event = next_event(&mut socket, n).await?;
            match event.kind {
                EventKind::Stdout => printed += event.data.len(),
                EventKind::Started => {}
                EventKind::Completed if printed == traffic => break event.session,
                _ => bail!("idle socket {n}: {event:?} after {printed} bytes of output"),
            }
        };
        // Let its session go (it ends then): what is measured is the socket's own.
        let session = session.with_context(|| format!("idle socket {n}: no session"))?;
        let detach = serde_json::json!({"type": "detach", "session": session});
        socket.send(Message::text(detach.to_string())).await?;
    }
    Ok(socket)
}

/// The next event on socket `n`.
async fn next_event(socket: &mut Socket, n: usize) -> anyhow::Result<Event> {
    loop {
        let message = socket
            .next()
            .await
            .with_context(|| format!("idle socket {n} closed before an event"))??;
        if let Message::Text(text) = message {
            return Ok(Event::decode(text.as_str())?);
        }
    }
}

/// Keeps a socket open, reading (which answers the gateway's pings); counts it in
/// `closed` if the gateway closes it.
async fn hold(mut socket: Socket, closed: Arc<AtomicUsize>) {
    while let Some(Ok(_)) = socket.next().await {}
    closed.fetch_add(1, Ordering::Relaxed);
}

/// A gauge's value from the gateway's `/metrics` (served to loopback peers).
pub(crate) async fn gauge(addr: SocketAddr, name: &str) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let line = response
        .lines()
        .find(|line| line.split_whitespace().next() == Some(name))
        .with_context(|| format!("no {name} in /metrics"))?;
    Ok(line.split_whitespace().nth(1).unwrap_or("?").to_owned())
}

/// The gateway's memory, in bytes.
#[derive(Debug, Clone, Copy)]
struct Memory {
    rss: u64,
    pss: u64,
    private_dirty: u64,
}

/// Samples the gateway until its resident size settles (or the deadline passes: then
/// `false`), and returns the last sample.
async fn settle(pid: u32) -> anyhow::Result<(Memory, bool)> {
    let deadline = Instant::now() + SETTLE_DEADLINE;
    let mut recent = std::collections::VecDeque::new();
    loop {
        let now = memory(pid)?;
        recent.push_back(now.rss);
        if recent.len() > SETTLE_SAMPLES {
            recent.pop_front();
        }
        let spread = recent.iter().max().unwrap_or(&0) - recent.iter().min().unwrap_or(&0);
        if recent.len() == SETTLE_SAMPLES && spread <= SETTLE_BYTES {
            return Ok((now, true));
        }
        if Instant::now() >= deadline {
            return Ok((now, false));
        }
        tokio::time::sleep(SETTLE_EVERY).await;
    }
}

/// `VmRSS` from `/proc/PID/status`, `Pss` and `Private_Dirty` from `smaps_rollup`.
fn memory(pid: u32) -> anyhow::Result<Memory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))?;
    Ok(Memory {
        rss: kib_field(&status, "VmRSS:")?,
        pss: kib_field(&rollup, "Pss:")?,
        private_dirty: kib_field(&rollup, "Private_Dirty:")?,
    })
}

/// A `Name:   123 kB` line's value, in bytes.
fn kib_field(text: &str, name: &str) -> anyhow::Result<u64> {
    let line = text
        .lines()
        .find(|line| line.starts_with(name))
        .with_context(|| format!("no {name} line"))?;
    let kib: u64 = line[name.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .with_context(|| format!("the {name} line {line:?}"))?;
    Ok(kib * 1024)
}
