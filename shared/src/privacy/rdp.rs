//! Rényi differential privacy (RDP) curves of the mechanisms fedge runs, and their conversion to (ε, δ).
//!
//! A curve is the RDP ε(α) of one round at each order α of [`default_orders`]; composition over rounds adds
//! curves. Two mechanisms:
//!
//! - **Poisson-subsampled Gaussian** (Mironov, Talwar, Zhang 2019, "Rényi Differential Privacy of the Sampled
//!   Gaussian Mechanism", §3.3), ported line by line from Google's dp_accounting 0.6.0
//!   (`rdp_privacy_accountant.py`: `_compute_log_a_int`, `_compute_log_a_frac` with its 1000-step limit and
//!   stopping rule, `_compute_rdp_poisson_subsampled_gaussian`), add-or-remove-one neighbours. Used for
//!   central-DP comparisons and checked against dp_accounting to 1e-3 relative in ε.
//! - **Distributed discrete Gaussian** (Kairouz, Liu, Steinke 2021, "The Distributed Discrete Gaussian Mechanism
//!   for Federated Learning with Secure Aggregation", ICML 2021, arXiv:2102.06387): see [`ddg_rdp`].
//!
//! The conversion [`epsilon_from_rdp`] is dp_accounting's `compute_epsilon` (Canonne, Kamath, Steinke 2020,
//! Proposition 12; Asoodeh et al. 2020, Eq. 20), including its KL shortcut and its α > 1.01 restriction.
//!
//! This module is pure arithmetic: it must never sample, read state, or round an ε down. Invalid parameters are
//! errors, never a silent ε of 0.

use std::f64::consts::PI;

use super::PrivacyError;
use super::special::{ln_binomial, ln_erfc};

/// dp_accounting's `DEFAULT_RDP_ORDERS`: 1.1, 1.2, ..., 10.9, then 11, ..., 63, then 128, 256, 512, 1024
/// (156 orders), computed with the same floating-point expressions so that integer orders are exact integers.
pub fn default_orders() -> Vec<f64> {
    let mut orders: Vec<f64> = (1..100).map(|x| 1.0 + f64::from(x) / 10.0).collect();
    orders.extend((11..64).map(f64::from));
    orders.extend([128.0, 256.0, 512.0, 1024.0]);
    orders
}

fn parameter(mechanism: &'static str, name: &'static str, value: f64, reason: &'static str) -> PrivacyError {
    PrivacyError::Parameter { mechanism, name, value, reason }
}

const SAMPLED_GAUSSIAN: &str = "Poisson-subsampled Gaussian";

/// RDP at each order of one round of the Gaussian mechanism with noise multiplier `noise_multiplier` (noise
/// standard deviation over L2 sensitivity) applied to a Poisson sample with rate `sampling_rate`.
///
/// `sampling_rate` must be in [0, 1] and `noise_multiplier` > 0 and finite (a zero multiplier is refused here,
/// not turned into an infinite ε, because it is always a configuration mistake).
pub fn subsampled_gaussian_rdp(
    sampling_rate: f64,
    noise_multiplier: f64,
    orders: &[f64],
) -> Result<Vec<f64>, PrivacyError> {
    if !(0.0..=1.0).contains(&sampling_rate) {
        return Err(parameter(SAMPLED_GAUSSIAN, "sampling_rate", sampling_rate, "must be in [0, 1]"));
    }
    if !(noise_multiplier.is_finite() && noise_multiplier > 0.0) {
        return Err(parameter(SAMPLED_GAUSSIAN, "noise_multiplier", noise_multiplier, "must be finite and > 0"));
    }
    orders
        .iter()
        .map(|&alpha| {
            if alpha.is_nan() || alpha <= 1.0 {
                return Err(parameter(SAMPLED_GAUSSIAN, "order", alpha, "RDP orders must be > 1"));
            }
            Ok(if sampling_rate == 0.0 {
                0.0
            } else if alpha.is_infinite() {
                f64::INFINITY
            } else if sampling_rate == 1.0 {
                alpha / (2.0 * noise_multiplier * noise_multiplier)
            } else if alpha.fract() == 0.0 {
                log_a_int(sampling_rate, noise_multiplier, alpha) / (alpha - 1.0)
            } else {
                log_a_frac(sampling_rate, noise_multiplier, alpha) / (alpha - 1.0)
            })
        })
        .collect()
}

/// `ln(e^x + e^y)`.
fn log_add(x: f64, y: f64) -> f64 {
    let (a, b) = if x < y { (x, y) } else { (y, x) };
    if a == f64::NEG_INFINITY {
        return b;
    }
    (a - b).exp().ln_1p() + b
}

/// `ln A_α` for integer α and 0 < q < 1 (Mironov et al. 2019, §3.2): `A_α = Σ_i C(α,i) q^i (1-q)^{α-i}
/// exp((i² - i) / (2σ²))`.
fn log_a_int(q: f64, sigma: f64, alpha: f64) -> f64 {
    let ln_q = q.ln();
    let ln_1mq = (-q).ln_1p();
    let mut log_a = f64::NEG_INFINITY;
    let mut i = 0.0_f64;
    while i <= alpha {
        let coef = ln_binomial(alpha, i) + i * ln_q + (alpha - i) * ln_1mq;
        log_a = log_add(log_a, coef + (i * i - i) / (2.0 * sigma * sigma));
        i += 1.0;
    }
    log_a
}

/// dp_accounting's `_MAX_STEPS_LOG_A_FRAC`: beyond this many terms the order is dropped (its RDP is +∞).
const MAX_STEPS_LOG_A_FRAC: u32 = 1000;

/// `ln A_α` for fractional α and 0 < q < 1 (Mironov et al. 2019, §3.3): the two integrals over (-∞, z0] and
/// [z0, ∞) expanded as series; +∞ when they have not converged after [`MAX_STEPS_LOG_A_FRAC`] terms, exactly
/// as dp_accounting does, so that the same orders are excluded.
fn log_a_frac(q: f64, sigma: f64, alpha: f64) -> f64 {
    let mut log_a0 = f64::NEG_INFINITY;
    let mut log_a1 = f64::NEG_INFINITY;
    let z0 = sigma * sigma * (1.0 / q - 1.0).ln() + 0.5;
    let ln_q = q.ln();
    let ln_1mq = (-q).ln_1p();
    let ln_half = 0.5_f64.ln();
    let mut last_s0 = f64::NEG_INFINITY;
    let mut last_s1 = f64::NEG_INFINITY;
    for step in 0..MAX_STEPS_LOG_A_FRAC {
        let i = f64::from(step);
        let coef = ln_binomial(alpha, i);
        let j = alpha - i;
        let log_t0 = coef + i * ln_q + j * ln_1mq;
        let log_t1 = coef + j * ln_q + i * ln_1mq;
        let log_e0 = ln_half + ln_erfc((i - z0) / (2.0_f64.sqrt() * sigma));
        let log_e1 = ln_half + ln_erfc((z0 - j) / (2.0_f64.sqrt() * sigma));
        let log_s0 = log_t0 + (i * i - i) / (2.0 * sigma * sigma) + log_e0;
        let log_s1 = log_t1 + (j * j - j) / (2.0 * sigma * sigma) + log_e1;
        log_a0 = log_add(log_a0, log_s0);
        log_a1 = log_add(log_a1, log_s1);
        let total = log_add(log_a0, log_a1);
        if log_s0 < last_s0 && log_s1 < last_s1 && log_s0.max(log_s1) < total - 30.0 {
            return total;
        }
        last_s0 = log_s0;
        last_s1 = log_s1;
    }
    f64::INFINITY
}

const DDG: &str = "distributed discrete Gaussian";

/// One round of the distributed discrete Gaussian, in the integer domain the agents add noise in.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DdgRound {
    /// Δ₂: the largest L2 distance between the sums of two neighbouring inputs, in the integer domain (after
    /// scaling and rounding). See [`integer_l2_sensitivity`].
    pub l2_sensitivity: f64,
    /// Δ₁: the same in L1 norm. See [`integer_l1_sensitivity`].
    pub l1_sensitivity: f64,
    /// σ²: the variance parameter of the discrete Gaussian each agent adds to each coordinate (as sampled:
    /// [`super::DiscreteGaussian::variance`]). Must be ≥ 1/4 (the paper's σ ≥ 1/2).
    pub local_variance: f64,
    /// n: how many agents' noise is in the sum and unknown to the adversary (honest survivors).
    pub agents: u64,
    /// d: the number of noised coordinates.
    pub dimension: u64,
}

/// The largest number of agents [`ddg_rdp`] accepts (τ is a sum over them).
pub const MAX_DDG_AGENTS: u64 = 1 << 24;

impl DdgRound {
    fn check(&self) -> Result<(), PrivacyError> {
        let finite_nonneg = |x: f64| x.is_finite() && x >= 0.0;
        if !finite_nonneg(self.l2_sensitivity) {
            return Err(parameter(DDG, "l2_sensitivity", self.l2_sensitivity, "must be finite and ≥ 0"));
        }
        if !finite_nonneg(self.l1_sensitivity) {
            return Err(parameter(DDG, "l1_sensitivity", self.l1_sensitivity, "must be finite and ≥ 0"));
        }
        if !(self.local_variance.is_finite() && self.local_variance >= 0.25) {
            return Err(parameter(DDG, "local_variance", self.local_variance, "must be finite and ≥ 1/4 (σ ≥ 1/2)"));
        }
        if self.agents == 0 || self.agents > MAX_DDG_AGENTS {
            return Err(parameter(DDG, "agents", self.agents as f64, "must be in 1..=2^24"));
        }
        if self.dimension == 0 {
            return Err(parameter(DDG, "dimension", 0.0, "must be ≥ 1"));
        }
        Ok(())
    }

    /// τ = 10 · Σ_{k=1}^{n-1} exp(-2π²σ² · k/(k+1)) (KLS21, Theorem 1): how far the sum of n discrete Gaussians
    /// is from one discrete Gaussian of variance nσ². Zero for one agent.
    pub fn tau(&self) -> f64 {
        let s2 = self.local_variance;
        let sum: f64 = (1..self.agents).map(|k| (-2.0 * PI * PI * s2 * (k as f64 / (k as f64 + 1.0))).exp()).sum();
        10.0 * sum
    }
}

/// RDP at each order of one round of the distributed discrete Gaussian, with no sampling.
///
/// Kairouz, Liu, Steinke 2021, Proposition 14 (the RDP form behind their Theorem 1; Eq. 17 in the arXiv
/// version as cited by the authors' code, google-research/federated `distributed_dp/accounting_utils.py`): for
/// `Z` the sum of n independent `N_Z(0, σ²)^d` with σ ≥ 1/2, every integer shift Δ and every α ≥ 1,
///
/// ```text
/// D_α(Z ‖ Z + Δ) ≤ min{ α Δ₂²/(2nσ²) + τd,
///                       (α/2) (Δ₂²/(nσ²) + 2 Δ₁ τ/(√n σ) + τ² d),
///                       (α/2) (Δ₂/(√n σ) + τ √d)² }
/// ```
///
/// with τ from [`DdgRound::tau`]. The last two are ½ε²-concentrated DP with Theorem 1's
/// `ε = min{ √(Δ₂²/(nσ²) + 2Δ₁τ/(√nσ) + τ²d), Δ₂/(√nσ) + τ√d }`, i.e. ρ-zCDP with ρ = ε²/2 and RDP α·ρ.
///
/// Source of the constants: the formula above is the one the authors' own accounting code implements and
/// attributes to "Proposition 14 / Eq. 17 (page 16)" of arXiv:2102.06387 (`compute_rdp_dgaussian`, τ as in
/// `ddgauss_epsilon`); the paper's text was not at hand when this was written, so the theorem and equation
/// numbers are as that code cites them. `scripts/dp_reference.py` evaluates the same formula independently
/// (mpmath) for the fixture test; that checks this implementation, not the theorem.
///
/// No amplification by sampling is applied: fedge's server chooses the cohort, so a server that attacks one
/// agent can always include it.
pub fn ddg_rdp(round: &DdgRound, orders: &[f64]) -> Result<Vec<f64>, PrivacyError> {
    round.check()?;
    let tau = round.tau();
    let d = round.dimension as f64;
    let sd_total = (round.agents as f64 * round.local_variance).sqrt();
    let l2 = round.l2_sensitivity / sd_total;
    let l1 = round.l1_sensitivity / sd_total;
    orders
        .iter()
        .map(|&alpha| {
            if alpha.is_nan() || alpha <= 1.0 {
                return Err(parameter(DDG, "order", alpha, "RDP orders must be > 1"));
            }
            let t1 = alpha / 2.0 * l2 * l2 + tau * d;
            let t2 = alpha / 2.0 * (l2 * l2 + 2.0 * l1 * tau + tau * tau * d);
            let t3 = alpha / 2.0 * (l2 + tau * d.sqrt()).powi(2);
            Ok(t1.min(t2).min(t3))
        })
        .collect()
}

/// Δ₂ in the integer domain: the largest L2 distance between two integer vectors one agent could contribute,
/// when the real vectors they were made from are at most `l2_distance` apart, both were multiplied by `scale`
/// (integer units per real unit), and each coordinate was then rounded to its floor or ceiling in any way
/// (stochastic rounding included): `l2_distance · scale + 2√d`, since each coordinate's two rounding errors
/// differ by less than 2.
///
/// `l2_distance` depends on the neighbouring relation and must cover every coordinate that depends on the
/// agent's data (weight and counts included): `2 · clip_norm` for "one agent's update replaced by any other",
/// `clip_norm` for "one agent's update replaced by zero". Offsets that are a public function of who took part
/// (fedge's affine quantization adds one per survivor) cancel and do not count.
pub fn integer_l2_sensitivity(l2_distance: f64, scale: f64, dimension: u64) -> f64 {
    l2_distance * scale + 2.0 * (dimension as f64).sqrt()
}

/// The per-agent variance σ² that gives the sum of `agents` agents' noise the standard deviation
/// `noise_multiplier · l2_sensitivity` of the central Gaussian mechanism: `(z · Δ₂)² / n`. With it the first
/// term of [`ddg_rdp`] is the Gaussian's α/(2z²), plus the τ terms.
pub fn ddg_local_variance(noise_multiplier: f64, l2_sensitivity: f64, agents: u64) -> f64 {
    let total = noise_multiplier * l2_sensitivity;
    total * total / agents.max(1) as f64
}

/// Δ₁ for an integer vector of L2 norm ≤ Δ₂ in d coordinates: `Δ₂ · min(√d, Δ₂)` (Cauchy-Schwarz, and
/// `|x_i| ≤ x_i²` for integers).
pub fn integer_l1_sensitivity(l2_sensitivity: f64, dimension: u64) -> f64 {
    l2_sensitivity * (dimension as f64).sqrt().min(l2_sensitivity)
}

/// The smallest ε such that an RDP curve gives (ε, δ)-DP, and the order that achieves it: dp_accounting's
/// `compute_epsilon`. ε is +∞ when no order gives a bound (for example δ too small for every order).
pub fn epsilon_from_rdp(orders: &[f64], rdp: &[f64], delta: f64) -> Result<(f64, f64), PrivacyError> {
    if !(delta > 0.0 && delta < 1.0) {
        return Err(parameter("RDP conversion", "delta", delta, "must be in (0, 1)"));
    }
    if orders.len() != rdp.len() || orders.is_empty() {
        return Err(parameter("RDP conversion", "orders", orders.len() as f64, "need one RDP value per order"));
    }
    let mut best = (f64::INFINITY, orders[0]);
    for (&alpha, &r) in orders.iter().zip(rdp) {
        if alpha.is_nan() || alpha < 1.0 || r.is_nan() {
            return Err(parameter("RDP conversion", "order", alpha, "orders must be ≥ 1 with a numeric RDP"));
        }
        let eps = if r < 0.0 || delta * delta + (-r).exp_m1() > 0.0 {
            // Negative RDP (numerical noise) or the KL bound δ ≤ √(1 - e^{-r}) already gives ε = 0.
            0.0
        } else if alpha > 1.01 {
            r + (-1.0 / alpha).ln_1p() - (delta * alpha).ln() / (alpha - 1.0)
        } else {
            f64::INFINITY
        };
        if eps < best.0 {
            best = (eps, alpha);
        }
    }
    Ok((best.0.max(0.0), best.1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_orders_are_dp_accountings_156_with_exact_integers() {
        let orders = default_orders();
        assert_eq!(orders.len(), 156);
        assert_eq!(orders.iter().filter(|a| a.fract() == 0.0).count(), 9 + 53 + 4);
        assert_eq!(orders[9], 2.0);
        assert_eq!(orders[155], 1024.0);
        assert!(orders.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn full_participation_is_the_plain_gaussian_alpha_over_two_z_squared() {
        let orders = default_orders();
        let rdp = subsampled_gaussian_rdp(1.0, 2.0, &orders).unwrap_or_default();
        for (a, r) in orders.iter().zip(&rdp) {
            assert!((r - a / 8.0).abs() < 1e-15);
        }
    }

    #[test]
    fn integer_and_fractional_series_agree_between_neighbouring_orders() {
        // RDP is non-decreasing in α; the two series must not jump where they meet.
        let orders: Vec<f64> = vec![2.9, 3.0, 3.1];
        let rdp = subsampled_gaussian_rdp(0.1, 1.0, &orders).unwrap_or_default();
        assert!(rdp[0] < rdp[1] && rdp[1] < rdp[2], "{rdp:?}");
        let ratio = (rdp[2] - rdp[1]) / (rdp[1] - rdp[0]);
        assert!((0.5..2.0).contains(&ratio), "the curve bends sharply at the integer order: {rdp:?}");
    }

    #[test]
    fn zero_noise_and_bad_rates_are_refused_by_name() {
        let orders = default_orders();
        for (q, z, name) in
            [(0.1, 0.0, "noise_multiplier"), (1.5, 1.0, "sampling_rate"), (0.1, f64::NAN, "noise_multiplier")]
        {
            match subsampled_gaussian_rdp(q, z, &orders) {
                Err(PrivacyError::Parameter { name: got, .. }) => assert_eq!(got, name),
                other => panic!("q={q} z={z}: expected a refusal of {name}, got {other:?}"),
            }
        }
    }

    #[test]
    fn ddg_with_one_agent_and_no_tau_is_the_discrete_gaussian_alpha_delta_squared_over_two_sigma_squared() {
        let round =
            DdgRound { l2_sensitivity: 3.0, l1_sensitivity: 9.0, local_variance: 4.0, agents: 1, dimension: 100 };
        assert_eq!(round.tau(), 0.0);
        let rdp = ddg_rdp(&round, &[2.0, 10.0]).unwrap_or_default();
        assert_eq!(rdp, vec![2.0 * 9.0 / 8.0, 10.0 * 9.0 / 8.0]);
    }

    #[test]
    fn calibrated_local_variance_gives_the_central_gaussians_rdp_when_tau_vanishes() {
        // σ² = (zΔ₂)²/n per agent: the sum has variance (zΔ₂)², so RDP(α) = α/(2z²) exactly when τ = 0.
        let l2 = integer_l2_sensitivity(2.0 * 0.1, 32_767.0 / 0.1, 1_000);
        let z = 1.3;
        let round = DdgRound {
            l2_sensitivity: l2,
            l1_sensitivity: integer_l1_sensitivity(l2, 1_000),
            local_variance: ddg_local_variance(z, l2, 50),
            agents: 50,
            dimension: 1_000,
        };
        assert_eq!(round.tau(), 0.0, "σ² = {} makes τ underflow", round.local_variance);
        let rdp = ddg_rdp(&round, &[2.0, 7.5]).unwrap_or_default();
        for (got, alpha) in rdp.iter().zip([2.0, 7.5]) {
            assert!((got - alpha / (2.0 * z * z)).abs() < 1e-12, "{got} at α = {alpha}");
        }
    }

    #[test]
    fn rounding_adds_at_most_two_per_coordinate_to_the_sensitivity() {
        assert_eq!(integer_l2_sensitivity(1.0, 100.0, 10_000), 100.0 + 200.0);
        assert_eq!(integer_l1_sensitivity(3.0, 100), 9.0, "Δ₁ ≤ Δ₂² for integer vectors");
        assert_eq!(integer_l1_sensitivity(300.0, 100), 3_000.0, "Δ₁ ≤ √d Δ₂");
    }

    #[test]
    fn ddg_refuses_variance_below_a_quarter_and_no_agents() {
        let ok = DdgRound { l2_sensitivity: 3.0, l1_sensitivity: 9.0, local_variance: 4.0, agents: 5, dimension: 100 };
        let low = DdgRound { local_variance: 0.2, ..ok };
        let none = DdgRound { agents: 0, ..ok };
        assert!(matches!(ddg_rdp(&low, &[2.0]), Err(PrivacyError::Parameter { name: "local_variance", .. })));
        assert!(matches!(ddg_rdp(&none, &[2.0]), Err(PrivacyError::Parameter { name: "agents", .. })));
    }

    #[test]
    fn epsilon_conversion_refuses_delta_outside_zero_one() {
        let orders = default_orders();
        let rdp = vec![0.1; orders.len()];
        for delta in [0.0, 1.0, -1e-5, f64::NAN] {
            assert!(epsilon_from_rdp(&orders, &rdp, delta).is_err(), "delta {delta}");
        }
    }

    #[test]
    fn epsilon_conversion_uses_the_improved_bound_at_the_best_order() {
        // r(α) = α/2 (Gaussian, z = 1): ε = min over α of α/2 + ln(1 - 1/α) - ln(δα)/(α - 1).
        let orders = default_orders();
        let rdp: Vec<f64> = orders.iter().map(|a| a / 2.0).collect();
        let (eps, order) = epsilon_from_rdp(&orders, &rdp, 1e-5).unwrap_or((f64::NAN, 0.0));
        let at = |a: f64| a / 2.0 + (-1.0 / a).ln_1p() - (1e-5 * a).ln() / (a - 1.0);
        assert!((eps - at(order)).abs() < 1e-12);
        assert!(orders.iter().filter(|&&a| a > 1.01).all(|&a| at(a) >= eps));
    }
}
