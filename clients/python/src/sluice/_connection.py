"""The connection: the only owner of the WebSocket.

One task reads the socket and routes every event, without ever waiting, to the
buffer of the execution (:class:`Route`) or session stream (:class:`Subscriber`)
it is for; another writes the outbox. When the connection drops and a
:class:`ReconnectPolicy` is set, the connection reconnects with exponential
backoff and jitter, attaches again every session something here still reads
(``since`` = the last sequence every consumer of it has), sends again the
``execute`` frames the gateway may not have had, and carries on; consumers see
every event once, in order.

Duplicates are recognised by sequence: for each session the connection keeps
the highest sequence it has processed (its *position*), and an event at or
below it reaches only the session streams that have not seen it. With
reconnecting on, the connection acknowledges (``ack``) what it has processed,
whenever the socket has nothing more to read and at least every
:data:`ACK_EVERY_EVENTS` events, so the gateway keeps every event until it has
arrived here (PROTOCOL.md §7.5 and §9.3).

File requests (``write_file``, ``read_file``, ``list_files``, ``delete_file``)
carry a ``request`` id of this connection's making; their answers and refusals,
on the socket's own stream, repeat it and are routed by it (:class:`FileRequest`).
Queries of a session's interpreter (``complete``, ``inspect``) go the same way:
one answer each, by ``request``; like a read, a query the old socket did not
answer is asked again on the new one (asking twice changes nothing).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import itertools
import json
import logging
import random
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import websockets
from websockets.exceptions import ConnectionClosed, WebSocketException

from . import frames
from ._buffer import EventBuffer
from .errors import (
    AttachRefused,
    AuthenticationError,
    ClientClosed,
    FileRefused,
    FrameError,
    ProtocolError,
    QueryRefused,
    RestartRefused,
    RuntimesRefused,
    SluiceConnectionError,
    SluiceError,
)
from .events import (
    ATTACHED,
    COMPLETE_REPLY,
    ERROR,
    FILE_ANSWER_TYPES,
    FILE_DATA,
    FILE_DELETED,
    FILE_LIST,
    FILE_WRITTEN,
    GAP,
    INSPECT_REPLY,
    QUERY_ANSWER_TYPES,
    RESTARTED,
    RUNTIMES,
    STARTED,
    TERMINAL_TYPES,
    StreamEvent,
    decode_event,
    synthetic_event,
)
from .runtimes import Catalog, catalog_from_fields

log = logging.getLogger("sluice")

#: Acknowledge a session at least every this many events.
ACK_EVERY_EVENTS = 256

#: Largest piece of stdin data sent in one frame, in characters; JSON escaping
#: and UTF-8 keep such a frame well below the gateway's 1 MiB frame limit.
STDIN_CHUNK_CHARS = 128 * 1024

#: How many detached sessions are remembered, to drop their late events.
DETACHES_REMEMBERED = 256

#: Codes with which the gateway refuses an ``attach`` (``no_workspace``: one with
#: ``workspace`` on a gateway that keeps none).
_ATTACH_REFUSALS = ("unknown_session", "bad_request", "too_many_sessions", "not_permitted", "no_workspace")

#: The answer each file frame or query expects.
_FILE_ANSWERS = {
    "write_file": FILE_WRITTEN,
    "read_file": FILE_DATA,
    "list_files": FILE_LIST,
    "delete_file": FILE_DELETED,
    "complete": COMPLETE_REPLY,
    "inspect": INSPECT_REPLY,
}


class _Socket(Protocol):
    """What the connection needs of a websockets client connection."""

    async def send(self, message: str) -> None: ...

    async def close(self) -> None: ...

    def __aiter__(self) -> AsyncIterator[str | bytes]: ...


@dataclass
class ReconnectPolicy:
    """How the client reconnects after its connection drops.

    Attempt *n* (from 1) starts after a random delay between half and all of
    ``initial_delay * 2 ** (n - 1)`` seconds, capped at ``max_delay``; each
    attempt may take ``connect_timeout`` seconds. The client gives up after
    ``max_attempts`` failed attempts (no bound when None) or ``give_up_after``
    seconds, whichever comes first. Keep ``give_up_after`` below the gateway's
    session grace period (60 s by default): past it, sessions are gone anyway.
    """

    initial_delay: float = 0.1
    max_delay: float = 5.0
    give_up_after: float = 30.0
    max_attempts: int | None = None
    connect_timeout: float = 10.0

    def delay(self, attempt: int) -> float:
        """The delay before attempt ``attempt`` (from 1), before jitter."""
        return float(min(self.initial_delay * 2 ** min(attempt - 1, 30), self.max_delay))


@dataclass
class Options:
    """Settings of one connection (see :class:`~sluice.SandboxClient`)."""

    reconnect: ReconnectPolicy | None
    connect_timeout: float
    close_timeout: float
    execution_buffer_bytes: int
    session_buffer_bytes: int
    max_frame_bytes: int
    max_incoming_frame_bytes: int
    outbox_frames: int
    #: Not in the repr: it holds the credential (``Authorization``).
    headers: dict[str, str] = field(repr=False)


@dataclass(eq=False)
class Route:
    """Where the events of one running execution go."""

    id: str
    serial: int
    frame: str
    #: The session: named in the request, or the gateway-made one its first event names.
    session: str | None
    named: bool
    #: None once nobody reads the events (abandoned, or the consumer fell behind).
    buffer: EventBuffer | None
    confirmed: bool = False
    counted: bool = False
    sent: bool = False
    resent: bool = False
    cancel_sent: bool = False
    finished: bool = False
    #: Started with ``"tty": true``: it runs on a terminal, which ``resize`` may change.
    tty: bool = False


@dataclass(eq=False)
class Subscriber:
    """One session stream opened with ``attach``."""

    session: str
    buffer: EventBuffer
    #: The last sequence delivered (or the ``since`` it asked for).
    last: int
    #: The gateway answered its ``attach``: later events are for it.
    confirmed: bool = False


@dataclass(eq=False)
class FileRequest:
    """One file frame or query (``complete``, ``inspect``) on its way: sent (or
    queued) and not fully answered yet."""

    request: str
    operation: str
    session: str
    path: str
    #: The frame, with ``request``; a ``read_file`` is rebuilt from where it got to.
    frame: dict[str, Any]
    #: Set to the last answer (a ``read_file``'s last chunk), or to the refusal.
    future: asyncio.Future[StreamEvent]
    #: Written to a socket (else still in the outbox).
    sent: bool = False
    #: ``read_file``: the bytes so far, where the next chunk starts, what is left to read.
    chunks: list[bytes] = field(default_factory=list)
    next_offset: int = 0
    remaining: int | None = None

    @property
    def done(self) -> bool:
        return self.future.done()

    def resumable(self) -> bool:
        """Asking again on a new socket cannot do twice what the first did: a
        read, a list or a query (not a write, nor a delete: clients/CONTRACT.md)."""
        return self.operation in ("read_file", "list_files", *frames.QUERY_FRAME_TYPES)

    def again(self) -> dict[str, Any]:
        """The frame to send on a new socket: a read asks only for what is left."""
        frame = dict(self.frame)
        if self.operation == "read_file":
            frame.pop("offset", None)
            if self.next_offset:
                frame["offset"] = self.next_offset
            if self.remaining is not None:
                frame["length"] = self.remaining
        return frame


@dataclass
class _SessionState:
    position: int | None = None
    acked: int = 0
    unacked_events: int = 0
    routes: int = 0
    subscribers: list[Subscriber] = field(default_factory=list)
    #: Made by the gateway for one of our executions: forgotten once it has ended.
    ephemeral: bool = False
    #: Read until the client closes (a persistent interpreter lives here).
    keep: bool = False

    def restart(self, since: int) -> None:
        self.position = since
        self.acked = 0
        self.unacked_events = 0


@dataclass
class _PendingAttach:
    since: int
    waiters: list[Subscriber]
    future: asyncio.Future[None] | None
    resume: bool
    answered: asyncio.Event = field(default_factory=asyncio.Event)
    #: Sent with ``"workspace": true``: once answered, the session is kept attached.
    workspace: bool = False


@dataclass
class _Outgoing:
    text: str
    route: Route | None = None
    kind: str = "other"
    #: For a stdin frame: (data, eof), to rebuild it with the session after a reconnect.
    stdin: tuple[str | None, bool] | None = None
    #: For a resize frame: (cols, rows), to rebuild it with the session after a reconnect.
    resize: tuple[int, int] | None = None
    #: For a file frame: its request, marked sent once written.
    file: FileRequest | None = None


def _connect_kwargs(options: Options, timeout: float) -> dict[str, Any]:
    return {
        "subprotocols": ["sluice.v1"],
        "open_timeout": timeout,
        "close_timeout": options.close_timeout,
        "max_size": options.max_incoming_frame_bytes,
        # websockets >= 13 calls it additional_headers; 12 called it extra_headers.
        _HEADERS_ARGUMENT: options.headers or None,
    }


def _find_connect() -> tuple[Any, str]:
    """websockets' client ``connect`` and the name of its headers argument:
    the asyncio implementation of websockets >= 13, else the legacy one of 12."""
    try:
        from websockets.asyncio.client import connect
    except ImportError:  # pragma: no cover - websockets 12
        return websockets.connect, "extra_headers"
    return connect, "additional_headers"


_ws_connect, _HEADERS_ARGUMENT = _find_connect()


def _refusal_reason(err: BaseException) -> str | None:
    """The gateway's reason when ``err`` is an HTTP 401 answer to the upgrade
    (the first line of its body), else None."""
    # websockets >= 14: InvalidStatus with the response; 12 and 13's legacy
    # client: InvalidStatusCode with only the status.
    response = getattr(err, "response", None)
    status = getattr(response, "status_code", None) if response is not None else getattr(err, "status_code", None)
    if status != 401:
        return None
    body = getattr(response, "body", None) or b""
    # websockets gives the body as bytes or (newer versions) a bytearray.
    text = bytes(body).decode("utf-8", "replace") if isinstance(body, (bytes, bytearray)) else str(body)
    for line in text.splitlines():
        if line.strip():
            return line.strip()[:500]
    return "HTTP 401 Unauthorized (no reason given)"


async def open_socket(url: str, options: Options, timeout: float) -> _Socket:
    """Opens a WebSocket to the gateway; raises :class:`SluiceConnectionError`,
    or :class:`AuthenticationError` when the gateway refuses the credential."""

    async def attempt() -> _Socket:
        socket: _Socket = await _ws_connect(url, **_connect_kwargs(options, timeout))
        return socket

    try:
        return await asyncio.wait_for(attempt(), timeout)
    except asyncio.TimeoutError:
        raise SluiceConnectionError(f"could not connect to {_redacted(url)} within {timeout:g} s") from None
    except (OSError, WebSocketException) as err:
        reason = _refusal_reason(err)
        if reason is not None:
            raise AuthenticationError(reason) from None
        raise SluiceConnectionError(f"could not connect to {_redacted(url)}: {err}") from err


def _redacted(url: str) -> str:
    """`url` with the value of a `token` query parameter replaced, for messages."""
    base, sep, query = url.partition("?")
    if not sep:
        return url
    pairs = ["token=REDACTED" if pair.startswith("token=") else pair for pair in query.split("&")]
    return base + "?" + "&".join(pairs)


class Connection:
    """A connection to one gateway, across reconnects."""

    def __init__(self, url: str, options: Options, socket: _Socket) -> None:
        self._url = url
        self._options = options
        self._socket: _Socket | None = socket
        self._outbox: deque[_Outgoing] = deque()
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._drained = asyncio.Event()
        self._drained.set()
        self._stop = asyncio.Event()
        self._routes: dict[str, Route] = {}
        self._sessions: dict[str, _SessionState] = {}
        self._attaches: dict[str, _PendingAttach] = {}
        #: ``runtimes`` frames sent and not answered yet, oldest first.
        self._runtimes_asked: deque[asyncio.Future[Catalog]] = deque()
        # ``restart`` frames sent and not answered, by session, oldest first.
        self._restarts: dict[str, deque[asyncio.Future[None]]] = {}
        #: File requests not fully answered, by request id, oldest first.
        self._files: dict[str, FileRequest] = {}
        self._requests = itertools.count(1)
        self._detaching: deque[str] = deque(maxlen=DETACHES_REMEMBERED)
        self._unacked: set[str] = set()
        self._acks = options.reconnect is not None
        self._closing = False
        self._end: SluiceConnectionError | None = None
        #: A reconnect the gateway refused for its credential (ends the connection).
        self._refused: AuthenticationError | None = None
        self._serials = itertools.count(1)
        self._task = asyncio.create_task(self._run(), name="sluice-connection")

    # ------------------------------------------------------------------ state

    @property
    def closed(self) -> bool:
        """The connection is closing or has ended for good."""
        return self._closing or self._end is not None

    def check_open(self) -> None:
        """Raises if no new request can be made."""
        if self._end is not None:
            raise self._end
        if self._closing:
            raise ClientClosed("the client is closed")

    def route(self, id: str) -> Route | None:
        """The running execution ``id``, if any."""
        return self._routes.get(id)

    # ------------------------------------------------------------- requests

    async def execute(self, id: str, frame: dict[str, Any], persistent: bool) -> Route:
        """Registers an execution and queues its ``execute`` frame. A session
        with a persistent interpreter or a workspace is kept attached until the
        client closes."""
        if self._acks:
            # Acknowledging from the first event on: what the gateway writes before
            # the first ``ack`` arrives survives a cut too.
            frame = {**frame, "ack": True}
        text = self._encode(frame)
        await self._wait_for_room()
        if id in self._routes:
            raise FrameError("duplicate_id", f"execution {id!r} is still running on this client")
        session = frame.get("session")
        route = Route(
            id=id,
            serial=next(self._serials),
            frame=text,
            session=session,
            named=session is not None,
            buffer=EventBuffer(self._options.execution_buffer_bytes),
            tty=frame.get("tty") is True,
        )
        self._routes[id] = route
        if session is not None:
            state = self._sessions.setdefault(session, _SessionState())
            state.keep = state.keep or persistent or frame.get("workspace") is True
        self._enqueue(_Outgoing(text, route, "execute"))
        return route

    async def send_stdin(self, route: Route, data: str | None, eof: bool) -> None:
        """Queues input for a running execution (split into several frames when large)."""
        pieces: list[str | None] = [None]
        if data is not None:
            pieces = [data[i : i + STDIN_CHUNK_CHARS] for i in range(0, len(data), STDIN_CHUNK_CHARS)] or [""]
        for index, piece in enumerate(pieces):
            last = index == len(pieces) - 1
            await self._wait_for_room()
            if route.finished or self._routes.get(route.id) is not route:
                raise SluiceError(f"execution {route.id!r} has already ended")
            frame = frames.stdin_frame(route.id, route.session, piece, eof and last)
            self._enqueue(_Outgoing(self._encode(frame), route, "stdin", (piece, eof and last)))

    async def resize(self, route: Route, cols: int, rows: int) -> bool:
        """Queues a ``resize`` of a running terminal execution; False if it has
        already ended."""
        # Checked first, so a bad size is a FrameError even while the outbox is full.
        frames.validate_frame(frames.resize_frame(route.id, route.session, cols, rows))
        if route.finished or self._routes.get(route.id) is not route:
            return False
        await self._wait_for_room()
        if route.finished or self._routes.get(route.id) is not route:
            return False
        frame = frames.resize_frame(route.id, route.session, cols, rows)
        self._enqueue(_Outgoing(self._encode(frame), route, "resize", resize=(cols, rows)))
        return True

    def cancel(self, route: Route) -> bool:
        """Queues a ``cancel`` once; False if the execution has already ended."""
        if route.finished or self._routes.get(route.id) is not route:
            return False
        if not route.cancel_sent and not self._closing:
            route.cancel_sent = True
            self._enqueue(_Outgoing(self._encode(frames.cancel_frame(route.id, route.session))))
        return True

    def abandon(self, route: Route) -> None:
        """Nobody will read this execution's events: drop them and cancel it."""
        if route.buffer is not None:
            route.buffer.finish()
            route.buffer = None
        if self._end is None:
            self.cancel(route)

    async def attach(self, subscriber: Subscriber, workspace: bool = False) -> None:
        """Starts delivering ``subscriber.session``'s events after
        ``subscriber.last``; returns once the gateway has answered. With
        ``workspace``, the attach opens the session with a workspace (creating
        either as needed), and the session is kept attached until the client closes."""
        name = subscriber.session
        while name in self._attaches:
            # One attach of a session on its way at a time: its answer is the
            # only way to tell which events come after it.
            await self._attaches[name].answered.wait()
        self.check_open()
        fresh = not self._follows(name)
        state = self._sessions.setdefault(name, _SessionState())
        if fresh:
            state.restart(subscriber.last)
        state.subscribers.append(subscriber)
        since = self._resume_point(name)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._attaches[name] = _PendingAttach(since, [subscriber], future, resume=False, workspace=workspace)
        self._send_attach(name, since, workspace)
        try:
            await future
        except BaseException:
            self.remove_subscriber(subscriber)
            raise

    async def runtimes(self) -> Catalog:
        """Sends a ``runtimes`` frame and returns its answer (answers come in the
        order of the frames); asked again on a new socket after a reconnect."""
        await self._wait_for_room()
        self.check_open()
        future: asyncio.Future[Catalog] = asyncio.get_running_loop().create_future()
        self._runtimes_asked.append(future)
        self._enqueue(_Outgoing(self._encode(frames.runtimes_frame())))
        try:
            return await future
        finally:
            if future in self._runtimes_asked and not future.done():
                self._runtimes_asked.remove(future)

    async def restart(self, session: str) -> None:
        """Sends a ``restart`` frame and waits for the session's ``restarted``
        event (this client must read the session). Raises :class:`RestartRefused`
        when the gateway refuses it, and :class:`SluiceConnectionError` when the
        connection drops first (the restart may or may not have happened)."""
        text = self._encode(frames.restart_frame(session))
        if session not in self._sessions:
            raise FrameError(
                "bad_request",
                f"this client does not read session {session!r}: run a cell there or attach to it, "
                "so that the answer to the restart reaches it",
            )
        await self._wait_for_room()
        self.check_open()
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._restarts.setdefault(session, deque()).append(future)
        self._enqueue(_Outgoing(text))
        try:
            await future
        finally:
            waiting = self._restarts.get(session)
            if waiting is not None and future in waiting:
                waiting.remove(future)
                if not waiting:
                    del self._restarts[session]

    def _answer_restarts(self, name: str, outcome: BaseException | None) -> bool:
        """Answers the oldest ``restart`` of ``name`` still waiting."""
        waiting = self._restarts.get(name)
        while waiting:
            future = waiting.popleft()
            if future.done():
                continue
            if outcome is None:
                future.set_result(None)
            else:
                future.set_exception(outcome)
            return True
        return False

    def _fail_restarts(self, error: BaseException) -> None:
        for waiting in self._restarts.values():
            for future in waiting:
                if not future.done():
                    future.set_exception(error)
        self._restarts.clear()

    async def file_request(self, frame: dict[str, Any], prefix: str = "f") -> FileRequest:
        """Sends a file frame (``frame`` without its ``request``, which this
        connection gives it) and returns the request once fully answered: its
        ``future`` holds the last answer, a read's ``chunks`` the bytes. Raises
        :class:`FileRefused` when the gateway refuses it, :class:`FrameError`
        before sending when it would."""
        rid = f"{prefix}{next(self._requests)}"
        frame = {**frame, "request": rid}
        text = self._encode(frame)
        await self._wait_for_room()
        self.check_open()
        request = FileRequest(
            request=rid,
            operation=frame["type"],
            session=frame["session"],
            path=frame.get("path", ""),
            frame=frame,
            future=asyncio.get_running_loop().create_future(),
            next_offset=frame.get("offset", 0),
            remaining=frame.get("length"),
        )
        self._files[rid] = request
        self._enqueue(_Outgoing(text, kind="file", file=request))
        try:
            await request.future
        finally:
            # Answered, refused, or the caller stopped waiting: later answers are dropped.
            self._files.pop(rid, None)
        return request

    async def query(self, frame: dict[str, Any]) -> StreamEvent:
        """Sends a ``complete`` or ``inspect`` (``frame`` without its ``request``,
        which this connection gives it) and returns its answer, a
        ``complete_reply`` or ``inspect_reply``. This client must read the
        session (:class:`FrameError` before sending otherwise, as for a
        ``restart``). Raises :class:`QueryRefused` when the gateway refuses it;
        asked again on a new socket after a reconnect, and
        :class:`SluiceConnectionError` when the connection ends for good first."""
        session = frame["session"]
        self._encode({**frame, "request": "q"})
        self.check_open()
        if session not in self._sessions:
            raise FrameError(
                "unknown_session",
                f"this client does not read session {session!r}: run a persistent cell there or attach to it "
                f"before a {frame['type']}",
            )
        request = await self.file_request(frame, prefix="q")
        return request.future.result()

    def release(self, session: str) -> None:
        """Stops keeping ``session`` attached (a persistent interpreter or a
        workspace kept it): it is detached now if nothing here uses it, else
        once its last execution and stream are over."""
        state = self._sessions.get(session)
        if state is None:
            return
        state.keep = False
        self._release_if_unused(session)

    def remove_subscriber(self, subscriber: Subscriber) -> None:
        """Stops delivering to ``subscriber``; detaches its session if nothing
        else here reads it."""
        subscriber.buffer.finish()
        state = self._sessions.get(subscriber.session)
        if state is not None and subscriber in state.subscribers:
            state.subscribers.remove(subscriber)
        self._release_if_unused(subscriber.session)

    async def close(self) -> None:
        """Cancels what is still running, closes the socket and waits for the end."""
        if not self._closing and self._end is None:
            self._closing = True
            for route in list(self._routes.values()):
                if not route.cancel_sent:
                    route.cancel_sent = True
                    self._enqueue(_Outgoing(self._encode(frames.cancel_frame(route.id, route.session))))
            self._stop.set()
            socket = self._socket
            if socket is not None:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._drained.wait(), self._options.close_timeout)
                with contextlib.suppress(asyncio.TimeoutError, ConnectionClosed, OSError):
                    await asyncio.wait_for(socket.close(), self._options.close_timeout)
        try:
            await asyncio.wait_for(asyncio.shield(self._task), self._options.close_timeout)
        except asyncio.TimeoutError:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    # --------------------------------------------------------------- outbox

    def _encode(self, frame: dict[str, Any]) -> str:
        text = frames.encode(frame)
        size = len(text.encode("utf-8"))
        if size > self._options.max_frame_bytes:
            raise FrameError(
                "too_large",
                f"{frame['type']} frame of {size} bytes is over the {self._options.max_frame_bytes}-byte frame limit",
            )
        return text

    async def _wait_for_room(self) -> None:
        while True:
            self.check_open()
            if len(self._outbox) < self._options.outbox_frames:
                return
            self._room.clear()
            await self._room.wait()

    def _enqueue(self, item: _Outgoing) -> None:
        self._outbox.append(item)
        self._drained.clear()
        self._wake.set()

    async def _write_loop(self, socket: _Socket) -> None:
        try:
            while True:
                self._queue_acks()
                while self._outbox:
                    item = self._outbox[0]
                    await socket.send(item.text)
                    self._outbox.popleft()
                    if item.kind == "execute" and item.route is not None:
                        item.route.sent = True
                    elif item.file is not None:
                        item.file.sent = True
                    if len(self._outbox) < self._options.outbox_frames:
                        self._room.set()
                self._drained.set()
                self._wake.clear()
                if not self._unacked:
                    await self._wake.wait()
        except (ConnectionClosed, OSError) as err:
            # The reader sees the same end of the connection and handles it.
            log.debug("writing to the gateway failed: %s", err)

    # ----------------------------------------------------------- main loop

    async def _run(self) -> None:
        reason = "the connection ended"
        try:
            while True:
                socket = self._socket
                assert socket is not None
                reason = await self._serve(socket)
                self._socket = None
                if self._closing or self._options.reconnect is None:
                    break
                failure = await self._reconnect(self._options.reconnect, reason)
                if failure is not None:
                    reason = failure
                    break
        finally:
            self._finish(reason)

    async def _serve(self, socket: _Socket) -> str:
        writer = asyncio.create_task(self._write_loop(socket), name="sluice-writer")
        try:
            async for message in socket:
                if isinstance(message, bytes):
                    log.warning("the gateway sent a binary frame of %d bytes; ignored", len(message))
                    continue
                self._on_text(message)
            return "the gateway closed the connection"
        except ConnectionClosed as err:
            return f"the connection to the gateway was lost ({err})"
        except OSError as err:
            return f"reading from the gateway failed: {err}"
        finally:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer

    async def _reconnect(self, policy: ReconnectPolicy, reason: str) -> str | None:
        """Opens a new socket and resumes on it; returns why it gave up, or None."""
        log.info("%s; reconnecting", reason)
        loop = asyncio.get_running_loop()
        started = loop.time()
        attempts = 0
        last_error = "no attempt was made"
        while not self._closing:
            left = policy.give_up_after - (loop.time() - started)
            if left <= 0 or (policy.max_attempts is not None and attempts >= policy.max_attempts):
                break
            delay = policy.delay(attempts + 1)
            delay = min(random.uniform(delay / 2, delay), left)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)
            if self._closing:
                break
            attempts += 1
            timeout = max(0.001, min(policy.connect_timeout, policy.give_up_after - (loop.time() - started)))
            try:
                socket = await open_socket(self._url, self._options, timeout)
            except AuthenticationError as err:
                # Retrying cannot help: the key was revoked or the token expired.
                log.warning("reconnecting was refused: %s", err)
                self._refused = err
                return f"{reason}; reconnecting was refused: {err}"
            except SluiceConnectionError as err:
                last_error = str(err)
                log.debug("reconnect attempt %d failed: %s", attempts, err)
                continue
            log.info("reconnected to the gateway after %d attempt(s)", attempts)
            self._socket = socket
            self._resume()
            return None
        if self._closing:
            return "the client was closed while reconnecting"
        return (
            f"{reason}; gave up reconnecting after {attempts} attempt(s) in "
            f"{loop.time() - started:.1f} s (last: {last_error})"
        )

    def _resume(self) -> None:
        """Rebuilds the outbox for a new socket: attaches, unanswered executes,
        queued input and cancels."""
        old = self._outbox
        self._outbox = deque()
        self._unacked.clear()
        self._detaching.clear()
        pending = self._attaches
        self._attaches = {}
        for name, state in list(self._sessions.items()):
            waiting = pending.pop(name, None)
            confirmed = any(r.confirmed and r.session == name for r in self._routes.values())
            needed = confirmed or state.keep or any(s.confirmed for s in state.subscribers)
            state.acked = 0
            state.unacked_events = 0
            if not needed and waiting is None:
                if not any(r.session == name for r in self._routes.values()) and not state.subscribers:
                    del self._sessions[name]
                continue
            since = self._resume_point(name)
            workspace = waiting is not None and waiting.workspace
            self._attaches[name] = _PendingAttach(
                since,
                waiting.waiters if waiting else [],
                waiting.future if waiting else None,
                resume=needed,
                workspace=workspace,
            )
            self._send_attach(name, since, workspace)
        for waiting in pending.values():
            if waiting.future is not None and not waiting.future.done():
                waiting.future.set_exception(ClientClosed("the session stream was closed"))
            waiting.answered.set()
        # A restart the old socket did not answer may or may not have been done.
        self._fail_restarts(
            SluiceConnectionError(
                "the connection was lost before the restart was answered; it may or may not have happened"
            )
        )
        # ``runtimes`` questions the old socket did not answer are asked again.
        for _ in self._runtimes_asked:
            self._enqueue(_Outgoing(self._encode(frames.runtimes_frame())))
        self._resume_files()
        unsent = {id(item.route) for item in old if item.kind == "execute"}
        for route in sorted(self._routes.values(), key=lambda r: r.serial):
            if route.confirmed or id(route) in unsent:
                continue
            if route.named:
                # The gateway answers an id its session already knows from the
                # session, so the program never runs twice.
                route.resent = True
                self._enqueue(_Outgoing(route.frame, route, "execute"))
            else:
                message = (
                    "the connection to the gateway was lost before the gateway answered this "
                    "execution, which named no session: it may or may not have run and cannot "
                    "be resumed (name a session to make resubmitting safe)"
                )
                self._end_route(route, synthetic_event(ERROR, message, id=route.id, code="connection_lost"))
        for item in old:
            owner = item.route
            if owner is None or self._routes.get(owner.id) is not owner:
                continue
            if item.stdin is not None:
                data, eof = item.stdin
                frame = frames.stdin_frame(owner.id, owner.session, data, eof)
                item = _Outgoing(self._encode(frame), owner, "stdin", item.stdin)
            elif item.resize is not None:
                cols, rows = item.resize
                frame = frames.resize_frame(owner.id, owner.session, cols, rows)
                item = _Outgoing(self._encode(frame), owner, "resize", resize=item.resize)
            self._enqueue(item)
        for route in self._routes.values():
            if route.cancel_sent and (route.confirmed or route.named):
                self._enqueue(_Outgoing(self._encode(frames.cancel_frame(route.id, route.session))))
        if len(self._outbox) < self._options.outbox_frames:
            self._room.set()

    def _resume_files(self) -> None:
        """File requests on a new socket: those never written are sent; a read or
        list written and not (fully) answered is asked again (a read from where it
        got to); a write or delete fails, as it may or may not have been done."""
        for request in list(self._files.values()):
            if request.done:
                continue
            if request.sent and not request.resumable():
                self._files.pop(request.request, None)
                request.future.set_exception(
                    SluiceConnectionError(
                        f"the connection to the gateway was lost before it answered {request.operation} of "
                        f"{request.path!r:.80} in session {request.session!r}: it may or may not have been done"
                    )
                )
                continue
            frame = request.again() if request.sent else request.frame
            request.sent = False
            self._enqueue(_Outgoing(self._encode(frame), kind="file", file=request))

    def _finish(self, reason: str) -> None:
        """The connection is over: ends every consumer."""
        if self._closing:
            code, message = "client_closed", "the client was closed"
            self._end = ClientClosed(message)
        else:
            code, message = "connection_lost", reason
            self._end = self._refused or SluiceConnectionError(reason)
            log.warning("connection to the gateway ended: %s", reason)
        for route in list(self._routes.values()):
            self._end_route(route, synthetic_event(ERROR, message, id=route.id, session=route.session, code=code))
        self._routes.clear()
        for waiting in self._attaches.values():
            if waiting.future is not None and not waiting.future.done():
                waiting.future.set_exception(self._end)
            waiting.answered.set()
        self._attaches.clear()
        while self._runtimes_asked:
            asked = self._runtimes_asked.popleft()
            if not asked.done():
                asked.set_exception(self._end)
        self._fail_restarts(self._end)
        for request in self._files.values():
            if not request.done:
                request.future.set_exception(self._end)
        self._files.clear()
        failure = None if self._closing else self._end
        for state in self._sessions.values():
            for subscriber in state.subscribers:
                subscriber.buffer.finish(failure=failure)
        self._sessions.clear()
        self._outbox.clear()
        self._room.set()
        self._drained.set()

    # ------------------------------------------------------------ incoming

    def _on_text(self, text: str) -> None:
        try:
            event = decode_event(text)
        except ProtocolError as err:
            self._on_undecodable(text, err)
            return
        if event.session is None:
            self._on_socket_event(event)
        else:
            self._on_session_event(event.session, event)

    def _on_undecodable(self, text: str, err: ProtocolError) -> None:
        log.warning("undecodable frame from the gateway: %s", err)
        with contextlib.suppress(ValueError):
            obj = json.loads(text)
            # A lost terminal event would leave its execution waiting forever.
            id = obj.get("id") if isinstance(obj, dict) else None
            route = self._routes.get(id) if isinstance(id, str) else None
            if route is not None and obj.get("type") in TERMINAL_TYPES:
                message = f"the gateway's terminal {obj.get('type')} event could not be decoded: {err}"
                ended = synthetic_event(ERROR, message, id=route.id, session=route.session, code="protocol_error")
                self._end_route(route, ended)

    def _on_socket_event(self, event: StreamEvent) -> None:
        if event.type == RUNTIMES:
            self._answer_runtimes(event)
            return
        if event.request is not None and (
            event.type in FILE_ANSWER_TYPES or event.type in QUERY_ANSWER_TYPES or event.type == ERROR
        ):
            self._on_file_answer(event)
            return
        if (
            event.type == ERROR
            and event.id is None
            and event.for_session is None
            and event.code == "bad_request"
            and '"runtimes"' in event.data
            and self._runtimes_asked
        ):
            # A gateway older than the frame does not know its type.
            asked = self._runtimes_asked.popleft()
            if not asked.done():
                asked.set_exception(RuntimesRefused(event.code, event.data))
            return
        if (
            event.type == ERROR
            and event.id is None
            and event.for_session is not None
            and self._on_session_refusal(event.for_session, event)
        ):
            return
        if event.id is not None:
            route = self._routes.get(event.id)
            if route is not None and not route.confirmed:
                # An execute refused before it joined a session.
                self._deliver_to_route(route, event)
                return
        log.warning("gateway refused a frame (%s): %s", event.code, event.data)

    def _answer_runtimes(self, event: StreamEvent) -> None:
        if not self._runtimes_asked:
            return
        asked = self._runtimes_asked.popleft()
        if asked.done():
            return
        try:
            asked.set_result(catalog_from_fields(event.extra))
        except ProtocolError as err:
            asked.set_exception(err)

    def _on_file_answer(self, event: StreamEvent) -> None:
        assert event.request is not None
        request = self._files.get(event.request)
        if request is None or request.done:
            if event.type == ERROR:
                log.warning("gateway refused a file request (%s): %s", event.code, event.data)
            else:
                log.debug("%s answer to request %r that nothing here waits for; dropped", event.type, event.request)
            return
        if event.type == ERROR:
            code = event.code or "unknown"
            refused: SluiceError
            if request.operation in frames.QUERY_FRAME_TYPES:
                refused = QueryRefused(request.operation, request.session, code, event.data)
            else:
                refused = FileRefused(request.operation, request.session, request.path, code, event.data)
            self._file_done(request, refused)
            return
        expected = _FILE_ANSWERS[request.operation]
        if event.type != expected:
            problem = f"the gateway answered {request.operation} with {event.type}, not {expected}"
            self._file_done(request, ProtocolError(problem))
            return
        if event.type == FILE_DATA:
            if event.offset != request.next_offset:
                problem = f"file_data of {request.path!r:.80} starts at {event.offset}, not {request.next_offset}"
                self._file_done(request, ProtocolError(problem))
                return
            # Asked for in base64: exact bytes, or an error, never text taken for them.
            try:
                if event.encoding != "base64":
                    raise ValueError(f"its encoding is {event.encoding or 'utf8'}, not the base64 asked for")
                chunk = base64.b64decode(event.data, validate=True)
            except ValueError as err:
                self._file_done(request, ProtocolError(f"file_data of {request.path!r:.80} is not valid base64: {err}"))
                return
            request.chunks.append(chunk)
            request.next_offset += len(chunk)
            if request.remaining is not None:
                request.remaining = max(0, request.remaining - len(chunk))
            if not event.last:
                return
        self._file_done(request, event)

    def _file_done(self, request: FileRequest, outcome: StreamEvent | BaseException) -> None:
        self._files.pop(request.request, None)
        if request.done:
            return
        if isinstance(outcome, BaseException):
            request.future.set_exception(outcome)
        else:
            request.future.set_result(outcome)

    def _on_session_refusal(self, name: str, event: StreamEvent) -> bool:
        code = event.code
        if name in self._restarts and code in ("unknown_session", "not_permitted", "bad_request"):
            refused = RestartRefused(name, code or "unknown", event.data)
            if self._answer_restarts(name, refused):
                return True
        if code in _ATTACH_REFUSALS and name in self._attaches:
            # Refusals come in the order of the frames, and one attach of a
            # session is on its way at a time: this one answers it.
            self._attach_refused(name, event)
            return True
        if code == "unknown_session" and name in self._detaching:
            self._detaching.remove(name)
            return True
        if code in ("unknown_session", "too_many_sessions"):
            # An execute sent again after a reconnect that could not rejoin its session.
            waiting = [r for r in self._routes.values() if r.resent and not r.confirmed and r.session == name]
            if waiting:
                route = min(waiting, key=lambda r: r.serial)
                self._deliver_to_route(route, dataclasses.replace(event, id=route.id))
                return True
        return False

    def _on_session_event(self, name: str, event: StreamEvent) -> None:
        if event.type == ATTACHED:
            self._on_attached(name, event)
            return
        if name in self._attaches and not self._follows(name):
            # On its way from before the attach: not what the attach asks for.
            return
        if event.type == GAP:
            self._on_gap(name, event)
            return
        state = self._sessions.get(name)
        route: Route | None = None
        if event.id is not None:
            candidate = self._routes.get(event.id)
            if candidate is not None and (
                candidate.session == name or (candidate.session is None and state is None and not candidate.named)
            ):
                route = candidate
        if state is None:
            if route is None:
                if name not in self._detaching:
                    log.debug("event of session %r that nothing here reads; dropped", name)
                return
            state = self._sessions[name] = _SessionState(ephemeral=True)
        if state.position is None:
            state.position = event.sequence - 1
        if event.sequence > state.position + 1:
            log.warning(
                "events %d to %d of session %r are missing without a gap event",
                state.position + 1,
                event.sequence - 1,
                name,
            )
            gap = synthetic_event(
                GAP,
                f"events {state.position + 1} to {event.sequence - 1} did not arrive",
                session=name,
                missed_from=state.position + 1,
                resume_from=event.sequence,
            )
            self._on_gap(name, gap)
        self._deliver_to_subscribers(state, event)
        if event.sequence <= state.position:
            return  # a replay after a resume, or for a new session stream
        if event.type == RESTARTED:
            # Restarts asked while one is under way share its answer (PROTOCOL.md 4.10).
            while self._answer_restarts(name, None):
                pass
        state.position = event.sequence
        self._note_unacked(name, state)
        if route is not None:
            self._deliver_to_route(route, event)

    def _on_gap(self, name: str, gap: StreamEvent) -> None:
        state = self._sessions.get(name)
        if state is None or gap.resume_from is None or gap.missed_from is None:
            return
        last = gap.resume_from - 1
        for subscriber in list(state.subscribers):
            if subscriber.confirmed and subscriber.last < last:
                missed_from = max(gap.missed_from, subscriber.last + 1)
                subscriber.last = last
                self._push_to_subscriber(state, subscriber, dataclasses.replace(gap, missed_from=missed_from))
        if last <= (state.position or 0):
            return
        log.warning("events %d to %d of session %r were lost", gap.missed_from, last, name)
        state.position = last
        self._note_unacked(name, state)
        for route in list(self._routes.values()):
            if route.confirmed and route.session == name:
                self._push(route, dataclasses.replace(gap, id=None))

    def _on_attached(self, name: str, event: StreamEvent) -> None:
        waiting = self._attaches.pop(name, None)
        if waiting is None:
            if not self._in_use(name) and not self._closing:
                self._send_detach(name)
            return
        if event.sequence != waiting.since:
            log.warning("attached to %r after %d, not %d as asked", name, event.sequence, waiting.since)
        state = self._sessions.get(name)
        if waiting.workspace and state is not None:
            # A workspace lives as long as its session: read it until the client closes.
            state.keep = True
        for subscriber in waiting.waiters:
            subscriber.confirmed = True
        if waiting.future is not None and not waiting.future.done():
            waiting.future.set_result(None)
        waiting.answered.set()

    def _attach_refused(self, name: str, event: StreamEvent) -> None:
        waiting = self._attaches.pop(name)
        code = event.code or "unknown"
        state = self._sessions.get(name)
        for subscriber in waiting.waiters:
            if state is not None and subscriber in state.subscribers:
                state.subscribers.remove(subscriber)
            subscriber.buffer.finish(failure=AttachRefused(name, code, event.data))
        if waiting.future is not None and not waiting.future.done():
            waiting.future.set_exception(AttachRefused(name, code, event.data))
        waiting.answered.set()
        if waiting.resume:
            self._session_lost(name, code, event.data)
        elif not self._in_use(name):
            self._sessions.pop(name, None)
            self._unacked.discard(name)

    def _session_lost(self, name: str, code: str, message: str) -> None:
        text = f"could not resume session {name!r} after reconnecting: {code}: {message}"
        log.warning("%s", text)
        for route in list(self._routes.values()):
            if route.confirmed and route.session == name:
                self._end_route(route, synthetic_event(ERROR, text, id=route.id, session=name, code=code))
        state = self._sessions.pop(name, None)
        if state is not None:
            for subscriber in state.subscribers:
                subscriber.buffer.finish(failure=SluiceConnectionError(text))
        self._unacked.discard(name)

    # ------------------------------------------------------------ delivery

    def _deliver_to_subscribers(self, state: _SessionState, event: StreamEvent) -> None:
        for subscriber in list(state.subscribers):
            if subscriber.confirmed and event.sequence > subscriber.last:
                subscriber.last = event.sequence
                self._push_to_subscriber(state, subscriber, event)

    def _push_to_subscriber(self, state: _SessionState, subscriber: Subscriber, event: StreamEvent) -> None:
        if subscriber.buffer.push(event):
            return
        log.warning("the reader of session %r fell behind; its stream is ended", subscriber.session)
        subscriber.buffer.finish(
            synthetic_event(
                ERROR,
                f"the reader of session {subscriber.session!r} fell behind and was detached "
                f"(more than {subscriber.buffer.max_bytes} bytes of events were waiting)",
                session=subscriber.session,
                code="slow_consumer",
            )
        )
        state.subscribers.remove(subscriber)
        self._release_if_unused(subscriber.session)

    def _deliver_to_route(self, route: Route, event: StreamEvent) -> None:
        if not route.confirmed:
            route.confirmed = True
            if route.session is None:
                route.session = event.session
            state = self._sessions.get(route.session) if route.session is not None else None
            if state is not None:
                state.routes += 1
                route.counted = True
            # An execution's first event is `started` or the error that ends it.
            if event.type not in (STARTED, ERROR) and event.sequence > 1 and route.session is not None:
                self._push(
                    route,
                    synthetic_event(
                        GAP,
                        "the first events of this execution did not arrive",
                        session=route.session,
                        missed_from=1,
                        resume_from=event.sequence,
                    ),
                )
        self._push(route, event)

    def _push(self, route: Route, event: StreamEvent) -> None:
        if route.buffer is not None and not route.buffer.push(event):
            log.warning("the consumer of execution %r fell behind; cancelling it", route.id)
            route.buffer.finish(
                synthetic_event(
                    ERROR,
                    "the consumer of this execution fell behind: the client cancelled it "
                    f"(more than {route.buffer.max_bytes} bytes of events were waiting)",
                    id=route.id,
                    session=route.session,
                    code="slow_consumer",
                )
            )
            route.buffer = None
            if not event.is_terminal:
                self.cancel(route)
        if event.is_terminal:
            if route.buffer is not None:
                route.buffer.finish()
            self._remove_route(route)

    def _end_route(self, route: Route, event: StreamEvent) -> None:
        if route.buffer is not None:
            route.buffer.finish(event)
        self._remove_route(route)

    def _remove_route(self, route: Route) -> None:
        route.finished = True
        if self._routes.get(route.id) is route:
            del self._routes[route.id]
        if route.session is None:
            return
        state = self._sessions.get(route.session)
        if state is not None and route.counted:
            state.routes -= 1
        self._release_if_unused(route.session)

    # ----------------------------------------------------- sessions and acks

    def _follows(self, name: str) -> bool:
        """Something here reads ``name`` from its current position."""
        state = self._sessions.get(name)
        if state is None:
            return False
        return (
            state.routes > 0
            or any(r.session == name for r in self._routes.values())
            or any(s.confirmed for s in state.subscribers)
        )

    def _in_use(self, name: str) -> bool:
        state = self._sessions.get(name)
        return (
            name in self._attaches
            or any(r.session == name for r in self._routes.values())
            or (state is not None and (state.routes > 0 or bool(state.subscribers) or state.keep))
        )

    def _resume_point(self, name: str) -> int:
        """What every consumer of ``name`` has: the ``since`` to attach with."""
        state = self._sessions.get(name)
        if state is None or state.position is None:
            return 0
        return min([state.position, *(s.last for s in state.subscribers)])

    def _release_if_unused(self, name: str) -> None:
        state = self._sessions.get(name)
        if state is None or self._closing or self._in_use(name):
            return
        if state.ephemeral:
            # Acknowledged to its end, a finished gateway-made session is let go at once.
            if self._acks and state.position is not None and state.position > state.acked:
                self._enqueue(_Outgoing(self._encode(frames.ack_frame(name, state.position))))
            del self._sessions[name]
            self._unacked.discard(name)
            return
        self._send_detach(name)

    def _send_detach(self, name: str) -> None:
        self._sessions.pop(name, None)
        self._unacked.discard(name)
        self._detaching.append(name)
        self._enqueue(_Outgoing(self._encode(frames.detach_frame(name))))

    def _send_attach(self, name: str, since: int, workspace: bool = False) -> None:
        self._enqueue(_Outgoing(self._encode(frames.attach_frame(name, since, workspace, ack=self._acks))))
        if self._acks:
            # A socket that becomes the session's lead acknowledges from here on (said
            # again as a frame for a gateway older than ``attach``'s ``ack``).
            self._enqueue(_Outgoing(self._encode(frames.ack_frame(name, since))))
            state = self._sessions.get(name)
            if state is not None:
                state.acked = max(state.acked, since)

    def _note_unacked(self, name: str, state: _SessionState) -> None:
        if not self._acks:
            return
        state.unacked_events += 1
        self._unacked.add(name)
        if state.unacked_events >= ACK_EVERY_EVENTS:
            self._queue_acks()
        # The writer runs when the reader waits, that is when nothing more is
        # there to read: then it acknowledges what was processed.
        self._wake.set()

    def _queue_acks(self) -> None:
        for name in self._unacked:
            state = self._sessions.get(name)
            if state is None:
                continue
            state.unacked_events = 0
            point = self._resume_point(name)
            if point > state.acked:
                state.acked = point
                self._enqueue(_Outgoing(self._encode(frames.ack_frame(name, point))))
        self._unacked.clear()
