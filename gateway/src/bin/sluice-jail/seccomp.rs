//! The system-call filter a jailed program runs under: a deny list of the calls an
//! untrusted program has no use for and that widen the kernel's attack surface
//! (namespaces and mounts, kernel modules and keyrings, tracing other processes, BPF,
//! io_uring, handle-based opens). They fail with EPERM, so a program that probes for
//! them carries on; everything else is allowed. The program is already an unprivileged
//! user with no capabilities: the filter guards against kernel bugs reachable through
//! these calls, not against permissions.
//!
//! File locks (`flock`, and `fcntl`'s record locks) succeed without locking anything: a
//! lock is kept on the inode, and the jail sees the host's files (read-only, but `flock`
//! needs no write access), so a program could otherwise hold a lock on any host file
//! (a build's `.cargo-lock`, a package manager's) and stall the host's own programs.
//! Locks between a program's own processes are lost with it; a program on its own (a
//! SQLite database in its workspace) works as before. Querying a lock (`F_GETLK`) is
//! left as it is.
//!
//! A call made through another architecture's table (x32 on x86_64) is refused, and a
//! foreign architecture kills the process: the numbers below mean nothing there.

use libc::sock_filter;

/// Calls refused with EPERM.
const DENIED: &[libc::c_long] = &[
    // New namespaces and mounts: the jail made the ones the program gets.
    libc::SYS_unshare,
    libc::SYS_setns,
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_open_tree,
    libc::SYS_move_mount,
    libc::SYS_fsopen,
    libc::SYS_fsconfig,
    libc::SYS_fsmount,
    libc::SYS_fspick,
    libc::SYS_mount_setattr,
    OPEN_TREE_ATTR,
    // The kernel itself.
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_kexec_load,
    libc::SYS_kexec_file_load,
    libc::SYS_reboot,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_acct,
    libc::SYS_syslog,
    libc::SYS_quotactl,
    libc::SYS_quotactl_fd,
    libc::SYS_settimeofday,
    libc::SYS_clock_settime,
    libc::SYS_clock_adjtime,
    libc::SYS_adjtimex,
    // Keyrings.
    libc::SYS_add_key,
    libc::SYS_request_key,
    libc::SYS_keyctl,
    // Other processes' memory and tracing.
    libc::SYS_ptrace,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_perf_event_open,
    libc::SYS_bpf,
    libc::SYS_userfaultfd,
    // Large, often-buggy interfaces.
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
    libc::SYS_name_to_handle_at,
    libc::SYS_open_by_handle_at,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_iopl,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_ioperm,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_modify_ldt,
];

/// `open_tree_attr` (Linux 6.15), the same number on every architecture; the C library
/// does not name it yet.
const OPEN_TREE_ATTR: libc::c_long = 467;

/// `clone` flags that would create namespaces (the first argument of `clone`).
const NEW_NAMESPACES: u32 = (libc::CLONE_NEWUSER
    | libc::CLONE_NEWNS
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWCGROUP) as u32;

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xC000_003E;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xC000_00B7;

/// Bit set in the call number of the x32 ABI's calls on x86_64.
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

// Offsets into `struct seccomp_data`.
const NR: u32 = 0;
const ARCH: u32 = 4;
const ARG0_LOW: u32 = 16;
const ARG1_LOW: u32 = 24;

/// The `fcntl` commands that take or release a record lock.
const LOCKING_FCNTL: [libc::c_int; 4] = [
    libc::F_SETLK,
    libc::F_SETLKW,
    libc::F_OFD_SETLK,
    libc::F_OFD_SETLKW,
];

/// What the filter does with one call, before looking at its arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rule {
    /// Refused with EPERM.
    Deny,
    /// Succeeds without doing anything (errno 0: the call returns 0 unexecuted).
    Pretend,
    /// `fcntl`: a locking command pretends, the others run.
    Fcntl,
    /// `clone3` passes its flags in memory the filter cannot read: ENOSYS makes the C
    /// library fall back to `clone`, whose flags it can.
    Enosys,
    /// `clone`: refused when it would create namespaces.
    Clone,
}

/// Every call the filter does not simply allow, sorted by number.
fn rules() -> Vec<(u32, Rule)> {
    let mut rules: Vec<(u32, Rule)> = DENIED
        .iter()
        .map(|&call| (call as u32, Rule::Deny))
        .chain([
            (libc::SYS_flock as u32, Rule::Pretend),
            (libc::SYS_fcntl as u32, Rule::Fcntl),
            (libc::SYS_clone3 as u32, Rule::Enosys),
            (libc::SYS_clone as u32, Rule::Clone),
        ])
        .collect();
    rules.sort_unstable_by_key(|&(call, _)| call);
    rules.dedup_by_key(|&mut (call, _)| call);
    rules
}

/// Where a jump goes, resolved once the program is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Label {
    Next,
    /// The instruction at this index.
    At(usize),
    Allow,
    Rule(Rule),
}

/// An instruction whose jump targets are labels.
struct Pending {
    code: u32,
    k: u32,
    jt: Label,
    jf: Label,
}

/// Rules looked up one after the other rather than split further: a few comparisons.
const LEAF_RULES: usize = 4;

/// The filter program: the architecture check, then a binary search over [`rules`] by
/// call number (a handful of comparisons per call, where a list would take one per
/// rule: the kernel runs the filter for every call number when it installs it, to know
/// which calls it may allow without running it again), then the blocks that decide on
/// arguments and the returns.
pub(crate) fn filter() -> Vec<sock_filter> {
    use libc::{BPF_ABS, BPF_JEQ, BPF_JGE, BPF_JMP, BPF_JSET, BPF_K, BPF_LD, BPF_RET, BPF_W};
    let deny = libc::SECCOMP_RET_ERRNO | (libc::EPERM as u32 & libc::SECCOMP_RET_DATA);
    let enosys = libc::SECCOMP_RET_ERRNO | (libc::ENOSYS as u32 & libc::SECCOMP_RET_DATA);
    let op = |code, k, jt, jf| Pending { code, k, jt, jf };
    let load = |offset| op(BPF_LD | BPF_W | BPF_ABS, offset, Label::Next, Label::Next);
    let ret = |value| op(BPF_RET | BPF_K, value, Label::Next, Label::Next);
    let mut program = vec![
        load(ARCH),
        op(
            BPF_JMP | BPF_JEQ | BPF_K,
            AUDIT_ARCH,
            Label::At(3),
            Label::Next,
        ),
        ret(libc::SECCOMP_RET_KILL_PROCESS),
        load(NR),
        // x32 calls: refused outright.
        op(
            BPF_JMP | BPF_JGE | BPF_K,
            X32_SYSCALL_BIT,
            Label::Rule(Rule::Deny),
            Label::Next,
        ),
    ];
    search(&mut program, &rules());
    // The blocks the search jumps to, in this order.
    let mut blocks = Vec::new();
    let mut mark = |program: &mut Vec<Pending>, label: Label| blocks.push((label, program.len()));
    mark(&mut program, Label::Rule(Rule::Fcntl));
    program.push(load(ARG1_LOW));
    for command in LOCKING_FCNTL {
        program.push(op(
            BPF_JMP | BPF_JEQ | BPF_K,
            command as u32,
            Label::Rule(Rule::Pretend),
            Label::Next,
        ));
    }
    program.push(ret(libc::SECCOMP_RET_ALLOW));
    mark(&mut program, Label::Rule(Rule::Clone));
    program.push(load(ARG0_LOW));
    program.push(op(
        BPF_JMP | BPF_JSET | BPF_K,
        NEW_NAMESPACES,
        Label::Rule(Rule::Deny),
        Label::Allow,
    ));
    mark(&mut program, Label::Allow);
    program.push(ret(libc::SECCOMP_RET_ALLOW));
    mark(&mut program, Label::Rule(Rule::Deny));
    program.push(ret(deny));
    mark(&mut program, Label::Rule(Rule::Pretend));
    program.push(ret(libc::SECCOMP_RET_ERRNO));
    mark(&mut program, Label::Rule(Rule::Enosys));
    program.push(ret(enosys));
    let resolve = |at: usize, label: Label| -> Option<u8> {
        let target = match label {
            Label::Next => at + 1,
            Label::At(index) => index,
            other => blocks
                .iter()
                .find(|(known, _)| *known == other)
                .map(|&(_, index)| index)?,
        };
        // Jumps go forward only, at most 255 instructions.
        u8::try_from(target.checked_sub(at + 1)?).ok()
    };
    let resolved: Option<Vec<sock_filter>> = program
        .iter()
        .enumerate()
        .map(|(at, pending)| {
            Some(sock_filter {
                code: pending.code as u16,
                jt: resolve(at, pending.jt)?,
                jf: resolve(at, pending.jf)?,
                k: pending.k,
            })
        })
        .collect();
    // A jump the layout cannot express (the tests rule it out): fail closed, the
    // program is killed at its first call.
    resolved.unwrap_or_else(|| vec![ret_kill()])
}

fn ret_kill() -> sock_filter {
    sock_filter {
        code: (libc::BPF_RET | libc::BPF_K) as u16,
        jt: 0,
        jf: 0,
        k: libc::SECCOMP_RET_KILL_PROCESS,
    }
}

/// Appends the search over `rules` (sorted by number), the call number in the
/// accumulator: each rule's call jumps to the rule's block, any other to `Allow`.
fn search(program: &mut Vec<Pending>, rules: &[(u32, Rule)]) {
    use libc::{BPF_JEQ, BPF_JGE, BPF_JMP, BPF_K};
    if rules.len() <= LEAF_RULES {
        for (n, &(call, rule)) in rules.iter().enumerate() {
            let otherwise = if n + 1 == rules.len() {
                Label::Allow
            } else {
                Label::Next
            };
            program.push(Pending {
                code: BPF_JMP | BPF_JEQ | BPF_K,
                k: call,
                jt: Label::Rule(rule),
                jf: otherwise,
            });
        }
        if rules.is_empty() {
            program.push(Pending {
                code: BPF_JMP | BPF_JEQ | BPF_K,
                k: 0,
                jt: Label::Allow,
                jf: Label::Allow,
            });
        }
        return;
    }
    let (lower, upper) = rules.split_at(rules.len() / 2);
    let split = program.len();
    program.push(Pending {
        code: BPF_JMP | BPF_JGE | BPF_K,
        k: upper[0].0,
        // Filled in below, once the lower half's length is known.
        jt: Label::Next,
        jf: Label::Next,
    });
    search(program, lower);
    let upper_start = program.len();
    program[split].jt = Label::At(upper_start);
    search(program, upper);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `program` on one call as the kernel does (the instructions it uses).
    fn run(program: &[sock_filter], arch: u32, nr: u32, args: [u64; 2]) -> u32 {
        let data = |offset: u32| -> u32 {
            match offset {
                NR => nr,
                ARCH => arch,
                ARG0_LOW => args[0] as u32,
                ARG1_LOW => args[1] as u32,
                other => panic!("the filter reads offset {other}"),
            }
        };
        let (mut pc, mut accumulator) = (0_usize, 0_u32);
        loop {
            let insn = program.get(pc).expect("ran off the end of the program");
            let code = u32::from(insn.code);
            pc += 1;
            match code {
                c if c == libc::BPF_LD | libc::BPF_W | libc::BPF_ABS => accumulator = data(insn.k),
                c if c == libc::BPF_RET | libc::BPF_K => return insn.k,
                c if c & 0x07 == libc::BPF_JMP => {
                    let taken = match c & 0xf0 {
                        op if op == libc::BPF_JEQ => accumulator == insn.k,
                        op if op == libc::BPF_JGE => accumulator >= insn.k,
                        op if op == libc::BPF_JSET => accumulator & insn.k != 0,
                        other => panic!("unexpected jump {other:#x}"),
                    };
                    pc += usize::from(if taken { insn.jt } else { insn.jf });
                }
                other => panic!("unexpected instruction {other:#x}"),
            }
        }
    }

    /// What the filter must answer, written out plainly.
    fn expected(arch: u32, nr: u32, args: [u64; 2]) -> u32 {
        let deny = libc::SECCOMP_RET_ERRNO | libc::EPERM as u32;
        let locking = LOCKING_FCNTL.iter().any(|&c| c as u32 == args[1] as u32);
        if arch != AUDIT_ARCH {
            libc::SECCOMP_RET_KILL_PROCESS
        } else if nr >= X32_SYSCALL_BIT || DENIED.iter().any(|&c| c as u32 == nr) {
            deny
        } else if nr == libc::SYS_flock as u32 || (nr == libc::SYS_fcntl as u32 && locking) {
            libc::SECCOMP_RET_ERRNO
        } else if nr == libc::SYS_clone3 as u32 {
            libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32
        } else if nr == libc::SYS_clone as u32 && args[0] as u32 & NEW_NAMESPACES != 0 {
            deny
        } else {
            libc::SECCOMP_RET_ALLOW
        }
    }

    #[test]
    fn every_call_gets_what_the_rules_say() {
        let program = filter();
        assert!(
            program.len() > 1,
            "the layout failed: {} instructions",
            program.len()
        );
        let args_tried = [
            [0, 0],
            [u64::from(NEW_NAMESPACES), libc::F_SETLK as u64],
            [libc::CLONE_NEWNET as u64, libc::F_GETLK as u64],
            [libc::SIGCHLD as u64, libc::F_OFD_SETLKW as u64],
            [u64::MAX, libc::F_SETFD as u64],
        ];
        let numbers = (0..1024).chain([X32_SYSCALL_BIT, X32_SYSCALL_BIT + 1, u32::MAX]);
        for nr in numbers {
            for args in args_tried {
                for arch in [AUDIT_ARCH, 0x4000_0003] {
                    assert_eq!(
                        run(&program, arch, nr, args),
                        expected(arch, nr, args),
                        "call {nr} with {args:?} on arch {arch:#x}"
                    );
                }
            }
        }
    }

    #[test]
    fn every_jump_lands_inside_the_program() {
        let program = filter();
        assert!(
            program.len() < 4096,
            "BPF programs are limited to 4096 instructions"
        );
        for (at, instruction) in program.iter().enumerate() {
            if u32::from(instruction.code) & 0x07 == libc::BPF_JMP {
                let furthest = at + 1 + usize::from(instruction.jt.max(instruction.jf));
                assert!(furthest < program.len(), "jump at {at} leaves the program");
            }
        }
        let last = program.last().expect("a program");
        assert_eq!(u32::from(last.code), libc::BPF_RET | libc::BPF_K);
    }
}
