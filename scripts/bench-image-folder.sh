#!/usr/bin/env bash
# Peak RSS of `fedge-agent train` on an image folder of 1,000 and of 100,000 small images (28x28 PNG, ten
# classes), the same model (784-64-10 MLP) and one epoch: an image folder is decoded per batch, so only the file
# names and labels grow with the folder. Prints both figures and their difference.
#
#   scripts/bench-image-folder.sh [PROFILE]     # PROFILE: release (default) or dev
#
# Needs GNU time (/usr/bin/time). Writes the folders under a temporary directory and removes them.
set -euo pipefail
export RUST_LOG=${RUST_LOG:-warn}
cd "$(dirname "$0")/.."
profile=${1:-release}
case "$profile" in
  release) flags=(--release); dir=release ;;
  dev) flags=(); dir=debug ;;
  *) echo "profile must be release or dev" >&2; exit 2 ;;
esac
[ -x /usr/bin/time ] || { echo "GNU time (/usr/bin/time) is needed" >&2; exit 2; }
cargo build --workspace --locked "${flags[@]}" --bin fedge-agent --example make_image_folder
target="${CARGO_TARGET_DIR:-target}/$dir"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$target/fedge-agent" make-model mlp --input 1,28,28 --hidden 64 --outputs 10 --out "$work/m.onnx" >/dev/null
for n in 1000 100000; do
  "$target/examples/make_image_folder" "$work/img$n" "$n" >/dev/null
  /usr/bin/time -f "%M %e" -o "$work/time$n" "$target/fedge-agent" train --model "$work/m.onnx" \
    --data "$work/img$n" --epochs 1 --batch-size 32 --lr 0.05 --json > "$work/out$n"
  read -r kb secs < "$work/time$n"
  acc=$(tail -1 "$work/out$n" | sed -n 's/.*"test_accuracy":\([0-9.]*\).*/\1/p')
  echo "images $n: peak RSS $((kb / 1024)) MB, ${secs} s wall, test accuracy ${acc:-?}"
  echo "$kb" > "$work/rss$n"
  rm -rf "$work/img$n"
done
echo "difference: $(( ($(cat "$work/rss100000") - $(cat "$work/rss1000")) / 1024 )) MB"
