#!/usr/bin/env bash
# Runs Claude Code with --dangerously-skip-permissions on a project, inside a sandbox-init
# container: default-deny egress, no sudo, no capabilities for the agent.
#
#   scripts/run-claude.sh [OPTIONS] [PROJECT_DIR] [-- COMMAND [ARGS...]]
#
# PROJECT_DIR (default: the current directory) is mounted read-write at /workspace: commit
# before a session. The home (~/.claude and ~/.claude.json: sessions, settings, refreshed
# tokens) lives in a named volume per project, claude-config-<project>-<hash>.
#
# Credentials, passed by name only (never on a command line): CLAUDE_CODE_OAUTH_TOKEN (from
# `claude setup-token`), ANTHROPIC_API_KEY, or --keychain (macOS) for the keychain item
# "Claude Code-credentials". sandbox-init writes them to the volume and removes them from
# every environment. Never mount ~/.ssh, ~/.aws, ~/.config/gcloud, ~/.gnupg or the docker
# socket into the sandbox.
#
# Options:
#   --keychain         read "Claude Code-credentials" from the macOS keychain
#   --fresh-creds      overwrite the credentials kept on the volume (SANDBOX_FORCE_CREDENTIALS)
#   --allow ENTRY      allow one more destination (host, host:port, CIDR; repeatable)
#   --preset NAME      firewall preset (repeatable; replaces the image's list, so name
#                      anthropic too: --preset anthropic --preset npm)
#   --shell            run bash instead of claude (same sandbox)
#   --rebuild          rebuild the image without cache (updates Claude Code), then run
#   --dry-run          print the docker command instead of running it
#   --image IMAGE      image to run (default sandbox-init/claude:latest; $CLAUDE_SANDBOX_IMAGE)
#   --uid UID[:GID]    ids to run as (default: yours, from id -u / id -g; root maps to 1000)
#   --network NAME     docker network to join (default: docker's bridge)
#   --env NAME         pass one more variable from your environment by name (repeatable)
#   --docker-arg ARG   one more argument for docker run, e.g. --docker-arg=--dns=10.0.0.53
#   --memory SIZE      memory limit (default 8g)      --pids N   process limit (default 1024)
#   --list-volumes     list the claude-config-* volumes
#   --reset-volume     delete this project's volume (its sessions and stored credentials)
#   --backup-volume    write this project's volume to ./claude-config-<...>-<time>.tar.gz
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
image=${CLAUDE_SANDBOX_IMAGE:-sandbox-init/claude:latest}
project="" keychain=0 fresh=0 shell=0 rebuild=0 dry=0 uidgid="" network=""
memory=8g pids=1024 action=run
allow=() presets=() pass_env=() docker_extra=() command=()

die() { echo "run-claude: $*" >&2; exit 64; }

while [ $# -gt 0 ]; do
    case "$1" in
        --keychain) keychain=1 ;;
        --fresh-creds) fresh=1 ;;
        --allow) allow+=("${2:?--allow needs an entry}"); shift ;;
        --preset) presets+=("${2:?--preset needs a name}"); shift ;;
        --shell) shell=1 ;;
        --rebuild) rebuild=1 ;;
        --dry-run) dry=1 ;;
        --image) image=${2:?--image needs a name}; shift ;;
        --uid) uidgid=${2:?--uid needs UID[:GID]}; shift ;;
        --network) network=${2:?--network needs a name}; shift ;;
        --env) pass_env+=("${2:?--env needs a variable name}"); shift ;;
        --docker-arg) docker_extra+=("${2:?--docker-arg needs an argument}"); shift ;;
        --docker-arg=*) docker_extra+=("${1#--docker-arg=}") ;;
        --memory) memory=${2:?--memory needs a size}; shift ;;
        --pids) pids=${2:?--pids needs a number}; shift ;;
        --list-volumes) action=list ;;
        --reset-volume) action=reset ;;
        --backup-volume) action=backup ;;
        -h | --help) sed -n '2,40p' "$0"; exit 0 ;;
        --) shift; command=("$@"); break ;;
        -*) die "unknown option $1 (see --help)" ;;
        *) [ -z "$project" ] || die "one project directory only"; project=$1 ;;
    esac
    shift
done

project=$(cd "${project:-.}" && pwd) || die "no such directory: $project"
base=$(basename "$project" | tr -c 'a-zA-Z0-9_.\n-' '-')
hash=$(printf '%s' "$project" | cksum | cut -d' ' -f1)
volume="claude-config-${base}-${hash}"

# Prints (dry run) or runs a command, quoted so it can be pasted back into a shell.
run() {
    if [ "$dry" = 1 ]; then
        printf '%q ' "$@" | sed 's/ $//'
        echo
    else
        "$@"
    fi
}

case "$action" in
    list) exec docker volume ls --filter name=claude-config- --format '{{.Name}}' ;;
    reset) run docker volume rm "$volume"; exit ;;
    backup)
        out="$PWD/${volume}-$(date +%Y%m%d-%H%M%S).tar.gz"
        run docker run --rm --network none --entrypoint tar -v "$volume:/from:ro" \
            -v "$(dirname "$out"):/to" "$image" -czf "/to/$(basename "$out")" -C /from .
        [ "$dry" = 1 ] || echo "run-claude: wrote $out" >&2
        exit ;;
esac

if ! command -v docker >/dev/null 2>&1; then
    echo "run-claude: docker is not installed" >&2
    exit 1
fi

# gVisor has no netfilter netlink, so sandbox-init would refuse to start (fail closed).
if [ "$dry" = 0 ] && docker info --format '{{json .Runtimes}}' 2>/dev/null | grep -q runsc; then
    echo "run-claude: note: gVisor (runsc) is installed, but nftables cannot work under it;" \
        "using the default runtime (runc)" >&2
fi

if [ "$rebuild" = 1 ]; then
    run "$repo/scripts/build-images.sh" --no-cache --tag "$image" claude
elif [ "$dry" = 0 ] && ! docker image inspect "$image" >/dev/null 2>&1; then
    echo "run-claude: building $image (once)" >&2
    "$repo/scripts/build-images.sh" --tag "$image" claude
fi

if [ "$keychain" = 1 ]; then
    command -v security >/dev/null 2>&1 || die "--keychain needs macOS (the security tool)"
    CLAUDE_CREDENTIALS=$(security find-generic-password -s "Claude Code-credentials" -w) ||
        die "no keychain item \"Claude Code-credentials\": log in with claude on the host first"
    export CLAUDE_CREDENTIALS
fi

# Host ids, so files created in the project keep their owner (macOS: 501:20). Root on the
# host maps to the image's user (1000): sandbox-init never runs the agent as root.
if [ -z "$uidgid" ] && [ "$(id -u)" != 0 ]; then
    uidgid="$(id -u):$(id -g)"
fi

args=(run --rm --init=false)
if [ -t 0 ] && [ -t 1 ]; then args+=(-it); else args+=(-i); fi
# shellcheck disable=SC2054  # commas belong to --tmpfs options
args+=(
    # Capabilities: none but what sandbox-init itself uses before it drops them all.
    --cap-drop ALL
    --cap-add NET_ADMIN        # program the nftables firewall
    --cap-add SETUID           # switch to the user
    --cap-add SETGID           # switch to the user's groups
    --cap-add SETPCAP          # empty the bounding set before exec
    --cap-add KILL             # PID 1 signals the agent, which runs under another uid
    --cap-add CHOWN            # re-own the home volume to the host uid/gid
    --cap-add DAC_READ_SEARCH  # walk the user's 0700 directories while re-owning
    --security-opt no-new-privileges
    --read-only
    --tmpfs /tmp:rw,nosuid,nodev,exec,size=2g  # the CLI writes under /tmp
    # root-only: the staged .gitconfig below and PID 1's status file for `check`
    --tmpfs /run/sandbox-init:rw,nosuid,nodev,noexec,mode=0700,size=1m
    --pids-limit "$pids"
    --memory "$memory"
    --hostname claude-sandbox
    -v "$volume:/home/claude"
    -v "$project:/workspace"
)
if [ -n "$network" ]; then args+=(--network "$network"); fi
if [ -n "$uidgid" ]; then
    args+=(-e "SANDBOX_UID=${uidgid%%:*}")
    case "$uidgid" in *:*) args+=(-e "SANDBOX_GID=${uidgid#*:}") ;; esac
fi
if [ ${#allow[@]} -gt 0 ]; then
    args+=(-e "SANDBOX_ALLOW=$(IFS=,; echo "${allow[*]}")")
fi
if [ ${#presets[@]} -gt 0 ]; then
    args+=(-e "SANDBOX_PRESETS=$(IFS=,; echo "${presets[*]}")")
fi
if [ "$fresh" = 1 ]; then args+=(-e SANDBOX_FORCE_CREDENTIALS=1); fi
# Secrets by name: docker reads the values from this process's environment.
for name in CLAUDE_CODE_OAUTH_TOKEN ANTHROPIC_API_KEY CLAUDE_CREDENTIALS \
    ${pass_env[@]+"${pass_env[@]}"}; do
    if [ -n "${!name+set}" ]; then args+=(-e "$name"); fi
done
# Host ~/.claude files are not mounted over the volume: docker would create ~/.claude as
# root for the mount point, and sandbox-init refuses a ~/.claude owned by someone else.
# The host .gitconfig goes to a staging path; sandbox-init copies it into the home
# (credentials.host_gitconfig).
if [ -f "$HOME/.gitconfig" ]; then
    args+=(-v "$HOME/.gitconfig:/run/sandbox-init/host.gitconfig:ro")
fi
if [ ${#docker_extra[@]} -gt 0 ]; then args+=("${docker_extra[@]}"); fi

args+=("$image")
if [ "$shell" = 1 ]; then
    args+=(bash)
elif [ ${#command[@]} -gt 0 ]; then
    args+=("${command[@]}")
fi

echo "run-claude: $project -> /workspace (volume $volume); commit before a session" >&2
run docker "${args[@]}"
