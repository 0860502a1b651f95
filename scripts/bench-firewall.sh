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

ID=$$
WORLD=bench-world-$ID
TMP=$(mktemp -d /tmp/bench-firewall.XXXXXX)
DNS=10.78.0.53
DNSMASQ_PID=

cleanup() {
  [ -n "$DNSMASQ_PID" ] && kill "$DNSMASQ_PID" 2>/dev/null && wait "$DNSMASQ_PID" 2>/dev/null
  for b in $(ip netns list | awk '{print $1}' | grep "^bench-box-$ID-" || true); do
    ip netns del "$b" 2>/dev/null || true
    rm -rf "/etc/netns/$b"
  done
  ip netns del "$WORLD" 2>/dev/null || true
  rm -rf "$TMP"
}
trap cleanup EXIT

ip netns add "$WORLD"
ip -n "$WORLD" link set lo up
ip -n "$WORLD" link add br0 type bridge
ip -n "$WORLD" addr add 10.78.0.1/16 dev br0
ip -n "$WORLD" addr add "$DNS/32" dev br0
ip -n "$WORLD" link set br0 up

# 1000 names, each with one A and one AAAA record.
: >"$TMP/hosts"
for i in $(seq 1 1000); do
  echo "10.78.$((i / 250 + 1)).$((i % 250 + 1)) n$i.bench.test" >>"$TMP/hosts"
  echo "fd78::$(printf %x "$i") n$i.bench.test" >>"$TMP/hosts"
done
ip netns exec "$WORLD" dnsmasq --no-daemon --no-resolv --no-hosts --addn-hosts="$TMP/hosts" \
  --bind-interfaces --listen-address=$DNS --user=root --group=root --pid-file= \
  --cache-size=10000 --log-facility="$TMP/dnsmasq.log" &
DNSMASQ_PID=$!
for _ in $(seq 100); do grep -q started "$TMP/dnsmasq.log" 2>/dev/null && break; sleep 0.05; done

# A rootfs for sandbox-init (it runs chrooted, as in its image).
ROOT=$TMP/root
mkdir -p "$ROOT"/{etc,proc,tmp,home/claude,usr/local/sbin}
printf 'root:x:0:0::/root:/bin/sh\nclaude:x:1000:1000::/home/claude:/bin/sh\n' >"$ROOT/etc/passwd"
printf 'root:x:0:\nclaude:x:1000:\n' >"$ROOT/etc/group"
echo "nameserver $DNS" >"$ROOT/etc/resolv.conf"
chown 1000:1000 "$ROOT/home/claude"
cp "$BIN" "$ROOT/usr/local/sbin/sandbox-init"

new_box() { # a fresh box namespace on the world bridge; prints its name
  # Called in $(...): the subshell's pid makes the names unique.
  local n=$BASHPID
  local b=bench-box-$ID-$n
  ip netns add "$b"
  ip -n "$b" link set lo up
  ip link add eth0 netns "$b" type veth peer name "p$n" netns "$WORLD"
  ip -n "$WORLD" link set "p$n" master br0 up
  ip -n "$b" addr add "10.78.200.$((n % 250 + 2))/16" dev eth0
  ip -n "$b" link set eth0 up
  ip -n "$b" route add default via 10.78.0.1
  mkdir -p "/etc/netns/$b"
  echo "nameserver $DNS" >"/etc/netns/$b/resolv.conf"
  echo "$b"
}
drop_box() { ip netns del "$1"; rm -rf "/etc/netns/$1"; }

now_us() { echo $(($(date +%s%N) / 1000)); }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

# The peer scripts' way (Anthropic's init-firewall.sh, ClaudeBox): dig per name, ipset,
# iptables, DROP policies, REJECT at the end.
cat >"$TMP/baseline.sh" <<'EOF'
set -e
iptables -F; iptables -X
ipset destroy allowed-domains 2>/dev/null || true
iptables -A OUTPUT -p udp --dport 53 -j ACCEPT
iptables -A INPUT -p udp --sport 53 -j ACCEPT
iptables -A INPUT -i lo -j ACCEPT
iptables -A OUTPUT -o lo -j ACCEPT
ipset create allowed-domains hash:net
while read -r domain; do
  case "$domain" in # addresses and networks go into the set as they are
    *[a-z]*) ;;
    *) ipset add allowed-domains "$domain" -exist; continue ;;
  esac
  ips=$(dig +short A "$domain")
  [ -n "$ips" ] || { echo "failed to resolve $domain" >&2; exit 1; }
  for ip in $ips; do ipset add allowed-domains "$ip" -exist; done
done <"$1"
iptables -P INPUT DROP; iptables -P FORWARD DROP; iptables -P OUTPUT DROP
iptables -A INPUT -m state --state ESTABLISHED,RELATED -j ACCEPT
iptables -A OUTPUT -m state --state ESTABLISHED,RELATED -j ACCEPT
iptables -A OUTPUT -m set --match-set allowed-domains dst -j ACCEPT
iptables -A OUTPUT -j REJECT --reject-with icmp-admin-prohibited
EOF

# Prints "wall_us self_ms" for one sandbox-init run in a fresh box; keeps the ruleset.
run_sandbox() { # names-file
  local b; b=$(new_box)
  local allow; allow=$(tr '\n' ' ' <"$1")
  local t0 t1 out
  t0=$(now_us)
  out=$(ip netns exec "$b" env SANDBOX_PRESETS= SANDBOX_ALLOW="$allow" \
    unshare --mount --mount-proc="$ROOT/proc" chroot "$ROOT" /usr/local/sbin/sandbox-init apply 2>&1)
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
