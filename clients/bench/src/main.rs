//! `sluice-bench`: measures the gateway against spawning the same programs directly from
//! the same harness, in one run on one machine, and prints figures and ratios.
//!
//! 1. Latency from `execute` to the first `stdout` event for `echo x` in `sh`, against
//!    spawning `sh -c 'echo x'` and reading its first byte (runs interleaved).
//! 2. Throughput of stdout streamed from a child through the gateway to this client,
//!    against reading the same child through a pipe.
//! 3. Executions per second with a fixed number in flight, against direct spawning.
//!
//! The gateway runs in this process on its own runtime (two workers), bound to port 0;
//! the client side runs on another runtime, as a separate program would.

// A report printer: stdout is its output.
#![allow(clippy::print_stdout)]

use anyhow::{bail, Context as _};
use clap::Parser;
use futures::{SinkExt as _, StreamExt as _};
use sluice_gateway::{Config, LimitBound};
use sluice_protocol::{ClientFrame, Event, EventKind, ExecuteRequest, Limits};
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt as _;
use tokio_tungstenite::tungstenite::Message;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Benchmark the Sluice gateway against direct process spawning.
#[derive(Debug, Parser)]
#[command(name = "sluice-bench", version)]
struct Args {
    /// Latency samples per side (gateway and direct, interleaved).
    #[arg(long, default_value_t = 300)]
    latency_runs: usize,
    /// MiB streamed in the throughput test.
    #[arg(long, default_value_t = 1024)]
    throughput_mib: usize,
    /// Executions per side in the executions-per-second test.
    #[arg(long, default_value_t = 2000)]
    executions: usize,
    /// Executions kept in flight at once.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// A short run for smoke testing (50 latency runs, 64 MiB, 320 executions).
    #[arg(long)]
    quick: bool,
}

fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    if args.quick {
        args.latency_runs = 50;
        args.throughput_mib = 64;
        args.executions = 320;
    }
    let gateway_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("gateway")
        .enable_all()
        .build()?;
    let listener = gateway_rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let addr = listener.local_addr()?;
    let config = Config {
        limits: sluice_gateway::LimitsConfig {
            output_bytes: LimitBound {
                default: 4 << 30,
                max: 4 << 30,
            },
            ..Default::default()
        },
        max_executions_per_connection: args.concurrency.max(1) * 2,
        ..Config::default()
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = gateway_rt.spawn(sluice_gateway::run(listener, config, async move {
        let _ = stopped.await;
    }));
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let result = client_rt.block_on(run_all(addr, &args));
    let _ = stop.send(());
    gateway_rt.block_on(server)??;
    result
}

async fn run_all(addr: SocketAddr, args: &Args) -> anyhow::Result<()> {
    let url = format!("ws://{addr}{}", sluice_protocol::WS_PATH);
    let (mut socket, _) = tokio_tungstenite::connect_async(&url)
        .await
        .context("connect to the gateway")?;
    println!(
        "sluice-bench: gateway in-process at {url}; {} cores",
        num_cpus()
    );
    println!(
        "{:<38} {:>12} {:>12} {:>8} {:>9}",
        "metric", "gateway", "direct", "ratio", "target"
    );

    // 1. Latency, interleaved so both sides see the same machine state.
    for _ in 0..10 {
        gateway_first_stdout(&mut socket).await?;
        direct_first_stdout().await?;
    }
    let (mut via, mut direct) = (Vec::new(), Vec::new());
    for _ in 0..args.latency_runs {
        via.push(gateway_first_stdout(&mut socket).await?);
        direct.push(direct_first_stdout().await?);
    }
    via.sort();
    direct.sort();
    let (gp50, dp50) = (percentile(&via, 50), percentile(&direct, 50));
    let (gp99, dp99) = (percentile(&via, 99), percentile(&direct, 99));
    row(
        "execute -> first stdout, p50 (ms)",
        ms(gp50),
        ms(dp50),
        ms(gp50) / ms(dp50),
        "<= 1.3",
        ms(gp50) / ms(dp50) <= 1.3,
    );
    row(
        "execute -> first stdout, p99 (ms)",
        ms(gp99),
        ms(dp99),
        ms(gp99) / ms(dp99),
        "-",
        true,
    );

    // 2. Throughput.
    let bytes = (args.throughput_mib as u64) << 20;
    let code = format!(
        "import sys\nblock = (b'x' * 1023 + b'\\n') * 1024\nw = sys.stdout.buffer.write\nfor _ in range({}):\n    w(block)\n",
        args.throughput_mib
    );
    let via = gateway_throughput(&mut socket, &code, bytes).await?;
    let direct = direct_throughput(&code, bytes).await?;
    let label = format!("stdout throughput, {} MiB (MB/s)", args.throughput_mib);
    row(
        &label,
        via,
        direct,
        via / direct,
        ">= 0.5",
        via / direct >= 0.5,
    );

    // 3. Executions per second.
    let via = gateway_exec_rate(&mut socket, args.executions, args.concurrency).await?;
    let direct = direct_exec_rate(args.executions, args.concurrency).await?;
    let label = format!("executions/s at concurrency {}", args.concurrency);
    row(
        &label,
        via,
        direct,
        via / direct,
        ">= 0.8",
        via / direct >= 0.8,
    );
    let _ = socket.close(None).await;
    Ok(())
}

fn row(label: &str, gateway: f64, direct: f64, ratio: f64, target: &str, ok: bool) {
    let verdict = if target == "-" {
        ""
    } else if ok {
        "  ok"
    } else {
        "  MISSED"
    };
    println!("{label:<38} {gateway:>12.3} {direct:>12.3} {ratio:>8.3} {target:>9}{verdict}");
}

fn num_cpus() -> usize {
    std::thread::available_parallelism()
        .map(usize::from)
        .unwrap_or(1)
}

fn percentile(sorted: &[Duration], p: usize) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[(sorted.len() * p / 100).min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn execute_frame(id: &str, language: &str, code: &str) -> Message {
    let frame = ClientFrame::Execute(ExecuteRequest {
        id: id.into(),
        language: language.into(),
        code: code.into(),
        limits: Limits {
            timeout_ms: Some(600_000),
            output_bytes: None,
        },
        ..ExecuteRequest::default()
    });
    Message::text(frame.to_json())
}

async fn next_event(socket: &mut Socket) -> anyhow::Result<Event> {
    loop {
        match socket.next().await {
            Some(Ok(Message::Text(text))) => return Ok(Event::decode(text.as_str())?),
            Some(Ok(Message::Close(frame))) => bail!("gateway closed the socket: {frame:?}"),
            Some(Ok(_)) => continue,
            Some(Err(err)) => return Err(err.into()),
            None => bail!("gateway closed the socket"),
        }
    }
}

fn check_terminal(event: &Event) -> anyhow::Result<()> {
    if event.kind != EventKind::Completed || event.exit_code != Some(0) {
        bail!(
            "execution ended with {} {:?}: {}",
            event.kind,
            event.code,
            event.data
        );
    }
    Ok(())
}

async fn gateway_first_stdout(socket: &mut Socket) -> anyhow::Result<Duration> {
    let start = Instant::now();
    socket.send(execute_frame("lat", "sh", "echo x")).await?;
    let mut first = None;
    loop {
        let event = next_event(socket).await?;
        if event.kind == EventKind::Stdout && first.is_none() {
            first = Some(start.elapsed());
        }
        if event.is_terminal() {
            check_terminal(&event)?;
            return first.context("no stdout event");
        }
    }
}

async fn direct_first_stdout() -> anyhow::Result<Duration> {
    let start = Instant::now();
    let mut child = tokio::process::Command::new("sh")
        .args(["-c", "echo x"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut stdout = child.stdout.take().context("no stdout")?;
    let mut byte = [0u8; 1];
    stdout.read_exact(&mut byte).await?;
    let elapsed = start.elapsed();
    let mut rest = Vec::new();
    stdout.read_to_end(&mut rest).await?;
    child.wait().await?;
    Ok(elapsed)
}

async fn gateway_throughput(socket: &mut Socket, code: &str, bytes: u64) -> anyhow::Result<f64> {
    let start = Instant::now();
    socket.send(execute_frame("tput", "python", code)).await?;
    let mut received = 0u64;
    loop {
        let event = next_event(socket).await?;
        if event.kind == EventKind::Stdout {
            received += event.data.len() as u64;
        }
        if event.is_terminal() {
            check_terminal(&event)?;
            break;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    if received != bytes {
        bail!("received {received} bytes through the gateway, expected {bytes}");
    }
    Ok(bytes as f64 / secs / 1e6)
}

async fn direct_throughput(code: &str, bytes: u64) -> anyhow::Result<f64> {
    let start = Instant::now();
    let mut child = tokio::process::Command::new("python3")
        .args(["-c", code])
        .stdout(Stdio::piped())
        .spawn()?;
    let mut stdout = child.stdout.take().context("no stdout")?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut received = 0u64;
    loop {
        let n = stdout.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        received += n as u64;
    }
    child.wait().await?;
    let secs = start.elapsed().as_secs_f64();
    if received != bytes {
        bail!("read {received} bytes directly, expected {bytes}");
    }
    Ok(bytes as f64 / secs / 1e6)
}

async fn gateway_exec_rate(
    socket: &mut Socket,
    total: usize,
    concurrency: usize,
) -> anyhow::Result<f64> {
    let start = Instant::now();
    let mut sent = 0;
    let mut done = 0;
    while sent < concurrency.min(total) {
        socket
            .send(execute_frame(&format!("r{sent}"), "sh", "echo x"))
            .await?;
        sent += 1;
    }
    while done < total {
        let event = next_event(socket).await?;
        if event.is_terminal() {
            check_terminal(&event)?;
            done += 1;
            if sent < total {
                socket
                    .send(execute_frame(&format!("r{sent}"), "sh", "echo x"))
                    .await?;
                sent += 1;
            }
        }
    }
    Ok(total as f64 / start.elapsed().as_secs_f64())
}

async fn direct_exec_rate(total: usize, concurrency: usize) -> anyhow::Result<f64> {
    let start = Instant::now();
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let next = next.clone();
        workers.push(tokio::spawn(async move {
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < total {
                let output = tokio::process::Command::new("sh")
                    .args(["-c", "echo x"])
                    .output()
                    .await?;
                if !output.status.success() {
                    bail!("direct spawn failed: {:?}", output.status);
                }
            }
            anyhow::Ok(())
        }));
    }
    for worker in workers {
        worker.await??;
    }
    Ok(total as f64 / start.elapsed().as_secs_f64())
}
