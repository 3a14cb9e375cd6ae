//! The gateway's Prometheus metrics: one registry per gateway, fed by hooks, encoded
//! in the Prometheus text format (0.0.4) when `/metrics` is scraped.
//!
//! Every label's values are bounded: outcomes, limits, error codes and sandbox stages
//! are fixed lists, languages are the configured runtimes, and tenants are capped
//! ([`MAX_TENANT_LABELS`] names, then [`OTHER_TENANTS`]). The names are documented in
//! `docs/operating.md`.

use crate::admission::Principal;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use sluice_protocol::{ErrorCode, EventKind, LimitKind};
use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

/// Tenants that get a label of their own, in the order they are first seen; the rest
/// are counted together as [`OTHER_TENANTS`].
pub(crate) const MAX_TENANT_LABELS: usize = 100;
/// The tenant label of every tenant past the first [`MAX_TENANT_LABELS`].
pub(crate) const OTHER_TENANTS: &str = "other";
/// The tenant label of clients that did not authenticate.
pub(crate) const ANONYMOUS: &str = "anonymous";

/// The `Content-Type` of `/metrics`.
pub(crate) const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// The terminal types, as the `outcome` label.
const OUTCOMES: [EventKind; 4] = [
    EventKind::Completed,
    EventKind::Cancelled,
    EventKind::ResourceLimit,
    EventKind::Error,
];

/// Why an execution started cold while the warm pools are on (the `reason` label
/// of `sluice_warm_pool_misses_total`; `execution::warm::Miss` names them).
pub(crate) const WARM_MISS_REASONS: [&str; 8] = [
    "empty",
    "runtime",
    "env",
    "args",
    "limits",
    "code",
    "claim_failed",
    "closed",
];

/// Why a warm entry was discarded (`sluice_warm_pool_discards_total`;
/// `execution::warm::Discard` names them).
pub(crate) const WARM_DISCARD_REASONS: [&str; 7] = [
    "start_failed",
    "dead",
    "output",
    "stopped",
    "stale",
    "claim_failed",
    "shutdown",
];

/// Where starting a program failed, for `sluice_sandbox_failures_total{stage}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SandboxStage {
    /// The execution's cgroup could not be created.
    Cgroup,
    /// Its working directory could not be prepared.
    Workdir,
    /// The spawn (of the jail, or of the program) failed.
    Spawn,
    /// The jail started but could not set the program up (its report says why).
    Jail,
    /// A persistent interpreter could not be started.
    Interpreter,
}

impl SandboxStage {
    fn as_str(self) -> &'static str {
        match self {
            Self::Cgroup => "cgroup",
            Self::Workdir => "workdir",
            Self::Spawn => "spawn",
            Self::Jail => "jail",
            Self::Interpreter => "interpreter",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Ended {
    outcome: &'static str,
    language: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Limit {
    limit: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Code {
    code: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reason {
    reason: &'static str,
}

/// Why an upgrade request was refused with an HTTP status (the label of
/// `sluice_upgrades_refused_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UpgradeRefusal {
    /// Two `Origin` headers (400).
    TwoOrigins,
    /// An origin not allowed (403).
    Origin,
    /// No valid credential (401).
    Unauthenticated,
    /// Draining or shutting down (503).
    ShuttingDown,
    /// At `--max-connections` (503).
    Connections,
    /// The caller's share of the connections is taken (429).
    ConnectionsPerPeer,
}

impl UpgradeRefusal {
    fn as_str(self) -> &'static str {
        match self {
            Self::TwoOrigins => "two_origins",
            Self::Origin => "origin",
            Self::Unauthenticated => "unauthenticated",
            Self::ShuttingDown => "shutting_down",
            Self::Connections => "connections",
            Self::ConnectionsPerPeer => "connections_per_peer",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Stage {
    stage: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TenantOutcome {
    tenant: String,
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Tenant {
    tenant: String,
}

/// What `/metrics` reads from the gateway's state when it is scraped.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Snapshot {
    pub(crate) connections: usize,
    pub(crate) sessions: usize,
    pub(crate) executions: usize,
    pub(crate) interpreters: usize,
    /// The warm pools together: their configured size, the entries ready, and their memory.
    pub(crate) warm_size: usize,
    pub(crate) warm_ready: usize,
    pub(crate) warm_memory_bytes: u64,
}

/// The gateway's metrics. Hooks take `&self` and cost an atomic add or two (a label
/// lookup under a read lock for the labelled ones).
#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Registry,
    connections: Gauge,
    sessions: Gauge,
    executions_running: Gauge,
    interpreters: Gauge,
    warm_size: Gauge,
    warm_ready: Gauge,
    warm_memory: Gauge,
    warm_hits: Counter,
    warm_misses: Family<Reason, Counter>,
    warm_starts: Counter,
    warm_discards: Family<Reason, Counter>,
    ended: Family<Ended, Counter>,
    limits: Family<Limit, Counter>,
    tenant_ended: Family<TenantOutcome, Counter>,
    tenant_refusals: Family<Tenant, Counter>,
    spawn_seconds: Histogram,
    first_output_seconds: Histogram,
    events_delivered: Counter,
    bytes_delivered: Counter,
    gaps: Counter,
    gap_events: Counter,
    slow_readers: Counter,
    sandbox_failures: Family<Stage, Counter>,
    refusals: Family<Code, Counter>,
    upgrades_refused: Family<Reason, Counter>,
    credential_reloads: Family<Outcome, Counter>,
    audit_dropped: Counter,
    tenants: TenantLabels,
}

impl Metrics {
    /// A registry with every metric, the per-language series (one per configured
    /// runtime and outcome) present at zero.
    pub(crate) fn new(languages: &[&str]) -> Self {
        let mut registry = Registry::with_prefix("sluice");
        let metrics = Self {
            registry: Registry::default(),
            connections: Gauge::default(),
            sessions: Gauge::default(),
            executions_running: Gauge::default(),
            interpreters: Gauge::default(),
            warm_size: Gauge::default(),
            warm_ready: Gauge::default(),
            warm_memory: Gauge::default(),
            warm_hits: Counter::default(),
            warm_misses: Family::default(),
            warm_starts: Counter::default(),
            warm_discards: Family::default(),
            ended: Family::default(),
            limits: Family::default(),
            tenant_ended: Family::default(),
            tenant_refusals: Family::default(),
            // 250 µs to about 8 s.
            spawn_seconds: Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(0.000_25, 2.0, 16),
            ),
            // 1 ms to about 33 s.
            first_output_seconds: Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.0, 16),
            ),
            events_delivered: Counter::default(),
            bytes_delivered: Counter::default(),
            gaps: Counter::default(),
            gap_events: Counter::default(),
            slow_readers: Counter::default(),
            sandbox_failures: Family::default(),
            refusals: Family::default(),
            upgrades_refused: Family::default(),
            credential_reloads: Family::default(),
            audit_dropped: Counter::default(),
            tenants: TenantLabels::default(),
        };
        for language in languages {
            for outcome in OUTCOMES {
                let _ = metrics.ended.get_or_create(&Ended {
                    outcome: outcome.as_str(),
                    language: (*language).to_owned(),
                });
            }
        }
        for reason in WARM_MISS_REASONS {
            let _ = metrics.warm_misses.get_or_create(&Reason { reason });
        }
        for reason in WARM_DISCARD_REASONS {
            let _ = metrics.warm_discards.get_or_create(&Reason { reason });
        }
        let m = &metrics;
        registry.register(
            "warm_pool_size",
            "Warm entries (Python interpreters, jails waiting before their exec) the pools keep ready, all runtimes together (--warm-pool per runtime)",
            m.warm_size.clone(),
        );
        registry.register(
            "warm_pool_ready",
            "Warm entries ready now, all runtimes together",
            m.warm_ready.clone(),
        );
        registry.register_with_unit(
            "warm_pool_memory",
            "Memory the ready warm entries hold (their cgroups' count, else their resident sets)",
            prometheus_client::registry::Unit::Bytes,
            m.warm_memory.clone(),
        );
        registry.register(
            "warm_pool_hits",
            "Executions started on a warm entry",
            m.warm_hits.clone(),
        );
        registry.register(
            "warm_pool_misses",
            "Executions started cold while the pools are on, by reason",
            m.warm_misses.clone(),
        );
        registry.register(
            "warm_pool_starts",
            "Warm entries started and ready",
            m.warm_starts.clone(),
        );
        registry.register(
            "warm_pool_discards",
            "Warm entries discarded unused (or never ready), by reason",
            m.warm_discards.clone(),
        );
        registry.register(
            "connections_open",
            "WebSocket connections open",
            m.connections.clone(),
        );
        registry.register("sessions_open", "Sessions open", m.sessions.clone());
        registry.register(
            "executions_running",
            "Executions admitted and not yet ended",
            m.executions_running.clone(),
        );
        registry.register(
            "interpreters_alive",
            "Persistent interpreters alive",
            m.interpreters.clone(),
        );
        registry.register(
            "executions_ended",
            "Executions ended, by terminal event type (outcome) and language",
            m.ended.clone(),
        );
        registry.register(
            "executions_resource_limit",
            "Executions ended by a resource limit, by the limit",
            m.limits.clone(),
        );
        registry.register(
            "tenant_executions_ended",
            "Executions ended, by tenant (the first 100 seen; the rest are \"other\") and outcome",
            m.tenant_ended.clone(),
        );
        registry.register(
            "tenant_refusals",
            "Frames refused with an error, by tenant",
            m.tenant_refusals.clone(),
        );
        registry.register_with_unit(
            "spawn",
            "Time to start a program (the spawn, through the jail when there is one; a warm start's claim)",
            prometheus_client::registry::Unit::Seconds,
            m.spawn_seconds.clone(),
        );
        registry.register_with_unit(
            "first_output",
            "Time from an execute being admitted to its first output",
            prometheus_client::registry::Unit::Seconds,
            m.first_output_seconds.clone(),
        );
        registry.register(
            "events_delivered",
            "Events written to sockets (one per socket that reads it)",
            m.events_delivered.clone(),
        );
        registry.register_with_unit(
            "delivered",
            "Bytes of events written to sockets",
            prometheus_client::registry::Unit::Bytes,
            m.bytes_delivered.clone(),
        );
        registry.register(
            "replay_gaps",
            "Gap events: a reader fell behind its session's replay buffer",
            m.gaps.clone(),
        );
        registry.register(
            "replay_gap_events",
            "Events readers missed, announced by gap events",
            m.gap_events.clone(),
        );
        registry.register(
            "slow_reader_disconnects",
            "Sockets closed because the client did not read within the send timeout",
            m.slow_readers.clone(),
        );
        registry.register(
            "sandbox_failures",
            "Programs or interpreters that could not be started, by stage",
            m.sandbox_failures.clone(),
        );
        registry.register(
            "refusals",
            "Frames refused with an error event, by error code",
            m.refusals.clone(),
        );
        registry.register(
            "upgrades_refused",
            "WebSocket upgrade requests refused with an HTTP status, by reason",
            m.upgrades_refused.clone(),
        );
        registry.register(
            "credential_reloads",
            "Credential reloads (SIGHUP), by result: ok, or failed (the old ones kept)",
            m.credential_reloads.clone(),
        );
        registry.register(
            "audit_lines_dropped",
            "Audit log lines dropped (the writer was behind, or the write failed)",
            m.audit_dropped.clone(),
        );
        Self {
            registry,
            ..metrics
        }
    }

    /// An execution ended with `outcome` (a terminal type; `limit` for
    /// `resource_limit`).
    pub(crate) fn execution_ended(
        &self,
        principal: &Principal,
        language: &str,
        outcome: EventKind,
        limit: Option<LimitKind>,
    ) {
        let outcome = outcome.as_str();
        self.ended
            .get_or_create(&Ended {
                outcome,
                language: language.to_owned(),
            })
            .inc();
        if let Some(limit) = limit {
            self.limits
                .get_or_create(&Limit {
                    limit: limit.as_str(),
                })
                .inc();
        }
        let tenant = self.tenants.label(super::tenant_of(principal));
        self.tenant_ended
            .get_or_create(&TenantOutcome { tenant, outcome })
            .inc();
    }

    /// A program's spawn took `took`.
    pub(crate) fn spawned(&self, took: Duration) {
        self.spawn_seconds.observe(took.as_secs_f64());
    }

    /// An execution's first output came `after` its execute was admitted.
    pub(crate) fn first_output(&self, after: Duration) {
        self.first_output_seconds.observe(after.as_secs_f64());
    }

    /// An execution started on a warm interpreter.
    pub(crate) fn warm_hit(&self) {
        self.warm_hits.inc();
    }

    /// An execution started cold although the pool is on, for `reason`.
    pub(crate) fn warm_missed(&self, reason: &'static str) {
        self.warm_misses.get_or_create(&Reason { reason }).inc();
    }

    /// A warm interpreter became ready.
    pub(crate) fn warm_started(&self) {
        self.warm_starts.inc();
    }

    /// A warm interpreter was discarded unused, for `reason`.
    pub(crate) fn warm_discarded(&self, reason: &'static str) {
        self.warm_discards.get_or_create(&Reason { reason }).inc();
    }

    /// A socket was written `events` events of `bytes` bytes in all.
    pub(crate) fn delivered(&self, events: usize, bytes: usize) {
        self.events_delivered.inc_by(events as u64);
        self.bytes_delivered.inc_by(bytes as u64);
    }

    /// A socket was told `gaps` times that it missed events, `missed` of them in all.
    pub(crate) fn gaps(&self, gaps: u64, missed: u64) {
        self.gaps.inc_by(gaps);
        self.gap_events.inc_by(missed);
    }

    /// A socket was closed for not reading within the send timeout.
    pub(crate) fn slow_reader_disconnected(&self) {
        self.slow_readers.inc();
    }

    /// Starting a program failed at `stage`.
    pub(crate) fn sandbox_failed(&self, stage: SandboxStage) {
        self.sandbox_failures
            .get_or_create(&Stage {
                stage: stage.as_str(),
            })
            .inc();
    }

    /// A frame from `principal` was refused with `code`.
    pub(crate) fn refused(&self, principal: &Principal, code: ErrorCode) {
        self.refusals
            .get_or_create(&Code {
                code: code.as_str(),
            })
            .inc();
        let tenant = self.tenants.label(super::tenant_of(principal));
        self.tenant_refusals.get_or_create(&Tenant { tenant }).inc();
    }

    /// An upgrade request was refused before it became a WebSocket.
    pub(crate) fn upgrade_refused(&self, why: UpgradeRefusal) {
        self.upgrades_refused
            .get_or_create(&Reason {
                reason: why.as_str(),
            })
            .inc();
    }

    /// The credentials were read again (`ok`), or could not be (`failed`).
    pub(crate) fn credentials_reloaded(&self, ok: bool) {
        let result = if ok { "ok" } else { "failed" };
        self.credential_reloads
            .get_or_create(&Outcome { result })
            .inc();
    }

    /// An audit line was dropped; the total so far.
    pub(crate) fn audit_dropped(&self) -> u64 {
        self.audit_dropped.inc() + 1
    }

    /// The metrics in the Prometheus text format, with the gauges set from `now`.
    pub(crate) fn render(&self, now: Snapshot) -> Result<String, std::fmt::Error> {
        let gauge = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        self.connections.set(gauge(now.connections));
        self.sessions.set(gauge(now.sessions));
        self.executions_running.set(gauge(now.executions));
        self.interpreters.set(gauge(now.interpreters));
        self.warm_size.set(gauge(now.warm_size));
        self.warm_ready.set(gauge(now.warm_ready));
        self.warm_memory
            .set(i64::try_from(now.warm_memory_bytes).unwrap_or(i64::MAX));
        let mut text = String::with_capacity(8 * 1024);
        prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

/// The tenant labels handed out so far: the first [`MAX_TENANT_LABELS`] tenants seen
/// keep their own, every later one is [`OTHER_TENANTS`], so a flood of new tenant
/// names cannot grow the metrics without bound.
#[derive(Debug, Default)]
struct TenantLabels {
    seen: Mutex<HashSet<String>>,
}

impl TenantLabels {
    fn label(&self, tenant: Option<&str>) -> String {
        let Some(name) = tenant else {
            return ANONYMOUS.to_owned();
        };
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if seen.contains(name) {
            return name.to_owned();
        }
        if seen.len() < MAX_TENANT_LABELS {
            seen.insert(name.to_owned());
            return name.to_owned();
        }
        OTHER_TENANTS.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_labels_are_capped() {
        let labels = TenantLabels::default();
        assert_eq!(labels.label(None), ANONYMOUS);
        for i in 0..MAX_TENANT_LABELS {
            let name = format!("t{i}");
            assert_eq!(labels.label(Some(&name)), name);
        }
        assert_eq!(labels.label(Some("late")), OTHER_TENANTS);
        // A tenant seen early keeps its label.
        assert_eq!(labels.label(Some("t0")), "t0");
    }

    #[test]
    fn renders_prometheus_text_with_the_language_series_at_zero() {
        let metrics = Metrics::new(&["python"]);
        let principal = Principal::of_peer(([127, 0, 0, 1], 1).into());
        metrics.execution_ended(
            &principal,
            "python",
            EventKind::ResourceLimit,
            Some(LimitKind::Timeout),
        );
        metrics.refused(&principal, ErrorCode::UnknownLanguage);
        let text = metrics
            .render(Snapshot {
                executions: 2,
                ..Snapshot::default()
            })
            .unwrap_or_else(|err| panic!("{err}"));
        for line in [
            "sluice_executions_ended_total{outcome=\"completed\",language=\"python\"} 0",
            "sluice_executions_ended_total{outcome=\"resource_limit\",language=\"python\"} 1",
            "sluice_executions_resource_limit_total{limit=\"timeout\"} 1",
            "sluice_tenant_executions_ended_total{tenant=\"anonymous\",outcome=\"resource_limit\"} 1",
            "sluice_refusals_total{code=\"unknown_language\"} 1",
            "sluice_executions_running 2",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in:\n{text}");
        }
    }
}
