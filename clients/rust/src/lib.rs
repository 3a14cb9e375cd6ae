//! Rust client for the Sluice gateway: run code over one WebSocket and stream its events.
//!
//! ```no_run
//! use futures::StreamExt;
//! use sluice_client::Client;
//!
//! # async fn demo() -> Result<(), sluice_client::ClientError> {
//! let client = Client::connect("ws://127.0.0.1:8080/v1/ws").await?;
//!
//! // Stream events as they come...
//! let mut execution = client.execute_code_stream("python", "print(input())").await?;
//! execution.send_stdin("hello\n").await?;
//! execution.close_stdin().await?;
//! while let Some(event) = execution.next().await {
//!     println!("{} {}", event.kind, event.data);
//! }
//!
//! // ...or collect them.
//! let outcome = client.execute_code_stream("sh", "echo hi").await?.wait().await?;
//! assert_eq!(outcome.stdout, "hi\n");
//! assert_eq!(outcome.exit_code(), Some(0));
//!
//! client.close().await
//! # }
//! ```
//!
//! # Design
//!
//! Like async-nats: one background task owns the WebSocket. [`Client`] and [`Execution`]
//! handles send it commands through one bounded queue; it routes every incoming event by
//! execution id to that [`Execution`]'s own buffer, bounded in bytes.
//!
//! - **Exactly one terminal event.** An [`Execution`] stream ends after its terminal
//!   event, or yields a synthetic terminal `error` (code `internal`) if the connection
//!   ends first.
//! - **Executions are independent.** The task never waits for a consumer: it appends
//!   each event to its execution's buffer and keeps reading the socket, so an execution
//!   whose events nobody reads never holds up another. Running two executions and waiting
//!   for the second one first is fine.
//! - **Bounded, and never lossy in silence.** Each execution's buffer holds at most
//!   [`ClientOptions::execution_buffer_bytes`] (64 MiB by default) of unread events. A
//!   consumer that falls further behind than that gets its execution cancelled: the
//!   client sends `cancel`, discards later events, and the consumer receives what was
//!   buffered followed by one synthetic terminal `error` (code `other`);
//!   [`Execution::wait`] returns [`ClientError::SlowConsumer`].
//! - **Backpressure only when the whole client is overwhelmed.** The command queue is
//!   bounded ([`ClientOptions::command_buffer`]): callers wait when the socket cannot take
//!   frames as fast as they send them. Reading the socket never stops for a consumer.
//! - **Drop cancels.** Dropping an [`Execution`] before its terminal event sends `cancel`.
//! - **Socket-stream events** (refusals that belong to no execution) go to
//!   [`Client::socket_events`]; they are never lost silently (a full queue logs a warning).
//! - No unbounded queues; nothing received from the network can panic the client.

#![warn(missing_docs)]

mod client;
mod connection;
mod error;
mod execution;
mod options;
mod outcome;
mod queue;
mod session;

pub use client::{is_synthetic, Client, SocketEvents};
pub use error::ClientError;
pub use execution::Execution;
pub use options::{ClientOptions, Reconnect};
pub use outcome::Outcome;
pub use session::SessionEvents;

/// The wire types, re-exported so users need not depend on `sluice-protocol` themselves.
pub use sluice_protocol as protocol;

#[cfg(test)]
mod tests;
