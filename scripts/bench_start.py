#!/usr/bin/env python3
"""The whole start of a container, entrypoint exec -> command exec, three ways, interleaved.

- sandbox-init, no_new_privs: PID 1 of fresh pid/mount/network namespaces, chrooted into a
  fresh overlayfs (lower: the image = a debootstrapped Debian plus a layer with the user,
  a NOPASSWD sudo rule and the binaries; upper: tmpfs), with no_new_privs set before the
  exec as `docker run --security-opt no-new-privileges` does; firewall with 10 names in DNS
  `filter` mode (the default), credentials, lockdown on.
- sandbox-init: the same without no_new_privs (plain `docker run`).
- sandbox-init with no_new_privs and `lockdown.strip_suid = false`: what an image built
  without set-uid files and file capabilities may choose (no walk of the root filesystem).
- the peers' entrypoint: `ip netns exec` + the dig + ipset + iptables script in a fresh
  network namespace, then `setpriv` to the user and exec of the command.

Every run gets a new network namespace (and, for sandbox-init, a new overlay mount: the
walk then sees a container's first start, overlay dentries cold, set-uid files copied up
when their bits are cleared). The clock: CLOCK_MONOTONIC taken right before the entrypoint's
execve, passed as BENCH_T0; the command (`sandbox-probe stamp`) prints the microseconds
elapsed when it starts.

Run as root from scripts/bench-start.sh (which makes the world namespace and the dnsmasq).
"""

import argparse
import ctypes
import os
import shutil
import statistics
import subprocess
import sys
import time

CLONE_NEWNS = 0x00020000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
PR_SET_NO_NEW_PRIVS = 38

INIT = "/usr/local/sbin/sandbox-init"
PROBE = "/usr/local/bin/sandbox-probe"
NO_WALK = "etc/sandbox-init/no-walk.toml"
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

libc = ctypes.CDLL(None, use_errno=True)


def check(rc, what):
    if rc != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")


def image_layer(tmp, init, probe, dns, lower):
    """The image's own layer above Debian: user claude (in group sudo, NOPASSWD rule),
    the binaries, the resolver, the home and the workspace."""
    layer = os.path.join(tmp, "layer")
    for d in ("etc/sudoers.d", "usr/local/sbin", "usr/local/bin", "home/claude", "workspace"):
        os.makedirs(os.path.join(layer, d), exist_ok=True)

    def extend(rel, line, edit=lambda t: t):
        with open(os.path.join(lower, rel)) as f:
            text = edit(f.read())
        with open(os.path.join(layer, rel), "w") as f:
            f.write(text + line)

    extend("etc/passwd", "claude:x:1000:1000:Claude:/home/claude:/bin/bash\n")
    extend("etc/shadow", "claude:!:19000:0:99999:7:::\n")
    extend("etc/group", "claude:x:1000:\n", lambda t: t.replace("\nsudo:x:27:\n", "\nsudo:x:27:claude\n"))
    os.chmod(os.path.join(layer, "etc/shadow"), 0o640)
    with open(os.path.join(layer, "etc/sudoers.d/claude"), "w") as f:
        f.write("claude ALL=(ALL:ALL) NOPASSWD: ALL\n")
    os.chmod(os.path.join(layer, "etc/sudoers.d/claude"), 0o440)
    with open(os.path.join(layer, "etc/resolv.conf"), "w") as f:
        f.write(f"nameserver {dns}\n")
    # An image that was built without set-uid files and file capabilities may skip the walk.
    os.makedirs(os.path.join(layer, "etc/sandbox-init"), exist_ok=True)
    with open(os.path.join(layer, NO_WALK), "w") as f:
        f.write("[lockdown]\nstrip_suid = false\n")
    # The image's CA bundle (ours installs ca-certificates): the credential broker needs one.
    os.makedirs(os.path.join(layer, "etc/ssl/certs"), exist_ok=True)
    shutil.copy(CA_BUNDLE, layer + CA_BUNDLE)
    for src, dst in ((init, INIT), (probe, PROBE)):
        shutil.copy(src, layer + dst)
        os.chmod(layer + dst, 0o755)
    for d in ("home/claude", "workspace"):
        os.chown(os.path.join(layer, d), 1000, 1000)
    return layer


def new_box(lib):
    out = subprocess.run(["bash", "-c", f'. "{lib}"; new_box'], check=True,
                         capture_output=True, text=True)
    return out.stdout.strip().splitlines()[-1]


def drop_box(lib, box):
    subprocess.run(["bash", "-c", f'. "{lib}"; drop_box "$1"', "-", box], check=True)


def stamp_of(out, what):
    lines = out.decode(errors="replace").strip().splitlines()
    if not lines or not lines[-1].isdigit():
        raise SystemExit(f"{what}: no stamp in {out!r}")
    return int(lines[-1])


def sandbox_once(a, layer, box, nnp, n, env, flags=()):
    """One sandbox-init start as PID 1 in a fresh overlay root; returns microseconds."""
    upper = os.path.join(a.tmp, "tmpfs", f"c{n}")
    merged = os.path.join(a.tmp, f"merged{n}")
    os.makedirs(upper + "/upper")
    os.makedirs(upper + "/work")
    os.makedirs(merged)
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                    f"lowerdir={layer}:{a.lower},upperdir={upper}/upper,workdir={upper}/work",
                    merged], check=True)
    errlog = os.path.join(a.tmp, f"stderr{n}")
    r, w = os.pipe()
    netns = os.open(f"/run/netns/{box}", os.O_RDONLY)
    pid = os.fork()
    if pid == 0:
        code = 127
        try:
            os.close(r)
            check(libc.setns(netns, CLONE_NEWNET), "setns")
            check(libc.unshare(CLONE_NEWNS | CLONE_NEWPID), "unshare")
            init = os.fork()
            if init == 0:  # PID 1 of the new pid namespace
                try:
                    check(libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "rprivate")
                    check(libc.mount(b"proc", (merged + "/proc").encode(), b"proc", 0, None),
                          "mount proc")
                    err = os.open(errlog, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                    os.chroot(merged)
                    os.chdir("/workspace")
                    os.dup2(w, 1)
                    os.dup2(err, 2)
                    null = os.open("/dev/null", os.O_RDONLY)
                    os.dup2(null, 0)
                    if nnp:
                        check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
                    argv = [INIT, *flags, "--", PROBE, "stamp"]
                    os.execve(INIT, argv, dict(env, BENCH_T0=str(time.monotonic_ns())))
                finally:
                    os._exit(127)
            _, status = os.waitpid(init, 0)
            code = os.waitstatus_to_exitcode(status)
        finally:
            os._exit(code & 0xFF)
    os.close(w)
    os.close(netns)
    try:
        out = os.fdopen(r, "rb").read()
        _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
        err = open(errlog, errors="replace").read() if os.path.exists(errlog) else ""
    finally:
        subprocess.run(["umount", merged], check=True)
        shutil.rmtree(upper)
        os.rmdir(merged)
    if code != 0:
        raise SystemExit(f"sandbox-init (no_new_privs={nnp}): exit {code}\n{err}")
    return stamp_of(out, "sandbox-init"), err


def script_once(a, box):
    """The peers' entrypoint in a fresh network namespace; returns microseconds."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            os.dup2(w, 1)
            argv = ["ip", "netns", "exec", box, "bash", a.baseline, a.names,
                    "setpriv", "--reuid=1000", "--regid=1000", "--clear-groups", a.probe, "stamp"]
            env = {"PATH": PATH, "BENCH_T0": str(time.monotonic_ns())}
            os.execve(shutil.which("ip"), argv, env)
        finally:
            os._exit(127)
    os.close(w)
    out = os.fdopen(r, "rb").read()
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"peer script: exit {os.waitstatus_to_exitcode(status)}")
    return stamp_of(out, "peer script")


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    for opt in ("--init", "--probe", "--lower", "--names", "--baseline", "--lib", "--tmp"):
        ap.add_argument(opt, required=True)
    ap.add_argument("--runs", type=int, default=20)
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench_start.py needs root (namespaces, mounts, chroot)")
    dns = os.environ["DNS"]
    names = open(a.names).read().split()
    layer = image_layer(a.tmp, a.init, a.probe, dns, a.lower)
    os.makedirs(os.path.join(a.tmp, "tmpfs"))
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", os.path.join(a.tmp, "tmpfs")], check=True)
    env = {"PATH": PATH, "SANDBOX_PRESETS": "", "SANDBOX_ALLOW": " ".join(names)}
    files = int(subprocess.run(["find", a.lower, "-xdev"], capture_output=True, text=True,
                               check=True).stdout.count("\n"))
    # A start with a credential: the broker (on by default) is started before the command.
    token = {"CLAUDE_CODE_OAUTH_TOKEN": "sk-ant-oat01-bench-" + os.urandom(16).hex()}
    variants = [
        ("sandbox-init, no_new_privs", lambda n, b: sandbox_once(a, layer, b, True, n, env)[0]),
        ("  no_new_privs, token+broker",
         lambda n, b: sandbox_once(a, layer, b, True, n, dict(env, **token))[0]),
        ("sandbox-init", lambda n, b: sandbox_once(a, layer, b, False, n, env)[0]),
        ("  no_new_privs, strip_suid off",
         lambda n, b: sandbox_once(a, layer, b, True, n, env, ("--config", "/" + NO_WALK))[0]),
        ("dig+ipset+iptables script", lambda n, b: script_once(a, b)),
    ]
    times = {name: [] for name, _ in variants}
    n = 0
    try:
        # One uncounted round (page cache, first netlink use), then interleaved rounds.
        for rnd in range(a.runs + 1):
            for name, once in variants:
                box = new_box(a.lib)
                try:
                    t = once(n, box)
                finally:
                    drop_box(a.lib, box)
                n += 1
                if rnd > 0:
                    times[name].append(t)
        # what sandbox-init said at info level on one run of each kind (the first lines)
        for nnp, extra in ((True, {}), (False, {}), (True, token)):
            box = new_box(a.lib)
            try:
                _, err = sandbox_once(a, layer, box, nnp, n, dict(env, SANDBOX_LOG="debug", **extra))
            finally:
                drop_box(a.lib, box)
            n += 1
            keep = [l for l in err.splitlines()
                    if "firewall applied" in l or "lockdown" in l or "built in" in l or "ready in" in l
                    or "credential broker" in l]
            if extra and not any("credential broker: pid" in l for l in keep):
                raise SystemExit("the start with a token ran no broker:\n" + err)
            print(f"  (no_new_privs={str(nnp).lower()}{', token' if extra else ''}) "
                  + "\n  ".join(keep))
    finally:
        subprocess.run(["umount", "-l", os.path.join(a.tmp, "tmpfs")], check=False)
    script = statistics.median(times["dig+ipset+iptables script"])
    print(f"\nfull start, entrypoint exec -> command exec: overlayfs Debian root ({files} entries "
          f"in the lower layer), firewall with {len(names)} names, lockdown on "
          f"({a.runs} runs each, ms)")
    print(f"{'entrypoint':<30}{'min':>8}{'median':>9}{'max':>9}{'script/this':>13}")
    for name, _ in variants:
        t = times[name]
        med = statistics.median(t)
        print(f"{name:<30}{min(t) / 1000:>8.1f}{med / 1000:>9.1f}{max(t) / 1000:>9.1f}"
              f"{script / med:>12.1f}x")


if __name__ == "__main__":
    main()
