//! FedProx (Li et al. 2020): FedAvg on the server; the agents add the proximal term `μ/2 ‖w − w_global‖²` to their
//! loss, which this strategy sets in every round's hyper-parameters.
//!
//! Stateless; works on the mean alone.

use super::{RoundUpdates, Strategy, StrategyError, apply};
use crate::hyper::TrainHyper;

/// FedProx with proximal coefficient `mu`.
#[derive(Debug, Clone, Copy)]
pub struct FedProx {
    pub mu: f32,
}

impl Strategy for FedProx {
    fn name(&self) -> &'static str {
        "fedprox"
    }
    fn configure_round(&self, _round: u64, base: &TrainHyper) -> TrainHyper {
        TrainHyper { prox_mu: self.mu, ..base.clone() }
    }
    fn aggregate(&mut self, global: &[f32], updates: RoundUpdates<'_>, _round: u64) -> Result<Vec<f32>, StrategyError> {
        apply::add(global, &updates.mean(global.len())?)
    }
}
