//! Fixed-point quantization of an agent's contribution `[w, w·Δ]` for secure aggregation, and dequantization of
//! the cohort's sum.
//!
//! Each delta coordinate is clipped to `±clip`, multiplied by the agent's weight `w = min(examples, cap) / cap`,
//! mapped affinely from `[-clip, clip]` onto `[0, M]` (`M = 2^bits - 1`) and rounded stochastically (up with
//! probability equal to the fraction), so the quantized value is an unbiased estimate. The weight itself is mapped
//! from `[0, 1]` onto `[0, M]` the same way. Sums of up to `n` vectors fit in `u32` because
//! [`SecAggParams::validate`] requires `n · M < 2^32`.
//!
//! Randomness comes in from the caller; this module must never read global randomness, and never accepts NaN.

use super::{SecAggError, SecAggParams, SecureRng};

/// One agent's quantized, not yet masked, vector `[q(w), q(w·Δ_1), ..., q(w·Δ_P)]`. Never leaves the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuantizedInput(Vec<u32>);

/// The weight of an agent that trained on `examples` examples: `min(examples, cap) / cap` in `[0, 1]`.
pub fn weight(params: &SecAggParams, examples: u64) -> f64 {
    let cap = params.weight_cap.max(1);
    examples.min(cap) as f64 / cap as f64
}

/// Rounds `x` (in `[0, max]`) down or up at random, up with probability `x - floor(x)`.
pub fn stochastic_round(x: f64, max: u64, rng: &mut dyn SecureRng) -> u32 {
    round_with(x, max, rng.next_u32())
}

/// Stochastic rounding with the uniform draw `u` (a random `u32`) given.
fn round_with(x: f64, max: u64, u: u32) -> u32 {
    let x = x.clamp(0.0, max as f64);
    // x is in [0, max] with max < 2^32, so truncation is the floor (and needs no libm call).
    let whole = x as u64;
    let frac = x - whole as f64;
    let u = f64::from(u) * (1.0 / 4_294_967_296.0);
    let q = whole + u64::from(u < frac);
    q.min(max) as u32
}

/// The size of one quantization step of a delta coordinate: `2·clip / M`.
pub fn quantum(params: &SecAggParams) -> f64 {
    2.0 * f64::from(params.clip) / params.max_level() as f64
}

impl QuantizedInput {
    /// Clips, weights and quantizes `delta` for an agent that trained on `examples` examples.
    pub fn new(
        params: &SecAggParams,
        delta: &[f32],
        examples: u64,
        rng: &mut dyn SecureRng,
    ) -> Result<Self, SecAggError> {
        if let Some(i) = delta.iter().position(|v| v.is_nan()) {
            return Err(SecAggError::NonFinite(i));
        }
        let max = params.max_level();
        let clip = f64::from(params.clip);
        let w = weight(params, examples);
        let scale = max as f64 / (2.0 * clip);
        let mut out = Vec::with_capacity(delta.len() + 1);
        out.push(stochastic_round(w * max as f64, max, rng));
        // Random draws are taken from the generator a block at a time.
        let mut draws = [0u8; 4 * 1024];
        for block in delta.chunks(1024) {
            let bytes = &mut draws[..4 * block.len()];
            rng.fill_bytes(bytes);
            let us = bytes.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]));
            for (&d, u) in block.iter().zip(us) {
                let v = f64::from(d).clamp(-clip, clip) * w;
                out.push(round_with((v + clip) * scale, max, u));
            }
        }
        Ok(QuantizedInput(out))
    }

    /// The quantized values, weight first.
    pub fn as_slice(&self) -> &[u32] {
        &self.0
    }

    /// The number of values (delta length + 1).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when there are no values (never for a vector made by [`QuantizedInput::new`]).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(crate) fn into_vec(self) -> Vec<u32> {
        self.0
    }
}

/// Turns the unmasked sum of `count` agents' quantized vectors into `(Σw, Σ w·Δ)`.
pub fn dequantize_sum(params: &SecAggParams, sum: &[u32], count: usize) -> (f64, Vec<f32>) {
    let max = params.max_level() as f64;
    let clip = f64::from(params.clip);
    let q = quantum(params);
    let offset = count as f64 * clip;
    let weight_sum = sum.first().map_or(0.0, |&s| f64::from(s) / max);
    let deltas = sum.iter().skip(1).map(|&s| (f64::from(s) * q - offset) as f32).collect();
    (weight_sum, deltas)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn nan_is_refused_with_its_position() {
        let p = SecAggParams::default_for(10);
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
        assert_eq!(QuantizedInput::new(&p, &[0.0, f32::NAN], 5, &mut rng), Err(SecAggError::NonFinite(1)));
    }
}
