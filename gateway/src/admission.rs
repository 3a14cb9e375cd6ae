//! Admission at the TCP level: at most a fixed number of accepted connections exist at
//! once, upgraded or not, and a connection that has not become a WebSocket within the
//! handshake timeout is closed, so idle or slow HTTP clients can neither use up the
//! gateway's file descriptors nor hold its slots. WebSocket sockets are limited
//! separately (and get HTTP 503); the TCP bound is that limit plus headroom for health
//! checks and refusals.

use axum::serve::Listener;
use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;

/// A listener that accepts only while it holds a free slot; the slot travels with the
/// connection (also through a WebSocket upgrade) and frees itself when it closes.
#[derive(Debug)]
pub(crate) struct Admitting<L> {
    inner: L,
    /// One permit per open TCP connection; each `Admitted` holds its own.
    slots: Arc<Semaphore>,
    handshake_timeout: Duration,
}

impl<L> Admitting<L> {
    pub(crate) fn new(inner: L, limit: usize, handshake_timeout: Duration) -> Self {
        Self {
            inner,
            slots: Arc::new(Semaphore::new(limit)),
            handshake_timeout,
        }
    }
}

impl<L: Listener> Listener for Admitting<L> {
    type Io = Admitted<L::Io>;
    type Addr = L::Addr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        // Wait for a slot before taking the next connection off the kernel's queue.
        let permit = loop {
            match self.slots.clone().acquire_owned().await {
                Ok(permit) => break permit,
                // The semaphore is never closed; if it were, admit nothing more.
                Err(_) => std::future::pending::<()>().await,
            }
        };
        let (io, addr) = self.inner.accept().await;
        (
            Admitted {
                io,
                _permit: permit,
                upgrading: Upgrading::default(),
                handshake_deadline: Some(Box::pin(tokio::time::sleep(self.handshake_timeout))),
            },
            addr,
        )
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// Set by the upgrade handler once it accepts a WebSocket handshake; from then on the
/// connection has no handshake deadline.
#[derive(Debug, Clone, Default)]
pub(crate) struct Upgrading(Arc<AtomicBool>);

impl Upgrading {
    pub(crate) fn accept(&self) {
        self.0.store(true, Ordering::Release);
    }

    fn accepted(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// An accepted connection and its admission slot.
#[derive(Debug)]
pub(crate) struct Admitted<T> {
    io: T,
    /// Returned to the listener when the connection is dropped.
    _permit: OwnedSemaphorePermit,
    upgrading: Upgrading,
    /// Fires while the connection is still plain HTTP; `None` once it is a WebSocket.
    handshake_deadline: Option<Pin<Box<Sleep>>>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Admitted<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(deadline) = this.handshake_deadline.as_mut() {
            if this.upgrading.accepted() {
                this.handshake_deadline = None;
            } else if deadline.as_mut().poll(cx).is_ready() {
                // hyper reads whenever it waits for a request, so an idle connection
                // ends up here and is closed.
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no WebSocket handshake within the handshake timeout",
                )));
            }
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Admitted<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// The peer address of an admitted connection and the flag that lifts its handshake
/// deadline, for `ConnectInfo`.
#[derive(Debug, Clone)]
pub(crate) struct Peer {
    pub(crate) addr: std::net::SocketAddr,
    pub(crate) upgrading: Upgrading,
}

impl<L> axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, Admitting<L>>>
    for Peer
where
    L: Listener<Addr = std::net::SocketAddr>,
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, Admitting<L>>) -> Self {
        Self {
            addr: *stream.remote_addr(),
            upgrading: stream.io().upgrading.clone(),
        }
    }
}
