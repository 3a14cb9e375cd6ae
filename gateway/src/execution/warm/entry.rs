//! One ready interpreter: started through the same launch as a cold program, and handed
//! over to the execution that claims it.

use super::*;

/// One ready interpreter.
#[derive(Debug)]
pub(super) struct Entry {
    pub(super) workdir: Workdir,
    pub(super) child: ChildGroup,
    pub(super) stdin: OwnedFd,
    pub(super) stdout: pipe::Receiver,
    pub(super) stderr: pipe::Receiver,
    /// The interpreter's pid, where it is the group's leader (no jail).
    pub(super) program_pid: Option<u32>,
    /// How much one write to its stdin can hold.
    pub(super) stdin_capacity: usize,
    pub(super) born: Instant,
}

impl Entry {
    /// Why the entry cannot be claimed any more, if it cannot.
    pub(super) fn spoiled(&self, max_age: Duration) -> Option<Discard> {
        if self.child.has_exited() {
            return Some(Discard::Dead);
        }
        let wrote = |pipe: &pipe::Receiver| sys::pending_bytes(pipe).map_or(true, |n| n > 0);
        if wrote(&self.stdout) || wrote(&self.stderr) {
            return Some(Discard::Output);
        }
        if self.any_process_stopped() {
            return Some(Discard::Stopped);
        }
        (self.born.elapsed() > max_age).then_some(Discard::Stale)
    }

    /// Whether any of its processes is stopped: the interpreter (without the jail), or
    /// any process in its cgroup (the jail, its init and the interpreter). Only a
    /// process of the same user can stop one: without the jail, another program; with
    /// it, a program of another gateway given the same sandbox ids (docs/operating.md
    /// asks for one range per gateway). Claimed, it would hang its execution.
    fn any_process_stopped(&self) -> bool {
        if let Some(pid) = self.program_pid {
            return stopped(pid);
        }
        let Some(procs) = self.child.cgroup_procs_file() else {
            return false;
        };
        std::fs::read_to_string(procs)
            .unwrap_or_default()
            .lines()
            .filter_map(|line| line.trim().parse::<u32>().ok())
            .any(stopped)
    }

    /// The memory it holds: its cgroup's count, else (unjailed) its interpreter's
    /// resident set, else 0.
    pub(super) fn memory_bytes(&self) -> u64 {
        if let Some(used) = self.child.cgroup_memory() {
            return used;
        }
        let Some(pid) = self.program_pid else {
            return 0;
        };
        std::fs::read_to_string(format!("/proc/{pid}/statm"))
            .ok()
            .and_then(|statm| statm.split_whitespace().nth(1)?.parse::<u64>().ok())
            .map_or(0, |pages| pages * 4096)
    }
}

/// What a claim does to an entry, in order; an error leaves the entry to be discarded.
pub(super) fn hand_over(entry: &mut Entry, spec: &ExecutionSpec, host: &Host) -> io::Result<()> {
    let limits = &spec.limits;
    let code = spec.code.as_bytes();
    let needed = code.len() + HEADER_BYTES;
    if needed > entry.stdin_capacity {
        // Grown only for code that needs it (up to STDIN_PIPE_BYTES, which `fallback`
        // checked): the program keeps this pipe as its stdin.
        sys::set_pipe_size(&entry.stdin, needed);
        entry.stdin_capacity = sys::pipe_capacity(&entry.stdin)?;
        if needed > entry.stdin_capacity {
            return Err(io::Error::other(
                "the code does not fit in the entry's stdin",
            ));
        }
    }
    entry.child.attribute_package_proxy(&spec.principal);
    entry.child.hand_over_cgroup(
        limits.memory_bytes,
        limits
            .processes
            .saturating_add(launch::jail_processes(host)),
    )?;
    if entry.child.has_exited() {
        return Err(io::Error::other("the interpreter exited"));
    }
    // The pipe is empty and holds `stdin_capacity` bytes: these writes do not block.
    // The bootstrap sets the rlimits itself (the gateway may lack the right to set
    // another user's, CAP_SYS_RESOURCE): each is at most the entry's, so it can.
    let mut stdin = std::fs::File::from(entry.stdin.try_clone()?);
    stdin.write_all(&header(code.len(), launch::rlimits(limits)))?;
    stdin.write_all(code)?;
    Ok(())
}

/// The entries ready, and whether the pool still takes new ones.
/// Reads exactly [`WARM_READY`] from a new interpreter's stdout.
pub(super) async fn read_ready(stdout: &pipe::Receiver) -> io::Result<()> {
    let mut got = Vec::with_capacity(WARM_READY.len());
    let mut buf = [0_u8; WARM_READY.len()];
    while got.len() < WARM_READY.len() {
        stdout.readable().await?;
        match stdout.try_read(&mut buf[..WARM_READY.len() - got.len()]) {
            Ok(0) => {
                return Err(io::Error::other(
                    "the interpreter exited before it was ready",
                ))
            }
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
            Err(err) => return Err(err),
        }
        if got == TOO_OLD {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "warm starts need Python 3.11 or later",
            ));
        }
        if !WARM_READY.starts_with(&got) && !TOO_OLD.starts_with(&got) {
            return Err(io::Error::other(
                "the interpreter wrote something unexpected",
            ));
        }
    }
    Ok(())
}

/// Whether the process `pid` is stopped (state `T` or `t` in `/proc/PID/stat`). Without
/// the jail, every program runs as the same user and could stop a waiting interpreter.
fn stopped(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            // The state follows the command name, which ends at the last ')'.
            let after = &stat[stat.rfind(')')? + 1..];
            after
                .split_whitespace()
                .next()
                .map(|s| s == "T" || s == "t")
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::stopped;
    use std::process::{Command, Stdio};

    /// Review of f712fbd: a process whose command name looks like the rest of a stat
    /// line (`x) T (y`, taken from the name it was run by) is read right, running and
    /// stopped.
    #[test]
    fn a_command_name_that_looks_like_a_stopped_state_does_not_fool_stopped() {
        let dir = std::env::temp_dir().join(format!("sluice-stat-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        let link = dir.join("x) T (y");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink("/bin/sleep", &link).unwrap_or_else(|e| panic!("{e}"));
        let mut child = Command::new(&link)
            .arg("600")
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{e}"));
        let pid = child.id();
        // The kernel may name the new program (comm) just after the spawn returned (it
        // closes the exec-reporting pipe first): wait for the name, with a deadline.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let comm = loop {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if comm.trim_end() == "x) T (y" || std::time::Instant::now() > deadline {
                break comm;
            }
            std::thread::yield_now();
        };
        let running = stopped(pid);
        let sent = Command::new("kill")
            .args(["-STOP", &pid.to_string()])
            .status()
            .is_ok_and(|s| s.success());
        // Waits (with a deadline, no sleep) until /proc/PID/status, which names the
        // state on a line of its own, says it stopped.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let was_stopped = loop {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            if status.lines().any(|l| l.starts_with("State:\tT")) {
                break true;
            }
            if std::time::Instant::now() > deadline {
                break false;
            }
            std::thread::yield_now();
        };
        let stopped_seen = stopped(pid);
        let _ = child.kill();
        let _ = child.wait();
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(comm.trim_end(), "x) T (y");
        assert!(sent && was_stopped, "the process did not stop");
        assert!(
            !running,
            "a running process with a tricky name read as stopped"
        );
        assert!(
            stopped_seen,
            "a stopped process with a tricky name read as running"
        );
    }
}
