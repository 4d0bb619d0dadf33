//! Local training on a device: epochs of shuffled mini-batches through a compiled [`TrainStep`], the optimizer
//! step in plain Rust, and evaluation through a [`Predictor`].
//!
//! A [`LocalTrainer`] is built once per (model, loss, batch size) and kept: an agent trains with the same graph every
//! round, so the training-step graph is compiled once, never per round. All randomness (shuffling, dropout masks)
//! derives from the seed in [`LocalTrainConfig`]; the only clock read is the wall time reported in the summary.
//! This module must never touch the network or files, and never panic on a data set or weights it is handed.

use super::optimizer::{Optimizer, OptimizerConfig, OptimizerError, Proximal};
use super::schedule::{LrSchedule, ScheduleError};
use super::{Labels, Loss, Predictor, TrainError, TrainStep, TrainableModel, WeightTensors};
use crate::data::{Batch, DataError, ExampleBatches, Examples, Task};
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

/// The batch size evaluation should run at on a device. A forward plan's activations and im2col buffers grow with
/// the batch: at 256 the McMahan CNN's second convolution alone unfolds 160 MB of columns, at 32 it needs 20 MB,
/// while the time per example hardly changes.
pub const EVAL_BATCH: usize = 32;

/// How to train locally for one round (travels in the round plan).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LocalTrainConfig {
    /// Passes over the local data.
    pub epochs: u32,
    /// Examples per step; must equal the batch size the [`LocalTrainer`] was compiled for.
    pub batch_size: u32,
    /// The optimizer (fresh state every call to [`LocalTrainer::train`]).
    pub optimizer: OptimizerConfig,
    /// FedProx's `mu`: when set, `mu/2 ||w - w_start||²` is added to the loss, `w_start` being the weights the
    /// call started from (the global model).
    pub prox_mu: Option<f32>,
    /// Seed of the shuffling and of the dropout masks.
    pub seed: u64,
    /// Stop after this many steps in all, if set (a compute budget).
    pub max_steps: Option<u64>,
    /// How the learning rate changes over the call's steps (all epochs, capped by `max_steps`).
    #[serde(default)]
    pub schedule: LrSchedule,
}

impl LocalTrainConfig {
    /// `epochs` epochs of plain SGD at `lr` in batches of `batch_size`, seed 0, no proximal term, no step cap.
    pub fn sgd(epochs: u32, batch_size: u32, lr: f32) -> Self {
        LocalTrainConfig {
            epochs,
            batch_size,
            optimizer: OptimizerConfig::sgd(lr),
            prox_mu: None,
            seed: 0,
            max_steps: None,
            schedule: LrSchedule::Constant,
        }
    }
}

/// Errors of local training and evaluation.
#[derive(Debug, thiserror::Error)]
pub enum LocalTrainError {
    #[error(transparent)]
    Engine(#[from] TrainError),
    #[error(transparent)]
    Optimizer(#[from] OptimizerError),
    #[error(transparent)]
    Schedule(#[from] ScheduleError),
    #[error("data set does not fit the model: {0}")]
    Data(String),
    #[error(transparent)]
    Source(#[from] DataError),
    #[error("the trainer is compiled for batches of {compiled}, the configuration asks for {asked}")]
    BatchSize { compiled: usize, asked: u32 },
    #[error(
        "the gradient became non-finite (loss {loss}) at epoch {epoch}, step {step}: training diverged (lower the learning rate)"
    )]
    Diverged { epoch: u32, step: u64, loss: f32 },
}

/// Where training is, reported after every step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Progress {
    /// The epoch, from 1.
    pub epoch: u32,
    pub epochs: u32,
    /// The step within the epoch, from 1.
    pub step: u64,
    pub steps_per_epoch: u64,
    /// The mean loss of this step's batch.
    pub loss: f32,
}

/// The outcome of one epoch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EpochSummary {
    /// The epoch, from 1.
    pub epoch: u32,
    /// Examples processed.
    pub examples: u64,
    pub steps: u64,
    /// The mean of the finite batch losses, weighted by batch size.
    pub mean_loss: f32,
}

/// The outcome of a call to [`LocalTrainer::train`].
#[derive(Debug, Clone, PartialEq)]
pub struct TrainSummary {
    /// The number of examples in the local data set (the weight of this update in federated averaging).
    pub examples: usize,
    /// Examples processed over all epochs.
    pub examples_processed: u64,
    pub steps: u64,
    /// Mean loss of each epoch, in order.
    pub epoch_losses: Vec<f32>,
    /// Mean loss of the last epoch (NaN if no step ran).
    pub last_epoch_loss: f32,
    pub wall_time: Duration,
}

/// The outcome of an evaluation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EvalSummary {
    pub examples: usize,
    /// Examples whose largest logit is the label (0 for regression).
    pub correct: usize,
    /// Classification: mean softmax cross-entropy of the logits. Regression: the mean squared error.
    pub loss: f32,
    /// Classification: fraction of examples whose largest logit is the label. Regression: NaN (no accuracy).
    pub accuracy: f32,
    /// Regression: mean over all outputs of the squared error (PyTorch's `MSELoss`); `None` for classification.
    pub mse: Option<f32>,
}

impl EvalSummary {
    /// The accuracy, for a classification task.
    pub fn accuracy(&self) -> Option<f32> {
        self.mse.is_none().then_some(self.accuracy)
    }
}

/// A model's compiled training step and the buffers of a training loop, kept across rounds. The gradient of a step
/// is read from the tensors the step's plan wrote and dropped after the optimizer step: no gradient-sized buffer
/// is kept between steps.
#[derive(Debug)]
pub struct LocalTrainer {
    model: TrainableModel,
    loss: Loss,
    step: TrainStep,
    batch: Batch,
    onehot: Vec<f32>,
}

impl LocalTrainer {
    /// Compiles the training step of `model` for `loss` and batches of `batch_size`.
    pub fn new(model: TrainableModel, loss: Loss, batch_size: usize) -> Result<Self, LocalTrainError> {
        Self::with_micro_batch(model, loss, batch_size, batch_size)
    }

    /// Like [`Self::new`], running every batch as micro-batches of at most `micro_batch` examples whose gradients
    /// are accumulated (see [`TrainStep::with_micro_batch`]): the same optimizer steps as batches of `batch_size`
    /// (to rounding), with the step's activations and convolution buffers of `micro_batch` examples. For devices
    /// short of memory; a device setting, not part of the round plan.
    pub fn with_micro_batch(
        model: TrainableModel,
        loss: Loss,
        batch_size: usize,
        micro_batch: usize,
    ) -> Result<Self, LocalTrainError> {
        let step = TrainStep::with_micro_batch(&model, loss, batch_size, micro_batch)?;
        Ok(LocalTrainer { model, loss, step, batch: Batch::default(), onehot: Vec::new() })
    }

    /// Examples per run of the compiled step (the batch size unless batches are split).
    pub fn micro_batch(&self) -> usize {
        self.step.micro_batch()
    }

    /// The model being trained.
    pub fn model(&self) -> &TrainableModel {
        &self.model
    }

    /// The loss the step minimises.
    pub fn loss(&self) -> Loss {
        self.loss
    }

    /// The batch size the step is compiled for.
    pub fn batch_size(&self) -> usize {
        self.step.batch()
    }

    /// Trains `weights` in place on `data` as `cfg` says, calling `progress` after every step. On an error the
    /// weights hold whatever the last step left: keep a copy of the start if it matters.
    pub fn train<D: Examples + ?Sized>(
        &mut self,
        weights: &mut [f32],
        data: &D,
        cfg: &LocalTrainConfig,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<TrainSummary, LocalTrainError> {
        let started = Instant::now();
        if cfg.batch_size as usize != self.batch_size() {
            return Err(LocalTrainError::BatchSize { compiled: self.batch_size(), asked: cfg.batch_size });
        }
        cfg.schedule.validate()?;
        let mut optimizer = Optimizer::new(cfg.optimizer.clone(), weights.len())?;
        let per_epoch = data.len().div_ceil(self.batch_size()) as u64;
        let all_steps = per_epoch.saturating_mul(u64::from(cfg.epochs));
        let total_steps = cfg.max_steps.map_or(all_steps, |m| m.min(all_steps));
        let global = cfg.prox_mu.map(|_| weights.to_vec());
        // The weights live as the tensors the steps read for the whole run; `weights` gets them back at its end.
        let mut tensors = WeightTensors::from_flat(&self.model, weights)?;
        let mut summary = TrainSummary {
            examples: data.len(),
            examples_processed: 0,
            steps: 0,
            epoch_losses: Vec::new(),
            last_epoch_loss: f32::NAN,
            wall_time: Duration::ZERO,
        };
        for epoch in 1..=cfg.epochs {
            let budget = cfg.max_steps.map(|m| m.saturating_sub(summary.steps));
            if budget == Some(0) {
                break;
            }
            let prox = match (cfg.prox_mu, &global) {
                (Some(mu), Some(g)) => Some(Proximal { mu, global: g }),
                _ => None,
            };
            let e = self.train_epoch_tensors(
                &mut tensors,
                data,
                &mut optimizer,
                prox,
                EpochPlan {
                    epoch,
                    epochs: cfg.epochs,
                    seed: epoch_seed(cfg.seed, epoch),
                    max_steps: budget,
                    schedule: cfg.schedule,
                    first_step: summary.steps,
                    total_steps,
                },
                progress,
            );
            let e = match e {
                Ok(e) => e,
                Err(err) => {
                    // The weights hold what the last step left, as documented.
                    tensors.copy_to(weights)?;
                    return Err(err);
                }
            };
            summary.examples_processed += e.examples;
            summary.steps += e.steps;
            summary.epoch_losses.push(e.mean_loss);
            summary.last_epoch_loss = e.mean_loss;
        }
        tensors.copy_to(weights)?;
        summary.wall_time = started.elapsed();
        Ok(summary)
    }

    /// Runs one epoch (or `plan.max_steps` steps of it) with a caller-held optimizer, for callers that want to do
    /// something between epochs (evaluate, save) without losing the optimizer's state.
    pub fn train_epoch<D: Examples + ?Sized>(
        &mut self,
        weights: &mut [f32],
        data: &D,
        optimizer: &mut Optimizer,
        prox: Option<Proximal<'_>>,
        plan: EpochPlan,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<EpochSummary, LocalTrainError> {
        self.check_data(data)?;
        // The steps read and the optimizer updates the weights as tensors (no copy per step); the flat vector gets
        // them back once, at the end of the epoch or at the step that failed.
        let mut tensors = WeightTensors::from_flat(&self.model, weights)?;
        let ran = self.train_epoch_tensors(&mut tensors, data, optimizer, prox, plan, progress);
        tensors.copy_to(weights)?;
        ran
    }

    /// [`Self::train_epoch`] on weights the caller keeps as tensors across epochs, so that no flat copy of them
    /// needs to exist while the steps run (a device short of memory makes one only to evaluate or save).
    pub fn train_epoch_tensors<D: Examples + ?Sized>(
        &mut self,
        weights: &mut WeightTensors,
        data: &D,
        optimizer: &mut Optimizer,
        prox: Option<Proximal<'_>>,
        plan: EpochPlan,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<EpochSummary, LocalTrainError> {
        weights.check_for(&self.model)?;
        self.check_data(data)?;
        let summary = self.epoch_steps(weights, data, optimizer, prox, &plan, progress)?;
        if !weights.all_finite() {
            return Err(LocalTrainError::Diverged { epoch: plan.epoch, step: summary.steps, loss: f32::NAN });
        }
        Ok(summary)
    }

    /// The steps of one epoch on weights held as tensors.
    fn epoch_steps<D: Examples + ?Sized>(
        &mut self,
        weights: &mut WeightTensors,
        data: &D,
        optimizer: &mut Optimizer,
        prox: Option<Proximal<'_>>,
        plan: &EpochPlan,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<EpochSummary, LocalTrainError> {
        let mut batches = ExampleBatches::new(data, self.batch_size(), plan.seed);
        let steps_per_epoch = batches.num_batches() as u64;
        let steps_per_epoch = plan.max_steps.map_or(steps_per_epoch, |m| m.min(steps_per_epoch));
        let mut dropout = ChaCha8Rng::seed_from_u64(plan.seed);
        dropout.set_stream(1);
        let (mut examples, mut steps, mut loss_sum, mut loss_examples) = (0u64, 0u64, 0.0f64, 0u64);
        let mut non_finite_losses = 0u64;
        while steps < steps_per_epoch {
            let Some(n) = batches.next_into(&mut self.batch)? else { break };
            let labels = match (self.loss, data.task()) {
                (Loss::SoftmaxCrossEntropy | Loss::SequenceCrossEntropy, _) => Labels::Classes(&self.batch.classes),
                (Loss::MeanSquaredError, Task::Regression { .. }) => Labels::Targets(&self.batch.targets),
                (Loss::MeanSquaredError, Task::Classification { .. }) => {
                    // Mean squared error against one-hot class vectors.
                    let c = self.model.output_len();
                    self.onehot.clear();
                    self.onehot.resize(n * c, 0.0);
                    for (k, &l) in self.batch.classes.iter().enumerate() {
                        if let Some(t) = self.onehot.get_mut(k * c + l as usize) {
                            *t = 1.0;
                        }
                    }
                    Labels::Targets(&self.onehot)
                }
            };
            optimizer.set_lr_factor(plan.schedule.factor(plan.first_step + steps, plan.total_steps))?;
            let (loss, grads) = self.step.gradients_at(weights, &self.batch.x, labels, dropout.next_u64())?;
            let loss = loss as f32;
            steps += 1;
            // A non-finite gradient would poison the weights: that is divergence. A non-finite loss with a finite
            // gradient is only the loss's report overflowing (a logit gap beyond f32's exp range), so the step is
            // taken and the batch left out of the mean.
            if !grads.all_finite() {
                return Err(LocalTrainError::Diverged { epoch: plan.epoch, step: steps, loss });
            }
            optimizer.step_pieces(weights.parts_mut()?, grads.parts(), prox)?;
            drop(grads);
            examples += n as u64;
            if loss.is_finite() {
                loss_sum += loss as f64 * n as f64;
                loss_examples += n as u64;
            } else {
                non_finite_losses += 1;
            }
            progress(Progress { epoch: plan.epoch, epochs: plan.epochs, step: steps, steps_per_epoch, loss });
        }
        if non_finite_losses > 0 {
            tracing::warn!(
                epoch = plan.epoch,
                batches = non_finite_losses,
                "non-finite batch losses left out of the mean"
            );
        }
        let mean_loss = if loss_examples == 0 { f32::NAN } else { (loss_sum / loss_examples as f64) as f32 };
        Ok(EpochSummary { epoch: plan.epoch, examples, steps, mean_loss })
    }

    fn check_data<D: Examples + ?Sized>(&self, data: &D) -> Result<(), LocalTrainError> {
        check_data(&self.model, data)?;
        if self.loss == Loss::SequenceCrossEntropy {
            // The data sources give one label per example; per-position labels exist only at the TrainStep level.
            return Err(LocalTrainError::Data(
                "sequence_cross_entropy needs a label per position, and this data source gives one per example: \
                 train on the last position with cross_entropy (a model whose output is that position's logits)"
                    .into(),
            ));
        }
        if self.loss == Loss::SoftmaxCrossEntropy && matches!(data.task(), Task::Regression { .. }) {
            return Err(LocalTrainError::Data(
                "the data holds regression targets but the loss is softmax cross-entropy: train with the mse loss"
                    .into(),
            ));
        }
        Ok(())
    }
}

/// The seed of epoch `epoch` of a run seeded with `seed` (what [`LocalTrainer::train`] uses, so callers driving
/// [`LocalTrainer::train_epoch`] themselves can repeat a run exactly).
pub fn epoch_seed(seed: u64, epoch: u32) -> u64 {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(u64::from(epoch));
    rng.next_u64()
}

/// Which epoch [`LocalTrainer::train_epoch`] runs and how.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EpochPlan {
    /// The epoch, from 1 (for progress reports).
    pub epoch: u32,
    pub epochs: u32,
    /// Seed of this epoch's shuffle and dropout masks.
    pub seed: u64,
    /// Stop after this many steps, if set.
    pub max_steps: Option<u64>,
    /// The learning-rate schedule of the whole run; the factor of this epoch's `k`-th step (from 0) is
    /// `schedule.factor(first_step + k, total_steps)`.
    pub schedule: LrSchedule,
    /// Steps the run took before this epoch.
    pub first_step: u64,
    /// Steps of the whole run.
    pub total_steps: u64,
}

impl EpochPlan {
    /// Epoch `epoch` of `epochs` with a constant learning rate and no step cap.
    pub fn constant(epoch: u32, epochs: u32, seed: u64) -> Self {
        EpochPlan {
            epoch,
            epochs,
            seed,
            max_steps: None,
            schedule: LrSchedule::Constant,
            first_step: 0,
            total_steps: 0,
        }
    }
}

fn check_data<D: Examples + ?Sized>(model: &TrainableModel, data: &D) -> Result<(), LocalTrainError> {
    data.set_input_shape(model.input_shape()).map_err(|e| LocalTrainError::Data(e.to_string()))?;
    data.check().map_err(|e| LocalTrainError::Data(e.to_string()))?;
    if data.is_empty() {
        return Err(LocalTrainError::Data("the data set is empty".into()));
    }
    if data.example_len() != model.input_len() {
        return Err(LocalTrainError::Data(format!(
            "examples of shape {:?} ({} values) do not fit the model's input {:?} ({} values)",
            data.example_shape(),
            data.example_len(),
            model.input_shape(),
            model.input_len()
        )));
    }
    match data.task() {
        Task::Classification { classes } if classes > model.output_len() => Err(LocalTrainError::Data(format!(
            "{classes} classes (labels up to {}) but the model has {} outputs",
            classes.saturating_sub(1),
            model.output_len()
        ))),
        Task::Regression { outputs } if outputs != model.output_len() => Err(LocalTrainError::Data(format!(
            "{outputs} regression targets per example but the model has {} outputs",
            model.output_len()
        ))),
        _ => Ok(()),
    }
}

/// Evaluates `weights` on `data` in batches of `batch`: mean cross-entropy and accuracy for classification, mean
/// squared error for regression. The plan reads the weights as inputs (one copy of them, as tensors; none in the
/// plan).
pub fn evaluate<D: Examples + ?Sized>(
    model: &TrainableModel,
    weights: &[f32],
    data: &D,
    batch: usize,
) -> Result<EvalSummary, LocalTrainError> {
    check_data(model, data)?;
    let tensors = WeightTensors::from_flat(model, weights)?;
    let predictor = Predictor::reading_weights(model, batch.max(1))?;
    evaluate_tensors(&predictor, model, &tensors, data, batch)
}

/// Evaluates `weights` held as tensors (a trainer's, read in place) with a predictor built
/// [`Predictor::reading_weights`] for `model`: built once, it serves every epoch's weights.
pub fn evaluate_tensors<D: Examples + ?Sized>(
    predictor: &Predictor,
    model: &TrainableModel,
    weights: &WeightTensors,
    data: &D,
    batch: usize,
) -> Result<EvalSummary, LocalTrainError> {
    weights.check_for(model)?;
    evaluate_by(model, data, batch, |x| predictor.predict_with(weights, x))
}

/// Evaluates with an already compiled predictor (its model must be `model`) with its weights baked in.
pub fn evaluate_with<D: Examples + ?Sized>(
    predictor: &Predictor,
    model: &TrainableModel,
    data: &D,
    batch: usize,
) -> Result<EvalSummary, LocalTrainError> {
    evaluate_by(model, data, batch, |x| predictor.predict(x))
}

/// The evaluation loop over `data` in batches of `batch`, `predict` giving each batch's outputs.
fn evaluate_by<D: Examples + ?Sized>(
    model: &TrainableModel,
    data: &D,
    batch: usize,
    predict: impl Fn(&[f32]) -> Result<Vec<f32>, TrainError>,
) -> Result<EvalSummary, LocalTrainError> {
    check_data(model, data)?;
    let c = model.output_len();
    let batch = batch.max(1);
    let regression = matches!(data.task(), Task::Regression { .. });
    let (mut correct, mut loss_sum) = (0usize, 0.0f64);
    let mut b = Batch::default();
    for first in (0..data.len()).step_by(batch) {
        let rows = data.range_into(first, batch, &mut b)?;
        let logits = predict(&b.x)?;
        if logits.len() != rows * c {
            return Err(LocalTrainError::Data(format!(
                "the predictor returned {} outputs for {rows} examples of {c}",
                logits.len()
            )));
        }
        if regression {
            if b.targets.len() != logits.len() {
                return Err(LocalTrainError::Data(format!("{} targets for {} outputs", b.targets.len(), logits.len())));
            }
            loss_sum +=
                logits.iter().zip(&b.targets).map(|(z, t)| (f64::from(*z) - f64::from(*t)).powi(2)).sum::<f64>();
        } else {
            for (row, &label) in logits.chunks_exact(c).zip(&b.classes) {
                let (ce, argmax) = cross_entropy(row, label as usize);
                loss_sum += ce;
                correct += usize::from(argmax == label as usize);
            }
        }
    }
    let n = data.len();
    if regression {
        let mse = (loss_sum / (n * c) as f64) as f32;
        return Ok(EvalSummary { examples: n, correct: 0, loss: mse, accuracy: f32::NAN, mse: Some(mse) });
    }
    Ok(EvalSummary {
        examples: n,
        correct,
        loss: (loss_sum / n as f64) as f32,
        accuracy: correct as f32 / n as f32,
        mse: None,
    })
}

/// Softmax cross-entropy of one row of logits against `label`, and the index of the largest logit.
fn cross_entropy(logits: &[f32], label: usize) -> (f64, usize) {
    let mut argmax = 0;
    let mut max = f32::NEG_INFINITY;
    for (i, &v) in logits.iter().enumerate() {
        if v > max {
            max = v;
            argmax = i;
        }
    }
    let lse = max as f64 + logits.iter().map(|&v| ((v - max) as f64).exp()).sum::<f64>().ln();
    let target = logits.get(label).copied().unwrap_or(f32::NEG_INFINITY) as f64;
    (lse - target, argmax)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cross_entropy_of_uniform_logits_is_log_of_the_class_count() {
        let (ce, _) = cross_entropy(&[0.5; 10], 3);
        assert!((ce - 10f64.ln()).abs() < 1e-9);
    }

    #[test]
    fn cross_entropy_is_stable_for_huge_logits_and_finds_the_argmax() {
        let (ce, arg) = cross_entropy(&[1000.0, 0.0, -1000.0], 0);
        assert!(ce.abs() < 1e-9);
        assert_eq!(arg, 0);
        let (ce, arg) = cross_entropy(&[1000.0, 0.0, 2000.0], 1);
        assert!((ce - 2000.0).abs() < 1e-6);
        assert_eq!(arg, 2);
    }

    use crate::data::Dataset;

    fn tiny_problem() -> (TrainableModel, Dataset) {
        let model = TrainableModel::from_onnx_bytes(&crate::train::builder::mlp(&[4, 8, 3], 1)).unwrap();
        let features: Vec<f32> = (0..40 * 4).map(|i| ((i * 37 % 17) as f32 - 8.0) / 8.0).collect();
        let labels: Vec<u32> = (0..40).map(|i| (i % 3) as u32).collect();
        (model, Dataset::new(features, labels, vec![4], 3).unwrap())
    }

    fn trained_with(schedule: LrSchedule) -> (Vec<f32>, Vec<f32>) {
        let (model, data) = tiny_problem();
        let start = model.initial_weights();
        let mut w = start.clone();
        let mut trainer = LocalTrainer::new(model, Loss::SoftmaxCrossEntropy, 8).unwrap();
        let cfg = LocalTrainConfig { schedule, ..LocalTrainConfig::sgd(2, 8, 0.5) };
        trainer.train(&mut w, &data, &cfg, &mut |_| {}).unwrap();
        (start, w)
    }

    #[test]
    fn the_trainer_scales_every_step_by_the_schedule() {
        let (start, constant) = trained_with(LrSchedule::Constant);
        // A cosine whose floor is the base rate is the constant rate, step for step.
        let (_, flat_cosine) = trained_with(LrSchedule::Cosine { warmup_steps: 0, min_factor: 1.0 });
        assert_eq!(constant, flat_cosine);
        // A warm-up of a billion steps keeps every factor below 1e-8: the weights hardly move.
        let (_, frozen) = trained_with(LrSchedule::Warmup { warmup_steps: 1_000_000_000 });
        let moved = |w: &[f32]| w.iter().zip(&start).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(moved(&constant) > 1e-2, "{}", moved(&constant));
        assert!(moved(&frozen) < 1e-6 * moved(&constant).max(1.0), "{}", moved(&frozen));
        // A real cosine ends somewhere else than the constant rate.
        let (_, cosine) = trained_with(LrSchedule::Cosine { warmup_steps: 2, min_factor: 0.0 });
        assert_ne!(constant, cosine);
    }

    #[test]
    fn an_invalid_schedule_is_refused_before_any_step() {
        let (model, data) = tiny_problem();
        let mut w = model.initial_weights();
        let before = w.clone();
        let mut trainer = LocalTrainer::new(model, Loss::SoftmaxCrossEntropy, 8).unwrap();
        let cfg = LocalTrainConfig {
            schedule: LrSchedule::Step { warmup_steps: 0, every_steps: 0, gamma: 0.5 },
            ..LocalTrainConfig::sgd(1, 8, 0.5)
        };
        let e = trainer.train(&mut w, &data, &cfg, &mut |_| {}).unwrap_err();
        assert!(matches!(e, LocalTrainError::Schedule(_)), "{e}");
        assert_eq!(w, before);
    }

    #[test]
    fn the_config_survives_the_codec() {
        let mut cfg = LocalTrainConfig::sgd(2, 32, 0.05);
        cfg.prox_mu = Some(0.01);
        cfg.max_steps = Some(100);
        cfg.optimizer = OptimizerConfig::adam(1e-3);
        cfg.schedule = LrSchedule::Cosine { warmup_steps: 100, min_factor: 0.01 };
        let bytes = crate::codec::encode(&cfg).unwrap();
        assert_eq!(crate::codec::decode::<LocalTrainConfig>(&bytes, 1024).unwrap(), cfg);
    }
}
