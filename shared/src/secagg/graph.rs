//! The SecAgg+ neighbour graph: a random Harary graph over the cohort. The cohort is placed on a ring in a random
//! order (drawn from the round's public graph seed) and each agent is joined to the `k/2` nearest agents on either
//! side; when `k >= n - 1` the graph is complete.
//!
//! The graph is public (server and every agent compute the same one from the seed); it must never depend on any
//! secret, and its construction must be the same on every platform (our own Fisher-Yates over ChaCha20).

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

use super::SecAggError;

/// Who pairs with whom in one round.
#[derive(Debug, Clone)]
pub struct NeighbourGraph {
    members: Vec<u32>,
    neighbours: Vec<Vec<u32>>,
}

fn below(rng: &mut ChaCha20Rng, n: u64) -> u64 {
    let zone = (u64::MAX / n) * n;
    loop {
        let v = rng.next_u64();
        if v < zone {
            return v % n;
        }
    }
}

impl NeighbourGraph {
    /// The graph over `cohort` (distinct indices) where each agent has `min(k, n - 1)` neighbours.
    pub fn new(cohort: &[u32], k: usize, seed: u64) -> Result<Self, SecAggError> {
        let mut members = cohort.to_vec();
        members.sort_unstable();
        if let Some(w) = members.windows(2).find(|w| w[0] == w[1]) {
            return Err(SecAggError::Duplicate(w[0]));
        }
        let n = members.len();
        let mut ring = members.clone();
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        for i in (1..n).rev() {
            let j = below(&mut rng, i as u64 + 1) as usize;
            ring.swap(i, j);
        }
        let k = k.min(n.saturating_sub(1));
        let complete = k + 1 >= n;
        let half = k / 2;
        let mut neighbours = vec![Vec::new(); n];
        for (p, agent) in ring.iter().enumerate() {
            let list: Vec<u32> = if complete {
                members.iter().copied().filter(|m| m != agent).collect()
            } else {
                (1..=half).flat_map(|d| [ring[(p + d) % n], ring[(p + n - d) % n]]).collect()
            };
            let mut list = list;
            list.sort_unstable();
            if let Ok(slot) = members.binary_search(agent) {
                neighbours[slot] = list;
            }
        }
        Ok(NeighbourGraph { members, neighbours })
    }

    /// The cohort, sorted.
    pub fn members(&self) -> &[u32] {
        &self.members
    }

    /// True when `agent` is in the cohort.
    pub fn contains(&self, agent: u32) -> bool {
        self.members.binary_search(&agent).is_ok()
    }

    /// The sorted neighbours of `agent`, or `None` if it is not in the cohort.
    pub fn neighbours(&self, agent: u32) -> Option<&[u32]> {
        let slot = self.members.binary_search(&agent).ok()?;
        self.neighbours.get(slot).map(Vec::as_slice)
    }

    /// True when `a` and `b` are neighbours.
    pub fn are_neighbours(&self, a: u32, b: u32) -> bool {
        self.neighbours(a).is_some_and(|n| n.binary_search(&b).is_ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_agent_has_k_distinct_neighbours_and_the_relation_is_symmetric() {
        let cohort: Vec<u32> = (0..57).map(|i| i * 3 + 1).collect();
        let g = NeighbourGraph::new(&cohort, 10, 42).unwrap();
        for &a in &cohort {
            let ns = g.neighbours(a).unwrap();
            assert_eq!(ns.len(), 10);
            assert!(!ns.contains(&a));
            for &b in ns {
                assert!(g.are_neighbours(b, a));
            }
        }
    }

    #[test]
    fn a_degree_covering_the_cohort_gives_the_complete_graph() {
        let g = NeighbourGraph::new(&[5, 1, 9, 3], 10, 1).unwrap();
        assert_eq!(g.neighbours(9).unwrap(), &[1, 3, 5]);
    }

    #[test]
    fn the_graph_depends_on_the_seed_and_only_on_the_seed() {
        let cohort: Vec<u32> = (0..40).collect();
        let a = NeighbourGraph::new(&cohort, 6, 7).unwrap();
        let b = NeighbourGraph::new(&cohort, 6, 7).unwrap();
        let c = NeighbourGraph::new(&cohort, 6, 8).unwrap();
        assert_eq!(a.neighbours, b.neighbours);
        assert_ne!(a.neighbours, c.neighbours);
    }

    #[test]
    fn a_cohort_with_a_repeated_agent_is_refused() {
        assert!(NeighbourGraph::new(&[1, 2, 2], 2, 0).is_err());
    }
}
