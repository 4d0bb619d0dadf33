//! Milliseconds per training step (forward + backward through the tract-run training graph, single-threaded)
//! for McMahan et al.'s MLP and CNN and a char-LSTM (the real-text bench's sizes: 256 byte ids, windows of 80,
//! embedding 32, LSTM 128, `builder::char_lstm`; and `builder::char_gru`, the same with a GRU) at batch 32 and 128, plus the plan build time and the inference
//! time. Times are CPU time of the running thread where Linux reports it (robust to a busy machine), else wall time.
//!
//! Run: `cargo run --release -p fedge-shared --example train_step_bench [--standard-ops] [mlp|cnn|lstm|gru] [batch...]`
//! (`FEDGE_BENCH_RUNS=N`: time N steps instead of each model's default; `FEDGE_BENCH_STEP_ONLY=1`: time the step
//! only, without the inference plan, e.g. under `perf record`.)
//! (`--standard-ops`: the convolutions, dense layers and their gradients as ONNX-standard ops instead of fedge's own,
//! for comparison)
//! (`... train_step_bench export DIR` writes the models and their training graphs to DIR, with ONNX-standard
//! operators for the convolutions and dense layers: see `TrainStep::into_standard_ops`.)

#[path = "../tests/engine_support/mod.rs"]
mod engine_support;

use std::time::Instant;

/// CPU time of this thread in ms (Linux `/proc/thread-self/schedstat`), so that the figures hold on a busy machine;
/// `None` elsewhere.
fn cpu_ms() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    s.split_whitespace().next()?.parse::<f64>().ok().map(|ns| ns / 1e6)
}

use fedge_shared::train::{Labels, Loss, Predictor, TrainStep, TrainableModel, WeightTensors, builder};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The char-LSTM's sizes: those of `scripts/bench-char-lstm.sh` (byte ids, `char_lstm_reference.py`'s defaults).
const VOCAB: usize = 256;
const SEQ: usize = 80;
const EMBED: usize = 32;
const HIDDEN: usize = 128;

fn char_lstm() -> Vec<u8> {
    builder::char_lstm(VOCAB, SEQ, EMBED, HIDDEN, 1)
}

/// The same with a GRU (PyTorch's form) in the LSTM's place.
fn char_gru() -> Vec<u8> {
    builder::char_gru(VOCAB, SEQ, EMBED, HIDDEN, 1)
}

/// What a model reads: pixels in [0, 1) and 10 classes, or (`ids`) token ids and next-token labels below `ids`.
#[derive(Clone, Copy)]
enum Data {
    Pixels,
    Ids(usize),
}

fn bench(name: &str, bytes: &[u8], data: Data, batch: usize, runs: usize, standard_ops: bool) {
    let model = TrainableModel::from_onnx_bytes(bytes).expect("model");
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let len = batch * model.input_len();
    let (x, labels): (Vec<f32>, Vec<u32>) = match data {
        Data::Pixels => {
            ((0..len).map(|_| rng.gen_range(0.0..1.0)).collect(), (0..batch).map(|_| rng.gen_range(0..10)).collect())
        }
        // Integer inputs are fed as float ids (the step casts them back).
        Data::Ids(v) => (
            (0..len).map(|_| rng.gen_range(0..v) as f32).collect(),
            (0..batch).map(|_| rng.gen_range(0..v as u32)).collect(),
        ),
    };
    let w = model.initial_weights();
    // As the trainer does: the weights stay in the tensors the step reads, the gradient in those it wrote.
    let ws = WeightTensors::from_flat(&model, &w).expect("weights");
    let t0 = Instant::now();
    let mut step = TrainStep::new(&model, Loss::SoftmaxCrossEntropy, batch).expect("step");
    if standard_ops {
        step = step.into_standard_ops().expect("standard ops");
    }
    let build = t0.elapsed();
    for _ in 0..2 {
        step.gradients_at(&ws, &x, Labels::Classes(&labels), 0).expect("run");
    }
    let t1 = Instant::now();
    let c1 = cpu_ms();
    for i in 0..runs {
        let (_, g) = step.gradients_at(&ws, &x, Labels::Classes(&labels), i as u64).expect("run");
        std::hint::black_box(g.part(0).first());
    }
    let wall_step = t1.elapsed().as_secs_f64() * 1e3 / runs as f64;
    let per_step = match (c1, cpu_ms()) {
        (Some(a), Some(b)) => (b - a) / runs as f64,
        _ => wall_step,
    };
    if std::env::var_os("FEDGE_BENCH_STEP_ONLY").is_some() {
        println!("{name:>4} batch {batch:>4}: {per_step:8.2} ms/step CPU ({wall_step:8.2} wall)");
        return;
    }
    let p = Predictor::new(&model, &w, batch).expect("predictor");
    p.predict(&x).expect("predict");
    let t2 = Instant::now();
    let c2 = cpu_ms();
    for _ in 0..runs {
        p.predict(&x).expect("predict");
    }
    let per_predict = match (c2, cpu_ms()) {
        (Some(a), Some(b)) => (b - a) / runs as f64,
        _ => t2.elapsed().as_secs_f64() * 1e3 / runs as f64,
    };
    println!(
        "{name:>4} batch {batch:>4}: {per_step:8.2} ms/step CPU ({wall_step:8.2} wall, {:6.3} ms/example), forward only {per_predict:7.2} ms, plan build {:6.0} ms, {} params",
        per_step / batch as f64,
        build.as_secs_f64() * 1e3,
        model.num_params()
    );
}

/// Steps to time: `FEDGE_BENCH_RUNS` if set (e.g. to profile many steps), else the model's default.
fn runs(default: usize) -> usize {
    std::env::var("FEDGE_BENCH_RUNS").ok().and_then(|r| r.parse().ok()).unwrap_or(default)
}

fn main() {
    // The agent's allocator settings: `fedge-agent` sets the first in `main` and keeps the heap while it trains
    // (`shared::alloc`), so the step is timed as the agent runs it.
    fedge_shared::alloc::return_large_blocks_to_the_os();
    let _heap = fedge_shared::alloc::keep_heap_for_training();
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let standard_ops = args.first().is_some_and(|a| a == "--standard-ops");
    if standard_ops {
        args.remove(0);
    }
    let which = args.first().cloned().unwrap_or_else(|| "all".into());
    if which == "export" {
        // Writes the models and their training graphs to a directory, for timing other runtimes on them.
        let dir = args.get(1).cloned().unwrap_or_else(|| ".".into());
        for (name, bytes) in [
            ("mlp", engine_support::mlp(1)),
            ("cnn", engine_support::cnn(1)),
            ("lstm", char_lstm()),
            ("gru", char_gru()),
        ] {
            let model = TrainableModel::from_onnx_bytes(&bytes).expect("model");
            std::fs::write(format!("{dir}/{name}.onnx"), &bytes).expect("write");
            for b in [32, 128] {
                // Other runtimes do not know fedge's convolution and dense operators: the standard form instead.
                let step = TrainStep::new(&model, Loss::SoftmaxCrossEntropy, b)
                    .and_then(TrainStep::into_standard_ops)
                    .expect("step");
                std::fs::write(format!("{dir}/{name}_train_{b}.onnx"), step.training_graph(b).expect("graph"))
                    .expect("write");
            }
        }
        return;
    }
    let batches: Vec<usize> = args.iter().skip(1).filter_map(|s| s.parse().ok()).collect();
    let batches = if batches.is_empty() { vec![32, 128] } else { batches };
    for b in &batches {
        if which == "all" || which == "mlp" {
            // 500 steps: the thread's CPU time advances by scheduler ticks (4 ms here), ±0.08 ms a step over 50.
            bench("mlp", &engine_support::mlp(1), Data::Pixels, *b, runs(500), standard_ops);
        }
        if which == "all" || which == "cnn" {
            bench("cnn", &engine_support::cnn(1), Data::Pixels, *b, runs(5), standard_ops);
        }
        if which == "all" || which == "lstm" {
            bench("lstm", &char_lstm(), Data::Ids(VOCAB), *b, runs(10), standard_ops);
        }
        if which == "all" || which == "gru" {
            bench("gru", &char_gru(), Data::Ids(VOCAB), *b, runs(10), standard_ops);
        }
    }
}
