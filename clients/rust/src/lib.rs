//! Rust client for the Sluice gateway: run code over one WebSocket and stream its events,
//! follow sessions, and ride out dropped connections.
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
//! // Follow a session from anywhere (another client, another process), from its start.
//! let session = outcome.session().unwrap_or_default().to_owned();
//! let mut events = client.attach(&session, None).await?;
//! while let Some(event) = events.next().await {
//!     println!("{} {} {}", event.sequence, event.kind, event.data);
//!     if event.is_terminal() {
//!         break;
//!     }
//! }
//! events.detach().await?;
//!
//! client.close().await
//! # }
//! ```
//!
//! # Design
//!
//! Like async-nats: one background task owns the WebSocket. [`Client`], [`Execution`] and
//! [`SessionEvents`] handles send it commands through one bounded queue; it routes every
//! incoming event to that [`Execution`]'s or [`SessionEvents`]' own buffer, bounded in
//! bytes.
//!
//! - **Exactly one terminal event.** An [`Execution`] stream ends after its terminal
//!   event, or yields a synthetic terminal `error` (code `internal`) if the connection
//!   ends for good first.
//! - **Executions are independent.** The task never waits for a consumer: it appends
//!   each event to its execution's buffer and keeps reading the socket, so an execution
//!   whose events nobody reads never holds up another. Running two executions and waiting
//!   for the second one first is fine.
//! - **Bounded, and never lossy in silence.** Each execution's buffer holds at most
//!   [`ClientOptions::execution_buffer_bytes`] (16 MiB by default) of unread events. A
//!   consumer that falls further behind than that gets its execution cancelled: the
//!   client sends `cancel`, discards later events, and the consumer receives what was
//!   buffered followed by one synthetic terminal `error` (code `slow_consumer`);
//!   [`Execution::wait`] returns [`ClientError::SlowConsumer`]. A [`SessionEvents`] that
//!   falls behind is detached the same way.
//! - **Backpressure only when the whole client is overwhelmed.** The command queue is
//!   bounded ([`ClientOptions::command_buffer`]): callers wait when the socket cannot take
//!   frames as fast as they send them. Reading the socket never stops for a consumer.
//! - **Drop cancels.** Dropping an [`Execution`] before its terminal event sends `cancel`;
//!   [`Client::close`] cancels every execution still running (sessions outlive sockets,
//!   so the gateway would otherwise keep them for its grace period). Dropping a
//!   [`SessionEvents`] detaches it.
//! - **Socket-stream events** (refusals that belong to no execution) go to
//!   [`Client::socket_events`]; they are never lost silently (a full queue logs a warning).
//! - No unbounded queues; nothing received from the network can panic the client.
//!
//! # Sessions and `attach`
//!
//! Every execution runs in a session: one the request names
//! ([`ExecuteRequest::session`](protocol::ExecuteRequest::session)), or one the gateway
//! makes for it alone (its id is in every event, see [`Execution::session`]). Each event
//! of a session carries its `sequence`, from 1, one more each time, and sessions outlive
//! sockets. [`Client::attach`] receives a session's events after a given sequence (those
//! the gateway still buffers are replayed first) as a [`SessionEvents`] stream; it
//! returns once the gateway has answered the `attach` with its `attached` event, and
//! fails with [`ClientError::AttachRefused`] when the gateway refuses it instead (code
//! `unknown_session`, `bad_request` for a `since` past the session's end, or
//! `too_many_sessions`). The `attached` answer is not an item of the stream (nor of any
//! [`Execution`]): a [`SessionEvents`] carries the session's own events only, so the
//! attaches a reconnect makes leave no trace in it. When events were no longer buffered,
//! the stream carries one `gap` event saying which, in their place.
//! [`SessionEvents::detach`] (or dropping it) stops it.
//!
//! # Reconnecting
//!
//! When the connection drops (the network, a proxy, a gateway restart...), the client
//! reconnects on its own, transparently: with exponential backoff and jitter, bounded in
//! attempts and time ([`ClientOptions::reconnect`], [`Reconnect`]; on by default, 100 ms
//! first delay, 5 s longest delay, give up after 30 s). On the new socket it attaches
//! every session it was reading, after the last sequence every consumer of it has, and
//! drops any event it has already delivered (by sequence), so each [`Execution`] and
//! [`SessionEvents`] goes on with every event exactly once, in order. Meanwhile callers
//! may keep using the client: their frames wait for the new socket.
//!
//! - An `execute` in a **named session** that no event has answered yet is sent again:
//!   the gateway answers an id its session knows from the session, so it runs once (if
//!   it cannot make the new socket read the session, the execution ends with its refusal,
//!   for example `too_many_sessions`).
//!   One **without a session** cannot be asked after (its session is not known yet): it
//!   ends with a synthetic terminal `error` saying it may or may not have run (at most
//!   once; if it did start, the gateway cancels it when its session's grace period
//!   ends). Name a session when a resubmit must be safe.
//! - `stdin` and `cancel` name the execution's session, so the new socket reaches them.
//!   A `cancel` is sent again after a reconnect (if the first one had arrived after all,
//!   the gateway refuses the second with `unknown_execution`, on
//!   [`Client::socket_events`]); `stdin` that was already written to the dropped socket
//!   is not (it may or may not have arrived: at most once), while `stdin` sent during the
//!   reconnect waits for the new socket.
//! - If the gateway no longer has the session (it ended during the outage, or the
//!   gateway restarted), its consumers end with a synthetic `error` carrying the
//!   gateway's code (`unknown_session`).
//! - When the bound is reached, every open stream ends with a synthetic `error`
//!   ([`Execution::wait`] returns [`ClientError::Interrupted`]) and every later call fails
//!   with [`ClientError::ConnectionClosed`], whose reason says why reconnecting failed.
//!
//! With [`ClientOptions::reconnect`] set to `None`, the first drop ends the client as it
//! would without sessions.
//!
//! # Credentials
//!
//! A gateway started with API keys or signed tokens requires a credential:
//! [`ClientOptions::token`] is sent as `Authorization: Bearer` on the first connection and
//! every reconnect. A refusal (HTTP 401) is [`ClientError::Unauthorized`] with the
//! gateway's one-line reason, from [`Client::connect`], or, when a reconnect is refused
//! (a key revoked, a token expired), from every later call; it is never retried. The
//! client reads no environment variable for it (`sluice run` reads `SLUICE_TOKEN`), and
//! [`Token`]'s `Debug` output is redacted.
//!
//! # Acknowledgements
//!
//! Events the gateway has written to its socket are not yet received: kernel buffers on
//! the way can hold megabytes, lost when the connection drops. So, while reconnecting is
//! on, the client acknowledges (`ack` frames) each session's events once it has handed
//! them to their consumers' buffers: every 256 events or 1 MiB, whenever the socket has
//! nothing more to read (so that a small gateway buffer never waits for an
//! acknowledgement that waits for more events), and right after each `attach`. The
//! gateway then keeps every event the client has not acknowledged (its programs wait when
//! that buffer is full), and a resume loses nothing. Every `execute` and `attach` says so
//! (`"ack": true`), so the events written before the first `ack` arrives are kept too. A
//! gateway-made session is acknowledged to its end once its execution has ended, which
//! lets the gateway free it at once.
//!
//! Refusals that answer the client's own frames are recognised by the session they name
//! (`for_session`) and never show on [`Client::socket_events`]: a refused `attach`
//! ([`ClientError::AttachRefused`], or the end of the streams of a session that could
//! not be resumed), a `detach` of a session the gateway had already let go of, and an
//! `execute` sent again after a reconnect that could not rejoin its session.
//!
//! # Notebooks
//!
//! A persistent Python cell's rich output arrives as `display`, `update_display` and
//! `result` events ([`Outcome::displays`], [`Outcome::value`]); `input()` in a cell sends
//! an `input_request` (answer with [`Execution::send_stdin`]); a cell that raised ends with
//! its exception ([`Outcome::exception`]); [`Client::restart`] gives a session a fresh
//! interpreter. See PROTOCOL.md §10.1 and §12.

#![warn(missing_docs)]

mod client;
mod command;
mod connection;
mod error;
mod execution;
mod files;
mod options;
mod outcome;
mod queries;
mod queue;
mod session;
mod shared;
mod synthetic;

pub use client::{AttachOptions, Client, SocketEvents};
pub use error::{redact_url, ClientError};
pub use execution::Execution;
pub use files::{FileList, WriteFileOptions};
pub use options::{ClientOptions, Reconnect, Token};
pub use outcome::Outcome;
pub use queries::{Completions, Inspection};
pub use session::SessionEvents;
pub use synthetic::is_synthetic;

/// The wire types, re-exported so users need not depend on `sluice-protocol` themselves.
pub use sluice_protocol as protocol;

#[cfg(test)]
mod tests;
