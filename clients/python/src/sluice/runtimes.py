"""What a gateway offers: its languages and the limits a request may ask for
(PROTOCOL.md, the ``runtimes`` frame), as :meth:`SandboxClient.runtimes` returns it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .errors import ProtocolError


@dataclass(frozen=True, slots=True)
class RuntimeInfo:
    """One language the gateway runs for this client."""

    #: The name an execute gives as its ``language``.
    language: str
    #: The file the code is written to (``main.py``) and its extension (``py``).
    file_name: str
    extension: str
    #: ``persistent=True`` works (a session's interpreter keeps its state).
    persistent: bool
    #: A program can run on a terminal (False until the gateway has terminal mode).
    tty: bool
    #: Its programs may reach the network.
    network: bool
    #: The interpreter's own account of its version, when it gives one.
    version: str | None = None
    #: A Python interpreter's packages (a virtual environment's included), sorted
    #: by name; None for other languages.
    packages: tuple[PackageInfo, ...] | None = None
    #: The package index pip installs from, when the operator offers one (a session
    #: that keeps a workspace installs into its own package layer).
    package_index: str | None = None


@dataclass(frozen=True, slots=True)
class PackageInfo:
    """One installed package of a runtime."""

    name: str
    version: str


@dataclass(frozen=True, slots=True)
class LimitRange:
    """A limit's default (when a request names none) and the largest value a
    request may ask for."""

    default: int
    max: int


@dataclass(frozen=True, slots=True)
class Catalog:
    """The languages this client may run, sorted by name, and each limit's range
    by the name ``limits`` uses (``timeout_ms``, ``memory_bytes``, ...)."""

    runtimes: tuple[RuntimeInfo, ...]
    limits: Mapping[str, LimitRange]

    def runtime(self, language: str) -> RuntimeInfo | None:
        """The entry of ``language``, if this client may run it."""
        return next((r for r in self.runtimes if r.language == language), None)


def catalog_from_fields(fields: Mapping[str, Any]) -> Catalog:
    """Reads the ``runtimes`` and ``limits`` fields of a ``runtimes`` event (or
    the body of ``GET /v1/runtimes``); raises :class:`ProtocolError` when they
    are not what the protocol says."""
    runtimes, limits = fields.get("runtimes"), fields.get("limits")
    if not isinstance(runtimes, list) or not isinstance(limits, dict):
        raise ProtocolError("runtimes event needs a 'runtimes' list and a 'limits' object")
    try:
        entries = tuple(
            RuntimeInfo(
                language=_typed(r, "language", str),
                file_name=_typed(r, "file_name", str),
                extension=_typed(r, "extension", str),
                persistent=_typed(r, "persistent", bool),
                tty=_typed(r, "tty", bool),
                network=_typed(r, "network", bool),
                version=_typed(r, "version", str, optional=True),
                packages=_packages(r),
                package_index=_typed(r, "package_index", str, optional=True),
            )
            for r in runtimes
        )
        ranges = {
            name: LimitRange(default=_typed(v, "default", int), max=_typed(v, "max", int)) for name, v in limits.items()
        }
    except (TypeError, AttributeError) as err:
        raise ProtocolError(f"runtimes event is malformed: {err}") from None
    return Catalog(runtimes=entries, limits=ranges)


def _typed(obj: Any, field: str, kind: type, *, optional: bool = False) -> Any:
    if not isinstance(obj, dict):
        raise TypeError("an entry is not an object")
    value = obj.get(field)
    if value is None and optional:
        return None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise TypeError(f"{field!r} is not a {kind.__name__}")
    return value


def _packages(obj: Any) -> tuple[PackageInfo, ...] | None:
    listed = _typed(obj, "packages", list, optional=True)
    if listed is None:
        return None
    return tuple(PackageInfo(name=_typed(p, "name", str), version=_typed(p, "version", str)) for p in listed)
