//! Verification of every event the gateway sent: gap-free sequences per stream
//! ([`StreamCheck`]), one `started` first and exactly one terminal event per execution
//! and byte-exact output ([`OutputCheck`]), and identical streams for every watcher.
//! Each violation is counted by kind, with the first few examples ([`Violations`]).
//! Everything here is pure: the driver feeds it what arrived.

use crate::program::{parse_clock_line, ProgramKind, ProgramSpec};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

/// The kinds of violation, as reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A sequence number never arrived, and no `gap` announced it.
    Gap,
    /// An event arrived twice (a sequence already seen).
    Duplicate,
    /// An event arrived after a later one of its stream.
    OutOfOrder,
    /// The gateway announced lost events with a `gap` event.
    AnnouncedLoss,
    /// An execution got no terminal event.
    MissingTerminal,
    /// An execution got a second terminal event.
    ExtraTerminal,
    /// An event of an execution after its terminal event.
    EventAfterTerminal,
    /// An event of an execution before its `started`.
    NotStartedFirst,
    /// The output differs from what the program was asked to print.
    WrongOutput,
    /// An execution ended otherwise than completing with exit code 0.
    UnexpectedOutcome,
    /// A watcher saw a different stream than the socket that ran the program.
    WatcherMismatch,
    /// A watcher did not see its session to the end.
    WatcherIncomplete,
    /// An event's timestamp is earlier than that of the event before it in its stream.
    TimestampBackwards,
    /// A frame that is not a valid event (or an event for nothing the harness sent).
    InvalidEvent,
}

impl Kind {
    /// The kind's name in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Gap => "gap",
            Self::Duplicate => "duplicate",
            Self::OutOfOrder => "out_of_order",
            Self::AnnouncedLoss => "announced_loss",
            Self::MissingTerminal => "missing_terminal",
            Self::ExtraTerminal => "extra_terminal",
            Self::EventAfterTerminal => "event_after_terminal",
            Self::NotStartedFirst => "not_started_first",
            Self::WrongOutput => "wrong_output",
            Self::UnexpectedOutcome => "unexpected_outcome",
            Self::WatcherMismatch => "watcher_mismatch",
            Self::WatcherIncomplete => "watcher_incomplete",
            Self::TimestampBackwards => "timestamp_backwards",
            Self::InvalidEvent => "invalid_event",
        }
    }
}

/// Examples kept per kind.
const EXAMPLES_PER_KIND: usize = 5;

/// Every violation of a run: counts by kind and the first examples of each.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Violations {
    /// How many of each kind.
    pub counts: BTreeMap<Kind, u64>,
    /// The first few of each kind: what, where.
    pub examples: Vec<Example>,
}

/// One violation, described.
#[derive(Debug, Clone, Serialize)]
pub struct Example {
    /// Its kind.
    pub kind: Kind,
    /// Where and what, for a person.
    pub detail: String,
}

impl Violations {
    /// Counts one violation of `kind`; keeps `detail` if it is among the first few.
    pub fn add(&mut self, kind: Kind, detail: impl FnOnce() -> String) {
        self.add_many(kind, 1, detail);
    }

    /// Counts `count` violations of `kind` described by one example.
    pub fn add_many(&mut self, kind: Kind, count: u64, detail: impl FnOnce() -> String) {
        let seen = self.counts.entry(kind).or_insert(0);
        if *seen < EXAMPLES_PER_KIND as u64 {
            self.examples.push(Example {
                kind,
                detail: detail(),
            });
        }
        *seen = seen.saturating_add(count);
    }

    /// All violations.
    pub fn total(&self) -> u64 {
        self.counts
            .values()
            .fold(0, |total, n| total.saturating_add(*n))
    }

    /// How many of `kind`.
    pub fn count(&self, kind: Kind) -> u64 {
        self.counts.get(&kind).copied().unwrap_or(0)
    }
}

/// Holes remembered one by one per stream; a larger jump is counted at once.
const MAX_HOLES: u64 = 100_000;

/// What to do with an event after its sequence was checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accept {
    /// In order (or filling a hole): process it.
    Process,
    /// Seen before: ignore it.
    Ignore,
}

/// The sequence check of one stream as one reader sees it: each event exactly one more
/// than the last, a `gap` event announcing a jump. Holes are remembered, so an event
/// that arrives late is told apart from one that arrives twice.
#[derive(Debug, Default, Clone)]
pub struct StreamCheck {
    last: u64,
    holes: BTreeSet<u64>,
    /// The timestamp of the latest event in sequence order.
    timestamp: f64,
}

impl StreamCheck {
    /// The last sequence received (what a resume's `since` is).
    pub fn last(&self) -> u64 {
        self.last
    }

    /// Checks a numbered event's `sequence` and `timestamp`; `what` names the stream
    /// for examples.
    pub fn event(
        &mut self,
        sequence: u64,
        timestamp: f64,
        violations: &mut Violations,
        what: &str,
    ) -> Accept {
        // No gateway numbers an event 0 or u64::MAX (sequences start at 1 and a
        // session never gets near the top); such an event is itself the violation.
        if sequence == 0 || sequence == u64::MAX {
            violations.add(Kind::InvalidEvent, || {
                format!("{what}: an event numbered {sequence}")
            });
            return Accept::Ignore;
        }
        if sequence > self.last {
            if timestamp < self.timestamp {
                violations.add(Kind::TimestampBackwards, || {
                    format!(
                        "{what}: event {sequence} has timestamp {timestamp:.6}, before {:.6} of the event before it",
                        self.timestamp
                    )
                });
            }
            self.timestamp = timestamp;
        }
        if sequence == self.last + 1 {
            self.last = sequence;
            return Accept::Process;
        }
        if sequence > self.last + 1 {
            let missing = sequence - self.last - 1;
            if missing <= MAX_HOLES {
                self.holes.extend(self.last + 1..sequence);
            } else {
                violations.add_many(Kind::Gap, missing, || {
                    format!(
                        "{what}: jumped from {} to {sequence} with no gap event",
                        self.last
                    )
                });
            }
            self.last = sequence;
            return Accept::Process;
        }
        if self.holes.remove(&sequence) {
            violations.add(Kind::OutOfOrder, || {
                format!(
                    "{what}: sequence {sequence} arrived after {} (out of order)",
                    self.last
                )
            });
            Accept::Process
        } else {
            violations.add(Kind::Duplicate, || {
                format!(
                    "{what}: sequence {sequence} arrived again (last was {})",
                    self.last
                )
            });
            Accept::Ignore
        }
    }

    /// A `gap` event: `missed_from` to `resume_from - 1` will not come.
    pub fn gap(
        &mut self,
        missed_from: u64,
        resume_from: u64,
        violations: &mut Violations,
        what: &str,
    ) {
        let lost = resume_from.saturating_sub(missed_from);
        violations.add_many(Kind::AnnouncedLoss, lost.max(1), || {
            format!(
                "{what}: the gateway announced events {missed_from} to {} lost (gap event)",
                resume_from.saturating_sub(1)
            )
        });
        if missed_from == u64::MAX || resume_from == u64::MAX {
            violations.add(Kind::InvalidEvent, || {
                format!("{what}: a gap event from {missed_from} to {resume_from}")
            });
            return;
        }
        if missed_from > self.last + 1 {
            let timestamp = self.timestamp;
            self.event(missed_from - 1, timestamp, violations, what);
        }
        self.last = self.last.max(resume_from.saturating_sub(1));
    }

    /// The end of the run: every hole left is a silent loss.
    pub fn finish(&mut self, violations: &mut Violations, what: &str) {
        if let Some(first) = self.holes.first().copied() {
            let count = self.holes.len() as u64;
            violations.add_many(Kind::Gap, count, || {
                format!("{what}: {count} sequence number(s) never arrived, the first {first}")
            });
            self.holes.clear();
        }
    }
}

/// The output check of one execution: what it printed against what it was asked to.
#[derive(Debug)]
pub struct OutputCheck {
    kind: ProgramKind,
    tag: String,
    /// Pattern: what arrived on stdout.
    stdout: Vec<u8>,
    /// Clock: the unfinished last line, the next line number expected, lines so far.
    partial: String,
    next_line: u64,
    clock_lines: u64,
    /// Whether the clock lines were all well formed and in order.
    clock_ok: Option<String>,
    stderr: Vec<u8>,
}

/// Stderr kept for an example.
const STDERR_KEPT: usize = 2048;

impl OutputCheck {
    /// The check for `program` run as `tag`.
    pub fn new(program: &ProgramSpec, tag: &str) -> Self {
        Self {
            kind: program.kind,
            tag: tag.to_owned(),
            stdout: Vec::new(),
            partial: String::new(),
            next_line: 0,
            clock_lines: program.clock_lines(),
            clock_ok: None,
            stderr: Vec::new(),
        }
    }

    /// A chunk of stdout; for a clock program, returns the times (Unix seconds) printed
    /// on the lines it completes.
    pub fn stdout(&mut self, data: &[u8]) -> Vec<f64> {
        match self.kind {
            ProgramKind::Pattern => {
                self.stdout.extend_from_slice(data);
                Vec::new()
            }
            ProgramKind::Clock => {
                self.partial.push_str(&String::from_utf8_lossy(data));
                let mut printed = Vec::new();
                while let Some(end) = self.partial.find('\n') {
                    let line: String = self.partial.drain(..=end).collect();
                    let line = line.trim_end_matches('\n');
                    match parse_clock_line(line, &self.tag) {
                        Some(clock) if clock.number == self.next_line => {
                            self.next_line += 1;
                            printed.push(clock.printed);
                        }
                        Some(clock) => {
                            self.clock_ok.get_or_insert_with(|| {
                                format!(
                                    "clock line {} where line {} was due",
                                    clock.number, self.next_line
                                )
                            });
                            self.next_line = clock.number + 1;
                        }
                        None => {
                            self.clock_ok.get_or_insert_with(|| {
                                format!("a line that is not a clock line: {line:?}")
                            });
                        }
                    }
                }
                printed
            }
        }
    }

    /// A chunk of stderr (kept, a little, for the example).
    pub fn stderr(&mut self, data: &[u8]) {
        let room = STDERR_KEPT.saturating_sub(self.stderr.len());
        self.stderr.extend_from_slice(&data[..room.min(data.len())]);
    }

    /// What the program wrote to stderr, for an example.
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }

    /// After a successful end: `None` if the output was exact, else what was wrong.
    pub fn verdict(&self, program: &ProgramSpec) -> Option<String> {
        match self.kind {
            ProgramKind::Pattern => {
                let expected = program.expected_stdout(&self.tag);
                if self.stdout == expected {
                    return None;
                }
                let at = self
                    .stdout
                    .iter()
                    .zip(&expected)
                    .position(|(a, b)| a != b)
                    .unwrap_or(self.stdout.len().min(expected.len()));
                Some(format!(
                    "stdout has {} bytes where {} were expected, first difference at byte {at}",
                    self.stdout.len(),
                    expected.len()
                ))
            }
            ProgramKind::Clock => {
                if let Some(wrong) = &self.clock_ok {
                    return Some(wrong.clone());
                }
                if !self.partial.is_empty() {
                    return Some(format!("an unfinished last line {:?}", self.partial));
                }
                if self.next_line != self.clock_lines {
                    return Some(format!(
                        "{} clock lines where {} were expected",
                        self.next_line, self.clock_lines
                    ));
                }
                None
            }
        }
    }
}

/// What a watcher compares: each numbered event's sequence and raw frame. The gateway
/// encodes an event once for every reader, so equal events are equal bytes.
pub type Fingerprints = Vec<(u64, u64)>;

/// A fingerprint of a raw frame.
pub fn fingerprint(raw: &str) -> u64 {
    use std::hash::{Hash as _, Hasher as _};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    raw.hash(&mut hasher);
    hasher.finish()
}

/// Compares a watcher's stream with the program socket's: `None` when identical.
pub fn compare_streams(main: &Fingerprints, watcher: &Fingerprints) -> Option<String> {
    for (a, b) in main.iter().zip(watcher) {
        if a.0 != b.0 {
            return Some(format!(
                "the watcher got sequence {} where the program socket got {}",
                b.0, a.0
            ));
        }
        if a.1 != b.1 {
            return Some(format!(
                "event {} differs between the watcher and the program socket",
                a.0
            ));
        }
    }
    if main.len() != watcher.len() {
        return Some(format!(
            "the watcher got {} events, the program socket {}",
            watcher.len(),
            main.len()
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clean_stream_has_no_violation() {
        let mut v = Violations::default();
        let mut s = StreamCheck::default();
        for seq in 1..=5 {
            assert_eq!(s.event(seq, seq as f64, &mut v, "s"), Accept::Process);
        }
        s.finish(&mut v, "s");
        assert_eq!(v.total(), 0);
        assert_eq!(s.last(), 5);
    }

    #[test]
    fn drops_duplicates_and_reorders_are_told_apart() {
        let mut v = Violations::default();
        let mut s = StreamCheck::default();
        s.event(1, 1.0, &mut v, "s");
        s.event(3, 1.0, &mut v, "s"); // 2 dropped
        assert_eq!(s.event(3, 1.0, &mut v, "s"), Accept::Ignore); // 3 duplicated
        s.event(5, 1.0, &mut v, "s");
        assert_eq!(s.event(4, 1.0, &mut v, "s"), Accept::Process); // 4 late
        s.finish(&mut v, "s");
        assert_eq!(v.count(Kind::Gap), 1);
        assert_eq!(v.count(Kind::Duplicate), 1);
        assert_eq!(v.count(Kind::OutOfOrder), 1);
        assert_eq!(v.examples.len(), 3);
    }

    #[test]
    fn timestamps_must_not_go_back() {
        let mut v = Violations::default();
        let mut s = StreamCheck::default();
        s.event(1, 5.0, &mut v, "s");
        s.event(2, 5.0, &mut v, "s");
        s.event(3, 4.0, &mut v, "s");
        assert_eq!(v.count(Kind::TimestampBackwards), 1);
    }

    #[test]
    fn an_announced_gap_is_loss_but_no_hole() {
        let mut v = Violations::default();
        let mut s = StreamCheck::default();
        s.event(1, 1.0, &mut v, "s");
        s.gap(2, 10, &mut v, "s");
        s.event(10, 1.0, &mut v, "s");
        s.finish(&mut v, "s");
        assert_eq!(v.count(Kind::AnnouncedLoss), 8);
        assert_eq!(v.count(Kind::Gap), 0);
    }

    #[test]
    fn output_is_checked_byte_for_byte() -> Result<(), String> {
        let spec = ProgramSpec::new(
            ProgramKind::Pattern,
            None,
            Some(100),
            None,
            Some(10),
            None,
            1,
        )?;
        let mut check = OutputCheck::new(&spec, "t");
        let all = spec.expected_stdout("t");
        check.stdout(&all[..50]);
        check.stdout(&all[50..]);
        assert_eq!(check.verdict(&spec), None);
        let mut wrong = OutputCheck::new(&spec, "t");
        wrong.stdout(&all[..50]);
        wrong.stdout(&all[51..]);
        assert!(wrong.verdict(&spec).is_some());
        Ok(())
    }

    #[test]
    fn clock_output_must_be_complete_and_in_order() -> Result<(), String> {
        let spec = ProgramSpec::new(
            ProgramKind::Clock,
            None,
            None,
            Some(std::time::Duration::from_millis(300)),
            None,
            None,
            1,
        )?;
        let mut check = OutputCheck::new(&spec, "c");
        assert_eq!(check.stdout(b"clock c 0 1.5\nclock c 1 "), vec![1.5]);
        assert_eq!(check.stdout(b"2.5\nclock c 2 3.5\n"), vec![2.5, 3.5]);
        assert_eq!(check.verdict(&spec), None);
        let mut short = OutputCheck::new(&spec, "c");
        short.stdout(b"clock c 0 1.5\nclock c 2 3.5\n");
        assert!(short.verdict(&spec).is_some());
        Ok(())
    }

    #[test]
    fn watcher_streams_compare() {
        let main = vec![(1, 10), (2, 20)];
        assert_eq!(compare_streams(&main, &main.clone()), None);
        assert!(compare_streams(&main, &vec![(1, 10)]).is_some());
        assert!(compare_streams(&main, &vec![(1, 10), (2, 21)]).is_some());
    }
}
