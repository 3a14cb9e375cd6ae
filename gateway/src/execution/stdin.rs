//! The stdin feeder: input the connection queued for a running program, written to the
//! program's stdin by a task of its own, started only when the first input arrives.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::io::AsyncWriteExt as _;
use tokio::net::unix::pipe;
use tokio::sync::mpsc;

/// Input for a running program, queued by the connection.
#[derive(Debug)]
pub(crate) struct StdinChunk {
    pub(crate) data: Option<String>,
    pub(crate) eof: bool,
    /// The data's bytes held against the gateway's memory budget until written.
    pub(crate) memory: Option<crate::buffer_budget::Reservation>,
}

/// The program's stdin. Until the client sends input the pipe stays a plain descriptor
/// (most programs never get any, and registering it with the reactor costs system calls);
/// the first chunk starts a writer task that owns the pipe and the queue from then on.
#[derive(Debug)]
pub(super) struct StdinFeed {
    /// The program's stdin until the writer task takes it; dropping it closes stdin.
    pipe: Option<std::os::fd::OwnedFd>,
    /// The connection's queue of input; the writer task takes it with the pipe.
    queue: Option<mpsc::Receiver<StdinChunk>>,
    /// Bytes queued and not yet written, shared with the connection's handle.
    queued_bytes: Arc<AtomicUsize>,
    /// The writer task, aborted when the execution ends.
    writer: Option<tokio::task::JoinHandle<()>>,
    /// `pipe` is a terminal's control side: the end of input is typed (Ctrl-D), and it
    /// stays open.
    terminal: bool,
}

impl StdinFeed {
    pub(super) fn new(
        pipe: std::os::fd::OwnedFd,
        queue: mpsc::Receiver<StdinChunk>,
        queued_bytes: Arc<AtomicUsize>,
        terminal: bool,
    ) -> Self {
        Self {
            pipe: Some(pipe),
            queue: Some(queue),
            queued_bytes,
            writer: None,
            terminal,
        }
    }

    /// True while nobody has sent input yet and the queue is still open.
    pub(super) fn is_idle(&self) -> bool {
        self.writer.is_none() && self.queue.is_some()
    }

    pub(super) async fn next_chunk(&mut self) -> Option<StdinChunk> {
        match &mut self.queue {
            Some(queue) => queue.recv().await,
            None => std::future::pending().await,
        }
    }

    /// Hands the pipe, `first` and the rest of the queue to a writer task.
    pub(super) fn start(&mut self, first: StdinChunk) {
        let Some(pipe) = self.pipe.take() else { return };
        let queue = self.queue.take();
        // A terminal's control side is not a pipe, but writes and waits the same way.
        let sender = if self.terminal {
            pipe::Sender::from_owned_fd_unchecked(pipe)
        } else {
            pipe::Sender::from_owned_fd(pipe)
        };
        let terminal = self.terminal;
        match sender {
            Ok(pipe) => {
                let queued = self.queued_bytes.clone();
                let writer = write_stdin(pipe, first, queue, queued, terminal);
                self.writer = Some(tokio::spawn(writer));
            }
            Err(err) => tracing::warn!(%err, "could not set up the program's stdin; closing it"),
        }
    }

    /// Closes the program's stdin without writing anything.
    pub(super) fn close(&mut self) {
        self.pipe = None;
        self.queue = None;
    }

    pub(super) fn stop(&mut self) {
        if let Some(writer) = self.writer.take() {
            writer.abort();
        }
        self.close();
    }
}

/// Writes client input to the program. Ends, closing the program's stdin, after `eof`,
/// when the handle is dropped, or when the program stops reading. On a `terminal`, `eof`
/// types the end-of-file character instead, and input goes on.
async fn write_stdin(
    mut pipe: pipe::Sender,
    first: StdinChunk,
    mut queue: Option<mpsc::Receiver<StdinChunk>>,
    queued_bytes: Arc<AtomicUsize>,
    terminal: bool,
) {
    let mut chunk = Some(first);
    while let Some(StdinChunk { data, eof, memory }) = chunk {
        if let Some(data) = data {
            let written = pipe.write_all(data.as_bytes()).await;
            queued_bytes.fetch_sub(data.len(), Ordering::AcqRel);
            drop(memory);
            if written.is_err() {
                return;
            }
        }
        if eof && terminal {
            if pipe.write_all(super::terminal::END_OF_INPUT).await.is_err() {
                return;
            }
        } else if eof {
            return;
        }
        chunk = match &mut queue {
            Some(queue) => queue.recv().await,
            None => None,
        };
    }
}
