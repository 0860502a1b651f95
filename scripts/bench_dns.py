#!/usr/bin/env python3
"""DNS filter benchmark client: per-query latency through sandbox-init's forwarder vs the
upstream directly, and the forwarder's answers per second. Run by scripts/bench-dns.sh inside
the benchmark's namespace; prints one table."""
import argparse, os, random, socket, statistics, struct, time

def query(qid, name, qtype=1):
    q = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    for label in name.split("."):
        q += bytes([len(label)]) + label.encode()
    return q + b"\0" + struct.pack(">HH", qtype, 1)

def latencies(server, names, n):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.connect((server, 53))
    s.settimeout(2)
    out = []
    for i in range(n):
        q = query(i & 0xFFFF, names[i % len(names)])
        t0 = time.perf_counter_ns()
        s.send(q)
        s.recv(4096)
        out.append((time.perf_counter_ns() - t0) / 1000.0)
    return out

def throughput(server, names, seconds, window):
    """Keeps `window` queries in flight for `seconds`; returns answers per second."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.connect((server, 53))
    s.setblocking(False)
    qs = [query(i & 0xFFFF, names[i % len(names)]) for i in range(4096)]
    sent = got = 0
    end = time.perf_counter() + seconds
    inflight = 0
    last = time.perf_counter()
    while time.perf_counter() < end:
        while inflight < window:
            try:
                s.send(qs[sent % len(qs)])
            except BlockingIOError:
                break
            sent += 1
            inflight += 1
        try:
            while True:
                s.recv(4096)
                got += 1
                inflight -= 1
                last = time.perf_counter()
        except BlockingIOError:
            pass
        # answers lost to a full buffer must not stall the window for good
        if inflight >= window and time.perf_counter() - last > 0.05:
            inflight = 0
    return got / seconds

def pct(v, p):
    v = sorted(v)
    return v[min(len(v) - 1, int(len(v) * p))]

ap = argparse.ArgumentParser()
ap.add_argument("--direct", required=True)
ap.add_argument("--filter", required=True)
ap.add_argument("--n", type=int, default=5000)
ap.add_argument("--seconds", type=float, default=3)
a = ap.parse_args()
allowed = ["n%d.bench.test" % i for i in range(1, 200)]
denied = ["%08x.exfil.evil.test" % random.getrandbits(32) for _ in range(2000)]

for srv in (a.direct, a.filter):  # warm caches
    latencies(srv, allowed, 500)
d = latencies(a.direct, allowed, a.n)
f = latencies(a.filter, allowed, a.n)
x = latencies(a.filter, denied, a.n)
print("per-query latency, %d sequential UDP queries each (us)" % a.n)
print("  %-34s %9s %9s" % ("", "median", "p99"))
print("  %-34s %9.1f %9.1f" % ("upstream directly (allowed names)", statistics.median(d), pct(d, .99)))
print("  %-34s %9.1f %9.1f" % ("through the filter (allowed names)", statistics.median(f), pct(f, .99)))
print("  %-34s %9.1f %9.1f" % ("added by the filter", statistics.median(f) - statistics.median(d), pct(f, .99) - pct(d, .99)))
print("  %-34s %9.1f %9.1f" % ("denied name (answered by the filter)", statistics.median(x), pct(x, .99)))
print("throughput, %.0f s each, 256 queries in flight (answers/s)" % a.seconds)
print("  %-34s %9.0f" % ("denied names (the filter alone)", throughput(a.filter, denied, a.seconds, 256)))
print("  %-34s %9.0f" % ("allowed names (filter + upstream)", throughput(a.filter, allowed, a.seconds, 256)))
print("  %-34s %9.0f" % ("upstream directly", throughput(a.direct, allowed, a.seconds, 256)))
