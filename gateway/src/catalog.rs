//! What the gateway offers a caller, for the `runtimes` frame and `GET /v1/runtimes`:
//! its languages (each with its interpreter's version, asked once with `--version`),
//! and each limit's default and maximum, narrowed to what the caller's credential
//! allows.

use crate::auth::Grant;
use crate::config::{LimitBound, LimitsConfig};
use crate::execution::kernel::KernelKind;
use crate::runtime::RuntimeTable;
use sluice_protocol::{Catalog, LimitRange, RuntimeInfo};
use std::collections::{BTreeMap, HashMap};
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

/// How long an interpreter may take to say its version; one that takes longer has none.
const VERSION_TIMEOUT: Duration = Duration::from_secs(2);

/// The longest version kept, in characters.
const MAX_VERSION_CHARS: usize = 120;

/// The most bytes of an interpreter's `--version` output read.
const MAX_VERSION_OUTPUT: u64 = 4096;

/// The interpreters' versions, each asked once, the first time a caller asks.
#[derive(Debug, Default)]
pub(crate) struct Versions {
    known: Mutex<HashMap<PathBuf, Option<String>>>,
}

impl Versions {
    /// The versions of `programs`, in order, asking those not asked before (as
    /// `user`'s ids). Blocks for as long as those take (at most [`VERSION_TIMEOUT`]
    /// each): call it from a blocking thread. Held locked meanwhile, so a burst of first
    /// questions starts each interpreter once.
    fn of(&self, programs: &[&Path], user: Option<(u32, u32)>) -> Vec<Option<String>> {
        let mut known = self.known.lock().unwrap_or_else(PoisonError::into_inner);
        programs
            .iter()
            .map(|program| {
                known
                    .entry(program.to_path_buf())
                    .or_insert_with(|| ask_version(program, user))
                    .clone()
            })
            .collect()
    }
}

/// What the caller holding `grant` may run, and with which limits. Blocks the first
/// time (see [`Versions::of`]).
pub(crate) fn catalog(
    runtimes: &RuntimeTable,
    limits: &LimitsConfig,
    grant: &Grant,
    versions: &Versions,
    user: Option<(u32, u32)>,
) -> Catalog {
    let ceilings = &grant.narrowing.limits;
    let limits = if *ceilings == sluice_protocol::Limits::default() {
        *limits
    } else {
        limits.narrowed(ceilings)
    };
    let allowed: Vec<_> = runtimes
        .names()
        .into_iter()
        .filter(|name| grant.allows_language(name))
        .filter_map(|name| runtimes.get(name))
        .collect();
    let programs: Vec<&Path> = allowed.iter().map(|r| r.program.as_path()).collect();
    let versions = versions.of(&programs, user);
    let runtimes = allowed
        .into_iter()
        .zip(versions)
        .map(|(runtime, version)| RuntimeInfo {
            language: runtime.name.clone(),
            version,
            file_name: runtime.file_name.clone(),
            extension: Path::new(&runtime.file_name)
                .extension()
                .map(|e| e.to_string_lossy().into_owned())
                .unwrap_or_default(),
            persistent: KernelKind::for_runtime(runtime).is_some(),
            tty: false,
            network: runtime.network && !grant.denies_network(),
        })
        .collect();
    Catalog {
        runtimes,
        limits: ranges(&limits),
    }
}

/// The runtimes `config` names, as `sluice doctor` prints them: one line each with its
/// interpreter's version, source file and persistent support (or why it cannot run).
pub fn runtimes_report(config: &crate::config::Config) -> String {
    use std::fmt::Write as _;
    let mut out = String::from(
        "runtimes (this configuration; a running gateway answers GET /v1/runtimes):\n",
    );
    let table = match RuntimeTable::resolve(&config.runtimes, None) {
        Ok(table) => table,
        Err(err) => {
            let _ = writeln!(out, "  NOT USABLE: {err}");
            return out;
        }
    };
    let listed = catalog(
        &table,
        &config.limits,
        &Grant::default(),
        &Versions::default(),
        None,
    );
    for runtime in &listed.runtimes {
        let _ = writeln!(
            out,
            "  {:<10} {:<40} {}{}",
            runtime.language,
            runtime.version.as_deref().unwrap_or("(no --version)"),
            runtime.file_name,
            if runtime.persistent {
                ", persistent"
            } else {
                ""
            },
        );
    }
    out
}

/// Each limit's range, by the name a request's `limits` uses.
fn ranges(limits: &LimitsConfig) -> BTreeMap<String, LimitRange> {
    let range = |bound: LimitBound| LimitRange {
        default: bound.default,
        max: bound.max,
    };
    [
        ("timeout_ms", limits.timeout_ms),
        ("output_bytes", limits.output_bytes),
        ("cpu_ms", limits.cpu_ms),
        ("file_size_bytes", limits.file_size_bytes),
        ("open_files", limits.open_files),
        ("memory_bytes", limits.memory_bytes),
        ("processes", limits.processes),
        ("workspace_bytes", limits.workspace_bytes),
    ]
    .into_iter()
    .map(|(name, bound)| (name.to_owned(), range(bound)))
    .collect()
}

/// `program --version`'s first line (stdout's, else stderr's), when it exits with 0
/// within [`VERSION_TIMEOUT`]. Run with fixed arguments, an empty environment (a `PATH`
/// only), no input, in `/`, in a process group of its own (killed whole at the
/// deadline), and as `user` where given. Nothing of a request reaches it.
fn ask_version(program: &Path, user: Option<(u32, u32)>) -> Option<String> {
    use std::os::unix::process::CommandExt as _;
    let mut command = Command::new(program);
    command
        .arg("--version")
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    if let Some((uid, gid)) = user {
        command.uid(uid).gid(gid);
    }
    let mut child = command.spawn().ok()?;
    let pid = child.id();
    let (stdout, stderr) = (child.stdout.take()?, child.stderr.take()?);
    // The outputs are read on threads of their own, so a program that never ends (or
    // fills a pipe) is killed at the deadline rather than holding this one.
    let read = |pipe: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.take(MAX_VERSION_OUTPUT).read_to_string(&mut text);
            text
        })
    };
    let (out, err) = (read(Box::new(stdout)), read(Box::new(stderr)));
    let (done, waited) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(child.wait());
    });
    let status = match waited.recv_timeout(VERSION_TIMEOUT) {
        Ok(status) => status.ok()?,
        Err(_) => {
            crate::sys::signal_group(pid, crate::sys::Signal::Kill).ok();
            tracing::warn!(program = %program.display(), "no answer to --version within 2 s");
            return None;
        }
    };
    let (out, err) = (out.join().ok()?, err.join().ok()?);
    if !status.success() {
        return None;
    }
    first_line(&out).or_else(|| first_line(&err))
}

/// The first line with text, trimmed and cut to [`MAX_VERSION_CHARS`].
fn first_line(text: &str) -> Option<String> {
    let line = text.lines().map(str::trim).find(|line| !line.is_empty())?;
    Some(line.chars().take(MAX_VERSION_CHARS).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_version_is_the_first_line_with_text() {
        assert_eq!(
            first_line("\n  Python 3.11.7 \nmore"),
            Some("Python 3.11.7".into())
        );
        assert_eq!(first_line(" \n"), None);
        assert_eq!(
            first_line(&"v".repeat(500)).map(|v| v.len()),
            Some(MAX_VERSION_CHARS)
        );
    }

    /// An executable shell script holding `body`, in a directory of its own.
    fn script(name: &str, body: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt as _;
        let dir =
            std::env::temp_dir().join(format!("sluice-catalog-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        let path = dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap_or_else(|e| panic!("{e}"));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
            .unwrap_or_else(|e| panic!("{e}"));
        path
    }

    #[test]
    fn a_version_is_what_the_program_prints_and_none_when_it_fails_or_hangs() {
        let tool = script("tool", "echo; echo \"  Tool 1.2 ($1)  \"; echo more");
        assert_eq!(
            ask_version(&tool, None).as_deref(),
            Some("Tool 1.2 (--version)")
        );
        let on_stderr = script("quiet", "echo 'Quiet 3' >&2");
        assert_eq!(ask_version(&on_stderr, None).as_deref(), Some("Quiet 3"));
        let failing = script("failing", "echo 'Illegal option --' >&2; exit 2");
        assert_eq!(ask_version(&failing, None), None);
        assert_eq!(
            ask_version(Path::new("/nonexistent/interpreter"), None),
            None
        );
        // One that never answers is killed at the deadline, with its children.
        let hanging = script("hanging", "sleep 600 & sleep 600");
        assert_eq!(ask_version(&hanging, None), None);
        for path in [tool, on_stderr, failing, hanging] {
            let _ = std::fs::remove_dir_all(path.parent().unwrap_or(Path::new("/nonexistent")));
        }
    }

    #[test]
    fn limits_are_narrowed_to_the_credential() {
        let config = LimitsConfig::default();
        let grant = Grant {
            narrowing: crate::auth::Narrowing {
                limits: sluice_protocol::Limits {
                    timeout_ms: Some(1_000),
                    ..sluice_protocol::Limits::default()
                },
                ..crate::auth::Narrowing::default()
            },
            ..Grant::default()
        };
        let catalog = catalog(
            &RuntimeTable::default(),
            &config,
            &grant,
            &Versions::default(),
            None,
        );
        assert_eq!(
            catalog.limits["timeout_ms"],
            LimitRange {
                default: 1_000,
                max: 1_000
            }
        );
        assert_eq!(catalog.limits["memory_bytes"].max, config.memory_bytes.max);
        assert_eq!(catalog.limits.len(), 8);
    }
}
