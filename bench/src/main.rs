//! `sluice-bench`: measures the gateway against spawning the same programs directly from
//! the same harness, in one run on one machine, and prints figures and ratios.
//!
//! 1. Latency from `execute` to the first `stdout` event for `echo x` in `sh`, against
//!    spawning `sh -c 'echo x'` and reading its first byte (runs interleaved).
//! 2. Throughput of stdout streamed from a child through the gateway to this client,
//!    against reading the same child through a pipe.
//! 3. Executions per second with a fixed number in flight, against direct spawning.
//! 4. Fan-out: one session streaming small events to 1, 10 and 100 attached sockets:
//!    events delivered per second in total, the gateway's CPU time per delivered event
//!    (against the 1-subscriber run) and p99 delivery latency.
//! 5. A persistent Python cell `print(1)`, execute to terminal event, against a fresh
//!    Python process per execution through the same gateway; the same for a Node cell
//!    `console.log(1)` against a fresh `node`.
//! 6. Isolation: execute -> first stdout with cgroups and with the full jail (cold and
//!    warm) against `--isolation none` and direct spawning; the same program on a
//!    terminal (`tty`, always a cold start) against it on pipes; executions per second;
//!    and ([`files`]) 1 MiB written to a session's workspace and read back with the file
//!    frames, against writing and reading the same bytes in a local tmpfs file.
//! 7. Fairness: a side execution's `print(1)` (execute to terminal event) while 16
//!    executions spin, 4 processes each, against the same on an idle gateway; with
//!    cgroups (a CPU share per execution) and without (`--isolation none`: a lower
//!    priority only). `--only fairness` runs just this.
//! 8. Tenants ([`tenants`]): executions per second and socket setup with a token against
//!    without; a second tenant's execute -> first stdout while one tenant keeps its
//!    whole quota spinning, against idle. `--only tenants` runs just this.
//! 9. Idle sockets ([`idle`]): the gateway's memory per idle WebSocket at 1,000, 5,000
//!    and 10,000 sockets. Only with `--only idle`.
//!
//! The gateway runs as a separate process (this binary re-executed with a hidden flag),
//! bound to port 0 on loopback, with its default configuration except for output limits
//! large enough for the throughput run.

// A report printer: stdout is its output.
#![allow(clippy::print_stdout)]

mod files;
mod idle;
mod tenants;

use anyhow::{bail, Context as _};
use clap::Parser;
use futures::{SinkExt as _, StreamExt as _};
use sluice_gateway::{Config, LimitBound};
use sluice_protocol::{ClientFrame, Event, EventKind, ExecuteRequest, Limits};
use std::net::SocketAddr;
use std::process::{Child, Stdio};
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
    /// Throughput rounds per side (alternating); medians are compared.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Executions per side in the executions-per-second test.
    #[arg(long, default_value_t = 2000)]
    executions: usize,
    /// Executions kept in flight at once.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Small events streamed in each fan-out run (one about every 100 us).
    #[arg(long, default_value_t = 10000)]
    fanout_events: usize,
    /// Round trips per side in the persistent-cell test.
    #[arg(long, default_value_t = 200)]
    cell_runs: usize,
    /// A short run for smoke testing (50 latency runs, 64 MiB once, 320 executions,
    /// 1000 fan-out events, 50 cells).
    #[arg(long)]
    quick: bool,
    /// Run only this section: `cells` (sections 5 and 6), `isolation` (what isolation
    /// costs, warm starts included), `fairness` (section 7), `tenants` (section 8) or
    /// `idle` (section 9).
    #[arg(
        long,
        value_name = "SECTION",
        value_parser = ["fairness", "tenants", "idle", "cells", "isolation"]
    )]
    only: Option<String>,
    /// Side executions per phase (idle, busy) in the fairness test.
    #[arg(long, default_value_t = 30)]
    fairness_runs: usize,
    /// Internal: run as the gateway process the benchmark talks to, on 127.0.0.1:0,
    /// printing the bound port on stdout.
    #[arg(long, hide = true)]
    serve_gateway: bool,
    /// Internal: the isolation level of that gateway process.
    #[arg(long, hide = true, default_value = "none")]
    gateway_isolation: String,
    /// Internal: the network setting of that gateway process.
    #[arg(long, hide = true, default_value = "auto")]
    gateway_network: String,
    /// Internal: that gateway accepts HS256 tokens made with the secret in this file.
    #[arg(long, hide = true)]
    gateway_jwt_secret_file: Option<std::path::PathBuf>,
    /// Internal: that gateway's executions per peer or tenant.
    #[arg(long, hide = true)]
    gateway_executions_per_peer: Option<usize>,
}

fn main() -> anyhow::Result<()> {
    if idle::is_gateway_process() {
        return idle::serve_gateway();
    }
    let mut args = Args::parse();
    if args.serve_gateway {
        return serve_gateway(&args);
    }
    if args.quick {
        args.latency_runs = 50;
        args.throughput_mib = 64;
        args.rounds = 1;
        args.executions = 320;
        args.fanout_events = 1000;
        args.cell_runs = 50;
        args.fairness_runs = 10;
    }
    // As the gateway does for itself: otherwise the client side of this harness spends
    // much of the throughput run in page faults for the buffers of each 64 KiB event,
    // which measures glibc, not the gateway. It applies to the direct baseline too.
    sluice_gateway::keep_freed_memory();
    if args.only.as_deref() == Some("fairness") {
        return fairness_only(&args);
    }
    if args.only.as_deref() == Some("cells") {
        return cells_only(&args);
    }
    if args.only.as_deref() == Some("isolation") {
        return isolation_only(&args);
    }
    if args.only.as_deref() == Some("tenants") {
        return tenants_only(&args);
    }
    if args.only.as_deref() == Some("idle") {
        return idle::run();
    }
    // The gateways run as their own processes (this binary, re-executed), as in
    // production: the measurements then include no sharing of threads or allocator with
    // the client. One runs with isolation off (the figures of sections 1-5); section 6
    // compares it with a gateway using cgroups only and one with full isolation (the
    // namespace jail, network off), where this host offers them.
    let (mut plain, plain_port) = start_gateway("none", "on")?;
    let mut isolated = isolated_gateways();
    // One thread drives the client (and the direct baseline): no wakeups between threads
    // on the receive path, as in a typical single-threaded client program.
    let client_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let addr = SocketAddr::from(([127, 0, 0, 1], plain_port));
    let local = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
    let result = client_rt.block_on(async {
        run_all(addr, plain.id(), &args).await?;
        isolation_section(addr, &isolated, &args).await?;
        println!("fairness: a side execution while 16 executions spin (4 processes each):");
        if let Some((_, _, port)) = isolated.first() {
            fairness_rows("cgroups", local(*port), &args).await?;
        }
        fairness_rows("none", addr, &args).await?;
        println!("tenants: authentication's cost, and a noisy tenant at its quota:");
        anyhow::Ok(())
    });
    let result = result.and_then(|()| tenants::tenant_section(&client_rt, addr, &args));
    // Closing its stdin tells a gateway to shut down.
    let gateways = std::iter::once(&mut plain).chain(isolated.iter_mut().map(|(_, g, _)| g));
    stop_gateways(gateways)?;
    result
}

/// Sections 5 and 6: persistent cells (Python, and Node where the gateway has it)
/// against a fresh interpreter per execution, and a 1 MB PNG display event.
async fn cell_rows(socket: &mut Socket, args: &Args) -> anyhow::Result<()> {
    // 5. Persistent cell against a fresh interpreter.
    let (cell, fresh) = cell_round_trips(socket, args.cell_runs, "python", "print(1)").await?;
    row(
        "python print(1) round trip, p50 (ms)",
        cell,
        fresh,
        cell / fresh,
        "<= 1 ms",
        cell <= 1.0,
    );
    println!("  (gateway column: a persistent session's cell; direct column: a fresh python3 per execution through the gateway)");
    // The same for Node's kernel, where the gateway has node.
    match cell_round_trips(socket, args.cell_runs, "node", "console.log(1)").await {
        Ok((cell, fresh)) => {
            row(
                "node console.log(1) round trip, p50 (ms)",
                cell,
                fresh,
                cell / fresh,
                "-",
                true,
            );
            println!("  (gateway column: a persistent session's Node cell; direct column: a fresh node per execution through the gateway)");
        }
        Err(err) => println!("node cell round trip: skipped ({err})"),
    }

    // 6. A 1 MB PNG as a display event, against the same base64 text on stdout.
    let (display, stdout) = display_round_trips(socket, args.cell_runs.min(20)).await?;
    row(
        "1 MB PNG display, execute -> event p50 (ms)",
        display,
        stdout,
        display / stdout,
        "-",
        true,
    );
    println!("  (gateway column: a cell's display() of a 1 MiB image/png; direct column: the same cell writing its 1.33 MB of base64 to stdout)");
    Ok(())
}

/// Stops the gateway processes (closing its stdin tells one to shut down) and checks
/// each ended cleanly.
pub(crate) fn stop_gateways<'a>(
    gateways: impl IntoIterator<Item = &'a mut Child>,
) -> anyhow::Result<()> {
    for gateway in gateways {
        drop(gateway.stdin.take());
        let status = gateway.wait()?;
        if !status.success() {
            bail!("a gateway process exited with {status}");
        }
    }
    Ok(())
}

/// The gateways whose isolation section 6 measures: cgroups only, and full isolation
/// (the namespace jail, network off), where this host offers them.
fn isolated_gateways() -> Vec<(&'static str, Child, u16)> {
    let mut isolated = Vec::new();
    for (label, isolation, network) in [
        ("cgroups, net on", "cgroups", "on"),
        ("full jail, net off", "namespaces", "off"),
    ] {
        match start_gateway(isolation, network) {
            Ok((gateway, port)) => isolated.push((label, gateway, port)),
            Err(err) => println!("  [{label}: not measured: {err:#}]"),
        }
    }
    isolated
}

/// Section 6: each isolated gateway against the one at `plain` (`--isolation none`) and
/// direct spawning, then warm starts on the fully isolated one.
async fn isolation_section(
    plain: SocketAddr,
    isolated: &[(&'static str, Child, u16)],
    args: &Args,
) -> anyhow::Result<()> {
    let local = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
    println!("isolation against `--isolation none` and direct, in the same run:");
    for (label, _, port) in isolated {
        isolation_rows(label, plain, local(*port), args).await?;
    }
    if let Some((_, _, port)) = isolated
        .iter()
        .find(|(label, ..)| label.starts_with("full"))
    {
        warm_rows(local(*port), args).await?;
    }
    Ok(())
}

/// `--only isolation`: section 6 alone (what each isolation level costs, and warm
/// starts).
fn isolation_only(args: &Args) -> anyhow::Result<()> {
    let (mut plain, plain_port) = start_gateway("none", "on")?;
    let mut isolated = isolated_gateways();
    let client_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    println!(
        "sluice-bench --only isolation; {} cores; isolation against none and direct:",
        num_cpus()
    );
    println!(
        "{:<38} {:>12} {:>12} {:>8} {:>9}",
        "metric", "gateway", "direct", "ratio", "target"
    );
    let plain_addr = SocketAddr::from(([127, 0, 0, 1], plain_port));
    let result = client_rt.block_on(isolation_section(plain_addr, &isolated, args));
    let gateways = std::iter::once(&mut plain).chain(isolated.iter_mut().map(|(_, g, _)| g));
    stop_gateways(gateways)?;
    result
}

/// `--only cells`: sections 5 and 6 alone, against a gateway with `--isolation none`.
fn cells_only(args: &Args) -> anyhow::Result<()> {
    let (mut gateway, port) = start_gateway("none", "on")?;
    let client_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    println!(
        "sluice-bench --only cells; {} cores; persistent cells against a fresh interpreter:",
        num_cpus()
    );
    println!(
        "{:<38} {:>12} {:>12} {:>8} {:>9}",
        "metric", "gateway", "direct", "ratio", "target"
    );
    let result = client_rt.block_on(async {
        let url = format!("ws://127.0.0.1:{port}{}", sluice_protocol::WS_PATH);
        let (mut socket, _) = tokio_tungstenite::connect_async(&url)
            .await
            .context("connect to the gateway")?;
        cell_rows(&mut socket, args).await?;
        let _ = socket.close(None).await;
        anyhow::Ok(())
    });
    drop(gateway.stdin.take());
    let status = gateway.wait()?;
    if !status.success() {
        bail!("the gateway process exited with {status}");
    }
    result
}

/// `--only fairness`: section 7 alone, against a gateway with cgroups and one without.
fn fairness_only(args: &Args) -> anyhow::Result<()> {
    let mut gateways = Vec::new();
    for isolation in ["cgroups", "none"] {
        match start_gateway(isolation, "on") {
            Ok((gateway, port)) => gateways.push((isolation, gateway, port)),
            Err(err) => println!("  [{isolation}: not measured: {err:#}]"),
        }
    }
    let client_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    println!(
        "sluice-bench --only fairness; {} cores; a side execution while 16 executions spin (4 processes each):",
        num_cpus()
    );
    println!(
        "{:<38} {:>12} {:>12} {:>8} {:>9}",
        "metric", "spinning", "idle", "ratio", "target"
    );
    let result = client_rt.block_on(async {
        for (isolation, _, port) in &gateways {
            fairness_rows(isolation, SocketAddr::from(([127, 0, 0, 1], *port)), args).await?;
        }
        anyhow::Ok(())
    });
    for (_, gateway, _) in &mut gateways {
        drop(gateway.stdin.take());
        let status = gateway.wait()?;
        if !status.success() {
            bail!("a gateway process exited with {status}");
        }
    }
    result
}

/// `--only tenants`: section 8 alone, against a gateway without credentials as the
/// baseline.
fn tenants_only(args: &Args) -> anyhow::Result<()> {
    let (mut plain, port) = start_gateway("none", "on")?;
    let client_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    println!(
        "sluice-bench --only tenants; {} cores; authentication's cost, and a noisy tenant at its quota:",
        num_cpus()
    );
    println!(
        "{:<38} {:>12} {:>12} {:>8} {:>9}",
        "metric", "measured", "baseline", "ratio", "target"
    );
    let result =
        tenants::tenant_section(&client_rt, SocketAddr::from(([127, 0, 0, 1], port)), args);
    drop(plain.stdin.take());
    let status = plain.wait()?;
    if !status.success() {
        bail!("a gateway process exited with {status}");
    }
    result
}

/// How long the spinners run before the steady-state measurement starts.
const FAIRNESS_SETTLE: Duration = Duration::from_secs(3);

/// Section 7: p50 milliseconds from `execute` to the terminal event of `print(1)` in
/// python, on an idle gateway and while 16 other executions spin 4 processes each.
/// The target (with a CPU share per execution) is within 3x of idle.
async fn fairness_rows(label: &str, addr: SocketAddr, args: &Args) -> anyhow::Result<()> {
    const SPINNING: usize = 16;
    let url = format!("ws://{addr}{}", sluice_protocol::WS_PATH);
    let (mut side, _) = tokio_tungstenite::connect_async(&url).await?;
    let (mut spinners, _) = tokio_tungstenite::connect_async(&url).await?;
    let runs = args.fairness_runs.max(1);
    // Warm the interpreter's files into the page cache first.
    side_runs(&mut side, "warm", runs).await?;
    let idle = side_runs(&mut side, "idle", runs).await?;
    start_spinners(&mut spinners, SPINNING).await?;
    let spin_started = Instant::now();
    // Right after the spinners start, each still has a full share; an execution that
    // has used 200 ms of CPU weighs a sixteenth (16 executions of 4 spinners on 2 cores
    // get there after about 1.6 s each). The target is for the steady state.
    let starting = side_runs(&mut side, "starting", runs).await?;
    tokio::time::sleep_until((spin_started + FAIRNESS_SETTLE).into()).await;
    let busy = side_runs(&mut side, "busy", runs).await?;
    cancel_spinners(&mut spinners, SPINNING).await?;
    row(
        &format!("{label}: side print(1), first s, p50"),
        starting,
        idle,
        starting / idle,
        "-",
        true,
    );
    let ratio = busy / idle;
    let target = if label == "cgroups" { "<= 3" } else { "-" };
    row(
        &format!("{label}: side print(1), p50 (ms)"),
        busy,
        idle,
        ratio,
        target,
        ratio <= 3.0,
    );
    let _ = side.close(None).await;
    let _ = spinners.close(None).await;
    Ok(())
}

/// Starts `count` executions `spin0`.. on `socket` that spin 4 processes each (three
/// background loops and the main one), and waits until each says it spins.
async fn start_spinners(socket: &mut Socket, count: usize) -> anyhow::Result<()> {
    let spin =
        "for i in 1 2 3; do (while :; do :; done) & done\necho spinning\nwhile :; do :; done";
    for n in 0..count {
        socket
            .send(execute_frame(&format!("spin{n}"), "sh", spin))
            .await?;
    }
    let mut spinning = 0;
    while spinning < count {
        let event = next_event(socket).await?;
        if event.is_terminal() {
            bail!("a spinner ended early: {} {}", event.kind, event.data);
        }
        if event.kind == EventKind::Stdout {
            spinning += 1;
        }
    }
    Ok(())
}

/// Cancels the spinners [`start_spinners`] started and waits for their ends.
async fn cancel_spinners(socket: &mut Socket, count: usize) -> anyhow::Result<()> {
    for n in 0..count {
        let frame = ClientFrame::Cancel(sluice_protocol::CancelFrame {
            id: format!("spin{n}"),
            session: None,
        });
        socket.send(Message::text(frame.to_json())).await?;
    }
    let mut ended = 0;
    while ended < count {
        if next_event(socket).await?.is_terminal() {
            ended += 1;
        }
    }
    Ok(())
}

/// p50 milliseconds from `execute` to the terminal event of `runs` python `print(1)`
/// executions, one after the other.
async fn side_runs(socket: &mut Socket, phase: &str, runs: usize) -> anyhow::Result<f64> {
    let mut times = Vec::new();
    for n in 0..runs {
        let id = format!("{phase}{n}");
        let start = Instant::now();
        socket
            .send(execute_frame(&id, "python", "print(1)"))
            .await?;
        wait_terminal(socket, &id).await?;
        times.push(ms(start.elapsed()));
    }
    Ok(median(&mut times))
}

/// Starts this binary as a gateway process with `isolation` and `network`; returns it
/// and its port.
fn start_gateway(isolation: &str, network: &str) -> anyhow::Result<(std::process::Child, u16)> {
    start_gateway_with(isolation, network, &[])
}

/// [`start_gateway`] with more of the hidden `--gateway-*` flags.
fn start_gateway_with(
    isolation: &str,
    network: &str,
    extra: &[String],
) -> anyhow::Result<(std::process::Child, u16)> {
    let mut gateway = std::process::Command::new(std::env::current_exe()?)
        .args([
            "--serve-gateway",
            "--gateway-isolation",
            isolation,
            "--gateway-network",
            network,
        ])
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("start the gateway process")?;
    let mut port_line = String::new();
    let stdout = gateway.stdout.take().context("gateway stdout")?;
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut port_line)?;
    let Ok(port) = port_line.trim().parse::<u16>() else {
        // It refused to start (the level is not available here); its log said why.
        let status = gateway.wait()?;
        bail!("the gateway refused to start ({status}); its error is above");
    };
    Ok((gateway, port))
}

/// Section 6: what isolation costs at the start of an execution, against the same
/// gateway with isolation off and against direct spawning. A cold start (a request with
/// an environment variable, which the warm pools never serve) pays for the whole jail;
/// where the gateway keeps warm pools, a warm start (the bench waits until every pool is
/// full before each) claims a jail that waits before its exec.
/// Starts measured after an idle gap, per isolation level.
const IDLE_START_RUNS: usize = 10;

/// How long the gateway is left idle before each of those starts: several RCU grace
/// periods.
const IDLE_GAP: Duration = Duration::from_millis(300);

async fn isolation_rows(
    label: &str,
    plain: SocketAddr,
    isolated_addr: SocketAddr,
    args: &Args,
) -> anyhow::Result<()> {
    let connect = |addr: SocketAddr| async move {
        let url = format!("ws://{addr}{}", sluice_protocol::WS_PATH);
        let (socket, _) = tokio_tungstenite::connect_async(&url).await?;
        anyhow::Ok(socket)
    };
    let (mut plain, mut isolated) = (connect(plain).await?, connect(isolated_addr).await?);
    for _ in 0..10 {
        gateway_first_stdout(&mut isolated, true).await?;
        gateway_first_stdout(&mut plain, false).await?;
    }
    let pools = idle::gauge(isolated_addr, "sluice_warm_pool_size").await? != "0";
    let (mut full, mut warm, mut none, mut direct) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut tty_full, mut tty_none) = (Vec::new(), Vec::new());
    let mut misses = 0;
    for _ in 0..args.latency_runs {
        full.push(gateway_first_stdout(&mut isolated, true).await?.1);
        none.push(gateway_first_stdout(&mut plain, false).await?.1);
        direct.push(direct_first_stdout().await?);
        // A terminal execution always starts cold: against the cold pipe start above.
        tty_full.push(timed_start(&mut isolated, tty_request(), false).await?.1);
        tty_none.push(timed_start(&mut plain, tty_request(), false).await?.1);
        if pools && pools_full(isolated_addr).await? {
            let (_, first, was_warm) = gateway_first_stdout(&mut isolated, false).await?;
            if was_warm {
                warm.push(first);
            } else {
                misses += 1;
            }
        }
    }
    // Starts after the gateway has been idle (an occasional user, not a burst): a
    // kernel wait that back-to-back starts share (a cgroup move waiting for an RCU grace
    // period) shows only here.
    let (mut idle_full, mut idle_none) = (Vec::new(), Vec::new());
    for _ in 0..args.latency_runs.min(IDLE_START_RUNS) {
        tokio::time::sleep(IDLE_GAP).await;
        idle_full.push(gateway_first_stdout(&mut isolated, true).await?.1);
        tokio::time::sleep(IDLE_GAP).await;
        idle_none.push(gateway_first_stdout(&mut plain, false).await?.1);
    }
    for list in [
        &mut full,
        &mut warm,
        &mut none,
        &mut direct,
        &mut tty_full,
        &mut tty_none,
        &mut idle_full,
        &mut idle_none,
    ] {
        list.sort();
    }
    let (i, i_none) = (
        ms(percentile(&idle_full, 50)),
        ms(percentile(&idle_none, 50)),
    );
    row(
        &format!(
            "{label}, cold after {} ms idle: execute -> stdout p50 (vs none)",
            IDLE_GAP.as_millis()
        ),
        i,
        i_none,
        i / i_none,
        "-",
        true,
    );
    let (f, n, d) = (
        ms(percentile(&full, 50)),
        ms(percentile(&none, 50)),
        ms(percentile(&direct, 50)),
    );
    row(
        &format!("{label}: execute -> stdout p50"),
        f,
        d,
        f / d,
        "-",
        true,
    );
    row(
        &format!("{label}: added start p50 (ms)"),
        f - n,
        f64::NAN,
        f64::NAN,
        "<= 5 ms",
        f - n <= 5.0,
    );
    for (what, tty, pipe) in [
        (label, &tty_full, &full),
        ("isolation none", &tty_none, &none),
    ] {
        let (t, p) = (ms(percentile(tty, 50)), ms(percentile(pipe, 50)));
        row(
            &format!("{what}, tty: execute -> stdout p50 (vs pipe)"),
            t,
            p,
            t / p,
            "<= pipe + 0.5 ms",
            t - p <= 0.5,
        );
    }
    if !warm.is_empty() {
        let w = ms(percentile(&warm, 50));
        let runs = warm.len() + misses;
        row(
            &format!("{label}, warm ({runs} runs, {misses} missed): execute -> stdout p50"),
            w,
            d,
            w / d,
            "-",
            true,
        );
        row(
            &format!("{label}, warm: added start p50 (ms)"),
            w - n,
            f64::NAN,
            f64::NAN,
            "<= 1 ms",
            w - n <= 1.0,
        );
    }
    let rate = gateway_exec_rate(&mut isolated, args.executions, args.concurrency).await?;
    let direct_rate = direct_exec_rate(args.executions, args.concurrency).await?;
    let full_jail = label.starts_with("full");
    row(
        &format!("{label}: executions/s at {}", args.concurrency),
        rate,
        direct_rate,
        rate / direct_rate,
        if full_jail { ">= 0.5x" } else { "-" },
        !full_jail || rate / direct_rate >= 0.5,
    );
    if full_jail {
        namespace_floor_rows(args, direct_rate).await;
        files::round_trip_rows(&mut isolated, args.latency_runs.min(50)).await?;
    }
    Ok(())
}

/// The ceiling any jail can reach on this host: the same `sh -c 'echo x'` started
/// through util-linux's `unshare` with the namespaces a jail needs (PID with a fresh
/// `/proc`, mount, IPC, UTS, cgroup; and a fresh network namespace or none), and nothing
/// else: no gateway, cgroup, read-only root, user switch or system-call filter. Beside
/// the gateway's figure it shows how much of the gap is the kernel's own price.
async fn namespace_floor_rows(args: &Args, direct_rate: f64) {
    for (what, network) in [("with a new network namespace", true), ("without", false)] {
        let mut command = vec![
            "--fork",
            "--pid",
            "--mount-proc",
            "--mount",
            "--ipc",
            "--uts",
            "--cgroup",
        ];
        if network {
            command.push("--net");
        }
        command.extend(["sh", "-c", "echo x"]);
        match exec_rate("unshare", &command, args.executions, args.concurrency).await {
            Ok(rate) => row(
                &format!("namespaces alone (unshare, {what}): executions/s"),
                rate,
                direct_rate,
                rate / direct_rate,
                "-",
                true,
            ),
            Err(err) => println!("  [namespaces alone, {what}: not measured: {err:#}]"),
        }
    }
}

/// Waits (up to 30 s) until every warm pool of the gateway at `addr` is full; false if
/// they never were.
async fn pools_full(addr: SocketAddr) -> anyhow::Result<bool> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let size = idle::gauge(addr, "sluice_warm_pool_size").await?;
        if idle::gauge(addr, "sluice_warm_pool_ready").await? == size {
            return Ok(true);
        }
        if Instant::now() > deadline {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Section 6b: a jailed Python program's start from the warm pool (the full-isolation
/// gateway keeps its default pool) against the same request started cold (it carries an
/// environment variable, which always starts cold) and against spawning `python3`
/// directly. Before each warm run the bench waits until `/metrics` shows every pool
/// full, so every warm run is one (a miss would be counted and reported).
async fn warm_rows(isolated: SocketAddr, args: &Args) -> anyhow::Result<()> {
    let url = format!("ws://{isolated}{}", sluice_protocol::WS_PATH);
    let (mut socket, _) = tokio_tungstenite::connect_async(&url).await?;
    let runs = (args.latency_runs / 3).max(20);
    let python = real_python()?;
    let (mut warm, mut cold, mut direct, mut misses) = (Vec::new(), Vec::new(), Vec::new(), 0);
    for _ in 0..runs {
        if !pools_full(isolated).await? {
            println!("  [warm starts: not measured: the pools were not full within 30 s]");
            return Ok(());
        }
        let (first, was_warm) = python_first_stdout(&mut socket, false).await?;
        if was_warm {
            warm.push(first);
        } else {
            misses += 1;
        }
        cold.push(python_first_stdout(&mut socket, true).await?.0);
        direct.push(direct_python_first_stdout(&python).await?);
    }
    if warm.is_empty() {
        println!("  [warm starts: not measured: every run started cold]");
        return Ok(());
    }
    for list in [&mut warm, &mut cold, &mut direct] {
        list.sort();
    }
    let (w, c, d) = (
        ms(percentile(&warm, 50)),
        ms(percentile(&cold, 50)),
        ms(percentile(&direct, 50)),
    );
    let label = format!(
        "python print(1), full jail ({} runs, {misses} missed the pool)",
        runs
    );
    row(
        &format!("{label}: warm -> stdout p50"),
        w,
        d,
        w / d,
        "<= 5 ms",
        w <= 5.0,
    );
    row(
        &format!("{label}: cold -> stdout p50"),
        c,
        d,
        c / d,
        "-",
        true,
    );
    // A notebook's first cell: a new session's interpreter started for it, after the
    // gateway has been idle (an occasional user; a kernel wait hides in back-to-back
    // starts).
    let mut first_cells = Vec::new();
    for n in 0..runs.min(IDLE_START_RUNS) {
        tokio::time::sleep(IDLE_GAP).await;
        let request = ExecuteRequest {
            session: Some(format!("bench-first-cell-{n}")),
            persistent: true,
            ..execute_request(&format!("first-cell-{n}"), "python", "print(1)")
        };
        first_cells.push(timed_start(&mut socket, request, false).await?.1);
    }
    first_cells.sort();
    let f = ms(percentile(&first_cells, 50));
    row(
        &format!(
            "python first cell of a new session, full jail, after 300 ms idle ({} runs): execute -> stdout p50",
            first_cells.len()
        ),
        f,
        d,
        f / d,
        "-",
        true,
    );
    Ok(())
}

/// Runs `print(1)` in Python; returns the time to its first stdout and whether
/// `started` said it came from the warm pool. `cold`: with an environment variable,
/// which the pool never serves.
async fn python_first_stdout(socket: &mut Socket, cold: bool) -> anyhow::Result<(Duration, bool)> {
    let mut request = execute_request("py", "python", "print(1)");
    request.limits.timeout_ms = None;
    let (_, first, warm) = timed_start(socket, request, cold).await?;
    Ok((first, warm))
}

async fn direct_python_first_stdout(python: &str) -> anyhow::Result<Duration> {
    direct_first_stdout_of(python, &["-c", "print(1)"]).await
}

/// The gateway side, set up as `sluice serve` sets itself up (same worker threads, default
/// configuration) except for limits large enough for the throughput run; stops when
/// stdin closes.
fn serve_gateway(args: &Args) -> anyhow::Result<()> {
    let isolation: sluice_gateway::Isolation =
        args.gateway_isolation.parse().map_err(anyhow::Error::msg)?;
    let network: sluice_gateway::Network =
        args.gateway_network.parse().map_err(anyhow::Error::msg)?;
    serve_on_loopback(Config {
        limits: sluice_gateway::LimitsConfig {
            output_bytes: LimitBound {
                default: 4 << 30,
                max: 4 << 30,
            },
            ..Default::default()
        },
        max_executions_per_connection: 1024,
        // Room for a whole fan-out run, so no subscriber can fall behind the buffer.
        replay_events: 100_000,
        isolation,
        network,
        max_executions_per_peer: args.gateway_executions_per_peer,
        auth: sluice_gateway::AuthConfig {
            jwt_secret_file: args.gateway_jwt_secret_file.clone(),
            ..Default::default()
        },
        ..Config::default()
    })
}

/// Runs a gateway process with `config` on 127.0.0.1:0 as `sluice serve` runs (the same
/// worker threads), printing the bound port on stdout; it stops when stdin closes.
pub(crate) fn serve_on_loopback(config: Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(sluice_gateway::default_worker_threads())
        .thread_name("gateway")
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        println!("{}", listener.local_addr()?.port());
        let stdin_closed = async {
            let mut sink = Vec::new();
            let _ = tokio::io::AsyncReadExt::read_to_end(&mut tokio::io::stdin(), &mut sink).await;
        };
        sluice_gateway::run(listener, config, stdin_closed).await?;
        anyhow::Ok(())
    })
}

async fn run_all(addr: SocketAddr, gateway_pid: u32, args: &Args) -> anyhow::Result<()> {
    let url = format!("ws://{addr}{}", sluice_protocol::WS_PATH);
    let (mut socket, _) = tokio_tungstenite::connect_async(&url)
        .await
        .context("connect to the gateway")?;
    println!(
        "sluice-bench: gateway process at {url}; {} cores",
        num_cpus()
    );
    println!(
        "{:<38} {:>12} {:>12} {:>8} {:>9}",
        "metric", "gateway", "direct", "ratio", "target"
    );

    // 1. Latency, interleaved so both sides see the same machine state.
    for _ in 0..10 {
        gateway_first_stdout(&mut socket, false).await?;
        direct_first_stdout().await?;
    }
    let (mut via, mut direct, mut started) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..args.latency_runs {
        let (to_started, to_stdout, _) = gateway_first_stdout(&mut socket, false).await?;
        started.push(to_started);
        via.push(to_stdout);
        direct.push(direct_first_stdout().await?);
    }
    via.sort();
    direct.sort();
    started.sort();
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
    let sp50 = ms(percentile(&started, 50));
    row(
        "execute -> started, p50 (ms)",
        sp50,
        f64::NAN,
        f64::NAN,
        "-",
        true,
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
    // Rounds alternate between the two sides; the medians are compared. A direct pipe
    // reader is very sensitive to scheduling here (a reader that wakes on every page
    // ping-pongs with the writer; one that wakes late reads full pipes): the spread is
    // printed so a reader of the figures can see it.
    let (mut via_runs, mut direct_runs) = (Vec::new(), Vec::new());
    let (mut gateway_ms, mut client_ms) = (0.0, 0.0);
    for _ in 0..args.rounds.max(1) {
        let (gateway_before, client_before) =
            (process_cpu(gateway_pid)?, process_cpu(std::process::id())?);
        via_runs.push(gateway_throughput(&mut socket, &code, bytes).await?);
        gateway_ms += process_cpu(gateway_pid)?
            .saturating_sub(gateway_before)
            .as_secs_f64()
            * 1e3;
        client_ms += process_cpu(std::process::id())?
            .saturating_sub(client_before)
            .as_secs_f64()
            * 1e3;
        direct_runs.push(direct_throughput(&code, bytes).await?);
    }
    let mib = (args.throughput_mib * args.rounds.max(1)) as f64;
    println!(
        "CPU per MiB streamed: gateway {:.3} ms, client {:.3} ms",
        gateway_ms / mib,
        client_ms / mib
    );
    println!(
        "throughput runs (MB/s): gateway {}; direct {}",
        spread(&via_runs),
        spread(&direct_runs)
    );
    let via = median(&mut via_runs);
    let direct = median(&mut direct_runs);
    let label = format!(
        "stdout throughput, {} MiB, median (MB/s)",
        args.throughput_mib
    );
    row(
        &label,
        via,
        direct,
        via / direct,
        ">= 0.5",
        via / direct >= 0.5,
    );

    // 3. Executions per second.
    let cpu_before = process_cpu(gateway_pid)?;
    let via = gateway_exec_rate(&mut socket, args.executions, args.concurrency).await?;
    let gateway_cpu = process_cpu(gateway_pid)?.saturating_sub(cpu_before);
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
    let per_execution = gateway_cpu.as_secs_f64() * 1e6 / args.executions as f64;
    println!(
        "gateway CPU per execution (user+system, its own threads only): {per_execution:.0} us"
    );

    // 4. Fan-out.
    let mut baseline_cpu = f64::NAN;
    for subscribers in [1, 10, 100] {
        let run = fan_out(&url, gateway_pid, subscribers, args.fanout_events).await?;
        if subscribers == 1 {
            baseline_cpu = run.cpu_per_event_us;
        }
        let ratio = run.cpu_per_event_us / baseline_cpu;
        let target = if subscribers == 1 { "-" } else { "<= 1.0" };
        row(
            &format!("fan-out {subscribers:>3}: gateway CPU/event (us)"),
            run.cpu_per_event_us,
            baseline_cpu,
            ratio,
            target,
            subscribers == 1 || ratio <= 1.0,
        );
        println!(
            "fan-out {subscribers:>3}: {:.0} events/s delivered in total, p99 delivery latency {:.2} ms",
            run.events_per_second, run.p99_latency_ms
        );
    }

    cell_rows(&mut socket, args).await?;
    let _ = socket.close(None).await;
    Ok(())
}

/// What one fan-out run measured.
struct FanOut {
    events_per_second: f64,
    cpu_per_event_us: f64,
    p99_latency_ms: f64,
}

/// Streams `events` small events through one session read by `subscribers` sockets
/// (the one that runs the program and the others attached), each read by its own task.
async fn fan_out(
    url: &str,
    gateway_pid: u32,
    subscribers: usize,
    events: usize,
) -> anyhow::Result<FanOut> {
    let session = format!("fan-out-{subscribers}");
    let (mut runner, _) = tokio_tungstenite::connect_async(url).await?;
    let mut ready = ExecuteRequest {
        session: Some(session.clone()),
        ..execute_request("ready", "sh", "true")
    };
    runner
        .send(Message::text(ClientFrame::Execute(ready.clone()).to_json()))
        .await?;
    wait_terminal(&mut runner, "ready").await?;
    let mut readers = Vec::new();
    for _ in 1..subscribers {
        let (mut socket, _) = tokio_tungstenite::connect_async(url).await?;
        let attach = ClientFrame::Attach(sluice_protocol::AttachFrame {
            session: session.clone(),
            since: None,
            workspace: false,
            ack: false,
        });
        socket.send(Message::text(attach.to_json())).await?;
        // The replay of `ready` shows the attachment is in place.
        wait_terminal(&mut socket, "ready").await?;
        readers.push(socket);
    }
    // One short line every ~100 us: each line is its own event (the pump keeps up), at a
    // rate that every subscriber can follow, so the runs compare the cost of one event.
    let code = format!(
        "import sys, time\nw = sys.stdout.write\nf = sys.stdout.flush\nfor i in range({events}):\n    w(f'{{i}}\\n')\n    f()\n    time.sleep(0.0001)\n"
    );
    ready.id = "stream".into();
    ready.code = code;
    ready.language = "python".into();
    let cpu_before = process_cpu(gateway_pid)?;
    let start = Instant::now();
    runner
        .send(Message::text(ClientFrame::Execute(ready).to_json()))
        .await?;
    let mut tasks = Vec::new();
    for socket in readers.into_iter().chain(std::iter::once(runner)) {
        tasks.push(tokio::spawn(read_stream(socket)));
    }
    let mut delivered = 0_usize;
    let mut latencies = Vec::new();
    for task in tasks {
        let (count, mut lat) = task.await??;
        delivered += count;
        latencies.append(&mut lat);
    }
    let elapsed = start.elapsed().as_secs_f64();
    let cpu = process_cpu(gateway_pid)?.saturating_sub(cpu_before);
    latencies.sort_by(f64::total_cmp);
    let p99 = latencies
        .get(latencies.len().saturating_sub(1) * 99 / 100)
        .copied()
        .unwrap_or(f64::NAN);
    Ok(FanOut {
        events_per_second: delivered as f64 / elapsed,
        cpu_per_event_us: cpu.as_secs_f64() * 1e6 / delivered.max(1) as f64,
        p99_latency_ms: p99,
    })
}

/// Reads one subscriber's events until the streaming execution's terminal event: how
/// many arrived and, for each, milliseconds from the gateway's timestamp to arrival.
async fn read_stream(mut socket: Socket) -> anyhow::Result<(usize, Vec<f64>)> {
    let mut count = 0;
    let mut latencies = Vec::new();
    loop {
        let event = next_event(&mut socket).await?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs_f64();
        if event.kind == EventKind::Gap {
            bail!(
                "a fan-out subscriber fell behind the replay buffer: {}",
                event.data
            );
        }
        if event.id.as_deref() != Some("stream") {
            continue;
        }
        count += 1;
        latencies.push((now - event.timestamp) * 1e3);
        if event.is_terminal() {
            check_terminal(&event)?;
            let _ = socket.close(None).await;
            return Ok((count, latencies));
        }
    }
}

async fn wait_terminal(socket: &mut Socket, id: &str) -> anyhow::Result<()> {
    loop {
        let event = next_event(socket).await?;
        if event.is_terminal() && event.id.as_deref() == Some(id) {
            return check_terminal(&event);
        }
    }
}

/// p50 milliseconds from `execute` to the terminal event for `print(1)`: as a cell of a
/// persistent session, and as a fresh python process.
async fn cell_round_trips(
    socket: &mut Socket,
    runs: usize,
    language: &str,
    code: &str,
) -> anyhow::Result<(f64, f64)> {
    let session = format!("bench-kernel-{language}");
    let cell = |id: String| ExecuteRequest {
        session: Some(session.clone()),
        persistent: true,
        ..execute_request(&id, language, code)
    };
    // The first cell starts the interpreter.
    let warm = format!("warm-{language}");
    socket
        .send(Message::text(
            ClientFrame::Execute(cell(warm.clone())).to_json(),
        ))
        .await?;
    wait_terminal(socket, &warm).await?;
    // In alternating blocks, so both sides see the same drift of the machine, but not
    // one after the other: a fresh interpreter's exit (its memory unmapped, its
    // directory removed) would run into the next cell and be counted there.
    const BLOCK: usize = 10;
    let (mut cells, mut fresh) = (Vec::new(), Vec::new());
    for block in (0..runs).step_by(BLOCK) {
        for n in block..(block + BLOCK).min(runs) {
            let id = format!("cell-{language}-{n}");
            let start = Instant::now();
            socket
                .send(Message::text(
                    ClientFrame::Execute(cell(id.clone())).to_json(),
                ))
                .await?;
            wait_terminal(socket, &id).await?;
            cells.push(ms(start.elapsed()));
        }
        for n in block..(block + BLOCK).min(runs) {
            let id = format!("fresh-{language}-{n}");
            let start = Instant::now();
            socket.send(execute_frame(&id, language, code)).await?;
            wait_terminal(socket, &id).await?;
            fresh.push(ms(start.elapsed()));
        }
    }
    Ok((median(&mut cells), median(&mut fresh)))
}

/// p50 milliseconds from `execute` to the arrival of a 1 MiB PNG: as a `display` event of
/// a persistent cell, and as the same base64 text written to stdout by a cell (to its
/// terminal event), both in the session `bench-kernel`.
async fn display_round_trips(socket: &mut Socket, runs: usize) -> anyhow::Result<(f64, f64)> {
    let cell = |id: &str, code: &str| {
        let request = ExecuteRequest {
            session: Some("bench-kernel".into()),
            persistent: true,
            ..execute_request(id, "python", code)
        };
        Message::text(ClientFrame::Execute(request).to_json())
    };
    let setup = "import base64, os, sys\npng = base64.b64encode(os.urandom(1 << 20)).decode()";
    socket.send(cell("display-setup", setup)).await?;
    wait_terminal(socket, "display-setup").await?;
    let (mut displays, mut stdouts) = (Vec::new(), Vec::new());
    for n in 0..runs.max(1) {
        let id = format!("display{n}");
        let start = Instant::now();
        socket
            .send(cell(&id, "display({'image/png': png}, raw=True)"))
            .await?;
        loop {
            let event = next_event(socket).await?;
            if event.id.as_deref() != Some(id.as_str()) {
                continue;
            }
            if event.kind == EventKind::Display {
                let size = event
                    .bundle
                    .as_ref()
                    .and_then(|b| b.get("image/png"))
                    .and_then(|v| v.as_str())
                    .map_or(0, str::len);
                anyhow::ensure!(size > 1 << 20, "the display carried {size} bytes of image");
                displays.push(ms(start.elapsed()));
                wait_terminal(socket, &id).await?;
                break;
            }
            if event.is_terminal() {
                bail!("{id} ended without its display: {event:?}");
            }
        }
        let id = format!("display-stdout{n}");
        let start = Instant::now();
        socket
            .send(cell(&id, "sys.stdout.write(png)\nsys.stdout.flush()"))
            .await?;
        wait_terminal(socket, &id).await?;
        stdouts.push(ms(start.elapsed()));
    }
    Ok((median(&mut displays), median(&mut stdouts)))
}

/// User plus system CPU time a process has used so far (its own threads, not children).
fn process_cpu(pid: u32) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let after_name = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .unwrap_or_default();
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // The kernel reports clock ticks; USER_HZ is 100 on Linux.
    Ok(Duration::from_millis((ticks(11) + ticks(12)) * 10))
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

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

fn spread(values: &[f64]) -> String {
    values
        .iter()
        .map(|v| format!("{v:.0}"))
        .collect::<Vec<_>>()
        .join(", ")
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

fn execute_request(id: &str, language: &str, code: &str) -> ExecuteRequest {
    ExecuteRequest {
        id: id.into(),
        language: language.into(),
        code: code.into(),
        limits: Limits {
            timeout_ms: Some(600_000),
            output_bytes: None,
            ..Limits::default()
        },
        ..ExecuteRequest::default()
    }
}

fn execute_frame(id: &str, language: &str, code: &str) -> Message {
    Message::text(ClientFrame::Execute(execute_request(id, language, code)).to_json())
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

/// Runs `echo x` in `sh`; see [`timed_start`].
/// `echo x` in `sh` on a terminal (`tty`), as section 6 times it.
fn tty_request() -> ExecuteRequest {
    ExecuteRequest {
        tty: true,
        ..execute_request("lat", "sh", "echo x")
    }
}

async fn gateway_first_stdout(
    socket: &mut Socket,
    cold: bool,
) -> anyhow::Result<(Duration, Duration, bool)> {
    timed_start(socket, execute_request("lat", "sh", "echo x"), cold).await
}

/// Sends `request` and returns the time from sending it to its `started` event and to
/// its first `stdout` event, and whether it came from a warm pool. `cold`: with an
/// environment variable, which the warm pools never serve.
async fn timed_start(
    socket: &mut Socket,
    mut request: ExecuteRequest,
    cold: bool,
) -> anyhow::Result<(Duration, Duration, bool)> {
    if cold {
        request.env.insert("SLUICE_BENCH_COLD".into(), "1".into());
    }
    let start = Instant::now();
    socket
        .send(Message::text(ClientFrame::Execute(request).to_json()))
        .await?;
    let (mut started, mut first, mut warm) = (None, None, false);
    loop {
        let event = next_event(socket).await?;
        if event.kind == EventKind::Started {
            started = Some(start.elapsed());
            warm = event.data == "warm";
        }
        if event.kind == EventKind::Stdout && first.is_none() {
            first = Some(start.elapsed());
        }
        if event.is_terminal() {
            check_terminal(&event)?;
            return Ok((
                started.context("no started event")?,
                first.context("no stdout event")?,
                warm,
            ));
        }
    }
}

async fn direct_first_stdout() -> anyhow::Result<Duration> {
    direct_first_stdout_of("sh", &["-c", "echo x"]).await
}

/// Spawns `program` with `args` directly and times its first byte of stdout (then
/// reads the rest and reaps it).
async fn direct_first_stdout_of(program: &str, args: &[&str]) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let mut child = tokio::process::Command::new(program)
        .args(args)
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

/// The real python executable: `python3` on PATH may be a wrapper script (pyenv) that
/// costs tens of milliseconds a start; the gateway resolves it once, so does the baseline.
fn real_python() -> anyhow::Result<String> {
    let output = std::process::Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .context("run python3")?;
    Ok(String::from_utf8(output.stdout)?.trim().to_owned())
}

async fn direct_throughput(code: &str, bytes: u64) -> anyhow::Result<f64> {
    let python = real_python()?;
    let start = Instant::now();
    let mut child = tokio::process::Command::new(python)
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
    exec_rate("sh", &["-c", "echo x"], total, concurrency).await
}

/// Runs `program` with `args` `total` times, `concurrency` at a time, each to its end;
/// how many ran per second.
async fn exec_rate(
    program: &'static str,
    args: &[&'static str],
    total: usize,
    concurrency: usize,
) -> anyhow::Result<f64> {
    let args: std::sync::Arc<[&'static str]> = args.into();
    let start = Instant::now();
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (next, args) = (next.clone(), args.clone());
        workers.push(tokio::spawn(async move {
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < total {
                let output = tokio::process::Command::new(program)
                    .args(args.iter())
                    .output()
                    .await?;
                if !output.status.success() {
                    bail!(
                        "{program} failed: {:?}: {}",
                        output.status,
                        String::from_utf8_lossy(&output.stderr).trim()
                    );
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
