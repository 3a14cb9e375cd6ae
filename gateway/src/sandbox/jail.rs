//! The contract between the gateway and `sluice-jail`, the small launcher that starts a
//! program inside its own namespaces: what the gateway asks for (a [`JailSpec`], handed
//! over in a file) and what the jail leaves behind for the gateway (a
//! [`JailReport`], a file in the execution's host-side directory).
//!
//! The gateway hands a spec over in a file ([`SPEC_FILE`], written with [`JailSpec::write`]
//! into the execution's host-side directory, readable by the gateway's user alone) and
//! starts the jail there with an empty environment and no other argument than that
//! file's name: nothing a request carries (its environment, its arguments) reaches the
//! jail's own environment or command line, which its init would show as `/proc/1/cmdline`
//! and which the dynamic loader of a process running as root would honour
//! (`LD_PRELOAD`). The program's environment is applied only in the program's own
//! `execve`, after the drop to the sandbox user and the system-call filter.
//!
//! The jail binary lives next to the gateway's (`sluice-jail`); this module is public only
//! so that binary can share it. It is not a stable interface.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// The file, in the execution's host-side directory, where the jail writes its report.
pub const REPORT_FILE: &str = "jail-report";

/// The file, in the execution's host-side directory, that hands the jail its spec; the
/// jail removes it as soon as it has read it.
pub const SPEC_FILE: &str = "jail-spec";

/// The jail's only argument besides [`SPEC_FILE`] when the gateway starts it.
pub const SPEC_FLAG: &str = "--spec-file";

/// Most bytes a spec file may hold (the program's environment and arguments are in it).
const MAX_SPEC_BYTES: u64 = 4 << 20;

/// Everything the jail needs to start one program.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JailSpec {
    /// The execution's host-side directory: holds the source file, receives the report.
    pub host_dir: PathBuf,
    /// The file in `host_dir` to copy into the workspace (the program's source).
    pub source: Option<OsString>,
    /// Where the program runs, inside the jail (created there, on the scratch tmpfs).
    pub workspace: PathBuf,
    /// Size of the scratch tmpfs that holds the workspace, /tmp and /dev/shm, in bytes.
    pub scratch_bytes: u64,
    /// The unprivileged user and group the program runs as.
    pub uid: u32,
    /// See `uid`.
    pub gid: u32,
    /// Without root: the host's subordinate uid and gid (`/etc/subuid`, `/etc/subgid`)
    /// the sandbox user and group become outside the jail's user namespace, mapped by
    /// `newuidmap`/`newgidmap`, so the program owns nothing of the gateway's and cannot
    /// touch the jail's own processes. `None`: they map to the gateway's own ids.
    pub map_to: Option<(u32, u32)>,
    /// Give the program an empty network namespace.
    pub no_network: bool,
    /// With `no_network`, in a jail without a user namespace of its own (a root
    /// gateway): the number of a descriptor, in the jail's parent (the gateway), of an
    /// empty network namespace made ahead of time for this jail alone. The jail copies
    /// it from its parent (`pidfd_getfd`) and enters it instead of making its own;
    /// should that fail, it makes its own.
    pub network_fd: Option<i32>,
    /// Directories to make reachable for the unprivileged user although an ancestor is
    /// not (an interpreter installed under /root, say): bound read-only at the same path.
    pub expose: Vec<PathBuf>,
    /// Kernel limits the program starts with: (resource name, value).
    pub rlimits: Vec<(RlimitName, u64)>,
    /// Directories covered with an empty tmpfs inside (a rootless gateway's home, whose
    /// files the sandbox user would otherwise own).
    pub hide: Vec<PathBuf>,
    /// Ptys the jail's own devpts hands out (`None`: a small default). Every jail's
    /// come out of the host's shared pool (`kernel.pty.max` less its reserve).
    pub ptys: Option<u32>,
    /// A descriptor the program inherits at the same number (a persistent interpreter's
    /// control socket); the jail's own processes close their copies.
    pub keep_fd: Option<i32>,
    /// The program's environment, `NAME=value` entries, applied only in its `execve`.
    pub env: Vec<OsString>,
    /// A niceness the program takes before it execs (where no cpu cgroup gives it a
    /// share below the gateway's).
    pub nice: Option<i32>,
    /// A warm start's source file name: the program's process, once it is the sandbox
    /// user under its filter, says it is ready on stdout ([`WARM_READY`]) and waits for a
    /// go header on stdin ([`WARM_HEADER_BYTES`]: the code's length and the rlimits to
    /// lower to), writes the code that follows to this file in the workspace, and execs.
    pub wait_for_go: Option<OsString>,
    /// The program's stdin, stdout and stderr are a terminal: it starts a session of its
    /// own with that terminal as its controlling one (so Ctrl-C typed there interrupts
    /// it), and init passes on a cancel's SIGHUP and SIGTERM to every process inside.
    pub terminal: bool,
    /// `workspace` is a session's workspace on the host (a directory, or a tmpfs of its
    /// own, that outlives this jail and belongs to the sandbox user already): bound at
    /// its own path instead of made anew on the scratch file system, and the source
    /// file and `files` written into it (replacing what an earlier execution left).
    pub shared_workspace: bool,
    /// A bundle of more files ([`FILES_BUNDLE`], written by [`write_bundle`]) in
    /// `host_dir`, written into the workspace before the program starts.
    pub files: Option<OsString>,
    /// The program and its arguments.
    pub command: Vec<OsString>,
}

/// The file in an execution's host directory that carries its `files` (see
/// [`JailSpec::files`]): written by the gateway, read by the jail's init.
pub const FILES_BUNDLE: &str = "files.bundle";

/// Writes `files` (path, text) as a bundle at `path` (mode 0600, a new file): for each,
/// the path's length (4 bytes, little-endian), the path, the text's length (8 bytes),
/// the text.
pub fn write_bundle(path: &Path, files: &[(String, String)]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut bundle = Vec::new();
    for (name, text) in files {
        let length = u32::try_from(name.len())
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "path too long"))?;
        bundle.extend_from_slice(&length.to_le_bytes());
        bundle.extend_from_slice(name.as_bytes());
        bundle.extend_from_slice(&(text.len() as u64).to_le_bytes());
        bundle.extend_from_slice(text.as_bytes());
    }
    std::fs::File::options()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?
        .write_all(&bundle)
}

/// The files of a bundle [`write_bundle`] made, each path checked again
/// ([`is_plain_relative`]); why not, if it is not one.
pub fn read_bundle(mut bundle: &[u8]) -> Result<Vec<(&str, &[u8])>, String> {
    fn take<'a>(bundle: &mut &'a [u8], n: usize) -> Result<&'a [u8], String> {
        if bundle.len() < n {
            return Err("the files bundle is cut short".to_owned());
        }
        let (head, rest) = bundle.split_at(n);
        *bundle = rest;
        Ok(head)
    }
    let mut files = Vec::new();
    while !bundle.is_empty() {
        let length = take(&mut bundle, 4)?;
        let length = u32::from_le_bytes([length[0], length[1], length[2], length[3]]);
        let name = take(&mut bundle, length as usize)?;
        let name = std::str::from_utf8(name)
            .map_err(|_| "a path in the files bundle is not UTF-8".to_owned())?;
        if !is_plain_relative(name) {
            return Err(format!("file {name:?}: not a plain relative path"));
        }
        let mut size = [0_u8; 8];
        size.copy_from_slice(take(&mut bundle, 8)?);
        let size = usize::try_from(u64::from_le_bytes(size))
            .map_err(|_| "a file in the bundle is too large".to_owned())?;
        files.push((name, take(&mut bundle, size)?));
    }
    Ok(files)
}

/// A path made of plain names only: not empty, not absolute, no `.` or `..`, no NUL.
/// The decoder's rules are stricter (`sluice_protocol`, which this module does not
/// see); this is what writing a file safely needs, checked again on each side.
pub fn is_plain_relative(path: &str) -> bool {
    !path.is_empty()
        && !path.contains('\0')
        && path
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..")
}

/// Writes `files` (path relative to `dir`, bytes) into `dir`: a new working directory,
/// a jail's workspace before its program starts, or a session's workspace, where
/// programs of the session may be running and swapping links in at any moment. So every
/// path is resolved beneath `dir` and through no link (`sys::beneath`): parent
/// directories made as needed (mode 0700), each file new (mode 0600), or replaced when
/// `replace` (a session's workspace keeps files from earlier executions); all of it
/// handed to `owner` (uid, gid) when given. Each path must pass [`is_plain_relative`]
/// (the decoder checked more). A path through a file or link, or onto something that
/// is not a regular file, is `InvalidInput`.
pub fn write_files<'a>(
    dir: &Path,
    files: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    owner: Option<(u32, u32)>,
    replace: bool,
) -> std::io::Result<()> {
    use crate::sys::beneath;
    use std::io::Write as _;
    use std::os::fd::AsFd as _;
    let invalid = |why: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, why);
    let root = std::fs::File::open(dir)?;
    let existing = if replace {
        beneath::Existing::Replace
    } else {
        beneath::Existing::Refuse
    };
    for (name, bytes) in files {
        if !is_plain_relative(name) {
            return Err(invalid(format!("{name:?}: not a plain relative path")));
        }
        let opened = beneath::make_parents(root.as_fd(), name, 0o700, owner).and_then(|()| {
            beneath::open_file_for_writing(root.as_fd(), name, existing, 0o600, owner)
        });
        let mut file = opened.map_err(|err| match err.raw_os_error() {
            Some(libc::ENOTDIR | libc::ELOOP | libc::EXDEV | libc::EINVAL | libc::EISDIR) => {
                invalid(format!(
                    "{name:?}: a directory on its way is a file or a link, or it is not a regular file"
                ))
            }
            // A device (the workspace is `nodev`), a FIFO or socket without a reader, or
            // a directory its programs made unwritable: what is there is not for writing.
            Some(libc::EACCES | libc::EPERM | libc::ENXIO) => invalid(format!(
                "{name:?}: what is there (a device, FIFO or socket, or a directory on its way that the session's programs made unwritable) cannot be written"
            )),
            _ => std::io::Error::new(err.kind(), format!("{name:?}: {err}")),
        })?;
        file.write_all(bytes)?;
    }
    Ok(())
}

/// How a jail's setup report begins when the request's `files` could not be written
/// because of what the session's programs left on their paths ([`write_files`]'s
/// `InvalidInput`): the gateway answers it with `invalid_path`, not as a failure.
pub const FILES_REFUSED: &str = "the request's files were refused: ";

/// How a jail's setup report begins when the program's source or `files` did not fit
/// in its workspace, a session's or its own (`ENOSPC`, `EDQUOT`: out of bytes or
/// inodes), cold or warm alike: the gateway answers it with `workspace_full`. Marked
/// where the write fails, so that another setup step's `ENOSPC` (a namespace or mount
/// count) stays a sandbox failure.
pub const WORKSPACE_FULL: &str = "the workspace has no room for the program's files: ";

/// True for a jail's setup failure that is the request's or the session's doing (its
/// `files` refused, its workspace full), not the sandbox's.
pub fn is_the_requests_doing(setup_failed: &str) -> bool {
    setup_failed.starts_with(FILES_REFUSED) || setup_failed.starts_with(WORKSPACE_FULL)
}

/// The report of a failed write of the program's source or files (`what`, e.g.
/// `writing PATH`): marked [`WORKSPACE_FULL`] when the workspace had no room.
pub fn write_failure(what: &str, err: &std::io::Error) -> String {
    match is_full(err) {
        true => format!("{WORKSPACE_FULL}{what}: {err}"),
        false => format!("{what}: {err}"),
    }
}

/// True for an error that says a file system (or its inodes, or a quota) is full.
pub fn is_full(err: &std::io::Error) -> bool {
    matches!(err.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
        || matches!(
            err.kind(),
            std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
        )
}

/// What a waiting program (see [`JailSpec::wait_for_go`]) writes to its stdout once it
/// waits for its go.
pub const WARM_READY: &[u8] = b"sluice-warm-ready\n";

/// The length of a warm start's go header: `SLUICE`, then the code's length and the
/// rlimits (CPU seconds, file size, open files; `u64::MAX`: unchanged) as decimal
/// numbers separated by single spaces, padded with spaces, then `\n`.
pub const WARM_HEADER_BYTES: usize = 128;

/// The numbers of a go header: the code's length, then the three rlimits. `None` for
/// anything else. Allocates nothing (the jail reads it before its exec, in a child that
/// shares its parent's memory).
pub fn parse_go_header(header: &[u8; WARM_HEADER_BYTES]) -> Option<[u64; 4]> {
    let rest = header.strip_prefix(b"SLUICE ")?;
    let (last, body) = rest.split_last()?;
    if *last != b'\n' {
        return None;
    }
    let mut numbers = [0_u64; 4];
    let mut fields = body.split(|&b| b == b' ').filter(|field| !field.is_empty());
    for number in &mut numbers {
        let field = fields.next()?;
        if field.len() > 20 {
            return None;
        }
        let mut value: u64 = 0;
        for &digit in field {
            if !digit.is_ascii_digit() {
                return None;
            }
            value = value
                .checked_mul(10)?
                .checked_add(u64::from(digit - b'0'))?;
        }
        *number = value;
    }
    fields.next().is_none().then_some(numbers)
}

/// A program's environment as the jail takes it (`NAME=value` entries), from pairs in
/// order of precedence: a later pair replaces an earlier one of the same name, as
/// `Command::env` does (`execve` itself would keep both, and most programs read the
/// first).
pub fn environment<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Vec<OsString> {
    let mut entries: Vec<(&str, &str)> = Vec::new();
    for (name, value) in pairs {
        match entries.iter_mut().find(|(known, _)| *known == name) {
            Some(entry) => entry.1 = value,
            None => entries.push((name, value)),
        }
    }
    entries
        .into_iter()
        .map(|(name, value)| format!("{name}={value}").into())
        .collect()
}

/// The rlimits the jail knows how to set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RlimitName {
    /// RLIMIT_CPU, seconds.
    Cpu,
    /// RLIMIT_FSIZE, bytes.
    FileSize,
    /// RLIMIT_NOFILE, descriptors.
    OpenFiles,
    /// RLIMIT_NPROC, processes: applied only in a jail with its own user namespace,
    /// where it counts that jail's processes alone.
    Processes,
}

impl RlimitName {
    fn as_str(self) -> &'static str {
        match self {
            Self::Cpu => "cpu",
            Self::FileSize => "fsize",
            Self::OpenFiles => "nofile",
            Self::Processes => "nproc",
        }
    }

    fn parse(name: &str) -> Option<Self> {
        [Self::Cpu, Self::FileSize, Self::OpenFiles, Self::Processes]
            .into_iter()
            .find(|r| r.as_str() == name)
    }
}

/// Why the jail's arguments could not be read.
#[derive(Debug, thiserror::Error)]
#[error("sluice-jail: {0} (this program is started by the Sluice gateway, not by hand)")]
pub struct SpecError(String);

impl JailSpec {
    /// The arguments that make `sluice-jail` run this spec.
    pub fn to_args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = Vec::new();
        let mut pair = |flag: &str, value: OsString| {
            args.push(flag.into());
            args.push(value);
        };
        pair("--host-dir", self.host_dir.clone().into_os_string());
        if let Some(source) = &self.source {
            pair("--source", source.clone());
        }
        pair("--workspace", self.workspace.clone().into_os_string());
        pair("--scratch-bytes", self.scratch_bytes.to_string().into());
        pair("--uid", self.uid.to_string().into());
        pair("--gid", self.gid.to_string().into());
        if let Some((uid, gid)) = self.map_to {
            pair("--map-to", format!("{uid}:{gid}").into());
        }
        for dir in &self.expose {
            pair("--expose", dir.clone().into_os_string());
        }
        for dir in &self.hide {
            pair("--hide", dir.clone().into_os_string());
        }
        if let Some(ptys) = self.ptys {
            pair("--ptys", ptys.to_string().into());
        }
        for (name, value) in &self.rlimits {
            pair("--rlimit", format!("{}={value}", name.as_str()).into());
        }
        if let Some(fd) = self.keep_fd {
            pair("--keep-fd", fd.to_string().into());
        }
        for entry in &self.env {
            pair("--env", entry.clone());
        }
        if let Some(nice) = self.nice {
            pair("--nice", nice.to_string().into());
        }
        if let Some(fd) = self.network_fd {
            pair("--network-fd", fd.to_string().into());
        }
        if let Some(name) = &self.wait_for_go {
            pair("--wait-for-go", name.clone());
        }
        if let Some(name) = &self.files {
            pair("--files", name.clone());
        }
        if self.no_network {
            args.push("--no-network".into());
        }
        if self.terminal {
            args.push("--terminal".into());
        }
        if self.shared_workspace {
            args.push("--shared-workspace".into());
        }
        args.push("--".into());
        args.extend(self.command.iter().cloned());
        args
    }

    /// Writes the spec into `dir`'s [`SPEC_FILE`], readable and writable by this
    /// process's user alone, and returns the jail's arguments that point at it (relative
    /// to `dir`, where the jail must be started). An entry holding a NUL byte (the
    /// separator) is refused.
    pub fn write(&self, dir: &Path) -> std::io::Result<Vec<OsString>> {
        use std::io::Write as _;
        use std::os::unix::ffi::OsStrExt as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut text = Vec::new();
        for arg in self.to_args() {
            // NUL separates the arguments: one inside an entry would add flags.
            if arg.as_bytes().contains(&0) {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "a NUL byte in the jail's spec",
                ));
            }
            text.extend_from_slice(arg.as_bytes());
            text.push(0);
        }
        let path = dir.join(SPEC_FILE);
        // A spec left by an earlier start in the same directory (a retried spawn).
        match std::fs::remove_file(&path) {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => return Err(err),
            _ => {}
        }
        std::fs::File::options()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?
            .write_all(&text)?;
        Ok(vec![SPEC_FLAG.into(), SPEC_FILE.into()])
    }

    /// Reads the jail's command line: [`SPEC_FLAG`] and a spec file written by
    /// [`JailSpec::write`] (which it removes), or the arguments of
    /// [`JailSpec::to_args`] themselves (tests run the jail that way). `euid`: the
    /// jail's effective uid, which must own the spec file.
    pub fn from_command_line(args: Vec<OsString>, euid: u32) -> Result<Self, SpecError> {
        match args.as_slice() {
            [flag, file] if flag == SPEC_FLAG => {
                Self::parse(read_spec_file(Path::new(file), euid)?)
            }
            _ => Self::parse(args),
        }
    }

    /// Reads the arguments written by [`JailSpec::to_args`].
    pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Self, SpecError> {
        let mut spec = Self::default();
        let mut args = args.into_iter();
        let mut workspace = None;
        while let Some(flag) = args.next() {
            let flag = flag.to_string_lossy().into_owned();
            if flag == "--" {
                spec.command = args.collect();
                break;
            }
            if flag == "--no-network" {
                spec.no_network = true;
                continue;
            }
            if flag == "--terminal" {
                spec.terminal = true;
                continue;
            }
            if flag == "--shared-workspace" {
                spec.shared_workspace = true;
                continue;
            }
            let value = args
                .next()
                .ok_or_else(|| SpecError(format!("{flag} needs a value")))?;
            let text = || value.to_string_lossy().into_owned();
            let number = |what: &str| -> Result<u64, SpecError> {
                text()
                    .parse()
                    .map_err(|_| SpecError(format!("{what} must be a number, not {:?}", text())))
            };
            match flag.as_str() {
                "--host-dir" => spec.host_dir = PathBuf::from(&value),
                "--source" => spec.source = Some(value.clone()),
                "--wait-for-go" | "--files" => {
                    let name = Path::new(&value);
                    if name.components().count() != 1
                        || !matches!(
                            name.components().next(),
                            Some(std::path::Component::Normal(_))
                        )
                    {
                        return Err(SpecError(format!(
                            "{flag} takes a file name, not {:?}",
                            text()
                        )));
                    }
                    match flag.as_str() {
                        "--files" => spec.files = Some(value.clone()),
                        _ => spec.wait_for_go = Some(value.clone()),
                    }
                }
                "--workspace" => workspace = Some(PathBuf::from(&value)),
                "--scratch-bytes" => spec.scratch_bytes = number("--scratch-bytes")?,
                "--uid" => spec.uid = id(number("--uid")?)?,
                "--gid" => spec.gid = id(number("--gid")?)?,
                "--map-to" => {
                    let text = text();
                    let ids = text.split_once(':').and_then(|(uid, gid)| {
                        Some((uid.parse::<u32>().ok()?, gid.parse::<u32>().ok()?))
                    });
                    spec.map_to = Some(ids.ok_or_else(|| {
                        SpecError(format!("--map-to takes UID:GID, not {text:?}"))
                    })?);
                }
                "--expose" => spec.expose.push(PathBuf::from(&value)),
                "--env" => spec.env.push(value.clone()),
                "--nice" => {
                    let nice = number("--nice")?;
                    spec.nice = Some(
                        i32::try_from(nice)
                            .ok()
                            .filter(|nice| *nice <= 19)
                            .ok_or_else(|| SpecError("--nice takes 0 to 19".into()))?,
                    );
                }
                "--hide" => spec.hide.push(PathBuf::from(&value)),
                "--ptys" => {
                    let ptys = number("--ptys")?;
                    spec.ptys = Some(
                        u32::try_from(ptys).map_err(|_| SpecError("--ptys out of range".into()))?,
                    );
                }
                "--network-fd" => {
                    let fd = number("--network-fd")?;
                    spec.network_fd = Some(
                        i32::try_from(fd)
                            .map_err(|_| SpecError("--network-fd out of range".into()))?,
                    );
                }
                "--keep-fd" => {
                    let fd = number("--keep-fd")?;
                    spec.keep_fd = Some(
                        i32::try_from(fd)
                            .map_err(|_| SpecError("--keep-fd out of range".into()))?,
                    );
                }
                "--rlimit" => {
                    let text = text();
                    let (name, amount) = text.split_once('=').ok_or_else(|| {
                        SpecError(format!("--rlimit takes NAME=VALUE, not {text:?}"))
                    })?;
                    let name = RlimitName::parse(name)
                        .ok_or_else(|| SpecError(format!("unknown rlimit {name:?}")))?;
                    let amount = amount
                        .parse()
                        .map_err(|_| SpecError(format!("--rlimit {text:?}: not a number")))?;
                    spec.rlimits.push((name, amount));
                }
                other => return Err(SpecError(format!("unknown argument {other:?}"))),
            }
        }
        if spec.command.is_empty() {
            return Err(SpecError("no program given after --".into()));
        }
        spec.workspace = workspace.ok_or_else(|| SpecError("--workspace is required".into()))?;
        if !spec.workspace.is_absolute() || !spec.host_dir.is_absolute() {
            return Err(SpecError(
                "--workspace and --host-dir must be absolute".into(),
            ));
        }
        if spec.uid == 0 || spec.gid == 0 {
            return Err(SpecError(
                "programs never run as root: --uid and --gid must not be 0".into(),
            ));
        }
        Ok(spec)
    }
}

/// Where the setuid helpers that map subordinate ids (`newuidmap`, `newgidmap`, from
/// shadow's uidmap package) are looked for: the jail runs with an empty environment, so
/// both sides use this fixed list rather than `PATH`.
pub fn id_mapper(name: &str) -> Option<PathBuf> {
    ["/usr/bin", "/bin", "/usr/sbin", "/sbin", "/usr/local/bin"]
        .iter()
        .map(|dir| Path::new(dir).join(name))
        .find(|path| path.is_file())
}

/// The first subordinate uid and gid the host grants the user `uid` (`/etc/subuid` and
/// `/etc/subgid`, by name or number), when `newuidmap` and `newgidmap` are there to map
/// them.
pub fn subordinate_ids(uid: u32) -> Option<(u32, u32)> {
    subordinate_range(uid).map(|(first, _)| first)
}

/// As [`subordinate_ids`], with how many consecutive ids both ranges grant.
pub fn subordinate_range(uid: u32) -> Option<((u32, u32), u32)> {
    id_mapper("newuidmap")?;
    id_mapper("newgidmap")?;
    let uid_text = uid.to_string();
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let name = passwd
        .lines()
        .filter_map(|line| {
            let mut fields = line.split(':');
            Some((fields.next()?, fields.nth(1)?))
        })
        .find(|(_, id)| *id == uid_text)
        .map(|(name, _)| name.to_owned())?;
    let range_of = |file: &str| -> Option<(u32, u32)> {
        let table = std::fs::read_to_string(file).ok()?;
        subordinate_range_in(&table, &name, &uid_text)
    };
    let (uids, gids) = (range_of("/etc/subuid")?, range_of("/etc/subgid")?);
    Some(((uids.0, gids.0), uids.1.min(gids.1)))
}

/// The start of the first range for `name` (or the uid `number`) in a
/// `/etc/subuid`-style table of `owner:start:count` lines.
#[cfg(test)]
fn first_subordinate(table: &str, name: &str, number: &str) -> Option<u32> {
    subordinate_range_in(table, name, number).map(|(start, _)| start)
}

/// The first range (start, count) for `name` (or the uid `number`) in a
/// `/etc/subuid`-style table of `owner:start:count` lines.
fn subordinate_range_in(table: &str, name: &str, number: &str) -> Option<(u32, u32)> {
    table.lines().find_map(|line| {
        let mut fields = line.trim().split(':');
        let owner = fields.next()?;
        let start: u32 = fields.next()?.parse().ok()?;
        let count: u32 = fields.next()?.parse().ok()?;
        (count > 0 && (owner == name || owner == number)).then_some((start, count))
    })
}

/// The arguments in a spec file, after checking that only this process's user could
/// have written it (`euid`); the file is removed.
fn read_spec_file(path: &Path, euid: u32) -> Result<Vec<OsString>, SpecError> {
    use std::io::Read as _;
    use std::os::unix::ffi::OsStringExt as _;
    use std::os::unix::fs::MetadataExt as _;
    let failed = |err: std::io::Error| SpecError(format!("{}: {err}", path.display()));
    let mut file = std::fs::File::open(path).map_err(failed)?;
    let meta = file.metadata().map_err(failed)?;
    if !meta.is_file() || meta.mode() & 0o077 != 0 || meta.uid() != euid {
        return Err(SpecError(format!(
            "{} is not a spec file of this user's (mode 0600, owned by the jail's user)",
            path.display()
        )));
    }
    let mut text = Vec::new();
    file.by_ref()
        .take(MAX_SPEC_BYTES)
        .read_to_end(&mut text)
        .map_err(failed)?;
    let _ = std::fs::remove_file(path);
    let mut args: Vec<OsString> = text
        .split(|&byte| byte == 0)
        .map(|arg| OsString::from_vec(arg.to_vec()))
        .collect();
    // The text ends with a NUL, which leaves one empty piece behind.
    if args.last().is_some_and(|last| last.is_empty()) {
        args.pop();
    }
    Ok(args)
}

fn id(value: u64) -> Result<u32, SpecError> {
    u32::try_from(value).map_err(|_| SpecError(format!("id {value} out of range")))
}

/// What the jail found when its program ended, for limits the gateway cannot see from
/// outside the jail's mount namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JailReport {
    /// The jail could not set up the program's sandbox; the program never ran.
    pub setup_failed: Option<String>,
    /// Bytes in use on the scratch tmpfs when the program ended.
    pub scratch_used_bytes: u64,
    /// True when the scratch tmpfs was full (writes failed with ENOSPC).
    pub scratch_full: bool,
    /// The largest regular file in the workspace and /tmp, in bytes.
    pub largest_file_bytes: u64,
}

impl JailReport {
    /// The report as the jail writes it: `key value` lines.
    pub fn render(&self) -> String {
        let mut out = format!(
            "scratch_used_bytes {}\nscratch_full {}\nlargest_file_bytes {}\n",
            self.scratch_used_bytes, self.scratch_full as u8, self.largest_file_bytes
        );
        if let Some(why) = &self.setup_failed {
            // One line: newlines in the message would start a new key.
            out.push_str(&format!("setup_failed {}\n", why.replace('\n', " ")));
        }
        out
    }

    /// Reads a report written by [`JailReport::render`]; unknown lines are skipped.
    pub fn parse(text: &str) -> Self {
        let mut report = Self::default();
        for line in text.lines() {
            let (key, value) = line.split_once(' ').unwrap_or((line, ""));
            match key {
                "scratch_used_bytes" => report.scratch_used_bytes = value.parse().unwrap_or(0),
                "scratch_full" => report.scratch_full = value == "1",
                "largest_file_bytes" => report.largest_file_bytes = value.parse().unwrap_or(0),
                "setup_failed" => report.setup_failed = Some(value.to_owned()),
                _ => {}
            }
        }
        report
    }

    /// The report the jail left in `host_dir`, if it left one.
    pub fn read(host_dir: &Path) -> Option<Self> {
        std::fs::read_to_string(host_dir.join(REPORT_FILE))
            .ok()
            .map(|text| Self::parse(&text))
    }
}

#[cfg(test)]
mod tests;
