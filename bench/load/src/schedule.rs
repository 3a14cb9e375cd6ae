//! The shape of a run: connect every socket, issue executions as the mode says (open
//! loop at a rate from intended start times, closed loop at a concurrency, or live: all
//! at once), then wait for the outstanding ones until the drain timeout; and the small
//! seeded generator ([`Rng`]) behind every random choice.

use crate::driver::{DriveError, Run};
use crate::scenario::Mode;
use crate::socket::{self, Cmd, QUEUE};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Runs the scenario to its end; the result is in `run.state`.
pub async fn drive(run: Arc<Run>) -> Result<(), DriveError> {
    let scenario = &run.scenario;
    // Connect everything first: a gateway that refuses is reported before any load.
    let mut programs = Vec::new();
    for _ in 0..scenario.sockets {
        programs.push(socket::connect(scenario).await?);
    }
    let mut watcher_conns = Vec::new();
    for _ in 0..scenario.sockets * scenario.watchers {
        watcher_conns.push(socket::connect(scenario).await?);
    }
    let mut tasks = tokio::task::JoinSet::new();
    let mut watcher_tx = Vec::new();
    for (index, conn) in watcher_conns.into_iter().enumerate() {
        let (tx, rx) = mpsc::channel(QUEUE);
        watcher_tx.push(tx);
        let watchers = scenario.watchers.max(1);
        tasks.spawn(socket::watcher_socket(
            Arc::clone(&run),
            index / watchers,
            index % watchers,
            conn,
            rx,
        ));
    }
    let mut program_tx = Vec::new();
    for (socket, conn) in programs.into_iter().enumerate() {
        let (tx, rx) = mpsc::channel(QUEUE);
        program_tx.push(tx);
        let watchers = watcher_tx
            .iter()
            .skip(socket * scenario.watchers)
            .take(scenario.watchers)
            .cloned()
            .collect();
        tasks.spawn(socket::program_socket(
            Arc::clone(&run),
            socket,
            conn,
            rx,
            watchers,
        ));
    }
    schedule(&run, &program_tx).await;
    {
        let mut state = run.lock();
        state.issuing_done = true;
        if Run::finished(&state) {
            run.over.cancel();
        }
    }
    let _ = tokio::time::timeout(scenario.drain_timeout, run.over.cancelled()).await;
    run.over.cancel();
    while tasks.join_next().await.is_some() {}
    run.finish();
    Ok(())
}

/// Issues executions as the mode says, until the count or the duration is reached.
async fn schedule(run: &Run, sockets: &[mpsc::Sender<Cmd>]) {
    let scenario = &run.scenario;
    let mut rng = Rng::new(scenario.seed);
    let total_weight: u64 = scenario.mix.iter().map(|p| u64::from(p.weight)).sum();
    let mut pick = move || {
        let mut at = rng.below(total_weight);
        for (i, p) in scenario.mix.iter().enumerate() {
            if at < u64::from(p.weight) {
                return i;
            }
            at -= u64::from(p.weight);
        }
        0
    };
    let limit = scenario.executions.unwrap_or(u64::MAX);
    let mut issued = 0u64;
    while issued < limit && !run.over.is_cancelled() {
        if refused_everything(run) {
            break;
        }
        let intended = match scenario.mode {
            Mode::Open { rate } => {
                let intended = Duration::from_secs_f64(issued as f64 / rate);
                if scenario.duration.is_some_and(|d| intended >= d) {
                    break;
                }
                tokio::select! {
                    () = tokio::time::sleep_until((run.t0 + intended).into()) => {}
                    () = run.over.cancelled() => break,
                }
                intended
            }
            Mode::Closed { .. } => {
                let remaining = scenario.duration.map(|d| d.saturating_sub(run.now()));
                if remaining == Some(Duration::ZERO) {
                    break;
                }
                // A gateway that ends nothing for the drain timeout (a lost terminal
                // event) stops the run instead of hanging it.
                let wait = remaining.map_or(scenario.drain_timeout, |left| {
                    left.min(scenario.drain_timeout)
                });
                let acquired = tokio::time::timeout(wait, run.permits.acquire()).await.ok();
                match acquired {
                    Some(Ok(permit)) => permit.forget(),
                    _ => break,
                }
                run.now()
            }
            Mode::Live { .. } => run.now(),
        };
        let program = pick();
        let n = run.issue(program, intended);
        // Waits while the socket's queue is full; latencies still count from `intended`.
        let _ = sockets[n % sockets.len()]
            .send(Cmd::Execute(n, program))
            .await;
        issued += 1;
    }
}

/// Executions refused, none started, after which no more are issued.
const HOPELESS: u64 = 100;

/// Whether the gateway refused the first [`HOPELESS`] executions and started none (an
/// unknown language, a cap of zero): issuing more would only flood it with refusals.
fn refused_everything(run: &Run) -> bool {
    let state = run.lock();
    state.started == 0 && state.refused_count() >= HOPELESS
}

/// A tiny deterministic generator (xorshift64*) for the mix and the drop points.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// Seeded; any seed works.
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next number.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}
