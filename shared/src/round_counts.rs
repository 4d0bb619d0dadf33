//! The exact counts a secure round carries under the masks, after the weight: the federated evaluation's three
//! ([`crate::fedeval`]) and the training metadata, the examples an agent trained on and the sum of its training
//! losses over them. The server learns only the survivors' totals, never one agent's example count or loss.
//!
//! Layout of the [`SECURE_COUNTS`] coordinates: `[eval correct, eval examples, eval loss units, train examples,
//! train loss units]`, loss in fixed point ([`LOSS_UNITS`] per unit). Values that would exceed the cohort's
//! per-agent limit are scaled down (the evaluation's three by one factor, the training pair by another), which keeps
//! accuracy and mean losses.
//!
//! Plain data and arithmetic: no I/O. This module must never put anything here that is not summed under masks.

use crate::fedeval::{EVAL_COUNTS, EvalCounts, LOSS_UNITS};

/// How many exact counts a secure round's masked vector carries (without differential privacy; a private round
/// carries none, since the counts are not noised).
pub const SECURE_COUNTS: u32 = EVAL_COUNTS + 2;

/// The survivors' training totals of a secure round.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrainTotals {
    /// Examples trained on.
    pub examples: u64,
    /// Sum over those examples of the training loss.
    pub loss_sum: f64,
}

impl TrainTotals {
    /// The example-weighted mean training loss, `None` without examples.
    pub fn mean_loss(&self) -> Option<f64> {
        (self.examples > 0).then(|| self.loss_sum / self.examples as f64)
    }
}

/// One agent's counts: its evaluation (zeros without one) and its training examples and mean loss, each at most
/// `limit`. A non-finite or negative loss counts as no training metadata (zeros).
pub fn coords(eval: Option<&EvalCounts>, examples: u64, train_loss: f32, limit: u32) -> Vec<u32> {
    let mut out = eval.map_or([0; 3], |e| e.to_coords(limit)).to_vec();
    let loss = f64::from(train_loss);
    if examples == 0 || !loss.is_finite() || loss < 0.0 {
        out.extend([0, 0]);
        return out;
    }
    let units = (examples as f64 * loss * LOSS_UNITS).round();
    let largest = (examples as f64).max(units);
    let scale = if largest > f64::from(limit) { f64::from(limit) / largest } else { 1.0 };
    let fit = |v: f64| (v * scale).floor().clamp(0.0, f64::from(limit)) as u32;
    out.extend([fit(examples as f64), fit(units)]);
    out
}

/// The totals in a secure round's summed counts: the evaluation (when there are [`EVAL_COUNTS`] or more) and the
/// training totals (when there are [`SECURE_COUNTS`]).
pub fn totals(sum: &[u64]) -> (Option<EvalCounts>, Option<TrainTotals>) {
    let eval = sum.get(..EVAL_COUNTS as usize).and_then(EvalCounts::from_coords);
    let train = match sum.get(EVAL_COUNTS as usize..) {
        Some([examples, units]) => Some(TrainTotals { examples: *examples, loss_sum: *units as f64 / LOSS_UNITS }),
        _ => None,
    };
    (eval, train)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_totals_of_the_agents_counts_are_their_examples_and_loss_sums() {
        let a = coords(Some(&EvalCounts { correct: 3, examples: 4, loss_sum: 2.0 }), 100, 0.5, 1 << 20);
        let b = coords(None, 300, 1.5, 1 << 20);
        assert_eq!(a.len(), SECURE_COUNTS as usize);
        let sum: Vec<u64> = a.iter().zip(&b).map(|(x, y)| u64::from(*x) + u64::from(*y)).collect();
        let (eval, train) = totals(&sum);
        assert_eq!(eval, Some(EvalCounts { correct: 3, examples: 4, loss_sum: 2.0 }));
        let train = train.unwrap();
        assert_eq!(train.examples, 400);
        assert!((train.loss_sum - (50.0 + 450.0)).abs() < 1e-9);
        assert!((train.mean_loss().unwrap() - 1.25).abs() < 1e-12);
    }

    #[test]
    fn counts_beyond_the_limit_are_scaled_down_keeping_the_mean_loss() {
        let c = coords(None, 10_000, 2.0, 100_000);
        assert!(c.iter().all(|&v| v <= 100_000), "{c:?}");
        let (_, train) = totals(&c.iter().map(|&v| u64::from(v)).collect::<Vec<_>>());
        assert!((train.unwrap().mean_loss().unwrap() - 2.0).abs() < 0.01);
    }

    #[test]
    fn a_loss_that_is_not_a_finite_non_negative_number_sends_no_training_metadata() {
        for loss in [f32::NAN, f32::INFINITY, -1.0] {
            assert_eq!(coords(None, 10, loss, 1000)[3..], [0, 0]);
        }
        assert_eq!(totals(&[1, 2, 3]).1, None, "a round with only the evaluation's counts has no training totals");
    }
}
