//! This terminal's own settings, for `sluice run -t` and `sluice shell`: raw mode (every
//! key goes to the remote program as typed, Ctrl-C included; nothing echoed here),
//! restored when the guard is dropped, and the window's size.
//!
//! The only `unsafe` of the command line: three `ioctl`-style calls on descriptor 0.
#![allow(unsafe_code)]

/// Raw mode on this terminal until dropped, which puts back the settings it found.
#[derive(Debug)]
pub(crate) struct RawMode {
    saved: libc::termios,
}

impl RawMode {
    /// Puts stdin's terminal in raw mode; `None` when stdin is not a terminal.
    pub(crate) fn enter() -> Option<Self> {
        // SAFETY: termios is plain data, filled by tcgetattr before it is read.
        let mut saved = unsafe { std::mem::zeroed::<libc::termios>() };
        // SAFETY: a descriptor of this process and a pointer to the live local.
        if unsafe { libc::tcgetattr(0, &mut saved) } != 0 {
            return None;
        }
        let mut raw = saved;
        // SAFETY: cfmakeraw edits the live local it is given.
        unsafe { libc::cfmakeraw(&mut raw) };
        // SAFETY: as tcgetattr.
        if unsafe { libc::tcsetattr(0, libc::TCSANOW, &raw) } != 0 {
            return None;
        }
        Some(Self { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // SAFETY: a descriptor of this process and a pointer to the saved settings.
        unsafe { libc::tcsetattr(0, libc::TCSANOW, &self.saved) };
    }
}

/// The size of the terminal on stdout (or stdin), `(cols, rows)`; `None` if neither is a
/// terminal that knows its size.
pub(crate) fn window_size() -> Option<(u16, u16)> {
    [1, 0].into_iter().find_map(|fd| {
        let mut size = libc::winsize {
            ws_row: 0,
            ws_col: 0,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCGWINSZ writes the winsize behind the pointer, a live local.
        let known = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut size) } == 0;
        (known && size.ws_col > 0 && size.ws_row > 0).then_some((size.ws_col, size.ws_row))
    })
}
