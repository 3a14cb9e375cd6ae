//! The runtime table: which languages the gateway runs and with which interpreter.
//!
//! Each interpreter is resolved once at start-up to the real executable, so that an
//! execution does not pay for wrapper scripts (a pyenv `python3` shim costs ~40 ms a start).
//! A virtual environment's interpreter named by path in a runtime's command is the
//! exception: it is used as given (its `bin/python` is a link to the base interpreter,
//! and resolving the link would lose the environment, which Python finds from the path
//! it was started by), and only where no other user could replace the environment (it is
//! looked up by path at every start).

pub use crate::config::{RuntimeSpec, FILE_PLACEHOLDER};
use crate::sandbox::ProgramUser;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

/// A runtime whose interpreter was found.
#[derive(Debug, Clone)]
pub(crate) struct Runtime {
    pub(crate) name: String,
    pub(crate) program: PathBuf,
    pub(crate) args: Vec<String>,
    pub(crate) file_name: String,
    pub(crate) env: Vec<(String, String)>,
    /// Keeps the host's network where other runtimes get none.
    pub(crate) network: bool,
    /// Its programs get no network even where every program keeps the host's
    /// (`--network on`): a credential without it ([`Runtime::without_network`]).
    pub(crate) offline: bool,
    /// The package index its programs install from (`--package-index`).
    pub(crate) package_index: Option<Arc<crate::config::PackageIndex>>,
}

impl Runtime {
    /// The same runtime, with no network for its programs (a credential without it),
    /// whatever the gateway's `--network`.
    pub(crate) fn without_network(&self) -> Self {
        Self {
            network: false,
            offline: true,
            ..self.clone()
        }
    }
}

/// The resolved table, shared read-only by every connection.
#[derive(Debug, Default)]
pub(crate) struct RuntimeTable {
    by_name: HashMap<String, Arc<Runtime>>,
}

/// A configured runtime whose interpreter cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("runtime {name:?}: interpreter {program:?} {why}")]
pub struct RuntimeError {
    name: String,
    program: String,
    why: String,
}

/// Why no interpreter serves a runtime.
#[derive(Debug, thiserror::Error)]
enum Missing {
    #[error("not found on PATH or not executable")]
    NotInstalled,
    /// Installed, but not where the program user can start it.
    #[error("cannot be started by the user unjailed programs run as: {0}; install it where other users can run it, or use the jail (--isolation namespaces)")]
    Unreachable(String),
    /// A virtual environment another user could replace.
    #[error("is in a virtual environment others could replace: {0}; keep environments where only root (or the gateway's user) can write, such as /opt")]
    Replaceable(String),
}

impl RuntimeTable {
    /// Resolves every spec; later specs with the same name replace earlier ones. With
    /// `user`, each interpreter must be one that user can start (the first on `PATH` that
    /// it can is taken), since unjailed programs of a root gateway run as that user.
    pub(crate) fn resolve(
        specs: &[RuntimeSpec],
        user: Option<ProgramUser>,
    ) -> Result<Self, RuntimeError> {
        let mut by_name = HashMap::new();
        for spec in specs {
            match locate(spec, user) {
                Ok(program) => {
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
                            offline: false,
                            package_index: spec.package_index.clone().map(Arc::new),
                        }),
                    );
                }
                Err(Missing::NotInstalled) if spec.optional => {
                    by_name.remove(&spec.name);
                    tracing::info!(language = %spec.name, program = %spec.program, "runtime not installed; skipped");
                }
                Err(Missing::Unreachable(why)) if spec.optional => {
                    by_name.remove(&spec.name);
                    tracing::warn!(language = %spec.name, program = %spec.program, %why, "runtime skipped: unjailed programs run as the sandbox user, which cannot start this interpreter; install one it can, or use the jail (--isolation namespaces)");
                }
                Err(missing) => {
                    return Err(RuntimeError {
                        name: spec.name.clone(),
                        program: spec.program.clone(),
                        why: missing.to_string(),
                    })
                }
            }
        }
        Ok(Self { by_name })
    }

    pub(crate) fn get(&self, name: &str) -> Option<&Arc<Runtime>> {
        self.by_name.get(name)
    }

    /// Every runtime, in no particular order.
    pub(crate) fn all(&self) -> impl Iterator<Item = &Arc<Runtime>> {
        self.by_name.values()
    }

    /// Language names, sorted, for messages.
    pub(crate) fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.by_name.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }
}

/// The interpreter for `spec`: the first candidate (one path, or each match on `PATH`
/// in order) that `user`, if any, can start.
fn locate(spec: &RuntimeSpec, user: Option<ProgramUser>) -> Result<PathBuf, Missing> {
    // A virtual environment's interpreter named by path is used as it is (see the
    // module's documentation), once nobody else could swap the environment.
    let given = Path::new(&spec.program);
    if given.is_absolute() && in_virtual_environment(given) && is_executable(given) {
        let env = given.parent().and_then(Path::parent).unwrap_or(given);
        if let Some(why) = environment_replaceable(env, given) {
            return Err(Missing::Replaceable(why));
        }
        return match user.map_or(Ok(()), |user| user.can_run(given)) {
            Ok(()) => Ok(given.to_path_buf()),
            Err(why) => Err(Missing::Unreachable(format!("{}: {why}", given.display()))),
        };
    }
    let mut refused = None;
    for found in candidates(&spec.program) {
        let real = unwrap_shim(spec, found);
        match user.map_or(Ok(()), |user| user.can_run(&real)) {
            Ok(()) => return Ok(real),
            Err(why) => {
                refused.get_or_insert_with(|| format!("{}: {why}", real.display()));
            }
        }
    }
    Err(refused.map_or(Missing::NotInstalled, Missing::Unreachable))
}

/// The real executable behind `found`: shims (pyenv, asdf, nvm) hide it, so the
/// interpreter is asked, when the runtime says how.
fn unwrap_shim(spec: &RuntimeSpec, found: PathBuf) -> PathBuf {
    let Some(locate_args) = &spec.locate else {
        return found;
    };
    let Ok(output) = Command::new(&found)
        .args(locate_args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
    else {
        return found;
    };
    let reported = String::from_utf8_lossy(&output.stdout);
    let real = PathBuf::from(reported.trim());
    if output.status.success() && is_executable(&real) {
        real.canonicalize().unwrap_or(real)
    } else {
        found
    }
}

/// True for an interpreter in a Python virtual environment's `bin` (beside
/// `<env>/pyvenv.cfg`).
fn in_virtual_environment(path: &Path) -> bool {
    path.parent()
        .filter(|bin| bin.file_name().is_some_and(|name| name == "bin"))
        .and_then(Path::parent)
        .is_some_and(|env| env.join("pyvenv.cfg").is_file())
}

/// Why another user could change what the environment `env` runs, if one could: the
/// environment (every directory from the root down, its `bin`, its `pyvenv.cfg`, its
/// `lib` and the directories in it with their `site-packages`), and the interpreter its
/// `python` leads to with the directories above it (its standard library beside it),
/// must pass [`replaceable`]. The environment is looked up by path at every start.
fn environment_replaceable(env: &Path, python: &Path) -> Option<String> {
    let mut checked: Vec<PathBuf> = env.ancestors().map(Path::to_path_buf).collect();
    checked.extend([env.join("bin"), env.join("pyvenv.cfg"), env.join("lib")]);
    if let Ok(versions) = std::fs::read_dir(env.join("lib")) {
        for version in versions.flatten() {
            checked.push(version.path());
            let packages = version.path().join("site-packages");
            if packages.exists() {
                checked.push(packages);
            }
        }
    }
    let Ok(base) = python.canonicalize() else {
        return Some(format!("{} leads nowhere", python.display()));
    };
    checked.extend(base.ancestors().map(Path::to_path_buf));
    // The base installation's standard library (`<prefix>/lib/pythonX.Y`).
    if let Some(prefix) = base.parent().and_then(Path::parent) {
        if let Ok(versions) = std::fs::read_dir(prefix.join("lib")) {
            checked.extend(versions.flatten().map(|entry| entry.path()).filter(|path| {
                path.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("python"))
            }));
        }
    }
    checked.into_iter().find_map(|path| replaceable(&path))
}

/// Why another user could replace `path`, if one could: it is a link, or it is not
/// owned by root or this process's user, or others (or its group) may write it.
fn replaceable(path: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt as _;
    let me = crate::sys::effective_uid();
    {
        let Ok(meta) = std::fs::symlink_metadata(path) else {
            return Some(format!("{} cannot be read", path.display()));
        };
        if meta.file_type().is_symlink() {
            return Some(format!("{} is a symbolic link", path.display()));
        }
        if meta.uid() != 0 && meta.uid() != me {
            return Some(format!("{} is owned by uid {}", path.display(), meta.uid()));
        }
        if meta.mode() & 0o022 != 0 {
            return Some(format!(
                "{} may be written by others (mode {:o})",
                path.display(),
                meta.mode() & 0o7777
            ));
        }
    }
    None
}

/// Executables that `program` may name, best first: the path itself, or each match on
/// the gateway's `PATH`.
fn candidates(program: &str) -> Vec<PathBuf> {
    let found: Vec<PathBuf> = if program.contains('/') {
        vec![PathBuf::from(program)]
    } else {
        let path_var = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path_var)
            .map(|dir| dir.join(program))
            .collect()
    };
    let mut seen = Vec::new();
    for path in found.into_iter().filter(|path| is_executable(path)) {
        let path = path.canonicalize().unwrap_or(path);
        if !seen.contains(&path) {
            seen.push(path);
        }
    }
    seen
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
    fn a_virtual_environment_others_could_replace_is_refused() {
        let dir = Path::new("/tmp").join(format!("sluice-venv-test-{}", std::process::id()));
        let bin = dir.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::write(dir.join("pyvenv.cfg"), "home = /usr/bin\n").unwrap();
        std::os::unix::fs::symlink("/bin/sh", bin.join("python")).unwrap();
        let spec = RuntimeSpec {
            program: bin.join("python").to_string_lossy().into_owned(),
            ..RuntimeSpec::parse("envpy=python {file}").unwrap()
        };
        // Under the world-writable temporary directory: anyone could swap it.
        let refused = locate(&spec, None);
        std::fs::remove_dir_all(&dir).unwrap();
        match refused {
            Err(Missing::Replaceable(why)) => assert!(why.contains("written by others"), "{why}"),
            other => panic!("{other:?}"),
        }
    }

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
        let table = RuntimeTable::resolve(&specs, None).unwrap();
        assert!(table.get("sh").is_some());
        assert!(table.get("nope").is_none());
        let required = [RuntimeSpec::parse("nope=/no/such/binary").unwrap()];
        assert!(RuntimeTable::resolve(&required, None).is_err());
    }

    #[test]
    fn an_interpreter_the_program_user_cannot_start_is_refused_with_the_reason() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = std::env::temp_dir().join(format!("sluice-runtime-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let program = dir.join("interpreter");
        std::fs::write(&program, b"\x7fELF").unwrap();
        std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        let spec = RuntimeSpec::parse(&format!("closed={}", program.display())).unwrap();
        let user = ProgramUser {
            uid: 60_123,
            gid: 60_123,
        };
        let err = RuntimeTable::resolve(std::slice::from_ref(&spec), Some(user)).unwrap_err();
        let message = err.to_string();
        assert!(
            message.contains("cannot be started by the user"),
            "{message}"
        );
        assert!(message.contains(&dir.display().to_string()), "{message}");
        let optional = RuntimeSpec {
            optional: true,
            ..spec.clone()
        };
        let table = RuntimeTable::resolve(&[optional], Some(user)).unwrap();
        assert!(table.get("closed").is_none());
        assert!(RuntimeTable::resolve(&[spec], None)
            .unwrap()
            .get("closed")
            .is_some());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
