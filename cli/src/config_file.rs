//! Where every flag of `sluice serve` gets its value: the command line, then the
//! environment (`SLUICE_<FLAG>`), then a TOML config file (`--config FILE` or
//! `SLUICE_CONFIG`), then the flag's default; and `sluice config`, which prints the
//! result as a config file.
//!
//! Generic over the flags, so a flag added to `ServeArgs` is a file key and an
//! environment variable with no code here:
//!
//! - Before parsing, every long flag of the `serve` and `config` subcommands that names no
//!   variable of its own gets `SLUICE_` + the flag in upper snake case as clap's own
//!   `env`, so clap already orders the command line over the environment over defaults.
//! - A file's keys are the flags without their dashes, in snake case (`max_executions` is
//!   `--max-executions`). Each key is checked against its flag, so an error names the key,
//!   the file and the line: its TOML type by the flag's shape (a switch takes a boolean, a
//!   repeatable flag an array, a flag parsed as an integer an integer, any other a
//!   string), its value by the flag's own clap value parser.
//! - Each file value whose flag the command line and the environment left unset is then
//!   appended to the command line as that flag (`--max-executions=64`), and clap parses
//!   it all again. So the file only fills what is still at its default, and its values
//!   meet every rule of clap's a flag meets (the flags one requires or excludes too);
//!   there is no second code path that could disagree with clap.
//! - `sluice config` walks the same flags and prints each one's effective value (what
//!   clap parsed, by its raw text) with the flag's help as a comment; integers print as
//!   integers, switches as booleans, the rest as strings, which is exactly what the file
//!   reader accepts, so the output read back gives the same configuration. A key whose
//!   name says it holds a secret (`secret`, `token` or `password`, unless it names a
//!   file, path or directory) prints as `"<redacted>"`, and reading that back is refused
//!   where it would take effect, so a redacted copy can never set a wrong secret.

use clap::builder::ValueParser;
use clap::error::ErrorKind;
use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, Command};
use std::any::TypeId;
use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};

/// The subcommands whose flags the file and the environment set.
const SUBCOMMANDS: [&str; 2] = ["serve", "config"];

/// The id of `--config`: a flag of those subcommands, not a key of the file.
pub(crate) const CONFIG_FLAG: &str = "config";

/// What every generated variable name starts with.
const ENV_PREFIX: &str = "SLUICE_";

/// What `sluice config` prints in place of a secret.
const REDACTED: &str = "<redacted>";

/// The words that make a key a secret.
const SECRET_WORDS: [&str; 3] = ["secret", "token", "password"];

/// A parsed command line, with the environment and the config file applied.
#[derive(Debug)]
pub(crate) struct Parsed {
    /// The whole command, with the variables and the file's defaults in place.
    command: Command,
    /// What clap made of the command line with them.
    pub(crate) matches: ArgMatches,
    /// The file that was read, and the keys it set.
    file: Option<(PathBuf, Vec<String>)>,
}

/// Why the command line cannot be used: clap's own error (it prints and exits the
/// usual way, `--help` included) or a problem with the config file.
#[derive(Debug)]
pub(crate) enum ParseError {
    Clap(clap::Error),
    File(FileError),
}

/// A problem with the config file, rendered as `PATH: line N: what`.
#[derive(Debug)]
pub(crate) struct FileError {
    path: PathBuf,
    line: Option<usize>,
    problem: Problem,
}

#[derive(Debug)]
enum Problem {
    Read(std::io::Error),
    Syntax(String),
    UnknownKey {
        key: String,
        suggestion: Option<String>,
    },
    WrongType {
        key: String,
        expected: &'static str,
        found: &'static str,
    },
    Invalid {
        key: String,
        message: String,
    },
    Redacted {
        key: String,
    },
    /// The file's values, each valid, do not go with the flags and variables given.
    Clash(String),
}

impl fmt::Display for FileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.path.display())?;
        if let Some(line) = self.line {
            write!(f, "line {line}: ")?;
        }
        match &self.problem {
            Problem::Read(err) => write!(f, "cannot read the config file: {err}"),
            Problem::Syntax(message) => write!(f, "not valid TOML: {message}"),
            Problem::UnknownKey { key, suggestion } => {
                write!(f, "unknown key {key:?}")?;
                match suggestion {
                    Some(near) => write!(f, " (did you mean {near:?}?)"),
                    None => write!(f, " (the keys are the flags of `sluice serve --help`)"),
                }
            }
            Problem::WrongType {
                key,
                expected,
                found,
            } => write!(f, "{key:?} must be {expected}, not {found}"),
            Problem::Invalid { key, message } => write!(f, "{key:?}: {message}"),
            Problem::Clash(message) => write!(
                f,
                "its values do not go with the flags and variables given: {message}"
            ),
            Problem::Redacted { key } => write!(
                f,
                "{key:?} is {REDACTED:?}, as `sluice config` prints a secret: put the secret \
                 back, or set it with --{} or {}",
                key.replace('_', "-"),
                env_name(key)
            ),
        }
    }
}

impl std::error::Error for FileError {}

/// The shape of a flag's value, which fixes the TOML type of its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// `--log-json`: a boolean.
    Switch,
    /// `--max-executions N`: one value.
    One,
    /// `--allow-origin ORIGIN`, repeatable: an array.
    Many,
}

/// One flag that is also a key of the file and a variable of the environment.
#[derive(Debug, Clone)]
struct Flag {
    id: String,
    long: String,
    key: String,
    shape: Shape,
    /// Parsed as an integer: the key takes a TOML integer.
    integer: bool,
    /// Holds a secret: `sluice config` redacts it.
    secret: bool,
    /// A switch that, given, sets `true` (`ArgAction::SetTrue`; `SetFalse` sets `false`).
    switch_sets_true: bool,
    help: String,
}

/// The key of the flag `--long`.
fn key_of(long: &str) -> String {
    long.replace('-', "_")
}

/// The environment variable of the key `key`.
fn env_name(key: &str) -> String {
    format!("{ENV_PREFIX}{}", key.to_ascii_uppercase())
}

/// Whether `parser` makes integers (of any width, ranged or not).
fn parses_integer(parser: &ValueParser) -> bool {
    let id = parser.type_id();
    [
        TypeId::of::<u8>(),
        TypeId::of::<u16>(),
        TypeId::of::<u32>(),
        TypeId::of::<u64>(),
        TypeId::of::<usize>(),
        TypeId::of::<i8>(),
        TypeId::of::<i16>(),
        TypeId::of::<i32>(),
        TypeId::of::<i64>(),
        TypeId::of::<isize>(),
    ]
    .iter()
    .any(|t| id == *t)
}

/// Whether the key `key` (of a flag parsed by `parser`) holds a secret. A path to a
/// file holding one does not.
fn is_secret(key: &str, parser: &ValueParser) -> bool {
    let names_a_place = ["_file", "_files", "_path", "_dir", "_paths", "_dirs"]
        .iter()
        .any(|suffix| key.ends_with(suffix))
        || parser.type_id() == TypeId::of::<PathBuf>();
    !names_a_place && SECRET_WORDS.iter().any(|word| key.contains(word))
}

/// The flags of `sub` that the file and the environment may set, in `--help` order.
fn flags(sub: &Command) -> Vec<Flag> {
    sub.get_arguments()
        .filter(|arg| arg.get_id() != CONFIG_FLAG)
        .filter_map(|arg| {
            let long = arg.get_long()?;
            let shape = match arg.get_action() {
                ArgAction::SetTrue | ArgAction::SetFalse => Shape::Switch,
                ArgAction::Set => Shape::One,
                ArgAction::Append => Shape::Many,
                // Help, version and counters are not configuration.
                _ => return None,
            };
            let key = key_of(long);
            let parser = arg.get_value_parser();
            let help = arg
                .get_long_help()
                .or(arg.get_help())
                .map(ToString::to_string)
                .unwrap_or_default();
            Some(Flag {
                id: arg.get_id().to_string(),
                long: long.to_owned(),
                integer: shape != Shape::Switch && parses_integer(parser),
                secret: is_secret(&key, parser),
                switch_sets_true: matches!(arg.get_action(), ArgAction::SetTrue),
                key,
                shape,
                help,
            })
        })
        .collect()
}

/// Gives every long flag of `sub` without a variable of its own `SLUICE_<FLAG>`.
fn with_env(sub: Command) -> Command {
    sub.mut_args(|arg| match (arg.get_long(), arg.get_env()) {
        (Some(long), None) if !matches!(arg.get_action(), ArgAction::Help | ArgAction::Version) => {
            let name = env_name(&key_of(long));
            arg.env(name)
        }
        _ => arg,
    })
}

/// Parses `argv` with `top` (the `sluice` command): the environment, then for `serve`
/// and `config` the config file, as this module's documentation says.
pub(crate) fn parse(top: Command, argv: Vec<OsString>) -> Result<Parsed, ParseError> {
    let mut top = top;
    for name in SUBCOMMANDS {
        top = top.mut_subcommand(name, with_env);
    }
    let first = top
        .clone()
        .try_get_matches_from(&argv)
        .map_err(ParseError::Clap)?;
    let Some((name, sub_matches)) = first.subcommand() else {
        return Ok(Parsed {
            command: top,
            matches: first,
            file: None,
        });
    };
    let path = match sub_matches.try_get_one::<PathBuf>(CONFIG_FLAG) {
        Ok(Some(path)) if SUBCOMMANDS.contains(&name) => path.clone(),
        _ => {
            return Ok(Parsed {
                command: top,
                matches: first,
                file: None,
            })
        }
    };
    let name = name.to_owned();
    let Some(sub) = top.find_subcommand(&name) else {
        return Ok(Parsed {
            command: top,
            matches: first,
            file: None,
        });
    };
    let settings = read_file(sub, &path, sub_matches).map_err(ParseError::File)?;
    // Each of the file's values that no flag or variable set joins the command line, and
    // clap parses it all again: the file's values meet every rule a flag's value meets
    // (the flags they require or exclude included).
    let mut argv = argv;
    let mut applied = Vec::new();
    for (flag, setting) in settings {
        if shadowed(sub_matches, &flag) {
            continue;
        }
        match setting {
            Setting::Switch(on) => {
                if on == flag.switch_sets_true {
                    argv.push(format!("--{}", flag.long).into());
                }
            }
            Setting::One(text) => argv.push(format!("--{}={text}", flag.long).into()),
            Setting::Many(texts) => argv.extend(
                texts
                    .into_iter()
                    .map(|text| format!("--{}={text}", flag.long).into()),
            ),
        }
        applied.push(flag.key);
    }
    // The same command line passed without them, so what fails now is the file's doing.
    let matches = match top.clone().try_get_matches_from(&argv) {
        Ok(matches) => matches,
        Err(err) => {
            return Err(ParseError::File(FileError {
                path,
                line: None,
                problem: Problem::Clash(first_line(&err)),
            }))
        }
    };
    Ok(Parsed {
        command: top,
        matches,
        file: Some((path, applied)),
    })
}

/// Whether the command line or the environment set `flag` (so the file's value for it
/// does not count).
fn shadowed(given: &ArgMatches, flag: &Flag) -> bool {
    matches!(
        given.value_source(&flag.id),
        Some(ValueSource::CommandLine | ValueSource::EnvVariable)
    )
}

/// A file's value for one flag, as text for its value parser.
#[derive(Debug)]
enum Setting {
    Switch(bool),
    One(String),
    Many(Vec<String>),
}

/// Reads and checks the config file at `path` against the flags of `sub`. `given` says
/// which flags the command line or the environment already set.
fn read_file(
    sub: &Command,
    path: &Path,
    given: &ArgMatches,
) -> Result<Vec<(Flag, Setting)>, FileError> {
    let error = |line, problem| FileError {
        path: path.to_owned(),
        line,
        problem,
    };
    let text = std::fs::read_to_string(path).map_err(|err| error(None, Problem::Read(err)))?;
    let line_of = |offset: usize| 1 + text[..offset.min(text.len())].matches('\n').count();
    type Spanned<T> = toml::Spanned<T>;
    let table: std::collections::BTreeMap<Spanned<String>, Spanned<toml::Value>> =
        toml::from_str(&text).map_err(|err| {
            error(
                err.span().map(|span| line_of(span.start)),
                Problem::Syntax(err.message().trim().to_owned()),
            )
        })?;
    let mut entries: Vec<_> = table.into_iter().collect();
    // The first problem reported is the first in the file.
    entries.sort_by_key(|(key, _)| key.span().start);

    let flags = flags(sub);
    // A command of the same flags with nothing from the environment or the file, on which
    // each value meets the flag's own parser.
    let mut probe = sub
        .clone()
        .no_binary_name(true)
        .mut_args(|arg| arg.env(None::<&str>).required(false));
    let mut settings = Vec::with_capacity(entries.len());
    for (key, value) in entries {
        let line = Some(line_of(key.span().start));
        let key = key.into_inner();
        let Some(flag) = flags.iter().find(|flag| flag.key == key) else {
            let suggestion = flags
                .iter()
                .map(|flag| (strsim::jaro_winkler(&key, &flag.key), &flag.key))
                .filter(|(score, _)| *score > 0.8)
                .max_by(|a, b| a.0.total_cmp(&b.0))
                .map(|(_, near)| near.clone());
            return Err(error(line, Problem::UnknownKey { key, suggestion }));
        };
        let value = value.into_inner();
        let setting = match (flag.shape, &value) {
            (Shape::Switch, toml::Value::Boolean(on)) => Setting::Switch(*on),
            (Shape::Switch, other) => {
                return Err(error(line, wrong_type(flag, "a boolean", other)));
            }
            (Shape::One, _) => Setting::One(scalar(flag, &value).map_err(|p| error(line, p))?),
            (Shape::Many, toml::Value::Array(items)) => Setting::Many(
                items
                    .iter()
                    .map(|item| scalar(flag, item))
                    .collect::<Result<_, _>>()
                    .map_err(|p| error(line, p))?,
            ),
            (Shape::Many, other) => {
                return Err(error(
                    line,
                    wrong_type(flag, "an array (the flag is repeatable)", other),
                ));
            }
        };
        let texts: &[String] = match &setting {
            Setting::Switch(_) => &[],
            Setting::One(text) => std::slice::from_ref(text),
            Setting::Many(texts) => texts,
        };
        for text in texts {
            check(&mut probe, flag, text).map_err(|message| {
                error(
                    line,
                    Problem::Invalid {
                        key: flag.key.clone(),
                        message,
                    },
                )
            })?;
        }
        if flag.secret && !shadowed(given, flag) && texts.iter().any(|text| text == REDACTED) {
            return Err(error(
                line,
                Problem::Redacted {
                    key: flag.key.clone(),
                },
            ));
        }
        settings.push((flag.clone(), setting));
    }
    Ok(settings)
}

fn wrong_type(flag: &Flag, expected: &'static str, found: &toml::Value) -> Problem {
    Problem::WrongType {
        key: flag.key.clone(),
        expected,
        found: found.type_str(),
    }
}

/// The text of one value of `flag` (the whole value, or one item of an array).
fn scalar(flag: &Flag, value: &toml::Value) -> Result<String, Problem> {
    match value {
        toml::Value::Integer(n) if flag.integer => Ok(n.to_string()),
        // TOML's integers stop at i64::MAX; a larger one (`sluice config` prints it so)
        // may be a string of digits.
        toml::Value::String(s)
            if flag.integer && s.parse::<i64>().is_err() && s.parse::<u128>().is_ok() =>
        {
            Ok(s.clone())
        }
        toml::Value::String(s) if !flag.integer => Ok(s.clone()),
        other if flag.integer => Err(wrong_type(flag, "an integer", other)),
        other => Err(wrong_type(flag, "a string", other)),
    }
}

/// Runs `text` through `flag`'s own parser (and only it) on `probe`; on failure, clap's
/// one-line reason.
fn check(probe: &mut Command, flag: &Flag, text: &str) -> Result<(), String> {
    let arg = format!("--{}={text}", flag.long);
    match probe.try_get_matches_from_mut([arg]) {
        Ok(_) => Ok(()),
        // About other flags (one this one requires or excludes), not this value: the
        // final parse judges those, with all the values in place.
        Err(err)
            if matches!(
                err.kind(),
                ErrorKind::MissingRequiredArgument | ErrorKind::ArgumentConflict
            ) =>
        {
            Ok(())
        }
        Err(err) => Err(first_line(&err)),
    }
}

/// What clap says of `err`, in one line (without its `error: ` and usage).
fn first_line(err: &clap::Error) -> String {
    let rendered = err.render().to_string();
    let first = rendered.lines().next().unwrap_or_default();
    first.strip_prefix("error: ").unwrap_or(first).to_owned()
}

impl Parsed {
    /// The effective configuration of the `config` subcommand's flags as TOML: every
    /// key, its flag's help as a comment, and where a value came from when not the
    /// default. `None` when the command line was not `sluice config`.
    pub(crate) fn render(&self) -> Option<String> {
        let (name, matches) = self.matches.subcommand()?;
        let sub = self.command.find_subcommand(name)?;
        let mut out = String::new();
        out.push_str(&format!(
            "# The effective configuration of `sluice serve`, printed by `sluice config`.\n\
             # Each key is a flag of `sluice serve --help` (snake case); each comes from the\n\
             # command line, else the environment ({ENV_PREFIX}<KEY>), else the config file, else\n\
             # the flag's default. `sluice serve --config THIS_FILE` runs the same gateway.\n"
        ));
        if let Some((path, _)) = &self.file {
            out.push_str(&format!("# Config file read: {}\n", path.display()));
        }
        for flag in flags(sub) {
            out.push('\n');
            for line in wrap(&flag.help, 86) {
                out.push('#');
                if !line.is_empty() {
                    out.push(' ');
                    out.push_str(&line);
                }
                out.push('\n');
            }
            let from_file = self
                .file
                .as_ref()
                .is_some_and(|(_, keys)| keys.contains(&flag.key));
            match matches.value_source(&flag.id) {
                _ if from_file => out.push_str("# (set by the config file)\n"),
                Some(ValueSource::CommandLine) => out.push_str("# (set on the command line)\n"),
                Some(ValueSource::EnvVariable) => out.push_str(&format!(
                    "# (set by the environment: {})\n",
                    env_name(&flag.key)
                )),
                _ => {}
            }
            let raw: Vec<String> = matches
                .get_raw(&flag.id)
                .map(|values| {
                    values
                        .map(|value| value.to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default();
            let value = match flag.shape {
                Shape::Switch => match raw.first() {
                    Some(text) => toml::Value::Boolean(text == "true"),
                    None => toml::Value::Boolean(false),
                },
                Shape::Many => toml::Value::Array(raw.iter().map(|t| typed(&flag, t)).collect()),
                Shape::One => match raw.first() {
                    Some(text) => typed(&flag, text),
                    None => {
                        out.push_str(&format!(
                            "# {} is not set (its default applies)\n",
                            flag.key
                        ));
                        continue;
                    }
                },
            };
            if flag.secret && raw.iter().any(|text| !text.is_empty()) {
                out.push_str(&format!(
                    "# Redacted: this file does not hold the secret; set it again here, \
                     with --{} or with {}.\n{} = {}\n",
                    flag.long,
                    env_name(&flag.key),
                    flag.key,
                    toml::Value::String(REDACTED.to_owned())
                ));
                continue;
            }
            out.push_str(&format!("{} = {value}\n", flag.key));
        }
        Some(out)
    }
}

/// `text` of `flag` as the TOML value the file reader takes back.
fn typed(flag: &Flag, text: &str) -> toml::Value {
    match text.parse::<i64>() {
        Ok(n) if flag.integer => toml::Value::Integer(n),
        _ => toml::Value::String(text.to_owned()),
    }
}

/// `text` in lines of at most `width` characters (longer words stay whole), its own
/// line breaks kept.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    for paragraph in text.lines() {
        let mut line = String::new();
        for word in paragraph.split_whitespace() {
            if !line.is_empty() && line.len() + 1 + word.len() > width {
                lines.push(std::mem::take(&mut line));
            }
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(word);
        }
        lines.push(line);
    }
    while lines.last().is_some_and(String::is_empty) {
        lines.pop();
    }
    lines
}

#[cfg(test)]
mod tests {
    //! The generic part, on a command made up here: flags this module has never heard of
    //! (as the ones the gateway will add) become keys, and secrets are redacted. The real
    //! `sluice` is tested as a user runs it in cli/tests/config.rs.

    use super::*;
    use clap::Arg;

    /// `sluice serve` with some flags of the kind the gateway is adding.
    fn command() -> Command {
        let serve = Command::new("serve")
            .arg(
                Arg::new(CONFIG_FLAG)
                    .long(CONFIG_FLAG)
                    .value_parser(clap::value_parser!(PathBuf)),
            )
            .arg(
                Arg::new("drain_timeout_ms")
                    .long("drain-timeout-ms")
                    .value_parser(clap::value_parser!(u64))
                    .default_value("30000"),
            )
            .arg(Arg::new("jwt_secret").long("jwt-secret"))
            .arg(
                Arg::new("jwt_secret_file")
                    .long("jwt-secret-file")
                    .value_parser(clap::value_parser!(PathBuf)),
            )
            .arg(
                Arg::new("insecure_no_auth")
                    .long("insecure-no-auth")
                    .action(ArgAction::SetTrue)
                    .conflicts_with("jwt_secret"),
            )
            .arg(
                Arg::new("metrics_token")
                    .long("metrics-token")
                    .action(ArgAction::Append),
            );
        Command::new("sluice")
            .subcommand(serve.clone())
            .subcommand(serve.name("config"))
    }

    /// A config file with `text`, removed when dropped.
    struct TempFile(PathBuf);

    impl TempFile {
        fn new(name: &str, text: &str) -> Self {
            let path = std::env::temp_dir().join(format!(
                "sluice-config-unit-{}-{name}.toml",
                std::process::id()
            ));
            std::fs::write(&path, text).expect("write the config file");
            Self(path)
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn parse_with(file: &TempFile, extra: &[&str]) -> Result<Parsed, ParseError> {
        let mut argv: Vec<OsString> = ["sluice", "config", "--config"]
            .into_iter()
            .map(OsString::from)
            .collect();
        argv.push(file.0.clone().into_os_string());
        argv.extend(extra.iter().map(OsString::from));
        parse(command(), argv)
    }

    fn file_error(result: Result<Parsed, ParseError>) -> String {
        match result {
            Err(ParseError::File(err)) => err.to_string(),
            Err(ParseError::Clap(err)) => panic!("a clap error, not the file's: {err}"),
            Ok(_) => panic!("the file was accepted"),
        }
    }

    #[test]
    fn a_flag_this_module_never_named_is_a_key_and_a_variable() {
        let file = TempFile::new("new-flag", "drain_timeout_ms = 5\n");
        let parsed = parse_with(&file, &[]).expect("parse");
        let (_, sub) = parsed.matches.subcommand().expect("a subcommand");
        assert_eq!(sub.get_one::<u64>("drain_timeout_ms"), Some(&5));
        let serve = parsed.command.find_subcommand("serve").expect("serve");
        let arg = serve
            .get_arguments()
            .find(|arg| arg.get_id() == "drain_timeout_ms")
            .expect("the flag");
        assert_eq!(
            arg.get_env(),
            Some(std::ffi::OsStr::new("SLUICE_DRAIN_TIMEOUT_MS"))
        );
        let bad = TempFile::new("new-flag-bad", "\ndrain_timeout_ms = \"soon\"\n");
        assert_eq!(
            file_error(parse_with(&bad, &[])),
            format!(
                "{}: line 2: \"drain_timeout_ms\" must be an integer, not string",
                bad.0.display()
            )
        );
    }

    #[test]
    fn a_flag_that_excludes_another_is_checked_with_both_in_place() {
        // Each value is checked alone; the relations between flags, by the final parse.
        let file = TempFile::new("conflict", "insecure_no_auth = true\n");
        assert!(parse_with(&file, &[]).is_ok());
        let message = file_error(parse_with(&file, &["--jwt-secret", "s3"]));
        assert!(
            message.starts_with(&format!(
                "{}: its values do not go with the flags and variables given: ",
                file.0.display()
            )) && message.contains("cannot be used with")
                && message.contains("--insecure-no-auth"),
            "{message}"
        );
    }

    #[test]
    fn secrets_print_redacted_and_paths_to_them_do_not() {
        let file = TempFile::new(
            "secrets",
            "jwt_secret = \"hunter2\"\njwt_secret_file = \"/etc/sluice/jwt\"\n\
             metrics_token = [\"t1\"]\n",
        );
        let text = parse_with(&file, &[])
            .expect("parse")
            .render()
            .expect("a rendering");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(!text.contains("t1"), "{text}");
        assert!(text.contains("\njwt_secret = \"<redacted>\"\n"), "{text}");
        assert!(
            text.contains("\nmetrics_token = \"<redacted>\"\n"),
            "{text}"
        );
        assert!(
            text.contains("\njwt_secret_file = \"/etc/sluice/jwt\"\n"),
            "{text}"
        );
        assert!(text.contains("# Redacted: "), "{text}");
    }

    #[test]
    fn a_redacted_secret_read_back_is_refused_unless_set_elsewhere() {
        let file = TempFile::new("redacted", "jwt_secret = \"<redacted>\"\n");
        assert_eq!(
            file_error(parse_with(&file, &[])),
            format!(
                "{}: line 1: \"jwt_secret\" is \"<redacted>\", as `sluice config` prints a \
                 secret: put the secret back, or set it with --jwt-secret or SLUICE_JWT_SECRET",
                file.0.display()
            )
        );
        let parsed = parse_with(&file, &["--jwt-secret", "s3"]).expect("parse");
        let (_, sub) = parsed.matches.subcommand().expect("a subcommand");
        assert_eq!(
            sub.get_one::<String>("jwt_secret").map(String::as_str),
            Some("s3")
        );
    }

    #[test]
    fn help_wraps_at_word_boundaries_and_keeps_paragraphs() {
        assert_eq!(
            wrap("one two three\n\nfour", 7),
            ["one two", "three", "", "four"]
        );
    }
}
