//! Reconnecting and resuming: after the socket drops, opening a new one with backoff and
//! jitter within the [`Reconnect`](crate::Reconnect) policy's bounds (taking commands
//! meanwhile), then rebuilding the outbox for it: an `attach` for every session that has
//! a consumer, after what every consumer has, `execute` frames the gateway may not have
//! had, input that never left, and cancels.

use super::attach::AttachPlan;
use super::{Connection, Purpose};
use crate::command::Reply;
use crate::shared::Ended;
use crate::synthetic::synthetic_error;
use crate::ClientError;
use futures::StreamExt;
use sluice_protocol::{CancelFrame, ClientFrame};
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::hash::BuildHasher;
use std::pin::Pin;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tracing::{debug, info, warn};

/// A connection attempt: a new WebSocket to the gateway, or why there is none.
pub(crate) type ConnectFuture<S> =
    Pin<Box<dyn Future<Output = Result<WebSocketStream<S>, AttemptError>> + Send>>;

/// Why a reconnect attempt failed.
#[derive(Debug)]
pub(crate) enum AttemptError {
    /// Worth another attempt (the gateway is unreachable, restarting, overloaded).
    Failed(String),
    /// The gateway refused the credential (HTTP 401, with this reason): another attempt
    /// would be refused too.
    Unauthorized(String),
}

impl From<String> for AttemptError {
    fn from(reason: String) -> Self {
        Self::Failed(reason)
    }
}

impl From<ClientError> for AttemptError {
    fn from(err: ClientError) -> Self {
        match err {
            ClientError::Unauthorized { reason } => Self::Unauthorized(reason),
            ClientError::Connect { source, .. } => Self::Failed(source.to_string()),
            other => Self::Failed(other.to_string()),
        }
    }
}

/// Opens new connections to the same gateway, for reconnecting.
pub(crate) type Connector<S> = Box<dyn FnMut() -> ConnectFuture<S> + Send>;

/// A time without a working connection: since when, and how the attempts went.
pub(super) struct Outage {
    pub(super) started: Instant,
    pub(super) attempts: u32,
    pub(super) last_error: String,
}

impl<S> Connection<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    /// Opens a new socket with backoff and resumes on it; `Err` with how the connection
    /// ended for good when the policy's bound is reached or the client closes meanwhile.
    pub(super) async fn reconnect(&mut self, lost: Ended) -> Result<(), Ended> {
        self.sink = None;
        self.stream = None;
        self.unflushed = false;
        self.peer_close = None;
        let (Some(policy), Some(mut connector)) =
            (self.shared.options.reconnect.clone(), self.connector.take())
        else {
            return Err(lost);
        };
        info!(reason = %lost.reason, "lost the connection to the gateway; reconnecting");
        // A connection that dropped before it proved healthy (it lived less than the
        // longest delay and received nothing) continues the outage before it: its backoff
        // and its bound, so a gateway that accepts and drops at once is not hammered
        // forever.
        let healthy = self.connected_at.elapsed() >= policy.max_delay || self.received;
        let outage = match self.outage.take() {
            Some(outage) if !healthy => outage,
            _ => Outage {
                started: Instant::now(),
                attempts: 0,
                last_error: String::from("no attempt was made"),
            },
        };
        let Outage {
            started,
            mut attempts,
            mut last_error,
        } = outage;
        let deadline = started + policy.give_up_after;
        let result = loop {
            let out_of_attempts = policy.max_attempts.is_some_and(|max| attempts >= max);
            if out_of_attempts || Instant::now() >= deadline {
                let reason = format!(
                    "{}; gave up reconnecting after {attempts} failed attempt(s) in {:.1?} \
                     (last: {last_error})",
                    lost.reason,
                    started.elapsed()
                );
                warn!(%reason, "could not reconnect to the gateway");
                break Err(Ended {
                    clean: false,
                    reason,
                    unauthorized: None,
                });
            }
            let delay = self.jittered(policy.delay(attempts.saturating_add(1)), attempts);
            let wake = (Instant::now() + delay).min(deadline);
            if let Err(ended) = self
                .while_disconnected(tokio::time::sleep_until(wake))
                .await
            {
                break Err(ended);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                continue;
            }
            attempts = attempts.saturating_add(1);
            let limit = policy.connect_timeout.min(left);
            let attempt = tokio::time::timeout(limit, connector());
            match self.while_disconnected(attempt).await {
                Err(ended) => break Err(ended),
                Ok(Ok(Ok(socket))) => {
                    info!(attempts, "reconnected to the gateway");
                    let (sink, stream) = socket.split();
                    self.sink = Some(sink);
                    self.stream = Some(stream);
                    self.connected_at = Instant::now();
                    self.received = false;
                    self.outage = Some(Outage {
                        started,
                        attempts,
                        last_error: format!("{} (then dropped again)", lost.reason),
                    });
                    self.resume();
                    break Ok(());
                }
                Ok(Ok(Err(AttemptError::Unauthorized(reason)))) => {
                    // Retrying cannot help: the key was revoked, or the token expired.
                    warn!(%reason, "the gateway refused the credential on reconnecting");
                    break Err(Ended {
                        clean: false,
                        reason: format!(
                            "{}; reconnecting was refused: the gateway refused the \
                             credential: {reason}",
                            lost.reason
                        ),
                        unauthorized: Some(reason),
                    });
                }
                Ok(Ok(Err(AttemptError::Failed(err)))) => {
                    debug!(attempt = attempts, error = %err, "reconnect attempt failed");
                    last_error = err;
                }
                Ok(Err(_)) => {
                    debug!(attempt = attempts, "reconnect attempt timed out");
                    last_error = format!("no connection within {limit:?}");
                }
            }
        };
        self.connector = Some(connector);
        result
    }

    /// A random duration between half and all of `delay`.
    fn jittered(&self, delay: Duration, attempt: u32) -> Duration {
        let random = self.jitter.hash_one(attempt);
        let half = delay / 2;
        let nanos = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
        half + Duration::from_nanos(random.checked_rem(nanos.saturating_add(1)).unwrap_or(0))
    }

    /// Runs `future` while taking commands (their frames wait for the next socket);
    /// `Err` if the client closes or every handle goes away meanwhile.
    async fn while_disconnected<F: Future>(&mut self, future: F) -> Result<F::Output, Ended> {
        tokio::pin!(future);
        loop {
            if self.closing {
                return Err(Ended {
                    clean: true,
                    reason: "the client closed the connection while reconnecting".to_owned(),
                    unauthorized: None,
                });
            }
            let room = self.outbox.len() < self.shared.options.command_buffer.max(1);
            tokio::select! {
                output = &mut future => return Ok(output),
                command = self.commands.recv(), if self.commands_open && room => {
                    self.on_command_or_end(command);
                }
            }
        }
    }

    /// Rebuilds the outbox for a new socket: attaches for every session with a consumer,
    /// `execute` frames the gateway may not have had, queued input, cancels.
    fn resume(&mut self) {
        let old = std::mem::take(&mut self.outbox);
        self.unacked.clear();
        // The new socket reads nothing yet: nothing is being detached from it.
        self.detaching.clear();
        // Attaches the old socket did not answer are asked again.
        let mut waiting: HashMap<String, Vec<(u64, Reply<()>)>> = HashMap::new();
        for (session, attach) in self.attaches.drain() {
            let waiters = waiting.entry(session).or_default();
            waiters.extend(attach.waiters);
            waiters.extend(attach.later);
        }
        let mut plan = Vec::new();
        let names: Vec<String> = self.sessions.keys().cloned().collect();
        for name in names {
            let has_route = self
                .routes
                .values()
                .any(|route| route.session.as_deref() == Some(name.as_str()));
            let Some(state) = self.sessions.get_mut(&name) else {
                continue;
            };
            let confirmed_subscriber = state
                .subscribers
                .iter()
                .any(|key| self.subscribers.get(key).is_some_and(|s| s.confirmed));
            let needed = state.routes > 0 || confirmed_subscriber;
            let waiters = waiting.remove(&name).unwrap_or_default();
            state.acked = 0;
            state.unacked_events = 0;
            state.unacked_bytes = 0;
            if !needed && waiters.is_empty() {
                if !has_route && state.subscribers.is_empty() {
                    // The new socket does not read it.
                    self.sessions.remove(&name);
                }
                continue;
            }
            let since = self.resume_point(&name).unwrap_or(0);
            plan.push(AttachPlan {
                session: name,
                since,
                waiters,
                resume: needed,
                workspace: false,
            });
        }
        for (session, waiters) in waiting {
            // Their subscribers are gone (detached while waiting).
            for (_, reply) in waiters {
                let _ = reply.send(Err(ClientError::ConnectionClosed {
                    reason: format!("the subscription to {session:?} was dropped"),
                }));
            }
        }
        debug!(sessions = plan.len(), "resuming sessions");
        for attach in plan {
            self.send_attach(attach);
        }
        self.resend_files();
        self.fail_restarts();
        // `runtimes` questions the old socket did not answer are asked again.
        for _ in 0..self.runtimes_asked.len() {
            self.enqueue_frame(
                &sluice_protocol::ClientFrame::Runtimes(sluice_protocol::RuntimesFrame {}),
                Purpose::Other,
            );
        }

        // Executions no event has answered: did the gateway get them?
        let unsent: HashSet<(String, u64)> = old
            .iter()
            .filter_map(|outgoing| match &outgoing.purpose {
                Purpose::Execute { id, serial } => Some((id.clone(), *serial)),
                _ => None,
            })
            .collect();
        let mut resend = Vec::new();
        let mut lost = Vec::new();
        for (id, route) in &self.routes {
            if route.confirmed || unsent.contains(&(id.clone(), route.serial)) {
                continue;
            }
            match &route.execute {
                Some(frame) => resend.push((id.clone(), route.serial, frame.clone())),
                None => lost.push(id.clone()),
            }
        }
        // In the order they were first sent (refusals come in the order of the frames).
        resend.sort_by_key(|(_, serial, _)| *serial);
        for (id, serial, frame) in resend {
            if let Some(route) = self.routes.get_mut(&id) {
                route.resent = true;
            }
            self.enqueue(Message::text(frame), Purpose::Execute { id, serial });
        }
        for id in lost {
            let message = "the connection to the gateway was lost before the gateway answered \
                           this execution, which named no session: it cannot be resumed, and \
                           it may or may not have run (name a session to make a resubmit safe)";
            self.end_route(&id, synthetic_error(Some(id.clone()), None, message));
        }
        // Frames the old socket never took.
        for outgoing in old {
            let keep = match &outgoing.purpose {
                Purpose::Execute { id, serial } | Purpose::Stdin { id, serial } => {
                    self.route(id, *serial).is_some()
                }
                Purpose::Other => false,
            };
            if keep {
                self.outbox.push_back(outgoing);
            }
        }
        // Cancels the gateway may not have had (a repeated one is refused harmlessly).
        let cancels: Vec<(String, Option<String>)> = self
            .routes
            .iter()
            .filter(|(_, route)| route.cancel_sent && (route.confirmed || route.named))
            .map(|(id, route)| (id.clone(), route.session.clone()))
            .collect();
        for (id, session) in cancels {
            self.enqueue_frame(
                &ClientFrame::Cancel(CancelFrame { id, session }),
                Purpose::Other,
            );
        }
        self.unflushed = !self.outbox.is_empty();
    }
}
