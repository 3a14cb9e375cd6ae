"""The asyncio client against a real gateway: executions, input, cancel,
concurrency, limits, errors, sessions and attach."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable
from typing import TypeVar

import pytest

from sluice import (
    AttachRefused,
    ExecutionError,
    FrameError,
    LimitExceeded,
    NonZeroExit,
    SandboxClient,
    StreamEvent,
)

T = TypeVar("T")

#: Bound on every wait; no test should come near it.
WAIT = 30.0


async def within(awaitable: Awaitable[T], seconds: float = WAIT) -> T:
    return await asyncio.wait_for(awaitable, seconds)


async def collect(stream: object) -> list[StreamEvent]:
    async def run() -> list[StreamEvent]:
        return [event async for event in stream]  # type: ignore[attr-defined]

    return await within(run())


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(6)}"


async def test_hello_world(gateway_url: str) -> None:
    async with SandboxClient(gateway_url) as client:
        events = await collect(client.execute_code_stream("print('hello world')"))
    assert events[0].type == "started" and events[0].pid is not None
    assert events[-1].type == "completed" and events[-1].exit_code == 0
    assert "".join(e.data for e in events if e.type == "stdout") == "hello world\n"
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    session = events[0].session
    assert session is not None and len(session) == 32
    assert all(e.session == session and e.id == events[0].id for e in events)
    usage = events[-1].usage
    assert usage is not None and usage.stdout_bytes == 12


async def test_run_returns_the_result(gateway_url: str) -> None:
    async with SandboxClient(gateway_url) as client:
        result = await within(client.run("import sys\nprint('out')\nprint('err', file=sys.stderr)\nsys.exit(4)"))
        assert (result.status, result.exit_code, result.ok) == ("completed", 4, False)
        assert (result.stdout, result.stderr) == ("out\n", "err\n")
        with pytest.raises(NonZeroExit) as caught:
            result.check()
        assert caught.value.exit_code == 4
        other = await within(client.run("echo $1 $GREETING", "bash", args=["a b"], env={"GREETING": "hi"}))
        assert other.stdout == "a b hi\n" and other.ok


async def test_stdin_streams_until_eof(gateway_url: str) -> None:
    code = "import sys\nfor line in sys.stdin:\n    print(line.strip().upper(), flush=True)\nprint('eof')"
    async with SandboxClient(gateway_url) as client:
        execution = await client.execute(code)
        seen = ""
        await execution.send_stdin("one\n")
        async for event in execution:
            if event.type == "stdout":
                seen += event.data
                if seen == "ONE\n":
                    # Only after the program answered the first line: input is live.
                    await execution.send_stdin("two\n", eof=True)
        result = await within(execution.wait())
    assert seen == "ONE\nTWO\neof\n"
    assert result.stdout == seen and result.ok


async def test_stdin_given_whole_and_closed(gateway_url: str) -> None:
    async with SandboxClient(gateway_url) as client:
        execution = await client.execute("print(len(input()))\nprint(input())")
        await execution.send_stdin("x" * 300_000 + "\n")  # several frames
        await execution.close_stdin()
        result = await within(execution.wait())
        assert result.status == "completed"
        assert result.stdout.startswith("300000\n")
        assert "EOFError" in result.stderr
        whole = await within(client.run("import sys\nprint(sys.stdin.read()[::-1])", stdin="abc"))
        assert whole.stdout == "cba\n"


async def test_cancel(gateway_url: str) -> None:
    async with SandboxClient(gateway_url) as client:
        execution = await client.execute("import time\nprint('ready', flush=True)\ntime.sleep(60)")
        types = []
        async for event in execution:
            types.append(event.type)
            if event.type == "stdout":
                assert await execution.cancel()
        result = await within(execution.wait())
    assert types[0] == "started" and types[-1] == "cancelled"
    assert result.status == "cancelled" and result.usage is not None
    assert result.usage.duration_ms < 30_000
    assert not await execution.cancel(), "cancel after the end says it had ended"


async def test_leaving_a_stream_early_cancels_it(gateway_url: str) -> None:
    async with SandboxClient(gateway_url) as client:
        session = unique("early")
        # No aclose(): leaving the loop is enough (ExecutionStream).
        async for event in client.execute_code_stream(
            "import time\nprint('go', flush=True)\ntime.sleep(60)", session=session
        ):
            if event.type == "stdout":
                break
        async with client.attach(session) as watcher:
            async for event in watcher:
                if event.is_terminal:
                    break
    assert event.type == "cancelled"


async def test_fifty_concurrent_executions(gateway_url: str) -> None:
    async with SandboxClient(gateway_url) as client:
        code = "import sys, time\nn = int(sys.argv[1])\ntime.sleep(0.2)\nprint(n * n)"
        results = await within(asyncio.gather(*(client.run(code, args=[str(i)]) for i in range(50))))
        assert [r.stdout for r in results] == [f"{i * i}\n" for i in range(50)]
        assert all(r.ok for r in results)
        assert len({r.session for r in results}) == 50

        async def stream(i: int) -> str:
            events = [e async for e in client.execute_code_stream(f"echo {i}", "sh")]
            assert events[-1].type == "completed"
            return "".join(e.data for e in events if e.type == "stdout")

        outputs = await within(asyncio.gather(*(stream(i) for i in range(50))))
        assert outputs == [f"{i}\n" for i in range(50)]


async def test_output_limit(gateway_url: str) -> None:
    async with SandboxClient(gateway_url) as client:
        events = await collect(client.execute_code_stream("print('x' * 100_000)", limits={"output_bytes": 1000}))
        terminal = events[-1]
        assert (terminal.type, terminal.limit, terminal.limit_value) == ("resource_limit", "output", 1000)
        assert sum(len(e.data) for e in events if e.type == "stdout") == 1000
        execution = await client.execute("import time\ntime.sleep(30)", limits={"timeout_ms": 300})
        with pytest.raises(LimitExceeded) as caught:
            await within(execution.wait(check=True))
        assert (caught.value.limit, caught.value.limit_value) == ("timeout", 300)
        assert caught.value.result.status == "resource_limit"


async def test_unknown_language_is_an_error_event(gateway_url: str) -> None:
    async with SandboxClient(gateway_url) as client:
        events = await collect(client.execute_code_stream("DISPLAY 'HI'.", language="cobol"))
        assert len(events) == 1
        assert (events[0].type, events[0].code, events[0].is_terminal) == ("error", "unknown_language", True)
        assert "cobol" in events[0].data
        with pytest.raises(ExecutionError) as caught:
            await within(client.run("x", language="cobol"))
        assert caught.value.code == "unknown_language"
        with pytest.raises(ExecutionError) as invalid:
            await within(client.run("print(1)", limits={"timeout_ms": 0}))
        assert invalid.value.code == "invalid_limit"


async def test_bad_requests_are_refused_before_sending(gateway_url: str) -> None:
    async with SandboxClient(gateway_url) as client:
        with pytest.raises(FrameError) as caught:
            await client.execute("print(1)", env={"A=B": "x"})
        assert caught.value.code == "bad_request"
        with pytest.raises(FrameError):
            await client.execute("print(1)", persistent=True)
        with pytest.raises(FrameError):
            await client.execute("print(1)", limits={"timeout_ms": -1})
        with pytest.raises(FrameError):
            await client.execute("print(1)", id="x" * 129)
        running = await client.execute("import time\ntime.sleep(30)", id="same")
        with pytest.raises(FrameError) as duplicate:
            await client.execute("print(1)", id="same")
        assert duplicate.value.code == "duplicate_id"
        await running.cancel()
        assert (await within(running.wait())).status == "cancelled"
        # The client still works after the refusals.
        assert (await within(client.run("print(2)"))).stdout == "2\n"


async def test_base64_output(gateway_url: str) -> None:
    async with SandboxClient(gateway_url) as client:
        execution = await client.execute("import sys\nsys.stdout.buffer.write(bytes(range(256)))", encoding="base64")
        result = await within(execution.wait())
    assert result.stdout_bytes == bytes(range(256))


async def test_persistent_session_keeps_state(gateway_url: str) -> None:
    session = unique("nb")
    async with SandboxClient(gateway_url) as client:
        first = await within(client.run("x = 41", session=session, persistent=True))
        second = await within(client.run("x + 1", session=session, persistent=True))
    # The cell's last expression is its value (a ``result`` event), not output.
    assert first.ok and first.value is None
    assert second.ok and second.stdout == "" and second.value is not None
    assert (second.value.data, second.value.execution_count) == ("42", 2)


async def test_attach_from_a_second_client_sees_the_same_events(gateway_url: str) -> None:
    session = unique("shared")
    code = "import sys\nprint('begin', flush=True)\nfor line in sys.stdin:\n    print('got', line.strip(), flush=True)"
    async with SandboxClient(gateway_url) as owner, SandboxClient(gateway_url) as watcher:
        execution = await owner.execute(code, session=session)
        own: list[StreamEvent] = []
        async for event in execution:
            own.append(event)
            if event.type == "stdout":
                break  # the program runs: the session exists
        stream = watcher.attach(session)
        await within(stream.start())
        for i in range(3):
            await execution.send_stdin(f"line {i}\n", eof=i == 2)
        own += await collect(execution)
        seen: list[StreamEvent] = []
        async for event in stream:
            seen.append(event)
            if event.is_terminal and event.id == execution.id:
                break
        await stream.close()
    assert own[-1].type == "completed"
    assert seen == own, "the attached client sees exactly the owner's events"
    assert [e.sequence for e in seen] == list(range(1, len(seen) + 1))

    # since: only later events
    async with SandboxClient(gateway_url) as late, late.attach(session, since=2) as tail:
        rest = []
        async for event in tail:
            rest.append(event)
            if event.is_terminal:
                break
    assert rest == own[2:]


async def test_attach_to_an_unknown_session_is_refused(gateway_url: str) -> None:
    async with SandboxClient(gateway_url) as client:
        stream = client.attach(unique("never"))
        with pytest.raises(AttachRefused) as caught:
            await within(stream.start())
        assert caught.value.code == "unknown_session"
        assert (await within(client.run("print(3)"))).stdout == "3\n"


async def test_cleanup_ends_running_streams(gateway_url: str) -> None:
    client = SandboxClient(gateway_url)
    await client.setup()
    execution = await client.execute("import time\nprint('up', flush=True)\ntime.sleep(60)")
    async for event in execution:
        if event.type == "stdout":
            break
    await within(client.cleanup())
    with pytest.raises(ExecutionError) as caught:
        await within(execution.wait())
    assert caught.value.code == "client_closed"


async def test_runtimes_lists_the_languages_and_limits(gateway_url: str) -> None:
    from sluice import Catalog, PackageInfo

    async with SandboxClient(gateway_url) as client:
        catalog = await within(client.runtimes())
        assert isinstance(catalog, Catalog)
        names = [r.language for r in catalog.runtimes]
        assert names == sorted(names) and {"python", "sh"} <= set(names)
        python = catalog.runtime("python")
        assert python is not None and (python.file_name, python.extension) == ("main.py", "py")
        assert python.persistent and python.tty
        assert python.version is not None and python.version.startswith("Python 3.")
        # Its packages, sorted by name; other languages list none.
        assert python.packages is not None and all(isinstance(p, PackageInfo) for p in python.packages)
        package_names = [p.name.lower() for p in python.packages]
        assert package_names == sorted(package_names)
        sh = catalog.runtime("sh")
        assert sh is not None and sh.packages is None
        timeout = catalog.limits["timeout_ms"]
        assert 0 < timeout.default <= timeout.max
        # The answer arrives on a socket with a program running meanwhile (it waits for
        # its input, sent only after the answer).
        execution = await client.execute('read line; echo "got $line"', "sh")
        assert await within(client.runtimes()) == catalog
        await execution.send_stdin("x\n", eof=True)
        assert (await within(execution.wait())).stdout == "got x\n"
