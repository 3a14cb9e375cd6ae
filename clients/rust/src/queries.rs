//! Questions to a session's persistent interpreter (PROTOCOL.md §4.11):
//! [`Client::complete`] and [`Client::inspect`]. Each sends one frame answered on the
//! socket's own stream by its `request`. The client must read the session (an execute
//! in it, or [`Client::attach`]). A query changes nothing, so one the connection lost is
//! asked again on the new socket.

use crate::client::Client;
use crate::ClientError;
use sluice_protocol::{ClientFrame, CompleteFrame, ErrorCode, Event, EventKind, InspectFrame};
use std::collections::BTreeMap;

/// The answer to [`Client::complete`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Completions {
    /// The completions, sorted; each replaces the code points `cursor_start` to
    /// `cursor_end` of the code.
    pub matches: Vec<String>,
    /// Where the replaced text starts, in code points (`str::chars`).
    pub cursor_start: u64,
    /// Where it ends, in code points.
    pub cursor_end: u64,
    /// There were more matches than the gateway sends.
    pub truncated: bool,
}

/// The answer to [`Client::inspect`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Inspection {
    /// The interpreter knew the name.
    pub found: bool,
    /// Its description as a MIME bundle (`text/plain`: signature, type, documentation).
    pub bundle: BTreeMap<String, serde_json::Value>,
}

impl Inspection {
    /// The bundle's `text/plain`, or `""`.
    pub fn text(&self) -> &str {
        self.bundle
            .get("text/plain")
            .and_then(serde_json::Value::as_str)
            .unwrap_or("")
    }
}

impl Client {
    /// The completions of the name that ends at `cursor_pos` (in code points, as
    /// `code.chars()` counts) of `code`, from `session`'s interpreter: its variables,
    /// imports and their attributes.
    pub async fn complete(
        &self,
        session: &str,
        code: &str,
        cursor_pos: u64,
    ) -> Result<Completions, ClientError> {
        let frame = ClientFrame::Complete(CompleteFrame {
            request: self.next_request(),
            session: session.to_owned(),
            code: code.to_owned(),
            cursor_pos,
        });
        let reply = self.query(session, frame, EventKind::CompleteReply).await?;
        Ok(Completions {
            matches: reply.matches.unwrap_or_default(),
            cursor_start: reply.cursor_start.unwrap_or(cursor_pos),
            cursor_end: reply.cursor_end.unwrap_or(cursor_pos),
            truncated: reply.truncated == Some(true),
        })
    }

    /// What `session`'s interpreter knows about the name at `cursor_pos` of `code` (or
    /// the callee of the call the cursor is in); `detail_level` 1 adds the source where
    /// it has it.
    pub async fn inspect(
        &self,
        session: &str,
        code: &str,
        cursor_pos: u64,
        detail_level: u8,
    ) -> Result<Inspection, ClientError> {
        let frame = ClientFrame::Inspect(InspectFrame {
            request: self.next_request(),
            session: session.to_owned(),
            code: code.to_owned(),
            cursor_pos,
            detail_level,
        });
        let reply = self.query(session, frame, EventKind::InspectReply).await?;
        Ok(Inspection {
            found: reply.found == Some(true),
            bundle: reply.bundle.unwrap_or_default(),
        })
    }

    async fn query(
        &self,
        session: &str,
        frame: ClientFrame,
        kind: EventKind,
    ) -> Result<Event, ClientError> {
        if let Err(err) = frame.validate() {
            return Err(ClientError::QueryRefused {
                session: session.to_owned(),
                code: err.code,
                message: err.message,
            });
        }
        match self.ask(frame, true).await?.pop() {
            Some(event) if event.kind == kind => Ok(event),
            Some(event) if event.kind == EventKind::Error => Err(ClientError::QueryRefused {
                session: session.to_owned(),
                code: event.code.unwrap_or(ErrorCode::Other),
                message: event.data,
            }),
            Some(event) => Err(ClientError::Protocol(format!(
                "a {} event answered a query that expects {kind}",
                event.kind
            ))),
            None => Err(ClientError::Protocol("a query got no answer".to_owned())),
        }
    }
}
