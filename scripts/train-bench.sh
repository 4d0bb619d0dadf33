#!/usr/bin/env bash
# Train-step benchmark (issues 3 and 21): tract's training-step graphs for the example 2NN, the CNN and a char-LSTM
# (ids below 256, windows of 80, embedding 32, LSTM 128) at batch 32 and 128, single-threaded, next to onnxruntime
# (1 intra-op thread) running the same graphs. Installs onnxruntime with pip.
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
