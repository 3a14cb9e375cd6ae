"""Reading a session's events with ``attach`` (PROTOCOL.md §7.3).

A :class:`SessionStream` delivers every event of a session after ``since``,
in order and once each, across reconnects. A session has no end of its own:
stop reading with :meth:`SessionStream.close` (or by leaving its ``async
with`` block).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from types import TracebackType

from ._buffer import EventBuffer
from ._connection import Connection, Subscriber
from .events import StreamEvent


class SessionStream:
    """The events of one session; an async iterator and an async context manager.

    The ``attach`` is sent when the stream is entered or first iterated;
    :class:`~sluice.AttachRefused` is raised then if the gateway refuses it. A
    ``gap`` event says which events this client will never receive. A
    ``files_changed`` event (``changes``) says what changed in the session's
    workspace: after an execution (with its ``id``, before its terminal event)
    or after a file request (``id`` None). Rich output (``display``,
    ``update_display``, ``result``) comes with its execution's ``id``; an
    ``update_display`` replaces what the session showed under its
    ``display_id``, which an earlier execution of the session may have shown.
    """

    def __init__(
        self,
        connect: Callable[[], Awaitable[Connection]],
        session: str,
        since: int | None,
        buffer_bytes: int,
        *,
        workspace: bool = False,
    ) -> None:
        self._connect = connect
        self._session = session
        self._since = since or 0
        self._buffer_bytes = buffer_bytes
        self._workspace = workspace
        self._subscriber: Subscriber | None = None
        self._connection: Connection | None = None

    @property
    def session(self) -> str:
        """The session's name or id."""
        return self._session

    @property
    def last_sequence(self) -> int:
        """The sequence of the last event delivered (or ``since``)."""
        return self._subscriber.last if self._subscriber is not None else self._since

    async def start(self) -> None:
        """Sends the ``attach`` and waits for the gateway's answer (idempotent)."""
        if self._subscriber is not None:
            return
        connection = await self._connect()
        subscriber = Subscriber(self._session, EventBuffer(self._buffer_bytes), self._since)
        self._connection, self._subscriber = connection, subscriber
        await connection.attach(subscriber, self._workspace)

    async def close(self) -> None:
        """Stops reading the session (the session and its executions go on)."""
        if self._connection is not None and self._subscriber is not None:
            self._connection.remove_subscriber(self._subscriber)

    def __aiter__(self) -> SessionStream:
        return self

    async def __anext__(self) -> StreamEvent:
        await self.start()
        assert self._subscriber is not None
        event = await self._subscriber.buffer.get()
        if event is None:
            raise StopAsyncIteration
        return event

    async def __aenter__(self) -> SessionStream:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
