#!/usr/bin/env bash
# Firewall setup time: sandbox-init (resolve + one netlink transaction + read-back) beside
# the way the peer scripts do it (dig per name + ipset + iptables, written here as a
# baseline) and beside `nft -f` loading the same ruleset (resolution excluded).
#
# Runs as root, standalone: creates its own network namespaces and a dnsmasq on addresses
# it made (10.78.0.0/16, fd78::/64), removes them on exit. Every run starts in a fresh
# "box" namespace, as a container start would. Prints a table of medians and ratios.
#
#   scripts/bench-firewall.sh [path/to/sandbox-init] [runs]
#
# Needs: iproute2 nftables dnsmasq-base iptables ipset dnsutils util-linux.
set -euo pipefail

BIN=${1:-target/x86_64-unknown-linux-musl/release/sandbox-init}
RUNS=${2:-5}
[ "$(id -u)" = 0 ] || { echo "bench-firewall: needs root" >&2; exit 1; }
[ -x "$BIN" ] || { echo "bench-firewall: no binary at $BIN (make first)" >&2; exit 1; }
for t in ip nft dnsmasq iptables ipset dig unshare chroot; do
  command -v "$t" >/dev/null || { echo "bench-firewall: $t missing" >&2; exit 1; }
done

here=$(cd "$(dirname "$0")" && pwd)
. "$here/bench-lib.sh"
bench_setup firewall 1000

# A rootfs for sandbox-init (it runs chrooted, as in its image).
ROOT=$TMP/root
mkdir -p "$ROOT"/{etc,proc,tmp,home/claude,usr/local/sbin}
printf 'root:x:0:0::/root:/bin/sh\nclaude:x:1000:1000::/home/claude:/bin/sh\n' >"$ROOT/etc/passwd"
printf 'root:x:0:\nclaude:x:1000:\n' >"$ROOT/etc/group"
echo "nameserver $DNS" >"$ROOT/etc/resolv.conf"
chown 1000:1000 "$ROOT/home/claude"
cp "$BIN" "$ROOT/usr/local/sbin/sandbox-init"

now_us() { echo $(($(date +%s%N) / 1000)); }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

write_baseline "$TMP/baseline.sh"

# Prints "wall_us self_ms" for one sandbox-init run in a fresh box; keeps the ruleset.
run_sandbox() { # names-file
  local b; b=$(new_box)
  local allow; allow=$(tr '\n' ' ' <"$1")
  local t0 t1 out
  t0=$(now_us)
  out=$(ip netns exec "$b" env SANDBOX_PRESETS= SANDBOX_ALLOW="$allow" \
    unshare --mount --mount-proc="$ROOT/proc" chroot "$ROOT" /usr/local/sbin/sandbox-init apply --allow-host-pid-namespace 2>&1)
  t1=$(now_us)
  grep -q "firewall applied: .*(0 unresolved)" <<<"$out" || { echo "$out" >&2; exit 1; }
  grep "firewall applied" <<<"$out" >>"$TMP/self.log"
  ip netns exec "$b" nft list table inet sandbox_init >"$TMP/ruleset.nft"
  drop_box "$b"
  echo "$((t1 - t0)) $(sed -n 's/.*rules; \([0-9]*\) ms.*/\1/p' <<<"$out")"
}

run_baseline() { # names-file
  local b; b=$(new_box)
  local t0 t1
  t0=$(now_us)
  ip netns exec "$b" bash "$TMP/baseline.sh" "$1"
  t1=$(now_us)
  drop_box "$b"
  echo $((t1 - t0))
}

run_nft() { # the ruleset sandbox-init produced, loaded by nft in one transaction
  local b; b=$(new_box)
  { echo "table inet sandbox_init"; echo "delete table inet sandbox_init"; cat "$TMP/ruleset.nft"; } >"$TMP/load.nft"
  local t0 t1
  t0=$(now_us)
  ip netns exec "$b" nft -f "$TMP/load.nft"
  t1=$(now_us)
  drop_box "$b"
  echo $((t1 - t0))
}

run_empty() { # what `ip netns exec` + process start cost alone
  local b; b=$(new_box)
  local t0 t1
  t0=$(now_us); ip netns exec "$b" true; t1=$(now_us)
  drop_box "$b"
  echo $((t1 - t0))
}

bench() { # label entries-file
  local label=$1 n
  cp "$2" "$TMP/names"
  n=$(wc -l <"$TMP/names")
  local si=() self=() base=() nf=()
  for _ in $(seq "$RUNS"); do
    read -r w s < <(run_sandbox "$TMP/names")
    si+=("$w"); self+=("$s")
    nf+=("$(run_nft)")
  done
  # the baseline is slow with many names: fewer runs
  local bruns=$RUNS; [ "$n" -gt 100 ] && bruns=1
  for _ in $(seq "$bruns"); do base+=("$(run_baseline "$TMP/names")"); done
  local m_si m_self m_base m_nft
  m_si=$(printf '%s\n' "${si[@]}" | median)
  m_self=$(printf '%s\n' "${self[@]}" | median)
  m_base=$(printf '%s\n' "${base[@]}" | median)
  m_nft=$(printf '%s\n' "${nf[@]}" | median)
  printf '%-14s %12.1f %14s %14.1f %12.1f %10.1fx %10.2fx\n' "$label" \
    "$(bc -l <<<"$m_si/1000")" "$m_self" "$(bc -l <<<"$m_base/1000")" \
    "$(bc -l <<<"$m_nft/1000")" "$(bc -l <<<"$m_base/$m_si")" "$(bc -l <<<"$m_nft/$m_si")"
}

command -v bc >/dev/null || { echo "bench-firewall: bc missing" >&2; exit 1; }
empty=$( for _ in $(seq "$RUNS"); do run_empty; done | median )
echo "firewall setup, median of $RUNS fresh namespaces (wall ms include 'ip netns exec' + exec: ~$(bc -l <<<"scale=1; $empty/1000") ms)"
printf '%-14s %12s %14s %14s %12s %11s %11s\n' "allowlist" "sandbox-init" "(its own ms)" "dig+ipset+ipt" "nft -f" "script/si" "nft-f/si"
seq 1 1000 | sed 's/^/n/; s/$/.bench.test/' >"$TMP/names1000"
head -n 10 "$TMP/names1000" >"$TMP/names10"
# 1000 literal entries: 900 addresses and 100 networks (IPv4, which the baseline handles)
{ for i in $(seq 0 899); do echo "10.79.$((i / 250)).$((i % 250 + 1))"; done
  for i in $(seq 0 99); do echo "10.80.$i.0/24"; done; } >"$TMP/addrs1000"
bench "10 names" "$TMP/names10"
bench "1000 names" "$TMP/names1000"
bench "1000 addresses" "$TMP/addrs1000"
sed "s/^sandbox-init: /  /" "$TMP/self.log" | sort -u -t";" -k1,1 | head -3
echo "(nft -f loads the ruleset sandbox-init produced, already resolved; the script baseline resolves A only and filters IPv4 only)"
