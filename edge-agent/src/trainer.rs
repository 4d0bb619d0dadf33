//! The agent's real [`Learner`]: trains the federation's ONNX model on the device's data with tract.
//!
//! The compiled training step is kept across rounds (rebuilt only when the graph or the batch size changes), so
//! a round costs its training steps and nothing more. Runs on a blocking thread; never touches the network.
//!
//! Each round trains on the configured data followed by the device's own labelled examples
//! ([`with_device_examples`](TractLearner::with_device_examples)): a snapshot of the store taken when the round
//! starts, of the examples that fit the model ([`ExampleStore::dataset`]), joined by [`TrainingSet`].

use crate::examples_store::ExampleStore;
use crate::learner::{LearnOutcome, Learner};
use crate::training_set::TrainingSet;
use anyhow::{Context, bail};
use fedge_shared::data::{CompactDataset, Dataset, Examples};
use fedge_shared::fedeval::EvalCounts;
use fedge_shared::protocol::TrainPlan;
use fedge_shared::train::local::{EVAL_BATCH, LocalTrainConfig, LocalTrainer, evaluate};
use fedge_shared::train::optimizer::OptimizerConfig;
use fedge_shared::train::schedule::LrSchedule;
use fedge_shared::train::{Loss, TrainableModel};
use std::sync::Arc;

/// Trains with tract on a local training split, and reports accuracy on a local held-out split.
pub struct TractLearner {
    /// Kept as palette codes when the features allow (a quarter of the memory of `f32` pixels).
    train: CompactDataset,
    holdout: Option<CompactDataset>,
    model: Option<TrainableModel>,
    trainer: Option<LocalTrainer>,
    /// Mixed into every round's seed so agents do not shuffle alike.
    seed: u64,
    /// The learning-rate schedule over each round's local steps.
    schedule: LrSchedule,
    /// The device's own labelled examples, trained on after the configured data.
    device: Option<Arc<ExampleStore>>,
}

impl TractLearner {
    pub fn new(train: Dataset, holdout: Option<Dataset>, seed: u64) -> Self {
        let train = CompactDataset::from(train);
        let holdout = holdout.map(CompactDataset::from);
        TractLearner { train, holdout, model: None, trainer: None, seed, schedule: LrSchedule::Constant, device: None }
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

    fn config(&self, plan: &TrainPlan) -> anyhow::Result<LocalTrainConfig> {
        let optimizer = match plan.optimizer.as_str() {
            "sgd" => OptimizerConfig::Sgd {
                lr: plan.learning_rate,
                momentum: plan.momentum,
                nesterov: false,
                weight_decay: plan.weight_decay,
            },
            "adam" => {
                let mut o = OptimizerConfig::adam(plan.learning_rate);
                if let OptimizerConfig::Adam { weight_decay, .. } = &mut o {
                    *weight_decay = plan.weight_decay;
                }
                o
            }
            other => bail!("the round asks for optimizer {other:?}, which this agent does not know"),
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
        if model.input_len() != self.train.example_len() {
            bail!(
                "the model takes inputs of {} values, the local data set has examples of {}",
                model.input_len(),
                self.train.example_len()
            );
        }
        self.model = Some(model);
        self.trainer = None;
        Ok(())
    }

    fn num_params(&self) -> Option<usize> {
        self.model.as_ref().map(|m| m.num_params())
    }

    fn learn(&mut self, global: &[f32], plan: &TrainPlan) -> anyhow::Result<LearnOutcome> {
        let Some(model) = &self.model else { bail!("no graph received yet") };
        if global.len() != model.num_params() {
            bail!("global weights hold {} parameters, the graph has {}", global.len(), model.num_params());
        }
        let cfg = self.config(plan)?;
        if self.trainer.as_ref().is_none_or(|t| t.batch_size() != plan.batch_size as usize) {
            self.trainer = Some(LocalTrainer::new(model.clone(), Loss::SoftmaxCrossEntropy, plan.batch_size as usize)?);
        }
        let Some(trainer) = self.trainer.as_mut() else { bail!("trainer unavailable") };
        // Federated evaluation of the global model this round starts from, before it is trained.
        let eval = match &self.holdout {
            Some(h) if !h.is_empty() => {
                let s = evaluate(trainer.model(), global, h, EVAL_BATCH).context("evaluating the global model")?;
                let examples = s.examples as u64;
                Some(EvalCounts { correct: s.correct as u64, examples, loss_sum: f64::from(s.loss) * examples as f64 })
            }
            _ => None,
        };
        let mut weights = global.to_vec();
        let own = match &self.device {
            Some(store) => {
                let (own, misfits) = store.dataset(model.input_shape(), model.output_len());
                if misfits > 0 {
                    tracing::warn!(
                        misfits,
                        "some of the device's labelled examples do not fit this model; not trained on"
                    );
                }
                own
            }
            None => Dataset {
                features: vec![],
                labels: vec![],
                example_shape: model.input_shape().to_vec(),
                num_classes: 0,
            },
        };
        let set = TrainingSet::new(&self.train, &own).context("joining the device's labelled examples")?;
        let device_examples = set.device_examples() as u64;
        let summary = trainer.train(&mut weights, &set, &cfg, &mut |_| {})?;
        let holdout_accuracy = match &self.holdout {
            Some(h) if !h.is_empty() => Some(evaluate(trainer.model(), &weights, h, EVAL_BATCH)?.accuracy),
            _ => None,
        };
        let delta = weights.iter().zip(global).map(|(w, g)| w - g).collect();
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
