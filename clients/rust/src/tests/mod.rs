//! Tests of the connection task against a scripted in-memory peer ([`peer`]), one module
//! per concept of the task: executions, slow consumers, attaching, reconnecting. No
//! gateway and no network.

mod attach;
mod executions;
mod peer;
mod reconnect;
mod slow_consumers;
