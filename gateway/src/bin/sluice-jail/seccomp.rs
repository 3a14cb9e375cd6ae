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

fn statement(code: u32, k: u32) -> sock_filter {
    sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u32, k: u32, jt: u8, jf: u8) -> sock_filter {
    sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    }
}

/// The filter program.
pub(crate) fn filter() -> Vec<sock_filter> {
    use libc::{BPF_ABS, BPF_JEQ, BPF_JGE, BPF_JMP, BPF_JSET, BPF_K, BPF_LD, BPF_RET, BPF_W};
    let load = |offset| statement(BPF_LD | BPF_W | BPF_ABS, offset);
    let ret = |value| statement(BPF_RET | BPF_K, value);
    let deny = libc::SECCOMP_RET_ERRNO | (libc::EPERM as u32 & libc::SECCOMP_RET_DATA);
    let mut program = vec![
        load(ARCH),
        jump(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH, 1, 0),
        ret(libc::SECCOMP_RET_KILL_PROCESS),
        load(NR),
        // x32 calls: refused outright.
        jump(BPF_JMP | BPF_JGE | BPF_K, X32_SYSCALL_BIT, 0, 1),
        ret(deny),
    ];
    for &call in DENIED {
        program.push(jump(BPF_JMP | BPF_JEQ | BPF_K, call as u32, 0, 1));
        program.push(ret(deny));
    }
    // Locks: success without effect (errno 0 means the call returns 0 unexecuted).
    let pretend = libc::SECCOMP_RET_ERRNO;
    program.push(jump(
        BPF_JMP | BPF_JEQ | BPF_K,
        libc::SYS_flock as u32,
        0,
        1,
    ));
    program.push(ret(pretend));
    let commands = LOCKING_FCNTL.len() as u8;
    // Not fcntl: past the block (its load, the command tests and two returns).
    program.push(jump(
        BPF_JMP | BPF_JEQ | BPF_K,
        libc::SYS_fcntl as u32,
        0,
        commands + 3,
    ));
    program.push(load(ARG1_LOW));
    for (at, &command) in LOCKING_FCNTL.iter().enumerate() {
        let to_pretend = commands - 1 - at as u8;
        let last = at as u8 == commands - 1;
        program.push(jump(
            BPF_JMP | BPF_JEQ | BPF_K,
            command as u32,
            to_pretend,
            u8::from(last),
        ));
    }
    program.push(ret(pretend));
    program.push(ret(libc::SECCOMP_RET_ALLOW));
    // clone3 passes its flags in memory the filter cannot read: ENOSYS makes the C
    // library fall back to clone, whose flags it can.
    program.push(jump(
        BPF_JMP | BPF_JEQ | BPF_K,
        libc::SYS_clone3 as u32,
        0,
        1,
    ));
    program.push(ret(
        libc::SECCOMP_RET_ERRNO | (libc::ENOSYS as u32 & libc::SECCOMP_RET_DATA)
    ));
    program.push(jump(
        BPF_JMP | BPF_JEQ | BPF_K,
        libc::SYS_clone as u32,
        0,
        3,
    ));
    program.push(load(ARG0_LOW));
    program.push(jump(BPF_JMP | BPF_JSET | BPF_K, NEW_NAMESPACES, 0, 1));
    program.push(ret(deny));
    program.push(ret(libc::SECCOMP_RET_ALLOW));
    program
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(last.k, libc::SECCOMP_RET_ALLOW);
    }
}
