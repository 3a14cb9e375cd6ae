//! The interpreter's side of the conversation: the task that reads its replies (one
//! JSON line per cell, numbered, checked to be in step) and the idle watchdog that ends
//! an interpreter using the CPU while no cell runs.

use super::cell_processes::{descendants, listed};
use super::{CellReply, IDLE_CHECK, IDLE_CPU_ALLOWANCE, IDLE_CPU_BANK, IDLE_CPU_PERCENT};
use crate::sys::{self, Signal};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, BufReader};
use tokio::sync::Notify;

/// One line from the interpreter.
#[derive(Debug, serde::Deserialize)]
struct Line {
    /// The cell it is about.
    cell: Option<u64>,
    #[serde(default)]
    started: bool,
    exit_code: Option<i32>,
    /// The exception the cell raised (`ename`, `evalue`, `traceback`).
    #[serde(default)]
    error: Option<sluice_protocol::CellException>,
    /// A query's answer (its cell is 0).
    #[serde(default)]
    answer: Option<serde_json::Value>,
    /// The interpreter has started and reads cells (said once, before the first).
    #[serde(default)]
    ready: bool,
}

/// Most lines of a traceback kept, and most bytes of each part of an exception: the
/// terminal event stays small whatever the interpreter says.
const MAX_TRACEBACK_LINES: usize = 200;
/// The longest line the driver writes (it keeps an exception's report below this).
const MAX_REPLY_BYTES: u64 = 256 * 1024;
const MAX_EXCEPTION_TEXT: usize = 16 * 1024;

/// The exception as the event carries it: long texts and tracebacks cut short (a
/// traceback keeps its first and last lines).
fn bounded_exception(
    mut exception: sluice_protocol::CellException,
) -> sluice_protocol::CellException {
    let cut = |text: &mut String| {
        if text.len() > MAX_EXCEPTION_TEXT {
            let mut end = MAX_EXCEPTION_TEXT;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
            text.push_str("...");
        }
    };
    cut(&mut exception.ename);
    cut(&mut exception.evalue);
    let lines = &mut exception.traceback;
    if lines.len() > MAX_TRACEBACK_LINES {
        let dropped = lines.len() - MAX_TRACEBACK_LINES;
        let tail = lines.split_off(lines.len() - MAX_TRACEBACK_LINES / 2);
        lines.truncate(MAX_TRACEBACK_LINES / 2);
        lines.push(format!("... {dropped} lines left out ..."));
        lines.extend(tail);
    }
    lines.iter_mut().for_each(cut);
    exception
}

/// The current cell as the control socket's reader and the cell's pump see it.
#[derive(Debug, Default)]
pub(super) struct CellState {
    /// The interpreter has discarded stale interrupts and runs the cell: an interrupt
    /// sent from now on is meant for it.
    pub(super) started: bool,
    /// An interrupt asked for before `started`, sent as soon as the cell starts.
    pub(super) interrupt_wanted: bool,
    /// How the cell ended; `Err` once the interpreter is gone.
    pub(super) reply: Option<Result<CellReply, ()>>,
    /// The cell's number (the interpreter's first cell is 1).
    pub(super) number: u64,
    /// The cell was sent and has not been answered: a line from the interpreter is
    /// expected only now.
    pub(super) awaited: bool,
    /// No cell (nor query) runs: the interpreter's CPU time, and the time, when the
    /// idle budget was last brought up to date.
    pub(super) idle_from: Option<(Duration, std::time::Instant)>,
    /// The idle budget: CPU time, in microseconds, the interpreter has in hand to use
    /// while no cell runs ([`super::IDLE_CPU_ALLOWANCE`] at the start; kept across
    /// cells). Below zero, it is ended.
    pub(super) in_hand_usec: i64,
    /// Why the gateway ended the interpreter, once it did.
    pub(super) ended: Option<String>,
    /// The interpreter is being reaped: its pid must not be signalled any more.
    pub(super) closed: bool,
    /// What is awaited is a query's answer (its lines name cell 0), not a cell's.
    pub(super) query: bool,
    /// A query's answer; `Err` once the interpreter is gone.
    pub(super) answer: Option<Result<serde_json::Value, ()>>,
}

/// What the control socket's reader and the idle watchdog share with the kernel.
#[derive(Debug)]
pub(super) struct Replies {
    pub(super) pid: u32,
    pub(super) current: Mutex<CellState>,
    pub(super) arrived: Notify,
    /// The v2 cgroup's directory, whose `cpu.stat` counts the whole tree's CPU time and
    /// whose `cgroup.kill` ends it.
    pub(super) cgroup_dir: Option<PathBuf>,
    /// The cgroup's process list (also v1).
    pub(super) procs: Option<PathBuf>,
    /// The driver said it has started (its `{"ready": true}`): cells may be sent.
    pub(super) ready: AtomicBool,
}

impl Replies {
    /// CPU time the interpreter has used: its cgroup's where cgroup v2 counts it, else
    /// every thread of it and its descendants.
    pub(super) fn cpu(&self) -> Duration {
        self.cpu_of(None)
    }

    /// As [`Replies::cpu`], with the interpreter's descendants already listed (`tree`,
    /// the interpreter itself not included) when the caller has them.
    pub(super) fn cpu_of(&self, tree: Option<&[u32]>) -> Duration {
        let counted = self.cgroup_dir.as_ref().and_then(|dir| {
            let text = std::fs::read_to_string(dir.join("cpu.stat")).ok()?;
            text.lines().find_map(|line| {
                let (name, value) = line.split_once(' ')?;
                (name == "usage_usec").then(|| value.trim().parse::<u64>().ok())?
            })
        });
        if let Some(usec) = counted {
            return Duration::from_micros(usec);
        }
        let listed;
        let tree = match tree {
            Some(tree) => tree,
            None => {
                listed = descendants(self.pid);
                &listed
            }
        };
        tree.iter()
            .copied()
            .chain([self.pid])
            .map(threads_cpu)
            .sum()
    }

    /// Ends the interpreter for `why` (once), with everything in its group and cgroup.
    /// Called with the state locked, so a reap cannot come in between.
    pub(super) fn end(&self, cell: &mut CellState, why: String) {
        if cell.closed || cell.ended.is_some() {
            return;
        }
        tracing::warn!(pid = self.pid, %why, "ending a persistent interpreter");
        cell.ended = Some(why);
        let _ = sys::signal_group(self.pid, Signal::Kill);
        if let Some(dir) = &self.cgroup_dir {
            let _ = std::fs::write(dir.join("cgroup.kill"), "1");
        }
        if let Some(file) = &self.procs {
            for pid in listed(file) {
                let _ = sys::kill(pid);
            }
        }
    }

    /// Brings an idle interpreter's budget up to now (it earns
    /// [`IDLE_CPU_PERCENT`] of the time since the last look, up to [`IDLE_CPU_BANK`] in
    /// hand, and spends the CPU time it used meanwhile), ending it once the budget is
    /// overspent; returns why the gateway ended it, if it did.
    pub(super) fn check_idle(&self) -> Option<String> {
        let mut cell = lock(&self.current);
        if let (Some((from, since)), None) = (cell.idle_from, &cell.ended) {
            let cpu = self.cpu();
            let now = std::time::Instant::now();
            let used = cpu.saturating_sub(from);
            let earned = now.saturating_duration_since(since) * IDLE_CPU_PERCENT / 100;
            let in_hand = cell.in_hand_usec;
            cell.in_hand_usec = idle_balance(in_hand, earned, used);
            cell.idle_from = Some((cpu, now));
            if cell.in_hand_usec < 0 {
                let why = format!(
                    "it used {} ms of CPU time while no cell ran, in the {} ms since the gateway last looked (a query's lookup counts past its first 100 ms), with {} ms in hand (an interpreter starts with {} ms, earns {IDLE_CPU_PERCENT} % of the time no cell runs and holds at most {} ms)",
                    used.as_millis(),
                    now.saturating_duration_since(since).as_millis(),
                    in_hand.max(0) / 1000,
                    IDLE_CPU_ALLOWANCE.as_millis(),
                    IDLE_CPU_BANK.as_millis()
                );
                self.end(&mut cell, why);
            }
        }
        cell.ended.clone()
    }
}

/// The idle budget after a look: what was in hand, plus what was `earned` since (at
/// most [`IDLE_CPU_BANK`] in hand), less the CPU time `used` since.
fn idle_balance(in_hand_usec: i64, earned: Duration, used: Duration) -> i64 {
    in_hand_usec
        .saturating_add(usec(earned))
        .min(usec(IDLE_CPU_BANK))
        .saturating_sub(usec(used))
}

/// A duration in whole microseconds, as the idle budget counts.
fn usec(duration: Duration) -> i64 {
    i64::try_from(duration.as_micros()).unwrap_or(i64::MAX)
}

/// CPU time of every thread of process `pid` (`/proc/<pid>/task/*/schedstat`).
fn threads_cpu(pid: u32) -> Duration {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Duration::ZERO;
    };
    tasks
        .flatten()
        .filter_map(|task| {
            let text = std::fs::read_to_string(task.path().join("schedstat")).ok()?;
            text.split_whitespace().next()?.parse::<u64>().ok()
        })
        .map(Duration::from_nanos)
        .sum()
}

/// Checks an idle interpreter's CPU time every [`IDLE_CHECK`] until it ends it.
pub(super) async fn watch_idle(replies: Arc<Replies>) {
    let mut tick = tokio::time::interval(IDLE_CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if replies.check_idle().is_some() {
            return;
        }
    }
}

pub(super) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Reads the interpreter's replies, one JSON line per cell.
pub(super) async fn read_replies(
    mut control: BufReader<tokio::net::unix::OwnedReadHalf>,
    replies: Arc<Replies>,
) {
    let mut line = Vec::new();
    loop {
        line.clear();
        // One reply is a JSON line (with an exception, of a bounded size); anything
        // longer is not the driver talking. Read as bytes: a line that is not UTF-8 is
        // not an answer either.
        let read = (&mut control)
            .take(MAX_REPLY_BYTES)
            .read_until(b'\n', &mut line)
            .await;
        let parsed = match read {
            // Its end (it exited, or closed the socket): how it ended is the reaper's to say.
            Ok(0) => Err(None),
            Err(err) => {
                tracing::warn!(%err, "could not read the interpreter's socket");
                Err(Some("its socket to the gateway failed"))
            }
            Ok(_) if !line.ends_with(b"\n") => {
                tracing::warn!("the interpreter sent an overlong line; treating it as gone");
                Err(Some("it wrote the gateway a line longer than any answer"))
            }
            Ok(_) => serde_json::from_slice::<Line>(&line).map_err(|err| {
                tracing::warn!(%err, "the interpreter sent an unreadable reply");
                Some("it wrote the gateway a line that is not an answer")
            }),
        };
        let mut cell = lock(&replies.current);
        // Only the cell being waited for may be answered, once: anything else is not
        // the driver talking in step (a cell faking its end, or the real end after it).
        // The start is said once, before any cell's answer (a query may already be
        // waiting: it was sent anyway).
        let in_step = parsed.as_ref().map_or(true, |line| {
            if line.ready {
                line.cell.is_none() && !replies.ready.load(Ordering::Acquire)
            } else if cell.query {
                cell.awaited && line.cell == Some(0) && !line.started && line.answer.is_some()
            } else {
                cell.awaited && line.cell == Some(cell.number) && !(line.started && cell.started)
            }
        });
        if !in_step {
            replies.end(
                &mut cell,
                "it wrote to the gateway out of step (a reply while no cell ran, or a second reply for one cell)".to_owned(),
            );
            cell.reply = Some(Err(()));
            cell.answer = Some(Err(()));
            drop(cell);
            replies.arrived.notify_waiters();
            return;
        }
        match parsed {
            Ok(Line { ready: true, .. }) => replies.ready.store(true, Ordering::Release),
            Ok(Line {
                answer: Some(answer),
                ..
            }) if cell.query => {
                cell.awaited = false;
                cell.answer = Some(Ok(answer));
            }
            Ok(Line { started: true, .. }) => {
                cell.started = true;
                if std::mem::take(&mut cell.interrupt_wanted) {
                    drop(cell);
                    if let Err(err) = sys::signal_group(replies.pid, Signal::Interrupt) {
                        tracing::warn!(%err, "could not interrupt the interpreter");
                    }
                }
                continue;
            }
            Ok(Line {
                exit_code, error, ..
            }) => {
                cell.awaited = false;
                cell.reply = Some(Ok(CellReply {
                    exit_code: exit_code.unwrap_or(1),
                    number: cell.number,
                    exception: error.map(bounded_exception),
                }));
            }
            Err(why) => {
                // A line that is not an answer: the conversation cannot go on, and the
                // interpreter is ended at once, so a cell waiting for its answer ends
                // (`kernel_lost`) rather than at its timeout.
                if let Some(why) = why {
                    replies.end(&mut cell, why.to_owned());
                }
                cell.reply = Some(Err(()));
                cell.answer = Some(Err(()));
                drop(cell);
                replies.arrived.notify_waiters();
                return;
            }
        }
        drop(cell);
        replies.arrived.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// The balance carries over: a burner that spends 80 ms in each 100 ms gap between
    /// trivial cells (earning 10 ms) runs out after a few gaps, however many cells.
    #[test]
    fn the_idle_budget_is_spent_across_gaps_and_banks_at_most_its_cap() {
        let mut in_hand = usec(IDLE_CPU_ALLOWANCE);
        let mut gaps = 0;
        while in_hand >= 0 {
            in_hand = idle_balance(in_hand, ms(100) * IDLE_CPU_PERCENT / 100, ms(80));
            gaps += 1;
            assert!(gaps < 10, "never ran out: {in_hand}");
        }
        assert_eq!(gaps, 3);
        // A heartbeat under 10 % never runs out.
        let mut in_hand = usec(IDLE_CPU_ALLOWANCE);
        for _ in 0..10_000 {
            in_hand = idle_balance(in_hand, ms(500) * IDLE_CPU_PERCENT / 100, ms(20));
        }
        assert_eq!(in_hand, usec(IDLE_CPU_BANK) - usec(ms(20)));
        // An hour idle banks the cap, not 360 s: a 3 s burst overspends it.
        let banked = idle_balance(usec(IDLE_CPU_ALLOWANCE), Duration::from_secs(360), ms(0));
        assert_eq!(banked, usec(IDLE_CPU_BANK));
        assert!(idle_balance(banked, ms(50), Duration::from_secs(3)) < 0);
    }
}
