//! The pool of one runtime: the entries ready, the filler task that keeps it full at the
//! refill rate, claims, discards and closing.

use super::entry::{hand_over, read_ready, Entry};
use super::*;

#[derive(Debug, Default)]
struct Ready {
    entries: VecDeque<Entry>,
    closed: bool,
    /// Whether a claim can lower an entry's process limit (the same for all entries),
    /// once one started: see [`fallback`].
    lowers_processes: Option<bool>,
}

/// The warm pool of one runtime (with its network setting).
#[derive(Debug)]
pub(crate) struct WarmPool {
    runtime: Arc<Runtime>,
    kind: WarmKind,
    limits: EffectiveLimits,
    settings: WarmSettings,
    ready: Mutex<Ready>,
    /// Woken by each claim: the filler has room again.
    wake: Notify,
    closing: CancellationToken,
    /// The filler and the discards in flight, waited for by [`WarmPool::close`].
    tasks: TaskTracker,
}

impl WarmPool {
    pub(crate) fn new(
        runtime: Arc<Runtime>,
        limits: EffectiveLimits,
        settings: WarmSettings,
    ) -> Self {
        Self {
            kind: kind_for(&runtime),
            runtime,
            limits,
            settings,
            ready: Mutex::new(Ready::default()),
            wake: Notify::new(),
            closing: CancellationToken::new(),
            tasks: TaskTracker::new(),
        }
    }

    /// Whether this is the pool of `runtime` (by name: a request for it may still
    /// differ in settings, see [`fallback`]).
    pub(super) fn serves(&self, runtime: &Runtime) -> bool {
        self.runtime.name == runtime.name
    }

    /// The runtime's name.
    pub(crate) fn runtime_name(&self) -> &str {
        &self.runtime.name
    }

    /// How its entries wait.
    pub(crate) fn kind(&self) -> WarmKind {
        self.kind
    }

    /// The configured size.
    pub(crate) fn size(&self) -> usize {
        self.settings.size
    }

    /// Entries ready now.
    pub(crate) fn ready_count(&self) -> usize {
        self.lock().entries.len()
    }

    /// The memory the ready entries hold together.
    pub(crate) fn memory_bytes(&self) -> u64 {
        self.lock().entries.iter().map(Entry::memory_bytes).sum()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ready> {
        self.ready.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts the task that keeps the pool filled; `host` starts the entries (its own
    /// `warm` is not used).
    pub(crate) fn start(self: &Arc<Self>, host: Host) {
        let pool = Arc::clone(self);
        self.tasks.spawn(async move { pool.fill(host).await });
    }

    /// A ready entry, handed over to `spec`, or `None` (counted with its reason): the
    /// execution then starts cold. Never waits.
    pub(in crate::execution) fn claim(
        &self,
        spec: &ExecutionSpec,
        host: &Host,
    ) -> Option<Launched> {
        let metrics = &host.observe.metrics;
        let claimed_at = Instant::now();
        let miss = |why: Miss| {
            metrics.warm_missed(why.as_str());
            None
        };
        let lowers_processes = self.lock().lowers_processes;
        if let Some(why) = fallback(
            self.kind,
            &self.runtime,
            &self.limits,
            lowers_processes,
            spec,
        ) {
            return miss(why);
        }
        let mut entry = loop {
            let taken = {
                let mut ready = self.lock();
                if ready.closed {
                    return miss(Miss::Closed);
                }
                ready.entries.pop_front()
            };
            let Some(entry) = taken else {
                return miss(Miss::Empty);
            };
            self.wake.notify_one();
            match entry.spoiled(self.settings.max_age) {
                Some(why) => self.discard(entry, why, host),
                None => break entry,
            }
        };
        // An interpreter already using more memory than the request allows stays for
        // another request; this one starts cold (and meets its limit there).
        if entry
            .child
            .cgroup_memory()
            .is_some_and(|used| used > spec.limits.memory_bytes)
        {
            let mut ready = self.lock();
            if !ready.closed {
                ready.entries.push_front(entry);
                return miss(Miss::Limits);
            }
            drop(ready);
            self.discard(entry, Discard::Shutdown, host);
            return miss(Miss::Closed);
        }
        if let Err(err) = hand_over(&mut entry, spec, host) {
            tracing::warn!(%err, "could not hand a warm interpreter over; starting cold");
            self.discard(entry, Discard::ClaimFailed, host);
            return miss(Miss::ClaimFailed);
        }
        metrics.warm_hit();
        // A warm start's spawn is its claim.
        metrics.spawned(claimed_at.elapsed());
        let Entry {
            workdir,
            child,
            stdin,
            stdout,
            stderr,
            ..
        } = entry;
        Some(Launched {
            workdir: Some(workdir),
            program: Program::Process(Box::new(child)),
            stdin,
            stdout,
            stderr: Some(stderr),
            started_at: Instant::now(),
            warm: true,
            workspace_source: None,
        })
    }

    /// Kills an entry and cleans up after it as after a finished execution (its group
    /// killed and reaped, its cgroup emptied and removed, its directory removed).
    fn discard(&self, entry: Entry, why: Discard, host: &Host) {
        host.observe.metrics.warm_discarded(why.as_str());
        tracing::debug!(reason = why.as_str(), "warm interpreter discarded");
        let Entry {
            workdir, mut child, ..
        } = entry;
        if tokio::runtime::Handle::try_current().is_err() {
            // Outside a runtime: the drops kill, reap and remove.
            return;
        }
        self.tasks.spawn(async move {
            child.signal(Signal::Kill);
            child.exited().await;
            if let Err(err) = child.reap().await {
                tracing::warn!(%err, "could not reap a warm interpreter");
            }
            workdir.remove();
        });
    }

    /// Stops filling, discards every entry and waits until they are gone.
    pub(crate) async fn close(&self, host: &Host) {
        let entries = {
            let mut ready = self.lock();
            ready.closed = true;
            std::mem::take(&mut ready.entries)
        };
        self.closing.cancel();
        for entry in entries {
            self.discard(entry, Discard::Shutdown, host);
        }
        self.tasks.close();
        self.tasks.wait().await;
    }

    /// Keeps the pool filled until it is closed: one start at a time, at most
    /// `refill_per_second` a second (so a burst of claims cannot make the refills take
    /// the CPU from the programs), backing off after failures.
    async fn fill(&self, host: Host) {
        let pause = Duration::from_secs(1) / self.settings.refill_per_second.max(1);
        let sweep_every = (self.settings.max_age / 2).max(Duration::from_millis(100));
        let mut failures: u32 = 0;
        loop {
            self.sweep(&host);
            if self.ready_count() >= self.settings.size {
                tokio::select! {
                    () = self.closing.cancelled() => return,
                    () = self.wake.notified() => {}
                    () = tokio::time::sleep(sweep_every) => {}
                }
                continue;
            }
            let started = tokio::select! {
                () = self.closing.cancelled() => return,
                started = self.start_entry(&host) => started,
            };
            match started {
                Ok(entry) => {
                    failures = 0;
                    host.observe.metrics.warm_started();
                    let refused = {
                        let mut ready = self.lock();
                        if ready.closed {
                            Some(entry)
                        } else {
                            // Without the jail nothing but a cgroup limits
                            // processes, so a cold start is no stricter.
                            ready.lowers_processes =
                                Some(entry.child.cgroup_limits_processes() || host.jail.is_none());
                            ready.entries.push_back(entry);
                            None
                        }
                    };
                    if let Some(entry) = refused {
                        self.discard(entry, Discard::Shutdown, &host);
                        return;
                    }
                }
                Err(err) if err.kind() == io::ErrorKind::Unsupported => {
                    host.observe
                        .metrics
                        .warm_discarded(Discard::StartFailed.as_str());
                    tracing::warn!(%err, "no warm pool: every execution starts cold");
                    return;
                }
                Err(err) => {
                    failures = failures.saturating_add(1);
                    host.observe
                        .metrics
                        .warm_discarded(Discard::StartFailed.as_str());
                    tracing::warn!(%err, failures, "could not start a warm interpreter");
                }
            }
            let wait = match failures {
                0 => pause,
                n => (Duration::from_secs(1) * 2_u32.saturating_pow(n.min(5))).min(MAX_BACKOFF),
            };
            tokio::select! {
                () = self.closing.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Discards the entries that died, wrote something or grew too old.
    fn sweep(&self, host: &Host) {
        let spoiled: Vec<(Entry, Discard)> = {
            let mut ready = self.lock();
            let mut kept = VecDeque::with_capacity(ready.entries.len());
            let mut spoiled = Vec::new();
            for entry in ready.entries.drain(..) {
                match entry.spoiled(self.settings.max_age) {
                    Some(why) => spoiled.push((entry, why)),
                    None => kept.push_back(entry),
                }
            }
            ready.entries = kept;
            spoiled
        };
        for (entry, why) in spoiled {
            self.discard(entry, why, host);
        }
    }

    /// Starts one entry and waits until it says it is ready.
    async fn start_entry(&self, host: &Host) -> io::Result<Entry> {
        let (runtime, limits, blocking_host) = (self.runtime.clone(), self.limits, host.clone());
        let wait = match self.kind {
            WarmKind::Interpreter => WarmWait::Interpreter(BOOTSTRAP),
            WarmKind::Jail => WarmWait::Jail,
        };
        let (workdir, spawned) = tokio::task::spawn_blocking(move || {
            let host = blocking_host;
            let cgroup = host.cgroups.create(
                limits.memory_bytes,
                limits
                    .processes
                    .saturating_add(launch::jail_processes(&host)),
            )?;
            // Until its claim it weighs like a heavy program: warming up must not take
            // the CPU from the programs running now.
            if let Some(cgroup) = &cgroup {
                cgroup.weigh_down_until_handed_over();
            }
            let workdir =
                Workdir::create_empty(&host.work_root, &runtime.file_name, host.program_user)?;
            let source = workdir.source();
            let packages = host.package_env(&runtime, None);
            let spawned = Launch {
                workspace: None,
                runtime: &runtime,
                workdir: workdir.path(),
                source: &source,
                args: &[],
                env: launch::environment(
                    &runtime,
                    &[],
                    &host.base_env,
                    workdir.path(),
                    host.gives_network(&runtime),
                    &packages,
                ),
                rlimits: launch::rlimits(&limits),
                cgroup,
                no_network: host.no_network,
                jail: host.jail.as_deref(),
                user: host.program_user,
                scratch_bytes: limits.workspace_bytes,
                processes: limits.processes,
                warm: Some(wait),
                terminal: None,
                files: None,
                package_proxy: host.package_proxy(&runtime),
                principal: None,
            }
            .spawn()
            .map_err(io::Error::other)?;
            Ok::<_, io::Error>((workdir, spawned))
        })
        .await
        .map_err(io::Error::other)??;
        let stdin = spawned.stdin;
        let stderr = spawned
            .stderr
            .ok_or_else(|| io::Error::other("a warm entry started without a stderr pipe"))?;
        let stdin_capacity = sys::pipe_capacity(&stdin)?;
        tokio::time::timeout(READY_TIMEOUT, read_ready(&spawned.stdout))
            .await
            .map_err(|_| io::Error::other("the interpreter did not become ready in time"))??;
        let program_pid = host.jail.is_none().then(|| spawned.child.pid());
        Ok(Entry {
            workdir,
            child: spawned.child,
            stdin,
            stdout: spawned.stdout,
            stderr,
            program_pid,
            stdin_capacity,
            born: Instant::now(),
        })
    }
}
