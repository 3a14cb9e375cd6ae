"""``complete`` and ``inspect`` against a scripted peer (no gateway): the frames the
client sends (checked against the protocol's JSON Schema by the peer), answers
routed by ``request``, refusals with their codes, what is refused before sending,
and what a dropped connection does to a query on its way. Every wait is on a
frame or an answer, never a sleep."""

from __future__ import annotations

import asyncio

import pytest

from sluice import (
    Completions,
    FrameError,
    Inspection,
    ProtocolError,
    QueryRefused,
    SandboxClient,
    SluiceConnectionError,
)
from test_files_peer import WAIT, Peer, client_of, peer  # noqa: F401 (peer: the fixture)


async def read_session(client: SandboxClient, peer: Peer, session: str = "nb") -> None:  # noqa: F811
    """Attaches ``session``, the peer answering: the client then reads it."""
    stream = client.attach(session)
    starting = asyncio.create_task(stream.start())
    await peer.expect("attach", session=session)
    await peer.attached(session)
    await asyncio.wait_for(starting, WAIT)


async def test_complete_and_inspect_round_trip(peer: Peer) -> None:  # noqa: F811
    async with client_of(peer) as client:
        await read_session(client, peer)
        code = "import math\nmath.sq"
        completing = asyncio.create_task(client.complete("nb", code, len(code)))
        frame = await peer.expect("complete", session="nb", code=code, cursor_pos=19)
        assert frame["request"]
        await peer.send(
            "complete_reply",
            request=frame["request"],
            matches=["sqrt"],
            cursor_start=17,
            cursor_end=19,
            truncated=True,
        )
        completions = await asyncio.wait_for(completing, WAIT)
        assert completions == Completions(["sqrt"], 17, 19, True)
        assert completions.apply(code, "sqrt") == "import math\nmath.sqrt"

        inspecting = asyncio.create_task(client.inspect("nb", "len(", 4))
        frame = await peer.expect("inspect", session="nb", code="len(", cursor_pos=4)
        assert "detail_level" not in frame, "detail_level 0, the default, is left out"
        bundle = {"text/plain": "Signature: len(obj, /)", "text/html": "<pre>len</pre>"}
        await peer.send("inspect_reply", request=frame["request"], found=True, bundle=bundle)
        inspection = await asyncio.wait_for(inspecting, WAIT)
        assert inspection == Inspection(True, bundle)
        assert inspection.text == "Signature: len(obj, /)"

        inspecting = asyncio.create_task(client.inspect("nb", "nope", 2, detail_level=1))
        frame = await peer.expect("inspect", cursor_pos=2, detail_level=1)
        await peer.send("inspect_reply", request=frame["request"], found=False)
        inspection = await asyncio.wait_for(inspecting, WAIT)
        assert (inspection.found, inspection.bundle, inspection.text) == (False, {}, "")
        assert peer.frames.empty()


async def test_answers_are_routed_by_request_and_refusals_carry_their_code(peer: Peer) -> None:  # noqa: F811
    async with client_of(peer) as client:
        await read_session(client, peer)
        first = asyncio.create_task(client.complete("nb", "va", 2))
        asked_first = await peer.expect("complete", code="va")
        second = asyncio.create_task(client.inspect("nb", "x", 1))
        asked_second = await peer.expect("inspect", code="x")
        third = asyncio.create_task(client.complete("nb", "y", 0))
        asked_third = await peer.expect("complete", code="y")
        assert len({asked_first["request"], asked_second["request"], asked_third["request"]}) == 3
        # Answered out of order: each reaches its own query.
        await peer.send(
            "error",
            code="kernel_busy",
            for_session="nb",
            request=asked_third["request"],
            data='session "nb"\'s interpreter is running a cell; ask again once it is over',
        )
        await peer.send("inspect_reply", request=asked_second["request"], found=True, bundle={"text/plain": "int"})
        await peer.send(
            "complete_reply", request=asked_first["request"], matches=["value"], cursor_start=0, cursor_end=2
        )
        with pytest.raises(QueryRefused) as caught:
            await asyncio.wait_for(third, WAIT)
        assert (caught.value.code, caught.value.operation, caught.value.session) == ("kernel_busy", "complete", "nb")
        assert "running a cell" in caught.value.message
        assert (await asyncio.wait_for(second, WAIT)).text == "int"
        assert (await asyncio.wait_for(first, WAIT)).matches == ["value"]

        for code in ("no_kernel", "query_timeout", "not_permitted", "unknown_session", "bad_request"):
            asking = asyncio.create_task(client.inspect("nb", "x", 0))
            frame = await peer.expect("inspect")
            await peer.send("error", code=code, for_session="nb", request=frame["request"], data=code)
            with pytest.raises(QueryRefused) as caught:
                await asyncio.wait_for(asking, WAIT)
            assert (caught.value.code, caught.value.operation) == (code, "inspect")

        # An answer of the wrong type is a protocol error, not a result.
        mistaken = asyncio.create_task(client.complete("nb", "x", 1))
        frame = await peer.expect("complete")
        await peer.send("inspect_reply", request=frame["request"], found=False)
        with pytest.raises(ProtocolError, match="answered complete with inspect_reply"):
            await asyncio.wait_for(mistaken, WAIT)
        assert peer.frames.empty()


async def test_what_is_refused_before_sending(peer: Peer) -> None:  # noqa: F811
    async with client_of(peer) as client:
        # A session this client does not read: its answer could not be told apart.
        with pytest.raises(FrameError) as refused:
            await client.complete("elsewhere", "x", 1)
        assert refused.value.code == "unknown_session" and "does not read" in str(refused.value)
        await read_session(client, peer)
        smiley = "😀"
        # Positions are code points (a str index): the astral character is one.
        for cursor in (-1, 2, 5):
            with pytest.raises(FrameError) as refused:
                await client.complete("nb", smiley, cursor)
            assert refused.value.code == "bad_request"
        with pytest.raises(FrameError) as refused:
            await client.inspect("nb", "x", 1, detail_level=2)
        assert refused.value.code == "bad_request"
        with pytest.raises(FrameError):
            await client.inspect("nb", "x", True)
        asking = asyncio.create_task(client.complete("nb", f"s = '{smiley}'; s.up", 13))
        frame = await peer.expect("complete", cursor_pos=13)
        assert frame["code"][:13].endswith("s.up")
        await peer.send("complete_reply", request=frame["request"], matches=["upper"], cursor_start=11, cursor_end=13)
        completions = await asyncio.wait_for(asking, WAIT)
        assert completions.apply(frame["code"], "upper") == f"s = '{smiley}'; s.upper"
        assert peer.frames.empty(), "nothing was sent for the refused queries"


async def test_a_query_the_connection_dropped_is_asked_again(peer: Peer) -> None:  # noqa: F811
    async with client_of(peer) as client:
        await read_session(client, peer)
        asking = asyncio.create_task(client.complete("nb", "va", 2))
        await peer.expect("complete", code="va")
        first = peer.socket
        peer.drop()
        while peer.socket is first:
            await asyncio.wait_for(peer.sockets.get(), WAIT)
        # The session first, then the query again: it changes nothing to ask twice.
        await peer.expect("attach", session="nb")
        await peer.attached("nb")
        again = await peer.expect("complete", code="va", cursor_pos=2)
        await peer.send("complete_reply", request=again["request"], matches=["value"], cursor_start=0, cursor_end=2)
        assert (await asyncio.wait_for(asking, WAIT)).matches == ["value"]


async def test_without_reconnecting_a_drop_fails_the_query(peer: Peer) -> None:  # noqa: F811
    client = SandboxClient(f"ws://127.0.0.1:{peer.port}/v1/ws", reconnect=False)
    async with client:
        await read_session(client, peer)
        asking = asyncio.create_task(client.inspect("nb", "len(", 4))
        await peer.expect("inspect")
        peer.drop()
        with pytest.raises(SluiceConnectionError):
            await asyncio.wait_for(asking, WAIT)
        with pytest.raises(SluiceConnectionError):
            await client.complete("nb", "x", 1)
