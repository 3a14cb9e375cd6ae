"""A thin synchronous wrapper for scripts that do not use asyncio.

:class:`SandboxClient` here runs the asyncio client on an event loop of its
own, in a background thread, and waits for each call's result::

    from sluice.sync import SandboxClient

    with SandboxClient("ws://127.0.0.1:7878/v1/ws") as client:
        for event in client.execute_code_stream("print('hi')"):
            print(event.type, event.data)
        print(client.run("print(6 * 7)").stdout)
"""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Coroutine, Iterator
from types import TracebackType
from typing import Any, TypeVar

from . import client as _async
from .events import StreamEvent
from .execution import ExecutionResult
from .frames import ExecuteOptions
from .runtimes import Catalog

if sys.version_info >= (3, 11):
    from typing import Unpack
else:  # pragma: no cover - Python 3.10
    from typing_extensions import Unpack

T = TypeVar("T")


class SandboxClient:
    """Blocking version of :class:`sluice.SandboxClient` (same constructor
    arguments). Not for use from inside a running event loop."""

    def __init__(self, url: str | None = None, token: str | None = None, **options: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="sluice-sync", daemon=True)
        self._thread.start()
        self._client = _async.SandboxClient(url, token, **options)
        self._closed = False

    def _call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def setup(self) -> None:
        """Connects to the gateway."""
        self._call(self._client.setup())

    def run(
        self, code: str, language: str = "python", *, check: bool = False, **options: Unpack[ExecuteOptions]
    ) -> ExecutionResult:
        """Runs ``code`` to its end; see :meth:`sluice.SandboxClient.run`."""
        return self._call(self._client.run(code, language, check=check, **options))

    def runtimes(self) -> Catalog:
        """What this client may run; see :meth:`sluice.SandboxClient.runtimes`."""
        return self._call(self._client.runtimes())

    def execute_code_stream(
        self, code: str, language: str = "python", **options: Unpack[ExecuteOptions]
    ) -> Iterator[StreamEvent]:
        """Runs ``code`` and yields its events as they arrive; leaving the
        loop early cancels the execution (the generator's ``finally``, which
        runs when the loop drops it or calls its ``close``)."""
        execution = self._call(self._client.execute(code, language, **options))
        try:
            while True:
                try:
                    yield self._call(execution.__anext__())
                except StopAsyncIteration:
                    return
        finally:
            self._loop.call_soon_threadsafe(execution.abandon)

    def close(self) -> None:
        """Closes the connection and stops the background thread."""
        if self._closed:
            return
        self._closed = True
        try:
            self._call(self._client.cleanup())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()

    def cleanup(self) -> None:
        """Same as :meth:`close`."""
        self.close()

    def __enter__(self) -> SandboxClient:
        self.setup()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
