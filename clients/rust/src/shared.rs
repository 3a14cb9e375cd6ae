//! The state the handles and the connection task share ([`Shared`]: the options, id and
//! serial sources, how the connection ended), and the [`IdGenerator`] of execution ids.

use crate::{ClientError, ClientOptions};
use sluice_protocol::Event;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};
use tokio::sync::mpsc;

/// State shared by the [`Client`](crate::Client) clones, their
/// [`Execution`](crate::Execution)s and [`SessionEvents`](crate::SessionEvents), and the
/// connection task.
pub(crate) struct Shared {
    /// The options the client was created with.
    pub(crate) options: ClientOptions,
    /// Source of generated execution ids.
    ids: IdGenerator,
    /// Source of per-execution serial numbers, which tell apart two executions that used
    /// the same id one after the other, and of subscriber keys.
    serials: AtomicU64,
    /// How the connection ended; set once by the connection task before it drops the
    /// command receiver and the execution queues, so whoever sees those closed finds it set.
    pub(crate) ended: OnceLock<Ended>,
    /// Receiving half of the socket-event queue, until
    /// [`Client::socket_events`](crate::Client::socket_events) takes
    /// it; the connection task holds the sender. While it sits here unread, the queue
    /// fills up and further socket events are dropped with a warning.
    socket_events: Mutex<Option<mpsc::Receiver<Event>>>,
    /// The client acknowledges what it receives (it reconnects), and says so in every
    /// `execute` and `attach` so that the gateway keeps events from the first on.
    pub(crate) acknowledges: bool,
}

impl Shared {
    /// The state of a new connection: `socket_events` is the receiver of its
    /// socket-event queue; `acknowledges`: it can reconnect, so it acknowledges.
    pub(crate) fn new(
        options: ClientOptions,
        socket_events: mpsc::Receiver<Event>,
        acknowledges: bool,
    ) -> Self {
        Self {
            acknowledges,
            options,
            ids: IdGenerator::default(),
            serials: AtomicU64::new(0),
            ended: OnceLock::new(),
            socket_events: Mutex::new(Some(socket_events)),
        }
    }

    /// The next generated execution id.
    pub(crate) fn next_id(&self) -> String {
        self.ids.next_id()
    }

    /// The next serial number (of an execution or a subscriber).
    pub(crate) fn next_serial(&self) -> u64 {
        self.serials.fetch_add(1, Ordering::Relaxed)
    }

    /// Takes the receiver of the socket-event queue; `None` after the first call.
    pub(crate) fn take_socket_events(&self) -> Option<mpsc::Receiver<Event>> {
        self.socket_events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    /// The error for an operation that found the connection gone.
    pub(crate) fn closed_error(&self) -> ClientError {
        match self
            .ended
            .get()
            .and_then(|ended| ended.unauthorized.clone())
        {
            Some(reason) => ClientError::Unauthorized { reason },
            None => ClientError::ConnectionClosed {
                reason: self.end_reason(),
            },
        }
    }

    /// Why the connection ended, as far as known.
    pub(crate) fn end_reason(&self) -> String {
        match self.ended.get() {
            Some(ended) => ended.reason.clone(),
            None => "the connection task stopped".to_owned(),
        }
    }

    /// Refuses a frame the gateway would refuse as `too_large`.
    pub(crate) fn check_frame_size(&self, size: usize) -> Result<(), ClientError> {
        let max = self.options.max_frame_bytes;
        if size > max {
            return Err(ClientError::FrameTooLarge { size, max });
        }
        Ok(())
    }
}

/// How the connection ended.
#[derive(Debug, Clone)]
pub(crate) struct Ended {
    /// True when this client closed the connection and the gateway answered the close
    /// handshake in time.
    pub(crate) clean: bool,
    /// A human explanation.
    pub(crate) reason: String,
    /// The gateway refused the credential on a reconnect, for this reason (its 401 body).
    pub(crate) unauthorized: Option<String>,
}

/// Generates execution ids `e1`, `e2`, ... unique per client.
#[derive(Debug, Default)]
pub(crate) struct IdGenerator {
    /// The number of ids handed out so far.
    next: AtomicU64,
}

impl IdGenerator {
    /// The next id; never the same twice for one generator.
    pub(crate) fn next_id(&self) -> String {
        let n = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        format!("e{n}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::sync::Arc;

    #[test]
    fn generated_ids_count_up_from_e1() {
        let ids = IdGenerator::default();
        assert_eq!(ids.next_id(), "e1");
        assert_eq!(ids.next_id(), "e2");
        assert_eq!(ids.next_id(), "e3");
    }

    #[test]
    fn generated_ids_are_unique_across_threads() {
        let ids = Arc::new(IdGenerator::default());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let ids = Arc::clone(&ids);
                std::thread::spawn(move || (0..1000).map(|_| ids.next_id()).collect::<Vec<_>>())
            })
            .collect();
        let mut seen = HashSet::new();
        for thread in threads {
            for id in thread.join().unwrap() {
                assert!(id.len() <= sluice_protocol::MAX_ID_BYTES);
                assert!(seen.insert(id), "duplicate id");
            }
        }
        assert_eq!(seen.len(), 4000);
    }
}
