#!/usr/bin/env bash
# Claude Code with --dangerously-skip-permissions on a project, inside a sandbox-init
# container (default-deny egress, no sudo, no capabilities for the agent). Builds what is
# missing first: the static binary, a Debian base, the Claude image. `--help` for the usage.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)

usage() {
    cat <<'EOF'
Usage: run-claude.sh [OPTIONS] [PROJECT_DIR] [-- COMMAND [ARGS...]]

Runs `claude --dangerously-skip-permissions` (or COMMAND) sandboxed by sandbox-init, with
PROJECT_DIR (default: the current directory) mounted read-write at /workspace: commit before
a session. The first start builds what is missing (the static sandbox-init, a Debian base,
the image with the newest Claude Code), one progress line per step; later starts reuse it.

The home (~/.claude, ~/.claude.json: sessions, settings, refreshed tokens) lives in a Docker
volume per project, claude-config-<dir name>-<SHA-256 of the path>. The container is named
after the project too (printed at start): docker exec -it NAME bash.

Credentials, by name only (never on a command line): CLAUDE_CODE_OAUTH_TOKEN (from
`claude setup-token`), ANTHROPIC_API_KEY, or --keychain on macOS. sandbox-init removes them
from every environment; its credential broker holds them, and the volume gets a placeholder
the agent cannot use elsewhere (SANDBOX_BROKER=0 with --env SANDBOX_BROKER writes the real
ones to the volume instead, for claude.ai MCP connectors and Remote Control).

Sandbox:
  --allow ENTRY       allow one more destination: host, host:443, host:53/udp, *.host,
                      10.0.0.0/8, [2001:db8::1]:443 (repeatable; checked before anything runs)
  --preset NAME       allowlist preset: anthropic, npm, pypi, github, crates, debian, vscode,
                      telemetry (repeatable; replaces the image's list, so name anthropic too)
  --fresh-creds       overwrite the credentials kept on the volume
  --keychain          read "Claude Code-credentials" from the macOS keychain
  --shell             a sandboxed bash: attached to this project's running session when
                      there is one (sandbox-init exec bash: the agent's user, groups,
                      no capabilities), else a new session running bash instead of claude
  --allow-live ENTRY  allow ENTRY now in this project's running session, without a restart
                      (sandbox-init allow; repeatable); the blocked lines of a session say
                      which entry to give
  --env NAME          pass one more variable from your environment, by name (repeatable)
  --uid UID[:GID]     ids to run as (default: yours; root maps to the image's user 1000)
  --memory SIZE       memory limit (default 8g)
  --pids N            process limit (default 1024)
  --network NAME      Docker network to join (default: Docker's bridge)
  --docker-arg ARG    one more argument for docker run, e.g. --docker-arg=--dns=10.0.0.53
  --writable-git-config
                      let the agent change .git/config (git config, git remote add); by
                      default it is read-only, with .git/hooks, .devcontainer and .vscode,
                      because the host runs what they name at your next git command,
                      container rebuild or folder open

Image:
  --image IMAGE       image to run (default sandbox-init/claude:latest, or $CLAUDE_SANDBOX_IMAGE)
  --rebuild           rebuild the binary and the image without cache (newest Claude Code;
                      CLAUDE_CODE_VERSION=x.y.z pins one), then run
  --dry-run           print the docker command instead of running it; build nothing

The project's volume:
  --list-volumes      list the claude-config-* volumes
  --backup-volume     write this project's volume (credentials inside) to a .tar.gz, mode
                      0600, in ~/sandbox-init-backups (or --backup-dir DIR; never inside the
                      project)
  --reset-volume      delete this project's volume: its sessions and stored credentials
                      (asks first; --yes to skip the question)

  -h, --help          this text

Environment: CLAUDE_SANDBOX_IMAGE (as --image), CLAUDE_SANDBOX_BIN (the sandbox-init binary
to build the image with and to check --allow with; default target/<arch>-unknown-linux-musl/
release/sandbox-init of this repository), CLAUDE_CODE_VERSION (pins Claude Code at a build).

Exit codes: 64 usage error; 1 a step failed (the message says what to do); otherwise the
code of the session (sandbox-init's: 70 the sandbox could not be built, 78 bad config or
credentials).
EOF
}

die() { echo "run-claude: $*" >&2; exit 64; }
fail() { echo "run-claude: $*" >&2; exit 1; }
have() { command -v "$1" >/dev/null 2>&1; }

default_image=sandbox-init/claude:latest
image=${CLAUDE_SANDBOX_IMAGE:-$default_image}
project="" keychain=0 fresh=0 shell=0 rebuild=0 dry=0 uidgid="" network="" yes=0
writable_git_config=0
memory=8g pids=1024 action=run backup_dir=""
allow=() allow_live=() presets=() pass_env=() docker_extra=() command=()

takes_value() {
    case "$1" in
        --allow | --allow-live | --preset | --image | --uid | --network | --env | --docker-arg | --memory | \
            --pids | --backup-dir) return 0 ;;
    esac
    return 1
}

while [ $# -gt 0 ]; do
    arg=$1
    shift
    case "$arg" in
        --) command=("$@"); break ;;
        --*=*) # --option=value is --option value
            takes_value "${arg%%=*}" || die "${arg%%=*} takes no value (see --help)"
            set -- "${arg#*=}" "$@"
            arg=${arg%%=*} ;;
    esac
    val=""
    if takes_value "$arg"; then
        [ $# -ge 1 ] && [ -n "$1" ] || die "$arg needs a value (see --help)"
        # Only docker's own arguments start with '-'; elsewhere it is the next option.
        [ "$arg" = --docker-arg ] || [ "${1#-}" = "$1" ] || die "$arg needs a value (see --help)"
        val=$1
        shift
    fi
    case "$arg" in
        --keychain) keychain=1 ;;
        --fresh-creds) fresh=1 ;;
        --allow)
            # SANDBOX_ALLOW separates entries with commas and spaces: one --allow is one entry.
            case "$val" in
                *[,[:space:]]*) die "--allow takes one entry: '$val' holds a comma or a space" \
                    "(repeat --allow for more)" ;;
            esac
            allow+=("$val") ;;
        --allow-live)
            case "$val" in
                *[,[:space:]]*) die "--allow-live takes one entry: '$val' holds a comma or a" \
                    "space (repeat --allow-live for more)" ;;
            esac
            allow_live+=("$val")
            action=allow-live ;;
        --preset)
            [[ $val =~ ^[a-z0-9-]+$ ]] || die "--preset: '$val' is not a preset name (see --help)"
            presets+=("$val") ;;
        --shell) shell=1 ;;
        --rebuild) rebuild=1 ;;
        --dry-run) dry=1 ;;
        --yes) yes=1 ;;
        --writable-git-config) writable_git_config=1 ;;
        --image) image=$val ;;
        --uid)
            [[ $val =~ ^[0-9]+(:[0-9]+)?$ ]] || die "--uid takes UID or UID:GID, not '$val'"
            uidgid=$val ;;
        --network) network=$val ;;
        --env)
            [[ $val =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || die "--env takes a variable name, not '$val'"
            pass_env+=("$val") ;;
        --docker-arg) docker_extra+=("$val") ;;
        --memory) memory=$val ;;
        --pids)
            [[ $val =~ ^[0-9]+$ ]] || die "--pids takes a number, not '$val'"
            pids=$val ;;
        --backup-dir) backup_dir=$val ;;
        --list-volumes) action=list ;;
        --reset-volume) action=reset ;;
        --backup-volume) action=backup ;;
        -h | --help) usage; exit 0 ;;
        -*) die "unknown option $arg (see --help)" ;;
        *) [ -z "$project" ] || die "one project directory only ($project, then $arg)"; project=$arg ;;
    esac
done

project=$(cd "${project:-.}" 2>/dev/null && pwd) || die "no such directory: ${project:-.}"
docker_ok=0
if have docker; then docker_ok=1; fi

case "$(uname -m)" in
    aarch64 | arm64) triple=aarch64-unknown-linux-musl ;;
    *) triple=x86_64-unknown-linux-musl ;;
esac
bin=${CLAUDE_SANDBOX_BIN:-"$repo/target/$triple/release/sandbox-init"}

# --allow and --preset are checked by sandbox-init's own parser (its `config` mode, which
# only parses) before anything runs: the host binary when it can run here, else the image's.
# A binary from before `config` existed would take the word for a command and build a
# sandbox around this very host: it is asked for its --help first, which every version
# answers without doing anything.
checked=0
validate() {
    [ "$checked" = 0 ] || return 0
    [ ${#allow[@]} -gt 0 ] || [ ${#presets[@]} -gt 0 ] || { checked=1; return 0; }
    local flags=() a p err
    for a in ${allow[@]+"${allow[@]}"}; do flags+=(--allow "$a"); done
    for p in ${presets[@]+"${presets[@]}"}; do flags+=(--preset "$p"); done
    if [ "$(uname -s)" = Linux ] && [ -x "$bin" ]; then
        if ! env -i "$bin" --help 2>/dev/null | grep -q '^  config '; then
            echo "run-claude: note: $bin is too old to check --allow and --preset" \
                "(make build, or --rebuild); sandbox-init checks them at the start" >&2
            checked=1
            return 0
        fi
        checked=1
        err=$(env -i "$bin" config --config /dev/null "${flags[@]}" 2>&1 >/dev/null) && return 0
    elif [ "$docker_ok" = 1 ] && docker image inspect "$image" >/dev/null 2>&1; then
        # In a throwaway container without a network: harmless whatever the version.
        checked=1
        err=$(docker run --rm --network none --entrypoint /usr/local/sbin/sandbox-init \
            "$image" config --config /dev/null "${flags[@]}" 2>&1 >/dev/null) && return 0
    else
        return 1 # nothing built yet: checked once the binary is
    fi
    die "${err#sandbox-init: error: }"
}

# With a host binary, before anything else; otherwise once one is built (or from the image).
if [ "$(uname -s)" = Linux ] && [ -x "$bin" ]; then validate; fi

dir_name=$(basename "$project" | tr -c 'a-zA-Z0-9_.\n-' '-')
if have sha256sum; then
    sha=$(printf '%s' "$project" | sha256sum | cut -c1-16)
else
    sha=$(printf '%s' "$project" | shasum -a 256 | cut -c1-16)
fi
volume="claude-config-${dir_name}-${sha}"
[ "$docker_ok" = 1 ] || [ "$dry" = 1 ] || fail "Docker is needed: install it (Debian: sudo" \
    "apt-get install docker.io; others: https://docs.docker.com/engine/install/)"

# The container is named after the project (short, the same for every start of it), with a
# number when a session of the project runs already.
name="claude-$(printf '%s' "${dir_name:0:24}" | sed 's/^[^a-zA-Z0-9]*//')-${sha:0:8}"
name=${name/#claude--/claude-}

# This project's running session (the first one when there are several), if any.
running_session() {
    docker ps --filter "name=$name" --format '{{.Names}}' 2>/dev/null |
        grep -xE "${name//./\\.}(-[0-9]+)?" | sort | head -n 1
}

# Older launchers named the volume after a CRC32 of the path. A project that has only such
# a volume keeps using it (its sessions and tokens live there); new projects get the new name.
old_volume="claude-config-${dir_name}-$(printf '%s' "$project" | cksum | cut -d' ' -f1)"
if [ "$docker_ok" = 1 ] && ! docker volume inspect "$volume" >/dev/null 2>&1 &&
    docker volume inspect "$old_volume" >/dev/null 2>&1; then
    echo "run-claude: note: using this project's volume under its older name $old_volume" \
        "(new projects get claude-config-<dir>-<SHA-256>)" >&2
    volume=$old_volume
fi

# Prints (dry run) or runs a command, quoted so it can be pasted back into a shell.
run() {
    if [ "$dry" = 1 ]; then
        printf '%q ' "$@" | sed 's/ $//'
        echo
    else
        "$@"
    fi
}

# A running session is changed or joined in place (root in the container, as docker exec
# is by default; sandbox-init checks the entries and refuses anyone but root).
live=""
if [ "$action" = allow-live ] || { [ "$action" = run ] && [ "$shell" = 1 ]; }; then
    if [ "$docker_ok" = 1 ]; then live=$(running_session || true); fi
    # (a dry run of --allow-live shows the command even when no session runs)
    if [ -z "$live" ] && [ "$dry" = 1 ] && [ "$action" = allow-live ]; then live=$name; fi
fi
case "$action" in
    allow-live)
        [ -n "$live" ] || fail "no running session of $project (container $name...): start" \
            "one, or give the entries with --allow at the start"
        run docker exec "$live" /usr/local/sbin/sandbox-init allow "${allow_live[@]}"
        exit $? ;;
    run)
        if [ -n "$live" ]; then
            echo "run-claude: a sandboxed shell in the running session $live" >&2
            tty=(-i)
            if [ -t 0 ] && [ -t 1 ]; then tty=(-it); fi
            run docker exec "${tty[@]}" "$live" /usr/local/sbin/sandbox-init exec bash
            exit $?
        fi ;;
esac

case "$action" in
    list) exec docker volume ls --filter name=claude-config- --format '{{.Name}}' ;;
    reset)
        if [ "$dry" = 1 ]; then run docker volume rm "$volume"; exit 0; fi
        if ! docker volume inspect "$volume" >/dev/null 2>&1; then
            echo "run-claude: $project has no volume ($volume); nothing to delete" >&2
            exit 0
        fi
        if [ "$yes" != 1 ]; then
            [ -t 0 ] || die "--reset-volume deletes $volume (the sessions and stored" \
                "credentials of $project): add --yes to confirm"
            read -r -p "run-claude: delete $volume, with the sessions and stored credentials of $project? [y/N] " answer
            case "$answer" in
                y | Y | yes) ;;
                *) echo "run-claude: kept $volume" >&2; exit 1 ;;
            esac
        fi
        docker volume rm "$volume" >/dev/null
        echo "run-claude: deleted $volume" >&2
        exit 0 ;;
    backup)
        # The archive holds the credentials: written by this process (so as you), 0600, and
        # never where the agent can read it (the project).
        dir=${backup_dir:-$HOME/sandbox-init-backups}
        (umask 077 && mkdir -p "$dir") || fail "cannot create $dir"
        dir=$(cd "$dir" && pwd -P)
        real_project=$(cd "$project" && pwd -P)
        case "$dir/" in
            "$real_project"/*) die "the backup would land inside the project ($dir), where" \
                "the agent can read it: --backup-dir DIR outside $project" ;;
        esac
        out="$dir/${volume}-$(date +%Y%m%d-%H%M%S).tar.gz"
        tar_cmd=(docker run --rm --network none --entrypoint tar -v "$volume:/from:ro" "$image"
            -czf - -C /from .)
        if [ "$dry" = 1 ]; then run "${tar_cmd[@]}"; echo "> $out"; exit 0; fi
        docker volume inspect "$volume" >/dev/null 2>&1 || fail "$project has no volume ($volume)"
        tmp=$(mktemp "$dir/.${volume}.XXXXXX")
        if ! "${tar_cmd[@]}" >"$tmp"; then rm -f "$tmp"; fail "the backup failed"; fi
        chmod 0600 "$tmp"
        mv "$tmp" "$out"
        echo "run-claude: wrote $out (mode 0600; it holds the credentials)" >&2
        exit 0 ;;
esac

step_total=3
step() { echo "run-claude: [$1/$step_total] $2" >&2; }

# The steps' own output goes to a log, shown (its end) only when a step fails.
log="$repo/.cache/run-claude-build.log"
logged() { # logged WHAT COMMAND...
    local what=$1
    shift
    if "$@" >>"$log" 2>&1; then return 0; fi
    echo "run-claude: $what failed; the end of its log ($log):" >&2
    tail -n 25 "$log" | sed 's/^/    /' >&2
    exit 1
}

# Everything the image needs, each step skipped when its result is there.
build_all() {
    mkdir -p "$repo/.cache"
    : >"$log"
    local t=$SECONDS base
    if [ "$rebuild" = 1 ] || [ ! -x "$bin" ]; then
        step 1 "the sandbox-init binary: building with cargo (make build; the first time takes minutes)"
        logged "building sandbox-init" make -C "$repo" --no-print-directory build
        step 1 "the sandbox-init binary: built in $((SECONDS - t)) s"
    else
        step 1 "the sandbox-init binary: ${bin#"$repo/"}"
    fi
    validate || true
    t=$SECONDS
    step 2 "the Debian base: debian:bookworm-slim if here or pullable, else made with debootstrap (once)"
    base=$("$repo/scripts/build-images.sh" base 2>>"$log") ||
        logged "making the Debian base" false
    step 2 "the Debian base: $base ($((SECONDS - t)) s)"
    t=$SECONDS
    step 3 "the image $image: building, with the newest Claude Code from npm (once)"
    local opts=(--bin "$bin" --base "$base")
    [ "$rebuild" = 1 ] && opts+=(--no-cache)
    # The default name also gets a tag with the Claude Code version; another one is used as is.
    [ "$image" = "$default_image" ] || opts+=(--tag "$image")
    logged "building $image" "$repo/scripts/build-images.sh" "${opts[@]}" claude
    step 3 "the image $image: $(grep -o 'has Claude Code [0-9.]*' "$log" | tail -1 |
        cut -d' ' -f2-) ($((SECONDS - t)) s)"
}

if [ "$dry" = 0 ]; then
    # The engine must answer; as root, scripts/prereqs.sh starts one when none does.
    runtimes=$(docker info --format '{{json .Runtimes}}' 2>/dev/null) || {
        "$repo/scripts/prereqs.sh" engine || exit 1
        runtimes=$(docker info --format '{{json .Runtimes}}' 2>/dev/null) || true
    }
    # gVisor has no netfilter netlink, so sandbox-init would refuse to start (fail closed).
    case "$runtimes" in
        *runsc*) echo "run-claude: note: gVisor (runsc) is installed, but nftables cannot" \
            "work under it; using the default runtime (runc)" >&2 ;;
    esac
    missing=0
    cli_version=$(docker image inspect --format \
        '{{index .Config.Labels "dev.sandbox-init.claude-code.version"}}' "$image" 2>/dev/null) ||
        missing=1
    if [ "$rebuild" = 1 ] || [ "$missing" = 1 ]; then
        build_all
        cli_version=$(docker image inspect --format \
            '{{index .Config.Labels "dev.sandbox-init.claude-code.version"}}' "$image")
    else
        validate || true
    fi
else
    validate || echo "run-claude: note: --allow and --preset not checked (nothing built yet)" >&2
fi

if [ "$keychain" = 1 ]; then
    have security || die "--keychain needs macOS (the security tool)"
    CLAUDE_CREDENTIALS=$(security find-generic-password -s "Claude Code-credentials" -w) ||
        fail "no keychain item \"Claude Code-credentials\": log in with claude on the host first"
    export CLAUDE_CREDENTIALS
fi

# Host ids, so files created in the project keep their owner (macOS: 501:20). Root on the
# host maps to the image's user (1000): sandbox-init never runs the agent as root.
if [ -z "$uidgid" ] && [ "$(id -u)" != 0 ]; then
    uidgid="$(id -u):$(id -g)"
fi

if [ "$dry" = 0 ]; then
    taken=$(docker ps -a --format '{{.Names}}' 2>/dev/null || true)
    candidate=$name n=1
    while printf '%s\n' "$taken" | grep -qxF "$candidate"; do
        n=$((n + 1))
        candidate="$name-$n"
    done
    name=$candidate
fi

# Files of the project that tools on the host run later, unreviewed: git hooks and the
# repository's config (at the next git command; many shell prompts run `git status` at every
# keystroke), the dev container recipe (at the next rebuild), editor tasks (when the folder
# is opened on the host). They are mounted read-only over the workspace. Each path is
# checked here, on the host, first: docker mounts whatever a symbolic link leads to, and the
# agent may have planted one in an earlier session, so a path that is or passes a link is
# not mounted (and said so).
real_project=$(cd "$project" && pwd -P)
ro_mounts=() ro_shown=()

# resolve PATH: PATH with every symbolic link followed (fails when it does not exist).
resolve() {
    local p=$1 t n=0
    while [ -L "$p" ]; do
        n=$((n + 1))
        [ "$n" -le 40 ] || return 1
        t=$(readlink "$p") || return 1
        case "$t" in /*) p=$t ;; *) p=$(dirname "$p")/$t ;; esac
    done
    [ -e "$p" ] || return 1
    if [ -d "$p" ]; then
        (cd "$p" && pwd -P)
    else
        t=$(cd "$(dirname "$p")" && pwd -P) || return 1
        echo "$t/$(basename "$p")"
    fi
}

# inside_project PATH: the part of the resolved PATH under the project, or fail.
inside_project() {
    local real
    real=$(resolve "$1") || return 1
    case "$real" in "$real_project"/*) echo "${real#"$real_project"/}" ;; *) return 1 ;; esac
}

# protect REL: the project's REL read-only in the container, when it exists.
protect() {
    local rel=$1 real
    [ -e "$project/$rel" ] || [ -L "$project/$rel" ] || return 0
    real=$(resolve "$project/$rel") || real=""
    if [ "$real" != "$real_project/$rel" ]; then
        echo "run-claude: warning: $rel is or passes a symbolic link (to ${real:-nothing});" \
            "not mounted read-only, so the agent can replace it. Replace the link with what" \
            "it points to" >&2
        return 0
    fi
    case " ${ro_shown[*]-} " in *" $rel "*) return 0 ;; esac
    ro_mounts+=(-v "$real:/workspace/$rel:ro")
    ro_shown+=("$rel")
}

# protect_git_dir REL: hooks (created empty when missing, else the agent creates them),
# config, and a core.hooksPath inside the project.
protect_git_dir() {
    local dir=$1 hooks_path rel
    if [ ! -e "$project/$dir/hooks" ] && [ ! -L "$project/$dir/hooks" ] && [ "$dry" = 0 ]; then
        mkdir "$project/$dir/hooks" ||
            fail "cannot create $project/$dir/hooks (an empty one is mounted read-only)"
    fi
    protect "$dir/hooks"
    [ "$writable_git_config" = 1 ] || protect "$dir/config"
    # Reading with --file follows no include and runs nothing.
    if have git && hooks_path=$(git config --file "$project/$dir/config" --get core.hooksPath); then
        case "$hooks_path" in /*) ;; *) hooks_path="$project/$hooks_path" ;; esac
        if rel=$(inside_project "$hooks_path"); then protect "$rel"; fi
    fi
}

if [ -L "$project/.git" ]; then
    echo "run-claude: warning: .git is a symbolic link; its hooks and config are not mounted" \
        "read-only (replace the link with the directory)" >&2
elif [ -d "$project/.git" ]; then
    protect_git_dir .git
elif [ -f "$project/.git" ]; then
    # A worktree or submodule: the file names the git directory. Read-only, or the agent
    # points host-side git at a directory of its own.
    protect .git
    gitdir=$(sed -n 's/^gitdir: *//p' "$project/.git" | head -n 1)
    case "$gitdir" in /* | "") ;; *) gitdir="$project/$gitdir" ;; esac
    if git_rel=$(inside_project "$gitdir"); then
        protect_git_dir "$git_rel"
        if common=$(cat "$project/$git_rel/commondir" 2>/dev/null); then
            case "$common" in /*) ;; *) common="$project/$git_rel/$common" ;; esac
            if common_rel=$(inside_project "$common"); then protect_git_dir "$common_rel"; fi
        fi
    else
        echo "run-claude: note: the git directory of this checkout (${gitdir:-none named})" \
            "is outside the project: the agent cannot reach it, and git inside the" \
            "container does not find it" >&2
    fi
fi
protect .devcontainer
protect .vscode

args=(run --rm --init=false --name "$name")
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
    # PID 1's files: what was blocked, for the agent's hook (/run/sandbox-init-events, the
    # user reads it), and, root-only, the staged .gitconfig and the status for `check`
    --tmpfs /run:rw,nosuid,nodev,noexec,mode=0755,size=8m
    --tmpfs /run/sandbox-init:rw,nosuid,nodev,noexec,mode=0700,size=1m
    --pids-limit "$pids"
    --memory "$memory"
    # the blocked lines name the container: docker exec NAME sandbox-init allow ENTRY
    --hostname "$name"
    -v "$volume:/home/claude"
    -v "$project:/workspace"
    ${ro_mounts[@]+"${ro_mounts[@]}"}
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
for var in CLAUDE_CODE_OAUTH_TOKEN ANTHROPIC_API_KEY CLAUDE_CREDENTIALS \
    ${pass_env[@]+"${pass_env[@]}"}; do
    if [ -n "${!var+set}" ]; then args+=(-e "$var"); fi
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

if [ ${#ro_shown[@]} -gt 0 ]; then
    echo "run-claude: read-only for the agent: ${ro_shown[*]}" \
        "$([ "$writable_git_config" = 1 ] && echo "(git config writable: --writable-git-config)" ||
            echo "(--writable-git-config lets it change the git config)")" >&2
fi
echo "run-claude: $project -> /workspace; home volume $volume; container $name" \
    "${cli_version:+(Claude Code $cli_version)}; commit before a session" >&2
# What the mounts cannot stop (README, "What the agent can still reach"): the agent renaming
# .git and building another one, or a .git/commondir that sends host-side git to the config
# and hooks of a directory of its own. Looked at when the session ends.
git_dir_id() { ls -di "$project/.git" 2>/dev/null | awk '{print $1}' || true; }
git_before=$(git_dir_id) commondir_before=0
if [ -e "$project/.git/commondir" ] || [ -L "$project/.git/commondir" ]; then commondir_before=1; fi
run docker "${args[@]}" && status=0 || status=$?
if [ "$dry" = 0 ] && [ -n "$git_before" ]; then
    if [ "$(git_dir_id)" != "$git_before" ]; then
        echo "run-claude: WARNING: the session replaced $project/.git (yours was renamed or" \
            "removed): git there would run what the agent put in the new one. Find your own" \
            "(ls -la $project) and put it back before you run git in the project" >&2
    elif [ "$commondir_before" = 0 ] &&
        { [ -e "$project/.git/commondir" ] || [ -L "$project/.git/commondir" ]; }; then
        aside="$project/.git/commondir.from-session-$(date +%Y%m%d-%H%M%S)"
        mv "$project/.git/commondir" "$aside"
        echo "run-claude: WARNING: the session created .git/commondir, which makes git read" \
            "the config and hooks of another directory; moved aside to $aside" >&2
    fi
fi
exit "$status"
