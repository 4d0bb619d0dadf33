//! The float types fedge's fused recurrent cells (`lstm_op`, `gru_op`) compute in, and their activations over a
//! slice in place: in f32 tract's own vectorised sigmoid and tanh (those its `Sigmoid` and `Tanh` nodes run, so the
//! fused cell and the primitive form agree to the last bits of those kernels), in f64 the standard library's.
//!
//! Also the buffer reuse and the attribute reading both cells share. Arithmetic and glue only: it never checks a
//! tensor's shape (the operators do).

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

/// The common type of a cell operator's `inputs`, checked against the shapes `want` (their count, and each input's
/// shape and type): a mismatch is an error naming the operator.
pub fn check_inputs(op: &str, inputs: &[TValue], want: &[[usize; 2]]) -> TractResult<DatumType> {
    if inputs.len() != want.len() {
        bail!("{op} takes {} inputs, not {}", want.len(), inputs.len());
    }
    let dt = inputs.first().map_or(DatumType::F32, |t| t.datum_type());
    for (t, s) in inputs.iter().zip(want) {
        if t.datum_type() != dt || t.shape() != s {
            bail!("{op}: input {:?} {:?} where {dt:?} {s:?} was expected", t.datum_type(), t.shape());
        }
    }
    Ok(dt)
}

/// A cell operator's inference rules: `arity` inputs of one type, outputs of that type and the 2-D `shapes`.
pub fn cell_rules<'r, 'p: 'r>(
    s: &mut Solver<'r>,
    inputs: &'p [TensorProxy],
    outputs: &'p [TensorProxy],
    arity: usize,
    shapes: &[[usize; 2]],
) -> TractResult<()> {
    check_input_arity(inputs, arity)?;
    check_output_arity(outputs, shapes.len())?;
    for i in &inputs[1..] {
        s.equals(&i.datum_type, &inputs[0].datum_type)?;
    }
    for (o, shape) in outputs.iter().zip(shapes) {
        s.equals(&o.datum_type, &inputs[0].datum_type)?;
        s.equals(&o.rank, 2)?;
        s.equals(&o.shape[0], shape[0].to_dim())?;
        s.equals(&o.shape[1], shape[1].to_dim())?;
    }
    Ok(())
}

/// A cell operator's output facts: the inputs' type, the 2-D `shapes`.
pub fn cell_facts(inputs: &[&TypedFact], shapes: &[[usize; 2]]) -> TractResult<TVec<TypedFact>> {
    let dt = inputs.first().map(|f| f.datum_type).ok_or_else(|| format_err!("a cell operator without inputs"))?;
    Ok(shapes.iter().map(|s| dt.fact(*s)).collect())
}

/// The `batch` and `hidden` attributes of a cell operator's node `op`, both positive.
pub fn cell_sizes(node: &tract_onnx::pb::NodeProto, op: &str) -> TractResult<(usize, usize)> {
    let size = |name: &str| -> TractResult<usize> {
        let a = node.attribute.iter().find(|a| a.name == name).ok_or_else(|| format_err!("{op} without {name}"))?;
        usize::try_from(a.i).ok().filter(|v| *v > 0).ok_or_else(|| format_err!("{op}: {name} {}", a.i))
    };
    Ok((size("batch")?, size("hidden")?))
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
