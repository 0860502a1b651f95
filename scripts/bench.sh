#!/usr/bin/env bash
# `make bench`: sandbox-init's own setup time and memory beside what users run today, as
# ratios from one run. Needs root. Uses only public tools (python3, debootstrap, and for the
# firewall and full-start parts nft, iptables, ipset, dig; overlayfs for the full start).
#
#   scripts/bench.sh INIT_BIN PROBE_BIN
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
init=${1:?usage: bench.sh INIT_BIN PROBE_BIN}
probe=${2:?usage: bench.sh INIT_BIN PROBE_BIN}
[ "$(id -u)" = 0 ] || { echo "bench: needs root (chroot, namespaces, nftables)" >&2; exit 1; }

# A Debian root with the peers' tools: tini (docker --init), gosu (entrypoint scripts),
# util-linux's runuser and setpriv, bash, sudo.
rootfs=$(DEBIAN_INCLUDE=sudo,tini,gosu "$here/debian-rootfs.sh" "$here/../.cache/bench-rootfs")

echo "== PID 1 and privilege drop (no firewall) =="
python3 "$here/bench_pid1.py" --init "$init" --probe "$probe" --rootfs "$rootfs" --runs "${RUNS:-30}"

if [ -x "$here/bench-firewall.sh" ]; then
  echo
  echo "== firewall setup =="
  "$here/bench-firewall.sh" "$init"
fi

echo
echo "== full start: overlayfs Debian root, firewall with 10 names, lockdown, with and without no_new_privs =="
debian=$("$here/debian-rootfs.sh")
"$here/bench-start.sh" "$init" "$probe" "$debian" "${RUNS:-30}"

if [ -x "$here/bench-dns.sh" ]; then
  echo
  echo "== DNS filter (dns = filter) =="
  "$here/bench-dns.sh" "$init" "$probe"
fi

# Built beside sandbox-init by `make bench`.
broker_bench="$(dirname "$init")/broker-bench"
if [ -x "$here/bench-broker.sh" ] && [ -x "$broker_bench" ]; then
  echo
  echo "== credential broker: a streamed response through it vs direct =="
  "$here/bench-broker.sh" "$broker_bench"
else
  echo
  echo "== credential broker: skipped (no $broker_bench: make bench builds it)"
fi
