//! A TCP proxy to put between a client and the gateway, to break the connection the way
//! a network does: [`Proxy::cut`] drops every connection now (no WebSocket close, and
//! whatever was in flight is lost); [`Proxy::cut_every`] drops each connection after it
//! has carried a given number of bytes from the gateway, in the middle of a frame if that
//! is where the count ends; [`Proxy::refuse`] makes the gateway unreachable.

use anyhow::{Context as _, Result};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

/// A proxy listening on a loopback port, forwarding each connection to `target`.
///
/// Dropping it stops accepting and cuts every connection.
#[derive(Debug)]
pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accepting: JoinHandle<()>,
}

#[derive(Debug)]
struct Shared {
    target: SocketAddr,
    /// The connections being forwarded: their number and the switch that cuts them.
    live: Mutex<Vec<(u64, oneshot::Sender<()>)>>,
    /// Connections accepted so far (refused ones included).
    accepted: watch::Sender<u64>,
    /// Connections cut so far, on command or automatically.
    cuts: AtomicU64,
    /// New connections are closed at once, as if nothing listened behind the proxy.
    refusing: AtomicBool,
    /// Automatic cuts: after this many bytes from the gateway on one connection (0: off)...
    cut_after: AtomicU64,
    /// ...this many more times.
    cuts_left: AtomicU64,
}

impl Proxy {
    /// Starts a proxy on `127.0.0.1:0` in front of `target`.
    pub async fn start(target: SocketAddr) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the proxy's port")?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            target,
            live: Mutex::new(Vec::new()),
            accepted: watch::Sender::new(0),
            cuts: AtomicU64::new(0),
            refusing: AtomicBool::new(false),
            cut_after: AtomicU64::new(0),
            cuts_left: AtomicU64::new(0),
        });
        let accepting = tokio::spawn(accept_loop(listener, Arc::clone(&shared)));
        Ok(Self {
            addr,
            shared,
            accepting,
        })
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The gateway's WebSocket endpoint through the proxy.
    pub fn url(&self) -> String {
        format!("ws://{}{}", self.addr, sluice_protocol::WS_PATH)
    }

    /// Cuts every connection now; returns how many there were.
    pub fn cut(&self) -> usize {
        let switches: Vec<_> = std::mem::take(&mut *self.shared.lock_live());
        let count = switches.len();
        for (_, switch) in switches {
            let _ = switch.send(());
        }
        count
    }

    /// From now on, each connection is cut once it has carried `bytes` bytes from the
    /// gateway to the client, `times` times in all.
    pub fn cut_every(&self, bytes: u64, times: u64) {
        self.shared.cuts_left.store(times, Ordering::SeqCst);
        self.shared.cut_after.store(bytes, Ordering::SeqCst);
    }

    /// While `refusing`, new connections are accepted and closed at once (the gateway
    /// seems gone, and the port stays taken so that nothing else gets it).
    pub fn refuse(&self, refusing: bool) {
        self.shared.refusing.store(refusing, Ordering::SeqCst);
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        *self.shared.accepted.borrow()
    }

    /// Connections cut so far (on command or automatically).
    pub fn cuts(&self) -> u64 {
        self.shared.cuts.load(Ordering::SeqCst)
    }

    /// Waits until at least `count` connections have been accepted.
    pub async fn wait_for_connections(&self, count: u64) -> Result<()> {
        let mut accepted = self.shared.accepted.subscribe();
        crate::within(
            &format!("{count} connections to the proxy"),
            accepted.wait_for(|n| *n >= count),
        )
        .await?
        .context("the proxy stopped")?;
        Ok(())
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accepting.abort();
        self.cut();
    }
}

impl Shared {
    fn lock_live(&self) -> std::sync::MutexGuard<'_, Vec<(u64, oneshot::Sender<()>)>> {
        self.live.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut next = 0_u64;
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        shared.accepted.send_modify(|n| *n += 1);
        if shared.refusing.load(Ordering::SeqCst) {
            drop(client);
            continue;
        }
        next += 1;
        let (switch, cut) = oneshot::channel();
        shared.lock_live().push((next, switch));
        tokio::spawn(forward(client, Arc::clone(&shared), next, cut));
    }
}

/// Forwards one connection until either side closes it or it is cut; then both sockets
/// are dropped.
async fn forward(client: TcpStream, shared: Arc<Shared>, number: u64, cut: oneshot::Receiver<()>) {
    let Ok(gateway) = TcpStream::connect(shared.target).await else {
        shared.lock_live().retain(|(n, _)| *n != number);
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = gateway.set_nodelay(true);
    let (mut client_read, mut client_write) = client.into_split();
    let (mut gateway_read, mut gateway_write) = gateway.into_split();
    let upstream = tokio::io::copy(&mut client_read, &mut gateway_write);
    let downstream = async {
        let mut buffer = vec![0_u8; 64 * 1024];
        let mut carried = 0_u64;
        loop {
            let n = gateway_read.read(&mut buffer).await?;
            if n == 0 {
                return Ok::<bool, std::io::Error>(false);
            }
            let limit = shared.cut_after.load(Ordering::SeqCst);
            let end = carried + n as u64;
            if limit > 0 && end >= limit && take_cut(&shared) {
                // Deliver up to the limit, then cut: the frame in flight is torn.
                let part = usize::try_from(limit.saturating_sub(carried)).unwrap_or(n);
                client_write.write_all(&buffer[..part.min(n)]).await?;
                return Ok(true);
            }
            client_write.write_all(&buffer[..n]).await?;
            carried = end;
        }
    };
    let was_cut = tokio::select! {
        _ = upstream => false,
        result = downstream => result.unwrap_or(false),
        _ = cut => true,
    };
    if was_cut {
        shared.cuts.fetch_add(1, Ordering::SeqCst);
    }
    shared.lock_live().retain(|(n, _)| *n != number);
    // Dropping the four halves closes both connections.
}

/// Takes one automatic cut, if any is left.
fn take_cut(shared: &Shared) -> bool {
    shared
        .cuts_left
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
            left.checked_sub(1)
        })
        .is_ok()
}
