//! Specifications of the training engine's TrainStep and Predictor on whole models (MLP, CNN).

mod engine_support;

use engine_support::*;
use fedge_shared::train::{Labels, Loss, Precision, Predictor, TrainError, TrainStep, TrainableModel};
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

#[test]
fn mlp_gradients_match_finite_differences() {
    let err = gradient_error(&mlp(1), Loss::SoftmaxCrossEntropy, 4, 2, 4, 1e-3);
    assert!(err < 1e-3, "relative error {err}");
}

#[test]
fn mlp_parameters_are_the_float_initializers_in_graph_order() {
    let model = TrainableModel::from_onnx_bytes(&mlp(1)).unwrap();
    let names: Vec<&str> = model.params().iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names.len(), 6);
    assert_eq!(model.num_params(), 784 * 200 + 200 + 200 * 200 + 200 + 200 * 10 + 10);
    assert_eq!(model.input_shape(), &[1, 28, 28]);
    assert_eq!(model.input_len(), 784);
    assert_eq!(model.output_len(), 10);
    let mut offset = 0;
    for p in model.params() {
        assert_eq!(p.offset, offset);
        assert_eq!(p.len, p.shape.iter().product::<usize>());
        offset += p.len;
    }
    assert_eq!(model.initial_weights().len(), model.num_params());
}

#[test]
fn plain_sgd_lowers_the_loss_on_a_separable_problem() {
    // Two Gaussian blobs in 4-D, a 4-8-2 MLP.
    let mut b = ModelBuilder::new(&[4], 3);
    let h = b.dense("x", 4, 8);
    let h = b.node("Relu", &[&h], vec![]);
    let y = b.dense(&h, 8, 2);
    let model = TrainableModel::from_onnx_bytes(&b.build(&y)).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let n = 32;
    let mut x = vec![];
    let mut labels = vec![];
    for i in 0..n {
        let class = (i % 2) as u32;
        let centre = if class == 0 { -1.0 } else { 1.0 };
        x.extend((0..4).map(|_| centre + rng.gen_range(-0.5..0.5f32)));
        labels.push(class);
    }
    let mut step = TrainStep::new(&model, Loss::SoftmaxCrossEntropy, n).unwrap();
    let mut w = model.initial_weights();
    let mut g = vec![0.0; w.len()];
    let first = step.run(&w, &x, Labels::Classes(&labels), 0, &mut g).unwrap();
    let mut last = first;
    for _ in 0..50 {
        last = step.run(&w, &x, Labels::Classes(&labels), 0, &mut g).unwrap();
        for (wi, gi) in w.iter_mut().zip(&g) {
            *wi -= 0.5 * gi;
        }
    }
    assert!(last < 0.1 * first, "loss went from {first} to {last}");
    let p = Predictor::new(&model, &w, 8).unwrap();
    let logits = p.predict(&x).unwrap();
    let correct = (0..n).filter(|i| (logits[2 * i + 1] > logits[2 * i]) == (labels[*i] == 1)).count();
    assert_eq!(correct, n);
}

#[test]
fn a_partial_last_batch_gives_the_gradient_of_a_plan_built_for_its_size() {
    let bytes = mlp(5);
    let model = TrainableModel::from_onnx_bytes(&bytes).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    let x = random_vec(&mut rng, 3 * 784, 1.0);
    let labels = [1u32, 7, 3];
    let w = model.initial_weights();
    let mut big = TrainStep::new(&model, Loss::SoftmaxCrossEntropy, 8).unwrap();
    let mut exact = TrainStep::new(&model, Loss::SoftmaxCrossEntropy, 3).unwrap();
    let mut g1 = vec![0.0; w.len()];
    let mut g2 = vec![0.0; w.len()];
    let l1 = big.run(&w, &x, Labels::Classes(&labels), 0, &mut g1).unwrap();
    let l2 = exact.run(&w, &x, Labels::Classes(&labels), 0, &mut g2).unwrap();
    assert!((l1 - l2).abs() < 1e-6);
    let diff = g1.iter().zip(&g2).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
    assert!(diff < 1e-6, "max difference {diff}");
    // A full batch still works after the partial one.
    let x8 = random_vec(&mut rng, 8 * 784, 1.0);
    big.run(&w, &x8, Labels::Classes(&[0; 8]), 0, &mut g1).unwrap();
}

#[test]
fn predictor_matches_the_training_graph_forward_and_handles_any_count() {
    let model = TrainableModel::from_onnx_bytes(&mlp(8)).unwrap();
    let w = model.initial_weights();
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let x = random_vec(&mut rng, 5 * 784, 1.0);
    let p = Predictor::new(&model, &w, 2).unwrap();
    let out = p.predict(&x).unwrap();
    assert_eq!(out.len(), 50);
    let one = Predictor::new(&model, &w, 1).unwrap();
    for i in 0..5 {
        let o = one.predict(&x[i * 784..(i + 1) * 784]).unwrap();
        for k in 0..10 {
            assert!((o[k] - out[i * 10 + k]).abs() < 1e-4);
        }
    }
    // Cross-entropy from the predictor's logits equals the step's loss.
    let labels = [0u32, 1, 2, 3, 4];
    let mut step = TrainStep::new(&model, Loss::SoftmaxCrossEntropy, 5).unwrap();
    let mut g = vec![0.0; w.len()];
    let loss = step.run(&w, &x, Labels::Classes(&labels), 0, &mut g).unwrap();
    let mut expected = 0.0f64;
    for i in 0..5 {
        let row = &out[i * 10..(i + 1) * 10];
        let m = row.iter().cloned().fold(f32::MIN, f32::max) as f64;
        let lse = m + row.iter().map(|v| (*v as f64 - m).exp()).sum::<f64>().ln();
        expected += lse - row[labels[i] as usize] as f64;
    }
    expected /= 5.0;
    assert!((loss as f64 - expected).abs() < 1e-4, "{loss} vs {expected}");
}

#[test]
fn an_unsupported_operator_is_refused_with_its_name_and_node() {
    let mut b = ModelBuilder::new(&[4], 1);
    let h = b.dense("x", 4, 3);
    let y = b.node("Cos", &[&h], vec![]);
    match TrainableModel::from_onnx_bytes(&b.build(&y)) {
        Err(TrainError::UnsupportedOp { op, node }) => {
            assert_eq!(op, "Cos");
            assert_eq!(node, "Cos_node_2");
        }
        other => panic!("expected UnsupportedOp, got {other:?}"),
    }
}

#[test]
fn wrong_buffer_sizes_are_errors_not_panics() {
    let model = TrainableModel::from_onnx_bytes(&mlp(1)).unwrap();
    let w = model.initial_weights();
    let mut step = TrainStep::new(&model, Loss::SoftmaxCrossEntropy, 2).unwrap();
    let mut g = vec![0.0; w.len()];
    let x = vec![0.0; 784 * 2];
    assert!(step.run(&w[1..], &x, Labels::Classes(&[0, 1]), 0, &mut g).is_err());
    assert!(step.run(&w, &x[1..], Labels::Classes(&[0, 1]), 0, &mut g).is_err());
    assert!(step.run(&w, &x, Labels::Classes(&[0]), 0, &mut g).is_err());
    assert!(step.run(&w, &x, Labels::Classes(&[0, 10]), 0, &mut g).is_err());
    assert!(step.run(&w, &vec![0.0; 784 * 3], Labels::Classes(&[0, 1, 2]), 0, &mut g).is_err());
    assert!(step.run(&w, &x, Labels::Targets(&[0.0; 20]), 0, &mut g).is_err());
    assert!(TrainableModel::from_onnx_bytes(b"not a model at all").is_err());
}

#[test]
fn exported_weights_round_trip_through_a_fresh_parse() {
    let model = TrainableModel::from_onnx_bytes(&mlp(1)).unwrap();
    let w: Vec<f32> = (0..model.num_params()).map(|i| (i % 97) as f32 * 0.01).collect();
    let bytes = model.export_with_weights(&w).unwrap();
    let again = TrainableModel::from_onnx_bytes(&bytes).unwrap();
    assert_eq!(again.initial_weights(), w);
    assert!(model.export_with_weights(&w[1..]).is_err());
}

#[test]
fn the_cnn_trains_with_plain_sgd() {
    let model = TrainableModel::from_onnx_bytes(&cnn(21)).unwrap();
    assert_eq!(model.output_len(), 10);
    let mut rng = ChaCha8Rng::seed_from_u64(22);
    // Four classes of noisy images: a bright quadrant per class.
    let n = 8;
    let mut x = vec![0.0f32; n * 784];
    let mut labels = vec![];
    for i in 0..n {
        let class = (i % 4) as u32;
        labels.push(class);
        for r in 0..28 {
            for c in 0..28 {
                let quadrant = (r / 14) * 2 + c / 14;
                let base = if quadrant == class as usize { 1.0 } else { 0.0 };
                x[i * 784 + r * 28 + c] = base + rng.gen_range(-0.2..0.2f32);
            }
        }
    }
    let mut step = TrainStep::new(&model, Loss::SoftmaxCrossEntropy, n).unwrap();
    let mut w = model.initial_weights();
    let mut g = vec![0.0; w.len()];
    let first = step.run(&w, &x, Labels::Classes(&labels), 0, &mut g).unwrap();
    let mut last = first;
    for _ in 0..8 {
        for (wi, gi) in w.iter_mut().zip(&g) {
            *wi -= 0.05 * gi;
        }
        last = step.run(&w, &x, Labels::Classes(&labels), 0, &mut g).unwrap();
    }
    assert!(last < 0.5 * first, "loss went from {first} to {last}");
}

#[test]
fn f32_training_graphs_agree_with_their_f64_verification_twins() {
    // A model using the ops whose f32 and f64 forms differ (Gemm with C, Sigmoid, LeakyRelu, BatchNormalization)
    // plus convolution and pooling.
    let mut b = ModelBuilder::new(&[2, 6, 6], 31);
    let w = b.init_random("cw", &[3, 2, 3, 3], 0.5);
    let c = b.node("Conv", &["x", &w], vec![attr_ints("pads", &[1, 1, 1, 1])]);
    let scale = b.init_random("s", &[3], 1.0);
    let bias = b.init_random("bb", &[3], 0.5);
    let mean = b.init("m", &[3], &[0.1, -0.2, 0.0]);
    let var = b.init("v", &[3], &[1.0, 0.5, 2.0]);
    let c = b.node("BatchNormalization", &[&c, &scale, &bias, &mean, &var], vec![]);
    let c = b.node("LeakyRelu", &[&c], vec![attr_f("alpha", 0.1)]);
    let c = b.node("MaxPool", &[&c], vec![attr_ints("kernel_shape", &[2, 2]), attr_ints("strides", &[2, 2])]);
    let f = b.node("Flatten", &[&c], vec![]);
    let h = b.dense(&f, 27, 8);
    let h = b.node("Sigmoid", &[&h], vec![]);
    let y = b.dense(&h, 8, 4);
    let model = TrainableModel::from_onnx_bytes(&b.build(&y)).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(32);
    let x = random_vec(&mut rng, 3 * 72, 1.0);
    let w = model.initial_weights();
    let mut g32 = vec![0.0; w.len()];
    let mut g64 = vec![0.0; w.len()];
    let mut s32 = TrainStep::new(&model, Loss::SoftmaxCrossEntropy, 3).unwrap();
    let mut s64 = TrainStep::with_precision(&model, Loss::SoftmaxCrossEntropy, 3, Precision::F64).unwrap();
    let l32 = s32.run(&w, &x, Labels::Classes(&[0, 3, 1]), 0, &mut g32).unwrap();
    let l64 = s64.run_precise(&w, &x, Labels::Classes(&[0, 3, 1]), 0, &mut g64).unwrap();
    assert!((l32 as f64 - l64).abs() < 1e-5 * l64.abs().max(1.0));
    let norm = g64.iter().map(|v| v * v).sum::<f32>().sqrt();
    let diff = g32.iter().zip(&g64).map(|(a, b)| (a - b) * (a - b)).sum::<f32>().sqrt();
    assert!(diff < 1e-5 * norm, "difference {diff} for a gradient of norm {norm}");
}

fn dropout_model() -> Vec<u8> {
    let mut b = ModelBuilder::new(&[6], 41);
    let h = b.dense("x", 6, 16);
    let h = b.node("Tanh", &[&h], vec![]);
    let ratio = b.node("Constant", &[], vec![attr_tensor("value", f32_tensor("", &[], &[0.5]))]);
    let h = b.node("Dropout", &[&h, &ratio], vec![]);
    let y = b.dense(&h, 16, 3);
    b.build(&y)
}

#[test]
fn dropout_is_live_in_training_seeded_by_the_caller_and_identity_in_prediction() {
    let bytes = dropout_model();
    let model = TrainableModel::from_onnx_bytes(&bytes).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(42);
    let x = random_vec(&mut rng, 4 * 6, 1.0);
    let labels = [0u32, 1, 2, 1];
    let w = model.initial_weights();
    let mut step = TrainStep::new(&model, Loss::SoftmaxCrossEntropy, 4).unwrap();
    let mut g = vec![0.0; w.len()];
    let a = step.run(&w, &x, Labels::Classes(&labels), 1, &mut g).unwrap();
    let b = step.run(&w, &x, Labels::Classes(&labels), 1, &mut g).unwrap();
    let c = step.run(&w, &x, Labels::Classes(&labels), 2, &mut g).unwrap();
    assert_eq!(a, b, "the same seed draws the same masks");
    assert_ne!(a, c, "another seed draws other masks");
    // The predictor ignores dropout: same logits as the model without its Dropout node.
    let mut plain = ModelBuilder::new(&[6], 41);
    let h = plain.dense("x", 6, 16);
    let h = plain.node("Tanh", &[&h], vec![]);
    let y = plain.dense(&h, 16, 3);
    let plain = TrainableModel::from_onnx_bytes(&plain.build(&y)).unwrap();
    assert_eq!(plain.num_params(), model.num_params());
    let p1 = Predictor::new(&model, &w, 4).unwrap().predict(&x).unwrap();
    let p2 = Predictor::new(&plain, &w, 4).unwrap().predict(&x).unwrap();
    assert_eq!(p1, p2);
}

#[test]
fn dropout_keeps_the_expected_activation_on_average() {
    // Kept units are scaled by 1 / (1 - ratio). With y = sum_i m_i (unit inputs and weights) and MSE against the
    // no-dropout output 8, the gradient summed over the weights is 2 (y - 8) y, whose expectation is 2 Var(y).
    let mut b = ModelBuilder::new(&[8], 43);
    let ratio = b.init("ratio", &[], &[0.3]);
    let d = b.node("Dropout", &["x", &ratio], vec![]);
    let w = b.init("w", &[8, 1], &[1.0; 8]);
    let y = b.node("MatMul", &[&d, &w], vec![]);
    let model = TrainableModel::from_onnx_bytes(&b.build(&y)).unwrap();
    assert_eq!(model.num_params(), 8, "the dropout ratio is not a weight");
    let x = vec![1.0f32; 8];
    let mut step = TrainStep::new(&model, Loss::MeanSquaredError, 1).unwrap();
    let w = model.initial_weights();
    let mut g = vec![0.0; 8];
    let mut mean_grad = 0.0f64;
    let runs = 2000;
    for seed in 0..runs {
        step.run(&w, &x, Labels::Targets(&[8.0]), seed, &mut g).unwrap();
        mean_grad += g.iter().map(|v| *v as f64).sum::<f64>() / runs as f64;
    }
    // m_i is 0 or 1/0.7 with probability 0.7: Var(y) = 8 (1/0.7 - 1).
    let expected = 2.0 * 8.0 * (1.0 / 0.7 - 1.0);
    assert!((mean_grad - expected).abs() < 0.1 * expected, "{mean_grad} vs {expected}");
}

#[test]
fn opset_11_models_with_attribute_axes_train() {
    let mut b = ModelBuilder::new(&[3, 4], 51);
    b.opset = 11;
    let u = b.node("Unsqueeze", &["x"], vec![attr_ints("axes", &[1])]);
    let s = b.node("Squeeze", &[&u], vec![attr_ints("axes", &[1])]);
    let f = b.node("Flatten", &[&s], vec![]);
    let h = b.dense(&f, 12, 5);
    let h = b.node("Dropout", &[&h], vec![attr_f("ratio", 0.2)]);
    let y = b.node("Softmax", &[&h], vec![]);
    let bytes = b.build(&y);
    let model = TrainableModel::from_onnx_bytes(&bytes).unwrap();
    assert_eq!(model.output_len(), 5);
    let err = gradient_error(&bytes, Loss::MeanSquaredError, 3, 52, 3, 1e-2);
    assert!(err < 1e-3, "relative error {err}");
}

#[test]
fn freezing_weights_leaves_the_others_gradients_unchanged() {
    let bytes = mlp(61);
    let full = TrainableModel::from_onnx_bytes(&bytes).unwrap();
    let keep: Vec<String> = full.params().iter().skip(4).map(|p| p.name.clone()).collect();
    let head = full.clone().with_trainable(&keep).unwrap();
    assert_eq!(head.params().len(), 2);
    assert_eq!(head.params()[0].offset, 0);
    let mut rng = ChaCha8Rng::seed_from_u64(62);
    let x = random_vec(&mut rng, 2 * 784, 1.0);
    let wf = full.initial_weights();
    let wh = head.initial_weights();
    let mut gf = vec![0.0; wf.len()];
    let mut gh = vec![0.0; wh.len()];
    TrainStep::new(&full, Loss::SoftmaxCrossEntropy, 2)
        .unwrap()
        .run(&wf, &x, Labels::Classes(&[3, 4]), 0, &mut gf)
        .unwrap();
    TrainStep::new(&head, Loss::SoftmaxCrossEntropy, 2)
        .unwrap()
        .run(&wh, &x, Labels::Classes(&[3, 4]), 0, &mut gh)
        .unwrap();
    let start = full.params()[4].offset;
    for (a, b) in gh.iter().zip(&gf[start..]) {
        assert!((a - b).abs() < 1e-6);
    }
    assert!(full.clone().with_trainable(&["no such weight".to_string()]).is_err());
}

#[test]
fn engine_types_can_cross_threads() {
    fn send<T: Send>() {}
    fn send_sync<T: Send + Sync>() {}
    send_sync::<TrainableModel>();
    send::<TrainStep>();
    send_sync::<Predictor>();
    send_sync::<TrainError>();
}

#[test]
fn cross_entropy_stays_finite_for_huge_logits() {
    let mut b = ModelBuilder::new(&[2], 71);
    let w = b.init("w", &[2, 3], &[1000.0, -2000.0, 500.0, 3000.0, 0.0, -100.0]);
    let y = b.node("MatMul", &["x", &w], vec![]);
    let model = TrainableModel::from_onnx_bytes(&b.build(&y)).unwrap();
    let x = [1.0f32, 1.0, -1.0, 2.0];
    let mut step = TrainStep::new(&model, Loss::SoftmaxCrossEntropy, 2).unwrap();
    let mut g = vec![0.0; 6];
    let loss = step.run(&model.initial_weights(), &x, Labels::Classes(&[2, 0]), 0, &mut g).unwrap();
    // Logits [4000, -2000, 400] and [5000, 2000, -700]: losses 3600 and 0.
    assert!((loss - 1800.0).abs() < 1.0, "{loss}");
    assert!(g.iter().all(|v| v.is_finite()));
}

#[test]
fn malformed_graphs_are_errors_not_panics() {
    // A node without inputs, a constant concatenation of mismatched shapes, a read of a missing tensor.
    let mut b = ModelBuilder::new(&[4], 81);
    let y = b.node("Relu", &[], vec![]);
    assert!(TrainableModel::from_onnx_bytes(&b.build(&y)).is_err());
    let mut b = ModelBuilder::new(&[4], 82);
    let p = b.init_i64("p", &[2, 2], &[1, 2, 3, 4]);
    let q = b.init_i64("q", &[3, 3], &[0; 9]);
    let c = b.node("Concat", &[&p, &q], vec![attr_i("axis", 0)]);
    let y = b.node("Reshape", &["x", &c], vec![]);
    assert!(TrainableModel::from_onnx_bytes(&b.build(&y)).is_err());
    let mut b = ModelBuilder::new(&[4], 83);
    let y = b.node("Relu", &["nowhere"], vec![]);
    assert!(TrainableModel::from_onnx_bytes(&b.build(&y)).is_err());
}

#[test]
fn token_ids_outside_the_embedding_table_are_clamped_into_it_not_a_crash() {
    // A user's data can hold an id past the vocabulary or a negative one; tract's Gather has no bounds check.
    let mut b = ModelBuilder::new(&[3], 1);
    let table = b.init_random("table", &[4, 2], 0.5);
    let emb = b.node("Gather", &[&table, "x"], vec![attr_i("axis", 0)]);
    let f = b.node("Flatten", &[&emb], vec![attr_i("axis", 1)]);
    let out = b.dense(&f, 6, 2);
    let model = TrainableModel::from_onnx_bytes(&b.build(&out)).unwrap();
    let w = model.initial_weights();
    let inside = Predictor::new(&model, &w, 1).unwrap().predict(&[3.0, 0.0, 1.0]).unwrap();
    let outside = Predictor::new(&model, &w, 1).unwrap().predict(&[1e6, -7.0, 1.0]).unwrap();
    assert_eq!(inside, outside, "ids past the table read its last row, negative ones its first");
    let mut step = TrainStep::new(&model, Loss::SoftmaxCrossEntropy, 1).unwrap();
    let mut g = vec![0.0; w.len()];
    let loss = step.run(&w, &[1e6, -7.0, 1.0], Labels::Classes(&[1]), 0, &mut g).unwrap();
    assert!(loss.is_finite() && g.iter().all(|v| v.is_finite()));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    /// The predictor's plan on fedge's own convolution gives the logits of tract's Conv
    /// ([`Predictor::with_standard_ops`]) for odd geometries: 1-D and 2-D, strides, dilations, uneven pads, groups,
    /// with and without a bias, two convolutions in a row, a max pool with an uneven pad (`FedgeMaxPool` against
    /// tract's), and a count of examples that leaves a partial last chunk.
    #[test]
    fn fedge_convolutions_predict_the_standard_plan_s_logits(
        one_d in any::<bool>(), cg in 1usize..4, mg in 1usize..3, group in 1usize..4, h in 3usize..9,
        w in 3usize..10, k in 1usize..4, stride in 1usize..4, dilation in 1usize..3,
        pads in proptest::collection::vec(0usize..3, 4), bias in any::<bool>(), seed in 0u64..1000,
    ) {
        let (c, m) = (cg * group, mg * group);
        let reach = dilation * (k - 1) + 1;
        prop_assume!(w + pads[1] + pads[3] >= reach && (one_d || h + pads[0] + pads[2] >= reach));
        let (input, kernel, strides, dilations, p) = if one_d {
            (vec![c, w], vec![k], vec![stride as i64], vec![dilation as i64], vec![pads[1] as i64, pads[3] as i64])
        } else {
            let p = pads.iter().map(|v| *v as i64).collect();
            (vec![c, h, w], vec![k, k], vec![stride as i64, 1], vec![dilation as i64, 1], p)
        };
        let bytes = wrap(&input, seed, |b, x| {
            let mut w_shape = vec![m, cg];
            w_shape.extend(&kernel);
            let wt = b.init_random("cw", &w_shape, 0.5);
            let mut ins = vec![x.to_string(), wt];
            if bias {
                ins.push(b.init_random("cb", &[m], 0.5));
            }
            let refs: Vec<&str> = ins.iter().map(String::as_str).collect();
            let k: Vec<i64> = kernel.iter().map(|v| *v as i64).collect();
            let y = b.node(
                "Conv",
                &refs,
                vec![
                    attr_ints("kernel_shape", &k),
                    attr_ints("strides", &strides),
                    attr_ints("dilations", &dilations),
                    attr_ints("pads", &p),
                    attr_i("group", group as i64),
                ],
            );
            let y = b.node("Relu", &[&y], vec![]);
            // A 1×1 convolution mixing the groups' channels.
            let w2_shape: Vec<usize> = [2, m].into_iter().chain(kernel.iter().map(|_| 1)).collect();
            let w2 = b.init_random("cw2", &w2_shape, 0.5);
            let y = b.node("Conv", &[&y, &w2], vec![attr_ints("kernel_shape", &vec![1; kernel.len()])]);
            let d = kernel.len();
            let pool_pads: Vec<i64> = (0..2 * d).map(|i| i64::from(i < d)).collect();
            b.node(
                "MaxPool",
                &[&y],
                vec![
                    attr_ints("kernel_shape", &vec![2; d]),
                    attr_ints("strides", &vec![2; d]),
                    attr_ints("pads", &pool_pads),
                ],
            )
        });
        let model = TrainableModel::from_onnx_bytes(&bytes).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let x = random_vec(&mut rng, 5 * model.input_len(), 1.0);
        let wts = model.initial_weights();
        let fedge = Predictor::new(&model, &wts, 3).unwrap().predict(&x).unwrap();
        let standard = Predictor::with_standard_ops(&model, &wts, 3).unwrap().predict(&x).unwrap();
        prop_assert_eq!(fedge.len(), 5 * 3);
        prop_assert!(
            fedge.iter().zip(&standard).all(|(a, b)| (a - b).abs() <= 1e-4 * (1.0 + b.abs())),
            "{:?} against {:?}", fedge, standard
        );
    }
}
