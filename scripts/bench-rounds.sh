#!/usr/bin/env bash
# Round-level benchmark grid (issue 8): one JSON line per configuration on stdout, each from a real fedge-server
# process and N agent processes (or N agents in one process with --in-process) on loopback QUIC with mutual TLS.
# Usage: scripts/bench-rounds.sh [quick|full]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p fedge-server -p fedge-ctl --bins >&2
bin="${CARGO_TARGET_DIR:-target}/release/fedge-bench"
mode="${1:-quick}"
run() { "$bin" "$@" || echo "{\"failed\": \"$*\"}"; }
for s in off on; do
  for p in 100000 1000000; do
    run --agents 10 --params "$p" --rounds 5 --secagg "$s"
  done
done
if [ "$mode" = full ]; then
  for s in off on; do
    run --agents 50 --params 100000 --rounds 5 --secagg "$s"
    run --agents 50 --params 1000000 --rounds 3 --secagg "$s"
    run --agents 100 --params 100000 --rounds 3 --secagg "$s"
    run --agents 100 --params 1000000 --rounds 3 --secagg "$s"
    run --agents 10 --params 10000000 --rounds 3 --secagg "$s"
  done
  run --agents 1000 --params 100000 --rounds 3 --in-process --secagg off
  run --agents 1000 --params 100000 --rounds 3 --in-process --secagg on
fi
