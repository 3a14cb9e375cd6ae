//! The one error type of the client crate.

use sluice_protocol::ErrorCode;
use tokio_tungstenite::tungstenite;

/// Why a client operation failed.
///
/// Refusals by the gateway are not errors of this type: they arrive as `error` events,
/// either as the terminal event of an [`Execution`](crate::Execution) or on
/// [`Client::socket_events`](crate::Client::socket_events).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The TCP connection or the WebSocket handshake to `url` failed, or `url` is not a
    /// `ws://`/`wss://` URL.
    #[error("cannot connect to {url}: {source}")]
    Connect {
        /// The URL given to [`Client::connect`](crate::Client::connect), with the value
        /// of a `token` query parameter replaced ([`redact_url`]).
        url: String,
        /// What went wrong (boxed: the WebSocket error type is large).
        #[source]
        source: Box<tungstenite::Error>,
    },
    /// The gateway refused the credential ([`ClientOptions::token`](crate::ClientOptions::token)):
    /// it was missing, unknown, expired or malformed, and the gateway answered the upgrade
    /// request with HTTP 401. Returned by [`Client::connect`](crate::Client::connect), and
    /// by operations after a reconnect was refused so (never retried: retrying cannot help).
    #[error("the gateway refused the credential: {reason}")]
    Unauthorized {
        /// The gateway's one-line reason (the body of its 401 response), or a description
        /// of the status where it sent none.
        reason: String,
    },
    /// The connection to the gateway is closed (by [`Client::close`](crate::Client::close),
    /// or by the gateway or a network failure when reconnecting is off or gave up; see
    /// [`Reconnect`](crate::Reconnect)), so the operation could not be carried out.
    #[error("the connection to the gateway is closed: {reason}")]
    ConnectionClosed {
        /// How the connection ended.
        reason: String,
    },
    /// The connection ended (for good: reconnecting was off or gave up) before the gateway
    /// sent the terminal event of execution `id`; returned by
    /// [`Execution::wait`](crate::Execution::wait).
    #[error("execution {id:?} has no terminal event: {reason}")]
    Interrupted {
        /// The execution id.
        id: String,
        /// Why no terminal event arrived.
        reason: String,
    },
    /// The consumer of execution `id` fell behind: more than
    /// [`ClientOptions::execution_buffer_bytes`](crate::ClientOptions::execution_buffer_bytes)
    /// of its events were waiting unread, so the client cancelled the execution and
    /// discarded its later events. Returned by [`Execution::wait`](crate::Execution::wait),
    /// and by [`Execution::send_stdin`](crate::Execution::send_stdin) between that moment
    /// and the end of the stream; a consumer reading the stream sees, after the events
    /// buffered before it, a synthetic terminal `error` event (code `slow_consumer`) instead.
    #[error(
        "execution {id:?} was cancelled because its events were not read fast enough: \
         {buffered_bytes} bytes would have been buffered, over the limit of {limit} bytes"
    )]
    SlowConsumer {
        /// The execution id.
        id: String,
        /// The bytes the execution's buffer would have held with the event that did not
        /// fit (more than `limit`).
        buffered_bytes: usize,
        /// The budget, [`ClientOptions::execution_buffer_bytes`](crate::ClientOptions::execution_buffer_bytes).
        limit: usize,
    },
    /// An execution with this id is still running on this client (its terminal event has
    /// not arrived yet).
    #[error("execution id {0:?} is already running on this client")]
    DuplicateId(String),
    /// The execution id cannot be sent (for example it is longer than
    /// [`sluice_protocol::MAX_ID_BYTES`]).
    #[error("invalid execution id {id:?}: {reason}")]
    InvalidId {
        /// The rejected id.
        id: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The encoded frame is larger than [`ClientOptions::max_frame_bytes`](crate::ClientOptions::max_frame_bytes),
    /// so the gateway would refuse it; it was not sent.
    #[error("frame of {size} bytes exceeds the maximum of {max} bytes")]
    FrameTooLarge {
        /// Size of the encoded frame in bytes.
        size: usize,
        /// The configured maximum.
        max: usize,
    },
    /// The execution has already received its terminal event, so stdin can no longer be sent.
    #[error("execution {0:?} has already ended")]
    ExecutionFinished(String),
    /// The gateway refused to attach this client to `session`: code `unknown_session` when
    /// no such session is open (it never was, or it ended), `bad_request` when `since` is
    /// past the session's last event, `too_many_sessions` when the socket reads as many
    /// sessions as the gateway allows. Returned by [`Client::attach`](crate::Client::attach).
    #[error("the gateway refused to attach to session {session:?}: {code}: {message}")]
    AttachRefused {
        /// The session named in the `attach`.
        session: String,
        /// The gateway's error code.
        code: ErrorCode,
        /// The gateway's message.
        message: String,
    },
    /// The gateway refused a `runtimes` frame (one older than the frame answers
    /// `bad_request`). Returned by [`Client::runtimes`](crate::Client::runtimes).
    #[error("the gateway refused to list its runtimes: {code}: {message}")]
    RuntimesRefused {
        /// The gateway's error code.
        code: ErrorCode,
        /// The gateway's message.
        message: String,
    },
    /// The gateway refused a `restart` (`unknown_session`, `not_permitted`, or
    /// `bad_request` for a session the gateway made), or the client did before sending
    /// it (`bad_request`: it does not read the session, so the answer would not reach
    /// it). Returned by [`Client::restart`](crate::Client::restart).
    #[error("restarting the interpreter of session {session:?} was refused: {code}: {message}")]
    RestartRefused {
        /// The session named in the `restart`.
        session: String,
        /// The gateway's error code.
        code: ErrorCode,
        /// The gateway's message.
        message: String,
    },
    /// The gateway refused a `complete` or `inspect`: `kernel_busy` (a cell holds the
    /// interpreter: ask again after it), `no_kernel`, `query_timeout`, `unknown_session`
    /// (this client does not read the session), `not_permitted` or `bad_request`.
    /// Returned by [`Client::complete`](crate::Client::complete) and
    /// [`Client::inspect`](crate::Client::inspect).
    #[error("a query to the interpreter of session {session:?} was refused: {code}: {message}")]
    QueryRefused {
        /// The session named.
        session: String,
        /// The gateway's error code.
        code: ErrorCode,
        /// The gateway's message.
        message: String,
    },
    /// The gateway refused a file frame (`write_file`, `read_file`, `list_files`,
    /// `delete_file`): code `no_workspace`, `invalid_path`, `not_found`,
    /// `workspace_full`, `unknown_session` (this client does not read the session) or
    /// `bad_request`. Also a path the client refuses itself before sending
    /// (`invalid_path`).
    #[error("file {path:?} in session {session:?}: {code}: {message}")]
    FileRefused {
        /// The session named.
        session: String,
        /// The path named (`""`: the workspace).
        path: String,
        /// The gateway's error code.
        code: ErrorCode,
        /// The gateway's message.
        message: String,
    },
    /// Events of execution `id`'s session were lost (the gateway no longer had them when
    /// the client resumed), so its output may be incomplete: the stream carried a `gap`
    /// event saying which sequences. Returned by [`Execution::wait`](crate::Execution::wait)
    /// after the terminal event.
    #[error(
        "execution {id:?} may have lost events: sequences {missed_from} to {} of its \
         session were no longer available", .resume_from.saturating_sub(1)
    )]
    EventsLost {
        /// The execution id.
        id: String,
        /// The first sequence lost.
        missed_from: u64,
        /// The sequence the session's stream continued at.
        resume_from: u64,
    },
    /// The session name cannot be used (empty, or longer than
    /// [`sluice_protocol::MAX_ID_BYTES`]).
    #[error("invalid session name {session:?}: {reason}")]
    InvalidSession {
        /// The rejected name.
        session: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The gateway sent something that breaks the protocol (for example output that is
    /// not valid base64 in base64 mode).
    #[error("protocol error: {0}")]
    Protocol(String),
}

/// `url` as it may be shown in messages and logs: the value of a `token` query
/// parameter (a credential, where a client can present it no other way) replaced by
/// `REDACTED`. [`ClientError::Connect`] holds the URL in this form.
pub fn redact_url(url: &str) -> String {
    let Some((base, rest)) = url.split_once('?') else {
        return url.to_owned();
    };
    let (query, fragment) = match rest.split_once('#') {
        Some((query, fragment)) => (query, Some(fragment)),
        None => (rest, None),
    };
    let query: Vec<&str> = query
        .split('&')
        .map(|pair| {
            if pair.starts_with("token=") {
                "token=REDACTED"
            } else {
                pair
            }
        })
        .collect();
    let mut shown = format!("{base}?{}", query.join("&"));
    if let Some(fragment) = fragment {
        shown.push('#');
        shown.push_str(fragment);
    }
    shown
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn a_token_in_the_query_is_never_shown() {
        assert_eq!(
            redact_url("ws://h:1/v1/ws?a=1&token=sluice_secret#f"),
            "ws://h:1/v1/ws?a=1&token=REDACTED#f"
        );
        assert_eq!(
            redact_url("ws://h/v1/ws?token=x"),
            "ws://h/v1/ws?token=REDACTED"
        );
        assert_eq!(
            redact_url("ws://h/v1/ws?notoken=x"),
            "ws://h/v1/ws?notoken=x"
        );
        assert_eq!(redact_url("ws://h/v1/ws"), "ws://h/v1/ws");
    }
}
