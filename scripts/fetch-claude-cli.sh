#!/bin/sh
# Fetches Claude Code's native Linux executable from the npm registry, once, and prints its
# path. Cached in <repo>/.cache/claude-cli/VERSION/ARCH/claude.
#
#   scripts/fetch-claude-cli.sh VERSION ARCH        ARCH: amd64 | arm64
#
# @anthropic-ai/claude-code is a thin wrapper whose postinstall copies the executable of the
# optional dependency @anthropic-ai/claude-code-linux-<x64|arm64> into place. That executable
# is all the image needs (no Node at run time). `npm pack` fetches that package for any
# architecture, with the registry's integrity check, and runs no install script.
set -eu

version=${1:?usage: fetch-claude-cli.sh VERSION ARCH}
arch=${2:?usage: fetch-claude-cli.sh VERSION ARCH}
case "$arch" in
    amd64) npm_arch=x64 ;;
    arm64) npm_arch=arm64 ;;
    *) echo "fetch-claude-cli: unsupported architecture $arch (amd64 or arm64)" >&2; exit 64 ;;
esac

repo=$(cd "$(dirname "$0")/.." && pwd)
dir="${CLAUDE_CLI_CACHE:-$repo/.cache/claude-cli}/$version/$arch"
if [ -x "$dir/claude" ]; then
    echo "$dir/claude"
    exit 0
fi
if ! command -v npm >/dev/null 2>&1; then
    echo "fetch-claude-cli: npm is needed on the host to fetch Claude Code (apt-get install npm)" >&2
    exit 1
fi

tmp="$dir.partial"
rm -rf "$tmp"
mkdir -p "$tmp"
echo "fetch-claude-cli: @anthropic-ai/claude-code-linux-$npm_arch@$version (once; cached)" >&2
tarball=$(cd "$tmp" && npm pack --silent "@anthropic-ai/claude-code-linux-$npm_arch@$version")
tar -xzf "$tmp/$tarball" -C "$tmp" package/claude
mv "$tmp/package/claude" "$tmp/claude"
chmod 0755 "$tmp/claude"
rm -rf "${tmp:?}/package" "${tmp:?}/${tarball:?}"
rm -rf "$dir"
mv "$tmp" "$dir"
echo "$dir/claude"
