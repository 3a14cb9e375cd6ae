//! Empty network namespaces made ahead of time for jails, off the request path.
//!
//! Making a network namespace is the dearest step of a jail's start (about 1 ms on a
//! 2-core host, most of it waiting in the kernel, against microseconds for the other
//! namespaces). A root gateway keeps a few ready: a thread of their own makes them
//! ([`crate::sys::new_network_namespace`]) and [`NetworkPool::take`] hands each one out
//! exactly once, to one jail, which enters it instead of making its own. Nothing is
//! reused: a namespace handed out is never handed out again, and the kernel destroys it
//! (in the background, as for any namespace) once its jail's processes and the gateway's
//! descriptor of it are gone. Taking never waits: when none is ready (a burst larger than
//! the pool), the jail makes its own as it did before, and the thread makes more.
//!
//! A namespace made this way belongs to the gateway's user namespace, so only a jail
//! without a user namespace of its own (a root gateway) can enter it.

use std::os::fd::OwnedFd;
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::Duration;

/// Namespaces kept ready. Each one costs some kernel memory (a loopback device, its
/// sysctl tables); a burst beyond them falls back to the jail's own.
pub(crate) const READY: usize = 16;

/// How often the filling thread checks that its gateway still wants it, when it has
/// nothing to do.
const IDLE_CHECK: Duration = Duration::from_secs(1);

/// The ready namespaces and the thread that makes them; the thread ends soon after the
/// pool is dropped, and the namespaces still waiting are closed with it.
#[derive(Debug)]
pub(crate) struct NetworkPool {
    ready: Mutex<Vec<OwnedFd>>,
    /// Wakes the filling thread when one was taken.
    taken: Condvar,
    /// Wakes whoever waits for one to be made (the tests).
    made: Condvar,
}

impl NetworkPool {
    /// Starts the filling thread; `None` when this host cannot make network namespaces
    /// (the first one failed: not root, or no kernel support).
    pub(crate) fn start() -> Option<Arc<Self>> {
        // On a thread of its own, which ends straight after: should it be stranded in the
        // new namespace, the caller's thread (which goes on to make sockets) is not.
        let first = std::thread::Builder::new()
            .name("sluice-netns".into())
            .spawn(crate::sys::new_network_namespace)
            .ok()
            .and_then(|thread| thread.join().ok());
        let first = match first {
            None => {
                tracing::warn!("no pool of network namespaces: each jail makes its own");
                return None;
            }
            Some(Ok(namespace)) => namespace,
            Some(Err(err)) => {
                tracing::debug!(%err, "no pool of network namespaces: each jail makes its own");
                return None;
            }
        };
        let pool = Arc::new(Self {
            ready: Mutex::new(vec![first]),
            taken: Condvar::new(),
            made: Condvar::new(),
        });
        let weak = Arc::downgrade(&pool);
        let started = std::thread::Builder::new()
            .name("sluice-netns".into())
            .spawn(move || fill(&weak));
        match started {
            Ok(_) => Some(pool),
            Err(err) => {
                tracing::warn!(%err, "no pool of network namespaces: each jail makes its own");
                None
            }
        }
    }

    /// A fresh namespace no one else has been given, if one is ready. The caller keeps
    /// the descriptor until its jail is gone (the jail copies it from the gateway).
    pub(crate) fn take(&self) -> Option<OwnedFd> {
        let namespace = self.ready.lock().ok()?.pop();
        self.taken.notify_one();
        namespace
    }

    /// As [`NetworkPool::take`], waiting until `deadline` for one to be made.
    #[cfg(test)]
    fn take_by(&self, deadline: std::time::Instant) -> Option<OwnedFd> {
        let mut ready = self.ready.lock().ok()?;
        loop {
            if let Some(namespace) = ready.pop() {
                self.taken.notify_one();
                return Some(namespace);
            }
            let left = deadline.checked_duration_since(std::time::Instant::now())?;
            ready = self.made.wait_timeout(ready, left).ok()?.0;
        }
    }
}

/// The filling thread: keeps [`READY`] namespaces waiting while the pool lives.
fn fill(pool: &Weak<NetworkPool>) {
    loop {
        let Some(pool) = pool.upgrade() else {
            return;
        };
        let wanted = match pool.ready.lock() {
            Ok(ready) => READY.saturating_sub(ready.len()),
            Err(_) => return,
        };
        let mut failed = false;
        for _ in 0..wanted {
            match crate::sys::new_network_namespace() {
                Ok(namespace) => match pool.ready.lock() {
                    Ok(mut ready) => {
                        ready.push(namespace);
                        pool.made.notify_all();
                    }
                    Err(_) => return,
                },
                Err(err @ crate::sys::NetworkNamespaceError::Stranded(_)) => {
                    // This thread is inside a namespace of its own now: it ends, and the
                    // jails make their own from here on.
                    tracing::error!(%err, "the pool of network namespaces stops");
                    return;
                }
                Err(err) => {
                    tracing::warn!(%err, "the pool of network namespaces could not make one");
                    failed = true;
                    break;
                }
            }
        }
        let Ok(ready) = pool.ready.lock() else {
            return;
        };
        // Full: woken by a take, or now and then to see whether the pool is still
        // wanted. After a failure above: the same, to try again rather than spin. Taken
        // from while it was filling: straight back to filling.
        if failed || ready.len() >= READY {
            let _ = pool.taken.wait_timeout(ready, IDLE_CHECK);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt as _;

    fn inode(path: &str) -> u64 {
        std::fs::metadata(path).map(|m| m.ino()).unwrap_or(0)
    }

    #[test]
    fn each_namespace_is_new_and_given_once_and_the_thread_stays_home() {
        let Some(pool) = NetworkPool::start() else {
            // Not root here: the jails make their own; nothing to check.
            return;
        };
        let home = inode("/proc/thread-self/ns/net");
        // All kept open: a closed namespace's inode number may be given to a new one.
        let mut taken = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while taken.len() < READY + 4 {
            // Past the first READY, the thread makes more.
            let namespace = pool.take_by(deadline).expect("the pool refills");
            let file = std::fs::File::from(namespace);
            let ino = file.metadata().map(|m| m.ino()).unwrap_or(0);
            assert_ne!(ino, home, "a namespace of its own, not the gateway's");
            assert!(seen.insert(ino), "never handed out twice");
            taken.push(file);
        }
        assert_eq!(inode("/proc/thread-self/ns/net"), home);
    }
}
