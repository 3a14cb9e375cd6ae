"""The seed document's examples (clients/python/examples/) run as written
against a real gateway, as separate programs."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run_example(url: str, name: str, *args: str) -> str:
    env = {**os.environ, "SLUICE_URL": url}
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, f"{name} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_basic_event_loop(gateway_url: str) -> None:
    out = run_example(gateway_url, "basic_event_loop.py", "import sys\nprint('hi')\nprint('oops', file=sys.stderr)")
    assert "Output: hi\n" in out
    assert "Error: oops\n" in out
    assert out.rstrip().endswith("Execution completed")


def test_basic_event_loop_reports_errors(gateway_url: str) -> None:
    out = run_example(gateway_url, "basic_event_loop.py", "raise SystemExit(3)")
    assert out.strip() == "Execution completed"


def test_event_structure_and_types(gateway_url: str) -> None:
    # One write, so one stdout event (print writes the text and the newline apart).
    out = run_example(gateway_url, "event_structure.py", "import sys\nsys.stdout.write('x\\n')")
    lines = out.splitlines()
    assert re.fullmatch(r"Event 1 at \d+\.\d+: started", lines[0])
    assert "Execution started" in lines
    assert "Output: x" in lines
    assert re.fullmatch(r"Event 3 at \d+\.\d+: completed", lines[-2])
    assert lines[-1] == "Execution finished"


def test_progress_tracking(gateway_url: str) -> None:
    out = run_example(gateway_url, "progress_tracking.py")
    lines = out.splitlines()
    assert re.fullmatch(r"Event 1 at -?\d+\.\d\ds: started", lines[0])
    types = [line.split(": ")[1] for line in lines[:-1]]
    # Output may come in any number of events (print writes text and newline apart).
    assert types[0] == "started" and types[-1] == "completed"
    assert set(types[1:-1]) == {"stdout"} and len(types) >= 5
    numbers = [int(line.split()[1]) for line in lines[:-1]]
    assert numbers == list(range(1, len(types) + 1))
    seconds = float(re.fullmatch(r"Execution completed in (\d+\.\d\d) seconds", lines[-1]).group(1))  # type: ignore[union-attr]
    assert 0.35 <= seconds < 30


def test_output_buffering(gateway_url: str) -> None:
    out = run_example(gateway_url, "output_buffering.py", "for i in range(500):\n    print(f'line {i}')", "1024")
    assert out.replace("\n\n", "\n").split() == [w for i in range(500) for w in ("line", str(i))]
    chunks = out.split("\n\n")
    assert len(chunks) >= 2, "output should come in several buffered chunks"


def test_readme_example(gateway_url: str) -> None:
    out = run_example(gateway_url, "readme_example.py")
    # `started` says "warm" when a pre-started interpreter ran it (PROTOCOL.md 11.5).
    assert "1 started ''" in out or "1 started 'warm'" in out
    stdout = [line.split(" ", 2)[2] for line in out.splitlines() if line.split(" ")[1:2] == ["stdout"]]
    assert "".join(ast.literal_eval(text) for text in stdout) == "hello\n"
    assert out.rstrip().endswith("completed 0 eciuls")
