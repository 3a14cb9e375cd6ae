//! A terminal execution's pseudo-terminal, shared by the execution (which opens it at
//! its launch and runs the program on it) and the connection's handle (which resizes
//! it): the size asked for last, and the terminal's control side while the program runs.
//!
//! What differs from a pipe execution: the program's stdin, stdout and stderr are the
//! terminal's program side (opened in the gateway, inside the jail only as descriptors),
//! it leads a session with that terminal as its controlling one; the gateway reads the
//! terminal's one output stream as `stdout`, writes client input to it as typing (so
//! `\x03` is Ctrl-C), and a client's end of input is the terminal's end-of-file
//! character (Ctrl-D) rather than a closed stdin.

use crate::sys;
use std::io;
use std::os::fd::{AsFd as _, OwnedFd};
use std::sync::{Arc, Mutex};

/// The end-of-file character a new terminal has (`VEOF`, Ctrl-D): what a client's end of
/// input types.
pub(crate) const END_OF_INPUT: &[u8] = b"\x04";

/// One terminal execution's terminal (see the module doc).
#[derive(Debug)]
pub(crate) struct TerminalControl {
    /// The program's `TERM`.
    term: String,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    cols: u16,
    rows: u16,
    /// The control side while the program runs; `None` before its launch and after
    /// its end.
    control: Option<Arc<OwnedFd>>,
}

impl TerminalControl {
    pub(crate) fn new(term: String, (cols, rows): (u16, u16)) -> Self {
        Self {
            term,
            state: Mutex::new(State {
                cols,
                rows,
                control: None,
            }),
        }
    }

    /// The program's `TERM`.
    pub(crate) fn term(&self) -> &str {
        &self.term
    }

    /// Opens the terminal at the size asked for last, and keeps its control side for
    /// [`TerminalControl::resize`] until [`TerminalControl::close`]. Under the lock, so
    /// a resize that comes meanwhile is applied, not lost.
    pub(crate) fn open(&self) -> io::Result<sys::Terminal> {
        let mut state = self.lock();
        let terminal = sys::open_terminal(state.cols, state.rows)?;
        state.control = Some(Arc::new(terminal.control.try_clone()?));
        Ok(terminal)
    }

    /// Gives the terminal a new size (its program gets SIGWINCH); before the launch, the
    /// size it will open at.
    pub(crate) fn resize(&self, cols: u16, rows: u16) -> io::Result<()> {
        let mut state = self.lock();
        state.cols = cols;
        state.rows = rows;
        match &state.control {
            Some(control) => sys::resize_terminal(control.as_fd(), cols, rows),
            None => Ok(()),
        }
    }

    /// Lets the control side go once the program has ended.
    pub(crate) fn close(&self) {
        self.lock().control = None;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is two numbers and a descriptor: a panic elsewhere leaves it whole.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
