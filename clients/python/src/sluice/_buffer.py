"""A byte-bounded, single-consumer event buffer.

The connection's reader never waits for a consumer: it appends each event to
the buffer of the execution or session stream it is for. A buffer refuses an
event that would take it over its byte budget while older events are still
unread, so memory stays bounded and one slow consumer never holds up others.
"""

from __future__ import annotations

import asyncio
from collections import deque

from .events import StreamEvent

#: What an event costs in a buffer besides its data.
EVENT_OVERHEAD_BYTES = 256


class EventBuffer:
    """Events for one consumer, in order, bounded in bytes."""

    def __init__(self, max_bytes: int) -> None:
        self._events: deque[StreamEvent] = deque()
        self._bytes = 0
        self._max_bytes = max(1, max_bytes)
        self._wakeup = asyncio.Event()
        self._finished = False
        self._failure: BaseException | None = None

    @property
    def max_bytes(self) -> int:
        """The budget: most bytes of unread events."""
        return self._max_bytes

    @property
    def finished(self) -> bool:
        """No event will be added any more."""
        return self._finished

    def push(self, event: StreamEvent) -> bool:
        """Appends ``event``; False (and nothing appended) when the buffer is
        over its budget. An event is always taken when the buffer is empty."""
        if self._finished:
            return True
        cost = len(event.data) + EVENT_OVERHEAD_BYTES
        if self._events and self._bytes + cost > self._max_bytes:
            return False
        self._events.append(event)
        self._bytes += cost
        self._wakeup.set()
        return True

    def finish(self, last: StreamEvent | None = None, failure: BaseException | None = None) -> None:
        """Appends ``last`` whatever the budget, then ends the buffer: once it
        is drained, :meth:`get` returns None, or raises ``failure``."""
        if self._finished:
            return
        if last is not None:
            self._events.append(last)
            self._bytes += len(last.data) + EVENT_OVERHEAD_BYTES
        self._failure = failure
        self._finished = True
        self._wakeup.set()

    async def get(self) -> StreamEvent | None:
        """The next event; None once the buffer is finished and drained."""
        while not self._events:
            if self._finished:
                if self._failure is not None:
                    raise self._failure
                return None
            self._wakeup.clear()
            await self._wakeup.wait()
        event = self._events.popleft()
        self._bytes -= len(event.data) + EVENT_OVERHEAD_BYTES
        return event
