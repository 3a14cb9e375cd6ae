//! Notices a program without the network trying to reach another host. The kernel
//! counts, per network namespace, packets that found no route (`OutNoRoutes` in
//! `/proc/<pid>/net/snmp`, `Ip6OutNoRoutes` in `snmp6`); in the execution's own
//! namespace, whose only interface (loopback) is down, each is a name lookup or a
//! connection that found no network. The counters are read only when the program writes
//! to stderr (where such a failure shows), at most every [`RECHECK`]: a program that
//! writes nothing there costs nothing.

use std::fs::File;
use std::os::unix::fs::FileExt as _;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::time::Instant;

/// The least time between two reads of the counters.
const RECHECK: Duration = Duration::from_millis(250);

/// What the `network_blocked` event says.
pub(crate) const NETWORK_BLOCKED_MESSAGE: &str = "this sandbox has no network: the program tried to reach a host and was refused (programs here run without network access, loopback included; the gateway's operator can allow the network per runtime)";

/// The refused-attempt counts of one network namespace: a program's, or a persistent
/// interpreter's (shared by its cells, each told only of attempts made since the last
/// look).
#[derive(Debug)]
pub(crate) struct NamespaceCounters {
    pid: u32,
    /// Opened at the first look (the files keep the namespace's counts readable after
    /// its processes are gone).
    files: Option<[File; 2]>,
    /// Not a namespace of its own (or gone): never looked at again.
    unavailable: bool,
    /// The count at the last look.
    seen: u64,
}

impl NamespaceCounters {
    /// The counts of the namespace of process `pid` (a program, its jail, an
    /// interpreter), which must stay unreaped while they are read.
    pub(crate) fn of(pid: u32) -> Arc<Mutex<Self>> {
        Arc::new(Mutex::new(Self {
            pid,
            files: None,
            unavailable: false,
            seen: 0,
        }))
    }

    /// True when attempts were counted since the last look.
    fn new_attempts(&mut self) -> bool {
        if self.unavailable {
            return false;
        }
        if self.files.is_none() {
            self.files = open_counters(self.pid);
            if self.files.is_none() {
                self.unavailable = true;
                return false;
            }
        }
        let total = self.files.as_ref().map_or(0, |[v4, v6]| {
            read_counter(v4, no_routes_v4) + read_counter(v6, no_routes_v6)
        });
        let new = total > self.seen;
        self.seen = total;
        new
    }
}

/// One execution's watch.
#[derive(Debug)]
pub(super) struct NetworkWatch {
    counters: Arc<Mutex<NamespaceCounters>>,
    next_look: Instant,
    /// Told already: nothing more to do.
    done: bool,
    /// Looked at least once (the program wrote to stderr).
    looked: bool,
}

impl NetworkWatch {
    /// A watch over `counters` for one execution.
    pub(super) fn new(counters: Arc<Mutex<NamespaceCounters>>) -> Self {
        Self {
            counters,
            next_look: Instant::now(),
            done: false,
            looked: false,
        }
    }

    /// When the execution is over: a cell that was looked at leaves the count as it
    /// ended, so attempts after its last look are not told to the next cell.
    pub(super) fn finish(&self) {
        if self.looked && Arc::strong_count(&self.counters) > 1 {
            let mut counters = self.counters.lock().unwrap_or_else(PoisonError::into_inner);
            counters.new_attempts();
        }
    }

    /// Called when the program wrote to stderr: true the first time the counters show an
    /// attempt to use the network (for a cell: one made since its interpreter's last look).
    pub(super) fn after_stderr(&mut self, now: Instant) -> bool {
        if self.done || now < self.next_look {
            return false;
        }
        self.next_look = now + RECHECK;
        self.looked = true;
        let mut counters = self.counters.lock().unwrap_or_else(PoisonError::into_inner);
        let told = counters.new_attempts();
        self.done = told || counters.unavailable;
        told
    }
}

/// The counters of `pid`'s network namespace, if it is not the gateway's own.
fn open_counters(pid: u32) -> Option<[File; 2]> {
    let theirs = std::fs::read_link(format!("/proc/{pid}/ns/net")).ok()?;
    let ours = std::fs::read_link("/proc/self/ns/net").ok()?;
    if theirs == ours {
        return None;
    }
    // The pid is not reaped before the pump ends, so it names the same process (or its
    // zombie, whose files no longer open) throughout.
    let v4 = File::open(format!("/proc/{pid}/net/snmp")).ok()?;
    let v6 = File::open(format!("/proc/{pid}/net/snmp6")).ok()?;
    Some([v4, v6])
}

/// Reads a counters file from its start and picks one figure out of it.
fn read_counter(file: &File, pick: fn(&str) -> Option<u64>) -> u64 {
    let mut buffer = vec![0u8; 8192];
    let mut len = 0;
    while len < buffer.len() {
        match file.read_at(&mut buffer[len..], len as u64) {
            Ok(0) | Err(_) => break,
            Ok(n) => len += n,
        }
    }
    std::str::from_utf8(&buffer[..len])
        .ok()
        .and_then(pick)
        .unwrap_or(0)
}

/// `OutNoRoutes` of the `Ip:` lines of `/proc/net/snmp` (a line of names, then a line of
/// values).
fn no_routes_v4(snmp: &str) -> Option<u64> {
    let mut ip = snmp.lines().filter(|line| line.starts_with("Ip:"));
    let (names, values) = (ip.next()?, ip.next()?);
    let at = names.split_whitespace().position(|n| n == "OutNoRoutes")?;
    values.split_whitespace().nth(at)?.parse().ok()
}

/// `Ip6OutNoRoutes` of `/proc/net/snmp6` (a name and a value per line).
fn no_routes_v6(snmp6: &str) -> Option<u64> {
    snmp6.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        (words.next()? == "Ip6OutNoRoutes").then(|| words.next()?.parse().ok())?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_counters_are_found_in_the_kernels_tables() {
        let snmp = "Ip: Forwarding DefaultTTL InReceives OutNoRoutes ReasmTimeout\nIp: 2 64 10 3 0\nIcmp: InMsgs\nIcmp: 0\n";
        assert_eq!(no_routes_v4(snmp), Some(3));
        assert_eq!(no_routes_v4("Ip: Forwarding\nIp: 1\n"), None);
        let snmp6 = "Ip6InReceives                   \t4\nIp6OutNoRoutes                  \t7\nIp6ReasmTimeout 0\n";
        assert_eq!(no_routes_v6(snmp6), Some(7));
        assert_eq!(no_routes_v6("Ip6InReceives 4\n"), None);
    }

    #[test]
    fn the_gateways_own_namespace_is_not_watched() {
        let mut watch = NetworkWatch::new(NamespaceCounters::of(std::process::id()));
        assert!(!watch.after_stderr(Instant::now()));
        assert!(watch.done);
    }
}
