//! A run's shared state ([`Run`], [`State`]): the executions issued, the frames the
//! harness sends for them, and what happens to every frame received, on a program
//! socket or a watcher's: verification first ([`crate::verify`]), then the figures
//! ([`crate::figures`]); what the socket must do next comes back as `Action`s. The
//! sockets themselves are in [`crate::socket`], the scheduler in [`crate::schedule`].

use crate::figures::Figures;
use crate::program::{ProgramKind, GO};
use crate::scenario::{Mode, Scenario};
use crate::verify::{self, Accept, Fingerprints, Kind, OutputCheck, StreamCheck, Violations};
use sluice_protocol::{
    ClientFrame, Encoding, ErrorCode, Event, EventKind, ExecuteRequest, StdinFrame,
};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// Why a run could not be carried out at all (as opposed to violations it found).
#[derive(Debug, thiserror::Error)]
pub enum DriveError {
    /// The gateway refused or failed the WebSocket connection.
    #[error("cannot connect to {url}: {reason}")]
    Connect {
        /// The endpoint.
        url: String,
        /// What went wrong (the HTTP status and body of a refusal).
        reason: String,
    },
}

/// Stdin sent in frames of at most this many bytes.
const STDIN_CHUNK: usize = 16 * 1024;

/// Sessions are acknowledged every this many events when sockets are dropped on purpose.
const ACK_EVERY: u64 = 8;

/// Now as Unix seconds.
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// One execution the harness issued.
#[derive(Debug)]
pub(crate) struct Exec {
    pub(crate) program: usize,
    pub(crate) socket: usize,
    /// Named, or learnt from the first event of a gateway-made one.
    pub(crate) session: Option<String>,
    pub(crate) intended: Duration,
    pub(crate) started: Option<Duration>,
    pub(crate) first_output: Option<Duration>,
    pub(crate) ended: Option<Duration>,
    pub(crate) terminals: u32,
    pub(crate) refused: bool,
    /// Its stdin (with the go line) has been sent.
    pub(crate) released: bool,
    pub(crate) output: OutputCheck,
    pub(crate) stream: StreamCheck,
    pub(crate) prints: Fingerprints,
    pub(crate) watchers: Vec<Watcher>,
}

/// One watcher's view of an execution's session.
#[derive(Debug, Default)]
pub(crate) struct Watcher {
    pub(crate) attached: bool,
    /// Its attach was refused: it saw nothing, and nothing is compared.
    pub(crate) refused: bool,
    pub(crate) stream: StreamCheck,
    pub(crate) prints: Fingerprints,
    pub(crate) done: bool,
}

/// What a received frame asks the socket (or its watchers) to do next.
#[derive(Debug)]
pub(crate) enum Action {
    Stdin(usize),
    Ack(String, u64),
    Detach(String),
    WatchersAttach(String),
}

/// Everything the sockets share.
#[derive(Debug)]
pub struct State {
    pub(crate) execs: Vec<Exec>,
    sessions: HashMap<String, usize>,
    /// Every violation found.
    pub violations: Violations,
    /// Every measurement.
    pub figures: Figures,
    /// Refusals by error code (executions refused, and other frames refused).
    pub refusals: BTreeMap<String, u64>,
    /// The first message of each refusal code.
    pub refusal_messages: BTreeMap<String, String>,
    /// Executions issued, started, ended (terminal or refused).
    pub issued: u64,
    /// Executions that sent `started`.
    pub started: u64,
    /// Executions that ended (terminal event or refusal).
    pub ended: u64,
    /// Times a socket was dropped on purpose and resumed.
    pub resumes: u64,
    /// Times a socket was lost without being asked to.
    pub connections_lost: u64,
    /// When every live program was running, having printed (seconds since the run began).
    pub all_started: Option<f64>,
    /// When the first live program ended (seconds since the run began).
    pub first_end: Option<f64>,
    /// The scheduler is done issuing executions.
    pub issuing_done: bool,
    /// Executions refused before they started.
    refused: u64,
    /// Executions that have printed something.
    printing: u64,
    /// Watcher views still waiting for their execution's terminal event.
    watching: u64,
    /// Per program socket: released executions whose stdin it must send.
    pub(crate) ready: Vec<Vec<usize>>,
}

impl State {
    /// Executions refused before they started.
    pub fn refused_count(&self) -> u64 {
        self.refused
    }

    /// Executions started and not yet ended.
    pub fn running(&self) -> u64 {
        self.started
            .saturating_sub(self.ended.saturating_sub(self.refused))
    }

    /// Execution `n` was refused: its watchers have nothing to wait for.
    fn refuse(&mut self, n: usize) {
        let exec = &mut self.execs[n];
        exec.refused = true;
        self.refused += 1;
        let waiting = exec.watchers.iter().filter(|w| !w.done).count() as u64;
        self.watching = self.watching.saturating_sub(waiting);
    }
}

/// A run in progress: the scenario, its clocks and its state.
#[derive(Debug)]
pub struct Run {
    /// What to do.
    pub scenario: Scenario,
    /// When the run began.
    pub t0: Instant,
    /// The same moment as Unix seconds.
    pub wall0: f64,
    /// Shared state.
    pub state: Mutex<State>,
    /// Cancelled when the run is over.
    pub over: CancellationToken,
    /// Closed-loop permits, returned when an execution ends.
    pub(crate) permits: Semaphore,
    /// Per program socket: woken when executions of its are released ([`State::ready`]).
    pub(crate) ready: Vec<tokio::sync::Notify>,
}

impl Run {
    /// A run of `scenario`, starting now.
    pub fn new(scenario: Scenario) -> Self {
        let permits = match scenario.mode {
            Mode::Closed { concurrency } => concurrency,
            _ => 0,
        };
        Self {
            t0: Instant::now(),
            wall0: unix_now(),
            state: Mutex::new(State {
                execs: Vec::new(),
                sessions: HashMap::new(),
                violations: Violations::default(),
                figures: Figures::default(),
                refusals: BTreeMap::new(),
                refusal_messages: BTreeMap::new(),
                issued: 0,
                started: 0,
                ended: 0,
                resumes: 0,
                connections_lost: 0,
                all_started: None,
                first_end: None,
                issuing_done: false,
                refused: 0,
                printing: 0,
                watching: 0,
                ready: vec![Vec::new(); scenario.sockets],
            }),
            over: CancellationToken::new(),
            permits: Semaphore::new(permits),
            ready: (0..scenario.sockets)
                .map(|_| tokio::sync::Notify::new())
                .collect(),
            scenario,
        }
    }

    /// The shared state, locked.
    pub fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn tag(n: usize) -> String {
        format!("e{n}")
    }

    fn session_name(&self, n: usize) -> Option<String> {
        self.scenario
            .named_sessions()
            .then(|| format!("load-{:x}-{}-{n}", self.scenario.seed, self.wall0 as u64))
    }

    /// Whether programs wait for [`GO`] before printing: with watchers, which attach
    /// once the program has started and must not find its output already gone.
    fn gated(&self) -> bool {
        self.scenario.watchers > 0
    }

    /// Whether program `program`'s input goes in the `execute` itself: when sockets are
    /// dropped on purpose and it echoes input, so that a resent `execute` carries it
    /// (a `stdin` frame lost in a drop cannot be told from one delivered). Such a
    /// program gets its go line at once: it is not held for its watchers.
    fn stdin_in_execute(&self, program: usize) -> bool {
        let spec = &self.scenario.mix[program];
        self.scenario.disconnect_every.is_some()
            && spec.kind == ProgramKind::Pattern
            && spec.stdin_bytes > 0
    }

    /// The `execute` frame of execution `n` (the same each time, so a resend is one).
    pub(crate) fn request(&self, n: usize, program: usize) -> ClientFrame {
        let spec = &self.scenario.mix[program];
        let tag = Self::tag(n);
        let stdin = self.stdin_in_execute(program).then(|| {
            let go = if self.gated() { GO } else { "" };
            format!("{go}{}", spec.stdin(&tag))
        });
        ClientFrame::Execute(ExecuteRequest {
            id: tag.clone(),
            language: spec.language.clone(),
            code: spec.code(&tag, self.gated()),
            session: self.session_name(n),
            stdin,
            limits: spec.limits(),
            encoding: Encoding::Utf8,
            ack: self.acknowledges(),
            ..ExecuteRequest::default()
        })
    }

    /// Sessions are acknowledged (and kept from their first event on) when sockets are
    /// dropped on purpose.
    pub(crate) fn acknowledges(&self) -> bool {
        self.scenario.named_sessions() && self.scenario.disconnect_every.is_some()
    }

    /// The stdin frames of execution `n`: its go line when gated, then its input, the
    /// last frame closing stdin; nothing when its input went with the `execute`. Sent
    /// once it started (gated: once every watcher is attached). `go_only`: the go line
    /// alone, again, after a resume (it may have been lost; the program reads one line).
    pub(crate) fn stdin_frames(&self, n: usize, program: usize, go_only: bool) -> Vec<ClientFrame> {
        let spec = &self.scenario.mix[program];
        if self.stdin_in_execute(program) {
            return Vec::new();
        }
        let tag = Self::tag(n);
        let go = if self.gated() { GO } else { "" };
        let input = if spec.kind == ProgramKind::Pattern && !go_only {
            spec.stdin(&tag)
        } else {
            String::new()
        };
        let data = format!("{go}{input}");
        let mut frames = Vec::new();
        let mut rest = data.as_str();
        while !rest.is_empty() {
            let (chunk, tail) = rest.split_at(STDIN_CHUNK.min(rest.len()));
            rest = tail;
            frames.push(ClientFrame::Stdin(StdinFrame {
                id: tag.clone(),
                // With a session, a socket that reconnected still finds the execution.
                session: self.session_name(n),
                data: Some(chunk.to_owned()),
                // A program that echoes reads to the end of its input; a go line alone
                // leaves stdin open, so that sending it again cannot be refused.
                eof: rest.is_empty() && !input.is_empty(),
            }));
        }
        frames
    }

    /// Every watcher of execution `n` is attached: its program may print.
    fn release(&self, state: &mut State, n: usize) {
        let exec = &mut state.execs[n];
        if exec.released || !exec.watchers.iter().all(|w| w.attached || w.done) {
            return;
        }
        exec.released = true;
        let socket = exec.socket;
        state.ready[socket].push(n);
        self.ready[socket].notify_one();
    }

    pub(crate) fn now(&self) -> Duration {
        self.t0.elapsed()
    }

    /// Issues execution number `n` of program `program` on its socket.
    pub(crate) fn issue(&self, program: usize, intended: Duration) -> usize {
        let mut state = self.lock();
        let n = state.execs.len();
        let socket = n % self.scenario.sockets;
        let spec = &self.scenario.mix[program];
        state.execs.push(Exec {
            program,
            socket,
            session: self.session_name(n),
            intended,
            started: None,
            first_output: None,
            ended: None,
            terminals: 0,
            refused: false,
            released: false,
            output: OutputCheck::new(spec, &Self::tag(n)),
            stream: StreamCheck::default(),
            prints: Vec::new(),
            watchers: (0..self.scenario.watchers)
                .map(|_| Watcher::default())
                .collect(),
        });
        if let Some(session) = self.session_name(n) {
            state.sessions.insert(session, n);
        }
        state.issued += 1;
        state.watching += self.scenario.watchers as u64;
        n
    }

    /// Whether everything issued has ended and been watched.
    pub(crate) fn finished(state: &State) -> bool {
        state.issuing_done && state.ended == state.issued && state.watching == 0
    }

    /// In a live run, notes when every program that was not refused is running (has
    /// printed): the steady state begins. (`started` comes when the process is spawned,
    /// long before an interpreter has loaded when a thousand start at once.)
    fn check_all_started(&self, state: &mut State, at: Duration) {
        if let Mode::Live { programs } = self.scenario.mode {
            if state.all_started.is_none()
                && state.printing > 0
                && state.printing + state.refused == programs as u64
            {
                state.all_started = Some(at.as_secs_f64());
            }
        }
    }

    fn note_end(&self, state: &mut State) {
        state.ended += 1;
        self.permits.add_permits(1);
        if Self::finished(state) {
            self.over.cancel();
        }
    }

    fn refusal(&self, state: &mut State, code: ErrorCode, message: &str) {
        let code = code.as_str().to_owned();
        *state.refusals.entry(code.clone()).or_insert(0) += 1;
        state
            .refusal_messages
            .entry(code)
            .or_insert_with(|| message.to_owned());
    }

    /// A frame on a program socket.
    pub(crate) fn on_program_frame(
        &self,
        socket: usize,
        raw: &str,
        socket_stream: &mut StreamCheck,
        resuming: &mut std::collections::HashSet<String>,
    ) -> Vec<Action> {
        let at = self.now();
        let wall = unix_now();
        let mut state = self.lock();
        let state = &mut *state;
        let Some(event) = received(state, at, raw, || format!("socket {socket}")) else {
            return Vec::new();
        };
        let Some(session) = event.session.clone() else {
            // The socket stream: refusals of frames that admitted nothing.
            let what = format!("socket {socket}'s own stream");
            if socket_stream.event(
                event.sequence,
                event.timestamp,
                &mut state.violations,
                &what,
            ) == Accept::Ignore
            {
                return Vec::new();
            }
            let code = event.code.unwrap_or(ErrorCode::Internal);
            if event.kind != EventKind::Error {
                state.violations.add(Kind::InvalidEvent, || {
                    format!("{what}: a {} event with no session", event.kind.as_str())
                });
                return Vec::new();
            }
            // An attach refused while resuming an execute that never reached the gateway:
            // the resent execute that follows starts it.
            if let Some(for_session) = &event.for_session {
                if code == ErrorCode::UnknownSession && resuming.remove(for_session) {
                    return Vec::new();
                }
            }
            match event.id.as_deref().and_then(|id| self.exec_of(state, id)) {
                Some(n) if state.execs[n].socket == socket => {
                    let exec = &mut state.execs[n];
                    exec.terminals += 1;
                    if exec.terminals > 1 {
                        state.violations.add(Kind::ExtraTerminal, || {
                            format!(
                                "execution e{n}: a second terminal event (refusal {})",
                                code.as_str()
                            )
                        });
                        return Vec::new();
                    }
                    exec.ended = Some(at);
                    state.refuse(n);
                    self.refusal(state, code, &event.data);
                    self.check_all_started(state, at);
                    self.note_end(state);
                }
                _ => self.refusal(state, code, &event.data),
            }
            return Vec::new();
        };
        let n = match event.id.as_deref().and_then(|id| self.exec_of(state, id)) {
            Some(n) => n,
            None => match state.sessions.get(&session) {
                Some(&n) => n,
                None => {
                    state.violations.add(Kind::InvalidEvent, || {
                        format!(
                            "socket {socket}: a {} event of session {session} the harness never ran",
                            event.kind.as_str()
                        )
                    });
                    return Vec::new();
                }
            },
        };
        if state.execs[n].socket != socket {
            state.violations.add(Kind::InvalidEvent, || {
                format!("socket {socket}: an event of e{n}, which another socket runs")
            });
            return Vec::new();
        }
        let named = self.scenario.named_sessions();
        let watched = self.scenario.watchers > 0;
        let what = format!("session of e{n}");
        let exec = &mut state.execs[n];
        match &exec.session {
            None => {
                exec.session = Some(session.clone());
                state.sessions.insert(session.clone(), n);
            }
            Some(known) if *known != session => {
                state.violations.add(Kind::InvalidEvent, || {
                    format!("e{n}: an event in session {session}, not its own {known}")
                });
                return Vec::new();
            }
            Some(_) => {}
        }
        let exec = &mut state.execs[n];
        match event.kind {
            EventKind::Attached => {
                resuming.remove(&session);
                return Vec::new();
            }
            EventKind::Gap => {
                let (from, to) = (
                    event.missed_from.unwrap_or(0),
                    event.resume_from.unwrap_or(0),
                );
                exec.stream.gap(from, to, &mut state.violations, &what);
                return Vec::new();
            }
            _ => {}
        }
        if exec.stream.event(
            event.sequence,
            event.timestamp,
            &mut state.violations,
            &what,
        ) == Accept::Ignore
        {
            return Vec::new();
        }
        if watched {
            exec.prints.push((event.sequence, verify::fingerprint(raw)));
        }
        let mut actions = Vec::new();
        if self.acknowledges() && event.sequence % ACK_EVERY == 0 {
            actions.push(Action::Ack(session.clone(), event.sequence));
        }
        if exec.ended.is_some() && event.kind.is_terminal() {
            state.violations.add(Kind::ExtraTerminal, || {
                format!(
                    "e{n}: a second terminal event ({}, sequence {})",
                    event.kind.as_str(),
                    event.sequence
                )
            });
            return actions;
        }
        if exec.ended.is_some() {
            state.violations.add(Kind::EventAfterTerminal, || {
                format!(
                    "e{n}: a {} event (sequence {}) after its terminal event",
                    event.kind.as_str(),
                    event.sequence
                )
            });
            return actions;
        }
        if event.kind != EventKind::Started && exec.started.is_none() && !event.kind.is_terminal() {
            state.violations.add(Kind::NotStartedFirst, || {
                format!(
                    "e{n}: a {} event (sequence {}) before started",
                    event.kind.as_str(),
                    event.sequence
                )
            });
        }
        let spec = &self.scenario.mix[exec.program];
        match event.kind {
            EventKind::Started => {
                if exec.started.is_some() {
                    state.violations.add(Kind::NotStartedFirst, || {
                        format!("e{n}: a second started event (sequence {})", event.sequence)
                    });
                    return actions;
                }
                exec.started = Some(at);
                state.started += 1;
                if !self.gated() {
                    actions.push(Action::Stdin(n));
                }
                if watched {
                    actions.push(Action::WatchersAttach(session.clone()));
                }
            }
            EventKind::Stdout | EventKind::Stderr => {
                if event.encoding == Some(Encoding::Base64) {
                    state.violations.add(Kind::InvalidEvent, || {
                        format!("e{n}: base64 output, which the harness did not ask for")
                    });
                    return actions;
                }
                let first = exec.first_output.is_none();
                exec.first_output.get_or_insert(at);
                if event.kind == EventKind::Stderr {
                    exec.output.stderr(event.data.as_bytes());
                } else {
                    for printed in exec.output.stdout(event.data.as_bytes()) {
                        state.figures.lag(printed - self.wall0, wall - printed);
                    }
                }
                if first {
                    state.printing += 1;
                    self.check_all_started(state, at);
                }
            }
            kind if kind.is_terminal() => {
                exec.terminals += 1;
                if exec.terminals > 1 {
                    state.violations.add(Kind::ExtraTerminal, || {
                        format!(
                            "e{n}: a second terminal event ({}, sequence {})",
                            kind.as_str(),
                            event.sequence
                        )
                    });
                    return actions;
                }
                exec.ended = Some(at);
                if kind == EventKind::Error && exec.started.is_none() {
                    state.refuse(n);
                    let code = event.code.unwrap_or(ErrorCode::Internal);
                    self.refusal(state, code, &event.data);
                    self.check_all_started(state, at);
                } else {
                    let (intended, started, first) =
                        (exec.intended, exec.started, exec.first_output);
                    let clean = kind == EventKind::Completed && event.exit_code == Some(0);
                    if !clean {
                        let stderr = exec.output.stderr_text();
                        state.violations.add(Kind::UnexpectedOutcome, || {
                            format!(
                                "e{n}: {} (exit code {:?}, signal {:?}, {:?}); stderr: {:.300}",
                                kind.as_str(),
                                event.exit_code,
                                event.signal,
                                event.data,
                                stderr
                            )
                        });
                    } else if let Some(wrong) = exec.output.verdict(spec) {
                        state
                            .violations
                            .add(Kind::WrongOutput, || format!("e{n}: {wrong}"));
                    }
                    state.figures.ended(intended, at, started, first);
                    if matches!(self.scenario.mode, Mode::Live { .. }) && state.first_end.is_none()
                    {
                        state.first_end = Some(at.as_secs_f64());
                    }
                }
                if named {
                    actions.push(Action::Detach(session.clone()));
                }
                self.note_end(state);
            }
            _ => {
                state.violations.add(Kind::InvalidEvent, || {
                    format!(
                        "e{n}: an event of unknown type (sequence {})",
                        event.sequence
                    )
                });
            }
        }
        actions
    }

    fn exec_of(&self, state: &State, id: &str) -> Option<usize> {
        let n: usize = id.strip_prefix('e')?.parse().ok()?;
        (n < state.execs.len()).then_some(n)
    }

    /// A frame on watcher `w`'s socket; returns a session it is done with.
    pub(crate) fn on_watcher_frame(&self, w: usize, raw: &str) -> Option<String> {
        let at = self.now();
        let mut state = self.lock();
        let state = &mut *state;
        let event = received(state, at, raw, || format!("watcher {w}"))?;
        let Some(session) = event.session.clone() else {
            let code = event.code.unwrap_or(ErrorCode::Internal);
            self.refusal(state, code, &event.data);
            // An attach refused (too many sessions on this socket, say): this watcher
            // gives that session up, and its program is not held for it.
            let refused = event
                .for_session
                .as_ref()
                .and_then(|s| state.sessions.get(s).copied());
            if let Some(n) = refused {
                if let Some(watcher) = state.execs[n].watchers.get_mut(w) {
                    if !watcher.done {
                        watcher.done = true;
                        watcher.refused = true;
                        state.watching = state.watching.saturating_sub(1);
                    }
                }
                self.release(state, n);
                if Self::finished(state) {
                    self.over.cancel();
                }
            }
            return None;
        };
        let Some(&n) = state.sessions.get(&session) else {
            state.violations.add(Kind::InvalidEvent, || {
                format!("watcher {w}: an event of session {session} the harness never ran")
            });
            return None;
        };
        let what = format!("watcher {w} of e{n}");
        let exec = &mut state.execs[n];
        let watcher = exec.watchers.get_mut(w)?;
        match event.kind {
            EventKind::Attached => {
                watcher.attached = true;
                self.release(state, n);
                None
            }
            EventKind::Gap => {
                let (from, to) = (
                    event.missed_from.unwrap_or(0),
                    event.resume_from.unwrap_or(0),
                );
                watcher.stream.gap(from, to, &mut state.violations, &what);
                None
            }
            kind => {
                if watcher.stream.event(
                    event.sequence,
                    event.timestamp,
                    &mut state.violations,
                    &what,
                ) == Accept::Ignore
                {
                    return None;
                }
                watcher
                    .prints
                    .push((event.sequence, verify::fingerprint(raw)));
                if kind.is_terminal() && !watcher.done {
                    watcher.done = true;
                    state.watching = state.watching.saturating_sub(1);
                    if Self::finished(state) {
                        self.over.cancel();
                    }
                    return Some(session);
                }
                None
            }
        }
    }

    /// The end of the run: holes left, terminals missing, watchers compared.
    pub fn finish(&self) {
        let mut state = self.lock();
        let state = &mut *state;
        for (n, exec) in state.execs.iter_mut().enumerate() {
            let what = format!("session of e{n}");
            exec.stream.finish(&mut state.violations, &what);
            if exec.ended.is_none() {
                state.violations.add(Kind::MissingTerminal, || {
                    format!(
                        "e{n}: no terminal event (started: {}, last sequence {})",
                        exec.started.is_some(),
                        exec.stream.last()
                    )
                });
            }
            if exec.refused {
                continue;
            }
            for (w, watcher) in exec.watchers.iter_mut().enumerate() {
                if watcher.refused {
                    continue;
                }
                let what = format!("watcher {w} of e{n}");
                watcher.stream.finish(&mut state.violations, &what);
                if !watcher.done {
                    state.violations.add(Kind::WatcherIncomplete, || {
                        format!("{what}: did not see the terminal event (attached: {}, last sequence {})", watcher.attached, watcher.stream.last())
                    });
                } else if let Some(diff) = verify::compare_streams(&exec.prints, &watcher.prints) {
                    state
                        .violations
                        .add(Kind::WatcherMismatch, || format!("{what}: {diff}"));
                }
            }
        }
    }
}

/// A frame received at `at`: counted, then decoded and checked against the protocol; a
/// frame that is not a valid event is an `invalid_event` violation of `whose` socket.
fn received(
    state: &mut State,
    at: Duration,
    raw: &str,
    whose: impl FnOnce() -> String,
) -> Option<Event> {
    state.figures.event(at, raw.len());
    match Event::decode(raw).and_then(|e| e.validate().map(|()| e)) {
        Ok(event) => Some(event),
        Err(err) => {
            state.violations.add(Kind::InvalidEvent, || {
                format!("{}: {err}: {raw:.200}", whose())
            });
            None
        }
    }
}
