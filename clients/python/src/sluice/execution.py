"""A running execution: its events, its input, and how it ended.

:class:`Execution` is returned by :meth:`SandboxClient.execute
<sluice.SandboxClient.execute>`. Iterate it for the execution's events, or
call :meth:`Execution.wait` for an :class:`ExecutionResult`; both can be
mixed, and the result always holds all of the output.
:class:`ExecutionStream` is what ``execute_code_stream`` returns: the events
alone, with the execution cancelled when the caller leaves the loop early.
"""

from __future__ import annotations

import contextlib
from collections.abc import Coroutine
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from ._buffer import EventBuffer
from ._connection import Connection, Route
from .errors import ExecutionCancelled, ExecutionError, FrameError, LimitExceeded, NonZeroExit
from .events import (
    CANCELLED,
    COMPLETED,
    DISPLAY,
    ERROR,
    FILES_CHANGED,
    RESOURCE_LIMIT,
    RESULT,
    STARTED,
    STDERR,
    STDOUT,
    UPDATE_DISPLAY,
    CellException,
    FileChanges,
    StreamEvent,
    Usage,
    synthetic_event,
)


@dataclass(frozen=True)
class ExecutionResult:
    """How an execution ended, with everything it wrote.

    ``status`` is the type of its terminal event: ``completed``,
    ``cancelled``, ``resource_limit`` or ``error``. ``files_changed`` is what
    it changed in its session's workspace, from the ``files_changed`` event
    before its terminal one (None when it changed nothing, or has no workspace).

    Rich output: ``displays`` holds the execution's ``display`` and
    ``update_display`` events, in the order they came. An update replaces what
    the session showed under its ``display_id``: a display of this execution,
    or of an earlier one in the same session (a handle kept from one cell and
    updated in the next). ``value`` is its ``result`` event, the value of a
    persistent cell's last expression (``value.data`` its text,
    ``value.mime("text/html")`` a richer form, ``value.execution_count`` the
    cell's number); None when that value was None or there was no last
    expression, and for a program that wrote no result record (it has the
    last one it wrote otherwise).
    """

    id: str
    session: str | None
    status: str
    stdout_bytes: bytes
    stderr_bytes: bytes
    exit_code: int | None
    signal: int | None
    usage: Usage | None
    limit: str | None
    limit_value: int | None
    limit_observed: int | None
    error_code: str | None
    message: str
    terminal: StreamEvent
    files_changed: FileChanges | None = None
    displays: tuple[StreamEvent, ...] = ()
    value: StreamEvent | None = None

    @property
    def stdout(self) -> str:
        """Standard output as text (invalid UTF-8 replaced)."""
        return self.stdout_bytes.decode("utf-8", errors="replace")

    @property
    def stderr(self) -> str:
        """Standard error as text (invalid UTF-8 replaced)."""
        return self.stderr_bytes.decode("utf-8", errors="replace")

    @property
    def exception(self) -> CellException | None:
        """The exception a persistent cell raised (``ename``, ``evalue``,
        ``traceback``), from its terminal event; None otherwise."""
        return self.terminal.exception

    @property
    def execution_count(self) -> int | None:
        """A persistent cell's number in its interpreter (from 1), from its
        terminal event; None for a program."""
        return self.terminal.execution_count

    @property
    def ok(self) -> bool:
        """The program ran to its end and exited with status 0."""
        return self.status == COMPLETED and self.exit_code == 0

    def check(self) -> ExecutionResult:
        """Returns the result if :attr:`ok`, else raises the matching
        :class:`~sluice.errors.ExecutionFailed` subclass."""
        if self.status == ERROR:
            raise ExecutionError(self.error_code or "unknown", self.message, self)
        if self.status == RESOURCE_LIMIT:
            raise LimitExceeded(self.limit or "unknown", self.limit_value, self)
        if self.status == CANCELLED:
            raise ExecutionCancelled(self.message or "execution cancelled", self)
        if not self.ok:
            raise NonZeroExit(self.exit_code, self.signal, self)
        return self


class Execution:
    """A handle on one execution; iterate it (``async for``) for its events.

    The iteration ends after the terminal event (``completed``,
    ``cancelled``, ``resource_limit`` or ``error``). A ``gap`` event (with
    ``id`` None) may come before it when events were lost. In a session with a
    workspace, a ``files_changed`` event (with this execution's ``id``) comes
    just before it when the execution changed anything there. Rich output
    (``display``, ``update_display``, ``result`` events, with a ``bundle``)
    comes in its place among ``stdout`` and ``stderr``.
    """

    def __init__(self, connection: Connection, route: Route) -> None:
        self._connection = connection
        self._route = route
        assert route.buffer is not None
        self._buffer: EventBuffer = route.buffer
        self._stdout = bytearray()
        self._stderr = bytearray()
        self._terminal: StreamEvent | None = None
        self._pid: int | None = None
        self._changes: FileChanges | None = None
        self._displays: list[StreamEvent] = []
        self._value: StreamEvent | None = None

    @property
    def id(self) -> str:
        """The execution id."""
        return self._route.id

    @property
    def session(self) -> str | None:
        """Its session: the one it was started in, or the gateway-made one once
        its first event has arrived."""
        return self._route.session

    @property
    def pid(self) -> int | None:
        """The program's process id, once ``started`` has been read."""
        return self._pid

    @property
    def tty(self) -> bool:
        """It was started with ``tty=True``: it runs on a terminal (see :meth:`resize`)."""
        return self._route.tty

    @property
    def done(self) -> bool:
        """The terminal event has been read."""
        return self._terminal is not None

    def __aiter__(self) -> Execution:
        return self

    async def __anext__(self) -> StreamEvent:
        if self._terminal is not None:
            raise StopAsyncIteration
        event = await self._buffer.get()
        if event is None:
            raise StopAsyncIteration
        self._record(event)
        return event

    def _record(self, event: StreamEvent) -> None:
        if event.type == STARTED:
            self._pid = event.pid
        elif event.type == STDOUT:
            self._stdout += event.raw_bytes()
        elif event.type == STDERR:
            self._stderr += event.raw_bytes()
        elif event.type == FILES_CHANGED:
            self._changes = event.changes
        elif event.type in (DISPLAY, UPDATE_DISPLAY):
            self._displays.append(event)
        elif event.type == RESULT:
            self._value = event
        elif event.is_terminal:
            self._terminal = event

    async def send_stdin(self, data: str, *, eof: bool = False) -> None:
        """Writes ``data`` to the program's standard input (then closes it if
        ``eof``). Raises :class:`~sluice.SluiceError` once the execution has ended.

        On a terminal (``tty=True``) ``data`` is typed: ``"\\r"`` is Enter,
        ``"\\x03"`` Ctrl-C; ``eof`` types Ctrl-D (the end of one read), and input
        stays open: more may be sent after it."""
        await self._connection.send_stdin(self._route, data, eof)

    async def close_stdin(self) -> None:
        """Closes the program's standard input. On a terminal it types Ctrl-D
        instead (the program's read ends) and input stays open."""
        await self._connection.send_stdin(self._route, None, True)

    async def resize(self, cols: int, rows: int) -> bool:
        """Gives the execution's terminal ``cols`` columns and ``rows`` rows (1 to
        1000 each); its program gets SIGWINCH. False (and nothing sent) if it
        has already ended: a window resized as the program ends is no error.

        Raises :class:`~sluice.FrameError` with code ``not_a_terminal`` if it was
        not started with ``tty=True`` (the gateway would refuse it so), and code
        ``bad_request`` for a size out of range."""
        if not self._route.tty:
            raise FrameError(
                "not_a_terminal",
                f"execution {self.id!r} does not run on a terminal: only an execution started with tty=True "
                "can be resized",
            )
        return await self._connection.resize(self._route, cols, rows)

    async def cancel(self) -> bool:
        """Asks the gateway to stop the execution; its terminal event (usually
        ``cancelled``) follows. False if it had already ended."""
        return self._connection.cancel(self._route)

    def abandon(self) -> None:
        """Stops reading this execution and cancels it if still running."""
        if self._terminal is None:
            self._connection.abandon(self._route)

    async def wait(self, *, check: bool = False) -> ExecutionResult:
        """Reads the remaining events and returns the result.

        Raises :class:`~sluice.ExecutionError` if the execution ended with an
        ``error`` event; with ``check=True`` also
        :class:`~sluice.LimitExceeded`, :class:`~sluice.ExecutionCancelled` and
        :class:`~sluice.NonZeroExit` for the other ways of not succeeding.
        """
        async for _ in self:
            pass
        terminal = self._terminal
        if terminal is None:
            # The stream ended without a terminal event: it was abandoned.
            raise ExecutionError("abandoned", "the execution was abandoned before it ended", self._result(None))
        result = self._result(terminal)
        if check or result.status == ERROR:
            result.check()
        return result

    def _result(self, terminal: StreamEvent | None) -> ExecutionResult:
        event = terminal or synthetic_event(ERROR, "abandoned", id=self.id, session=self.session, code="abandoned")
        return ExecutionResult(
            id=self.id,
            session=self.session,
            status=event.type,
            stdout_bytes=bytes(self._stdout),
            stderr_bytes=bytes(self._stderr),
            exit_code=event.exit_code,
            signal=event.signal,
            usage=event.usage,
            limit=event.limit,
            limit_value=event.limit_value,
            limit_observed=event.limit_observed,
            error_code=event.code,
            message=event.data,
            terminal=event,
            files_changed=self._changes,
            displays=tuple(self._displays),
            value=self._value,
        )


class ExecutionStream:
    """The events of one execution, as :meth:`SandboxClient.execute_code_stream
    <sluice.SandboxClient.execute_code_stream>` returns them: an async iterator
    (``async for``) that starts the execution on first use and ends after its
    terminal event.

    Leaving the loop early cancels the execution, with or without
    :meth:`aclose`. How: the loop holds the only reference to this object, so
    when it is left (``break``, ``return`` or an exception) CPython's reference
    counting finalizes the object at once, and :meth:`__del__` abandons the
    execution: its later events are dropped and a ``cancel`` frame is queued
    (PROTOCOL.md: the program is stopped and ends ``cancelled``). Where the
    object outlives the loop (kept in a variable, or on an interpreter without
    reference counting), call :meth:`aclose` or use ``async with`` to cancel at
    a known moment. A task cancelled while it waits for an event cancels the
    execution too.
    """

    def __init__(self, starting: Coroutine[Any, Any, Execution]) -> None:
        self._starting: Coroutine[Any, Any, Execution] | None = starting
        self._execution: Execution | None = None
        self._closed = False

    @property
    def execution(self) -> Execution | None:
        """The execution, once the iteration has started it."""
        return self._execution

    def __aiter__(self) -> ExecutionStream:
        return self

    async def __anext__(self) -> StreamEvent:
        if self._execution is None:
            if self._starting is None or self._closed:
                raise StopAsyncIteration
            starting, self._starting = self._starting, None
            self._execution = await starting
        try:
            return await self._execution.__anext__()
        except StopAsyncIteration:
            raise
        except BaseException:
            # Cancelled (or failed) while waiting: nobody will read the rest.
            self._leave()
            raise

    async def aclose(self) -> None:
        """Stops reading, and cancels the execution if it is still running."""
        self._leave()

    async def __aenter__(self) -> ExecutionStream:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._leave()

    def __del__(self) -> None:
        # The loop that iterated this object let go of it: cancel what it left.
        # At interpreter exit the event loop may be closed already: nothing to do then.
        with contextlib.suppress(RuntimeError):
            self._leave()

    def _leave(self) -> None:
        self._closed = True
        if self._starting is not None:
            # Never iterated: the execution was never started.
            self._starting.close()
            self._starting = None
        if self._execution is not None:
            self._execution.abandon()
