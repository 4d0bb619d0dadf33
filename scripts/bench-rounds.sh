#!/usr/bin/env bash
# Round-level benchmark grid (issue 8): one JSON line per configuration on stdout.
# Usage: scripts/bench-rounds.sh [quick|full]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p fedge-server --bins >&2
bin="${CARGO_TARGET_DIR:-target}/release/fedge-bench"
mode="${1:-quick}"
run() { "$bin" "$@" || echo "{\"failed\": \"$*\"}"; }
for p in 100000 1000000; do
  run --agents 10 --params "$p" --rounds 5
done
run --agents 50 --params 100000 --rounds 5
run --agents 1000 --params 100000 --rounds 3 --in-process
if [ "$mode" = full ]; then
  run --agents 10 --params 10000000 --rounds 3
  run --agents 50 --params 1000000 --rounds 3
  run --agents 100 --params 100000 --rounds 3
  run --agents 100 --params 1000000 --rounds 3
fi
