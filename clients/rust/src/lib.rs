//! Rust client for the Sluice gateway (being written).
