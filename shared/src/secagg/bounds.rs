//! Bounded contributions: the check that an unmasked sum is one the survivors could have produced by following the
//! protocol, so that an agent that sends words outside its range (or wraps its weight to shrink `Σw` and amplify
//! the mean) gets the round refused instead of moving the model at will.
//!
//! An honest agent's vector is `[q(w), counts, q(w·Δ)]` with `0 ≤ w ≤ 1`, every `|w·Δ_j| ≤ w·clip` and, with
//! `clip_norm`, `‖w·Δ‖₂ ≤ w·clip_norm`. So the sum over `s` survivors satisfies, up to rounding and noise:
//! - `0 < Σw ≤ s` (a zero total leaves nothing to average);
//! - every count total at most `s` times the per-agent limit;
//! - `|Σ w·Δ_j| ≤ clip · Σw` for every coordinate: the mean stays in the clipping box;
//! - `‖Σ w·Δ‖₂ ≤ clip_norm · Σw`: the mean stays in the L2 ball honest agents can reach.
//!
//! The tolerances cover stochastic rounding (less than one level per agent and coordinate) and, with distributed
//! DP, [`SecAggParams::noise_margin`] in each coordinate and the summed noise's norm (its chi tail, `√P + 8`
//! standard deviations). They never refuse an honest round.
//!
//! What this does not stop: one agent can still choose its words (modulo the word) so that the sum stays inside these
//! bounds, so it can move the round's mean anywhere within the box and the ball (not just by its own `1/s` share).
//! Bounding one agent's own input under the masks needs zero-knowledge range proofs, which fedge does not have.
//! This module only reads the sum; it must never see one agent's vector.

use super::server::AggregateSum;
use super::{SecAggError, SecAggParams, quant};

/// Checks the survivors' dequantized sum in a round of `cohort` agents against what they can produce (see the
/// module doc); refuses with [`SecAggError::OutOfBounds`] naming the first bound exceeded.
pub fn check(params: &SecAggParams, cohort: usize, sum: &AggregateSum) -> Result<(), SecAggError> {
    let s = sum.survivors.len() as f64;
    let out = |m: String| Err(SecAggError::OutOfBounds(m));
    let max = params.max_level() as f64;
    // The weight coordinate is never noised; each agent's quantized weight is at most M.
    if !(sum.weight_sum.is_finite() && sum.weight_sum > 0.0 && sum.weight_sum <= s * (1.0 + 1e-12)) {
        return out(format!("the survivors' total weight is {}, outside (0, {s}]", sum.weight_sum));
    }
    let count_limit = u64::from(params.count_limit(cohort));
    let count_top = (sum.survivors.len() as u64).saturating_mul(count_limit);
    if let Some((i, c)) = sum.counts.iter().enumerate().find(|&(_, &c)| c > count_top) {
        return out(format!("count {i} totals {c}, above {count_top} for {s} agents"));
    }
    let q = quant::quantum(params);
    let margin = params.noise_margin(sum.survivors.len()) as f64;
    let clip = f64::from(params.clip);
    // Rounding: under one level per agent in each value, and `s / M` in the weight total (times `clip`).
    let box_limit = clip * sum.weight_sum + (2.0 * s + margin) * q;
    if let Some((j, v)) =
        sum.weighted_delta_sum.iter().enumerate().find(|&(_, &v)| {
            f64::from(v).abs().partial_cmp(&(box_limit * (1.0 + 1e-6))) != Some(std::cmp::Ordering::Less)
        })
    {
        return out(format!(
            "coordinate {j} of the weighted sum is {v}, beyond ±{box_limit:.6} (clip {clip} × total weight {:.6})",
            sum.weight_sum
        ));
    }
    if let Some(c) = params.clip_norm {
        let norm = sum.weighted_delta_sum.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>().sqrt();
        let p = (sum.weighted_delta_sum.len() as f64).sqrt();
        let noise = (s * params.noise_variance).sqrt() * q * (p + 8.0);
        let limit = f64::from(c) * (sum.weight_sum + s / max) + s * q * p + noise;
        if norm.partial_cmp(&(limit * (1.0 + 1e-6))) != Some(std::cmp::Ordering::Less) {
            return out(format!(
                "the weighted sum's L2 norm is {norm:.6}, beyond {limit:.6} (clip_norm {c} × total weight {:.6})",
                sum.weight_sum
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(clip_norm: Option<f32>) -> SecAggParams {
        SecAggParams { clip: 1.0, quant_bits: 16, clip_norm, ..SecAggParams::default_for(4) }
    }

    fn sum(weight_sum: f64, values: Vec<f32>) -> AggregateSum {
        AggregateSum { survivors: vec![0, 1, 2, 3], weight_sum, weighted_delta_sum: values, counts: vec![] }
    }

    #[test]
    fn a_sum_honest_agents_can_produce_passes() {
        let p = params(Some(1.0));
        check(&p, 8, &sum(4.0, vec![0.5, -0.5, 0.5, -0.5])).unwrap();
        check(&p, 8, &sum(2.0, vec![2.0, 0.0, 0.0, 0.0])).unwrap();
    }

    #[test]
    fn a_shrunken_or_inflated_weight_total_is_refused() {
        let p = params(None);
        for w in [0.0, -1.0, 4.5, f64::NAN] {
            let err = check(&p, 8, &sum(w, vec![0.0; 4])).unwrap_err();
            assert!(err.to_string().contains("total weight"), "{w}: {err}");
        }
    }

    #[test]
    fn a_mean_outside_the_clipping_box_is_refused() {
        let p = params(None);
        // Total weight 0.01 behind a coordinate of 0.5: a mean of 50 with clip 1 (the amplification attack).
        let err = check(&p, 8, &sum(0.01, vec![0.5, 0.0])).unwrap_err();
        assert!(err.to_string().contains("coordinate 0"), "{err}");
    }

    #[test]
    fn a_mean_outside_the_l2_ball_is_refused() {
        let p = params(Some(1.0));
        // Each coordinate is inside the box (|0.9| ≤ 1 × 1), but the norm is 1.8 for a total weight of 1.
        let err = check(&p, 8, &sum(1.0, vec![0.9, 0.9, 0.9, 0.9])).unwrap_err();
        assert!(err.to_string().contains("L2 norm"), "{err}");
        assert!(check(&params(None), 8, &sum(1.0, vec![0.9, 0.9, 0.9, 0.9])).is_ok(), "no clip_norm, no ball");
    }

    #[test]
    fn count_totals_beyond_what_the_survivors_may_send_are_refused() {
        let p = SecAggParams { counts: 1, ..params(None) };
        let limit = u64::from(p.count_limit(8));
        let mut s = sum(1.0, vec![0.0]);
        s.counts = vec![4 * limit];
        assert!(check(&p, 8, &s).is_ok());
        s.counts = vec![4 * limit + 1];
        assert!(check(&p, 8, &s).is_err());
    }
}
