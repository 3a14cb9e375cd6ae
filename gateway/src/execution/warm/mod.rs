//! The warm pools: programs started ahead of their executions, one pool per runtime,
//! each entry confined exactly as a cold start would be (own cgroup, own working
//! directory, the jail), used for one execution and then gone.
//!
//! Two kinds of entry ([`WarmKind`]): for Python, an interpreter running `bootstrap.py`
//! (`python3 -c`), so the interpreter's own start is done too; for every other runtime,
//! a jail whose program process, already the sandbox user under its filter, waits before
//! its exec (`JailSpec::wait_for_go`), so the namespaces, mounts and processes are done.
//!
//! A background task per pool keeps up to `--warm-pool` entries ready, starting at most
//! `--warm-pool-refill` a second, each weighed down in its cgroup until its claim. An
//! entry writes [`WARM_READY`] to its stdout and blocks reading stdin. A claim
//! (`launch::launch`, when the request fits: [`fallback`]) gives the entry's cgroup the
//! request's limits and starts its counters afresh, writes the go [`header`] (the code's
//! length and the request's rlimits, which the entry sets: the gateway may not set
//! another user's) and the code to its stdin, and hands over a [`Launched`] like a cold
//! start's, with `started_at` = the claim. The entry then writes the source file and
//! runs it as a cold start would. Anything that does not fit (no entry, `env` or `args`,
//! other limits, a failed claim step) starts cold: a claim never waits. An entry that
//! died, printed anything or is older than `--warm-pool-max-age-ms` is discarded, killed
//! and cleaned up like a finished execution.
//!
//! Files: `entry.rs` (one ready entry: its start and its claim), `pool.rs` (one
//! runtime's pool and its filler task), `pools.rs` (all of them), `bootstrap.py` (what
//! each Python entry runs).

mod entry;
mod pool;
mod pools;
#[cfg(test)]
mod tests;

pub(crate) use pool::WarmPool;
pub(crate) use pools::WarmPools;

use super::launch::{self, Launched};
use super::process::{ChildGroup, Launch, WarmWait};
use super::program::Program;
use super::workdir::Workdir;
use super::{ExecutionSpec, Host};
use crate::config::EffectiveLimits;
use crate::runtime::{Runtime, FILE_PLACEHOLDER};
use crate::sandbox::jail::{WARM_HEADER_BYTES as HEADER_BYTES, WARM_READY};
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

/// What the Python bootstrap writes instead of [`WARM_READY`] when the interpreter is
/// older than it supports (3.11); as long.
const TOO_OLD: &[u8] = b"sluice-warm-older\n";

/// How a runtime's entries wait for their execution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WarmKind {
    /// A Python interpreter running the bootstrap: its own start is done ahead too.
    Interpreter,
    /// The jail's program process, waiting before its exec.
    Jail,
}

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

/// How a pool serves `runtime`: Python run as `INTERPRETER FILE` (the bootstrap
/// replaces exactly that) with a warm interpreter, any other runtime with a waiting jail.
pub(crate) fn kind_for(runtime: &Runtime) -> WarmKind {
    if runtime.name == "python"
        && runtime.args == [FILE_PLACEHOLDER]
        && runtime.file_name.ends_with(".py")
    {
        WarmKind::Interpreter
    } else {
        WarmKind::Jail
    }
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

/// Whether a request must start cold instead of claiming an entry of `kind` started for
/// `runtime` with `limits`; `lowers_processes`: a claim can give an entry any lower
/// process limit (its cgroup limits processes, or, without the jail, nothing does, as
/// for a cold start); `None`: not known yet, no entry has started.
pub(super) fn fallback(
    kind: WarmKind,
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
        && spec.runtime.network == runtime.network
        // Entries start with the gateway's network: an offline request (a credential
        // without the network, under `--network on`) must not get one that has it.
        && spec.runtime.offline == runtime.offline;
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
        // Written under the entry's file-size rlimit (a cold start's is written by the
        // jail before the program takes its limits).
        || spec.code.len() as u64 > limits.file_size_bytes
        || (kind == WarmKind::Interpreter
            && (spec.code.contains('\0') || declares_an_encoding(&spec.code)))
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
