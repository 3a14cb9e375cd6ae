"""Exceptions raised by the Sluice client.

Every exception the library raises on purpose derives from :class:`SluiceError`::

    SluiceError
    ├── SluiceConnectionError   (also a builtin ConnectionError)
    │   ├── AuthenticationError the gateway refused the credential (HTTP 401)
    │   └── ClientClosed
    ├── ProtocolError           the gateway sent something this client cannot read
    ├── FrameError              (also a ValueError) a frame the gateway would refuse
    ├── AttachRefused           the gateway refused an ``attach``
    ├── FileRefused             the gateway refused a file request (has ``code``)
    ├── QueryRefused            the gateway refused a ``complete`` / ``inspect`` (has ``code``)
    └── ExecutionFailed         an execution did not end with exit status 0
        ├── ExecutionError      its terminal event was an ``error`` (has ``code``)
        ├── LimitExceeded       it hit a resource limit (has ``limit``)
        ├── ExecutionCancelled  it was cancelled
        └── NonZeroExit         it exited with a non-zero status or a signal
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .execution import ExecutionResult


class SluiceError(Exception):
    """Base class of every error raised by this library."""


class SluiceConnectionError(SluiceError, ConnectionError):
    """The gateway could not be reached, or the connection ended for good
    (reconnecting was off, or gave up)."""


class AuthenticationError(SluiceConnectionError):
    """The gateway refused the credential (``token`` / ``$SLUICE_TOKEN``): it
    was missing, unknown, expired or malformed, and the gateway answered the
    WebSocket upgrade with HTTP 401. ``reason`` is the gateway's one-line
    reason (for example ``the token has expired``).

    Never retried: a reconnect refused so ends the connection at once, and the
    operations after it raise this error.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(f"the gateway refused the credential: {reason}")
        self.reason = reason


class ClientClosed(SluiceConnectionError):
    """The operation needs a connection, but the client was closed."""


class ProtocolError(SluiceError):
    """The gateway sent a frame that is not a valid protocol v1 event."""


class FrameError(SluiceError, ValueError):
    """A client frame that the gateway would refuse, caught before sending.

    ``code`` is the protocol error code the gateway would answer with
    (``bad_request`` for the shape of a frame, ``invalid_path`` for the path of
    a file request), or ``duplicate_id`` for an execution id that is still
    running on this client.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class AttachRefused(SluiceError):
    """The gateway refused to attach this client to a session.

    ``code`` is the protocol code: ``unknown_session`` (the session never
    existed or has ended), ``bad_request`` (``since`` is past the session's last
    event) or ``too_many_sessions``.
    """

    def __init__(self, session: str, code: str, message: str) -> None:
        super().__init__(f"attach to session {session!r} refused ({code}): {message}")
        self.session = session
        self.code = code
        self.message = message


class FileRefused(SluiceError):
    """The gateway refused a file request (``write_file``, ``read_file``,
    ``list_files`` or ``delete_file``) on a session's workspace.

    ``code`` is the protocol code: ``not_found`` (no such path),
    ``invalid_path`` (a path through a symbolic link, a directory where a file
    is needed or the reverse, ...), ``no_workspace`` (the session keeps no
    workspace), ``workspace_full``, ``unknown_session`` (this client does not
    read the session), ``bad_request`` or a newer code. ``session`` and
    ``path`` are those of the request, ``operation`` its frame type.

    A path the gateway would refuse for its shape alone (``../x``, absolute,
    empty) is a :class:`FrameError` with code ``invalid_path``, raised before
    anything is sent.
    """

    def __init__(self, operation: str, session: str, path: str, code: str, message: str) -> None:
        where = f"{path!r:.80} in session {session!r}" if path else f"the workspace of session {session!r}"
        super().__init__(f"{operation} of {where} refused ({code}): {message}")
        self.operation = operation
        self.session = session
        self.path = path
        self.code = code
        self.message = message


class QueryRefused(SluiceError):
    """The gateway refused a query of a session's persistent interpreter
    (``complete`` or ``inspect``; ``operation`` says which).

    ``code`` is the protocol code: ``kernel_busy`` (the interpreter runs a cell,
    or answers another query: ask again once it is over), ``no_kernel`` (the
    session has no interpreter: no persistent cell ran there yet, or it was
    restarted since), ``query_timeout`` (the interpreter did not answer in
    time), ``unknown_session`` (no such session, or this client does not read
    it), ``not_permitted`` (the credential does not allow the session),
    ``bad_request``, or a newer code. ``session`` is the query's session.
    """

    def __init__(self, operation: str, session: str, code: str, message: str) -> None:
        super().__init__(f"{operation} in session {session!r} refused ({code}): {message}")
        self.operation = operation
        self.session = session
        self.code = code
        self.message = message


class RuntimesRefused(SluiceError):
    """The gateway refused a ``runtimes`` frame (one older than the frame
    answers ``bad_request``)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"listing the runtimes refused ({code}): {message}")
        self.code = code
        self.message = message


class RestartRefused(SluiceError):
    """The gateway refused a ``restart`` of a session's interpreter
    (``unknown_session``, ``not_permitted``, or ``bad_request`` for a session the
    gateway made)."""

    def __init__(self, session: str, code: str, message: str) -> None:
        super().__init__(f"restarting session {session!r} refused ({code}): {message}")
        self.session = session
        self.code = code
        self.message = message


class ExecutionFailed(SluiceError):
    """An execution did not end with exit status 0. ``result`` holds what it
    produced and how it ended."""

    def __init__(self, message: str, result: ExecutionResult) -> None:
        super().__init__(message)
        self.result = result


class ExecutionError(ExecutionFailed):
    """The execution ended with an ``error`` event: it was refused
    (``unknown_language``, ``invalid_limit``, ...), its interpreter was lost
    (``kernel_lost``), or the gateway failed (``internal``).

    ``code`` is the protocol error code. Codes made by this client rather than
    the gateway are ``connection_lost`` (the connection ended for good before
    the execution did), ``client_closed`` and ``slow_consumer``.
    """

    def __init__(self, code: str, message: str, result: ExecutionResult) -> None:
        super().__init__(f"{code}: {message}", result)
        self.code = code


class LimitExceeded(ExecutionFailed):
    """The execution hit a resource limit; ``limit`` names it (``timeout``,
    ``output``, ``cpu``, ``file_size``, ``memory``, ``processes`` or a newer
    name) and ``limit_value`` is its value in milliseconds or bytes."""

    def __init__(self, limit: str, limit_value: int | None, result: ExecutionResult) -> None:
        super().__init__(f"resource limit reached: {limit} ({limit_value})", result)
        self.limit = limit
        self.limit_value = limit_value


class ExecutionCancelled(ExecutionFailed):
    """The execution was cancelled (by a ``cancel``, the end of its session or
    the gateway shutting down)."""


class NonZeroExit(ExecutionFailed):
    """The program exited with a non-zero status, or was killed by a signal
    that Sluice did not send."""

    def __init__(self, exit_code: int | None, signal: int | None, result: ExecutionResult) -> None:
        how = f"exit status {exit_code}" if signal is None else f"signal {signal}"
        super().__init__(f"the program ended with {how}", result)
        self.exit_code = exit_code
        self.signal = signal
