"""The client scenarios of ``protocol/fixtures/scenarios`` (its README gives the
format): a scripted peer plays the gateway on a ``websockets`` server on port 0
while the scenario's script drives this client's public API. Every scenario
file in that folder is replayed."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.server import Server, ServerConnection, serve

from sluice import Execution, ExecutionStream, ReconnectPolicy, SandboxClient, StreamEvent

SCENARIOS = Path(__file__).resolve().parents[3] / "protocol" / "fixtures" / "scenarios"
#: A bound on one scenario, so a client that never sends what the peer expects fails.
DEADLINE = 30.0
#: Reconnect at once: the peer is local.
FAST = ReconnectPolicy(initial_delay=0.01, max_delay=0.1, give_up_after=10.0)


def scenario_files() -> list[Path]:
    files = sorted(SCENARIOS.glob("*.json"))
    assert files, f"no scenario in {SCENARIOS}"
    return files


def load(path: Path) -> dict[str, Any]:
    scenario = json.loads(path.read_text(encoding="utf-8"))
    assert isinstance(scenario, dict)
    return scenario


def matches(pattern: object, value: object) -> bool:
    """``value`` has every field ``pattern`` names, equal (README, Patterns)."""
    if isinstance(pattern, Mapping):
        if not isinstance(value, Mapping):
            return False
        return all(matches(want, value.get(key)) for key, want in pattern.items())
    return pattern == value


def event_fields(event: StreamEvent, pattern: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of ``event`` that ``pattern`` names."""
    return {key: getattr(event, key, None) for key in pattern}


class Peer:
    """The gateway's side: accepts connections and runs the scenario's peer steps."""

    def __init__(self) -> None:
        self.connections: asyncio.Queue[ServerConnection] = asyncio.Queue()
        self.labels: dict[str, asyncio.Event] = {}
        self.received: list[dict[str, Any]] = []
        self._done = asyncio.Event()

    def label(self, name: str) -> asyncio.Event:
        return self.labels.setdefault(name, asyncio.Event())

    async def handler(self, connection: ServerConnection) -> None:
        await self.connections.put(connection)
        # Keep the connection open until the scenario is over (or it drops).
        done = asyncio.create_task(self._done.wait())
        closed = asyncio.create_task(connection.wait_closed())
        await asyncio.wait({done, closed}, return_when=asyncio.FIRST_COMPLETED)
        done.cancel()
        closed.cancel()

    def finish(self) -> None:
        self._done.set()

    async def run(self, steps: list[dict[str, Any]]) -> None:
        connection: ServerConnection | None = None
        for index, step in enumerate(steps):
            if "label" in step:
                self.label(step["label"]).set()
                continue
            if "drop" in step:
                if connection is not None:
                    connection.transport.abort()
                connection = None
                continue
            if connection is None:
                connection = await self.connections.get()
            if "send" in step:
                await connection.send(json.dumps(step["send"]))
            elif "expect" in step:
                await self._expect(connection, step["expect"], index)
            else:
                raise AssertionError(f"peer step {index}: unknown step {step}")

    async def _expect(self, connection: ServerConnection, pattern: Mapping[str, Any], index: int) -> None:
        while True:
            text = await connection.recv()
            frame = json.loads(text)
            self.received.append(frame)
            if frame.get("type") == "ack" and pattern.get("type") != "ack":
                continue
            assert matches(pattern, frame), f"peer step {index}: expected a frame like {pattern}, got {frame}"
            return


async def run_client(
    client: SandboxClient, peer: Peer, script: list[dict[str, Any]], observed: list[StreamEvent]
) -> None:
    """Runs the scenario's client script with this client's API."""
    # execute_code_stream starts the execution on first read: a script that does
    # anything before reading, or uses the handle, goes through execute.
    needs_handle = any(key in step for step in script for key in ("send_stdin", "close_stdin", "cancel", "await"))
    execution: Execution | None = None
    events: AsyncIterator[StreamEvent] | None = None
    for step in script:
        if "execute" in step:
            request = dict(step["execute"])
            code, language = request.pop("code"), request.pop("language")
            if needs_handle:
                execution = await client.execute(code, language, **request)
                events = execution
            else:
                # The seed API: the iterator starts the execution.
                events = client.execute_code_stream(code, language, **request)
        elif "read" in step:
            assert events is not None
            for _ in range(step["read"]):
                observed.append(await events.__anext__())
        elif "read_to_end" in step:
            assert events is not None
            async for event in events:
                observed.append(event)
        elif "send_stdin" in step:
            assert execution is not None
            await execution.send_stdin(step["send_stdin"])
        elif "close_stdin" in step:
            assert execution is not None
            await execution.close_stdin()
        elif "cancel" in step:
            assert execution is not None
            await execution.cancel()
        elif "leave" in step:
            assert isinstance(events, ExecutionStream), "leave is replayed with execute_code_stream"
            # What leaving an `async for` does: the last reference goes, nothing is called.
            events = None
        elif "await" in step:
            await peer.label(step["await"]).wait()
        else:
            raise AssertionError(f"unknown client step {step}")


async def replay(scenario: dict[str, Any]) -> list[StreamEvent]:
    """Replays one scenario; returns the events the script read."""
    peer = Peer()
    server: Server = await serve(peer.handler, "127.0.0.1", 0, subprotocols=["sluice.v1"])  # type: ignore[list-item]
    port = server.sockets[0].getsockname()[1]
    client_part = scenario["client"]
    options = client_part.get("options", {})
    observed: list[StreamEvent] = []
    client = SandboxClient(f"ws://127.0.0.1:{port}/v1/ws", reconnect=FAST, **options)
    try:
        await asyncio.wait_for(
            asyncio.gather(peer.run(scenario["peer"]), run_client(client, peer, client_part["script"], observed)),
            DEADLINE,
        )
    finally:
        await client.cleanup()
        peer.finish()
        server.close()
        await server.wait_closed()
    return observed


def check_observed(observed: list[StreamEvent], patterns: list[dict[str, Any]]) -> None:
    assert len(observed) == len(patterns), f"read {len(observed)} events, expected {len(patterns)}: {observed}"
    for index, (event, pattern) in enumerate(zip(observed, patterns, strict=True)):
        fields = event_fields(event, pattern)
        assert matches(pattern, fields), f"event {index}: {event} does not match {pattern}"


@pytest.mark.parametrize("path", scenario_files(), ids=lambda path: path.stem)
async def test_scenario(path: Path) -> None:
    scenario = load(path)
    observed = await replay(scenario)
    check_observed(observed, scenario["observe"])


async def test_break_out_of_execute_code_stream_cancels_without_aclose() -> None:
    # The leave-early scenario's peer, with the client written as a user writes it.
    scenario = load(SCENARIOS / "leave-early.json")
    peer = Peer()
    server: Server = await serve(peer.handler, "127.0.0.1", 0, subprotocols=["sluice.v1"])  # type: ignore[list-item]
    port = server.sockets[0].getsockname()[1]
    types: list[str] = []

    async def user() -> None:
        async for event in client.execute_code_stream("while True: print('y')", id="x1"):
            types.append(event.type)
            if event.type == "stdout":
                break

    client = SandboxClient(f"ws://127.0.0.1:{port}/v1/ws", reconnect=FAST)
    try:
        await asyncio.wait_for(asyncio.gather(peer.run(scenario["peer"]), user()), DEADLINE)
    finally:
        await client.cleanup()
        peer.finish()
        server.close()
        await server.wait_closed()
    assert types == ["started", "stdout"]
    assert [frame["type"] for frame in peer.received if frame["type"] != "ack"] == ["execute", "cancel"]
