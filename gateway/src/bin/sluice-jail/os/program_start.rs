//! The program's own start ([`ProgramStart`]): everything is prepared in init, then a
//! child that shares init's memory until its exec (`clone(CLONE_VM | CLONE_VFORK)`, as
//! `posix_spawn` does) changes directory, drops its privileges, takes its limits, its
//! priority and its system-call filter, resets its signals and execs, making only
//! system calls on values prepared before, and says which step failed if one did.

#![allow(unsafe_code)]

use super::*;

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
    /// Waiting for a warm start's go and reading its code.
    Go,
    /// Writing a warm start's code to its source file.
    Source,
    Exec,
    /// Starting a session of its own with its terminal as the controlling one.
    Terminal,
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
    /// A warm start: the source file the code given at the go is written to (see
    /// `JailSpec::wait_for_go`).
    go: Option<CString>,
    /// Its stdio is a terminal: start a session with it as the controlling terminal.
    terminal: bool,
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
        go: Option<&Path>,
        terminal: bool,
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
            go: go.map(c_path).transpose()?,
            terminal,
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
            7 => Some(StartStep::Go),
            8 => Some(StartStep::Source),
            10 => Some(StartStep::Terminal),
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
        // A terminal program leads a session of its own whose controlling terminal is
        // its stdin (still init's privileges: the terminal belongs to no session yet), so
        // Ctrl-C typed there signals its foreground process group, and its end hangs the
        // terminal up.
        if start.terminal && (libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) != 0) {
            return fail(10, 0, errno());
        }
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
        if let Some(go) = &start.go {
            if let Err((step, errno)) = wait_for_go(go) {
                return fail(step, 0, errno);
            }
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
        fail(9, 0, error)
    }
}

/// Bytes copied at a time from stdin into a warm start's source file (on the child's
/// stack, which has [`PROGRAM_STACK_BYTES`]).
const GO_COPY_BYTES: usize = 16 << 10;

/// The size a warm start's stdin pipe is shrunk back to once the code is copied: the
/// kernel's default, which a cold start's stdin has (the gateway grows an entry's pipe
/// at its claim for large code, and the program keeps this pipe).
const STDIN_PIPE_BYTES: libc::c_int = 64 << 10;

/// A warm start's wait, in the program's child as the sandbox user under its filter:
/// says it is ready, reads the go header and the code from stdin, writes the code to
/// `source` (a new file), shrinks its stdin pipe back to a cold start's, lowers the
/// three rlimits the header names. Allocates nothing (this runs in a child sharing
/// init's memory); an error is the failed step ([`StartStep::Go`] or
/// [`StartStep::Source`], in `program_main`'s numbering) and an errno.
///
/// # Safety
/// Plain system calls on `source` and on buffers of this frame.
unsafe fn wait_for_go(source: &CString) -> Result<(), (i32, i32)> {
    use sluice_gateway::jail::{parse_go_header, WARM_HEADER_BYTES, WARM_READY};
    const GO: i32 = 7;
    const SOURCE: i32 = 8;
    let go = |errno: i32| (GO, errno);
    write_all(1, WARM_READY).map_err(go)?;
    let mut header = [0_u8; WARM_HEADER_BYTES];
    read_exact(0, &mut header).map_err(go)?;
    let [code_bytes, cpu_seconds, file_size, open_files] =
        parse_go_header(&header).ok_or(go(libc::EINVAL))?;
    // Writing the source: a failure here is reported as a cold start's copy would be.
    let file = libc::open(
        source.as_ptr(),
        libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        0o600,
    );
    if file < 0 {
        return Err((SOURCE, errno()));
    }
    let mut buffer = [0_u8; GO_COPY_BYTES];
    let mut left = code_bytes;
    while left > 0 {
        let want = usize::try_from(left).map_or(GO_COPY_BYTES, |n| n.min(GO_COPY_BYTES));
        let chunk = &mut buffer[..want];
        read_exact(0, chunk).map_err(go)?;
        write_all(file, chunk).map_err(|errno| (SOURCE, errno))?;
        left -= want as u64;
    }
    if libc::close(file) != 0 {
        return Err((SOURCE, errno()));
    }
    // Refused (EBUSY) when the input already queued holds more; the pipe then stays.
    if libc::fcntl(0, libc::F_GETPIPE_SZ) > STDIN_PIPE_BYTES {
        libc::fcntl(0, libc::F_SETPIPE_SZ, STDIN_PIPE_BYTES);
    }
    // As the jail sets them at a cold start: CPU with a second's grace before SIGKILL.
    for (resource, value, hard) in [
        (libc::RLIMIT_CPU, cpu_seconds, cpu_seconds.saturating_add(1)),
        (libc::RLIMIT_FSIZE, file_size, file_size),
        (libc::RLIMIT_NOFILE, open_files, open_files),
    ] {
        if value == u64::MAX {
            continue;
        }
        let limit = libc::rlimit {
            rlim_cur: value,
            rlim_max: hard,
        };
        if libc::setrlimit(resource, &limit) != 0 {
            return Err(go(errno()));
        }
    }
    Ok(())
}

/// Reads exactly `buffer.len()` bytes from `fd`; end of input is `EPIPE`.
unsafe fn read_exact(fd: libc::c_int, buffer: &mut [u8]) -> Result<(), i32> {
    let mut at = 0;
    while at < buffer.len() {
        let n = libc::read(fd, buffer[at..].as_mut_ptr().cast(), buffer.len() - at);
        match n {
            0 => return Err(libc::EPIPE),
            n if n < 0 => match errno() {
                libc::EINTR => continue,
                other => return Err(other),
            },
            n => at += n as usize,
        }
    }
    Ok(())
}

/// Writes all of `bytes` to `fd`.
unsafe fn write_all(fd: libc::c_int, bytes: &[u8]) -> Result<(), i32> {
    let mut at = 0;
    while at < bytes.len() {
        let n = libc::write(fd, bytes[at..].as_ptr().cast(), bytes.len() - at);
        match n {
            0 => return Err(libc::EIO),
            n if n < 0 => match errno() {
                libc::EINTR => continue,
                other => return Err(other),
            },
            n => at += n as usize,
        }
    }
    Ok(())
}
