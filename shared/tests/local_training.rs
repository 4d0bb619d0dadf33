//! Local training end to end: the example models trained with the engine on real data.

use fedge_shared::data::{Dataset, Split, load_digits_dir, load_mnist_dir};
use fedge_shared::train::builder;
use fedge_shared::train::local::{LocalTrainConfig, LocalTrainError, LocalTrainer, Progress, evaluate};
use fedge_shared::train::optimizer::OptimizerConfig;
use fedge_shared::train::{Loss, TrainableModel};
use std::path::PathBuf;
use std::time::Instant;

/// The data sets shipped in the repository (`data/` at its top).
fn shared_data() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../data")
}

fn digits() -> (Dataset, Dataset) {
    load_digits_dir(&shared_data().join("digits")).unwrap().split_holdout(0.2, 42).unwrap()
}

fn small_mlp() -> TrainableModel {
    TrainableModel::from_onnx_bytes(&builder::mlp(&[64, 32, 10], 1)).unwrap()
}

fn distance(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum::<f32>().sqrt()
}

#[test]
fn two_epochs_of_the_2nn_on_2000_mnist_digits_reach_85_percent_on_1000_test_digits() {
    let dir = shared_data().join("mnist");
    let train = load_mnist_dir(&dir, Split::Train).unwrap().take(2000);
    let test = load_mnist_dir(&dir, Split::Test).unwrap().take(1000);
    let model = TrainableModel::from_onnx_bytes(&builder::mnist_2nn(7)).unwrap();
    let mut weights = model.initial_weights();
    let before = evaluate(&model, &weights, &test, 250).unwrap();
    let mut trainer = LocalTrainer::new(model.clone(), Loss::SoftmaxCrossEntropy, 32).unwrap();
    let cfg =
        LocalTrainConfig { optimizer: OptimizerConfig::sgd_momentum(0.02, 0.9), ..LocalTrainConfig::sgd(2, 32, 0.0) };
    let started = Instant::now();
    let summary = trainer.train(&mut weights, &train, &cfg, &mut |_| {}).unwrap();
    let after = evaluate(&model, &weights, &test, 250).unwrap();
    eprintln!("2NN, 2000 examples, 2 epochs: {:?} in {:?}, test {after:?}", summary, started.elapsed());
    assert_eq!(summary.examples, 2000);
    assert_eq!(summary.examples_processed, 4000);
    assert_eq!(summary.steps, 2 * 2000usize.div_ceil(32) as u64);
    assert!(summary.epoch_losses[1] < summary.epoch_losses[0], "{:?}", summary.epoch_losses);
    assert_eq!(after.examples, 1000);
    assert!(after.accuracy >= 0.85, "accuracy {} (before training {})", after.accuracy, before.accuracy);
    assert!(after.loss < before.loss);
}

#[test]
fn an_mlp_learns_the_8x8_digits_to_90_percent_held_out_with_adam() {
    let (train, test) = digits();
    let model = small_mlp();
    let mut weights = model.initial_weights();
    let mut trainer = LocalTrainer::new(model.clone(), Loss::SoftmaxCrossEntropy, 16).unwrap();
    let cfg = LocalTrainConfig { optimizer: OptimizerConfig::adam(0.005), ..LocalTrainConfig::sgd(5, 16, 0.0) };
    trainer.train(&mut weights, &train, &cfg, &mut |_| {}).unwrap();
    let eval = evaluate(&model, &weights, &test, 64).unwrap();
    assert!(eval.accuracy >= 0.9, "{eval:?}");
}

#[test]
fn the_same_seed_gives_the_same_weights_and_another_seed_other_weights() {
    let (train, _) = digits();
    let train = train.take(300);
    let model = small_mlp();
    let mut trainer = LocalTrainer::new(model.clone(), Loss::SoftmaxCrossEntropy, 20).unwrap();
    let run = |trainer: &mut LocalTrainer, seed| {
        let mut w = model.initial_weights();
        let cfg = LocalTrainConfig { seed, ..LocalTrainConfig::sgd(1, 20, 0.1) };
        trainer.train(&mut w, &train, &cfg, &mut |_| {}).unwrap();
        w
    };
    let a = run(&mut trainer, 5);
    let b = run(&mut trainer, 5);
    let c = run(&mut trainer, 6);
    assert_eq!(a, b);
    assert_ne!(a, c);
}

#[test]
fn progress_is_reported_once_per_step_with_the_epoch_and_step() {
    let (train, _) = digits();
    let train = train.take(50);
    let model = small_mlp();
    let mut trainer = LocalTrainer::new(model.clone(), Loss::SoftmaxCrossEntropy, 16).unwrap();
    let mut seen: Vec<Progress> = Vec::new();
    let mut w = model.initial_weights();
    let s = trainer.train(&mut w, &train, &LocalTrainConfig::sgd(2, 16, 0.05), &mut |p| seen.push(p)).unwrap();
    let pairs: Vec<(u32, u64)> = seen.iter().map(|p| (p.epoch, p.step)).collect();
    assert_eq!(pairs, vec![(1, 1), (1, 2), (1, 3), (1, 4), (2, 1), (2, 2), (2, 3), (2, 4)]);
    assert!(seen.iter().all(|p| p.steps_per_epoch == 4 && p.epochs == 2 && p.loss.is_finite()));
    assert_eq!(s.steps, 8);
}

#[test]
fn a_step_budget_stops_training_early() {
    let (train, _) = digits();
    let model = small_mlp();
    let mut trainer = LocalTrainer::new(model.clone(), Loss::SoftmaxCrossEntropy, 16).unwrap();
    let mut w = model.initial_weights();
    let cfg = LocalTrainConfig { max_steps: Some(5), ..LocalTrainConfig::sgd(3, 16, 0.05) };
    let s = trainer.train(&mut w, &train, &cfg, &mut |_| {}).unwrap();
    assert_eq!(s.steps, 5);
    assert_eq!(s.examples_processed, 80);
}

#[test]
fn a_large_proximal_term_keeps_the_weights_near_the_global_model() {
    let (train, _) = digits();
    let train = train.take(400);
    let model = small_mlp();
    let global = model.initial_weights();
    let mut trainer = LocalTrainer::new(model.clone(), Loss::SoftmaxCrossEntropy, 20).unwrap();
    let moved = |trainer: &mut LocalTrainer, mu| {
        let mut w = global.clone();
        let cfg = LocalTrainConfig { prox_mu: mu, ..LocalTrainConfig::sgd(2, 20, 0.1) };
        trainer.train(&mut w, &train, &cfg, &mut |_| {}).unwrap();
        distance(&w, &global)
    };
    let free = moved(&mut trainer, None);
    let held = moved(&mut trainer, Some(5.0));
    assert!(held < 0.5 * free, "FedProx moved {held}, plain SGD {free}");
}

#[test]
fn a_configuration_with_another_batch_size_than_the_compiled_one_is_refused() {
    let (train, _) = digits();
    let model = small_mlp();
    let mut trainer = LocalTrainer::new(model.clone(), Loss::SoftmaxCrossEntropy, 16).unwrap();
    let mut w = model.initial_weights();
    let e = trainer.train(&mut w, &train, &LocalTrainConfig::sgd(1, 32, 0.1), &mut |_| {}).unwrap_err();
    assert!(matches!(e, LocalTrainError::BatchSize { compiled: 16, asked: 32 }), "{e}");
}

#[test]
fn a_data_set_whose_examples_do_not_fit_the_model_is_refused() {
    let (train, _) = digits();
    let model = TrainableModel::from_onnx_bytes(&builder::mlp(&[60, 8, 10], 1)).unwrap();
    let mut trainer = LocalTrainer::new(model.clone(), Loss::SoftmaxCrossEntropy, 16).unwrap();
    let mut w = model.initial_weights();
    let e = trainer.train(&mut w, &train, &LocalTrainConfig::sgd(1, 16, 0.1), &mut |_| {}).unwrap_err();
    assert!(matches!(e, LocalTrainError::Data(_)), "{e}");
    assert!(evaluate(&model, &w, &train, 16).is_err());
}

#[test]
fn a_diverging_run_is_stopped_with_an_error_instead_of_returning_nan_weights() {
    let (train, _) = digits();
    let model = small_mlp();
    let mut trainer = LocalTrainer::new(model.clone(), Loss::SoftmaxCrossEntropy, 16).unwrap();
    let mut w = model.initial_weights();
    let e = trainer.train(&mut w, &train, &LocalTrainConfig::sgd(3, 16, 1e12), &mut |_| {}).unwrap_err();
    assert!(matches!(e, LocalTrainError::Diverged { .. }), "{e}");
}

#[test]
fn mean_squared_error_on_one_hot_targets_also_trains() {
    let (train, test) = digits();
    let model = small_mlp();
    let mut w = model.initial_weights();
    let mut trainer = LocalTrainer::new(model.clone(), Loss::MeanSquaredError, 16).unwrap();
    let before = evaluate(&model, &w, &test, 64).unwrap().accuracy;
    let cfg =
        LocalTrainConfig { optimizer: OptimizerConfig::sgd_momentum(0.05, 0.9), ..LocalTrainConfig::sgd(3, 16, 0.0) };
    let s = trainer.train(&mut w, &train, &cfg, &mut |_| {}).unwrap();
    let after = evaluate(&model, &w, &test, 64).unwrap().accuracy;
    assert!(s.epoch_losses[2] < s.epoch_losses[0], "{:?}", s.epoch_losses);
    assert!(after > 0.8 && after > before, "accuracy {before} -> {after}");
}

#[test]
fn a_few_epochs_of_the_cnn_on_one_small_batch_lower_its_loss() {
    let dir = shared_data().join("mnist");
    let train = load_mnist_dir(&dir, Split::Test).unwrap().take(32);
    let model = TrainableModel::from_onnx_bytes(&builder::mnist_cnn(1)).unwrap();
    assert_eq!(model.input_len(), train.example_len());
    let mut weights = model.initial_weights();
    let mut trainer = LocalTrainer::new(model.clone(), Loss::SoftmaxCrossEntropy, 16).unwrap();
    let cfg =
        LocalTrainConfig { optimizer: OptimizerConfig::sgd_momentum(0.01, 0.9), ..LocalTrainConfig::sgd(3, 16, 0.0) };
    let s = trainer.train(&mut weights, &train, &cfg, &mut |_| {}).unwrap();
    assert_eq!(s.steps, 6);
    assert!(s.epoch_losses[2] < s.epoch_losses[0], "{:?}", s.epoch_losses);
}

#[test]
fn epochs_on_weights_kept_as_tensors_take_the_same_steps_as_on_the_flat_vector() {
    use fedge_shared::train::WeightTensors;
    use fedge_shared::train::local::{EpochPlan, epoch_seed};
    use fedge_shared::train::optimizer::Optimizer;
    let (train, _) = digits();
    let model = small_mlp();
    let config = OptimizerConfig::sgd_momentum(0.05, 0.9);
    let plan = |epoch| EpochPlan::constant(epoch, 2, epoch_seed(3, epoch));
    let mut flat = model.initial_weights();
    let mut tensors = WeightTensors::from_flat(&model, &flat).unwrap();
    let (mut a, mut b) = (
        LocalTrainer::new(model.clone(), Loss::SoftmaxCrossEntropy, 16).unwrap(),
        LocalTrainer::new(model.clone(), Loss::SoftmaxCrossEntropy, 16).unwrap(),
    );
    let (mut oa, mut ob) =
        (Optimizer::new(config.clone(), flat.len()).unwrap(), Optimizer::new(config, flat.len()).unwrap());
    for epoch in 1..=2 {
        let sa = a.train_epoch(&mut flat, &train, &mut oa, None, plan(epoch), &mut |_| {}).unwrap();
        let sb = b.train_epoch_tensors(&mut tensors, &train, &mut ob, None, plan(epoch), &mut |_| {}).unwrap();
        assert_eq!((sa.steps, sa.mean_loss), (sb.steps, sb.mean_loss));
    }
    assert_ne!(flat, model.initial_weights(), "the weights moved");
    assert_eq!(tensors.to_flat(), flat, "bit for bit the same weights");
    // Tensors of another model are refused before any step.
    let other = TrainableModel::from_onnx_bytes(&builder::mlp(&[64, 16, 10], 1)).unwrap();
    let mut wrong = WeightTensors::from_flat(&other, &other.initial_weights()).unwrap();
    assert!(b.train_epoch_tensors(&mut wrong, &train, &mut ob, None, plan(3), &mut |_| {}).is_err());
}
