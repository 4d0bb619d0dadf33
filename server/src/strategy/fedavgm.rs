//! FedAvgM, federated averaging with server momentum (Hsu, Qi and Brown 2019, "Measuring the Effects of
//! Non-Identical Data Distribution for Federated Visual Classification"): `u ← β u + Δ`, `x ← x + η u`, with
//! `u₋₁ = 0`.
//!
//! The momentum `u` persists between rounds through [`Strategy::state`]. With β = 0 and η = 1 it is FedAvg. Works on
//! the mean alone, so in every round, secure or plain.

use super::{RoundUpdates, Strategy, StrategyError, apply};
use fedge_shared::codec;
use fedge_shared::train::TrainablePart;
use serde::{Deserialize, Serialize};

/// What FedAvgM persists between rounds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct MomentumState {
    kind: String,
    u: Vec<f32>,
}

const NAME: &str = "fedavgm";

/// FedAvg with server momentum.
#[derive(Debug, Clone)]
pub struct FedAvgM {
    /// Server learning rate η.
    eta: f32,
    /// Server momentum β.
    momentum: f32,
    u: Vec<f32>,
}

impl FedAvgM {
    /// A fresh strategy; the momentum is sized on the first [`Strategy::aggregate`].
    pub fn new(eta: f32, momentum: f32) -> Self {
        FedAvgM { eta, momentum, u: Vec::new() }
    }

    /// The server momentum (empty before the first round).
    pub fn momentum_vector(&self) -> &[f32] {
        &self.u
    }

    fn size(&mut self, n: usize) -> Result<(), StrategyError> {
        if self.u.is_empty() {
            self.u = vec![0.0; n];
        }
        if self.u.len() != n {
            return Err(StrategyError::StateMismatch { global: n, state: self.u.len() });
        }
        Ok(())
    }

    fn step(&self, global: &[f32], mean_delta: &[f32], u: &mut [f32]) -> Result<Vec<f32>, StrategyError> {
        let mut out = Vec::with_capacity(global.len());
        for ((x, d), u) in global.iter().zip(mean_delta).zip(u.iter_mut()) {
            *u = self.momentum * *u + d;
            out.push(x + self.eta * *u);
        }
        apply::check_finite(&out)?;
        Ok(out)
    }
}

impl Strategy for FedAvgM {
    fn name(&self) -> &'static str {
        NAME
    }

    fn aggregate(&mut self, global: &[f32], updates: RoundUpdates<'_>, _round: u64) -> Result<Vec<f32>, StrategyError> {
        let mean_delta = updates.mean(global.len())?;
        self.size(global.len())?;
        let mut u = self.u.clone();
        let out = self.step(global, &mean_delta, &mut u)?;
        // Only a successful step changes the state.
        self.u = u;
        Ok(out)
    }

    fn aggregate_part(
        &mut self,
        global: &[f32],
        part: &TrainablePart,
        updates: RoundUpdates<'_>,
        _round: u64,
    ) -> Result<Vec<f32>, StrategyError> {
        let mean_delta = updates.mean(part.len())?;
        self.size(global.len())?;
        // The momentum of the trained coordinates moves; that of the frozen ones stays as it was.
        let (out, [u]) = apply::on_part_with_state(global, part, [&self.u], |x, [u]| self.step(x, &mean_delta, u))?;
        // Only a successful step changes the state.
        self.u = u;
        Ok(out)
    }

    fn state(&self) -> Vec<u8> {
        // Encoding a struct of a vector and a string cannot fail; an empty state only loses the momentum.
        codec::encode(&MomentumState { kind: NAME.to_string(), u: self.u.clone() }).unwrap_or_default()
    }

    fn restore(&mut self, bytes: &[u8]) -> Result<(), StrategyError> {
        if bytes.is_empty() {
            self.u.clear();
            return Ok(());
        }
        let state: MomentumState =
            codec::decode(bytes, codec::ABSOLUTE_LIMIT).map_err(|e| StrategyError::CorruptState(e.to_string()))?;
        if state.kind != NAME {
            return Err(StrategyError::WrongKind { stored: state.kind, expected: NAME.to_string() });
        }
        if let Some(index) = state.u.iter().position(|x| !x.is_finite()) {
            return Err(StrategyError::CorruptState(format!("non-finite momentum at {index}")));
        }
        self.u = state.u;
        Ok(())
    }
}
