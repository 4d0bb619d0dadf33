//! Coordinate-wise median (Yin et al. 2018, "Byzantine-Robust Distributed Learning: Towards Optimal Statistical
//! Rates"): each coordinate of the new model moves by the median of the agents' deltas for it, `x ← x + med(Δᵢ)`.
//!
//! Robust to fewer than half of the updates being arbitrary: a poisoned delta, however large, moves a coordinate's
//! median at most to the next honest value. The updates are not weighted by their example counts, which are the
//! agents' own claims. Needs each update, so plain rounds only (refused with secure aggregation); O(n · P) time.

use super::{Input, RoundUpdates, Strategy, StrategyError, apply};

/// Coordinate-wise median of the round's deltas.
#[derive(Debug, Clone, Copy, Default)]
pub struct Median;

impl Strategy for Median {
    fn name(&self) -> &'static str {
        "median"
    }
    fn input(&self) -> Input {
        Input::EachUpdate
    }
    fn aggregate(&mut self, global: &[f32], updates: RoundUpdates<'_>, _round: u64) -> Result<Vec<f32>, StrategyError> {
        let each = updates.each(self.name(), global.len())?;
        apply::add(global, &apply::per_coordinate(self.name(), each, global.len(), median)?)
    }
}

/// The median of a non-empty slice (the mean of the two middle values for an even length); reorders the slice.
pub(super) fn median(values: &mut [f32]) -> f32 {
    let n = values.len();
    let mid = n / 2;
    let (below, upper, _) = values.select_nth_unstable_by(mid, f32::total_cmp);
    let upper = *upper;
    if n % 2 == 1 {
        return upper;
    }
    let lower = below.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    // The mean of two finite f32 values, without overflow.
    lower / 2.0 + upper / 2.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_median_of_odd_and_even_lengths() {
        assert_eq!(median(&mut [3.0, -1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&mut [7.0]), 7.0);
        assert_eq!(median(&mut [f32::MAX, f32::MAX]), f32::MAX);
    }
}
