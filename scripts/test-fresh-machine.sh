#!/usr/bin/env bash
# The README's two commands on a fresh machine, as a test (`make test-fresh`; CI runs it).
#
# A container plays a fresh Debian 12 build machine: a Debian base made here with
# debootstrap (scripts/debian-image.sh), plus only what such a machine has (a C toolchain,
# git, curl, make, llvm-14 with libclang-cpp14 but no libclang.so, node and npm, python3),
# the host's Rust toolchain and CA bundle handed in as a build machine has them, and the
# capabilities that network namespaces and a Docker engine inside need. Nothing else: no
# nftables, dnsmasq, debootstrap or Docker engine. In it, from a clean clone of HEAD:
#
#   1. `make test` as root, the README's test command: it must install what the tiers need,
#      start a Docker engine, and pass;
#   2. the README's first command, scripts/run-claude.sh in a project directory, with a
#      mock of the Messages API (tests/docker/mock_api.py) on the engine's bridge: it builds
#      the release binary, the Debian base and the Claude image (a progress line each), and
#      the real Claude Code CLI answers with the mock's text; a second start builds nothing.
#
#   scripts/test-fresh-machine.sh        needs root and a Docker engine; takes minutes
#
# Environment: FRESH_KEEP=1 keeps the work directory (logs, clone); FRESH_STEPS="test run"
# picks steps. Exit 0 when every step passed.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
steps=${FRESH_STEPS:-test run}
[ "$(id -u)" = 0 ] || { echo "test-fresh: needs root (a privileged container)" >&2; exit 1; }
# A Docker engine (installed and started when missing) and debootstrap for the base.
"$repo/scripts/prereqs.sh" fresh

# What a fresh Debian 12 build machine has; the tag changes with the list.
machine_packages="build-essential git curl ca-certificates make libclang-cpp14 llvm-14 nodejs npm
python3 procps iproute2 sudo file"
tag_hash=$(printf '%s' "$machine_packages" | sha256sum | cut -c1-12)
machine=sandbox-init-fresh/machine:$tag_hash
base=sandbox-init-test/debian:bookworm

# Beside the repository (git-ignored), not in /tmp: the clone is where the machine
# debootstraps and builds, and this repository's filesystem is a real one even when this
# machine's /tmp is an overlay (a container's root).
mkdir -p "$repo/.cache"
work=$(mktemp -d "$repo/.cache/fresh-test.XXXXXX")
engine_volume=sandbox-init-fresh-engine-$$
cleanup() {
    docker volume rm -f "$engine_volume" >/dev/null 2>&1 || true
    if [ "${FRESH_KEEP:-}" = 1 ]; then
        echo "test-fresh: kept $work" >&2
    else
        rm -rf "$work"
    fi
}
trap cleanup EXIT

t0=$SECONDS
if ! docker image inspect "$machine" >/dev/null 2>&1; then
    echo "test-fresh: making the machine image $machine (once)" >&2
    "$repo/scripts/debian-image.sh" "$base" >/dev/null
    # shellcheck disable=SC2086  # the package list splits on purpose
    printf '%s\n' "FROM $base" \
        "RUN apt-get update --error-on=any && DEBIAN_FRONTEND=noninteractive apt-get install -y \
--no-install-recommends $(echo $machine_packages) && rm -rf /var/lib/apt/lists/*" |
        docker build -q -t "$machine" - >"$work/machine.log" 2>&1 || {
        tail -20 "$work/machine.log" >&2
        echo "test-fresh: FAIL: the machine image could not be built" >&2
        exit 1
    }
fi

if [ -n "$(git -C "$repo" status --porcelain --untracked-files=no)" ]; then
    echo "test-fresh: note: uncommitted changes are not tested (the clone is of HEAD)" >&2
fi
git clone -q "$repo" "$work/src"
echo "test-fresh: machine ready, clone of $(git -C "$work/src" rev-parse --short HEAD)" \
    "($((SECONDS - t0)) s)" >&2

# Runs inside the machine, as root: the host's Rust toolchain as a build machine has it
# (cargo home copied, toolchains shared), then the steps. Results go to /out/*.rc.
cat >"$work/inside.sh" <<'INSIDE'
set -u
cp -a /host-cargo /root/.cargo
export PATH=/root/.cargo/bin:$PATH RUSTUP_HOME=/host-rustup
cd /src
for step in $STEPS; do
    s=$(date +%s)
    case $step in
    test)
        make test >/out/test.log 2>&1
        echo "$? $(( $(date +%s) - s ))" >/out/test.rc ;;
    run)
        # A user of the first command has a Docker engine (here make test started one; alone,
        # this step installs and starts it as such a user would).
        /src/scripts/prereqs.sh engine >/out/engine.log 2>&1
        # The mock listens on the machine itself; the session reaches it through the
        # bridge's gateway, which the firewall opens for exactly that address and port.
        python3 -u /src/tests/docker/mock_api.py --port 18080 --messages >/out/mock.log 2>&1 &
        gw=$(ip -4 -o addr show docker0 | awk '{print $4}' | cut -d/ -f1)
        mkdir -p /tmp/project && cd /tmp/project && git init -q .
        start() { # start LOG: the README's first command, against the mock, no presets
            ANTHROPIC_API_KEY=sk-ant-api03-INVENTED-fresh-machine \
            ANTHROPIC_BASE_URL="http://$gw:18080" \
                timeout 1500 /src/scripts/run-claude.sh --allow "$gw:18080" \
                --env ANTHROPIC_BASE_URL --docker-arg=--env=SANDBOX_PRESETS= \
                -- claude -p "hello FRESH-MACHINE" --dangerously-skip-permissions \
                >"$1" 2>&1 </dev/null
        }
        start /out/run.log
        echo "$? $(( $(date +%s) - s ))" >/out/run.rc
        s2=$(date +%s%N)
        start /out/run2.log
        echo "$? $(( ($(date +%s%N) - s2) / 1000000 ))" >/out/run2.rc ;;
    esac
done
INSIDE

# The CA bundle this machine's tools use (a proxy's CA may be in it only), as a build
# machine has its own.
ca=/etc/ssl/certs/ca-certificates.crt
for f in "${SSL_CERT_FILE:-}" "${CURL_CA_BUNDLE:-}" "${NODE_EXTRA_CA_CERTS:-}"; do
    if [ -n "$f" ] && [ -f "$f" ]; then ca=$f; break; fi
done
ca_env=()
for v in SSL_CERT_FILE NODE_EXTRA_CA_CERTS CURL_CA_BUNDLE GIT_SSL_CAINFO REQUESTS_CA_BUNDLE; do
    ca_env+=(-e "$v=/host-ca.crt")
done
docker volume create "$engine_volume" >/dev/null
t1=$SECONDS
# Namespaces, nftables and a Docker engine inside need these; the engine's storage is a
# volume (overlay on overlay does not work).
docker run --rm --name "sandbox-init-fresh-$$" \
    --cap-add ALL --cap-drop SYS_RESOURCE --security-opt seccomp=unconfined \
    --security-opt apparmor=unconfined --security-opt systempaths=unconfined \
    --cgroupns=host -v /sys/fs/cgroup:/sys/fs/cgroup \
    -v "$engine_volume:/var/lib/docker" -v "$work/src:/src" -v "$work:/out" \
    -v "${RUSTUP_HOME:-$HOME/.rustup}:/host-rustup" -v "${CARGO_HOME:-$HOME/.cargo}:/host-cargo:ro" \
    -v "$ca:/host-ca.crt:ro" "${ca_env[@]}" -e STEPS="$steps" \
    "$machine" bash /out/inside.sh || true
echo "test-fresh: the machine ran for $((SECONDS - t1)) s" >&2

pass=0 fail=0
verdict() { # verdict NAME OK DETAIL
    if [ "$2" = 1 ]; then
        echo "PASS fresh $1: $3"
        pass=$((pass + 1))
    else
        echo "FAIL fresh $1: $3"
        fail=$((fail + 1))
    fi
}
rc_of() { cut -d' ' -f1 "$work/$1.rc" 2>/dev/null || echo "did-not-run"; }
secs_of() { cut -d' ' -f2 "$work/$1.rc" 2>/dev/null || echo "?"; }
has() { grep -q -- "$2" "$work/$1.log" 2>/dev/null; }

for step in $steps; do
    case $step in
    test)
        ok=1 why=""
        [ "$(rc_of test)" = 0 ] || { ok=0; why="exit $(rc_of test); "; }
        # It was make test that installed the tiers' tools and started the engine.
        has test "prereqs: installing .*nftables" || { ok=0; why+="did not install nftables; "; }
        has test "prereqs: starting the Docker engine" || { ok=0; why+="did not start an engine; "; }
        # The panic's message is the line after "panicked at": keep it, it names the value.
        [ "$ok" = 1 ] || why+="$(grep -m8 -A1 -E '^test .*FAILED|panicked at|^error|failed cases|^make: \*\*\*' \
            "$work/test.log" | grep -v '^--$' | tr '\n' ' ' | cut -c1-1200)"
        verdict "make test" "$ok" "${why:-exit 0 in $(secs_of test) s}"
        ;;
    run)
        ok=1 why=""
        [ "$(rc_of run)" = 0 ] || { ok=0; why="exit $(rc_of run); "; }
        for n in 1 2 3; do has run "run-claude: \[$n/3\]" || { ok=0; why+="no step $n line; "; }; done
        has run "MOCK-ANSWER-42" || { ok=0; why+="no answer from the CLI; "; }
        grep -q "FRESH-MACHINE" "$work/mock.log" 2>/dev/null || { ok=0; why+="the mock saw no request; "; }
        [ "$ok" = 1 ] || why+="$(tail -5 "$work/run.log" | tr '\n' ' ' | cut -c1-400)"
        verdict "first start" "$ok" "${why:-built everything and answered in $(secs_of run) s}"
        ok=1 why=""
        [ "$(rc_of run2)" = 0 ] || { ok=0; why="exit $(rc_of run2); "; }
        has run2 "MOCK-ANSWER-42" || { ok=0; why+="no answer; "; }
        ! has run2 "run-claude: \[" || { ok=0; why+="it built something again; "; }
        verdict "second start" "$ok" "${why:-reused everything, answered in $(secs_of run2) ms}"
        ;;
    esac
done
if [ "$fail" != 0 ]; then
    FRESH_KEEP=1
    echo "test-fresh: logs in $work" >&2
fi
echo "test-fresh: $pass passed, $fail failed ($((SECONDS - t0)) s)"
[ "$fail" = 0 ]
