#!/usr/bin/env bash
# What each step needs on the build machine, checked by what the step really uses; as root on
# Debian/Ubuntu the missing packages are installed (and a Docker engine started), otherwise
# the one command that does it is printed and the exit code is 1.
#
#   scripts/prereqs.sh STEP...
#
#   build   cargo, a C linker, the kernel headers and libclang for rustables' bindgen (the
#           libclang.so / libclang-N.so* it loads: libclang-cpp does not count), the musl target
#   test    the privileged tiers (needs root): nft, dnsmasq, ip, unshare/setpriv, script,
#           tmux, git, python3, dig, debootstrap, npm, Docker with a running engine (started only when
#           none answers: a second dockerd would delete the first one's bridge)
#   arm64   qemu-aarch64-static, the arm64 kernel headers, the aarch64 musl target
#   bench   the benchmark and the alternatives it compares with: nft, dnsmasq, ip,
#           debootstrap, iptables, ipset, dig, python3
#   image   what the image build needs on the host: the docker client and an engine, npm
#   engine  the docker client and an engine that answers
#   fresh   make test-fresh: an engine, and debootstrap for the machine's Debian base
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
root=0
[ "$(id -u)" = 0 ] && root=1

# Missing Debian packages, and what they were for (for the message).
packages=()
reasons=()
need() { # need PACKAGE WHY: records a missing package once
    local p
    for p in ${packages[@]+"${packages[@]}"}; do [ "$p" = "$1" ] && return; done
    packages+=("$1")
    reasons+=("$2")
}
have() { command -v "$1" >/dev/null 2>&1; }

# clang-sys (bindgen) loads libclang.so, libclang-N.so or libclang.so.N / libclang-N.so.N,
# never libclang-cpp*, from $LIBCLANG_PATH, `llvm-config --libdir` or the usual lib dirs.
libclang_found() {
    local dirs=() d f
    [ -n "${LIBCLANG_PATH:-}" ] && dirs+=("$LIBCLANG_PATH")
    have llvm-config && dirs+=("$(llvm-config --libdir 2>/dev/null)")
    dirs+=(/usr/local/llvm*/lib* /usr/local/lib*/*/* /usr/local/lib*/* /usr/local/lib*
        /usr/lib*/*/* /usr/lib*/* /usr/lib*)
    for d in "${dirs[@]}"; do
        [ -d "$d" ] || continue
        for f in "$d"/libclang.so "$d"/libclang-*.so "$d"/libclang.so.* "$d"/libclang-*.so.*; do
            case "$f" in *-cpp.*) continue ;; esac
            [ -e "$f" ] && return 0
        done
    done
    return 1
}

rust_target() { # rust_target TRIPLE: added with rustup (no root needed)
    if ! have rustup; then
        rustc --print target-list 2>/dev/null | grep -qx "$1" &&
            [ -d "$(rustc --print sysroot)/lib/rustlib/$1" ] && return 0
        echo "prereqs: the Rust target $1 is missing and there is no rustup to add it;" \
            "install Rust with rustup: https://rustup.rs" >&2
        exit 1
    fi
    rustup target list --installed 2>/dev/null | grep -qx "$1" && return 0
    echo "prereqs: adding the Rust target $1 (rustup target add $1)" >&2
    rustup target add "$1" >&2 || { echo "prereqs: run  rustup target add $1" >&2; exit 1; }
}

check_build() {
    if ! have cargo; then
        echo "prereqs: cargo is missing: install Rust with rustup (https://rustup.rs):" \
            "curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh" >&2
        exit 1
    fi
    have cc || need gcc "a C linker driver (cc)"
    [ -e /usr/include/linux/netfilter/nf_tables.h ] || need linux-libc-dev "kernel headers for bindgen"
    libclang_found || need libclang1 "libclang for rustables' bindgen"
}

check_test() {
    have nft || need nftables "nft: the kernel's view of the ruleset"
    have dnsmasq || need dnsmasq-base "dnsmasq: test DNS servers"
    have ip || need iproute2 "ip: network namespaces"
    have unshare && have setpriv || need util-linux "unshare, setpriv"
    have script || need bsdutils "script: a pseudo-terminal"
    have tmux || need tmux "tmux: the interactive session (the TUI) in the Docker tier"
    have git || need git "git: the workspace tier and the .gitconfig reader's tests"
    have python3 || need python3 "python3: test servers"
    [ -s /etc/ssl/certs/ca-certificates.crt ] || need ca-certificates "the CA bundle the fixtures' images carry, as real images do"
    have dig || need dnsutils "dig: DNS from the sandboxed user"
    have debootstrap || need debootstrap "debootstrap: the Debian root filesystem and image base"
    have npm || need npm "npm: fetches Claude Code's native executable"
    check_docker
}

check_docker() {
    # A docker client alone (some machines ship one without an engine) is not enough: the
    # tiers and the images need dockerd itself.
    have docker && have dockerd || need docker.io "docker: the Docker tier and the images"
    [ -e /usr/sbin/runc ] || have runc || need runc "runc: the engine's runtime"
}

check_arm64() {
    have qemu-aarch64-static || need qemu-user-static "qemu-aarch64-static: runs the arm64 binary"
    [ -e /usr/aarch64-linux-gnu/include/asm/types.h ] ||
        need linux-libc-dev-arm64-cross "arm64 kernel headers for bindgen"
}

check_bench() {
    have nft || need nftables "nft: the ruleset the alternatives load"
    have dnsmasq || need dnsmasq-base "dnsmasq: the benchmark's DNS servers"
    have ip || need iproute2 "ip: network namespaces"
    have debootstrap || need debootstrap "debootstrap: the benchmark's Debian root"
    have iptables || need iptables "iptables: the alternatives' firewall"
    have ipset || need ipset "ipset: the alternatives' firewall"
    have dig || need dnsutils "dig: the alternatives' name lookups"
    have python3 || need python3 "python3: the PID 1 benchmark"
}

check_engine() {
    check_docker
}

check_fresh() {
    check_docker
    have debootstrap || need debootstrap "debootstrap: the fresh machine's Debian base"
}

check_image() {
    check_docker
    have npm || need npm "npm: fetches Claude Code's native executable"
}

install_missing() {
    [ ${#packages[@]} -gt 0 ] || return 0
    local i
    for i in "${!packages[@]}"; do
        echo "prereqs: missing ${packages[$i]} (${reasons[$i]})" >&2
    done
    if [ "$root" = 1 ] && have apt-get; then
        echo "prereqs: installing ${packages[*]}" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >&2
        apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
        hash -r
    elif have apt-get; then
        echo "prereqs: run  sudo apt-get install -y --no-install-recommends ${packages[*]}" >&2
        exit 1
    else
        echo "prereqs: install the packages that provide these with your system's package manager" >&2
        exit 1
    fi
}

# A Docker engine that answers, started only when none does (a second dockerd deletes the
# first one's bridge): systemd's service when systemd runs, else dockerd in the background.
engine_answers() { docker info >/dev/null 2>&1; }
start_engine() {
    engine_answers && return 0
    if [ "$root" != 1 ]; then
        echo "prereqs: the Docker engine does not answer (docker info): start it, e.g." \
            "sudo systemctl start docker" >&2
        exit 1
    fi
    if ! pgrep -x dockerd >/dev/null; then
        if [ -d /run/systemd/system ] && have systemctl; then
            echo "prereqs: starting the Docker engine (systemctl start docker)" >&2
            systemctl start docker
        else
            echo "prereqs: starting the Docker engine (dockerd, log /var/log/dockerd.log)" >&2
            # Only stdin/out/err go to the engine: any other descriptor this script inherited
            # (a caller's `flock FILE make test` holds its lock on one) would be held open by
            # the engine for its whole life, and the lock never released.
            (
                for fd in /proc/self/fd/*; do
                    fd=${fd##*/}
                    [ "$fd" -gt 2 ] 2>/dev/null && eval "exec $fd>&-"
                done
                exec setsid nohup dockerd >/var/log/dockerd.log 2>&1 </dev/null
            ) &
        fi
    fi
    local _
    for _ in $(seq 1 120); do
        engine_answers && return 0
        sleep 0.5
    done
    echo "prereqs: the Docker engine does not answer; its log:" >&2
    tail -20 /var/log/dockerd.log >&2 2>/dev/null || true
    exit 1
}

if [ $# -eq 0 ]; then
    sed -n '2,19p' "$0" >&2
    exit 64
fi
for step in "$@"; do
    case "$step" in
        build | test | arm64 | bench | image | engine | fresh) ;;
        *) echo "prereqs: unknown step $step (build, test, arm64, bench, image, engine, fresh)" >&2
            exit 64 ;;
    esac
done
for step in "$@"; do
    [ "$step" = test ] || continue
    if [ "$root" != 1 ]; then
        echo "prereqs: the test tiers need root (namespaces, nftables, a Docker engine); run:" >&2
        echo "  sudo env PATH=\"$PATH\" RUSTUP_HOME=\"${RUSTUP_HOME:-$HOME/.rustup}\"" \
            "CARGO_HOME=\"${CARGO_HOME:-$HOME/.cargo}\" make -C \"$repo\" test" >&2
        echo "  (it installs what is missing; make test-unit runs the unit tests without root)" >&2
        exit 1
    fi
done
for step in "$@"; do
    "check_$step"
done
install_missing
# Only after the packages are in: the Rust targets, then the engine.
for step in "$@"; do
    case "$step" in
        build) libclang_found || { echo "prereqs: libclang still not found" >&2; exit 1; }
            rust_target x86_64-unknown-linux-musl ;;
        arm64) rust_target aarch64-unknown-linux-musl ;;
        test | image | engine | fresh) start_engine ;;
    esac
done
