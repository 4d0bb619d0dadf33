//! Distributed differential privacy in the coordinator: how a secure round is set up so that the agents' noise
//! gives the configured guarantee, and the run's privacy budget.
//!
//! With `[privacy]`, every secure round:
//! - clips each agent's delta to `clip_norm` in L2 norm, and its coordinates to the same bound (the box then holds
//!   the ball, so no quantization range is wasted); every agent weighs 1 (a weight from the example count would be
//!   data the noise does not cover), and no exact counts ride in the masked vector (the federated evaluation's
//!   counts are not noised, so they are left out);
//! - quantizes as finely as the noise allows (the per-agent variance must stay within what the sampler takes and
//!   the noisy sum within the 2^32 modulus);
//! - has each agent add discrete Gaussian noise of variance `(z · Δ₂)² / n` to every coordinate, `Δ₂` the L2
//!   sensitivity of one agent's contribution in the integer domain (replacing one agent's delta by any other) and
//!   `n = min_agents`, the fewest survivors a secure round commits with: the sum carries at least the noise of
//!   the central Gaussian mechanism with multiplier `z`;
//! - is charged to the run's [`Accountant`] when it starts (every started round, completed or not, is counted), and
//!   refused before it starts when it would take the run's ε past `target_epsilon` at `delta`: the run stops.
//!
//! The budget is rebuilt on start-up from the stored round records ([`RoundPrivacy`] in each secure plan). A round
//! the server crashed in the middle of leaves no record and is not counted; its sum was never committed.
//!
//! This module only computes; it never reads a clock or the store.

use super::{ConfigError, Coordinator};
use fedge_shared::privacy::{Accountant, DdgRound, Mechanism, PrivacySettings, ddg_local_variance};
use fedge_shared::secagg::SecAggParams;
use serde::{Deserialize, Serialize};

/// The largest per-agent noise variance a round is set up with (the sampler takes up to 2^32).
const MAX_LOCAL_VARIANCE: f64 = (1u64 << 31) as f64;
/// The fewest quantization bits a private round uses.
const MIN_BITS: u32 = 4;

/// What one round's noisy sum costs, as stored in its plan.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RoundPrivacy {
    /// The mechanism the accountant charges.
    pub ddg: DdgRound,
    /// The run's δ.
    pub delta: f64,
    /// The run's ε at `delta` once this round is counted.
    pub epsilon: f64,
    /// The run's budget.
    pub target_epsilon: f64,
}

/// Why a private round cannot start.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PrivateRoundError {
    /// One more round would take the run past its budget: the run is over.
    #[error("{0}")]
    BudgetSpent(String),
    /// The round cannot be set up or accounted (it may be later, with another cohort).
    #[error("{0}")]
    Setup(String),
}

/// The run's privacy settings and what it has spent.
#[derive(Debug, Clone)]
pub struct RunPrivacy {
    settings: PrivacySettings,
    /// The survivors the noise is calibrated for (`min_agents`).
    agents: usize,
    accountant: Accountant,
}

impl RunPrivacy {
    /// The budget of a run with `settings` (validated for `agents`, the fewest survivors a round commits with)
    /// that already ran `spent` (from the stored records, oldest first).
    pub fn new(
        settings: PrivacySettings,
        agents: usize,
        spent: impl IntoIterator<Item = DdgRound>,
    ) -> Result<Self, String> {
        settings.validate(agents as u64).map_err(|e| format!("[privacy] {e}"))?;
        let mut accountant = Accountant::new();
        for ddg in spent {
            accountant
                .record_round(Mechanism::DistributedDiscreteGaussian(ddg))
                .map_err(|e| format!("a stored round's privacy cannot be accounted: {e}"))?;
        }
        Ok(RunPrivacy { settings, agents, accountant })
    }

    /// The settings in force.
    pub fn settings(&self) -> &PrivacySettings {
        &self.settings
    }

    /// Rounds charged so far.
    pub fn rounds(&self) -> u64 {
        self.accountant.rounds()
    }

    /// The run's ε at the configured δ so far.
    pub fn epsilon(&self) -> Result<f64, String> {
        self.accountant.epsilon(self.settings.delta).map_err(|e| e.to_string())
    }

    /// Sets up a secure round over `len` coordinates (see the module doc) in `params`, validated for a cohort of
    /// `cohort`, and returns what it costs; refuses when no quantization fits.
    pub fn configure(&self, params: &mut SecAggParams, cohort: usize, len: usize) -> Result<DdgRound, String> {
        let c = self.settings.clip_norm;
        params.clip_norm = Some(c as f32);
        params.clip = c as f32;
        params.weight_cap = 1;
        params.counts = 0;
        let d = len as u64;
        let mut bits = params.quant_bits;
        loop {
            params.quant_bits = bits;
            let (l2, l1) = params.integer_sensitivities(d).ok_or("the round has no L2 clip")?;
            let variance = ddg_local_variance(self.settings.noise_multiplier, l2, self.agents as u64).max(0.25);
            params.noise_variance = variance;
            if variance <= MAX_LOCAL_VARIANCE && params.validate(cohort, len).is_ok() {
                return Ok(DdgRound {
                    l2_sensitivity: l2,
                    l1_sensitivity: l1,
                    local_variance: variance,
                    agents: self.agents as u64,
                    dimension: d,
                });
            }
            if bits <= MIN_BITS {
                return Err(format!(
                    "no quantization of {MIN_BITS}..={} bits fits the noise of {cohort} agents in the 2^32 modulus",
                    params.quant_bits
                ));
            }
            bits -= 1;
        }
    }

    /// The round's cost as stored in its plan, or `Err` (with the reason, for the operator) when it would take the
    /// run past its budget.
    pub fn admit(&self, ddg: DdgRound) -> Result<RoundPrivacy, PrivateRoundError> {
        let next = Mechanism::DistributedDiscreteGaussian(ddg);
        let s = &self.settings;
        let epsilon =
            self.accountant.epsilon_after(&next, s.delta).map_err(|e| PrivateRoundError::Setup(e.to_string()))?;
        if epsilon > s.target_epsilon {
            let now = self.epsilon().unwrap_or(f64::NAN);
            return Err(PrivateRoundError::BudgetSpent(format!(
                "the privacy budget is spent: ε = {now:.4} after {} rounds, one more round would make it {epsilon:.4}, \
                 beyond target_epsilon = {} at δ = {}",
                self.rounds(),
                s.target_epsilon,
                s.delta
            )));
        }
        Ok(RoundPrivacy { ddg, delta: s.delta, epsilon, target_epsilon: s.target_epsilon })
    }

    /// Sets up a round ([`RunPrivacy::configure`]) and admits it ([`RunPrivacy::admit`]).
    pub fn plan_round(
        &self,
        params: &mut SecAggParams,
        cohort: usize,
        len: usize,
    ) -> Result<RoundPrivacy, PrivateRoundError> {
        let ddg = self.configure(params, cohort, len).map_err(PrivateRoundError::Setup)?;
        self.admit(ddg)
    }

    /// Charges a started round.
    pub fn charge(&mut self, round: &RoundPrivacy) -> Result<(), String> {
        self.accountant.record_round(Mechanism::DistributedDiscreteGaussian(round.ddg)).map_err(|e| e.to_string())
    }
}

impl Coordinator {
    /// Adds distributed differential privacy to every secure round (see the `privacy` module), with the budget
    /// `spent` by the rounds already run (from the stored records, oldest first). Refused without secure
    /// aggregation (one agent's noise alone, seen by the server, protects nothing) and with buffered rounds.
    pub fn with_privacy(
        mut self,
        settings: fedge_shared::privacy::PrivacySettings,
        spent: impl IntoIterator<Item = fedge_shared::privacy::DdgRound>,
    ) -> Result<Self, ConfigError> {
        if self.buffering.is_some() {
            return Err(ConfigError::Invalid(
                "[privacy] is not supported with [buffered]: a buffer's group is not charged to the budget".into(),
            ));
        }
        if !self.secagg.enabled {
            return Err(ConfigError::Invalid(
                "[privacy] needs secure aggregation: the server would see each agent's noise and could remove it"
                    .into(),
            ));
        }
        self.privacy = Some(RunPrivacy::new(settings, self.config.min_agents, spent).map_err(ConfigError::Invalid)?);
        Ok(self)
    }

    /// The run's differential privacy, if on: its settings and budget.
    pub fn privacy(&self) -> Option<&RunPrivacy> {
        self.privacy.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(target_epsilon: f64) -> PrivacySettings {
        PrivacySettings { noise_multiplier: 1.0, clip_norm: 1.0, delta: 1e-5, target_epsilon }
    }

    #[test]
    fn a_private_round_clips_weighs_one_carries_no_counts_and_noises_for_min_agents() {
        let run = RunPrivacy::new(settings(8.0), 10, []).unwrap();
        let mut params = SecAggParams { counts: 4, ..SecAggParams::default_for(20) };
        let ddg = run.configure(&mut params, 20, 100_000).unwrap();
        assert_eq!((params.clip_norm, params.clip, params.weight_cap, params.counts), (Some(1.0), 1.0, 1, 0));
        params.validate(20, 100_000).unwrap();
        assert!(params.noise_variance <= MAX_LOCAL_VARIANCE && params.noise_variance >= 0.25);
        // n agents' noise together is the central mechanism's: variance (z·Δ₂)² in the sum.
        let total = 10.0 * params.noise_variance;
        assert!((total.sqrt() / ddg.l2_sensitivity - 1.0).abs() < 1e-9, "{total} vs {}", ddg.l2_sensitivity);
        assert_eq!((ddg.agents, ddg.dimension), (10, 100_000));
    }

    #[test]
    fn rounds_are_admitted_until_the_next_would_pass_the_budget_and_the_budget_survives_a_restart() {
        let two = PrivacySettings { noise_multiplier: 2.0, ..settings(6.0) };
        let mut run = RunPrivacy::new(two, 10, []).unwrap();
        let mut params = SecAggParams::default_for(10);
        let ddg = run.configure(&mut params, 10, 1000).unwrap();
        let mut charged = Vec::new();
        let mut last = 0.0;
        while let Ok(r) = run.admit(ddg) {
            assert!(r.epsilon > last && r.epsilon <= 6.0);
            last = r.epsilon;
            run.charge(&r).unwrap();
            charged.push(r.ddg);
            assert!(charged.len() < 1000, "the budget never ran out");
        }
        assert!(!charged.is_empty());
        let err = run.admit(ddg).unwrap_err();
        assert!(
            matches!(&err, PrivateRoundError::BudgetSpent(why) if why.contains("privacy budget is spent")),
            "{err}"
        );
        assert!(charged.len() >= 2, "{} rounds", charged.len());
        let restarted = RunPrivacy::new(two, 10, charged.iter().copied()).unwrap();
        assert_eq!(restarted.rounds(), charged.len() as u64);
        assert!((restarted.epsilon().unwrap() - last).abs() < 1e-9);
        assert!(restarted.admit(ddg).is_err());
    }

    #[test]
    fn settings_that_give_no_privacy_are_refused() {
        let err = RunPrivacy::new(PrivacySettings { noise_multiplier: 0.0, ..settings(8.0) }, 10, []).unwrap_err();
        assert!(err.contains("noise_multiplier"), "{err}");
        let err = RunPrivacy::new(PrivacySettings { delta: 0.2, ..settings(8.0) }, 10, []).unwrap_err();
        assert!(err.contains("delta"), "{err}");
    }
}
