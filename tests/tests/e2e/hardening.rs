//! Hardening: a client that stops reading holds no process, slot or working directory and
//! is eventually closed; stdin is bounded in bytes; web pages need an allowed origin;
//! programs inherit no stray descriptors; and shutdown reaches a connection stuck on its
//! socket.

use anyhow::{bail, ensure, Context as _, Result};
use sluice_gateway::Config;
use sluice_protocol::{ErrorCode, Event, EventKind, ExecuteRequest, LimitKind, Limits};
use sluice_tests::{
    assert_lifecycle, assert_socket_refusal, assert_stream_ok, events_of, eventually, patience,
    processes_with, request, text_of, unique_marker, wait_until_gone, wait_until_running, within,
    RawSocket, TestGateway,
};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;
use tokio::io::AsyncReadExt as _;
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::header::ORIGIN;
use tokio_tungstenite::tungstenite::http::HeaderValue;

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// `request` with a wall-clock limit and the largest output limit the gateway allows, so
/// that a program flooding its output is ended by the timeout (or by the gateway giving up
/// on the socket), never by the output limit.
fn flooding(request: ExecuteRequest, timeout_ms: u64) -> ExecuteRequest {
    ExecuteRequest {
        limits: Limits {
            timeout_ms: Some(timeout_ms),
            output_bytes: Some(1 << 30),
            ..Limits::default()
        },
        ..request
    }
}

/// The state letter of `pid` in `/proc/PID/stat` (`Z` for a zombie), or `None` once the
/// process is gone from `/proc` altogether: exited and reaped.
fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name in parentheses may contain anything; the state follows the last `)`.
    let (_, rest) = stat.rsplit_once(')')?;
    rest.trim_start().chars().next()
}

/// Waits until `pid` has left `/proc`: neither running nor a zombie.
async fn wait_until_reaped(pid: u32) -> Result<()> {
    eventually(
        patience(),
        &format!("process {pid} is reaped (not running, not a zombie)"),
        || process_state(pid).is_none(),
    )
    .await
    .with_context(|| format!("process {pid} is still in state {:?}", process_state(pid)))
}

/// The `started` event of `id`, which must be the next event on `socket`.
async fn started(socket: &mut RawSocket, id: &str) -> Result<Event> {
    let started = socket.next_event().await?;
    ensure!(
        started.kind == EventKind::Started && started.id.as_deref() == Some(id),
        "expected the started event of {id}, got {started:?}"
    );
    ensure!(started.pid.is_some(), "started has no pid: {started:?}");
    Ok(started)
}

/// A directory of the test's own for the gateway's `work_root`, removed when dropped.
#[derive(Debug)]
struct WorkBase(PathBuf);

impl WorkBase {
    fn new() -> Self {
        Self(std::env::temp_dir().join(unique_marker("work-base")))
    }

    /// The execution working directories that exist now (`BASE/sluice-*/x*`).
    fn execution_dirs(&self) -> Vec<PathBuf> {
        let Ok(roots) = std::fs::read_dir(&self.0) else {
            return Vec::new();
        };
        roots
            .flatten()
            .filter_map(|root| std::fs::read_dir(root.path()).ok())
            .flat_map(|dirs| dirs.flatten().map(|d| d.path()))
            .collect()
    }
}

impl Drop for WorkBase {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Bytes queued in the kernel on one end of a loopback TCP connection, from
/// `/proc/net/tcp`: `send` not yet taken by the peer, `receive` not yet read by the owner.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct TcpQueues {
    send: u64,
    receive: u64,
}

/// The queues of the connection end at `local` whose peer is `remote` (IPv4 only).
fn tcp_queues(local: SocketAddr, remote: SocketAddr) -> Option<TcpQueues> {
    let hex = |addr: SocketAddr| match addr.ip() {
        // The kernel prints the address as one native-endian (little on x86/arm) integer.
        IpAddr::V4(ip) => Some(format!(
            "{:08X}:{:04X}",
            u32::from_le_bytes(ip.octets()),
            addr.port()
        )),
        IpAddr::V6(_) => None,
    };
    let (local, remote) = (hex(local)?, hex(remote)?);
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.get(1) != Some(&local.as_str()) || fields.get(2) != Some(&remote.as_str()) {
            return None;
        }
        let (send, receive) = fields.get(4)?.split_once(':')?;
        Some(TcpQueues {
            send: u64::from_str_radix(send, 16).ok()?,
            receive: u64::from_str_radix(receive, 16).ok()?,
        })
    })
}

// ---------------------------------------------------------------------------------------
// A client that stops reading
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_holds_no_process_slot_or_directory() -> Result<()> {
    const TIMEOUT_MS: u64 = 2_000;
    let base = WorkBase::new();
    let gateway = TestGateway::spawn_with(Config {
        max_executions: 1,
        send_timeout: Duration::from_secs(60),
        // A short replay buffer, so that the program waits long before the flood's
        // timeout even on a slow machine (what waits is then almost all in the kernel's
        // buffers).
        replay_events: 4,
        work_root: Some(base.0.clone()),
        ..Config::default()
    })
    .await;
    let mut other = gateway.raw().await?;
    let mut flooder = gateway.raw().await?;
    let marker = unique_marker("unread-flood");
    flooder
        .execute(flooding(
            request("flood", "bash", &format!("exec -a {marker} yes")),
            TIMEOUT_MS,
        ))
        .await?;
    // Read the `started` event for the pid, then stop reading this socket: `yes` writes
    // far more than the socket buffers hold long before its timeout.
    let first = started(&mut flooder, "flood").await?;
    let pid = first.pid.context("no pid")?;
    let flood_session = first.session.clone();

    // The timeout kills the program although its output waits for the socket; the
    // gateway reaps it, frees the gateway's only execution slot and removes its working
    // directory without waiting for the client (the slot goes just before the directory).
    wait_until_reaped(pid).await?;
    let left = processes_with(&marker);
    ensure!(left.is_empty(), "still running: {left:?}");
    eventually(
        patience(),
        "the working directory of flood is removed",
        || base.execution_dirs().is_empty(),
    )
    .await
    .with_context(|| format!("left: {:?}", base.execution_dirs()))?;
    other
        .assert_still_works()
        .await
        .context("another socket runs a hello world in the freed slot")?;

    // Proof that the flood's events were still undelivered meanwhile: its id stays taken
    // until every output event has gone to the socket, so reusing it now is a duplicate.
    flooder
        .execute(request("flood", "sh", "echo again"))
        .await?;

    // Read again: until the flood's terminal event and the answer to that `execute` (a
    // refusal on the socket stream, or, if the id was free after all, a new session).
    let is_answer = |e: &Event| {
        e.session.is_none() || (e.id.as_deref() == Some("flood") && e.session != flood_session)
    };
    let is_flood = |e: &Event| e.id.as_deref() == Some("flood") && e.session == flood_session;
    loop {
        let received = flooder.received();
        let ended = received.iter().any(|e| is_flood(e) && e.is_terminal());
        if ended && received.iter().any(is_answer) {
            break;
        }
        flooder.next_event().await.with_context(|| {
            format!(
                "reading the flood to its end ({} events so far)",
                flooder.received().len()
            )
        })?;
    }
    let answer = flooder
        .received()
        .iter()
        .find(|e| is_answer(e))
        .cloned()
        .context("no answer")?;
    ensure!(
        answer.session.is_none(),
        "the id was free again before the client read anything: the flood's output had all \
         gone to the socket by then, so the socket never filled and this test proved nothing \
         ({answer:?})"
    );
    assert_socket_refusal(&answer, ErrorCode::DuplicateId);

    // Nothing was lost: gap-free, every byte the gateway counted, the timeout at the end.
    assert_stream_ok(flooder.received());
    let events: Vec<Event> = flooder
        .received()
        .iter()
        .filter(|e| is_flood(e))
        .cloned()
        .collect();
    assert_lifecycle(&events);
    let terminal = events.last().context("no events")?;
    assert_eq!(terminal.kind, EventKind::ResourceLimit, "{terminal:?}");
    assert_eq!(terminal.limit, Some(LimitKind::Timeout), "{terminal:?}");
    assert_eq!(terminal.limit_value, Some(TIMEOUT_MS), "{terminal:?}");
    let usage = terminal.usage.clone().context("no usage")?;
    let stdout = text_of(&events, EventKind::Stdout);
    assert_eq!(
        stdout.len() as u64,
        usage.stdout_bytes,
        "the client did not get every byte the gateway counted"
    );
    let unbroken = stdout
        .bytes()
        .enumerate()
        .all(|(i, b)| b == if i % 2 == 0 { b'y' } else { b'\n' });
    ensure!(unbroken, "the output is not one unbroken run of \"y\\n\"");

    flooder.assert_still_works().await?;
    assert_stream_ok(flooder.received());
    assert_stream_ok(other.received());
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_not_read_past_the_send_timeout_is_closed() -> Result<()> {
    let gateway = TestGateway::spawn_with(Config {
        send_timeout: Duration::from_millis(500),
        // The flood's session ends as soon as its only socket is gone.
        session_grace: Duration::ZERO,
        ..Config::default()
    })
    .await;
    let mut bystander = gateway.raw().await?;
    let mut deaf = gateway.raw().await?;
    let marker = unique_marker("send-timeout");
    // A minute of flooding: within the test, only the gateway giving up on the socket can
    // end it.
    deaf.execute(flooding(
        request("flood", "bash", &format!("exec -a {marker} yes")),
        60_000,
    ))
    .await?;
    let pid = started(&mut deaf, "flood").await?.pid.context("no pid")?;

    // Not reading: the gateway closes the socket, which ends the session (no grace
    // period here) and so cancels the execution.
    wait_until_reaped(pid).await?;
    wait_until_gone(&marker).await?;
    // What is already in the socket buffers can still be read; then the socket ends.
    deaf.closed().await?;
    assert_stream_ok(deaf.received());
    let flood = events_of(deaf.received(), "flood");
    ensure!(
        flood.iter().all(|e| !e.is_terminal()),
        "the flood got a terminal event, as if it had ended by itself: {:?}",
        flood.last()
    );

    // Other sockets are unaffected.
    bystander.assert_still_works().await?;
    let mut next = gateway.raw().await?;
    next.assert_still_works().await?;
    assert_stream_ok(bystander.received());
    assert_stream_ok(next.received());
    gateway.shutdown().await
}

// ---------------------------------------------------------------------------------------
// Stdin budget
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdin_waiting_for_a_program_is_bounded_in_bytes() -> Result<()> {
    const CHUNK: usize = 16 * 1024;
    const BUDGET: usize = 64 * 1024;
    let gateway = TestGateway::spawn_with(Config {
        stdin_queue_bytes: BUDGET,
        ..Config::default()
    })
    .await;
    let mut socket = gateway.raw().await?;
    let marker = unique_marker("stdin-budget");
    // The program shrinks its stdin pipe to one page, so that the pipe takes (almost)
    // nothing off the budget, then never reads. The marker is an argument, for /proc.
    let code = "import fcntl, time\n\
                print(fcntl.fcntl(0, fcntl.F_SETPIPE_SZ, 4096), flush=True)\n\
                time.sleep(30)\n";
    socket
        .execute(ExecuteRequest {
            args: vec![marker.clone()],
            ..request("deaf", "python", code)
        })
        .await?;
    let events = socket.wait_for_stdout("deaf", "\n").await?;
    let pipe_bytes: usize = text_of(&events, EventKind::Stdout)
        .trim()
        .parse()
        .context("the program did not print its pipe size")?;
    wait_until_running(&marker).await?;

    // Frames 1 to 4 fit the budget whatever the pipe took (at most 48 KiB wait before
    // each). A frame the pipe cannot take whole stays counted, so with a one-page pipe
    // frame 5 is over the budget; a bigger pipe may take a few frames more.
    let latest = BUDGET / CHUNK + 1 + pipe_bytes / CHUNK;
    let chunk = "x".repeat(CHUNK);
    let mut first_refused = None;
    for frame in 1..=latest {
        socket.stdin("deaf", Some(&chunk), false).await?;
        // The gateway answers frames in order: a `cancel` of an unknown id right after
        // the stdin frame marks where that frame's answer (if any) ends.
        let probe = format!("stdin-probe-{frame}");
        socket.cancel(&probe).await?;
        let quoted = format!("{probe:?}");
        let mut refused = false;
        loop {
            let event = socket.next_socket_error().await?;
            match event.code {
                Some(ErrorCode::UnknownExecution) if event.data.contains(&quoted) => break,
                Some(ErrorCode::StdinFull) => {
                    assert_socket_refusal(&event, ErrorCode::StdinFull);
                    assert!(event.data.contains("deaf"), "{event:?}");
                    refused = true;
                }
                _ => bail!("unexpected refusal after stdin frame {frame}: {event:?}"),
            }
        }
        if refused {
            first_refused = Some(frame);
            break;
        }
    }
    let first_refused = first_refused.with_context(|| {
        format!(
            "no stdin_full within {latest} frames of {CHUNK} bytes \
             (pipe: {pipe_bytes} bytes, budget: {BUDGET} bytes)"
        )
    })?;
    assert!(
        first_refused > BUDGET / CHUNK,
        "frame {first_refused} was refused although only {} bytes were sent before it",
        (first_refused - 1) * CHUNK
    );

    socket.cancel("deaf").await?;
    let events = socket.events_until_terminal("deaf").await?;
    assert_eq!(
        events.last().map(|e| e.kind),
        Some(EventKind::Cancelled),
        "{events:?}"
    );
    wait_until_gone(&marker).await?;
    socket.assert_still_works().await?;
    assert_stream_ok(socket.received());
    gateway.shutdown().await
}

// ---------------------------------------------------------------------------------------
// Origins
// ---------------------------------------------------------------------------------------

/// The HTTP status of a WebSocket handshake with `origin` (101 when it is accepted).
async fn handshake_status(gateway: &TestGateway, origin: &str) -> Result<u16> {
    let mut request = gateway.url().into_client_request()?;
    request
        .headers_mut()
        .insert(ORIGIN, HeaderValue::from_str(origin)?);
    let handshake = tokio::time::timeout(patience(), tokio_tungstenite::connect_async(request))
        .await
        .context("the handshake timed out")?;
    match handshake {
        Ok((mut ws, response)) => {
            let _ = ws.close(None).await;
            Ok(response.status().as_u16())
        }
        Err(tungstenite::Error::Http(response)) => Ok(response.status().as_u16()),
        Err(other) => bail!("the handshake with origin {origin} failed: {other}"),
    }
}

/// A socket opened with `origin` runs a hello world.
async fn works_from(gateway: &TestGateway, origin: &str) -> Result<()> {
    let mut socket = RawSocket::connect_with_origin(&gateway.url(), origin).await?;
    socket
        .assert_still_works()
        .await
        .with_context(|| format!("a socket opened from {origin}"))?;
    assert_stream_ok(socket.received());
    Ok(())
}

/// A socket opened without an `Origin` header (not a browser) runs a hello world.
async fn works_without_origin(gateway: &TestGateway) -> Result<()> {
    let mut socket = gateway.raw().await?;
    socket.assert_still_works().await?;
    assert_stream_ok(socket.received());
    Ok(())
}

/// Reads from `stream` until the gateway closes it (end of stream or reset).
async fn wait_until_closed_by_gateway(stream: &mut tokio::net::TcpStream) -> Result<()> {
    let mut buf = [0_u8; 512];
    within("the gateway to close an idle connection", async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_that_never_upgrade_are_closed_and_free_their_slots() -> Result<()> {
    // Two WebSockets allowed, so the TCP bound is that plus the fixed headroom (64).
    let gateway = TestGateway::spawn_with(Config {
        max_connections: 2,
        // Both from loopback: this test is about the TCP bound, not the per-peer one.
        max_connections_per_peer: Some(2),
        handshake_timeout: Duration::from_millis(300),
        ..Config::default()
    })
    .await;
    // A WebSocket opened first lives past the handshake timeout of the idle connections
    // opened after it.
    let mut early = gateway.raw().await?;
    // Enough idle connections to fill every TCP slot; each is closed at its deadline.
    let mut idle = Vec::new();
    for _ in 0..80 {
        idle.push(tokio::net::TcpStream::connect(gateway.addr()).await?);
    }
    for stream in &mut idle {
        wait_until_closed_by_gateway(stream).await?;
    }
    early
        .assert_still_works()
        .await
        .context("a WebSocket outlives the handshake timeout")?;
    // The slots the idle connections held are free again: a new socket is admitted.
    let mut late = gateway.raw().await?;
    late.assert_still_works().await?;
    assert_stream_ok(late.received());
    assert_stream_ok(early.received());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_origins_are_refused_unless_allowed() -> Result<()> {
    // By default no web page may open a socket.
    let gateway = TestGateway::spawn().await;
    assert_eq!(
        handshake_status(&gateway, "https://evil.example").await?,
        403
    );
    assert_eq!(handshake_status(&gateway, "null").await?, 403);
    works_without_origin(&gateway).await?;
    gateway.shutdown().await?;

    // An allow-list admits exactly its origins.
    let gateway = TestGateway::spawn_with(Config {
        allowed_origins: vec!["https://ide.example".into()],
        ..Config::default()
    })
    .await;
    works_from(&gateway, "https://ide.example").await?;
    for other in [
        "https://evil.example",
        "https://ide.example.evil.example",
        "http://ide.example",
    ] {
        assert_eq!(handshake_status(&gateway, other).await?, 403, "{other}");
    }
    works_without_origin(&gateway).await?;
    gateway.shutdown().await?;

    // `*` admits every origin.
    let gateway = TestGateway::spawn_with(Config {
        allowed_origins: vec!["*".into()],
        ..Config::default()
    })
    .await;
    works_from(&gateway, "https://evil.example").await?;
    works_from(&gateway, "https://ide.example").await?;
    works_without_origin(&gateway).await?;
    gateway.shutdown().await
}

// ---------------------------------------------------------------------------------------
// Inherited descriptors
// ---------------------------------------------------------------------------------------

/// Opens `/dev/null` and clears its close-on-exec flag: a descriptor every child of this
/// process would inherit, like one a gateway inherits from whoever started it.
#[allow(unsafe_code)] // One fcntl call that only clears a flag of a descriptor we own.
fn inheritable_descriptor() -> Result<std::fs::File> {
    use std::os::fd::AsRawFd as _;
    let file = std::fs::File::open("/dev/null")?;
    // SAFETY: fcntl(F_SETFD) takes integers and only changes the descriptor's flags; the
    // descriptor stays open and owned by `file`.
    let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETFD, 0) };
    ensure!(rc == 0, "fcntl: {}", std::io::Error::last_os_error());
    Ok(file)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn programs_inherit_no_descriptors_but_stdio() -> Result<()> {
    // Opened before the gateway starts, as a descriptor the gateway inherited would be.
    // (Opened after the start, it does reach programs: the gateway marks what it finds
    // at start close-on-exec, and everything it opens itself is close-on-exec anyway.)
    let inherited = inheritable_descriptor()?;
    let gateway = TestGateway::spawn().await;
    let mut socket = gateway.raw().await?;
    let code = "import os\nprint(' '.join(sorted(os.listdir('/proc/self/fd'), key=int)))\n";
    socket.execute(request("fds", "python", code)).await?;
    let events = socket.events_until_terminal("fds").await?;
    assert_lifecycle(&events);
    let terminal = events.last().context("no events")?;
    assert_eq!(terminal.exit_code, Some(0), "{events:?}");
    let stdout = text_of(&events, EventKind::Stdout);
    let fds: Vec<&str> = stdout.split_whitespace().collect();
    // 0, 1 and 2, plus the descriptor listdir itself has open on /proc/self/fd.
    for stdio in ["0", "1", "2"] {
        assert!(fds.contains(&stdio), "fd {stdio} missing: {fds:?}");
    }
    assert!(
        fds.len() <= 4,
        "the program inherited descriptors beyond stdio: {fds:?}"
    );
    drop(inherited);
    assert_stream_ok(socket.received());
    gateway.shutdown().await
}

// ---------------------------------------------------------------------------------------
// Shutdown
// ---------------------------------------------------------------------------------------

/// The largest send buffer the kernel grows a TCP socket to, plus the receive buffer a
/// socket starts with (it grows only as its owner reads): about the most that a client
/// that never reads lets the gateway hand to the kernel.
fn socket_buffer_bound() -> u64 {
    let field = |path: &str, index: usize| -> Option<u64> {
        std::fs::read_to_string(path)
            .ok()?
            .split_whitespace()
            .nth(index)?
            .parse()
            .ok()
    };
    let send_max = field("/proc/sys/net/ipv4/tcp_wmem", 2).unwrap_or(4 << 20);
    let receive_start = field("/proc/sys/net/ipv4/tcp_rmem", 1).unwrap_or(128 << 10);
    send_max + receive_start
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_reaches_a_connection_stuck_on_its_socket() -> Result<()> {
    // A refusal of an empty frame is about 190 bytes of JSON; count it as 150 and send
    // twice what fills the socket buffers. The frames themselves are 6 bytes each, so
    // what the gateway leaves unread fits easily in the other direction.
    const REFUSAL_BYTES: u64 = 150;
    let frames = 2 * socket_buffer_bound() / REFUSAL_BYTES;
    // Waiting out either of these would take far longer than the harness allows for
    // shutdown: shutdown has to end the stuck connection, not outwait it.
    let gateway = TestGateway::spawn_with(Config {
        shutdown_grace: Duration::from_secs(120),
        send_timeout: Duration::from_secs(120),
        ..Config::default()
    })
    .await;
    let mut socket = gateway.raw().await?;
    let marker = unique_marker("stuck-shutdown");
    socket
        .execute(request(
            "stuck",
            "bash",
            &format!("exec -a {marker} sleep 1000"),
        ))
        .await?;
    started(&mut socket, "stuck").await?;
    wait_until_running(&marker).await?;

    // Malformed frames, each answered with a refusal; none is read.
    for _ in 0..frames {
        socket.send_text("").await?;
    }
    // Wait until the connection is stuck both ways: the gateway has replies it cannot
    // send, frames it does not read (in its own receive queue, or still in the client's
    // send queue when that one is full: which depends on how far the kernel grew the
    // buffers), and neither changes between two looks.
    let (client, server) = (socket.local_addr()?, gateway.addr());
    let look = || (tcp_queues(server, client), tcp_queues(client, server));
    let mut previous = None;
    eventually(patience(), "the connection is stuck on its socket", || {
        let now = look();
        let stuck = match now {
            (Some(gateway_end), Some(client_end)) => {
                let unread = gateway_end.receive > 0 || client_end.send > 0;
                gateway_end.send > 0 && unread && previous == Some(now)
            }
            _ => false,
        };
        previous = Some(now);
        stuck
    })
    .await
    .with_context(|| format!("(gateway end, client end): {:?}", look()))?;

    gateway.shutdown().await?;
    let left = processes_with(&marker);
    assert!(left.is_empty(), "still running after shutdown: {left:?}");
    // Whatever the socket still delivers (it may end with a reset) is in order.
    socket.closed().await?;
    assert_stream_ok(socket.received());
    Ok(())
}
