//! [`Program`]: what an execution runs, as the pump sees it. Either a process of its own
//! (its own group, killed outright) or a cell in its session's persistent interpreter
//! (interrupted first, so the session's state survives when it can).

use super::kernel::Kernel;
use super::process::ChildGroup;
use crate::sys::{Reaped, Signal};
use std::io;
use std::time::Duration;
use tokio::sync::{oneshot, OwnedMutexGuard};

/// How long a cell's interpreter that closed its control socket gets to finish exiting
/// on its own before it is killed.
const LOST_INTERPRETER_GRACE: Duration = Duration::from_secs(2);

/// The kernel slot of a persistent session, held for the whole of one cell.
pub(crate) type KernelGuard = OwnedMutexGuard<Option<Kernel>>;

/// A cell running in a kernel.
#[derive(Debug)]
pub(crate) struct Cell {
    pub(crate) kernel: KernelGuard,
    /// The interpreter's tree's CPU time before the cell ([`Kernel::tree_cpu`]): the
    /// cell's `cpu_ms` (limit and usage) counts from here.
    pub(crate) tree_cpu_before: Duration,
    /// Dropped when the cell is over: the session's next cell may start.
    pub(crate) _turn: oneshot::Sender<()>,
    /// Why the cell runs in a fresh interpreter although its session had one (said in
    /// its `started` event).
    pub(crate) note: Option<String>,
}

impl Cell {
    fn kernel(&self) -> Option<&Kernel> {
        self.kernel.as_ref()
    }
}

#[derive(Debug)]
pub(crate) enum Program {
    Process(Box<ChildGroup>),
    Cell(Cell),
}

/// How a program ended.
#[derive(Debug)]
pub(crate) struct Ended {
    pub(crate) reaped: Reaped,
    /// A cell whose interpreter died (or had to be killed): the session's state is gone
    /// and its next cell starts a fresh interpreter.
    pub(crate) kernel_lost: bool,
    /// Why the gateway ended that interpreter, when it did on its own account.
    pub(crate) lost_because: Option<String>,
    /// What the program's cgroup saw (for a cell: its interpreter's, once it died).
    pub(crate) cgroup: Option<crate::sandbox::CgroupReport>,
    /// A cell its interpreter answered: the cell's number and the exception it raised.
    pub(crate) cell: Option<(u64, Option<sluice_protocol::CellException>)>,
}

impl Program {
    /// What the `started` event says (a cell that runs in a fresh interpreter: why).
    pub(crate) fn note(&self) -> Option<&str> {
        match self {
            Self::Process(_) => None,
            Self::Cell(cell) => cell.note.as_deref(),
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        match self {
            Self::Process(child) => child.pid(),
            Self::Cell(cell) => cell.kernel().map_or(0, Kernel::pid),
        }
    }

    /// Resolves once the program has exited (a cell: the interpreter answered, or died).
    pub(crate) async fn exited(&self) {
        match self {
            Self::Process(child) => child.exited().await,
            Self::Cell(cell) => {
                if let Some(kernel) = cell.kernel() {
                    kernel.cell_done().await;
                }
            }
        }
    }

    /// Asks the program to stop: SIGTERM to a process group, SIGINT to an interpreter
    /// (KeyboardInterrupt in the cell).
    pub(crate) fn interrupt(&self) {
        match self {
            Self::Process(child) => child.signal(Signal::Terminate),
            Self::Cell(cell) => {
                if let Some(kernel) = cell.kernel() {
                    kernel.interrupt();
                }
            }
        }
    }

    /// Kills the program's whole group (for a cell: the interpreter, and its state).
    pub(crate) fn kill(&self) {
        match self {
            Self::Process(child) => child.signal(Signal::Kill),
            Self::Cell(cell) => {
                if let Some(kernel) = cell.kernel() {
                    kernel.kill();
                }
            }
        }
    }

    /// The cheap part of the cgroup report (OOM kills, refused forks), for checks while
    /// the program runs: a process of its own only (a cell shares its interpreter's
    /// cgroup, whose death is reported as a lost interpreter).
    pub(crate) fn cgroup_limits_hit(&self) -> Option<crate::sandbox::CgroupReport> {
        match self {
            Self::Process(child) => child.cgroup_limits_hit(),
            Self::Cell(_) => None,
        }
    }

    /// A watch on the program's cgroup that wakes when an OOM kill or a refused fork is
    /// counted (a process of its own only).
    pub(crate) fn cgroup_limit_watch(&self) -> Option<crate::sandbox::LimitWatch> {
        match self {
            Self::Process(child) => child.cgroup_limit_watch(),
            Self::Cell(_) => None,
        }
    }

    /// The program's CPU time as its cgroup counts it (a process of its own only).
    pub(crate) fn cgroup_cpu(&self) -> Option<crate::sandbox::CpuSeen> {
        match self {
            Self::Process(child) => child.cgroup_cpu(),
            // A cell's: what its interpreter's tree used since the cell was handed over
            // (checked no earlier than it could reach the limit, as for a heavy program).
            Self::Cell(cell) => cell.kernel().map(|kernel| crate::sandbox::CpuSeen {
                used_usec: u64::try_from(
                    kernel
                        .tree_cpu()
                        .saturating_sub(cell.tree_cpu_before)
                        .as_micros(),
                )
                .unwrap_or(u64::MAX),
                heavy: true,
            }),
        }
    }

    /// A cell's interpreter's network counters, when it has no network (a process's
    /// are made by the pump, which knows its network).
    pub(crate) fn network_counters(
        &self,
    ) -> Option<std::sync::Arc<std::sync::Mutex<super::network_watch::NamespaceCounters>>> {
        match self {
            Self::Process(_) => None,
            Self::Cell(cell) => cell.kernel().and_then(Kernel::network_counters),
        }
    }

    /// True when a limit should interrupt first and kill only after the grace period.
    pub(crate) fn stops_gently(&self) -> bool {
        matches!(self, Self::Cell(_))
    }

    /// After the program exited: a process's group goes with it; a cell's interpreter
    /// stays for the next cell, but every process the cell started is killed.
    pub(crate) fn after_exit(&self) {
        match self {
            Self::Process(child) => child.signal(Signal::Kill),
            Self::Cell(cell) => {
                if let Some(kernel) = cell.kernel() {
                    kernel.end_cell_processes();
                }
            }
        }
    }

    /// Reaps a process (killing what is left of its group), or collects a cell's end.
    pub(crate) async fn reap(&mut self) -> io::Result<Ended> {
        match self {
            Self::Process(child) => {
                let reaped = child.reap().await?;
                Ok(Ended {
                    reaped,
                    kernel_lost: false,
                    lost_because: None,
                    cgroup: child.cgroup_report(),
                    cell: None,
                })
            }
            Self::Cell(cell) => {
                let Some(kernel) = cell.kernel.as_ref() else {
                    return Err(io::Error::other("the interpreter is gone"));
                };
                let (peak, tree_cpu) = kernel.usage_now();
                let cpu = tree_cpu.saturating_sub(cell.tree_cpu_before);
                if let Some(reply) = kernel.reply() {
                    // The cell is over (what it started was killed in `after_exit`):
                    // the interpreter must be idle until the next one.
                    kernel.idle(tree_cpu);
                    return Ok(Ended {
                        reaped: Reaped {
                            exit_code: Some(reply.exit_code),
                            signal: None,
                            cpu,
                            peak_memory_bytes: peak,
                        },
                        kernel_lost: false,
                        lost_because: None,
                        cgroup: None,
                        cell: Some((reply.number, reply.exception)),
                    });
                }
                // The interpreter died during the cell: the session starts afresh.
                let Some(kernel) = cell.kernel.take() else {
                    return Err(io::Error::other("the interpreter is gone"));
                };
                // Its control socket closed as it died; a jailed interpreter's exit
                // status reaches the gateway a moment later (through the jail). Killing
                // at once would report the kill instead of how it ended.
                let _ = tokio::time::timeout(LOST_INTERPRETER_GRACE, kernel.exited()).await;
                let lost_because = kernel.ended_because();
                let (reaped, mut cgroup) = kernel.shut_down().await;
                // The cgroup counts the interpreter's whole life: the cell's share is what
                // came after its start.
                let before = u64::try_from(cell.tree_cpu_before.as_micros()).unwrap_or(u64::MAX);
                if let Some(report) = cgroup.as_mut() {
                    report.cpu_usec = report.cpu_usec.map(|usec| usec.saturating_sub(before));
                }
                Ok(Ended {
                    reaped: reaped?,
                    kernel_lost: true,
                    lost_because,
                    cgroup,
                    cell: None,
                })
            }
        }
    }
}
