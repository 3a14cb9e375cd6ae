//! Tuning knobs of a [`Client`](crate::Client): queue sizes, frame limits, close timeout.

use std::time::Duration;

/// Options for [`Client::connect_with`](crate::Client::connect_with).
///
/// Every queue is bounded; a size of 0 is treated as 1 (a channel needs at least one slot).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientOptions {
    /// Events buffered per [`Execution`](crate::Execution) before the connection stops
    /// reading the socket until the consumer catches up (lossless backpressure).
    /// Default 1024.
    pub event_buffer: usize,
    /// Commands (execute, stdin, cancel, close) queued for the connection task before
    /// callers wait. Default 256.
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
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            event_buffer: 1024,
            command_buffer: 256,
            socket_event_buffer: 256,
            max_frame_bytes: 1 << 20,
            max_incoming_frame_bytes: 16 << 20,
            close_timeout: Duration::from_secs(5),
        }
    }
}
