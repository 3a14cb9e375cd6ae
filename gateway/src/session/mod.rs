//! Sessions: the unit that outlives a socket.
//!
//! A [`Session`] is a named [`EventStream`] plus the executions that run in it. Any
//! number of sockets may be attached to it; each receives every event, and a socket that
//! comes back resumes from the last sequence it saw. When the last socket goes away the
//! session lives on for the grace period, then its executions are cancelled and it is
//! freed. A session the gateway made for one execution ends as soon as that execution
//! has ended and its events were taken; a session in which no program ever ran gets no
//! grace period (it has nothing to resume). Each session counts against the sessions
//! per peer (or tenant) of the one that opened it until it ends.
//!
//! Session names live in their tenant's namespace: another tenant naming the same
//! session gets a session of its own, and cannot tell that the name is taken. Where
//! clients are anonymous there is one namespace for everybody.

mod fingerprint;

pub(crate) use fingerprint::Fingerprint;

use crate::admission::{Principal, Quota, QuotaGuard};
use crate::buffer_budget::BufferBudget;
use crate::execution::{ExecutionHandle, InterpreterSeat, Owner};
use crate::fanout::{EventStream, ReplayCaps};
use crate::workspace::Workspace;
use dashmap::DashMap;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How many finished execution ids a session remembers, so that a repeated `execute`
/// is answered from the session instead of running twice.
const REMEMBERED_FINISHED: usize = 4_096;

/// An execution as its session knows it.
#[derive(Debug)]
pub(crate) enum Known {
    Running(ExecutionHandle),
    Finished,
}

/// An execution id the session remembers, and what its `execute` asked for.
#[derive(Debug)]
struct Remembered {
    known: Known,
    fingerprint: Fingerprint,
}

#[derive(Debug, Default)]
struct SessionState {
    executions: HashMap<String, Remembered>,
    finished_order: VecDeque<String>,
    running: usize,
    /// Sockets attached now.
    attached: usize,
    /// Bumped on every attach (kept for diagnostics of attach churn).
    generation: u64,
    /// When the last socket went away (while none is attached).
    last_detached: Option<tokio::time::Instant>,
    /// A grace timer is pending: at most one per session, however often sockets come
    /// and go.
    grace_timer: bool,
    /// At least one execution ran here: a gateway-made session is complete after it,
    /// and only then is there something to come back for in a grace period (refusals
    /// come before any session is opened).
    ran: bool,
    ended: bool,
}

/// Where a session is found: its tenant's namespace (none for anonymous clients) and
/// its name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct SessionKey {
    tenant: Option<Arc<str>>,
    name: Arc<str>,
}

impl SessionKey {
    fn new(owner: &Principal, name: &str) -> Self {
        Self {
            tenant: owner.tenant().cloned(),
            name: Arc::from(name),
        }
    }
}

/// A session: the stream its executions share, its executions and its attachments.
#[derive(Debug)]
pub(crate) struct Session {
    /// Where the registry keeps it.
    key: SessionKey,
    pub(crate) stream: EventStream,
    /// Gateway-made for one execution (no `session` in the `execute`).
    pub(crate) ephemeral: bool,
    /// Cancelled when the session ends; every execution's cancel token is its child.
    pub(crate) cancel: CancellationToken,
    /// The persistent interpreter, once a persistent execution has started one.
    interpreter: InterpreterSeat,
    /// The end of the queue of persistent cells: resolves when the last one sent is over.
    last_cell: Mutex<Option<tokio::sync::oneshot::Receiver<()>>>,
    /// The opener's unit of `--max-sessions-per-peer`, given back when the session ends.
    quota: Mutex<Option<QuotaGuard>>,
    /// The session's workspace, once an `execute` or `attach` asked for one; let go
    /// when the session ends (and gone once its last execution has let go too).
    workspace: Mutex<Option<Arc<Workspace>>>,
    state: Mutex<SessionState>,
    /// [`Session::is_complete`], kept in step with `state` under its lock, so that
    /// every socket's writer can check it on every pass without taking the lock.
    complete: std::sync::atomic::AtomicBool,
}

impl Session {
    fn lock(&self) -> MutexGuard<'_, SessionState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn id(&self) -> &str {
        self.stream.session_id().map_or("", |id| id)
    }

    /// A place in the queue of persistent cells: wait for the first value, drop the
    /// second when the cell is over. Cells run in the order this is called.
    pub(crate) fn next_cell_turn(
        &self,
    ) -> (
        tokio::sync::oneshot::Receiver<()>,
        tokio::sync::oneshot::Sender<()>,
    ) {
        let (mine, next) = tokio::sync::oneshot::channel();
        let mut last = self
            .last_cell
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let previous = last.replace(next).unwrap_or_else(|| {
            // Nobody before: a turn that is already over.
            let (done, over) = tokio::sync::oneshot::channel();
            drop(done);
            over
        });
        (previous, mine)
    }

    /// The session's workspace, if it keeps one.
    pub(crate) fn workspace(&self) -> Option<Arc<Workspace>> {
        self.workspace
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Gives the session `made` as its workspace, unless it got one meanwhile (then
    /// `made` is dropped) or has ended (`None`). The workspace it keeps.
    pub(crate) fn keep_workspace(&self, made: Workspace) -> Option<Arc<Workspace>> {
        let mut state = self.lock();
        if state.ended {
            return None;
        }
        // Something to come back to after a disconnect, even before anything ran.
        state.ran = true;
        let mut slot = self
            .workspace
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        Some(slot.get_or_insert_with(|| Arc::new(made)).clone())
    }

    /// Restarts the persistent interpreter (`restart`): cancels every cell that runs or
    /// waits, and asks for a fresh interpreter: whoever holds the seat next (a task made
    /// here, or a cell sent after this that takes its turn first) retires the old one
    /// and says so on the session's stream with a `restarted` event.
    pub(crate) fn restart_interpreter(self: &Arc<Self>) {
        {
            let state = self.lock();
            for remembered in state.executions.values() {
                if let Known::Running(handle) = &remembered.known {
                    if handle.cell {
                        handle.cancel.cancel();
                    }
                }
            }
        }
        if !self.interpreter.ask_restart() {
            // One is under way: its `restarted` answers this one too.
            return;
        }
        let session = Arc::clone(self);
        self.interpreter.track(async move {
            let mut seat = session.interpreter.take_turn().await;
            session
                .interpreter
                .restart_if_asked(&mut seat, &session.stream)
                .await;
        });
    }

    /// True once the session has ended (no socket came back in time, or shutdown).
    pub(crate) fn is_ended(&self) -> bool {
        self.lock().ended
    }

    /// Runs `f` on the execution named `id`, if the session knows it.
    pub(crate) fn with_execution<T>(&self, id: &str, f: impl FnOnce(&mut Known) -> T) -> Option<T> {
        self.lock()
            .executions
            .get_mut(id)
            .map(|remembered| f(&mut remembered.known))
    }

    /// The fingerprint of the `execute` that started the execution with this id, if it
    /// runs or ran here (and is still remembered).
    pub(crate) fn fingerprint_of(&self, id: &str) -> Option<Fingerprint> {
        self.lock().executions.get(id).map(|r| r.fingerprint)
    }

    /// Records a new execution; false if the session has ended. `Err` with the
    /// fingerprint of the request that has the id, if another `execute` took it since the
    /// caller looked (two sockets resending the same request at once): nothing is
    /// recorded then, and the caller must not start its execution.
    pub(crate) fn add_execution(
        &self,
        id: String,
        fingerprint: Fingerprint,
        handle: ExecutionHandle,
    ) -> Result<bool, Fingerprint> {
        let mut state = self.lock();
        if let Some(taken) = state.executions.get(&id) {
            return Err(taken.fingerprint);
        }
        if state.ended {
            return Ok(false);
        }
        let known = Known::Running(handle);
        state
            .executions
            .insert(id, Remembered { known, fingerprint });
        state.running += 1;
        state.ran = true;
        self.complete
            .store(false, std::sync::atomic::Ordering::Release);
        self.stream.set_idle(false);
        Ok(true)
    }

    /// Records that `id` has sent its terminal event. Wakes the readers: a gateway-made
    /// session is complete now and its socket may let it go.
    pub(crate) fn execution_finished(&self, id: &str) {
        let mut state = self.lock();
        if let Some(remembered) = state.executions.get_mut(id) {
            if matches!(remembered.known, Known::Running(_)) {
                remembered.known = Known::Finished;
                state.running -= 1;
                state.finished_order.push_back(id.to_owned());
                if state.finished_order.len() > REMEMBERED_FINISHED {
                    if let Some(old) = state.finished_order.pop_front() {
                        state.executions.remove(&old);
                    }
                }
                if state.running == 0 {
                    // Under the session's lock, so a new execution's `set_idle(false)`
                    // cannot come between.
                    self.stream.set_idle(true);
                    self.complete
                        .store(self.ephemeral, std::sync::atomic::Ordering::Release);
                }
            }
        }
        drop(state);
        self.stream.wake_readers();
    }

    /// A gateway-made session whose execution has ended: nothing more will happen in it.
    pub(crate) fn is_complete(&self) -> bool {
        self.complete.load(std::sync::atomic::Ordering::Acquire)
    }

    fn attach(&self) -> bool {
        let mut state = self.lock();
        if state.ended {
            return false;
        }
        state.attached += 1;
        state.generation += 1;
        true
    }
}

/// An execution sees its session only through this.
impl Owner for Session {
    fn id(&self) -> &str {
        Session::id(self)
    }

    fn stream(&self) -> &EventStream {
        &self.stream
    }

    fn ending(&self) -> &CancellationToken {
        &self.cancel
    }

    fn is_ended(&self) -> bool {
        Session::is_ended(self)
    }

    fn interpreter(&self) -> &InterpreterSeat {
        &self.interpreter
    }

    fn workspace(&self) -> Option<Arc<Workspace>> {
        Session::workspace(self)
    }
}

/// Every live session by id, shared by all connections.
#[derive(Debug)]
pub(crate) struct SessionRegistry {
    sessions: DashMap<SessionKey, Arc<Session>>,
    caps: ReplayCaps,
    /// What every session's replay buffer draws from.
    budget: BufferBudget,
    grace: Duration,
    max_sessions: usize,
    /// Sessions each peer has open (`--max-sessions-per-peer`).
    per_peer: Quota,
    /// Parent of every session's cancel token (the gateway's shutdown).
    shutdown: CancellationToken,
    /// Interpreters being killed and reaped.
    reaping: TaskTracker,
}

/// Why a session could not be opened.
#[derive(Debug, thiserror::Error)]
pub(crate) enum OpenError {
    #[error("the gateway has {0} sessions open, its maximum")]
    TooMany(usize),
    #[error("your {0} has {1} sessions open, the maximum {scope}; end some (or let their grace period pass) and retry", scope = .0.cap_scope())]
    TooManyForPeer(Principal, usize),
    #[error("session {0:?} was made by the gateway for one execution; name a session of your own to run several executions in one")]
    GatewayMade(String),
}

impl SessionRegistry {
    pub(crate) fn new(
        caps: ReplayCaps,
        budget: BufferBudget,
        grace: Duration,
        max_sessions: usize,
        max_sessions_per_peer: usize,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            sessions: DashMap::new(),
            caps,
            budget,
            grace,
            max_sessions,
            per_peer: Quota::new(max_sessions_per_peer),
            shutdown,
            reaping: TaskTracker::new(),
        }
    }

    fn new_session(&self, key: SessionKey, ephemeral: bool, quota: QuotaGuard) -> Arc<Session> {
        Arc::new(Session {
            // The opener's share of the buffer budget holds the session's replay.
            stream: EventStream::new(
                Some(key.name.clone()),
                self.caps,
                &self.budget.for_principal(quota.principal().clone()),
            ),
            key,
            ephemeral,
            cancel: self.shutdown.child_token(),
            interpreter: InterpreterSeat::new(self.reaping.clone()),
            last_cell: Mutex::new(None),
            quota: Mutex::new(Some(quota)),
            workspace: Mutex::new(None),
            state: Mutex::new(SessionState::default()),
            complete: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// A unit of `opener`'s session quota (at most `narrower`, its credential's), for a
    /// session about to be created.
    fn charge(&self, opener: &Principal, narrower: Option<usize>) -> Result<QuotaGuard, OpenError> {
        if self.sessions.len() >= self.max_sessions {
            return Err(OpenError::TooMany(self.max_sessions));
        }
        self.per_peer
            .try_acquire_within(opener, narrower)
            .map_err(|e| OpenError::TooManyForPeer(opener.clone(), e.max))
    }

    /// The session named `name` in `opener`'s namespace, created (charged to `opener`,
    /// within `narrower` sessions) if it does not exist, attached once more. `true` in
    /// the result when it was created.
    pub(crate) fn open_named(
        &self,
        name: &str,
        opener: &Principal,
        narrower: Option<usize>,
    ) -> Result<(Arc<Session>, bool), OpenError> {
        use dashmap::mapref::entry::Entry;
        loop {
            if let Some(session) = self.get(opener, name) {
                if session.ephemeral {
                    return Err(OpenError::GatewayMade(name.to_owned()));
                }
                if session.attach() {
                    return Ok((session, false));
                }
                // It ended just now; make a fresh one.
                self.remove(&session);
                continue;
            }
            let quota = self.charge(opener, narrower)?;
            let key = SessionKey::new(opener, name);
            if let Entry::Vacant(slot) = self.sessions.entry(key.clone()) {
                let session = self.new_session(key, false, quota);
                session.attach();
                slot.insert(session.clone());
                return Ok((session, true));
            }
        }
    }

    /// A fresh gateway-made session (128 random bits, hex) in `opener`'s namespace,
    /// charged to it (within `narrower` sessions), attached once.
    pub(crate) fn open_ephemeral(
        &self,
        opener: &Principal,
        narrower: Option<usize>,
    ) -> Result<Arc<Session>, OpenError> {
        use dashmap::mapref::entry::Entry;
        let quota = self.charge(opener, narrower)?;
        loop {
            let key = SessionKey::new(opener, &random_session_id());
            if let Entry::Vacant(slot) = self.sessions.entry(key.clone()) {
                let session = self.new_session(key, true, quota);
                session.attach();
                slot.insert(session.clone());
                return Ok(session);
            }
        }
    }

    /// Sessions open now (for metrics).
    pub(crate) fn open_count(&self) -> usize {
        self.sessions.len()
    }

    /// The live session named `name` in `caller`'s namespace.
    pub(crate) fn get(&self, caller: &Principal, name: &str) -> Option<Arc<Session>> {
        self.sessions
            .get(&SessionKey::new(caller, name))
            .map(|entry| entry.value().clone())
    }

    /// Attaches one more socket to an existing session; false if it has ended.
    pub(crate) fn attach(&self, session: &Session) -> bool {
        session.attach()
    }

    /// A socket let go of `session`. `took_everything`: it had taken every event. The
    /// last socket to leave starts the grace period, except that a complete
    /// gateway-made session whose events were all taken, and a session in which no
    /// program ever started, end at once.
    pub(crate) fn detach(self: &Arc<Self>, session: &Arc<Session>, took_everything: bool) {
        let now = tokio::time::Instant::now();
        {
            let mut state = session.lock();
            state.attached = state.attached.saturating_sub(1);
            if state.attached > 0 || state.ended {
                return;
            }
            let complete = session.ephemeral && state.ran && state.running == 0;
            if (complete && took_everything) || !state.ran || self.grace.is_zero() {
                drop(state);
                return self.end(session);
            }
            state.last_detached = Some(now);
            if std::mem::replace(&mut state.grace_timer, true) {
                // The pending timer sees the new time when it fires.
                return;
            }
        }
        let registry = self.clone();
        let session = session.clone();
        tokio::spawn(async move {
            let mut until = now + registry.grace;
            loop {
                tokio::select! {
                    () = tokio::time::sleep_until(until) => {}
                    () = session.cancel.cancelled() => {
                        session.lock().grace_timer = false;
                        return;
                    }
                }
                let mut state = session.lock();
                if state.attached > 0 || state.ended {
                    state.grace_timer = false;
                    return;
                }
                // Sockets came and went meanwhile: the grace counts from the last.
                let due = state.last_detached.map_or(until, |at| at + registry.grace);
                if due > tokio::time::Instant::now() {
                    until = due;
                    continue;
                }
                state.grace_timer = false;
                drop(state);
                tracing::debug!(
                    session = session.id(),
                    "grace period over: ending the session"
                );
                registry.end(&session);
                return;
            }
        });
    }

    /// Ends a session with no socket attached: its executions are cancelled, nobody
    /// waits for its events any more, and its id is free again.
    pub(crate) fn end(&self, session: &Session) {
        session.lock().ended = true;
        session.cancel.cancel();
        session.stream.close();
        self.remove(session);
        // The opener may open another one now.
        drop(
            session
                .quota
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
        // An idle interpreter goes now; a running cell's takes it when it is over.
        session.interpreter.retire_if_idle();
        // Unmounted once the executions still running (cancelled now) let go of it.
        drop(
            session
                .workspace
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
    }

    /// Ends every session (gateway shutdown) and waits until their interpreters are
    /// reaped.
    pub(crate) async fn end_all(&self) {
        let sessions: Vec<Arc<Session>> = self.sessions.iter().map(|e| e.value().clone()).collect();
        for session in sessions {
            self.end(&session);
            session.interpreter.retire_when_free().await;
        }
        self.reaping.close();
        self.reaping.wait().await;
    }

    fn remove(&self, session: &Session) {
        self.sessions.remove_if(&session.key, |_, live| {
            std::ptr::eq(Arc::as_ptr(live), session)
        });
    }
}

fn random_session_id() -> String {
    let mut bytes = [0u8; 16];
    if getrandom::fill(&mut bytes).is_err() {
        // The OS random source failing is not something a client can cause; fall back to
        // a clock-and-counter id, which is unique though guessable, and say so.
        tracing::error!("the OS random source failed; session id is unique but guessable");
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        bytes = (t ^ u128::from(n) << 64).to_le_bytes();
    }
    const HEX: &[u8; 16] = b"0123456789abcdef";
    bytes
        .iter()
        .flat_map(|b| [HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]])
        .map(char::from)
        .collect()
}
