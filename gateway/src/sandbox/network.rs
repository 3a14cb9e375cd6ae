//! Taking the network away: each program starts in a new, empty network namespace (only
//! a loopback interface, down), through util-linux's `unshare --net`, which execs the
//! interpreter in place, so the program keeps its pid, its exit status and its signals.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// `unshare`, if it can give a program an empty network namespace on this host (it
/// needs root, or user namespaces): tried once with `/bin/true`.
pub(crate) fn probe() -> Option<PathBuf> {
    let unshare = ["/usr/bin/unshare", "/bin/unshare"]
        .into_iter()
        .map(Path::new)
        .find(|path| path.exists())?;
    let works = Command::new(unshare)
        .args(["--net", "--", "/bin/true"])
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    works.then(|| unshare.to_path_buf())
}
