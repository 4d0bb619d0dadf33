//! Fuzz target: the training-graph builder. Whatever `from_onnx_bytes` accepts (raw bytes, or a small valid MLP
//! with fuzzer-chosen bytes overwritten), `TrainStep::new` must build a step or refuse with an error, never
//! panic; a built step must run one batch of zeros, giving a result or an error.
#![no_main]

use fedge_shared::train::builder;
use fedge_shared::train::{Labels, Loss, TrainStep, TrainableModel};
use libfuzzer_sys::fuzz_target;

fn patched_model(data: &[u8]) -> Option<Vec<u8>> {
    let (head, patches) = data.split_at_checked(4)?;
    let layers = [1 + head[0] as usize % 6, 1 + head[1] as usize % 5, 1 + head[2] as usize % 4];
    let mut onnx = builder::mlp(&layers, head[3] as u64);
    for p in patches.chunks_exact(3) {
        let at = ((p[0] as usize) << 8 | p[1] as usize) % onnx.len().max(1);
        if let Some(b) = onnx.get_mut(at) {
            *b = p[2];
        }
    }
    Some(onnx)
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let bytes = if mode & 1 == 0 { rest.to_vec() } else { patched_model(rest).unwrap_or_default() };
    let Ok(model) = TrainableModel::from_onnx_bytes(&bytes) else { return };
    // Keep the fuzzer fast: skip models too large to be interesting.
    if model.num_params() > 100_000 || model.input_len() > 4096 {
        return;
    }
    let batch = 1 + (mode as usize >> 1) % 3;
    let loss = if mode & 0x80 == 0 { Loss::SoftmaxCrossEntropy } else { Loss::MeanSquaredError };
    if let Ok(mut step) = TrainStep::new(&model, loss, batch) {
        let weights = model.initial_weights();
        let x = vec![0.5f32; batch * model.input_len()];
        let classes = vec![0u32; batch];
        let targets = vec![0f32; batch * model.output_len()];
        let labels = match loss {
            Loss::SoftmaxCrossEntropy => Labels::Classes(&classes),
            Loss::MeanSquaredError => Labels::Targets(&targets),
        };
        let mut grads = vec![0f32; weights.len()];
        let _ = step.run(&weights, &x, labels, 1, &mut grads);
    }
});
