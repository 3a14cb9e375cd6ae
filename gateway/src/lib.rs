//! The Sluice gateway: runs code in child processes and streams what it does over
//! WebSocket.
//!
//! [`run`] serves an already-bound listener until a shutdown future resolves, so `main`
//! binds the configured address and tests bind port 0. See `ARCHITECTURE.md` for the map.
#![warn(missing_docs)]

mod admission;
pub mod auth;
mod buffer_budget;
mod catalog;
mod config;
mod connection;
mod execution;
mod fanout;
mod io_hook;
mod leftovers;
mod meter;
mod observe;
mod packages;
mod runtime;
mod sandbox;
mod server;
mod session;
mod state;
mod sys;
mod workspace;

pub use catalog::runtimes_report;
pub use config::{
    AllowedHost, AuthConfig, Config, ConfigError, Isolation, LimitBound, LimitsConfig, Network,
    PackageIndex, DEFAULT_PACKAGE_CACHE_BYTES, DEFAULT_SANDBOX_ID, DEFAULT_WARM_POOL,
};
pub use runtime::{RuntimeError, RuntimeSpec, FILE_PLACEHOLDER};
pub use sandbox::{jail, HostReport};
pub use server::{
    check_credentials, check_exposure, run, run_with_metrics_listener, run_with_signals,
    GatewayError, Signal,
};

/// Tells glibc's allocator to keep freed memory instead of returning it to the kernel
/// after every large free, as the gateway does for itself when it starts serving; for
/// programs that embed the gateway and measure it (`sluice-bench`).
pub fn keep_freed_memory() {
    sys::keep_freed_memory();
}

/// Raises the process's soft limit on open descriptors to its hard limit and returns
/// the limit now in force: every WebSocket is a descriptor, and many systems start
/// processes with a soft limit of 1024. For programs that embed the gateway
/// (`sluice-bench`); the programs the gateway runs get their own `open_files` limit.
pub fn raise_open_files_limit() -> std::io::Result<u64> {
    sys::raise_open_files_limit()
}

/// Worker threads the gateway's runtime should use by default: half the CPUs, at least
/// one. The programs it runs need the CPU more than the gateway does: on a 2-core
/// machine a second worker thread made executions slower (more wakeups between threads
/// competing with the children), measured with `sluice-bench`.
pub fn default_worker_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
}
