//! Watching every running execution's cgroup for the limits the kernel counts as they
//! are hit (an OOM kill, a refused fork): one task per gateway ([`LimitWatcher`]) reads
//! each watched execution's two counters every [`WATCH_INTERVAL`] and wakes only the
//! execution whose counter moved. A thousand live programs then cost one task's tick and
//! two `pread`s each, not a thousand timers waking a thousand output pumps. (cgroup v1
//! signals neither counter; v2 would allow inotify on `memory.events`/`pids.events`.)
//! The task runs only while something is watched.

use super::counters::CounterFiles;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;
use tokio::sync::Notify;

/// How often the counters of every watched execution are read.
const WATCH_INTERVAL: Duration = Duration::from_millis(100);

/// The gateway's watcher (cheap to clone: every execution cgroup holds one).
#[derive(Debug, Clone, Default)]
pub(crate) struct LimitWatcher {
    shared: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    watched: Mutex<Watched>,
}

#[derive(Debug, Default)]
struct Watched {
    entries: Vec<Weak<Entry>>,
    /// The reading task is running.
    running: bool,
}

/// One watched execution: its counter files, the counts when it started, and how to
/// wake it.
#[derive(Debug)]
struct Entry {
    files: Arc<CounterFiles>,
    oom_kills: u64,
    failed_forks: u64,
    hit: Notify,
    /// Woken once: the counters only grow.
    woken: AtomicBool,
}

/// A watch on one execution's cgroup; dropping it ends the watch.
#[derive(Debug)]
pub(crate) struct LimitWatch {
    entry: Arc<Entry>,
}

impl LimitWatch {
    /// Resolves once a counted limit was hit since the watch began (once, until
    /// [`LimitWatch::rearm`]).
    pub(crate) async fn hit(&self) {
        self.entry.hit.notified().await;
    }

    /// Watches again after a wake the report did not confirm (third review: a watch
    /// that went quiet after one such wake would leave the rest of the run unchecked).
    pub(crate) fn rearm(&self) {
        self.entry.woken.store(false, Ordering::Relaxed);
    }
}

impl LimitWatcher {
    /// Watches `files` from the counts `oom_kills` and `failed_forks` on. `None` outside
    /// a Tokio runtime (nothing could run the watch): the limits are then read only at
    /// the end.
    pub(super) fn watch(
        &self,
        files: Arc<CounterFiles>,
        oom_kills: u64,
        failed_forks: u64,
    ) -> Option<LimitWatch> {
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        let entry = Arc::new(Entry {
            files,
            oom_kills,
            failed_forks,
            hit: Notify::new(),
            woken: AtomicBool::new(false),
        });
        let mut watched = self.lock();
        watched.entries.push(Arc::downgrade(&entry));
        if !watched.running {
            watched.running = true;
            runtime.spawn(read_counters(Arc::clone(&self.shared)));
        }
        Some(LimitWatch { entry })
    }

    /// True while the reading task runs.
    #[cfg(test)]
    pub(super) fn is_running(&self) -> bool {
        self.lock().running
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Watched> {
        self.shared
            .watched
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// The reading task: every interval, each live watch's counters; it ends when nothing
/// is watched (the next watch starts it again).
async fn read_counters(shared: Arc<Shared>) {
    // Should the task ever panic, the next watch starts a new one (third review).
    let _restart = RestartOnPanic(Arc::clone(&shared));
    let mut tick = tokio::time::interval(WATCH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let live: Vec<Arc<Entry>> = {
            let mut watched = shared
                .watched
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            watched.entries.retain(|entry| entry.strong_count() > 0);
            if watched.entries.is_empty() {
                watched.running = false;
                return;
            }
            watched.entries.iter().filter_map(Weak::upgrade).collect()
        };
        for entry in live {
            if entry.woken.load(Ordering::Relaxed) {
                continue;
            }
            if entry.files.oom_kills() > entry.oom_kills
                || entry.files.failed_forks() > entry.failed_forks
            {
                entry.woken.store(true, Ordering::Relaxed);
                entry.hit.notify_one();
            }
        }
    }
}

/// Marks the reading task as not running if it unwinds, so the next watch starts one.
struct RestartOnPanic(Arc<Shared>);

impl Drop for RestartOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0
                .watched
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .running = false;
        }
    }
}
