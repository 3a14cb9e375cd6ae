//! The file frames (`write_file`, `read_file`, `list_files`, `delete_file`) and the
//! workspace side of `attach` and `execute`: making a session's workspace (within the
//! gateway's and the peer's caps), answering on the socket's own stream with the
//! frame's `request`, and telling the session's readers what a write or delete changed
//! (`files_changed`).

use super::frames::{unknown_session, Connection, Refusal};
use crate::session::Session;
use crate::workspace::{FileError, Workspace};
use base64::Engine as _;
use sluice_protocol::{
    DeleteFileFrame, Encoding, ErrorCode, Event, EventKind, ListFilesFrame, ReadFileFrame,
    WriteFileFrame, DEFAULT_FILE_MODE, FILE_CHUNK_BYTES,
};
use std::sync::Arc;

impl Connection {
    /// A new workspace of `bytes` for a session of this caller, within
    /// `--max-workspaces` and `--max-workspaces-per-peer`, its size held of the memory
    /// budget the executions share (its pages are memory); not yet any session's.
    pub(super) fn make_workspace(&self, bytes: u64) -> Result<Workspace, Refusal> {
        let state = &self.state;
        let Ok(gateway_slot) = state.workspace_slots.clone().try_acquire_owned() else {
            return Err((
                ErrorCode::TooManySessions,
                format!(
                    "the gateway keeps {} workspaces, its maximum (--max-workspaces); end a session that has one, or retry later",
                    state.config.max_workspaces
                ),
            ));
        };
        let peer_slot = state
            .workspaces_per_peer
            .try_acquire_within(&self.principal, None)
            .map_err(|e| {
                (
                    ErrorCode::TooManySessions,
                    format!(
                        "your {} keeps {} workspaces, the maximum {} (--max-workspaces-per-peer); end a session that has one and retry",
                        self.principal,
                        e.max,
                        self.principal.cap_scope()
                    ),
                )
            })?;
        let host = &state.host;
        let memory = state
            .workspace_budget
            .reserve(self.principal.clone(), bytes, 0)
            .map_err(|refusal| {
                let why = match refusal.kind {
                    crate::sandbox::budget::RefusalKind::Exceeds => format!(
                        "more than all workspaces may hold together ({} bytes, --workspace-budget-bytes)",
                        state.workspace_budget.memory_total().unwrap_or(0)
                    ),
                    crate::sandbox::budget::RefusalKind::Busy => format!(
                        "more than the workspaces open leave of --workspace-budget-bytes ({} bytes), or of your {}'s share of it",
                        state.workspace_budget.memory_total().unwrap_or(0),
                        self.principal
                    ),
                };
                (
                    ErrorCode::TooManySessions,
                    format!("a workspace of {bytes} bytes (its files are memory) is {why}; end a session that has one, ask for a smaller one, or retry later"),
                )
            })?;
        Workspace::create(
            &host.work_root,
            host.jail.as_deref(),
            host.program_user,
            bytes,
            Box::new((gateway_slot, peer_slot, memory)),
        )
        .map_err(|err| match err {
            crate::workspace::CreateError::NotRoot => (ErrorCode::NoWorkspace, err.to_string()),
            crate::workspace::CreateError::Io(cause) => {
                tracing::error!(%cause, "could not make a workspace");
                (
                    ErrorCode::Internal,
                    "could not make the workspace".to_owned(),
                )
            }
        })
    }

    /// The workspace of `name`, a session this socket reads.
    fn workspace_of(&self, name: &str) -> Result<(Arc<Session>, Arc<Workspace>), Refusal> {
        let Some(session) = self.link.session(name) else {
            return Err(unknown_session(name));
        };
        match session.workspace() {
            Some(workspace) => Ok((session, workspace)),
            None if session.ephemeral => Err((
                ErrorCode::NoWorkspace,
                format!("session {name:?} was made by the gateway for one execution and keeps no workspace; name a session of your own and ask for one (\"workspace\": true on attach or execute)"),
            )),
            None => Err((
                ErrorCode::NoWorkspace,
                format!("session {name:?} keeps no workspace; ask for one with \"workspace\": true on attach or execute"),
            )),
        }
    }

    /// Refuses a frame answered by its `request` (a file frame, a query): an `error` on
    /// the socket's own stream naming that request.
    pub(super) async fn refuse_request(&self, request: &str, (code, message): Refusal) {
        self.state.observe.metrics.refused(&self.principal, code);
        tracing::info!(
            code = code.as_str(),
            request,
            session = self.frame_session.as_deref(),
            detail = %message,
            "request refused"
        );
        let mut event = Event::error(None, code, message);
        event.request = Some(request.to_owned());
        event.for_session.clone_from(&self.frame_session);
        self.answer(event).await;
    }

    /// Publishes an answer on the socket's own stream once it has room.
    async fn answer(&self, event: Event) {
        tokio::select! {
            biased;
            () = self.own.room() => {
                self.own.publish(event);
            }
            () = self.closing.cancelled() => {}
        }
    }

    pub(super) async fn write_file(&mut self, frame: WriteFileFrame) {
        let (session, workspace) = match self.workspace_of(&frame.session) {
            Ok(found) => found,
            Err(refusal) => return self.refuse_request(&frame.request, refusal).await,
        };
        let decoded;
        let data = match frame.encoding {
            Encoding::Utf8 => frame.data.as_bytes(),
            Encoding::Base64 => {
                match base64::engine::general_purpose::STANDARD.decode(&frame.data) {
                    Ok(bytes) => {
                        decoded = bytes;
                        &decoded[..]
                    }
                    Err(err) => {
                        let message = format!("\"data\" is not valid base64: {err}");
                        return self
                            .refuse_request(&frame.request, (ErrorCode::BadRequest, message))
                            .await;
                    }
                }
            }
        };
        let mode = frame.mode.unwrap_or(DEFAULT_FILE_MODE);
        match workspace.write(&frame.path, data, frame.append, mode) {
            Ok(size) => {
                let mut event =
                    Event::file_reply(EventKind::FileWritten, frame.request, frame.path);
                event.size = Some(size);
                self.answer(event).await;
                self.tell_changes(&session, workspace).await;
            }
            Err(FileError { code, message }) => {
                self.refuse_request(&frame.request, (code, message)).await;
            }
        }
    }

    pub(super) async fn read_file(&mut self, frame: ReadFileFrame) {
        let workspace = match self.workspace_of(&frame.session) {
            Ok((_, workspace)) => workspace,
            Err(refusal) => return self.refuse_request(&frame.request, refusal).await,
        };
        let opened =
            workspace.open_for_reading(&frame.path, frame.offset.unwrap_or(0), frame.length);
        let mut reader = match opened {
            Ok(reader) => reader,
            Err(FileError { code, message }) => {
                return self.refuse_request(&frame.request, (code, message)).await;
            }
        };
        let mut decoder = crate::execution::OutputDecoder::new(frame.encoding, FILE_CHUNK_BYTES);
        let mut held = decoder.buffer();
        loop {
            // Where the bytes of this event start: before any held back from the last.
            let offset = reader.offset - held.len() as u64;
            let chunk = match reader.next_chunk(FILE_CHUNK_BYTES - held.len()) {
                Ok(chunk) => chunk,
                Err(FileError { code, message }) => {
                    return self.refuse_request(&frame.request, (code, message)).await;
                }
            };
            held.extend_from_slice(&chunk);
            let last = reader.is_done();
            let mut data = decoder.decode(&mut held);
            if last {
                // A character cut short at the end of the range, as U+FFFD.
                if let Some(rest) = decoder.finish(&mut held) {
                    data.get_or_insert_with(String::new).push_str(&rest);
                }
            }
            if data.is_none() && !last {
                continue;
            }
            let mut event = Event::file_reply(EventKind::FileData, &*frame.request, &*frame.path);
            event.data = data.unwrap_or_default();
            event.encoding = (frame.encoding == Encoding::Base64).then_some(Encoding::Base64);
            event.offset = Some(offset);
            event.size = Some(reader.size);
            event.last = Some(last);
            self.answer(event).await;
            if last || self.closing.is_cancelled() {
                return;
            }
        }
    }

    pub(super) async fn list_files(&mut self, frame: ListFilesFrame) {
        let workspace = match self.workspace_of(&frame.session) {
            Ok((_, workspace)) => workspace,
            Err(refusal) => return self.refuse_request(&frame.request, refusal).await,
        };
        let path = frame.path.unwrap_or_default();
        let listed = {
            let (workspace, path) = (workspace.clone(), path.clone());
            tokio::task::spawn_blocking(move || workspace.list(&path)).await
        };
        match listed {
            Ok(Ok((entries, truncated))) => {
                let mut event = Event::file_reply(EventKind::FileList, frame.request, path);
                event.entries = Some(entries);
                event.truncated = truncated.then_some(true);
                self.answer(event).await;
            }
            Ok(Err(FileError { code, message })) => {
                self.refuse_request(&frame.request, (code, message)).await;
            }
            Err(err) => {
                tracing::error!(%err, "listing a workspace failed");
                let refusal = (
                    ErrorCode::Internal,
                    "could not list the directory".to_owned(),
                );
                self.refuse_request(&frame.request, refusal).await;
            }
        }
    }

    pub(super) async fn delete_file(&mut self, frame: DeleteFileFrame) {
        let (session, workspace) = match self.workspace_of(&frame.session) {
            Ok(found) => found,
            Err(refusal) => return self.refuse_request(&frame.request, refusal).await,
        };
        let deleted = {
            let (workspace, path) = (workspace.clone(), frame.path.clone());
            tokio::task::spawn_blocking(move || workspace.delete(&path, frame.recursive)).await
        };
        match deleted {
            Ok(Ok(())) => {
                let event = Event::file_reply(EventKind::FileDeleted, frame.request, frame.path);
                self.answer(event).await;
                self.tell_changes(&session, workspace).await;
            }
            Ok(Err(FileError { code, message })) => {
                self.refuse_request(&frame.request, (code, message)).await;
            }
            Err(err) => {
                tracing::error!(%err, "deleting in a workspace failed");
                let refusal = (ErrorCode::Internal, "could not delete the path".to_owned());
                self.refuse_request(&frame.request, refusal).await;
            }
        }
    }

    /// Tells the session's readers what changed in its workspace since they last
    /// heard (a `files_changed` without an execution id), if anything did.
    async fn tell_changes(&self, session: &Session, workspace: Arc<Workspace>) {
        let Ok(Some((changes, truncated))) =
            tokio::task::spawn_blocking(move || workspace.changes(false)).await
        else {
            return;
        };
        if changes.is_empty() {
            return;
        }
        let event = Event::files_changed(None, changes, truncated);
        tokio::select! {
            biased;
            () = session.stream.room() => {
                session.stream.publish(event);
            }
            () = self.closing.cancelled() => {}
            () = session.cancel.cancelled() => {}
        }
    }
}
