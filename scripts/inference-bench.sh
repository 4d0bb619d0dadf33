#!/usr/bin/env bash
# Edge inference benchmark: tract (fedge's engine) against onnxruntime on the same ONNX files in the same run,
# then the agent's HTTP endpoint (`fedge-agent serve`) under load with its peak RSS.
#   scripts/inference-bench.sh [ITERS]        (release build; installs onnxruntime with pip if missing)
set -euo pipefail
cd "$(dirname "$0")/.."
ITERS=${1:-2000}
OUT=${BENCH_DIR:-$(mktemp -d)}
PORT=${BENCH_PORT:-18490}

python3 -c 'import onnxruntime, numpy' 2>/dev/null || pip install --quiet onnxruntime numpy
cargo build --release -p fedge-agent --bin fedge-agent --example inference_bench
BIN=${CARGO_TARGET_DIR:-target}/release

echo "== engines (one thread each), $ITERS iterations at batch 1"
"$BIN/examples/inference_bench" engine "$OUT" "$ITERS"
python3 - "$OUT" "$ITERS" <<'PY'
import json, sys, time
import numpy as np, onnxruntime as ort
out, iters = sys.argv[1], int(sys.argv[2])
for name, shape in [("mlp", (784,)), ("cnn", (1, 28, 28))]:
    path = f"{out}/{name}.onnx"
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0].name
    x32 = np.fromfile(f"{out}/{name}.in.f32", dtype="<f4").reshape((32,) + shape)
    want = np.fromfile(f"{out}/{name}.out.f32", dtype="<f4").reshape(32, -1)
    got = sess.run(None, {inp: x32})[0]
    diff = float(np.abs(got - want).max())
    for batch in (1, 32):
        x = np.ascontiguousarray(x32[:batch])
        for _ in range(iters // 10 + 5):
            sess.run(None, {inp: x})
        n = iters if batch == 1 else max(iters // 8, 20)
        times = []
        start = time.perf_counter()
        for _ in range(n):
            t = time.perf_counter()
            sess.run(None, {inp: x})
            times.append((time.perf_counter() - t) * 1e6)
        total = time.perf_counter() - start
        times.sort()
        pct = lambda p: times[round((len(times) - 1) * p)]
        print(json.dumps({"engine": f"onnxruntime {ort.__version__}", "model": name, "batch": batch, "iters": n,
                          "p50_us": pct(0.5), "p99_us": pct(0.99), "examples_per_s": n * batch / total,
                          "max_abs_diff_vs_tract": diff}))
PY

echo "== fedge-agent serve (MLP) over HTTP, raw f32 bodies, keep-alive clients"
"$BIN/fedge-agent" serve --model "$OUT/mlp.onnx" --listen "127.0.0.1:$PORT" 2>"$OUT/serve.log" &
PID=$!
trap 'kill $PID 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null 2>&1 && break
  python3 -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:$PORT/readyz')" 2>/dev/null && break
  sleep 0.1
done
"$BIN/examples/inference_bench" http "127.0.0.1:$PORT" "$PID" 5 1 1 784
"$BIN/examples/inference_bench" http "127.0.0.1:$PORT" "$PID" 5 8 1 784
"$BIN/examples/inference_bench" http "127.0.0.1:$PORT" "$PID" 5 4 32 784
kill $PID
wait $PID 2>/dev/null || true
trap - EXIT
