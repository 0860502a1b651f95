# Shared by the firewall and full-start benchmarks (sourced, not run): a "world" network
# namespace with a bridge and a dnsmasq that answers N names, fresh "box" namespaces on that
# bridge (one per measured run, as each container start gets its own), and the peers' way of
# building the firewall (dig per name + ipset + iptables) as a script.
#
# Everything lives on addresses these functions make (10.78.0.0/16, fd78::/64), and all of it
# is removed on exit.

# Sets ID (unique per benchmark process), WORLD, DNS and TMP, removes it all on exit, and
# starts the world with a dnsmasq answering n1..n$2.bench.test.
bench_setup() { # tag names
  ID=$$
  WORLD=bench-world-$ID
  TMP=$(mktemp -d "/tmp/bench-$1.XXXXXX")
  DNS=10.78.0.53
  trap bench_cleanup EXIT
  bench_world_up "$2"
}

# The world namespace and a dnsmasq at $DNS answering n1..n$1.bench.test (one A and one AAAA
# each).
bench_world_up() { # names
  ip netns add "$WORLD"
  ip -n "$WORLD" link set lo up
  ip -n "$WORLD" link add br0 type bridge
  ip -n "$WORLD" addr add 10.78.0.1/16 dev br0
  ip -n "$WORLD" addr add "$DNS/32" dev br0
  ip -n "$WORLD" link set br0 up
  : >"$TMP/hosts"
  for i in $(seq 1 "$1"); do
    echo "10.78.$((i / 250 + 1)).$((i % 250 + 1)) n$i.bench.test" >>"$TMP/hosts"
    echo "fd78::$(printf %x "$i") n$i.bench.test" >>"$TMP/hosts"
  done
  ip netns exec "$WORLD" dnsmasq --no-daemon --no-resolv --no-hosts --addn-hosts="$TMP/hosts" \
    --bind-interfaces --listen-address="$DNS" --user=root --group=root --pid-file= \
    --cache-size=10000 --log-facility="$TMP/dnsmasq.log" &
  DNSMASQ_PID=$!
  for _ in $(seq 100); do grep -q started "$TMP/dnsmasq.log" 2>/dev/null && break; sleep 0.05; done
}

bench_cleanup() {
  [ -n "${DNSMASQ_PID:-}" ] && kill "$DNSMASQ_PID" 2>/dev/null && wait "$DNSMASQ_PID" 2>/dev/null
  for b in $(ip netns list | awk '{print $1}' | grep "^bench-box-$ID-" || true); do
    drop_box "$b"
  done
  ip netns del "$WORLD" 2>/dev/null || true
  rm -rf "$TMP"
}

new_box() { # a fresh box namespace on the world bridge; prints its name
  # Called in $(...) or its own bash: the process's pid makes the names unique.
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

drop_box() { ip netns del "$1" 2>/dev/null || true; rm -rf "/etc/netns/$1"; }

# The peer scripts' way (Anthropic's init-firewall.sh, ClaudeBox): dig per name, ipset,
# iptables, DROP policies, REJECT at the end. Arguments: the entries file, then optionally
# the command to exec once the firewall is up (as the peers' entrypoints do).
write_baseline() { # file
  cat >"$1" <<'EOF'
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
shift
if [ $# -gt 0 ]; then exec "$@"; fi
EOF
}
