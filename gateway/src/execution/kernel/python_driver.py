# The Sluice kernel for Python: one interpreter that runs a persistent session's cells.
#
# The gateway starts this file with a Unix stream socket on descriptor 3. For each cell
# it sends a 16-byte header with three descriptors attached (the cell's stdin, stdout
# and stderr pipes): the source's length and the cell's number (from 1), each 8 bytes
# little-endian; then the cell's source as UTF-8. The kernel runs the cell with those
# pipes as descriptors 0, 1 and 2, puts /dev/null back (so the pipes reach end-of-file
# once the cell's own child processes are gone), and answers with one JSON line:
# {"cell": n, "status": "ok" | "error" | "exit" | "interrupted", "exit_code": N}.
# Each line names the cell; a line the gateway does not expect (while no cell runs, or
# a second reply for one cell) ends the interpreter, and so does CPU time used while no
# cell runs.
#
# When a cell is over, the gateway kills every process it started (the interpreter
# stays); the kernel reaps them before the next cell.
#
# SIGINT interrupts the running cell (KeyboardInterrupt). Between cells it is blocked;
# on receiving a cell the kernel discards one left over from the previous cell, then
# says {"cell": n, "started": true}: the gateway sends interrupts for a cell only after that.

import ast
import json
import os
import signal
import socket
import sys
import traceback

HEADER = 16
DRIVER = os.path.abspath(__file__)


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


def execute(source, namespace):
    tree = ast.parse(source, "<cell>", "exec")
    last = None
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        last = ast.Expression(tree.body.pop().value)
    exec(compile(tree, "<cell>", "exec"), namespace)
    if last is not None:
        value = eval(compile(last, "<cell>", "eval"), namespace)
        if value is not None:
            print(repr(value))


def report(error):
    # The cell's frames only: the kernel's own are noise to the user.
    tb = error.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename == DRIVER:
        tb = tb.tb_next
    traceback.print_exception(type(error), error, tb)


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
    sys.stderr = open(2, "w", buffering=1, encoding="utf-8", closefd=False)
    reply = {"cell": number, "status": "ok", "exit_code": 0}
    # A SIGINT meant for the previous cell must not interrupt this one.
    while signal.sigtimedwait([signal.SIGINT], 0) is not None:
        pass
    control.sendall((json.dumps({"cell": number, "started": True}) + "\n").encode())
    try:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGINT])
        try:
            execute(source, namespace)
        finally:
            signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGINT])
    except KeyboardInterrupt as error:
        report(error)
        reply = {"cell": number, "status": "interrupted", "exit_code": 130}
    except SystemExit as error:
        reply = {"cell": number, "status": "exit", "exit_code": exit_status(error.code)}
    except BaseException as error:
        report(error)
        reply = {"cell": number, "status": "error", "exit_code": 1}
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
    namespace = {"__name__": "__main__", "__builtins__": __builtins__}
    sys.argv = [""]
    while True:
        cell = receive(control)
        if cell is None:
            return
        number, fds, source = cell
        reply = run(control, number, fds, source, namespace, devnull)
        control.sendall((json.dumps(reply) + "\n").encode())


main()
