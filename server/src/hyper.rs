//! The local training hyper-parameters a round gives its agents (what Flower calls the fit config), and the
//! optimizer they run.
//!
//! A leaf module: the coordinator puts these in round plans and records, strategies adjust them per round, and
//! neither is imported here. These types travel to the agent (serde, through `fedge_shared::codec`); nothing here
//! may depend on a clock or on randomness (the per-round seed is set by the coordinator).

pub use fedge_shared::protocol::OptimizerKind;

use fedge_shared::delta_encoding::DeltaEncoding;
use fedge_shared::train::Loss;
use serde::{Deserialize, Serialize};

/// Local training hyper-parameters for one round (what Flower calls the fit config).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainHyper {
    /// Passes over the agent's local data.
    pub epochs: u32,
    /// Examples per local step.
    pub batch_size: u32,
    /// Local (client) learning rate.
    pub learning_rate: f32,
    /// Momentum for SGD (ignored by Adam).
    #[serde(default)]
    pub momentum: f32,
    /// Which optimizer to run on the device.
    pub optimizer: OptimizerKind,
    /// L2 weight decay `wd` (PyTorch's rule: `wd * w` is added to the gradient), for SGD and Adam. 0 disables it.
    #[serde(default)]
    pub weight_decay: f32,
    /// FedProx proximal coefficient μ: the agent adds μ/2 ‖w − w_global‖² to its loss. 0 disables it. Only the
    /// strategy's `configure_round` sets it (FedProx's `mu`): in `[coordinator.hyper]` it is refused
    /// (`CoordinatorConfig::validate`), so the plan carries exactly what the strategy put there.
    #[serde(default)]
    pub prox_mu: f32,
    /// Seed for the round's local shuffling and dropout; set per round by the coordinator.
    #[serde(default)]
    pub seed: u64,
    /// Time the agent has, from receiving the plan, to upload its update (milliseconds); set by the coordinator.
    #[serde(default)]
    pub deadline_ms: u64,
    /// The loss agents minimise: `"cross_entropy"` (classification, the default) or `"mse"` (regression).
    #[serde(default)]
    pub loss: Loss,
    /// Fine-tuning part of the model: glob patterns over the weights' names (`["head.*"]`). Only the matching
    /// weights train; the others stay bit for bit; agents upload (and secure aggregation masks) only the matching
    /// part. Every pattern must match a weight of the model (checked when the setting is made). Empty (the
    /// default): the whole model.
    #[serde(default)]
    pub trainable: Vec<String>,
    /// How agents encode a plain round's update: `"int8"` (the default: a byte a coordinate, stochastically
    /// rounded, unbiased) or `"f32"` (exact, four times the bytes). Secure rounds have their own quantization.
    #[serde(default)]
    pub upload: DeltaEncoding,
}

impl Default for TrainHyper {
    fn default() -> Self {
        TrainHyper {
            epochs: 1,
            batch_size: 32,
            learning_rate: 0.05,
            momentum: 0.0,
            optimizer: OptimizerKind::Sgd,
            weight_decay: 0.0,
            prox_mu: 0.0,
            seed: 0,
            deadline_ms: 0,
            loss: Loss::SoftmaxCrossEntropy,
            trainable: Vec::new(),
            upload: DeltaEncoding::Int8,
        }
    }
}

impl TrainHyper {
    /// Checks that the numbers make sense, naming the first that does not.
    pub fn validate(&self) -> Result<(), String> {
        if self.epochs == 0 {
            return Err("epochs must be at least 1".into());
        }
        if self.batch_size == 0 {
            return Err("batch_size must be at least 1".into());
        }
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            return Err(format!("learning_rate must be a positive number, not {}", self.learning_rate));
        }
        if !(self.momentum.is_finite() && (0.0..1.0).contains(&self.momentum)) {
            return Err(format!("momentum must be in [0, 1), not {}", self.momentum));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return Err(format!("weight_decay must be a non-negative number, not {}", self.weight_decay));
        }
        if !(self.prox_mu.is_finite() && self.prox_mu >= 0.0) {
            return Err(format!("prox_mu must be a non-negative number, not {}", self.prox_mu));
        }
        if self.loss == fedge_shared::train::Loss::SequenceCrossEntropy {
            // Agents' data sources give one label per example: every agent would fail the round.
            return Err("loss sequence_cross_entropy cannot train in a round yet (the agents' data holds one label \
                        per example): use cross_entropy on the last position"
                .into());
        }
        fedge_shared::train::part::check_patterns(&self.trainable).map_err(|e| e.to_string())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loss_the_agents_cannot_train_in_a_round_is_refused_before_any_round() {
        assert!(TrainHyper::default().validate().is_ok());
        let seq = TrainHyper { loss: fedge_shared::train::Loss::SequenceCrossEntropy, ..TrainHyper::default() };
        let err = seq.validate().unwrap_err();
        assert!(err.contains("sequence_cross_entropy"), "{err}");
    }
}
