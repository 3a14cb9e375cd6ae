"""The asyncio client: :class:`SandboxClient`.

One client holds one WebSocket to a gateway (reconnecting when it drops) and
runs any number of executions on it at once.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import secrets
import sys
from collections.abc import Mapping
from types import TracebackType

from . import frames
from ._connection import Connection, Options, ReconnectPolicy, open_socket
from .errors import ClientClosed
from .execution import Execution, ExecutionResult, ExecutionStream
from .frames import ExecuteOptions
from .runtimes import Catalog
from .session import SessionStream

if sys.version_info >= (3, 11):
    from typing import Unpack
else:  # pragma: no cover - Python 3.10
    from typing_extensions import Unpack

#: The gateway's address when neither ``url`` nor ``$SLUICE_URL`` gives one.
DEFAULT_URL = "ws://127.0.0.1:7878/v1/ws"


class SandboxClient:
    """A client of a Sluice gateway.

    ``url`` is the gateway's WebSocket endpoint (default: ``$SLUICE_URL``,
    else ``ws://127.0.0.1:7878/v1/ws``); ``token`` (default: ``$SLUICE_TOKEN``,
    else none), an API key or a signed token, is sent as ``Authorization:
    Bearer <token>`` on every connection; a gateway that refuses it raises
    :class:`~sluice.AuthenticationError`, which is never retried. ``reconnect`` is a
    :class:`ReconnectPolicy`, True for the default policy, or None/False to end
    every stream when the connection drops. ``execution_buffer_bytes`` and
    ``session_buffer_bytes`` (16 MiB each) bound the unread events buffered for
    one execution or session stream; a consumer that falls further behind is
    cut off (clients/CONTRACT.md, slow consumers).

    Call :meth:`setup` (or use ``async with``) before use, and :meth:`cleanup`
    at the end; methods that need the connection also open it on first use.
    """

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        reconnect: ReconnectPolicy | bool | None = True,
        connect_timeout: float = 10.0,
        close_timeout: float = 5.0,
        execution_buffer_bytes: int = 16 << 20,
        session_buffer_bytes: int = 16 << 20,
        max_frame_bytes: int = 1 << 20,
        max_incoming_frame_bytes: int = 16 << 20,
        outbox_frames: int = 256,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.url = url or os.environ.get("SLUICE_URL") or DEFAULT_URL
        all_headers = dict(headers or {})
        if token is None:
            token = os.environ.get("SLUICE_TOKEN") or None
        if token is not None:
            all_headers["Authorization"] = f"Bearer {token}"
        policy = ReconnectPolicy() if reconnect is True else (reconnect or None)
        self._options = Options(
            reconnect=policy,
            connect_timeout=connect_timeout,
            close_timeout=close_timeout,
            execution_buffer_bytes=execution_buffer_bytes,
            session_buffer_bytes=session_buffer_bytes,
            max_frame_bytes=max_frame_bytes,
            max_incoming_frame_bytes=max_incoming_frame_bytes,
            outbox_frames=max(1, outbox_frames),
            headers=all_headers,
        )
        self._connection: Connection | None = None
        self._connecting: asyncio.Lock | None = None
        self._cleaned_up = False
        self._ids = itertools.count(1)
        self._id_prefix = f"py-{secrets.token_hex(4)}"

    # ------------------------------------------------------------ lifecycle

    async def setup(self) -> None:
        """Connects to the gateway; raises :class:`~sluice.SluiceConnectionError`
        if it cannot be reached (:class:`~sluice.AuthenticationError` if it
        refuses the credential). Does nothing if already connected."""
        await self._connect()

    async def cleanup(self) -> None:
        """Cancels the executions still running, closes the connection and ends
        every stream. The client cannot be used afterwards."""
        self._cleaned_up = True
        if self._connection is not None:
            await self._connection.close()

    async def __aenter__(self) -> SandboxClient:
        await self.setup()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.cleanup()

    async def _connect(self) -> Connection:
        if self._cleaned_up:
            raise ClientClosed("the client is closed (cleanup() was called)")
        if self._connection is not None:
            return self._connection
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._connection is None:
                socket = await open_socket(self.url, self._options, self._options.connect_timeout)
                self._connection = Connection(self.url, self._options, socket)
        return self._connection

    # ----------------------------------------------------------- executions

    def new_id(self) -> str:
        """A fresh execution id, unique to this client."""
        return f"{self._id_prefix}-{next(self._ids)}"

    async def execute(self, code: str, language: str = "python", **options: Unpack[ExecuteOptions]) -> Execution:
        """Starts running ``code`` and returns its :class:`Execution`.

        ``options`` are those of :class:`~sluice.ExecuteOptions`: ``id``,
        ``session`` (a named session, created if needed, which makes the
        execution resumable even before its first event), ``persistent`` (a
        cell of the session's Python interpreter), ``stdin`` (the whole
        standard input, or use :meth:`Execution.send_stdin`), ``env``,
        ``args``, ``limits`` (the names of PROTOCOL.md §9.1: ``timeout_ms``,
        ``output_bytes``, ...), ``encoding``, and ``tty`` with ``cols``,
        ``rows`` and ``term`` (run on a terminal; see
        :meth:`Execution.resize`). Raises
        :class:`~sluice.FrameError` for a request the gateway would refuse.
        Leaving the handle does not cancel the execution: call
        :meth:`Execution.cancel` or :meth:`Execution.abandon`.
        """
        frame = frames.execute_frame(options.get("id") or self.new_id(), language, code, options)
        connection = await self._connect()
        route = await connection.execute(frame["id"], frame, options.get("persistent", False))
        return Execution(connection, route)

    def execute_code_stream(
        self, code: str, language: str = "python", **options: Unpack[ExecuteOptions]
    ) -> ExecutionStream:
        """Runs ``code`` and yields its events, ending with the terminal one.

        Takes the arguments of :meth:`execute`; the execution starts when the
        iteration does. Leaving the loop early (``break``, an exception, or
        dropping the iterator) cancels the execution: see
        :class:`~sluice.ExecutionStream` for how.
        """
        return ExecutionStream(self.execute(code, language, **options))

    async def run(
        self, code: str, language: str = "python", *, check: bool = False, **options: Unpack[ExecuteOptions]
    ) -> ExecutionResult:
        """Runs ``code`` to its end and returns the result (see :meth:`Execution.wait`)."""
        execution = await self.execute(code, language, **options)
        return await execution.wait(check=check)

    async def runtimes(self) -> Catalog:
        """The languages this client may run (each with its interpreter's version
        and whether it runs persistently or on a terminal) and each limit's
        default and maximum, as the client's credential narrows them. Raises
        :class:`~sluice.RuntimesRefused` against a gateway older than the
        ``runtimes`` frame."""
        connection = await self._connect()
        return await connection.runtimes()

    # ------------------------------------------------------------- sessions

    def attach(self, session: str, since: int | None = None) -> SessionStream:
        """The events of ``session`` after sequence ``since`` (default: all the
        gateway still buffers), as an async iterator; see :class:`SessionStream`."""
        if since is not None and since < 0:
            raise ValueError("since must be a non-negative sequence number")
        return SessionStream(self._connect, session, since, self._options.session_buffer_bytes)
