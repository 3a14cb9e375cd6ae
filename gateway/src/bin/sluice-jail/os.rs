//! The jail's system calls: the only `unsafe` in `sluice-jail`. Each wrapper turns a
//! failed call into an `io::Error` naming nothing; callers add what they were doing.
//!
//! The jail is single-threaded, so `fork` here is an ordinary fork: the child may
//! allocate and use the standard library freely. The program's own start
//! ([`ProgramStart::start`]) is the exception: its child shares init's memory until it
//! execs, and makes only system calls on values prepared before.
#![allow(unsafe_code)]

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

/// SIGKILL to every process in this PID namespace but its init.
pub(crate) fn kill_namespace() {
    // SAFETY: kill takes integers; pid -1 from a namespace's init means "all the others".
    unsafe { libc::kill(-1, libc::SIGKILL) };
}

/// Bytes of the stack the program's child runs on until its exec: a handful of calls.
const PROGRAM_STACK_BYTES: usize = 64 << 10;

/// The step of a program's start that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StartStep {
    Directory,
    Privileges,
    /// The limit at this index of [`ProgramStart::limits`].
    Limit(usize),
    Priority,
    Signals,
    Filter,
    Exec,
}

/// Everything a program's start needs, made before it: the child shares init's memory
/// until its exec ([`ProgramStart::start`]), so it makes only system calls on these.
pub(crate) struct ProgramStart {
    directory: CString,
    uid: u32,
    gid: u32,
    /// In a user namespace that denies setgroups there are none to drop.
    in_user_namespace: bool,
    limits: Vec<(libc::__rlimit_resource_t, libc::rlimit)>,
    nice: Option<i32>,
    filter: Vec<libc::sock_filter>,
    /// Where the program is looked for, in order.
    candidates: Vec<CString>,
    _strings: (Vec<CString>, Vec<CString>),
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
}

/// What the child reads and where it says what failed.
struct Shared {
    start: *const ProgramStart,
    filter: libc::sock_fprog,
    /// 0: nothing failed; otherwise 1 + the index of the step in [`StartStep`] order.
    failed_step: i32,
    failed_limit: usize,
    failed_errno: i32,
}

impl ProgramStart {
    /// `command` with exactly `env` (`NAME=value` entries) as its environment: nothing
    /// of the jail's own. A program named without a slash is looked for on the `PATH` of
    /// `env` (or the system's default path), as `execvp` does.
    pub(crate) fn command(
        command: &[impl AsRef<OsStr>],
        env: &[impl AsRef<OsStr>],
    ) -> io::Result<(Vec<CString>, Vec<CString>, Vec<CString>)> {
        let c_strings = |list: &mut dyn Iterator<Item = &OsStr>| -> Option<Vec<CString>> {
            list.map(|item| CString::new(item.as_bytes()).ok())
                .collect()
        };
        let (Some(args), Some(env)) = (
            c_strings(&mut command.iter().map(AsRef::as_ref)),
            c_strings(&mut env.iter().map(AsRef::as_ref)),
        ) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "an argument or environment entry holds a NUL byte",
            ));
        };
        let Some(program) = args.first() else {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "no program"));
        };
        let name = program.as_bytes();
        let candidates: Vec<CString> = if name.contains(&b'/') {
            vec![program.clone()]
        } else {
            let path = env
                .iter()
                .find_map(|entry| entry.as_bytes().strip_prefix(b"PATH="))
                .unwrap_or(b"/usr/local/bin:/usr/bin:/bin");
            path.split(|&byte| byte == b':')
                .map(|dir| {
                    let dir = if dir.is_empty() { &b"."[..] } else { dir };
                    let mut full = dir.to_vec();
                    full.push(b'/');
                    full.extend_from_slice(name);
                    full
                })
                .filter_map(|full| CString::new(full).ok())
                .collect()
        };
        Ok((args, env, candidates))
    }

    /// Puts together a start from its parts; `command` is what [`ProgramStart::command`]
    /// made.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        directory: &Path,
        (uid, gid): (u32, u32),
        in_user_namespace: bool,
        limits: Vec<(libc::__rlimit_resource_t, libc::rlimit)>,
        nice: Option<i32>,
        filter: Vec<libc::sock_filter>,
        (args, env, candidates): (Vec<CString>, Vec<CString>, Vec<CString>),
    ) -> io::Result<Self> {
        let pointers = |strings: &[CString]| -> Vec<*const libc::c_char> {
            strings
                .iter()
                .map(|s| s.as_ptr())
                .chain(std::iter::once(std::ptr::null()))
                .collect()
        };
        Ok(Self {
            directory: c_path(directory)?,
            uid,
            gid,
            in_user_namespace,
            limits,
            nice,
            filter,
            candidates,
            argv: pointers(&args),
            envp: pointers(&env),
            _strings: (args, env),
        })
    }

    /// Starts the program as a child of this process (in its group), the way
    /// `posix_spawn` does: the child shares this process's memory until it execs
    /// (`CLONE_VM | CLONE_VFORK`, this process waiting meanwhile), so no page of it is
    /// copied. In the child: its directory, the unprivileged user with `no_new_privs`, the
    /// limits, the priority, every signal at its default and unblocked, the system-call
    /// filter, exec. Returns its pid and, if it did not get as far as running the
    /// program (it then exits with 125 and must still be waited for), the step that
    /// failed and why.
    pub(crate) fn start(&self) -> io::Result<(libc::pid_t, Option<(StartStep, io::Error)>)> {
        let len = u16::try_from(self.filter.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "filter too long"))?;
        let mut shared = Shared {
            start: self,
            filter: libc::sock_fprog {
                len,
                // The kernel only reads the filter.
                filter: self.filter.as_ptr().cast_mut(),
            },
            failed_step: 0,
            failed_limit: 0,
            failed_errno: 0,
        };
        let mut stack = vec![0_u8; PROGRAM_STACK_BYTES];
        // The stack grows down from its 16-byte-aligned top.
        let top = (stack.as_mut_ptr() as usize + PROGRAM_STACK_BYTES) & !15;
        // No handler of this process's can run in the child: the jail installs none (it
        // starts without std's runtime, which would), and the child has its own copy of
        // the dispositions (no CLONE_SIGHAND), which it resets before it unblocks.
        // SAFETY: `program_main` reads `shared` and what its pointers name, all alive in
        // this frame until clone returns (CLONE_VFORK suspends this process until the
        // child has exec'd or exited), and writes only the three failure fields; the
        // stack is the child's alone.
        let pid = unsafe {
            libc::clone(
                program_main,
                top as *mut libc::c_void,
                libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
                std::ptr::addr_of_mut!(shared).cast(),
            )
        };
        let clone_error = io::Error::last_os_error();
        drop(stack);
        if pid < 0 {
            return Err(clone_error);
        }
        // SAFETY: the child has exec'd or exited; these fields are no longer written.
        let (step, limit, errno) = unsafe {
            (
                std::ptr::read_volatile(std::ptr::addr_of!(shared.failed_step)),
                std::ptr::read_volatile(std::ptr::addr_of!(shared.failed_limit)),
                std::ptr::read_volatile(std::ptr::addr_of!(shared.failed_errno)),
            )
        };
        let step = match step {
            0 => None,
            1 => Some(StartStep::Directory),
            2 => Some(StartStep::Privileges),
            3 => Some(StartStep::Limit(limit)),
            4 => Some(StartStep::Priority),
            5 => Some(StartStep::Signals),
            6 => Some(StartStep::Filter),
            _ => Some(StartStep::Exec),
        };
        Ok((
            pid,
            step.map(|step| (step, io::Error::from_raw_os_error(errno))),
        ))
    }
}

/// The program's child (see [`ProgramStart::start`]): only system calls on prepared
/// values; on failure it records the step and errno in the shared [`Shared`] and exits
/// with 125.
extern "C" fn program_main(raw: *mut libc::c_void) -> libc::c_int {
    let shared = raw.cast::<Shared>();
    // SAFETY: `raw` is the `Shared` of `ProgramStart::start`, alive while this runs, and
    // its `start` the `ProgramStart` it was called on; every pointer in them names a
    // buffer alive as long; each call below is a plain system call.
    unsafe {
        let start = &*(*shared).start;
        let fail = |step: i32, limit: usize, errno: i32| -> libc::c_int {
            std::ptr::write_volatile(std::ptr::addr_of_mut!((*shared).failed_errno), errno);
            std::ptr::write_volatile(std::ptr::addr_of_mut!((*shared).failed_limit), limit);
            std::ptr::write_volatile(std::ptr::addr_of_mut!((*shared).failed_step), step);
            libc::_exit(125)
        };
        if libc::chdir(start.directory.as_ptr()) != 0 {
            return fail(1, 0, errno());
        }
        // The system calls themselves: the C library's wrappers for these may try to
        // reach the other threads it believes the process has, and this child is not
        // the thread it believes it is.
        let groups = libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>());
        let (uid, gid) = (start.uid, start.gid);
        if (groups != 0 && !start.in_user_namespace)
            || libc::syscall(libc::SYS_setresgid, gid, gid, gid) != 0
            || libc::syscall(libc::SYS_setresuid, uid, uid, uid) != 0
            || libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
        {
            return fail(2, 0, errno());
        }
        for (at, (resource, limit)) in start.limits.iter().enumerate() {
            if libc::setrlimit(*resource, limit) != 0 {
                return fail(3, at, errno());
            }
        }
        if let Some(nice) = start.nice {
            if libc::setpriority(libc::PRIO_PROCESS, 0, nice) != 0 {
                return fail(4, 0, errno());
            }
        }
        // Every disposition back to the default and nothing blocked, as a program
        // expects. Through the system call itself: the C library refuses the real-time
        // signals it keeps for itself, but an ignored one would still be inherited
        // across exec. An all-zero kernel sigaction is SIG_DFL with no flags and an
        // empty mask.
        let default = [0_u64; 4];
        for signal in 1..=64 {
            if signal != libc::SIGKILL && signal != libc::SIGSTOP {
                libc::syscall(
                    libc::SYS_rt_sigaction,
                    signal,
                    default.as_ptr(),
                    std::ptr::null_mut::<u64>(),
                    8,
                );
            }
        }
        let mut none = std::mem::zeroed::<libc::sigset_t>();
        libc::sigemptyset(&mut none);
        if libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut()) != 0 {
            return fail(5, 0, errno());
        }
        // Last: from here on the denied calls fail, in this code too.
        if libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            0,
            std::ptr::addr_of!((*shared).filter),
        ) != 0
        {
            return fail(6, 0, errno());
        }
        let mut error = libc::ENOENT;
        for candidate in &start.candidates {
            libc::execve(candidate.as_ptr(), start.argv.as_ptr(), start.envp.as_ptr());
            // As execvp: go on past a directory that lacks it; stop at any other failure.
            match errno() {
                libc::ENOENT | libc::ENOTDIR => {}
                libc::EACCES => error = libc::EACCES,
                other => {
                    error = other;
                    break;
                }
            }
        }
        fail(7, 0, error)
    }
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
