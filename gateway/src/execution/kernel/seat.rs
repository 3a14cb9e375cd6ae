//! A session's seat for its persistent interpreter: the interpreter once a cell has
//! started one, locked by the cell that runs, and where interpreters the session no
//! longer uses are killed and reaped (a task tracker that shutdown waits on).

use super::Kernel;
use std::sync::Arc;
use tokio::sync::{Mutex, OwnedMutexGuard};
use tokio_util::task::TaskTracker;

/// A session's persistent interpreter, if it has one.
#[derive(Debug)]
pub(crate) struct InterpreterSeat {
    /// The interpreter; a cell holds the lock while it runs.
    kernel: Arc<Mutex<Option<Kernel>>>,
    /// Where retired interpreters are killed and reaped (the session registry's).
    reaping: TaskTracker,
}

impl InterpreterSeat {
    pub(crate) fn new(reaping: TaskTracker) -> Self {
        Self {
            kernel: Arc::default(),
            reaping,
        }
    }

    /// The interpreter, for a cell that runs: held until the cell is over.
    pub(crate) async fn take_turn(&self) -> OwnedMutexGuard<Option<Kernel>> {
        self.kernel.clone().lock_owned().await
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
            self.reaping.spawn(async move {
                if let (Err(err), _) = kernel.shut_down().await {
                    tracing::warn!(%err, "could not reap an interpreter");
                }
            });
        }
    }
}
