//! Cohort selection: how many agents a round takes and which ones, reproducibly for a seed.
//!
//! Pure functions: the randomness is a ChaCha stream keyed by (seed, round), never a global generator.

use super::record::AgentId;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha20Rng;

/// The selection parameters (a view of the coordinator's configuration).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SelectionRule {
    /// The fewest reports that make a round; also the fewest agents a round starts with.
    pub min_agents: usize,
    /// The most agents a round selects (a hard cap, over-selection included).
    pub max_agents: usize,
    /// The fraction of the available agents the round aims for.
    pub fraction: f64,
    /// Over-selection factor (≥ 1) to make up for drop-outs, e.g. 1.3.
    pub overselect: f64,
}

impl SelectionRule {
    /// How many of `available` agents to select: `ceil(fraction · available)` raised to `min_agents`, times
    /// `overselect` (rounded up), capped by `max_agents` and by `available`. Zero when fewer than `min_agents` are
    /// available.
    pub fn cohort_size(&self, available: usize) -> usize {
        if available < self.min_agents || available == 0 {
            return 0;
        }
        let target = ((self.fraction * available as f64).ceil() as usize).max(self.min_agents);
        let over = (target as f64 * self.overselect).ceil() as usize;
        over.max(self.min_agents).min(self.max_agents).min(available)
    }
}

/// A random generator for `round`, derived from `seed` only.
pub fn round_rng(seed: u64, round: u64) -> ChaCha20Rng {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    rng.set_stream(round);
    rng
}

/// Picks `size` of `candidates` uniformly at random with the (seed, round) stream. The result does not depend on
/// the order the candidates are given in.
pub fn select(candidates: &[AgentId], size: usize, seed: u64, round: u64) -> Vec<AgentId> {
    let mut pool: Vec<AgentId> = candidates.to_vec();
    pool.sort();
    pool.dedup();
    let size = size.min(pool.len());
    let mut rng = round_rng(seed, round);
    let (chosen, _) = pool.partial_shuffle(&mut rng, size);
    chosen.to_vec()
}
