#!/usr/bin/env bash
# DNS filter cost: per-query latency added by sandbox-init's forwarder (PID 1, DNS mode
# `filter`) beside querying the upstream directly, and answers per second on one core.
# Runs as root, standalone: its own network namespace, a dnsmasq on 127.0.0.2 as the
# upstream, sandbox-init as PID 1 (pinned to CPU 0) with `sandbox-probe sleep` as the
# command; the client runs as root in the same namespace (pinned to CPU 1), so it reaches
# both servers directly. Everything is removed on exit.
#
#   scripts/bench-dns.sh [path/to/sandbox-init] [path/to/sandbox-probe]
#
# Targets: < 0.3 ms added at the median, >= 20,000 answers/s for denied names.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
BIN=${1:-target/x86_64-unknown-linux-musl/release/sandbox-init}
PROBE=${2:-target/x86_64-unknown-linux-musl/release/sandbox-probe}
[ "$(id -u)" = 0 ] || { echo "bench-dns: needs root" >&2; exit 1; }
for f in "$BIN" "$PROBE"; do [ -x "$f" ] || { echo "bench-dns: no binary at $f (make first)" >&2; exit 1; }; done
for t in ip dnsmasq unshare chroot python3 taskset; do
  command -v "$t" >/dev/null || { echo "bench-dns: $t missing" >&2; exit 1; }
done

NS=bench-dns-$$
TMP=$(mktemp -d /tmp/bench-dns.XXXXXX)
PIDS=()
cleanup() {
  # SIGKILL: `unshare --fork` ignores SIGTERM while it waits; --kill-child then ends the box.
  for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  ip netns del "$NS" 2>/dev/null || true
  rm -rf "$TMP"
}
trap cleanup EXIT

ip netns add "$NS"
ip -n "$NS" link set lo up
ip -n "$NS" addr add 127.0.0.2/32 dev lo
ip netns exec "$NS" taskset -c 1 dnsmasq --no-daemon --no-resolv --no-hosts --bind-interfaces \
  --listen-address=127.0.0.2 --user=root --group=root --pid-file= \
  --address=/bench.test/10.78.0.10 --log-facility="$TMP/dnsmasq.log" 2>/dev/null &
PIDS+=($!)
for _ in $(seq 100); do grep -q started "$TMP/dnsmasq.log" 2>/dev/null && break; sleep 0.05; done

ROOT=$TMP/root
mkdir -p "$ROOT"/{etc,proc,tmp,home/claude,usr/local/sbin,usr/local/bin}
printf 'root:x:0:0::/root:/bin/sh\nclaude:x:1000:1000::/home/claude:/bin/sh\n' >"$ROOT/etc/passwd"
printf 'root:x:0:\nclaude:x:1000:\n' >"$ROOT/etc/group"
echo "nameserver 127.0.0.2" >"$ROOT/etc/resolv.conf"
chown 1000:1000 "$ROOT/home/claude"
cp "$BIN" "$ROOT/usr/local/sbin/sandbox-init"
cp "$PROBE" "$ROOT/usr/local/bin/sandbox-probe"

ip netns exec "$NS" env SANDBOX_PRESETS= SANDBOX_LOG=error taskset -c 0 \
  unshare --pid --fork --mount --kill-child --mount-proc="$ROOT/proc" chroot "$ROOT" \
  /usr/local/sbin/sandbox-init --dns filter --allow '*.bench.test' -- \
  /usr/local/bin/sandbox-probe sleep 600 &
PIDS+=($!)
for _ in $(seq 100); do
  ip netns exec "$NS" python3 -c "import socket;s=socket.socket(2,2);s.bind(('127.0.0.1',53))" 2>/dev/null || break
  sleep 0.05
done
sleep 0.2

# sandbox-init is the only child of `unshare --fork` (the pid started above).
PID1=$(pgrep -P "${PIDS[1]}" | head -1 || true)
ip netns exec "$NS" taskset -c 1 python3 "$here/bench_dns.py" --direct 127.0.0.2 --filter 127.0.0.1 \
  --n "${DNS_QUERIES:-5000}" --seconds "${DNS_SECONDS:-3}" --pid1 "${PID1:-0}"
echo "(the client is Python: its own per-query cost is in both latency rows and cancels out in"
echo " 'added'; throughput is bounded by the client as much as by the server on 2 cores; PID 1's"
echo " CPU time per answer, from /proc, depends least on what else the machine runs)"
