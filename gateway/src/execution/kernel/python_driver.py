# The Sluice kernel for Python: one interpreter that runs a persistent session's cells.
#
# The gateway starts this file with a Unix stream socket on descriptor 3. For each cell
# it sends a 16-byte header with three descriptors attached (the cell's stdin, stdout
# and stderr pipes): the source's length and the cell's number (from 1), each 8 bytes
# little-endian; then the cell's source as UTF-8. The kernel runs the cell with those
# pipes as descriptors 0, 1 and 2, puts /dev/null back (so the pipes reach end-of-file
# once the cell's own child processes are gone), and answers with one JSON line:
# {"cell": n, "status": "ok" | "error" | "exit" | "interrupted", "exit_code": N}, with
# "error": {"ename", "evalue", "traceback": [lines]} when the cell raised (the line stays
# under 200 KB; the gateway reads at most 256 KiB).
# Each line names the cell; a line the gateway does not expect (while no cell runs, or
# a second reply for one cell) ends the interpreter, and so does CPU time used while no
# cell runs.
#
# A query (`complete` or `inspect`, PROTOCOL.md 4.11) comes the same way with cell number
# 0 and no descriptors: its source is a JSON object {"kind", "code", "cursor_pos",
# "detail_level"}. The kernel answers with one line {"cell": 0, "answer": {...}} (under
# 200 KB), leaving the cell count alone; an interrupt ends the query with an error.
#
# When a cell is over, the gateway kills every process it started (the interpreter
# stays); the kernel reaps them before the next cell.
#
# SIGINT interrupts the running cell (KeyboardInterrupt). Between cells it is blocked;
# on receiving a cell the kernel discards one left over from the previous cell, then
# says {"cell": n, "started": true}: the gateway sends interrupts for a cell only after that.
#
# Before the first cell, once its start is over (site imports and all), the kernel says
# {"ready": true}, once: the gateway sends no cell before it, so a cell cancelled while
# the interpreter starts is never sent and the interpreter stays for the next one.
#
# Rich output: `display()` and `update_display()` are defined in the cells' namespace,
# and the value of a cell's last expression becomes its result. Each is written to the
# cell's stdout as a display record, ESC ] sluice;<kind>;<JSON> BEL, which the gateway
# turns into a `display`, `update_display` or `result` event at its place in the output
# (PROTOCOL.md 10.1). The MIME bundle comes from the `_repr_*_` methods libraries write
# for Jupyter; matplotlib figures become PNG images when the cell ends or calls show().

import ast
import base64
import builtins
import importlib
import importlib.util
import json
import os
import re
import signal
import socket
import sys
import traceback


class _Later:
    """A module imported when first used: the kernel's start (before its first cell
    can run) skips what only completions, inspection and displays need (about 7 ms of
    a 50 ms start here)."""

    def __init__(self, name):
        self._name = name

    def __getattr__(self, attr):
        module = importlib.import_module(self._name)
        globals()[self._name] = module
        return getattr(module, attr)


inspect = _Later("inspect")
pkgutil = _Later("pkgutil")
rlcompleter = _Later("rlcompleter")
uuid = _Later("uuid")

HEADER = 16
DRIVER = os.path.abspath(__file__)

RECORD_START = "\x1b]sluice;"
RECORD_END = "\x07"
# The most bytes of one record's JSON the gateway takes (sluice_protocol::MAX_DISPLAY_BYTES).
MAX_DISPLAY_BYTES = 8 << 20
# The `_repr_*_` methods, in the order IPython asks them.
REPR_METHODS = (
    ("text/html", "_repr_html_"),
    ("text/markdown", "_repr_markdown_"),
    ("image/svg+xml", "_repr_svg_"),
    ("image/png", "_repr_png_"),
    ("image/jpeg", "_repr_jpeg_"),
    ("text/latex", "_repr_latex_"),
    ("application/json", "_repr_json_"),
    ("application/javascript", "_repr_javascript_"),
    ("application/pdf", "_repr_pdf_"),
)
INLINE_BACKEND = "sluice_inline"


def is_json_type(mime):
    return mime == "application/json" or mime.endswith("+json")


def repr_method(obj, name):
    # A class's own `_repr_html_` is a function of its instances, not of the class.
    if isinstance(obj, type):
        return None
    try:
        method = getattr(obj, name, None)
    except Exception:
        return None
    return method if callable(method) else None


def warn(text):
    try:
        sys.stderr.write(text + "\n")
    except Exception:
        pass


def figure_png(figure):
    import io

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", bbox_inches="tight")
    return buffer.getvalue()


def mime_bundle(obj):
    """The MIME bundle and metadata of `obj`, from its `_repr_*_` methods."""
    data, metadata = {}, {}
    method = repr_method(obj, "_repr_mimebundle_")
    if method is not None:
        try:
            try:
                produced = method(include=None, exclude=None)
            except TypeError:
                produced = method()
            if isinstance(produced, tuple):
                produced, extra = produced
                metadata.update(extra or {})
            data.update(produced or {})
        except Exception as error:
            warn(f"_repr_mimebundle_ of {type(obj).__name__} failed: {error!r}")
    for mime, name in REPR_METHODS:
        if mime in data:
            continue
        method = repr_method(obj, name)
        if method is None:
            continue
        try:
            value = method()
        except Exception as error:
            warn(f"{name} of {type(obj).__name__} failed: {error!r}")
            continue
        if value is None:
            continue
        if isinstance(value, tuple):
            value, extra = value
            metadata[mime] = extra
        data[mime] = value
    if "image/png" not in data and type(obj).__module__ == "matplotlib.figure":
        try:
            data["image/png"] = figure_png(obj)
        except Exception as error:
            warn(f"drawing the figure failed: {error!r}")
    if "text/plain" not in data:
        data["text/plain"] = repr(obj)
    return data, metadata


def encode_bundle(data):
    encoded = {}
    for mime, value in data.items():
        if isinstance(value, (bytes, bytearray, memoryview)):
            value = base64.b64encode(bytes(value)).decode("ascii")
        elif not is_json_type(mime) and not isinstance(value, str):
            value = str(value)
        encoded[str(mime)] = value
    return encoded


def emit(kind, data, metadata=None, display_id=None, execution_count=None):
    record = {"data": encode_bundle(data), "metadata": dict(metadata or {})}
    if display_id is not None:
        record["display_id"] = str(display_id)
    if execution_count is not None:
        record["execution_count"] = execution_count
    write_record(kind, record)


def write_record(kind, record):
    text = json.dumps(record, separators=(",", ":"), default=str)
    size = len(text.encode("utf-8"))
    if size > MAX_DISPLAY_BYTES:
        raise ValueError(f"this display is {size} bytes, over the {MAX_DISPLAY_BYTES} bytes one display may have")
    stream = sys.stdout
    stream.flush()
    stream.write(RECORD_START + kind + ";" + text + RECORD_END)
    stream.flush()


def ask(prompt, password):
    # The front end shows the prompt (hiding what is typed for a password) and sends
    # the answer as stdin: an `input_request` event instead of the prompt on stdout.
    write_record("input_request", {"prompt": str(prompt), "password": password})
    line = sys.stdin.readline()
    if not line:
        raise EOFError("EOF when reading a line")
    return line[:-1] if line.endswith("\n") else line


def cell_input(prompt=""):
    """input() in a cell: asks the front end for a line (an `input_request` event)."""
    return ask(prompt, False)


def cell_getpass(prompt="Password: ", stream=None):
    """getpass() in a cell: asks the front end for a hidden line."""
    return ask(prompt, True)


class DisplayHandle:
    """What `display(..., display_id=True)` returns: updates what it showed."""

    def __init__(self, display_id=None):
        self.display_id = display_id or uuid.uuid4().hex

    def display(self, obj, **kwargs):
        display(obj, display_id=self.display_id, **kwargs)

    def update(self, obj, **kwargs):
        update_display(obj, display_id=self.display_id, **kwargs)

    def __repr__(self):
        return f"<DisplayHandle display_id={self.display_id}>"


def display(*objs, display_id=None, metadata=None, raw=False, update=False, **_ignored):
    """Shows each object as rich output (its richest forms: HTML, images, ...). With
    `display_id` (True makes one), returns a handle whose `update()` replaces it;
    `raw=True` takes each object as a MIME bundle (a dict of MIME type to data)."""
    handle = None
    if display_id is True:
        handle = DisplayHandle()
        display_id = handle.display_id
    elif display_id is not None:
        handle = DisplayHandle(display_id)
    for obj in objs:
        if raw:
            data, extra = dict(obj), {}
        else:
            data, extra = mime_bundle(obj)
        extra.update(metadata or {})
        emit("update_display" if update else "display", data, extra, display_id)
    return handle


def update_display(obj, *, display_id, **kwargs):
    """Replaces what the display of `display_id` shows with `obj`."""
    display(obj, display_id=display_id, update=True, **kwargs)


def flush_figures():
    # Figures drawn and not yet shown appear when the cell ends, as in Jupyter's inline backend.
    if "matplotlib.pyplot" not in sys.modules:
        return
    try:
        from matplotlib import _pylab_helpers

        managers = _pylab_helpers.Gcf.get_all_fig_managers()
        for manager in managers:
            display(manager.canvas.figure)
        if managers:
            sys.modules["matplotlib.pyplot"].close("all")
    except Exception as error:
        warn(f"showing the figures failed: {error!r}")


class InlineBackend:
    """Finds and makes the `module://sluice_inline` matplotlib backend: figures drawn
    with Agg, shown as PNG images."""

    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name != INLINE_BACKEND:
            return None
        return importlib.util.spec_from_loader(name, cls)

    @staticmethod
    def create_module(spec):
        return None

    @staticmethod
    def exec_module(module):
        from matplotlib.backend_bases import FigureManagerBase
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        module.FigureCanvas = FigureCanvasAgg
        module.FigureManager = FigureManagerBase

        def show(*args, **kwargs):
            flush_figures()

        module.show = show


def receive(control):
    header, fds, _flags, _addr = socket.recv_fds(control, HEADER, 3)
    if not header:
        return None
    while len(header) < HEADER:
        more = control.recv(HEADER - len(header))
        if not more:
            return None
        header += more
    remaining = int.from_bytes(header[:8], "little")
    number = int.from_bytes(header[8:], "little")
    chunks = []
    while remaining:
        chunk = control.recv(min(remaining, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        remaining -= len(chunk)
    return number, fds, b"".join(chunks).decode("utf-8", "replace")


# `%pip ...` (or `!pip ...`, or `pip install ...` as IPython's automagic takes it) on a
# line of its own runs pip as the notebook magic does; any other `!command` line runs
# the command in a shell.
PIP_MAGIC = re.compile(
    r"^([ \t]*)(?:[%!]pip|pip(?=[ \t]+(?:install|uninstall|list|show|freeze|download)\b))[ \t]+(.*)$",
    re.MULTILINE,
)
SHELL_ESCAPE = re.compile(r"^([ \t]*)!(.+)$", re.MULTILINE)


def pip_magic(arguments):
    """Runs pip with the interpreter's own Python; its output is the cell's. Packages go
    where the session's environment says (PIP_TARGET: the session's package layer), and
    the next import finds them."""
    import shlex
    import subprocess

    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    status = subprocess.call([sys.executable, "-m", "pip"] + shlex.split(arguments))
    importlib.invalidate_caches()
    if status != 0:
        print(f"pip exited with status {status}", file=sys.stderr)


def shell_escape(command):
    """Runs a `!command` line in /bin/sh with the cell's output, as a notebook does; a
    failure is reported on stderr and does not raise."""
    import subprocess

    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    status = subprocess.call(command, shell=True)
    if status != 0:
        print(f"the command exited with status {status}", file=sys.stderr)


def magics(source):
    """The cell with its `%pip` (`pip install`) and `!command` lines made calls."""
    source = PIP_MAGIC.sub(lambda m: f"{m.group(1)}__sluice_pip__({m.group(2)!r})", source)
    return SHELL_ESCAPE.sub(lambda m: f"{m.group(1)}__sluice_shell__({m.group(2)!r})", source)


def execute(source, namespace):
    # Something installed since the last cell (by pip in a subprocess, say) is found.
    importlib.invalidate_caches()
    try:
        tree = ast.parse(source, "<cell>", "exec")
    except SyntaxError as original:
        # Not Python as it stands: `%pip` and `!command` lines become calls (only then,
        # so a string holding such a line is left alone); an error left is reported as
        # written.
        magic = magics(source)
        if magic == source:
            raise
        try:
            tree = ast.parse(magic, "<cell>", "exec")
        except SyntaxError:
            raise original from None
    last = None
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        last = ast.Expression(tree.body.pop().value)
    exec(compile(tree, "<cell>", "exec"), namespace)
    value = None
    if last is not None:
        value = eval(compile(last, "<cell>", "eval"), namespace)
    flush_figures()
    return value


def show_result(value, number):
    data, metadata = mime_bundle(value)
    emit("result", data, metadata, execution_count=number)


def report(error):
    """Prints the cell's traceback on its stderr and returns it structured (Jupyter's
    ename, evalue, traceback). The cell's frames only: the kernel's own, and the
    parser's for a syntax error in the cell, are noise to the user."""
    tb = error.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename in (DRIVER, ast.__file__):
        tb = tb.tb_next
    lines = traceback.format_exception(type(error), error, tb)
    sys.stderr.write("".join(lines))
    text = "".join(lines).rstrip("\n").split("\n")
    try:
        message = str(error)
    except BaseException:
        message = "<the exception's str() failed>"
    return bounded({"ename": type(error).__name__, "evalue": message, "traceback": text})


# The reply line's budget for an exception, as JSON (the gateway reads lines of at most
# 256 KiB); each tier cuts harder: (characters of ename and evalue, of a line, lines).
REPORT_BYTES = 150_000
REPORT_TIERS = ((1000, 10000, 2000, 60), (200, 2000, 500, 20), (100, 200, 200, 6))


def well_formed(text):
    # A lone surrogate is not valid JSON text for the gateway: escaped instead.
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def bounded(exception):
    # Long parts are cut, a long traceback keeps its first and last lines, until the
    # JSON fits (non-ASCII text takes up to 12 bytes a character there).
    def cut(text, most):
        text = well_formed(text)
        return text if len(text) <= most else text[:most] + "..."

    for name_most, value_most, line_most, lines_most in REPORT_TIERS:
        lines = [cut(line, line_most) for line in exception["traceback"]]
        if len(lines) > lines_most:
            half = lines_most // 2
            lines = lines[:half] + [f"... {len(lines) - 2 * half} lines left out ..."] + lines[-half:]
        candidate = {
            "ename": cut(exception["ename"], name_most),
            "evalue": cut(exception["evalue"], value_most),
            "traceback": lines,
        }
        if len(json.dumps(candidate)) <= REPORT_BYTES:
            break
    return candidate


# A query's answer: at most this many matches, this many characters of description.
MAX_MATCHES = 1000
MAX_INSPECT_CHARS = 64 * 1024
ANSWER_BYTES = 200_000
NAME_BEFORE = re.compile(r"[A-Za-z_][\w.]*$|(?<![\w.])$", re.UNICODE)
IDENTIFIER_AFTER = re.compile(r"\w*", re.UNICODE)


def name_before(code, cursor):
    # The dotted name that ends at the cursor ("math.sq" in "x = math.sq|").
    match = NAME_BEFORE.search(code[:cursor])
    return match.group(0) if match else ""


def rlcompleter_completions(code, cursor, namespace):
    token = name_before(code, cursor)
    head, dot, last = token.rpartition(".")
    completer = rlcompleter.Completer(namespace)
    try:
        if dot:
            found = completer.attr_matches(token)
        else:
            found = completer.global_matches(last)
    except Exception:
        found = []
    names = []
    for match in found:
        name = match.rstrip("( :")
        if dot:
            name = name.rpartition(".")[2]
        names.append(name)
    return names, cursor - len(last)


# What the line before the cursor is, for the completions rlcompleter cannot give:
# module names after `import` / `from`, a module's names after `from M import`, a
# dict's keys inside `d["`, and a callee's keyword arguments inside its parentheses.
IMPORT_LINE = re.compile(r"^\s*(?:import\s+(?:[\w.]+(?:\s+as\s+\w+)?\s*,\s*)*|from\s+)([\w.]*)$")
FROM_IMPORT_LINE = re.compile(r"^\s*from\s+([\w.]+)\s+import\s+(?:\(?\s*(?:\w+(?:\s+as\s+\w+)?\s*,\s*)*)(\w*)$")
KEY_BEFORE = re.compile(r"([A-Za-z_][\w.]*)\[\s*(['\"])((?:(?!\2)[^\\\n])*)$")
MAX_MODULES = 5000


def module_names(prefix):
    # Top-level modules from a listing of sys.path, the submodules of a package from a
    # listing of its directories (and a module's modules, os.path), importing nothing:
    # a package is looked up in sys.modules, or found (not run) when top-level.
    head, dot, last = prefix.rpartition(".")
    if dot:
        module = sys.modules.get(head)
        names = [n for n, v in vars(module).items() if inspect.ismodule(v)] if module else []
        paths = getattr(module, "__path__", None)
        if module is None and "." not in head:
            try:
                spec = importlib.util.find_spec(head)
            except Exception:
                spec = None
            paths = spec.submodule_search_locations if spec else None
        found = pkgutil.iter_modules(list(paths)) if paths is not None else []
    else:
        found = pkgutil.iter_modules()
        names = list(sys.builtin_module_names)
    for index, module in enumerate(found):
        if index >= MAX_MODULES:
            break
        names.append(module.name)
    return [name for name in names if name.startswith(last)], last


def line_before(code, cursor):
    return code[:cursor].rpartition("\n")[2]


def special_completions(code, cursor, namespace):
    # (names, typed) for a context rlcompleter does not know, else None.
    line = line_before(code, cursor)
    match = FROM_IMPORT_LINE.match(line)
    if match:
        module = sys.modules.get(match.group(1))
        typed = match.group(2)
        names = [n for n in dir(module) if n.startswith(typed)] if module else []
        submodules, _ = module_names(match.group(1) + "." + typed)
        return names + submodules, typed
    match = IMPORT_LINE.match(line)
    if match:
        return module_names(match.group(1))
    match = KEY_BEFORE.search(line)
    if match:
        try:
            mapping = resolve(match.group(1), namespace)
        except Exception:
            return [], match.group(3)
        # Only a real dict: another mapping's keys() is the program's own code.
        if type(mapping) is not dict:
            return [], match.group(3)
        typed = match.group(3)
        keys = [key for key in list(mapping)[:MAX_MATCHES * 10] if isinstance(key, str)]
        return [key for key in keys if key.startswith(typed)], typed
    return None


def keyword_arguments(code, cursor, typed, namespace):
    # `name=` for the parameters of the call the cursor is in, when a name is typed
    # where an argument goes (after `(` or `,`).
    before = code[: cursor - len(typed)].rstrip()
    if not before.endswith(("(", ",")):
        return []
    callee = call_around(code, cursor - len(typed))
    if not callee:
        return []
    try:
        parameters = inspect.signature(resolve(callee, namespace)).parameters.values()
    except Exception:
        return []
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [
        parameter.name + "="
        for parameter in parameters
        if parameter.kind in kinds and parameter.name.startswith(typed)
    ]


def complete(code, cursor, namespace):
    # rlcompleter and the special contexts above, not jedi (PROTOCOL.md 4.11).
    special = special_completions(code, cursor, namespace)
    if special is not None:
        names, typed = special
        first = []
        start = cursor - len(typed)
    else:
        names, start = rlcompleter_completions(code, cursor, namespace)
        typed = code[start:cursor]
        first = [] if "." in name_before(code, cursor) else keyword_arguments(code, cursor, typed, namespace)
    end = cursor + len(IDENTIFIER_AFTER.match(code[cursor:]).group(0))
    # Private names only when asked for.
    if not typed.startswith("_"):
        names = [n for n in names if not n.startswith("_")]
    names = sorted(set(names) - set(first))
    names = first + names
    truncated = len(names) > MAX_MATCHES
    answer = {"matches": names[:MAX_MATCHES], "cursor_start": start, "cursor_end": end}
    if truncated:
        answer["truncated"] = True
    while len(json.dumps(answer)) > ANSWER_BYTES and answer["matches"]:
        answer["matches"] = answer["matches"][: len(answer["matches"]) // 2]
        answer["truncated"] = True
    return answer


def call_around(code, cursor):
    # The callee of the call whose parentheses the cursor is in ("f" in "f(a, |").
    depth = 0
    for index in range(cursor - 1, -1, -1):
        char = code[index]
        if char in ")]}":
            depth += 1
        elif char in "([{":
            if depth == 0:
                return name_before(code, index) if char == "(" else ""
            depth -= 1
    return ""


def name_at(code, cursor):
    # The dotted name under the cursor, else the callee of the call the cursor is in
    # ("print" in "print(x, |").
    end = cursor + len(IDENTIFIER_AFTER.match(code[cursor:]).group(0))
    name = name_before(code, end)
    if name:
        return name
    return call_around(code, cursor)


def resolve(name, namespace):
    # Names and attributes only: nothing in the code is evaluated.
    parts = name.split(".")
    if not all(part.isidentifier() for part in parts):
        raise LookupError(name)
    if parts[0] in namespace:
        obj = namespace[parts[0]]
    elif hasattr(builtins, parts[0]):
        obj = getattr(builtins, parts[0])
    else:
        raise LookupError(name)
    for part in parts[1:]:
        obj = getattr(obj, part)
    return obj


def describe(name, obj, detail_level):
    lines = []
    if callable(obj):
        try:
            lines.append(f"Signature: {name}{inspect.signature(obj)}")
        except (TypeError, ValueError):
            pass
    lines.append(f"Type: {type(obj).__name__}")
    if not (inspect.isclass(obj) or inspect.isroutine(obj) or inspect.ismodule(obj)):
        try:
            value = repr(obj)
        except Exception:
            value = "<repr failed>"
        if len(value) > 200:
            value = value[:200] + "..."
        lines.append(f"String form: {value}")
    try:
        where = inspect.getsourcefile(obj) or inspect.getfile(obj)
        lines.append(f"File: {where}")
    except Exception:
        pass
    doc = inspect.getdoc(obj)
    lines.append("Docstring:" + ("\n" + doc if doc else " <no docstring>"))
    if detail_level >= 1:
        try:
            lines.append("Source:\n" + inspect.getsource(obj).rstrip("\n"))
        except Exception:
            pass
    text = "\n".join(lines)
    if len(text) > MAX_INSPECT_CHARS:
        text = text[:MAX_INSPECT_CHARS] + "..."
    return text


def inspect_at(code, cursor, detail_level, namespace):
    name = name_at(code, cursor)
    if not name:
        return {"found": False}
    try:
        obj = resolve(name, namespace)
    except Exception:
        return {"found": False}
    answer = {"found": True, "bundle": {"text/plain": describe(name, obj, detail_level)}}
    while len(json.dumps(answer)) > ANSWER_BYTES:
        text = answer["bundle"]["text/plain"]
        answer["bundle"]["text/plain"] = text[: len(text) // 2] + "..."
    return answer


def answer_query(source, namespace):
    # Output of the code a lookup runs goes nowhere: descriptors 0 to 2 are /dev/null.
    try:
        query = json.loads(source)
        code, cursor = str(query["code"]), int(query["cursor_pos"])
        cursor = max(0, min(cursor, len(code)))
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGINT])
        try:
            if query.get("kind") == "inspect":
                return inspect_at(code, cursor, int(query.get("detail_level", 0)), namespace)
            return complete(code, cursor, namespace)
        finally:
            signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGINT])
    except KeyboardInterrupt:
        return {"error": "interrupted"}
    except BaseException as error:
        return {"error": f"{type(error).__name__}: {error}"[:1000]}


def query(control, source, namespace):
    # A SIGINT meant for an earlier cell or query must not interrupt this one.
    while signal.sigtimedwait([signal.SIGINT], 0) is not None:
        pass
    answer = answer_query(source, namespace)
    control.sendall((json.dumps({"cell": 0, "answer": answer}) + "\n").encode())


def exit_status(code):
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def reap():
    # What the previous cell started was killed when it ended: collect the remains.
    try:
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass
    except ChildProcessError:
        pass


def run(control, number, fds, source, namespace, devnull):
    reap()
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    sys.stdin = open(0, "r", encoding="utf-8", closefd=False)
    sys.stdout = open(1, "w", encoding="utf-8", closefd=False)
    # A lone surrogate (text cut inside an emoji) is written escaped, not an error.
    sys.stderr = open(2, "w", buffering=1, encoding="utf-8", errors="backslashreplace", closefd=False)
    reply = {"cell": number, "status": "ok", "exit_code": 0}
    # A SIGINT meant for the previous cell must not interrupt this one.
    while signal.sigtimedwait([signal.SIGINT], 0) is not None:
        pass
    control.sendall((json.dumps({"cell": number, "started": True}) + "\n").encode())
    try:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGINT])
        try:
            value = execute(source, namespace)
            if value is not None:
                show_result(value, number)
        finally:
            signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGINT])
    except KeyboardInterrupt as error:
        report(error)
        reply = {"cell": number, "status": "interrupted", "exit_code": 130}
    except SystemExit as error:
        reply = {"cell": number, "status": "exit", "exit_code": exit_status(error.code)}
    except BaseException as error:
        reply = {"cell": number, "status": "error", "exit_code": 1}
        try:
            reply["error"] = report(error)
        except BaseException:
            # Reporting failed (an interrupt meanwhile, say): the cell still ends.
            pass
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:
            pass
    for target in (0, 1, 2):
        os.dup2(devnull, target)
    return reply


def main():
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGINT])
    os.set_inheritable(3, False)
    control = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, fileno=3)
    devnull = os.open(os.devnull, os.O_RDWR)
    namespace = {
        "__name__": "__main__",
        "__builtins__": __builtins__,
        "display": display,
        "update_display": update_display,
        "__sluice_pip__": pip_magic,
        "__sluice_shell__": shell_escape,
    }
    sys.argv = [""]
    # input() and getpass() ask the front end.
    import getpass

    builtins.input = cell_input
    getpass.getpass = cell_getpass
    # matplotlib, if a cell imports it, draws off screen and shows figures as images.
    sys.meta_path.append(InlineBackend)
    os.environ.setdefault("MPLBACKEND", "module://" + INLINE_BACKEND)
    # Started: a cell sent from now on runs; one cancelled before this never reached us.
    control.sendall(b'{"ready": true}\n')
    while True:
        cell = receive(control)
        if cell is None:
            return
        number, fds, source = cell
        if number == 0:
            for fd in fds:
                os.close(fd)
            query(control, source, namespace)
            continue
        reply = run(control, number, fds, source, namespace, devnull)
        control.sendall((json.dumps(reply) + "\n").encode())


main()
