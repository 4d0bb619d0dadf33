//! Specification of micro-batched training steps: a batch run as micro-batches whose gradients are accumulated
//! gives the whole batch's mean loss and gradient, for every split, and the local trainer takes the same steps.

mod engine_support;

use engine_support::*;
use fedge_shared::data::Dataset;
use fedge_shared::train::local::{LocalTrainConfig, LocalTrainer};
use fedge_shared::train::{Loss, Precision, TrainStep, TrainableModel};
use proptest::prelude::*;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// A small CNN with every layer kind the McMahan CNN has: conv (padded), relu, max-pool, flatten, dense.
fn small_cnn(seed: u64) -> Vec<u8> {
    let mut b = ModelBuilder::new(&[2, 6, 6], seed);
    let w = b.init_random("conv_w", &[3, 2, 3, 3], 0.5);
    let bias = b.init_random("conv_b", &[3], 0.1);
    let c =
        b.node("Conv", &["x", &w, &bias], vec![attr_ints("kernel_shape", &[3, 3]), attr_ints("pads", &[1, 1, 1, 1])]);
    let r = b.node("Relu", &[&c], vec![]);
    let p = b.node("MaxPool", &[&r], vec![attr_ints("kernel_shape", &[2, 2]), attr_ints("strides", &[2, 2])]);
    let f = b.node("Flatten", &[&p], vec![attr_i("axis", 1)]);
    let h = b.dense(&f, 3 * 3 * 3, 5);
    let h = b.node("Relu", &[&h], vec![]);
    let y = b.dense(&h, 5, 4);
    b.build(&y)
}

/// The loss and gradient of `n` random examples, in `precision`, with the batch split as `micro` says.
fn loss_and_gradient(
    bytes: &[u8],
    loss: Loss,
    n: usize,
    batch: usize,
    micro: usize,
    precision: Precision,
    seed: u64,
) -> (f64, Vec<f32>) {
    let model = TrainableModel::from_onnx_bytes(bytes).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let x = random_vec(&mut rng, n * model.input_len(), 1.0);
    let labels = OwnedLabels::random(&mut rng, loss, n, model.output_len());
    let w = model.initial_weights();
    let mut step = TrainStep::with_micro_batch_precision(&model, loss, batch, micro, precision).unwrap();
    assert_eq!(step.micro_batch(), micro);
    let mut g = vec![0.0; w.len()];
    let l = step.run_precise(&w, &x, labels.as_labels(), 0, &mut g).unwrap();
    (l, g)
}

fn max_relative_difference(a: &[f32], b: &[f32]) -> f32 {
    let scale = a.iter().chain(b).fold(0.0f32, |m, x| m.max(x.abs())).max(1e-6);
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max) / scale
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn an_accumulated_gradient_is_the_whole_batchs_gradient(
        batch in 1usize..9, micro_pick in 0usize..8, n_pick in 0usize..8, seed in 0u64..1000, mse in any::<bool>(),
    ) {
        let micro = 1 + micro_pick % batch;
        let n = 1 + n_pick % batch;
        let loss = if mse { Loss::MeanSquaredError } else { Loss::SoftmaxCrossEntropy };
        let bytes = small_cnn(seed);
        // In f64 the two sums differ only by rounding (and the loss's 1/n, which the graph holds as an f32 constant:
        // 1/3 and 1/2 carry different rounding, hence 1e-7 rather than f64's epsilon).
        let (whole_loss, whole) = loss_and_gradient(&bytes, loss, n, batch, batch, Precision::F64, seed);
        let (split_loss, split) = loss_and_gradient(&bytes, loss, n, batch, micro, Precision::F64, seed);
        prop_assert!((whole_loss - split_loss).abs() <= 1e-7 * whole_loss.abs().max(1.0), "{whole_loss} {split_loss}");
        let d = max_relative_difference(&whole, &split);
        prop_assert!(d < 1e-6, "f64: relative difference {d}");
        // In f32, to f32 rounding.
        let (_, whole) = loss_and_gradient(&bytes, loss, n, batch, batch, Precision::F32, seed);
        let (_, split) = loss_and_gradient(&bytes, loss, n, batch, micro, Precision::F32, seed);
        let d = max_relative_difference(&whole, &split);
        prop_assert!(d < 1e-5, "f32: relative difference {d}");
    }
}

#[test]
fn the_gradient_of_a_split_batch_is_not_the_gradient_of_its_first_piece() {
    // Guards the test above against a split that silently runs only one piece.
    let bytes = small_cnn(3);
    let (_, whole) = loss_and_gradient(&bytes, Loss::SoftmaxCrossEntropy, 6, 6, 6, Precision::F64, 3);
    let (_, first) = loss_and_gradient(&bytes, Loss::SoftmaxCrossEntropy, 2, 6, 6, Precision::F64, 3);
    assert!(max_relative_difference(&whole, &first) > 1e-2);
}

#[test]
fn a_micro_batch_of_zero_or_above_the_batch_is_refused() {
    let model = TrainableModel::from_onnx_bytes(&small_cnn(1)).unwrap();
    for micro in [0, 5] {
        let e = TrainStep::with_micro_batch(&model, Loss::SoftmaxCrossEntropy, 4, micro).unwrap_err();
        assert!(e.to_string().contains("micro-batch"), "{e}");
    }
}

#[test]
fn the_local_trainer_takes_the_same_steps_with_micro_batches() {
    let bytes = small_cnn(5);
    let model = TrainableModel::from_onnx_bytes(&bytes).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let n = 37;
    let features = random_vec(&mut rng, n * model.input_len(), 1.0);
    let labels: Vec<u32> = (0..n).map(|i| (i * 7 % 4) as u32).collect();
    let data = Dataset::new(features, labels, model.input_shape().to_vec(), 4).unwrap();
    let cfg = LocalTrainConfig {
        optimizer: fedge_shared::train::optimizer::OptimizerConfig::sgd_momentum(0.05, 0.9),
        ..LocalTrainConfig::sgd(2, 8, 0.05)
    };
    let mut trained = vec![];
    for micro in [8, 3] {
        let mut w = model.initial_weights();
        let mut trainer = LocalTrainer::with_micro_batch(model.clone(), Loss::SoftmaxCrossEntropy, 8, micro).unwrap();
        assert_eq!(trainer.micro_batch(), micro);
        let summary = trainer.train(&mut w, &data, &cfg, &mut |_| {}).unwrap();
        assert_eq!(summary.steps, 2 * n.div_ceil(8) as u64);
        trained.push((w, summary.last_epoch_loss));
    }
    let start = model.initial_weights();
    let moved = trained[0].0.iter().zip(&start).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(moved > 1e-2, "training moved the weights by {moved} only");
    let d = max_relative_difference(&trained[0].0, &trained[1].0);
    assert!(d < 1e-4, "weights after micro-batched training differ by {d}");
    assert!((trained[0].1 - trained[1].1).abs() < 1e-4 * trained[0].1.abs().max(1.0));
}
