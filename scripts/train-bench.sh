#!/usr/bin/env bash
# Train-step benchmark (issue 3): tract's training-step graphs for the example 2NN and CNN at batch 32 and 128,
# single-threaded, next to onnxruntime (1 intra-op thread) running the same graphs. Installs onnxruntime with pip.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet --disable-pip-version-check onnxruntime onnx numpy >&2
out=$(mktemp -d)
cargo run --release -q -p fedge-shared --example train_step_bench -- export "$out"
echo "== tract (fedge) =="
cargo run --release -q -p fedge-shared --example train_step_bench
echo "== onnxruntime, same graphs =="
python3 scripts/train-bench-ort.py "$out"
rm -rf "$out"
