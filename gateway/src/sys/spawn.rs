//! Starting a program (an unjailed one, or the jail) the way `posix_spawn` does, plus
//! the steps it cannot take: the child shares the gateway's memory until it execs
//! (`CLONE_VM | CLONE_VFORK`), so the gateway's large address space is never copied; it
//! is born in its v2 cgroup (`clone3` with `CLONE_INTO_CGROUP`, where the kernel can)
//! or joins it; and before the exec it sets its rlimits, leaves for an empty network
//! namespace and drops to the sandbox user, as the plan asks. A fork-based spawn (what
//! std's `Command` does as soon as it must change the user or run a hook) cost about
//! 0.5 ms of gateway CPU per start and halved the executions per second (sluice-bench).
//!
//! The child runs on a stack of its own in the gateway's memory, while the gateway's
//! other threads go on: it calls only async-signal-safe system calls on values prepared
//! before the clone, never allocates, and reports a failure through the shared
//! [`ChildArgs`] before `_exit`.

use super::Rlimits;
use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt as _;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

/// Bytes of the child's stack: it runs a handful of system calls.
const CHILD_STACK_BYTES: usize = 64 << 10;

/// What [`spawn_program`] starts.
#[derive(Debug)]
pub(crate) struct ProgramPlan<'a> {
    /// An absolute path: no `PATH` search is done.
    pub(crate) program: &'a Path,
    pub(crate) argv: &'a [OsString],
    /// The whole environment, in order of precedence (later wins).
    pub(crate) env: &'a [(&'a str, &'a str)],
    pub(crate) cwd: &'a Path,
    pub(crate) rlimits: Rlimits,
    /// Start in a new, empty network namespace (needs root).
    pub(crate) no_network: bool,
    /// Drop to this uid and gid, with no supplementary groups (needs root).
    pub(crate) user: Option<(u32, u32)>,
    /// A cgroup v2 directory the child is in before anything it starts could escape:
    /// born there, or joining it first (v2 moves whole processes only, so the child
    /// moves itself).
    pub(crate) cgroup: Option<&'a Path>,
    /// The child may be born in that cgroup (`clone3` with `CLONE_INTO_CGROUP`) instead
    /// of joining it: false for one whose `cgroup.kill` was written (see
    /// `sandbox::cgroup`'s `Members::v2_killed`).
    pub(crate) born_inside: bool,
    /// Lower the program's priority to `PROGRAM_NICE` (where no cpu cgroup gives it a
    /// share below the gateway's).
    pub(crate) lower_priority: bool,
    /// A terminal's program side: the program's stdin, stdout and stderr instead of
    /// pipes, and its controlling terminal in a session of its own.
    pub(crate) terminal: Option<BorrowedFd<'a>>,
    /// With a terminal: it stays the stdio only, not the controlling terminal (for the
    /// jail, whose program takes it inside).
    pub(crate) terminal_as_stdio_only: bool,
    /// Without a terminal: the program's stdin, stdout and stderr as given, instead of
    /// pipes made here (a persistent interpreter's: `/dev/null`, or pipes of its own).
    pub(crate) stdio: Option<[BorrowedFd<'a>; 3]>,
    /// Becomes the program's descriptor 3 (a persistent interpreter's control socket).
    pub(crate) control: Option<BorrowedFd<'a>>,
    /// The program adopts what its descendants orphan (`PR_SET_CHILD_SUBREAPER`), so
    /// they stay in its tree.
    pub(crate) subreaper: bool,
}

impl<'a> ProgramPlan<'a> {
    /// `program` with `argv` in `cwd`, and nothing else: no environment, limits, user,
    /// cgroup or network of its own, at the gateway's priority, with piped stdio.
    pub(crate) fn new(program: &'a Path, argv: &'a [OsString], cwd: &'a Path) -> Self {
        Self {
            program,
            argv,
            env: &[],
            cwd,
            rlimits: Rlimits::default(),
            no_network: false,
            user: None,
            cgroup: None,
            born_inside: false,
            lower_priority: false,
            terminal: None,
            terminal_as_stdio_only: false,
            stdio: None,
            control: None,
            subreaper: false,
        }
    }
}

/// A started program: its pid (it leads its own process group) and the gateway's ends
/// of its stdin, stdout and stderr (none for a program on a terminal: the gateway holds
/// the terminal's other side).
#[derive(Debug)]
pub(crate) struct StartedProgram {
    pub(crate) pid: u32,
    pub(crate) pipes: Option<StdioPipes>,
}

/// The gateway's ends of a program's stdio pipes.
#[derive(Debug)]
pub(crate) struct StdioPipes {
    pub(crate) stdin: OwnedFd,
    pub(crate) stdout: OwnedFd,
    pub(crate) stderr: OwnedFd,
}

/// The step a child failed at, for the error message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
enum Step {
    None = 0,
    Cgroup,
    Stdio,
    ProcessGroup,
    Terminal,
    WorkingDirectory,
    Rlimit,
    Network,
    Priority,
    User,
    Signals,
    Exec,
    Control,
    Subreaper,
}

impl Step {
    fn from_raw(raw: i32) -> Self {
        [
            Self::Cgroup,
            Self::Stdio,
            Self::ProcessGroup,
            Self::Terminal,
            Self::WorkingDirectory,
            Self::Rlimit,
            Self::Network,
            Self::Priority,
            Self::User,
            Self::Signals,
            Self::Exec,
            Self::Control,
            Self::Subreaper,
        ]
        .into_iter()
        .find(|step| *step as i32 == raw)
        .unwrap_or(Self::None)
    }

    fn describe(self) -> &'static str {
        match self {
            Self::None => "starting",
            Self::Cgroup => "joining its cgroup",
            Self::Stdio => "connecting its stdio",
            Self::ProcessGroup => "making its process group",
            Self::Terminal => "taking its terminal as the controlling one",
            Self::WorkingDirectory => "entering its working directory",
            Self::Rlimit => "setting its limits",
            Self::Network => "taking its network away",
            Self::Priority => "lowering its priority",
            Self::User => "dropping to the sandbox user",
            Self::Signals => "resetting its signals",
            Self::Exec => "executing it",
            Self::Control => "giving it its control socket",
            Self::Subreaper => "making it adopt its orphans",
        }
    }
}

/// Everything the child reads, and where it leaves the reason it failed. Lives on the
/// gateway's stack for the duration of the clone (the gateway's thread is suspended
/// until the child execs or exits).
struct ChildArgs {
    program: *const libc::c_char,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    cwd: *const libc::c_char,
    /// An open `cgroup.procs` to write "0" to, or -1.
    cgroup_procs: RawFd,
    /// Set first thing by the child: a child cloned into a cgroup can be killed by the
    /// kernel before it runs at all (see [`settle_born_inside`]).
    started: i32,
    /// The child's ends, all above 2, for its fds 0, 1 and 2.
    stdio: [RawFd; 3],
    /// Above 2, for its fd 3; or -1.
    control: RawFd,
    subreaper: bool,
    /// The stdio is a terminal: lead a new session with it as the controlling terminal.
    terminal: bool,
    rlimits: [(libc::__rlimit_resource_t, libc::rlimit); 3],
    rlimit_count: usize,
    no_network: bool,
    lower_priority: bool,
    user: Option<(libc::uid_t, libc::gid_t)>,
    failed_step: i32,
    failed_errno: i32,
}

/// Starts `plan` (see the module's doc). The child is in its own process group.
pub(crate) fn spawn_program(plan: &ProgramPlan<'_>) -> io::Result<StartedProgram> {
    let c_string = |bytes: &[u8]| {
        CString::new(bytes).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL byte"))
    };
    let program = c_string(plan.program.as_os_str().as_bytes())?;
    let argv: Vec<CString> = plan
        .argv
        .iter()
        .map(|arg| c_string(arg.as_bytes()))
        .collect::<io::Result<_>>()?;
    // Later entries win, as with `Command::envs`.
    let mut env: Vec<(&str, &str)> = Vec::with_capacity(plan.env.len());
    for &(key, value) in plan.env {
        env.retain(|(existing, _)| *existing != key);
        env.push((key, value));
    }
    let envp: Vec<CString> = env
        .iter()
        .map(|(key, value)| c_string(format!("{key}={value}").as_bytes()))
        .collect::<io::Result<_>>()?;
    let cwd = c_string(plan.cwd.as_os_str().as_bytes())?;
    let argv_ptrs = null_terminated(&argv);
    let envp_ptrs = null_terminated(&envp);

    // The child's ends (dropped, in this process, once it has its copies) and ours.
    let (child_ends, pipes) = match (plan.terminal, plan.stdio) {
        (Some(terminal), _) => {
            let side = above_stdio(terminal.try_clone_to_owned()?)?;
            (vec![side], None)
        }
        (None, Some(given)) => {
            let ends = given
                .iter()
                .map(|fd| above_stdio(fd.try_clone_to_owned()?))
                .collect::<io::Result<Vec<_>>>()?;
            (ends, None)
        }
        (None, None) => {
            let (stdin_child, stdin_ours) = pipe_above_stdio()?;
            let (stdout_ours, stdout_child) = pipe_above_stdio()?;
            let (stderr_ours, stderr_child) = pipe_above_stdio()?;
            let ours = StdioPipes {
                stdin: stdin_ours,
                stdout: stdout_ours,
                stderr: stderr_ours,
            };
            (vec![stdin_child, stdout_child, stderr_child], Some(ours))
        }
    };
    let stdio: [RawFd; 3] = match child_ends.as_slice() {
        [all] => [all.as_raw_fd(); 3],
        [stdin, stdout, stderr] => [stdin.as_raw_fd(), stdout.as_raw_fd(), stderr.as_raw_fd()],
        _ => return Err(io::Error::other("stdio descriptors missing")),
    };

    let control = plan
        .control
        .map(|fd| above_stdio(fd.try_clone_to_owned()?))
        .transpose()?;

    let mut rlimits = [(
        0,
        libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        },
    ); 3];
    let mut rlimit_count = 0;
    for (resource, value) in plan.rlimits.entries() {
        if let Some((soft, hard)) = value {
            rlimits[rlimit_count] = (
                resource,
                libc::rlimit {
                    rlim_cur: soft as libc::rlim_t,
                    rlim_max: hard as libc::rlim_t,
                },
            );
            rlimit_count += 1;
        }
    }
    let mut args = ChildArgs {
        program: program.as_ptr(),
        argv: argv_ptrs.as_ptr(),
        envp: envp_ptrs.as_ptr(),
        cwd: cwd.as_ptr(),
        cgroup_procs: -1,
        started: 0,
        stdio,
        control: control.as_ref().map_or(-1, |fd| fd.as_raw_fd()),
        subreaper: plan.subreaper,
        terminal: plan.terminal.is_some() && !plan.terminal_as_stdio_only,
        rlimits,
        rlimit_count,
        no_network: plan.no_network,
        lower_priority: plan.lower_priority,
        user: plan.user,
        failed_step: Step::None as i32,
        failed_errno: 0,
    };
    let mut stack = vec![0_u8; CHILD_STACK_BYTES];
    // The stack grows down from its 16-byte-aligned top.
    let top = (stack.as_mut_ptr() as usize + CHILD_STACK_BYTES) & !15;
    // Born in its v2 cgroup where the kernel can do that (`clone3` with
    // `CLONE_INTO_CGROUP`); else the child joins it by writing `cgroup.procs`, which
    // takes the kernel's global thread-group lock and waits for an RCU grace period
    // when no other move came just before (about 8 ms on an idle 6.18 host). Both
    // through the one directory opened here, so both name the same cgroup.
    let cgroup_dir = match plan.cgroup {
        Some(dir) => Some(open_in(None, dir, libc::O_RDONLY | libc::O_DIRECTORY)?),
        None => None,
    };

    // No signal handler of the gateway may run in the child (it shares the memory):
    // everything is blocked around the clone, and the child resets the dispositions
    // before it unblocks.
    let mut previous = empty_signal_set();
    let all = full_signal_set();
    // SAFETY: both sets are valid, initialised sigset_t values owned by this frame.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut previous) };
    let born = match cgroup_dir.as_ref() {
        Some(dir) if plan.born_inside && BORN_INSIDE.load(Ordering::Relaxed) => {
            // SAFETY: as for the clone below; `args` names no cgroup.procs (the child is
            // born in the cgroup).
            let pid = unsafe {
                clone_into_cgroup(
                    dir.as_raw_fd(),
                    stack.as_mut_ptr() as usize,
                    top,
                    std::ptr::addr_of_mut!(args).cast(),
                )
            };
            // SAFETY: the child has exec'd or exited (CLONE_VFORK); no longer written.
            let started = unsafe { std::ptr::read_volatile(std::ptr::addr_of!(args.started)) };
            settle_born_inside(pid, started != 0)
        }
        _ => Born::NotTried,
    };
    let clone_result = match born {
        Born::Inside(pid) => Ok(pid),
        Born::Failed(err) => Err(err),
        Born::NotTried => match cgroup_dir
            .as_ref()
            .map(|dir| open_in(Some(dir), Path::new("cgroup.procs"), libc::O_WRONLY))
            .transpose()
        {
            Ok(procs) => {
                args.cgroup_procs = procs.as_ref().map_or(-1, |fd| fd.as_raw_fd());
                // SAFETY: `child_main` only reads `args` and the buffers its pointers name
                // (all alive in this frame until clone returns: CLONE_VFORK suspends this
                // thread until the child has exec'd or exited) and writes the failure
                // fields; the stack is ours alone.
                let pid = unsafe {
                    libc::clone(
                        child_main,
                        top as *mut libc::c_void,
                        libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
                        std::ptr::addr_of_mut!(args).cast(),
                    )
                };
                let clone_error = io::Error::last_os_error();
                drop(procs);
                if pid < 0 {
                    Err(clone_error)
                } else {
                    Ok(pid)
                }
            }
            Err(err) => Err(err),
        },
    };
    // SAFETY: restores the mask saved above.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &previous, std::ptr::null_mut()) };
    drop(stack);
    drop(cgroup_dir);
    let pid = clone_result?;
    // SAFETY: the child has exec'd or exited; these fields are no longer written.
    let (step, errno) = unsafe {
        (
            std::ptr::read_volatile(std::ptr::addr_of!(args.failed_step)),
            std::ptr::read_volatile(std::ptr::addr_of!(args.failed_errno)),
        )
    };
    let pid = u32::try_from(pid).map_err(|_| io::Error::other("clone returned a bad pid"))?;
    if step != Step::None as i32 {
        // It exited with 127; reap it so no zombie is left.
        let _ = super::reap_blocking(pid);
        let source = io::Error::from_raw_os_error(errno);
        return Err(io::Error::new(
            source.kind(),
            format!("{}: {source}", Step::from_raw(step).describe()),
        ));
    }
    drop(child_ends);
    drop(control);
    Ok(StartedProgram { pid, pipes })
}

/// The child: cgroup, stdio, process group (or session and terminal), directory, limits, network, user, signals,
/// exec.
/// Only system calls on prepared values; on failure it records the step and errno in
/// the shared [`ChildArgs`] and exits with 127.
extern "C" fn child_main(raw: *mut libc::c_void) -> libc::c_int {
    let args = raw.cast::<ChildArgs>();
    // SAFETY: `raw` is the `ChildArgs` of `spawn_program`, alive while this runs; every
    // pointer in it names a buffer alive as long; each call below is a plain system call.
    unsafe {
        std::ptr::write_volatile(std::ptr::addr_of_mut!((*args).started), 1);
        let fail = |step: Step| -> libc::c_int {
            std::ptr::write_volatile(std::ptr::addr_of_mut!((*args).failed_errno), errno());
            std::ptr::write_volatile(std::ptr::addr_of_mut!((*args).failed_step), step as i32);
            libc::_exit(127)
        };
        let procs = (*args).cgroup_procs;
        if procs >= 0 && libc::write(procs, b"0".as_ptr().cast(), 1) != 1 {
            return fail(Step::Cgroup);
        }
        let stdio = (*args).stdio;
        for (target, fd) in (0..).zip(stdio) {
            // The child ends are above 2, so no dup2 clobbers one still to be moved.
            if libc::dup2(fd, target) < 0 {
                return fail(Step::Stdio);
            }
        }
        let control = (*args).control;
        if control >= 0 {
            // Above 2, so the stdio above is in place; a dup2 onto itself would keep the
            // close-on-exec flag.
            let moved = if control == 3 {
                libc::fcntl(3, libc::F_SETFD, 0)
            } else {
                libc::dup2(control, 3)
            };
            if moved < 0 {
                return fail(Step::Control);
            }
        }
        if (*args).subreaper && libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0 {
            return fail(Step::Subreaper);
        }
        if (*args).terminal {
            // A session of its own (its group too: the gateway signals the group), whose
            // controlling terminal is its stdin, so Ctrl-C typed there interrupts it.
            if libc::setsid() < 0 {
                return fail(Step::ProcessGroup);
            }
            if libc::ioctl(0, libc::TIOCSCTTY, 0) != 0 {
                return fail(Step::Terminal);
            }
        } else if libc::setsid() < 0 {
            // A session of its own too (and so a group of its own, which the gateway
            // signals), without a controlling terminal: in the gateway's session it
            // could open `/dev/tty`, the terminal the gateway runs in, and type there.
            return fail(Step::ProcessGroup);
        }
        if libc::chdir((*args).cwd) != 0 {
            return fail(Step::WorkingDirectory);
        }
        let rlimits = (*args).rlimits;
        for (resource, limit) in rlimits.iter().take((*args).rlimit_count) {
            if libc::setrlimit(*resource, limit) != 0 {
                return fail(Step::Rlimit);
            }
        }
        if (*args).no_network && libc::unshare(libc::CLONE_NEWNET) != 0 {
            return fail(Step::Network);
        }
        if (*args).lower_priority
            && libc::setpriority(libc::PRIO_PROCESS, 0, super::PROGRAM_NICE) != 0
        {
            return fail(Step::Priority);
        }
        if let Some((uid, gid)) = (*args).user {
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setgid(gid) != 0
                || libc::setuid(uid) != 0
            {
                return fail(Step::User);
            }
        }
        // Every disposition back to the default (ignored ones like SIGPIPE included),
        // then nothing blocked, as a program expects. Through the system call itself:
        // the C library refuses the real-time signals it keeps for itself, but an ignored
        // one would still be inherited across exec. An all-zero kernel sigaction is
        // SIG_DFL with no flags and an empty mask.
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
        let none = empty_signal_set();
        if libc::pthread_sigmask(libc::SIG_SETMASK, &none, std::ptr::null_mut()) != 0 {
            return fail(Step::Signals);
        }
        libc::execve((*args).program, (*args).argv, (*args).envp);
        fail(Step::Exec)
    }
}

/// `clone_args` of the kernel's `clone3` (its first version with `cgroup`).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// `CLONE_INTO_CGROUP` (Linux 5.7).
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// Whether programs are born in their cgroup: turned off for good the first time the
/// kernel cannot (no `clone3` or `CLONE_INTO_CGROUP`, a filter refusing it), or after
/// [`MAX_KILLED_AT_BIRTH`] newborns in a row were killed before they ran.
static BORN_INSIDE: AtomicBool = AtomicBool::new(true);

/// Newborns killed before they ran since the last one that ran.
static KILLED_AT_BIRTH: AtomicU32 = AtomicU32::new(0);

/// How many newborns in a row may be killed before they ran before births inside stop:
/// one alone may have met a memory limit or a kill of its own cgroup; the kernel's
/// count mismatch kills every one.
const MAX_KILLED_AT_BIRTH: u32 = 3;

/// What became of an attempt to start a child in its cgroup.
enum Born {
    Inside(libc::pid_t),
    /// A failure of the start itself (no memory, the cgroup's process limit, the cgroup
    /// gone): reported, not retried another way.
    Failed(io::Error),
    /// Not tried, or the kernel cannot do it: the child joins by writing instead.
    NotTried,
}

/// Reads the outcome of [`clone_into_cgroup`] (`pid`, and whether the child ran).
///
/// A kernel kills a child cloned into a cgroup at birth when the count of `cgroup.kill`
/// writes seen from the parent's cgroup differs from the target's (6.18 reads the
/// parent's before it switches to the target): a target killed before, or a gateway
/// living in a cgroup someone killed while it was empty. The execution cgroups the
/// gateway reuses are never killed ones (`sandbox::cgroup`), but the gateway's own
/// cgroup is not its to choose, so a newborn that never ran is reaped and the start
/// retried by writing `cgroup.procs` (and births inside stop for the rest of the run
/// once that happened [`MAX_KILLED_AT_BIRTH`] times in a row).
fn settle_born_inside(pid: i64, started: bool) -> Born {
    if pid > 0 {
        let Ok(pid) = libc::pid_t::try_from(pid) else {
            return Born::Failed(io::Error::other("clone3 returned a bad pid"));
        };
        if started {
            KILLED_AT_BIRTH.store(0, Ordering::Relaxed);
            return Born::Inside(pid);
        }
        let _ = u32::try_from(pid).map(super::reap_blocking);
        if KILLED_AT_BIRTH.fetch_add(1, Ordering::Relaxed) + 1 >= MAX_KILLED_AT_BIRTH {
            BORN_INSIDE.store(false, Ordering::Relaxed);
            tracing::warn!("programs born in their cgroup were killed before they ran (the kernel's count of cgroup.kill writes differs from the gateway's own cgroup); programs now join their cgroup after birth");
        }
        return Born::NotTried;
    }
    let errno = i32::try_from(-pid).unwrap_or(libc::EINVAL);
    match errno {
        libc::ENOSYS | libc::E2BIG | libc::EINVAL | libc::EOPNOTSUPP | libc::EPERM => {
            BORN_INSIDE.store(false, Ordering::Relaxed);
            tracing::info!(
                errno,
                "the kernel does not start programs in their cgroup here; they join it after birth"
            );
            Born::NotTried
        }
        _ => Born::Failed(io::Error::from_raw_os_error(errno)),
    }
}

/// Starts [`child_main`] with `arg` on the stack `[stack, top)` as [`spawn_program`]'s
/// clone does (`CLONE_VM | CLONE_VFORK`, `SIGCHLD` at exit), but born in the v2 cgroup
/// whose directory `cgroup` is open. The child's pid, or the negated errno (then no
/// child exists); see [`settle_born_inside`] for a child killed at birth.
///
/// # Safety
/// As for `libc::clone` with [`child_main`]: `arg` and everything it names stay alive
/// and untouched until this returns, the stack is the child's alone, and every signal
/// is blocked.
#[cfg(target_arch = "x86_64")]
unsafe fn clone_into_cgroup(
    cgroup: RawFd,
    stack: usize,
    top: usize,
    arg: *mut libc::c_void,
) -> i64 {
    let Ok(cgroup) = u64::try_from(cgroup) else {
        return -i64::from(libc::EBADF);
    };
    let args = CloneArgs {
        flags: (libc::CLONE_VM | libc::CLONE_VFORK) as u64 | CLONE_INTO_CGROUP,
        exit_signal: libc::SIGCHLD as u64,
        stack: stack as u64,
        stack_size: (top - stack) as u64,
        cgroup,
        ..CloneArgs::default()
    };
    let child: extern "C" fn(*mut libc::c_void) -> libc::c_int = child_main;
    let mut ret: i64 = libc::SYS_clone3;
    // The C library has no `clone3` that runs a function on a new stack, so the child's
    // side is written out: the kernel returns 0 in the child with its stack pointer at
    // `top` (16-byte aligned, as a call needs) and every register but rax, rcx and r11
    // as the parent had them; it calls `child(arg)` and exits with what that returns
    // (it never returns: it execs or `_exit`s). The parent's side returns the pid.
    // SAFETY: the system call reads `args` (alive in this frame) and nothing else of
    // ours; the child runs only on its own stack; the caller upholds the rest.
    unsafe {
        std::arch::asm!(
            "syscall",
            "test rax, rax",
            "jnz 2f",
            "mov rdi, r12",
            "call r13",
            "mov edi, eax",
            "mov eax, 60",
            "syscall",
            "ud2",
            "2:",
            inout("rax") ret,
            in("rdi") std::ptr::addr_of!(args),
            in("rsi") std::mem::size_of::<CloneArgs>(),
            in("r12") arg,
            in("r13") child,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret
}

/// Elsewhere the child always joins its cgroup itself.
#[cfg(not(target_arch = "x86_64"))]
unsafe fn clone_into_cgroup(_: RawFd, _: usize, _: usize, _: *mut libc::c_void) -> i64 {
    -i64::from(libc::ENOSYS)
}

/// `path` opened close-on-exec with `flags`, beneath `dir` when given.
fn open_in(dir: Option<&OwnedFd>, path: &Path, flags: libc::c_int) -> io::Result<OwnedFd> {
    let path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL byte"))?;
    let dirfd = dir.map_or(libc::AT_FDCWD, |dir| dir.as_raw_fd());
    // SAFETY: openat takes a directory descriptor (or AT_FDCWD), a NUL-terminated path
    // and integer flags.
    let fd = unsafe { libc::openat(dirfd, path.as_ptr(), flags | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor just opened, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The calling thread's errno.
fn errno() -> i32 {
    // SAFETY: __errno_location returns this thread's errno slot.
    unsafe { *libc::__errno_location() }
}

fn empty_signal_set() -> libc::sigset_t {
    // SAFETY: sigemptyset initialises the set it is given.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        set
    }
}

fn full_signal_set() -> libc::sigset_t {
    // SAFETY: sigfillset initialises the set it is given.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut set);
        set
    }
}

/// The pointers of `strings`, then a null.
fn null_terminated(strings: &[CString]) -> Vec<*const libc::c_char> {
    strings
        .iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

/// A close-on-exec pipe (read end, write end) whose descriptors are both above 2, so the
/// child's dup2 onto 0, 1 and 2 can never overwrite one of them.
fn pipe_above_stdio() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: fds has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 just returned these two descriptors, owned by nobody else.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    Ok((above_stdio(read)?, above_stdio(write)?))
}

fn above_stdio(fd: OwnedFd) -> io::Result<OwnedFd> {
    if fd.as_raw_fd() > 2 {
        return Ok(fd);
    }
    // SAFETY: F_DUPFD_CLOEXEC duplicates a descriptor we own onto the lowest free one >= 3.
    let moved = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3) };
    if moved < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fcntl just returned this new descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(moved) })
}

/// Whether this process may give a program an empty network namespace: tried once by
/// starting `/bin/true` in one.
pub(crate) fn can_take_network() -> bool {
    let Ok(cwd) = std::env::current_dir() else {
        return false;
    };
    let argv = [OsStr::new("true").to_owned()];
    let started = spawn_program(&ProgramPlan {
        no_network: true,
        ..ProgramPlan::new(Path::new("/bin/true"), &argv, &cwd)
    });
    match started {
        Ok(started) => {
            super::reap_blocking(started.pid).is_ok_and(|reaped| reaped.exit_code == Some(0))
        }
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read as _;
    use std::os::fd::AsFd as _;

    fn run(plan: &ProgramPlan<'_>) -> (String, Option<i32>) {
        let started = spawn_program(plan).expect("spawned");
        let pipes = started.pipes.expect("pipes");
        drop(pipes.stdin);
        let mut out = String::new();
        std::fs::File::from(pipes.stdout)
            .read_to_string(&mut out)
            .expect("read stdout");
        let reaped = super::super::reap_blocking(started.pid).expect("reaped");
        (out, reaped.exit_code)
    }

    #[test]
    fn a_program_gets_its_environment_directory_limits_and_clean_signals() {
        let dir = std::env::temp_dir();
        let argv: Vec<OsString> = ["sh", "-c", "echo $A $B; pwd; ulimit -n; grep -E 'SigBlk|SigIgn' /proc/self/status; nice; [ $(ps -o pgid= $$) = $$ ] && echo leader; exit 7"]
            .iter()
            .map(OsString::from)
            .collect();
        let (out, code) = run(&ProgramPlan {
            env: &[
                ("A", "first"),
                ("B", "b"),
                ("A", "later"),
                ("PATH", "/usr/bin:/bin"),
            ],
            rlimits: Rlimits {
                open_files: Some(77),
                ..Rlimits::default()
            },
            lower_priority: true,
            ..ProgramPlan::new(Path::new("/bin/sh"), &argv, &dir)
        });
        let canonical = dir.canonicalize().expect("temp dir");
        assert_eq!(
            out,
            format!(
                "later b\n{}\n77\nSigBlk:\t0000000000000000\nSigIgn:\t0000000000000000\n10\nleader\n",
                canonical.display()
            )
        );
        assert_eq!(code, Some(7));
    }

    #[test]
    fn a_program_that_cannot_start_is_an_error_naming_the_step() {
        let argv = [OsString::from("missing")];
        let err = spawn_program(&ProgramPlan::new(
            Path::new("/no/such/program"),
            &argv,
            Path::new("/"),
        ))
        .expect_err("nothing to run");
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert!(err.to_string().starts_with("executing it:"), "{err}");
        let err = spawn_program(&ProgramPlan::new(
            Path::new("/bin/true"),
            &argv,
            Path::new("/no/such/directory"),
        ))
        .expect_err("no such directory");
        assert!(
            err.to_string()
                .starts_with("entering its working directory:"),
            "{err}"
        );
    }

    /// An interpreter's start: the stdio given (here stdout and stderr one pipe, stdin
    /// /dev/null), the control socket as descriptor 3 (open across the exec), and what
    /// its children orphan adopted by it.
    #[test]
    fn given_stdio_a_control_descriptor_and_a_subreaper() {
        let (mut read, write) = std::io::pipe().expect("pipe");
        let (control_ours, control_theirs) =
            std::os::unix::net::UnixStream::pair().expect("socket pair");
        let null = std::fs::File::open("/dev/null").expect("/dev/null");
        let script = "echo $$; readlink /proc/$$/fd/0 /proc/$$/fd/3 | tr '\\n' ' '; echo; \
                      echo via-3 >&3; \
                      ( sh -c 'sleep 0.2; cut -d\" \" -f4 /proc/$$/stat' & ); sleep 0.6";
        let argv: Vec<OsString> = ["sh", "-c", script].iter().map(OsString::from).collect();
        let stdio = [null.as_fd(), write.as_fd(), write.as_fd()];
        let started = spawn_program(&ProgramPlan {
            stdio: Some(stdio),
            control: Some(control_theirs.as_fd()),
            subreaper: true,
            ..ProgramPlan::new(Path::new("/bin/sh"), &argv, Path::new("/"))
        })
        .expect("started");
        assert!(started.pipes.is_none(), "no pipes of its own");
        drop((write, control_theirs, null));
        let mut out = String::new();
        read.read_to_string(&mut out).expect("read stdout");
        let reaped = super::super::reap_blocking(started.pid).expect("reaped");
        assert_eq!(reaped.exit_code, Some(0), "{out}");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3, "{out}");
        assert!(
            lines[1].starts_with("/dev/null socket:["),
            "stdin and descriptor 3: {out}"
        );
        assert_eq!(
            lines[2], lines[0],
            "the orphan's parent is the program: {out}"
        );
        let mut via = String::new();
        control_ours
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .expect("timeout");
        (&control_ours).read_to_string(&mut via).expect("read fd 3");
        assert_eq!(via, "via-3\n");
    }
}
