//! [`Hooked`]: an accepted connection whose reads pass through a [`ReadHook`] and whose
//! writes pass straight through. Admission (the handshake deadline, the bytes allowed
//! before the upgrade) and the meter (the bytes of a message in flight) each watch a
//! connection's reads this way, with one wrapper between them.
//!
//! [`Lingering`]: an accepted connection that, when asked to ([`Linger::request`]),
//! closes gracefully once dropped. Closing a TCP socket that still holds unread bytes
//! makes the kernel send a reset instead of a FIN, and a reset may cost the peer what
//! it had not yet read, such as the close frame that says why it was closed. A client
//! closed for a protocol violation often has more bytes in flight (the rest of an
//! oversized frame), so such a connection ends by shutting its write side (a FIN after
//! the close frame) and reading and discarding what still comes, until the peer closes
//! or [`LINGER_FOR`] / [`LINGER_BYTES`] run out (a lingering close). The connection's
//! admission slot goes when it is dropped, before it lingers: a lingering socket is
//! bounded by those two limits, not by the connection caps.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};

/// Longest a dropped connection lingers for its peer to close.
pub(crate) const LINGER_FOR: Duration = Duration::from_secs(2);

/// Most bytes a lingering connection reads and discards before it gives up.
pub(crate) const LINGER_BYTES: usize = 1 << 20;

/// What watches a connection's reads.
pub(crate) trait ReadHook {
    /// Before a read: an error fails the read instead (and the connection closes).
    fn before_read(&mut self, cx: &mut Context<'_>) -> Option<io::Error>;

    /// After a read that brought `bytes`: an error fails the read.
    fn after_read(&mut self, bytes: usize) -> io::Result<()>;
}

/// A connection `io` whose reads `hook` watches.
#[derive(Debug)]
pub(crate) struct Hooked<T, H> {
    pub(crate) io: T,
    pub(crate) hook: H,
}

impl<T: AsyncRead + Unpin, H: ReadHook + Unpin> AsyncRead for Hooked<T, H> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(err) = this.hook.before_read(cx) {
            return Poll::Ready(Err(err));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            if let Err(err) = this.hook.after_read(buf.filled().len() - before) {
                return Poll::Ready(Err(err));
            }
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin, H: Unpin> AsyncWrite for Hooked<T, H> {
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

/// Set by whoever decides how a connection ends: when set, dropping its [`Lingering`]
/// closes it gracefully.
#[derive(Debug, Default)]
pub(crate) struct Linger(AtomicBool);

impl Linger {
    /// Asks for a lingering close when the connection is dropped.
    pub(crate) fn request(&self) {
        self.0.store(true, Ordering::Release);
    }

    fn requested(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// A connection `io` that lingers when dropped if its [`Linger`] asks it to.
#[derive(Debug)]
pub(crate) struct Lingering<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> {
    /// Always `Some` until dropped.
    io: Option<T>,
    linger: Arc<Linger>,
}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Lingering<T> {
    pub(crate) fn new(io: T, linger: Arc<Linger>) -> Self {
        Self {
            io: Some(io),
            linger,
        }
    }

    fn io(&mut self) -> io::Result<&mut T> {
        self.io
            .as_mut()
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Drop for Lingering<T> {
    fn drop(&mut self) {
        if !self.linger.requested() {
            return;
        }
        // Outside a runtime (it is going away) the socket just closes.
        if let (Some(io), Ok(runtime)) = (self.io.take(), tokio::runtime::Handle::try_current()) {
            runtime.spawn(linger(io));
        }
    }
}

/// Shuts the write side of `io` (what was written goes first, then a FIN), then reads
/// and discards until the peer closes, within [`LINGER_FOR`] and [`LINGER_BYTES`].
async fn linger<T: AsyncRead + AsyncWrite + Unpin>(mut io: T) {
    let drain = async {
        io.shutdown().await?;
        let mut scratch = [0_u8; 8 * 1024];
        let mut discarded = 0;
        while discarded <= LINGER_BYTES {
            match io.read(&mut scratch).await? {
                0 => break,
                read => discarded += read,
            }
        }
        io::Result::Ok(())
    };
    match tokio::time::timeout(LINGER_FOR, drain).await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => tracing::debug!(%err, "lingering close ended early"),
        Err(_) => tracing::debug!(
            ?LINGER_FOR,
            "lingering close: the peer did not close in time"
        ),
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> AsyncRead for Lingering<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut().io() {
            Ok(io) => Pin::new(io).poll_read(cx, buf),
            Err(err) => Poll::Ready(Err(err)),
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> AsyncWrite for Lingering<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut().io() {
            Ok(io) => Pin::new(io).poll_write(cx, buf),
            Err(err) => Poll::Ready(Err(err)),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut().io() {
            Ok(io) => Pin::new(io).poll_write_vectored(cx, bufs),
            Err(err) => Poll::Ready(Err(err)),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.io.as_ref().is_some_and(T::is_write_vectored)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().io() {
            Ok(io) => Pin::new(io).poll_flush(cx),
            Err(err) => Poll::Ready(Err(err)),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().io() {
            Ok(io) => Pin::new(io).poll_shutdown(cx),
            Err(err) => Poll::Ready(Err(err)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Four times the duplex pipe's buffer: written whole only if the other side reads.
    const MORE_THAN_BUFFERED: usize = 4 * 1024;

    #[tokio::test]
    async fn a_connection_asked_to_linger_shuts_after_what_it_wrote_then_drains() {
        let (ours, mut theirs) = tokio::io::duplex(1024);
        let linger = Arc::new(Linger::default());
        let mut io = Lingering::new(ours, linger.clone());
        io.write_all(b"goodbye").await.expect("written");
        linger.request();
        drop(io);
        let mut got = Vec::new();
        theirs
            .read_to_end(&mut got)
            .await
            .expect("an end, not an error");
        assert_eq!(got, b"goodbye");
        // What the peer still sends is read and discarded.
        theirs
            .write_all(&[b'x'; MORE_THAN_BUFFERED])
            .await
            .expect("the lingering side reads");
    }

    #[tokio::test]
    async fn a_connection_not_asked_to_linger_just_closes() {
        let (ours, mut theirs) = tokio::io::duplex(1024);
        drop(Lingering::new(ours, Arc::default()));
        assert!(
            theirs.write_all(&[b'x'; MORE_THAN_BUFFERED]).await.is_err(),
            "nobody reads a closed connection"
        );
    }
}
