//! Which strategy the server runs, as written in `server.toml` (or set by the operator), and the checks that
//! refuse a strategy that cannot run before any round starts.
//!
//! No I/O here; a refused setting names the parameter and its range.

use super::{
    Adaptive, AdaptiveParams, AdaptiveRule, FedAvg, FedAvgM, FedProx, Krum, Median, Strategy, StrategyError,
    TrimmedMean,
};
use serde::{Deserialize, Serialize};

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
    /// FedAvgM (Hsu et al. 2019): server momentum, `u ← β u + Δ`, `x ← x + η u`.
    FedAvgM {
        #[serde(default = "one")]
        eta: f32,
        #[serde(default = "default_server_momentum")]
        momentum: f32,
    },
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
    /// FedAdagrad (Reddi et al. 2021); β1 defaults to 0 (no server momentum), as in Flower.
    FedAdagrad {
        #[serde(default = "default_eta")]
        eta: f32,
        #[serde(default)]
        beta1: f32,
        #[serde(default = "default_tau")]
        tau: f32,
    },
    /// Coordinate-wise median of the deltas (plain rounds only).
    Median,
    /// Coordinate-wise trimmed mean, dropping the fraction `beta` at each end (plain rounds only).
    #[serde(rename = "trimmed_mean", alias = "trimmedmean")]
    TrimmedMean {
        #[serde(default = "default_trim")]
        beta: f32,
    },
    /// (Multi-)Krum tolerating `byzantine` poisoned updates, averaging the `keep` best (plain rounds only).
    Krum {
        byzantine: usize,
        #[serde(default = "default_keep")]
        keep: usize,
    },
}

fn one() -> f32 {
    1.0
}
fn default_server_momentum() -> f32 {
    0.9
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
fn default_trim() -> f32 {
    0.1
}
fn default_keep() -> usize {
    1
}

impl StrategyConfig {
    /// Checks the parameters: μ ≥ 0, η > 0, β1 and β2 and the server momentum in [0, 1), τ > 0, the trimmed
    /// fraction in [0, 0.5), Krum's `keep` ≥ 1, all finite.
    pub fn validate(&self) -> Result<(), StrategyError> {
        let bad = |what: &str, v: f32| Err(StrategyError::InvalidConfig(format!("{what} = {v}")));
        let unit = |v: f32| v.is_finite() && (0.0..1.0).contains(&v);
        let positive = |v: f32| v.is_finite() && v > 0.0;
        match *self {
            StrategyConfig::FedAvg | StrategyConfig::Median => Ok(()),
            StrategyConfig::FedProx { mu } => {
                if mu.is_finite() && mu >= 0.0 {
                    Ok(())
                } else {
                    bad("mu must be finite and >= 0, got mu", mu)
                }
            }
            StrategyConfig::FedAvgM { eta, momentum } => {
                if !positive(eta) {
                    return bad("eta must be finite and > 0, got eta", eta);
                }
                if !unit(momentum) {
                    return bad("momentum must be in [0, 1), got momentum", momentum);
                }
                Ok(())
            }
            StrategyConfig::FedAdam { eta, beta1, beta2, tau } | StrategyConfig::FedYogi { eta, beta1, beta2, tau } => {
                if !unit(beta2) {
                    return bad("beta2 must be in [0, 1), got beta2", beta2);
                }
                check_adaptive(eta, beta1, tau)
            }
            StrategyConfig::FedAdagrad { eta, beta1, tau } => check_adaptive(eta, beta1, tau),
            StrategyConfig::TrimmedMean { beta } => {
                if beta.is_finite() && (0.0..0.5).contains(&beta) {
                    Ok(())
                } else {
                    bad("beta (the fraction trimmed at each end) must be in [0, 0.5), got beta", beta)
                }
            }
            StrategyConfig::Krum { keep, .. } => {
                if keep == 0 {
                    return Err(StrategyError::InvalidConfig("keep must be at least 1 (1 is Krum)".into()));
                }
                Ok(())
            }
        }
    }

    /// The fewest updates a round must have for this strategy to aggregate it (Krum: 2f + 3; others 1).
    pub fn min_updates(&self) -> usize {
        match *self {
            StrategyConfig::Krum { byzantine, .. } => Krum::min_updates(byzantine),
            _ => 1,
        }
    }

    /// Validates and builds the strategy.
    pub fn build(&self) -> Result<Box<dyn Strategy>, StrategyError> {
        self.validate()?;
        Ok(match *self {
            StrategyConfig::FedAvg => Box::new(FedAvg),
            StrategyConfig::FedProx { mu } => Box::new(FedProx { mu }),
            StrategyConfig::FedAvgM { eta, momentum } => Box::new(FedAvgM::new(eta, momentum)),
            StrategyConfig::FedAdam { eta, beta1, beta2, tau } => {
                Box::new(Adaptive::new(AdaptiveRule::Adam, AdaptiveParams { eta, beta1, beta2, tau }))
            }
            StrategyConfig::FedYogi { eta, beta1, beta2, tau } => {
                Box::new(Adaptive::new(AdaptiveRule::Yogi, AdaptiveParams { eta, beta1, beta2, tau }))
            }
            StrategyConfig::FedAdagrad { eta, beta1, tau } => {
                Box::new(Adaptive::new(AdaptiveRule::Adagrad, AdaptiveParams { eta, beta1, beta2: 0.0, tau }))
            }
            StrategyConfig::Median => Box::new(Median),
            StrategyConfig::TrimmedMean { beta } => Box::new(TrimmedMean { beta }),
            StrategyConfig::Krum { byzantine, keep } => Box::new(Krum { byzantine, keep }),
        })
    }
}

fn check_adaptive(eta: f32, beta1: f32, tau: f32) -> Result<(), StrategyError> {
    let bad = |what: &str, v: f32| Err(StrategyError::InvalidConfig(format!("{what} = {v}")));
    if !(eta.is_finite() && eta > 0.0) {
        return bad("eta must be finite and > 0, got eta", eta);
    }
    if !(beta1.is_finite() && (0.0..1.0).contains(&beta1)) {
        return bad("beta1 must be in [0, 1), got beta1", beta1);
    }
    if !(tau.is_finite() && tau > 0.0) {
        return bad("tau must be finite and > 0, got tau", tau);
    }
    Ok(())
}
