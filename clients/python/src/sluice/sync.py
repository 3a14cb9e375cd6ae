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

and the workspace of a session, with :meth:`SandboxClient.attach` and the file
methods::

        with client.attach("project", workspace=True):
            client.write_file("project", "data.csv", b"a,b\\n1,2\\n")
            client.run("import csv; print(list(csv.reader(open('data.csv'))))", session="project", workspace=True)
            print(client.read_text("project", "data.csv"))
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
from . import session as _session
from .events import StreamEvent
from .execution import ExecutionResult
from .frames import ExecuteOptions
from .queries import Completions, Inspection
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


class SessionStream:
    """Blocking version of :class:`sluice.SessionStream`, from
    :meth:`SandboxClient.attach`: a plain iterator of the session's events and a
    context manager; the ``attach`` is sent by :meth:`start`, ``with`` or the
    first ``next``."""

    def __init__(self, client: SandboxClient, stream: _session.SessionStream) -> None:
        self._client = client
        self._stream = stream

    @property
    def session(self) -> str:
        """The session's name or id."""
        return self._stream.session

    @property
    def last_sequence(self) -> int:
        """The sequence of the last event delivered (or ``since``)."""
        return self._stream.last_sequence

    def start(self) -> None:
        """Sends the ``attach`` and waits for the answer; see :meth:`sluice.SessionStream.start`."""
        self._client._call(self._stream.start())

    def close(self) -> None:
        """Stops reading the session."""
        self._client._call(self._stream.close())

    def __iter__(self) -> Iterator[StreamEvent]:
        return self

    def __next__(self) -> StreamEvent:
        try:
            return self._client._call(self._stream.__anext__())
        except StopAsyncIteration:
            raise StopIteration from None

    def __enter__(self) -> SessionStream:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


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

    def restart(self, session: str) -> None:
        """Restarts a session's interpreter; see :meth:`sluice.SandboxClient.restart`."""
        self._call(self._client.restart(session))

    def detach(self, session: str) -> None:
        """Lets go of a session the client kept attached; see :meth:`sluice.SandboxClient.detach`."""
        self._call(self._client.detach(session))

    def complete(self, session: str, code: str, cursor_pos: int) -> Completions:
        """Completions from a session's interpreter at ``cursor_pos`` (code points);
        see :meth:`sluice.SandboxClient.complete`."""
        return self._call(self._client.complete(session, code, cursor_pos))

    def inspect(self, session: str, code: str, cursor_pos: int, detail_level: int = 0) -> Inspection:
        """What a session's interpreter knows of the name at ``cursor_pos`` (code
        points); see :meth:`sluice.SandboxClient.inspect`."""
        return self._call(self._client.inspect(session, code, cursor_pos, detail_level))

    def attach(self, session: str, since: int | None = None, *, workspace: bool = False) -> SessionStream:
        """The events of ``session``, as a blocking :class:`SessionStream`; with
        ``workspace=True`` it opens the session with a workspace. See
        :meth:`sluice.SandboxClient.attach`."""
        return SessionStream(self, self._client.attach(session, since, workspace=workspace))

    def write_file(
        self, session: str, path: str, data: str | bytes, *, mode: int | None = None, append: bool = False
    ) -> int:
        """Writes a file of the session's workspace; returns its size. See
        :meth:`sluice.SandboxClient.write_file`."""
        return self._call(self._client.write_file(session, path, data, mode=mode, append=append))

    def read_file(self, session: str, path: str, *, offset: int = 0, length: int | None = None) -> bytes:
        """The bytes of a file of the session's workspace; see :meth:`sluice.SandboxClient.read_file`."""
        return self._call(self._client.read_file(session, path, offset=offset, length=length))

    def read_text(
        self, session: str, path: str, *, offset: int = 0, length: int | None = None, errors: str = "replace"
    ) -> str:
        """A file of the session's workspace as text; see :meth:`sluice.SandboxClient.read_text`."""
        return self._call(self._client.read_text(session, path, offset=offset, length=length, errors=errors))

    def list_files(self, session: str, path: str = "") -> _async.FileList:
        """A directory of the session's workspace; see :meth:`sluice.SandboxClient.list_files`."""
        return self._call(self._client.list_files(session, path))

    def delete_file(self, session: str, path: str, *, recursive: bool = False) -> None:
        """Removes a file or directory of the session's workspace; see
        :meth:`sluice.SandboxClient.delete_file`."""
        self._call(self._client.delete_file(session, path, recursive=recursive))

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
