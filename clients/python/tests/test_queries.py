"""``complete`` and ``inspect`` against a real gateway: completions and what the
interpreter knows of a name, from a persistent session's interpreter, with cursor
positions in code points (an astral character counts one), and the refusals
(``no_kernel``, ``kernel_busy``). Every wait is on an answer or an event, never a
sleep."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable
from typing import TypeVar

import pytest

from sluice import Completions, FrameError, QueryRefused, SandboxClient
from sluice import sync as sluice_sync

T = TypeVar("T")

#: Bound on every wait; no test should come near it.
WAIT = 30.0

#: The cell the queries look into.
SETUP = "import math; value = 42"


async def within(awaitable: Awaitable[T], seconds: float = WAIT) -> T:
    return await asyncio.wait_for(awaitable, seconds)


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(6)}"


def replaced(code: str, completions: Completions) -> str:
    """The text of ``code`` the completions replace."""
    return code[completions.cursor_start : completions.cursor_end]


async def test_completions_and_inspection_come_from_the_interpreter(gateway_url: str) -> None:
    session = unique("nb")
    async with SandboxClient(gateway_url) as client:
        await within(client.run(SETUP, session=session, persistent=True, check=True))

        code = "math.sq"
        completions = await within(client.complete(session, code, len(code)))
        assert "sqrt" in completions.matches, completions
        assert (completions.cursor_start, completions.cursor_end) == (5, 7), completions
        assert replaced(code, completions) == "sq"
        assert completions.apply(code, "sqrt") == "math.sqrt"

        # A cell's own variable; the cursor in the middle of the code.
        code = "print(val)"
        completions = await within(client.complete(session, code, 9))
        assert "value" in completions.matches, completions
        assert replaced(code, completions) == "val", completions
        assert completions.apply(code, "value") == "print(value)"

        inspection = await within(client.inspect(session, "len(", 4))
        assert inspection.found, inspection
        assert "len" in inspection.text and inspection.text == inspection.bundle["text/plain"]
        detailed = await within(client.inspect(session, "value", 5, detail_level=1))
        assert detailed.found and "42" in detailed.text, detailed

        unknown = await within(client.inspect(session, "no_such_name_here", 17))
        assert not unknown.found and unknown.text == "", unknown
        nothing = await within(client.complete(session, "no_such_name_here", 17))
        assert nothing.matches == [] and not nothing.truncated, nothing

        # Queries leave the interpreter as it was.
        after = await within(client.run("print(value)", session=session, persistent=True, check=True))
        assert after.stdout == "42\n"


async def test_cursor_positions_are_code_points(gateway_url: str) -> None:
    session = unique("nb")
    smiley = "😀"  # one code point, two UTF-16 units, four UTF-8 bytes
    async with SandboxClient(gateway_url) as client:
        await within(client.run(SETUP, session=session, persistent=True, check=True))
        code = f"s = '{smiley}{smiley}'; math.sq"
        assert len(code) == 17 and len(code.encode("utf-16-le")) == 2 * 19
        completions = await within(client.complete(session, code, len(code)))
        assert "sqrt" in completions.matches, completions
        assert (completions.cursor_start, completions.cursor_end) == (15, 17), completions
        assert completions.apply(code, "sqrt") == f"s = '{smiley}{smiley}'; math.sqrt"

        # The cursor right after the smileys, before more code: "val" ends there.
        code = f"x = '{smiley}' + str(val) + '{smiley}'"
        cursor = code.index("val") + 3
        completions = await within(client.complete(session, code, cursor))
        assert "value" in completions.matches and replaced(code, completions) == "val", completions

        code = f"'{smiley}{smiley}{smiley}'; len("
        inspection = await within(client.inspect(session, code, len(code)))
        assert inspection.found and "len" in inspection.text, inspection

        # Past the end in code points: refused before sending.
        with pytest.raises(FrameError) as refused:
            await client.complete(session, smiley, 2)
        assert refused.value.code == "bad_request"


async def test_a_session_without_an_interpreter_answers_no_kernel(gateway_url: str) -> None:
    async with SandboxClient(gateway_url) as client:
        # A session with a workspace, where no persistent cell ran.
        session = unique("ws")
        await within(client.attach(session, workspace=True).start())
        with pytest.raises(QueryRefused) as refused:
            await within(client.complete(session, "val", 3))
        assert (refused.value.code, refused.value.operation, refused.value.session) == (
            "no_kernel",
            "complete",
            session,
        )
        with pytest.raises(QueryRefused) as refused:
            await within(client.inspect(session, "len(", 4))
        assert refused.value.code == "no_kernel"

        # A session whose interpreter was restarted: none until the next cell.
        session = unique("nb")
        await within(client.run(SETUP, session=session, persistent=True, check=True))
        await within(client.restart(session))
        with pytest.raises(QueryRefused) as refused:
            await within(client.inspect(session, "value", 5))
        assert refused.value.code == "no_kernel"
        await within(client.run("value = 7", session=session, persistent=True, check=True))
        assert "value" in (await within(client.complete(session, "val", 3))).matches

        # A session this client does not read: refused before anything is sent.
        with pytest.raises(FrameError) as not_read:
            await client.complete(unique("elsewhere"), "val", 3)
        assert not_read.value.code == "unknown_session"


async def test_a_query_while_a_cell_runs_is_refused_as_kernel_busy(gateway_url: str) -> None:
    session = unique("nb")
    async with SandboxClient(gateway_url) as client:
        await within(client.run(SETUP, session=session, persistent=True, check=True))
        cell = await client.execute(
            "import time\nprint('go', flush=True)\ntime.sleep(60)", session=session, persistent=True
        )

        async def until_go() -> None:
            async for event in cell:
                if event.type == "stdout" and "go" in event.data:
                    return
            raise AssertionError("the cell ended before it printed go")

        await within(until_go())
        with pytest.raises(QueryRefused) as refused:
            await within(client.complete(session, "val", 3))
        assert (refused.value.code, refused.value.operation) == ("kernel_busy", "complete")
        with pytest.raises(QueryRefused) as refused:
            await within(client.inspect(session, "len(", 4))
        assert refused.value.code == "kernel_busy"

        assert await cell.cancel()
        assert (await within(cell.wait())).status == "cancelled"
        # Once the cell is over, the interpreter answers again.
        assert "value" in (await within(client.complete(session, "val", 3))).matches


def test_the_blocking_client_queries_too(gateway_url: str) -> None:
    session = unique("nb")
    with sluice_sync.SandboxClient(gateway_url) as client:
        client.run(SETUP, session=session, persistent=True, check=True)
        completions = client.complete(session, "math.sq", 7)
        assert "sqrt" in completions.matches and (completions.cursor_start, completions.cursor_end) == (5, 7)
        inspection = client.inspect(session, "len(", 4)
        assert inspection.found and "len" in inspection.text
        assert not client.inspect(session, "no_such_name_here", 17).found
        client.restart(session)
        with pytest.raises(QueryRefused) as refused:
            client.complete(session, "val", 3)
        assert refused.value.code == "no_kernel"
