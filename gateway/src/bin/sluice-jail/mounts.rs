//! The jail's view of the file system, set up by its init before the program starts:
//!
//! * `/` read-only, nosuid and nodev, recursively; a fresh `/proc` for the new PID
//!   namespace;
//! * one scratch tmpfs of `--scratch-bytes` (and a matching inode budget) serving `/tmp`,
//!   `/dev/shm` and the workspace, which keeps its outside path;
//! * a private, read-only `/dev` with only `null`, `zero`, `full`, `random`, `urandom`
//!   and `tty` from the host (and a terminal program's terminal as `console`), the
//!   usual `fd`/`stdin`/`stdout`/`stderr` links and a devpts of its own with a few ptys
//!   (`--ptys`), so a program cannot use up the host's;
//! * without network, a sysfs of the jail's own network namespace (its interfaces only,
//!   no cgroups); with it, the host's sysfs with `/sys/fs/cgroup` covered;
//! * empty, read-only tmpfs over what would leak or reach the host: `/run` when the
//!   program has no network (its sockets: D-Bus, journald, nscd), and any `--hide`
//!   directory (a rootless gateway's home);
//! * `--expose` directories bound back read-only where a closed or hidden ancestor would
//!   keep them out of reach.

use crate::os;
use sluice_gateway::jail::JailSpec;
use std::collections::HashSet;
use std::fs::File;
use std::io::{self, Read as _, Write as _};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

/// Largest source file copied into the workspace.
const MAX_SOURCE_BYTES: u64 = 64 << 20;

/// The host devices a program gets.
const DEVICES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];

/// Ptys the jail's own devpts hands out unless told otherwise.
const DEFAULT_PTYS: u32 = 4;

/// Bytes per inode of the scratch file system: a program cannot make it hold millions
/// of empty files (each costs kernel memory but no bytes).
const BYTES_PER_INODE: u64 = 4096;

/// Fewest inodes the scratch file system offers, whatever its size.
const MIN_INODES: u64 = 4096;

fn failed(what: impl std::fmt::Display) -> impl FnOnce(io::Error) -> String {
    move |e| format!("{what}: {e}")
}

/// Sets up the mounts and names of the sandbox; the message says what failed.
pub(crate) fn set_up(spec: &JailSpec) -> Result<(), String> {
    let source = match &spec.source {
        Some(name) => Some(
            read_source(&spec.host_dir.join(name))
                .map_err(failed(format!("reading {}", name.to_string_lossy())))?,
        ),
        None => None,
    };
    // Nothing done here reaches the host's mount table.
    os::mount(
        "none",
        Path::new("/"),
        None,
        libc::MS_REC | libc::MS_PRIVATE,
        None,
    )
    .map_err(failed("making mounts private"))?;
    // Detached copies, taken before anything covers or locks their originals.
    let exposed = spec
        .expose
        .iter()
        .map(|dir| Ok((dir.clone(), read_only_clone(dir)?)))
        .collect::<Result<Vec<_>, String>>()?;
    let mut devices = DEVICES
        .iter()
        .filter(|name| Path::new("/dev").join(name).exists())
        .map(|name| {
            let path = Path::new("/dev").join(name);
            let tree =
                os::clone_tree(&path).map_err(failed(format!("cloning {}", path.display())))?;
            Ok((path, tree))
        })
        .collect::<Result<Vec<_>, String>>()?;
    if spec.terminal {
        devices.extend(terminal_node().map(|tree| (PathBuf::from("/dev/console"), tree)));
    }
    let all = os::MOUNT_ATTR_RDONLY | os::MOUNT_ATTR_NOSUID | os::MOUNT_ATTR_NODEV;
    os::set_tree_attributes(Path::new("/"), all).map_err(failed("making the system read-only"))?;
    let nosuid_nodev = libc::MS_NOSUID | libc::MS_NODEV;
    os::mount(
        "proc",
        Path::new("/proc"),
        Some("proc"),
        nosuid_nodev | libc::MS_NOEXEC,
        None,
    )
    .map_err(failed("mounting /proc"))?;
    let inodes = (spec.scratch_bytes / BYTES_PER_INODE).max(MIN_INODES);
    let scratch = format!(
        "size={},nr_inodes={inodes},mode=1777",
        spec.scratch_bytes.max(4096)
    );
    os::mount(
        "tmpfs",
        Path::new("/tmp"),
        Some("tmpfs"),
        nosuid_nodev,
        Some(&scratch),
    )
    .map_err(failed("mounting /tmp"))?;
    private_dev(devices, spec.ptys.unwrap_or(DEFAULT_PTYS))?;
    let mut covers = Vec::new();
    if spec.no_network {
        // A sysfs of the jail's own network namespace: its interfaces only, and no
        // cgroup hierarchy under it.
        let read_only = libc::MS_RDONLY | nosuid_nodev | libc::MS_NOEXEC;
        os::mount("sysfs", Path::new("/sys"), Some("sysfs"), read_only, None)
            .map_err(failed("mounting /sys"))?;
        covers.push(PathBuf::from("/run"));
    } else {
        covers.push(PathBuf::from("/sys/fs/cgroup"));
    }
    covers.extend(spec.hide.iter().cloned());
    let mut covered = HashSet::new();
    for dir in covers.iter().filter(|dir| dir.is_dir()) {
        cover(dir)?;
        covered.insert(dir.clone());
    }
    workspace(spec, source)?;
    expose(exposed, &mut covered)?;
    // The covers stay writable only until the exposed trees are in place.
    for dir in &covered {
        os::mount(
            "none",
            dir,
            None,
            libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | nosuid_nodev,
            None,
        )
        .map_err(failed(format!("making {} read-only", dir.display())))?;
    }
    os::set_hostname("sluice").map_err(failed("setting the host name"))?;
    Ok(())
}

/// A detached, read-only copy of the tree at `dir`.
fn read_only_clone(dir: &Path) -> Result<OwnedFd, String> {
    let tree = os::clone_tree(dir).map_err(failed(format!("cloning {}", dir.display())))?;
    os::set_clone_attributes(
        &tree,
        os::MOUNT_ATTR_RDONLY | os::MOUNT_ATTR_NOSUID | os::MOUNT_ATTR_NODEV,
    )
    .map_err(failed(format!("making {} read-only", dir.display())))?;
    Ok(tree)
}

/// An empty tmpfs over `dir`, writable by init until [`set_up`] remounts it read-only.
fn cover(dir: &Path) -> Result<(), String> {
    os::mount(
        "tmpfs",
        dir,
        Some("tmpfs"),
        libc::MS_NOSUID | libc::MS_NODEV,
        Some("size=65536,nr_inodes=1024,mode=0755"),
    )
    .map_err(failed(format!("covering {}", dir.display())))
}

/// The program's terminal (init's stdin, from the gateway's devpts), to be bound as
/// `/dev/console`, as containers have it: `ttyname` finds it there, so `tty` names it
/// instead of saying "not a tty". Cloned by the name the kernel gives the descriptor,
/// in this mount namespace's copy of the host's devpts (the descriptor's own mount is
/// the gateway's namespace's), and only if that name is the very same node. Nothing
/// when it is not (a terminal without a name works all the same).
fn terminal_node() -> Option<OwnedFd> {
    use std::os::unix::fs::MetadataExt as _;
    let name = std::fs::read_link("/proc/self/fd/0").ok()?;
    if !name.starts_with("/dev/pts/") {
        return None;
    }
    let (ours, named) = (
        std::fs::metadata("/proc/self/fd/0").ok()?,
        std::fs::metadata(&name).ok()?,
    );
    let same = (ours.dev(), ours.ino(), ours.rdev()) == (named.dev(), named.ino(), named.rdev());
    same.then(|| os::clone_tree(&name).ok()).flatten()
}

/// `/dev` of the jail: a few host devices bound in, links, its own ptys and shared
/// memory on the scratch file system; read-only itself.
fn private_dev(devices: Vec<(PathBuf, OwnedFd)>, ptys: u32) -> Result<(), String> {
    let dev = Path::new("/dev");
    os::mount(
        "tmpfs",
        dev,
        Some("tmpfs"),
        libc::MS_NOSUID | libc::MS_NOEXEC,
        Some("size=65536,nr_inodes=1024,mode=0755"),
    )
    .map_err(failed("mounting /dev"))?;
    for (path, tree) in devices {
        // A file to mount the device on.
        File::create(&path).map_err(failed(format!("creating {}", path.display())))?;
        // Read-only: the device still reads and writes, but its host inode (timestamps)
        // cannot be changed.
        let attributes = os::MOUNT_ATTR_RDONLY | os::MOUNT_ATTR_NOSUID | os::MOUNT_ATTR_NOEXEC;
        os::set_clone_attributes(&tree, attributes)
            .map_err(failed(format!("preparing {}", path.display())))?;
        os::attach_tree(&tree, &path).map_err(failed(format!("binding {}", path.display())))?;
    }
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("ptmx", "pts/ptmx"),
    ] {
        std::os::unix::fs::symlink(target, dev.join(link))
            .map_err(failed(format!("linking /dev/{link}")))?;
    }
    for dir in ["pts", "shm"] {
        std::fs::DirBuilder::new()
            .mode(0o755)
            .create(dev.join(dir))
            .map_err(failed(format!("creating /dev/{dir}")))?;
    }
    os::mount(
        "devpts",
        &dev.join("pts"),
        Some("devpts"),
        libc::MS_NOSUID | libc::MS_NOEXEC,
        Some(&format!(
            "newinstance,ptmxmode=0666,mode=0620,max={}",
            ptys.max(1)
        )),
    )
    .map_err(failed("mounting /dev/pts"))?;
    os::mount("/tmp", &dev.join("shm"), None, libc::MS_BIND, None)
        .map_err(failed("mounting /dev/shm"))?;
    os::mount(
        "none",
        dev,
        None,
        libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NOEXEC,
        None,
    )
    .map_err(failed("making /dev read-only"))
}

/// The workspace at its outside path, on the scratch file system, owned by the sandbox
/// user, with the source copied in. Outside /tmp and /dev/shm, the scratch file system
/// itself is bound over the workspace's parent (one budget for everything the program
/// writes), which also hides the other executions' directories.
fn workspace(spec: &JailSpec, source: Option<Vec<u8>>) -> Result<(), String> {
    let on_scratch = spec.workspace.starts_with("/tmp") || spec.workspace.starts_with("/dev/shm");
    if !on_scratch {
        let parent = spec.workspace.parent().unwrap_or(Path::new("/"));
        // Under a covered directory (a rootless gateway's home) the path is made anew.
        if !parent.is_dir() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(parent)
                .map_err(failed(format!("creating {}", parent.display())))?;
        }
        os::mount("/tmp", parent, None, libc::MS_BIND, None).map_err(failed(format!(
            "binding the scratch file system over {}",
            parent.display()
        )))?;
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(&spec.workspace)
        .map_err(failed(format!("creating {}", spec.workspace.display())))?;
    std::os::unix::fs::chown(&spec.workspace, Some(spec.uid), Some(spec.gid))
        .map_err(failed("handing the workspace to the sandbox user"))?;
    std::fs::set_permissions(&spec.workspace, std::fs::Permissions::from_mode(0o700))
        .map_err(failed("protecting the workspace"))?;
    if let (Some(name), Some(code)) = (&spec.source, source) {
        let path = spec.workspace.join(name);
        let mut file = File::options()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(failed(format!("writing {}", path.display())))?;
        file.write_all(&code)
            .map_err(failed(format!("writing {}", path.display())))?;
        std::os::unix::fs::chown(&path, Some(spec.uid), Some(spec.gid))
            .map_err(failed("handing the source to the sandbox user"))?;
    }
    Ok(())
}

/// Binds each exposed tree back at its own path. Under a covered directory its path is
/// made in the cover; otherwise the highest ancestor the sandbox user cannot enter is
/// covered first (and joins `covered`, to be made read-only).
fn expose(exposed: Vec<(PathBuf, OwnedFd)>, covered: &mut HashSet<PathBuf>) -> Result<(), String> {
    for (dir, tree) in exposed {
        let under_cover = covered.iter().any(|c| dir.starts_with(c));
        if !under_cover {
            if let Some(closed) = highest_closed_ancestor(&dir) {
                cover(&closed)?;
                covered.insert(closed);
            }
        }
        if !dir.is_dir() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(&dir)
                .map_err(failed(format!("creating {}", dir.display())))?;
        }
        os::attach_tree(&tree, &dir).map_err(failed(format!("binding {}", dir.display())))?;
    }
    Ok(())
}

/// The highest ancestor of `dir` (itself included) that others may not enter, if any.
fn highest_closed_ancestor(dir: &Path) -> Option<PathBuf> {
    let mut ancestors: Vec<&Path> = dir.ancestors().filter(|a| a.parent().is_some()).collect();
    ancestors.reverse();
    ancestors.into_iter().find_map(|ancestor| {
        let mode = std::fs::metadata(ancestor).ok()?.permissions().mode();
        (mode & 0o001 == 0).then(|| ancestor.to_path_buf())
    })
}

fn read_source(path: &Path) -> io::Result<Vec<u8>> {
    let mut code = Vec::new();
    File::open(path)?
        .take(MAX_SOURCE_BYTES)
        .read_to_end(&mut code)?;
    Ok(code)
}
