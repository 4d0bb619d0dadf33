//! Fuzz target: the ONNX loader. `TrainableModel::from_onnx_bytes` on raw bytes, and on a valid small MLP with
//! bytes overwritten at fuzzer-chosen offsets (so that mutations reach past the protobuf parser into graph
//! resolution and shape inference), must give a model or an error, never a panic.
#![no_main]

use fedge_shared::train::TrainableModel;
use fedge_shared::train::builder;
use libfuzzer_sys::fuzz_target;

/// A small valid model with patches from `data` applied: `[a, b, c, seed, (offset_hi, offset_lo, byte)*]`.
pub fn patched_model(data: &[u8]) -> Option<Vec<u8>> {
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
    if let Some((&mode, rest)) = data.split_first() {
        let bytes = if mode & 1 == 0 { rest.to_vec() } else { patched_model(rest).unwrap_or_default() };
        if let Ok(m) = TrainableModel::from_onnx_bytes(&bytes) {
            let _ = m.num_params();
            let _ = m.initial_weights();
        }
    }
});
