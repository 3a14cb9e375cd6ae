import socket, threading, time, sys
H = "127.0.0.1:17991"
N = 3500; T = 8; tag = "TAG"
def get(path):
    s = socket.create_connection(("127.0.0.1", 3128)); s.settimeout(20)
    s.sendall(f"GET http://{H}{path} HTTP/1.1\r\n\r\n".encode()); out = b""
    while True:
        d = s.recv(1 << 20)
        if not d: break
        out += d
    return out
bad = [0]; done = [0]
def worker(k):
    for i in range(k, N, T):
        try:
            r = get(f"/{tag}{i}/../files/tiny.whl")
            if not r.startswith(b"HTTP/1.1 200"): bad[0] += 1
            else: done[0] += 1
        except Exception: bad[0] += 1
t0 = time.time()
ts = [threading.Thread(target=worker, args=(k,)) for k in range(T)]
[t.start() for t in ts]; [t.join() for t in ts]
print("done", done[0], "in", round(time.time() - t0, 1), "s; bad", bad[0])
