//! Paths resolved strictly beneath a directory the gateway holds open, for directories a
//! running program may change under it (a session's workspace): `openat2` with
//! `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV`, so
//! no symbolic link (swapped in at any moment), `..` or mount point leads anywhere else;
//! and the `*at` calls that act on one name in a directory opened that way. Also the
//! tmpfs mount a workspace lives on.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd};
use std::path::Path;

/// How every path is resolved: inside the directory, through no link of any kind and
/// onto no other file system.
const RESOLVE: u64 = libc::RESOLVE_BENEATH
    | libc::RESOLVE_NO_SYMLINKS
    | libc::RESOLVE_NO_MAGICLINKS
    | libc::RESOLVE_NO_XDEV;

fn c_string(text: impl AsRef<OsStr>) -> io::Result<CString> {
    use std::os::unix::ffi::OsStrExt as _;
    CString::new(text.as_ref().as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// Opens `path` (relative; `""` is the directory itself) beneath `dir` with `flags`
/// (`O_CLOEXEC` is added; `O_NOFOLLOW` is implied) and, when it creates, `mode`.
pub(crate) fn open(
    dir: BorrowedFd<'_>,
    path: impl AsRef<OsStr>,
    flags: i32,
    mode: u32,
) -> io::Result<OwnedFd> {
    let path = path.as_ref();
    let path = c_string(if path.is_empty() {
        OsStr::new(".")
    } else {
        path
    })?;
    // SAFETY: a zeroed `open_how` is a valid value of this plain C struct.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_CLOEXEC | libc::O_NOFOLLOW) as u64;
    if flags & libc::O_CREAT != 0 {
        how.mode = u64::from(mode);
    }
    how.resolve = RESOLVE;
    loop {
        // SAFETY: `path` is a NUL-terminated string and `how` a properly sized
        // `open_how` that both outlive the call; the result is checked before use.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                dir.as_raw_fd(),
                path.as_ptr(),
                &how as *const libc::open_how,
                std::mem::size_of::<libc::open_how>(),
            )
        };
        if fd >= 0 {
            let fd = i32::try_from(fd).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
            // SAFETY: the kernel just returned this descriptor and nothing else owns it.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
        }
        let err = io::Error::last_os_error();
        // EAGAIN: a rename or mount raced the resolution; it is safe to try again.
        if !matches!(err.raw_os_error(), Some(libc::EINTR | libc::EAGAIN)) {
            return Err(err);
        }
    }
}

/// Makes the directory `name` (one component) in `dir`.
pub(crate) fn make_dir(dir: BorrowedFd<'_>, name: &str, mode: u32) -> io::Result<()> {
    let name = c_string(name)?;
    // SAFETY: `name` is NUL-terminated and outlives the call.
    let done = unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), mode) };
    if done == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Removes `name` (one component) from `dir`: an empty directory when `is_dir`, any
/// other entry (a link itself, never what it points to) otherwise.
pub(crate) fn remove(dir: BorrowedFd<'_>, name: impl AsRef<OsStr>, is_dir: bool) -> io::Result<()> {
    let name = c_string(name)?;
    let flags = if is_dir { libc::AT_REMOVEDIR } else { 0 };
    // SAFETY: `name` is NUL-terminated and outlives the call.
    let done = unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), flags) };
    if done == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// What `name` in `dir` is, without following it if it is a link.
pub(crate) fn stat(dir: BorrowedFd<'_>, name: &str) -> io::Result<libc::stat> {
    let name = c_string(name)?;
    // SAFETY: a zeroed `stat` is a valid value of this plain C struct.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `name` is NUL-terminated and `stat` writable, both outliving the call.
    let done = unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            name.as_ptr(),
            &mut stat,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if done == 0 {
        Ok(stat)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Mounts a fresh tmpfs of `options` on `path`: nosuid, nodev.
pub(crate) fn mount_tmpfs(path: &Path, options: &str) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt as _;
    let target = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let options = c_string(options)?;
    // SAFETY: every pointer is a NUL-terminated string that outlives the call.
    let done = unsafe {
        libc::mount(
            c"tmpfs".as_ptr(),
            target.as_ptr(),
            c"tmpfs".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV,
            options.as_ptr().cast(),
        )
    };
    if done == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Detaches whatever is mounted on `path` (lazily: it goes once nothing uses it).
pub(crate) fn unmount(path: &Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt as _;
    let target = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: `target` is NUL-terminated and outlives the call.
    let done = unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH | libc::UMOUNT_NOFOLLOW) };
    if done == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// How [`open_file_for_writing`] treats a file that exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Existing {
    /// Refuse it (`EEXIST`): the file must be new.
    Refuse,
    /// Empty it and write anew.
    Replace,
    /// Write after its end.
    Append,
}

/// Makes the parent directories of `path` beneath `root` that are missing (mode
/// `dir_mode`, belonging to `owner` when given); `ENOTDIR` when one is a file, `ELOOP`
/// when one is a link.
pub(crate) fn make_parents(
    root: BorrowedFd<'_>,
    path: &str,
    dir_mode: u32,
    owner: Option<(u32, u32)>,
) -> io::Result<()> {
    use std::os::fd::AsFd as _;
    let mut end = 0;
    while let Some(slash) = path[end..].find('/') {
        let parent = &path[..end + slash];
        let flags = libc::O_PATH | libc::O_DIRECTORY;
        match open(root, parent, flags, 0) {
            Ok(_) => {}
            Err(err) if err.raw_os_error() == Some(libc::ENOENT) => {
                let (above, name) = match parent.rsplit_once('/') {
                    Some((above, name)) => (above, name),
                    None => ("", parent),
                };
                let above = open(root, above, flags, 0)?;
                match make_dir(above.as_fd(), name, dir_mode) {
                    Ok(()) => {}
                    // Made meanwhile (by a program of the session): checked below.
                    Err(err) if err.raw_os_error() == Some(libc::EEXIST) => {}
                    Err(err) => return Err(err),
                }
                let made = open(root, parent, libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
                if let Some((uid, gid)) = owner {
                    std::os::unix::fs::fchown(&made, Some(uid), Some(gid))?;
                }
            }
            Err(err) => return Err(err),
        }
        end += slash + 1;
    }
    Ok(())
}

/// Opens the regular file `path` beneath `root` for writing, created (mode `mode`,
/// belonging to `owner` when given) if missing; an `existing` one is refused, emptied
/// or appended to. Anything but a regular file there is `EINVAL` (a FIFO is opened
/// without blocking and then refused; a device cannot be opened on the `nodev` file
/// systems this is used on).
pub(crate) fn open_file_for_writing(
    root: BorrowedFd<'_>,
    path: &str,
    existing: Existing,
    mode: u32,
    owner: Option<(u32, u32)>,
) -> io::Result<std::fs::File> {
    use std::os::unix::fs::FileTypeExt as _;
    let flags = libc::O_WRONLY
        | libc::O_CREAT
        | libc::O_NONBLOCK
        | match existing {
            Existing::Refuse => libc::O_EXCL,
            Existing::Replace => 0,
            Existing::Append => libc::O_APPEND,
        };
    let file = std::fs::File::from(open(root, path, flags, mode)?);
    let kind = file.metadata()?.file_type();
    if !kind.is_file() || kind.is_fifo() {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    if existing == Existing::Replace {
        // Only now that it is known to be a regular file.
        file.set_len(0)?;
    }
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::fchown(&file, Some(uid), Some(gid))?;
    }
    Ok(file)
}
