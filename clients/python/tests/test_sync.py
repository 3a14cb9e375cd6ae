"""The synchronous wrapper, used without asyncio."""

from __future__ import annotations

import pytest

from sluice import LimitExceeded
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
