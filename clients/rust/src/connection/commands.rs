//! The command loop: what the connection task does with each [`Command`] the handles
//! send (register an execution and send its `execute`, send `stdin` and `cancel`, stop
//! delivering to an abandoned [`Execution`](crate::Execution) and cancel it). Attaching
//! and detaching are in [`super::attach`], closing in [`super`].

use super::routing::Route;
use super::{Connection, Purpose};
use crate::command::{Command, Reply};
use crate::queue::EventSender;
use crate::ClientError;
use sluice_protocol::{
    CancelFrame, Catalog, ClientFrame, ErrorCode, Event, EventKind, ResizeFrame, RestartFrame,
    RuntimesFrame, StdinFrame,
};
use std::collections::hash_map::Entry;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::Message;
use tracing::debug;

impl<S> Connection<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    /// Takes a command, or, when every handle is gone (`None`), starts closing.
    pub(super) fn on_command_or_end(&mut self, command: Option<Command>) {
        match command {
            Some(command) => self.on_command(command),
            None => {
                self.commands_open = false;
                self.start_close();
            }
        }
    }

    /// Carries out one command of a handle.
    fn on_command(&mut self, command: Command) {
        match command {
            Command::Execute {
                id,
                serial,
                session,
                frame,
                events,
                reply,
            } => self.on_execute(id, serial, session, frame, events, reply),
            Command::Stdin {
                id,
                serial,
                data,
                eof,
                reply,
            } => {
                let result = self.on_stdin(id, serial, data, eof);
                let _ = reply.send(result);
            }
            Command::Resize {
                id,
                serial,
                cols,
                rows,
                reply,
            } => {
                let result = self.on_resize(id, serial, cols, rows);
                let _ = reply.send(result);
            }
            Command::Cancel { id, serial, reply } => {
                // While closing there is nothing to do: closing cancels every execution.
                if !self.closing {
                    self.send_cancel(&id, serial);
                }
                let _ = reply.send(Ok(()));
            }
            Command::Abandon { id, serial } => self.abandon(&id, serial),
            Command::Attach {
                key,
                session,
                since,
                workspace,
                events,
                reply,
            } => self.on_attach(key, session, since, workspace, events, reply),
            Command::Detach { key, reply } => {
                self.remove_subscriber(key);
                if let Some(reply) = reply {
                    let _ = reply.send(Ok(()));
                }
            }
            Command::Runtimes { reply } => self.on_runtimes(reply),
            Command::Restart { session, reply } => self.on_restart(session, reply),
            Command::File {
                request,
                frame,
                retry,
                reply,
            } => self.on_file(request, frame, retry, reply),
            Command::Close => self.start_close(),
        }
    }

    /// Sends a `runtimes` frame; the reply waits for its answer (in order: the gateway
    /// answers a socket's frames in the order they came).
    fn on_runtimes(&mut self, reply: Reply<Catalog>) {
        if self.closing {
            let _ = reply.send(Err(self.shared.closed_error()));
            return;
        }
        self.runtimes_asked.push_back(reply);
        self.enqueue_frame(&ClientFrame::Runtimes(RuntimesFrame {}), Purpose::Other);
    }

    /// Sends a `restart`; the reply waits for the session's `restarted` event, which
    /// reaches this client only if it reads the session.
    fn on_restart(&mut self, session: String, reply: Reply<()>) {
        if self.closing {
            let _ = reply.send(Err(self.closing_error()));
            return;
        }
        if !self.sessions.contains_key(&session) {
            let _ = reply.send(Err(ClientError::RestartRefused {
                message: format!("this client does not read session {session:?}: run a cell there or attach to it, so that the answer reaches it"),
                session,
                code: ErrorCode::BadRequest,
            }));
            return;
        }
        let frame = ClientFrame::Restart(RestartFrame {
            session: session.clone(),
        });
        self.restarts.entry(session).or_default().push_back(reply);
        self.enqueue_frame(&frame, Purpose::Other);
    }

    /// Answers the oldest `restart` of `session` still waiting; false if none waits.
    pub(super) fn answer_restart(
        &mut self,
        session: &str,
        outcome: Result<(), ClientError>,
    ) -> bool {
        let Some(waiting) = self.restarts.get_mut(session) else {
            return false;
        };
        let reply = waiting.pop_front();
        if waiting.is_empty() {
            self.restarts.remove(session);
        }
        match reply {
            Some(reply) => {
                let _ = reply.send(outcome);
                true
            }
            None => false,
        }
    }

    /// On a new socket: a `restart` the old one did not answer may or may not have been
    /// done; it fails.
    pub(super) fn fail_restarts(&mut self) {
        for (session, waiting) in std::mem::take(&mut self.restarts) {
            for reply in waiting {
                let _ = reply.send(Err(ClientError::ConnectionClosed {
                    reason: format!("the connection dropped before the gateway answered the restart of session {session:?}: it may or may not have been done"),
                }));
            }
        }
    }

    /// Sends a file frame; the reply waits for all its answers.
    fn on_file(&mut self, request: String, frame: String, retry: bool, reply: Reply<Vec<Event>>) {
        if self.closing {
            let _ = reply.send(Err(self.closing_error()));
            return;
        }
        if self.files_asked.contains_key(&request) {
            let _ = reply.send(Err(ClientError::DuplicateId(request)));
            return;
        }
        self.enqueue(Message::text(frame.clone()), Purpose::Other);
        self.files_asked.insert(
            request,
            super::FileAsk {
                answers: Vec::new(),
                frame,
                retry,
                reply,
            },
        );
    }

    /// An answer to a file frame (or its refusal): kept until the last one, then all
    /// are handed over. The event back when no file frame here asked it.
    pub(super) fn on_file_answer(&mut self, event: Event) -> Option<Event> {
        let Some(ask) = event
            .request
            .as_ref()
            .and_then(|request| self.files_asked.get_mut(request))
        else {
            return Some(event);
        };
        let request = event.request.clone().unwrap_or_default();
        let done = event.kind != EventKind::FileData || event.last == Some(true);
        ask.answers.push(event);
        if done {
            if let Some(ask) = self.files_asked.remove(&request) {
                let _ = ask.reply.send(Ok(ask.answers));
            }
        }
        None
    }

    /// On a new socket: reads and lists are asked again from the start; writes and
    /// deletes, which may or may not have happened, fail.
    pub(super) fn resend_files(&mut self) {
        let asked = std::mem::take(&mut self.files_asked);
        for (request, mut ask) in asked {
            if ask.retry {
                ask.answers.clear();
                self.enqueue(Message::text(ask.frame.clone()), Purpose::Other);
                self.files_asked.insert(request, ask);
            } else {
                let _ = ask.reply.send(Err(ClientError::ConnectionClosed {
                    reason: format!(
                        "the connection dropped before the gateway answered file request {request:?}: it may or may not have been done"
                    ),
                }));
            }
        }
    }

    /// Registers the route of a new execution and queues its `execute` frame, unless its
    /// id is still running here or the client is closing.
    fn on_execute(
        &mut self,
        id: String,
        serial: u64,
        session: Option<String>,
        frame: String,
        events: EventSender,
        reply: Reply<()>,
    ) {
        if self.closing {
            let _ = reply.send(Err(self.closing_error()));
            return;
        }
        match self.routes.entry(id.clone()) {
            Entry::Occupied(taken) => {
                let _ = reply.send(Err(ClientError::DuplicateId(taken.key().clone())));
            }
            // The caller stopped waiting; nobody would receive the events.
            Entry::Vacant(_) if reply.is_closed() => {}
            Entry::Vacant(slot) => {
                let named = session.is_some();
                slot.insert(Route {
                    serial,
                    events: Some(events),
                    cancel_sent: false,
                    fell_behind: None,
                    session: session.clone(),
                    named,
                    confirmed: false,
                    counted: false,
                    execute: named.then(|| frame.clone()),
                    resent: false,
                });
                if let Some(name) = session {
                    self.sessions.entry(name).or_default();
                }
                self.enqueue(Message::text(frame), Purpose::Execute { id, serial });
                let _ = reply.send(Ok(()));
            }
        }
    }

    /// Queues a `stdin` frame for a running execution; an execution whose consumer fell
    /// behind, or that has ended, takes no more input.
    fn on_stdin(
        &mut self,
        id: String,
        serial: u64,
        data: Option<String>,
        eof: bool,
    ) -> Result<(), ClientError> {
        if self.closing {
            return Err(self.closing_error());
        }
        let limit = self.shared.options.execution_buffer_bytes;
        let session = match self.route(&id, serial) {
            Some(Route {
                fell_behind: Some(buffered_bytes),
                ..
            }) => {
                return Err(ClientError::SlowConsumer {
                    buffered_bytes: *buffered_bytes,
                    limit,
                    id,
                })
            }
            Some(route) => route.session.clone(),
            None => return Err(ClientError::ExecutionFinished(id)),
        };
        // Naming the session lets a socket that did not start the execution (after a
        // reconnect) reach it.
        let frame = ClientFrame::Stdin(StdinFrame {
            id: id.clone(),
            session,
            data,
            eof,
        })
        .to_json();
        self.shared.check_frame_size(frame.len())?;
        self.enqueue(Message::text(frame), Purpose::Stdin { id, serial });
        Ok(())
    }

    /// Sends a `resize` frame for a running execution (naming its session, as `stdin`).
    fn on_resize(
        &mut self,
        id: String,
        serial: u64,
        cols: u16,
        rows: u16,
    ) -> Result<(), ClientError> {
        if self.closing {
            return Err(self.closing_error());
        }
        let session = match self.route(&id, serial) {
            Some(route) => route.session.clone(),
            None => return Err(ClientError::ExecutionFinished(id)),
        };
        let frame = ClientFrame::Resize(ResizeFrame {
            id: id.clone(),
            session,
            cols,
            rows,
        })
        .to_json();
        self.enqueue(Message::text(frame), Purpose::Stdin { id, serial });
        Ok(())
    }
    /// The route of execution `id`, if it is still the one with this `serial`.
    pub(super) fn route(&mut self, id: &str, serial: u64) -> Option<&mut Route> {
        self.routes
            .get_mut(id)
            .filter(|route| route.serial == serial)
    }
    /// Queues a `cancel` for a running execution, once.
    pub(super) fn send_cancel(&mut self, id: &str, serial: u64) {
        let Some(route) = self.route(id, serial) else {
            return;
        };
        if route.cancel_sent {
            return;
        }
        route.cancel_sent = true;
        let frame = ClientFrame::Cancel(CancelFrame {
            id: id.to_owned(),
            session: route.session.clone(),
        });
        self.enqueue_frame(&frame, Purpose::Other);
    }

    /// The `Execution` is gone: stop delivering to it and cancel it.
    pub(super) fn abandon(&mut self, id: &str, serial: u64) {
        let Some(route) = self.route(id, serial) else {
            return;
        };
        route.events = None;
        debug!(
            id,
            "execution dropped before its terminal event; cancelling it"
        );
        if !self.closing {
            self.send_cancel(id, serial);
        }
    }
}
