//! The audit log (`--audit-log FILE`): one JSON line per finished execution, saying
//! who ran what (tenant, peer, session, id, language, the SHA-256 of the code), how it
//! ended (outcome, limit, duration) and what it used (CPU, memory, output bytes).
//!
//! Executions hand their record to [`Audit::record`], which never waits: the record
//! goes into a bounded channel ([`QUEUE`] records) that one thread of its own drains
//! into the file (opened to append, one `write` per line). When the channel is full
//! (the disk is slow) or a write fails (the disk is full, the path is a directory),
//! the line is dropped, counted in `sluice_audit_lines_dropped_total` and warned about
//! at most once every [`WARN_EVERY`]; it is never retried. A file that cannot be
//! opened is tried again at most once every [`REOPEN_EVERY`], as lines arrive.

use super::Metrics;
use serde::Serialize;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::mpsc;

/// Records waiting for the writer; past this, new ones are dropped.
pub(crate) const QUEUE: usize = 4096;
/// At most one warning about dropped lines per this period.
const WARN_EVERY: Duration = Duration::from_secs(10);
/// A file that could not be opened is tried again after this long, when a line comes.
const REOPEN_EVERY: Duration = Duration::from_secs(5);

/// One finished execution, as its audit line.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct AuditRecord {
    /// When it ended, RFC 3339 in UTC with milliseconds.
    pub(crate) time: String,
    /// The tenant it ran for; `null` for a client that did not authenticate.
    pub(crate) tenant: Option<String>,
    /// Who sent it, as the gateway counts clients (`address 127.0.0.1`, ...).
    pub(crate) principal: String,
    /// The peer's address (an IPv6 peer's /64), when the principal names one.
    pub(crate) peer: Option<String>,
    pub(crate) session: String,
    pub(crate) id: String,
    pub(crate) language: String,
    /// Lowercase hex SHA-256 of the code as sent.
    pub(crate) code_sha256: String,
    /// The terminal event type: `completed`, `cancelled`, `resource_limit`, `error`.
    pub(crate) outcome: &'static str,
    /// For `resource_limit`, which limit.
    pub(crate) limit: Option<&'static str>,
    /// For `error`, its code.
    pub(crate) error_code: Option<&'static str>,
    pub(crate) exit_code: Option<i32>,
    /// From the execute being admitted to its terminal event.
    pub(crate) duration_ms: f64,
    /// The program's CPU time and peak memory, when it ran and they are known.
    pub(crate) cpu_ms: Option<f64>,
    pub(crate) peak_memory_bytes: Option<u64>,
    /// Output bytes delivered (stdout and stderr).
    pub(crate) output_bytes: u64,
}

/// The hex SHA-256 of `code`.
pub(crate) fn code_hash(code: &str) -> String {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(code.as_bytes());
    let mut hex = String::with_capacity(64);
    for byte in digest {
        use std::fmt::Write as _;
        let _ = write!(hex, "{byte:02x}");
    }
    hex
}

/// `time` as RFC 3339 in UTC with milliseconds (`2026-12-01T23:54:40.123Z`).
pub(crate) fn rfc3339(time: SystemTime) -> String {
    let since = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = since.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_millis()
    )
}

/// The proleptic Gregorian date `days` after 1970-01-01.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    // Shift to an era starting on 0000-03-01, so leap days fall at the end of a year.
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// The sending side of the audit log; cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Audit {
    queue: mpsc::Sender<AuditRecord>,
    dropped: Arc<Dropped>,
}

/// Counts dropped lines and rate-limits the warning about them.
#[derive(Debug)]
struct Dropped {
    metrics: Arc<Metrics>,
    path: PathBuf,
    last_warning: Mutex<Option<Instant>>,
}

impl Dropped {
    fn drop_line(&self, why: &dyn std::fmt::Display) {
        let total = self.metrics.audit_dropped();
        let mut last = self
            .last_warning
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if last.is_none_or(|at| at.elapsed() >= WARN_EVERY) {
            *last = Some(Instant::now());
            drop(last);
            tracing::warn!(
                path = %self.path.display(),
                dropped_in_all = total,
                "audit log line dropped: {why}"
            );
        }
    }
}

impl Audit {
    /// Starts the writer thread for `path`. The file is opened by the thread, so a
    /// path that cannot be opened costs lines, never the start.
    pub(crate) fn start(path: &Path, metrics: Arc<Metrics>) -> Self {
        let (queue, lines) = mpsc::channel(QUEUE);
        let dropped = Arc::new(Dropped {
            metrics,
            path: path.to_path_buf(),
            last_warning: Mutex::new(None),
        });
        let writer = Writer {
            path: path.to_path_buf(),
            file: None,
            last_open_attempt: None,
            dropped: dropped.clone(),
        };
        let spawned = std::thread::Builder::new()
            .name("sluice-audit".into())
            .spawn(move || writer.run(lines));
        if let Err(err) = spawned {
            tracing::error!(%err, "could not start the audit log writer; no audit lines will be written");
        }
        Self { queue, dropped }
    }

    /// Queues `record` for the log without waiting; drops it (counted) when the writer
    /// is behind.
    pub(crate) fn record(&self, record: AuditRecord) {
        match self.queue.try_send(record) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.dropped
                    .drop_line(&"the writer is behind (a slow disk?)");
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.dropped.drop_line(&"the writer is not running");
            }
        }
    }
}

/// The writer thread's side.
struct Writer {
    path: PathBuf,
    file: Option<std::fs::File>,
    last_open_attempt: Option<Instant>,
    dropped: Arc<Dropped>,
}

impl Writer {
    /// Writes lines until every sender is gone (the gateway stopped).
    fn run(mut self, mut lines: mpsc::Receiver<AuditRecord>) {
        let mut line = Vec::with_capacity(1024);
        while let Some(record) = lines.blocking_recv() {
            line.clear();
            if let Err(err) = serde_json::to_writer(&mut line, &record) {
                self.dropped.drop_line(&err);
                continue;
            }
            line.push(b'\n');
            self.write(&line);
        }
    }

    fn write(&mut self, line: &[u8]) {
        if self.file.is_none() {
            let due = self
                .last_open_attempt
                .is_none_or(|at| at.elapsed() >= REOPEN_EVERY);
            if !due {
                self.dropped.drop_line(&"the file could not be opened");
                return;
            }
            self.last_open_attempt = Some(Instant::now());
            match std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)
            {
                Ok(file) => self.file = Some(file),
                Err(err) => {
                    self.dropped
                        .drop_line(&format_args!("cannot open the file: {err}"));
                    return;
                }
            }
        }
        if let Some(file) = &mut self.file {
            // One write per line (O_APPEND): a failure loses this line only.
            if let Err(err) = file.write_all(line) {
                self.dropped.drop_line(&format_args!("write failed: {err}"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc_times() {
        let at = |secs: u64, millis: u64| {
            rfc3339(SystemTime::UNIX_EPOCH + Duration::from_millis(secs * 1000 + millis))
        };
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(at(951_782_400, 5), "2000-02-29T00:00:00.005Z");
        assert_eq!(at(1_709_251_199, 999), "2024-02-29T23:59:59.999Z");
        assert_eq!(at(1_798_761_600, 0), "2027-01-01T00:00:00.000Z");
    }

    #[test]
    fn hashes_code() {
        assert_eq!(
            code_hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
