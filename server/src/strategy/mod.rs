//! Aggregation strategies: how a round's updates become the next global model.
//!
//! One small trait, as Flower's `Strategy`: [`Strategy::configure_round`] adjusts the agents' hyper-parameters,
//! [`Strategy::aggregate`] turns the global weights and the round's updates into the new global weights
//! ([`Strategy::aggregate_part`] when the round fine-tuned only part of the model: the other weights stay bit for
//! bit), and [`Strategy::state`] / [`Strategy::restore`] persist whatever the strategy carries between rounds (the
//! moment vectors of FedAdam, the server momentum of FedAvgM), encoded with `fedge_shared::codec`.
//!
//! What a strategy aggregates is [`RoundUpdates`]: the example-weighted mean delta, which is all a secure round
//! reveals (and all a plain round keeps, folded into one running sum, for strategies that need no more), or, in plain
//! rounds of a strategy whose [`Strategy::input`] is [`Input::EachUpdate`], every surviving agent's delta. The
//! robust rules (coordinate-wise median, trimmed mean, Krum) need the latter and are refused with secure
//! aggregation, which exists so that the server never sees one agent's update.
//!
//! The convention for a delta is `local − global`: an agent that trained uploads how far it moved. Reddi et al.
//! 2021 ("Adaptive Federated Optimization", Algorithm 2) call the mean of those deltas Δ_t and treat it as a
//! pseudo-gradient step, so the server's update is `x ← x + η · m / (√v + τ)`.
//!
//! One file per strategy: [`fedavg`], [`fedprox`], [`fedavgm`], [`adaptive`] (FedAdam, FedYogi, FedAdagrad),
//! [`median`], [`trimmed_mean`], [`krum`]; [`config`] is the `server.toml` form that builds them.
//!
//! Strategies are pure maths: no I/O, no clock, no randomness, and never a panic on a length they were given:
//! mismatches are a [`StrategyError`].

pub mod adaptive;
mod apply;
pub mod config;
pub mod fedavg;
pub mod fedavgm;
pub mod fedprox;
pub mod krum;
pub mod median;
mod round_updates;
pub mod trimmed_mean;

pub use adaptive::{Adaptive, AdaptiveParams, AdaptiveRule};
pub use config::StrategyConfig;
pub use fedavg::FedAvg;
pub use fedavgm::FedAvgM;
pub use fedprox::FedProx;
pub use krum::Krum;
pub use median::Median;
pub use round_updates::{ClientUpdate, Input, RoundUpdates};
pub use trimmed_mean::TrimmedMean;

use crate::hyper::TrainHyper;
use fedge_shared::train::TrainablePart;

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
    #[error(
        "{strategy} needs each agent's update, and this round has only their mean (secure aggregation hides the \
         individual updates from the server)"
    )]
    NeedsEachUpdate { strategy: &'static str },
    #[error("{strategy} needs at least {needed} updates, the round has {got}")]
    TooFewUpdates { strategy: &'static str, needed: usize, got: usize },
}

/// An aggregation strategy. Implementations are deterministic functions of their inputs and their state.
pub trait Strategy: Send {
    /// A short name for logs and records ("fedavg", "fedadam", ...).
    fn name(&self) -> &'static str;

    /// What the strategy aggregates from. [`Input::Mean`] (the default) works in every round; a strategy that
    /// says [`Input::EachUpdate`] runs in plain rounds only, and the coordinator keeps every update for it.
    fn input(&self) -> Input {
        Input::Mean
    }

    /// The hyper-parameters agents get for `round`, given the configured base.
    fn configure_round(&self, round: u64, base: &TrainHyper) -> TrainHyper {
        let _ = round;
        base.clone()
    }

    /// The new global weights from the current ones and the round's updates.
    ///
    /// May update the strategy's state; the coordinator snapshots [`Strategy::state`] before and restores it if
    /// the commit fails, so a failed round leaves no trace.
    fn aggregate(&mut self, global: &[f32], updates: RoundUpdates<'_>, round: u64) -> Result<Vec<f32>, StrategyError>;

    /// The same for a round that trained only `part` of the model (fine-tuning): the updates cover the part's
    /// coordinates only, in order. Every coordinate outside the part keeps the global value bit for bit, and the
    /// strategy's state for those coordinates is left as it was (they were not trained this round).
    ///
    /// The default runs [`Strategy::aggregate`] on the part's coordinates, which is right for a strategy without
    /// per-coordinate state; a strategy with such state overrides it.
    fn aggregate_part(
        &mut self,
        global: &[f32],
        part: &TrainablePart,
        updates: RoundUpdates<'_>,
        round: u64,
    ) -> Result<Vec<f32>, StrategyError> {
        apply::on_part(global, part, |x| self.aggregate(x, updates, round))
    }

    /// The state to persist with the new model (may be empty).
    fn state(&self) -> Vec<u8> {
        Vec::new()
    }

    /// Restores a state produced by [`Strategy::state`]. Empty bytes mean "fresh".
    fn restore(&mut self, bytes: &[u8]) -> Result<(), StrategyError> {
        let _ = bytes;
        Ok(())
    }
}
