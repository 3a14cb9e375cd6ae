"""Events sent by the gateway: the :class:`StreamEvent` dataclass and its decoder.

:func:`decode_event` turns one WebSocket text frame into a :class:`StreamEvent`
and checks the rules of protocol v1 (PROTOCOL.md §5) that a flat JSON object
cannot express. Unknown fields and unknown event types, error codes and limit
names are accepted, as §15 asks of a forward-compatible client.
"""

from __future__ import annotations

import base64
import json
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import ProtocolError

STARTED = "started"
STDOUT = "stdout"
STDERR = "stderr"
COMPLETED = "completed"
CANCELLED = "cancelled"
RESOURCE_LIMIT = "resource_limit"
ERROR = "error"
ATTACHED = "attached"
GAP = "gap"
RUNTIMES = "runtimes"
FILE_WRITTEN = "file_written"
FILE_DATA = "file_data"
FILE_LIST = "file_list"
FILE_DELETED = "file_deleted"
FILES_CHANGED = "files_changed"
DISPLAY = "display"
UPDATE_DISPLAY = "update_display"
RESULT = "result"
INPUT_REQUEST = "input_request"
NETWORK_BLOCKED = "network_blocked"
RESTARTED = "restarted"
COMPLETE_REPLY = "complete_reply"
INSPECT_REPLY = "inspect_reply"

#: The answers to a file frame (``write_file``, ``read_file``, ``list_files``,
#: ``delete_file``), on the socket's own stream.
FILE_ANSWER_TYPES = frozenset({FILE_WRITTEN, FILE_DATA, FILE_LIST, FILE_DELETED})

#: The answers to a query (``complete``, ``inspect``), on the socket's own stream.
QUERY_ANSWER_TYPES = frozenset({COMPLETE_REPLY, INSPECT_REPLY})

#: The types of rich output, each with a MIME ``bundle``: a ``display``, an
#: ``update_display`` that replaces the earlier one of its ``display_id``, and a
#: persistent cell's ``result`` (the value of its last expression).
DISPLAY_TYPES = frozenset({DISPLAY, UPDATE_DISPLAY, RESULT})

#: The types that end an execution (an ``error`` only when it has an ``id``).
TERMINAL_TYPES = frozenset({COMPLETED, CANCELLED, RESOURCE_LIMIT, ERROR})

#: The error codes the gateway sends (PROTOCOL.md §8.2). A newer gateway may send
#: others: an ``error`` event with an unknown code is passed through as it is.
KNOWN_ERROR_CODES = frozenset(
    {
        "bad_request",
        "too_large",
        "duplicate_id",
        "unknown_execution",
        "unknown_session",
        "stdin_closed",
        "stdin_full",
        "too_many_sessions",
        "unknown_language",
        "invalid_limit",
        "too_many_executions",
        "spawn_failed",
        "shutting_down",
        "kernel_lost",
        "gateway_busy",
        "not_permitted",
        "not_a_terminal",
        "no_workspace",
        "invalid_path",
        "not_found",
        "workspace_full",
        "kernel_busy",
        "no_kernel",
        "query_timeout",
        "internal",
    }
)


@dataclass(frozen=True, slots=True)
class Usage:
    """What an execution used (PROTOCOL.md §5.2)."""

    duration_ms: float
    cpu_ms: float
    peak_memory_bytes: int
    stdout_bytes: int
    stderr_bytes: int
    first_output_ms: float | None = None


@dataclass(frozen=True, slots=True)
class FileEntry:
    """One entry of a workspace directory, as ``list_files`` gives it.

    ``kind`` is ``file``, ``dir``, ``symlink`` or ``other`` (or a newer name);
    ``size`` in bytes; ``mode`` the permission bits (``0o644``); ``mtime`` when
    its content last changed, in Unix seconds.
    """

    name: str
    kind: str
    size: int
    mode: int
    mtime: float


@dataclass(frozen=True, slots=True)
class FileChanges:
    """What changed in a session's workspace (a ``files_changed`` event): paths
    relative to the workspace, each list sorted."""

    created: tuple[str, ...] = ()
    modified: tuple[str, ...] = ()
    deleted: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class CellException:
    """The exception a persistent cell raised (Jupyter's names): its type's name,
    its message, and the traceback as Python prints it, one line per entry."""

    ename: str
    evalue: str
    traceback: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class StreamEvent:
    """One event from the gateway.

    The first four fields are those of every event; ``id`` and ``session`` route
    it; the rest are present only on the types that carry them (``None``
    otherwise). Events made by the client itself (the end of an execution when
    the connection is lost for good, for example) have ``sequence`` 0.

    Rich output (``display``, ``update_display``, ``result``; see
    :data:`DISPLAY_TYPES`) carries ``bundle``: MIME type to data, text for the
    text types, base64 text for binary ones (``image/png``, ``image/jpeg``,
    ``application/pdf``), any JSON value for ``application/json`` and the
    ``+json`` types; read it with :meth:`mime` and :meth:`mime_bytes`.
    ``data`` is then the bundle's ``text/plain`` ("" when it has none).
    ``metadata`` is the bundle's metadata (an image's ``width``, for example;
    often ``{}``), ``display_id`` ties a ``display`` to the
    ``update_display`` events that replace it, and ``execution_count`` is a
    ``result``'s cell number in its interpreter (from 1). ``bundle`` and
    ``metadata`` are left out of the event's hash (they are dicts).

    An ``input_request`` says the execution waits for a line of stdin: ``data``
    is the prompt, ``password`` whether to hide what is typed; answer with
    ``Execution.send_stdin``. The terminal event of a persistent cell carries
    its ``execution_count``, and ``exception`` when it raised.

    The answers to a query of a session's interpreter, on the socket's stream
    with the query's ``request``: a ``complete_reply`` carries ``matches`` (a
    tuple of strings), each to replace the code points ``cursor_start`` to
    ``cursor_end`` of the query's code, and ``truncated`` when there were more;
    an ``inspect_reply`` carries ``found`` and, when found, a ``bundle`` whose
    ``text/plain`` describes the name.
    """

    type: str
    data: str
    timestamp: float
    sequence: int
    id: str | None = None
    session: str | None = None
    pid: int | None = None
    encoding: str | None = None
    exit_code: int | None = None
    signal: int | None = None
    limit: str | None = None
    limit_value: int | None = None
    limit_observed: int | None = None
    code: str | None = None
    usage: Usage | None = None
    missed_from: int | None = None
    resume_from: int | None = None
    for_session: str | None = None
    request: str | None = None
    path: str | None = None
    offset: int | None = None
    size: int | None = None
    last: bool | None = None
    entries: tuple[FileEntry, ...] | None = None
    changes: FileChanges | None = None
    truncated: bool | None = None
    bundle: Mapping[str, Any] | None = field(default=None, hash=False)
    metadata: Mapping[str, Any] | None = field(default=None, hash=False)
    display_id: str | None = None
    execution_count: int | None = None
    password: bool | None = None
    exception: CellException | None = None
    matches: tuple[str, ...] | None = None
    cursor_start: int | None = None
    cursor_end: int | None = None
    found: bool | None = None
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def is_terminal(self) -> bool:
        """True for the event that ends an execution."""
        return self.type in TERMINAL_TYPES and self.id is not None

    @property
    def is_output(self) -> bool:
        """True for ``stdout`` and ``stderr`` events."""
        return self.type in (STDOUT, STDERR)

    @property
    def is_synthetic(self) -> bool:
        """True for an event made by this client, not sent by the gateway."""
        return self.sequence == 0 and self.type != ATTACHED

    def raw_bytes(self) -> bytes:
        """The output an event carries, as bytes (base64 decoded when needed)."""
        if self.encoding == "base64":
            return base64.b64decode(self.data)
        return self.data.encode("utf-8")

    def mime(self, mime_type: str) -> Any:
        """The data of ``mime_type`` in the event's bundle, as sent, or None when
        the bundle (or the event) has none: a ``str`` for text types, base64
        text for binary types (see :meth:`mime_bytes`), any JSON value (a dict,
        a list, ...) for ``application/json`` and the ``+json`` types."""
        if self.bundle is None:
            return None
        return self.bundle.get(mime_type)

    def mime_bytes(self, mime_type: str) -> bytes | None:
        """The data of a binary ``mime_type`` (``image/png``, ``image/jpeg``,
        ``application/pdf``, ...) decoded from its base64, or None when the
        bundle has none. Raises ``ValueError`` when the data is not base64
        text (a text or JSON type: read those with :meth:`mime`)."""
        value = self.mime(mime_type)
        if value is None:
            return None
        if not isinstance(value, str):
            raise ValueError(f"the {mime_type} data of this {self.type} event is not base64 text")
        return base64.b64decode(value, validate=True)


_KNOWN_FIELDS = frozenset(
    {
        "type",
        "data",
        "timestamp",
        "sequence",
        "id",
        "session",
        "pid",
        "encoding",
        "exit_code",
        "signal",
        "limit",
        "limit_value",
        "limit_observed",
        "code",
        "usage",
        "missed_from",
        "resume_from",
        "for_session",
        "request",
        "path",
        "offset",
        "size",
        "last",
        "entries",
        "changes",
        "truncated",
        "bundle",
        "metadata",
        "display_id",
        "execution_count",
        "password",
        "exception",
        "matches",
        "cursor_start",
        "cursor_end",
        "found",
    }
)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _optional(obj: Mapping[str, Any], name: str, kind: str) -> Any:
    """The field ``name`` of ``obj`` if present and not null, checked against ``kind``."""
    value = obj.get(name)
    if value is None:
        return None
    ok = {
        "str": isinstance(value, str),
        "int": _is_int(value),
        "uint": _is_int(value) and value >= 0,
        "number": _is_number(value),
        "bool": isinstance(value, bool),
    }[kind]
    if not ok:
        raise ProtocolError(f"event field {name!r} has the wrong type: {value!r}")
    return value


def _decode_usage(value: object) -> Usage | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ProtocolError(f"event field 'usage' is not an object: {value!r}")
    for name in ("duration_ms", "cpu_ms", "peak_memory_bytes", "stdout_bytes", "stderr_bytes"):
        if name not in value:
            raise ProtocolError(f"usage has no {name!r}")
    first_output = _optional(value, "first_output_ms", "number")
    return Usage(
        duration_ms=float(_optional(value, "duration_ms", "number")),
        cpu_ms=float(_optional(value, "cpu_ms", "number")),
        peak_memory_bytes=_optional(value, "peak_memory_bytes", "uint"),
        stdout_bytes=_optional(value, "stdout_bytes", "uint"),
        stderr_bytes=_optional(value, "stderr_bytes", "uint"),
        first_output_ms=None if first_output is None else float(first_output),
    )


def _decode_entries(value: object) -> tuple[FileEntry, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise ProtocolError(f"event field 'entries' is not an array: {value!r:.80}")
    entries = []
    for item in value:
        if not isinstance(item, dict):
            raise ProtocolError(f"an entry of 'entries' is not an object: {item!r:.80}")
        for name in ("name", "kind", "size", "mode", "mtime"):
            if item.get(name) is None:
                raise ProtocolError(f"an entry of 'entries' has no {name!r}")
        entries.append(
            FileEntry(
                name=_optional(item, "name", "str"),
                kind=_optional(item, "kind", "str"),
                size=_optional(item, "size", "uint"),
                mode=_optional(item, "mode", "uint"),
                mtime=float(_optional(item, "mtime", "number")),
            )
        )
    return tuple(entries)


def _decode_changes(value: object) -> FileChanges | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ProtocolError(f"event field 'changes' is not an object: {value!r:.80}")
    lists: dict[str, tuple[str, ...]] = {}
    for name in ("created", "modified", "deleted"):
        paths = value.get(name)
        if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
            raise ProtocolError(f"changes field {name!r} is not an array of strings")
        lists[name] = tuple(paths)
    return FileChanges(**lists)


def _decode_exception(value: object) -> CellException | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ProtocolError(f"event field 'exception' is not an object: {value!r:.80}")
    ename, evalue, lines = value.get("ename"), value.get("evalue"), value.get("traceback")
    if not isinstance(ename, str) or not isinstance(evalue, str):
        raise ProtocolError("exception needs string 'ename' and 'evalue'")
    if not isinstance(lines, list) or not all(isinstance(line, str) for line in lines):
        raise ProtocolError("exception field 'traceback' is not an array of strings")
    return CellException(ename=ename, evalue=evalue, traceback=tuple(lines))


def _decode_strings(obj: Mapping[str, Any], name: str) -> tuple[str, ...] | None:
    """The field ``name`` of ``obj`` if present and not null; it must be an array of strings."""
    value = obj.get(name)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ProtocolError(f"event field {name!r} is not an array of strings: {value!r:.80}")
    return tuple(value)


def _decode_object(obj: Mapping[str, Any], name: str) -> dict[str, Any] | None:
    """The field ``name`` of ``obj`` if present and not null; it must be a JSON object."""
    value = obj.get(name)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ProtocolError(f"event field {name!r} is not an object: {value!r:.80}")
    return value


def event_from_dict(obj: object) -> StreamEvent:
    """Builds a :class:`StreamEvent` from decoded JSON and checks the protocol's
    rules; raises :class:`ProtocolError` when it is not a valid event."""
    if not isinstance(obj, dict):
        raise ProtocolError("an event must be a JSON object")
    kind = obj.get("type")
    if not isinstance(kind, str):
        raise ProtocolError("event has no string 'type'")
    data = obj.get("data", "")
    if not isinstance(data, str):
        raise ProtocolError("event field 'data' is not a string")
    timestamp = obj.get("timestamp")
    if isinstance(timestamp, bool) or not isinstance(timestamp, (int, float)):
        raise ProtocolError(f"{kind} event has no valid timestamp")
    if not math.isfinite(timestamp) or timestamp <= 0:
        raise ProtocolError(f"{kind} event has no valid timestamp")
    sequence = obj.get("sequence")
    if isinstance(sequence, bool) or not isinstance(sequence, int) or sequence < 0:
        raise ProtocolError(f"{kind} event has no valid sequence")
    event = StreamEvent(
        type=kind,
        data=data,
        timestamp=float(timestamp),
        sequence=sequence,
        id=_optional(obj, "id", "str"),
        session=_optional(obj, "session", "str"),
        pid=_optional(obj, "pid", "uint"),
        encoding=_optional(obj, "encoding", "str"),
        exit_code=_optional(obj, "exit_code", "int"),
        signal=_optional(obj, "signal", "int"),
        limit=_optional(obj, "limit", "str"),
        limit_value=_optional(obj, "limit_value", "uint"),
        limit_observed=_optional(obj, "limit_observed", "uint"),
        code=_optional(obj, "code", "str"),
        usage=_decode_usage(obj.get("usage")),
        missed_from=_optional(obj, "missed_from", "uint"),
        resume_from=_optional(obj, "resume_from", "uint"),
        for_session=_optional(obj, "for_session", "str"),
        request=_optional(obj, "request", "str"),
        path=_optional(obj, "path", "str"),
        offset=_optional(obj, "offset", "uint"),
        size=_optional(obj, "size", "uint"),
        last=_optional(obj, "last", "bool"),
        entries=_decode_entries(obj.get("entries")),
        changes=_decode_changes(obj.get("changes")),
        truncated=_optional(obj, "truncated", "bool"),
        bundle=_decode_object(obj, "bundle"),
        metadata=_decode_object(obj, "metadata"),
        display_id=_optional(obj, "display_id", "str"),
        execution_count=_optional(obj, "execution_count", "uint"),
        password=_optional(obj, "password", "bool"),
        exception=_decode_exception(obj.get("exception")),
        matches=_decode_strings(obj, "matches"),
        cursor_start=_optional(obj, "cursor_start", "uint"),
        cursor_end=_optional(obj, "cursor_end", "uint"),
        found=_optional(obj, "found", "bool"),
        extra={k: v for k, v in obj.items() if k not in _KNOWN_FIELDS},
    )
    if event.encoding not in (None, "utf8", "base64"):
        raise ProtocolError(f"{kind} event has an unknown encoding {event.encoding!r}")
    _validate(event)
    return event


def _validate(event: StreamEvent) -> None:
    """The per-type rules of PROTOCOL.md §5 (the same ones the Rust crate checks)."""

    def fail(why: str) -> ProtocolError:
        return ProtocolError(f"{event.type} event {why}")

    kind = event.type
    if event.sequence == 0 and kind != ATTACHED:
        raise fail("has sequence 0; sequences start at 1")
    if event.id is not None and event.session is None and kind != ERROR:
        raise fail("names an execution but no session")
    if kind in (STARTED, STDOUT, STDERR, COMPLETED, CANCELLED, RESOURCE_LIMIT) and event.id is None:
        raise fail("has no execution id")
    if kind == STARTED and event.pid is None:
        raise fail("has no pid")
    if kind == COMPLETED and (event.exit_code is None) == (event.signal is None):
        raise fail("needs exactly one of exit_code and signal")
    if kind == RESOURCE_LIMIT and (event.limit is None or event.limit_value is None):
        raise fail("needs a limit and a limit_value")
    if kind == ERROR and event.code is None:
        raise fail("has no code")
    if kind == ATTACHED and (event.session is None or event.resume_from != event.sequence + 1):
        raise fail("needs a session and resume_from = sequence + 1")
    if kind == RUNTIMES and (event.session is not None or "runtimes" not in event.extra or "limits" not in event.extra):
        raise fail("needs runtimes and limits, and no session")
    if kind in FILE_ANSWER_TYPES and (event.request is None or event.path is None or event.session is not None):
        raise fail("needs a request and a path, and no session")
    if kind == FILE_DATA and (event.offset is None or event.size is None or event.last is None):
        raise fail("needs offset, size and last")
    if kind == FILE_WRITTEN and event.size is None:
        raise fail("needs size")
    if kind == FILE_LIST and event.entries is None:
        raise fail("needs entries")
    if kind == FILES_CHANGED and (event.session is None or event.changes is None):
        raise fail("needs a session and changes")
    if kind in DISPLAY_TYPES and (event.id is None or event.bundle is None):
        raise fail("needs an execution id and a bundle")
    if kind == UPDATE_DISPLAY and event.display_id is None:
        raise fail("needs a display_id")
    if kind == INPUT_REQUEST and (event.id is None or event.password is None):
        raise fail("needs an execution id and password")
    if kind in QUERY_ANSWER_TYPES and (event.request is None or event.session is not None or event.id is not None):
        raise fail("needs a request, and no session or execution id")
    if kind == COMPLETE_REPLY:
        start, end = event.cursor_start, event.cursor_end
        if event.matches is None or start is None or end is None or start > end:
            raise fail("needs matches and cursor_start <= cursor_end")
    if kind == INSPECT_REPLY and (event.found is None or (event.found and event.bundle is None)):
        raise fail("needs found, and a bundle when found")
    if kind == RESTARTED and (event.session is None or event.id is not None):
        raise fail("needs a session and no execution id")
    if kind == GAP:
        start, resume = event.missed_from, event.resume_from
        if event.session is None or start is None or resume is None:
            raise fail("needs a session, missed_from and resume_from")
        if not start < resume or event.sequence + 1 != resume:
            raise fail("needs missed_from < resume_from and sequence = resume_from - 1")


def decode_event(text: str | bytes) -> StreamEvent:
    """Decodes one text frame from the gateway; raises :class:`ProtocolError`
    if it is not a valid protocol v1 event."""
    try:
        obj = json.loads(text)
    except ValueError as err:
        raise ProtocolError(f"event is not valid JSON: {err}") from None
    return event_from_dict(obj)


def synthetic_event(
    kind: str,
    message: str,
    *,
    id: str | None = None,
    session: str | None = None,
    code: str | None = None,
    missed_from: int | None = None,
    resume_from: int | None = None,
) -> StreamEvent:
    """An event made by the client (``sequence`` 0 except for a gap, whose
    sequence is ``resume_from - 1`` as on the wire)."""
    sequence = resume_from - 1 if kind == GAP and resume_from is not None else 0
    return StreamEvent(
        type=kind,
        data=message,
        timestamp=time.time(),
        sequence=sequence,
        id=id,
        session=session,
        code=code,
        missed_from=missed_from,
        resume_from=resume_from,
    )
