"""Running a Jupyter notebook (nbformat 4, ``.ipynb``) through Sluice.

:func:`run_notebook` runs the code cells of a notebook, in order, as persistent
cells of one session, and returns a new notebook whose code cells hold their
outputs and ``execution_count`` as Jupyter stores them::

    from sluice import SandboxClient
    from sluice.notebook import run_notebook, write_notebook

    async with SandboxClient() as client:
        executed = await run_notebook(client, "analysis.ipynb")
    write_notebook(executed, "analysis.out.ipynb")

:func:`run_notebook_sync` does the same with a :class:`sluice.sync.SandboxClient`,
and ``python -m sluice.notebook IN.ipynb -o OUT.ipynb`` from a shell (``--help``).

How the events become outputs (as Jupyter's ``nbclient``, which ``jupyter
nbconvert --execute`` runs, and nbformat's writer do):

- ``stdout``/``stderr`` events: ``stream`` outputs, consecutive text of one
  stream joined into one output;
- ``display``: a ``display_data`` output (``data``, ``metadata``);
  ``update_display`` (and a ``display`` reusing a ``display_id``) replaces the
  ``data`` and ``metadata`` of every earlier output shown under that id in this
  run, in any cell; the id itself is not stored;
- ``result``: an ``execute_result`` output with the cell's ``execution_count``;
- a cell that raised: an ``error`` output (``ename``, ``evalue``,
  ``traceback``); the traceback the interpreter also printed on stderr is left
  out of the stream, as Jupyter shows it once.

Text in a MIME bundle (``text/*``, ``image/svg+xml``,
``application/javascript``) and stream text are stored as nbformat writes them:
a list of lines, line endings kept (``str.splitlines(True)``); base64 images and
JSON data are stored as they came.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import json
import os
import secrets
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

from .client import SandboxClient
from .errors import SluiceError
from .events import StreamEvent
from .execution import ExecutionResult
from .frames import ExecuteOptions

if TYPE_CHECKING:
    from . import sync as _sync

__all__ = [
    "NotebookError",
    "dumps_notebook",
    "main",
    "run_notebook",
    "run_notebook_sync",
    "write_notebook",
]

#: A notebook as ``json.load`` gives it, or the path of an ``.ipynb`` file.
NotebookSource: TypeAlias = "dict[str, Any] | str | os.PathLike[str]"

#: MIME types that are not ``text/*`` but that nbformat's writer splits into lines too.
_SPLIT_MIMES = frozenset({"image/svg+xml", "application/javascript"})

#: The tag nbclient skips cells with, and the one that lets a cell raise without stopping.
SKIP_TAG = "skip-execution"
RAISES_TAG = "raises-exception"

#: The exit code of a cell that raised ``KeyboardInterrupt`` itself (PROTOCOL.md §12.4).
_INTERRUPTED = 130
_TRACEBACK_HEAD = "Traceback (most recent call last):\n"


class NotebookError(SluiceError):
    """A cell did not run to its end: it was cancelled, hit a limit
    (``resource_limit``, e.g. the ``timeout``) or lost its interpreter
    (``error``, e.g. ``kernel_lost``); as Jupyter's ``CellTimeoutError`` and
    ``DeadKernelError``, this stops the run whatever ``stop_on_error`` says.
    ``notebook`` is the notebook so far (the cell's outputs until then, the
    later code cells cleared), ``cell_index`` the cell's index in
    ``notebook["cells"]``, ``result`` the cell's :class:`~sluice.ExecutionResult`."""

    def __init__(self, message: str, notebook: dict[str, Any], cell_index: int, result: ExecutionResult) -> None:
        super().__init__(message)
        self.notebook = notebook
        self.cell_index = cell_index
        self.result = result


def _load(notebook: NotebookSource) -> dict[str, Any]:
    if isinstance(notebook, dict):
        loaded = copy.deepcopy(notebook)
    else:
        with open(notebook, encoding="utf-8") as file:
            loaded = json.load(file)
    if not isinstance(loaded, dict) or loaded.get("nbformat") != 4 or not isinstance(loaded.get("cells"), list):
        version = loaded.get("nbformat") if isinstance(loaded, dict) else None
        raise ValueError(f"not an nbformat 4 notebook (nbformat: {version!r}): only version 4 is supported")
    return loaded


def _text(value: Any) -> str:
    """A multiline field (a string, or a list of lines as written on disk) as one string."""
    if isinstance(value, list):
        return "".join(str(line) for line in value)
    return str(value) if value is not None else ""


def _split_bundle(bundle: dict[str, Any]) -> dict[str, Any]:
    """A MIME bundle as nbformat writes it: text types as lists of lines."""
    return {
        mime: value.splitlines(True)
        if isinstance(value, str) and (mime.startswith("text/") or mime in _SPLIT_MIMES)
        else value
        for mime, value in bundle.items()
    }


class _Run:
    """The outputs of one run: builds each code cell's outputs from its events,
    and replaces displays by id across the cells of the run."""

    def __init__(self) -> None:
        #: display_id -> the outputs shown under it (the dicts, wherever they are).
        self.displays: dict[str, list[dict[str, Any]]] = {}

    def _update(self, display_id: str, event: StreamEvent) -> None:
        for output in self.displays.get(display_id, ()):
            output["data"] = dict(event.bundle or {})
            output["metadata"] = dict(event.metadata or {})

    def add(self, outputs: list[dict[str, Any]], event: StreamEvent) -> None:
        """Adds what ``event`` shows to ``outputs`` (the running cell's)."""
        if event.type in ("stdout", "stderr"):
            text = event.data
            if not text:
                return
            last = outputs[-1] if outputs else None
            if last is not None and last["output_type"] == "stream" and last["name"] == event.type:
                last["text"] += text
            else:
                outputs.append({"output_type": "stream", "name": event.type, "text": text})
        elif event.type == "display":
            if event.display_id:
                self._update(event.display_id, event)
            output = {
                "output_type": "display_data",
                "data": dict(event.bundle or {}),
                "metadata": dict(event.metadata or {}),
            }
            outputs.append(output)
            if event.display_id:
                self.displays.setdefault(event.display_id, []).append(output)
        elif event.type == "update_display":
            if event.display_id:
                self._update(event.display_id, event)
        elif event.type == "result":
            outputs.append(
                {
                    "output_type": "execute_result",
                    "execution_count": event.execution_count,
                    "data": dict(event.bundle or {}),
                    "metadata": dict(event.metadata or {}),
                }
            )


def _drop_stderr_tail(outputs: list[dict[str, Any]], tail: str) -> bool:
    """Takes ``tail`` off the end of the last stderr output (the traceback the
    interpreter printed there too); False when it does not end with it."""
    for index in range(len(outputs) - 1, -1, -1):
        output = outputs[index]
        if output["output_type"] == "stream" and output["name"] == "stderr":
            if not output["text"].endswith(tail):
                return False
            output["text"] = output["text"][: len(output["text"]) - len(tail)]
            if not output["text"]:
                del outputs[index]
                before, after = index - 1, index
                if (
                    before >= 0
                    and after < len(outputs)
                    and outputs[before]["output_type"] == "stream"
                    and outputs[after]["output_type"] == "stream"
                    and outputs[before]["name"] == outputs[after]["name"]
                ):
                    outputs[before]["text"] += outputs.pop(after)["text"]
            return True
    return False


def _error_output(outputs: list[dict[str, Any]], result: ExecutionResult) -> dict[str, Any] | None:
    """The ``error`` output of a cell that completed with an exception (or a
    non-zero exit code), taking its traceback off stderr; None if it did not raise."""
    exception = result.exception
    if exception is not None:
        traceback = list(exception.traceback)
        if traceback:
            _drop_stderr_tail(outputs, "\n".join(traceback) + "\n")
        return {"output_type": "error", "ename": exception.ename, "evalue": exception.evalue, "traceback": traceback}
    code = result.exit_code
    if not code:
        return None
    if code == _INTERRUPTED and result.stderr.endswith("\nKeyboardInterrupt\n"):
        # A KeyboardInterrupt the cell raised itself: the gateway gives exit code
        # 130 and the traceback on stderr only.
        start = result.stderr.rfind(_TRACEBACK_HEAD)
        if start >= 0:
            tail = result.stderr[start:]
            if _drop_stderr_tail(outputs, tail):
                lines = tail.rstrip("\n").split("\n")
                return {"output_type": "error", "ename": "KeyboardInterrupt", "evalue": "", "traceback": lines}
    # sys.exit(n): IPython shows a SystemExit error.
    return {"output_type": "error", "ename": "SystemExit", "evalue": str(code), "traceback": [f"SystemExit: {code}"]}


def _finish(notebook: dict[str, Any], executed: set[int]) -> dict[str, Any]:
    """Splits the text of the executed cells' outputs into lines, as nbformat writes it."""
    for index in executed:
        cell = notebook["cells"][index]
        for output in cell["outputs"]:
            if output["output_type"] == "stream":
                output["text"] = output["text"].splitlines(True)
            elif output["output_type"] in ("display_data", "execute_result"):
                output["data"] = _split_bundle(output["data"])
    return notebook


def _clear_from(notebook: dict[str, Any], start: int) -> None:
    for cell in notebook["cells"][start:]:
        if cell.get("cell_type") == "code":
            cell["outputs"] = []
            cell["execution_count"] = None


#: The gateway's language for a notebook's kernel language (``metadata.kernelspec.language``,
#: else ``metadata.language_info.name``): Python, and JavaScript (IJavascript's notebooks)
#: as Node cells.
NOTEBOOK_LANGUAGES = {"python": "python", "javascript": "node"}


def notebook_language(notebook: dict[str, Any]) -> str:
    """The gateway language a notebook's cells run in: from its kernel's language
    (:data:`NOTEBOOK_LANGUAGES`), ``python`` when it names none or another."""
    metadata = notebook.get("metadata") or {}
    kernelspec = metadata.get("kernelspec") or {}
    language_info = metadata.get("language_info") or {}
    for named in (kernelspec.get("language"), language_info.get("name")):
        if isinstance(named, str) and named.lower() in NOTEBOOK_LANGUAGES:
            return NOTEBOOK_LANGUAGES[named.lower()]
    return "python"


async def run_notebook(
    client: SandboxClient,
    notebook: NotebookSource,
    *,
    session: str | None = None,
    language: str | None = None,
    timeout: float | None = None,
    stop_on_error: bool = True,
) -> dict[str, Any]:
    """Runs the code cells of ``notebook`` in order, as persistent cells of one
    session, and returns a new notebook (a dict, ready for ``json.dump`` or
    :func:`write_notebook`) with their ``outputs`` and ``execution_count``.

    ``notebook`` is an nbformat 4 notebook as ``json.load`` gives it (not
    changed), or the path of an ``.ipynb`` file. ``language`` is the gateway's
    language for the cells (default: from the notebook's kernel,
    :func:`notebook_language`: ``node`` for a JavaScript notebook). ``session`` names the session
    (default: a fresh ``notebook-...`` one); at the end, however the run ended,
    its interpreter is ended (:meth:`SandboxClient.restart`: it stops holding
    one of the gateway's interpreters at once) and the client lets go of it
    (:meth:`SandboxClient.detach`), so that the gateway ends it after its grace
    period. ``timeout`` bounds each cell's wall-clock time in seconds (the
    ``timeout_ms`` limit; default: the gateway's). Each cell's standard input is
    empty, so ``input()`` raises ``EOFError``.

    As ``jupyter nbconvert --execute``: markdown and raw cells, and code cells
    that are empty or tagged ``skip-execution``, are left as they are; cell and
    notebook metadata are kept. When a cell raises, its ``error`` output is
    stored and, with ``stop_on_error`` (unless the cell is tagged
    ``raises-exception``), the later code cells are not run: their ``outputs``
    are ``[]`` and ``execution_count`` None, so that no output of an earlier run
    passes for this one's (nbclient leaves such cells as they were). A cell that
    ends otherwise (cancelled, a limit, a lost interpreter) raises
    :class:`NotebookError` with the notebook so far.
    """
    result_nb = _load(notebook)
    cells: list[dict[str, Any]] = result_nb["cells"]
    language = language or notebook_language(result_nb)
    name = session or f"notebook-{secrets.token_hex(8)}"
    options: ExecuteOptions = {"session": name, "persistent": True, "stdin": ""}
    if timeout is not None:
        options["limits"] = {"timeout_ms": max(1, round(timeout * 1000))}
    run = _Run()
    executed: set[int] = set()
    try:
        for index, cell in enumerate(cells):
            if cell.get("cell_type") != "code":
                continue
            code = _text(cell.get("source"))
            tags = cell.get("metadata", {}).get("tags", [])
            if not code.strip() or SKIP_TAG in tags:
                continue
            outputs: list[dict[str, Any]] = []
            cell["outputs"] = outputs
            cell["execution_count"] = None
            executed.add(index)
            execution = await client.execute(code, language, **options)
            try:
                async for event in execution:
                    run.add(outputs, event)
                result = await execution.wait()
            except BaseException:
                # Cancelled or failed while the cell runs: it must not run on.
                execution.abandon()
                raise
            cell["execution_count"] = result.execution_count
            if result.status != "completed":
                _clear_from(result_nb, index + 1)
                reason = result.message or result.error_code or result.status
                raise NotebookError(
                    f"cell {index} did not run to its end: {result.status}: {reason}",
                    _finish(result_nb, executed),
                    index,
                    result,
                )
            error = _error_output(outputs, result)
            if error is not None:
                outputs.append(error)
                if stop_on_error and RAISES_TAG not in tags:
                    _clear_from(result_nb, index + 1)
                    break
    finally:
        await _end_session(client, name, started=bool(executed))
    return _finish(result_nb, executed)


async def _end_session(client: SandboxClient, session: str, *, started: bool) -> None:
    """Ends the run's interpreter at once (a ``restart`` ends it, and no cell
    starts another) and lets go of the session, which the gateway then ends
    after its grace period. Its failures do not hide the run's outcome."""
    if started:
        with contextlib.suppress(SluiceError):
            await client.restart(session)
    await client.detach(session)


def run_notebook_sync(
    client: _sync.SandboxClient,
    notebook: NotebookSource,
    *,
    session: str | None = None,
    language: str | None = None,
    timeout: float | None = None,
    stop_on_error: bool = True,
) -> dict[str, Any]:
    """:func:`run_notebook` with a blocking :class:`sluice.sync.SandboxClient`."""
    return client._call(
        run_notebook(
            client._client,
            notebook,
            session=session,
            language=language,
            timeout=timeout,
            stop_on_error=stop_on_error,
        )
    )


def dumps_notebook(notebook: dict[str, Any]) -> str:
    """The notebook as nbformat writes it: JSON with ``indent=1``, sorted keys,
    ``ensure_ascii=False``, multiline text (sources, stream text, text types of
    bundles) as lists of lines, and a trailing newline."""
    copied = copy.deepcopy(notebook)
    for cell in copied.get("cells", []):
        if isinstance(cell.get("source"), str):
            cell["source"] = cell["source"].splitlines(True)
        for name, attachment in (cell.get("attachments") or {}).items():
            cell["attachments"][name] = _split_bundle(attachment)
        for output in cell.get("outputs", []) if cell.get("cell_type") == "code" else []:
            if output.get("output_type") in ("display_data", "execute_result"):
                output["data"] = _split_bundle(output.get("data", {}))
            elif output.get("output_type") == "stream" and isinstance(output.get("text"), str):
                output["text"] = output["text"].splitlines(True)
    text = json.dumps(copied, indent=1, sort_keys=True, ensure_ascii=False, separators=(",", ": "))
    return text if text.endswith("\n") else text + "\n"


def write_notebook(notebook: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """Writes ``notebook`` to ``path`` as :func:`dumps_notebook` gives it (UTF-8)."""
    Path(path).write_text(dumps_notebook(notebook), encoding="utf-8")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sluice.notebook",
        description=(
            "Run a Jupyter notebook (.ipynb, nbformat 4) on a Sluice gateway: its code cells in order, "
            "as persistent cells of one session (Python, or Node for a JavaScript notebook), and write "
            "the notebook with their outputs and execution counts as Jupyter stores them. Markdown and "
            "raw cells are kept as they are."
        ),
        epilog=(
            "Exit status: 0 when every cell ran; 1 when a cell raised (the notebook is written, with the "
            "cells after it left unexecuted unless --allow-errors), did not run to its end (cancelled, a "
            "limit, a lost interpreter: the notebook so far is written), or the gateway could not be used; "
            "2 for bad arguments or an input that is not an nbformat 4 notebook."
        ),
    )
    parser.add_argument("input", metavar="IN.ipynb", help="the notebook to run")
    parser.add_argument(
        "-o",
        "--output",
        metavar="OUT.ipynb",
        help="where to write the executed notebook ('-' for standard output; default: IN.nbconvert.ipynb, "
        "beside the input, as jupyter nbconvert names it)",
    )
    parser.add_argument(
        "--url", help="the gateway's WebSocket URL (default: $SLUICE_URL, else ws://127.0.0.1:7878/v1/ws)"
    )
    parser.add_argument("--token", help="the credential, an API key or a signed token (default: $SLUICE_TOKEN)")
    parser.add_argument("--session", help="the session to run the cells in (default: a fresh one)")
    parser.add_argument(
        "--language",
        help="the gateway language to run the cells in (default: from the notebook's kernel: python, "
        "or node for a JavaScript notebook)",
    )
    parser.add_argument("--timeout", type=float, metavar="SECONDS", help="each cell's wall-clock limit")
    parser.add_argument(
        "--allow-errors",
        action="store_true",
        help="go on after a cell that raised (as nbconvert's --allow-errors); by default the run stops there",
    )
    return parser


def _output_path(args: argparse.Namespace) -> str:
    if args.output:
        return str(args.output)
    source = Path(args.input)
    stem = source.name[: -len(".ipynb")] if source.name.endswith(".ipynb") else source.name
    return str(source.with_name(f"{stem}.nbconvert.ipynb"))


async def _main(args: argparse.Namespace) -> tuple[dict[str, Any], bool]:
    async with SandboxClient(args.url, args.token) as client:
        try:
            notebook = await run_notebook(
                client,
                args.input,
                session=args.session,
                language=args.language,
                timeout=args.timeout,
                stop_on_error=not args.allow_errors,
            )
        except NotebookError as error:
            print(f"sluice.notebook: {error}", file=sys.stderr)
            return error.notebook, False
    return notebook, True


def _stopped_at(notebook: dict[str, Any]) -> int | None:
    """The index of the first cell with an error output, if any."""
    for index, cell in enumerate(notebook["cells"]):
        if any(output.get("output_type") == "error" for output in cell.get("outputs", [])):
            return index
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: ``python -m sluice.notebook IN.ipynb [-o OUT.ipynb] ...``."""
    args = _parser().parse_args(argv)
    try:
        _load(args.input)
    except (OSError, ValueError) as error:
        print(f"sluice.notebook: {args.input}: {error}", file=sys.stderr)
        return 2
    try:
        notebook, finished = asyncio.run(_main(args))
    except SluiceError as error:
        print(f"sluice.notebook: {error}", file=sys.stderr)
        return 1
    text = dumps_notebook(notebook)
    output = _output_path(args)
    if output == "-":
        sys.stdout.write(text)
    else:
        Path(output).write_text(text, encoding="utf-8")
    failed = _stopped_at(notebook)
    if failed is not None and not args.allow_errors:
        raised = next(o for o in notebook["cells"][failed]["outputs"] if o["output_type"] == "error")
        print(f"sluice.notebook: cell {failed} raised {raised['ename']}: {raised['evalue']}", file=sys.stderr)
        return 1
    return 0 if finished else 1


if __name__ == "__main__":
    sys.exit(main())
