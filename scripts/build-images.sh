#!/usr/bin/env bash
# Builds the images under images/ from a build context assembled here, without any pull
# (classic builder or BuildKit; no BuildKit-only syntax).
#
#   scripts/build-images.sh [OPTIONS] IMAGE...      IMAGE: scratch | claude | devcontainer
#
#   --arch ARCH       amd64 | arm64 (default: the host's)
#   --bin PATH        the static sandbox-init for ARCH (default: target/<triple>/release/
#                     sandbox-init, built with `make` / `make all-arch` when missing)
#   --base IMAGE      BASE of the claude image (default debian:bookworm-slim) or of the
#                     devcontainer image (default sandbox-init/claude:latest)
#   --tag NAME        tag of the image (only with one IMAGE; defaults below)
#   --no-cache        rebuild every layer (the launcher's --rebuild)
#   --build-arg K=V   passed to docker build (e.g. APT_PACKAGES="git ripgrep")
#
# Default tags: sandbox-init:latest, sandbox-init/claude:latest (and :$CLAUDE_CODE_VERSION),
# sandbox-init/devcontainer:latest. CLAUDE_CODE_VERSION (default 2.1.197, the newest release
# that declares support for Node 20) picks the Claude Code release fetched with npm.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cli_version=${CLAUDE_CODE_VERSION:-2.1.197}

case "$(uname -m)" in
    aarch64 | arm64) arch=arm64 ;;
    *) arch=amd64 ;;
esac
bin="" base="" tag="" images=() extra=()
while [ $# -gt 0 ]; do
    case "$1" in
        --arch) arch=${2:?--arch needs a value}; shift 2 ;;
        --bin) bin=${2:?--bin needs a path}; shift 2 ;;
        --base) base=${2:?--base needs an image}; shift 2 ;;
        --tag) tag=${2:?--tag needs a name}; shift 2 ;;
        --no-cache) extra+=(--no-cache); shift ;;
        --build-arg) extra+=(--build-arg "${2:?--build-arg needs K=V}"); shift 2 ;;
        -h | --help) sed -n '2,19p' "$0"; exit 0 ;;
        scratch | claude | devcontainer) images+=("$1"); shift ;;
        *) echo "build-images: unknown argument $1 (see --help)" >&2; exit 64 ;;
    esac
done
if [ ${#images[@]} -eq 0 ]; then
    echo "usage: build-images.sh [OPTIONS] scratch|claude|devcontainer..." >&2
    exit 64
fi
if [ -n "$tag" ] && [ ${#images[@]} -gt 1 ]; then
    echo "build-images: --tag names one image" >&2
    exit 64
fi
case "$arch" in
    amd64) triple=x86_64-unknown-linux-musl ;;
    arm64) triple=aarch64-unknown-linux-musl ;;
    *) echo "build-images: unsupported architecture $arch (amd64 or arm64)" >&2; exit 64 ;;
esac

needs_bin=0
for image in "${images[@]}"; do
    [ "$image" = devcontainer ] || needs_bin=1
done
if [ "$needs_bin" = 1 ] && [ -z "$bin" ]; then
    bin="$repo/target/$triple/release/sandbox-init"
    if [ ! -x "$bin" ]; then
        if [ "$arch" = amd64 ]; then make -C "$repo" build; else make -C "$repo" all-arch; fi
    fi
fi
[ "$needs_bin" = 0 ] || [ -x "$bin" ] || { echo "build-images: no executable sandbox-init at $bin" >&2; exit 1; }

# One context directory per build, under the git-ignored cache; files are hard links (or
# copies across filesystems), so assembling a 250 MB context costs nothing.
cache="$repo/.cache"
mkdir -p "$cache"
ctx=$(mktemp -d "$cache/build-context.XXXXXX")
trap 'rm -rf "$ctx"' EXIT
put() { # put SRC DEST-IN-CONTEXT MODE
    mkdir -p "$(dirname "$ctx/$2")"
    ln "$1" "$ctx/$2" 2>/dev/null || cp "$1" "$ctx/$2"
    chmod "$3" "$ctx/$2"
}

build() { # build NAME TAG [ARGS...]
    local name=$1 image_tag=$2
    shift 2
    echo "build-images: $name -> $image_tag ($arch)" >&2
    # --pull is never passed: bases come from the local image store only.
    docker build --build-arg TARGETARCH="$arch" ${extra[@]+"${extra[@]}"} "$@" \
        -t "$image_tag" -f "$ctx/Dockerfile" "$ctx"
}

for image in "${images[@]}"; do
    rm -rf "${ctx:?}"/*
    cp "$repo/images/$image/Dockerfile" "$ctx/Dockerfile"
    case "$image" in
        scratch)
            put "$bin" "dist/$arch/sandbox-init" 0755
            cp "$repo/images/scratch/config.toml" "$ctx/config.toml"
            build scratch "${tag:-sandbox-init:latest}"
            ;;
        claude)
            put "$bin" "dist/$arch/sandbox-init" 0755
            put "$("$repo/scripts/fetch-claude-cli.sh" "$cli_version" "$arch")" "cli/$arch/claude" 0755
            cp "$repo/images/claude/config.toml" "$ctx/config.toml"
            build claude "${tag:-sandbox-init/claude:latest}" \
                --build-arg BASE="${base:-debian:bookworm-slim}" \
                --build-arg CLAUDE_CODE_VERSION="$cli_version"
            if [ -z "$tag" ]; then
                docker tag sandbox-init/claude:latest "sandbox-init/claude:$cli_version"
            fi
            ;;
        devcontainer)
            build devcontainer "${tag:-sandbox-init/devcontainer:latest}" \
                --build-arg BASE="${base:-sandbox-init/claude:latest}"
            ;;
    esac
done
