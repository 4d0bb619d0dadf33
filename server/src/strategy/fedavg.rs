//! Federated averaging (McMahan et al. 2017): the new model is the example-weighted mean of the agents' models,
//! `x ← x + Δ`.
//!
//! Stateless; works on the mean alone, so in every round, secure or plain.

use super::{RoundUpdates, Strategy, StrategyError, apply};

/// Federated averaging.
#[derive(Debug, Clone, Copy, Default)]
pub struct FedAvg;

impl Strategy for FedAvg {
    fn name(&self) -> &'static str {
        "fedavg"
    }
    fn aggregate(&mut self, global: &[f32], updates: RoundUpdates<'_>, _round: u64) -> Result<Vec<f32>, StrategyError> {
        apply::add(global, &updates.mean(global.len())?)
    }
}
