//! The crate's own tests beyond its files' unit tests: the connection task against a
//! scripted in-memory peer ([`peer`]), one module per concept of the task (executions,
//! slow consumers, attaching, reconnecting), with no gateway and no network; and
//! [`tidy`], which keeps the module graph a DAG.

mod attach;
mod executions;
mod peer;
mod reconnect;
mod slow_consumers;
