"""Frames the client sends (PROTOCOL.md §4): builders and a validator.

Every frame is checked with :func:`validate_frame` before it is sent, so a
request the gateway would refuse as ``bad_request`` fails at once with a
:class:`~sluice.errors.FrameError` that names the problem, instead of as an
``error`` event the client could not always attribute to a request.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any, TypedDict

from .errors import FrameError

#: Most bytes (of UTF-8) in an execution id, a session name or a language.
MAX_NAME_BYTES = 128

FRAME_TYPES = (
    "execute",
    "stdin",
    "cancel",
    "attach",
    "detach",
    "ack",
    "runtimes",
    "resize",
    "write_file",
    "read_file",
    "list_files",
    "delete_file",
    "restart",
    "complete",
    "inspect",
)

#: The frames that work on a session's workspace; each carries a ``request`` id.
FILE_FRAME_TYPES = ("write_file", "read_file", "list_files", "delete_file")

#: The frames that ask a session's persistent interpreter something (PROTOCOL.md
#: 4.11); each carries a ``request`` id, and its answer comes on the socket's stream.
QUERY_FRAME_TYPES = ("complete", "inspect")

#: The largest ``detail_level`` of an ``inspect`` (1: the source too).
MAX_DETAIL_LEVEL = 1

#: Most columns or rows a terminal (``tty``) may have; the least is 1.
MAX_TERMINAL_SIDE = 1000

#: The terminal size, ``(cols, rows)``, of a ``tty`` execution that names none.
DEFAULT_TERMINAL_SIZE = (80, 24)

#: The ``TERM`` of a ``tty`` execution that names none.
DEFAULT_TERM = "xterm-256color"

#: Most bytes in a ``term``: letters, digits and ``.+-_`` (ASCII), at least one.
MAX_TERM_BYTES = 64

_TERM_NAME = re.compile(r"[A-Za-z0-9.+\-_]+")

LIMIT_NAMES = (
    "timeout_ms",
    "output_bytes",
    "cpu_ms",
    "file_size_bytes",
    "open_files",
    "memory_bytes",
    "processes",
)


class Limits(TypedDict, total=False):
    """Per-execution limits (PROTOCOL.md §9.1); an absent one takes the
    gateway's default."""

    timeout_ms: int
    output_bytes: int
    cpu_ms: int
    file_size_bytes: int
    open_files: int
    memory_bytes: int
    processes: int


class ExecuteOptions(TypedDict, total=False):
    """The options of an execution request, besides its code and language.

    Defined once: :meth:`SandboxClient.execute <sluice.SandboxClient.execute>`,
    ``execute_code_stream`` and ``run`` (and their blocking twins in
    :mod:`sluice.sync`) take them as keyword arguments (``**options``).

    - ``id``: the execution id (default: a fresh one from the client).
    - ``session``: run in this named session (created if needed); it makes the
      execution resumable even before its first event.
    - ``persistent``: run as a cell of the session's Python interpreter.
    - ``stdin``: the whole standard input (or use ``Execution.send_stdin``).
    - ``env``, ``args``: environment variables added, program arguments.
    - ``limits``: the names of PROTOCOL.md §9.1 (``timeout_ms``, ...).
    - ``encoding``: ``"utf8"`` (the default) or ``"base64"`` (exact bytes).
    - ``tty``: run the program on a pseudo-terminal: it sees a terminal on its
      stdin, stdout and stderr; its output is one ``stdout`` stream of the
      terminal's bytes (stderr merged, ``"\\n"`` sent as ``"\\r\\n"``); input is
      typed (``"\\x03"`` is Ctrl-C, ``eof`` types Ctrl-D and input stays open).
      Resize it with :meth:`Execution.resize <sluice.Execution.resize>`. Not with
      ``persistent``.
    - ``cols``, ``rows``: the terminal's size (1 to 1000; default 80 x 24). Only
      with ``tty``.
    - ``term``: the program's ``TERM`` (default ``xterm-256color``; 1 to 64
      letters, digits or ``.+-_``). Only with ``tty``.
    - ``files``: more files of the program, path (relative to its working
      directory) to text, written there before it starts (``{"util.py": ...}``
      for a ``main.py`` that imports it). Not with ``persistent``.
    - ``workspace``: give the ``session`` (needed) a workspace, a directory that
      outlives the execution: this execution and every later one of the session
      start in it, and the file methods (``write_file``, ``read_file``, ...)
      reach it. The client stays attached to the session until it is closed.
    """

    id: str | None
    session: str | None
    persistent: bool
    stdin: str | None
    env: Mapping[str, str] | None
    args: Sequence[str] | None
    limits: Limits | Mapping[str, int] | None
    encoding: str
    tty: bool
    cols: int | None
    rows: int | None
    term: str | None
    files: Mapping[str, str] | None
    workspace: bool


def _bad(message: str) -> FrameError:
    return FrameError("bad_request", message)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _name(frame: Mapping[str, Any], field: str, *, required: bool) -> None:
    value = frame.get(field)
    if value is None:
        if required:
            raise _bad(f"{frame['type']} frame needs a string {field!r}")
        return
    if not isinstance(value, str):
        raise _bad(f"{field!r} must be a string, not {type(value).__name__}")
    if not value:
        raise _bad(f"{field!r} must not be empty")
    if len(value.encode("utf-8")) > MAX_NAME_BYTES:
        raise _bad(f"{field!r} is longer than {MAX_NAME_BYTES} bytes")


def _typed(frame: Mapping[str, Any], field: str, kind: type, what: str) -> None:
    """Checks that optional ``field``, when present and not null, is a ``kind``."""
    value = frame.get(field)
    if value is not None and not isinstance(value, kind):
        raise _bad(f"{field!r} must be {what}")


def _sequence_number(frame: Mapping[str, Any], field: str, *, required: bool) -> None:
    value = frame.get(field)
    if value is None:
        if required:
            raise _bad(f"{frame['type']} frame needs an integer {field!r}")
        return
    if not _is_int(value) or value < 0:
        raise _bad(f"{field!r} must be a non-negative integer")


def _check_execute(frame: Mapping[str, Any]) -> None:
    _name(frame, "id", required=True)
    _name(frame, "language", required=True)
    _name(frame, "session", required=False)
    if not isinstance(frame.get("code"), str):
        raise _bad("execute frame needs a string 'code'")
    _typed(frame, "stdin", str, "a string")
    _typed(frame, "persistent", bool, "a boolean")
    if frame.get("persistent") and frame.get("session") is None:
        raise _bad('"persistent": true needs a "session" for the interpreter to live in')
    encoding = frame.get("encoding")
    if encoding is not None and encoding not in ("utf8", "base64"):
        raise _bad(f"unknown encoding {encoding!r}; expected utf8 or base64")
    env = frame.get("env")
    if env is not None:
        if not isinstance(env, dict):
            raise _bad("'env' must be an object of strings")
        for key, value in env.items():
            if not isinstance(value, str):
                raise _bad(f"env value of {key!r} must be a string")
            if not key or "=" in key or "\0" in key:
                raise _bad(f"env name {key!r} is empty or contains '=' or NUL")
            if "\0" in value:
                raise _bad("env values may not contain NUL")
    args = frame.get("args")
    if args is not None:
        if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
            raise _bad("'args' must be an array of strings")
        if any("\0" in a for a in args):
            raise _bad("args may not contain NUL")
    _check_terminal(frame)
    _check_files(frame)
    _typed(frame, "workspace", bool, "a boolean")
    _typed(frame, "ack", bool, "a boolean")
    if frame.get("workspace") and frame.get("session") is None:
        raise _bad('"workspace": true needs a "session" for the workspace to live in')
    limits = frame.get("limits")
    if limits is not None:
        if not isinstance(limits, dict):
            raise _bad("'limits' must be an object")
        for name in LIMIT_NAMES:
            value = limits.get(name)
            if value is not None and (not _is_int(value) or value < 0):
                raise _bad(f"limit {name!r} must be a non-negative integer, not {value!r}")


def _side(frame: Mapping[str, Any], field: str, *, required: bool) -> None:
    """A terminal's columns or rows: an integer from 1 to :data:`MAX_TERMINAL_SIDE`."""
    value = frame.get(field)
    if value is None:
        if required:
            raise _bad(f"{frame['type']} frame needs an integer {field!r}")
        return
    if not _is_int(value) or not 1 <= value <= MAX_TERMINAL_SIDE:
        raise _bad(f"{field!r} must be 1 to {MAX_TERMINAL_SIDE}, not {value!r}")


#: Files an ``execute`` may carry, at most.
MAX_FILES = 256
#: The longest path of such a file, in bytes.
MAX_FILE_PATH_BYTES = 1024
#: The longest component of such a path (the file system's NAME_MAX), in bytes.
MAX_FILE_NAME_BYTES = 255


def _check_file_path(path: str) -> str | None:
    """Why ``path`` cannot be a path of ``files`` (relative, plain components, no
    NUL, at most 1024 bytes), or ``None``."""
    if not path:
        return "the path is empty"
    if len(path.encode("utf-8")) > MAX_FILE_PATH_BYTES:
        return "the path is longer than 1024 bytes"
    if path.startswith("/"):
        return "the path is absolute; paths are relative to the working directory"
    if "\0" in path:
        return "the path contains NUL"
    for component in path.split("/"):
        if component == "":
            return 'the path has an empty component ("//" or a trailing "/")'
        if component in (".", ".."):
            return 'the path has a "." or ".." component'
        if len(component.encode("utf-8")) > MAX_FILE_NAME_BYTES:
            return "a component of the path is longer than 255 bytes"
    return None


#: Names starting with this, at the top of a workspace, are the gateway's own.
RESERVED_PREFIX = ".sluice-"

#: The most permission bits a written file may ask for (no set-id or sticky bits).
MAX_FILE_MODE = 0o777


def _workspace_path_problem(path: str) -> str | None:
    """Why ``path`` cannot name a file of a workspace (nor be a path of an execute's
    ``files``): not plain, or one of the gateway's own names; or ``None``."""
    why = _check_file_path(path)
    if why is None and path.startswith(RESERVED_PREFIX):
        why = f'names starting with "{RESERVED_PREFIX}" at the top of the workspace are the gateway\'s own'
    return why


def _check_workspace_path(frame: Mapping[str, Any], *, required: bool) -> None:
    """The ``path`` of a file frame: a plain relative path (as a path of
    ``files``) that is not one of the gateway's own names; code ``invalid_path``."""
    path = frame.get("path")
    if path is None:
        if required:
            raise _bad(f"{frame['type']} frame needs a string 'path'")
        return
    if not isinstance(path, str):
        raise _bad(f"'path' must be a string, not {type(path).__name__}")
    why = _workspace_path_problem(path)
    if why is not None:
        raise FrameError("invalid_path", f"path {path!r:.80}: {why}")


def _check_file_frame(frame: Mapping[str, Any]) -> None:
    kind = frame["type"]
    _name(frame, "request", required=True)
    _check_workspace_path(frame, required=kind != "list_files")
    _name(frame, "session", required=True)
    encoding = frame.get("encoding")
    if encoding is not None and encoding not in ("utf8", "base64"):
        raise _bad(f"unknown encoding {encoding!r}; expected utf8 or base64")
    if kind == "write_file":
        data = frame.get("data")
        if not isinstance(data, str):
            raise _bad("write_file frame needs a string 'data'")
        _typed(frame, "append", bool, "a boolean")
        mode = frame.get("mode")
        if mode is not None and (not _is_int(mode) or not 0 <= mode <= MAX_FILE_MODE):
            raise _bad(f"'mode' must be 0 to 0o777 (no set-id or sticky bits), not {mode!r}")
        if encoding != "base64" and "\0" in data:
            raise _bad("text may not contain NUL; send it as base64")
    elif kind == "read_file":
        _sequence_number(frame, "offset", required=False)
        _sequence_number(frame, "length", required=False)
    elif kind == "delete_file":
        _typed(frame, "recursive", bool, "a boolean")


def _check_query_frame(frame: Mapping[str, Any]) -> None:
    """A ``complete`` or ``inspect``: ``request``, ``session``, ``code``, and a
    ``cursor_pos`` within the code, counted in code points (a Python ``str`` index)."""
    kind = frame["type"]
    _name(frame, "request", required=True)
    _name(frame, "session", required=True)
    code = frame.get("code")
    if not isinstance(code, str):
        raise _bad(f"{kind} frame needs a string 'code'")
    _sequence_number(frame, "cursor_pos", required=True)
    if frame["cursor_pos"] > len(code):
        raise _bad(f"'cursor_pos' {frame['cursor_pos']} is past the end of 'code', which has {len(code)} code points")
    if kind == "inspect":
        level = frame.get("detail_level")
        if level is not None and (not _is_int(level) or not 0 <= level <= MAX_DETAIL_LEVEL):
            raise _bad(f"'detail_level' is 0 or 1, not {level!r}")


def _check_files(frame: Mapping[str, Any]) -> None:
    """The ``files`` of an ``execute``: an object of path to text, not with
    ``persistent``, at most :data:`MAX_FILES`, no path both a file and a directory."""
    files = frame.get("files")
    if files is None:
        return
    if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
        raise _bad("'files' must be an object of path to text")
    if not files:
        return
    if frame.get("persistent"):
        raise _bad("'files' are for a program of its own: a persistent cell runs in the session's interpreter")
    if len(files) > MAX_FILES:
        raise _bad(f"{len(files)} files, more than the {MAX_FILES} an execute may carry")
    for path, text in files.items():
        why = _workspace_path_problem(path)
        if why is not None:
            raise _bad(f"file {path!r:.80}: {why}")
        if "\0" in text:
            raise _bad(f"file {path!r:.80}: text may not contain NUL")
        parent = path
        while "/" in parent:
            parent = parent.rsplit("/", 1)[0]
            if parent in files:
                raise _bad(f"{parent!r:.80} is a file, so it cannot hold {path!r:.80}")


def _check_terminal(frame: Mapping[str, Any]) -> None:
    """The terminal fields of an ``execute``: ``cols``, ``rows`` and ``term`` only
    with ``"tty": true``, ``tty`` never with ``persistent``, all in range."""
    _typed(frame, "tty", bool, "a boolean")
    if not frame.get("tty"):
        for field in ("cols", "rows", "term"):
            if frame.get(field) is not None:
                raise _bad(f'{field!r} is only for a terminal: add "tty": true')
        return
    if frame.get("persistent"):
        raise _bad(
            '"tty" and "persistent" do not go together: '
            "a cell runs in the session's interpreter, which has no terminal"
        )
    _side(frame, "cols", required=False)
    _side(frame, "rows", required=False)
    term = frame.get("term")
    if term is not None and (
        not isinstance(term, str) or len(term.encode("utf-8")) > MAX_TERM_BYTES or not _TERM_NAME.fullmatch(term)
    ):
        raise _bad(
            f"'term' must be 1 to {MAX_TERM_BYTES} letters, digits or .+-_ (like {DEFAULT_TERM!r}), not {term!r:.80}"
        )


def validate_frame(frame: object) -> None:
    """Raises :class:`FrameError` (code ``bad_request``) if the gateway would
    refuse ``frame`` for its shape alone. Unknown fields are allowed."""
    if not isinstance(frame, dict):
        raise _bad("frame must be a JSON object")
    kind = frame.get("type")
    if not isinstance(kind, str):
        raise _bad("frame needs a string 'type'")
    if kind not in FRAME_TYPES:
        raise _bad(f"unknown frame type {kind!r}; expected one of {', '.join(FRAME_TYPES)}")
    if kind == "execute":
        _check_execute(frame)
    elif kind in ("stdin", "cancel"):
        _name(frame, "id", required=True)
        _name(frame, "session", required=False)
        if kind == "stdin":
            _typed(frame, "data", str, "a string")
            _typed(frame, "eof", bool, "a boolean")
            if frame.get("data") is None and frame.get("eof") is not True:
                raise _bad('stdin frame needs "data", "eof": true, or both')
    elif kind == "resize":
        _name(frame, "id", required=True)
        _name(frame, "session", required=False)
        _side(frame, "cols", required=True)
        _side(frame, "rows", required=True)
    elif kind == "runtimes":
        pass
    elif kind in FILE_FRAME_TYPES:
        _check_file_frame(frame)
    elif kind in QUERY_FRAME_TYPES:
        _check_query_frame(frame)
    else:
        _name(frame, "session", required=True)
        if kind == "attach":
            _sequence_number(frame, "since", required=False)
            _typed(frame, "workspace", bool, "a boolean")
            _typed(frame, "ack", bool, "a boolean")
        elif kind == "ack":
            _sequence_number(frame, "sequence", required=True)


def decode_frame(text: str | bytes) -> dict[str, Any]:
    """Parses and validates a client frame, as the gateway would; raises
    :class:`FrameError` with the code the gateway would answer with."""
    try:
        frame = json.loads(text)
    except ValueError as err:
        raise _bad(f"frame is not valid JSON: {err}") from None
    validate_frame(frame)
    assert isinstance(frame, dict)
    return frame


def encode(frame: Mapping[str, Any]) -> str:
    """Validates ``frame`` and encodes it as compact JSON text."""
    validate_frame(dict(frame))
    return json.dumps(frame, ensure_ascii=False, separators=(",", ":"))


def execute_frame(id: str, language: str, code: str, options: ExecuteOptions) -> dict[str, Any]:
    """An ``execute`` frame (optional fields only when set). Raises
    :class:`TypeError` for an option :class:`ExecuteOptions` does not name."""
    known = ExecuteOptions.__annotations__
    unknown = set(options) - set(known)
    if unknown:
        raise TypeError(f"unknown execute option(s) {sorted(unknown)}; known: {', '.join(known)}")
    frame: dict[str, Any] = {"type": "execute", "id": id, "language": language, "code": code}
    session = options.get("session")
    stdin = options.get("stdin")
    env = options.get("env")
    args = options.get("args")
    limits = options.get("limits")
    encoding = options.get("encoding", "utf8")
    if session is not None:
        frame["session"] = session
    if options.get("persistent", False):
        frame["persistent"] = True
    if stdin is not None:
        frame["stdin"] = stdin
    if env:
        frame["env"] = dict(env)
    if args:
        frame["args"] = list(args)
    if limits:
        unknown = set(limits) - set(LIMIT_NAMES)
        if unknown:
            raise _bad(f"unknown limit(s) {sorted(unknown)}; known: {', '.join(LIMIT_NAMES)}")
        frame["limits"] = dict(limits)
    if encoding != "utf8":
        frame["encoding"] = encoding
    if options.get("tty", False):
        frame["tty"] = True
    for field in ("cols", "rows", "term"):
        value = options.get(field)
        if value is not None:
            frame[field] = value
    files = options.get("files")
    if files:
        frame["files"] = dict(files)
    if options.get("workspace", False):
        frame["workspace"] = True
    validate_frame(frame)
    return frame


def stdin_frame(id: str, session: str | None, data: str | None, eof: bool) -> dict[str, Any]:
    """A ``stdin`` frame."""
    frame: dict[str, Any] = {"type": "stdin", "id": id}
    if session is not None:
        frame["session"] = session
    if data is not None:
        frame["data"] = data
    if eof:
        frame["eof"] = True
    return frame


def cancel_frame(id: str, session: str | None) -> dict[str, Any]:
    """A ``cancel`` frame."""
    frame: dict[str, Any] = {"type": "cancel", "id": id}
    if session is not None:
        frame["session"] = session
    return frame


def attach_frame(session: str, since: int, workspace: bool = False, ack: bool = False) -> dict[str, Any]:
    """An ``attach`` frame; with ``workspace``, one that opens the session (created
    if needed) with a workspace; with ``ack``, one that says the client acknowledges
    the session's events."""
    frame: dict[str, Any] = {"type": "attach", "session": session, "since": since}
    if workspace:
        frame["workspace"] = True
    if ack:
        frame["ack"] = True
    return frame


def detach_frame(session: str) -> dict[str, Any]:
    """A ``detach`` frame."""
    return {"type": "detach", "session": session}


def ack_frame(session: str, sequence: int) -> dict[str, Any]:
    """An ``ack`` frame."""
    return {"type": "ack", "session": session, "sequence": sequence}


def resize_frame(id: str, session: str | None, cols: int, rows: int) -> dict[str, Any]:
    """A ``resize`` frame: the terminal of execution ``id`` becomes ``cols`` x ``rows``."""
    frame: dict[str, Any] = {"type": "resize", "id": id}
    if session is not None:
        frame["session"] = session
    frame["cols"] = cols
    frame["rows"] = rows
    return frame


def restart_frame(session: str) -> dict[str, Any]:
    """A ``restart`` frame: a fresh interpreter for ``session``."""
    return {"type": "restart", "session": session}


def complete_frame(request: str, session: str, code: str, cursor_pos: int) -> dict[str, Any]:
    """A ``complete`` frame: the completions of the name that ends at ``cursor_pos``
    (code points, a Python ``str`` index) in ``code``, from ``session``'s interpreter."""
    return {"type": "complete", "request": request, "session": session, "code": code, "cursor_pos": cursor_pos}


def inspect_frame(request: str, session: str, code: str, cursor_pos: int, detail_level: int = 0) -> dict[str, Any]:
    """An ``inspect`` frame: what ``session``'s interpreter knows of the name at
    ``cursor_pos`` in ``code`` (``detail_level`` 1: its source too). ``detail_level``
    0, the default, is left out."""
    frame: dict[str, Any] = {
        "type": "inspect",
        "request": request,
        "session": session,
        "code": code,
        "cursor_pos": cursor_pos,
    }
    if detail_level != 0:
        frame["detail_level"] = detail_level
    return frame


def runtimes_frame() -> dict[str, Any]:
    """A ``runtimes`` frame: which languages may this client run, with which limits."""
    return {"type": "runtimes"}


def write_file_frame(
    request: str,
    session: str,
    path: str,
    data: str,
    *,
    encoding: str = "utf8",
    append: bool = False,
    mode: int | None = None,
) -> dict[str, Any]:
    """A ``write_file`` frame: ``data`` (text, or base64 with ``encoding="base64"``)
    becomes ``path`` (or is added to its end with ``append``)."""
    frame: dict[str, Any] = {"type": "write_file", "request": request, "session": session, "path": path, "data": data}
    if encoding != "utf8":
        frame["encoding"] = encoding
    if append:
        frame["append"] = True
    if mode is not None:
        frame["mode"] = mode
    return frame


def read_file_frame(
    request: str,
    session: str,
    path: str,
    *,
    offset: int = 0,
    length: int | None = None,
    encoding: str = "base64",
) -> dict[str, Any]:
    """A ``read_file`` frame (base64 by default: the bytes come back exact)."""
    frame: dict[str, Any] = {"type": "read_file", "request": request, "session": session, "path": path}
    if offset:
        frame["offset"] = offset
    if length is not None:
        frame["length"] = length
    if encoding != "utf8":
        frame["encoding"] = encoding
    return frame


def list_files_frame(request: str, session: str, path: str = "") -> dict[str, Any]:
    """A ``list_files`` frame: the directory ``path`` (``""``: the workspace itself)."""
    frame: dict[str, Any] = {"type": "list_files", "request": request, "session": session}
    if path:
        frame["path"] = path
    return frame


def delete_file_frame(request: str, session: str, path: str, *, recursive: bool = False) -> dict[str, Any]:
    """A ``delete_file`` frame (a directory with its content only with ``recursive``)."""
    frame: dict[str, Any] = {"type": "delete_file", "request": request, "session": session, "path": path}
    if recursive:
        frame["recursive"] = True
    return frame
