#!/usr/bin/env python3
"""Setup time and memory of sandbox-init as an entrypoint, beside what users run today.

Setup time is measured from the exec of the entrypoint to the exec of the command: the
harness takes CLOCK_MONOTONIC right before execve and passes it as BENCH_T0; the command
(`sandbox-probe stamp`) prints the microseconds elapsed when it starts. Every alternative
runs in the same throwaway Debian root (chroot), interleaved round by round so that drift
of a shared machine hits all of them alike. Memory is the supervising PID 1's resident set
while the command runs.

Run as root:  bench_pid1.py --init BIN --probe BIN --rootfs DEBIAN_ROOTFS [--runs N]
"""

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

PROBE = "/usr/local/bin/sandbox-probe"
INIT = "/usr/local/sbin/sandbox-init"


def prepare(rootfs, init, probe):
    work = tempfile.mkdtemp(prefix="bench-root-")
    root = os.path.join(work, "root")
    subprocess.run(["cp", "-a", rootfs, root], check=True)
    for src, dst in ((init, INIT), (probe, PROBE)):
        path = root + dst
        os.makedirs(os.path.dirname(path), exist_ok=True)
        shutil.copy(src, path)
        os.chmod(path, 0o755)
    passwd = open(root + "/etc/passwd").read()
    if "\nclaude:" not in passwd:
        with open(root + "/etc/passwd", "a") as f:
            f.write("claude:x:1000:1000:Claude:/home/claude:/bin/bash\n")
        with open(root + "/etc/group", "a") as f:
            f.write("claude:x:1000:\n")
    os.makedirs(root + "/home/claude", exist_ok=True)
    os.chown(root + "/home/claude", 1000, 1000)
    os.makedirs(root + "/etc/sandbox-init", exist_ok=True)
    with open(root + "/etc/sandbox-init/lockdown-off.toml", "w") as f:
        f.write("[lockdown]\nstrip_suid = false\nremove_sudo = false\n")
    # The entrypoint script shape of the peers: bash, then exec gosu (or runuser).
    with open(root + "/entrypoint-gosu.sh", "w") as f:
        f.write('#!/bin/bash\nset -e\nexec gosu claude "$@"\n')
    os.chmod(root + "/entrypoint-gosu.sh", 0o755)
    # sandbox-init verifies its privilege drop in /proc, as any container has it mounted.
    os.makedirs(root + "/proc", exist_ok=True)
    subprocess.run(["mount", "-t", "proc", "proc", root + "/proc"], check=True)
    return work, root


def alternatives(root):
    # The throwaway root is chrooted in this PID namespace, where sandbox-init refuses to
    # build a sandbox unless told that this is meant (it would otherwise strip a host).
    here = "--allow-host-pid-namespace"
    alts = [
        ("sandbox-init", [INIT, "-q", "--no-firewall", here, "--"]),
        (
            "sandbox-init, lockdown off",
            [INIT, "-q", "--no-firewall", here, "--config",
             "/etc/sandbox-init/lockdown-off.toml", "--"],
        ),
    ]
    if os.path.exists(root + "/usr/bin/tini"):
        alts.append(("tini + runuser", ["/usr/bin/tini", "-s", "--",
                                         "/usr/sbin/runuser", "-u", "claude", "--"]))
    if os.path.exists(root + "/usr/sbin/gosu"):
        alts.append(("bash entrypoint + gosu", ["/entrypoint-gosu.sh"]))
    if os.path.exists(root + "/usr/bin/setpriv"):
        alts.append(("setpriv", ["/usr/bin/setpriv", "--reuid=1000", "--regid=1000",
                                 "--init-groups", "--inh-caps=-all"]))
    return alts


def launch(root, argv, stdout):
    """fork; the child chroots and execs argv with BENCH_T0 set just before execve."""
    r, w = os.pipe() if stdout else (None, None)
    pid = os.fork()
    if pid == 0:
        try:
            os.chroot(root)
            os.chdir("/")
            if w is not None:
                os.dup2(w, 1)
            devnull = os.open("/dev/null", os.O_RDWR) if os.path.exists("/dev/null") else -1
            if devnull >= 0:
                os.dup2(devnull, 0)
                os.dup2(devnull, 2)
            env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                   "BENCH_T0": str(time.monotonic_ns())}
            os.execve(argv[0], argv, env)
        finally:
            os._exit(127)
    if w is not None:
        os.close(w)
    return pid, r


def once(root, argv):
    pid, r = launch(root, argv + [PROBE, "stamp"], stdout=True)
    with os.fdopen(r, "rb") as f:
        out = f.read()
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{argv}: exit {os.waitstatus_to_exitcode(status)}")
    return int(out.strip().splitlines()[-1])


def rss_kib(root, argv):
    """Resident memory of the entrypoint process while the command waits for a signal."""
    pid, r = launch(root, argv + [PROBE, "signals", "1"], stdout=True)
    buf = b""
    deadline = time.time() + 10
    while b"ready" not in buf and time.time() < deadline:
        buf += os.read(r, 64)
    time.sleep(0.05)
    rss = None
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
        comm = open(f"/proc/{pid}/comm").read().strip()
    finally:
        os.kill(pid, signal.SIGTERM)
        os.waitpid(pid, 0)
        os.close(r)
    return rss, comm


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--init", required=True)
    ap.add_argument("--probe", required=True)
    ap.add_argument("--rootfs", required=True)
    ap.add_argument("--runs", type=int, default=30)
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench_pid1.py needs root (chroot, privilege drop)")
    work, root = prepare(a.rootfs, a.init, a.probe)
    try:
        alts = alternatives(root)
        for _, argv in alts:  # warm-up: page cache, first-run state on the home
            once(root, argv)
        times = {name: [] for name, _ in alts}
        for _ in range(a.runs):
            for name, argv in alts:
                times[name].append(once(root, argv))
        base = statistics.median(times["sandbox-init"])
        print(f"\nsetup time, entrypoint exec -> command exec ({a.runs} runs each, microseconds)")
        print(f"{'entrypoint':<28}{'min':>8}{'median':>9}{'max':>9}{'vs sandbox-init':>17}")
        for name, _ in alts:
            t = times[name]
            med = statistics.median(t)
            print(f"{name:<28}{min(t):>8}{med:>9.0f}{max(t):>9}{med / base:>16.2f}x")
        print("\nresident memory of the process that stays PID 1 while the command runs")
        base_rss = None
        for name, argv in alts:
            rss, comm = rss_kib(root, argv)
            if comm == "sandbox-probe":
                print(f"{name:<28}{'none':>9}  (the command itself is PID 1: nothing reaps zombies)")
                continue
            if name == "sandbox-init":
                base_rss = rss
            ratio = f"{rss / base_rss:.2f}x" if base_rss else ""
            print(f"{name:<28}{rss:>6} KiB  {ratio}")
    finally:
        subprocess.run(["umount", "-l", root + "/proc"], check=False)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
