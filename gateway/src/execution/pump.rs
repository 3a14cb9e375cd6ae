//! The output pump: moves a running program's output from its pipes to its session's
//! stream, enforcing the timeout and output limit, checking its cgroup, reacting to
//! cancel and to its exit, and draining the pipes after it. Reading pauses while events
//! wait for room, so a slow lead fills the pipe and the program blocks in write. A short
//! piece of a line waits a moment for the rest of it ([`LINE_WAIT`]), one stream at a
//! time.

use super::cgroup_checks::next_cpu_check;
use super::display::{DisplayScanner, Piece};
use super::network_watch::{NamespaceCounters, NetworkWatch, NETWORK_BLOCKED_MESSAGE};
use super::output::OutputDecoder;
use super::program::Program;
use super::stdin::StdinFeed;
use super::verdict::{cgroup_stop, Stop};
use super::Run;
use crate::sandbox::LimitWatch;
use sluice_protocol::{Encoding, Event, EventKind};
use std::collections::VecDeque;
use std::io;
use std::os::fd::AsFd as _;
use std::time::Duration;
use tokio::net::unix::pipe;
use tokio::time::Instant;

/// After the program exits, how long to wait for its pipes to reach end-of-file (a
/// process that left the group may hold them) before reading what is there and closing.
const DRAIN_GRACE: std::time::Duration = std::time::Duration::from_millis(100);

/// Most bytes read from one pipe after the program exited: what a pipe can hold (64 KiB
/// by default, at most 1 MiB unprivileged) plus margin. Past it, a process that escaped
/// the group is still writing, and the gateway stops reading.
const DRAIN_LIMIT: u64 = 2 << 20;

/// Longest time `started` waits to go out together with the program's first output.
const STARTED_HOLD: std::time::Duration = std::time::Duration::from_millis(5);

/// Longest time a piece of a line waits for the rest of it. An unbuffered program
/// writes a line in pieces (Python's `print('hi', name)` is four writes: "hi", " ",
/// the name, "\n"); each would be an event of its own. A short piece that does not end
/// a line waits this long for more output of the same stream, so a line usually comes
/// as one event; a prompt or a progress bar that never ends its line still shows within
/// this time.
const LINE_WAIT: std::time::Duration = std::time::Duration::from_millis(2);

/// Most bytes that wait for the end of their line: a longer run of output goes out as
/// it comes.
const LINE_WAIT_BYTES: usize = 4096;

/// One output pipe and its decoder.
#[derive(Debug)]
pub(super) struct OutputPipe {
    kind: EventKind,
    rx: Option<pipe::Receiver>,
    decoder: OutputDecoder,
    /// Held-back bytes of an incomplete character, then what the last read appended.
    buf: Vec<u8>,
    pub(super) delivered: u64,
    /// Bytes read after the program exited (bounded by DRAIN_LIMIT).
    after_exit: u64,
    /// A terminal's control side rather than a pipe: a short read does not mean it is
    /// empty, and its end of file is EIO.
    terminal: bool,
    /// Finds display records: standard output, as text, not on a terminal.
    display: Option<DisplayScanner>,
}

/// What one non-blocking read produced.
enum Read {
    Data(usize),
    Eof,
    Empty,
}

impl OutputPipe {
    /// `rx`: `None` for a stream that does not exist (a terminal's stderr).
    /// `buffers`: where the display records of text stdout are held until they end.
    pub(super) fn new(
        kind: EventKind,
        rx: Option<pipe::Receiver>,
        encoding: Encoding,
        chunk: usize,
        terminal: bool,
        buffers: &crate::buffer_budget::BufferBudget,
    ) -> Self {
        let decoder = OutputDecoder::new(encoding, chunk);
        let display = (kind == EventKind::Stdout && encoding == Encoding::Utf8 && !terminal)
            .then(|| DisplayScanner::new(buffers.empty()));
        Self {
            kind,
            rx,
            buf: decoder.buffer(),
            decoder,
            delivered: 0,
            after_exit: 0,
            terminal,
            display,
        }
    }

    fn is_open(&self) -> bool {
        self.rx.is_some()
    }

    async fn readable(&self) -> io::Result<()> {
        match &self.rx {
            Some(rx) => rx.readable().await,
            None => std::future::pending().await,
        }
    }

    /// Appends whatever the pipe holds to the buffer, up to the chunk size, without
    /// waiting; `Data(n)` counts the new bytes. `exhaustive` (once the program has
    /// exited): read until the pipe says it is empty, never trusting a short read.
    fn read_available(&mut self, exhaustive: bool) -> Read {
        let Some(rx) = &self.rx else { return Read::Eof };
        let exhaustive = exhaustive || self.terminal;
        let room = self.buf.capacity();
        let before = self.buf.len();
        while self.buf.len() < room {
            // Never let the read grow the buffer past the chunk size.
            let want = room - self.buf.len();
            let buf = &mut self.buf;
            // A pipe's read returns less than asked only when the pipe held no more, so
            // a short read clears the pipe's readiness as a `WouldBlock` would: one read
            // per line a program prints instead of that one and another that only says
            // the pipe is empty. What the program writes after it is a new readiness
            // event, which this does not clear. (A program that puts its end in packet
            // mode, O_DIRECT, gets one packet per read: the rest of a burst then waits
            // for its next write or its exit, after which reads are exhaustive.)
            let read = rx.try_io(|| match crate::sys::read_into(rx.as_fd(), buf, want) {
                Ok(n) if !exhaustive && n > 0 && n < want => Err(io::ErrorKind::WouldBlock.into()),
                other => other,
            });
            match read {
                Ok(0) => break,
                Ok(_) => {}
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    return match self.buf.len() - before {
                        0 => Read::Empty,
                        n => Read::Data(n),
                    };
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                // Every program-side descriptor of the terminal is closed: its end.
                Err(err) if self.terminal && err.raw_os_error() == Some(libc::EIO) => break,
                Err(err) => {
                    tracing::warn!(%err, "reading program output failed; closing the pipe");
                    break;
                }
            }
        }
        match self.buf.len() - before {
            0 if self.buf.len() < room => Read::Eof,
            0 => Read::Empty,
            n => Read::Data(n),
        }
    }

    /// The payload of what is buffered, keeping back an incomplete character.
    fn take_text(&mut self) -> Option<String> {
        self.decoder.decode(&mut self.buf)
    }

    /// Whether what the buffer holds (all read from a running program) may wait for the
    /// rest of its line: a short piece of pipe output that does not end one, with room
    /// left in the buffer for the rest (a full one would leave the pipe readable and
    /// unread).
    fn may_wait_for_line(&self) -> bool {
        !self.terminal
            && self.buf.len() < LINE_WAIT_BYTES.min(self.buf.capacity())
            && self.buf.last() != Some(&b'\n')
    }

    /// Queues what the buffer holds (but an incomplete character): the end of a wait
    /// for the rest of a line.
    fn queue_buffered(&mut self, id: &str, encoding: Encoding, pending: &mut VecDeque<Event>) {
        if !self.buf.is_empty() {
            let text = self.take_text();
            self.queue(id, text, encoding, pending);
        }
    }

    /// Closes the pipe and queues what it held back: the tail of a character, text
    /// that might have begun a display record.
    fn close(&mut self, id: &str, encoding: Encoding, pending: &mut VecDeque<Event>) {
        self.rx = None;
        // A piece still waiting for the rest of its line goes first, encoded as any
        // output is; only an incomplete character is left for the end.
        self.queue_buffered(id, encoding, pending);
        let tail = self.decoder.finish(&mut self.buf);
        self.queue(id, tail, encoding, pending);
        if let Some(scanner) = &mut self.display {
            let mut pieces = Vec::new();
            scanner.finish(&mut pieces);
            let kind = self.kind;
            pending.extend(
                pieces
                    .into_iter()
                    .map(|p| piece_event(kind, id, p, encoding)),
            );
        }
    }

    /// Queues the events of `text`, decoded output (`None`: nothing yet): the text, and
    /// in standard output the display records found in it, in order.
    fn queue(
        &mut self,
        id: &str,
        text: Option<String>,
        encoding: Encoding,
        pending: &mut VecDeque<Event>,
    ) {
        let Some(text) = text else { return };
        match &mut self.display {
            None => pending.push_back(Event::output(self.kind, id, text, encoding)),
            Some(scanner) => {
                let mut pieces = Vec::new();
                scanner.scan(id, &text, &mut pieces);
                let kind = self.kind;
                pending.extend(
                    pieces
                        .into_iter()
                        .map(|p| piece_event(kind, id, p, encoding)),
                );
            }
        }
    }
}

/// The event of one piece of output: a dropped display record is reported on stderr.
fn piece_event(kind: EventKind, id: &str, piece: Piece, encoding: Encoding) -> Event {
    match piece {
        Piece::Text(text) => Event::output(kind, id, text, encoding),
        Piece::Display(event) => *event,
        Piece::Dropped(why) => Event::output(
            EventKind::Stderr,
            id,
            format!("sluice: {why}\n"),
            Encoding::Utf8,
        ),
    }
}

impl Run {
    /// Moves output from the pipes to the socket until the program has exited and its
    /// pipes are drained, enforcing the limits and reacting to cancel on the way.
    pub(super) async fn pump(
        &self,
        child: &mut Program,
        pipes: &mut [OutputPipe; 2],
        stdin: &mut StdinFeed,
        started: Event,
        started_at: Instant,
    ) -> PumpResult {
        let id = self.spec.id.as_str();
        let limits = self.spec.limits;
        let encoding = self.spec.encoding;
        let stream = self.ctx.session.stream();
        let deadline = started_at + limits.timeout;
        let mut budget = limits.output_bytes;
        // Output events waiting for room on the socket (at most three: a chunk and the
        // flushed tails of both streams). Reading pauses while any wait, so a slow client
        // fills the pipe and the program blocks in write.
        let mut pending: VecDeque<Event> = VecDeque::from([started]);
        // `started` waits (up to STARTED_HOLD) to share a frame flush with the first output
        // or the exit: one wakeup of the socket writer and the client instead of two, and
        // no gateway work competing with the program's own start-up for the CPU.
        let mut hold_until = Some(started_at + STARTED_HOLD);
        let mut stop: Option<Stop> = None;
        let mut kill_at: Option<Instant> = None;
        let mut exited_at: Option<Instant> = None;
        let mut drain_at: Option<Instant> = None;
        let mut first_output_at = None;
        // Until when a piece of a line waits for the rest of it (LINE_WAIT).
        let mut line_wait: Option<Instant> = None;
        // A program without the network is watched for attempts to use it.
        let counters = match child {
            Program::Process(_) if !self.ctx.host.gives_network(&self.spec.runtime) => {
                Some(NamespaceCounters::of(child.pid()))
            }
            _ => child.network_counters(),
        };
        let mut network_watch = counters.map(NetworkWatch::new);
        // Woken by the gateway's limit watcher when an OOM kill or a refused fork is
        // counted; then the report says which.
        let mut limit_watch = child.cgroup_limit_watch();
        let cpu_limit_usec = limits.cpu_ms.saturating_mul(1000);
        let mut cpu_check_at = child
            .cgroup_cpu()
            .map(|_| started_at + next_cpu_check(Duration::ZERO, 0, cpu_limit_usec, false));
        // One timer serves the timeout, the kill grace and the drain grace: it is re-armed
        // for whichever comes first instead of a new timer per loop.
        let timer = tokio::time::sleep_until(deadline);
        tokio::pin!(timer);
        // Made once: a new one per pass would register with the token and leave again
        // each time. Polled only until it fires (then `stop` is set).
        let cancelled = self.cancel.cancelled();
        tokio::pin!(cancelled);
        let mut armed = deadline;
        loop {
            // Once the program has exited and its pipes are drained, the pump is done even
            // if events still wait for the socket: the caller reaps and cleans up first,
            // then delivers them, so a client that reads slowly holds no process, slot or
            // working directory.
            if exited_at.is_some() && pipes.iter().all(|p| !p.is_open()) {
                break;
            }
            if pending.len() > 1 || exited_at.is_some() {
                hold_until = None;
            }
            // Events go out as soon as the ring has room: checked here, under the lock
            // that publishes, instead of in another pass through the select below (the
            // common case, one event per read, then costs one pass per read).
            if hold_until.is_none() && !pending.is_empty() {
                stream.publish_with_room(&mut pending);
            }
            // Reading pauses while events wait for the socket, except the held `started`,
            // and after the exit, when what is left in the pipes is bounded (DRAIN_LIMIT).
            let can_read = pending.is_empty() || hold_until.is_some() || exited_at.is_some();
            let running = exited_at.is_none();
            let next_wake = [
                (stop.is_none() && running).then_some(deadline),
                cpu_check_at.filter(|_| running && (stop.is_none() || cpu_in_grace(stop, kill_at))),
                kill_at.filter(|_| running),
                drain_at.filter(|_| can_read),
                hold_until,
                line_wait,
            ]
            .into_iter()
            .flatten()
            .min();
            if let Some(at) = next_wake.filter(|at| *at != armed) {
                timer.as_mut().reset(at);
                armed = at;
            }
            let which = tokio::select! {
                biased;
                () = stream.room(), if !pending.is_empty() && hold_until.is_none() => {
                    if let Some(event) = pending.pop_front() {
                        stream.publish(event);
                    }
                    continue;
                }
                () = &mut cancelled, if stop.is_none() && running => {
                    stop = Some(Stop::Cancelled);
                    child.interrupt();
                    kill_at = Some(Instant::now() + self.ctx.kill_grace);
                    continue;
                }
                chunk = stdin.next_chunk(), if stdin.is_idle() => {
                    match chunk {
                        Some(chunk) => stdin.start(chunk),
                        None => stdin.close(),
                    }
                    continue;
                }
                () = watch_hit(limit_watch.as_ref()), if limit_watch.is_some() && stop.is_none() && running => {
                    let report = child.cgroup_limits_hit();
                    match report.and_then(|r| cgroup_stop(&r, limits.cpu_ms)) {
                        Some(hit) => {
                            stop = Some(hit);
                            child.kill();
                            limit_watch = None;
                        }
                        None => {
                            if let Some(watch) = &limit_watch {
                                watch.rearm();
                            }
                        }
                    }
                    continue;
                }
                () = child.exited(), if running => {
                    exited_at = Some(Instant::now());
                    // Whatever the program left running in its group goes with it.
                    child.after_exit();
                    drain_at = Some(Instant::now() + DRAIN_GRACE);
                    continue;
                }
                () = &mut timer, if next_wake.is_some() => {
                    let now = Instant::now();
                    if running && kill_at.is_some_and(|at| at <= now) {
                        child.kill();
                        kill_at = None;
                    }
                    if running && stop.is_none() && deadline <= now {
                        stop = Some(Stop::Timeout);
                        stop_for_limit(child, &mut kill_at, self.ctx.kill_grace);
                    }
                    let checks_cpu = stop.is_none() || cpu_in_grace(stop, kill_at);
                    if running && checks_cpu && cpu_check_at.is_some_and(|at| at <= now) {
                        cpu_check_at = None;
                        if let Some(cpu) = child.cgroup_cpu() {
                            // During a cell's grace after its CPU stop, it may use at most
                            // a margin more before it is killed: the grace is for the
                            // interrupt to land, not for CPU time.
                            let over_margin = cpu_limit_usec.saturating_add(cpu_grace_margin_usec(cpu_limit_usec));
                            if stop.is_none() && cpu.used_usec >= cpu_limit_usec {
                                stop = Some(Stop::Cpu);
                                // A cell is interrupted first, as for its timeout.
                                stop_for_limit(child, &mut kill_at, self.ctx.kill_grace);
                            } else if stop.is_some() && cpu.used_usec >= over_margin {
                                child.kill();
                                kill_at = None;
                            }
                            let elapsed = now.saturating_duration_since(started_at);
                            let wait = if stop.is_some() {
                                next_cpu_check(elapsed, cpu.used_usec, over_margin, true)
                            } else {
                                next_cpu_check(elapsed, cpu.used_usec, cpu_limit_usec, cpu.heavy)
                            };
                            cpu_check_at = Some(now + wait);
                        }
                    }
                    if hold_until.is_some_and(|at| at <= now) {
                        hold_until = None;
                    }
                    if line_wait.is_some_and(|at| at <= now) {
                        line_wait = None;
                        for pipe in pipes.iter_mut() {
                            pipe.queue_buffered(id, encoding, &mut pending);
                        }
                    }
                    if !(can_read && drain_at.is_some_and(|at| at <= now)) {
                        continue;
                    }
                    None
                }
                r = pipes[0].readable(), if can_read && pipes[0].is_open() => Some((0, r)),
                r = pipes[1].readable(), if can_read && pipes[1].is_open() => Some((1, r)),
            };
            // Either a pipe is readable, or the drain grace is over and each pipe gets one
            // last non-blocking read before it is closed.
            let (candidates, draining): (&[usize], bool) = match which {
                Some((0, _)) => (&[0], false),
                Some(_) => (&[1], false),
                None => (&[0, 1], true),
            };
            for &index in candidates {
                let may_read = can_read
                    && (exited_at.is_some() || pending.len() <= usize::from(hold_until.is_some()));
                if !pipes[index].is_open() || !may_read {
                    continue;
                }
                let pipe = &mut pipes[index];
                match pipe.read_available(exited_at.is_some()) {
                    Read::Data(n) => {
                        first_output_at.get_or_insert_with(Instant::now);
                        let take = n.min(usize::try_from(budget).unwrap_or(usize::MAX));
                        budget -= take as u64;
                        pipe.delivered += take as u64;
                        // Bytes past the budget are dropped unread by anyone.
                        let keep = pipe.buf.len() - (n - take);
                        pipe.buf.truncate(keep);
                        let waits =
                            take == n && running && stop.is_none() && pipe.may_wait_for_line();
                        // The other stream's waiting piece was written first: it goes now,
                        // so at most one stream waits and the two keep their order.
                        pipes[1 - index].queue_buffered(id, encoding, &mut pending);
                        if waits {
                            line_wait.get_or_insert_with(|| Instant::now() + LINE_WAIT);
                        } else {
                            pipes[index].queue_buffered(id, encoding, &mut pending);
                        }
                        if pipes[index].kind == EventKind::Stderr
                            && network_watch
                                .as_mut()
                                .is_some_and(|watch| watch.after_stderr(Instant::now()))
                        {
                            // After the output read so far, waiting pieces included.
                            pipes[1 - index].queue_buffered(id, encoding, &mut pending);
                            pipes[index].queue_buffered(id, encoding, &mut pending);
                            pending.push_back(Event::network_blocked(id, NETWORK_BLOCKED_MESSAGE));
                        }
                        let pipe = &mut pipes[index];
                        if exited_at.is_some() {
                            pipe.after_exit += take as u64;
                            if pipe.after_exit > DRAIN_LIMIT {
                                // Something outside the group still writes: stop listening.
                                pipe.close(id, encoding, &mut pending);
                            }
                        }
                        if take < n {
                            // Past the limit: exactly the budget is delivered, nothing after.
                            stop.get_or_insert(Stop::Output);
                            stop_for_limit(child, &mut kill_at, self.ctx.kill_grace);
                            for pipe in pipes.iter_mut() {
                                pipe.close(id, encoding, &mut pending);
                            }
                        }
                    }
                    Read::Eof => pipe.close(id, encoding, &mut pending),
                    Read::Empty if draining => pipe.close(id, encoding, &mut pending),
                    Read::Empty => {}
                }
            }
            if draining && pipes.iter().all(|p| !p.is_open()) {
                drain_at = None;
            }
        }
        if let Some(watch) = &network_watch {
            watch.finish();
        }
        PumpResult {
            stop,
            exited_at: exited_at.unwrap_or_else(Instant::now),
            first_output_at,
            undelivered: pending,
        }
    }
}

/// Resolves when the watch fires (never without one).
async fn watch_hit(watch: Option<&LimitWatch>) {
    match watch {
        Some(watch) => watch.hit().await,
        None => std::future::pending().await,
    }
}

/// True while a cell stopped for its CPU time waits out its kill grace: its CPU time is
/// still read, and it is killed past [`cpu_grace_margin_usec`] more.
fn cpu_in_grace(stop: Option<Stop>, kill_at: Option<Instant>) -> bool {
    matches!(stop, Some(Stop::Cpu)) && kill_at.is_some()
}

/// What a cell interrupted for its CPU time may use on top of its limit before the
/// interrupt lands: half the limit, at least 1 s. Python raises the interrupt only once
/// a C call returns, so a tighter margin would kill (and lose the state of) ordinary
/// cells in the middle of a long call; a looser one would let threads that ignore the
/// interrupt run on for the whole grace.
fn cpu_grace_margin_usec(limit_usec: u64) -> u64 {
    (limit_usec / 2).max(1_000_000)
}

/// Stops a program that hit a limit: a process is killed at once; a cell is
/// interrupted, and its interpreter killed if it has not stopped after `grace`.
fn stop_for_limit(child: &Program, kill_at: &mut Option<Instant>, grace: std::time::Duration) {
    if child.stops_gently() {
        child.interrupt();
        kill_at.get_or_insert(Instant::now() + grace);
    } else {
        child.kill();
    }
}

/// How the pump ended.
pub(super) struct PumpResult {
    pub(super) stop: Option<Stop>,
    pub(super) exited_at: Instant,
    pub(super) first_output_at: Option<Instant>,
    /// Events read but not yet taken by the socket, in order.
    pub(super) undelivered: VecDeque<Event>,
}
