#!/usr/bin/env bash
# The whole start as a container has it: sandbox-init as PID 1 of fresh pid, mount and
# network namespaces, chrooted into a fresh overlayfs whose lower layer is a debootstrapped
# Debian (the image) and whose upper layer is on tmpfs (the container's writable layer),
# firewall with 10 names, DNS filter, credentials, lockdown on — with and without
# container-wide no_new_privs (`docker run --security-opt no-new-privileges`) — beside the
# peers' entrypoint (dig + ipset + iptables, then exec of the command) in the same run.
# Measured from the entrypoint's exec to the command's exec (scripts/bench_start.py).
#
# Runs as root, standalone: its own network namespaces and a dnsmasq on addresses it made
# (10.78.0.0/16), removed on exit.
#
#   scripts/bench-start.sh INIT_BIN PROBE_BIN DEBIAN_ROOTFS [runs]
#
# Needs: iproute2 dnsmasq-base iptables ipset dnsutils util-linux python3.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
INIT=${1:?usage: bench-start.sh INIT_BIN PROBE_BIN DEBIAN_ROOTFS [runs]}
PROBE=${2:?usage: bench-start.sh INIT_BIN PROBE_BIN DEBIAN_ROOTFS [runs]}
LOWER=${3:?usage: bench-start.sh INIT_BIN PROBE_BIN DEBIAN_ROOTFS [runs]}
RUNS=${4:-20}
[ "$(id -u)" = 0 ] || { echo "bench-start: needs root" >&2; exit 1; }
for t in ip dnsmasq iptables ipset dig python3; do
  command -v "$t" >/dev/null || { echo "bench-start: $t missing" >&2; exit 1; }
done
grep -qw overlay /proc/filesystems || modprobe overlay 2>/dev/null || true

. "$here/bench-lib.sh"
bench_setup start 10
seq 1 10 | sed 's/^/n/; s/$/.bench.test/' >"$TMP/names10"
write_baseline "$TMP/baseline.sh"

export ID WORLD DNS
python3 "$here/bench_start.py" --init "$INIT" --probe "$PROBE" --lower "$LOWER" \
  --names "$TMP/names10" --baseline "$TMP/baseline.sh" --lib "$here/bench-lib.sh" \
  --tmp "$TMP" --runs "$RUNS"
