"""A thin synchronous wrapper for scripts that do not use asyncio.

:class:`SandboxClient` here runs the asyncio client on an event loop of its
own, in a background thread, and waits for each call's result::

    from sluice.sync import SandboxClient

    with SandboxClient("ws://127.0.0.1:7878/v1/ws") as client:
        for event in client.execute_code_stream("print('hi')"):
            print(event.type, event.data)
        print(client.run("print(6 * 7)").stdout)

:meth:`SandboxClient.execute` gives a blocking :class:`Execution` handle, for
input, ``resize`` of a terminal and cancelling while the program runs::

        shell = client.execute("exec bash -i", "bash", tty=True, cols=100, rows=30)
        shell.send_stdin("ls\\r")
        shell.resize(120, 40)
"""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Coroutine, Iterator
from types import TracebackType
from typing import Any, TypeVar

from . import client as _async
from . import execution as _execution
from .events import StreamEvent
from .execution import ExecutionResult
from .frames import ExecuteOptions
from .runtimes import Catalog

if sys.version_info >= (3, 11):
    from typing import Unpack
else:  # pragma: no cover - Python 3.10
    from typing_extensions import Unpack

T = TypeVar("T")


class Execution:
    """Blocking version of :class:`sluice.Execution`, from
    :meth:`SandboxClient.execute`: iterate it (a plain ``for``) for its events;
    the other methods wait for the asyncio one's result."""

    def __init__(self, client: SandboxClient, execution: _execution.Execution) -> None:
        self._client = client
        self._execution = execution

    @property
    def id(self) -> str:
        """The execution id."""
        return self._execution.id

    @property
    def session(self) -> str | None:
        """Its session (see :attr:`sluice.Execution.session`)."""
        return self._execution.session

    @property
    def pid(self) -> int | None:
        """The program's process id, once ``started`` has been read."""
        return self._execution.pid

    @property
    def tty(self) -> bool:
        """It runs on a terminal (``tty=True``)."""
        return self._execution.tty

    @property
    def done(self) -> bool:
        """The terminal event has been read."""
        return self._execution.done

    def __iter__(self) -> Iterator[StreamEvent]:
        return self

    def __next__(self) -> StreamEvent:
        try:
            return self._client._call(self._execution.__anext__())
        except StopAsyncIteration:
            raise StopIteration from None

    def send_stdin(self, data: str, *, eof: bool = False) -> None:
        """See :meth:`sluice.Execution.send_stdin`."""
        self._client._call(self._execution.send_stdin(data, eof=eof))

    def close_stdin(self) -> None:
        """See :meth:`sluice.Execution.close_stdin`."""
        self._client._call(self._execution.close_stdin())

    def resize(self, cols: int, rows: int) -> bool:
        """Gives its terminal a new size; False if it has already ended. See
        :meth:`sluice.Execution.resize` (``FrameError`` with code
        ``not_a_terminal`` without ``tty=True``)."""
        return self._client._call(self._execution.resize(cols, rows))

    def cancel(self) -> bool:
        """See :meth:`sluice.Execution.cancel`."""
        return self._client._call(self._execution.cancel())

    def abandon(self) -> None:
        """Stops reading it and cancels it if still running."""
        self._client._loop.call_soon_threadsafe(self._execution.abandon)

    def wait(self, *, check: bool = False) -> ExecutionResult:
        """Reads the remaining events and returns the result; see
        :meth:`sluice.Execution.wait`."""
        return self._client._call(self._execution.wait(check=check))


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

    def execute(self, code: str, language: str = "python", **options: Unpack[ExecuteOptions]) -> Execution:
        """Starts running ``code`` and returns its blocking :class:`Execution`;
        see :meth:`sluice.SandboxClient.execute`."""
        return Execution(self, self._call(self._client.execute(code, language, **options)))

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
