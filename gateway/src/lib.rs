//! The Sluice gateway: runs code in child processes and streams what it does over
//! WebSocket.
//!
//! [`run`] serves an already-bound listener until a shutdown future resolves, so `main`
//! binds the configured address and tests bind port 0. See `ARCHITECTURE.md` for the map.
#![warn(missing_docs)]

mod config;
mod connection;
mod execution;
mod runtime;
mod server;
mod session;
mod state;
mod sys;

pub use config::{Config, ConfigError, LimitBound, LimitsConfig};
pub use runtime::{RuntimeError, RuntimeSpec, FILE_PLACEHOLDER};
pub use server::{run, GatewayError};
