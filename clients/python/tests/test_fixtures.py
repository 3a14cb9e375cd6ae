"""The shared protocol fixtures (protocol/fixtures/): every valid event and
client frame decodes, every invalid one is refused as its name says."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from sluice import KNOWN_ERROR_CODES, FrameError, ProtocolError, StreamEvent, decode_event, decode_frame
from sluice.frames import FRAME_TYPES

FIXTURES = Path(__file__).resolve().parents[3] / "protocol" / "fixtures"


def fixture_files(kind: str, verdict: str) -> list[Path]:
    directory = FIXTURES / kind / verdict
    files = sorted(p for p in directory.iterdir() if p.is_file() and p.name != "README.md")
    assert files, f"no fixtures in {directory}"
    return files


def ids(paths: list[Path]) -> list[str]:
    return [p.name for p in paths]


VALID_EVENTS = fixture_files("events", "valid")
INVALID_EVENTS = fixture_files("events", "invalid")
VALID_FRAMES = fixture_files("client", "valid")
INVALID_FRAMES = fixture_files("client", "invalid")


@pytest.mark.parametrize("path", VALID_EVENTS, ids=ids(VALID_EVENTS))
def test_valid_event_decodes(path: Path) -> None:
    event = decode_event(path.read_text(encoding="utf-8"))
    assert isinstance(event, StreamEvent)
    assert event.sequence >= 1 and event.timestamp > 0


@pytest.mark.parametrize("path", INVALID_EVENTS, ids=ids(INVALID_EVENTS))
def test_invalid_event_is_refused(path: Path) -> None:
    with pytest.raises(ProtocolError):
        decode_event(path.read_text(encoding="utf-8"))


@pytest.mark.parametrize("path", VALID_FRAMES, ids=ids(VALID_FRAMES))
def test_valid_client_frame_decodes(path: Path) -> None:
    frame = decode_frame(path.read_text(encoding="utf-8"))
    assert frame["type"] in FRAME_TYPES


@pytest.mark.parametrize("path", INVALID_FRAMES, ids=ids(INVALID_FRAMES))
def test_invalid_client_frame_is_refused_with_its_code(path: Path) -> None:
    expected = path.name.split("--", 1)[0]
    with pytest.raises(FrameError) as caught:
        decode_frame(path.read_text(encoding="utf-8"))
    assert caught.value.code == expected


def read_event(name: str) -> StreamEvent:
    return decode_event((FIXTURES / "events" / "valid" / name).read_text(encoding="utf-8"))


def test_fields_of_the_fixtures_are_read() -> None:
    completed = read_event("completed-exit-code.json")
    assert completed.is_terminal and completed.exit_code == 0 and completed.signal is None
    assert completed.usage is not None and completed.usage.stdout_bytes == 6
    assert completed.usage.first_output_ms == 12.5
    assert read_event("completed-signal.json").signal == 11
    assert read_event("completed-no-output.json").usage.first_output_ms is None  # type: ignore[union-attr]
    limit = read_event("resource-limit-output.json")
    assert (limit.limit, limit.limit_value, limit.is_terminal) == ("output", 1048576, True)
    assert limit.limit_observed is None
    workspace = read_event("resource-limit-workspace.json")
    assert (workspace.limit, workspace.limit_value, workspace.limit_observed) == (
        "workspace",
        8388608,
        8388608,
    )
    error = read_event("error-unknown-language.json")
    assert (error.code, error.is_terminal) == ("unknown_language", True)
    socket_error = read_event("error-socket.json")
    assert socket_error.code == "bad_request" and not socket_error.is_terminal
    gap = read_event("gap.json")
    assert (gap.missed_from, gap.resume_from, gap.is_terminal) == (1, 41, False)
    assert read_event("started.json").pid == 48213
    binary = read_event("stdout-base64.json")
    assert binary.encoding == "base64"
    assert binary.raw_bytes() == base64.b64decode("AP/+3q2+7w==")


def test_rich_output_fixtures() -> None:
    display = read_event("display.json")
    assert (display.type, display.id, display.data, display.display_id) == ("display", "cell-2", "<Table 2x2>", "t1")
    assert display.bundle is not None and set(display.bundle) == {"text/plain", "text/html", "application/json"}
    assert display.mime("text/html") == "<table><tr><td>1</td></tr></table>"
    assert display.mime("application/json") == {"rows": 2}, "a JSON type keeps its JSON value"
    assert display.mime("image/png") is None and display.mime_bytes("image/png") is None
    assert display.metadata == {} and display.execution_count is None and not display.is_terminal
    assert display.extra == {}, "the new fields are fields, not extras"
    update = read_event("update-display.json")
    assert (update.type, update.display_id, update.mime("text/plain")) == ("update_display", "t1", "50%")
    result = read_event("result.json")
    assert (result.type, result.data, result.execution_count, result.display_id) == ("result", "42", 2, None)
    # Events stay hashable: the bundle and metadata (dicts) are left out of the hash.
    assert len({display, update, result, display}) == 3
    # Other events have none of these fields.
    stdout = read_event("stdout.json")
    assert (stdout.bundle, stdout.metadata, stdout.display_id, stdout.execution_count) == (None, None, None, None)
    assert stdout.mime("text/plain") is None


def rich_event(**fields: object) -> str:
    event = {"type": "display", "data": "", "timestamp": 1.5, "sequence": 3, "id": "c", "session": "s"}
    return json.dumps({**event, **fields})


def test_mime_bytes_decodes_base64_data() -> None:
    png = b"\x89PNG\r\n\x1a\n\x00\xff"
    event = decode_event(rich_event(bundle={"image/png": base64.b64encode(png).decode(), "text/plain": "é"}))
    assert event.mime_bytes("image/png") == png
    with pytest.raises(ValueError):
        event.mime_bytes("text/plain")  # text, not base64
    json_event = decode_event(rich_event(bundle={"application/json": {"a": 1}}))
    with pytest.raises(ValueError):
        json_event.mime_bytes("application/json")


@pytest.mark.parametrize(
    "fields",
    [
        {"bundle": "<b>x</b>"},
        {"bundle": {"text/plain": "x"}, "metadata": [1]},
        {"bundle": {"text/plain": "x"}, "display_id": 7},
        {"type": "result", "bundle": {"text/plain": "x"}, "execution_count": -1},
        {"type": "result", "bundle": {"text/plain": "x"}, "id": None},
        {"type": "update_display", "bundle": {"text/plain": "x"}, "display_id": None},
    ],
)
def test_malformed_rich_output_is_refused(fields: dict[str, object]) -> None:
    with pytest.raises(ProtocolError):
        decode_event(rich_event(**fields))


def test_forward_compatible_fixtures() -> None:
    unknown_type = read_event("unknown-type.json")
    assert unknown_type.type == "progress" and not unknown_type.is_terminal
    assert unknown_type.extra == {"percent": 50}
    assert read_event("unknown-field.json").extra["host"] == "worker-3"
    assert read_event("error-unknown-code.json").code == "quota_exceeded"


def test_input_requests_and_cell_exceptions_decode() -> None:
    asked = decode_event((FIXTURES / "events" / "valid" / "input-request.json").read_text())
    assert (asked.type, asked.data, asked.password) == ("input_request", "Name: ", False)
    ended = decode_event((FIXTURES / "events" / "valid" / "completed-cell-exception.json").read_text())
    assert ended.execution_count == 3 and ended.exception is not None
    assert (ended.exception.ename, ended.exception.evalue) == ("ZeroDivisionError", "division by zero")
    assert ended.exception.traceback[-1] == "ZeroDivisionError: division by zero"


def test_query_fixtures() -> None:
    completed = read_event("complete-reply.json")
    assert (completed.type, completed.request, completed.session, completed.id) == ("complete_reply", "q1", None, None)
    assert (completed.matches, completed.cursor_start, completed.cursor_end) == (("sqrt",), 17, 19)
    assert completed.truncated is None and completed.extra == {}, "the new fields are fields, not extras"
    found = read_event("inspect-reply.json")
    assert (found.type, found.request, found.found) == ("inspect_reply", "q2", True)
    assert str(found.mime("text/plain")).startswith("Signature: len(obj, /)")
    missing = read_event("inspect-reply-not-found.json")
    assert (missing.found, missing.bundle) == (False, None)
    busy = read_event("error-kernel-busy.json")
    assert (busy.code, busy.for_session, busy.request, busy.is_terminal) == ("kernel_busy", "nb", "q4", False)
    assert {"kernel_busy", "no_kernel", "query_timeout"} <= KNOWN_ERROR_CODES
    frame = decode_frame((FIXTURES / "client" / "valid" / "complete.json").read_text())
    code = frame["code"]
    assert code[: frame["cursor_pos"]].endswith("math.sq") and frame["cursor_pos"] == len(code)


@pytest.mark.parametrize(
    "fields",
    [
        {"matches": "sqrt", "cursor_start": 0, "cursor_end": 0},
        {"matches": ["a", 1], "cursor_start": 0, "cursor_end": 0},
        {"matches": [], "cursor_start": 2, "cursor_end": 1},
        {"matches": [], "cursor_start": -1, "cursor_end": 1},
        {"matches": [], "cursor_start": 0},
        {"matches": [], "cursor_start": 0, "cursor_end": 0, "request": None},
        {"matches": [], "cursor_start": 0, "cursor_end": 0, "session": "nb"},
        {"type": "inspect_reply", "found": "yes"},
        {"type": "inspect_reply"},
        {"type": "inspect_reply", "found": True, "bundle": None},
        {"type": "inspect_reply", "found": False, "id": "x", "session": "nb"},
    ],
)
def test_malformed_query_answers_are_refused(fields: dict[str, object]) -> None:
    event = {"type": "complete_reply", "data": "", "timestamp": 1.5, "sequence": 3, "id": None, "session": None}
    with pytest.raises(ProtocolError):
        decode_event(json.dumps({"request": "q1", **event, **fields}))
