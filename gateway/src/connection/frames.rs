//! [`Connection`], the reader's side of a socket, and what it does with a text frame:
//! the size cap, decoding (every failure answered with a typed `error` on the socket's
//! own stream), dispatch to `execute` ([`super::execute`]), `stdin`/`cancel`
//! ([`super::own`]), and the session frames handled here: `attach` (with `since`
//! replay), `detach` and `ack`.

use super::link::SocketLink;
use super::own::OwnExecutions;
use crate::admission::Principal;
use crate::buffer_budget::BufferBudget;
use crate::fanout::{EventStream, Lead};
use crate::session::Session;
use crate::state::GatewayState;
use axum::extract::ws::CloseFrame;
use sluice_protocol::{
    AckFrame, AttachFrame, ClientFrame, DetachFrame, ErrorCode, Event, FrameError, RestartFrame,
};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use tokio_util::sync::CancellationToken;

/// A refusal: the code and the human message of an `error` event.
pub(super) type Refusal = (ErrorCode, String);

/// The reader side's state.
pub(super) struct Connection {
    pub(super) state: Arc<GatewayState>,
    pub(super) link: Arc<SocketLink>,
    /// Refusals that belong to no session are numbered on this stream.
    pub(super) own: Arc<EventStream>,
    /// Executions this socket started; stdin and cancel without a `session` look here.
    pub(super) started: OwnExecutions,
    /// Cancelled on gateway shutdown or when the writer gives up; every wait for room in
    /// the socket's own stream also watches it, so a stuck client cannot stall shutdown.
    pub(super) closing: CancellationToken,
    pub(super) close_reason: Arc<Mutex<Option<CloseFrame>>>,
    /// The session the frame being handled names, for its refusals' `for_session`.
    pub(super) frame_session: Option<String>,
    /// Set when the client sent a close frame: the writer stops sending events.
    pub(super) peer_closed: Arc<AtomicBool>,
    /// Whom this socket's sessions and executions count against (per-peer or
    /// per-tenant caps), and in whose namespace its session names are.
    pub(super) principal: Principal,
    /// What the caller's credential allows.
    pub(super) grant: Arc<crate::auth::Grant>,
    /// The address the caller connected from.
    pub(super) peer: std::net::IpAddr,
    /// The peer's view of the gateway's buffer budget.
    pub(super) buffers: BufferBudget,
    /// When this socket last started an execution or joined a session (idle timeout).
    pub(super) busy_at: tokio::time::Instant,
}

impl Connection {
    #[allow(clippy::too_many_arguments)] // each is one piece the serve function set up
    pub(super) fn new(
        state: Arc<GatewayState>,
        link: Arc<SocketLink>,
        own: Arc<EventStream>,
        closing: CancellationToken,
        close_reason: Arc<Mutex<Option<CloseFrame>>>,
        peer_closed: Arc<AtomicBool>,
        caller: super::Caller,
        buffers: BufferBudget,
    ) -> Self {
        Self {
            state,
            link,
            own,
            started: OwnExecutions::default(),
            closing,
            close_reason,
            frame_session: None,
            peer_closed,
            principal: caller.principal,
            grant: caller.grant,
            peer: caller.peer,
            buffers,
            busy_at: tokio::time::Instant::now(),
        }
    }

    pub(super) async fn handle_text(&mut self, text: &str) {
        self.frame_session = None;
        if text.len() > self.state.config.max_frame_bytes {
            let message = format!(
                "frame of {} bytes exceeds the maximum of {} bytes; it was not processed",
                text.len(),
                self.state.config.max_frame_bytes
            );
            return self.refuse(None, ErrorCode::TooLarge, message).await;
        }
        let frame = ClientFrame::decode(text);
        self.frame_session = frame
            .as_ref()
            .ok()
            .and_then(ClientFrame::session)
            .map(str::to_owned);
        match frame {
            Ok(ClientFrame::Execute(request)) => self.execute(request).await,
            Ok(ClientFrame::Stdin(frame)) => self.stdin(frame).await,
            Ok(ClientFrame::Cancel(frame)) => self.cancel(frame).await,
            Ok(ClientFrame::Attach(frame)) => self.attach(frame).await,
            Ok(ClientFrame::Detach(frame)) => self.detach(frame),
            Ok(ClientFrame::Ack(frame)) => self.ack(frame),
            Ok(ClientFrame::Runtimes(_)) => self.runtimes().await,
            Ok(ClientFrame::Resize(frame)) => self.resize(frame).await,
            Ok(ClientFrame::WriteFile(frame)) => self.write_file(frame).await,
            Ok(ClientFrame::ReadFile(frame)) => self.read_file(frame).await,
            Ok(ClientFrame::ListFiles(frame)) => self.list_files(frame).await,
            Ok(ClientFrame::DeleteFile(frame)) => self.delete_file(frame).await,
            Ok(ClientFrame::Restart(frame)) => self.restart(frame).await,
            Ok(ClientFrame::Complete(frame)) => self.query(frame.into()).await,
            Ok(ClientFrame::Inspect(frame)) => self.query(frame.into()).await,
            Err(err) => self.refuse_frame(err).await,
        }
    }

    /// A refused frame: terminal for its execution only if it was an `execute` whose id
    /// is free; otherwise it belongs to no execution.
    async fn refuse_frame(&mut self, err: FrameError) {
        let id = match (&err.frame_type, err.id) {
            (Some(kind), Some(id))
                if kind == "execute" && is_usable_id(&id) && !self.started.is_running(&id) =>
            {
                Some(id)
            }
            _ => None,
        };
        match err.request.filter(|request| is_usable_id(request)) {
            Some(request) => self.refuse_request(&request, (err.code, err.message)).await,
            None => self.refuse(id, err.code, err.message).await,
        }
    }

    /// Sends an `error` on the socket's own stream, naming the session the refused
    /// frame named, if any.
    pub(super) async fn refuse(
        &self,
        id: Option<String>,
        code: ErrorCode,
        message: impl Into<String>,
    ) {
        self.state.observe.metrics.refused(&self.principal, code);
        let message = message.into();
        tracing::info!(
            code = code.as_str(),
            id = id.as_deref(),
            session = self.frame_session.as_deref(),
            detail = %message,
            "refused"
        );
        let mut event = Event::error(id, code, message);
        event.for_session.clone_from(&self.frame_session);
        self.publish_or_close(&self.own, event).await;
    }

    /// Publishes on `stream` once it has room, unless the connection closes first.
    async fn publish_or_close(&self, stream: &EventStream, event: Event) {
        tokio::select! {
            biased;
            () = stream.room() => {
                stream.publish(event);
            }
            () = self.closing.cancelled() => {}
        }
    }

    /// Answers a `runtimes` frame on the socket's own stream: what this caller may run.
    async fn runtimes(&mut self) {
        let (state, grant) = (Arc::clone(&self.state), Arc::clone(&self.grant));
        match tokio::task::spawn_blocking(move || state.catalog(&grant)).await {
            Ok(catalog) => {
                self.publish_or_close(&self.own, Event::runtimes(catalog))
                    .await;
            }
            Err(err) => {
                tracing::error!(%err, "listing the runtimes failed");
                let message = "could not list the runtimes";
                self.refuse(None, ErrorCode::Internal, message).await;
            }
        }
    }

    async fn attach(&mut self, frame: AttachFrame) {
        let AttachFrame {
            session,
            since,
            workspace,
            ack,
        } = frame;
        if workspace {
            return self.attach_with_workspace(session, since, ack).await;
        }
        let found = self.state.sessions.get(&self.principal, &session);
        // A `sessions` claim names the sessions a client may open; a gateway-made one it
        // opened (its own tenant's, found by its random id) it may come back to.
        let gateway_made = found.as_ref().is_some_and(|s| s.ephemeral);
        if !gateway_made {
            if let Err((code, message)) = self.check_session_allowed(&session) {
                return self.refuse(None, code, message).await;
            }
        }
        let Some(found) = found else {
            let (code, message) = unknown_session(&session);
            return self.refuse(None, code, message).await;
        };
        let since = since.unwrap_or(0);
        let head = found.stream.head();
        if since > head {
            let message = format!(
                "since {since} is past the last event of session {session:?}, which is {head}"
            );
            return self.refuse(None, ErrorCode::BadRequest, message).await;
        }
        // Any socket of the session's tenant (anyone, with anonymous clients) may attach
        // to (or execute in) a named session, so a socket paces it only while nobody
        // else does (typically the executing client, reconnected), never by taking the
        // lead from a socket that leads; the 128-bit id of a gateway-made session is as
        // good as a credential.
        let lead = if found.ephemeral {
            Lead::May
        } else {
            Lead::IfVacant
        };
        match self.join(&found, since, lead, true) {
            Ok(()) if ack => found.stream.ack(self.link.socket, since),
            Ok(()) => {}
            Err((code, message)) => self.refuse(None, code, message).await,
        }
    }

    /// An `attach` with `workspace`: the named session, opened if it does not exist,
    /// given a workspace if it has none (of the caller's default `workspace_bytes`).
    /// Every check, and the workspace, come before a session is opened.
    async fn attach_with_workspace(&mut self, name: String, since: Option<u64>, ack: bool) {
        if let Err((code, message)) = self.check_session_allowed(&name) {
            return self.refuse(None, code, message).await;
        }
        let found = self.state.sessions.get(&self.principal, &name);
        if found.as_ref().is_some_and(|s| s.ephemeral) {
            let message = format!("session {name:?} was made by the gateway for one execution and keeps no workspace; name a session of your own");
            return self.refuse(None, ErrorCode::NoWorkspace, message).await;
        }
        let since = since.unwrap_or(0);
        let head = found.as_ref().map_or(0, |s| s.stream.head());
        if since > head {
            let message = format!(
                "since {since} is past the last event of session {name:?}, which is {head}"
            );
            return self.refuse(None, ErrorCode::BadRequest, message).await;
        }
        let made = match found.as_ref().and_then(|s| s.workspace()) {
            Some(_) => None,
            None => {
                let bytes = self.default_workspace_bytes();
                match self.make_workspace(bytes) {
                    Ok(made) => Some(made),
                    Err((code, message)) => return self.refuse(None, code, message).await,
                }
            }
        };
        let joined = match found {
            Some(session) => self
                .join(&session, since, Lead::IfVacant, true)
                .map(|()| session),
            None => self.check_session_room().and_then(|()| {
                let (session, _) = self
                    .state
                    .sessions
                    .open_named(&name, &self.principal, self.grant.narrowing.max_sessions)
                    .map_err(|err| (super::execute::open_error_code(&err), err.to_string()))?;
                self.link.subscribe(&session, since, Lead::IfVacant, true);
                self.busy_at = tokio::time::Instant::now();
                Ok(session)
            }),
        };
        match joined {
            Ok(session) => {
                if ack {
                    session.stream.ack(self.link.socket, since);
                }
                if let Some(made) = made {
                    session.keep_workspace(made);
                }
            }
            Err((code, message)) => self.refuse(None, code, message).await,
        }
    }

    /// The `workspace_bytes` a workspace gets when nothing asks for a size: the
    /// gateway's default, within the caller's credential.
    pub(super) fn default_workspace_bytes(&self) -> u64 {
        let limits = &self.state.config.limits;
        let ceilings = &self.grant.narrowing.limits;
        let resolved = if *ceilings == sluice_protocol::Limits::default() {
            limits.resolve(&sluice_protocol::Limits::default())
        } else {
            limits
                .narrowed(ceilings)
                .resolve(&sluice_protocol::Limits::default())
        };
        resolved.map_or(limits.workspace_bytes.default, |l| l.workspace_bytes)
    }

    /// Detaching is idempotent: a session this socket does not read (it may have been
    /// let go a moment ago) is already detached, so the frame is never refused.
    fn detach(&mut self, frame: DetachFrame) {
        if let Some(session) = self.link.session(&frame.session) {
            self.link.unsubscribe(&session, &self.state.sessions);
        }
    }

    /// `restart`: a fresh interpreter for a named session the caller may use; answered
    /// by `restarted` on the session's stream (the caller reads it, or attaches to).
    async fn restart(&mut self, frame: RestartFrame) {
        let name = frame.session;
        if let Err((code, message)) = self.check_session_allowed(&name) {
            return self.refuse(None, code, message).await;
        }
        let Some(session) = self.state.sessions.get(&self.principal, &name) else {
            let (code, message) = unknown_session(&name);
            return self.refuse(None, code, message).await;
        };
        if session.ephemeral {
            let message = format!("session {name:?} was made by the gateway for one execution and has no persistent interpreter; name a session of your own");
            return self.refuse(None, ErrorCode::BadRequest, message).await;
        }
        tracing::info!(session = %name, "restarting the session's interpreter");
        session.restart_interpreter();
    }

    /// Acknowledgements are advisory: one for a session this socket does not read (it
    /// may have been let go a moment ago) is ignored, never refused.
    fn ack(&mut self, frame: AckFrame) {
        if let Some(session) = self.link.session(&frame.session) {
            session.stream.ack(self.link.socket, frame.sequence);
            // A finished session the client now has all of can be let go.
            self.link.wake.notify_one();
        }
    }

    /// Starts reading `session` after `since` (moves the cursor if this socket reads it
    /// already). `lead`: whether it may pace the session.
    pub(super) fn join(
        &mut self,
        session: &Arc<Session>,
        since: u64,
        lead: Lead,
        announce: bool,
    ) -> Result<(), Refusal> {
        if self.link.reads(session) {
            self.link.subscribe(session, since, lead, announce);
            return Ok(());
        }
        if !session.ephemeral {
            self.check_session_room()?;
        }
        if !self.state.sessions.attach(session) {
            return Err(unknown_session(session.id()));
        }
        self.link.subscribe(session, since, lead, announce);
        self.busy_at = tokio::time::Instant::now();
        Ok(())
    }

    /// Refuses a session name the caller's credential does not allow (`sessions` claim).
    pub(super) fn check_session_allowed(&self, name: &str) -> Result<(), Refusal> {
        if self.grant.allows_session(name) {
            return Ok(());
        }
        Err((
            ErrorCode::NotPermitted,
            format!("your credential does not allow session {name:?}"),
        ))
    }

    /// Refuses a session beyond `--max-sessions-per-connection` for this socket.
    pub(super) fn check_session_room(&self) -> Result<(), Refusal> {
        let max = self.state.config.max_sessions_per_connection;
        if self.link.named_sessions() >= max {
            return Err((
                ErrorCode::TooManySessions,
                format!("this socket is already attached to {max} sessions, the maximum"),
            ));
        }
        Ok(())
    }

    /// True while the socket runs an execution or reads a session (beyond a finished
    /// gateway-made one kept for a reconnect): such a socket is never idle.
    pub(super) fn holds_something(&self) -> bool {
        self.started.running() > 0 || self.link.holds_session()
    }
}

/// Whether the reader may use `id` as an execution id.
pub(super) fn is_usable_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= sluice_protocol::MAX_ID_BYTES
}

pub(super) fn unknown_session(name: &str) -> Refusal {
    (
        ErrorCode::UnknownSession,
        format!("no session {name:?} is open (it never was, it ended, or the gateway it ran on has restarted since), or this socket is not attached to it"),
    )
}
