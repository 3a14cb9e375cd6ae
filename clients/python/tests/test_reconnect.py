"""Reconnect with resume: the TCP connection is cut mid-stream (by a proxy
between client and gateway) and the consumer still sees every event exactly
once, in order, with no gap."""

from __future__ import annotations

import asyncio

from sluice import ExecutionError, ReconnectPolicy, SandboxClient, StreamEvent

from conftest import CuttableProxy, Gateway, proxied_url, target_of

WAIT = 60.0
FAST = ReconnectPolicy(initial_delay=0.05, max_delay=0.5, give_up_after=20.0)


def check_stream(events: list[StreamEvent], lines: int) -> None:
    """Every event once, in order: sequences 1..n, numbered lines 1..lines."""
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    assert all(e.type != "gap" for e in events)
    assert events[0].type == "started"
    assert events[-1].type == "completed" and events[-1].exit_code == 0
    assert sum(e.is_terminal for e in events) == 1
    text = "".join(e.data for e in events if e.type == "stdout")
    assert text.split("\n") == [str(i) for i in range(1, lines + 1)] + [""]


async def test_resume_after_the_connection_is_cut(gateway: Gateway, proxy_for: type[CuttableProxy]) -> None:
    proxy = proxy_for(*target_of(gateway.url))
    await proxy.start()
    # Lines 1..300, then the program waits for a line of input (sent after the
    # cut, so it travels on the new socket), then lines 301..600.
    code = (
        "import sys\n"
        "for i in range(1, 301): print(i, flush=True)\n"
        "sys.stdin.readline()\n"
        "for i in range(301, 601): print(i, flush=True)\n"
    )
    async with SandboxClient(proxied_url(gateway.url, proxy), reconnect=FAST) as client:
        execution = await client.execute(code)
        events: list[StreamEvent] = []
        text = ""

        async def consume() -> None:
            nonlocal text
            cut = False
            async for event in execution:
                events.append(event)
                text += event.data if event.type == "stdout" else ""
                if not cut and "\n20\n" in text:
                    cut = True
                    proxy.cut()
                    # Once the client is reconnecting, input waits for the new
                    # socket. (Input written to a socket in the moment it breaks
                    # can be lost: the protocol does not acknowledge stdin.)
                    await proxy.wait_for_connections(2)
                    await execution.send_stdin("go\n", eof=True)

        await asyncio.wait_for(consume(), WAIT)
    check_stream(events, 600)
    assert proxy.connections >= 2


async def test_resume_with_a_small_replay_buffer_and_two_cuts(
    small_gateway: Gateway, proxy_for: type[CuttableProxy]
) -> None:
    # A replay buffer of 64 events and 512-byte chunks: without acknowledgements
    # the events lost in flight would have left the buffer (a gap).
    proxy = proxy_for(*target_of(small_gateway.url))
    await proxy.start()
    lines, gate = 50_000, 30_000
    # The program waits for a line of input after `gate` lines, sent only once both
    # cuts are done: the stream cannot end before the second cut, whatever the client
    # has read ahead, so a third connection is needed to finish it.
    code = (
        "import sys\n"
        f"for i in range(1, {gate + 1}): print(i)\n"
        "sys.stdout.flush()\n"
        "sys.stdin.readline()\n"
        f"for i in range({gate + 1}, {lines + 1}): print(i)\n"
    )
    async with SandboxClient(proxied_url(small_gateway.url, proxy), reconnect=FAST) as client:
        execution = await client.execute(code, session=f"cut-{id(proxy)}")
        events: list[StreamEvent] = []
        cuts = [20_000, 150_000]  # after this many bytes of output (the gate: ~170 kB)
        received = 0

        async def consume() -> None:
            nonlocal received
            done = 0
            async for event in execution:
                events.append(event)
                received += len(event.data) if event.type == "stdout" else 0
                if cuts and received >= cuts[0]:
                    cuts.pop(0)
                    # Each cut hits a live connection: the events buffered before the
                    # last cut can carry the count past the next one before the
                    # client has reconnected.
                    done += 1
                    await proxy.wait_for_connections(done)
                    proxy.cut()
                    if not cuts:
                        await proxy.wait_for_connections(done + 1)
                        await execution.send_stdin("go\n")

        await asyncio.wait_for(consume(), WAIT)
    assert not cuts, "the stream should have been long enough for both cuts"
    check_stream(events, lines)
    assert proxy.connections >= 3


async def test_a_second_client_attached_to_the_session_is_resumed_too(
    gateway: Gateway, proxy_for: type[CuttableProxy]
) -> None:
    proxy = proxy_for(*target_of(gateway.url))
    await proxy.start()
    session = f"watched-{id(proxy)}"
    code = "import sys\nprint(1, flush=True)\nsys.stdin.readline()\nfor i in range(2, 201): print(i, flush=True)"
    async with (
        SandboxClient(gateway.url) as owner,
        SandboxClient(proxied_url(gateway.url, proxy), reconnect=FAST) as watcher,
    ):
        execution = await owner.execute(code, session=session)
        async for event in execution:
            if event.type == "stdout":
                break
        seen: list[StreamEvent] = []
        async with watcher.attach(session) as stream:
            proxy.cut()
            await execution.send_stdin("go\n")  # the owner's connection is fine
            async for event in stream:
                seen.append(event)
                if event.is_terminal:
                    break
        await asyncio.wait_for(execution.wait(), WAIT)
    check_stream(seen, 200)


async def test_without_reconnect_a_cut_ends_the_execution(gateway: Gateway, proxy_for: type[CuttableProxy]) -> None:
    proxy = proxy_for(*target_of(gateway.url))
    await proxy.start()
    async with SandboxClient(proxied_url(gateway.url, proxy), reconnect=None) as client:
        execution = await client.execute("import time\nprint('up', flush=True)\ntime.sleep(60)")
        last = None
        async for event in execution:
            last = event
            if event.type == "stdout":
                proxy.cut()
        assert last is not None and last.type == "error" and last.code == "connection_lost"
        assert last.is_synthetic
        try:
            await asyncio.wait_for(execution.wait(), WAIT)
        except ExecutionError as err:
            assert err.code == "connection_lost"
        else:
            raise AssertionError("wait() should raise ExecutionError")
