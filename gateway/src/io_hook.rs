//! [`Hooked`]: an accepted connection whose reads pass through a [`ReadHook`] and whose
//! writes pass straight through. Admission (the handshake deadline, the bytes allowed
//! before the upgrade) and the meter (the bytes of a message in flight) each watch a
//! connection's reads this way, with one wrapper between them.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

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
