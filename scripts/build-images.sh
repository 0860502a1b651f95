#!/usr/bin/env bash
# Builds the images under images/ from a build context assembled here, without any pull
# (classic builder or BuildKit; no BuildKit-only syntax).
#
#   scripts/build-images.sh [OPTIONS] IMAGE...      IMAGE: scratch | claude | devcontainer
#   scripts/build-images.sh base                    prints the claude image's default BASE,
#                                                   made or pulled first when missing
#
#   --arch ARCH       amd64 | arm64 (default: the host's)
#   --bin PATH        the static sandbox-init for ARCH (default: target/<triple>/release/
#                     sandbox-init, built with `make` / `make all-arch` when missing)
#   --base IMAGE      BASE of the claude image (default debian:bookworm-slim: the local one,
#                     else pulled, else made here with debootstrap as sandbox-init/debian:bookworm)
#                     or of the devcontainer image (default sandbox-init/claude:latest)
#   --tag NAME        tag of the image (only with one IMAGE; defaults below)
#   --no-cache        rebuild every layer (the launcher's --rebuild)
#   --build-arg K=V   passed to docker build (e.g. APT_PACKAGES="git ripgrep")
#
# Default tags: sandbox-init:latest, sandbox-init/claude:latest (and :<Claude Code version>),
# sandbox-init/devcontainer:latest. The Claude image gets the newest Claude Code release on
# npm (recorded in the label dev.sandbox-init.claude-code.version); CLAUDE_CODE_VERSION=x.y.z
# pins one.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cli_version=${CLAUDE_CODE_VERSION:-}
default_base=debian:bookworm-slim
local_base=sandbox-init/debian:bookworm

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
        -h | --help) sed -n '2,23p' "$0"; exit 0 ;;
        scratch | claude | devcontainer | base) images+=("$1"); shift ;;
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

# The Claude Code release: pinned, else the newest on npm, else (offline) the newest one
# fetched before. Printed either way: it goes into the image's label.
claude_version() {
    if [ -n "$cli_version" ]; then
        [[ $cli_version =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] || {
            echo "build-images: CLAUDE_CODE_VERSION=$cli_version is not a version like 2.1.332" >&2
            exit 64
        }
        echo "build-images: Claude Code $cli_version (pinned by CLAUDE_CODE_VERSION)" >&2
        return
    fi
    cli_version=$(npm view --silent @anthropic-ai/claude-code@latest version 2>/dev/null) || cli_version=""
    if [[ $cli_version =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]]; then
        echo "build-images: Claude Code $cli_version (the newest release on npm;" \
            "CLAUDE_CODE_VERSION=x.y.z pins one)" >&2
        return
    fi
    cli_version=$(ls "${CLAUDE_CLI_CACHE:-$repo/.cache/claude-cli}" 2>/dev/null |
        grep -E '^[0-9]+\.[0-9]+\.[0-9]+$' | sort -V | tail -1 || true)
    if [ -z "$cli_version" ]; then
        echo "build-images: cannot ask npm for the newest Claude Code release (npm view" \
            "@anthropic-ai/claude-code version failed): check npm's registry access," \
            "or pin one with CLAUDE_CODE_VERSION=x.y.z" >&2
        exit 1
    fi
    echo "build-images: npm does not answer; using Claude Code $cli_version, the newest" \
        "one fetched before" >&2
}

# The Debian base of the Claude image when none is named: the local debian:bookworm-slim, or
# the one made here before, or a pulled one; a machine that cannot pull makes its own with
# debootstrap + docker import (scripts/debian-image.sh). Never `docker build --pull`.
claude_base() {
    local image
    for image in "$default_base" "$local_base"; do
        if docker image inspect "$image" >/dev/null 2>&1; then
            echo "$image"
            return
        fi
    done
    echo "build-images: pulling $default_base" >&2
    local err
    if err=$(timeout 300 docker pull -q "$default_base" 2>&1 >/dev/null); then
        echo "$default_base"
        return
    fi
    echo "build-images: cannot pull $default_base ($(echo "$err" | tail -1));" \
        "making a Debian bookworm base here instead: debootstrap + docker import" \
        "(scripts/debian-image.sh $local_base, once)" >&2
    if [ "$(id -u)" != 0 ]; then
        echo "build-images: that needs root (debootstrap); run once:" \
            "sudo $repo/scripts/debian-image.sh $local_base" >&2
        exit 1
    fi
    if ! command -v debootstrap >/dev/null 2>&1; then
        if command -v apt-get >/dev/null 2>&1; then
            echo "build-images: installing debootstrap" >&2
            DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
                debootstrap >/dev/null
        else
            echo "build-images: debootstrap is missing: install it, then run" \
                "$repo/scripts/debian-image.sh $local_base" >&2
            exit 1
        fi
    fi
    "$repo/scripts/debian-image.sh" "$local_base" >/dev/null
    echo "$local_base"
}

needs_bin=0
for image in "${images[@]}"; do
    case "$image" in devcontainer | base) ;; *) needs_bin=1 ;; esac
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
    [ "$image" = base ] || cp "$repo/images/$image/Dockerfile" "$ctx/Dockerfile"
    case "$image" in
        base)
            "$repo/scripts/prereqs.sh" engine
            claude_base
            ;;
        scratch)
            put "$bin" "dist/$arch/sandbox-init" 0755
            cp "$repo/images/scratch/config.toml" "$ctx/config.toml"
            build scratch "${tag:-sandbox-init:latest}"
            ;;
        claude)
            "$repo/scripts/prereqs.sh" image
            claude_version
            put "$bin" "dist/$arch/sandbox-init" 0755
            cli=$("$repo/scripts/fetch-claude-cli.sh" "$cli_version" "$arch") || exit 1
            put "$cli" "cli/$arch/claude" 0755
            cp "$repo/images/claude/config.toml" "$ctx/config.toml"
            cp "$repo/images/claude/managed-settings.json" "$ctx/managed-settings.json"
            claude_base=$base
            if [ -z "$claude_base" ]; then claude_base=$(claude_base) || exit 1; fi
            build claude "${tag:-sandbox-init/claude:latest}" \
                --build-arg BASE="$claude_base" \
                --build-arg CLAUDE_CODE_VERSION="$cli_version"
            if [ -z "$tag" ]; then
                docker tag sandbox-init/claude:latest "sandbox-init/claude:$cli_version"
            fi
            echo "build-images: ${tag:-sandbox-init/claude:latest} has Claude Code $cli_version" \
                "on $claude_base" >&2
            ;;
        devcontainer)
            build devcontainer "${tag:-sandbox-init/devcontainer:latest}" \
                --build-arg BASE="${base:-sandbox-init/claude:latest}"
            ;;
    esac
done
