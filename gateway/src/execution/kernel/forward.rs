//! A kernel's own stdout or stderr carried to the running cell's pipe, for interpreters
//! that cannot take a cell's descriptors over the control socket (Node has no
//! `SCM_RIGHTS`). The driver ends each cell's output with [`CELL_END`] on both streams
//! before it answers; what comes before it goes to the cell's pipe, which is closed
//! there, so the cell's output reaches end-of-file like a program's. What arrives while
//! no cell is open (a process the last cell left, killed with it) is dropped; a marker
//! then (one more than the cells handed over) is not the driver's, and ends the
//! interpreter.

use super::replies::{lock, Replies};
use std::io;
use std::sync::Arc;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::unix::pipe;
use tokio::sync::{mpsc, watch};

/// What the driver writes after a cell's output, on stdout and on stderr.
pub(super) const CELL_END: &[u8] = b"\x1b]sluice;cell_end\x07";

/// The most output the interpreter may write while no cell is open (after a cell's end,
/// before the next cell): what its last cell's processes left in the pipe, and a timer's
/// few lines, fit; a stream of it is dropped unread by anyone and unbounded by any
/// limit, so past this the interpreter is ended.
pub(super) const MAX_UNOWNED_OUTPUT: u64 = 2 << 20;

/// One stream's carrier: the task, and the way in for each cell's pipe.
#[derive(Debug)]
pub(super) struct Forwarder {
    next: mpsc::Sender<pipe::Sender>,
    /// Cells whose output has ended here (`u64::MAX` once the stream is closed).
    ended: watch::Receiver<u64>,
    task: tokio::task::JoinHandle<()>,
}

/// Where the carried bytes go.
enum Destination {
    /// The running cell's pipe.
    Cell(pipe::Sender),
    /// The cell's reader has gone: its output is dropped up to its end.
    Dropping,
    /// No cell is open: the next one's pipe is taken when bytes arrive.
    Between,
}

impl Forwarder {
    /// Starts carrying `from` (the read end of the interpreter's stream); output no
    /// cell can own ends the interpreter (through its `replies`) and the carrying.
    pub(super) fn start(from: pipe::Receiver, replies: Arc<Replies>) -> Self {
        let (next, cells) = mpsc::channel(1);
        let (ended_tx, ended) = watch::channel(0);
        let task = tokio::spawn(carry(from, cells, ended_tx, replies));
        Self { next, ended, task }
    }

    /// Hands over the next cell's pipe; call before the cell is sent, so its first byte
    /// finds it.
    pub(super) async fn hand(&self, to: pipe::Sender) -> io::Result<()> {
        self.next
            .send(to)
            .await
            .map_err(|_| io::Error::other("the interpreter's output is closed"))
    }

    /// Resolves once `cells` cells' output has ended here, or the stream has closed.
    pub(super) async fn ended(&self, cells: u64) {
        let mut ended = self.ended.clone();
        let _ = ended.wait_for(|count| *count >= cells).await;
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The length of the longest end of `bytes` that begins [`CELL_END`] (kept back until
/// the next read says whether the marker follows).
fn partial_marker(bytes: &[u8]) -> usize {
    (1..CELL_END.len().min(bytes.len() + 1))
        .rev()
        .find(|&n| bytes.ends_with(&CELL_END[..n]))
        .unwrap_or(0)
}

async fn carry(
    mut from: pipe::Receiver,
    mut cells: mpsc::Receiver<pipe::Sender>,
    ended: watch::Sender<u64>,
    replies: Arc<Replies>,
) {
    // Output no cell can own: the driver is not in step (a cell wrote its end marker,
    // or a timer is left writing), and the interpreter is ended.
    let out_of_step = |why: &str| replies.end(&mut lock(&replies.current), why.to_owned());
    let mut into = Destination::Between;
    // Bytes dropped since the last cell was taken because no cell was open.
    let mut unowned: u64 = 0;
    let mut pending: Vec<u8> = Vec::new();
    let mut buffer = vec![0u8; 64 * 1024];
    let finder = memchr::memmem::Finder::new(CELL_END);
    loop {
        // A read's work is bounded (one pass over at most the buffer and a partial
        // marker), and other tasks get their turn between reads.
        tokio::task::consume_budget().await;
        let read = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        pending.extend_from_slice(&buffer[..read]);
        let mut at = 0;
        loop {
            if matches!(into, Destination::Between) {
                if let Ok(next) = cells.try_recv() {
                    into = Destination::Cell(next);
                    unowned = 0;
                }
            }
            let marker = finder.find(&pending[at..]).map(|found| at + found);
            let upto = marker.unwrap_or(pending.len() - partial_marker(&pending[at..]));
            match &mut into {
                Destination::Cell(to) => {
                    if to.write_all(&pending[at..upto]).await.is_err() {
                        into = Destination::Dropping;
                    }
                }
                Destination::Between => {
                    unowned += (upto - at) as u64;
                    if unowned > MAX_UNOWNED_OUTPUT {
                        out_of_step("it wrote more than 2 MiB of output while no cell ran (after a cell's end: a cell that wrote the driver's end marker itself, or a timer left writing)");
                        return;
                    }
                }
                Destination::Dropping => {}
            }
            match marker {
                Some(found) => {
                    at = found + CELL_END.len();
                    if matches!(into, Destination::Between) {
                        // No cell was handed over for this end: not the driver's.
                        out_of_step("it ended a cell's output while no cell ran (a cell wrote the driver's end marker itself)");
                        return;
                    }
                    // Dropping the pipe is the cell's end of output.
                    into = Destination::Between;
                    ended.send_modify(|count| *count += 1);
                }
                None => {
                    at = upto;
                    break;
                }
            }
        }
        pending.drain(..at);
    }
    // The interpreter is gone: whatever cell was open ends here.
    drop(into);
    ended.send_replace(u64::MAX);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_marker_split_across_reads_is_held_back() {
        assert_eq!(partial_marker(b"abc"), 0);
        assert_eq!(partial_marker(b"abc\x1b"), 1);
        assert_eq!(
            partial_marker(b"abc\x1b]sluice;cell_en"),
            CELL_END.len() - 2
        );
        assert_eq!(partial_marker(b"\x1b]"), 2);
        assert_eq!(partial_marker(b""), 0);
    }
}
