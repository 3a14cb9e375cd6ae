"""The synchronous wrapper, used without asyncio."""

from __future__ import annotations

import pytest

from sluice import FrameError, LimitExceeded
from sluice.sync import SandboxClient


def test_sync_client(gateway_url: str) -> None:
    with SandboxClient(gateway_url) as client:
        events = list(client.execute_code_stream("import sys\nsys.stdout.write('hi\\n')"))
        assert [e.type for e in events] == ["started", "stdout", "completed"]
        assert events[1].data == "hi\n"
        result = client.run("print(input() * 2)", stdin="ab\n")
        assert result.stdout == "abab\n" and result.ok
        with pytest.raises(LimitExceeded):
            client.run("print('x' * 5000)", limits={"output_bytes": 10}, check=True)
        for event in client.execute_code_stream("import time\nprint('a', flush=True)\ntime.sleep(60)"):
            if event.type == "stdout":
                break  # cancels it
        assert client.run("print(1)").stdout == "1\n"


def test_sync_execution_on_a_terminal(gateway_url: str) -> None:
    code = (
        "import signal, subprocess\n"
        "signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGWINCH])\n"
        "print('ready', flush=True)\n"
        "signal.sigwait([signal.SIGWINCH])\n"
        "subprocess.run(['stty', 'size'])\n"
        "print(input())\n"
    )
    with SandboxClient(gateway_url) as client:
        execution = client.execute(code, tty=True, cols=100, rows=30)
        assert execution.tty
        for event in execution:
            if event.type == "stdout" and "ready" in event.data:
                break
        execution.resize(70, 20)
        execution.send_stdin("typed\r")
        result = execution.wait(check=True)
        # The terminal echoes what is typed as it arrives, maybe before `stty` prints.
        assert "20 70\r\n" in result.stdout and result.stdout.endswith("typed\r\n"), result.stdout
        plain = client.execute("cat", "sh")
        with pytest.raises(FrameError) as caught:
            plain.resize(80, 24)
        assert caught.value.code == "not_a_terminal"
        plain.close_stdin()
        assert plain.wait().ok
