//! The config file, the SLUICE_* variables and `sluice config`, as an operator uses them:
//! the built `sluice` binary as a subprocess (`CARGO_BIN_EXE_sluice`).
//!
//! `sluice config` starts no gateway, so most tests here need no socket; one starts
//! `sluice serve --config` on port 0 and checks over a real socket that the gateway
//! enforces what the file says. Every `sluice` started here gets an environment without
//! the caller's SLUICE_* variables (and RUST_LOG), so only what a test sets counts.

use anyhow::{bail, ensure, Context as _, Result};
use sluice_tests::{patience, unique_marker, RawSocket};
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

/// A `sluice ARGS` with the variables in `env` and no other SLUICE_* variable.
fn sluice(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sluice"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("SLUICE_") {
            command.env_remove(name);
        }
    }
    command
        .env_remove("RUST_LOG")
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// Runs `sluice ARGS` (which must not start a gateway) to its end.
fn run(args: &[&str], env: &[(&str, &str)]) -> Result<Output> {
    sluice(args, env)
        .output()
        .with_context(|| format!("cannot run sluice {args:?}"))
}

/// A config file with `text`, removed when dropped.
struct ConfigFile(PathBuf);

impl ConfigFile {
    fn new(label: &str, text: &str) -> Result<Self> {
        let path = std::env::temp_dir().join(format!("{}.toml", unique_marker(label)));
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
        Ok(Self(path))
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap_or_default()
    }
}

impl Drop for ConfigFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// `sluice config ARGS` with `env`, which must succeed; its output as TOML.
fn effective(args: &[&str], env: &[(&str, &str)]) -> Result<toml::Table> {
    let mut all = vec!["config"];
    all.extend_from_slice(args);
    let output = run(&all, env)?;
    ensure!(
        output.status.success(),
        "sluice {all:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).context("the output is not UTF-8")?;
    text.parse::<toml::Table>()
        .with_context(|| format!("the output of sluice {all:?} is not TOML:\n{text}"))
}

/// The value of `key` in `table`, which must be there.
fn value<'a>(table: &'a toml::Table, key: &str) -> Result<&'a toml::Value> {
    table
        .get(key)
        .with_context(|| format!("no {key:?} in {table:?}"))
}

/// Runs `sluice ARGS`, which must fail with one line on stderr; returns that line.
fn failure(args: &[&str]) -> Result<String> {
    let output = run(args, &[])?;
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    ensure!(
        output.status.code() == Some(1),
        "sluice {args:?} should fail with status 1, got {:?}; stderr {stderr:?}",
        output.status
    );
    ensure!(
        output.stdout.is_empty(),
        "sluice {args:?} printed {:?}",
        String::from_utf8_lossy(&output.stdout)
    );
    let lines: Vec<&str> = stderr.lines().collect();
    ensure!(
        lines.len() == 1,
        "expected one line on stderr, got {stderr:?}"
    );
    Ok(lines[0].to_owned())
}

#[test]
fn a_flag_beats_the_environment_which_beats_the_file_which_beats_the_default() -> Result<()> {
    let file = ConfigFile::new(
        "precedence",
        "max_executions = 10\nallow_origin = [\"https://file.example\"]\nlog_json = true\n",
    )?;
    let config = file.path();

    let defaults = effective(&[], &[])?;
    let default = value(&defaults, "max_executions")?.as_integer();
    ensure!(
        default.is_some_and(|n| ![10, 20, 30].contains(&n)),
        "pick other values: {default:?} is the default"
    );
    assert_eq!(value(&defaults, "log_json")?.as_bool(), Some(false));

    let from_file = effective(&["--config", config], &[])?;
    assert_eq!(value(&from_file, "max_executions")?.as_integer(), Some(10));
    assert_eq!(
        value(&from_file, "allow_origin")?,
        &toml::Value::Array(vec!["https://file.example".into()])
    );
    assert_eq!(value(&from_file, "log_json")?.as_bool(), Some(true));
    // The file's path can come from the environment too.
    assert_eq!(effective(&[], &[("SLUICE_CONFIG", config)])?, from_file);

    let env = [
        ("SLUICE_MAX_EXECUTIONS", "20"),
        ("SLUICE_ALLOW_ORIGIN", "https://env.example"),
        ("SLUICE_LOG_JSON", "false"),
    ];
    let from_env = effective(&["--config", config], &env)?;
    assert_eq!(value(&from_env, "max_executions")?.as_integer(), Some(20));
    assert_eq!(
        value(&from_env, "allow_origin")?,
        &toml::Value::Array(vec!["https://env.example".into()])
    );
    assert_eq!(value(&from_env, "log_json")?.as_bool(), Some(false));

    let from_flags = effective(
        &[
            "--config",
            config,
            "--max-executions",
            "30",
            "--allow-origin",
            "https://a.example",
            "--allow-origin",
            "https://b.example",
        ],
        &env,
    )?;
    assert_eq!(value(&from_flags, "max_executions")?.as_integer(), Some(30));
    assert_eq!(
        value(&from_flags, "allow_origin")?,
        &toml::Value::Array(vec!["https://a.example".into(), "https://b.example".into()])
    );
    Ok(())
}

#[test]
fn an_unknown_key_is_refused_naming_the_file_the_line_and_the_nearest_key() -> Result<()> {
    let file = ConfigFile::new("unknown", "listen = \"127.0.0.1:0\"\n\nmax_executons = 3\n")?;
    for command in ["serve", "config"] {
        let line = failure(&[command, "--config", file.path()])?;
        assert_eq!(
            line,
            format!(
                "sluice: {}: line 3: unknown key \"max_executons\" (did you mean \
                 \"max_executions\"?)",
                file.path()
            )
        );
    }
    Ok(())
}

#[test]
fn a_bad_value_or_type_is_refused_naming_the_file_the_line_and_the_key() -> Result<()> {
    let cases = [
        (
            "max_executions = \"many\"",
            "\"max_executions\" must be an integer, not string",
        ),
        (
            "log_json = \"yes\"",
            "\"log_json\" must be a boolean, not string",
        ),
        (
            "allow_origin = \"https://ide.example\"",
            "\"allow_origin\" must be an array (the flag is repeatable), not string",
        ),
        (
            "isolation = \"strong\"",
            "\"isolation\": invalid value 'strong'",
        ),
        (
            "budget_share_per_peer = 101",
            "\"budget_share_per_peer\": invalid value '101'",
        ),
        ("runtime = [\"ruby\"]", "\"runtime\": invalid value 'ruby'"),
        ("listen = ", "not valid TOML"),
    ];
    for (text, expected) in cases {
        let file = ConfigFile::new("bad", &format!("# a comment\n{text}\n"))?;
        // `serve` refuses before it binds: nothing listens, the test needs no socket.
        let line = failure(&["serve", "--config", file.path()])?;
        let prefix = format!("sluice: {}: line 2: ", file.path());
        ensure!(
            line.starts_with(&prefix) && line[prefix.len()..].starts_with(expected),
            "for {text:?}: expected `{prefix}{expected}...`, got {line:?}"
        );
    }
    Ok(())
}

#[test]
fn a_missing_file_is_named() -> Result<()> {
    let path = std::env::temp_dir().join(format!("{}.toml", unique_marker("missing")));
    let path = path.to_str().context("a UTF-8 temporary directory")?;
    let line = failure(&["serve", "--config", path])?;
    assert!(
        line.starts_with(&format!("sluice: {path}: cannot read the config file: ")),
        "{line}"
    );
    Ok(())
}

#[test]
fn a_file_whose_values_fail_the_gateways_checks_is_refused() -> Result<()> {
    let file = ConfigFile::new(
        "invalid",
        "default_timeout_ms = 9000\nmax_timeout_ms = 8000\n",
    )?;
    let line = failure(&["config", "--config", file.path()])?;
    assert!(
        line.starts_with("sluice: invalid configuration: "),
        "{line}"
    );
    assert!(line.contains("timeout_ms"), "{line}");
    Ok(())
}

#[test]
fn sluice_config_prints_every_key_and_reads_back_to_the_same_configuration() -> Result<()> {
    let file = ConfigFile::new(
        "round-trip-in",
        "max_executions = 12\nallow_origin = [\"https://ide.example\", \"*\"]\n\
         runtime = ['ruby.rb=ruby {file}']\nenv = [\"TZ=UTC\", 'QUOTE=a \"b\" \\c']\n\
         log = \"sluice=debug,info\"\nkill_grace_ms = 500\nisolation = \"none\"\n\
         threads = 3\nwork_dir = \"/tmp/sluice work\"\n",
    )?;
    let args = [
        "--config",
        file.path(),
        "--max-sessions",
        "77",
        "--log-json",
    ];
    let env = [("SLUICE_MEMORY_OVERCOMMIT", "3")];
    let first = effective(&args, &env)?;
    // Every source shows: file, flags, environment, defaults.
    assert_eq!(value(&first, "max_executions")?.as_integer(), Some(12));
    assert_eq!(value(&first, "max_sessions")?.as_integer(), Some(77));
    assert_eq!(value(&first, "log_json")?.as_bool(), Some(true));
    assert_eq!(value(&first, "memory_overcommit")?.as_integer(), Some(3));
    assert_eq!(value(&first, "listen")?.as_str(), Some("127.0.0.1:7878"));
    assert_eq!(
        value(&first, "env")?,
        &toml::Value::Array(vec!["TZ=UTC".into(), "QUOTE=a \"b\" \\c".into()])
    );
    assert_eq!(
        value(&first, "work_dir")?.as_str(),
        Some("/tmp/sluice work")
    );

    // Every flag of `serve --help` has its key, set or said to be unset.
    let printed = String::from_utf8(run(&["config"], &[])?.stdout)?;
    let help = String::from_utf8(run(&["serve", "--help"], &[])?.stdout)?;
    // The lines that define a flag start with it (`      --max-executions <N>`).
    for flag in help
        .lines()
        .filter_map(|line| line.trim_start().strip_prefix("--"))
        .filter_map(|rest| rest.split_whitespace().next())
        .filter(|flag| !["help", "config"].contains(flag))
    {
        let key = flag.replace('-', "_");
        ensure!(
            printed.contains(&format!("\n{key} = "))
                || printed.contains(&format!("\n# {key} is not set")),
            "sluice config does not print {key:?} (the flag --{flag}):\n{printed}"
        );
    }

    // Read back alone (no flags, no environment), the output is the same configuration.
    let mut all = vec!["config"];
    all.extend_from_slice(&args);
    let output = sluice(&all, &env).output()?;
    let text = String::from_utf8(output.stdout)?;
    ensure!(
        text.contains("# (set by the config file)\nmax_executions = 12\n"),
        "{text}"
    );
    ensure!(
        text.contains("# (set on the command line)\nmax_sessions = 77\n"),
        "{text}"
    );
    ensure!(
        text.contains(
            "# (set by the environment: SLUICE_MEMORY_OVERCOMMIT)\nmemory_overcommit = 3\n"
        ),
        "{text}"
    );
    let copy = ConfigFile::new("round-trip-out", &text)?;
    let second = effective(&["--config", copy.path()], &[])?;
    assert_eq!(second, first);
    Ok(())
}

#[test]
fn the_example_config_validates() -> Result<()> {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/sluice.example.toml");
    let example = example.to_str().context("a UTF-8 path")?;
    let table = effective(&["--config", example], &[])?;
    let text = std::fs::read_to_string(example)?;
    // It documents every key there is (set, or commented out), so it stays a guide:
    // those with a value, and those `sluice config` prints as not set.
    let printed = run(&["config"], &[])?;
    let printed = String::from_utf8(printed.stdout).context("the output is not UTF-8")?;
    let unset = printed.lines().filter_map(|line| {
        line.strip_prefix("# ")?
            .strip_suffix(" is not set (its default applies)")
    });
    let keys: Vec<String> = table
        .keys()
        .cloned()
        .chain(unset.map(str::to_owned))
        .collect();
    ensure!(keys.iter().any(|k| k == "audit_log"), "{keys:?}");
    for key in &keys {
        ensure!(
            text.contains(&format!("\n{key} = ")) || text.contains(&format!("\n# {key} = ")),
            "docs/sluice.example.toml does not mention {key:?}"
        );
    }
    Ok(())
}

/// A `sluice serve` started by a test, killed when dropped.
struct Serving(Child);

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sluice_serve_runs_with_what_the_file_says() -> Result<()> {
    // A JSON log (the file's `log_json`) says where it listens (the file's port 0); its
    // `allow_origin` then decides which browser pages may open a socket.
    let file = ConfigFile::new(
        "serve",
        "listen = \"127.0.0.1:0\"\nisolation = \"none\"\nlog_json = true\n\
         log = \"info\"\nallow_origin = [\"https://ide.example\"]\n",
    )?;
    let mut child = sluice(&["serve", "--config", file.path()], &[])
        .stdout(Stdio::null())
        .spawn()
        .context("cannot start sluice serve")?;
    let stderr = child.stderr.take().context("no stderr pipe")?;
    let serving = Serving(child);
    let (lines, received) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // Reads to the end, so the gateway never writes to a closed pipe.
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { return };
            let _ = lines.send(line);
        }
    });
    // The address comes first (`listening`), then `ready` once the gateway serves.
    let address = tokio::task::spawn_blocking(move || -> Result<String> {
        let mut seen = Vec::new();
        let mut address = None;
        loop {
            let line = received
                .recv_timeout(patience())
                .with_context(|| format!("no `ready` line in the log; it had {seen:?}"))?;
            let Ok(event) = serde_json::from_str::<serde_json::Value>(&line) else {
                bail!("a log line that is not JSON (log_json = true): {line:?}");
            };
            match event["fields"]["message"].as_str() {
                Some("listening") => {
                    address = event["fields"]["address"].as_str().map(str::to_owned);
                }
                Some("ready") => return address.context("`ready` before `listening`"),
                _ => {}
            }
            seen.push(line);
        }
    })
    .await??;
    let url = format!("ws://{address}/v1/ws");

    let mut allowed = RawSocket::connect_with_origin(&url, "https://ide.example").await?;
    allowed.assert_still_works().await?;
    let refused = RawSocket::connect_with_origin(&url, "https://elsewhere.example").await;
    match refused {
        Ok(_) => bail!("a page from an origin the file does not allow opened a socket"),
        Err(err) => ensure!(format!("{err:#}").contains("403"), "{err:#}"),
    }
    drop(serving);
    Ok(())
}

/// `sluice doctor` reports the host's layers and then the configured runtimes, each
/// with the version its interpreter gives (`python3 --version` run here directly is the
/// reference) and its source file.
#[test]
fn doctor_lists_the_runtimes_with_their_versions() -> Result<()> {
    let out = run(&["doctor"], &[])?;
    ensure!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let (_, runtimes) = text
        .split_once("runtimes (")
        .with_context(|| format!("no runtimes section in:\n{text}"))?;
    let python = runtimes
        .lines()
        .find(|line| line.trim_start().starts_with("python "))
        .with_context(|| format!("no python line in:\n{runtimes}"))?;
    let reference = Command::new("python3").arg("--version").output()?;
    let version = String::from_utf8_lossy(&reference.stdout).trim().to_owned();
    ensure!(
        python.contains(&version) && python.contains("main.py") && python.contains("persistent"),
        "{python:?} against {version:?}"
    );
    let sh = runtimes
        .lines()
        .find(|line| line.trim_start().starts_with("sh "))
        .with_context(|| format!("no sh line in:\n{runtimes}"))?;
    ensure!(
        sh.contains("main.sh") && !sh.contains("persistent"),
        "{sh:?}"
    );
    Ok(())
}

/// `--no-playground` is a switch like the others: a flag, `SLUICE_NO_PLAYGROUND`, or the
/// file's `no_playground` (what it does to `/` is tested end to end in `tests/`).
#[test]
fn the_playground_is_turned_off_by_flag_variable_or_file() -> Result<()> {
    assert_eq!(
        value(&effective(&[], &[])?, "no_playground")?.as_bool(),
        Some(false)
    );
    let file = ConfigFile::new("playground", "no_playground = true\n")?;
    for table in [
        effective(&["--no-playground"], &[])?,
        effective(&[], &[("SLUICE_NO_PLAYGROUND", "true")])?,
        effective(&["--config", file.path()], &[])?,
    ] {
        assert_eq!(value(&table, "no_playground")?.as_bool(), Some(true));
    }
    Ok(())
}
