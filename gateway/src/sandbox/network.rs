//! Taking the network away without a jail: each program starts in a new, empty network
//! namespace (only a loopback interface, down), entered just before it execs, so it
//! keeps its pid, its exit status and its signals (`sys::spawn_program`).

/// Whether this host lets the gateway give a program an empty network namespace (it
/// needs root): tried once with `/bin/true`.
pub(crate) fn probe() -> bool {
    crate::sys::can_take_network()
}
