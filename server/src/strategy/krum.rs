//! Krum and multi-Krum (Blanchard et al. 2017, "Machine Learning with Adversaries: Byzantine Tolerant Gradient
//! Descent"): each update is scored by the sum of its squared distances to its n − f − 2 nearest other updates, and
//! the new model moves by the mean of the `keep` best-scored deltas (`keep = 1`: Krum; more: multi-Krum).
//!
//! Tolerates `f` arbitrary updates out of n ≥ 2f + 3. The chosen updates are averaged without weighting by their
//! example counts, which are the agents' own claims. Needs each update, so plain rounds only (refused with secure
//! aggregation); O(n² · P) time. Ties are broken by arrival order, so the result is deterministic.

use super::{Input, RoundUpdates, Strategy, StrategyError, apply};

/// (Multi-)Krum tolerating `byzantine` poisoned updates, averaging the `keep` best.
#[derive(Debug, Clone, Copy)]
pub struct Krum {
    /// f: how many updates may be arbitrary.
    pub byzantine: usize,
    /// m: how many of the best-scored updates are averaged (1 is Krum).
    pub keep: usize,
}

impl Krum {
    /// The fewest updates Krum needs for `byzantine` of them: 2f + 3.
    pub fn min_updates(byzantine: usize) -> usize {
        2 * byzantine + 3
    }

    /// The indices of the updates Krum keeps, best first.
    pub fn select(&self, deltas: &[&[f32]]) -> Result<Vec<usize>, StrategyError> {
        let n = deltas.len();
        let needed = Self::min_updates(self.byzantine);
        if n < needed {
            return Err(StrategyError::TooFewUpdates { strategy: "krum", needed, got: n });
        }
        let mut dist = vec![0f64; n * n];
        for i in 0..n {
            for j in i + 1..n {
                let d: f64 = deltas[i].iter().zip(deltas[j]).map(|(a, b)| f64::from(a - b).powi(2)).sum();
                dist[i * n + j] = d;
                dist[j * n + i] = d;
            }
        }
        let closest = n - self.byzantine - 2;
        let mut scores: Vec<(f64, usize)> = (0..n)
            .map(|i| {
                let mut row: Vec<f64> = (0..n).filter(|&j| j != i).map(|j| dist[i * n + j]).collect();
                row.sort_unstable_by(f64::total_cmp);
                (row[..closest].iter().sum(), i)
            })
            .collect();
        scores.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        Ok(scores.iter().take(self.keep.clamp(1, n)).map(|s| s.1).collect())
    }
}

impl Strategy for Krum {
    fn name(&self) -> &'static str {
        "krum"
    }
    fn input(&self) -> Input {
        Input::EachUpdate
    }
    fn aggregate(&mut self, global: &[f32], updates: RoundUpdates<'_>, _round: u64) -> Result<Vec<f32>, StrategyError> {
        let each = updates.each(self.name(), global.len())?;
        let deltas: Vec<&[f32]> = each.iter().map(|u| u.delta.as_slice()).collect();
        let chosen = self.select(&deltas)?;
        let mut sum = vec![0f64; global.len()];
        for &i in &chosen {
            for (s, d) in sum.iter_mut().zip(deltas[i]) {
                *s += f64::from(*d);
            }
        }
        let delta: Vec<f32> = sum.iter().map(|s| (s / chosen.len() as f64) as f32).collect();
        apply::add(global, &delta)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn krum_keeps_an_update_of_the_honest_cluster_and_never_the_outlier() {
        let honest = [[1.0f32, 1.0], [1.1, 0.9], [0.9, 1.1], [1.0, 1.05], [1.05, 1.0]];
        let mut deltas: Vec<&[f32]> = honest.iter().map(|d| d.as_slice()).collect();
        let outlier = [-30.0f32, -30.0];
        deltas.insert(2, &outlier);
        let chosen = Krum { byzantine: 1, keep: 5 }.select(&deltas).unwrap();
        assert_eq!(chosen.len(), 5);
        assert!(!chosen.contains(&2), "{chosen:?}");
    }

    #[test]
    fn krum_refuses_fewer_than_2f_plus_3_updates() {
        let d = [0.0f32];
        let deltas: Vec<&[f32]> = vec![&d; 6];
        let err = Krum { byzantine: 2, keep: 1 }.select(&deltas).unwrap_err();
        assert_eq!(err, StrategyError::TooFewUpdates { strategy: "krum", needed: 7, got: 6 });
    }
}
