//! Fine-tuning part of a model in a federation: which coordinates of the flat weight vector (every trainable float
//! initializer, in [`TrainableModel::params`](super::TrainableModel::params) order) a round trains, chosen by glob
//! patterns over the weights' names (`head.*`, `*.bias`, `fc?.weight`), and the mapping between that sub-vector and
//! the full vector.
//!
//! The server and the agents resolve a round's patterns against the same layout and get the same part. The
//! sub-vector holds the chosen weights in full-vector order, which is also the order of the model restricted with
//! [`TrainableModel::train_only`](super::TrainableModel::train_only): what an agent trains and uploads is what the
//! server adds back. Pure functions: nothing here reads a file or panics on a length (a mismatch is an error).

use std::collections::BTreeSet;
use std::ops::Range;

use super::trainable::ParamInfo;

/// Why a set of patterns cannot choose the weights to train, or a vector does not fit a part.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PartError {
    /// The pattern is not a glob.
    #[error("trainable pattern {pattern:?} is not a valid glob: {reason}")]
    BadPattern { pattern: String, reason: String },
    /// The pattern names no weight of the model.
    #[error("trainable pattern {pattern:?} matches no weight of the model (its weights: {names})")]
    NoMatch { pattern: String, names: String },
    /// A vector handed in has the wrong length.
    #[error("{what} has {got} values, {expected} were expected")]
    Length { what: &'static str, expected: usize, got: usize },
}

/// Checks that every pattern is a glob (without a model to match them against).
pub fn check_patterns(patterns: &[String]) -> Result<(), PartError> {
    patterns.iter().try_for_each(|p| glob(p).map(|_| ()))
}

fn glob(pattern: &str) -> Result<globset::GlobMatcher, PartError> {
    if pattern.trim().is_empty() {
        return Err(PartError::BadPattern { pattern: pattern.into(), reason: "the pattern is empty".into() });
    }
    globset::Glob::new(pattern)
        .map(|g| g.compile_matcher())
        .map_err(|e| PartError::BadPattern { pattern: pattern.into(), reason: e.kind().to_string() })
}

/// The names among `names` that match at least one of `patterns`. Each pattern must match at least one name: one
/// that matches nothing is an error listing (the first few of) the names.
pub fn matching_names<'a>(
    names: impl IntoIterator<Item = &'a str> + Clone,
    patterns: &[String],
) -> Result<BTreeSet<String>, PartError> {
    let mut chosen = BTreeSet::new();
    for p in patterns {
        let g = glob(p)?;
        let mut hit = false;
        for n in names.clone() {
            if g.is_match(n) {
                hit = true;
                chosen.insert(n.to_string());
            }
        }
        if !hit {
            let all: Vec<&str> = names.clone().into_iter().collect();
            let some = all.iter().take(12).copied().collect::<Vec<_>>().join(", ");
            let more = if all.len() > 12 { ", ..." } else { "" };
            return Err(PartError::NoMatch { pattern: p.clone(), names: format!("{some}{more}") });
        }
    }
    Ok(chosen)
}

/// The coordinates of the full weight vector a round trains: whole weight tensors, in full-vector order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrainablePart {
    /// The chosen tensors' places in the full vector, ascending and disjoint.
    ranges: Vec<Range<usize>>,
    names: Vec<String>,
    len: usize,
    full_len: usize,
}

impl TrainablePart {
    /// The weights of `params` (a model's whole layout) whose names match one of `patterns`.
    pub fn select(params: &[ParamInfo], patterns: &[String]) -> Result<Self, PartError> {
        let chosen = matching_names(params.iter().map(|p| p.name.as_str()), patterns)?;
        let mut ranges = vec![];
        let mut names = vec![];
        let mut full_len = 0;
        // `params` is in full-vector order with contiguous offsets: the part keeps that order.
        for p in params {
            full_len = full_len.max(p.offset + p.len);
            if chosen.contains(&p.name) {
                ranges.push(p.offset..p.offset + p.len);
                names.push(p.name.clone());
            }
        }
        let len = ranges.iter().map(|r| r.len()).sum();
        Ok(TrainablePart { ranges, names, len, full_len })
    }

    /// Number of trained coordinates (the length of an update).
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when nothing is trained (only for a model with no parameters).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Length of the full weight vector.
    pub fn full_len(&self) -> usize {
        self.full_len
    }

    /// The trained weights' names, in full-vector order.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Where the trained coordinates lie in the full vector (ascending, disjoint).
    pub fn ranges(&self) -> &[Range<usize>] {
        &self.ranges
    }

    /// Full-vector index of each sub-vector coordinate, in order.
    pub fn positions(&self) -> impl Iterator<Item = usize> + '_ {
        self.ranges.iter().flat_map(|r| r.clone())
    }

    fn check_full(&self, what: &'static str, full: usize) -> Result<(), PartError> {
        if full != self.full_len {
            return Err(PartError::Length { what, expected: self.full_len, got: full });
        }
        Ok(())
    }

    fn check_sub(&self, what: &'static str, sub: usize) -> Result<(), PartError> {
        if sub != self.len {
            return Err(PartError::Length { what, expected: self.len, got: sub });
        }
        Ok(())
    }

    /// The trained coordinates of `full`, in order.
    pub fn gather(&self, full: &[f32]) -> Result<Vec<f32>, PartError> {
        self.check_full("the full weight vector", full.len())?;
        let mut out = Vec::with_capacity(self.len);
        for r in &self.ranges {
            out.extend_from_slice(&full[r.clone()]);
        }
        Ok(out)
    }

    /// The frozen coordinates of `full` (everything [`Self::gather`] leaves out), in order.
    pub fn gather_frozen(&self, full: &[f32]) -> Result<Vec<f32>, PartError> {
        self.check_full("the full weight vector", full.len())?;
        let mut out = Vec::with_capacity(self.full_len - self.len);
        let mut at = 0;
        for r in &self.ranges {
            out.extend_from_slice(&full[at..r.start]);
            at = r.end;
        }
        out.extend_from_slice(&full[at..]);
        Ok(out)
    }

    /// `full` with its trained coordinates replaced by `sub`, in order; the frozen ones are left as they are.
    pub fn scatter_into(&self, full: &mut [f32], sub: &[f32]) -> Result<(), PartError> {
        self.check_full("the full weight vector", full.len())?;
        self.check_sub("the trained part", sub.len())?;
        let mut at = 0;
        for r in &self.ranges {
            full[r.clone()].copy_from_slice(&sub[at..at + r.len()]);
            at += r.len();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn layout(tensors: &[(&str, usize)]) -> Vec<ParamInfo> {
        let mut offset = 0;
        tensors
            .iter()
            .map(|(n, len)| {
                let p = ParamInfo { name: n.to_string(), shape: vec![*len], offset, len: *len };
                offset += len;
                p
            })
            .collect()
    }

    fn pats(p: &[&str]) -> Vec<String> {
        p.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_head_pattern_picks_the_head_tensors_in_full_vector_order() {
        let l = layout(&[("body.weight", 6), ("body.bias", 2), ("head.weight", 4), ("head.bias", 2)]);
        let part = TrainablePart::select(&l, &pats(&["head.*"])).unwrap();
        assert_eq!(part.names(), ["head.weight", "head.bias"]);
        assert_eq!(part.ranges(), [8..12, 12..14]);
        assert_eq!((part.len(), part.full_len()), (6, 14));
        let full: Vec<f32> = (0..14).map(|i| i as f32).collect();
        assert_eq!(part.gather(&full).unwrap(), [8.0, 9.0, 10.0, 11.0, 12.0, 13.0]);
        assert_eq!(part.gather_frozen(&full).unwrap(), [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]);
        // Overlapping patterns choose a tensor once, and the order is the model's, not the patterns'.
        let both = TrainablePart::select(&l, &pats(&["*.bias", "head.*"])).unwrap();
        assert_eq!(both.names(), ["body.bias", "head.weight", "head.bias"]);
        assert_eq!(both.positions().collect::<Vec<_>>(), [6, 7, 8, 9, 10, 11, 12, 13]);
    }

    #[test]
    fn a_pattern_that_matches_nothing_or_is_no_glob_is_refused_by_name() {
        let l = layout(&[("fc1.weight", 4), ("fc1.bias", 2)]);
        let e = TrainablePart::select(&l, &pats(&["fc1.*", "head.*"])).unwrap_err();
        assert_eq!(e, PartError::NoMatch { pattern: "head.*".into(), names: "fc1.weight, fc1.bias".into() });
        assert!(e.to_string().contains("\"head.*\" matches no weight") && e.to_string().contains("fc1.bias"));
        let e = TrainablePart::select(&l, &pats(&["fc1.[w"])).unwrap_err();
        assert!(matches!(e, PartError::BadPattern { ref pattern, .. } if pattern == "fc1.[w"), "{e}");
        assert!(check_patterns(&pats(&["fc1.[w"])).is_err());
        assert!(check_patterns(&pats(&[" "])).is_err(), "an empty pattern is a mistake, not 'everything'");
        assert!(check_patterns(&pats(&["head.*", "*.bias"])).is_ok());
    }

    #[test]
    fn vectors_of_the_wrong_length_are_errors() {
        let l = layout(&[("a", 3), ("b", 2)]);
        let part = TrainablePart::select(&l, &pats(&["b"])).unwrap();
        assert_eq!(
            part.gather(&[0.0; 4]),
            Err(PartError::Length { what: "the full weight vector", expected: 5, got: 4 })
        );
        let mut full = [0.0; 5];
        assert!(part.scatter_into(&mut full, &[1.0]).is_err());
        assert!(part.scatter_into(&mut full[..4], &[1.0, 2.0]).is_err());
        assert_eq!(full, [0.0; 5], "a refused scatter writes nothing");
    }

    proptest! {
        /// For any layout and any choice of tensors: scattering the gathered part back is the identity, the
        /// gathered and the frozen coordinates together are the full vector, and a scatter changes exactly the
        /// trained coordinates.
        #[test]
        fn gather_and_scatter_are_inverse_and_touch_only_the_part(
            lens in prop::collection::vec(1usize..6, 1..8),
            pick in prop::collection::vec(any::<bool>(), 8),
        ) {
            let names: Vec<String> = (0..lens.len()).map(|i| format!("t{i}.w")).collect();
            let tensors: Vec<(&str, usize)> = names.iter().map(|n| n.as_str()).zip(lens.iter().copied()).collect();
            let l = layout(&tensors);
            let chosen: Vec<String> = names.iter().zip(&pick).filter(|(_, p)| **p).map(|(n, _)| n.clone()).collect();
            prop_assume!(!chosen.is_empty());
            let part = TrainablePart::select(&l, &chosen).unwrap();
            let full: Vec<f32> = (0..part.full_len()).map(|i| i as f32 * 0.5 - 3.0).collect();
            let sub = part.gather(&full).unwrap();
            prop_assert_eq!(sub.len(), part.len());
            let mut back = vec![f32::NAN; full.len()];
            let frozen = part.gather_frozen(&full).unwrap();
            prop_assert_eq!(frozen.len() + sub.len(), full.len());
            // Put the frozen values in by hand, then the part by scatter: the full vector comes back.
            let trained: BTreeSet<usize> = part.positions().collect();
            let mut f = frozen.iter();
            for (i, b) in back.iter_mut().enumerate() {
                if !trained.contains(&i) {
                    *b = *f.next().unwrap();
                }
            }
            part.scatter_into(&mut back, &sub).unwrap();
            prop_assert_eq!(&back, &full);
            let mut moved = full.clone();
            let bumped: Vec<f32> = sub.iter().map(|v| v + 100.0).collect();
            part.scatter_into(&mut moved, &bumped).unwrap();
            for (i, (m, f)) in moved.iter().zip(&full).enumerate() {
                prop_assert_eq!(m.to_bits() != f.to_bits(), trained.contains(&i));
            }
        }
    }
}
