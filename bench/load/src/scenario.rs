//! What a run does: the flags of `sluice load` ([`LoadArgs`]), the scenario file they
//! override ([`ScenarioFile`], TOML), and the [`Scenario`] both resolve into, checked
//! once so the rest of the harness never meets an inconsistent one.

use crate::program::{ProgramKind, ProgramSpec};
use clap::Args;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A scenario that cannot run, said in one line naming the flag or key.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// The scenario file could not be read.
    #[error("cannot read the scenario file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The scenario file is not valid TOML for a scenario.
    #[error("the scenario file {path} is not a valid scenario: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the TOML parser said.
        message: String,
    },
    /// A value that makes no sense.
    #[error("{0}")]
    Invalid(String),
}

/// `sluice load`: drive a gateway with many programs at once, verify every event it
/// sends back, and report latencies, delivery lag and throughput.
///
/// Every flag but --url, --token, --json, --html and --no-progress is also a key of the
/// --scenario file (same name, snake case); a flag given here overrides the file.
#[derive(Debug, Clone, Default, Args)]
pub struct LoadArgs {
    /// The gateway's WebSocket endpoint, e.g. ws://127.0.0.1:7878/v1/ws (plain ws://).
    #[arg(long, env = "SLUICE_URL", value_name = "URL")]
    pub url: Option<String>,

    /// The credential to present (Authorization: Bearer), where the gateway requires one.
    #[arg(
        long,
        env = "SLUICE_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub token: Option<String>,

    /// Read the scenario from this TOML file (see docs/load.md); flags override its keys.
    #[arg(long, value_name = "FILE")]
    pub scenario: Option<PathBuf>,

    /// Sockets that run programs; executions are spread over them in turn [default: 1].
    #[arg(long, value_name = "N")]
    pub sockets: Option<usize>,

    /// Executions to run in all. Without it (and without --live) the run lasts --duration,
    /// or 100 executions when neither is given.
    #[arg(long, value_name = "N", conflicts_with = "live")]
    pub executions: Option<u64>,

    /// How long to keep starting executions (e.g. 30s, 500ms, 2m). With --live: how long
    /// each live program runs [default with --live: 10s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub duration: Option<Duration>,

    /// Open loop: start executions at this rate whatever the gateway does (e.g. 50/s);
    /// latencies count from each execution's intended start, so a stalled gateway shows
    /// in them (no coordinated omission).
    #[arg(long, value_name = "N/s", value_parser = parse_rate, conflicts_with_all = ["concurrency", "live"])]
    pub rate: Option<f64>,

    /// Closed loop: keep this many executions running; each end starts the next
    /// [default: one per socket].
    #[arg(long, value_name = "N", conflicts_with = "live")]
    pub concurrency: Option<usize>,

    /// Start N programs at once and keep them running for --duration; delivery lag is
    /// measured once all of them have started (the steady state).
    #[arg(long, value_name = "N")]
    pub live: Option<usize>,

    /// The program to run: `pattern` (prints a known pattern of --output-bytes over
    /// --program-duration, then echoes --stdin-bytes of input) or `clock` (prints its
    /// wall clock every --interval for --program-duration). Replaces the file's mix.
    #[arg(long, value_name = "KIND")]
    pub program: Option<ProgramKind>,

    /// The runtime the programs name; they are Python code [default: python].
    #[arg(long, value_name = "NAME")]
    pub language: Option<String>,

    /// Bytes each pattern program prints [default: 1024].
    #[arg(long, value_name = "BYTES")]
    pub output_bytes: Option<u64>,

    /// How long each program runs (output is spread over it) [default: 0 for pattern,
    /// 1s for clock; with --live: --duration].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub program_duration: Option<Duration>,

    /// Bytes of standard input each pattern program is sent and echoes back [default: 0].
    #[arg(long, value_name = "BYTES")]
    pub stdin_bytes: Option<u64>,

    /// How often a clock program prints its clock [default: 100ms].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub interval: Option<Duration>,

    /// Extra sockets per program socket that attach to each of its sessions and must see
    /// the same events, byte for byte [default: 0].
    #[arg(long, value_name = "N")]
    pub watchers: Option<usize>,

    /// Drop each program socket (no close handshake) after about this many events, then
    /// reconnect and resume every session from the last sequence seen [default: never].
    #[arg(long, value_name = "EVENTS")]
    pub disconnect_every: Option<u64>,

    /// Seed of the program mix and the disconnect points, for a repeatable run [default: 1].
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,

    /// After the last execution is started, how long to wait for the outstanding ones
    /// before counting them as missing their terminal event [default: the longest
    /// program's duration plus 60s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub drain_timeout: Option<Duration>,

    /// Write the full result as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,

    /// Write a self-contained HTML report (SVG plots, no external assets) to FILE.
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,

    /// No progress bar, even on a terminal.
    #[arg(long)]
    pub no_progress: bool,
}

/// The scenario file: the same settings as the flags, and the program mix.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScenarioFile {
    /// `url`.
    pub url: Option<String>,
    /// `sockets`.
    pub sockets: Option<usize>,
    /// `executions`.
    pub executions: Option<u64>,
    /// `duration`, e.g. "30s".
    pub duration: Option<String>,
    /// `rate`, e.g. "50/s".
    pub rate: Option<String>,
    /// `concurrency`.
    pub concurrency: Option<usize>,
    /// `live`.
    pub live: Option<usize>,
    /// `watchers`.
    pub watchers: Option<usize>,
    /// `disconnect_every`.
    pub disconnect_every: Option<u64>,
    /// `seed`.
    pub seed: Option<u64>,
    /// `drain_timeout`.
    pub drain_timeout: Option<String>,
    /// The program mix: one `[[program]]` table per kind of program.
    #[serde(default)]
    pub program: Vec<ProgramEntry>,
}

/// One `[[program]]` of a scenario file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProgramEntry {
    /// `pattern` or `clock`.
    pub kind: ProgramKind,
    /// The runtime name [default: python].
    pub language: Option<String>,
    /// Bytes a pattern program prints.
    pub output_bytes: Option<u64>,
    /// How long the program runs, e.g. "500ms".
    pub duration: Option<String>,
    /// Bytes of stdin a pattern program echoes.
    pub stdin_bytes: Option<u64>,
    /// A clock program's interval, e.g. "100ms".
    pub interval: Option<String>,
    /// Relative share of the executions [default: 1].
    pub weight: Option<u32>,
}

/// How executions are started.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    /// At a fixed rate (per second), from intended start times.
    Open {
        /// Executions per second.
        rate: f64,
    },
    /// This many running at once.
    Closed {
        /// Executions in flight.
        concurrency: usize,
    },
    /// This many started at once, each running for the programs' duration.
    Live {
        /// Programs live at once.
        programs: usize,
    },
}

/// A resolved, checked scenario.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// The gateway's WebSocket endpoint.
    pub url: String,
    /// The credential, if any.
    pub token: Option<String>,
    /// Program sockets.
    pub sockets: usize,
    /// Executions in all, if bounded by a count.
    pub executions: Option<u64>,
    /// How long to keep starting executions, if bounded by time.
    pub duration: Option<Duration>,
    /// How executions are started.
    pub mode: Mode,
    /// The program mix (weights at least 1).
    pub mix: Vec<ProgramSpec>,
    /// Watcher sockets per program socket.
    pub watchers: usize,
    /// Drop a program socket after about this many events.
    pub disconnect_every: Option<u64>,
    /// Seed of every random choice.
    pub seed: u64,
    /// How long to wait for outstanding executions once no more are started.
    pub drain_timeout: Duration,
}

impl Scenario {
    /// Named sessions (which watchers and resumes need) rather than gateway-made ones.
    pub fn named_sessions(&self) -> bool {
        self.watchers > 0 || self.disconnect_every.is_some()
    }

    /// The scenario as `--json` shows it.
    pub fn to_json(&self) -> serde_json::Value {
        let mode = match self.mode {
            Mode::Open { rate } => serde_json::json!({"kind": "open", "rate_per_s": rate}),
            Mode::Closed { concurrency } => {
                serde_json::json!({"kind": "closed", "concurrency": concurrency})
            }
            Mode::Live { programs } => serde_json::json!({"kind": "live", "programs": programs}),
        };
        serde_json::json!({
            "url": self.url,
            "sockets": self.sockets,
            "executions": self.executions,
            "duration_s": self.duration.map(|d| d.as_secs_f64()),
            "mode": mode,
            "programs": self.mix.iter().map(ProgramSpec::to_json).collect::<Vec<_>>(),
            "watchers": self.watchers,
            "disconnect_every": self.disconnect_every,
            "seed": self.seed,
            "drain_timeout_s": self.drain_timeout.as_secs_f64(),
        })
    }
}

/// Reads and parses a scenario file.
pub fn read_file(path: &Path) -> Result<ScenarioFile, ScenarioError> {
    let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse_file(&text).map_err(|message| ScenarioError::Parse {
        path: path.to_owned(),
        message,
    })
}

/// Parses the text of a scenario file, checking its values as far as they go alone.
pub fn parse_file(text: &str) -> Result<ScenarioFile, String> {
    let file: ScenarioFile = toml::from_str(text).map_err(|err| err.to_string())?;
    for (key, value) in [
        ("duration", &file.duration),
        ("drain_timeout", &file.drain_timeout),
    ] {
        if let Some(value) = value {
            parse_duration(value).map_err(|err| format!("{key}: {err}"))?;
        }
    }
    if let Some(rate) = &file.rate {
        parse_rate(rate).map_err(|err| format!("rate: {err}"))?;
    }
    for (n, entry) in file.program.iter().enumerate() {
        entry
            .spec(&ProgramDefaults::default())
            .map_err(|err| format!("program {}: {err}", n + 1))?;
    }
    Ok(file)
}

/// What a program entry does not say, from the flags and the mode.
#[derive(Debug, Default)]
struct ProgramDefaults {
    /// The duration programs default to (live mode: the run's duration).
    duration: Option<Duration>,
}

impl ProgramEntry {
    fn spec(&self, defaults: &ProgramDefaults) -> Result<ProgramSpec, String> {
        let duration = match &self.duration {
            Some(text) => Some(parse_duration(text)?),
            None => defaults.duration,
        };
        let interval = match &self.interval {
            Some(text) => Some(parse_duration(text)?),
            None => None,
        };
        ProgramSpec::new(
            self.kind,
            self.language.clone(),
            self.output_bytes,
            duration,
            self.stdin_bytes,
            interval,
            self.weight.unwrap_or(1),
        )
    }
}

/// Resolves flags over the scenario file (when `--scenario` names one) into a checked
/// scenario.
pub fn resolve(args: &LoadArgs) -> Result<Scenario, ScenarioError> {
    let file = match &args.scenario {
        Some(path) => read_file(path)?,
        None => ScenarioFile::default(),
    };
    resolve_with(args, file)
}

/// [`resolve`] with the file already read.
pub fn resolve_with(args: &LoadArgs, file: ScenarioFile) -> Result<Scenario, ScenarioError> {
    let invalid = ScenarioError::Invalid;
    let url = args.url.clone().or(file.url.clone()).ok_or_else(|| {
        invalid("no gateway to load: give --url ws://HOST:PORT/v1/ws (or SLUICE_URL)".into())
    })?;
    if url.starts_with("wss://") {
        // The harness is built without TLS, to keep it lean; a gateway serves plain
        // WebSocket and TLS is a proxy's job, so load it from where it is plain.
        return Err(invalid(format!(
            "--url {url:?}: wss:// is not supported; load the gateway over ws:// (from the host, or through a tunnel to its plain port)"
        )));
    }
    if !url.starts_with("ws://") {
        return Err(invalid(format!(
            "--url {url:?}: expected a ws:// URL, such as ws://127.0.0.1:7878/v1/ws"
        )));
    }
    let file_duration = file
        .duration
        .as_deref()
        .map(parse_duration)
        .transpose()
        .map_err(invalid)?;
    let file_rate = file
        .rate
        .as_deref()
        .map(parse_rate)
        .transpose()
        .map_err(invalid)?;
    let duration = args.duration.or(file_duration);
    let sockets = args.sockets.or(file.sockets).unwrap_or(1);
    if sockets == 0 {
        return Err(invalid("--sockets must be at least 1".into()));
    }
    // Flags choose the mode over the file; among the file's keys, the same order.
    let mode = if let Some(rate) = args.rate {
        Mode::Open { rate }
    } else if let Some(concurrency) = args.concurrency {
        Mode::Closed { concurrency }
    } else if let Some(programs) = args.live {
        Mode::Live { programs }
    } else if let Some(rate) = file_rate {
        Mode::Open { rate }
    } else if let Some(concurrency) = file.concurrency {
        Mode::Closed { concurrency }
    } else if let Some(programs) = file.live {
        Mode::Live { programs }
    } else {
        Mode::Closed {
            concurrency: sockets,
        }
    };
    match mode {
        Mode::Open { rate } if !(rate.is_finite() && rate > 0.0) => {
            return Err(invalid("--rate must be more than 0/s".into()))
        }
        Mode::Closed { concurrency: 0 } => {
            return Err(invalid("--concurrency must be at least 1".into()))
        }
        Mode::Live { programs: 0 } => return Err(invalid("--live must be at least 1".into())),
        _ => {}
    }
    let live = matches!(mode, Mode::Live { .. });
    let (executions, run_duration) = match mode {
        Mode::Live { programs } => (Some(programs as u64), None),
        _ => {
            let executions = args.executions.or(file.executions);
            match (executions, duration) {
                (None, None) => (Some(100), None),
                (executions, duration) => (executions, duration),
            }
        }
    };
    if executions == Some(0) {
        return Err(invalid("--executions must be at least 1".into()));
    }
    let defaults = ProgramDefaults {
        duration: if live {
            Some(duration.unwrap_or(Duration::from_secs(10)))
        } else {
            None
        },
    };
    let flag_program = args.program.is_some()
        || args.language.is_some()
        || args.output_bytes.is_some()
        || args.program_duration.is_some()
        || args.stdin_bytes.is_some()
        || args.interval.is_some();
    let mix = if flag_program || file.program.is_empty() {
        // The flags make one program, on top of the file's only one if it has one.
        let base = match file.program.as_slice() {
            [only] => Some(only),
            _ => None,
        };
        let entry = ProgramEntry {
            kind: args
                .program
                .or(base.map(|b| b.kind))
                .unwrap_or(ProgramKind::Pattern),
            language: args
                .language
                .clone()
                .or(base.and_then(|b| b.language.clone())),
            output_bytes: args.output_bytes.or(base.and_then(|b| b.output_bytes)),
            duration: None,
            stdin_bytes: args.stdin_bytes.or(base.and_then(|b| b.stdin_bytes)),
            interval: None,
            weight: Some(1),
        };
        let base_duration = base
            .and_then(|b| b.duration.as_deref())
            .map(parse_duration)
            .transpose()
            .map_err(invalid)?;
        let base_interval = base
            .and_then(|b| b.interval.as_deref())
            .map(parse_duration)
            .transpose()
            .map_err(invalid)?;
        let spec = ProgramSpec::new(
            entry.kind,
            entry.language,
            entry.output_bytes,
            args.program_duration
                .or(base_duration)
                .or(defaults.duration),
            entry.stdin_bytes,
            args.interval.or(base_interval),
            1,
        )
        .map_err(invalid)?;
        vec![spec]
    } else {
        file.program
            .iter()
            .enumerate()
            .map(|(n, entry)| {
                entry
                    .spec(&defaults)
                    .map_err(|err| invalid(format!("program {}: {err}", n + 1)))
            })
            .collect::<Result<Vec<_>, _>>()?
    };
    let longest = mix
        .iter()
        .map(|p| p.duration)
        .max()
        .unwrap_or(Duration::ZERO);
    /// Beyond the wall-clock limit: the gateway's kill grace and a loaded machine.
    const DRAIN_MARGIN: Duration = Duration::from_secs(30);
    let drain_timeout = match (args.drain_timeout, file.drain_timeout.as_deref()) {
        (Some(timeout), _) => timeout,
        (None, Some(text)) => parse_duration(text).map_err(invalid)?,
        // Every execution asks for a wall-clock limit of its duration plus
        // TIMEOUT_MARGIN, so a gateway must have ended it by then (plus its kill grace):
        // a missing terminal event after that is the gateway's fault, not the load's.
        (None, None) => longest + crate::program::TIMEOUT_MARGIN + DRAIN_MARGIN,
    };
    Ok(Scenario {
        url,
        token: args.token.clone().filter(|t| !t.is_empty()),
        sockets,
        executions,
        duration: run_duration,
        mode,
        mix,
        watchers: args.watchers.or(file.watchers).unwrap_or(0),
        disconnect_every: args
            .disconnect_every
            .or(file.disconnect_every)
            .filter(|n| *n > 0),
        seed: args.seed.or(file.seed).unwrap_or(1),
        drain_timeout,
    })
}

/// Parses a duration: a number and a unit, `ms`, `s`, `m` or `h` (`1.5s`, `250ms`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("{text:?}: a duration needs a unit (ms, s, m or h)"))?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("{text:?}: not a duration such as 500ms or 30s"))?;
    let seconds = match unit.trim() {
        "ms" => number / 1000.0,
        "s" => number,
        "m" => number * 60.0,
        "h" => number * 3600.0,
        other => return Err(format!("{text:?}: unknown unit {other:?} (ms, s, m or h)")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|_| format!("{text:?}: out of range"))
}

/// Parses a rate, `N/s` or a plain number of executions per second.
pub fn parse_rate(text: &str) -> Result<f64, String> {
    let number = text.trim().trim_end_matches("/s").trim();
    match number.parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate > 0.0 => Ok(rate),
        _ => Err(format!(
            "{text:?}: expected executions per second, such as 50/s"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(url: &str) -> LoadArgs {
        LoadArgs {
            url: Some(url.into()),
            ..LoadArgs::default()
        }
    }

    #[test]
    fn durations_and_rates_parse() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5m"), Ok(Duration::from_secs(90)));
        assert!(parse_duration("30").is_err());
        assert!(parse_duration("3x").is_err());
        assert_eq!(parse_rate("50/s"), Ok(50.0));
        assert_eq!(parse_rate("2.5"), Ok(2.5));
        assert!(parse_rate("0/s").is_err());
        assert!(parse_rate("fast").is_err());
    }

    #[test]
    fn defaults_are_a_closed_loop_of_100_pattern_programs() -> Result<(), ScenarioError> {
        let scenario = resolve_with(&args("ws://h:1/v1/ws"), ScenarioFile::default())?;
        assert_eq!(scenario.mode, Mode::Closed { concurrency: 1 });
        assert_eq!(scenario.executions, Some(100));
        assert_eq!(scenario.mix.len(), 1);
        assert_eq!(scenario.mix[0].kind, ProgramKind::Pattern);
        assert!(!scenario.named_sessions());
        Ok(())
    }

    #[test]
    fn live_programs_run_for_the_duration() -> Result<(), ScenarioError> {
        let mut a = args("ws://h:1/v1/ws");
        a.live = Some(1000);
        a.sockets = Some(10);
        a.program = Some(ProgramKind::Clock);
        a.duration = Some(Duration::from_secs(30));
        let scenario = resolve_with(&a, ScenarioFile::default())?;
        assert_eq!(scenario.mode, Mode::Live { programs: 1000 });
        assert_eq!(scenario.executions, Some(1000));
        assert_eq!(scenario.duration, None);
        assert_eq!(scenario.mix[0].duration, Duration::from_secs(30));
        assert_eq!(scenario.mix[0].interval, Duration::from_millis(100));
        Ok(())
    }

    #[test]
    fn flags_override_the_file() -> Result<(), ScenarioError> {
        let file = parse_file(
            r#"
            url = "ws://file:1/v1/ws"
            sockets = 3
            rate = "20/s"
            executions = 40
            [[program]]
            kind = "pattern"
            output_bytes = 100
            [[program]]
            kind = "clock"
            duration = "1s"
            weight = 2
            "#,
        )
        .map_err(ScenarioError::Invalid)?;
        let scenario = resolve_with(&LoadArgs::default(), file.clone())?;
        assert_eq!(scenario.url, "ws://file:1/v1/ws");
        assert_eq!(scenario.mode, Mode::Open { rate: 20.0 });
        assert_eq!(scenario.mix.len(), 2);
        assert_eq!(scenario.mix[1].weight, 2);
        let mut a = args("ws://flag:1/v1/ws");
        a.concurrency = Some(4);
        a.output_bytes = Some(7);
        let scenario = resolve_with(&a, file)?;
        assert_eq!(scenario.url, "ws://flag:1/v1/ws");
        assert_eq!(scenario.sockets, 3);
        assert_eq!(scenario.mode, Mode::Closed { concurrency: 4 });
        assert_eq!(scenario.mix.len(), 1);
        assert_eq!(scenario.mix[0].output_bytes, 7);
        Ok(())
    }

    #[test]
    fn bad_scenarios_are_refused() {
        assert!(parse_file("sockets = 1\nunknown_key = 2").is_err());
        assert!(parse_file("[[program]]\nkind = \"nope\"").is_err());
        assert!(parse_file("duration = \"ten\"").is_err());
        assert!(resolve_with(&LoadArgs::default(), ScenarioFile::default()).is_err());
        let mut a = args("http://h/");
        assert!(resolve_with(&a, ScenarioFile::default()).is_err());
        a.url = Some("wss://h/v1/ws".into());
        assert!(resolve_with(&a, ScenarioFile::default()).is_err());
        a.url = Some("ws://h:1/v1/ws".into());
        a.sockets = Some(0);
        assert!(resolve_with(&a, ScenarioFile::default()).is_err());
    }

    /// Every scenario committed in bench/scenarios/ parses and resolves.
    #[test]
    fn committed_scenarios_parse() -> Result<(), String> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))? {
            let path = entry.map_err(|e| e.to_string())?.path();
            if path.extension().is_some_and(|e| e == "toml") {
                let file = read_file(&path).map_err(|e| e.to_string())?;
                resolve_with(&args("ws://h:1/v1/ws"), file)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                seen += 1;
            }
        }
        assert!(seen > 0, "no scenario in {}", dir.display());
        Ok(())
    }
}
