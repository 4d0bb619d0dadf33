//! The differences between the newest committed versions (`coordinator::download`), kept in memory so that an agent
//! one to [`MAX_STEPS`] versions behind downloads them, one after the other in one blob, instead of the whole newest
//! version.
//!
//! A chain is only offered while it is smaller than the whole version, and only over consecutive versions whose
//! differences are all here: a version committed without one (a non-finite change, or versions sent whole) breaks
//! every chain through it. Nothing is kept across a restart: after one, agents behind get the whole version.
//! This module decides nothing about rounds and does no I/O.

use fedge_shared::model::Digest;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

/// The most differences a chain holds: with 8-bit differences (about 1.02 bytes a parameter against 4), three
/// are still smaller than the whole version.
pub(super) const MAX_STEPS: usize = 3;

/// The newest versions' differences, oldest first.
#[derive(Default)]
pub(super) struct ModelDiffs {
    /// `(to, difference from to − 1 to to)`, consecutive versions, at most [`MAX_STEPS`].
    steps: VecDeque<(u64, Arc<Vec<u8>>)>,
    /// Chains to the newest version with their SHA-256, by the version they start from: built and hashed once,
    /// shared by every connection that sends them.
    chains: HashMap<u64, (Arc<Vec<u8>>, Digest)>,
}

impl ModelDiffs {
    /// Version `to` was committed from `from`, with `diff` (none when it travels whole).
    pub(super) fn committed(&mut self, from: u64, to: u64, diff: Option<Arc<Vec<u8>>>) {
        self.chains.clear();
        let consecutive = to == from + 1 && self.steps.back().is_none_or(|(last, _)| *last == from);
        match diff {
            Some(d) if consecutive => {
                self.steps.push_back((to, d));
                if self.steps.len() > MAX_STEPS {
                    self.steps.pop_front();
                }
            }
            Some(d) if to == from + 1 => self.steps = VecDeque::from([(to, d)]),
            _ => self.steps.clear(),
        }
    }

    /// The chain from `held` to `newest` and its digest, when every difference is here and together they are
    /// smaller than the whole version's `whole_len` bytes.
    pub(super) fn chain(&mut self, held: u64, newest: u64, whole_len: usize) -> Option<(Arc<Vec<u8>>, Digest)> {
        let n = usize::try_from(newest.checked_sub(held)?).ok()?;
        if n == 0 || n > self.steps.len() || self.steps.back().map(|(to, _)| *to) != Some(newest) {
            return None;
        }
        let parts = || self.steps.iter().skip(self.steps.len() - n).map(|(_, d)| d);
        if parts().map(|d| d.len()).sum::<usize>() >= whole_len {
            return None;
        }
        if let Some(chain) = self.chains.get(&held) {
            return Some(chain.clone());
        }
        let body: Arc<Vec<u8>> = match n {
            1 => parts().next()?.clone(),
            _ => Arc::new(parts().flat_map(|d| d.iter().copied()).collect()),
        };
        let chain = (body.clone(), Digest::of(&body));
        self.chains.insert(held, chain.clone());
        Some(chain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn diff(b: u8) -> Option<Arc<Vec<u8>>> {
        Some(Arc::new(vec![b; 4]))
    }

    #[test]
    fn an_agent_up_to_three_versions_behind_gets_the_differences_in_order() {
        let mut d = ModelDiffs::default();
        for v in 1..=4u64 {
            d.committed(v - 1, v, diff(v as u8));
        }
        assert_eq!(*d.chain(3, 4, 100).unwrap().0, vec![4; 4]);
        let (two, digest) = d.chain(2, 4, 100).unwrap();
        assert_eq!(*two, [vec![3; 4], vec![4; 4]].concat());
        assert_eq!(digest, Digest::of(&two));
        assert_eq!(*d.chain(1, 4, 100).unwrap().0, [vec![2; 4], vec![3; 4], vec![4; 4]].concat());
        assert!(d.chain(0, 4, 100).is_none(), "the first difference is no longer kept");
        assert!(d.chain(4, 4, 100).is_none(), "nothing to send");
        assert!(d.chain(5, 4, 100).is_none(), "an agent ahead of the server gets the whole version");
        assert!(d.chain(3, 5, 100).is_none(), "not the newest version");
    }

    #[test]
    fn a_chain_no_smaller_than_the_whole_version_is_not_offered() {
        let mut d = ModelDiffs::default();
        d.committed(0, 1, diff(1));
        d.committed(1, 2, diff(2));
        assert!(d.chain(1, 2, 5).is_some());
        assert!(d.chain(0, 2, 8).is_none());
        assert!(d.chain(1, 2, 4).is_none());
    }

    #[test]
    fn a_version_committed_whole_or_out_of_order_breaks_the_chains_through_it() {
        let mut d = ModelDiffs::default();
        d.committed(0, 1, diff(1));
        d.committed(1, 2, None);
        assert!(d.chain(1, 2, 100).is_none());
        d.committed(2, 3, diff(3));
        assert!(d.chain(2, 3, 100).is_some());
        assert!(d.chain(1, 3, 100).is_none());
        d.committed(7, 8, diff(8));
        assert!(d.chain(6, 8, 100).is_none());
        assert_eq!(*d.chain(7, 8, 100).unwrap().0, vec![8; 4]);
    }
}
