//! What the gateway offers a caller, for the `runtimes` frame and `GET /v1/runtimes`:
//! its languages (each with its interpreter's version, asked once with `--version`),
//! and each limit's default and maximum, narrowed to what the caller's credential
//! allows.

use crate::auth::Grant;
use crate::config::{LimitBound, LimitsConfig};
use crate::execution::kernel::KernelKind;
use crate::runtime::RuntimeTable;
use sluice_protocol::{Catalog, LimitRange, PackageInfo, RuntimeInfo};
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

/// How long a Python interpreter may take to list its packages.
const PACKAGES_TIMEOUT: Duration = Duration::from_secs(10);

/// The most packages listed for one runtime, and the most bytes of the list read.
const MAX_PACKAGES: usize = 5000;
const MAX_PACKAGES_OUTPUT: u64 = 1 << 20;

/// What the catalog says of one interpreter, asked once.
#[derive(Debug, Clone, Default)]
struct Facts {
    version: Option<String>,
    packages: Option<Vec<PackageInfo>>,
}

/// The interpreters' versions (and a Python interpreter's packages), each asked once,
/// the first time a caller asks.
#[derive(Debug, Default)]
pub(crate) struct Versions {
    known: Mutex<HashMap<PathBuf, Facts>>,
}

impl Versions {
    /// What is known of `programs`, in order, asking those not asked before (as
    /// `user`'s ids). Blocks for as long as those take (at most [`VERSION_TIMEOUT`]
    /// each, and [`PACKAGES_TIMEOUT`] for a Python interpreter's packages): call it from
    /// a blocking thread. Held locked meanwhile, so a burst of first questions starts
    /// each interpreter once.
    fn of(&self, programs: &[&Path], user: Option<(u32, u32)>) -> Vec<Facts> {
        let mut known = self.known.lock().unwrap_or_else(PoisonError::into_inner);
        programs
            .iter()
            .map(|program| {
                known
                    .entry(program.to_path_buf())
                    .or_insert_with(|| Facts {
                        version: ask_version(program, user),
                        packages: lists_packages(program)
                            .then(|| ask_packages(program, user))
                            .flatten(),
                    })
                    .clone()
            })
            .collect()
    }
}

/// What the caller holding `grant` may run, and with which limits. Blocks the first
/// time (see [`Versions::of`]). `host_network`: every program keeps the host's network
/// (`--network on`, or a host that cannot take it away).
pub(crate) fn catalog(
    runtimes: &RuntimeTable,
    limits: &LimitsConfig,
    grant: &Grant,
    versions: &Versions,
    user: Option<(u32, u32)>,
    host_network: bool,
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
    let facts = versions.of(&programs, user);
    let runtimes = allowed
        .into_iter()
        .zip(facts)
        .map(|(runtime, facts)| RuntimeInfo {
            language: runtime.name.clone(),
            version: facts.version,
            packages: facts.packages,
            package_index: runtime
                .package_index
                .as_ref()
                .map(|index| index.url.clone()),
            file_name: runtime.file_name.clone(),
            extension: Path::new(&runtime.file_name)
                .extension()
                .map(|e| e.to_string_lossy().into_owned())
                .unwrap_or_default(),
            persistent: KernelKind::for_runtime(runtime).is_some(),
            // Every program of its own can run on a terminal; a cell cannot, but a
            // runtime's programs can.
            tty: true,
            // As an execution decides it (`connection::execute`, the launch): a
            // credential without the network takes it everywhere (or, where the gateway
            // cannot take it, runs nothing).
            network: !grant.denies_network() && (runtime.network || host_network),
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
        false,
    );
    for runtime in &listed.runtimes {
        let _ = writeln!(
            out,
            "  {:<10} {:<40} {}{}{}{}",
            runtime.language,
            runtime.version.as_deref().unwrap_or("(no --version)"),
            runtime.file_name,
            if runtime.persistent {
                ", persistent"
            } else {
                ""
            },
            runtime
                .packages
                .as_ref()
                .map(|packages| format!(", {} packages", packages.len()))
                .unwrap_or_default(),
            runtime
                .package_index
                .as_ref()
                .map(|url| format!(", installs from {url}"))
                .unwrap_or_default(),
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
/// within [`VERSION_TIMEOUT`].
fn ask_version(program: &Path, user: Option<(u32, u32)>) -> Option<String> {
    let (out, err) = ask(
        program,
        &["--version"],
        user,
        VERSION_TIMEOUT,
        MAX_VERSION_OUTPUT,
    )?;
    first_line(&out).or_else(|| first_line(&err))
}

/// The distributions a Python interpreter imports from (`importlib.metadata`, in
/// isolated mode: its own `sys.path`, a virtual environment's included), as a JSON
/// list of `[name, version]`.
const LIST_PACKAGES: &str = "import importlib.metadata as m, json\n\
seen = {}\n\
for d in m.distributions():\n    \
name = d.metadata['Name']\n    \
if name and name not in seen: seen[name] = d.version or ''\n\
print(json.dumps(sorted(seen.items(), key=lambda p: p[0].lower())))";

/// Whether `program` is a Python interpreter, whose packages are listed.
fn lists_packages(program: &Path) -> bool {
    program
        .file_name()
        .and_then(|name| name.to_str())
        .is_some_and(|name| name.starts_with("python"))
}

/// A Python interpreter's packages, sorted by name (at most [`MAX_PACKAGES`], each name
/// and version printable and cut short), when it lists them within [`PACKAGES_TIMEOUT`].
fn ask_packages(program: &Path, user: Option<(u32, u32)>) -> Option<Vec<PackageInfo>> {
    let (out, _) = ask(
        program,
        &["-I", "-c", LIST_PACKAGES],
        user,
        PACKAGES_TIMEOUT,
        MAX_PACKAGES_OUTPUT,
    )?;
    let listed: Vec<(String, String)> = serde_json::from_str(out.trim()).ok()?;
    let short = |text: &str, most: usize| printable(text).trim().chars().take(most).collect();
    Some(
        listed
            .iter()
            .take(MAX_PACKAGES)
            .map(|(name, version)| PackageInfo {
                name: short(name, MAX_VERSION_CHARS),
                version: short(version, MAX_VERSION_CHARS),
            })
            .filter(|package| !package.name.is_empty())
            .collect(),
    )
}

/// Runs `program` with fixed `args` and returns its stdout and stderr (at most
/// `max_output` bytes of each), when it exits with 0 within `timeout`. Run with an
/// empty environment (a `PATH` only), no input, in `/`, in a process group of its own,
/// and as `user` where given. Nothing of a request reaches it. The deadline covers the
/// output too: whatever the group still holds once the program has exited (or at the
/// deadline) is killed, and a child that left the group and keeps a pipe open holds
/// only that pipe's reader thread, not the answer.
fn ask(
    program: &Path,
    args: &[&str],
    user: Option<(u32, u32)>,
    timeout: Duration,
    max_output: u64,
) -> Option<(String, String)> {
    use std::os::unix::process::CommandExt as _;
    use std::sync::mpsc;
    use std::sync::Arc;
    let deadline = std::time::Instant::now() + timeout;
    let mut command = Command::new(program);
    command
        .args(args)
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
    // Each output is read on a thread of its own into a buffer this one takes at the
    // end, read to its end or not: a program that never ends, fills a pipe, or leaves a
    // child holding one cannot hold this thread past the deadline.
    let (read_all, outputs_read) = mpsc::channel::<()>();
    let read = |mut pipe: Box<dyn std::io::Read + Send>| {
        let text = Arc::new(Mutex::new(Vec::new()));
        let (into, done) = (Arc::clone(&text), read_all.clone());
        std::thread::spawn(move || {
            let mut chunk = [0; 4096];
            loop {
                let mut text = into.lock().unwrap_or_else(PoisonError::into_inner);
                let room = usize::try_from(max_output)
                    .unwrap_or(usize::MAX)
                    .saturating_sub(text.len())
                    .min(chunk.len());
                drop(text);
                match pipe.read(&mut chunk[..room]) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        text = into.lock().unwrap_or_else(PoisonError::into_inner);
                        text.extend_from_slice(&chunk[..n]);
                    }
                }
            }
            let _ = done.send(());
        });
        text
    };
    let (out, err) = (read(Box::new(stdout)), read(Box::new(stderr)));
    drop(read_all);
    let (exited, waited) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = exited.send(child.wait());
    });
    let status = waited.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()));
    // Whatever is left in the group (the program at the deadline, or what it left
    // behind) is killed, which ends the pipes unless a child left the group.
    crate::sys::signal_group(pid, crate::sys::Signal::Kill).ok();
    let Ok(status) = status else {
        tracing::warn!(program = %program.display(), ?args, "no answer within {timeout:?}");
        return None;
    };
    for _ in 0..2 {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if outputs_read.recv_timeout(left).is_err() {
            tracing::warn!(program = %program.display(), ?args, "it left its output open");
            break;
        }
    }
    if !status.ok()?.success() {
        return None;
    }
    let text = |buffer: &Mutex<Vec<u8>>| {
        let bytes = buffer.lock().unwrap_or_else(PoisonError::into_inner);
        String::from_utf8_lossy(&bytes).into_owned()
    };
    Some((text(&out), text(&err)))
}

/// The first line with text, without terminal escapes or control characters, trimmed
/// and cut to [`MAX_VERSION_CHARS`].
fn first_line(text: &str) -> Option<String> {
    text.lines()
        .map(|line| printable(line).trim().to_owned())
        .find(|line| !line.is_empty())
        .map(|line| line.chars().take(MAX_VERSION_CHARS).collect())
}

/// `line` without terminal escape sequences (CSI `ESC [ ... final`, OSC `ESC ] ... BEL`
/// or `ESC \\`, and two-character ones) and with every other control character but a
/// tab (which becomes a space), and the bidirectional marks, left out: the version goes
/// to web pages and terminals.
fn printable(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => match chars.next() {
                Some('[') => {
                    // Parameters and intermediates, up to the final byte (@ to ~).
                    for c in chars.by_ref() {
                        if ('@'..='~').contains(&c) {
                            break;
                        }
                    }
                }
                Some(']') => {
                    while let Some(c) = chars.next() {
                        if c == '\u{7}' || (c == '\u{1b}' && chars.next_if_eq(&'\\').is_some()) {
                            break;
                        }
                    }
                }
                _ => {}
            },
            '\t' => out.push(' '),
            // Controls, and the marks that reorder text (they can make a version read
            // as something else on a page).
            c if c.is_control()
                || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}') =>
                {}
            c => out.push(c),
        }
    }
    out
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

    #[test]
    fn a_version_loses_terminal_escapes_and_control_characters() {
        let line = "\u{1b}]0;title\u{7}\u{1b}[1;31mTool\u{1b}[0m 1.2\r\u{1b}[2K\tbeta\u{1}\u{1b}7";
        assert_eq!(first_line(line).as_deref(), Some("Tool 1.2 beta"));
        assert_eq!(
            first_line("\u{1b}]8;;https://x\u{1b}\\Link\u{1b}]8;;\u{1b}\\ 2").as_deref(),
            Some("Link 2")
        );
        assert_eq!(
            first_line("\u{202e}3.1 nohtyP").as_deref(),
            Some("3.1 nohtyP")
        );
        assert_eq!(
            first_line("\u{1b}[31m\u{7}\nReal 1").as_deref(),
            Some("Real 1")
        );
        assert_eq!(
            first_line("Ünïcode 1.0 ✓").as_deref(),
            Some("Ünïcode 1.0 ✓")
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
        // One that answers and leaves a child holding its output: the answer counts,
        // and the child (in its group) is killed.
        let lingering = script("lingering", "echo 'Lingering 1'; sleep 600 & exit 0");
        assert_eq!(
            ask_version(&lingering, None).as_deref(),
            Some("Lingering 1")
        );
        // Output that is not UTF-8 keeps its version.
        let latin1 = script("latin1", "printf 'Latin \\251 1\\n'");
        assert_eq!(
            ask_version(&latin1, None).as_deref(),
            Some("Latin \u{fffd} 1")
        );
        for path in [tool, on_stderr, failing, hanging, lingering, latin1] {
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
            false,
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
