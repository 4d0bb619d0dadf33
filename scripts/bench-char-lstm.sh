#!/usr/bin/env bash
# Next-character prediction on real text, fedge against PyTorch on one thread: the same char-LSTM (embedding 32,
# LSTM 128, linear head; exported by PyTorch before training so both start from the same weights), the same data
# (Genesis 1-20 of the King James Version, public domain, from Debian's bible-kjv-text; Exodus 1-5 as the test part;
# 80-byte windows every 3 bytes, the next byte as label), Adam at 0.002, batches of 32, one epoch. Prints each
# side's test accuracy and mean step time.
#
#   scripts/bench-char-lstm.sh [PROFILE]     # PROFILE: release (default) or dev
#
# Needs python3-torch and bible-kjv (installed with apt-get when missing and running as root).
set -euo pipefail
export RUST_LOG=${RUST_LOG:-warn}
cd "$(dirname "$0")/.."
profile=${1:-release}
case "$profile" in
  release) flags=(--release); dir=release ;;
  dev) flags=(); dir=debug ;;
  *) echo "profile must be release or dev" >&2; exit 2 ;;
esac
need() {
  if ! command -v "$1" >/dev/null && ! /usr/bin/python3 -c "import $1" 2>/dev/null; then
    [ "$(id -u)" = 0 ] || { echo "install $2 (apt-get install $2)" >&2; exit 2; }
    apt-get install -y -q "$2" >/dev/null
  fi
}
need bible bible-kjv
need torch python3-torch
cargo build --workspace --locked "${flags[@]}" --bin fedge-agent
target="${CARGO_TARGET_DIR:-target}/$dir"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir "$work/text"
bible -f "Gen1:1-Gen20:18" </dev/null | sed 's/^[^ ]* //' > "$work/text/train.txt"
bible -f "Ex1:1-Ex5:23" </dev/null | sed 's/^[^ ]* //' > "$work/text/test.txt"
echo "text: $(wc -c < "$work/text/train.txt") bytes to train on, $(wc -c < "$work/text/test.txt") to test"
/usr/bin/python3 scripts/char_lstm_reference.py "$work/text" "$work/char_lstm.onnx" 2>/dev/null | tee "$work/torch.json"
"$target/fedge-agent" train --model "$work/char_lstm.onnx" --data "$work/text" --window 80 --stride 3 --epochs 1 \
  --batch-size 32 --optimizer adam --lr 0.002 --json | tee "$work/fedge.jsonl"
python3 - "$work" <<'PY'
import json, sys
w = sys.argv[1]
t = json.load(open(f"{w}/torch.json"))
lines = [json.loads(l) for l in open(f"{w}/fedge.jsonl") if l.strip()]
e, f = lines[0], lines[-1]
fedge_ms = 1000 * e["train_seconds"] / e["steps"]
print(f"PyTorch {t['torch']}: test accuracy {t['test_accuracy']:.4f}, {t['step_ms']:.2f} ms a step ({t['steps']} steps)")
print(f"fedge: test accuracy {f['test_accuracy']:.4f}, {fedge_ms:.2f} ms a step ({e['steps']} steps)")
print(f"accuracy difference {100 * (f['test_accuracy'] - t['test_accuracy']):+.2f} points; step time {fedge_ms / t['step_ms']:.2f}x PyTorch's")
PY
