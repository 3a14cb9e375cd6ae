//! Pseudo-terminals: a new pair from the gateway's `/dev/ptmx`, its program side opened
//! through the control side (`TIOCGPTPEER`, no path looked up), its size, and resizing.

use std::io;
use std::os::fd::{AsFd as _, AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd};

/// A new pseudo-terminal: the gateway keeps `control` (reads the terminal's output from
/// it, writes what is typed, sets the size); the program gets `program_side` as its
/// stdin, stdout and stderr, and as its controlling terminal.
#[derive(Debug)]
pub(crate) struct Terminal {
    /// Non-blocking and close-on-exec.
    pub(crate) control: OwnedFd,
    /// Close-on-exec; not the gateway's controlling terminal.
    pub(crate) program_side: OwnedFd,
}

/// Opens a terminal of `cols` x `rows`, with UTF-8 input processing on (so erasing a
/// typed character erases all of its bytes).
pub(crate) fn open_terminal(cols: u16, rows: u16) -> io::Result<Terminal> {
    // SAFETY: open takes a NUL-terminated path literal and integer flags.
    let control = unsafe {
        libc::open(
            c"/dev/ptmx".as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC | libc::O_NONBLOCK,
        )
    };
    if control < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: open just returned this descriptor, owned by nobody else.
    let control = unsafe { OwnedFd::from_raw_fd(control) };
    let unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK reads the integer behind the pointer, a live local.
    if unsafe { libc::ioctl(control.as_raw_fd(), libc::TIOCSPTLCK, &unlock) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: TIOCGPTPEER takes the control side and open flags; it returns a new
    // descriptor.
    let side = unsafe {
        libc::ioctl(
            control.as_raw_fd(),
            libc::TIOCGPTPEER,
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    };
    if side < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the ioctl just returned this descriptor, owned by nobody else.
    let program_side = unsafe { OwnedFd::from_raw_fd(side) };
    // SAFETY: termios is plain data, filled by tcgetattr before it is read.
    let mut termios = unsafe { std::mem::zeroed::<libc::termios>() };
    // SAFETY: both calls take a descriptor we hold and a pointer to the live local.
    unsafe {
        if libc::tcgetattr(program_side.as_raw_fd(), &mut termios) != 0 {
            return Err(io::Error::last_os_error());
        }
        termios.c_iflag |= libc::IUTF8;
        if libc::tcsetattr(program_side.as_raw_fd(), libc::TCSANOW, &termios) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    resize_terminal(control.as_fd(), cols, rows)?;
    Ok(Terminal {
        control,
        program_side,
    })
}

/// Gives the terminal behind `control` a new size; the kernel sends SIGWINCH to its
/// foreground process group when the size changes.
pub(crate) fn resize_terminal(control: BorrowedFd<'_>, cols: u16, rows: u16) -> io::Result<()> {
    let size = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads the winsize behind the pointer, a live local.
    if unsafe { libc::ioctl(control.as_raw_fd(), libc::TIOCSWINSZ, &size) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_terminal_has_its_size_and_utf8_input() {
        let terminal = open_terminal(100, 30).unwrap_or_else(|err| panic!("{err}"));
        let mut size = libc::winsize {
            ws_row: 0,
            ws_col: 0,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCGWINSZ writes the winsize behind the pointer, a live local.
        let rc = unsafe {
            libc::ioctl(
                terminal.program_side.as_raw_fd(),
                libc::TIOCGWINSZ,
                &mut size,
            )
        };
        assert_eq!(rc, 0);
        assert_eq!((size.ws_col, size.ws_row), (100, 30));
        resize_terminal(terminal.control.as_fd(), 7, 5).unwrap_or_else(|err| panic!("{err}"));
        // SAFETY: as above.
        let rc = unsafe {
            libc::ioctl(
                terminal.program_side.as_raw_fd(),
                libc::TIOCGWINSZ,
                &mut size,
            )
        };
        assert_eq!(rc, 0);
        assert_eq!((size.ws_col, size.ws_row), (7, 5));
        // SAFETY: termios is plain data, filled by tcgetattr.
        let mut termios = unsafe { std::mem::zeroed::<libc::termios>() };
        // SAFETY: a descriptor we hold and a pointer to the live local.
        assert_eq!(
            unsafe { libc::tcgetattr(terminal.program_side.as_raw_fd(), &mut termios) },
            0
        );
        assert_ne!(termios.c_iflag & libc::IUTF8, 0);
    }
}
