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

def cpu_ticks(pid):
    """utime + stime of a process, in clock ticks (1/100 s)."""
    if not pid:
        return 0
    with open("/proc/%d/stat" % pid) as f:
        rest = f.read().rsplit(")", 1)[1].split()
    return int(rest[11]) + int(rest[12])

def measured(pid, fn, *args):
    """fn's answers per second and PID 1's CPU time per answer (us), from /proc."""
    t0 = cpu_ticks(pid)
    rate = fn(*args)
    used = (cpu_ticks(pid) - t0) * 10000.0
    return rate, (used / (rate * args[2]) if pid and rate else float("nan"))

def pct(v, p):
    v = sorted(v)
    return v[min(len(v) - 1, int(len(v) * p))]

ap = argparse.ArgumentParser()
ap.add_argument("--direct", required=True)
ap.add_argument("--filter", required=True)
ap.add_argument("--n", type=int, default=5000)
ap.add_argument("--seconds", type=float, default=3)
ap.add_argument("--pid1", type=int, default=0, help="PID 1's pid (host view), for its CPU time")
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
# PID 1 runs on the other core than the client and the upstream: each query wakes a process
# on the other core four times (query in, upstream out, its answer in, answer out). On a
# virtual machine each such wake-up can cost tens of microseconds, more while another job
# holds that core. The same rows with PID 1 moved to the client's core show the filter's
# own cost without them.
if a.pid1:
    home = os.sched_getaffinity(a.pid1)
    os.sched_setaffinity(a.pid1, os.sched_getaffinity(0))
    latencies(a.filter, allowed, 500)
    d1 = latencies(a.direct, allowed, a.n)
    f1 = latencies(a.filter, allowed, a.n)
    x1 = latencies(a.filter, denied, a.n)
    os.sched_setaffinity(a.pid1, home)
    print("  PID 1 on the client's core (no wake-up across cores):")
    print("  %-34s %9.1f %9.1f" % ("  added by the filter", statistics.median(f1) - statistics.median(d1), pct(f1, .99) - pct(d1, .99)))
    print("  %-34s %9.1f %9.1f" % ("  denied name", statistics.median(x1), pct(x1, .99)))
print("throughput, %.0f s each, 256 queries in flight (answers/s; PID 1's CPU per answer, us)" % a.seconds)
for what, srv, names in (("denied names (the filter alone)", a.filter, denied),
                         ("allowed names (filter + upstream)", a.filter, allowed)):
    rate, per = measured(a.pid1, throughput, srv, names, a.seconds, 256)
    print("  %-34s %9.0f %9.1f" % (what, rate, per))
print("  %-34s %9.0f" % ("upstream directly", throughput(a.direct, allowed, a.seconds, 256)))
