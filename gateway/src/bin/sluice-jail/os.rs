//! The jail's system calls: the only `unsafe` in `sluice-jail`. Each wrapper turns a
//! failed call into an `io::Error` naming nothing; callers add what they were doing.
//!
//! The jail is single-threaded, so `fork` here is an ordinary fork: the child may
//! allocate and use the standard library freely. The program's own start
//! ([`ProgramStart::start`]) is the exception: its child shares init's memory until it
//! execs, and makes only system calls on values prepared before.
#![allow(unsafe_code)]

mod program_start;

pub(crate) use program_start::{ProgramStart, StartStep};
use std::ffi::{CStr, CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt as _;
use std::path::Path;

/// The process's entry point, called by the C library's start in place of std's
/// runtime start (`#![no_main]`). std needs nothing from that start here: the arguments
/// and the environment come from the C library, and no signal disposition is assumed
/// (the gateway starts the jail with every signal at its default, and the jail blocks
/// the ones it holds, SIGPIPE among them, before it writes to any pipe of its own).
#[cfg(not(test))]
#[no_mangle]
extern "C" fn main(_argc: libc::c_int, _argv: *const *const libc::c_char) -> libc::c_int {
    open_standard_streams();
    crate::run()
}

/// What std's runtime start would do: a closed standard stream is opened on
/// `/dev/null`, so the jail's own files (its report, the hand-over pipe) never take
/// descriptors 0 to 2, which it later points at `/dev/null` (the second review: started
/// with them closed, the jail lost its program's status and report).
#[cfg(not(test))]
fn open_standard_streams() {
    for fd in 0..=2 {
        // SAFETY: fcntl with F_GETFD only asks whether the descriptor is open.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1 && errno() == libc::EBADF {
            // SAFETY: a NUL-terminated path; open returns the lowest free descriptor,
            // this one, as the ones below it are open. Nothing to do if it fails.
            let opened = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR) };
            if opened != fd {
                // SAFETY: an exit without running anything more.
                unsafe { libc::_exit(125) };
            }
        }
    }
}

fn check(rc: libc::c_long) -> io::Result<libc::c_long> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path holds a NUL byte"))
}

/// Leaves the gateway's namespaces for new ones (`flags` is a set of `CLONE_NEW*`).
pub(crate) fn unshare(flags: libc::c_int) -> io::Result<()> {
    // SAFETY: unshare takes an integer; the jail has one thread.
    check(unsafe { libc::unshare(flags) }.into()).map(drop)
}

/// Enters the network namespace that this process's parent (the gateway) holds open as
/// its descriptor `fd`, copied with `pidfd_getfd`. Refused: a parent that is no longer
/// the one that started the jail (reparented after the gateway died), a descriptor that
/// is not a network namespace (`NS_GET_NSTYPE`; `setns` alone would join a pidfd's), and
/// the namespace the jail is already in (the host's).
pub(crate) fn enter_parents_network(fd: RawFd) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt as _;
    // SAFETY: getppid takes nothing and cannot fail.
    let parent = unsafe { libc::getppid() };
    // SAFETY: pidfd_open takes a pid and flags; it returns a new descriptor or fails.
    let pidfd = check(unsafe { libc::syscall(libc::SYS_pidfd_open, parent, 0) })?;
    // SAFETY: the descriptor was just returned to us and is owned by nobody else.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as RawFd) };
    // SAFETY: as above.
    if unsafe { libc::getppid() } != parent {
        return Err(io::Error::other("the jail's parent changed"));
    }
    // SAFETY: pidfd_getfd takes two descriptors' numbers and flags; the copy it returns
    // is close-on-exec.
    let copy = check(unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) })?;
    // SAFETY: the copy was just returned to us and is owned by nobody else.
    let namespace = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(copy as RawFd) });
    let (given, current) = (
        namespace.metadata()?,
        std::fs::metadata("/proc/self/ns/net")?,
    );
    if (given.dev(), given.ino()) == (current.dev(), current.ino()) {
        return Err(io::Error::other("the namespace the jail is already in"));
    }
    // setns alone would not do: it takes a pidfd too, and joins that process's network
    // namespace (the second review). Only a namespace descriptor answers NS_GET_NSTYPE.
    // SAFETY: an ioctl without arguments on a descriptor we own.
    let kind = unsafe { libc::ioctl(namespace.as_raw_fd(), NS_GET_NSTYPE) };
    if kind != libc::CLONE_NEWNET {
        return Err(io::Error::other("not a network namespace"));
    }
    // SAFETY: setns takes a descriptor we own (open for the call) and an integer.
    check(unsafe { libc::setns(namespace.as_raw_fd(), libc::CLONE_NEWNET) }.into()).map(drop)
}

/// `NS_GET_NSTYPE` of ioctl_ns(2): the `CLONE_NEW*` type of a namespace descriptor.
const NS_GET_NSTYPE: libc::Ioctl = 0xb703;

/// Which side of a fork this is.
pub(crate) enum Forked {
    Parent(libc::pid_t),
    Child,
}

pub(crate) fn fork() -> io::Result<Forked> {
    // SAFETY: the jail is single-threaded, so the child is a complete copy.
    let pid = check(unsafe { libc::fork() }.into())?;
    Ok(if pid == 0 {
        Forked::Child
    } else {
        Forked::Parent(pid as libc::pid_t)
    })
}

/// Waits for `pid` (or any child for -1); the child's pid and raw wait status.
pub(crate) fn wait(pid: libc::pid_t) -> io::Result<(libc::pid_t, libc::c_int)> {
    let mut status = 0;
    loop {
        // SAFETY: status is a valid out-pointer for the call.
        let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
        if rc >= 0 {
            return Ok((rc, status));
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

pub(crate) fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: fds has room for the two descriptors.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }.into())?;
    // SAFETY: both descriptors were just created and belong to nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Points `target` (0, 1 or 2) at `fd`.
pub(crate) fn dup_onto(fd: &OwnedFd, target: RawFd) -> io::Result<()> {
    // SAFETY: dup2 takes two integers; target is one of the standard descriptors.
    check(unsafe { libc::dup2(fd.as_raw_fd(), target) }.into()).map(drop)
}

/// Closes a descriptor the jail inherited but must not keep.
pub(crate) fn close(fd: RawFd) {
    // SAFETY: the descriptor is inherited and owned by no Rust value in this process.
    unsafe { libc::close(fd) };
}

pub(crate) fn mount(
    source: &str,
    target: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> io::Result<()> {
    let source = CString::new(source)?;
    let target = c_path(target)?;
    let fstype = fstype.map(CString::new).transpose()?;
    let data = data.map(CString::new).transpose()?;
    // SAFETY: every pointer is a NUL-terminated string that outlives the call, or null.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
            flags,
            data.as_ref()
                .map_or(std::ptr::null(), |s| s.as_ptr().cast::<libc::c_void>()),
        )
    };
    check(rc.into()).map(drop)
}

pub(crate) const MOUNT_ATTR_RDONLY: u64 = 0x1;
pub(crate) const MOUNT_ATTR_NOSUID: u64 = 0x2;
pub(crate) const MOUNT_ATTR_NODEV: u64 = 0x4;
pub(crate) const MOUNT_ATTR_NOEXEC: u64 = 0x8;
const AT_RECURSIVE: libc::c_uint = 0x8000;
const OPEN_TREE_CLONE: libc::c_uint = 1;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;

/// `struct mount_attr` of mount_setattr(2).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// Sets mount attributes on the mount at `path` and every mount below it.
pub(crate) fn set_tree_attributes(path: &Path, attributes: u64) -> io::Result<()> {
    let path = c_path(path)?;
    set_attributes(libc::AT_FDCWD, &path, 0, attributes)
}

/// Sets mount attributes on a detached tree made by [`clone_tree`], recursively.
pub(crate) fn set_clone_attributes(tree: &OwnedFd, attributes: u64) -> io::Result<()> {
    set_attributes(
        tree.as_raw_fd(),
        c"",
        libc::AT_EMPTY_PATH as libc::c_uint,
        attributes,
    )
}

fn set_attributes(dirfd: RawFd, path: &CStr, flags: libc::c_uint, set: u64) -> io::Result<()> {
    let attr = MountAttr {
        attr_set: set,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: path is NUL-terminated and attr is a valid mount_attr of the size passed.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            dirfd,
            path.as_ptr(),
            flags | AT_RECURSIVE,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    check(rc).map(drop)
}

/// A detached copy of the mount tree at `path`, to attach elsewhere with [`attach_tree`].
pub(crate) fn clone_tree(path: &Path) -> io::Result<OwnedFd> {
    let path = c_path(path)?;
    // SAFETY: path is NUL-terminated; the call returns a new descriptor or fails.
    let fd = check(unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            path.as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint | AT_RECURSIVE,
        )
    })?;
    // SAFETY: the descriptor was just returned to us and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Attaches a tree made by [`clone_tree`] at `target`.
pub(crate) fn attach_tree(tree: &OwnedFd, target: &Path) -> io::Result<()> {
    let target = c_path(target)?;
    // SAFETY: both paths are NUL-terminated; the tree descriptor is valid.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            target.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    check(rc).map(drop)
}

pub(crate) fn set_hostname(name: &str) -> io::Result<()> {
    // SAFETY: the pointer and length describe `name`.
    check(unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) }.into()).map(drop)
}

/// The effective user and group ids of this process.
pub(crate) fn effective_ids() -> (u32, u32) {
    // SAFETY: geteuid and getegid cannot fail.
    unsafe { (libc::geteuid(), libc::getegid()) }
}

/// Dies with SIGKILL when the parent dies.
pub(crate) fn die_with_parent() -> io::Result<()> {
    // SAFETY: prctl with integer arguments.
    check(unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) }.into()).map(drop)
}

pub(crate) fn set_rlimit(
    resource: libc::__rlimit_resource_t,
    soft: u64,
    hard: u64,
) -> io::Result<()> {
    let limit = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: limit is a valid rlimit.
    check(unsafe { libc::setrlimit(resource, &limit) }.into()).map(drop)
}

/// Signals the jail holds back while it waits: a cancel's SIGTERM is meant for the
/// program, which re-raises its own death on the jail once it has one.
const HELD: [libc::c_int; 7] = [
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGPIPE,
];

fn mask(how: libc::c_int, signals: &[libc::c_int]) -> io::Result<()> {
    // SAFETY: set is initialised by sigemptyset before use; oldset may be null.
    unsafe {
        let mut set = std::mem::zeroed::<libc::sigset_t>();
        libc::sigemptyset(&mut set);
        for &signal in signals {
            libc::sigaddset(&mut set, signal);
        }
        let rc = libc::sigprocmask(how, &set, std::ptr::null_mut());
        check(rc.into()).map(drop)
    }
}

/// Gives up the controlling terminal this process inherited from the gateway (its
/// operator's terminal, when the gateway runs in one), so that nothing started from here
/// can open `/dev/tty` and write to that terminal or type into it (`TIOCSTI`): `/dev/tty`
/// opens the caller's controlling terminal whatever the terminal node's owner and mode.
/// A jail the gateway starts for a program leads a session of its own without a
/// terminal (`sys::spawn_program`), so this finds none; one started for a persistent
/// interpreter leads its own process group but not a session, so `setsid` is not open
/// to it: `TIOCNOTTY` from a process that does not lead its session only detaches that
/// process (no signal to anyone), and its children inherit having no terminal. Nothing
/// to do without one (`ENXIO`), without `/dev/tty` (`ENOENT`) or on one hung up (`EIO`).
pub(crate) fn leave_controlling_terminal() -> io::Result<()> {
    // SAFETY: open takes a NUL-terminated path literal and integer flags.
    let fd = unsafe {
        libc::open(
            c"/dev/tty".as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC | libc::O_NONBLOCK,
        )
    };
    if fd < 0 {
        return match errno() {
            libc::ENXIO | libc::ENOENT | libc::EIO => Ok(()),
            _ => Err(io::Error::last_os_error()),
        };
    }
    // SAFETY: an ioctl without arguments on the descriptor just opened, then its close.
    let rc = unsafe { libc::ioctl(fd, libc::TIOCNOTTY) };
    let err = io::Error::last_os_error();
    // SAFETY: closes the descriptor opened above, owned by nobody else.
    unsafe { libc::close(fd) };
    if rc != 0 {
        return Err(err);
    }
    Ok(())
}

pub(crate) fn hold_signals() -> io::Result<()> {
    mask(libc::SIG_BLOCK, &HELD)
}

/// The held signals a gateway sends (a cancel's SIGTERM, a cell's SIGINT) that arrived
/// and wait, blocked, on this process. A child does not inherit them (fork clears what
/// is pending), so whoever forks passes them on. Only these: a SIGPIPE pending on the
/// jail is its own write's, not something for the program.
pub(crate) fn pending_held() -> Vec<libc::c_int> {
    // SAFETY: set is initialised by sigemptyset, then filled by sigpending.
    unsafe {
        let mut set = std::mem::zeroed::<libc::sigset_t>();
        libc::sigemptyset(&mut set);
        if libc::sigpending(&mut set) != 0 {
            return Vec::new();
        }
        [libc::SIGTERM, libc::SIGINT]
            .into_iter()
            .filter(|&signal| libc::sigismember(&set, signal) == 1)
            .collect()
    }
}

/// Sends `signal` to `pid`, or with `pid` 0 to this process's whole group.
pub(crate) fn send(pid: libc::pid_t, signal: libc::c_int) {
    // SAFETY: a plain system call on integers; a failure (the target is gone) is moot.
    unsafe { libc::kill(pid, signal) };
}

/// Ends this process the way the program ended: by the same signal.
pub(crate) fn die_by(signal: libc::c_int) -> ! {
    // SAFETY: plain integer system calls; raise with the default action ends the process.
    unsafe {
        libc::signal(signal, libc::SIG_DFL);
        let _ = mask(libc::SIG_UNBLOCK, &[signal]);
        libc::raise(signal);
    }
    // Signals whose default is to be ignored (none a program dies of) end up here.
    std::process::exit(128 + signal)
}

/// Reaps every child that has already ended, without waiting; true when no child is
/// left (alive or not).
pub(crate) fn reap_ended_children_alone() -> bool {
    let mut status = 0;
    loop {
        // SAFETY: status is a valid out-pointer for the call.
        let rc = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if rc > 0 {
            continue;
        }
        if rc == 0 {
            return false;
        }
        match io::Error::last_os_error().raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::ECHILD) => return true,
            _ => return false,
        }
    }
}

/// Waits for `program` to end, reaping orphans on the way, and passes each SIGHUP and
/// SIGTERM sent to this process (held) on to every other process in its PID namespace:
/// a terminal program leads a session of its own, out of the group the gateway signals,
/// and a shell there puts each job in a group of its own. The program's wait status;
/// SIGKILL's if the program cannot be waited for.
pub(crate) fn wait_passing_hangups(program: libc::pid_t) -> libc::c_int {
    // SIGCHLD blocked too, so that one wait takes whichever comes first; one that came
    // before is seen by the reaping below.
    if mask(libc::SIG_BLOCK, &[libc::SIGCHLD]).is_err() {
        return wait(program).map_or(libc::SIGKILL, |(_, status)| status);
    }
    let mut status = 0;
    loop {
        loop {
            // SAFETY: status is a valid out-pointer for the call.
            let rc = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if rc == program {
                return status;
            }
            if rc > 0 {
                continue;
            }
            if rc == 0 {
                break;
            }
            match errno() {
                libc::EINTR => continue,
                _ => return libc::SIGKILL,
            }
        }
        // SAFETY: set is initialised by sigemptyset before use; info may be null.
        let signal = unsafe {
            let mut set = std::mem::zeroed::<libc::sigset_t>();
            libc::sigemptyset(&mut set);
            for signal in [libc::SIGCHLD, libc::SIGHUP, libc::SIGTERM] {
                libc::sigaddset(&mut set, signal);
            }
            libc::sigwaitinfo(&set, std::ptr::null_mut())
        };
        if signal == libc::SIGHUP || signal == libc::SIGTERM {
            // SAFETY: kill takes integers; -1 from a namespace's init means "all the
            // others".
            unsafe { libc::kill(-1, signal) };
        }
    }
}

/// SIGKILL to every process in this PID namespace but its init.
pub(crate) fn kill_namespace() {
    // SAFETY: kill takes integers; pid -1 from a namespace's init means "all the others".
    unsafe { libc::kill(-1, libc::SIGKILL) };
}

/// The calling thread's errno.
fn errno() -> i32 {
    // SAFETY: __errno_location returns this thread's errno slot.
    unsafe { *libc::__errno_location() }
}

/// Makes this process non-dumpable: its `/proc` entries belong to root and no process
/// without `CAP_SYS_PTRACE` may look into it (memory, root directory, environment).
pub(crate) fn set_non_dumpable() -> io::Result<()> {
    // SAFETY: prctl with integer arguments.
    check(unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) }.into()).map(drop)
}

/// Bytes in use on the file system holding `path`, and whether it is full.
pub(crate) fn usage(path: &Path) -> io::Result<(u64, bool)> {
    let path = c_path(path)?;
    // SAFETY: stat is a valid out-pointer; path is NUL-terminated.
    let stat = unsafe {
        let mut stat = std::mem::zeroed::<libc::statfs>();
        check(libc::statfs(path.as_ptr(), &mut stat).into())?;
        stat
    };
    let block = stat.f_bsize as u64;
    let used = (stat.f_blocks - stat.f_bfree) * block;
    // Out of bytes, or out of inodes (many small files).
    Ok((used, stat.f_bavail == 0 || stat.f_ffree == 0))
}
