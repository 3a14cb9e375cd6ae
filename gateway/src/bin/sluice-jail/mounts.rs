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
//! * `/etc/passwd` and `/etc/group` of its own, read-only: root, the sandbox user
//!   (`sluice`, its home the workspace) and nobody, none of the host's accounts;
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
    // Read now too, from the host's directory; written once the workspace exists.
    let bundle = match &spec.files {
        Some(name) => Some(
            read_source(&spec.host_dir.join(name))
                .map_err(failed(format!("reading {}", name.to_string_lossy())))?,
        ),
        None => None,
    };
    // A session's workspace, cloned before the scratch file system covers its path.
    let shared = match spec.shared_workspace {
        true => Some(
            os::clone_tree(&spec.workspace)
                .map_err(failed(format!("cloning {}", spec.workspace.display())))?,
        ),
        false => None,
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
    private_dev(
        devices,
        spec.ptys.unwrap_or(DEFAULT_PTYS),
        &user_database(spec),
    )?;
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
    workspace(spec, source, shared)?;
    if let Some(bundle) = bundle {
        // Into the new workspace, which nothing inside has touched yet; or into the
        // session's, resolving every path beneath it (its other programs may be running).
        let files = sluice_gateway::jail::read_bundle(&bundle)?;
        let owner = Some((spec.uid, spec.gid));
        sluice_gateway::jail::write_files(&spec.workspace, files, owner, spec.shared_workspace)
            .map_err(|err| match err.kind() {
                io::ErrorKind::InvalidInput => {
                    format!("{}{err}", sluice_gateway::jail::FILES_REFUSED)
                }
                _ => sluice_gateway::jail::write_failure("writing the files", &err),
            })?;
    }
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
fn private_dev(
    devices: Vec<(PathBuf, OwnedFd)>,
    ptys: u32,
    users: &[UserFile],
) -> Result<(), String> {
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
    for file in users {
        let path = dev.join(file.staged);
        let mut out = File::options()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&path)
            .map_err(failed(format!("writing {}", path.display())))?;
        out.write_all(file.content.as_bytes())
            .map_err(failed(format!("writing {}", path.display())))?;
    }
    bind_user_database(users)?;
    os::mount(
        "none",
        dev,
        None,
        libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NOEXEC,
        None,
    )
    .map_err(failed("making /dev read-only"))
}

/// A file of the jail's user database: written in `/dev` as `staged`, then bound
/// read-only over `target`.
struct UserFile {
    staged: &'static str,
    target: &'static str,
    content: String,
}

/// `/etc/passwd` and `/etc/group` of the jail (and their `-` backups, and empty
/// `/etc/subuid` and `/etc/subgid`): root, the sandbox user (`sluice`, its home the
/// workspace) and nobody; none of the host's users. So the program's user has
/// a name (`whoami`, a shell's prompt, `getpass.getuser()`, tools that look their user
/// up) and the host's accounts are not for it to read.
fn user_database(spec: &JailSpec) -> Vec<UserFile> {
    let home = spec
        .workspace
        .to_str()
        .filter(|path| !path.contains([':', '\n']))
        .unwrap_or("/tmp");
    let (uid, gid) = (spec.uid, spec.gid);
    let mut passwd = format!(
        "root:x:0:0:root:/root:/bin/sh\nsluice:x:{uid}:{gid}:Sluice sandbox:{home}:/bin/sh\n"
    );
    let mut group = format!("root:x:0:\nsluice:x:{gid}:\n");
    if uid != NOBODY {
        passwd.push_str("nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n");
    }
    if gid != NOBODY {
        group.push_str("nogroup:x:65534:\n");
    }
    [
        ("/etc/passwd", ".sluice-passwd", passwd.clone()),
        ("/etc/group", ".sluice-group", group.clone()),
        // The backups the shadow tools keep, and the subordinate id ranges, name the
        // host's accounts too.
        ("/etc/passwd-", ".sluice-passwd-", passwd),
        ("/etc/group-", ".sluice-group-", group),
        ("/etc/subuid", ".sluice-subuid", String::new()),
        ("/etc/subgid", ".sluice-subgid", String::new()),
    ]
    .into_iter()
    // Only where the host has one to cover (the root is read-only: none can be made).
    .filter(|(target, _, _)| Path::new(target).is_file())
    .map(|(target, staged, content)| UserFile {
        staged,
        target,
        content,
    })
    .collect()
}

/// The id of `nobody` and `nogroup`.
const NOBODY: u32 = 65_534;

/// Binds the jail's user database (staged in `/dev`) over the host's, read-only, and
/// removes the staged names (the binds keep the files).
fn bind_user_database(users: &[UserFile]) -> Result<(), String> {
    for file in users {
        let (staged, target) = (Path::new("/dev").join(file.staged), Path::new(file.target));
        os::mount(&staged.to_string_lossy(), target, None, libc::MS_BIND, None)
            .map_err(failed(format!("binding {}", target.display())))?;
        std::fs::remove_file(&staged).map_err(failed(format!("removing {}", staged.display())))?;
        os::mount(
            "none",
            target,
            None,
            libc::MS_REMOUNT
                | libc::MS_BIND
                | libc::MS_RDONLY
                | libc::MS_NOSUID
                | libc::MS_NODEV
                | libc::MS_NOEXEC,
            None,
        )
        .map_err(failed(format!("making {} read-only", target.display())))?;
    }
    Ok(())
}

/// The workspace at its outside path, on the scratch file system, owned by the sandbox
/// user, with the source copied in. Outside /tmp and /dev/shm, the scratch file system
/// itself is bound over the workspace's parent (one budget for everything the program
/// writes), which also hides the other executions' directories. A session's workspace
/// (`shared`, cloned from the host) is bound over the directory made there, and keeps
/// its owner and mode.
fn workspace(
    spec: &JailSpec,
    source: Option<Vec<u8>>,
    shared: Option<OwnedFd>,
) -> Result<(), String> {
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
    match shared {
        Some(tree) => {
            os::set_clone_attributes(&tree, os::MOUNT_ATTR_NOSUID | os::MOUNT_ATTR_NODEV)
                .map_err(failed("preparing the session's workspace"))?;
            os::attach_tree(&tree, &spec.workspace)
                .map_err(failed("binding the session's workspace"))?;
        }
        None => {
            std::os::unix::fs::chown(&spec.workspace, Some(spec.uid), Some(spec.gid))
                .map_err(failed("handing the workspace to the sandbox user"))?;
            std::fs::set_permissions(&spec.workspace, std::fs::Permissions::from_mode(0o700))
                .map_err(failed("protecting the workspace"))?;
        }
    }
    if let (Some(name), Some(code)) = (&spec.source, source) {
        let path = spec.workspace.join(name);
        // New, at the top of the workspace: never through a link a program of the
        // session put there.
        let what = format!("writing {}", path.display());
        let failed_writing = |err: io::Error| sluice_gateway::jail::write_failure(&what, &err);
        let mut file = File::options()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(failed_writing)?;
        // Handed over through the open file, never by its name again: a program of the
        // session may have put a link in its place meanwhile (the outside review).
        std::os::unix::fs::fchown(&file, Some(spec.uid), Some(spec.gid))
            .map_err(failed("handing the source to the sandbox user"))?;
        file.write_all(&code).map_err(failed_writing)?;
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
