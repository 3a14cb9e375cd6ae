//! A session's seat for its persistent interpreter: the interpreter once a cell has
//! started one, locked by the cell that runs, and where interpreters the session no
//! longer uses are killed and reaped (a task tracker that shutdown waits on).

use super::Kernel;
use crate::fanout::EventStream;
use sluice_protocol::{Event, EventKind};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::{Mutex, Notify, OwnedMutexGuard};
use tokio_util::task::TaskTracker;

/// The seat held: the interpreter (if any) for whoever holds it.
pub(crate) type Turn = OwnedMutexGuard<Option<Kernel>>;

/// A session's persistent interpreter, if it has one.
#[derive(Debug)]
pub(crate) struct InterpreterSeat {
    /// The interpreter; a cell holds the lock while it runs.
    kernel: Arc<Mutex<Option<Kernel>>>,
    /// Where retired interpreters are killed and reaped (the session registry's).
    reaping: TaskTracker,
    /// A `restart` asked for a fresh interpreter: whoever next holds the seat retires
    /// the one there first.
    restart: AtomicBool,
    /// Interpreters of this seat retired and not yet reaped (each still holds its slot
    /// under `--max-kernels`), and the wake-up when one has been.
    retiring: Arc<(AtomicUsize, Notify)>,
}

impl InterpreterSeat {
    pub(crate) fn new(reaping: TaskTracker) -> Self {
        Self {
            kernel: Arc::default(),
            reaping,
            restart: AtomicBool::new(false),
            retiring: Arc::default(),
        }
    }

    /// Waits until every interpreter this seat retired has been reaped and has given
    /// its slot back: a fresh one for the same session then finds it free.
    pub(crate) async fn retired(&self) {
        let (count, reaped) = &*self.retiring;
        loop {
            let wake = reaped.notified();
            tokio::pin!(wake);
            wake.as_mut().enable();
            if count.load(Ordering::Acquire) == 0 {
                return;
            }
            wake.await;
        }
    }

    /// Asks for a fresh interpreter: the next holder of the seat retires this one. False
    /// when a restart was asked for already and is not done yet (this one joins it).
    pub(crate) fn ask_restart(&self) -> bool {
        !self.restart.swap(true, Ordering::AcqRel)
    }

    /// True while a `restart` waits to be carried out.
    pub(crate) fn restart_asked(&self) -> bool {
        self.restart.load(Ordering::Acquire)
    }

    /// True once for each [`InterpreterSeat::ask_restart`]: the caller holds the seat and
    /// retires the interpreter.
    pub(crate) fn take_restart(&self) -> bool {
        self.restart.swap(false, Ordering::AcqRel)
    }

    /// For the holder of the seat: retires the interpreter if a `restart` asked for it
    /// and nobody did yet, and tells the session's readers on its `stream` once it has
    /// room (a cell that takes its turn first does it before its own `started`).
    pub(crate) async fn restart_if_asked(&self, seat: &mut Option<Kernel>, stream: &EventStream) {
        if self.take_restart() {
            self.retire(seat.take());
            stream.room().await;
            stream.publish(Event::new(
                EventKind::Restarted,
                None,
                super::RESTARTED_MESSAGE,
            ));
        }
    }

    /// Runs `task` where shutdown waits for it (the registry's tracker).
    pub(crate) fn track(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        self.reaping.spawn(task);
    }

    /// The interpreter, for a cell that runs: held until the cell is over.
    pub(crate) async fn take_turn(&self) -> Turn {
        self.kernel.clone().lock_owned().await
    }

    /// The interpreter, if no cell (or query) holds it now.
    pub(crate) fn try_take_turn(&self) -> Option<Turn> {
        self.kernel.clone().try_lock_owned().ok()
    }

    /// Retires the interpreter now if no cell runs (a running cell's retires it when the
    /// cell is over).
    pub(crate) fn retire_if_idle(&self) {
        if let Ok(mut kernel) = self.kernel.try_lock() {
            self.retire(kernel.take());
        }
    }

    /// Retires the interpreter once the running cell, if any, is over.
    pub(crate) async fn retire_when_free(&self) {
        let kernel = self.kernel.lock().await.take();
        self.retire(kernel);
    }

    /// Kills and reaps an interpreter the session no longer uses; shutdown waits for it.
    pub(crate) fn retire(&self, kernel: Option<Kernel>) {
        if let Some(kernel) = kernel {
            let retiring = self.retiring.clone();
            retiring.0.fetch_add(1, Ordering::AcqRel);
            self.reaping.spawn(async move {
                if let (Err(err), _) = kernel.shut_down().await {
                    tracing::warn!(%err, "could not reap an interpreter");
                }
                retiring.0.fetch_sub(1, Ordering::AcqRel);
                retiring.1.notify_waiters();
            });
        }
    }
}
