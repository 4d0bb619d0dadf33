//! Aggregation strategies: how a round's mean update becomes the next global model.
//!
//! One small trait, as Flower's `Strategy`: [`Strategy::configure_round`] adjusts the agents' hyper-parameters,
//! [`Strategy::aggregate`] turns the global weights and the example-weighted mean delta (computed by the
//! coordinator from its running sums) into the new global weights ([`Strategy::aggregate_part`] when the round
//! fine-tuned only part of the model: the other weights stay bit for bit), and [`Strategy::state`] /
//! [`Strategy::restore`] persist whatever the strategy carries between rounds (the moment vectors of FedAdam and
//! FedYogi), encoded with `fedge_shared::codec`.
//!
//! The convention for a delta is `local − global`: an agent that trained uploads how far it moved. Reddi et al.
//! 2021 ("Adaptive Federated Optimization", Algorithm 2) call the mean of those deltas Δ_t and treat it as a
//! pseudo-gradient step, so the server's update is `x ← x + η · m / (√v + τ)`.
//!
//! Strategies are pure maths: no I/O, no clock, no randomness, and never a panic on a length they were given:
//! mismatches are a [`StrategyError`].

use crate::coordinator::TrainHyper;
use fedge_shared::codec;
use fedge_shared::train::TrainablePart;
use serde::{Deserialize, Serialize};

/// Errors from building, running or restoring a strategy.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum StrategyError {
    #[error("invalid strategy configuration: {0}")]
    InvalidConfig(String),
    #[error("the mean delta has {delta} parameters but the global model has {global}")]
    LengthMismatch { global: usize, delta: usize },
    #[error("the stored strategy state holds {state} parameters but the global model has {global}")]
    StateMismatch { global: usize, state: usize },
    #[error("the stored strategy state is for {stored:?}, not {expected:?}")]
    WrongKind { stored: String, expected: String },
    #[error("the stored strategy state cannot be read: {0}")]
    CorruptState(String),
    #[error("the aggregate contains a non-finite value at index {index}")]
    NonFinite { index: usize },
    #[error("the round's trained part does not fit: {0}")]
    Part(String),
}

/// An aggregation strategy. Implementations are deterministic functions of their inputs and their state.
pub trait Strategy: Send {
    /// A short name for logs and records ("fedavg", "fedadam", ...).
    fn name(&self) -> &'static str;

    /// The hyper-parameters agents get for `round`, given the configured base.
    fn configure_round(&self, round: u64, base: &TrainHyper) -> TrainHyper;

    /// The new global weights from the current ones and the example-weighted mean of the round's deltas.
    ///
    /// May update the strategy's state; the coordinator snapshots [`Strategy::state`] before and restores it if
    /// the commit fails, so a failed round leaves no trace.
    fn aggregate(&mut self, global: &[f32], mean_delta: &[f32], round: u64) -> Result<Vec<f32>, StrategyError>;

    /// The same for a round that trained only `part` of the model (fine-tuning): `mean_delta` covers the part's
    /// coordinates only, in order. Every coordinate outside the part keeps the global value bit for bit, and the
    /// strategy's state for those coordinates is left as it was (they were not trained this round).
    fn aggregate_part(
        &mut self,
        global: &[f32],
        part: &TrainablePart,
        mean_delta: &[f32],
        round: u64,
    ) -> Result<Vec<f32>, StrategyError>;

    /// The state to persist with the new model (may be empty).
    fn state(&self) -> Vec<u8>;

    /// Restores a state produced by [`Strategy::state`]. Empty bytes mean "fresh".
    fn restore(&mut self, bytes: &[u8]) -> Result<(), StrategyError>;
}

/// Which strategy the server runs, as written in `server.toml`, e.g.
/// `strategy = { kind = "fedadam", eta = 0.01, beta1 = 0.9, beta2 = 0.99, tau = 0.001 }`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum StrategyConfig {
    /// Federated averaging (McMahan et al. 2017): `x ← x + Δ`.
    #[default]
    FedAvg,
    /// FedProx (Li et al. 2020): FedAvg on the server, a proximal term μ on the agents.
    FedProx { mu: f32 },
    /// FedAdam (Reddi et al. 2021).
    FedAdam {
        #[serde(default = "default_eta")]
        eta: f32,
        #[serde(default = "default_beta1")]
        beta1: f32,
        #[serde(default = "default_beta2")]
        beta2: f32,
        #[serde(default = "default_tau")]
        tau: f32,
    },
    /// FedYogi (Reddi et al. 2021).
    FedYogi {
        #[serde(default = "default_eta")]
        eta: f32,
        #[serde(default = "default_beta1")]
        beta1: f32,
        #[serde(default = "default_beta2")]
        beta2: f32,
        #[serde(default = "default_tau")]
        tau: f32,
    },
}

fn default_eta() -> f32 {
    0.01
}
fn default_beta1() -> f32 {
    0.9
}
fn default_beta2() -> f32 {
    0.99
}
fn default_tau() -> f32 {
    1e-3
}

impl StrategyConfig {
    /// Checks the parameters: μ ≥ 0, η > 0, β1 and β2 in [0, 1), τ > 0, all finite.
    pub fn validate(&self) -> Result<(), StrategyError> {
        let bad = |what: &str, v: f32| StrategyError::InvalidConfig(format!("{what} = {v}"));
        match *self {
            StrategyConfig::FedAvg => Ok(()),
            StrategyConfig::FedProx { mu } => {
                if mu.is_finite() && mu >= 0.0 {
                    Ok(())
                } else {
                    Err(bad("mu must be finite and >= 0, got mu", mu))
                }
            }
            StrategyConfig::FedAdam { eta, beta1, beta2, tau } | StrategyConfig::FedYogi { eta, beta1, beta2, tau } => {
                if !(eta.is_finite() && eta > 0.0) {
                    return Err(bad("eta must be finite and > 0, got eta", eta));
                }
                if !(beta1.is_finite() && (0.0..1.0).contains(&beta1)) {
                    return Err(bad("beta1 must be in [0, 1), got beta1", beta1));
                }
                if !(beta2.is_finite() && (0.0..1.0).contains(&beta2)) {
                    return Err(bad("beta2 must be in [0, 1), got beta2", beta2));
                }
                if !(tau.is_finite() && tau > 0.0) {
                    return Err(bad("tau must be finite and > 0, got tau", tau));
                }
                Ok(())
            }
        }
    }

    /// Validates and builds the strategy.
    pub fn build(&self) -> Result<Box<dyn Strategy>, StrategyError> {
        self.validate()?;
        Ok(match *self {
            StrategyConfig::FedAvg => Box::new(FedAvg),
            StrategyConfig::FedProx { mu } => Box::new(FedProx { mu }),
            StrategyConfig::FedAdam { eta, beta1, beta2, tau } => {
                Box::new(Adaptive::new(AdaptiveRule::Adam, AdaptiveParams { eta, beta1, beta2, tau }))
            }
            StrategyConfig::FedYogi { eta, beta1, beta2, tau } => {
                Box::new(Adaptive::new(AdaptiveRule::Yogi, AdaptiveParams { eta, beta1, beta2, tau }))
            }
        })
    }
}

fn check_lengths(global: &[f32], mean_delta: &[f32]) -> Result<(), StrategyError> {
    if global.len() != mean_delta.len() {
        return Err(StrategyError::LengthMismatch { global: global.len(), delta: mean_delta.len() });
    }
    Ok(())
}

fn check_finite(weights: &[f32]) -> Result<(), StrategyError> {
    match weights.iter().position(|w| !w.is_finite()) {
        Some(index) => Err(StrategyError::NonFinite { index }),
        None => Ok(()),
    }
}

/// `x + Δ`: the FedAvg server step (server learning rate 1).
fn apply_mean(global: &[f32], mean_delta: &[f32]) -> Result<Vec<f32>, StrategyError> {
    check_lengths(global, mean_delta)?;
    let out: Vec<f32> = global.iter().zip(mean_delta).map(|(x, d)| x + d).collect();
    check_finite(&out)?;
    Ok(out)
}

/// [`apply_mean`] on the trained part of the model; the rest of `global` is copied as it is.
fn apply_mean_part(global: &[f32], part: &TrainablePart, mean_delta: &[f32]) -> Result<Vec<f32>, StrategyError> {
    let bad = |e: fedge_shared::train::PartError| StrategyError::Part(e.to_string());
    let trained = apply_mean(&part.gather(global).map_err(bad)?, mean_delta)?;
    let mut out = global.to_vec();
    part.scatter_into(&mut out, &trained).map_err(bad)?;
    Ok(out)
}

/// Federated averaging: the new model is the example-weighted mean of the agents' models.
#[derive(Debug, Clone, Copy, Default)]
pub struct FedAvg;

impl Strategy for FedAvg {
    fn name(&self) -> &'static str {
        "fedavg"
    }
    fn configure_round(&self, _round: u64, base: &TrainHyper) -> TrainHyper {
        base.clone()
    }
    fn aggregate(&mut self, global: &[f32], mean_delta: &[f32], _round: u64) -> Result<Vec<f32>, StrategyError> {
        apply_mean(global, mean_delta)
    }
    fn aggregate_part(
        &mut self,
        global: &[f32],
        part: &TrainablePart,
        mean_delta: &[f32],
        _round: u64,
    ) -> Result<Vec<f32>, StrategyError> {
        apply_mean_part(global, part, mean_delta)
    }
    fn state(&self) -> Vec<u8> {
        Vec::new()
    }
    fn restore(&mut self, _bytes: &[u8]) -> Result<(), StrategyError> {
        Ok(())
    }
}

/// FedProx: FedAvg on the server; the agents add the proximal term `μ/2 ‖w − w_global‖²` to their loss.
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
    fn aggregate(&mut self, global: &[f32], mean_delta: &[f32], _round: u64) -> Result<Vec<f32>, StrategyError> {
        apply_mean(global, mean_delta)
    }
    fn aggregate_part(
        &mut self,
        global: &[f32],
        part: &TrainablePart,
        mean_delta: &[f32],
        _round: u64,
    ) -> Result<Vec<f32>, StrategyError> {
        apply_mean_part(global, part, mean_delta)
    }
    fn state(&self) -> Vec<u8> {
        Vec::new()
    }
    fn restore(&mut self, _bytes: &[u8]) -> Result<(), StrategyError> {
        Ok(())
    }
}

/// Which second-moment rule an adaptive strategy uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdaptiveRule {
    /// `v ← β2 v + (1 − β2) Δ²`
    Adam,
    /// `v ← v − (1 − β2) Δ² sign(v − Δ²)`
    Yogi,
}

impl AdaptiveRule {
    fn name(self) -> &'static str {
        match self {
            AdaptiveRule::Adam => "fedadam",
            AdaptiveRule::Yogi => "fedyogi",
        }
    }
}

/// Server optimizer parameters of FedAdam / FedYogi.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdaptiveParams {
    /// Server learning rate η.
    pub eta: f32,
    /// First-moment decay β1.
    pub beta1: f32,
    /// Second-moment decay β2.
    pub beta2: f32,
    /// Adaptivity τ: added to √v; the second moment starts at τ² (Algorithm 2: v₋₁ ≥ τ²).
    pub tau: f32,
}

/// What FedAdam and FedYogi persist between rounds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct MomentState {
    kind: String,
    m: Vec<f32>,
    v: Vec<f32>,
}

/// FedAdam and FedYogi (Reddi et al. 2021, Algorithm 2, without bias correction, as in the paper):
/// `m ← β1 m + (1 − β1) Δ`, `v` by the [`AdaptiveRule`], `x ← x + η m / (√v + τ)`, with `m₋₁ = 0`, `v₋₁ = τ²`.
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
                AdaptiveRule::Yogi => *v - (1.0 - beta2) * d2 * sign(*v - d2),
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

    fn configure_round(&self, _round: u64, base: &TrainHyper) -> TrainHyper {
        base.clone()
    }

    fn aggregate(&mut self, global: &[f32], mean_delta: &[f32], _round: u64) -> Result<Vec<f32>, StrategyError> {
        check_lengths(global, mean_delta)?;
        self.size_moments(global.len())?;
        let mut m = self.m.clone();
        let mut v = self.v.clone();
        let out = self.step(global, mean_delta, &mut m, &mut v);
        check_finite(&out)?;
        // Only a successful step changes the state.
        self.m = m;
        self.v = v;
        Ok(out)
    }

    fn aggregate_part(
        &mut self,
        global: &[f32],
        part: &TrainablePart,
        mean_delta: &[f32],
        _round: u64,
    ) -> Result<Vec<f32>, StrategyError> {
        let bad = |e: fedge_shared::train::PartError| StrategyError::Part(e.to_string());
        let x = part.gather(global).map_err(bad)?;
        check_lengths(&x, mean_delta)?;
        self.size_moments(global.len())?;
        // The moments of the trained coordinates move; those of the frozen ones stay as they were.
        let mut m_part = part.gather(&self.m).map_err(bad)?;
        let mut v_part = part.gather(&self.v).map_err(bad)?;
        let trained = self.step(&x, mean_delta, &mut m_part, &mut v_part);
        check_finite(&trained)?;
        let mut out = global.to_vec();
        part.scatter_into(&mut out, &trained).map_err(bad)?;
        let (mut m, mut v) = (self.m.clone(), self.v.clone());
        part.scatter_into(&mut m, &m_part).map_err(bad)?;
        part.scatter_into(&mut v, &v_part).map_err(bad)?;
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

/// sign with sign(0) = 0, as in the Yogi paper.
fn sign(x: f32) -> f32 {
    if x > 0.0 {
        1.0
    } else if x < 0.0 {
        -1.0
    } else {
        0.0
    }
}
