//! The end-to-end suite as one test binary: each module is what used to be a test file
//! of its own (`basics`, `cli`, ...), so a test is still named by its file, as
//! `basics::exit_codes_propagate` (one area: `cargo test -p sluice-tests --test e2e --
//! basics::`). One binary links once instead of twenty times, which is most of a build
//! on two cores.
//!
//! Tests in one binary share a process: a test must not assume it is alone in it (its
//! gateway's cgroups and processes are found by its own markers, never by counting the
//! process's). The one test that measures the process itself (its peak memory) is a
//! binary of its own, `tests/tests/slow_subscriber.rs`.

mod auth;
mod auth_clients;
mod basics;
mod client;
mod client_files;
mod client_sessions;
mod concurrency;
mod credentials;
mod discovery;
mod drain;
mod encoding;
mod environments;
mod errors;
mod fairness;
mod files;
mod hardening;
mod isolation;
mod jail_review;
mod kernel_idle;
mod lifecycle;
mod limits;
mod lockout;
mod memory;
mod node_cells;
mod notebook;
mod observe;
mod offline;
mod packages;
mod persistent;
mod playground;
mod privilege;
mod queries;
mod redteam;
mod review13;
mod review_discovery;
mod review_files;
mod review_fork;
mod review_notebook;
mod review_offline;
mod review_shared_cpu;
mod review_tty;
mod review_warm;
mod review_warm_jail;
mod review_workspace;
mod sandbox;
mod session_abuse;
mod sessions;
mod stdin_cancel;
mod terminal;
mod warm;
mod warm_jail;
mod workspace;
mod ws_conformance;
