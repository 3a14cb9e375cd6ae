//! The programs a run executes, and what each must print: a `pattern` program prints a
//! deterministic pattern (so its output is known byte for byte) and echoes its input; a
//! `clock` program prints its own wall clock at fixed times (so the harness can measure
//! delivery lag). Both are Python; the harness writes the code and the expected output
//! from the same parameters.

use serde::Deserialize;
use std::time::Duration;

/// Which program.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ProgramKind {
    /// Prints a known pattern of bytes, spread over its duration, then echoes its stdin.
    Pattern,
    /// Prints its wall clock every interval for its duration.
    Clock,
}

impl ProgramKind {
    /// The name used in flags, files and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pattern => "pattern",
            Self::Clock => "clock",
        }
    }
}

/// One program of the mix.
#[derive(Debug, Clone, PartialEq)]
pub struct ProgramSpec {
    /// Which program.
    pub kind: ProgramKind,
    /// The runtime named in `execute` (a Python one).
    pub language: String,
    /// Bytes of pattern printed (pattern).
    pub output_bytes: u64,
    /// How long it runs.
    pub duration: Duration,
    /// Bytes of stdin sent and echoed (pattern).
    pub stdin_bytes: u64,
    /// Time between two clock lines (clock).
    pub interval: Duration,
    /// Relative share of the executions.
    pub weight: u32,
}

/// The line a gated program waits for on stdin before it prints.
pub const GO: &str = "go\n";

/// Length of one pattern line, newline included.
const LINE: u64 = 64;

impl ProgramSpec {
    /// A checked program; `None` values take the kind's defaults.
    pub fn new(
        kind: ProgramKind,
        language: Option<String>,
        output_bytes: Option<u64>,
        duration: Option<Duration>,
        stdin_bytes: Option<u64>,
        interval: Option<Duration>,
        weight: u32,
    ) -> Result<Self, String> {
        let spec = Self {
            kind,
            language: language.unwrap_or_else(|| "python".into()),
            output_bytes: output_bytes.unwrap_or(1024),
            duration: duration.unwrap_or(match kind {
                ProgramKind::Pattern => Duration::ZERO,
                ProgramKind::Clock => Duration::from_secs(1),
            }),
            stdin_bytes: stdin_bytes.unwrap_or(0),
            interval: interval.unwrap_or(Duration::from_millis(100)),
            weight,
        };
        if spec.weight == 0 {
            return Err("weight must be at least 1".into());
        }
        if spec.language.is_empty() {
            return Err("language must not be empty".into());
        }
        if spec.interval < Duration::from_millis(1) {
            return Err("interval must be at least 1ms".into());
        }
        if spec.output_bytes > 1 << 30 || spec.stdin_bytes > 64 << 20 {
            return Err("output_bytes is at most 1 GiB, stdin_bytes 64 MiB".into());
        }
        if spec.kind == ProgramKind::Clock && spec.clock_lines() > 1_000_000 {
            return Err("a clock program prints at most 1000000 lines".into());
        }
        Ok(spec)
    }

    /// The program as `--json` shows it.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "kind": self.kind.as_str(),
            "language": self.language,
            "output_bytes": self.output_bytes,
            "duration_s": self.duration.as_secs_f64(),
            "stdin_bytes": self.stdin_bytes,
            "interval_s": self.interval.as_secs_f64(),
            "weight": self.weight,
        })
    }

    /// Lines a clock program prints: one at the start, then one per interval.
    pub fn clock_lines(&self) -> u64 {
        (self.duration.as_nanos() / self.interval.as_nanos().max(1)).max(1) as u64
    }

    /// The program's code for execution `tag` (a short string unique in the run). A
    /// `gated` program first waits for a line on stdin ([`GO`]) before it prints
    /// anything, so that watchers can attach before there is output to miss.
    pub fn code(&self, tag: &str, gated: bool) -> String {
        let duration = self.duration.as_secs_f64();
        // Through the binary buffer, which the echo below reads from too.
        let wait = if gated {
            "sys.stdin.buffer.readline()\n"
        } else {
            ""
        };
        match self.kind {
            ProgramKind::Pattern => format!(
                "import sys, time\n\
                 {wait}\
                 n, d, tag, echo = {n}, {duration}, {tag:?}, {echo}\n\
                 lines = (n + {LINE} - 1) // {LINE}\n\
                 data = ''.join('%s %010d %s\\n' % (tag, j, 'x' * {filler}) for j in range(lines))[:n]\n\
                 pieces = max(1, min(lines, int(d / 0.01))) if d > 0 else 1\n\
                 t0 = time.time()\n\
                 for p in range(pieces):\n\
                 \x20   sys.stdout.write(data[len(data) * p // pieces:len(data) * (p + 1) // pieces])\n\
                 \x20   sys.stdout.flush()\n\
                 \x20   if d > 0:\n\
                 \x20       s = t0 + d * (p + 1) / pieces - time.time()\n\
                 \x20       if s > 0:\n\
                 \x20           time.sleep(s)\n\
                 if echo:\n\
                 \x20   sys.stdout.buffer.write(sys.stdin.buffer.read())\n\
                 \x20   sys.stdout.flush()\n",
                n = self.output_bytes,
                echo = if self.stdin_bytes > 0 { "True" } else { "False" },
                filler = LINE - 1 - (tag.len() as u64 + 12),
            ),
            ProgramKind::Clock => format!(
                "import sys, time\n\
                 {wait}\
                 iv, count, tag = {iv}, {count}, {tag:?}\n\
                 t0 = time.time()\n\
                 for j in range(count):\n\
                 \x20   s = t0 + j * iv - time.time()\n\
                 \x20   if s > 0:\n\
                 \x20       time.sleep(s)\n\
                 \x20   sys.stdout.write('clock %s %d %.6f\\n' % (tag, j, time.time()))\n\
                 \x20   sys.stdout.flush()\n",
                iv = self.interval.as_secs_f64(),
                count = self.clock_lines(),
            ),
        }
    }

    /// What a pattern program prints for `tag` before its echo (the tag must be shorter
    /// than 40 bytes, as the harness's are).
    pub fn pattern(&self, tag: &str) -> Vec<u8> {
        let filler = (LINE - 1).saturating_sub(tag.len() as u64 + 12) as usize;
        let lines = self.output_bytes.div_ceil(LINE);
        let mut out = Vec::with_capacity((lines * LINE) as usize);
        for j in 0..lines {
            out.extend_from_slice(format!("{tag} {j:010} {}\n", "x".repeat(filler)).as_bytes());
        }
        out.truncate(self.output_bytes as usize);
        out
    }

    /// The standard input sent to a pattern program for `tag` (and echoed back).
    pub fn stdin(&self, tag: &str) -> String {
        let mut out = String::with_capacity(self.stdin_bytes as usize + 32);
        let mut j = 0u64;
        while (out.len() as u64) < self.stdin_bytes {
            out.push_str(&format!("in {tag} {j:08}\n"));
            j += 1;
        }
        out.truncate(self.stdin_bytes as usize);
        out
    }

    /// Everything a pattern program prints for `tag`: the pattern, then the echo.
    pub fn expected_stdout(&self, tag: &str) -> Vec<u8> {
        let mut out = self.pattern(tag);
        out.extend_from_slice(self.stdin(tag).as_bytes());
        out
    }

    /// The limits to ask for: enough time and output for the program, little memory
    /// and few processes, so that many fit in the gateway's budgets.
    pub fn limits(&self) -> sluice_protocol::Limits {
        let output = self.output_bytes
            + self.stdin_bytes
            + if self.kind == ProgramKind::Clock {
                self.clock_lines() * 64
            } else {
                0
            };
        sluice_protocol::Limits {
            timeout_ms: Some((self.duration + TIMEOUT_MARGIN).as_millis() as u64),
            output_bytes: Some(output.max(1 << 20)),
            memory_bytes: Some(128 << 20),
            processes: Some(16),
            ..sluice_protocol::Limits::default()
        }
    }
}

impl ProgramSpec {
    /// A short description for the summary.
    pub fn describe(&self) -> String {
        match self.kind {
            ProgramKind::Pattern => format!(
                "pattern ({} B out {}, {} B stdin echoed, {}, weight {})",
                self.output_bytes,
                if self.duration.is_zero() {
                    "at once".to_owned()
                } else {
                    format!("over {:?}", self.duration)
                },
                self.stdin_bytes,
                self.language,
                self.weight
            ),
            ProgramKind::Clock => format!(
                "clock (every {:?} for {:?}, {}, weight {})",
                self.interval, self.duration, self.language, self.weight
            ),
        }
    }
}

/// The wall-clock limit asked for beyond a program's duration: room for interpreters that
/// take long to load on a busy host.
pub const TIMEOUT_MARGIN: Duration = Duration::from_secs(120);

/// One line a clock program printed: its number and the wall clock (Unix seconds).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClockLine {
    /// 0, 1, 2, ...
    pub number: u64,
    /// When the program printed it.
    pub printed: f64,
}

/// Parses a clock line (without its newline) of execution `tag`.
pub fn parse_clock_line(line: &str, tag: &str) -> Option<ClockLine> {
    let mut parts = line.split(' ');
    if parts.next()? != "clock" || parts.next()? != tag {
        return None;
    }
    let number = parts.next()?.parse().ok()?;
    let printed: f64 = parts.next()?.parse().ok()?;
    if parts.next().is_some() || !printed.is_finite() {
        return None;
    }
    Some(ClockLine { number, printed })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(output: u64, stdin: u64) -> Result<ProgramSpec, String> {
        ProgramSpec::new(
            ProgramKind::Pattern,
            None,
            Some(output),
            None,
            Some(stdin),
            None,
            1,
        )
    }

    #[test]
    fn the_pattern_is_exact_and_lines_are_numbered() -> Result<(), String> {
        let spec = pattern(200, 30)?;
        let out = spec.pattern("x7");
        assert_eq!(out.len(), 200);
        assert!(out.starts_with(b"x7 0000000000 xxx"));
        assert_eq!(out[63], b'\n');
        assert!(out[64..].starts_with(b"x7 0000000001 "));
        assert_eq!(spec.stdin("x7").len(), 30);
        assert_eq!(spec.expected_stdout("x7").len(), 230);
        assert_eq!(pattern(0, 0)?.expected_stdout("a"), Vec::<u8>::new());
        Ok(())
    }

    #[test]
    fn clock_lines_parse() {
        let line = parse_clock_line("clock c3 12 1767225600.123456", "c3");
        assert_eq!(
            line,
            Some(ClockLine {
                number: 12,
                printed: 1_767_225_600.123_456
            })
        );
        assert_eq!(parse_clock_line("clock c4 12 1.0", "c3"), None);
        assert_eq!(parse_clock_line("clock c3 x 1.0", "c3"), None);
        assert_eq!(parse_clock_line("clock c3 1 1.0 extra", "c3"), None);
    }

    #[test]
    fn a_clock_prints_one_line_per_interval() -> Result<(), String> {
        let spec = ProgramSpec::new(
            ProgramKind::Clock,
            None,
            None,
            Some(Duration::from_secs(30)),
            None,
            None,
            1,
        )?;
        assert_eq!(spec.clock_lines(), 300);
        assert!(spec
            .code("t", false)
            .contains("count, tag = 0.1, 300, \"t\""));
        assert!(!spec.code("t", false).contains("readline"));
        assert!(spec.code("t", true).contains("readline"));
        Ok(())
    }
}
