//! What an agent requires of a secure round before it advertises anything: a cohort large enough and a threshold
//! high enough, whatever the server proposes.
//!
//! Why the agent decides this and not the server: SecAgg+ hides one input while fewer than `t` of the agent's
//! neighbours collude with the server, and the sum of a small cohort says much about each member. The server picks
//! the cohort, `t` and the neighbour graph's seed. A server that also controls `c` enrolled devices could propose a
//! cohort of the victim and its own devices, or (with `c ≥ t`) search for a graph seed that gives the victim `t`
//! colluding neighbours. A seed that no single party chooses (a hash over the round's advertisements) does not stop
//! that: the server's devices can advertise fresh keys until the hash suits them. A floor does: with
//! `min_threshold > c` no graph gives the victim `t` colluders, and with `min_cohort` the sum covers at least that
//! many agents. The operator sets them in agent.toml from the number of devices it fears compromised.
//!
//! This module only compares numbers; it never weakens a round, and a floor of zero requires nothing.

use serde::{Deserialize, Serialize};

use super::{SecAggError, SecAggParams};

/// An agent's floor for the secure rounds it takes part in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoundFloor {
    /// Refuse a round whose cohort has fewer agents than this.
    pub min_cohort: usize,
    /// Refuse a round whose threshold `t` is below this: with it set above the number of colluding devices, no
    /// neighbour graph the server chooses holds `t` of them around this agent.
    pub min_threshold: u32,
}

impl RoundFloor {
    /// Checks a round's parameters and cohort size against the floor, naming the setting that refuses it.
    pub fn check(&self, params: &SecAggParams, cohort: usize) -> Result<(), SecAggError> {
        if cohort < self.min_cohort {
            return Err(SecAggError::BelowFloor(format!(
                "a cohort of {cohort} agents, this agent requires at least {} (secagg.min_cohort)",
                self.min_cohort
            )));
        }
        if params.threshold < self.min_threshold {
            return Err(SecAggError::BelowFloor(format!(
                "threshold {} of {} neighbours, this agent requires at least {} (secagg.min_threshold)",
                params.threshold,
                params.effective_neighbours(cohort),
                self.min_threshold
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_round_below_either_floor_is_refused_naming_the_setting_and_one_at_the_floor_passes() {
        let params = SecAggParams::new(10, 6, 1.0, 16, 10);
        let floor = RoundFloor { min_cohort: 20, min_threshold: 6 };
        assert!(floor.check(&params, 20).is_ok());
        let small = floor.check(&params, 19).unwrap_err();
        assert!(matches!(&small, SecAggError::BelowFloor(m) if m.contains("secagg.min_cohort")), "{small}");
        let strict = RoundFloor { min_threshold: 7, ..floor };
        let low = strict.check(&params, 20).unwrap_err();
        assert!(matches!(&low, SecAggError::BelowFloor(m) if m.contains("secagg.min_threshold")), "{low}");
        assert!(RoundFloor::default().check(&params, 2).is_ok(), "no floor requires nothing");
    }
}
