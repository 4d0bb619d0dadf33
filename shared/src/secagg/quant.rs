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

use super::prg::{GROUP_WORDS, MaskSign, apply_masks_at};
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
    round_with(x, max as f64, rng.next_u32())
}

/// Stochastic rounding with the uniform draw `u` (a random `u32`, of which the top 31 bits are used) given.
/// Written without branches so that the compiler vectorizes it.
#[inline(always)]
fn round_with(x: f64, max: f64, u: u32) -> u32 {
    let x = x.max(0.0).min(max);
    // x is in [0, max] with max < 2^31, so truncation is the floor (and needs no libm call).
    let whole = x as i32;
    let frac = x - f64::from(whole);
    let u = f64::from((u >> 1) as i32) * (1.0 / 2_147_483_648.0);
    (whole + i32::from(u < frac)) as u32
}

/// The size of one quantization step of a delta coordinate: `2·clip / M`.
pub fn quantum(params: &SecAggParams) -> f64 {
    2.0 * f64::from(params.clip) / params.max_level() as f64
}

/// Quantizes an agent's contribution a range of coordinates at a time, so that an agent can send the first part
/// of its masked vector while it computes the next. Coordinate 0 is the weight, coordinate `i ≥ 1` is `w·Δ_{i-1}`;
/// the random draw of coordinate `i` is word `i` of a ChaCha20 keystream under a key drawn from the caller's RNG,
/// so every coordinate is quantized the same whatever the ranges.
pub struct Quantizer {
    clip: f64,
    w: f64,
    scale: f64,
    max: f64,
    draws: [([u8; 32], MaskSign); 1],
    /// Exact counts placed after the weight, unquantized.
    counts: Vec<u32>,
}

impl Quantizer {
    /// A quantizer for an agent that trained on `examples` examples; refuses a delta with NaN in it.
    pub fn new(
        params: &SecAggParams,
        delta: &[f32],
        examples: u64,
        rng: &mut dyn SecureRng,
    ) -> Result<Self, SecAggError> {
        Self::with_counts(params, delta, examples, &[], u32::MAX, rng)
    }

    /// [`Quantizer::new`] with the round's exact counts (`params.counts` of them, each at most `limit`), placed
    /// after the weight: the vector is `[w, counts, w·Δ]`.
    pub fn with_counts(
        params: &SecAggParams,
        delta: &[f32],
        examples: u64,
        counts: &[u32],
        limit: u32,
        rng: &mut dyn SecureRng,
    ) -> Result<Self, SecAggError> {
        if counts.len() != params.counts as usize {
            return Err(SecAggError::WrongCounts { expected: params.counts as usize, got: counts.len() });
        }
        if let Some((index, &value)) = counts.iter().enumerate().find(|&(_, &c)| c > limit) {
            return Err(SecAggError::CountTooLarge { index, value, limit });
        }
        if let Some(i) = delta.iter().position(|v| v.is_nan()) {
            return Err(SecAggError::NonFinite(i));
        }
        let max = params.max_level() as f64;
        let clip = f64::from(params.clip);
        let mut key = [0u8; 32];
        rng.fill_bytes(&mut key);
        Ok(Quantizer {
            clip,
            w: weight(params, examples),
            scale: max / (2.0 * clip),
            max,
            draws: [(key, MaskSign::Add)],
            counts: counts.to_vec(),
        })
    }

    /// Coordinates before the delta: the weight and the counts.
    pub fn header(&self) -> usize {
        1 + self.counts.len()
    }

    /// Writes the quantized coordinates `start .. start + out.len()` of `[w, counts, w·delta]` into `out`. `start`
    /// must be a multiple of [`GROUP_WORDS`] and the range within `header() + delta.len()` coordinates.
    pub fn quantize(&self, delta: &[f32], start: usize, out: &mut [u32]) -> Result<(), SecAggError> {
        let len = self.header() + delta.len();
        if !start.is_multiple_of(GROUP_WORDS) || start.checked_add(out.len()).is_none_or(|end| end > len) {
            return Err(SecAggError::Malformed(format!(
                "coordinates {start}..{} of a vector of {len}",
                start.saturating_add(out.len()),
            )));
        }
        self.fill(delta, start, out);
        Ok(())
    }

    /// [`Quantizer::quantize`] once its preconditions are known to hold.
    pub(crate) fn fill(&self, delta: &[f32], start: usize, out: &mut [u32]) {
        let header = self.header();
        debug_assert!(start.is_multiple_of(GROUP_WORDS) && start + out.len() <= header + delta.len());
        out.fill(0);
        apply_masks_at(&self.draws, out, start / GROUP_WORDS);
        let in_header = header.saturating_sub(start).min(out.len());
        for (i, o) in out[..in_header].iter_mut().enumerate() {
            *o = match start + i {
                0 => round_with(self.w * self.max, self.max, *o),
                c => self.counts.get(c - 1).copied().unwrap_or(0),
            };
        }
        let rest = &mut out[in_header..];
        if rest.is_empty() {
            return;
        }
        // Past the header: `start + in_header >= header`.
        let first = start + in_header - header;
        quantize_values(self, &delta[first..first + rest.len()], rest);
    }
}

/// `out[i] = round(q(values[i]), draw = out[i])`, vectorized for the widest SIMD the CPU has.
fn quantize_values(q: &Quantizer, values: &[f32], out: &mut [u32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports AVX-512F, checked just above.
            return unsafe { quantize_values_avx512(q, values, out) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2, checked just above.
            return unsafe { quantize_values_avx2(q, values, out) };
        }
    }
    quantize_values_portable(q, values, out);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn quantize_values_avx512(q: &Quantizer, values: &[f32], out: &mut [u32]) {
    quantize_values_portable(q, values, out);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn quantize_values_avx2(q: &Quantizer, values: &[f32], out: &mut [u32]) {
    quantize_values_portable(q, values, out);
}

#[inline(always)]
fn quantize_values_portable(q: &Quantizer, values: &[f32], out: &mut [u32]) {
    let (clip, w, scale, max) = (q.clip, q.w, q.scale, q.max);
    for (o, &d) in out.iter_mut().zip(values) {
        // NaN was refused in `Quantizer::new`; infinities clip like any large value.
        let v = f64::from(d).max(-clip).min(clip) * w;
        *o = round_with((v + clip) * scale, max, *o);
    }
}

impl QuantizedInput {
    /// Clips, weights and quantizes `delta` for an agent that trained on `examples` examples.
    pub fn new(
        params: &SecAggParams,
        delta: &[f32],
        examples: u64,
        rng: &mut dyn SecureRng,
    ) -> Result<Self, SecAggError> {
        Self::with_counts(params, delta, examples, &[], u32::MAX, rng)
    }

    /// [`QuantizedInput::new`] with the round's exact counts after the weight (see [`Quantizer::with_counts`]).
    pub fn with_counts(
        params: &SecAggParams,
        delta: &[f32],
        examples: u64,
        counts: &[u32],
        limit: u32,
        rng: &mut dyn SecureRng,
    ) -> Result<Self, SecAggError> {
        let quantizer = Quantizer::with_counts(params, delta, examples, counts, limit, rng)?;
        let mut out = vec![0u32; quantizer.header() + delta.len()];
        quantizer.quantize(delta, 0, &mut out)?;
        Ok(QuantizedInput(out))
    }

    /// The quantized values, weight first.
    pub fn as_slice(&self) -> &[u32] {
        &self.0
    }

    /// The number of values (1 + counts + delta length).
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

/// Turns the unmasked sum of `count` agents' quantized vectors into `(Σw, Σ w·Δ)` (the counts are skipped; see
/// [`counts_of`]).
pub fn dequantize_sum(params: &SecAggParams, sum: &[u32], count: usize) -> (f64, Vec<f32>) {
    let max = params.max_level() as f64;
    let clip = f64::from(params.clip);
    let q = quantum(params);
    let offset = count as f64 * clip;
    let weight_sum = sum.first().map_or(0.0, |&s| f64::from(s) / max);
    let deltas = sum.iter().skip(1 + params.counts as usize).map(|&s| (f64::from(s) * q - offset) as f32).collect();
    (weight_sum, deltas)
}

/// The exact sums of the counts in an unmasked sum (they never wrap: each agent's count is at most
/// [`SecAggParams::count_limit`]).
pub fn counts_of(params: &SecAggParams, sum: &[u32]) -> Vec<u64> {
    sum.iter().skip(1).take(params.counts as usize).map(|&c| u64::from(c)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn quantizer(seed: u64) -> (SecAggParams, Quantizer) {
        let p = SecAggParams { neighbours: 2, threshold: 2, clip: 1.0, quant_bits: 20, weight_cap: 100, counts: 0 };
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(seed);
        let q = Quantizer::new(&p, &[0.0], 60, &mut rng).expect("no NaN");
        (p, q)
    }

    #[test]
    fn quantizing_in_ranges_equals_quantizing_the_whole_vector() {
        let (_, q) = quantizer(3);
        let delta: Vec<f32> = (0..5000).map(|i| (i as f32 * 0.37).sin()).collect();
        let mut whole = vec![0u32; delta.len() + 1];
        q.quantize(&delta, 0, &mut whole).expect("in range");
        let mut parts = vec![0u32; delta.len() + 1];
        for (c, chunk) in parts.chunks_mut(3 * GROUP_WORDS).enumerate() {
            q.quantize(&delta, c * 3 * GROUP_WORDS, chunk).expect("in range");
        }
        assert_eq!(whole, parts);
        let mut odd = vec![0u32; 10];
        assert!(q.quantize(&delta, 7, &mut odd).is_err(), "a start off a group boundary is refused");
        assert!(q.quantize(&delta, 4864, &mut vec![0u32; 200]).is_err(), "a range past the end is refused");
        assert!(q.quantize(&delta, usize::MAX - 255, &mut odd).is_err(), "a start that overflows is refused");
    }

    #[test]
    fn every_implementation_quantizes_alike() {
        let (_, q) = quantizer(4);
        let values: Vec<f32> = (0..3000).map(|i| (i as f32 * 0.11).cos() * 1.5).collect();
        let draws: Vec<u32> = (0..3000u32).map(|i| i.wrapping_mul(2_654_435_761)).collect();
        let mut portable = draws.clone();
        quantize_values_portable(&q, &values, &mut portable);
        let mut dispatched = draws.clone();
        quantize_values(&q, &values, &mut dispatched);
        assert_eq!(portable, dispatched);
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            let mut v = draws.clone();
            // SAFETY: AVX2 is present, checked just above.
            unsafe { quantize_values_avx2(&q, &values, &mut v) };
            assert_eq!(v, portable);
        }
        // And each value follows the scalar rule.
        for ((v, d), got) in values.iter().zip(&draws).zip(&portable) {
            let x = (f64::from(v.clamp(-1.0, 1.0)) * q.w + q.clip) * q.scale;
            assert_eq!(*got, round_with(x, q.max, *d));
        }
    }

    #[test]
    fn bulk_quantization_is_unbiased() {
        let (p, q) = quantizer(5);
        // 0.3 · 0.6 (the weight) = 0.18 lands between two levels; the mean of many must come back to it.
        let delta = vec![0.3f32; 200_000];
        let mut out = vec![0u32; delta.len() + 1];
        q.quantize(&delta, 0, &mut out).expect("in range");
        let levels: Vec<f64> = out[1..].iter().map(|&v| f64::from(v)).collect();
        let exact = (0.3f64 * 0.6 + 1.0) * q.scale;
        let mean = levels.iter().sum::<f64>() / levels.len() as f64;
        assert!(levels.iter().all(|&l| l == exact.floor() || l == exact.ceil()));
        // The mean's standard deviation is at most 0.5 / sqrt(200000) ~ 0.0011 levels: allow 5 sigma.
        assert!((mean - exact).abs() < 0.0056, "mean {mean} exact {exact}");
        assert_eq!(p.max_level() as f64, q.max);
    }

    #[test]
    fn nan_is_refused_with_its_position() {
        let p = SecAggParams::default_for(10);
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
        assert_eq!(QuantizedInput::new(&p, &[0.0, f32::NAN], 5, &mut rng), Err(SecAggError::NonFinite(1)));
    }
}
