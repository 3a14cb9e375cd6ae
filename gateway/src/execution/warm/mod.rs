//! The warm pool: Python interpreters started ahead of their executions, each confined
//! exactly as a cold start would be (own cgroup, own working directory, the jail), each
//! used for one execution and then gone.
//!
//! A background task keeps up to `--warm-pool` entries ready, starting at most
//! `--warm-pool-refill` a second, each weighed down in its cgroup until its claim. An
//! entry runs `bootstrap.py` (`python3 -c`), which writes [`READY`] to its stdout
//! and blocks reading stdin. A claim (`launch::launch`, when the request fits:
//! [`fallback`]) gives the entry's cgroup the request's limits and starts its counters
//! afresh, writes the go [`header`] (the code's length and the request's rlimits, which
//! the bootstrap sets: the gateway may not set another user's) and the code to its
//! stdin, and hands over a [`Launched`] like a cold start's, with `started_at` = the
//! claim. The bootstrap then writes `main.py` and runs it as `python3 main.py` would.
//! Anything that does not fit (no entry, `env` or `args`, other limits, a failed claim
//! step) starts cold: a claim never waits. An entry that died, printed anything or is
//! older than `--warm-pool-max-age-ms` is discarded, killed and cleaned up like a
//! finished execution.
//!
//! Files: `entry.rs` (one ready interpreter: its start and its claim), `pool.rs` (the
//! pool and its filler task), `bootstrap.py` (what each interpreter runs).

mod entry;
mod pool;
#[cfg(test)]
mod tests;

pub(crate) use pool::WarmPool;

use super::launch::{self, Launched};
use super::process::{ChildGroup, Launch};
use super::program::Program;
use super::workdir::Workdir;
use super::{ExecutionSpec, Host};
use crate::config::EffectiveLimits;
use crate::runtime::{Runtime, FILE_PLACEHOLDER};
use crate::sys::{self, Signal};
use std::collections::VecDeque;
use std::io::{self, Write as _};
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::net::unix::pipe;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What `started` says (its `data`) for a warm start.
pub(super) const STARTED_NOTE: &str = "warm";

/// The bootstrap every warm interpreter runs.
const BOOTSTRAP: &str = include_str!("bootstrap.py");

/// What the bootstrap writes to stdout once the interpreter has started.
const READY: &[u8] = b"sluice-warm-ready\n";

/// What it writes instead when the interpreter is older than it supports (3.11); as
/// long as [`READY`].
const TOO_OLD: &[u8] = b"sluice-warm-older\n";

/// The go header's length: `SLUICE`, then the code's length and the rlimits (CPU
/// seconds, file size, open files) as decimal numbers separated by spaces, padded with
/// spaces, then `\n`.
const HEADER_BYTES: usize = 128;

/// The largest stdin pipe a claim asks for, so that the header and code go in one write
/// that never blocks (the kernel's default `pipe-max-size`). An entry's pipe keeps the
/// default size until code that needs more claims it: the program keeps that pipe as
/// its stdin, and input parked in it is outside the gateway's buffer budget.
const STDIN_PIPE_BYTES: usize = 1 << 20;

/// How long an interpreter may take to become ready before it is given up.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// The longest pause between two starts after failures.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The pool's settings (`--warm-pool`, `--warm-pool-refill`, `--warm-pool-max-age-ms`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WarmSettings {
    /// Entries kept ready.
    pub(crate) size: usize,
    /// Most entries started per second.
    pub(crate) refill_per_second: u32,
    /// An entry older than this is discarded rather than claimed.
    pub(crate) max_age: Duration,
}

/// Why an execution started cold (the `reason` label of the misses).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Miss {
    /// No entry was ready.
    Empty,
    /// Another runtime, or the same with other settings (network, arguments).
    Runtime,
    /// The request sets environment variables, which the interpreter reads at start.
    Env,
    /// The request passes arguments.
    Args,
    /// A limit the entry cannot take (a workspace size of its own; processes where no
    /// cgroup counts them).
    Limits,
    /// Code the bootstrap does not take as it is: over 1 MiB (one write to the entry's
    /// stdin), with a NUL byte, or declaring its encoding.
    Code,
    /// A claim step failed (the entry is discarded).
    ClaimFailed,
    /// The gateway is shutting down.
    Closed,
}

impl Miss {
    #[cfg(test)]
    const ALL: [Self; 8] = [
        Self::Empty,
        Self::Runtime,
        Self::Env,
        Self::Args,
        Self::Limits,
        Self::Code,
        Self::ClaimFailed,
        Self::Closed,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Empty => "empty",
            Self::Runtime => "runtime",
            Self::Env => "env",
            Self::Args => "args",
            Self::Limits => "limits",
            Self::Code => "code",
            Self::ClaimFailed => "claim_failed",
            Self::Closed => "closed",
        }
    }
}

/// Why an entry was discarded (the `reason` label of the discards).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Discard {
    /// It could not be started, or never said it was ready.
    StartFailed,
    /// Its interpreter exited.
    Dead,
    /// It wrote something before its claim.
    Output,
    /// It was stopped (by a signal from another program of the same user, without the
    /// jail): claimed, it would hang its execution.
    Stopped,
    /// It was older than the maximum age.
    Stale,
    /// Its claim failed.
    ClaimFailed,
    /// The gateway shut down.
    Shutdown,
}

impl Discard {
    #[cfg(test)]
    const ALL: [Self; 7] = [
        Self::StartFailed,
        Self::Dead,
        Self::Output,
        Self::Stopped,
        Self::Stale,
        Self::ClaimFailed,
        Self::Shutdown,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::StartFailed => "start_failed",
            Self::Dead => "dead",
            Self::Output => "output",
            Self::Stopped => "stopped",
            Self::Stale => "stale",
            Self::ClaimFailed => "claim_failed",
            Self::Shutdown => "shutdown",
        }
    }
}

/// The go header for `code_bytes` of code, to run with `rlimits` (each one set: the
/// entry starts with all three).
pub(super) fn header(code_bytes: usize, rlimits: sys::Rlimits) -> [u8; HEADER_BYTES] {
    // u64::MAX has 20 digits: four numbers and the spaces take at most 90 bytes.
    let text = format!(
        "SLUICE {code_bytes} {} {} {}",
        rlimits.cpu_seconds.unwrap_or(u64::MAX),
        rlimits.file_size_bytes.unwrap_or(u64::MAX),
        rlimits.open_files.unwrap_or(u64::MAX),
    );
    let mut header = [b' '; HEADER_BYTES];
    let bytes = text.as_bytes();
    let n = bytes.len().min(HEADER_BYTES - 1);
    header[..n].copy_from_slice(&bytes[..n]);
    header[HEADER_BYTES - 1] = b'\n';
    header
}

/// The runtimes a pool can serve: the program is run as `INTERPRETER FILE` (the
/// bootstrap replaces exactly that), and it is Python.
pub(crate) fn serves(runtime: &Runtime) -> bool {
    runtime.name == "python"
        && runtime.args == [FILE_PLACEHOLDER]
        && runtime.file_name.ends_with(".py")
}

/// The limits an entry starts with: the maxima for what a claim can lower (CPU time,
/// file size, descriptors, memory, processes) and the default workspace size (the
/// jail's scratch file system is sized at start).
pub(crate) fn entry_limits(config: &crate::config::LimitsConfig) -> Option<EffectiveLimits> {
    let base = config.resolve(&sluice_protocol::Limits::default()).ok()?;
    Some(EffectiveLimits {
        cpu_ms: config.cpu_ms.max,
        file_size_bytes: config.file_size_bytes.max,
        open_files: config.open_files.max,
        memory_bytes: config.memory_bytes.max,
        processes: config.processes.max,
        ..base
    })
}

/// Whether a request must start cold instead of claiming an entry started for
/// `runtime` with `limits`; `lowers_processes`: a claim can give an entry any lower
/// process limit (its cgroup limits processes, or, without the jail, nothing does, as
/// for a cold start); `None`: not known yet, no entry has started.
pub(super) fn fallback(
    runtime: &Runtime,
    limits: &EffectiveLimits,
    lowers_processes: Option<bool>,
    spec: &ExecutionSpec,
) -> Option<Miss> {
    let same_runtime = spec.runtime.name == runtime.name
        && spec.runtime.program == runtime.program
        && spec.runtime.args == runtime.args
        && spec.runtime.file_name == runtime.file_name
        && spec.runtime.env == runtime.env
        && spec.runtime.network == runtime.network;
    let asked = &spec.limits;
    let limits_fit = asked.cpu_ms <= limits.cpu_ms
        && asked.file_size_bytes <= limits.file_size_bytes
        && asked.open_files <= limits.open_files
        && asked.memory_bytes <= limits.memory_bytes
        && asked.processes <= limits.processes
        && (lowers_processes != Some(false) || asked.processes == limits.processes)
        && asked.workspace_bytes == limits.workspace_bytes;
    if !same_runtime {
        Some(Miss::Runtime)
    } else if !spec.env.is_empty() {
        Some(Miss::Env)
    } else if !spec.args.is_empty() {
        Some(Miss::Args)
    } else if !limits_fit {
        Some(Miss::Limits)
    } else if spec.code.len() > STDIN_PIPE_BYTES - HEADER_BYTES
        || spec.code.contains('\0')
        || declares_an_encoding(&spec.code)
    {
        // A NUL byte or an encoding declaration: `compile` of the code as a string
        // would treat them otherwise than the interpreter reading main.py does.
        Some(Miss::Code)
    } else {
        None
    }
}

/// Whether `code` declares its source encoding (PEP 263: a comment naming `coding:` or
/// `coding=` on one of its first two lines).
fn declares_an_encoding(code: &str) -> bool {
    code.lines().take(2).any(|line| {
        let line = line.trim_start_matches(['\u{feff}', ' ', '\t', '\x0c']);
        line.starts_with('#') && (line.contains("coding:") || line.contains("coding="))
    })
}
