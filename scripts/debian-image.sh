#!/bin/sh
# Makes a Debian bookworm base image without pulling: a debootstrap root filesystem
# (scripts/debian-rootfs.sh, cached) imported with `docker import`. Skipped when the image
# exists. For machines that cannot pull debian:bookworm-slim, tag it as that:
#
#   scripts/debian-image.sh debian:bookworm-slim
#
#   scripts/debian-image.sh [TAG]      default TAG: sandbox-init-test/debian:bookworm
#
# The test tier's fixtures (dnsmasq, a python3 mock of the Messages API) use the same image,
# so it includes ca-certificates, dnsmasq-base and python3 (DEBIAN_INCLUDE to change).
set -eu

repo=$(cd "$(dirname "$0")/.." && pwd)
tag=${1:-sandbox-init-test/debian:bookworm}
if docker image inspect "$tag" >/dev/null 2>&1; then
    echo "$tag"
    exit 0
fi
dir=$(DEBIAN_INCLUDE=${DEBIAN_INCLUDE:-ca-certificates,dnsmasq-base,python3} \
    "$repo/scripts/debian-rootfs.sh" "$repo/.cache/docker-base-rootfs")
echo "debian-image: importing $dir as $tag" >&2
tar -C "$dir" --exclude=./.complete -c . | docker import \
    -c 'CMD ["/bin/bash"]' -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    - "$tag" >/dev/null
echo "$tag"
