#!/bin/sh
# Smoke test of the arm64 binary under qemu-user (qemu-user-static), on an x86_64 host:
# --help, then `check --no-firewall` in a throwaway root filesystem with /proc (check
# changes nothing; it must find the user and exit 0).
#
#   scripts/arm64-smoke.sh target/aarch64-unknown-linux-musl/release/sandbox-init
set -eu

bin=${1:?usage: arm64-smoke.sh BIN}
qemu=$(command -v qemu-aarch64-static) || {
    echo "arm64-smoke: qemu-aarch64-static is missing: apt-get install qemu-user-static" >&2
    exit 1
}
# ELF e_machine (offset 18, little endian): 183 is EM_AARCH64.
[ "$(od -An -j18 -N2 -tu2 "$bin" | tr -d ' ')" = 183 ] || {
    echo "arm64-smoke: $bin is not an aarch64 executable" >&2
    exit 1
}

"$qemu" "$bin" --help | grep -q 'PID 1' || {
    echo "arm64-smoke: --help failed" >&2
    exit 1
}

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/usr/local/sbin" "$root/usr/bin" "$root/etc" "$root/proc" "$root/tmp" \
    "$root/home/claude" "$root/workspace"
cp "$bin" "$root/usr/local/sbin/sandbox-init"
cp "$qemu" "$root/usr/bin/qemu-aarch64-static"
printf 'root:x:0:0::/root:/bin/sh\nclaude:x:1000:1000::/home/claude:/bin/sh\n' >"$root/etc/passwd"
printf 'root:x:0:\nclaude:x:1000:\n' >"$root/etc/group"
echo 'nameserver 127.0.0.1' >"$root/etc/resolv.conf"
chown 1000:1000 "$root/home/claude" "$root/workspace"

out=$(unshare --mount --pid --fork --mount-proc="$root/proc" \
    chroot "$root" /usr/bin/qemu-aarch64-static /usr/local/sbin/sandbox-init \
    check --no-firewall --workdir /workspace 2>&1) || {
    echo "$out" >&2
    echo "arm64-smoke: check --no-firewall failed" >&2
    exit 1
}
echo "$out" | grep -q 'target user: claude uid=1000' || {
    echo "$out" >&2
    echo "arm64-smoke: check did not find the user" >&2
    exit 1
}
echo "arm64-smoke: --help and check --no-firewall ok"
