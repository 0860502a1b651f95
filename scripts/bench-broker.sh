#!/usr/bin/env bash
# Credential broker cost: time to first byte, time to the end and bulk throughput of a
# streamed response through the broker beside the same upstream direct, in one run.
# Runs as root (the broker is started exactly as PID 1 starts it: its own uid, no
# capabilities, no_new_privs). The broker is pinned to CPU 0, the client and the upstream
# to CPU 1. Everything listens on 127.0.0.1 only and stops by itself.
#
#   scripts/bench-broker.sh [path/to/broker-bench]
#   (build it first: cargo build --release --locked --target x86_64-unknown-linux-musl --bin broker-bench)
#
# Goal: <= 1 ms added at the median. BROKER_ROUNDS (default 2000), BROKER_EVENTS (50),
# BROKER_MIB (256) change the load.
set -euo pipefail
BIN=${1:-target/x86_64-unknown-linux-musl/release/broker-bench}
[ "$(id -u)" = 0 ] || { echo "bench-broker: needs root (it changes uids)" >&2; exit 1; }
[ -x "$BIN" ] || { echo "bench-broker: no binary at $BIN (cargo build --release --bin broker-bench)" >&2; exit 1; }
command -v taskset >/dev/null || { echo "bench-broker: taskset (util-linux) missing" >&2; exit 1; }
cpus=$(nproc)
client_cpu=$(( cpus > 1 ? 1 : 0 ))
exec taskset -c "$client_cpu" "$BIN" --broker-cpu 0 \
  --rounds "${BROKER_ROUNDS:-2000}" --events "${BROKER_EVENTS:-50}" --mib "${BROKER_MIB:-256}"
