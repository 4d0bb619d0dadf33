//! Coordinate-wise trimmed mean (Yin et al. 2018, "Byzantine-Robust Distributed Learning: Towards Optimal
//! Statistical Rates"): for each coordinate, the ⌊β·n⌋ largest and ⌊β·n⌋ smallest of the agents' deltas are
//! dropped and the rest averaged, `x ← x + trmean_β(Δᵢ)`.
//!
//! Robust to up to ⌊β·n⌋ arbitrary updates. The updates are not weighted by their example counts, which are the
//! agents' own claims. Needs each update, so plain rounds only (refused with secure aggregation); O(n log n · P)
//! time.

use super::{Input, RoundUpdates, Strategy, StrategyError, apply};

/// Coordinate-wise β-trimmed mean of the round's deltas, `0 ≤ β < 0.5`.
#[derive(Debug, Clone, Copy)]
pub struct TrimmedMean {
    /// The fraction of updates dropped at each end, per coordinate.
    pub beta: f32,
}

impl TrimmedMean {
    /// How many updates are dropped at each end out of `n`.
    pub fn trimmed(&self, n: usize) -> usize {
        ((f64::from(self.beta) * n as f64).floor() as usize).min(n.saturating_sub(1) / 2)
    }
}

impl Strategy for TrimmedMean {
    fn name(&self) -> &'static str {
        "trimmed_mean"
    }
    fn input(&self) -> Input {
        Input::EachUpdate
    }
    fn aggregate(&mut self, global: &[f32], updates: RoundUpdates<'_>, _round: u64) -> Result<Vec<f32>, StrategyError> {
        let each = updates.each(self.name(), global.len())?;
        let k = self.trimmed(each.len());
        let kept = each.len().saturating_sub(2 * k) as f64;
        let delta = apply::per_coordinate(self.name(), each, global.len(), |column| {
            column.sort_unstable_by(f32::total_cmp);
            (column[k..column.len() - k].iter().map(|&d| f64::from(d)).sum::<f64>() / kept) as f32
        })?;
        apply::add(global, &delta)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::strategy::ClientUpdate;

    #[test]
    fn the_extremes_of_each_coordinate_are_dropped_before_averaging() {
        let updates: Vec<ClientUpdate> = [[100.0, 1.0], [1.0, -50.0], [2.0, 2.0], [3.0, 3.0], [-90.0, 4.0]]
            .iter()
            .enumerate()
            .map(|(i, d)| ClientUpdate { agent: format!("a{i}"), examples: 1, delta: d.to_vec() })
            .collect();
        let mut s = TrimmedMean { beta: 0.2 };
        assert_eq!(s.trimmed(5), 1);
        // Coordinate 0: drop -90 and 100, mean of 1, 2, 3 = 2. Coordinate 1: drop -50 and 4, mean of 1, 2, 3 = 2.
        let new = s.aggregate(&[0.0, 10.0], RoundUpdates::Each(&updates), 1).unwrap();
        assert_eq!(new, vec![2.0, 12.0]);
    }

    #[test]
    fn at_least_one_update_is_always_kept() {
        let s = TrimmedMean { beta: 0.49 };
        assert_eq!(s.trimmed(2), 0);
        assert_eq!(s.trimmed(3), 1);
        assert_eq!(s.trimmed(100), 49);
    }
}
