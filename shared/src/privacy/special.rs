//! The two special functions the Rényi-DP analysis of the subsampled Gaussian needs, written out because the
//! crate has no numerics library: `ln |Γ(x)|` and `ln erfc(x)`.
//!
//! Both are accurate to about 1e-13 relative (checked against scipy's `gammaln` and dp_accounting's `_log_erfc`
//! in the fixture `shared/tests/fixtures/dp_reference.json`), far below the 1e-3 the accountant promises. They
//! must never be used where privacy depends on exact arithmetic (the noise sampler uses integers only).

use std::f64::consts::PI;

/// Lanczos approximation, g = 7, nine coefficients (Numerical Recipes 3rd ed. §6.1; Godfrey's coefficients).
const LANCZOS_G: f64 = 7.0;
const LANCZOS: [f64; 9] = [
    0.999_999_999_999_809_9,
    676.520_368_121_885_1,
    -1_259.139_216_722_402_8,
    771.323_428_777_653_1,
    -176.615_029_162_140_6,
    12.507_343_278_686_905,
    -0.138_571_095_265_720_12,
    9.984_369_578_019_572e-6,
    1.505_632_735_149_311_6e-7,
];

/// `ln |Γ(x)|`, like scipy's `gammaln`: finite for every real `x` except the poles `0, -1, -2, ...` (where it is
/// `+∞`). NaN gives NaN.
pub fn ln_gamma(x: f64) -> f64 {
    if x.is_nan() {
        return f64::NAN;
    }
    if x < 0.5 {
        // Reflection: Γ(x) Γ(1 - x) = π / sin(πx). |sin(πx)| = |sin(π frac(x))|, computed on the fractional part
        // so that large negative arguments keep their accuracy.
        let frac = x - x.floor();
        if frac == 0.0 {
            return f64::INFINITY;
        }
        let sin = (PI * frac).sin().abs();
        return PI.ln() - sin.ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let t = x + LANCZOS_G + 0.5;
    let mut series = LANCZOS[0];
    for (i, c) in LANCZOS.iter().enumerate().skip(1) {
        series += c / (x + i as f64);
    }
    0.5 * (2.0 * PI).ln() + (x + 0.5) * t.ln() - t + series.ln()
}

/// `ln C(n, k) = ln Γ(n+1) - ln Γ(k+1) - ln Γ(n-k+1)` for real `n`, `k` (the absolute value of the generalized
/// binomial coefficient, as dp_accounting's `_log_comb`).
pub fn ln_binomial(n: f64, k: f64) -> f64 {
    ln_gamma(n + 1.0) - ln_gamma(k + 1.0) - ln_gamma(n - k + 1.0)
}

/// `ln erfc(x)` for every real `x`: `ln 2` far left, `-x² - ln(x√π) - ...` far right, never `-∞` for finite `x`
/// below about 2.6e154 (where `x²` overflows).
pub fn ln_erfc(x: f64) -> f64 {
    if x.is_nan() {
        return f64::NAN;
    }
    if x < 0.0 {
        // erfc(x) = 2 - erfc(-x) with erfc(-x) in (0, 1): no cancellation.
        return (2.0 - erfc_nonnegative(-x)).ln();
    }
    if x < 2.0 {
        return erfc_nonnegative(x).ln();
    }
    -x * x - 0.5 * PI.ln() - erfc_continued_fraction(x).ln()
}

/// erfc(x) for x ≥ 0 (underflows to 0 beyond x ≈ 27; [`ln_erfc`] uses the continued fraction there).
fn erfc_nonnegative(x: f64) -> f64 {
    if x < 2.0 {
        // erf(x) = 2/√π e^{-x²} Σ_{n≥0} 2^n x^{2n+1} / (2n+1)!!: all terms positive. erfc(2) ≈ 0.0047, so the
        // subtraction below costs at most ~2.5 digits.
        let two_x2 = 2.0 * x * x;
        let mut term = x;
        let mut sum = x;
        let mut n = 0.0_f64;
        while term > 1e-17 * sum {
            n += 1.0;
            term *= two_x2 / (2.0 * n + 1.0);
            sum += term;
        }
        1.0 - 2.0 / PI.sqrt() * (-x * x).exp() * sum
    } else {
        (-x * x).exp() / PI.sqrt() / erfc_continued_fraction(x)
    }
}

/// The continued fraction `f = x + (1/2)/(x + 1/(x + (3/2)/(x + ...)))`, so that `erfc(x) = e^{-x²} / (√π f)`;
/// evaluated with the modified Lentz method. Converges in well under 200 steps for x ≥ 2.
fn erfc_continued_fraction(x: f64) -> f64 {
    const TINY: f64 = 1e-300;
    let mut f = x;
    let mut c = f;
    let mut d = 0.0_f64;
    for k in 1..5_000u32 {
        let a = f64::from(k) / 2.0;
        d = x + a * d;
        if d.abs() < TINY {
            d = TINY;
        }
        c = x + a / c;
        if c.abs() < TINY {
            c = TINY;
        }
        d = 1.0 / d;
        let step = c * d;
        f *= step;
        if (step - 1.0).abs() < 1e-16 {
            break;
        }
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture() -> serde_json::Value {
        serde_json::from_str(include_str!("../../tests/fixtures/dp_reference.json")).unwrap_or(serde_json::Value::Null)
    }

    fn pairs(name: &str) -> Vec<(f64, f64)> {
        let fixture = fixture();
        let rows = fixture[name].as_array().cloned().unwrap_or_default();
        assert!(!rows.is_empty(), "the fixture has no `{name}` table");
        rows.iter()
            .map(|row| match (row["x"].as_f64(), row["value"].as_f64()) {
                (Some(x), Some(v)) => (x, v),
                _ => panic!("fixture `{name}` row {row} lacks x or value"),
            })
            .collect()
    }

    fn assert_close(what: &str, x: f64, got: f64, want: f64, rel: f64) {
        let scale = want.abs().max(1.0);
        assert!((got - want).abs() <= rel * scale, "{what}({x}) = {got}, scipy says {want}");
    }

    #[test]
    fn ln_gamma_matches_scipy_gammaln_including_negative_arguments() {
        for (x, want) in pairs("lgamma") {
            assert_close("ln_gamma", x, ln_gamma(x), want, 1e-13);
        }
    }

    #[test]
    fn ln_gamma_is_infinite_at_the_poles_and_exact_at_small_integers() {
        assert_eq!(ln_gamma(0.0), f64::INFINITY);
        assert_eq!(ln_gamma(-3.0), f64::INFINITY);
        let mut factorial = 1.0_f64;
        for n in 1..20u32 {
            factorial *= f64::from(n);
            assert_close("ln_gamma", f64::from(n + 1), ln_gamma(f64::from(n + 1)), factorial.ln(), 1e-14);
        }
    }

    #[test]
    fn ln_erfc_matches_dp_accounting_from_far_left_to_far_right() {
        for (x, want) in pairs("log_erfc") {
            assert_close("ln_erfc", x, ln_erfc(x), want, 1e-13);
        }
    }

    proptest::proptest! {
        /// Γ(x + 1) = x Γ(x) holds across the reflection and the Lanczos branch.
        #[test]
        fn ln_gamma_satisfies_the_recurrence(x in 0.01f64..2_000.0) {
            let lhs = ln_gamma(x + 1.0);
            let rhs = ln_gamma(x) + x.ln();
            proptest::prop_assert!((lhs - rhs).abs() <= 1e-12 * lhs.abs().max(1.0), "{} vs {}", lhs, rhs);
        }

        /// erfc is non-increasing (strictly, where f64 can tell), and erfc(x) + erfc(-x) = 2.
        #[test]
        fn ln_erfc_is_decreasing_and_reflects(x in -8.0f64..8.0, step in 1e-6f64..1.0) {
            proptest::prop_assert!(ln_erfc(x + step) <= ln_erfc(x));
            if x > -3.0 {
                proptest::prop_assert!(ln_erfc(x + step) < ln_erfc(x));
            }
            let sum = ln_erfc(x).exp() + ln_erfc(-x).exp();
            proptest::prop_assert!((sum - 2.0).abs() < 1e-14, "{}", sum);
        }
    }

    #[test]
    fn ln_erfc_is_continuous_where_the_method_changes() {
        let below = ln_erfc(2.0 - 1e-12);
        let above = ln_erfc(2.0);
        assert!((below - above).abs() < 1e-10, "{below} vs {above}");
        let below = ln_erfc(-1e-300);
        let above = ln_erfc(0.0);
        assert!((below - above).abs() < 1e-15, "{below} vs {above}");
    }
}
