"""What a session's persistent interpreter answers about code being edited
(PROTOCOL.md 4.11): completions (``complete``) and what it knows of a name
(``inspect``), as a notebook's Tab and Shift-Tab.

Cursor positions are Unicode code points, which is how a Python ``str`` is
indexed: ``code[:cursor_pos]`` is the text before the cursor, and
``code[completions.cursor_start:completions.cursor_end]`` the text a match
replaces.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .events import StreamEvent


@dataclass(slots=True)
class Completions:
    """The answer to :meth:`SandboxClient.complete <sluice.SandboxClient.complete>`.

    Each of ``matches`` replaces ``code[cursor_start:cursor_end]`` of the code
    asked about (code points, a Python ``str`` index); ``truncated`` is True when
    the interpreter had more matches than it sent. No match: an empty list.
    """

    matches: list[str]
    cursor_start: int
    cursor_end: int
    truncated: bool = False

    def apply(self, code: str, match: str) -> str:
        """``code`` with ``match`` in place of the text it completes."""
        return code[: self.cursor_start] + match + code[self.cursor_end :]

    @classmethod
    def from_event(cls, event: StreamEvent) -> Completions:
        """From a ``complete_reply`` event."""
        return cls(
            matches=list(event.matches or ()),
            cursor_start=event.cursor_start or 0,
            cursor_end=event.cursor_end or 0,
            truncated=event.truncated is True,
        )


@dataclass(slots=True)
class Inspection:
    """The answer to :meth:`SandboxClient.inspect <sluice.SandboxClient.inspect>`.

    ``found`` is False when the interpreter knows no name at the cursor;
    ``bundle`` maps MIME types to data (``text/plain``: signature, type, value,
    documentation; ``{}`` when not found).
    """

    found: bool
    bundle: dict[str, Any] = field(default_factory=dict)

    @property
    def text(self) -> str:
        """The bundle's ``text/plain`` ("" when it has none)."""
        value = self.bundle.get("text/plain", "")
        return value if isinstance(value, str) else ""

    @classmethod
    def from_event(cls, event: StreamEvent) -> Inspection:
        """From an ``inspect_reply`` event."""
        return cls(found=event.found is True, bundle=dict(event.bundle or {}))
