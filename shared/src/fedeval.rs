//! Federated evaluation: each agent of a round evaluates the model it starts from (the current global version) on
//! its held-out examples and reports three counts — examples answered correctly, examples, and the sum of their
//! losses — which the server adds up into the federation's accuracy and loss of that version.
//!
//! In a plain round the counts travel with each update ([`crate::protocol::BlobKind::Update`]) and are recorded
//! per agent. In a secure round they are [`EVAL_COUNTS`] extra coordinates of the masked vector
//! ([`crate::secagg::SecAggParams::counts`]), summed exactly under the masks: the server learns only the totals.
//! The loss sum travels in fixed point ([`LOSS_UNITS`] per unit of loss); an agent whose counts would exceed the
//! per-agent limit of the cohort scales all three down by the same factor (accuracy and mean loss are kept).
//!
//! Plain data and arithmetic: this module never evaluates a model and never does I/O.

use serde::{Deserialize, Serialize};

/// How many coordinates the counts take in a secure round's masked vector.
pub const EVAL_COUNTS: u32 = 3;
/// Fixed-point units of loss per unit of loss (milli-units).
pub const LOSS_UNITS: f64 = 1000.0;

/// One agent's (or a sum of agents') evaluation of one model version.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct EvalCounts {
    /// Examples whose predicted class is the label.
    pub correct: u64,
    /// Examples evaluated.
    pub examples: u64,
    /// Sum of the examples' losses (cross-entropy).
    pub loss_sum: f64,
}

impl EvalCounts {
    /// `correct / examples`, or `None` without examples.
    pub fn accuracy(&self) -> Option<f64> {
        (self.examples > 0).then(|| self.correct as f64 / self.examples as f64)
    }

    /// `loss_sum / examples`, or `None` without examples.
    pub fn mean_loss(&self) -> Option<f64> {
        (self.examples > 0).then(|| self.loss_sum / self.examples as f64)
    }

    /// Whether these counts can be true: at most as many correct as examples, a finite non-negative loss sum.
    pub fn is_plausible(&self) -> bool {
        self.correct <= self.examples && self.loss_sum.is_finite() && self.loss_sum >= 0.0
    }

    /// Adds `other` in.
    pub fn add(&mut self, other: &EvalCounts) {
        self.correct = self.correct.saturating_add(other.correct);
        self.examples = self.examples.saturating_add(other.examples);
        self.loss_sum += other.loss_sum;
    }

    /// The three coordinates `[correct, examples, loss units]` of a secure round's masked vector, each at most
    /// `limit`: counts that would exceed it are all scaled down by one factor. Implausible counts give zeros.
    pub fn to_coords(&self, limit: u32) -> [u32; 3] {
        if !self.is_plausible() || self.examples == 0 {
            return [0; 3];
        }
        let units = (self.loss_sum * LOSS_UNITS).round();
        let largest = (self.examples as f64).max(units);
        let scale = if largest > f64::from(limit) { f64::from(limit) / largest } else { 1.0 };
        let fit = |v: f64| (v * scale).floor().clamp(0.0, f64::from(limit)) as u32;
        if scale == 1.0 {
            // Exact: no rounding of the integer counts.
            let exact = |v: u64| u32::try_from(v).unwrap_or(limit).min(limit);
            return [exact(self.correct), exact(self.examples), fit(units)];
        }
        [fit(self.correct as f64), fit(self.examples as f64), fit(units)]
    }

    /// Counts from the summed coordinates of a secure round (`None` unless there are exactly three).
    pub fn from_coords(sum: &[u64]) -> Option<EvalCounts> {
        match sum {
            [correct, examples, units] => {
                Some(EvalCounts { correct: *correct, examples: *examples, loss_sum: *units as f64 / LOSS_UNITS })
            }
            _ => None,
        }
    }
}

/// The federation's evaluation of one model version, as a round's record keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct FederatedEval {
    /// The model version evaluated: the version the round started from.
    pub model_version: u64,
    /// Agents whose counts are in the totals (in a secure round, the survivors).
    pub agents: usize,
    /// The totals.
    pub counts: EvalCounts,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accuracy_and_mean_loss_come_from_the_totals() {
        let mut t = EvalCounts::default();
        assert_eq!(t.accuracy(), None);
        t.add(&EvalCounts { correct: 3, examples: 4, loss_sum: 2.0 });
        t.add(&EvalCounts { correct: 1, examples: 4, loss_sum: 6.0 });
        assert_eq!((t.accuracy(), t.mean_loss()), (Some(0.5), Some(1.0)));
        assert!(!EvalCounts { correct: 5, examples: 4, loss_sum: 0.0 }.is_plausible());
        assert_eq!(EvalCounts { correct: 5, examples: 4, loss_sum: 0.0 }.to_coords(100), [0; 3]);
    }

    #[test]
    fn counts_over_the_limit_are_scaled_down_together() {
        let c = EvalCounts { correct: 500, examples: 1000, loss_sum: 10.0 };
        assert_eq!(c.to_coords(u32::MAX), [500, 1000, 10_000]);
        let [correct, examples, units] = c.to_coords(1000);
        assert_eq!((correct, examples, units), (50, 100, 1000));
    }

    proptest! {
        #[test]
        fn coordinates_within_the_limit_read_back_exactly(
            examples in 1u64..100_000, frac in 0.0f64..=1.0, loss in 0u32..5_000_000
        ) {
            let correct = (examples as f64 * frac).floor() as u64;
            let c = EvalCounts { correct, examples, loss_sum: f64::from(loss) / LOSS_UNITS };
            let coords = c.to_coords(u32::MAX / 100);
            let back = EvalCounts::from_coords(&coords.map(u64::from)).unwrap();
            prop_assert_eq!((back.correct, back.examples), (correct, examples));
            prop_assert!((back.loss_sum - c.loss_sum).abs() < 1e-9);
        }
    }
}
