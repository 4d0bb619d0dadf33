//! The coordinator's configuration (from `server.toml`) and the state it resumes from (from the store).
//!
//! Validation lives here so a bad configuration is refused at start-up with a message naming the field; nothing
//! here reads a file or the environment.

use super::plan::TrainHyper;
use super::selection::SelectionRule;
use crate::strategy::StrategyConfig;
use serde::{Deserialize, Serialize};

/// Errors building a coordinator.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    #[error("invalid coordinator configuration: {0}")]
    Invalid(String),
    #[error(transparent)]
    Strategy(#[from] crate::strategy::StrategyError),
}

/// Round and selection parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoordinatorConfig {
    /// The fewest reports that complete a round (and the fewest agents a round starts with).
    pub min_agents: usize,
    /// Wait until at least this many checked-in idle agents are available before selecting (≥ `min_agents`;
    /// defaults to `min_agents`).
    #[serde(default)]
    pub min_available: Option<usize>,
    /// The most agents selected for a round.
    pub max_agents: usize,
    /// The fraction of available agents a round aims for, in (0, 1].
    pub fraction: f64,
    /// Over-selection factor, ≥ 1 (Google's production system uses 1.3).
    #[serde(default = "default_overselect")]
    pub overselect: f64,
    /// Seed for cohort selection and the agents' per-round seeds.
    #[serde(default)]
    pub seed: u64,
    /// How long a round waits for updates after the plans go out (milliseconds).
    pub round_timeout_ms: u64,
    /// Pause after an aborted round before the next one starts (milliseconds).
    #[serde(default = "default_backoff")]
    pub retry_backoff_ms: u64,
    /// The largest example count one agent's update is weighted with (the weight is also capped by the count the
    /// agent declared at check-in).
    #[serde(default)]
    pub max_examples: Option<u64>,
    /// Local training hyper-parameters before the strategy adjusts them.
    pub hyper: TrainHyper,
    /// The aggregation strategy.
    #[serde(default)]
    pub strategy: StrategyConfig,
}

fn default_overselect() -> f64 {
    1.3
}
fn default_backoff() -> u64 {
    5_000
}

impl CoordinatorConfig {
    /// Checks every field, naming the first one that is wrong.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.min_agents == 0 {
            return bad("min_agents must be at least 1".into());
        }
        if self.max_agents < self.min_agents {
            return bad(format!("max_agents ({}) is below min_agents ({})", self.max_agents, self.min_agents));
        }
        if let Some(a) = self.min_available
            && a < self.min_agents
        {
            return bad(format!("min_available ({a}) is below min_agents ({})", self.min_agents));
        }
        if !(self.fraction.is_finite() && self.fraction > 0.0 && self.fraction <= 1.0) {
            return bad(format!("fraction must be in (0, 1], not {}", self.fraction));
        }
        if !(self.overselect.is_finite() && (1.0..=10.0).contains(&self.overselect)) {
            return bad(format!("overselect must be in [1, 10], not {}", self.overselect));
        }
        if self.max_examples == Some(0) {
            return bad("max_examples must be at least 1".into());
        }
        if self.round_timeout_ms == 0 {
            return bad("round_timeout_ms must be positive".into());
        }
        self.hyper.validate().map_err(|e| ConfigError::Invalid(format!("hyper: {e}")))?;
        self.strategy.validate()?;
        Ok(())
    }

    /// The selection rule these settings describe.
    pub fn selection(&self) -> SelectionRule {
        SelectionRule {
            min_agents: self.min_agents,
            max_agents: self.max_agents,
            fraction: self.fraction,
            overselect: self.overselect,
        }
    }

    /// The number of available agents that lets a round start.
    pub fn min_available(&self) -> usize {
        self.min_available.unwrap_or(self.min_agents).max(self.min_agents)
    }
}

/// What the coordinator resumes from: the newest committed model and the counters the store keeps.
#[derive(Debug, Clone, PartialEq)]
pub struct ResumeState {
    /// The newest committed global model version.
    pub model_version: u64,
    /// Its weights.
    pub weights: Vec<f32>,
    /// The next unused round id.
    pub next_round: u64,
    /// The strategy's persisted state (empty for a fresh strategy).
    pub strategy_state: Vec<u8>,
}
