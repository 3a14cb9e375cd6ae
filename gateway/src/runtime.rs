//! The runtime table: which languages the gateway runs and with which interpreter.
//!
//! Each interpreter is resolved once at start-up to the real executable, so that an
//! execution does not pay for wrapper scripts (a pyenv `python3` shim costs ~40 ms a start).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

/// The placeholder in a runtime's arguments that stands for the source file's path.
pub const FILE_PLACEHOLDER: &str = "{file}";

/// How to run one language, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeSpec {
    /// The `language` clients name.
    pub name: String,
    /// The interpreter: a bare name looked up on the gateway's `PATH`, or a path.
    pub program: String,
    /// Arguments before the program's own; `{file}` is replaced by the source file.
    pub args: Vec<String>,
    /// Name of the source file written in the working directory.
    pub file_name: String,
    /// Variables this runtime adds to the base environment.
    pub env: Vec<(String, String)>,
    /// Arguments that make the interpreter print its real executable (unwraps shims).
    pub locate: Option<Vec<String>>,
    /// Built-in runtimes are skipped when their interpreter is missing; configured ones
    /// make start-up fail.
    pub optional: bool,
    /// Programs of this runtime keep the host's network even where the others get none
    /// (`--allow-network`).
    pub network: bool,
}

impl RuntimeSpec {
    /// The built-in table: python, bash, sh and node, each used only when found.
    pub fn defaults() -> Vec<Self> {
        let spec = |name: &str, program: &str, file: &str| Self {
            name: name.into(),
            program: program.into(),
            args: vec![FILE_PLACEHOLDER.into()],
            file_name: file.into(),
            env: Vec::new(),
            locate: None,
            optional: true,
            network: false,
        };
        vec![
            Self {
                env: vec![
                    ("PYTHONUNBUFFERED".into(), "1".into()),
                    ("PYTHONDONTWRITEBYTECODE".into(), "1".into()),
                ],
                locate: Some(vec![
                    "-c".into(),
                    "import sys; print(sys.executable)".into(),
                ]),
                ..spec("python", "python3", "main.py")
            },
            spec("bash", "bash", "main.sh"),
            spec("sh", "sh", "main.sh"),
            Self {
                locate: Some(vec!["-p".into(), "process.execPath".into()]),
                ..spec("node", "node", "main.js")
            },
        ]
    }

    /// Parses `NAME=COMMAND` or `NAME.EXT=COMMAND` from the command line, e.g.
    /// `ruby.rb=ruby {file}`. Without `{file}` the file is appended; without `.EXT` the
    /// file is `main.NAME`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (key, command) = text
            .split_once('=')
            .ok_or_else(|| format!("{text:?}: expected NAME=COMMAND"))?;
        let (name, ext) = key.split_once('.').unwrap_or((key, key));
        if name.is_empty() || ext.is_empty() || name.len() > sluice_protocol::MAX_ID_BYTES {
            return Err(format!("{text:?}: the runtime name is empty or too long"));
        }
        let mut words = command.split_whitespace().map(str::to_owned);
        let program = words
            .next()
            .ok_or_else(|| format!("{text:?}: the command is empty"))?;
        let mut args: Vec<String> = words.collect();
        if !args.iter().any(|a| a.contains(FILE_PLACEHOLDER)) {
            args.push(FILE_PLACEHOLDER.into());
        }
        Ok(Self {
            name: name.into(),
            program,
            args,
            file_name: format!("main.{ext}"),
            env: Vec::new(),
            locate: None,
            optional: false,
            network: false,
        })
    }
}

/// A runtime whose interpreter was found.
#[derive(Debug)]
pub(crate) struct Runtime {
    pub(crate) name: String,
    pub(crate) program: PathBuf,
    pub(crate) args: Vec<String>,
    pub(crate) file_name: String,
    pub(crate) env: Vec<(String, String)>,
    /// Keeps the host's network where other runtimes get none.
    pub(crate) network: bool,
}

/// The resolved table, shared read-only by every connection.
#[derive(Debug, Default)]
pub(crate) struct RuntimeTable {
    by_name: HashMap<String, Arc<Runtime>>,
}

/// A configured runtime whose interpreter cannot be found.
#[derive(Debug, thiserror::Error)]
#[error("runtime {name:?}: interpreter {program:?} not found on PATH or not executable")]
pub struct RuntimeError {
    name: String,
    program: String,
}

impl RuntimeTable {
    /// Resolves every spec; later specs with the same name replace earlier ones.
    pub(crate) fn resolve(specs: &[RuntimeSpec]) -> Result<Self, RuntimeError> {
        let mut by_name = HashMap::new();
        for spec in specs {
            match locate(spec) {
                Some(program) => {
                    tracing::info!(language = %spec.name, program = %program.display(), "runtime ready");
                    by_name.insert(
                        spec.name.clone(),
                        Arc::new(Runtime {
                            name: spec.name.clone(),
                            program,
                            args: spec.args.clone(),
                            file_name: spec.file_name.clone(),
                            env: spec.env.clone(),
                            network: spec.network,
                        }),
                    );
                }
                None if spec.optional => {
                    by_name.remove(&spec.name);
                    tracing::info!(language = %spec.name, program = %spec.program, "runtime not installed; skipped");
                }
                None => {
                    return Err(RuntimeError {
                        name: spec.name.clone(),
                        program: spec.program.clone(),
                    })
                }
            }
        }
        Ok(Self { by_name })
    }

    pub(crate) fn get(&self, name: &str) -> Option<&Arc<Runtime>> {
        self.by_name.get(name)
    }

    /// Language names, sorted, for messages.
    /// Every runtime, in no particular order.
    pub(crate) fn all(&self) -> impl Iterator<Item = &Arc<Runtime>> {
        self.by_name.values()
    }

    pub(crate) fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.by_name.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }
}

fn locate(spec: &RuntimeSpec) -> Option<PathBuf> {
    let found = find_executable(&spec.program)?;
    let Some(locate_args) = &spec.locate else {
        return Some(found);
    };
    // Ask the interpreter itself: shims (pyenv, asdf, nvm) hide the real binary.
    let output = Command::new(&found)
        .args(locate_args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let reported = String::from_utf8(output.stdout).ok()?;
    let real = PathBuf::from(reported.trim());
    if output.status.success() && is_executable(&real) {
        Some(real.canonicalize().unwrap_or(real))
    } else {
        Some(found)
    }
}

fn find_executable(program: &str) -> Option<PathBuf> {
    if program.contains('/') {
        let path = PathBuf::from(program);
        return is_executable(&path).then(|| path.canonicalize().unwrap_or(path));
    }
    let path_var = std::env::var_os("PATH")?;
    std::env::split_paths(&path_var)
        .map(|dir| dir.join(program))
        .find(|candidate| is_executable(candidate))
        .map(|p| p.canonicalize().unwrap_or(p))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_runtime_with_extension_and_placeholder() {
        let spec = RuntimeSpec::parse("ruby.rb=ruby -W0 {file}").unwrap();
        assert_eq!(spec.name, "ruby");
        assert_eq!(spec.file_name, "main.rb");
        assert_eq!(spec.args, vec!["-W0", "{file}"]);
        let spec = RuntimeSpec::parse("lua=lua5.4").unwrap();
        assert_eq!(spec.args, vec!["{file}"]);
        assert_eq!(spec.file_name, "main.lua");
        assert!(RuntimeSpec::parse("nothing").is_err());
        assert!(RuntimeSpec::parse("x=").is_err());
    }

    #[test]
    fn resolves_sh_and_skips_missing_optional() {
        let mut specs = RuntimeSpec::defaults();
        specs.push(RuntimeSpec {
            optional: true,
            ..RuntimeSpec::parse("nope=/no/such/binary").unwrap()
        });
        let table = RuntimeTable::resolve(&specs).unwrap();
        assert!(table.get("sh").is_some());
        assert!(table.get("nope").is_none());
        let required = [RuntimeSpec::parse("nope=/no/such/binary").unwrap()];
        assert!(RuntimeTable::resolve(&required).is_err());
    }
}
