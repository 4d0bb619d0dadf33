//! The agent's own privacy budget. With `[privacy]` in agent.toml (`max_epsilon`, `delta`, `trusted_agents`), the
//! agent accounts every secure round it uploads to from what the round's plan says (the discrete Gaussian variance
//! each agent adds, the L2 clipping, the quantization, the model's length), assuming that only `trusted_agents`
//! survivors' noise is unknown to the server, and refuses a plan without noise or clipping, or one that would take
//! it past `max_epsilon` at `delta`. A server that ignores its own budget, or runs rounds without noise, is stopped
//! by the agents themselves.
//!
//! The rounds spent are kept in the state directory (`privacy.budget`), written before the masked vector leaves the
//! device, so a restart does not reset the budget. This module never lets a round through whose cost it cannot
//! compute.

use std::path::{Path, PathBuf};

use anyhow::Context;
use fedge_shared::privacy::{Accountant, DdgRound, Mechanism, settings::MAX_DELTA};
use fedge_shared::secagg::SecAggParams;
use serde::{Deserialize, Serialize};

/// The file the spent rounds are kept in, in the state directory.
pub const FILE: &str = "privacy.budget";

/// `[privacy]` in agent.toml.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentPrivacy {
    /// The ε this agent's data may spend over all the rounds it takes part in.
    pub max_epsilon: f64,
    /// The δ of that guarantee.
    pub delta: f64,
    /// How many survivors of a round this agent trusts not to collude with the server (their noise is what
    /// protects it); at least 1 (itself).
    pub trusted_agents: u64,
}

impl AgentPrivacy {
    /// Refuses settings that give no privacy or cannot be accounted, naming the key.
    pub fn validate(&self) -> anyhow::Result<()> {
        if !(self.max_epsilon.is_finite() && self.max_epsilon > 0.0) {
            anyhow::bail!("privacy.max_epsilon must be a positive number, not {}", self.max_epsilon);
        }
        if !(self.delta > 0.0 && self.delta < MAX_DELTA) {
            anyhow::bail!("privacy.delta must be in (0, {MAX_DELTA}), not {}", self.delta);
        }
        if self.trusted_agents == 0 {
            anyhow::bail!("privacy.trusted_agents must be at least 1 (this agent itself)");
        }
        Ok(())
    }
}

/// What this agent has spent, and where it keeps it.
#[derive(Debug)]
pub struct PrivacyBudget {
    settings: AgentPrivacy,
    accountant: Accountant,
    path: Option<PathBuf>,
}

impl PrivacyBudget {
    /// The budget of `settings`, with the rounds already spent from `state_dir` (none in memory only).
    pub fn open(settings: AgentPrivacy, state_dir: Option<&Path>) -> anyhow::Result<Self> {
        settings.validate()?;
        let path = state_dir.map(|d| d.join(FILE));
        let accountant = match &path {
            Some(p) => match std::fs::read(p) {
                Ok(bytes) => fedge_shared::codec::decode(&bytes, 1 << 20)
                    .with_context(|| format!("{}: the privacy budget spent so far is unreadable", p.display()))?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Accountant::new(),
                Err(e) => return Err(e).with_context(|| format!("reading {}", p.display())),
            },
            None => Accountant::new(),
        };
        Ok(PrivacyBudget { settings, accountant, path })
    }

    /// The ε spent so far.
    pub fn epsilon(&self) -> anyhow::Result<f64> {
        Ok(self.accountant.epsilon(self.settings.delta)?)
    }

    /// What a round with `params` over a model of `params_len` values costs this agent, refused when the plan has
    /// no noise or no L2 clipping (its cost is unbounded).
    pub fn round_cost(&self, params: &SecAggParams, params_len: usize) -> Result<DdgRound, String> {
        let d = params_len as u64;
        let Some((l2, l1)) = params.integer_sensitivities(d) else {
            return Err("the round clips no update in L2 norm: this agent's privacy budget cannot bound it".into());
        };
        if params.noise_variance <= 0.0 {
            return Err("the round adds no noise: this agent requires differential privacy ([privacy])".into());
        }
        Ok(DdgRound {
            l2_sensitivity: l2,
            l1_sensitivity: l1,
            local_variance: params.noise_variance,
            agents: self.settings.trusted_agents,
            dimension: d,
        })
    }

    /// The ε this agent will have spent after `round`, refused when it passes `max_epsilon`.
    pub fn admit(&self, round: &DdgRound) -> Result<f64, String> {
        let next = Mechanism::DistributedDiscreteGaussian(*round);
        let after = self.accountant.epsilon_after(&next, self.settings.delta).map_err(|e| e.to_string())?;
        if after > self.settings.max_epsilon {
            return Err(format!(
                "this agent's privacy budget is spent: the round would take it to ε = {after:.4}, beyond max_epsilon = {} \
                 at δ = {}",
                self.settings.max_epsilon, self.settings.delta
            ));
        }
        Ok(after)
    }

    /// Charges `round`, and writes what is spent to the state directory before returning.
    pub fn charge(&mut self, round: &DdgRound) -> anyhow::Result<()> {
        let charge = self.prepare(round)?;
        charge.write()?;
        self.commit(charge);
        Ok(())
    }

    /// What the budget will be once `round` is charged, refused past `max_epsilon`. Nothing is spent until the
    /// charge is written ([`Charge::write`], file I/O for a blocking thread) and committed.
    pub fn prepare(&self, round: &DdgRound) -> anyhow::Result<Charge> {
        self.admit(round).map_err(anyhow::Error::msg)?;
        let mut accountant = self.accountant.clone();
        accountant.record_round(Mechanism::DistributedDiscreteGaussian(*round))?;
        Ok(Charge { accountant, path: self.path.clone() })
    }

    /// Makes a written charge this budget's spending.
    pub fn commit(&mut self, charge: Charge) {
        self.accountant = charge.accountant;
    }
}

/// A round charged to a [`PrivacyBudget`] but not yet written down.
#[derive(Debug)]
pub struct Charge {
    accountant: Accountant,
    path: Option<PathBuf>,
}

impl Charge {
    /// Writes the spending, round included, to the state directory (atomically; nothing when the budget is kept
    /// in memory only).
    pub fn write(&self) -> anyhow::Result<()> {
        if let Some(p) = &self.path {
            let bytes = fedge_shared::codec::encode(&self.accountant)?;
            fedge_shared::tls::write_atomic(p, &bytes, 0o600)
                .with_context(|| format!("writing the privacy budget to {}", p.display()))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(max_epsilon: f64) -> AgentPrivacy {
        AgentPrivacy { max_epsilon, delta: 1e-5, trusted_agents: 10 }
    }

    fn private_params() -> SecAggParams {
        SecAggParams {
            clip_norm: Some(1.0),
            clip: 1.0,
            quant_bits: 16,
            // (z · Δ₂)² / n for z = 2 and n = 10, Δ₂ ≈ 2^16: the server's own calibration.
            noise_variance: (2.0f64 * 65_600.0).powi(2) / 10.0,
            ..SecAggParams::default_for(20)
        }
    }

    #[test]
    fn a_plan_without_noise_or_clipping_is_refused() {
        let budget = PrivacyBudget::open(settings(8.0), None).unwrap();
        let plain = SecAggParams::default_for(20);
        assert!(budget.round_cost(&plain, 1000).unwrap_err().contains("clips no update"));
        let unclipped_noise = SecAggParams { noise_variance: 0.0, ..private_params() };
        assert!(budget.round_cost(&unclipped_noise, 1000).unwrap_err().contains("no noise"));
        assert!(budget.round_cost(&private_params(), 1000).is_ok());
    }

    #[test]
    fn rounds_are_charged_until_the_budget_is_spent_and_the_spending_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let mut budget = PrivacyBudget::open(settings(6.0), Some(dir.path())).unwrap();
        let cost = budget.round_cost(&private_params(), 1000).unwrap();
        let mut charged = 0;
        while budget.admit(&cost).is_ok() {
            budget.charge(&cost).unwrap();
            charged += 1;
            assert!(charged < 1000, "the budget never ran out");
        }
        assert!(charged >= 1);
        let err = budget.admit(&cost).unwrap_err();
        assert!(err.contains("budget is spent"), "{err}");
        assert!(budget.charge(&cost).is_err(), "a charge past the budget is refused too");
        let reopened = PrivacyBudget::open(settings(6.0), Some(dir.path())).unwrap();
        assert_eq!(reopened.epsilon().unwrap(), budget.epsilon().unwrap());
        assert!(reopened.admit(&cost).is_err());
    }

    #[test]
    fn fewer_trusted_agents_make_the_same_round_cost_more() {
        let few = PrivacyBudget::open(AgentPrivacy { trusted_agents: 2, ..settings(50.0) }, None).unwrap();
        let many = PrivacyBudget::open(settings(50.0), None).unwrap();
        let (p, len) = (private_params(), 1000);
        let eps_few = few.admit(&few.round_cost(&p, len).unwrap()).unwrap();
        let eps_many = many.admit(&many.round_cost(&p, len).unwrap()).unwrap();
        assert!(eps_few > eps_many, "{eps_few} vs {eps_many}");
    }

    #[test]
    fn settings_that_give_no_privacy_are_refused_by_name() {
        for (bad, key) in [
            (AgentPrivacy { max_epsilon: 0.0, ..settings(1.0) }, "max_epsilon"),
            (AgentPrivacy { delta: 0.5, ..settings(1.0) }, "delta"),
            (AgentPrivacy { trusted_agents: 0, ..settings(1.0) }, "trusted_agents"),
        ] {
            let err = bad.validate().unwrap_err().to_string();
            assert!(err.contains(key), "{err}");
        }
    }
}
