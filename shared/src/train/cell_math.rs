//! The float types fedge's fused recurrent cells (`lstm_op`, `gru_op`) compute in, and their activations over a
//! slice in place: in f32 tract's own vectorised sigmoid and tanh (those its `Sigmoid` and `Tanh` nodes run, so the
//! fused cell and the primitive form agree to the last bits of those kernels), in f64 the standard library's.
//!
//! Also the buffer reuse both cells share. Arithmetic only: it never checks a tensor's shape (`cell_op` does).

use tract_onnx::tract_core::tract_linalg;
use tract_onnx::tract_hir::internal::*;

/// A float a fused cell computes in.
pub trait CellFloat: Datum + Copy + PartialEq + std::fmt::Debug {
    const ONE: Self;
    fn add(self, o: Self) -> Self;
    fn sub(self, o: Self) -> Self;
    fn mul(self, o: Self) -> Self;
    /// The logistic function of every value, in place.
    fn sigmoid_all(v: &mut [Self]) -> TractResult<()>;
    /// tanh of every value, in place.
    fn tanh_all(v: &mut [Self]) -> TractResult<()>;
}

impl CellFloat for f32 {
    const ONE: Self = 1.0;
    fn add(self, o: Self) -> Self {
        self + o
    }
    fn sub(self, o: Self) -> Self {
        self - o
    }
    fn mul(self, o: Self) -> Self {
        self * o
    }
    fn sigmoid_all(v: &mut [Self]) -> TractResult<()> {
        (tract_linalg::ops().sigmoid_f32)().run(v)
    }
    fn tanh_all(v: &mut [Self]) -> TractResult<()> {
        (tract_linalg::ops().tanh_f32)().run(v)
    }
}

impl CellFloat for f64 {
    const ONE: Self = 1.0;
    fn add(self, o: Self) -> Self {
        self + o
    }
    fn sub(self, o: Self) -> Self {
        self - o
    }
    fn mul(self, o: Self) -> Self {
        self * o
    }
    fn sigmoid_all(v: &mut [Self]) -> TractResult<()> {
        v.iter_mut().for_each(|x| *x = 1.0 / (1.0 + (-*x).exp()));
        Ok(())
    }
    fn tanh_all(v: &mut [Self]) -> TractResult<()> {
        v.iter_mut().for_each(|x| *x = x.tanh());
        Ok(())
    }
}

/// A tensor of `shape` holding `t`'s values: `t`'s own buffer when nothing else holds it (a gate buffer handed on
/// from the node that wrote it), a copy otherwise.
pub fn reuse_or_copy(t: TValue) -> Tensor {
    if t.is_exclusive() { t.into_tensor() } else { t.into_tensor().clone() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_precisions_compute_the_logistic_function_and_tanh() {
        let xs: Vec<f64> = (-40..=40).map(|k| k as f64 * 0.25).collect();
        let (mut s64, mut t64) = (xs.clone(), xs.clone());
        f64::sigmoid_all(&mut s64).unwrap();
        f64::tanh_all(&mut t64).unwrap();
        let mut s32: Vec<f32> = xs.iter().map(|x| *x as f32).collect();
        let mut t32 = s32.clone();
        f32::sigmoid_all(&mut s32).unwrap();
        f32::tanh_all(&mut t32).unwrap();
        for (k, x) in xs.iter().enumerate() {
            assert!((s64[k] - 1.0 / (1.0 + (-x).exp())).abs() < 1e-15);
            assert!((s32[k] as f64 - s64[k]).abs() < 1e-6, "sigmoid({x})");
            assert!((t32[k] as f64 - t64[k]).abs() < 1e-6, "tanh({x})");
        }
    }
}
