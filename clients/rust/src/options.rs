//! Tuning knobs of a [`Client`](crate::Client): buffer and queue sizes, frame limits, close
//! timeout.

use std::time::Duration;

/// Options for [`Client::connect_with`](crate::Client::connect_with).
///
/// Every queue is bounded; a size of 0 is treated as 1 (a channel needs at least one slot).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientOptions {
    /// The most bytes of unread events buffered for one [`Execution`](crate::Execution).
    /// Default 64 MiB.
    ///
    /// The connection task never waits for a consumer: it appends each event to its
    /// execution's buffer, so an execution whose events are not being read never holds up
    /// the others. An event counts for the length of its `data` plus 256 bytes. When an
    /// event would take an execution's buffer over this budget while older events are
    /// still unread, the consumer has fallen behind: the client sends `cancel` for that
    /// execution and discards its later events; its consumer receives every event buffered
    /// so far, then one synthetic terminal `error` event (code `other`, `sequence` 0, see
    /// [`is_synthetic`](crate::is_synthetic)), and
    /// [`Execution::wait`](crate::Execution::wait) returns
    /// [`ClientError::SlowConsumer`](crate::ClientError::SlowConsumer). A terminal event,
    /// and an event arriving while the buffer is empty, are always taken, so a consumer
    /// that keeps up is never cut off; memory per execution is bounded by this budget plus
    /// one event.
    ///
    /// Set it above the output an execution may produce (its `output_bytes` limit, 16 MiB
    /// by default on the gateway, plus the per-event overhead) to be sure an execution
    /// that is read only after another one finishes is never cut off.
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
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            execution_buffer_bytes: 64 << 20,
            command_buffer: 256,
            socket_event_buffer: 256,
            max_frame_bytes: 1 << 20,
            max_incoming_frame_bytes: 16 << 20,
            close_timeout: Duration::from_secs(5),
        }
    }
}
