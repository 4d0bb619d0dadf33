#!/usr/bin/env bash
# What secure aggregation adds to a round (issue 4's target): fedge-bench with SecAgg+ off and on, interleaved, so
# that both see the same machine load. Prints every run's JSON line, then one summary line.
# Usage: scripts/secagg-overhead.sh [AGENTS] [PARAMS] [PAIRS] [ROUNDS]   (defaults: 100 1000000 4 8)
# BENCH_ARGS adds fedge-bench flags to every run (e.g. BENCH_ARGS="--max-downloads 100").
set -euo pipefail
cd "$(dirname "$0")/.."
agents="${1:-100}" params="${2:-1000000}" pairs="${3:-4}" rounds="${4:-8}"
cargo build --release -p fedge-server -p fedge-ctl --bins >&2
bin="${CARGO_TARGET_DIR:-target}/release/fedge-bench"
out=$(mktemp)
trap 'rm -f "$out"' EXIT
for _ in $(seq "$pairs"); do
  for s in off on; do
    "$bin" --agents "$agents" --params "$params" --rounds "$rounds" --secagg "$s" ${BENCH_ARGS:-} | tail -n 1 | tee -a "$out"
  done
done
python3 - "$out" <<'PY'
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
def med(secagg, key):
    return statistics.median(r[key] for r in runs if r["secagg"] == secagg)
off, on = med(False, "round_median_s"), med(True, "round_median_s")
coff, con = med(False, "coordinator_round_median_ms"), med(True, "coordinator_round_median_ms")
print(json.dumps({
    "runs_per_mode": len(runs) // 2,
    "round_median_s_off": round(off, 3), "round_median_s_on": round(on, 3),
    "secagg_adds": f"{100 * (on / off - 1):+.1f}%",
    "coordinator_round_ms_off": coff, "coordinator_round_ms_on": con,
    "coordinator_secagg_adds": f"{100 * (con / coff - 1):+.1f}%",
    "bytes_up_over_4p_on": round(med(True, "bytes_up_per_agent") / (4 * runs[0]["params"]), 4),
}))
PY
