//! The uplink's learner: for an aggregator, "learning" in one of the root's rounds is running a round over its own
//! agents. [`ForwardingLearner::learn`] hands the root's plan to the core (`CoreMsg::RootRound`) and waits for the
//! forwarded mean, which becomes the uplink's update: the mean as the delta, its weight as the example count.
//!
//! It runs on a blocking thread (as every learner does) and never touches the network itself.

use crate::coordinator::{Partial, RootRequest, TrainHyper};
use crate::core_msg::CoreMsg;
use anyhow::{Context, bail};
use fedge_agent::learner::{LearnOutcome, Learner};
use fedge_agent::state::PublishedModel;
use fedge_shared::protocol::TrainPlan;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// The example count an aggregator declares to its root: it stands for however many examples its agents hold, and
/// each of its updates carries its real weight. (The root caps an update's weight at the declared count.)
pub const DECLARED_EXAMPLES: u64 = u32::MAX as u64;

/// A learner whose rounds are the aggregator's own (see the module documentation).
pub struct ForwardingLearner {
    core: mpsc::Sender<CoreMsg>,
    /// The versions the uplink holds (its client publishes each one before it trains from it).
    models: watch::Receiver<Option<PublishedModel>>,
    /// The longest a round of this aggregator may take before the learner gives up on it.
    wait: Duration,
    params: Option<usize>,
}

impl ForwardingLearner {
    pub fn new(core: mpsc::Sender<CoreMsg>, models: watch::Receiver<Option<PublishedModel>>, wait: Duration) -> Self {
        ForwardingLearner { core, models, wait, params: None }
    }
}

/// The root plan's training settings as this server's rounds carry them (the seed travels apart, see
/// [`RootRequest::wire_seed`]).
fn hyper_of(plan: &TrainPlan) -> TrainHyper {
    TrainHyper {
        epochs: plan.epochs,
        batch_size: plan.batch_size,
        learning_rate: plan.learning_rate,
        momentum: plan.momentum,
        optimizer: plan.optimizer,
        weight_decay: plan.weight_decay,
        prox_mu: plan.prox_mu.unwrap_or(0.0),
        seed: 0,
        deadline_ms: 0,
        loss: plan.loss,
        trainable: plan.trainable.clone(),
        upload: plan.upload,
    }
}

impl Learner for ForwardingLearner {
    fn examples(&self) -> u64 {
        DECLARED_EXAMPLES
    }

    fn set_graph(&mut self, onnx: &[u8]) -> anyhow::Result<()> {
        let weights = crate::evaluator::initial_weights(onnx).context("the root's graph")?;
        self.params = Some(weights.len());
        Ok(())
    }

    fn num_params(&self) -> Option<usize> {
        self.params
    }

    fn learn(&mut self, global: &[f32], plan: &TrainPlan) -> anyhow::Result<LearnOutcome> {
        // The version number of `global`: the client published it before training from it.
        let version = match &*self.models.borrow() {
            Some(m) if m.weights.as_slice() == global => m.version,
            _ => bail!("the root's plan is for weights this aggregator does not hold as its newest version"),
        };
        let request = RootRequest { model_version: version, hyper: hyper_of(plan), wire_seed: plan.seed };
        let (reply, answer) = std::sync::mpsc::sync_channel(1);
        self.core.blocking_send(CoreMsg::RootRound { request, reply }).context("the aggregator is shutting down")?;
        let partial: Partial = match answer.recv_timeout(self.wait) {
            Ok(Ok(p)) => p,
            Ok(Err(why)) => bail!("this aggregator has no update: {why}"),
            Err(e) => bail!("this aggregator's round gave no answer within {:?} ({e})", self.wait),
        };
        tracing::info!(
            version,
            agents = partial.agents,
            weight = partial.weight,
            "uploading the aggregate to the root"
        );
        Ok(LearnOutcome {
            delta: partial.mean,
            examples: partial.weight,
            device_examples: 0,
            train_loss: partial.train_loss.filter(|l| l.is_finite()).unwrap_or(0.0),
            holdout_accuracy: None,
            eval: partial.eval,
        })
    }
}
