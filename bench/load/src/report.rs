//! The result of a run ([`Report`]): built once from the run's state, written as the
//! human summary (stdout), as JSON (`--json`) and, by [`crate::html`], as HTML.

use crate::driver::Run;
use crate::figures::{timeline, Point, Summary};
use crate::scenario::Mode;
use crate::verify::{Example, Kind};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Everything a run found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// `ok`, `violations` or `refused`.
    pub verdict: &'static str,
    /// The scenario as resolved.
    pub scenario: serde_json::Value,
    /// When the run began, Unix seconds.
    pub started_at: f64,
    /// How long it lasted, seconds.
    pub elapsed_s: f64,
    /// Executions by fate.
    pub executions: Counts,
    /// Refusals by error code.
    pub refusals: BTreeMap<String, u64>,
    /// The first message of each refusal code.
    pub refusal_messages: BTreeMap<String, String>,
    /// Rates over the whole run.
    pub throughput: Throughput,
    /// Latency summaries.
    pub latency: Latency,
    /// Delivery lag of clock programs.
    pub lag: Lag,
    /// Violations of the protocol's guarantees, by kind, with examples.
    pub violations: Violations,
    /// Per second of the run.
    pub timeline: Vec<Point>,
    /// A live run (with a steady window).
    #[serde(skip)]
    pub live: bool,
    /// The program mix, described.
    #[serde(skip)]
    pub programs: Vec<String>,
}

/// Executions by fate.
#[derive(Debug, Clone, Serialize)]
pub struct Counts {
    /// Issued (execute sent).
    pub issued: u64,
    /// Got `started`.
    pub started: u64,
    /// Ended with a terminal event after starting.
    pub finished: u64,
    /// Refused before starting.
    pub refused: u64,
    /// Never ended (counted as missing_terminal).
    pub unfinished: u64,
    /// Sockets dropped on purpose and resumed.
    pub resumes: u64,
    /// Sockets lost without being asked to.
    pub connections_lost: u64,
}

/// Rates over the whole run.
#[derive(Debug, Clone, Serialize)]
pub struct Throughput {
    /// Executions ended per second.
    pub executions_per_s: f64,
    /// Events received per second (every socket).
    pub events_per_s: f64,
    /// Bytes of event frames received per second (every socket).
    pub bytes_per_s: f64,
    /// Events received.
    pub events: u64,
    /// Bytes received.
    pub bytes: u64,
}

/// Latency summaries, from the intended start of each execution.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    /// execute -> started.
    pub execute_to_started: Summary,
    /// execute -> first output.
    pub execute_to_first_output: Summary,
    /// execute -> terminal event.
    pub execute_to_terminal: Summary,
}

/// Delivery lag: receipt time minus the time a clock program printed.
#[derive(Debug, Clone, Serialize)]
pub struct Lag {
    /// In the steady window.
    pub steady: Summary,
    /// Every sample.
    pub all: Summary,
    /// The steady window, seconds since the run began.
    pub window_from_s: f64,
    /// Its end.
    pub window_to_s: f64,
    /// How the window was chosen.
    pub window: String,
    /// Samples that arrived before their printed time (the two clocks disagree).
    pub negative_samples: u64,
    /// Samples beyond what the harness keeps.
    pub dropped_samples: u64,
}

/// Violations by kind.
#[derive(Debug, Clone, Serialize)]
pub struct Violations {
    /// All of them.
    pub total: u64,
    /// By kind.
    pub by_kind: BTreeMap<Kind, u64>,
    /// The first few of each kind.
    pub examples: Vec<Example>,
}

impl Report {
    /// The report of a finished run.
    pub fn of(run: &Run) -> Self {
        let elapsed = run.t0.elapsed().as_secs_f64().max(1e-9);
        let state = run.lock();
        let refused: u64 = state.refused_count();
        let finished = state.ended.saturating_sub(refused);
        let last_sample = state
            .figures
            .lag_samples
            .iter()
            .map(|s| s.0)
            .fold(0.0_f64, f64::max);
        let (from, to, window) = match run.scenario.mode {
            Mode::Live { programs } => match (state.all_started, state.first_end) {
                (Some(from), to) if to.is_none_or(|to| to > from) => {
                    let to = to.unwrap_or(elapsed);
                    (
                        from,
                        to,
                        format!(
                            "clock lines printed once all {} programs were running (each had printed its first line, {from:.1} s into the run) and before the first one ended ({to:.1} s)",
                            programs as u64 - refused
                        ),
                    )
                }
                _ => (
                    f64::INFINITY,
                    f64::INFINITY,
                    format!("none: the {programs} programs were never all running at once (the first ended before the last printed: a longer --duration gives a steady window)"),
                ),
            },
            _ => (
                0.0,
                last_sample.max(elapsed),
                "every clock line (not a live run: no steady window)".to_owned(),
            ),
        };
        let violations = Violations {
            total: state.violations.total(),
            by_kind: state.violations.counts.clone(),
            examples: state.violations.examples.clone(),
        };
        let verdict = if violations.total > 0 {
            "violations"
        } else if !state.refusals.is_empty() || state.issued == 0 {
            "refused"
        } else {
            "ok"
        };
        let f = &state.figures;
        Self {
            verdict,
            scenario: run.scenario.to_json(),
            started_at: run.wall0,
            elapsed_s: elapsed,
            executions: Counts {
                issued: state.issued,
                started: state.started,
                finished,
                refused,
                unfinished: state.issued.saturating_sub(state.ended),
                resumes: state.resumes,
                connections_lost: state.connections_lost,
            },
            refusals: state.refusals.clone(),
            refusal_messages: state.refusal_messages.clone(),
            throughput: Throughput {
                executions_per_s: state.ended as f64 / elapsed,
                events_per_s: f.events as f64 / elapsed,
                bytes_per_s: f.bytes as f64 / elapsed,
                events: f.events,
                bytes: f.bytes,
            },
            latency: Latency {
                execute_to_started: Summary::of(&f.started),
                execute_to_first_output: Summary::of(&f.first_output),
                execute_to_terminal: Summary::of(&f.terminal),
            },
            lag: Lag {
                steady: Summary::of(&f.lag_histogram(from, to)),
                all: Summary::of(&f.lag_all),
                window_from_s: if from.is_finite() { from } else { 0.0 },
                window_to_s: if to.is_finite() { to } else { 0.0 },
                window,
                negative_samples: f.lag_negative,
                dropped_samples: f.lag_dropped,
            },
            violations,
            timeline: timeline(f),
            live: matches!(run.scenario.mode, Mode::Live { .. }),
            programs: run.scenario.mix.iter().map(|p| p.describe()).collect(),
        }
    }

    /// The process's exit status: 0 clean, 1 violations, 2 refusals only.
    pub fn exit_code(&self) -> i32 {
        match self.verdict {
            "ok" => 0,
            "violations" => 1,
            _ => 2,
        }
    }

    /// The human summary.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        let c = &self.executions;
        let _ = writeln!(
            out,
            "sluice load: {} executions in {:.1} s: {} finished, {} refused, {} unfinished ({} resumes, {} connections lost)",
            c.issued, self.elapsed_s, c.finished, c.refused, c.unfinished, c.resumes, c.connections_lost
        );
        for program in &self.programs {
            let _ = writeln!(out, "program: {program}");
        }
        let t = &self.throughput;
        let _ = writeln!(
            out,
            "throughput: {:.1} executions/s, {:.0} events/s, {}/s received",
            t.executions_per_s,
            t.events_per_s,
            human_bytes(t.bytes_per_s)
        );
        let _ = writeln!(
            out,
            "\n{:<28} {:>8} {:>10} {:>10} {:>10} {:>10} {:>10}",
            "latency (ms)", "count", "p50", "p90", "p99", "p99.9", "max"
        );
        let row = |out: &mut String, name: &str, s: &Summary| {
            let _ = writeln!(
                out,
                "{name:<28} {:>8} {:>10.2} {:>10.2} {:>10.2} {:>10.2} {:>10.2}",
                s.count, s.p50_ms, s.p90_ms, s.p99_ms, s.p99_9_ms, s.max_ms
            );
        };
        row(
            &mut out,
            "execute -> started",
            &self.latency.execute_to_started,
        );
        row(
            &mut out,
            "execute -> first output",
            &self.latency.execute_to_first_output,
        );
        row(
            &mut out,
            "execute -> terminal",
            &self.latency.execute_to_terminal,
        );
        if self.lag.all.count > 0 {
            if self.live {
                row(&mut out, "delivery lag (steady)", &self.lag.steady);
            }
            row(&mut out, "delivery lag (all lines)", &self.lag.all);
            let _ = writeln!(out, "lag window: {}", self.lag.window);
            if self.lag.negative_samples > 0 {
                let _ = writeln!(
                    out,
                    "note: {} lines arrived before the time they printed: the gateway's clock and this one disagree",
                    self.lag.negative_samples
                );
            }
        }
        if !self.refusals.is_empty() {
            let _ = writeln!(out, "\nrefusals:");
            for (code, count) in &self.refusals {
                let message = self
                    .refusal_messages
                    .get(code)
                    .map(String::as_str)
                    .unwrap_or("");
                let _ = writeln!(out, "  {code}: {count} ({message})");
                if code == "too_many_executions" {
                    let _ = writeln!(out, "  hint: {TOO_MANY_HINT}");
                }
            }
        }
        if self.violations.total == 0 {
            let _ = writeln!(
                out,
                "\nverification: every event checked, no violation (sequences, terminals, output, watchers)"
            );
        } else {
            let _ = writeln!(out, "\nVIOLATIONS: {}", self.violations.total);
            for (kind, count) in &self.violations.by_kind {
                let _ = writeln!(out, "  {}: {count}", kind.as_str());
            }
            let _ = writeln!(out, "first examples:");
            for example in &self.violations.examples {
                let _ = writeln!(out, "  {}: {}", example.kind.as_str(), example.detail);
            }
        }
        out
    }
}

/// What to tell the user when the gateway refuses with too_many_executions.
pub const TOO_MANY_HINT: &str = "the gateway's caps are lower than this load: start it with room for it, e.g. `sluice serve --max-executions 1100 --max-executions-per-peer 1100 --max-executions-per-connection 1100 --budget-share-per-peer 100` (see docs/load.md)";

fn human_bytes(bytes: f64) -> String {
    if bytes >= 1e9 {
        format!("{:.2} GB", bytes / 1e9)
    } else if bytes >= 1e6 {
        format!("{:.2} MB", bytes / 1e6)
    } else if bytes >= 1e3 {
        format!("{:.1} kB", bytes / 1e3)
    } else {
        format!("{bytes:.0} B")
    }
}
