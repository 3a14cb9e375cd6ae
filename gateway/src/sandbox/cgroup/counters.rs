//! An execution cgroup's counter files ([`CounterFiles`]): opened once, when the cgroup
//! is made (a pooled cgroup keeps them), and read with `pread`. A check is then one
//! system call per counter, with no path walk through the cgroup file system, which is
//! what lets a gateway watch a thousand live executions.

use std::fs::File;
use std::os::unix::fs::FileExt as _;
use std::path::Path;

/// The open counter files of one execution cgroup; `None` where the host does not
/// count that (or the file could not be opened).
#[derive(Debug, Default)]
pub(super) struct CounterFiles {
    /// Opened already (a pooled cgroup's files are reused as they are).
    opened: bool,
    /// v1 `memory.oom_control` or v2 `memory.events`: `oom_kill`.
    oom: Option<File>,
    /// `pids.events` (v1 or v2): `max`, forks refused at the limit.
    forks: Option<File>,
    /// v2 `cpu.stat`: `usage_usec`, the whole tree's CPU time. Reading it makes the
    /// kernel flush its per-CPU statistics, so it is read less often than the others.
    cpu: Option<File>,
}

/// Longest counter file read: `cpu.stat` is about 250 bytes.
const MAX_COUNTER_FILE: usize = 1024;

impl CounterFiles {
    /// Opens the files once; a later call (a reused cgroup) keeps what is open.
    pub(super) fn open(&mut self, oom: Option<&Path>, forks: Option<&Path>, cpu: Option<&Path>) {
        if self.opened {
            return;
        }
        let open = |path: Option<&Path>| path.and_then(|path| File::open(path).ok());
        self.oom = open(oom);
        self.forks = open(forks);
        self.cpu = open(cpu);
        // A file that should be there and did not open (out of descriptors, say) is
        // tried again when the cgroup is next handed out, rather than read as 0 by
        // every execution it serves (third review).
        self.opened = oom.is_none() == self.oom.is_none()
            && forks.is_none() == self.forks.is_none()
            && cpu.is_none() == self.cpu.is_none();
    }

    /// OOM kills so far (0 where not counted).
    pub(super) fn oom_kills(&self) -> u64 {
        read_counter(self.oom.as_ref(), "oom_kill").unwrap_or(0)
    }

    /// Forks refused at the process limit so far (0 where not counted).
    pub(super) fn failed_forks(&self) -> u64 {
        read_counter(self.forks.as_ref(), "max").unwrap_or(0)
    }

    /// The whole tree's CPU time in microseconds, where v2 counts it.
    pub(super) fn cpu_usec(&self) -> Option<u64> {
        read_counter(self.cpu.as_ref(), "usage_usec")
    }
}

/// The value of `key` in a flat-keyed cgroup file (`name value` per line), read from
/// the start with one `pread`.
fn read_counter(file: Option<&File>, key: &str) -> Option<u64> {
    let mut buf = [0_u8; MAX_COUNTER_FILE];
    let n = file?.read_at(&mut buf, 0).ok()?;
    parse_counter(buf.get(..n)?, key)
}

/// `key`'s value in `name value` lines.
fn parse_counter(text: &[u8], key: &str) -> Option<u64> {
    let text = std::str::from_utf8(text).ok()?;
    text.lines().find_map(|line| {
        let (name, value) = line.split_once(' ')?;
        (name == key).then(|| value.trim().parse().ok())?
    })
}

#[cfg(test)]
mod tests {
    use super::parse_counter;

    #[test]
    fn a_counter_is_found_by_its_whole_name() {
        let stat = b"usage_usec 1500\nuser_usec 1000\nsystem_usec 500\n";
        assert_eq!(parse_counter(stat, "usage_usec"), Some(1500));
        assert_eq!(parse_counter(stat, "system_usec"), Some(500));
        assert_eq!(parse_counter(stat, "usec"), None);
        let oom = b"oom_kill_disable 0\nunder_oom 0\noom_kill 3\n";
        assert_eq!(parse_counter(oom, "oom_kill"), Some(3));
        assert_eq!(parse_counter(b"max 7", "max"), Some(7));
        assert_eq!(parse_counter(b"max x\n", "max"), None);
    }
}
