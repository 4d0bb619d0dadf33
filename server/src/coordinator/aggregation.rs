//! How a round's updates are summed while they arrive.
//!
//! [`WeightedSum`] is the plain mode: each update is folded into ONE running example-weighted sum (f64) the moment
//! it arrives, so the server holds no per-agent copy (unless the strategy aggregates from each update: the
//! coordinator then keeps them beside the sum). `super::Aggregation` is the seam between this plain mode and
//! secure aggregation.
//!
//! This module must never panic on an update: lengths and values are checked and refused with an error.

use super::event::FoldError;

/// A running example-weighted sum of deltas.
///
/// The sum is kept in f64: each product `examples · Δ` is exact in f64 (below 2^29 examples), so the mean is the
/// exact one up to the f64 additions, whatever the order the updates arrive in. (An f32 sum would halve its 8P
/// bytes, but makes results depend on arrival order in the last bits of f32, which adaptive strategies amplify.)
#[derive(Debug, Clone)]
pub struct WeightedSum {
    sum: Vec<f64>,
    examples: u64,
    contributions: usize,
}

/// Parameters checked or folded per block: small enough to stay in L1 between the check and the fold.
const BLOCK: usize = 2048;

impl WeightedSum {
    /// An empty sum over `len` parameters.
    pub fn new(len: usize) -> Self {
        WeightedSum { sum: vec![0.0; len], examples: 0, contributions: 0 }
    }

    /// Adds `examples · delta`, after checking the length, the count and that every value is finite. A refused
    /// update leaves the sum untouched.
    pub fn fold(&mut self, examples: u64, delta: &[f32]) -> Result<(), FoldError> {
        self.fold_discounted(examples, 1.0, delta)
    }

    /// Adds `discount · examples · delta` while counting `examples` whole in the total the mean divides by, so an
    /// update weighted below its examples (a buffered round's stale update, `discount` in (0, 1]) moves the mean
    /// less; checked as [`WeightedSum::fold`] checks. With `discount = 1` the products are exact in f64; with others
    /// the mean depends on the arrival order in its last bits.
    pub fn fold_discounted(&mut self, examples: u64, discount: f64, delta: &[f32]) -> Result<(), FoldError> {
        if delta.len() != self.sum.len() {
            return Err(FoldError::WrongLength { expected: self.sum.len(), got: delta.len() });
        }
        if examples == 0 {
            return Err(FoldError::NoExamples);
        }
        if !all_finite(delta) {
            let index = delta.iter().position(|d| !d.is_finite()).unwrap_or(0);
            return Err(FoldError::NonFinite { index });
        }
        axpy(&mut self.sum, examples as f64 * discount.clamp(0.0, 1.0), delta);
        self.examples = self.examples.saturating_add(examples);
        self.contributions += 1;
        Ok(())
    }

    /// Total examples folded in.
    pub fn examples(&self) -> u64 {
        self.examples
    }

    /// Number of updates folded in.
    pub fn contributions(&self) -> usize {
        self.contributions
    }

    /// The example-weighted mean delta, or `None` when nothing was folded in.
    pub fn mean(&self) -> Option<Vec<f32>> {
        if self.examples == 0 {
            return None;
        }
        let total = self.examples as f64;
        Some(self.sum.iter().map(|s| (s / total) as f32).collect())
    }
}

/// Whether every value is finite: a branch-free count per block (it vectorises), one early exit per block.
fn all_finite(values: &[f32]) -> bool {
    const EXP: u32 = 0x7f80_0000;
    values.chunks(BLOCK).all(|b| b.iter().map(|v| u32::from(v.to_bits() & EXP == EXP)).sum::<u32>() == 0)
}

/// `sum += w · delta`, element by element, with the widest vector instructions the CPU has. The product of an
/// integer weight below 2^29 and an f32 is exact in f64, so the fused multiply-add gives the same bits as the
/// portable multiply-then-add.
fn axpy(sum: &mut [f64], w: f64, delta: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU supports AVX2 and FMA, checked just above.
        unsafe { axpy_avx2_fma(sum, w, delta) };
        return;
    }
    axpy_portable(sum, w, delta);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn axpy_avx2_fma(sum: &mut [f64], w: f64, delta: &[f32]) {
    for (s, d) in sum.iter_mut().zip(delta) {
        *s = f64::from(*d).mul_add(w, *s);
    }
}

fn axpy_portable(sum: &mut [f64], w: f64, delta: &[f32]) {
    for (s, d) in sum.iter_mut().zip(delta) {
        *s += w * f64::from(*d);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_refused_update_leaves_the_sum_untouched() {
        let mut sum = WeightedSum::new(3);
        sum.fold(2, &[1.0, 2.0, 3.0]).unwrap();
        assert_eq!(sum.fold(5, &[1.0, f32::NAN, 1.0]), Err(FoldError::NonFinite { index: 1 }));
        assert_eq!(sum.fold(5, &[1.0, 1.0, f32::NEG_INFINITY]), Err(FoldError::NonFinite { index: 2 }));
        assert_eq!(sum.fold(5, &[1.0]), Err(FoldError::WrongLength { expected: 3, got: 1 }));
        assert_eq!(sum.fold(0, &[1.0, 1.0, 1.0]), Err(FoldError::NoExamples));
        assert_eq!(sum.mean(), Some(vec![1.0, 2.0, 3.0]));
        assert_eq!(sum.contributions(), 1);
    }

    #[test]
    fn a_non_finite_value_far_into_a_long_update_is_found() {
        let mut delta = vec![0.5f32; 3 * BLOCK + 17];
        delta[2 * BLOCK + 5] = f32::INFINITY;
        let mut sum = WeightedSum::new(delta.len());
        assert_eq!(sum.fold(1, &delta), Err(FoldError::NonFinite { index: 2 * BLOCK + 5 }));
    }

    proptest! {
        #[test]
        fn the_mean_is_the_exact_weighted_mean_rounded_to_f32(
            updates in prop::collection::vec((1u64..5000, prop::collection::vec(-1.0f32..1.0, 37)), 1..40)
        ) {
            let mut sum = WeightedSum::new(37);
            let mut reference = vec![0f64; 37];
            let mut total = 0f64;
            for (examples, delta) in &updates {
                sum.fold(*examples, delta).unwrap();
                total += *examples as f64;
                for (r, d) in reference.iter_mut().zip(delta) {
                    *r += *examples as f64 * f64::from(*d);
                }
            }
            let mean = sum.mean().unwrap();
            let portable = {
                let mut s = vec![0f64; 37];
                for (examples, delta) in &updates {
                    axpy_portable(&mut s, *examples as f64, delta);
                }
                s
            };
            for ((m, r), p) in mean.iter().zip(&reference).zip(&portable) {
                prop_assert_eq!(*m, (r / total) as f32);
                prop_assert_eq!(*m, (p / total) as f32, "the vector path and the portable one agree");
            }
        }
    }
}
