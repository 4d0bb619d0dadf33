//! The coordinator's configuration (from `server.toml`) and the state it resumes from (from the store).
//!
//! Validation lives here so a bad configuration is refused at start-up with a message naming the field; nothing
//! here reads a file or the environment.

use super::selection::SelectionRule;
use crate::hyper::TrainHyper;
use crate::strategy::StrategyConfig;
use fedge_shared::secagg::SecAggParams;
use serde::{Deserialize, Serialize};

/// Why `hyper.prox_mu` is refused as a setting: FedProx's μ is the strategy's, which puts it in each round's plan.
pub const PROX_MU_IS_THE_STRATEGYS: &str =
    "FedProx's mu is the strategy's: set strategy = { kind = \"fedprox\", mu = ... } (fedgectl: strategy.mu)";

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
        if self.hyper.prox_mu != 0.0 {
            return bad(format!(
                "{PROX_MU_IS_THE_STRATEGYS} (hyper.prox_mu = {} is not a setting)",
                self.hyper.prox_mu
            ));
        }
        self.hyper.validate().map_err(|e| ConfigError::Invalid(format!("hyper: {e}")))?;
        self.strategy.validate()?;
        let needed = self.strategy.min_updates();
        if needed > self.min_agents {
            return bad(format!(
                "the strategy {:?} needs at least {needed} updates a round, but min_agents is {}: raise min_agents \
                 or tolerate fewer poisoned updates",
                self.strategy, self.min_agents
            ));
        }
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

/// Secure-aggregation settings (`[secagg]` in `server.toml`). On by default: every round runs SecAgg+ unless
/// `enabled = false`. Unset parameters come from [`SecAggParams::default_for`] the round's cohort size.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecAggConfig {
    /// Run every round with secure aggregation (the default). `false` runs plain rounds, for comparison only.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// `k`: neighbours per agent on the SecAgg+ graph (default: complete graph up to 21 agents, ~3·log2 n beyond).
    #[serde(default)]
    pub neighbours: Option<u32>,
    /// `t`: shares needed to reconstruct an agent's secrets; must exceed half of the neighbours.
    #[serde(default)]
    pub threshold: Option<u32>,
    /// Each delta coordinate is clipped to ±clip before quantization (default 8).
    #[serde(default)]
    pub clip: Option<f32>,
    /// Quantization levels are 2^quant_bits (default 22, fewer for very large cohorts).
    #[serde(default)]
    pub quant_bits: Option<u32>,
    /// Bounded contributions: agents scale their delta down to this L2 norm before quantizing, and the server
    /// refuses a round whose mean lies outside that ball (default: none; `[privacy]` sets its own).
    #[serde(default)]
    pub clip_norm: Option<f32>,
    /// An agent's weight is min(examples, weight_cap) / weight_cap. Default: the largest example count declared in
    /// the round's cohort (capped by `max_examples`), so that the secure mean weighs agents as the plain mean does.
    #[serde(default)]
    pub weight_cap: Option<u64>,
    /// Deadline of each key-exchange phase (advertise keys, share keys) and of the unmask phase, in milliseconds.
    /// The masked-input phase ends at the round's deadline (`round_timeout_ms` after the plans go out).
    #[serde(default = "default_phase_timeout")]
    pub phase_timeout_ms: u64,
    /// Threads that remove the masks at the end of a round (default: one per core of the server).
    #[serde(default)]
    pub unmask_threads: Option<usize>,
    /// Rounds that an agent is left out of cohorts after a round left it out because its neighbours could not use
    /// the shares it sent them (default 10; 0 never leaves it out of later rounds). Its connection stays open:
    /// revoking it is the operator's call.
    #[serde(default = "default_quarantine_rounds")]
    pub quarantine_rounds: u64,
}

fn yes() -> bool {
    true
}
fn default_phase_timeout() -> u64 {
    30_000
}
fn default_quarantine_rounds() -> u64 {
    10
}

impl Default for SecAggConfig {
    fn default() -> Self {
        SecAggConfig {
            enabled: true,
            neighbours: None,
            threshold: None,
            clip: None,
            quant_bits: None,
            clip_norm: None,
            weight_cap: None,
            phase_timeout_ms: default_phase_timeout(),
            unmask_threads: None,
            quarantine_rounds: default_quarantine_rounds(),
        }
    }
}

impl SecAggConfig {
    /// Plain rounds (secure aggregation off).
    pub fn off() -> Self {
        SecAggConfig { enabled: false, ..SecAggConfig::default() }
    }

    /// The parameters of a round with `cohort` agents: the defaults for that size, with every configured key in
    /// force. A configured `neighbours` without a `threshold` gets the default threshold for that degree.
    pub fn params_for(&self, cohort: usize) -> SecAggParams {
        let mut p = SecAggParams::default_for(cohort);
        if let Some(k) = self.neighbours {
            p.neighbours = k;
            let k_eff = p.effective_neighbours(cohort) as u32;
            p.threshold = (k_eff / 2 + 1 + k_eff / 6).min(k_eff);
        }
        if let Some(t) = self.threshold {
            p.threshold = t;
        }
        if let Some(c) = self.clip {
            p.clip = c;
        }
        if let Some(b) = self.quant_bits {
            p.quant_bits = b;
        }
        if let Some(w) = self.weight_cap {
            p.weight_cap = w;
        }
        p.clip_norm = self.clip_norm;
        p
    }

    /// Refuses, naming the key, settings that would void privacy or overflow the modulus for any cohort size the
    /// coordinator may select (`min_agents..=max_agents`), and a cohort that cannot hide anyone (fewer than 2).
    pub fn validate(&self, min_agents: usize, max_agents: usize) -> Result<(), ConfigError> {
        if !self.enabled {
            return Ok(());
        }
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.phase_timeout_ms == 0 {
            return bad("secagg.phase_timeout_ms must be positive".into());
        }
        if self.unmask_threads == Some(0) {
            return bad("secagg.unmask_threads must be at least 1 (or left out: one per core)".into());
        }
        if min_agents < 2 {
            return bad(format!(
                "secagg needs min_agents of at least 2 (a cohort of {min_agents} cannot hide anyone's update); \
                 raise min_agents or set secagg.enabled = false"
            ));
        }
        if max_agents > crate::coordinator::secure::MAX_SECURE_COHORT {
            return bad(format!(
                "secagg supports cohorts of at most {} agents; max_agents is {max_agents}",
                crate::coordinator::secure::MAX_SECURE_COHORT
            ));
        }
        // Every size in between is checked: the parity and threshold rules depend on it.
        for n in min_agents..=max_agents {
            let p = self.params_for(n);
            if let Err(e) = p.validate(n, 1) {
                return bad(format!("secagg.{}: {e} (cohort of {n} agents)", self.culprit(n)));
            }
        }
        Ok(())
    }

    /// The configured key whose removal makes a cohort of `n` valid (the one to name in an error).
    fn culprit(&self, n: usize) -> &'static str {
        let ok = |c: SecAggConfig| c.params_for(n).validate(n, 1).is_ok();
        let keys: [(&'static str, bool, SecAggConfig); 6] = [
            ("threshold", self.threshold.is_some(), SecAggConfig { threshold: None, ..self.clone() }),
            ("neighbours", self.neighbours.is_some(), SecAggConfig { neighbours: None, ..self.clone() }),
            ("quant_bits", self.quant_bits.is_some(), SecAggConfig { quant_bits: None, ..self.clone() }),
            ("clip", self.clip.is_some(), SecAggConfig { clip: None, ..self.clone() }),
            ("weight_cap", self.weight_cap.is_some(), SecAggConfig { weight_cap: None, ..self.clone() }),
            ("clip_norm", self.clip_norm.is_some(), SecAggConfig { clip_norm: None, ..self.clone() }),
        ];
        keys.into_iter().find(|(_, set, c)| *set && ok(c.clone())).map_or("parameters", |(k, _, _)| k)
    }
}

/// Refuses a strategy that needs each agent's update when rounds are secure: secure aggregation exists so that the
/// server never sees one.
pub(super) fn check_secure_strategy(strategy: &dyn crate::strategy::Strategy) -> Result<(), ConfigError> {
    if strategy.input() == crate::strategy::Input::EachUpdate {
        return Err(ConfigError::Invalid(format!(
            "the strategy {} needs each agent's update, which secure aggregation hides from the server: turn [secagg] \
             off to use it (robust aggregation defends against poisoned updates in plain rounds), or choose fedavg, \
             fedprox, fedavgm, fedadam, fedyogi or fedadagrad",
            strategy.name()
        )));
    }
    Ok(())
}
