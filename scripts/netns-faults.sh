#!/usr/bin/env bash
# Network faults between real processes in network namespaces (needs root and iproute2 with tc netem):
# 10% loss + 100 ms each way, a partition of 2 of 5 agents that heals, an agent whose address changes mid-round.
# The test creates its own namespaces (10.77.0.0/24 exists only inside them) and removes them at the end.
# Usage: scripts/netns-faults.sh                   (uses $CARGO_TARGET_DIR, dev profile)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then echo "SKIPPED: netns-faults needs root"; exit 0; fi
if ! command -v tc >/dev/null || ! command -v ip >/dev/null; then
  echo "installing iproute2 (ip, tc)"; apt-get install -y iproute2 >/dev/null
fi
if ! ip netns add fedge-probe-$$ 2>/dev/null; then echo "SKIPPED: network namespaces are not allowed here"; exit 0; fi
ip netns del fedge-probe-$$
modprobe sch_netem 2>/dev/null || true
cargo build -p fedge-server -p fedge-ctl --bins >&2
FEDGE_NETNS=1 cargo test --test faults_netns -- --nocapture 2>&1 | grep -E "phase|server:|SKIPPED|test result|panicked|timed out"
