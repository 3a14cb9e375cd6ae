//! What the gateway tells its operator about itself: Prometheus metrics
//! ([`metrics::Metrics`], served at `GET /metrics`), the audit log of finished
//! executions ([`audit::Audit`], `--audit-log`), and the tenant label both use.
//!
//! Everything here is fed by small hooks where events happen (an execution starts or
//! ends, a spawn returns, a socket writes a batch or is given up on, a frame is
//! refused) and costs a few atomic operations when it is fed; the text of `/metrics`
//! is produced only when it is scraped. What is cheaper to read than to track (open
//! connections, sessions, running executions, interpreters) is read from the
//! gateway's semaphores and registry at scrape time ([`metrics::Snapshot`]).
//!
//! The audit log is written by a thread of its own from a bounded channel: a full or
//! slow disk makes it drop lines (counted, and warned about at most every few
//! seconds), never wait or stop the gateway.
//!
//! This module names only `admission` (for [`Principal`]) and the wire types: every
//! other module may feed it.

pub(crate) mod audit;
pub(crate) mod metrics;

use crate::admission::Principal;
use std::sync::Arc;

pub(crate) use audit::{Audit, AuditRecord};
pub(crate) use metrics::{Metrics, SandboxStage, Snapshot};

/// The tenant an execution or a refusal is counted under: its principal's tenant
/// name, or `None` for a client that did not authenticate (counted as
/// [`metrics::ANONYMOUS`]). The one place that maps a principal to a tenant.
pub(crate) fn tenant_of(principal: &Principal) -> Option<&str> {
    match principal {
        Principal::Tenant(name) => Some(name),
        Principal::Address(_) => None,
    }
}

/// The metrics and the audit log, shared by the gateway's state and every execution.
#[derive(Debug, Clone)]
pub(crate) struct Observer {
    pub(crate) metrics: Arc<Metrics>,
    /// `None` without `--audit-log`.
    pub(crate) audit: Option<Audit>,
}

impl Observer {
    /// Metrics labelled with the gateway's `languages`, and the audit log at
    /// `audit_log` when one is configured.
    pub(crate) fn new(languages: &[&str], audit_log: Option<&std::path::Path>) -> Self {
        let metrics = Arc::new(Metrics::new(languages));
        let audit = audit_log.map(|path| Audit::start(path, metrics.clone()));
        Self { metrics, audit }
    }
}

/// The bearer token `/metrics` requires, kept only as its SHA-256 so that comparing
/// a presented token takes the same time whatever it is.
#[derive(Clone)]
pub(crate) struct MetricsToken([u8; 32]);

impl std::fmt::Debug for MetricsToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MetricsToken(redacted)")
    }
}

impl MetricsToken {
    /// Reads the token from `path`: its first line, without surrounding whitespace;
    /// an empty token is refused.
    pub(crate) fn read(path: &std::path::Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|err| {
            format!(
                "cannot read the metrics token file {}: {err}",
                path.display()
            )
        })?;
        let token = text.lines().next().unwrap_or("").trim();
        if token.is_empty() {
            return Err(format!(
                "the metrics token file {} is empty; put the token on its first line",
                path.display()
            ));
        }
        Ok(Self(digest(token.as_bytes())))
    }

    /// True when the `Authorization` header value `header` is `Bearer <this token>`.
    /// The comparison is of SHA-256 digests, in constant time.
    pub(crate) fn admits(&self, header: Option<&[u8]>) -> bool {
        let presented = header
            .and_then(|h| h.strip_prefix(b"Bearer "))
            .map(|t| t.trim_ascii())
            .unwrap_or_default();
        let presented = digest(presented);
        let difference = presented
            .iter()
            .zip(self.0.iter())
            .fold(0_u8, |acc, (a, b)| acc | (a ^ b));
        // A token was configured, so an empty one never matches (its digest differs).
        std::hint::black_box(difference) == 0
    }
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(bytes).into()
}
