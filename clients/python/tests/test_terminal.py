"""Terminal mode (``tty=True``) against a real gateway: the program sees a terminal
of the size asked for, ``resize`` delivers SIGWINCH, Ctrl-C and Ctrl-D are typed,
``eof`` leaves a terminal's input open, and the refusals have their codes. Every
wait is on output, never a sleep."""

from __future__ import annotations

import asyncio

import pytest

from sluice import Execution, FrameError, SandboxClient
from sluice.frames import execute_frame

#: Bound on every wait; no test should come near it.
WAIT = 30.0

#: Blocks SIGWINCH and waits for it, so a resize cannot come before the program is
#: ready for it: prints the size, ``ready``, then (after a resize) ``winch`` and the
#: new size.
SIGWINCH_PROGRAM = (
    "import signal, subprocess\n"
    "signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGWINCH])\n"
    "subprocess.run(['stty', 'size'])\n"
    "print('ready', flush=True)\n"
    "signal.sigwait([signal.SIGWINCH])\n"
    "print('winch', flush=True)\n"
    "subprocess.run(['stty', 'size'])\n"
)


class Screen:
    """Reads an execution's events, keeping all of its output as text."""

    def __init__(self, execution: Execution) -> None:
        self.execution = execution
        self.text = ""
        #: Where the last wait_for found its text ended: the next wait_for looks after it.
        self.mark = 0

    async def wait_for(self, wanted: str) -> str:
        """Reads until ``wanted`` appears after the last text waited for; returns
        the output from there to the end of ``wanted``."""

        async def read() -> str:
            while True:
                found = self.text.find(wanted, self.mark)
                if found >= 0:
                    start, self.mark = self.mark, found + len(wanted)
                    return self.text[start : self.mark]
                event = await self.execution.__anext__()
                if event.type == "stdout":
                    self.text += event.data
                assert not event.is_terminal, f"ended before {wanted!r}: {event}; output {self.text!r}"

        try:
            return await asyncio.wait_for(read(), WAIT)
        except StopAsyncIteration:
            raise AssertionError(f"the stream ended before {wanted!r}; output {self.text!r}") from None


def test_the_execute_frame_carries_the_terminal_fields() -> None:
    frame = execute_frame("t", "bash", "true", {"tty": True, "cols": 120, "rows": 40, "term": "vt100"})
    assert (frame["tty"], frame["cols"], frame["rows"], frame["term"]) == (True, 120, 40, "vt100")
    plain = execute_frame("p", "bash", "true", {"tty": False})
    assert not {"tty", "cols", "rows", "term"} & set(plain)


async def test_a_terminal_program_sees_a_tty_of_its_size_and_term_with_stderr_merged(gateway_url: str) -> None:
    code = (
        "import os, sys\n"
        "print('tty', os.isatty(0), os.isatty(1), os.isatty(2))\n"
        "print('size', os.get_terminal_size())\n"
        "print('term', os.environ.get('TERM'))\n"
        "sys.stdout.flush()\n"
        "print('to stderr', file=sys.stderr)\n"
    )
    async with SandboxClient(gateway_url) as client:
        execution = await client.execute(code, tty=True, cols=100, rows=30)
        assert execution.tty
        result = await asyncio.wait_for(execution.wait(check=True), WAIT)
        assert "tty True True True\r\n" in result.stdout, result.stdout
        assert "columns=100, lines=30" in result.stdout, result.stdout
        assert "term xterm-256color\r\n" in result.stdout, result.stdout
        # stderr comes through the terminal, as stdout; "\n" became "\r\n".
        assert result.stdout.endswith("to stderr\r\n") and result.stderr == "", result
        # Without a size: 80 x 24; a `term` of the request's own.
        result = await asyncio.wait_for(client.run("echo $TERM; stty size", "sh", tty=True, term="vt100"), WAIT)
        assert result.ok and result.stdout == "vt100\r\n24 80\r\n", result
        # Without tty: pipes, as before.
        plain = await client.execute("import os; print(os.isatty(1))")
        assert not plain.tty
        assert (await asyncio.wait_for(plain.wait(), WAIT)).stdout == "False\n"


async def test_resize_delivers_sigwinch_and_stty_size_follows(gateway_url: str) -> None:
    async with SandboxClient(gateway_url) as client:
        execution = await client.execute(SIGWINCH_PROGRAM, tty=True, cols=100, rows=30)
        screen = Screen(execution)
        assert await screen.wait_for("ready") == "30 100\r\nready"
        assert await execution.resize(50, 10)
        result = await asyncio.wait_for(execution.wait(check=True), WAIT)
        assert result.stdout.startswith("30 100\r\nready\r\n"), result.stdout
        assert result.stdout.endswith("winch\r\n10 50\r\n"), result.stdout
        # Ended: nothing left to resize, and no error either.
        assert not await execution.resize(80, 24)


async def test_resize_in_a_named_session(gateway_url: str) -> None:
    # With `session`, the resize frame names it.
    async with SandboxClient(gateway_url) as client:
        execution = await client.execute(SIGWINCH_PROGRAM, tty=True, session=client.new_id())
        screen = Screen(execution)
        assert await screen.wait_for("ready") == "24 80\r\nready"
        await execution.resize(132, 43)
        assert await screen.wait_for("winch\r\n43 132\r\n")
        assert (await asyncio.wait_for(execution.wait(), WAIT)).ok


async def test_ctrl_c_interrupts_the_python_repl_which_survives_and_ctrl_d_ends_it(gateway_url: str) -> None:
    async with SandboxClient(gateway_url) as client:
        execution = await client.execute("exec python3 -i -q", "sh", tty=True)
        screen = Screen(execution)
        await screen.wait_for(">>> ")
        await execution.send_stdin("import time; time.sleep(1000)\r")
        await screen.wait_for("time.sleep(1000)\r\n")
        # Ctrl-C, typed: the terminal sends SIGINT to the REPL.
        await execution.send_stdin("\x03")
        await screen.wait_for("KeyboardInterrupt")
        await execution.send_stdin("print(6 * 7)\r")
        # The next prompt first: typed ahead, Ctrl-D would reach the terminal before
        # the REPL's line editor takes it.
        await screen.wait_for("42\r\n>>> ")
        # close_stdin on a terminal types Ctrl-D: at an empty prompt the REPL exits.
        await execution.close_stdin()
        result = await asyncio.wait_for(execution.wait(), WAIT)
        assert result.ok, result


async def test_eof_twice_on_a_terminal_and_the_execute_stdin_is_typed(gateway_url: str) -> None:
    # Two reads to end of input: a pipe's stdin could end only once.
    code = (
        "import sys\n"
        "print('first', repr(sys.stdin.read()), flush=True)\n"
        "print('second', repr(sys.stdin.read()), flush=True)\n"
    )
    async with SandboxClient(gateway_url) as client:
        execution = await client.execute(code, tty=True)
        screen = Screen(execution)
        await execution.send_stdin("one\r", eof=True)
        await screen.wait_for("first 'one\\n'")
        await execution.send_stdin("two\r", eof=True)
        await screen.wait_for("second 'two\\n'")
        assert (await asyncio.wait_for(execution.wait(), WAIT)).ok
        # The execute's own stdin is typed, without ending the input: more follows.
        code = 'read first; echo "got $first"; read second; echo "then $second"'
        execution = await client.execute(code, "sh", tty=True, stdin="typed\r")
        screen = Screen(execution)
        await screen.wait_for("got typed\r\n")
        await execution.send_stdin("more\r")
        result = await asyncio.wait_for(execution.wait(), WAIT)
        assert result.ok and result.stdout.endswith("then more\r\n"), result


async def test_resizing_a_pipe_execution_is_not_a_terminal(gateway_url: str) -> None:
    async with SandboxClient(gateway_url) as client:
        execution = await client.execute("echo ready; read x; echo got $x", "sh")
        screen = Screen(execution)
        await screen.wait_for("ready\n")
        with pytest.raises(FrameError) as caught:
            await execution.resize(80, 24)
        assert caught.value.code == "not_a_terminal" and "tty" in caught.value.message
        # The execution never noticed.
        await execution.send_stdin("go\n", eof=True)
        result = await asyncio.wait_for(execution.wait(), WAIT)
        assert result.ok and result.stdout == "ready\ngot go\n", result


async def test_bad_terminal_requests_are_refused_before_sending(gateway_url: str) -> None:
    async with SandboxClient(gateway_url) as client:
        refused = [
            ({"cols": 80}, '"tty": true'),
            ({"term": "vt100", "tty": False}, '"tty": true'),
            ({"tty": True, "rows": 0}, "'rows' must be 1 to 1000"),
            ({"tty": True, "cols": 1001}, "'cols' must be 1 to 1000"),
            ({"tty": True, "term": "x;rm"}, "'term' must be"),
            ({"tty": True, "term": ""}, "'term' must be"),
            ({"tty": True, "term": "x" * 65}, "'term' must be"),
            ({"tty": True, "persistent": True, "session": "s"}, "do not go together"),
        ]
        for options, says in refused:
            with pytest.raises(FrameError) as caught:
                await client.execute("true", "sh", **options)  # type: ignore[arg-type]
            assert caught.value.code == "bad_request" and says in caught.value.message, (options, caught.value)
        execution = await client.execute("read x", "sh", tty=True, cols=1000, rows=1, term="a.b+c-d_9")
        for cols, rows in [(0, 24), (80, 1001), (-1, 24)]:
            with pytest.raises(FrameError) as caught:
                await execution.resize(cols, rows)
            assert caught.value.code == "bad_request"
        await execution.resize(1000, 1)
        await execution.send_stdin("\r")
        assert (await asyncio.wait_for(execution.wait(), WAIT)).ok
