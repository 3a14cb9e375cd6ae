"""The asyncio client: :class:`SandboxClient`.

One client holds one WebSocket to a gateway (reconnecting when it drops) and
runs any number of executions on it at once, reaches the workspaces of its
sessions (``write_file``, ``read_file``, ``list_files``, ``delete_file``), and
asks their persistent interpreters for completions (``complete``) and what they
know of a name (``inspect``).
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import os
import secrets
import sys
from collections.abc import Mapping
from types import TracebackType

from . import frames
from ._connection import Connection, Options, ReconnectPolicy, open_socket
from .errors import ClientClosed, FrameError
from .events import FileEntry
from .execution import Execution, ExecutionResult, ExecutionStream
from .frames import ExecuteOptions
from .queries import Completions, Inspection
from .runtimes import Catalog
from .session import SessionStream

if sys.version_info >= (3, 11):
    from typing import Unpack
else:  # pragma: no cover - Python 3.10
    from typing_extensions import Unpack

#: The gateway's address when neither ``url`` nor ``$SLUICE_URL`` gives one.
DEFAULT_URL = "ws://127.0.0.1:7878/v1/ws"

#: Most bytes of a file one ``write_file`` frame carries (base64 makes them a third
#: larger): a larger upload is sent in pieces, each appended to the one before.
WRITE_PIECE_BYTES = 256 * 1024


class FileList(list[FileEntry]):
    """The entries of a workspace directory (a list of :class:`FileEntry`, sorted
    by name); ``truncated`` is True when the directory had more than the gateway
    lists at once (10,000)."""

    truncated: bool = False


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
        :meth:`Execution.resize`), ``files`` and ``workspace`` (give the
        ``session`` a workspace that later executions and the file methods
        share; the client then stays attached to the session). Raises
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

    async def restart(self, session: str) -> None:
        """Restarts ``session``'s persistent interpreter, as a notebook's
        "restart kernel": its running and waiting cells are cancelled, and the next
        cell starts a fresh interpreter (no state, ``execution_count`` from 1); the
        workspace stays. Returns once the gateway's ``restarted`` event arrived.
        This client must read the session (it ran a cell there, or attached).
        Raises :class:`~sluice.RestartRefused` when the gateway refuses it."""
        connection = await self._connect()
        await connection.restart(session)

    async def detach(self, session: str) -> None:
        """Lets go of ``session``: the client stops keeping it attached (as it
        does a session it ran a persistent cell in, or opened a workspace in)
        and sends ``detach`` once nothing here uses it any more (at once when
        none of its executions runs and no :meth:`attach` stream of it is
        open). With no other reader, the gateway ends the session after its
        grace period (``--session-grace-ms``), interpreter and workspace with
        it. A session the client does not read is ignored."""
        if self._connection is not None:
            self._connection.release(session)

    # -------------------------------------------------------------- queries

    async def complete(self, session: str, code: str, cursor_pos: int) -> Completions:
        """The completions, from ``session``'s persistent interpreter (its
        variables, imports and attributes), of the name that ends at
        ``cursor_pos`` in ``code``: a notebook's Tab. ``cursor_pos`` counts
        Unicode code points, as a Python ``str`` index does (``len(code)`` is
        the end); each match replaces ``code[result.cursor_start:result.cursor_end]``.

        The interpreter answers between cells: while a cell runs the gateway
        refuses with :class:`~sluice.QueryRefused` code ``kernel_busy``; a session
        without an interpreter (no persistent cell yet, or restarted since) with
        ``no_kernel``; an interpreter too slow to answer with ``query_timeout``;
        also ``unknown_session``, ``not_permitted``, ``bad_request``.

        This client must read the session (it ran a persistent cell there, or
        attached): otherwise :class:`~sluice.FrameError` code
        ``unknown_session``, before anything is sent, as for :meth:`restart`;
        so is a ``cursor_pos`` outside ``code`` (code ``bad_request``). A query
        the connection dropped before its answer is asked again after the
        reconnect (it changes nothing); when the connection ends for good it
        raises :class:`~sluice.SluiceConnectionError`.
        """
        connection = await self._connect()
        answer = await connection.query(frames.complete_frame("-", session, code, cursor_pos))
        return Completions.from_event(answer)

    async def inspect(self, session: str, code: str, cursor_pos: int, detail_level: int = 0) -> Inspection:
        """What ``session``'s persistent interpreter knows of the name at
        ``cursor_pos`` in ``code`` (the name under the cursor, or the callee of
        the call the cursor is in): a notebook's Shift-Tab. ``detail_level`` 0:
        signature, type, value and documentation; 1: the source too, where the
        interpreter has it. The :class:`~sluice.Inspection` says whether the name
        was ``found``; its ``text`` is the bundle's ``text/plain``.

        Cursor, refusals and reconnects as for :meth:`complete`.
        """
        connection = await self._connect()
        answer = await connection.query(frames.inspect_frame("-", session, code, cursor_pos, detail_level))
        return Inspection.from_event(answer)

    # ------------------------------------------------------------- sessions

    def attach(self, session: str, since: int | None = None, *, workspace: bool = False) -> SessionStream:
        """The events of ``session`` after sequence ``since`` (default: all the
        gateway still buffers), as an async iterator; see :class:`SessionStream`.

        With ``workspace=True`` the ``attach`` opens the session, creating it if
        it does not exist, with a workspace (made if it has none): how files are
        uploaded before anything runs. The client then stays attached to the
        session until :meth:`cleanup`, so the workspace lasts as long as the
        client (the stream may be closed). The attach is sent when the stream
        is started (:meth:`SessionStream.start`, ``async with`` or the first
        iteration); a gateway that keeps no workspaces refuses it with
        :class:`~sluice.AttachRefused` code ``no_workspace``."""
        if since is not None and since < 0:
            raise ValueError("since must be a non-negative sequence number")
        return SessionStream(self._connect, session, since, self._options.session_buffer_bytes, workspace=workspace)

    # ----------------------------------------------------------- workspaces

    async def write_file(
        self,
        session: str,
        path: str,
        data: str | bytes,
        *,
        mode: int | None = None,
        append: bool = False,
    ) -> int:
        """Writes ``data`` (text as UTF-8, or bytes) to ``path`` in the workspace
        of ``session``, replacing the file (or adding to its end with
        ``append``); its parent directories are made as needed. ``mode`` (0 to
        ``0o777``) is the permission bits of a file this creates (default
        ``0o644``). Returns the file's size afterwards.

        Data larger than one frame is sent in pieces of :data:`WRITE_PIECE_BYTES`,
        each appended to the one before, one at a time; a piece refused stops
        the upload, and the file holds the pieces written before it.

        The client must read the session (an ``attach(session, workspace=True)``
        or an execute with ``workspace=True`` in it). Raises
        :class:`~sluice.FileRefused` when the gateway refuses it
        (``no_workspace``, ``workspace_full``, ``invalid_path``, ...), and
        :class:`~sluice.FrameError` (code ``invalid_path`` or ``bad_request``)
        before sending for a path or mode it would refuse.
        """
        raw = data.encode("utf-8") if isinstance(data, str) else bytes(data)
        connection = await self._connect()
        piece = self._write_piece_bytes(session, path, mode)
        offset = 0
        size = 0
        while True:
            chunk = raw[offset : offset + piece]
            frame = frames.write_file_frame(
                "-",
                session,
                path,
                base64.b64encode(chunk).decode("ascii"),
                encoding="base64",
                append=append or offset > 0,
                mode=mode if offset == 0 else None,
            )
            answer = (await connection.file_request(frame)).future.result()
            size = answer.size or 0
            offset += len(chunk)
            if offset >= len(raw):
                return size

    def _write_piece_bytes(self, session: str, path: str, mode: int | None) -> int:
        """The most raw bytes one ``write_file`` frame may carry under
        ``max_frame_bytes``: the frame around the data is measured, the data
        grows by a third in base64."""
        empty = frames.write_file_frame("f" * 20, session, path, "", encoding="base64", append=True, mode=mode)
        room = self._options.max_frame_bytes - len(frames.encode(empty).encode("utf-8"))
        piece = min(WRITE_PIECE_BYTES, room // 4 * 3)
        if piece <= 0:
            raise FrameError(
                "too_large",
                f"a write_file frame of {path!r:.80} does not fit in {self._options.max_frame_bytes} bytes",
            )
        return piece

    async def read_file(self, session: str, path: str, *, offset: int = 0, length: int | None = None) -> bytes:
        """The bytes of ``path`` in the workspace of ``session``: all of it, or
        ``length`` bytes at most from ``offset``. The gateway sends the file in
        chunks (base64, exact); a read cut by a reconnect goes on from where it
        got to. Raises :class:`~sluice.FileRefused` (``not_found``,
        ``invalid_path`` for a directory, ``no_workspace``, ...)."""
        if offset < 0 or (length is not None and length < 0):
            raise FrameError("bad_request", "offset and length must be non-negative")
        connection = await self._connect()
        frame = frames.read_file_frame("-", session, path, offset=offset, length=length)
        request = await connection.file_request(frame)
        return b"".join(request.chunks)

    async def read_text(
        self,
        session: str,
        path: str,
        *,
        offset: int = 0,
        length: int | None = None,
        errors: str = "replace",
    ) -> str:
        """:meth:`read_file` decoded as UTF-8 (bytes that are not valid UTF-8
        become U+FFFD unless ``errors`` says otherwise, as in :meth:`bytes.decode`)."""
        data = await self.read_file(session, path, offset=offset, length=length)
        return data.decode("utf-8", errors=errors)

    async def list_files(self, session: str, path: str = "") -> FileList:
        """The entries of the directory ``path`` (default: the workspace
        itself) of ``session``'s workspace, not recursive, sorted by name (the
        gateway's own files left out). Raises :class:`~sluice.FileRefused`
        (``not_found``, ``invalid_path`` for a file, ...)."""
        connection = await self._connect()
        request = await connection.file_request(frames.list_files_frame("-", session, path))
        answer = request.future.result()
        listing = FileList(answer.entries or ())
        listing.truncated = answer.truncated is True
        return listing

    async def delete_file(self, session: str, path: str, *, recursive: bool = False) -> None:
        """Removes ``path`` from the workspace of ``session``: a file, or a
        directory (one that is not empty only with ``recursive``, else
        ``bad_request``). Raises :class:`~sluice.FileRefused` (``not_found``, ...)."""
        connection = await self._connect()
        await connection.file_request(frames.delete_file_frame("-", session, path, recursive=recursive))
