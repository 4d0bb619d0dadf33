//! Fixed-point quantization of an agent's contribution `[w, w·Δ]` for secure aggregation, and dequantization of
//! the cohort's sum.
//!
//! With `clip_norm` set, the delta is first scaled down to that L2 norm (bounded contributions; see
//! [`super::bounds`]). Each delta coordinate is clipped to `±clip`, multiplied by the agent's weight
//! `w = min(examples, cap) / cap`, mapped affinely from `[-clip, clip]` onto `[0, M]` (`M = 2^bits - 1`) and rounded stochastically (up with
//! probability equal to the fraction), so the quantized value is an unbiased estimate. The weight itself is mapped
//! from `[0, 1]` onto `[0, M]` the same way. Sums of up to `n` vectors fit in the round's word because
//! [`SecAggParams::validate`] requires `n · M < 2^word_bits` (plus the noise's headroom): everything here computes
//! in `u32` modulo 2^32, and a narrower word keeps the low bits ([`super::words`]); [`dequantize_sum`] reads each
//! delta coordinate modulo `2^word_bits`.
//!
//! With `noise_variance` set (distributed differential privacy, [`crate::privacy`]), discrete Gaussian noise is
//! added, modulo 2^32, to every quantized delta coordinate, never to the weight or the counts. The noise of the
//! coordinates in PRG group `g` comes from a ChaCha20 stream `g` under a key drawn from the caller's RNG, so the
//! noise, like the rounding, is the same whatever ranges the vector is computed in.
//!
//! Randomness comes in from the caller; this module must never read global randomness, and never accepts NaN.

use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

use super::prg::{GROUP_WORDS, MaskSign, apply_masks_at};
use super::{SecAggError, SecAggParams, SecureRng};
use crate::privacy::DiscreteGaussian;

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
    /// The factor that brings the delta down to `clip_norm` in L2 norm (1 without `clip_norm`, or when it is
    /// already within it).
    l2: f64,
    w: f64,
    scale: f64,
    max: f64,
    draws: [([u8; 32], MaskSign); 1],
    /// Exact counts placed after the weight, unquantized.
    counts: Vec<u32>,
    /// The discrete Gaussian added to each delta coordinate, and the key of its per-group streams.
    noise: Option<(DiscreteGaussian, [u8; 32])>,
}

/// The factor `min(1, clip_norm / ‖delta‖₂)`; a delta whose norm is not finite is refused.
fn l2_factor(clip_norm: Option<f32>, delta: &[f32]) -> Result<f64, SecAggError> {
    let Some(c) = clip_norm else { return Ok(1.0) };
    if let Some(i) = delta.iter().position(|v| !v.is_finite()) {
        return Err(SecAggError::NonFinite(i));
    }
    let norm = delta.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>().sqrt();
    Ok(if norm > f64::from(c) { f64::from(c) / norm } else { 1.0 })
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
        let l2 = l2_factor(params.clip_norm, delta)?;
        let mut key = [0u8; 32];
        rng.fill_bytes(&mut key);
        let noise = if params.noise_variance > 0.0 {
            let dg = DiscreteGaussian::new(params.noise_variance)
                .map_err(|e| SecAggError::InvalidParams(format!("noise_variance: {e}")))?;
            let mut noise_key = [0u8; 32];
            rng.fill_bytes(&mut noise_key);
            Some((dg, noise_key))
        } else {
            None
        };
        Ok(Quantizer {
            clip,
            l2,
            w: weight(params, examples),
            scale: max / (2.0 * clip),
            max,
            draws: [(key, MaskSign::Add)],
            counts: counts.to_vec(),
            noise,
        })
    }

    /// Adds the noise of coordinates `start .. start + out.len()` to `out`, skipping the header's coordinates.
    fn add_noise(&self, start: usize, out: &mut [u32]) {
        let Some((dg, key)) = &self.noise else { return };
        let end = start + out.len();
        let first_group = start / GROUP_WORDS;
        for g in first_group..end.div_ceil(GROUP_WORDS) {
            let mut rng = ChaCha20Rng::from_seed(*key);
            rng.set_stream(g as u64);
            for c in g * GROUP_WORDS..((g + 1) * GROUP_WORDS).min(end) {
                let n = dg.sample(&mut rng);
                if c >= start.max(self.header()) {
                    // `as u32` keeps the residue of the noise modulo 2^32.
                    out[c - start] = out[c - start].wrapping_add(n as u32);
                }
            }
        }
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
        self.add_noise(start, out);
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
    let (clip, l2, w, scale, max) = (q.clip, q.l2, q.w, q.scale, q.max);
    for (o, &d) in out.iter_mut().zip(values) {
        // NaN was refused in `Quantizer::new`; infinities clip like any large value (without `clip_norm`).
        let v = (f64::from(d) * l2).max(-clip).min(clip) * w;
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
///
/// A delta coordinate is read modulo `2^word_bits` as an integer in `[-margin, count·M + margin]` (`margin` the
/// noise's headroom, [`SecAggParams::noise_margin`]): a residue above that range is a negative sum that wrapped,
/// and comes back negative, far outside what the agents could produce (so [`super::bounds`] refuses it).
pub fn dequantize_sum(params: &SecAggParams, sum: &[u32], count: usize) -> (f64, Vec<f32>) {
    let max = params.max_level() as f64;
    let clip = f64::from(params.clip);
    let q = quantum(params);
    let offset = count as f64 * clip;
    let top = (count as u64).saturating_mul(params.max_level()).saturating_add(params.noise_margin(count));
    let word_max = params.word_max();
    let modulus = f64::from(word_max) + 1.0;
    let weight_sum = sum.first().map_or(0.0, |&s| f64::from(s) / max);
    let deltas = sum
        .iter()
        .skip(1 + params.counts as usize)
        .map(|&s| {
            let s = s & word_max;
            let level = if u64::from(s) > top { f64::from(s) - modulus } else { f64::from(s) };
            (level * q - offset) as f32
        })
        .collect();
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
        let p = SecAggParams::new(2, 2, 1.0, 20, 100);
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
            assert_eq!(q.l2, 1.0);
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

    fn params_with(clip_norm: Option<f32>, noise_variance: f64) -> SecAggParams {
        SecAggParams { clip_norm, noise_variance, ..SecAggParams::default_for(10) }
    }

    #[test]
    fn a_delta_longer_than_clip_norm_is_scaled_down_to_it_and_a_shorter_one_is_left_alone() {
        let long: Vec<f32> = (0..400).map(|i| ((i as f32) * 0.7).sin() * 3.0).collect();
        let norm = long.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>().sqrt();
        assert!(norm > 20.0);
        for (clip_norm, factor) in [(Some(2.0f32), 2.0 / norm), (Some(1e6), 1.0), (None, 1.0)] {
            let p = SecAggParams { weight_cap: 1, ..params_with(clip_norm, 0.0) };
            let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(2);
            let q = QuantizedInput::new(&p, &long, 1, &mut rng).unwrap();
            let (w, back) = dequantize_sum(&p, q.as_slice(), 1);
            assert_eq!(w, 1.0);
            for (b, d) in back.iter().zip(&long) {
                // One quantization step of error at most.
                assert!((f64::from(*b) - f64::from(*d) * factor).abs() <= quantum(&p) * 1.01, "{b} vs {d}·{factor}");
            }
        }
        let p = params_with(Some(1.0), 0.0);
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(2);
        assert_eq!(QuantizedInput::new(&p, &[1.0, f32::INFINITY], 3, &mut rng), Err(SecAggError::NonFinite(1)));
    }

    /// The noise is added to the delta's coordinates only, has the configured variance, and is the same whatever
    /// ranges the vector is computed in (the masked stream computes it chunk by chunk).
    #[test]
    fn noise_goes_on_every_delta_coordinate_with_its_variance_and_the_same_in_any_chunking() {
        let variance = 400.0;
        let quiet = SecAggParams { counts: 2, ..params_with(None, 0.0) };
        let noisy = SecAggParams { counts: 2, ..params_with(None, variance) };
        let delta: Vec<f32> = (0..20_000).map(|i| ((i as f32) * 0.01).cos()).collect();
        let counts = [7, 9];
        let make = |p: &SecAggParams| {
            let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(11);
            Quantizer::with_counts(p, &delta, 50, &counts, 1000, &mut rng).unwrap()
        };
        let (a, b) = (make(&quiet), make(&noisy));
        let len = 3 + delta.len();
        let (mut plain, mut whole) = (vec![0u32; len], vec![0u32; len]);
        a.quantize(&delta, 0, &mut plain).unwrap();
        b.quantize(&delta, 0, &mut whole).unwrap();
        assert_eq!(plain[..3], whole[..3], "the weight and the counts carry no noise");
        let noise: Vec<f64> =
            plain.iter().zip(&whole).skip(3).map(|(&p, &n)| f64::from(n.wrapping_sub(p) as i32)).collect();
        let mean = noise.iter().sum::<f64>() / noise.len() as f64;
        let var = noise.iter().map(|n| (n - mean).powi(2)).sum::<f64>() / noise.len() as f64;
        assert!(mean.abs() < 5.0 * (variance / noise.len() as f64).sqrt(), "mean {mean}");
        assert!((var / variance - 1.0).abs() < 0.05, "variance {var}, expected {variance}");
        let mut parts = vec![0u32; len];
        for (c, chunk) in parts.chunks_mut(3 * GROUP_WORDS).enumerate() {
            b.quantize(&delta, c * 3 * GROUP_WORDS, chunk).unwrap();
        }
        assert_eq!(parts, whole);
    }

    /// A sum whose noise took a coordinate below zero wraps modulo 2^32; it is read back as the small negative
    /// number it is, not as a huge positive one.
    #[test]
    fn a_noisy_sum_below_zero_is_read_back_negative() {
        let p = SecAggParams { weight_cap: 1, ..params_with(None, 100.0) };
        let clip = f64::from(p.clip);
        // Two agents, both at -clip (level 0), with noise -30 levels in total.
        let sum = [2 * p.max_level() as u32, 0u32.wrapping_sub(30)];
        let (_, back) = dequantize_sum(&p, &sum, 2);
        let expected = -30.0 * quantum(&p) - 2.0 * clip;
        assert!((f64::from(back[0]) - expected).abs() < 1e-4, "{} vs {expected}", back[0]);
    }

    #[test]
    fn nan_is_refused_with_its_position() {
        let p = SecAggParams::default_for(10);
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
        assert_eq!(QuantizedInput::new(&p, &[0.0, f32::NAN], 5, &mut rng), Err(SecAggError::NonFinite(1)));
    }
}
