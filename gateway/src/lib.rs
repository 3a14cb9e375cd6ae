//! The Sluice gateway library (being written).
