#!/usr/bin/env bash
# The long variant of tests/server_crash.rs: SIGKILL the fedge-server process at random instants of its rounds,
# N times (default 100), each time restarting it on the same sled directory and checking that every committed
# model is readable and matches its digest, that no round names a missing version, and that the federation goes on.
# Usage: scripts/kill-loop.sh [KILLS] [SEED]      (uses $CARGO_TARGET_DIR, dev profile)
set -euo pipefail
cd "$(dirname "$0")/.."
kills="${1:-100}"
export FEDGE_KILLS="$kills"
if [ -n "${2:-}" ]; then export FEDGE_KILL_SEED="$2"; fi
cargo build -p fedge-server -p fedge-ctl --bins >&2
start=$(date +%s)
cargo test --test server_crash -- --nocapture 2>&1 | grep -E "kill |kills in|seed|test result|panicked|FAILED" 
echo "kill-loop: $kills kills, $(( $(date +%s) - start )) s"
