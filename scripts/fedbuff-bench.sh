#!/usr/bin/env bash
# Time to a target test accuracy on the demo task (MNIST, the 2NN, 10 agents, non-IID split) when 3 of the 10 agents
# are devices ten times slower than the rest: synchronous FedAvg (every round waits for its slowest member) against
# buffered asynchronous aggregation (FedBuff: a round completes with its first K = 5 updates; slower agents' updates
# count later, discounted by their staleness). The same agents, data and seed in both; plain rounds in both, since
# buffered rounds are plain. One line of JSON per run, with the seconds from the start to the first round whose model
# reaches the target on the 10,000 test images.
#
#   scripts/fedbuff-bench.sh                     # seeds 1 2 3, target 0.95
#   SEEDS="1" TARGET=0.96 scripts/fedbuff-bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -p fedge-ctl --bin fedgectl >&2
target=${TARGET:-0.95}
seeds=${SEEDS:-1 2 3}
for seed in $seeds; do
  common=(demo --agents 10 --slow-agents 3 --slowdown 10 --secagg off --rounds 100 --seed "$seed"
    --target-accuracy "$target" --json)
  sync=$(target/release/fedgectl "${common[@]}" 2>/dev/null | grep '"target_accuracy"')
  echo "{\"seed\": $seed, \"mode\": \"fedavg (synchronous)\", \"result\": $sync}"
  buffered=$(target/release/fedgectl "${common[@]}" --buffered 5 2>/dev/null | grep '"target_accuracy"')
  echo "{\"seed\": $seed, \"mode\": \"fedbuff K=5\", \"result\": $buffered}"
done
