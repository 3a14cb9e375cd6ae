//! The live progress line on stderr (a bar when the run's size is known), drawn by
//! `indicatif` only when stderr is a terminal.

use crate::driver::Run;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal as _;
use std::sync::Arc;
use std::time::Duration;

/// Shows the run's progress until it is over; nothing when stderr is not a terminal or
/// `enabled` is false.
pub fn spawn(run: Arc<Run>, enabled: bool) -> Option<tokio::task::JoinHandle<()>> {
    if !enabled || !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = match run.scenario.executions {
        Some(total) => ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr()),
        None => ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()),
    };
    let template = if run.scenario.executions.is_some() {
        "{elapsed_precise} [{bar:30}] {pos}/{len} ended  {msg}"
    } else {
        "{elapsed_precise} {spinner} {pos} ended  {msg}"
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = run.over.cancelled() => break,
            }
            let (ended, message) = {
                let state = run.lock();
                let lag = crate::figures::Summary::of(
                    &state
                        .figures
                        .lag_histogram(f64::NEG_INFINITY, f64::INFINITY),
                );
                let lag = if lag.count > 0 {
                    format!("  lag p99 {:.1} ms", lag.p99_ms)
                } else {
                    String::new()
                };
                (
                    state.ended,
                    format!(
                        "running {}  refused {}  events {}  violations {}{lag}",
                        state.running(),
                        state.refused_count(),
                        state.figures.events,
                        state.violations.total()
                    ),
                )
            };
            bar.set_position(ended);
            bar.set_message(message);
        }
        bar.finish_and_clear();
    }))
}
