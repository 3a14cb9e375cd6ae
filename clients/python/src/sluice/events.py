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
class StreamEvent:
    """One event from the gateway.

    The first four fields are those of every event; ``id`` and ``session`` route
    it; the rest are present only on the types that carry them (``None``
    otherwise). Events made by the client itself (the end of an execution when
    the connection is lost for good, for example) have ``sequence`` 0.
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
