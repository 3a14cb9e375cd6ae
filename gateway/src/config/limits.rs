//! The per-execution limits: each one's server default and maximum ([`LimitsConfig`]),
//! their smallest values, a credential's ceilings narrowing them, and a request's limits
//! resolved against them ([`EffectiveLimits`]).

use sluice_protocol::Limits;
use std::time::Duration;

/// A limit's server default (used when a request names none) and maximum (a request
/// above it is refused).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitBound {
    /// Applied when the request does not name this limit.
    pub default: u64,
    /// The largest value a request may ask for.
    pub max: u64,
}

/// The per-execution limits the gateway enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitsConfig {
    /// Wall-clock time, in milliseconds.
    pub timeout_ms: LimitBound,
    /// Bytes of stdout plus stderr.
    pub output_bytes: LimitBound,
    /// CPU time of the program's process, in milliseconds (RLIMIT_CPU, whole seconds).
    pub cpu_ms: LimitBound,
    /// Largest file a program may write, in bytes (RLIMIT_FSIZE).
    pub file_size_bytes: LimitBound,
    /// Descriptors a program may have open (RLIMIT_NOFILE).
    pub open_files: LimitBound,
    /// Memory of a program's process tree, in bytes (its cgroup).
    pub memory_bytes: LimitBound,
    /// Processes and threads of a program's tree alive at once (its cgroup).
    pub processes: LimitBound,
    /// Bytes a program may store in its workspace, /tmp and /dev/shm (one tmpfs inside
    /// its jail; enforced with [`Isolation::Namespaces`](super::Isolation::Namespaces)).
    pub workspace_bytes: LimitBound,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            timeout_ms: LimitBound {
                default: 30_000,
                max: 600_000,
            },
            output_bytes: LimitBound {
                default: 16 << 20,
                max: 1 << 30,
            },
            cpu_ms: LimitBound {
                default: 30_000,
                max: 600_000,
            },
            file_size_bytes: LimitBound {
                default: 64 << 20,
                max: 1 << 30,
            },
            open_files: LimitBound {
                default: 1_024,
                max: 4_096,
            },
            memory_bytes: LimitBound {
                default: 512 << 20,
                max: 4 << 30,
            },
            processes: LimitBound {
                default: 64,
                max: 1_024,
            },
            workspace_bytes: LimitBound {
                default: 64 << 20,
                max: 1 << 30,
            },
        }
    }
}

/// Limits in force for one execution, after applying defaults and maxima.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct EffectiveLimits {
    pub(crate) timeout: Duration,
    pub(crate) timeout_ms: u64,
    pub(crate) output_bytes: u64,
    pub(crate) cpu_ms: u64,
    pub(crate) file_size_bytes: u64,
    pub(crate) open_files: u64,
    pub(crate) memory_bytes: u64,
    pub(crate) processes: u64,
    pub(crate) workspace_bytes: u64,
}

impl LimitsConfig {
    /// Applies `requested` to the defaults; a value below the limit's minimum
    /// ([`minimum`]) or above the maximum is refused with a message naming the limit and
    /// the allowed range.
    pub(crate) fn resolve(&self, requested: &Limits) -> Result<EffectiveLimits, String> {
        let pick = |name: &str, asked: Option<u64>, bound: LimitBound| match asked {
            None => Ok(bound.default),
            Some(v) if v < minimum(name) || v > bound.max => Err(format!(
                "limits.{name} must be between {} and {} (got {v})",
                minimum(name),
                bound.max
            )),
            Some(v) => Ok(v),
        };
        let timeout_ms = pick("timeout_ms", requested.timeout_ms, self.timeout_ms)?;
        let output_bytes = pick("output_bytes", requested.output_bytes, self.output_bytes)?;
        Ok(EffectiveLimits {
            timeout: Duration::from_millis(timeout_ms),
            timeout_ms,
            output_bytes,
            cpu_ms: pick("cpu_ms", requested.cpu_ms, self.cpu_ms)?,
            file_size_bytes: pick(
                "file_size_bytes",
                requested.file_size_bytes,
                self.file_size_bytes,
            )?,
            open_files: pick("open_files", requested.open_files, self.open_files)?,
            memory_bytes: pick("memory_bytes", requested.memory_bytes, self.memory_bytes)?,
            processes: pick("processes", requested.processes, self.processes)?,
            workspace_bytes: pick(
                "workspace_bytes",
                requested.workspace_bytes,
                self.workspace_bytes,
            )?,
        })
    }
}

/// The smallest value a limit may take: 1, except `memory_bytes`, whose cgroup a
/// gateway thread joins for an instant around each spawn (cgroup v1): below a MiB the
/// kernel cannot charge that thread's own allocations, and the thread could not leave.
pub(crate) fn minimum(limit: &str) -> u64 {
    match limit {
        "memory_bytes" => MIN_MEMORY_BYTES,
        _ => 1,
    }
}

/// See [`minimum`].
pub(crate) const MIN_MEMORY_BYTES: u64 = 1 << 20;

impl LimitsConfig {
    /// These limits with each maximum lowered to `ceilings`' value where it names one
    /// (a credential's claims), and each default to at most its maximum.
    pub(crate) fn narrowed(&self, ceilings: &Limits) -> Self {
        let narrow = |bound: LimitBound, ceiling: Option<u64>| {
            // Ceilings below a limit's minimum never get here: such a token is invalid.
            let max = ceiling.map_or(bound.max, |c| c.min(bound.max));
            LimitBound {
                default: bound.default.min(max),
                max,
            }
        };
        Self {
            timeout_ms: narrow(self.timeout_ms, ceilings.timeout_ms),
            output_bytes: narrow(self.output_bytes, ceilings.output_bytes),
            cpu_ms: narrow(self.cpu_ms, ceilings.cpu_ms),
            file_size_bytes: narrow(self.file_size_bytes, ceilings.file_size_bytes),
            open_files: narrow(self.open_files, ceilings.open_files),
            memory_bytes: narrow(self.memory_bytes, ceilings.memory_bytes),
            processes: narrow(self.processes, ceilings.processes),
            workspace_bytes: narrow(self.workspace_bytes, ceilings.workspace_bytes),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_applies_default_and_refuses_above_max() {
        let limits = LimitsConfig::default();
        let got = limits.resolve(&Limits::default()).unwrap();
        assert_eq!(got.timeout_ms, 30_000);
        let lowered = limits
            .resolve(&Limits {
                timeout_ms: Some(5),
                output_bytes: Some(7),
                cpu_ms: Some(1500),
                ..Limits::default()
            })
            .unwrap();
        assert_eq!((lowered.output_bytes, lowered.cpu_ms), (7, 1500));
        let err = limits.resolve(&Limits {
            timeout_ms: Some(u64::MAX),
            ..Limits::default()
        });
        assert!(err.unwrap_err().contains("timeout_ms"));
        for zero in [
            Limits {
                timeout_ms: Some(0),
                ..Limits::default()
            },
            Limits {
                open_files: Some(0),
                ..Limits::default()
            },
        ] {
            assert!(limits.resolve(&zero).is_err(), "{zero:?}");
        }
    }
}
