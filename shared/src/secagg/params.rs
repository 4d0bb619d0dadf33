//! The parameters of one secure-aggregation round, as carried in the round plan, and the checks that refuse
//! settings which would void privacy or overflow the modulus.
//!
//! **Word width.** Every coordinate of the delta travels masked in `word_bits` bits (the weight and the counts always
//! in 32), and all of its arithmetic is modulo `2^word_bits`: the agents compute in `u32` as always and send the low
//! `word_bits` bits ([`super::words`]), which is exact because reduction modulo `2^w` is a ring homomorphism from
//! `Z/2^32` (the masks cancel modulo `2^w` as they do modulo `2^32`). The width is one of the round's parameters, so
//! it is signed into the round context every agent checks against its neighbours'. The server's rule
//! ([`SecAggParams::narrow`]): without a configured `quant_bits` and without noise, as many quantization bits as let
//! the cohort's sum fit in [`TARGET_WORD_BITS`], but never fewer than [`MIN_QUANT_BITS`] (below that the demo loses
//! accuracy); then the narrowest word that holds `n · (2^b - 1)` plus the noise's headroom. A private round keeps the
//! quantization its privacy accounting chose (fewer bits would inflate the integer sensitivity and so the noise for
//! the same ε) and gets only the word its span needs.
//!
//! This module must never accept a threshold of half the neighbours or less (a server could then collect both the
//! self-mask seed and the mask key of one agent from two disjoint halves), nor a quantization whose cohort sum could
//! wrap around the word's modulus `2^word_bits`.

use serde::{Deserialize, Serialize};

use super::SecAggError;

/// The largest cohort a round may have.
pub const MAX_COHORT: usize = 1 << 20;
/// The longest delta (number of model parameters) a round may aggregate.
pub const MAX_DELTA_LEN: usize = 1 << 28;

/// Secure-aggregation settings for one round.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SecAggParams {
    /// `k`: how many neighbours each agent pairs with on the Harary graph (even, unless it covers the whole cohort).
    pub neighbours: u32,
    /// `t`: how many of an agent's neighbours must survive to reconstruct its secrets; more than `k/2`.
    pub threshold: u32,
    /// Each coordinate of the delta is clipped to `±clip` before quantization.
    pub clip: f32,
    /// Quantization uses `2^quant_bits` levels per coordinate.
    pub quant_bits: u32,
    /// The weight of an agent is `min(examples, weight_cap) / weight_cap`.
    pub weight_cap: u64,
    /// How many exact integer counts follow the weight in each masked vector (`[w, c_1..c_counts, w·Δ]`), e.g. the
    /// federated evaluation's correct / examples / loss sum. They are summed exactly, never quantized; each agent's
    /// count must be at most [`SecAggParams::count_limit`] so that the cohort's sum cannot wrap.
    pub counts: u32,
    /// Bounded contributions: each agent scales its delta down to this L2 norm before clipping coordinates,
    /// weighting and quantizing; the server refuses a sum whose mean is further from zero than that
    /// ([`super::bounds`]). `None`: coordinates are only clipped to `±clip`.
    pub clip_norm: Option<f32>,
    /// Distributed differential privacy: the variance of the discrete Gaussian noise each agent adds to every
    /// quantized delta coordinate before masking, in quantization levels squared ([`crate::privacy`]). 0: none.
    pub noise_variance: f64,
    /// The width of a masked delta coordinate, in bits ([`MIN_WORD_BITS`]`..=32`): its arithmetic is modulo
    /// `2^word_bits` and it travels in that many bits. The cohort's sum plus the noise's headroom must fit
    /// ([`SecAggParams::validate`]). The weight and the counts are always 32-bit words.
    pub word_bits: u32,
}

/// The narrowest word a round may use.
pub const MIN_WORD_BITS: u32 = 8;
/// The widest word: the PRG's and the quantizer's native `u32`.
pub const MAX_WORD_BITS: u32 = 32;
/// The word width the server's default quantization aims for ([`SecAggParams::narrow`]): under two bytes a
/// coordinate, so that a masked upload (packed to the bit) stays under 2 · P bytes with QUIC's framing.
pub const TARGET_WORD_BITS: u32 = 15;
/// The fewest quantization bits the server's default rule gives a round without noise, whatever the cohort. On the
/// demo (BENCHMARKS.md) 11 bits end within 0.05 points of 12 and 22, 10 bits 0.1 below, 9 bits 0.45 below: the floor
/// keeps two bits of margin over where the stochastic rounding noise starts to cost accuracy. A cohort too large for
/// this many bits in [`TARGET_WORD_BITS`] gets a wider word instead.
pub const MIN_QUANT_BITS: u32 = 11;

/// How many standard deviations of the cohort's summed noise a coordinate may stray beyond what the agents'
/// quantized values can produce; the modulus keeps that much headroom on both sides. The chance that honest noise
/// strays further in one coordinate is below 10^-30.
pub const NOISE_SIGMAS: f64 = 12.0;

/// The most exact counts a masked vector may carry.
pub const MAX_COUNTS: u32 = 16;

impl SecAggParams {
    /// Reasonable settings for a cohort of `cohort` agents: a complete graph up to 21 agents, otherwise
    /// `k ≈ 3·log2(n)` neighbours; `t = k/2 + 1 + k/6` (tolerates about a third of the neighbours dropping out);
    /// clip ±8 and up to 2^22 levels as in Flower, fewer levels when the cohort is so large the sum could wrap.
    pub fn default_for(cohort: usize) -> Self {
        let n = cohort.max(2) as u64;
        let complete = (n - 1) as u32;
        let neighbours = if complete <= 20 {
            complete
        } else {
            let log2 = 64 - (n - 1).leading_zeros(); // ceil(log2 n)
            let half = (3 * log2).div_ceil(2);
            (2 * half).min(complete & !1).max(20)
        };
        let k_eff = neighbours.min(complete);
        let threshold = (k_eff / 2 + 1 + k_eff / 6).min(k_eff);
        let mut quant_bits = 22;
        while quant_bits > 1 && n * ((1u64 << quant_bits) - 1) > u64::from(u32::MAX) {
            quant_bits -= 1;
        }
        SecAggParams {
            neighbours,
            threshold,
            clip: 8.0,
            quant_bits,
            weight_cap: 1000,
            counts: 0,
            clip_norm: None,
            noise_variance: 0.0,
            word_bits: MAX_WORD_BITS,
        }
    }

    /// Settings with `k` neighbours, threshold `t`, clip, quantization bits and weight cap, and no exact counts,
    /// no L2 bound, no noise and 32-bit words.
    pub fn new(neighbours: u32, threshold: u32, clip: f32, quant_bits: u32, weight_cap: u64) -> Self {
        SecAggParams {
            neighbours,
            threshold,
            clip,
            quant_bits,
            weight_cap,
            counts: 0,
            clip_norm: None,
            noise_variance: 0.0,
            word_bits: MAX_WORD_BITS,
        }
    }

    /// The server's choice of quantization and word width for a cohort of `cohort` (see the module doc): unless
    /// `keep_quant_bits` (the operator configured them) or the round is noised, `quant_bits` drops to the most that
    /// let the sum fit in [`TARGET_WORD_BITS`], but not below [`MIN_QUANT_BITS`] (nor rises above what it was);
    /// then `word_bits` becomes the narrowest that holds the sum ([`SecAggParams::sum_bits`]).
    pub fn narrow(&mut self, cohort: usize, keep_quant_bits: bool) {
        if !keep_quant_bits && self.noise_variance <= 0.0 {
            let n = cohort.max(1) as u64;
            let top = (1u64 << TARGET_WORD_BITS) - 1;
            let mut fit = self.quant_bits;
            while fit > MIN_QUANT_BITS && n.saturating_mul((1u64 << fit.min(63)) - 1) > top {
                fit -= 1;
            }
            self.quant_bits = fit;
        }
        self.word_bits = self.sum_bits(cohort);
    }

    /// The largest value the cohort's sum of one delta coordinate can take, noise headroom on both sides included:
    /// `cohort · (2^quant_bits - 1) + 2 · noise_margin`.
    pub fn sum_span(&self, cohort: usize) -> u64 {
        (cohort as u64).saturating_mul(self.max_level()).saturating_add(2 * self.noise_margin(cohort))
    }

    /// The narrowest word ([`MIN_WORD_BITS`]`..=`[`MAX_WORD_BITS`]) that holds [`SecAggParams::sum_span`]; 33 when
    /// not even 32 bits do.
    pub fn sum_bits(&self, cohort: usize) -> u32 {
        (64 - self.sum_span(cohort).leading_zeros()).max(MIN_WORD_BITS)
    }

    /// `2^word_bits - 1`: the largest residue of a delta coordinate, and the mask that reduces a `u32` to it.
    pub fn word_max(&self) -> u32 {
        u32::MAX >> (MAX_WORD_BITS - self.word_bits.clamp(1, MAX_WORD_BITS))
    }

    /// How far, in quantization levels, the summed noise of `survivors` agents may take one coordinate beyond the
    /// range their quantized values can produce: [`NOISE_SIGMAS`] standard deviations (0 without noise).
    pub fn noise_margin(&self, survivors: usize) -> u64 {
        if self.noise_variance <= 0.0 {
            return 0;
        }
        (NOISE_SIGMAS * (survivors as f64 * self.noise_variance).sqrt()).ceil() as u64
    }

    /// The number of neighbours each agent really has in a cohort of `cohort` agents: `min(k, n - 1)`.
    pub fn effective_neighbours(&self, cohort: usize) -> usize {
        (self.neighbours as usize).min(cohort.saturating_sub(1))
    }

    /// The largest count one agent may put in a coordinate of a cohort of `cohort`: the cohort's sum then fits in
    /// `u32` and unmasks exactly.
    pub fn count_limit(&self, cohort: usize) -> u32 {
        u32::MAX / u32::try_from(cohort.max(1)).unwrap_or(u32::MAX)
    }

    /// The length of a masked vector for a delta of `delta_len` values: the weight, the counts, the delta.
    pub fn vector_len(&self, delta_len: usize) -> usize {
        1 + self.counts as usize + delta_len
    }

    /// The number of quantization levels minus one: the largest quantized value of one coordinate.
    pub fn max_level(&self) -> u64 {
        (1u64 << self.quant_bits.min(31)) - 1
    }

    /// The L2 and L1 sensitivities, in the integer domain, of one agent's quantized update of `dimension` values
    /// under these parameters (its L2 clip, scaled to the quantization levels and rounded stochastically), or
    /// `None` without an L2 clip. The server's privacy accounting and each agent's own budget use this one
    /// computation, so both charge a round the same.
    pub fn integer_sensitivities(&self, dimension: u64) -> Option<(f64, f64)> {
        let clip_norm = f64::from(self.clip_norm?);
        let scale = self.max_level() as f64 / (2.0 * f64::from(self.clip));
        let l2 = crate::privacy::integer_l2_sensitivity(2.0 * clip_norm, scale, dimension);
        Some((l2, crate::privacy::integer_l1_sensitivity(l2, dimension)))
    }

    /// Refuses settings that void privacy (threshold of half the neighbours or less, too few neighbours) or overflow
    /// the modulus (`cohort · (2^bits - 1)`, plus the noise's headroom, must fit in the `2^word_bits` of a delta
    /// word, and the weight's sum in 2^32), and sizes beyond the protocol's bounds. Each agent runs this on the
    /// round's parameters before it advertises anything, so it refuses a word too narrow for its cohort's sum.
    pub fn validate(&self, cohort: usize, delta_len: usize) -> Result<(), SecAggError> {
        let bad = |m: String| Err(SecAggError::InvalidParams(m));
        if cohort < 2 {
            return bad(format!("a cohort of {cohort} agents cannot hide anyone's input"));
        }
        if cohort > MAX_COHORT {
            return bad(format!("a cohort of {cohort} agents exceeds the limit of {MAX_COHORT}"));
        }
        if delta_len == 0 || delta_len > MAX_DELTA_LEN {
            return bad(format!("a delta of {delta_len} values is outside 1..={MAX_DELTA_LEN}"));
        }
        if self.neighbours == 0 {
            return bad("an agent needs at least one neighbour".into());
        }
        let k = self.effective_neighbours(cohort);
        if k < cohort - 1 && k % 2 == 1 {
            return bad(format!("{k} neighbours: a Harary graph that does not cover the cohort needs an even degree"));
        }
        let t = self.threshold as usize;
        if t == 0 || t > k {
            return bad(format!("threshold {t} must be in 1..={k}"));
        }
        if 2 * t <= k {
            return bad(format!("threshold {t} must exceed half of the {k} neighbours"));
        }
        if !self.clip.is_finite() || self.clip <= 0.0 {
            return bad(format!("clip {} must be a positive finite number", self.clip));
        }
        if !(1..=30).contains(&self.quant_bits) {
            return bad(format!("quant_bits {} must be in 1..=30", self.quant_bits));
        }
        if let Some(c) = self.clip_norm
            && (!c.is_finite() || c <= 0.0)
        {
            return bad(format!("clip_norm {c} must be a positive finite number"));
        }
        if !self.noise_variance.is_finite() || self.noise_variance < 0.0 {
            return bad(format!("noise_variance {} must be a finite number, at least 0", self.noise_variance));
        }
        if self.noise_variance > crate::privacy::MAX_VARIANCE {
            return bad(format!("noise_variance {} exceeds {}", self.noise_variance, crate::privacy::MAX_VARIANCE));
        }
        if !(MIN_WORD_BITS..=MAX_WORD_BITS).contains(&self.word_bits) {
            return bad(format!("word_bits {} must be in {MIN_WORD_BITS}..={MAX_WORD_BITS}", self.word_bits));
        }
        // The sum plus the noise's headroom below 0 and above the top must not wrap around the word's modulus (and
        // the weight's sum, in a 32-bit word, not around 2^32).
        let span = self.sum_span(cohort);
        if span > u64::from(self.word_max()) || (cohort as u64).saturating_mul(self.max_level()) > u64::from(u32::MAX) {
            return bad(format!(
                "{cohort} agents times {} levels (plus the noise's headroom) overflows the 2^{} modulus of a {}-bit \
                 word",
                self.max_level() + 1,
                self.word_bits,
                self.word_bits
            ));
        }
        if self.weight_cap == 0 {
            return bad("weight_cap must be at least 1".into());
        }
        if self.counts > MAX_COUNTS {
            return bad(format!("{} counts exceed the limit of {MAX_COUNTS}", self.counts));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_valid_for_every_cohort_size_from_two_to_a_hundred_thousand() {
        for n in (2..300).chain([1000, 5000, 100_000]) {
            let p = SecAggParams::default_for(n);
            p.validate(n, 10).unwrap_or_else(|e| panic!("n={n}: {e} {p:?}"));
        }
    }

    #[test]
    fn a_threshold_of_half_the_neighbours_is_refused() {
        let mut p = SecAggParams::default_for(100);
        p.threshold = p.neighbours / 2;
        assert!(p.validate(100, 10).is_err());
    }

    #[test]
    fn a_quantization_that_could_wrap_the_cohort_sum_is_refused() {
        let mut p = SecAggParams::default_for(100);
        p.quant_bits = 26; // 100 * 2^26 > 2^32
        assert!(p.validate(100, 10).is_err());
        p.quant_bits = 25;
        assert!(p.validate(100, 10).is_ok());
    }

    #[test]
    fn a_word_too_narrow_for_the_cohorts_sum_is_refused_and_the_narrowest_that_holds_it_passes() {
        let mut p = SecAggParams::new(9, 6, 1.0, 12, 10);
        // 10 · 4095 = 40,950 needs 16 bits.
        assert_eq!(p.sum_bits(10), 16);
        p.word_bits = 15;
        let err = p.validate(10, 10).unwrap_err();
        assert!(err.to_string().contains("15-bit word"), "{err}");
        p.word_bits = 16;
        p.validate(10, 10).unwrap();
        // Noise headroom counts too: a variance of 100 adds 2 · 12 · √(10 · 100) ≈ 759 levels, still in 16 bits,
        // and 200,000 adds 2 · 16,971, which is not.
        p.noise_variance = 100.0;
        p.validate(10, 10).unwrap();
        p.noise_variance = 200_000.0;
        assert!(p.validate(10, 10).is_err());
        assert_eq!(p.sum_bits(10), 17);
        for bits in [0, 7, 33] {
            let q = SecAggParams { word_bits: bits, ..SecAggParams::new(9, 6, 1.0, 4, 10) };
            assert!(q.validate(10, 10).is_err(), "word_bits {bits}");
        }
    }

    #[test]
    fn the_servers_rule_fits_fifteen_bits_keeps_a_floor_of_quantization_and_leaves_noised_rounds_their_bits() {
        // 10 agents: 11 bits (10 · 2047 < 2^15), in a 15-bit word.
        let mut p = SecAggParams::default_for(10);
        p.narrow(10, false);
        assert_eq!((p.quant_bits, p.word_bits), (11, 15));
        p.validate(10, 10).unwrap();
        // 3 agents: 13 bits (3 · 8191 < 2^15).
        let mut p = SecAggParams::default_for(3);
        p.narrow(3, false);
        assert_eq!((p.quant_bits, p.word_bits), (13, 15));
        // 1,000 agents: 15 bits cannot hold 11-bit values, so the floor holds and the word widens to 21.
        let mut p = SecAggParams::default_for(1000);
        p.narrow(1000, false);
        assert_eq!((p.quant_bits, p.word_bits), (MIN_QUANT_BITS, 21));
        p.validate(1000, 10).unwrap();
        // Configured bits are kept: 20 bits for 10 agents need a 24-bit word.
        let mut p = SecAggParams { quant_bits: 20, ..SecAggParams::default_for(10) };
        p.narrow(10, true);
        assert_eq!((p.quant_bits, p.word_bits), (20, 24));
        // A noised round keeps its bits and gets the word its span (noise included) needs.
        let mut p = SecAggParams { quant_bits: 16, noise_variance: 1e6, ..SecAggParams::default_for(10) };
        p.narrow(10, false);
        assert_eq!(p.quant_bits, 16);
        assert_eq!(p.word_bits, p.sum_bits(10));
        p.validate(10, 10).unwrap();
        // Every cohort size the rule handles gives valid parameters.
        for n in (2..300).chain([5000, 100_000]) {
            let mut p = SecAggParams::default_for(n);
            p.narrow(n, false);
            p.validate(n, 10).unwrap_or_else(|e| panic!("n={n}: {e} {p:?}"));
        }
    }

    #[test]
    fn an_odd_degree_that_does_not_cover_the_cohort_is_refused() {
        let p = SecAggParams::new(7, 5, 1.0, 16, 10);
        assert!(p.validate(50, 10).is_err());
        assert!(p.validate(8, 10).is_ok());
    }
}
