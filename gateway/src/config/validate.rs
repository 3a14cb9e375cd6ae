//! [`Config::validate`]: the values a gateway refuses to start with, each a
//! [`ConfigError`].

use super::{minimum, Config};
use std::time::Duration;

/// A configuration the gateway refuses to start with.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// A size or count that must be positive is zero.
    #[error("{0} must be greater than zero")]
    Zero(&'static str),
    /// A limit's default is above its maximum.
    #[error("the default {0} ({1}) is above its maximum ({2})")]
    DefaultAboveMax(&'static str, u64, u64),
    /// The output chunk cannot fit in a frame a client will accept.
    #[error("chunk size {0} must be at least 1024 bytes")]
    ChunkTooSmall(usize),
    /// A limit's default is below the smallest value it may take.
    #[error("the default {0} ({1}) is below its minimum ({2})")]
    BelowMinimum(&'static str, u64, u64),
    /// The sandbox user or group is root.
    #[error("programs never run as root: the sandbox uid and gid must not be 0")]
    RootSandbox,
    /// More warm interpreters than executions may run at once.
    #[error("warm_pool ({0}) must not be above max_executions ({1})")]
    WarmPoolTooLarge(usize, usize),
}

impl Config {
    /// Checks the values that would make the gateway misbehave.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (name, value) in [
            ("max_frame_bytes", self.max_frame_bytes),
            ("max_connections", self.max_connections),
            ("max_executions", self.max_executions),
            (
                "max_executions_per_connection",
                self.max_executions_per_connection,
            ),
            ("replay_events", self.replay_events),
            ("replay_bytes", self.replay_bytes),
            ("max_sessions", self.max_sessions),
            ("max_kernels", self.max_kernels),
            ("stdin_queue", self.stdin_queue),
            ("stdin_queue_bytes", self.stdin_queue_bytes),
            ("max_connections_per_peer", self.connections_per_peer()),
            ("max_sessions_per_peer", self.sessions_per_peer()),
            ("max_executions_per_peer", self.executions_per_peer()),
            ("max_kernels_per_peer", self.kernels_per_peer()),
            ("idle_timeout", millis(self.idle_timeout)),
            ("ping_interval", millis(self.ping_interval)),
            ("buffer_budget_bytes", self.buffer_budget_bytes.unwrap_or(1)),
            (
                "message_deadline_ms",
                usize::from(!self.message_deadline.is_zero()),
            ),
            ("lead_timeout_ms", usize::from(!self.lead_timeout.is_zero())),
            ("warm_pool_refill", self.warm_pool_refill as usize),
            (
                "warm_pool_max_age_ms",
                usize::from(!self.warm_pool_max_age.is_zero()),
            ),
        ] {
            if value == 0 {
                return Err(ConfigError::Zero(name));
            }
        }
        if self.sandbox_uid == 0 || self.sandbox_gid == 0 {
            return Err(ConfigError::RootSandbox);
        }
        if self.chunk_bytes < 1024 {
            return Err(ConfigError::ChunkTooSmall(self.chunk_bytes));
        }
        if let Some(warm) = self.warm_pool.filter(|n| *n > self.max_executions) {
            return Err(ConfigError::WarmPoolTooLarge(warm, self.max_executions));
        }
        for (name, bound) in [
            ("timeout_ms", self.limits.timeout_ms),
            ("output_bytes", self.limits.output_bytes),
            ("cpu_ms", self.limits.cpu_ms),
            ("file_size_bytes", self.limits.file_size_bytes),
            ("open_files", self.limits.open_files),
            ("memory_bytes", self.limits.memory_bytes),
            ("processes", self.limits.processes),
            ("workspace_bytes", self.limits.workspace_bytes),
        ] {
            if bound.default == 0 || bound.max == 0 {
                return Err(ConfigError::Zero(name));
            }
            if bound.default < minimum(name) {
                return Err(ConfigError::BelowMinimum(
                    name,
                    bound.default,
                    minimum(name),
                ));
            }
            if bound.default > bound.max {
                return Err(ConfigError::DefaultAboveMax(name, bound.default, bound.max));
            }
        }
        Ok(())
    }
}

/// Whole milliseconds of `d`, saturating (for the zero checks).
fn millis(d: Duration) -> usize {
    usize::try_from(d.as_millis()).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        assert_eq!(Config::default().validate(), Ok(()));
    }

    #[test]
    fn per_peer_caps_default_to_a_quarter_and_refuse_zero() {
        let config = Config {
            max_connections: 2,
            max_executions: 100,
            ..Config::default()
        };
        assert_eq!(config.connections_per_peer(), 1);
        assert_eq!(config.executions_per_peer(), 25);
        assert_eq!(config.sessions_per_peer(), 8_192 / 4);
        let zero = Config {
            max_sessions_per_peer: Some(0),
            ..Config::default()
        };
        assert_eq!(
            zero.validate(),
            Err(ConfigError::Zero("max_sessions_per_peer"))
        );
        let no_idle = Config {
            idle_timeout: Duration::ZERO,
            ..Config::default()
        };
        assert_eq!(no_idle.validate(), Err(ConfigError::Zero("idle_timeout")));
        let huge_pool = Config {
            warm_pool: Some(2_000),
            max_executions: 1_000,
            ..Config::default()
        };
        assert_eq!(
            huge_pool.validate(),
            Err(ConfigError::WarmPoolTooLarge(2_000, 1_000))
        );
    }
}
