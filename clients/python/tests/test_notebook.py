"""``sluice.notebook`` against a real gateway: a notebook's code cells run as
persistent cells of one session, their outputs stored as Jupyter (nbformat 4)
stores them; the blocking twin and the command line."""

from __future__ import annotations

import asyncio
import copy
import importlib
import json
import re
import secrets
import subprocess
import sys
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from sluice import FrameError, QueryRefused, SandboxClient
from sluice import sync as sluice_sync
from sluice.notebook import NotebookError, dumps_notebook, run_notebook, run_notebook_sync, write_notebook

T = TypeVar("T")

#: Bound on every wait; no test should come near it.
WAIT = 60.0


async def within(awaitable: Awaitable[T], seconds: float = WAIT) -> T:
    return await asyncio.wait_for(awaitable, seconds)


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(6)}"


def code_cell(cell_id: str, source: list[str], **fields: Any) -> dict[str, Any]:
    cell: dict[str, Any] = {
        "cell_type": "code",
        "execution_count": None,
        "id": cell_id,
        "metadata": {},
        "outputs": [],
        "source": source,
    }
    cell.update(fields)
    return cell


#: A 2x1 PNG (a red and a blue pixel) written with zlib and struct alone; zlib's
#: level 0 (stored) makes its bytes the same with any zlib.
PNG_WRITER = [
    "import struct, zlib\n",
    "\n",
    "def chunk(kind, body):\n",
    '    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))\n',
    "\n",
    "class Pixels:\n",
    "    def _repr_png_(self):\n",
    '        header = struct.pack(">IIBBBBB", 2, 1, 8, 2, 0, 0, 0)\n',
    '        rows = zlib.compress(b"\\x00\\xff\\x00\\x00\\x00\\x00\\xff", 0)\n',
    '        return b"\\x89PNG\\r\\n\\x1a\\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")\n',
    "    def __repr__(self):\n",
    '        return "<2x1 image>"\n',
    "\n",
    'display(Pixels(), metadata={"image/png": {"width": 2, "height": 1}})\n',
    'progress = display("step 1 of 2", display_id="progress")',
]
PNG_BASE64 = "iVBORw0KGgoAAAANSUhEUgAAAAIAAAABCAIAAAB7QOjdAAAAEklEQVR4AQEHAPj/AP8AAAAA/wcAAf9VNrrHAAAAAElFTkSuQmCC"

NOTEBOOK: dict[str, Any] = {
    "nbformat": 4,
    "nbformat_minor": 5,
    "metadata": {
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
        "custom": {"kept": True},
    },
    "cells": [
        {
            "cell_type": "markdown",
            "id": "intro",
            "metadata": {"tags": ["title"]},
            "source": ["# A small notebook\n", "\n", "Text, a table, an image, an update and an error."],
        },
        code_cell(
            "streams",
            [
                "import sys\n",
                'print("hello")\n',
                'print("to stderr", file=sys.stderr)\n',
                'print("world")',
            ],
            metadata={"tags": ["streams"]},
        ),
        code_cell(
            "table",
            [
                "class Table:\n",
                "    def __init__(self, rows):\n",
                "        self.rows = rows\n",
                "    def _repr_html_(self):\n",
                '        body = "".join(f"<tr><td>{a}</td><td>{b}</td></tr>\\n" for a, b in self.rows)\n',
                '        return "<table>\\n" + body + "</table>"\n',
                "    def __repr__(self):\n",
                '        return f"Table({len(self.rows)} rows)"\n',
                "\n",
                'Table([(1, "one"), (2, "two")])',
            ],
        ),
        code_cell("image", PNG_WRITER),
        code_cell(
            "update",
            [
                'update_display({"text/html": "<b>done</b>", "text/plain": "done"}, raw=True, display_id="progress")\n',
                'print("updated")',
            ],
        ),
        code_cell("boom", ['print("dividing")\n', "1 / 0"]),
        code_cell(
            "after",
            ['print("not reached")'],
            execution_count=7,
            outputs=[{"output_type": "stream", "name": "stdout", "text": ["stale\n"]}],
        ),
        {"cell_type": "raw", "id": "end", "metadata": {"format": "text/plain"}, "source": "the end\n"},
    ],
}

#: What Jupyter stores for each code cell of NOTEBOOK run to the error.
EXPECTED_STREAMS = [
    {"output_type": "stream", "name": "stdout", "text": ["hello\n", "world\n"]},
    {"output_type": "stream", "name": "stderr", "text": ["to stderr\n"]},
]
EXPECTED_TABLE = [
    {
        "output_type": "execute_result",
        "execution_count": 2,
        "data": {
            "text/html": [
                "<table>\n",
                "<tr><td>1</td><td>one</td></tr>\n",
                "<tr><td>2</td><td>two</td></tr>\n",
                "</table>",
            ],
            "text/plain": ["Table(2 rows)"],
        },
        "metadata": {},
    }
]
EXPECTED_IMAGE = [
    {
        "output_type": "display_data",
        "data": {"image/png": PNG_BASE64, "text/plain": ["<2x1 image>"]},
        "metadata": {"image/png": {"width": 2, "height": 1}},
    },
    # Shown as "step 1 of 2", replaced by the next cell's update_display.
    {
        "output_type": "display_data",
        "data": {"text/html": ["<b>done</b>"], "text/plain": ["done"]},
        "metadata": {},
    },
]
EXPECTED_UPDATE = [{"output_type": "stream", "name": "stdout", "text": ["updated\n"]}]
EXPECTED_BOOM = [
    {"output_type": "stream", "name": "stdout", "text": ["dividing\n"]},
    {
        "output_type": "error",
        "ename": "ZeroDivisionError",
        "evalue": "division by zero",
        "traceback": [
            "Traceback (most recent call last):",
            '  File "<cell>", line 2, in <module>',
            "ZeroDivisionError: division by zero",
        ],
    },
]


def check_outputs(notebook: dict[str, Any], *, stopped: bool) -> None:
    """``notebook`` is NOTEBOOK run: every code cell as Jupyter stores it, up to
    the error, then the cell after it unexecuted (``stopped``) or run."""
    cells = notebook["cells"]
    assert [c["id"] for c in cells] == [c["id"] for c in NOTEBOOK["cells"]]
    # Markdown and raw cells, sources and metadata: untouched.
    assert cells[0] == NOTEBOOK["cells"][0]
    assert cells[-1] == NOTEBOOK["cells"][-1]
    assert notebook["metadata"] == NOTEBOOK["metadata"]
    assert (notebook["nbformat"], notebook["nbformat_minor"]) == (4, 5)
    for cell, original in zip(cells, NOTEBOOK["cells"], strict=True):
        assert cell["source"] == original["source"]
        assert cell["metadata"] == original["metadata"]

    streams = cells[1]
    assert streams["execution_count"] == 1
    # stdout and stderr are two pipes: the gateway may read them in either order
    # (PROTOCOL.md §10); each stream's text is one output.
    assert streams["outputs"] in (EXPECTED_STREAMS, EXPECTED_STREAMS[::-1]), streams["outputs"]
    assert cells[2]["execution_count"] == 2
    assert cells[2]["outputs"] == EXPECTED_TABLE
    assert cells[3]["execution_count"] == 3
    assert cells[3]["outputs"] == EXPECTED_IMAGE
    assert cells[4]["execution_count"] == 4
    assert cells[4]["outputs"] == EXPECTED_UPDATE
    # The error once, as an error output: the traceback the interpreter also
    # printed on stderr is not a stream output.
    assert cells[5]["execution_count"] == 5
    assert cells[5]["outputs"] == EXPECTED_BOOM
    if stopped:
        assert cells[6]["execution_count"] is None
        assert cells[6]["outputs"] == []
    else:
        assert cells[6]["execution_count"] == 6
        assert cells[6]["outputs"] == [{"output_type": "stream", "name": "stdout", "text": ["not reached\n"]}]
    validate(notebook)


def validate(notebook: dict[str, Any]) -> None:
    """nbformat's own checks, where it is installed: the schema, and that
    dumps_notebook writes what nbformat.write does."""
    try:
        nbformat: Any = importlib.import_module("nbformat")
    except ImportError:
        return
    node = nbformat.from_dict(copy.deepcopy(notebook))
    nbformat.validate(node)
    assert dumps_notebook(notebook) == nbformat.writes(node) + "\n"


async def test_a_notebook_runs_to_its_error_with_outputs_as_jupyter_stores_them(gateway_url: str) -> None:
    original = copy.deepcopy(NOTEBOOK)
    session = unique("nb")
    async with SandboxClient(gateway_url) as client:
        executed = await within(run_notebook(client, NOTEBOOK, session=session))
        check_outputs(executed, stopped=True)
        assert original == NOTEBOOK, "the notebook given is not changed"
        # The client let go of the session: it no longer reads it.
        with pytest.raises(FrameError) as refused:
            await client.complete(session, "pro", 3)
        assert refused.value.code == "unknown_session"
    # And its interpreter is gone (restarted, no cell after): the session, kept
    # for its grace period, has none to ask.
    async with SandboxClient(gateway_url) as other, other.attach(session):
        with pytest.raises(QueryRefused) as no_kernel:
            await other.complete(session, "pro", 3)
        assert no_kernel.value.code == "no_kernel"


async def test_stop_on_error_false_runs_the_cells_after_the_error(gateway_url: str) -> None:
    async with SandboxClient(gateway_url) as client:
        executed = await within(run_notebook(client, NOTEBOOK, stop_on_error=False))
    check_outputs(executed, stopped=False)


async def test_a_cell_tagged_raises_exception_does_not_stop_the_run(gateway_url: str) -> None:
    notebook: dict[str, Any] = {
        "nbformat": 4,
        "nbformat_minor": 5,
        "metadata": {},
        "cells": [
            code_cell("raises", ['raise ValueError("expected")'], metadata={"tags": ["raises-exception"]}),
            code_cell("empty", ["  \n"]),
            code_cell("skipped", ['print("skipped")'], metadata={"tags": ["skip-execution"]}),
            code_cell("next", ['"next"']),
        ],
    }
    async with SandboxClient(gateway_url) as client:
        executed = await within(run_notebook(client, notebook))
    cells = executed["cells"]
    assert cells[0]["execution_count"] == 1
    assert cells[0]["outputs"] == [
        {
            "output_type": "error",
            "ename": "ValueError",
            "evalue": "expected",
            "traceback": [
                "Traceback (most recent call last):",
                '  File "<cell>", line 1, in <module>',
                "ValueError: expected",
            ],
        }
    ]
    # Empty and skip-execution cells are left as they were, as nbclient leaves them.
    assert cells[1] == notebook["cells"][1]
    assert cells[2] == notebook["cells"][2]
    assert cells[3]["execution_count"] == 2
    assert cells[3]["outputs"] == [
        {"output_type": "execute_result", "execution_count": 2, "data": {"text/plain": ["'next'"]}, "metadata": {}}
    ]
    validate(executed)


async def test_a_cell_over_its_timeout_raises_with_the_notebook_so_far(gateway_url: str) -> None:
    notebook: dict[str, Any] = {
        "nbformat": 4,
        "nbformat_minor": 5,
        "metadata": {},
        "cells": [
            code_cell("first", ['print("first")']),
            code_cell("spin", ['print("spinning", flush=True)\n', "while True:\n", "    pass"]),
            code_cell("never", ['print("never")'], execution_count=3),
        ],
    }
    session = unique("nb")
    async with SandboxClient(gateway_url) as client:
        # The interpreter started beforehand (a cell of the session, outside the
        # notebook), so that its start does not count against the first cell's time.
        await within(client.run("warm = True", session=session, persistent=True, check=True))
        with pytest.raises(NotebookError) as raised:
            await within(run_notebook(client, notebook, session=session, timeout=1.0))
    error = raised.value
    assert error.cell_index == 1
    assert error.result.status == "resource_limit"
    assert (error.result.limit, error.result.limit_value) == ("timeout", 1000)
    cells = error.notebook["cells"]
    assert cells[0]["execution_count"] == 2
    assert cells[0]["outputs"] == [{"output_type": "stream", "name": "stdout", "text": ["first\n"]}]
    assert cells[1]["execution_count"] == 3
    assert cells[1]["outputs"][0] == {"output_type": "stream", "name": "stdout", "text": ["spinning\n"]}
    assert cells[2]["execution_count"] is None
    assert cells[2]["outputs"] == []


def test_the_blocking_twin_runs_a_notebook_file(gateway_url: str, tmp_path: Path) -> None:
    path = tmp_path / "small.ipynb"
    path.write_text(json.dumps(NOTEBOOK), encoding="utf-8")
    with sluice_sync.SandboxClient(gateway_url) as client:
        executed = run_notebook_sync(client, path)
    check_outputs(executed, stopped=True)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sluice.notebook", *args],
        capture_output=True,
        text=True,
        timeout=WAIT,
        check=False,
    )


def test_the_command_line_writes_the_executed_notebook(gateway_url: str, tmp_path: Path) -> None:
    source = tmp_path / "small.ipynb"
    write_notebook(NOTEBOOK, source)
    out = tmp_path / "out.ipynb"

    done = run_cli(str(source), "-o", str(out), "--url", gateway_url)
    # Stopped at the error: the notebook is written, and the status says so.
    assert done.returncode == 1, done.stderr
    assert "cell 5 raised ZeroDivisionError: division by zero" in done.stderr
    text = out.read_text(encoding="utf-8")
    assert text.startswith('{\n "cells": [\n  {\n   "cell_type": "markdown",')
    assert text.endswith("}\n") and not text.endswith("\n\n")
    executed = json.loads(text)
    assert text == dumps_notebook(executed)
    # Written as nbformat writes it: the raw cell's source split into lines too.
    assert executed["cells"][-1]["source"] == ["the end\n"]
    executed["cells"][-1]["source"] = NOTEBOOK["cells"][-1]["source"]
    check_outputs(executed, stopped=True)

    # With --allow-errors every cell runs; the default output name is nbconvert's.
    done = run_cli(str(source), "--allow-errors", "--url", gateway_url)
    assert done.returncode == 0, done.stderr
    executed = json.loads((tmp_path / "small.nbconvert.ipynb").read_text(encoding="utf-8"))
    executed["cells"][-1]["source"] = NOTEBOOK["cells"][-1]["source"]
    check_outputs(executed, stopped=False)


def test_the_command_line_explains_itself_and_refuses_what_is_not_a_notebook(tmp_path: Path) -> None:
    done = run_cli("--help")
    assert done.returncode == 0
    for words in ("IN.ipynb", "--output", "--url", "--token", "--allow-errors", "--timeout", "nbformat 4"):
        assert words in done.stdout, words
    old = tmp_path / "old.ipynb"
    old.write_text(json.dumps({"nbformat": 3, "worksheets": []}), encoding="utf-8")
    done = run_cli(str(old), "--url", "ws://127.0.0.1:9/v1/ws")
    assert done.returncode == 2
    assert "only version 4" in done.stderr


async def test_run_notebook_refuses_what_is_not_an_nbformat_4_notebook(gateway_url: str) -> None:
    async with SandboxClient(gateway_url) as client:
        with pytest.raises(ValueError, match="only version 4"):
            await run_notebook(client, {"nbformat": 3, "worksheets": []})


async def test_a_javascript_notebook_runs_as_node_cells(gateway_url: str) -> None:
    from sluice.notebook import notebook_language

    notebook: dict[str, Any] = {
        "nbformat": 4,
        "nbformat_minor": 5,
        "metadata": {
            "kernelspec": {"name": "javascript", "display_name": "JavaScript (Node.js)", "language": "javascript"}
        },
        "cells": [
            code_cell("a", ["let x = 40;\n", "console.log('hello from node')"]),
            code_cell("b", ["x + 2"]),
            code_cell("c", ["throw new TypeError('bad')"]),
        ],
    }
    assert notebook_language(notebook) == "node"
    assert notebook_language({"metadata": {"language_info": {"name": "python"}}}) == "python"
    assert notebook_language({"metadata": {}}) == "python"
    async with SandboxClient(gateway_url) as client:
        executed = await within(run_notebook(client, notebook))
    first, second, third = executed["cells"]
    assert first["outputs"] == [{"output_type": "stream", "name": "stdout", "text": ["hello from node\n"]}]
    assert second["execution_count"] == 2
    assert second["outputs"] == [
        {"output_type": "execute_result", "execution_count": 2, "data": {"text/plain": ["42"]}, "metadata": {}}
    ]
    assert [o["output_type"] for o in third["outputs"]][-1] == "error"
    assert third["outputs"][-1]["ename"] == "TypeError" and third["outputs"][-1]["evalue"] == "bad"


def _joined(value: Any) -> Any:
    """A notebook's multiline string as one string (nbformat stores either)."""
    return "".join(value) if isinstance(value, list) else value


def _comparable(output: dict[str, Any], count_offset: int) -> dict[str, Any]:
    """An output with its strings joined and its execution count shifted, and an
    error reduced to what both kernels store alike: its name, its value and the
    traceback's last line (IPython's traceback is its own, coloured, form)."""
    output = copy.deepcopy(output)
    if output["output_type"] == "stream":
        output["text"] = _joined(output["text"])
    if "data" in output:
        output["data"] = {mime: _joined(value) for mime, value in output["data"].items()}
    if "execution_count" in output:
        output["execution_count"] -= count_offset
    if output["output_type"] == "error":
        lines = "\n".join(output.pop("traceback")).splitlines()
        last = [line for line in (re.sub(r"\x1b\[[0-9;]*m", "", line) for line in lines) if line.strip()][-1]
        output["last_line"] = " ".join(last.split())
    return output


def _in_order(outputs: list[dict[str, Any]], count_offset: int) -> list[dict[str, Any]]:
    """Comparable outputs, each run of stream outputs as one output per stream
    name, sorted: stdout and stderr are two pipes (and two buffers in IPython's
    kernel, flushed on a timer), read in either order (PROTOCOL.md §10)."""
    result: list[dict[str, Any]] = []
    streams: list[dict[str, Any]] = []
    for output in [*(_comparable(o, count_offset) for o in outputs), {"output_type": "end"}]:
        if output["output_type"] == "stream":
            streams.append(output)
            continue
        texts: dict[str, str] = {}
        for stream in streams:
            texts[stream["name"]] = texts.get(stream["name"], "") + stream["text"]
        result += [{"output_type": "stream", "name": n, "text": t} for n, t in sorted(texts.items())]
        streams = []
        result.append(output)
    return result[:-1]


async def test_outputs_match_what_a_real_jupyter_kernel_stores(gateway_url: str) -> None:
    """The same notebook run by nbclient on IPython's kernel (ipykernel) and by
    run_notebook: every cell up to the error stores the same outputs and counts;
    tracebacks differ only in form. Needs nbclient and ipykernel (the test extra)."""
    nbclient: Any = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    nbformat: Any = importlib.import_module("nbformat")
    # IPython has update_display in IPython.display, not as a builtin: a first cell
    # imports it, so the kernel's counts run one ahead.
    with_import = copy.deepcopy(NOTEBOOK)
    with_import["cells"].insert(0, code_cell("import", ["from IPython.display import update_display"]))
    node = nbformat.reads(json.dumps(with_import), as_version=4)
    jupyter = nbclient.NotebookClient(node, timeout=60, kernel_name="python3")
    with pytest.raises(nbclient.exceptions.CellExecutionError):
        await within(jupyter.async_execute())
    theirs = {cell["id"]: cell for cell in node.cells}

    async with SandboxClient(gateway_url) as client:
        ours = await within(run_notebook(client, NOTEBOOK))
    compared = ["streams", "table", "image", "update", "boom"]
    for cell in ours["cells"]:
        if cell["id"] not in compared:
            continue
        other = theirs[cell["id"]]
        assert cell["execution_count"] == other["execution_count"] - 1, cell["id"]
        assert _in_order(cell["outputs"], 0) == _in_order(other["outputs"], 1), cell["id"]
    boom = next(o for o in ours["cells"] if o["id"] == "boom")["outputs"][-1]
    assert _comparable(boom, 0)["last_line"] == "ZeroDivisionError: division by zero"
