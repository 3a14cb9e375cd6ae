//! The kernel queries, `complete` and `inspect` (PROTOCOL.md 4.11): checked against the
//! sessions this socket reads, answered by the session's persistent interpreter when no
//! cell holds it, on the socket's own stream with the frame's `request`. A query runs in
//! a task of its own (at most one per session, since it holds the interpreter's seat),
//! so the socket's reader goes on meanwhile.

use super::frames::{unknown_session, Connection, Refusal};
use crate::execution::kernel::{QueryFailure, Turn};
use crate::execution::Owner;
use crate::fanout::EventStream;
use sluice_protocol::{CompleteFrame, ErrorCode, Event, EventKind, InspectFrame};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// A `complete` or an `inspect`, as the interpreter's driver reads it.
pub(super) struct Query {
    request: String,
    session: String,
    kind: EventKind,
    body: serde_json::Value,
}

impl From<CompleteFrame> for Query {
    fn from(frame: CompleteFrame) -> Self {
        Self {
            body: serde_json::json!({
                "kind": "complete", "code": frame.code, "cursor_pos": frame.cursor_pos,
            }),
            request: frame.request,
            session: frame.session,
            kind: EventKind::CompleteReply,
        }
    }
}

impl From<InspectFrame> for Query {
    fn from(frame: InspectFrame) -> Self {
        Self {
            body: serde_json::json!({
                "kind": "inspect", "code": frame.code, "cursor_pos": frame.cursor_pos,
                "detail_level": frame.detail_level,
            }),
            request: frame.request,
            session: frame.session,
            kind: EventKind::InspectReply,
        }
    }
}

/// Where a query's answer goes: the socket's own stream, unless the socket closes first.
struct Answerer {
    own: Arc<EventStream>,
    closing: CancellationToken,
    request: String,
    session: String,
}

impl Answerer {
    async fn publish(&self, mut event: Event) {
        event.request = Some(self.request.clone());
        if event.kind == EventKind::Error {
            event.for_session = Some(self.session.clone());
        }
        tokio::select! {
            biased;
            () = self.own.room() => {
                self.own.publish(event);
            }
            () = self.closing.cancelled() => {}
        }
    }
}

impl Connection {
    /// Takes the session's interpreter if it is free and lets a task ask it.
    pub(super) async fn query(&mut self, query: Query) {
        let turn = match self.query_turn(&query.session) {
            Ok(turn) => turn,
            Err(refusal) => return self.refuse_request(&query.request, refusal).await,
        };
        let answerer = Answerer {
            own: Arc::clone(&self.own),
            closing: self.closing.clone(),
            request: query.request,
            session: query.session,
        };
        let metrics = Arc::clone(&self.state.observe.metrics);
        let principal = self.principal.clone();
        tokio::spawn(async move {
            let event = match ask(turn, query.kind, &query.body).await {
                Ok(event) => event,
                Err((code, message)) => {
                    metrics.refused(&principal, code);
                    Event::error(None, code, message)
                }
            };
            answerer.publish(event).await;
        });
    }

    /// The seat of `name`'s interpreter, held, for a query: the session must be one this
    /// socket reads, with an interpreter that no cell holds and that holds no more than
    /// the caller's credential allows.
    fn query_turn(&self, name: &str) -> Result<Turn, Refusal> {
        let Some(session) = self.link.session(name) else {
            return Err(unknown_session(name));
        };
        let no_kernel = |why: &str| {
            Err((
                ErrorCode::NoKernel,
                format!("session {name:?} has no persistent interpreter: {why}"),
            ))
        };
        if session.ephemeral {
            return no_kernel("it was made by the gateway for one execution");
        }
        let seat = Owner::interpreter(session.as_ref());
        let Some(turn) = seat.try_take_turn() else {
            return Err((
                ErrorCode::KernelBusy,
                format!("session {name:?}'s interpreter is running a cell (or answering another query); ask again once it is over"),
            ));
        };
        if seat.restart_asked() {
            // Left to the session's next cell, which tells its readers first.
            return no_kernel("it is being restarted; the next persistent cell starts a fresh one");
        }
        let Some(kernel) = turn.as_ref() else {
            return no_kernel(
                "no persistent cell has run in it yet, or its interpreter was restarted",
            );
        };
        if let Some(why) = kernel.ended_while_idle() {
            return no_kernel(&format!(
                "the gateway ended it ({why}); the next persistent cell starts a fresh one"
            ));
        }
        // As for cells (`connection::execute`): a credential's CPU ceiling is not yet
        // trusted to what a lookup may run in the interpreter.
        if self.grant.narrowing.limits.cpu_ms.is_some() {
            return Err((
                ErrorCode::NotPermitted,
                "your credential caps limits.cpu_ms, which this gateway does not yet trust a persistent interpreter to hold".to_owned(),
            ));
        }
        let state = &self.state;
        let network = !self.grant.denies_network()
            && state
                .runtimes
                .get(kernel.language())
                .is_some_and(|runtime| state.host.gives_network(runtime));
        if let Some(why) = kernel.beyond(network, &self.grant) {
            return Err((
                ErrorCode::NotPermitted,
                format!("session {name:?}'s interpreter was started with {why}; it answers no query of yours"),
            ));
        }
        Ok(turn)
    }
}

/// Asks the interpreter the query and makes its answer event.
async fn ask(mut turn: Turn, kind: EventKind, body: &serde_json::Value) -> Result<Event, Refusal> {
    let Some(kernel) = turn.as_mut() else {
        return Err((
            ErrorCode::NoKernel,
            "the session has no persistent interpreter".to_owned(),
        ));
    };
    let answer = kernel.query(body).await.map_err(|failure| match failure {
        QueryFailure::TimedOut { ended } => (
            ErrorCode::QueryTimeout,
            format!(
                "the interpreter did not answer within {} s and was interrupted{}",
                crate::execution::kernel::QUERY_TIME.as_secs(),
                if ended {
                    "; it did not answer that either and was ended (the session's state is lost; its next cell starts a fresh interpreter)"
                } else {
                    ""
                }
            ),
        ),
        QueryFailure::Lost => (
            ErrorCode::NoKernel,
            "the session's interpreter ended while answering; its next cell starts a fresh one".to_owned(),
        ),
        QueryFailure::Failed(why) => (
            ErrorCode::Internal,
            format!("the interpreter could not answer: {why}"),
        ),
    })?;
    drop(turn);
    parse_answer(kind, answer).ok_or_else(|| {
        tracing::warn!("an interpreter answered a query with something unreadable");
        (
            ErrorCode::Internal,
            "the interpreter's answer could not be read".to_owned(),
        )
    })
}

/// The answer event from the driver's JSON answer; `None` when it is not well formed.
fn parse_answer(kind: EventKind, answer: serde_json::Value) -> Option<Event> {
    #[derive(serde::Deserialize)]
    struct Answer {
        matches: Option<Vec<String>>,
        cursor_start: Option<u64>,
        cursor_end: Option<u64>,
        #[serde(default)]
        truncated: bool,
        found: Option<bool>,
        bundle: Option<std::collections::BTreeMap<String, serde_json::Value>>,
    }
    let answer: Answer = serde_json::from_value(answer).ok()?;
    let mut event = Event::new(kind, None, "");
    match kind {
        EventKind::CompleteReply => {
            let (start, end) = (answer.cursor_start?, answer.cursor_end?);
            if start > end {
                return None;
            }
            event.matches = Some(answer.matches?);
            event.cursor_start = Some(start);
            event.cursor_end = Some(end);
            event.truncated = answer.truncated.then_some(true);
        }
        _ => {
            let found = answer.found?;
            event.found = Some(found);
            if found {
                event.bundle = Some(answer.bundle?);
            }
        }
    }
    Some(event)
}
