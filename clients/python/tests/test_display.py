"""Rich output against a real gateway: ``display``, ``update_display`` and
``result`` events from persistent Python cells and from any program's display
records, in their place among the text, and gathered in ``ExecutionResult``
(``displays``, ``value``)."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable
from typing import TypeVar

from sluice import DISPLAY_TYPES, FrameError, SandboxClient, StreamEvent
from sluice import sync as sluice_sync

T = TypeVar("T")

#: Bound on every wait; no test should come near it.
WAIT = 30.0

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

#: A cell that defines what the others show: a table with an HTML form, and a
#: one-pixel PNG image written with the standard library alone.
SETUP = r"""
import struct, zlib

class Table:
    def __init__(self, rows):
        self.rows = rows
    def _repr_html_(self):
        cells = "".join(f"<tr><td>{a}</td><td>{b}</td></tr>" for a, b in self.rows)
        return f"<table>{cells}</table>"
    def __repr__(self):
        return f"Table({len(self.rows)} rows)"

def chunk(kind, body):
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

class Pixel:
    def _repr_png_(self):
        header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
        return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                + chunk(b"IDAT", zlib.compress(b"\x00\xff\x00\x00")) + chunk(b"IEND", b""))
    def __repr__(self):
        return "<red pixel>"
"""


async def within(awaitable: Awaitable[T], seconds: float = WAIT) -> T:
    return await asyncio.wait_for(awaitable, seconds)


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(6)}"


def transcript(events: list[StreamEvent]) -> list[tuple[str, str]]:
    """The output and rich output of ``events`` as (type, data), in order, with
    adjacent output of one stream joined (a program's writes may come in any
    number of events)."""
    out: list[tuple[str, str]] = []
    for event in events:
        if not (event.is_output or event.type in DISPLAY_TYPES):
            continue
        if event.is_output and out and out[-1][0] == event.type:
            out[-1] = (event.type, out[-1][1] + event.data)
        else:
            out.append((event.type, event.data))
    return out


async def test_a_cell_shows_displays_an_update_and_its_value(gateway_url: str) -> None:
    session = unique("nb")
    code = (
        "print('before')\n"
        "progress = display('0%', display_id=True)\n"
        "display(Pixel())\n"
        "progress.update('50%')\n"
        "update_display('100%', display_id=progress.display_id)\n"
        "print('after')\n"
        "Table([(5, 6)])\n"
    )
    async with SandboxClient(gateway_url) as client:
        setup = await within(client.run(SETUP, session=session, persistent=True, check=True))
        assert setup.displays == () and setup.value is None, "a cell without a value has no result"
        execution = await client.execute(code, session=session, persistent=True)
        events = [event async for event in execution]
        result = await within(execution.wait(check=True))

    # In their place among the text, and nothing of the records in the text.
    assert transcript(events) == [
        ("stdout", "before\n"),
        ("display", "'0%'"),
        ("display", "<red pixel>"),
        ("update_display", "'50%'"),
        ("update_display", "'100%'"),
        ("stdout", "after\n"),
        ("result", "Table(1 rows)"),
    ], events
    assert result.stdout == "before\nafter\n"

    # The result gathers them: displays in order, the cell's value apart.
    assert list(result.displays) == [e for e in events if e.type in ("display", "update_display")]
    progress, pixel, half, full = result.displays
    assert progress.display_id is not None and pixel.display_id is None
    assert (half.display_id, full.display_id) == (progress.display_id, progress.display_id)
    assert (progress.mime("text/plain"), full.mime("text/plain")) == ("'0%'", "'100%'")
    assert progress.metadata == {} and progress.id == execution.id and progress.session == session
    image = pixel.mime_bytes("image/png")
    assert image is not None and image.startswith(PNG_SIGNATURE), image
    assert pixel.mime("text/html") is None and pixel.mime_bytes("image/jpeg") is None

    value = result.value
    assert value is not None and value.type == "result"
    assert value == events[-2], "the value comes just before the terminal event"
    assert value.data == "Table(1 rows)"
    assert value.mime("text/html") == "<table><tr><td>5</td><td>6</td></tr></table>"
    assert value.execution_count == 2, "the session's second cell"
    assert value.display_id is None and value.metadata == {}


async def test_a_handle_updates_a_display_of_an_earlier_cell(gateway_url: str) -> None:
    session = unique("nb")
    async with SandboxClient(gateway_url) as client:
        first = await within(
            client.run("status = display('working', display_id=True)", session=session, persistent=True)
        )
        second = await within(client.run("status.update('done')\n40 + 2", session=session, persistent=True))
    assert first.ok and second.ok, (first, second)
    (shown,) = first.displays
    (update,) = second.displays
    assert (shown.type, shown.data, update.type, update.data) == ("display", "'working'", "update_display", "'done'")
    assert shown.display_id is not None and update.display_id == shown.display_id
    assert second.value is not None and (second.value.data, second.value.execution_count) == ("42", 2)
    assert second.stdout == "", "a cell's value is no longer printed"


async def test_json_bundles_and_metadata_keep_their_values(gateway_url: str) -> None:
    code = (
        "class Chart:\n"
        "    def _repr_mimebundle_(self, include=None, exclude=None):\n"
        "        return ({'application/vnd.example+json': {'points': [1, 2.5]}, 'text/plain': 'chart'},\n"
        "                {'application/vnd.example+json': {'height': 200}})\n"
        "display(Chart())\n"
        "display({'application/json': [1, {'a': None}], 'text/markdown': '**raw**'}, raw=True)\n"
    )
    async with SandboxClient(gateway_url) as client:
        result = await within(client.run(code, session=unique("nb"), persistent=True, check=True))
    chart, raw = result.displays
    assert chart.mime("application/vnd.example+json") == {"points": [1, 2.5]}
    assert chart.metadata == {"application/vnd.example+json": {"height": 200}}
    assert chart.data == "chart"
    assert raw.mime("application/json") == [1, {"a": None}]
    assert raw.mime("text/markdown") == "**raw**"
    assert raw.data == "", "a bundle without text/plain"
    assert result.value is None


async def test_any_program_can_write_display_records(gateway_url: str) -> None:
    # A shell script, not a cell: a display, its update, and a record the gateway
    # drops (an update without a display_id), which it reports on stderr.
    code = (
        "printf 'one\\n'\n"
        'printf \'\\033]sluice;display;{"data":{"text/html":"<b>x</b>","text/plain":"x"},'
        '"metadata":{"isolated":true},"display_id":"bar"}\\007two\\n\'\n'
        'printf \'\\033]sluice;update_display;{"data":{"text/plain":"y"},"display_id":"bar"}\\007\'\n'
        'printf \'\\033]sluice;update_display;{"data":{"text/plain":"z"}}\\007three\\n\'\n'
    )
    async with SandboxClient(gateway_url) as client:
        execution = await client.execute(code, "sh")
        events = [event async for event in execution]
        result = await within(execution.wait(check=True))
    assert [t for t in transcript(events) if t[0] != "stderr"] == [
        ("stdout", "one\n"),
        ("display", "x"),
        ("stdout", "two\n"),
        ("update_display", "y"),
        ("stdout", "three\n"),
    ], events
    assert result.stdout == "one\ntwo\nthree\n"
    assert "update_display needs a display_id" in result.stderr, result.stderr
    shown, update = result.displays
    assert (shown.data, shown.mime("text/html"), shown.metadata, shown.display_id) == (
        "x",
        "<b>x</b>",
        {"isolated": True},
        "bar",
    )
    assert (update.type, update.data, update.display_id, update.metadata) == ("update_display", "y", "bar", {})
    assert result.value is None


async def test_a_session_reader_sees_the_rich_output(gateway_url: str) -> None:
    session = unique("nb")
    async with SandboxClient(gateway_url) as owner, SandboxClient(gateway_url) as watcher:
        first = await within(
            owner.run("display({'text/html': '<p>hi</p>'}, raw=True)", session=session, persistent=True)
        )
        seen: list[StreamEvent] = []
        async with watcher.attach(session) as stream:
            async for event in stream:
                seen.append(event)
                if event.is_terminal and event.id == first.id:
                    break
    assert [e for e in seen if e.type in DISPLAY_TYPES] == list(first.displays)
    assert first.displays[0].mime("text/html") == "<p>hi</p>"


def test_the_blocking_client_returns_displays_and_value(gateway_url: str) -> None:
    with sluice_sync.SandboxClient(gateway_url) as client:
        session = unique("nb")
        result = client.run("display('shown')\n'value'", session=session, persistent=True, check=True)
    assert [(e.type, e.data) for e in result.displays] == [("display", "'shown'")]
    assert result.value is not None and result.value.data == "'value'"
    assert result.value.execution_count == 1


async def test_input_asks_with_an_input_request_and_a_raising_cell_reports_its_exception(
    gateway_url: str,
) -> None:
    session = unique("nb")
    async with SandboxClient(gateway_url) as client:
        execution = await client.execute(
            "import getpass\nname = input('Name: ')\nsecret = getpass.getpass()\nprint(name, len(secret))\n1 / 0",
            session=session,
            persistent=True,
        )
        asked: list[StreamEvent] = []
        async for event in execution:
            if event.type == "input_request":
                asked.append(event)
                await execution.send_stdin("ada\n" if len(asked) == 1 else "hunter2\n")
        result = await within(execution.wait())
    assert [(e.data, e.password) for e in asked] == [("Name: ", False), ("Password: ", True)]
    assert result.stdout == "ada 7\n", "the prompts are not printed"
    assert result.exit_code == 1 and result.execution_count == 1
    exception = result.exception
    assert exception is not None
    assert (exception.ename, exception.evalue) == ("ZeroDivisionError", "division by zero")
    assert exception.traceback[0] == "Traceback (most recent call last):"
    assert exception.traceback[-1] == "ZeroDivisionError: division by zero"
    assert any("<cell>" in line for line in exception.traceback), exception.traceback


async def test_restart_cancels_the_running_cell_and_the_next_starts_afresh(gateway_url: str) -> None:
    session = unique("nb")
    async with SandboxClient(gateway_url) as client:
        await within(client.run("x = 41", session=session, persistent=True, check=True))
        long = await client.execute(
            "import time\nprint('sleeping', flush=True)\ntime.sleep(60)", session=session, persistent=True
        )
        async for event in long:
            if event.type == "stdout":
                break
        await within(client.restart(session))
        stopped = await within(long.wait())
        assert stopped.status == "cancelled", stopped
        fresh = await within(client.run("x", session=session, persistent=True))
        assert fresh.exception is not None and fresh.exception.ename == "NameError", fresh
        assert fresh.execution_count == 1, "a fresh interpreter counts from 1"
        # A session nobody opened cannot be restarted; one this client does not read is
        # refused before anything is sent.
        try:
            await within(client.restart(unique("missing")))
        except FrameError as err:
            assert "does not read" in str(err)
        else:
            raise AssertionError("restart of a session this client does not read was sent")
