//! The agent's real [`Learner`]: trains the federation's ONNX model on the device's data with tract.
//!
//! The data is any source `fedge_shared::data` reads (CSV, NumPy, image folders decoded per batch, IDX), seen
//! through [`Examples`]; the round's plan names the loss (cross-entropy for classes, mean squared error for
//! regression targets). The compiled training step is kept across rounds (rebuilt only when the graph, the loss
//! or the batch size changes), so a round costs its training steps and nothing more. Runs on a blocking thread;
//! never touches the network.
//!
//! A round's plan may train only part of the model (`trainable` patterns over the weights' names, e.g. a head on
//! a frozen backbone): the agent then builds the model restricted to the matching weights, with the GLOBAL model's
//! values for every frozen weight (not the ONNX file's), trains it, and returns the delta of the matching weights
//! only, in the model's parameter order. Patterns that match no weight of the agent's model are refused.
//!
//! Each round trains on the configured data followed by the device's own labelled examples
//! ([`with_device_examples`](TractLearner::with_device_examples)): a snapshot of the store taken when the round
//! starts, of the examples that fit the model ([`ExampleStore::dataset`]), joined by [`TrainingSet`] (classification
//! only: the store holds class labels).

use crate::examples_store::ExampleStore;
use crate::learner::{LearnOutcome, Learner};
use crate::training_set::TrainingSet;
use anyhow::{Context, bail};
use fedge_shared::data::{CompactDataset, Dataset, Examples, SharedExamples, Task};
use fedge_shared::fedeval::EvalCounts;
use fedge_shared::model::{Digest, weights_to_bytes};
use fedge_shared::protocol::{OptimizerKind, TrainPlan};
use fedge_shared::train::local::{EVAL_BATCH, LocalTrainConfig, LocalTrainer, evaluate};
use fedge_shared::train::optimizer::OptimizerConfig;
use fedge_shared::train::schedule::LrSchedule;
use fedge_shared::train::{TrainableModel, TrainablePart};
use std::sync::Arc;

/// Trains with tract on a local training split, and reports accuracy on a local held-out split.
pub struct TractLearner {
    /// In-memory sets are kept as palette codes when the features allow (a quarter of the memory of `f32` pixels).
    train: SharedExamples,
    holdout: Option<SharedExamples>,
    model: Option<TrainableModel>,
    trainer: Option<LocalTrainer>,
    /// Mixed into every round's seed so agents do not shuffle alike.
    seed: u64,
    /// The learning-rate schedule over each round's local steps.
    schedule: LrSchedule,
    /// The device's own labelled examples, trained on after the configured data.
    device: Option<Arc<ExampleStore>>,
    /// Examples per run of the training step when batches are split (`None`: whole batches).
    micro_batch: Option<usize>,
    /// The model of the last round that trained part of the model (kept, with its trainer, while the patterns and
    /// the frozen values stay the same).
    tuned: Option<FineTune>,
}

/// The model restricted to a round's trainable patterns, with the global model's frozen values baked in.
struct FineTune {
    patterns: Vec<String>,
    /// SHA-256 of the frozen values the model was built with (bit for bit; a digest, not a copy of the backbone).
    frozen: Digest,
    model: TrainableModel,
    part: TrainablePart,
}

/// The digest of `global`'s coordinates outside `part`.
fn frozen_digest(part: &TrainablePart, global: &[f32]) -> anyhow::Result<Digest> {
    Ok(Digest::of(&weights_to_bytes(&part.gather_frozen(global)?)))
}

impl TractLearner {
    pub fn new(train: Dataset, holdout: Option<Dataset>, seed: u64) -> Self {
        let train: SharedExamples = Arc::new(CompactDataset::from(train));
        let holdout = holdout.map(|h| Arc::new(CompactDataset::from(h)) as SharedExamples);
        Self::from_sources(train, holdout, seed)
    }

    /// A learner on any data sources (CSV, NumPy, image folders, IDX, a subset of one of them).
    pub fn from_sources(train: SharedExamples, holdout: Option<SharedExamples>, seed: u64) -> Self {
        TractLearner {
            train,
            holdout,
            model: None,
            trainer: None,
            seed,
            schedule: LrSchedule::Constant,
            device: None,
            micro_batch: None,
            tuned: None,
        }
    }

    /// Runs each batch as micro-batches of at most `micro_batch` examples, accumulating their gradients (`None`:
    /// whole batches); the held-out evaluations run at that size too.
    pub fn with_micro_batch(mut self, micro_batch: Option<usize>) -> Self {
        self.micro_batch = micro_batch.filter(|m| *m > 0);
        self
    }

    /// Examples per evaluation batch.
    fn eval_batch(&self) -> usize {
        self.micro_batch.map_or(EVAL_BATCH, |m| m.min(EVAL_BATCH))
    }

    /// Shapes the learning rate over each round's local steps with `schedule` (the round's plan gives the base rate).
    pub fn with_schedule(mut self, schedule: LrSchedule) -> Self {
        self.schedule = schedule;
        self
    }

    /// Trains every round on `store`'s examples too (those that fit the model), after the configured data.
    pub fn with_device_examples(mut self, store: Arc<ExampleStore>) -> Self {
        self.device = Some(store);
        self
    }

    /// The model `global` trains this round: the whole graph (`patterns` empty), or the part the patterns choose
    /// with the global values of the frozen weights, and where that part lies in the full vector. A new model drops
    /// the compiled trainer.
    fn round_model(
        &mut self,
        full: &TrainableModel,
        global: &[f32],
        patterns: &[String],
    ) -> anyhow::Result<(TrainableModel, Option<TrainablePart>)> {
        if patterns.is_empty() {
            if self.tuned.take().is_some() {
                self.trainer = None;
            }
            return Ok((full.clone(), None));
        }
        if let Some(t) = &self.tuned
            && t.patterns == patterns
            && frozen_digest(&t.part, global)? == t.frozen
        {
            return Ok((t.model.clone(), Some(t.part.clone())));
        }
        let (model, part) =
            full.fine_tune(global, patterns).context("the round's trainable patterns do not fit this agent's model")?;
        let frozen = frozen_digest(&part, global)?;
        tracing::info!(trained = part.len(), of = global.len(), ?patterns, "fine-tuning part of the model");
        self.trainer = None;
        self.tuned = Some(FineTune { patterns: patterns.to_vec(), frozen, model: model.clone(), part: part.clone() });
        Ok((model, Some(part)))
    }

    fn config(&self, plan: &TrainPlan) -> anyhow::Result<LocalTrainConfig> {
        let optimizer = match plan.optimizer {
            OptimizerKind::Sgd => OptimizerConfig::Sgd {
                lr: plan.learning_rate,
                momentum: plan.momentum,
                nesterov: false,
                weight_decay: plan.weight_decay,
            },
            OptimizerKind::Adam => {
                let mut o = OptimizerConfig::adam(plan.learning_rate);
                if let OptimizerConfig::Adam { weight_decay, .. } = &mut o {
                    *weight_decay = plan.weight_decay;
                }
                o
            }
        };
        Ok(LocalTrainConfig {
            epochs: plan.epochs,
            batch_size: plan.batch_size,
            optimizer,
            prox_mu: plan.prox_mu.filter(|m| *m > 0.0),
            seed: plan.seed ^ self.seed.rotate_left(29),
            max_steps: None,
            schedule: self.schedule,
        })
    }
}

impl Learner for TractLearner {
    fn examples(&self) -> u64 {
        (self.train.len() + self.device.as_ref().map_or(0, |d| d.len())) as u64
    }

    fn set_graph(&mut self, onnx: &[u8]) -> anyhow::Result<()> {
        let model = TrainableModel::from_onnx_bytes(onnx).context("loading the ONNX graph")?;
        self.train.set_input_shape(model.input_shape()).context("the local data does not fit the model")?;
        if let Some(h) = &self.holdout {
            h.set_input_shape(model.input_shape()).context("the held-out data does not fit the model")?;
        }
        match self.train.task() {
            Task::Classification { classes } if classes > model.output_len() => {
                bail!("the local data has {classes} classes, the model only {} outputs", model.output_len())
            }
            Task::Regression { outputs } if outputs != model.output_len() => {
                bail!("the local data has {outputs} targets per example, the model {} outputs", model.output_len())
            }
            _ => {}
        }
        self.model = Some(model);
        self.trainer = None;
        self.tuned = None;
        Ok(())
    }

    fn num_params(&self) -> Option<usize> {
        self.model.as_ref().map(|m| m.num_params())
    }

    fn check_plan(&self, plan: &TrainPlan) -> anyhow::Result<()> {
        if let Some(model) = &self.model
            && !plan.trainable.is_empty()
        {
            TrainablePart::select(model.params(), &plan.trainable)
                .map_err(anyhow::Error::new)
                .context("the round's trainable patterns do not fit this agent's model")?;
        }
        Ok(())
    }

    fn learn(&mut self, global: &[f32], plan: &TrainPlan) -> anyhow::Result<LearnOutcome> {
        let Some(full) = self.model.clone() else { bail!("no graph received yet") };
        if global.len() != full.num_params() {
            bail!("global weights hold {} parameters, the graph has {}", global.len(), full.num_params());
        }
        let (model, part) = self.round_model(&full, global, &plan.trainable)?;
        // What this round trains and uploads: the whole vector, or the part's coordinates in order.
        let start = match &part {
            Some(p) => p.gather(global)?,
            None => global.to_vec(),
        };
        let cfg = self.config(plan)?;
        let loss = plan.loss;
        let batch = plan.batch_size as usize;
        let micro = self.micro_batch.map_or(batch, |m| m.min(batch));
        if self.trainer.as_ref().is_none_or(|t| t.batch_size() != batch || t.loss() != loss || t.micro_batch() != micro)
        {
            self.trainer = Some(LocalTrainer::with_micro_batch(model.clone(), loss, batch, micro)?);
        }
        let eval_batch = self.eval_batch();
        let Some(trainer) = self.trainer.as_mut() else { bail!("trainer unavailable") };
        // Federated evaluation of the global model this round starts from, before it is trained.
        let eval = match &self.holdout {
            Some(h) if !h.is_empty() => {
                let s = evaluate(trainer.model(), &start, h, eval_batch).context("evaluating the global model")?;
                let examples = s.examples as u64;
                Some(EvalCounts { correct: s.correct as u64, examples, loss_sum: f64::from(s.loss) * examples as f64 })
            }
            _ => None,
        };
        let mut weights = start.clone();
        let own = match &self.device {
            Some(store) if matches!(self.train.task(), Task::Classification { .. }) => {
                let (own, misfits) = store.dataset(model.input_shape(), model.output_len());
                if misfits > 0 {
                    tracing::warn!(
                        misfits,
                        "some of the device's labelled examples do not fit this model; not trained on"
                    );
                }
                own
            }
            _ => Dataset::empty(model.input_shape().to_vec()),
        };
        let set = TrainingSet::new(&self.train, &own).context("joining the device's labelled examples")?;
        let device_examples = set.device_examples() as u64;
        // The steps reuse their buffers from the heap instead of faulting fresh mappings in (shared::alloc).
        let heap = fedge_shared::alloc::keep_heap_for_training();
        let summary = trainer.train(&mut weights, &set, &cfg, &mut |_| {});
        drop(heap);
        let summary = summary?;
        let holdout_accuracy = match &self.holdout {
            Some(h) if !h.is_empty() => evaluate(trainer.model(), &weights, h, eval_batch)?.accuracy(),
            _ => None,
        };
        let delta = weights.iter().zip(&start).map(|(w, g)| w - g).collect();
        Ok(LearnOutcome {
            delta,
            examples: set.len() as u64,
            device_examples,
            train_loss: summary.last_epoch_loss,
            holdout_accuracy,
            eval,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fedge_shared::train::builder;

    /// 48 examples of 4 features in 3 classes, with a clear rule so that training moves the weights.
    fn data(offset: usize) -> Dataset {
        let n = 48;
        let features = (0..n * 4).map(|i| (((i + offset) * 37) % 101) as f32 / 50.0 - 1.0).collect::<Vec<_>>();
        let labels = (0..n).map(|i| u32::from(features[i * 4] > 0.0) + u32::from(features[i * 4 + 1] > 0.5)).collect();
        Dataset::new(features, labels, vec![4], 3).unwrap()
    }

    fn plan(trainable: &[&str]) -> TrainPlan {
        TrainPlan {
            epochs: 1,
            batch_size: 8,
            learning_rate: 0.2,
            momentum: 0.0,
            weight_decay: 0.0,
            optimizer: OptimizerKind::Sgd,
            prox_mu: None,
            seed: 1,
            loss: fedge_shared::train::Loss::SoftmaxCrossEntropy,
            trainable: trainable.iter().map(|s| s.to_string()).collect(),
            upload: fedge_shared::delta_encoding::DeltaEncoding::Int8,
        }
    }

    #[test]
    fn a_fine_tuning_round_starts_from_the_global_weights_and_returns_the_delta_of_the_part_only() {
        let onnx = builder::mlp(&[4, 5, 3], 1);
        let full = TrainableModel::from_onnx_bytes(&onnx).unwrap();
        // The global model differs from the file everywhere, in the frozen fc1 as much as in the trained fc2.
        let global: Vec<f32> =
            full.initial_weights().iter().enumerate().map(|(i, w)| -w + (i % 7) as f32 * 0.05).collect();
        let holdout = data(1000);
        let mut learner = TractLearner::new(data(0), Some(holdout.clone()), 3);
        learner.set_graph(&onnx).unwrap();
        let out = learner.learn(&global, &plan(&["fc2.*"])).unwrap();
        assert_eq!(out.delta.len(), 5 * 3 + 3, "fc2.weight and fc2.bias only");
        assert!(out.delta.iter().any(|d| *d != 0.0), "the head trained");
        // The round's starting model is the global one, frozen and trained parts alike: its federated evaluation
        // is the whole model's on the global weights, not on the file's.
        let on_global = evaluate(&full, &global, &holdout, EVAL_BATCH).unwrap();
        let on_file = evaluate(&full, &full.initial_weights(), &holdout, EVAL_BATCH).unwrap();
        let eval = out.eval.unwrap();
        assert_eq!(eval.correct, on_global.correct as u64);
        let loss = eval.loss_sum / eval.examples as f64;
        assert!((loss - f64::from(on_global.loss)).abs() < 1e-6, "{loss} vs {}", on_global.loss);
        assert!((loss - f64::from(on_file.loss)).abs() > 1e-3, "the file's weights give another loss");
        // A second round with other frozen values (a whole-model round happened in between) starts from those.
        let mut moved = global.clone();
        moved[0] += 0.5;
        let again = learner.learn(&moved, &plan(&["fc2.*"])).unwrap().eval.unwrap();
        let on_moved = evaluate(&full, &moved, &holdout, EVAL_BATCH).unwrap();
        assert!((again.loss_sum / again.examples as f64 - f64::from(on_moved.loss)).abs() < 1e-6);
        // And a whole-model plan trains everything again.
        assert_eq!(learner.learn(&global, &plan(&[])).unwrap().delta.len(), full.num_params());
    }

    #[test]
    fn micro_batches_train_to_the_same_update_as_whole_batches() {
        let onnx = builder::mlp(&[4, 5, 3], 1);
        let global = TrainableModel::from_onnx_bytes(&onnx).unwrap().initial_weights();
        let learn = |micro: Option<usize>| {
            let mut learner = TractLearner::new(data(0), Some(data(1000)), 3).with_micro_batch(micro);
            learner.set_graph(&onnx).unwrap();
            let out = learner.learn(&global, &plan(&[])).unwrap();
            (out, learner.trainer.as_ref().map(LocalTrainer::micro_batch))
        };
        let (whole, runs) = learn(None);
        assert_eq!(runs, Some(8));
        // 8-example batches in pieces of 3, 3 and 2; and a micro-batch larger than the batch runs it whole.
        for (micro, pieces) in [(Some(3), 3), (Some(64), 8)] {
            let (split, runs) = learn(micro);
            assert_eq!(runs, Some(pieces), "the step runs {pieces} examples at a time");
            let gap = whole.delta.iter().zip(&split.delta).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(gap < 1e-5, "micro-batch {micro:?}: the update differs by {gap}");
            assert!(whole.delta.iter().any(|d| d.abs() > 1e-3), "training moved the weights");
            assert_eq!(split.eval.unwrap().correct, whole.eval.unwrap().correct);
        }
    }

    #[test]
    fn patterns_that_match_no_weight_of_the_model_are_refused_when_the_plan_arrives_and_when_learning() {
        let onnx = builder::mlp(&[4, 5, 3], 1);
        let mut learner = TractLearner::new(data(0), None, 3);
        assert!(learner.check_plan(&plan(&["head.*"])).is_ok(), "no graph yet: checked when learning");
        learner.set_graph(&onnx).unwrap();
        let e = format!("{:#}", learner.check_plan(&plan(&["fc2.*", "head.*"])).unwrap_err());
        assert!(e.contains("\"head.*\" matches no weight") && e.contains("fc1.weight"), "{e}");
        assert!(learner.check_plan(&plan(&["fc2.*"])).is_ok());
        let global = TrainableModel::from_onnx_bytes(&onnx).unwrap().initial_weights();
        let e = format!("{:#}", learner.learn(&global, &plan(&["head.*"])).unwrap_err());
        assert!(e.contains("do not fit this agent's model") && e.contains("\"head.*\""), "{e}");
    }
}
