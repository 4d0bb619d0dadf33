//! The adaptive server optimizers of Reddi et al. 2021 ("Adaptive Federated Optimization", Algorithm 2): FedAdam,
//! FedYogi and FedAdagrad, which treat the round's mean delta Δ as a pseudo-gradient.
//!
//! `m ← β1 m + (1 − β1) Δ`, `v` by the [`AdaptiveRule`], `x ← x + η m / (√v + τ)`, with `m₋₁ = 0`, `v₋₁ = τ²`,
//! without bias correction, as in the paper. The moments persist between rounds through [`Strategy::state`].
//! Works on the mean alone, so in every round, secure or plain.

use super::{RoundUpdates, Strategy, StrategyError, apply};
use fedge_shared::codec;
use fedge_shared::train::TrainablePart;
use serde::{Deserialize, Serialize};

/// Which second-moment rule an adaptive strategy uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdaptiveRule {
    /// `v ← β2 v + (1 − β2) Δ²`
    Adam,
    /// `v ← v − (1 − β2) Δ² sign(v − Δ²)`
    Yogi,
    /// `v ← v + Δ²` (β2 is not used)
    Adagrad,
}

impl AdaptiveRule {
    fn name(self) -> &'static str {
        match self {
            AdaptiveRule::Adam => "fedadam",
            AdaptiveRule::Yogi => "fedyogi",
            AdaptiveRule::Adagrad => "fedadagrad",
        }
    }
}

/// Server optimizer parameters of FedAdam / FedYogi / FedAdagrad.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdaptiveParams {
    /// Server learning rate η.
    pub eta: f32,
    /// First-moment decay β1.
    pub beta1: f32,
    /// Second-moment decay β2 (FedAdam and FedYogi).
    pub beta2: f32,
    /// Adaptivity τ: added to √v; the second moment starts at τ² (Algorithm 2: v₋₁ ≥ τ²).
    pub tau: f32,
}

/// What the adaptive strategies persist between rounds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct MomentState {
    kind: String,
    m: Vec<f32>,
    v: Vec<f32>,
}

/// FedAdam, FedYogi or FedAdagrad, by its [`AdaptiveRule`].
#[derive(Debug, Clone)]
pub struct Adaptive {
    rule: AdaptiveRule,
    params: AdaptiveParams,
    m: Vec<f32>,
    v: Vec<f32>,
}

impl Adaptive {
    /// A fresh strategy; the moments are sized on the first [`Strategy::aggregate`].
    pub fn new(rule: AdaptiveRule, params: AdaptiveParams) -> Self {
        Adaptive { rule, params, m: Vec::new(), v: Vec::new() }
    }

    /// The first and second moment vectors (empty before the first round).
    pub fn moments(&self) -> (&[f32], &[f32]) {
        (&self.m, &self.v)
    }

    /// Sizes fresh moments for `n` parameters (`m = 0`, `v = τ²`); refuses moments of another size.
    fn size_moments(&mut self, n: usize) -> Result<(), StrategyError> {
        if self.m.is_empty() && self.v.is_empty() {
            self.m = vec![0.0; n];
            self.v = vec![self.params.tau * self.params.tau; n];
        }
        if self.m.len() != n || self.v.len() != n {
            return Err(StrategyError::StateMismatch { global: n, state: self.m.len() });
        }
        Ok(())
    }

    /// One server step over matching slices: updates `m` and `v` in place and returns the new weights.
    fn step(&self, global: &[f32], mean_delta: &[f32], m: &mut [f32], v: &mut [f32]) -> Vec<f32> {
        let AdaptiveParams { eta, beta1, beta2, tau } = self.params;
        let mut out = Vec::with_capacity(global.len());
        for (((x, d), m), v) in global.iter().zip(mean_delta).zip(m.iter_mut()).zip(v.iter_mut()) {
            *m = beta1 * *m + (1.0 - beta1) * d;
            let d2 = d * d;
            *v = match self.rule {
                AdaptiveRule::Adam => beta2 * *v + (1.0 - beta2) * d2,
                AdaptiveRule::Yogi => *v - (1.0 - beta2) * d2 * apply::sign(*v - d2),
                AdaptiveRule::Adagrad => *v + d2,
            };
            out.push(x + eta * *m / (v.sqrt() + tau));
        }
        out
    }
}

impl Strategy for Adaptive {
    fn name(&self) -> &'static str {
        self.rule.name()
    }

    fn aggregate(&mut self, global: &[f32], updates: RoundUpdates<'_>, _round: u64) -> Result<Vec<f32>, StrategyError> {
        let mean_delta = updates.mean(global.len())?;
        self.size_moments(global.len())?;
        let mut m = self.m.clone();
        let mut v = self.v.clone();
        let out = self.step(global, &mean_delta, &mut m, &mut v);
        apply::check_finite(&out)?;
        // Only a successful step changes the state.
        self.m = m;
        self.v = v;
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
        self.size_moments(global.len())?;
        // The moments of the trained coordinates move; those of the frozen ones stay as they were.
        let (out, [m, v]) = apply::on_part_with_state(global, part, [&self.m, &self.v], |x, [m, v]| {
            let trained = self.step(x, &mean_delta, m, v);
            apply::check_finite(&trained)?;
            Ok(trained)
        })?;
        // Only a successful step changes the state.
        self.m = m;
        self.v = v;
        Ok(out)
    }

    fn state(&self) -> Vec<u8> {
        let state = MomentState { kind: self.rule.name().to_string(), m: self.m.clone(), v: self.v.clone() };
        // Encoding a struct of vectors and a string cannot fail; an empty state only loses the moments.
        codec::encode(&state).unwrap_or_default()
    }

    fn restore(&mut self, bytes: &[u8]) -> Result<(), StrategyError> {
        if bytes.is_empty() {
            self.m.clear();
            self.v.clear();
            return Ok(());
        }
        let state: MomentState =
            codec::decode(bytes, codec::ABSOLUTE_LIMIT).map_err(|e| StrategyError::CorruptState(e.to_string()))?;
        if state.kind != self.rule.name() {
            return Err(StrategyError::WrongKind { stored: state.kind, expected: self.rule.name().to_string() });
        }
        if state.m.len() != state.v.len() {
            return Err(StrategyError::CorruptState(format!(
                "first moment has {} entries, second {}",
                state.m.len(),
                state.v.len()
            )));
        }
        if let Some(index) = state.m.iter().chain(&state.v).position(|x| !x.is_finite()) {
            return Err(StrategyError::CorruptState(format!("non-finite moment at {index}")));
        }
        self.m = state.m;
        self.v = state.v;
        Ok(())
    }
}
