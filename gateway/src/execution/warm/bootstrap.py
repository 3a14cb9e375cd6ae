# A warm interpreter's bootstrap (run with `python3 -c`, see warm/mod.rs). It loads
# `resource` and `fcntl` (and takes them out of sys.modules again, with sys.path[0] out of the way so
# no cache remembers the workspace), says it is ready, waits for the go header on stdin
# (os.read: nothing of the program's own stdin is taken), shrinks its stdin pipe back to a
# cold start's 64 KiB once the code is read (the gateway grows it for large code), writes
# main.py, then takes the execution's rlimits (as a cold start's main.py is written
# before any limit), and runs it as `python3 main.py` would: a fresh __main__, no name of its
# own left, no frame of its own in a traceback, the same exit status (and the same
# sys.path_importer_cache entry for the script that `python3 main.py` leaves). Before
# Python 3.11 (where a bare `raise` would show its frame) it says so and exits.
import os, sys
if sys.version_info < (3, 11):
    os.write(1, b"sluice-warm-older\n")
    os._exit(0)
z = sys.path.pop(0)
import resource as r, fcntl as q
sys.path.insert(0, z)
del sys.modules["resource"], sys.modules["fcntl"], z
os.write(1, b"sluice-warm-ready\n")
h = b""
while len(h) < 128:
    c = os.read(0, 128 - len(h))
    if not c:
        os._exit(0)
    h += c
n, u, b, o = [int(x) for x in h.split()[1:5]]
s = []
while n > 0:
    c = os.read(0, min(n, 1048576))
    if not c:
        os._exit(0)
    n -= len(c)
    s.append(c)
s = b"".join(s)
try:
    q.fcntl(0, 1031, 65536)  # F_SETPIPE_SZ; refused (EBUSY) if input already fills more
except OSError:
    pass
del q
p = sys.argv[1]
f = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
v = memoryview(s)
while v:
    v = v[os.write(f, v):]
os.close(f)
# The limits only now: a cold start's main.py is written by the jail before any limit.
# setrlimit takes a C long: u64::MAX is RLIM_INFINITY, other values past it the largest.
l = lambda x: r.RLIM_INFINITY if x == (1 << 64) - 1 else min(x, (1 << 63) - 1)
r.setrlimit(r.RLIMIT_CPU, (l(u), l(u + 1)))
r.setrlimit(r.RLIMIT_FSIZE, (l(b), l(b)))
r.setrlimit(r.RLIMIT_NOFILE, (l(o), l(o)))
del l, u, b, o
del r
m = type(sys)("__main__")
m.__annotations__ = {}
m.__builtins__ = sys.modules["builtins"]
m.__loader__ = sys.modules["_frozen_importlib_external"].SourceFileLoader("__main__", p)
m.__file__ = p
m.__cached__ = None
sys.argv[:] = [p]
sys.orig_argv[1:] = [p]
sys.path[0] = os.path.dirname(p)
sys.path_importer_cache[p] = None
sys.modules["__main__"] = m
try:
    exec(*(lambda g: (compile(g.pop("s"), g.pop("p"), "exec", dont_inherit=True), g.pop("m").__dict__, g.clear())[:2])(globals()))
except BaseException as e:
    t = e.__traceback__
    while t is not None and t.tb_frame.f_code.co_filename == "<string>":
        t = t.tb_next
    e.__traceback__ = t
    del t
    raise
