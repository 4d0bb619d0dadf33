#!/usr/bin/env bash
# Soak: a real fedge-server process and AGENTS agent processes (default 100; fedge-bench's agent mode, noise
# updates, so only the framework is measured) for ROUNDS rounds (default 50) on loopback, with the exact
# aggregate checked by fedge-bench. Samples the resident memory of the server and of one agent every second
# into soak-memory.csv and reports whether the server's memory stays flat (within 10%) after warm-up.
# Usage: scripts/soak.sh [AGENTS] [ROUNDS] [PARAMS] [OUT_DIR]      (uses $CARGO_TARGET_DIR, dev profile)
set -euo pipefail
cd "$(dirname "$0")/.."
agents="${1:-100}"; rounds="${2:-50}"; params="${3:-100000}"; out="${4:-soak-out}"
cargo build -p fedge-server -p fedge-ctl --bins >&2
bin="${CARGO_TARGET_DIR:-target}/debug/fedge-bench"
mkdir -p "$out"
csv="$out/soak-memory.csv"
echo "t_s,server_rss_kib,agent_rss_kib,agent_processes" > "$csv"
"$bin" --agents "$agents" --rounds "$rounds" --params "$params" > "$out/bench.json" 2> "$out/bench.log" &
bench=$!
rss() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
start=$(date +%s)
server=""; agent=""
while kill -0 "$bench" 2>/dev/null; do
  kids=$(pgrep -P "$bench" || true)
  if [ -z "$server" ]; then
    for k in $kids; do [ "$(cat /proc/$k/comm 2>/dev/null)" = fedge-server ] && server=$k; done
  fi
  if [ -z "$agent" ] || ! kill -0 "$agent" 2>/dev/null; then
    agent=""
    for k in $kids; do [ "$(cat /proc/$k/comm 2>/dev/null)" = fedge-bench ] && { agent=$k; break; }; done
  fi
  n=0; for k in $kids; do [ "$(cat /proc/$k/comm 2>/dev/null)" = fedge-bench ] && n=$((n+1)); done
  if [ -n "$server" ]; then
    echo "$(( $(date +%s) - start )),$(rss "$server"),${agent:+$(rss "$agent")},$n" >> "$csv"
  fi
  sleep 1
done
wait "$bench"; status=$?
echo "bench: $(cat "$out/bench.json")"
# Flatness: server RSS over the last 75% of the run (the first 25% is warm-up: connections, first model pushes).
awk -F, 'NR>1 && $2>0 {t[n]=$1; s[n]=$2; a[n]=$3; n++}
  END {
    if (n < 4) { print "too few samples"; exit 1 }
    w = int(n/4); lo=1e18; hi=0; alo=1e18; ahi=0
    for (i=w; i<n; i++) { if (s[i]<lo) lo=s[i]; if (s[i]>hi) hi=s[i]; if (a[i]!="" && a[i]>0) { if (a[i]<alo) alo=a[i]; if (a[i]>ahi) ahi=a[i] } }
    printf "samples %d over %d s; after warm-up (from %d s): server RSS %.1f..%.1f MiB (spread %.1f%%), agent RSS %.1f..%.1f MiB\n",
      n, t[n-1], t[w], lo/1024, hi/1024, (hi-lo)*100/lo, alo/1024, ahi/1024
    if ((hi-lo) > 0.10*lo) { print "server memory NOT flat within 10%"; exit 2 } else print "server memory flat within 10%"
  }' "$csv"
exit "$status"
