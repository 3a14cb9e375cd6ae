//! The measurements of a run: HdrHistograms of the latencies (execute -> started,
//! -> first output, -> terminal, microseconds), the delivery-lag samples of clock
//! programs, and per-second counts for the time series. Summaries are computed from
//! them at the end ([`Summary`], [`timeline`]).

use hdrhistogram::Histogram;
use serde::Serialize;
use std::time::Duration;

/// Lag samples kept for the steady-state window and the time series (16 bytes each):
/// 1000 programs printing every 100 ms for 8 minutes.
const MAX_LAG_SAMPLES: usize = 5_000_000;

/// A latency histogram in microseconds, 3 significant digits, growing as needed.
pub fn histogram() -> Histogram<u64> {
    // 1 us to 1 hour at 3 significant digits: a valid configuration, so this cannot fail.
    #[allow(clippy::expect_used)]
    let mut h = Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds");
    h.auto(true);
    h
}

/// What a run measured.
#[derive(Debug)]
pub struct Figures {
    /// execute -> started.
    pub started: Histogram<u64>,
    /// execute -> first output.
    pub first_output: Histogram<u64>,
    /// execute -> terminal event.
    pub terminal: Histogram<u64>,
    /// Delivery lag of every clock line, microseconds.
    pub lag_all: Histogram<u64>,
    /// Clock lines: (when printed, seconds since the run began; lag in microseconds).
    pub lag_samples: Vec<(f64, u64)>,
    /// Lag samples not kept (beyond the cap).
    pub lag_dropped: u64,
    /// Lag samples where the line arrived before the time it printed (clocks apart).
    pub lag_negative: u64,
    /// Executions: (intended start, seconds since the run began; execute -> terminal, us).
    pub executions: Vec<(f64, u64)>,
    /// Per second of the run: executions ended, events, bytes received.
    pub seconds: Vec<Second>,
    /// Events received on every socket (watchers included).
    pub events: u64,
    /// Bytes of event frames received on every socket.
    pub bytes: u64,
}

/// One second of the run.
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct Second {
    /// Executions that ended.
    pub executions: u64,
    /// Events received.
    pub events: u64,
    /// Bytes of frames received.
    pub bytes: u64,
}

impl Default for Figures {
    fn default() -> Self {
        Self {
            started: histogram(),
            first_output: histogram(),
            terminal: histogram(),
            lag_all: histogram(),
            lag_samples: Vec::new(),
            lag_dropped: 0,
            lag_negative: 0,
            executions: Vec::new(),
            seconds: Vec::new(),
            events: 0,
            bytes: 0,
        }
    }
}

fn micros(d: Duration) -> u64 {
    d.as_micros().clamp(1, u64::MAX as u128) as u64
}

impl Figures {
    fn second(&mut self, at: Duration) -> &mut Second {
        let index = at.as_secs() as usize;
        if self.seconds.len() <= index {
            self.seconds.resize(index + 1, Second::default());
        }
        &mut self.seconds[index]
    }

    /// A frame of `bytes` arrived `at` (since the run began).
    pub fn event(&mut self, at: Duration, bytes: usize) {
        self.events += 1;
        self.bytes += bytes as u64;
        let second = self.second(at);
        second.events += 1;
        second.bytes += bytes as u64;
    }

    /// An execution intended at `intended` ended at `at`; `started` and `first` when
    /// they came.
    pub fn ended(
        &mut self,
        intended: Duration,
        at: Duration,
        started: Option<Duration>,
        first: Option<Duration>,
    ) {
        let terminal = micros(at.saturating_sub(intended));
        let _ = self.terminal.record(terminal);
        if let Some(started) = started {
            let _ = self
                .started
                .record(micros(started.saturating_sub(intended)));
        }
        if let Some(first) = first {
            let _ = self
                .first_output
                .record(micros(first.saturating_sub(intended)));
        }
        self.executions.push((intended.as_secs_f64(), terminal));
        self.second(at).executions += 1;
    }

    /// A clock line printed at `printed` (seconds since the run began) arrived `lag_s`
    /// seconds later.
    pub fn lag(&mut self, printed: f64, lag_s: f64) {
        if lag_s < 0.0 {
            self.lag_negative += 1;
        }
        let us = ((lag_s.max(0.0) * 1e6) as u64).max(1);
        let _ = self.lag_all.record(us);
        if self.lag_samples.len() >= MAX_LAG_SAMPLES {
            self.lag_dropped += 1;
            return;
        }
        self.lag_samples.push((printed, us));
    }

    /// The lag samples printed within `[from, to]` (seconds since the run began).
    pub fn lag_histogram(&self, from: f64, to: f64) -> Histogram<u64> {
        let mut h = histogram();
        for &(printed, us) in &self.lag_samples {
            if printed >= from && printed <= to {
                let _ = h.record(us);
            }
        }
        h
    }
}

/// Percentiles of one histogram, in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Samples.
    pub count: u64,
    /// Mean.
    pub mean_ms: f64,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p99_9_ms: f64,
    /// Largest.
    pub max_ms: f64,
    /// (percentile, ms) for a percentile curve.
    pub curve: Vec<(f64, f64)>,
}

/// The percentiles a curve is drawn through.
pub const CURVE: [f64; 9] = [0.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.9, 99.99, 100.0];

impl Summary {
    /// The summary of `h` (microseconds).
    pub fn of(h: &Histogram<u64>) -> Self {
        let ms = |us: u64| us as f64 / 1000.0;
        let at = |q: f64| {
            if h.is_empty() {
                0.0
            } else {
                ms(h.value_at_quantile(q))
            }
        };
        Self {
            count: h.len(),
            mean_ms: if h.is_empty() { 0.0 } else { h.mean() / 1000.0 },
            p50_ms: at(0.5),
            p90_ms: at(0.9),
            p99_ms: at(0.99),
            p99_9_ms: at(0.999),
            max_ms: if h.is_empty() { 0.0 } else { ms(h.max()) },
            curve: if h.is_empty() {
                Vec::new()
            } else {
                CURVE.iter().map(|p| (*p, at(p / 100.0))).collect()
            },
        }
    }
}

/// One second of the time series.
#[derive(Debug, Clone, Serialize)]
pub struct Point {
    /// Seconds since the run began.
    pub second: u64,
    /// Executions that ended in it.
    pub executions: u64,
    /// Events received in it.
    pub events: u64,
    /// Bytes received in it.
    pub bytes: u64,
    /// Median execute -> terminal of the executions intended in it, ms.
    pub terminal_p50_ms: Option<f64>,
    /// 99th percentile of the same.
    pub terminal_p99_ms: Option<f64>,
    /// Median delivery lag of the clock lines printed in it, ms.
    pub lag_p50_ms: Option<f64>,
    /// 99th percentile of the same.
    pub lag_p99_ms: Option<f64>,
}

/// The per-second time series of a run.
pub fn timeline(figures: &Figures) -> Vec<Point> {
    let mut terminal: Vec<Histogram<u64>> = Vec::new();
    let mut lag: Vec<Histogram<u64>> = Vec::new();
    let slot = |list: &mut Vec<Histogram<u64>>, at: f64| -> usize {
        let index = at.max(0.0) as usize;
        while list.len() <= index {
            list.push(histogram());
        }
        index
    };
    for &(at, us) in &figures.executions {
        let i = slot(&mut terminal, at);
        let _ = terminal[i].record(us);
    }
    for &(at, us) in &figures.lag_samples {
        let i = slot(&mut lag, at);
        let _ = lag[i].record(us);
    }
    let len = figures.seconds.len().max(terminal.len()).max(lag.len());
    let quantile = |list: &[Histogram<u64>], i: usize, q: f64| {
        list.get(i)
            .filter(|h| !h.is_empty())
            .map(|h| h.value_at_quantile(q) as f64 / 1000.0)
    };
    (0..len)
        .map(|i| {
            let second = figures.seconds.get(i).copied().unwrap_or_default();
            Point {
                second: i as u64,
                executions: second.executions,
                events: second.events,
                bytes: second.bytes,
                terminal_p50_ms: quantile(&terminal, i, 0.5),
                terminal_p99_ms: quantile(&terminal, i, 0.99),
                lag_p50_ms: quantile(&lag, i, 0.5),
                lag_p99_ms: quantile(&lag, i, 0.99),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries_and_timelines_come_from_the_samples() {
        let mut f = Figures::default();
        for i in 0..100u64 {
            let intended = Duration::from_millis(i * 20);
            f.ended(
                intended,
                intended + Duration::from_millis(10 + i),
                Some(intended + Duration::from_millis(5)),
                None,
            );
            f.event(intended, 100);
            f.lag(i as f64 * 0.02, 0.001 * (i + 1) as f64);
        }
        let s = Summary::of(&f.terminal);
        assert_eq!(s.count, 100);
        assert!(s.p50_ms >= 50.0 && s.p50_ms <= 70.0, "{s:?}");
        assert!(s.max_ms >= 109.0, "{s:?}");
        assert_eq!(Summary::of(&f.first_output).count, 0);
        let t = timeline(&f);
        assert_eq!(t.len(), 3); // the last execution ends 2.09 s in
        assert_eq!(t[0].events, 50);
        assert!(t[0].lag_p50_ms.is_some());
        assert_eq!(f.lag_histogram(1.0, 2.0).len(), 50);
    }
}
