#!/bin/sh
# Builds a minimal Debian bookworm root filesystem (with sudo) once and caches it.
#
#   scripts/debian-rootfs.sh [DIR]      default DIR: <repo>/.cache/debian-rootfs
#
# Used by the privileged tests (a real sudo and a real SUID population) and as the base of
# the locally built Docker images. Idempotent: a finished DIR (marked by DIR.done, outside
# the tree so it never ends up in an image, holding the build's parameters) is left alone;
# an interrupted build, or one made with other parameters, is thrown away and redone.
# Needs root and debootstrap.
# Environment: DEBIAN_MIRROR (default: the first Debian mirror in the host's apt sources),
# DEBIAN_SUITE (bookworm), DEBIAN_INCLUDE (sudo; comma list), DEBIAN_ARCH (default: the
# host's; another one needs qemu-user-static/binfmt).
set -eu

repo=$(cd "$(dirname "$0")/.." && pwd)
dir=${1:-"$repo/.cache/debian-rootfs"}
suite=${DEBIAN_SUITE:-bookworm}
include=${DEBIAN_INCLUDE:-sudo}
stamp="$suite $include ${DEBIAN_ARCH:-host}"

done_already() {
    [ -d "$dir/etc" ] && [ -f "$dir.done" ] && [ "$(cat "$dir.done")" = "$stamp" ]
}

if done_already; then
    echo "$dir"
    exit 0
fi

if [ "$(id -u)" != 0 ]; then
    echo "debian-rootfs: needs root (debootstrap creates device nodes and owners)" >&2
    exit 1
fi
if ! command -v debootstrap >/dev/null 2>&1; then
    echo "debian-rootfs: debootstrap is missing: apt-get install -y debootstrap" >&2
    exit 1
fi

# The mirror the host already uses (deb822 "URIs:" or one-line "deb URL"), so no other
# network destination is needed than the one apt is configured for.
mirror=${DEBIAN_MIRROR:-}
if [ -z "$mirror" ]; then
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        mirror=$(awk '
            /^[[:space:]]*#/ { next }
            $1 == "URIs:" { for (i = 2; i <= NF; i++) if ($i ~ /\/debian\/?$/) { print $i; exit } }
            $1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^https?:/) { if ($i ~ /\/debian\/?$/) print $i; exit } }
        ' "$f")
        [ -n "$mirror" ] && break
    done
fi
mirror=${mirror:-http://deb.debian.org/debian}

mkdir -p "$(dirname "$dir")"
# Parallel callers (test binaries) wait for one build instead of racing on the same dir.
exec 9>"$dir.lock"
flock 9
if done_already; then
    echo "$dir"
    exit 0
fi

tmp="$dir.partial"
rm -rf "$tmp"
echo "debian-rootfs: debootstrap $suite from $mirror into $dir (once; cached)" >&2
debootstrap --variant=minbase --include="$include" ${DEBIAN_ARCH:+--arch="$DEBIAN_ARCH"} \
    "$suite" "$tmp" "$mirror" >&2

# Caches and logs are dead weight in a base image and in every test copy.
rm -rf "$tmp"/var/cache/apt/archives/*.deb "$tmp"/var/cache/apt/*.bin \
    "$tmp"/var/lib/apt/lists/* "$tmp"/var/log/*.log "$tmp"/var/cache/debconf/*-old \
    "$tmp"/debootstrap
mkdir -p "$tmp"/var/lib/apt/lists/partial

rm -rf "$dir" "$dir.done"
mv "$tmp" "$dir"
echo "$stamp" >"$dir.done"
echo "$dir"
