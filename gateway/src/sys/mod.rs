//! The few Linux calls std and tokio do not offer: process-group signals, pidfds,
//! reaping with resource usage, pipe sizing, a read into a buffer's spare room,
//! descriptor and allocator settings, starting an unjailed program (`spawn`), and
//! pseudo-terminals (`terminal`).
//!
//! This is the only module allowed `unsafe`: each block is a single FFI call whose
//! arguments are plain integers or pointers to locals that outlive the call (and, after
//! a read, the `Vec::set_len` that counts the bytes the kernel wrote).
#![allow(unsafe_code)]

pub(crate) mod beneath;
mod spawn;
mod terminal;

pub(crate) use spawn::{can_take_network, spawn_program, ProgramPlan, StartedProgram};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::time::Duration;
pub(crate) use terminal::{open_terminal, pty_setting, resize_terminal, Terminal};

/// A signal the gateway sends to an execution's process group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Signal {
    /// SIGINT: interrupts a persistent interpreter's running cell.
    Interrupt,
    /// SIGHUP: a terminal execution's terminal hung up (with a cancel's SIGTERM).
    HangUp,
    Terminate,
    Kill,
}

/// Sends `signal` to every process in the group `pgid`. A group that no longer exists
/// (`ESRCH`) is not an error: there is nothing left to signal.
pub(crate) fn signal_group(pgid: u32, signal: Signal) -> io::Result<()> {
    let signo = match signal {
        Signal::Interrupt => libc::SIGINT,
        Signal::HangUp => libc::SIGHUP,
        Signal::Terminate => libc::SIGTERM,
        Signal::Kill => libc::SIGKILL,
    };
    let pgid =
        libc::pid_t::try_from(pgid).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: killpg takes two integers and touches no memory of ours.
    ok_unless_gone(unsafe { libc::killpg(pgid, signo) })
}

/// The result of a kill-like call: success, or nothing left to signal (`ESRCH`).
fn ok_unless_gone(rc: libc::c_int) -> io::Result<()> {
    if rc == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::ESRCH) {
        Ok(())
    } else {
        Err(err)
    }
}

/// A pidfd registered with the tokio reactor: readable once the process has exited.
pub(crate) fn exit_watcher(pid: u32) -> io::Result<tokio::io::unix::AsyncFd<OwnedFd>> {
    let fd = pidfd_open(pid)?;
    // SAFETY: an OwnedFd is a valid open descriptor, and the AsyncFd owns it from here on,
    // so it stays open and names the same pidfd for the AsyncFd's whole life.
    unsafe { tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
        .map_err(io::Error::from)
}

/// One process, held by a pidfd: whatever later takes its pid number, this names the
/// process it was opened for.
#[derive(Debug)]
pub(crate) struct ProcessHandle(OwnedFd);

impl ProcessHandle {
    /// The process `pid` names now (`Err` when none does).
    pub(crate) fn open(pid: u32) -> io::Result<Self> {
        pidfd_open(pid).map(Self)
    }

    /// True while the process has not been reaped: until then no other process can
    /// have its pid.
    pub(crate) fn unreaped(&self) -> bool {
        // SAFETY: pidfd_send_signal takes a descriptor we own, signal 0 (no signal, a
        // check only), a null siginfo and no flags.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.0.as_raw_fd(),
                0,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        rc == 0
    }
}

/// Opens a pidfd for `pid`: it becomes readable when the process exits, without reaping it.
fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    let pid =
        libc::pid_t::try_from(pid).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: pidfd_open takes a pid and flags; it returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, libc::PIDFD_NONBLOCK) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = i32::try_from(fd).map_err(|_| io::Error::other("pidfd out of range"))?;
    // SAFETY: the kernel just returned this descriptor and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// How a reaped process ended, and what it used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Reaped {
    /// `Some(code)` when it exited.
    pub(crate) exit_code: Option<i32>,
    /// `Some(signal)` when a signal killed it.
    pub(crate) signal: Option<i32>,
    /// User plus system CPU time of the process and the children it waited for.
    pub(crate) cpu: Duration,
    /// Peak resident set size of the largest of those processes, in bytes.
    pub(crate) peak_memory_bytes: u64,
}

/// Reaps `pid` if it has exited (`WNOHANG`); `Ok(None)` while it still runs.
pub(crate) fn try_reap(pid: u32) -> io::Result<Option<Reaped>> {
    wait4(pid, libc::WNOHANG)
}

fn wait4(pid: u32, flags: libc::c_int) -> io::Result<Option<Reaped>> {
    let pid =
        libc::pid_t::try_from(pid).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let mut status: libc::c_int = 0;
    // SAFETY: all-zero is a valid `rusage` (plain integers and timevals).
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `status` and `usage` are live locals the kernel writes into.
    let rc = unsafe { libc::wait4(pid, &mut status, flags, &mut usage) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    if rc == 0 {
        return Ok(None);
    }
    let timeval = |tv: libc::timeval| {
        Duration::from_secs(u64::try_from(tv.tv_sec).unwrap_or(0))
            + Duration::from_micros(u64::try_from(tv.tv_usec).unwrap_or(0))
    };
    let (exit_code, signal) = if libc::WIFEXITED(status) {
        (Some(libc::WEXITSTATUS(status)), None)
    } else if libc::WIFSIGNALED(status) {
        (None, Some(libc::WTERMSIG(status)))
    } else {
        (None, None)
    };
    Ok(Some(Reaped {
        exit_code,
        signal,
        cpu: timeval(usage.ru_utime) + timeval(usage.ru_stime),
        peak_memory_bytes: u64::try_from(usage.ru_maxrss)
            .unwrap_or(0)
            .saturating_mul(1024),
    }))
}

/// Waits for `pid` to exit and reaps it.
pub(crate) fn reap_blocking(pid: u32) -> io::Result<Reaped> {
    loop {
        match wait4(pid, 0) {
            Ok(Some(reaped)) => return Ok(reaped),
            Ok(None) => continue,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err),
        }
    }
}

/// Tells glibc's allocator to keep freed memory instead of returning it to the kernel
/// after every large free. The gateway allocates and frees ~64 KiB event buffers at a
/// high rate; with glibc's defaults each one can cost a round of page faults and
/// `madvise` (measured with `sluice-bench`: the page-fault path dominated the profile).
pub(crate) fn keep_freed_memory() {
    // SAFETY: mallopt takes two integers and only adjusts allocator parameters.
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, 64 << 20);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
    }
}

/// Gives the kernel back the free memory of every malloc arena (glibc's `malloc_trim`):
/// after a peak glibc keeps freed pages in its arenas (those of worker threads are never
/// trimmed on their own), so the gateway's resident size would stay at its peak.
/// Walks every arena: call it after a peak, not on a hot path.
pub(crate) fn return_freed_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim takes an integer and only releases free allocator pages.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Marks every descriptor above stderr close-on-exec, so nothing the gateway inherited
/// (a supervisor's pipe, a log file) leaks into the programs it starts. Descriptors the
/// gateway opens itself are already close-on-exec.
pub(crate) fn close_inherited_descriptors_on_exec() {
    // SAFETY: close_range takes integers; with CLOSE_RANGE_CLOEXEC it only sets a flag.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if rc != 0 {
        let err = io::Error::last_os_error();
        tracing::warn!(%err, "could not mark inherited descriptors close-on-exec");
    }
}

/// Asks the kernel for a pipe buffer of `bytes`. The kernel may refuse (above
/// `/proc/sys/fs/pipe-max-size` for an unprivileged gateway); the pipe then keeps its size,
/// which is harmless.
pub(crate) fn set_pipe_size(fd: &impl AsRawFd, bytes: usize) {
    let Ok(bytes) = libc::c_int::try_from(bytes) else {
        return;
    };
    // SAFETY: fcntl(F_SETPIPE_SZ) takes a descriptor we own and an integer.
    let rc = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETPIPE_SZ, bytes) };
    if rc < 0 {
        tracing::debug!(err = %io::Error::last_os_error(), "pipe buffer not enlarged");
    }
}

/// Bytes waiting to be read in a pipe (`FIONREAD`), without reading them.
pub(crate) fn pending_bytes(fd: &impl AsRawFd) -> io::Result<usize> {
    let mut pending: libc::c_int = 0;
    // SAFETY: ioctl(FIONREAD) takes a descriptor we hold open and a pointer to the live
    // integer above, which it writes.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::FIONREAD, &mut pending) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(usize::try_from(pending).unwrap_or(0))
}

/// The capacity of a pipe in bytes (`F_GETPIPE_SZ`).
pub(crate) fn pipe_capacity(fd: &impl AsRawFd) -> io::Result<usize> {
    // SAFETY: fcntl(F_GETPIPE_SZ) takes a descriptor we hold open.
    let rc = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETPIPE_SZ) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(usize::try_from(rc).unwrap_or(0))
}

/// Reads from `fd` into `buf`'s spare capacity, at most `max` bytes, and returns how
/// many it appended (0 at end of file). Unlike std's `Read`, the room need not be
/// initialised first, so a pipe is read into a fresh 64 KiB buffer without zeroing it.
pub(crate) fn read_into(fd: BorrowedFd<'_>, buf: &mut Vec<u8>, max: usize) -> io::Result<usize> {
    let spare = buf.spare_capacity_mut();
    let want = spare.len().min(max);
    // SAFETY: read(2) writes at most `want` bytes to the start of the spare capacity,
    // which `buf` owns and which is at least that long.
    let n = unsafe { libc::read(fd.as_raw_fd(), spare.as_mut_ptr().cast(), want) };
    let n = usize::try_from(n).map_err(|_| io::Error::last_os_error())?;
    // SAFETY: the kernel initialised the first `n` (at most `want`) bytes of the spare
    // capacity.
    unsafe { buf.set_len(buf.len() + n) };
    Ok(n)
}

/// The descriptor number a persistent interpreter finds its control socket at.
pub(crate) const CONTROL_FD: i32 = 3;

/// Sends `data` on a Unix stream socket with `fds` attached (`SCM_RIGHTS`); returns the
/// bytes sent. Never blocks on a non-blocking socket (`WouldBlock` instead).
pub(crate) fn send_with_fds(
    socket: &impl AsRawFd,
    data: &[u8],
    fds: &[std::os::fd::RawFd],
) -> io::Result<usize> {
    let fd_bytes = std::mem::size_of_val(fds);
    let fd_bytes32 =
        u32::try_from(fd_bytes).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: CMSG_SPACE is pure arithmetic on its argument.
    let space = usize::try_from(unsafe { libc::CMSG_SPACE(fd_bytes32) })
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // u64 elements keep the control buffer aligned for `cmsghdr`.
    let mut control = vec![0u64; space.div_ceil(8)];
    let mut iov = libc::iovec {
        iov_base: data.as_ptr().cast_mut().cast(),
        iov_len: data.len(),
    };
    // SAFETY: all-zero is a valid `msghdr` (null pointers, zero lengths).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        // SAFETY: `msg` points at `control`, which has room for one header and the
        // descriptors (CMSG_SPACE above); the header pointer is inside that buffer.
        unsafe {
            let header = libc::CMSG_FIRSTHDR(&msg);
            if header.is_null() {
                return Err(io::Error::other("no room for the control message"));
            }
            (*header).cmsg_level = libc::SOL_SOCKET;
            (*header).cmsg_type = libc::SCM_RIGHTS;
            (*header).cmsg_len = libc::CMSG_LEN(fd_bytes32) as _;
            std::ptr::copy_nonoverlapping(
                fds.as_ptr().cast::<u8>(),
                libc::CMSG_DATA(header),
                fd_bytes,
            );
        }
    }
    // SAFETY: `msg` and everything it points to (iov, data, control) outlive the call.
    let sent = unsafe { libc::sendmsg(socket.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
    usize::try_from(sent).map_err(|_| io::Error::last_os_error())
}

/// Kernel resource limits set in a program's process before it starts (the floor every
/// other layer builds on). `None` leaves a limit as the gateway has it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Rlimits {
    /// RLIMIT_CPU: SIGXCPU at this many seconds of CPU, SIGKILL one second later.
    pub(crate) cpu_seconds: Option<u64>,
    /// RLIMIT_FSIZE: a write past this size raises SIGXFSZ.
    pub(crate) file_size_bytes: Option<u64>,
    /// RLIMIT_NOFILE: opening more descriptors fails with EMFILE.
    pub(crate) open_files: Option<u64>,
}

impl Rlimits {
    fn entries(self) -> [(libc::__rlimit_resource_t, Option<(u64, u64)>); 3] {
        [
            (
                libc::RLIMIT_CPU,
                self.cpu_seconds.map(|s| (s, s.saturating_add(1))),
            ),
            (libc::RLIMIT_FSIZE, self.file_size_bytes.map(|b| (b, b))),
            (libc::RLIMIT_NOFILE, self.open_files.map(|n| (n, n))),
        ]
    }
}

/// The gateway's own hard limit on open descriptors: a program cannot be given more.
pub(crate) fn open_files_hard_limit() -> Option<u64> {
    // SAFETY: all-zero is a valid rlimit; getrlimit writes into the live local.
    let mut limit: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: getrlimit takes a resource id and a pointer to the local above.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    (rc == 0).then_some(limit.rlim_max as u64)
}

/// Raises this process's soft limit on open descriptors to its hard limit (each socket
/// is one descriptor); returns the soft limit now in force. Programs never inherit it:
/// each gets its own `open_files` limit.
pub(crate) fn raise_open_files_limit() -> io::Result<u64> {
    // SAFETY: all-zero is a valid rlimit; getrlimit writes into the live local.
    let mut limit: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: getrlimit takes a resource id and a pointer to the local above.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // An unlimited hard limit cannot be the soft one: the kernel caps descriptors at
    // fs.nr_open.
    let ceiling = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|text| text.trim().parse::<libc::rlim_t>().ok())
        .map_or(limit.rlim_max, |nr_open| nr_open.min(limit.rlim_max));
    if limit.rlim_cur < ceiling {
        limit.rlim_cur = ceiling;
        // SAFETY: setrlimit takes a resource id and a pointer to the initialised local.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(limit.rlim_cur as u64)
}

/// Sends SIGKILL to one process (a member of an execution's cgroup). A process that is
/// already gone (`ESRCH`) is not an error.
pub(crate) fn kill(pid: u32) -> io::Result<()> {
    let pid =
        libc::pid_t::try_from(pid).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: kill takes two integers and touches no memory of ours.
    ok_unless_gone(unsafe { libc::kill(pid, libc::SIGKILL) })
}

/// True when the gateway runs as root (effective uid 0).
pub(crate) fn is_root() -> bool {
    effective_uid() == 0
}

/// The gateway's effective user id.
pub(crate) fn effective_uid() -> u32 {
    // SAFETY: geteuid takes nothing and cannot fail.
    unsafe { libc::geteuid() }
}

/// The gateway's effective gid.
pub(crate) fn effective_gid() -> u32 {
    // SAFETY: getegid takes nothing and cannot fail.
    unsafe { libc::getegid() }
}

/// The niceness of a program where no cpu cgroup gives executions a share below the
/// gateway's: a nice-10 process weighs about a tenth of the gateway's threads.
pub(crate) const PROGRAM_NICE: i32 = 10;

/// Makes a new, empty network namespace (a loopback interface, down, and nothing else)
/// and returns a descriptor of it, without leaving the calling thread in it: the thread
/// enters it (`unshare`, which moves only the calling thread), opens it and goes back to
/// the namespace it was in. Needs root. Meant for a thread of its own: should going back
/// fail ([`NetworkNamespaceError::Stranded`]), the thread is left inside the new
/// namespace and must create nothing more (no socket) and end.
pub(crate) fn new_network_namespace() -> Result<OwnedFd, NetworkNamespaceError> {
    const THIS_THREADS: &str = "/proc/thread-self/ns/net";
    // std opens with O_CLOEXEC: no program the gateway starts inherits these.
    let home = std::fs::File::open(THIS_THREADS).map_err(NetworkNamespaceError::Make)?;
    // SAFETY: unshare takes an integer; CLONE_NEWNET moves only the calling thread.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return Err(NetworkNamespaceError::Make(io::Error::last_os_error()));
    }
    let made = std::fs::File::open(THIS_THREADS);
    // SAFETY: setns takes a descriptor we own (open for the call) and an integer.
    if unsafe { libc::setns(home.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(NetworkNamespaceError::Stranded(io::Error::last_os_error()));
    }
    made.map(OwnedFd::from).map_err(NetworkNamespaceError::Make)
}

/// Listens on `127.0.0.1:port` inside the network namespace `namespace` (a descriptor
/// from [`new_network_namespace`]), with its loopback interface brought up: the socket
/// belongs to that namespace for good, wherever the gateway accepts on it, so programs
/// inside reach the gateway through it and nothing else. Done on a thread of its own,
/// which enters the namespace, makes the socket and ends; a thread that could not go
/// back ends there too, having made nothing else. Needs root.
pub(crate) fn listen_in_network_namespace(
    namespace: BorrowedFd<'_>,
    port: u16,
) -> io::Result<std::net::TcpListener> {
    let namespace = namespace.try_clone_to_owned()?;
    std::thread::Builder::new()
        .name("sluice-netns-listen".into())
        .spawn(move || -> io::Result<std::net::TcpListener> {
            const THIS_THREADS: &str = "/proc/thread-self/ns/net";
            let home = std::fs::File::open(THIS_THREADS)?;
            // SAFETY: setns takes a descriptor we own and an integer; it moves only
            // this thread.
            if unsafe { libc::setns(namespace.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
            let made = loopback_up()
                .and_then(|()| std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, port)));
            // SAFETY: as above, back to the namespace the thread started in.
            if unsafe { libc::setns(home.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                // Stranded: the thread ends now, and the socket (made inside, as
                // meant) is still only the namespace's.
                let err = io::Error::last_os_error();
                return Err(io::Error::other(format!(
                    "going back to the gateway's network namespace: {err}"
                )));
            }
            made
        })?
        .join()
        .map_err(|_| io::Error::other("the namespace listener's thread panicked"))?
}

/// Brings up the loopback interface of the calling thread's network namespace.
fn loopback_up() -> io::Result<()> {
    // SAFETY: socket takes integers; the descriptor is owned below.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor just returned and owned by nothing else.
    let socket = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: ifreq is plain data, valid zeroed.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (slot, byte) in request.ifr_name.iter_mut().zip(b"lo\0") {
        *slot = *byte as libc::c_char;
    }
    // SAFETY: the ioctls read and write the ifreq we own, on a socket we own.
    unsafe {
        if libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFFLAGS, &mut request) != 0 {
            return Err(io::Error::last_os_error());
        }
        request.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        if libc::ioctl(socket.as_raw_fd(), libc::SIOCSIFFLAGS, &request) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Why [`new_network_namespace`] gave no namespace.
#[derive(Debug, thiserror::Error)]
pub(crate) enum NetworkNamespaceError {
    /// None was made (not root, or the kernel refused); the thread is where it was.
    #[error("making a network namespace: {0}")]
    Make(#[source] io::Error),
    /// The thread could not go back to its own namespace: it is in the new one.
    #[error("going back to the gateway's network namespace: {0}")]
    Stranded(#[source] io::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_into_appends_at_most_max_and_reports_the_end() {
        use std::io::Write as _;
        use std::os::fd::AsFd as _;
        let (reader, mut writer) = std::io::pipe().expect("pipe");
        writer.write_all(b"hello world").expect("write");
        let mut buf = Vec::with_capacity(64);
        buf.extend_from_slice(b">");
        assert_eq!(read_into(reader.as_fd(), &mut buf, 5).expect("read"), 5);
        assert_eq!(read_into(reader.as_fd(), &mut buf, 64).expect("read"), 6);
        assert_eq!(buf, b">hello world");
        drop(writer);
        assert_eq!(read_into(reader.as_fd(), &mut buf, 64).expect("read"), 0);
        let mut full = Vec::with_capacity(1);
        full.push(0);
        assert_eq!(
            read_into(reader.as_fd(), &mut full, 64).expect("no room"),
            0
        );
    }

    fn open_files_limit() -> libc::rlimit {
        // SAFETY: all-zero is a valid rlimit; getrlimit writes into the live local.
        let mut limit: libc::rlimit = unsafe { std::mem::zeroed() };
        // SAFETY: getrlimit takes a resource id and a pointer to the local above.
        assert_eq!(
            unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) },
            0
        );
        limit
    }

    #[test]
    fn the_open_files_limit_is_raised_to_the_hard_limit() {
        let before = open_files_limit();
        // One below where it was (not lower: other tests of this process hold
        // descriptors), so that raising it has something to do.
        let lowered = libc::rlimit {
            rlim_cur: before.rlim_cur - 1,
            rlim_max: before.rlim_max,
        };
        // SAFETY: setrlimit takes a resource id and a pointer to the local above.
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lowered) }, 0);
        let raised = raise_open_files_limit().expect("the limit is raised");
        let now = open_files_limit();
        assert_eq!(raised as libc::rlim_t, now.rlim_cur);
        assert!(
            now.rlim_cur >= before.rlim_cur,
            "{} < {}",
            now.rlim_cur,
            before.rlim_cur
        );
        assert!(now.rlim_cur <= now.rlim_max);
    }
}
