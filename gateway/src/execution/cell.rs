//! A cell in its session's persistent interpreter: waiting for the cell's turn,
//! starting the interpreter (with its own slot and budget) when the session has none,
//! handing over the code, and supervising the cell like a program.

use super::kernel::{self, Kernel, KernelKind};
use super::launch::{self, Launched};
use super::program::{Cell, Program};
use super::verdict::{self, cell_not_taken};
use super::{reserve, Run, Slot, StdinQueue};
use sluice_protocol::{ErrorCode, Event, LimitKind, Usage};
use std::io;
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::time::Instant;

/// Longest a fresh interpreter waits for the session's retired one to be reaped (it
/// holds its slot under the interpreter caps until then).
const RETIRED_WAIT: Duration = Duration::from_secs(3);

/// How often the CPU time of an interpreter still starting is looked at (the pump
/// looks once the cell runs).
const START_CPU_LOOK: Duration = Duration::from_millis(50);

/// Waits for the cell's turn, starts the session's interpreter if it has none, sends
/// the cell and supervises it.
pub(super) async fn run_cell(
    mut run: Run,
    kind: KernelKind,
    mut after: oneshot::Receiver<()>,
    turn: oneshot::Sender<()>,
    stdin: StdinQueue,
) -> String {
    let spec = run.spec.clone();
    let id = spec.id.clone();
    let session = run.ctx.session.clone();
    let waited = tokio::select! {
        biased;
        _ = &mut after => true,
        () = run.cancel.cancelled() => false,
    };
    if !waited {
        let event = Event::cancelled(id.clone(), "execution cancelled before it started");
        run.finish(event).await;
        // The next cell still waits for the one before this one, but this execution is
        // over: its place in the queue is passed on in the background.
        tokio::spawn(async move {
            let _ = after.await;
            drop(turn);
        });
        return id;
    }
    if run.cancel.is_cancelled() || session.is_ended() {
        // Its turn came just as its session ended (or it was cancelled): it must not
        // start an interpreter in a session that is gone.
        let event = Event::cancelled(id.clone(), "execution cancelled before it started");
        run.finish(event).await;
        return id;
    }
    let seat = session.interpreter();
    let mut guard = seat.take_turn().await;
    seat.restart_if_asked(&mut guard, session.stream()).await;
    if guard.as_ref().is_some_and(|kernel| kernel.kind() != kind) {
        seat.retire(guard.take());
    }
    // An interpreter that ran while no cell did (or exited) is replaced, and the cell
    // is told why its session's state is gone.
    let mut note = None;
    if let Some(why) = guard.as_ref().and_then(Kernel::ended_while_idle) {
        note = Some(format!(
            "the session's interpreter was ended: {why}; the session's state is lost and this cell runs in a fresh interpreter"
        ));
        seat.retire(guard.take());
    }
    // The interpreter holds its network and limits for the session's life: a cell
    // whose credential allows less (another grant of the tenant started it) is refused.
    let beyond = guard.as_ref().and_then(|kernel| {
        kernel.beyond(run.ctx.host.gives_network(&spec.runtime), &run.ctx.grant)
    });
    if let Some(why) = beyond {
        let message = format!(
            "session {:?}'s interpreter was started with {why}; run this cell in a session of your own",
            session.id()
        );
        run.finish(Event::error(
            Some(id.clone()),
            ErrorCode::NotPermitted,
            message,
        ))
        .await;
        return id;
    }
    if guard.is_none() {
        // An interpreter of this session just retired (a restart, one that ended) still
        // holds its slot until it is reaped: a fresh one waits for that, briefly.
        let _ = tokio::time::timeout(RETIRED_WAIT, seat.retired()).await;
        let principal = run.ctx.principal.clone();
        let slot = match run.ctx.kernel_slots.clone().try_acquire_owned() {
            Err(_) => Err("the gateway runs as many persistent interpreters as it may (see --max-kernels)".to_owned()),
            Ok(permit) => match run.ctx.kernels_per_peer.try_acquire_within(&principal, run.ctx.grant.narrowing.max_kernels) {
                Err(_) => Err(format!("your {principal}'s sessions have as many persistent interpreters as it may (see --max-kernels-per-peer, and the max_kernels claim)")),
                Ok(peer_unit) => Ok(crate::admission::ExecutionSlot::new(permit, peer_unit)),
            },
        };
        let permit = match slot {
            Ok(slot) => slot,
            Err(why) => {
                let message = format!("{why}; end a persistent session first");
                run.finish(Event::error(
                    Some(id.clone()),
                    ErrorCode::TooManyExecutions,
                    message,
                ))
                .await;
                return id;
            }
        };
        let host = &run.ctx.host;
        let processes = spec
            .limits
            .processes
            .saturating_add(launch::jail_processes(host));
        // The interpreter holds the limits it starts with for the session's life.
        let reserved = match reserve(host, principal, &spec.limits, false) {
            Ok(reserved) => reserved,
            Err((code, message)) => {
                run.finish(Event::error(Some(id.clone()), code, message))
                    .await;
                return id;
            }
        };
        // Making its cgroup, workspace and jail blocks (forks, mounts, file writes):
        // off the async workers, as a program's launch is.
        let (start_spec, start_host) = (spec.clone(), host.clone());
        let started = tokio::task::spawn_blocking(move || {
            start_interpreter(
                &start_spec,
                &start_host,
                kind,
                processes,
                Slot::new(permit, reserved),
            )
        })
        .await;
        let started = match started {
            Ok(started) => started,
            Err(err) => {
                // The gateway's own fault (a panic), not the sandbox's: as for programs.
                if err.is_panic() {
                    tracing::error!(%err, "starting the interpreter panicked");
                }
                let message = "the gateway failed to start the interpreter";
                run.finish(Event::error(Some(id.clone()), ErrorCode::Internal, message))
                    .await;
                return id;
            }
        };
        match started {
            Ok(kernel) => {
                kernel.attribute_package_proxy(&run.ctx.principal);
                *guard = Some(kernel);
            }
            Err(err) => {
                let metrics = &run.ctx.host.observe.metrics;
                metrics.sandbox_failed(crate::observe::SandboxStage::Interpreter);
                tracing::warn!(%err, "could not start the interpreter");
                let message = format!(
                    "could not start the {} interpreter: {err}",
                    spec.runtime.name
                );
                run.finish(Event::error(
                    Some(id.clone()),
                    ErrorCode::SpawnFailed,
                    message,
                ))
                .await;
                return id;
            }
        }
    }
    // A fresh interpreter takes cells once its start is over (its imports at start can
    // take a while); the cell waits for that within its own time, and what the start
    // uses counts as the cell's (its CPU time and its wall-clock limit count from here:
    // code run at the start, a session's sitecustomize say, is no free CPU).
    let limits = spec.limits;
    let started_at = Instant::now();
    let deadline = started_at + limits.timeout;
    let tree_cpu_before = guard.as_ref().map(Kernel::tree_cpu);
    if let (Some(kernel), Some(before)) = (guard.as_ref(), tree_cpu_before) {
        let cpu_limit = Duration::from_millis(limits.cpu_ms);
        let over = loop {
            // The pump checks the cell's CPU once it runs; until then, here.
            let look = (Instant::now() + START_CPU_LOOK).min(deadline);
            tokio::select! {
                biased;
                () = run.cancel.cancelled() => break None,
                () = kernel.ready() => break None,
                () = tokio::time::sleep_until(look) => {
                    // The cgroup's count where v2 keeps one: no walk of the tree.
                    let used = kernel.tree_cpu().saturating_sub(before);
                    let limit = if look >= deadline {
                        Some(LimitKind::Timeout)
                    } else {
                        (used >= cpu_limit).then_some(LimitKind::Cpu)
                    };
                    if let Some(limit) = limit {
                        let (peak_memory, cpu) = kernel.usage_now();
                        let used = cpu.saturating_sub(before);
                        let usage = Usage {
                            duration_ms: started_at.elapsed().as_secs_f64() * 1000.0,
                            first_output_ms: None,
                            cpu_ms: used.as_secs_f64() * 1000.0,
                            peak_memory_bytes: peak_memory,
                            stdout_bytes: 0,
                            stderr_bytes: 0,
                        };
                        break Some(verdict::cell_start_over(&id, &limits, limit, usage));
                    }
                }
            }
        };
        if let Some(event) = over {
            // Killed: its start took what the cell may use.
            seat.retire(guard.take());
            drop(guard);
            run.finish(event).await;
            if session.is_ended() {
                seat.retire_when_free().await;
            }
            return id;
        }
    }
    if run.cancel.is_cancelled() {
        // Cancelled while its interpreter started: nothing was sent, so the interpreter
        // stays for the session's next cell (still starting, maybe), and the code never
        // runs. From now on no cell runs: its CPU time counts against its idle budget.
        if let Some(kernel) = guard.as_ref() {
            kernel.idle(kernel.tree_cpu());
        }
        drop(guard);
        let event = Event::cancelled(id.clone(), "execution cancelled before it started");
        run.finish(event).await;
        if session.is_ended() {
            seat.retire_when_free().await;
        }
        return id;
    }
    // An interpreter that stops reading its socket must not hold the cell (and the
    // session's queue) forever: handing over the cell obeys cancel and the timeout.
    let sent = match guard.as_mut() {
        Some(kernel) => {
            let tree_cpu_before = tree_cpu_before.unwrap_or_else(|| kernel.tree_cpu());
            tokio::select! {
                sent = kernel.send(&spec.code) => sent.map(|pipes| (pipes, tree_cpu_before, started_at)),
                () = run.cancel.cancelled() => Err(io::Error::other("cancelled")),
                () = tokio::time::sleep_until(deadline) => Err(io::Error::from(io::ErrorKind::TimedOut)),
            }
        }
        None => Err(io::Error::other("no interpreter")),
    };
    match sent {
        Ok((pipes, tree_cpu_before, started_at)) => {
            let launched = Launched {
                workdir: None,
                program: Program::Cell(Cell {
                    kernel: guard,
                    tree_cpu_before,
                    _turn: turn,
                    note,
                }),
                stdin: pipes.stdin,
                stdout: pipes.stdout,
                stderr: Some(pipes.stderr),
                started_at,
                warm: false,
                workspace_source: None,
            };
            run.supervise(launched, stdin).await;
        }
        Err(err) => {
            // The interpreter cannot take cells any more: the next one starts afresh.
            seat.retire(guard.take());
            // Let go of the seat: the end of this function may wait for it.
            drop(guard);
            let timed_out = err.kind() == io::ErrorKind::TimedOut;
            let event = cell_not_taken(&id, run.cancel.is_cancelled(), timed_out, &err, &limits);
            run.finish(event).await;
        }
    }
    // A session that ended meanwhile takes its interpreter with it.
    if session.is_ended() {
        seat.retire_when_free().await;
    }
    id
}

/// Starts the session's interpreter (blocking: run off the async workers): its cgroup,
/// then the interpreter in its jail, with the environment a program of the same
/// request would get and the per-process limits that make sense for a long-lived one.
fn start_interpreter(
    spec: &super::ExecutionSpec,
    host: &super::Host,
    kind: KernelKind,
    processes: u64,
    slot: Slot,
) -> io::Result<Kernel> {
    let packages = host.package_env(&spec.runtime, spec.workspace.as_deref());
    let env = launch::environment(
        &spec.runtime,
        &spec.env,
        &host.base_env,
        &host.work_root,
        host.gives_network(&spec.runtime),
        &packages,
    );
    // A CPU limit would add up over every cell of the session: only the per-process
    // limits that make sense for a long-lived interpreter apply.
    let rlimits = crate::sys::Rlimits {
        cpu_seconds: None,
        ..launch::rlimits(&spec.limits)
    };
    let cgroup = host
        .cgroups
        .create_persistent(spec.limits.memory_bytes, processes)?;
    let limits = kernel::KernelLimits {
        rlimits,
        scratch_bytes: spec.limits.workspace_bytes,
        processes: spec.limits.processes,
        memory_bytes: spec.limits.memory_bytes,
    };
    Kernel::start(
        spec.workspace.as_deref(),
        kind,
        &spec.runtime,
        host,
        &env,
        limits,
        cgroup,
        slot,
    )
}
