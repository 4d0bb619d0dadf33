//! The `[privacy]` settings of a run and the check that refuses, by name, settings that give no privacy.
//!
//! This module only judges numbers; it must never pick a default that weakens privacy (a missing or refused
//! setting is an error for the caller to report, not something to replace).

use serde::{Deserialize, Serialize};

use super::PrivacyError;

/// The largest `delta` ever accepted, whatever the number of agents.
pub const MAX_DELTA: f64 = 1e-2;

/// The largest `target_epsilon` accepted: beyond it the likelihood ratio e^ε bounds nothing an attacker cares
/// about, so such a budget only pretends to give privacy.
pub const MAX_TARGET_EPSILON: f64 = 100.0;

/// The differential-privacy settings of a run.
///
/// Unknown fields are refused when deserializing, so a misspelt setting is an error rather than a default.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrivacySettings {
    /// Standard deviation of the total noise in the sum over the L2 clipping norm (z). Each of n agents adds
    /// `z² · Δ₂² / n` variance in the integer domain.
    pub noise_multiplier: f64,
    /// The L2 norm each agent's update is clipped to before quantization (real units).
    pub clip_norm: f64,
    /// δ of the (ε, δ) guarantee over the whole run.
    pub delta: f64,
    /// The ε budget of the whole run; rounds are refused once the next one would exceed it.
    pub target_epsilon: f64,
}

fn refuse(name: &'static str, value: f64, reason: &'static str) -> PrivacyError {
    PrivacyError::Setting { name, value, reason }
}

impl PrivacySettings {
    /// Checks the settings for a federation of `agents` agents (the number of agents whose data the run
    /// protects, at least the cohort size). Refuses, naming the setting:
    /// - any non-finite value;
    /// - `noise_multiplier` ≤ 0 (no noise);
    /// - `clip_norm` ≤ 0 (nothing would be learned, and the sensitivity analysis assumes a positive bound);
    /// - `delta` ≤ 0, ≥ 1/agents (a mechanism that publishes one agent's data outright satisfies it) or ≥ 1e-2;
    /// - `target_epsilon` ≤ 0 or > [`MAX_TARGET_EPSILON`].
    pub fn validate(&self, agents: u64) -> Result<(), PrivacyError> {
        let finite =
            |name, v: f64| if v.is_finite() { Ok(()) } else { Err(refuse(name, v, "must be a finite number")) };
        finite("noise_multiplier", self.noise_multiplier)?;
        finite("clip_norm", self.clip_norm)?;
        finite("delta", self.delta)?;
        finite("target_epsilon", self.target_epsilon)?;
        if self.noise_multiplier <= 0.0 {
            return Err(refuse(
                "noise_multiplier",
                self.noise_multiplier,
                "must be > 0: without noise there is no privacy",
            ));
        }
        if self.clip_norm <= 0.0 {
            return Err(refuse("clip_norm", self.clip_norm, "must be > 0"));
        }
        if self.delta <= 0.0 {
            return Err(refuse("delta", self.delta, "must be > 0 (the accountant gives (ε, δ) guarantees with δ > 0)"));
        }
        if self.delta >= MAX_DELTA {
            return Err(refuse("delta", self.delta, "must be < 1e-2"));
        }
        if agents == 0 {
            return Err(refuse("delta", self.delta, "cannot be checked against a federation of 0 agents"));
        }
        if self.delta >= 1.0 / agents as f64 {
            return Err(refuse(
                "delta",
                self.delta,
                "must be < 1/(number of agents): otherwise publishing one agent's update outright satisfies it",
            ));
        }
        if self.target_epsilon <= 0.0 {
            return Err(refuse("target_epsilon", self.target_epsilon, "must be > 0"));
        }
        if self.target_epsilon > MAX_TARGET_EPSILON {
            return Err(refuse("target_epsilon", self.target_epsilon, "must be ≤ 100: a larger ε bounds nothing"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: PrivacySettings =
        PrivacySettings { noise_multiplier: 1.0, clip_norm: 1.0, delta: 1e-5, target_epsilon: 8.0 };

    fn refused_name(settings: PrivacySettings, agents: u64) -> Option<&'static str> {
        match settings.validate(agents) {
            Err(PrivacyError::Setting { name, .. }) => Some(name),
            Err(other) => panic!("unexpected error {other:?}"),
            Ok(()) => None,
        }
    }

    #[test]
    fn sensible_settings_pass() {
        assert_eq!(GOOD.validate(100), Ok(()));
        assert_eq!(PrivacySettings { delta: 9.9e-3, ..GOOD }.validate(100), Ok(()));
    }

    #[test]
    fn settings_that_give_no_privacy_are_refused_by_name() {
        let cases = [
            (PrivacySettings { noise_multiplier: 0.0, ..GOOD }, 100, "noise_multiplier"),
            (PrivacySettings { noise_multiplier: -1.0, ..GOOD }, 100, "noise_multiplier"),
            (PrivacySettings { noise_multiplier: f64::NAN, ..GOOD }, 100, "noise_multiplier"),
            (PrivacySettings { noise_multiplier: f64::INFINITY, ..GOOD }, 100, "noise_multiplier"),
            (PrivacySettings { clip_norm: 0.0, ..GOOD }, 100, "clip_norm"),
            (PrivacySettings { clip_norm: f64::NAN, ..GOOD }, 100, "clip_norm"),
            (PrivacySettings { delta: 0.0, ..GOOD }, 100, "delta"),
            (PrivacySettings { delta: 1e-2, ..GOOD }, 10, "delta"),
            (PrivacySettings { delta: 0.5, ..GOOD }, 1, "delta"),
            (PrivacySettings { delta: 1e-3, ..GOOD }, 1_000, "delta"),
            (PrivacySettings { delta: 1e-5, ..GOOD }, 0, "delta"),
            (PrivacySettings { delta: f64::NAN, ..GOOD }, 100, "delta"),
            (PrivacySettings { target_epsilon: 0.0, ..GOOD }, 100, "target_epsilon"),
            (PrivacySettings { target_epsilon: -3.0, ..GOOD }, 100, "target_epsilon"),
            (PrivacySettings { target_epsilon: f64::INFINITY, ..GOOD }, 100, "target_epsilon"),
            (PrivacySettings { target_epsilon: 1e3, ..GOOD }, 100, "target_epsilon"),
        ];
        for (settings, agents, name) in cases {
            assert_eq!(refused_name(settings, agents), Some(name), "{settings:?} with {agents} agents");
        }
    }

    #[test]
    fn a_misspelt_setting_is_refused_when_reading_the_configuration() {
        let good = r#"{"noise_multiplier": 1.1, "clip_norm": 0.5, "delta": 1e-5, "target_epsilon": 8.0}"#;
        let parsed: Result<PrivacySettings, _> = serde_json::from_str(good);
        assert_eq!(parsed.ok(), Some(PrivacySettings { noise_multiplier: 1.1, clip_norm: 0.5, ..GOOD }));
        let misspelt = r#"{"noise_multipler": 1.1, "clip_norm": 0.5, "delta": 1e-5, "target_epsilon": 8.0}"#;
        let error = serde_json::from_str::<PrivacySettings>(misspelt).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(error.contains("noise_multipler"), "{error}");
    }

    #[test]
    fn the_refusal_message_names_the_setting_and_value() {
        let err = PrivacySettings { noise_multiplier: 0.0, ..GOOD }.validate(100).err().map(|e| e.to_string());
        let message = err.unwrap_or_default();
        assert!(message.contains("noise_multiplier") && message.contains('0'), "{message}");
    }
}
