//! Exact sampling of the discrete Gaussian N_Z(0, σ²): `P[X = x] ∝ exp(-x²/(2σ²))` over the integers.
//!
//! Canonne, Kamath, Steinke 2020, "The Discrete Gaussian for Differential Privacy" (NeurIPS 2020,
//! arXiv:2004.00010), Algorithm 1 (Bernoulli(exp(-γ)) for rational γ), Algorithm 2 (discrete Laplace with scale
//! t, here with s = 1) and Algorithm 3 (discrete Gaussian by rejection from the discrete Laplace with
//! t = ⌊σ⌋ + 1). Every probability is a ratio of integers and every coin is a uniform integer compared with an
//! integer (`gen_range`, which rand samples by rejection, exactly; the sign is one raw random bit), so there is no
//! floating point in the sampling path.
//!
//! Floating point appears once, when [`DiscreteGaussian::new`] turns the requested σ² (an `f64`) into the
//! rational `num / 2^20` with `num = ⌈σ² · 2^20⌉`: multiplying by a power of two and taking the ceiling are
//! exact in `f64`, and rounding up means the noise is never smaller than requested. [`DiscreteGaussian::variance`]
//! returns the σ² actually sampled; that is the value to give the accountant.
//!
//! Departures from exactness, all below any probability a computer can observe:
//! - a discrete-Laplace proposal whose magnitude overflows `i64`, or whose acceptance exponent
//!   `γ = (|y| t - σ²)² / (2σ² t²)` has numerator above 2^128 (then γ ≥ 2^23 for every allowed σ², acceptance
//!   probability below e^{-8,000,000}), is rejected outright instead of being offered to a coin;
//! - in Algorithm 1 the loop counter K reaching 2^23 (probability below 1/(2^23)!) is treated as a failed coin.
//!
//! Must never: read global randomness (the RNG comes from the caller and must be cryptographic), use floating
//! point while sampling, or change a caller's vector partially ([`DiscreteGaussian::add_to`] is all or nothing).
//! Not covered: timing. The number of coins drawn depends on the sample; an observer of the agent's CPU timing
//! learns something about its noise.

use rand::{CryptoRng, Rng, RngCore};

use super::PrivacyError;

/// σ² is represented as `num / VARIANCE_DENOMINATOR`.
const VARIANCE_DENOMINATOR: u128 = 1 << 20;

/// The largest σ² accepted (2^32 ≈ 4.3e9; σ ≈ 65,536).
pub const MAX_VARIANCE: f64 = 4_294_967_296.0;

/// The discrete Gaussian N_Z(0, σ²) with σ² a rational `num / 2^20`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiscreteGaussian {
    /// σ² · 2^20.
    num: u128,
    /// ⌊σ⌋ + 1, the discrete Laplace scale of the proposal.
    t: u64,
}

impl DiscreteGaussian {
    /// The discrete Gaussian with variance parameter at least `variance` (rounded up to a multiple of 2^-20).
    /// Refuses NaN, infinities, values ≤ 0 and values above [`MAX_VARIANCE`].
    pub fn new(variance: f64) -> Result<Self, PrivacyError> {
        if !(variance.is_finite() && variance > 0.0 && variance <= MAX_VARIANCE) {
            return Err(PrivacyError::Parameter {
                mechanism: "discrete Gaussian",
                name: "variance",
                value: variance,
                reason: "must be finite, > 0 and ≤ 2^32",
            });
        }
        // Exact: scaling by 2^20 only changes the exponent, and the result is below 2^53 so ceil is exact.
        let scaled = (variance * VARIANCE_DENOMINATOR as f64).ceil();
        let num = scaled as u128;
        let t = isqrt((num / VARIANCE_DENOMINATOR) as u64) + 1;
        Ok(Self { num: num.max(1), t })
    }

    /// The σ² this sampler draws from (≥ the requested one, by less than 2^-20).
    pub fn variance(&self) -> f64 {
        self.num as f64 / VARIANCE_DENOMINATOR as f64
    }

    /// One sample.
    pub fn sample<R: RngCore + CryptoRng + ?Sized>(&self, rng: &mut R) -> i64 {
        loop {
            let y = discrete_laplace(self.t, rng);
            // γ = (|y| - σ²/t)² / (2σ²) = (|y|·t·D - num)² / (2·num·D·t²) with D = 2^20.
            let t = u128::from(self.t);
            let shifted = u128::from(y.unsigned_abs()) * t * VARIANCE_DENOMINATOR;
            let a = shifted.abs_diff(self.num);
            let Ok(a) = u64::try_from(a) else { continue };
            let a = u128::from(a);
            let gamma_num = a * a;
            let gamma_den = 2 * self.num * VARIANCE_DENOMINATOR * t * t;
            if bernoulli_exp(gamma_num, gamma_den, rng) {
                return y;
            }
        }
    }

    /// Fills `out` with independent samples.
    pub fn fill<R: RngCore + CryptoRng + ?Sized>(&self, out: &mut [i64], rng: &mut R) {
        for x in out {
            *x = self.sample(rng);
        }
    }

    /// Adds an independent sample to every coordinate of `values`. If any sum would overflow `i64`, returns the
    /// first such coordinate and leaves `values` unchanged.
    pub fn add_to<R: RngCore + CryptoRng + ?Sized>(&self, values: &mut [i64], rng: &mut R) -> Result<(), PrivacyError> {
        let mut noise = vec![0i64; values.len()];
        self.fill(&mut noise, rng);
        for (index, (&value, &n)) in values.iter().zip(&noise).enumerate() {
            if value.checked_add(n).is_none() {
                return Err(PrivacyError::NoiseOverflow { index, value, noise: n });
            }
        }
        for (value, n) in values.iter_mut().zip(noise) {
            *value += n;
        }
        Ok(())
    }

    /// Adds an independent sample to every word of a vector that lives modulo 2^32 (a quantized, not yet masked
    /// secure-aggregation input): `w ← (w + noise) mod 2^32`. The unmasked sum is then the sum of the inputs plus
    /// the sum of the noise, modulo 2^32, exactly as if the integers had been added first and reduced after.
    pub fn add_to_words<R: RngCore + CryptoRng + ?Sized>(&self, words: &mut [u32], rng: &mut R) {
        for w in words {
            // `as u32` keeps the low 32 bits of the two's complement: the residue of the noise modulo 2^32.
            *w = w.wrapping_add(self.sample(rng) as u32);
        }
    }
}

/// ⌊√n⌋, exactly.
fn isqrt(n: u64) -> u64 {
    let mut r = (n as f64).sqrt() as u64;
    while r.checked_mul(r).is_none_or(|sq| sq > n) {
        r -= 1;
    }
    while (r + 1).checked_mul(r + 1).is_some_and(|sq| sq <= n) {
        r += 1;
    }
    r
}

/// Bernoulli(num/den), 0 ≤ num ≤ den, den > 0: a uniform integer in [0, den) below num.
fn bernoulli<R: RngCore + ?Sized>(num: u128, den: u128, rng: &mut R) -> bool {
    // Certain outcomes need no coin (this changes no probability, only how many draws are made).
    if num == 0 {
        return false;
    }
    if num >= den {
        return true;
    }
    // The same uniform comparison in the narrowest integer type that holds the denominator: 32-bit draws cost
    // half a 64-bit one, and 128-bit ranges are much slower.
    if let (Ok(num), Ok(den)) = (u32::try_from(num), u32::try_from(den)) {
        return rng.gen_range(0..den) < num;
    }
    if let (Ok(num), Ok(den)) = (u64::try_from(num), u64::try_from(den)) {
        return rng.gen_range(0..den) < num;
    }
    rng.gen_range(0..den) < num
}

/// Bernoulli(exp(-γ)) for γ = num/den ≥ 0, den > 0 (CKS20 Algorithm 1).
fn bernoulli_exp<R: RngCore + ?Sized>(num: u128, den: u128, rng: &mut R) -> bool {
    let whole = num / den;
    // exp(-γ) = exp(-1)^⌊γ⌋ · exp(-(γ - ⌊γ⌋)): independent coins, all must succeed.
    let mut k = 0u128;
    while k < whole {
        if !bernoulli_exp_at_most_one(1, 1, rng) {
            return false;
        }
        k += 1;
    }
    bernoulli_exp_at_most_one(num % den, den, rng)
}

/// Bernoulli(exp(-γ)) for γ = num/den in [0, 1]: draw A_k ~ Bernoulli(γ/k) for k = 1, 2, ... until one fails;
/// succeed iff the first failure is at an odd k (CKS20 Algorithm 1, first case).
fn bernoulli_exp_at_most_one<R: RngCore + ?Sized>(num: u128, den: u128, rng: &mut R) -> bool {
    let mut k: u128 = 1;
    loop {
        let Some(den_k) = den.checked_mul(k) else { return k % 2 == 1 };
        if !bernoulli(num, den_k, rng) {
            return k % 2 == 1;
        }
        k += 1;
    }
}

/// The discrete Laplace `P[Y = y] ∝ exp(-|y|/t)` (CKS20 Algorithm 2 with s = 1).
fn discrete_laplace<R: RngCore + ?Sized>(t: u64, rng: &mut R) -> i64 {
    loop {
        // t ≤ 2^16 + 1 (σ² ≤ 2^32), so a 32-bit draw suffices.
        let u = match u32::try_from(t) {
            Ok(t32) => u64::from(rng.gen_range(0..t32)),
            Err(_) => rng.gen_range(0..t),
        };
        if !bernoulli_exp(u128::from(u), u128::from(t), rng) {
            continue;
        }
        let mut v = 0u64;
        while bernoulli_exp_at_most_one(1, 1, rng) {
            v = v.saturating_add(1);
        }
        // Magnitudes beyond i64 are rejected (see the module doc).
        let Some(x) = v.checked_mul(t).and_then(|tv| tv.checked_add(u)).and_then(|x| i64::try_from(x).ok()) else {
            continue;
        };
        let negative = rng.next_u32() & 1 == 1;
        if negative && x == 0 {
            continue;
        }
        return if negative { -x } else { x };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::{CryptoRng, RngCore, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// The exact pmf of N_Z(0, σ²) on [-k, k] (mass beyond is below 1e-30 for the k used).
    fn pmf(variance: f64, k: i64) -> Vec<f64> {
        let weights: Vec<f64> = (-k..=k).map(|x| (-(x * x) as f64 / (2.0 * variance)).exp()).collect();
        let total: f64 = weights.iter().sum();
        weights.into_iter().map(|w| w / total).collect()
    }

    /// E[X²] and E[X⁴] of N_Z(0, σ²), from the pmf.
    fn moments(variance: f64) -> (f64, f64) {
        let k = (20.0 * variance.sqrt()).ceil() as i64 + 20;
        let p = pmf(variance, k);
        let second = p.iter().zip(-k..=k).map(|(p, x)| p * (x * x) as f64).sum();
        let fourth = p.iter().zip(-k..=k).map(|(p, x)| p * ((x * x) as f64).powi(2)).sum();
        (second, fourth)
    }

    /// Pearson's statistic of `samples` against N_Z(0, `variance`), bins with expected count ≥ 5 (tails merged
    /// into the outermost bins), and its degrees of freedom.
    fn chi_square(samples: &[i64], variance: f64) -> (f64, usize) {
        let k = (20.0 * variance.sqrt()).ceil() as i64 + 20;
        let p = pmf(variance, k);
        let n = samples.len() as f64;
        let mut edge = 0i64;
        while p[(k + edge + 1) as usize] * n >= 5.0 {
            edge += 1;
        }
        let bin = |x: i64| (x.clamp(-edge, edge) + edge) as usize;
        let mut expected = vec![0.0; (2 * edge + 1) as usize];
        for (x, px) in (-k..=k).zip(&p) {
            expected[bin(x)] += px * n;
        }
        let mut observed = vec![0.0; expected.len()];
        for &s in samples {
            observed[bin(s)] += 1.0;
        }
        let stat = observed.iter().zip(&expected).map(|(o, e)| (o - e) * (o - e) / e).sum();
        (stat, expected.len() - 1)
    }

    /// The chi-square quantile at 1 - 1e-4 (Wilson-Hilferty; z = 3.719).
    fn chi_square_critical(df: usize) -> f64 {
        let k = df as f64;
        let h = 2.0 / (9.0 * k);
        k * (1.0 - h + 3.719 * h.sqrt()).powi(3)
    }

    fn draw(variance: f64, n: usize, seed: u64) -> Vec<i64> {
        let sampler = DiscreteGaussian::new(variance).expect("valid variance");
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut out = vec![0; n];
        sampler.fill(&mut out, &mut rng);
        out
    }

    #[test]
    fn small_variances_match_the_exact_pmf_in_a_chi_square_test() {
        for (variance, seed) in [(0.5, 1), (1.0, 2), (2.0, 3), (7.3, 4)] {
            let (stat, df) = chi_square(&draw(variance, 20_000, seed), variance);
            assert!(df >= 2, "σ² = {variance}: only {df} degrees of freedom");
            assert!(stat < chi_square_critical(df), "σ² = {variance}: χ² = {stat} with {df} df");
        }
    }

    #[test]
    fn the_chi_square_test_rejects_a_variance_off_by_twenty_percent() {
        // The test above has power: samples of σ² = 2 are not accepted as σ² = 2.4 or 1.6.
        let samples = draw(2.0, 20_000, 3);
        for wrong in [1.6, 2.4] {
            let (stat, df) = chi_square(&samples, wrong);
            assert!(stat > chi_square_critical(df), "σ² = 2 samples pass as σ² = {wrong}: χ² = {stat}");
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_noise_and_another_seed_other_noise() {
        assert_eq!(draw(1e4, 100, 9), draw(1e4, 100, 9));
        assert_ne!(draw(1e4, 100, 9), draw(1e4, 100, 10));
    }

    #[test]
    fn the_variance_is_rounded_up_never_down() {
        for v in [0.5, 1.0 / 3.0, 2.0_f64.sqrt(), 1e8 + 0.1, 12_345.678_9] {
            let s = DiscreteGaussian::new(v).expect("valid");
            assert!(
                s.variance() >= v && s.variance() - v < 1.0 / VARIANCE_DENOMINATOR as f64,
                "{v} → {}",
                s.variance()
            );
        }
        assert_eq!(DiscreteGaussian::new(1e8).map(|s| s.variance()), Ok(1e8));
    }

    #[test]
    fn the_proposal_scale_is_floor_sigma_plus_one() {
        for (v, t) in [(0.5, 1), (1.0, 2), (3.99, 2), (4.0, 3), (1e8, 10_001), (MAX_VARIANCE, 65_537)] {
            assert_eq!(DiscreteGaussian::new(v).map(|s| s.t), Ok(t), "σ² = {v}");
        }
    }

    #[test]
    fn variances_that_are_not_positive_finite_numbers_are_refused() {
        for v in [0.0, -1.0, f64::NAN, f64::INFINITY, MAX_VARIANCE * 2.0] {
            assert!(DiscreteGaussian::new(v).is_err(), "σ² = {v} accepted");
        }
    }

    #[test]
    fn bernoulli_exp_has_the_right_probability() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let n = 20_000;
        for (num, den) in [(0u128, 1u128), (3, 10), (1, 1), (27, 10), (9, 2)] {
            let p = (-(num as f64) / den as f64).exp();
            let hits = (0..n).filter(|_| bernoulli_exp(num, den, &mut rng)).count() as f64;
            let sd = (p * (1.0 - p) / n as f64).sqrt();
            assert!((hits / n as f64 - p).abs() <= 5.0 * sd + 1e-12, "γ = {num}/{den}: {} vs {p}", hits / n as f64);
        }
    }

    #[test]
    fn add_to_adds_noise_or_changes_nothing() {
        let sampler = DiscreteGaussian::new(100.0).expect("valid");
        let mut rng = ChaCha8Rng::seed_from_u64(6);
        let mut values = vec![1_000_000i64; 1_000];
        sampler.add_to(&mut values, &mut rng).expect("no overflow");
        assert!(values.iter().any(|&v| v != 1_000_000));
        let mut edge = vec![0, i64::MAX, i64::MIN, 0, 0];
        let before = edge.clone();
        let mut result = Ok(());
        for _ in 0..100 {
            result = sampler.add_to(&mut edge, &mut rng);
            if result.is_err() {
                break;
            }
            edge = before.clone();
        }
        assert!(matches!(result, Err(PrivacyError::NoiseOverflow { index: 1 | 2, .. })), "{result:?}");
        assert_eq!(edge, before, "a refused addition changes nothing");
    }

    #[test]
    fn noise_added_modulo_two_to_the_32_sums_like_integers() {
        let sampler = DiscreteGaussian::new(1e6).expect("valid");
        let agents: Vec<Vec<u32>> = (0..5u32).map(|a| vec![u32::MAX - a, 7, 1 << 31]).collect();
        let mut integer_sum = [0i64; 3];
        let mut word_sum = [0u32; 3];
        for (seed, input) in agents.iter().enumerate() {
            let mut words = input.clone();
            sampler.add_to_words(&mut words, &mut ChaCha8Rng::seed_from_u64(seed as u64));
            let mut noise = [0i64; 3];
            sampler.fill(&mut noise, &mut ChaCha8Rng::seed_from_u64(seed as u64));
            for i in 0..3 {
                integer_sum[i] += i64::from(input[i]) + noise[i];
                word_sum[i] = word_sum[i].wrapping_add(words[i]);
            }
        }
        let reduced = integer_sum.map(|s| s.rem_euclid(1 << 32) as u32);
        assert_eq!(word_sum, reduced);
    }

    #[test]
    fn works_through_a_trait_object_rng() {
        trait SecureRng: RngCore + CryptoRng {}
        impl<T: RngCore + CryptoRng> SecureRng for T {}
        let mut concrete = ChaCha8Rng::seed_from_u64(7);
        let rng: &mut dyn SecureRng = &mut concrete;
        let sampler = DiscreteGaussian::new(2.0).expect("valid");
        let _ = sampler.sample(rng);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

        /// Over σ² from 0.5 to 1e8: the sample mean is within 5 standard errors of 0, the sample variance within
        /// 5 standard errors of the distribution's variance, and positive and negative values are balanced.
        #[test]
        fn mean_variance_and_symmetry_hold_from_half_to_a_hundred_million(log_variance in (0.5f64).ln()..(1e8f64).ln(), seed in any::<u64>()) {
            let variance = log_variance.exp();
            let n = 2_000;
            let samples = draw(variance, n, seed);
            let sigma2 = DiscreteGaussian::new(variance).map(|s| s.variance()).unwrap_or(variance);
            // Below σ² = 16 the discrete moments differ measurably from the continuous ones; above, they agree to
            // far better than the sampling error (the difference is of order e^{-2π²σ²}).
            let (var, fourth) = if sigma2 < 16.0 { moments(sigma2) } else { (sigma2, 3.0 * sigma2 * sigma2) };
            let nf = n as f64;
            let mean = samples.iter().map(|&x| x as f64).sum::<f64>() / nf;
            prop_assert!(mean.abs() <= 5.0 * (var / nf).sqrt(), "mean {} for σ² {}", mean, sigma2);
            let second = samples.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>() / nf;
            let sd_second = ((fourth - var * var) / nf).sqrt();
            prop_assert!((second - var).abs() <= 5.0 * sd_second, "E[X²] {} vs {}", second, var);
            let positive = samples.iter().filter(|&&x| x > 0).count() as f64;
            let negative = samples.iter().filter(|&&x| x < 0).count() as f64;
            let nonzero = positive + negative;
            prop_assert!((positive - negative).abs() <= 5.0 * nonzero.sqrt() + 1.0, "{} positive, {} negative", positive, negative);
        }
    }
}
