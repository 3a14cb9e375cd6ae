//! Tuning knobs of a [`Client`](crate::Client): buffer and queue sizes, frame limits, close
//! timeout, the reconnect policy, and the credential ([`Token`], never printed).

use std::fmt;
use std::time::Duration;

/// Options for [`Client::connect_with`](crate::Client::connect_with).
///
/// Every queue is bounded; a size of 0 is treated as 1 (a channel needs at least one slot).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientOptions {
    /// The most bytes of unread events buffered for one [`Execution`](crate::Execution),
    /// and for one [`SessionEvents`](crate::SessionEvents). Default 16 MiB, as in every
    /// Sluice client.
    ///
    /// The connection task never waits for a consumer: it appends each event to its
    /// execution's buffer, so an execution whose events are not being read never holds up
    /// the others. An event counts for the length of its `data` plus 256 bytes. When an
    /// event would take an execution's buffer over this budget while older events are
    /// still unread, the consumer has fallen behind: the client sends `cancel` for that
    /// execution and discards its later events; its consumer receives every event buffered
    /// so far, then one synthetic terminal `error` event (code `slow_consumer`, `sequence`
    /// 0, see [`is_synthetic`](crate::is_synthetic)), and
    /// [`Execution::wait`](crate::Execution::wait) returns
    /// [`ClientError::SlowConsumer`](crate::ClientError::SlowConsumer). A terminal event,
    /// and an event arriving while the buffer is empty, are always taken, so a consumer
    /// that keeps up is never cut off; memory per execution is bounded by this budget plus
    /// one event.
    ///
    /// The default matches the gateway's default `output_bytes` limit (16 MiB), but an
    /// execution's events count for their overhead too: to be sure an execution that is
    /// read only after another one finishes is never cut off, set it above the output
    /// the execution may produce plus 256 bytes per event (an event carries at most the
    /// gateway's `--chunk-bytes` of output, 64 KiB by default).
    pub execution_buffer_bytes: usize,
    /// Commands (execute, stdin, cancel, close) queued for the connection task before
    /// callers wait. Default 256. This is the client's only backpressure: when the
    /// socket cannot take frames as fast as callers send them, callers wait here.
    pub command_buffer: usize,
    /// Socket-stream events buffered for [`Client::socket_events`](crate::Client::socket_events);
    /// when full, further ones are logged and dropped. Default 256.
    pub socket_event_buffer: usize,
    /// Largest frame the client sends, in bytes. Should equal the gateway's
    /// `--max-frame-bytes` (default 1 MiB): a larger frame is refused locally with
    /// [`ClientError::FrameTooLarge`](crate::ClientError::FrameTooLarge) instead of being
    /// answered by an `error` event the client could not attribute to an execution.
    pub max_frame_bytes: usize,
    /// Largest frame the client accepts from the gateway, in bytes; a larger one ends the
    /// connection. Default 16 MiB (an event carries at most `--chunk-bytes` of output,
    /// 64 KiB by default, which JSON escaping can grow to at most six times that).
    pub max_incoming_frame_bytes: usize,
    /// How long [`Client::close`](crate::Client::close) waits for the gateway to answer the
    /// close handshake before dropping the connection. Default 5 seconds.
    pub close_timeout: Duration,
    /// What the client does when its connection drops: `Some` (the default,
    /// [`Reconnect::default`]) reconnects and resumes every execution and attached session
    /// where it left off; `None` ends every open stream at once, as a client without
    /// sessions would.
    ///
    /// With reconnecting on, the client also sends `ack` frames (see the crate
    /// documentation), so that the gateway keeps every event the client has not received.
    pub reconnect: Option<Reconnect>,
    /// The credential (an API key or a signed token) presented to a gateway that requires
    /// one, as `Authorization: Bearer <token>` on every upgrade request (the first
    /// connection and each reconnect). Default `None`: no credential. The client reads
    /// no environment variable for it; programs do (`sluice run` reads `SLUICE_TOKEN`).
    ///
    /// A gateway that refuses the credential answers HTTP 401:
    /// [`Client::connect`](crate::Client::connect) returns
    /// [`ClientError::Unauthorized`](crate::ClientError::Unauthorized), and a reconnect
    /// refused so (the key was revoked, the token expired) ends the client at once
    /// rather than being retried.
    pub token: Option<Token>,
}

/// A credential for the gateway. Its `Debug` output is `Token(<redacted>)`, so it never
/// appears in a debug print or a log line of the options.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    /// The credential, for sending it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl From<String> for Token {
    fn from(token: String) -> Self {
        Self(token)
    }
}

impl From<&str> for Token {
    fn from(token: &str) -> Self {
        Self(token.to_owned())
    }
}

/// The reconnect policy: exponential backoff with jitter, bounded in attempts and in time.
///
/// After the connection drops, attempt *n* (from 1) starts after a random delay between
/// half and all of `initial_delay * 2^(n-1)`, capped at `max_delay`; each attempt (TCP
/// connect and WebSocket handshake) may take at most `connect_timeout`. The client gives
/// up when `max_attempts` attempts have failed or `give_up_after` has passed since the
/// connection was lost, whichever comes first: every open
/// [`Execution`](crate::Execution) then ends with a synthetic terminal `error` (its
/// [`wait`](crate::Execution::wait) returns
/// [`ClientError::Interrupted`](crate::ClientError::Interrupted)), every
/// [`SessionEvents`](crate::SessionEvents) with a synthetic `error`, and every later
/// operation fails with [`ClientError::ConnectionClosed`](crate::ClientError::ConnectionClosed),
/// whose reason says that reconnecting failed and why.
///
/// A connection that drops again before it has delivered an event or lived `max_delay`
/// does not end the outage: the next attempts go on with its backoff and its bounds, so
/// a gateway that accepts connections and drops them at once is not retried forever.
///
/// The gateway keeps a session whose sockets are gone for its grace period (60 s by
/// default), so `give_up_after` should stay below it: past it, resuming fails anyway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reconnect {
    /// The delay before the first attempt (randomised to between half and all of it).
    /// Default 100 ms. The pause also lets the gateway notice that the old socket is gone
    /// before the new one attaches.
    pub initial_delay: Duration,
    /// The longest delay between two attempts. Default 5 seconds.
    pub max_delay: Duration,
    /// Give up once this much time has passed since the connection was lost. Default 30
    /// seconds.
    pub give_up_after: Duration,
    /// Give up after this many failed attempts; `None` (the default) for no limit other
    /// than `give_up_after`.
    pub max_attempts: Option<u32>,
    /// The longest one attempt may take. Default 10 seconds.
    pub connect_timeout: Duration,
}

impl Default for Reconnect {
    fn default() -> Self {
        Self {
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(5),
            give_up_after: Duration::from_secs(30),
            max_attempts: None,
            connect_timeout: Duration::from_secs(10),
        }
    }
}

impl Reconnect {
    /// The delay before attempt `attempt` (from 1), before jitter.
    pub(crate) fn delay(&self, attempt: u32) -> Duration {
        let factor = 1_u32
            .checked_shl(attempt.saturating_sub(1))
            .unwrap_or(u32::MAX);
        self.initial_delay
            .checked_mul(factor)
            .unwrap_or(self.max_delay)
            .min(self.max_delay)
    }
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            execution_buffer_bytes: 16 << 20,
            command_buffer: 256,
            socket_event_buffer: 256,
            max_frame_bytes: 1 << 20,
            max_incoming_frame_bytes: 16 << 20,
            close_timeout: Duration::from_secs(5),
            reconnect: Some(Reconnect::default()),
            token: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_client_contract() {
        let options = ClientOptions::default();
        assert_eq!(options.execution_buffer_bytes, 16 * 1024 * 1024);
        assert_eq!(options.command_buffer, 256);
        assert_eq!(options.socket_event_buffer, 256);
        assert_eq!(options.max_frame_bytes, 1024 * 1024);
        assert_eq!(options.max_incoming_frame_bytes, 16 * 1024 * 1024);
        assert_eq!(options.close_timeout, Duration::from_secs(5));
        assert_eq!(options.reconnect, Some(Reconnect::default()));
        assert_eq!(options.token, None);
        let policy = Reconnect::default();
        assert_eq!(policy.initial_delay, Duration::from_millis(100));
        assert_eq!(policy.max_delay, Duration::from_secs(5));
        assert_eq!(policy.give_up_after, Duration::from_secs(30));
        assert_eq!(policy.max_attempts, None);
        assert_eq!(policy.connect_timeout, Duration::from_secs(10));
    }

    #[test]
    fn the_token_never_shows_in_debug_output() {
        let options = ClientOptions {
            token: Some(Token::from("sk-secret-value")),
            ..ClientOptions::default()
        };
        let printed = format!("{options:?} {:#?}", options.token);
        assert!(!printed.contains("sk-secret-value"), "{printed}");
        assert!(printed.contains("Token(<redacted>)"), "{printed}");
        assert_eq!(
            options.token.as_ref().map(Token::expose),
            Some("sk-secret-value")
        );
    }

    #[test]
    fn delays_double_up_to_the_cap() {
        let policy = Reconnect {
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
            ..Reconnect::default()
        };
        let delays: Vec<u64> = (1..=6)
            .map(|n| policy.delay(n).as_millis() as u64)
            .collect();
        assert_eq!(delays, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(policy.delay(200), Duration::from_secs(1));
    }
}
