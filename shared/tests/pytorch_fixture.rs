//! Models exported by PyTorch's ONNX exporter train unchanged: tract runs their forward pass to PyTorch's logits,
//! and fedge's training graph gives PyTorch's loss and, for every parameter, the gradient torch autograd computed.
//! A CNN (opset 13, `tests/fixtures/make_pytorch_model.py`) and a one-block transformer over token ids (embeddings,
//! a positional table, layer norm, attention, a GELU MLP; `make_pytorch_transformer.py`), exported at opset 17
//! (one LayerNormalization operator) and at opset 14 (the decomposed form).

use fedge_shared::train::{Labels, Loss, Predictor, TrainStep, TrainableModel};

const ONNX: &[u8] = include_bytes!("fixtures/pytorch_cnn.onnx");
const EXPECTED: &str = include_str!("fixtures/pytorch_cnn.expected.json");

fn floats(v: &serde_json::Value) -> Vec<f32> {
    v.as_array().expect("array").iter().map(|x| x.as_f64().expect("number") as f32).collect()
}

fn assert_close(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let scale = want.iter().fold(0f32, |m, w| m.max(w.abs())).max(1e-6);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= 1e-4 * scale + 1e-6, "{what}[{i}]: fedge {g}, PyTorch {w}");
    }
}

/// Loads `onnx`, then checks logits, loss and every parameter's gradient against `expected` (PyTorch's).
fn matches_pytorch(onnx: &[u8], expected: &str, input_len: usize, output_len: usize) {
    matches_pytorch_with(onnx, expected, input_len, output_len, Loss::SoftmaxCrossEntropy)
}

fn matches_pytorch_with(onnx: &[u8], expected: &str, input_len: usize, output_len: usize, loss_kind: Loss) {
    let expected: serde_json::Value = serde_json::from_str(expected).unwrap();
    let model = TrainableModel::from_onnx_bytes(onnx).expect("PyTorch's export loads unchanged");
    assert_eq!(model.input_len(), input_len);
    assert_eq!(model.output_len(), output_len);
    let x = floats(&expected["input"]);
    let labels: Vec<u32> = expected["labels"].as_array().unwrap().iter().map(|l| l.as_u64().unwrap() as u32).collect();
    let n = x.len() / input_len;
    let weights = model.initial_weights();

    let logits = Predictor::new(&model, &weights, n).unwrap().predict(&x).unwrap();
    assert_close("logits", &logits, &floats(&expected["logits"]));

    let mut step = TrainStep::new(&model, loss_kind, n).unwrap();
    let mut grads = vec![0f32; model.num_params()];
    let loss = step.run(&weights, &x, Labels::Classes(&labels), 0, &mut grads).unwrap();
    let want_loss = expected["loss"].as_f64().unwrap() as f32;
    assert!((loss - want_loss).abs() < 1e-4, "loss: fedge {loss}, PyTorch {want_loss}");

    let torch_grads = expected["grads"].as_object().unwrap();
    assert_eq!(model.params().len(), torch_grads.len(), "every PyTorch parameter is trainable, and nothing else");
    for p in model.params() {
        let want = torch_grads.get(&p.name).unwrap_or_else(|| panic!("PyTorch has no parameter {}", p.name));
        assert_close(&p.name, &grads[p.offset..p.offset + p.len], &floats(want));
    }
}

#[test]
fn a_pytorch_exported_cnn_predicts_and_trains_exactly_as_pytorch_computes() {
    matches_pytorch(ONNX, EXPECTED, 784, 10);
}

const TRANSFORMER: &str = include_str!("fixtures/pytorch_transformer.expected.json");

#[test]
fn a_pytorch_exported_transformer_block_with_layer_normalization_trains_as_pytorch_computes() {
    matches_pytorch(include_bytes!("fixtures/pytorch_transformer_opset17.onnx"), TRANSFORMER, 6, 4);
}

#[test]
fn the_same_transformer_exported_with_the_older_layer_norm_chain_trains_as_pytorch_computes() {
    matches_pytorch(include_bytes!("fixtures/pytorch_transformer_opset14.onnx"), TRANSFORMER, 6, 4);
}

#[test]
fn a_frozen_backbone_with_a_trained_head_gets_pytorchs_head_gradient_and_nothing_else() {
    let expected: serde_json::Value = serde_json::from_str(TRANSFORMER).unwrap();
    let onnx = include_bytes!("fixtures/pytorch_transformer_opset17.onnx");
    let model = TrainableModel::from_onnx_bytes(onnx).unwrap().train_only(&["head.*".to_string()]).unwrap();
    let names: Vec<&str> = model.params().iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["head.weight", "head.bias"]);
    let x = floats(&expected["input"]);
    let labels: Vec<u32> = expected["labels"].as_array().unwrap().iter().map(|l| l.as_u64().unwrap() as u32).collect();
    let mut step = TrainStep::new(&model, Loss::SoftmaxCrossEntropy, labels.len()).unwrap();
    let weights = model.initial_weights();
    let mut grads = vec![0f32; model.num_params()];
    let loss = step.run(&weights, &x, Labels::Classes(&labels), 0, &mut grads).unwrap();
    assert!((loss - expected["loss"].as_f64().unwrap() as f32).abs() < 1e-4);
    for p in model.params() {
        assert_close(&p.name, &grads[p.offset..p.offset + p.len], &floats(&expected["grads"][&p.name]));
    }
}

#[test]
fn a_pytorch_exported_embedding_and_lstm_trains_as_pytorch_computes() {
    matches_pytorch(
        include_bytes!("fixtures/pytorch_lstm.onnx"),
        include_str!("fixtures/pytorch_lstm.expected.json"),
        5,
        3,
    );
}

#[test]
fn a_pytorch_exported_embedding_and_gru_with_a_learned_initial_state_trains_as_pytorch_computes() {
    matches_pytorch(
        include_bytes!("fixtures/pytorch_gru.onnx"),
        include_str!("fixtures/pytorch_gru.expected.json"),
        5,
        3,
    );
}

#[test]
fn a_next_token_lstm_trains_on_every_step_as_pytorch_computes() {
    // [N, T, V] logits against [N, T] labels: the cross-entropy of every position, averaged.
    matches_pytorch_with(
        include_bytes!("fixtures/pytorch_lstm_seq.onnx"),
        include_str!("fixtures/pytorch_lstm_seq.expected.json"),
        5,
        5 * 11,
        Loss::SequenceCrossEntropy,
    );
}
