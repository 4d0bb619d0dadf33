//! Learning-rate schedules: the factor the base learning rate is multiplied by at each step of a run.
//!
//! A schedule is a pure function of (step, total steps): a linear warm-up from `1/warmup` to 1 over the first
//! `warmup_steps` steps, then constant, cosine decay to `min_factor` (Loshchilov & Hutter 2017, without restarts),
//! or step decay by `gamma` every `every_steps` steps. Steps count from 0 over the whole run (all epochs). This
//! module must never read a clock or keep state: the caller passes the step.

use serde::{Deserialize, Serialize};

/// How the learning rate changes over a run (travels in the training configuration).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub enum LrSchedule {
    /// The base rate at every step.
    #[default]
    Constant,
    /// Linear warm-up over `warmup_steps`, then the base rate.
    Warmup { warmup_steps: u64 },
    /// Linear warm-up over `warmup_steps`, then a half cosine from the base rate down to `min_factor` times it at the
    /// end of the run.
    Cosine { warmup_steps: u64, min_factor: f32 },
    /// Linear warm-up over `warmup_steps`, then the base rate times `gamma^k` after `k * every_steps` steps.
    Step { warmup_steps: u64, every_steps: u64, gamma: f32 },
}

/// A schedule whose parameters are out of range.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("learning-rate schedule: {0}")]
pub struct ScheduleError(pub String);

impl LrSchedule {
    /// Checks the parameters: factors in `[0, 1]`, a positive step period.
    pub fn validate(&self) -> Result<(), ScheduleError> {
        match *self {
            LrSchedule::Constant | LrSchedule::Warmup { .. } => Ok(()),
            LrSchedule::Cosine { min_factor, .. } => {
                if (0.0..=1.0).contains(&min_factor) {
                    Ok(())
                } else {
                    Err(ScheduleError(format!("min_factor {min_factor} is not in [0, 1]")))
                }
            }
            LrSchedule::Step { every_steps, gamma, .. } => {
                if every_steps == 0 {
                    return Err(ScheduleError("every_steps must be at least 1".into()));
                }
                if !(gamma > 0.0 && gamma <= 1.0) {
                    return Err(ScheduleError(format!("gamma {gamma} is not in (0, 1]")));
                }
                Ok(())
            }
        }
    }

    /// The factor of the base rate at step `step` (from 0) of a run of `total_steps` steps. Always in `(0, 1]`
    /// for a valid schedule with `min_factor > 0`; a cosine to 0 stays positive until the step after the last.
    pub fn factor(&self, step: u64, total_steps: u64) -> f32 {
        let warmup = match *self {
            LrSchedule::Constant => 0,
            LrSchedule::Warmup { warmup_steps }
            | LrSchedule::Cosine { warmup_steps, .. }
            | LrSchedule::Step { warmup_steps, .. } => warmup_steps,
        };
        if step < warmup {
            return (step + 1) as f32 / warmup as f32;
        }
        let after = step - warmup;
        match *self {
            LrSchedule::Constant | LrSchedule::Warmup { .. } => 1.0,
            LrSchedule::Cosine { min_factor, .. } => {
                let span = total_steps.saturating_sub(warmup).max(1);
                let progress = (after as f64 / span as f64).min(1.0);
                let cos = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
                (min_factor as f64 + (1.0 - min_factor as f64) * cos) as f32
            }
            LrSchedule::Step { every_steps, gamma, .. } => {
                let k = after / every_steps.max(1);
                gamma.powi(k.min(i32::MAX as u64) as i32)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_cosine_schedule_with_warmup_ramps_up_then_halves_at_mid_run_and_ends_near_its_floor() {
        let s = LrSchedule::Cosine { warmup_steps: 4, min_factor: 0.0 };
        let f: Vec<f32> = (0..14).map(|t| s.factor(t, 14)).collect();
        // Warm-up: 1/4, 2/4, 3/4, 4/4.
        for (t, want) in [(0, 0.25), (1, 0.5), (2, 0.75), (3, 1.0)] {
            assert!((f[t] - want).abs() < 1e-6, "step {t}: {}", f[t]);
        }
        // After warm-up: 10 cosine steps from 1 (step 4) through 0.5 (step 9) towards 0.
        assert!((f[4] - 1.0).abs() < 1e-6);
        assert!((f[9] - 0.5).abs() < 1e-6, "{}", f[9]);
        let last = 0.5 * (1.0 + (std::f32::consts::PI * 0.9).cos());
        assert!((f[13] - last).abs() < 1e-6 && f[13] > 0.0, "{}", f[13]);
        assert!(f[4..].windows(2).all(|w| w[1] < w[0]), "{f:?}");
    }

    #[test]
    fn a_step_schedule_multiplies_by_gamma_every_period_after_the_warmup() {
        let s = LrSchedule::Step { warmup_steps: 2, every_steps: 3, gamma: 0.1 };
        let f: Vec<f32> = (0..10).map(|t| s.factor(t, 10)).collect();
        let want = [0.5, 1.0, 1.0, 1.0, 1.0, 0.1, 0.1, 0.1, 0.01, 0.01];
        for (t, (&got, &want)) in f.iter().zip(&want).enumerate() {
            assert!((got - want).abs() < 1e-6, "step {t}: {got} vs {want}");
        }
    }

    #[test]
    fn the_constant_schedule_is_one_and_warmup_alone_reaches_one() {
        assert!((0..100).all(|t| LrSchedule::Constant.factor(t, 100) == 1.0));
        let w = LrSchedule::Warmup { warmup_steps: 10 };
        assert!((w.factor(4, 100) - 0.5).abs() < 1e-6);
        assert!((10..100).all(|t| w.factor(t, 100) == 1.0));
    }

    #[test]
    fn out_of_range_parameters_are_refused() {
        assert!(LrSchedule::Cosine { warmup_steps: 0, min_factor: 1.5 }.validate().is_err());
        assert!(LrSchedule::Cosine { warmup_steps: 0, min_factor: f32::NAN }.validate().is_err());
        assert!(LrSchedule::Step { warmup_steps: 0, every_steps: 0, gamma: 0.5 }.validate().is_err());
        assert!(LrSchedule::Step { warmup_steps: 0, every_steps: 5, gamma: 0.0 }.validate().is_err());
        assert!(LrSchedule::Cosine { warmup_steps: 3, min_factor: 0.01 }.validate().is_ok());
    }

    proptest! {
        #[test]
        fn cosine_factors_stay_between_the_floor_and_one_and_never_rise_after_warmup(
            warmup in 0u64..50, total in 1u64..500, min in 0.0f32..1.0,
        ) {
            let s = LrSchedule::Cosine { warmup_steps: warmup, min_factor: min };
            let f: Vec<f32> = (0..total + 5).map(|t| s.factor(t, total)).collect();
            for (t, &x) in f.iter().enumerate() {
                // The warm-up climbs from 1/warmup; after it the factor stays within [floor, 1].
                let floor = if (t as u64) < warmup { 0.0 } else { min - 1e-6 };
                prop_assert!(x > 0.0 || (t as u64 >= warmup && min == 0.0), "step {}: {}", t, x);
                prop_assert!(x >= floor && x <= 1.0 + 1e-6, "step {}: {}", t, x);
            }
            let start = warmup as usize;
            for w in f.get(start..).unwrap_or(&[]).windows(2) {
                prop_assert!(w[1] <= w[0] + 1e-6);
            }
        }
    }
}
