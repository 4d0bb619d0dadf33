//! A model version as its difference to the version before it: what an agent that holds version `v` downloads
//! instead of the whole of version `v + 1` (about a quarter of the bytes).
//!
//! The difference is 8-bit with one scale per block, the layout of [`DeltaEncoding::Int8`], rounded to the nearest
//! level rather than stochastically, so that it is a function of the two versions alone. What makes it exact is
//! [`settle`]: the server does not commit the weights its strategy produced, but the old weights plus the
//! *decoded* difference, computed by [`apply`], the very function an agent runs. Server and agents therefore hold
//! the same bits, which the agent checks against the version's SHA-256 digest before it uses them. The model moves
//! by at most half a quantization step per coordinate less or more than the strategy asked (a step is the block's
//! largest change / 127), and the next round trains from there.
//!
//! A chain of differences (`v → v+1 → … → w`) travels as one body, the differences one after the other, so an agent
//! a few versions behind applies them in order without depending on the arrival order of separate streams.
//!
//! No I/O and no panic on what the network sent: a body of the wrong length or a bad block is an error.

use crate::delta_encoding::{DeltaEncoding, DeltaEncodingError};

/// The encoding of one difference.
const ENCODING: DeltaEncoding = DeltaEncoding::Int8;

/// Errors applying differences.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ModelDiffError {
    #[error("{steps} differences of {values} values take {expected} bytes, the body has {got}")]
    Length { steps: u64, values: usize, expected: u64, got: usize },
    #[error("difference {step}: {source}")]
    Step {
        step: u64,
        #[source]
        source: DeltaEncodingError,
    },
}

/// The bytes of one difference between two versions of `values` parameters.
pub fn encoded_len(values: usize) -> usize {
    ENCODING.encoded_len(values)
}

/// The bytes of a chain of `steps` differences (saturating: a count from the network never overflows).
pub fn chain_len(values: usize, steps: u64) -> u64 {
    (encoded_len(values) as u64).saturating_mul(steps)
}

/// What the server commits in place of `new`, and the difference that produces it from `old`: `old` plus the
/// decoded 8-bit difference `new − old`, exactly as [`apply`] computes it. `None` when a value of the difference is
/// not finite (the version then travels whole) or the lengths differ.
pub fn settle(old: &[f32], new: &[f32]) -> Option<(Vec<f32>, Vec<u8>)> {
    if old.len() != new.len() {
        return None;
    }
    let delta: Vec<f32> = old.iter().zip(new).map(|(o, n)| n - o).collect();
    if !delta.iter().all(|d| d.is_finite()) {
        return None;
    }
    // u = 1/2 makes ⌊x/s + u⌋ the nearest level: deterministic, and within half a step.
    let diff = ENCODING.encode(&delta, &mut || 0.5);
    drop(delta);
    let settled = apply(old, &diff, 1).ok()?;
    Some((settled, diff))
}

/// `old` after the `steps` differences in `body`, one after the other.
pub fn apply(old: &[f32], body: &[u8], steps: u64) -> Result<Vec<f32>, ModelDiffError> {
    let one = encoded_len(old.len());
    let expected = chain_len(old.len(), steps);
    if body.len() as u64 != expected || (one == 0 && !body.is_empty()) {
        return Err(ModelDiffError::Length { steps, values: old.len(), expected, got: body.len() });
    }
    let mut weights = old.to_vec();
    for (step, diff) in (0..steps).zip(body.chunks(one.max(1))) {
        let delta = ENCODING.decode(diff, weights.len()).map_err(|source| ModelDiffError::Step { step, source })?;
        // One f32 addition per coordinate, never fused: the server and every agent get the same bits.
        for (w, d) in weights.iter_mut().zip(delta) {
            *w += d;
        }
    }
    Ok(weights)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_version_settled_on_the_server_is_what_an_agent_rebuilds_bit_for_bit() {
        let old: Vec<f32> = (0..1000).map(|i| (i as f32 * 0.37).sin()).collect();
        let new: Vec<f32> = old.iter().enumerate().map(|(i, w)| w + (i as f32 * 1.3).cos() * 1e-3).collect();
        let (settled, diff) = settle(&old, &new).unwrap();
        assert_eq!(diff.len(), encoded_len(1000));
        let rebuilt = apply(&old, &diff, 1).unwrap();
        assert_eq!(crate::model::weights_to_bytes(&rebuilt), crate::model::weights_to_bytes(&settled));
        // Within half a step of what the strategy asked, per block.
        for (block, (s, n)) in settled.chunks(256).zip(new.chunks(256)).enumerate() {
            let o = &old[block * 256..block * 256 + s.len()];
            let step = o.iter().zip(n).fold(0f32, |m, (o, n)| m.max((n - o).abs())) / 127.0;
            for (s, n) in s.iter().zip(n) {
                assert!((s - n).abs() <= step * 0.5 + 1e-6, "block {block}: {s} vs {n}, step {step}");
            }
        }
    }

    #[test]
    fn a_chain_applies_its_differences_in_order() {
        let v0: Vec<f32> = (0..300).map(|i| i as f32 * 0.01).collect();
        let v1_asked: Vec<f32> = v0.iter().map(|w| w * 1.01 + 0.002).collect();
        let (v1, d1) = settle(&v0, &v1_asked).unwrap();
        let v2_asked: Vec<f32> = v1.iter().map(|w| w - 0.003).collect();
        let (v2, d2) = settle(&v1, &v2_asked).unwrap();
        let chain = [d1, d2].concat();
        assert_eq!(chain.len() as u64, chain_len(300, 2));
        assert_eq!(apply(&v0, &chain, 2).unwrap(), v2);
        assert_eq!(apply(&v0, &chain[..chain.len() / 2], 1).unwrap(), v1);
    }

    #[test]
    fn a_body_that_does_not_fit_the_model_is_refused_with_the_reason() {
        let old = vec![0.5f32; 10];
        let (_, diff) = settle(&old, &[0.6f32; 10]).unwrap();
        assert!(matches!(apply(&old, &diff, 2), Err(ModelDiffError::Length { steps: 2, .. })));
        assert!(matches!(apply(&old, &diff[..8], 1), Err(ModelDiffError::Length { .. })));
        assert!(matches!(apply(&old[..5], &diff, 1), Err(ModelDiffError::Length { .. })));
        assert!(matches!(apply(&old, &diff, u64::MAX), Err(ModelDiffError::Length { .. })));
        let mut bad = diff.clone();
        bad[..4].copy_from_slice(&f32::NAN.to_le_bytes());
        assert!(matches!(apply(&old, &bad, 1), Err(ModelDiffError::Step { step: 0, .. })));
        // Nothing to apply to nothing.
        assert_eq!(apply(&[], &[], 3).unwrap(), Vec::<f32>::new());
        assert!(apply(&[], &[0; 4], 1).is_err());
    }

    #[test]
    fn a_version_that_is_not_finite_travels_whole() {
        assert!(settle(&[0.0, 1.0], &[f32::NAN, 1.0]).is_none());
        assert!(settle(&[f32::MAX, 1.0], &[-f32::MAX, 1.0]).is_none());
        assert!(settle(&[0.0], &[0.0, 1.0]).is_none());
    }

    proptest! {
        #[test]
        fn settled_weights_are_rebuilt_exactly_and_stay_within_half_a_step(
            pairs in prop::collection::vec((-4.0f32..4.0, -0.1f32..0.1), 1..700),
        ) {
            let old: Vec<f32> = pairs.iter().map(|p| p.0).collect();
            let new: Vec<f32> = pairs.iter().map(|p| p.0 + p.1).collect();
            let (settled, diff) = settle(&old, &new).unwrap();
            prop_assert_eq!(apply(&old, &diff, 1).unwrap(), settled.clone());
            for (block, ((o, n), s)) in old.chunks(256).zip(new.chunks(256)).zip(settled.chunks(256)).enumerate() {
                let step = o.iter().zip(n).fold(0f32, |m, (o, n)| m.max((n - o).abs())) / 127.0;
                for ((o, n), s) in o.iter().zip(n).zip(s) {
                    // Half a step, plus the rounding of the two f32 operations.
                    let ulp = (o.abs() + n.abs()) * f32::EPSILON * 2.0;
                    prop_assert!((s - n).abs() <= step * 0.5 + ulp, "block {}: {} vs {}", block, s, n);
                }
            }
        }
    }
}
