//! `FedgeSoftmaxCrossEntropy`: fedge's own tract operator (domain `ai.fedge`) for the end of a classification
//! step: from the logits Z (`[n, c]`) and the label matrix Y (`[n, c]`, one-hot rows), the mean loss
//! `L = -(1/n) Σ Y ⊙ log_softmax(Z)` (a scalar) and its gradient `dL/dZ = (softmax(Z) - Y) / n`, in one pass
//! over each row. The standard-op form it replaces (a tree of Slice and Max for the row maxima, Sub,
//! ReduceLogSumExp, Mul, ReduceSum, Exp, ...: about twenty nodes, each a tensor and a trip through tract's
//! executor) is what `Kernels::Standard` still emits for other runtimes; both compute the same formula.
//!
//! Pure computation over its two input tensors; inputs whose shapes disagree with the `n` and `c` it was built
//! for are an error, never a read out of bounds.

use tract_onnx::pb::NodeProto;
use tract_onnx::tract_hir::internal::*;

use super::stateless_op::stateless_op;

/// The operator type in emitted graphs.
pub const SOFTMAX_CROSS_ENTROPY: &str = "FedgeSoftmaxCrossEntropy";

/// The loss and its gradient for `n` rows of `c` classes.
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
pub struct SoftmaxCrossEntropy {
    pub n: usize,
    pub c: usize,
}

/// The float types the operator computes in.
trait Float: Datum + Copy + Into<f64> {
    fn from_f64(v: f64) -> Self;
    fn exp(self) -> Self;
    fn ln(self) -> Self;
    fn max(self, other: Self) -> Self;
    fn sub(self, other: Self) -> Self;
    fn add(self, other: Self) -> Self;
    fn mul(self, other: Self) -> Self;
}

macro_rules! float_of {
    ($t:ty) => {
        impl Float for $t {
            fn from_f64(v: f64) -> Self {
                v as $t
            }
            fn exp(self) -> Self {
                <$t>::exp(self)
            }
            fn ln(self) -> Self {
                <$t>::ln(self)
            }
            fn max(self, other: Self) -> Self {
                <$t>::max(self, other)
            }
            fn sub(self, other: Self) -> Self {
                self - other
            }
            fn add(self, other: Self) -> Self {
                self + other
            }
            fn mul(self, other: Self) -> Self {
                self * other
            }
        }
    };
}

float_of!(f32);
float_of!(f64);

impl SoftmaxCrossEntropy {
    /// The loss (accumulated in f64) and the gradient, in `T`.
    fn compute<T: Float>(&self, z: &[T], y: &[T]) -> TractResult<(Tensor, Tensor)> {
        let (n, c) = (self.n, self.c);
        if n == 0 || c == 0 || Some(z.len()) != n.checked_mul(c) || y.len() != z.len() {
            bail!("{SOFTMAX_CROSS_ENTROPY}: {} logits and {} labels for {n} rows of {c}", z.len(), y.len());
        }
        let inv_n = T::from_f64(1.0 / n as f64);
        let mut grad = vec![T::from_f64(0.0); z.len()];
        let mut total = 0.0f64;
        for ((zr, yr), gr) in z.chunks_exact(c).zip(y.chunks_exact(c)).zip(grad.chunks_exact_mut(c)) {
            let max = zr.iter().copied().fold(zr[0], T::max);
            // exp(z - max) into the gradient row, their sum, then log-softmax = z - max - ln(sum).
            let mut sum = T::from_f64(0.0);
            for (g, &v) in gr.iter_mut().zip(zr) {
                *g = v.sub(max).exp();
                sum = sum.add(*g);
            }
            let lse = sum.ln();
            for ((g, &v), &t) in gr.iter_mut().zip(zr).zip(yr) {
                let lsm = v.sub(max).sub(lse);
                total += Into::<f64>::into(t.mul(lsm));
                *g = lsm.exp().sub(t).mul(inv_n);
            }
        }
        let loss = tensor0(T::from_f64(-total / n as f64));
        Ok((loss, Tensor::from_shape(&[n, c], &grad)?))
    }
}

stateless_op!(SoftmaxCrossEntropy, |_: &SoftmaxCrossEntropy| SOFTMAX_CROSS_ENTROPY);

impl SoftmaxCrossEntropy {
    /// The evaluation (`EvalOp::eval`).
    fn run(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let [z, y] = inputs.as_slice() else {
            bail!("{SOFTMAX_CROSS_ENTROPY} takes two inputs");
        };
        if z.datum_type() != y.datum_type() {
            bail!("{SOFTMAX_CROSS_ENTROPY}: logits and labels of different types");
        }
        let (loss, grad) = match z.datum_type() {
            DatumType::F32 => self.compute(z.as_slice::<f32>()?, y.as_slice::<f32>()?)?,
            DatumType::F64 => self.compute(z.as_slice::<f64>()?, y.as_slice::<f64>()?)?,
            other => bail!("{SOFTMAX_CROSS_ENTROPY} does not support {other:?}"),
        };
        Ok(tvec!(loss.into_tvalue(), grad.into_tvalue()))
    }
}

impl InferenceRulesOp for SoftmaxCrossEntropy {
    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> TractResult<()> {
        check_input_arity(inputs, 2)?;
        check_output_arity(outputs, 2)?;
        s.equals(&inputs[1].datum_type, &inputs[0].datum_type)?;
        s.equals(&outputs[0].datum_type, &inputs[0].datum_type)?;
        s.equals(&outputs[1].datum_type, &inputs[0].datum_type)?;
        s.equals(&outputs[0].rank, 0)?;
        s.equals(&outputs[1].rank, 2)?;
        s.equals(&outputs[1].shape[0], self.n.to_dim())?;
        s.equals(&outputs[1].shape[1], self.c.to_dim())?;
        Ok(())
    }

    fn nboutputs(&self) -> TractResult<usize> {
        Ok(2)
    }

    tract_onnx::tract_core::as_op!();

    tract_onnx::tract_hir::to_typed!();
}

impl TypedOp for SoftmaxCrossEntropy {
    tract_onnx::tract_core::as_op!();

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let dt = inputs[0].datum_type;
        Ok(tvec!(dt.scalar_fact(), dt.fact([self.n, self.c])))
    }
}

/// The loader tract calls for a `FedgeSoftmaxCrossEntropy` node (attributes `n` and `c`).
pub fn load(
    _ctx: &tract_onnx::model::ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let size = |name: &str| -> TractResult<usize> {
        let a = node
            .attribute
            .iter()
            .find(|a| a.name == name)
            .ok_or_else(|| format_err!("{SOFTMAX_CROSS_ENTROPY} without {name}"))?;
        usize::try_from(a.i).map_err(|_| format_err!("{SOFTMAX_CROSS_ENTROPY}: negative {name}"))
    };
    Ok((Box::new(SoftmaxCrossEntropy { n: size("n")?, c: size("c")? }), vec![]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(op: &SoftmaxCrossEntropy, z: &[f64], y: &[f64]) -> TractResult<(f64, Vec<f64>)> {
        let shape = [op.n, op.c];
        let z = Tensor::from_shape(&shape, z)?;
        let y = Tensor::from_shape(&shape, y)?;
        let out = op.eval(tvec![z.into_tvalue(), y.into_tvalue()])?;
        Ok((*out[0].to_scalar::<f64>()?, out[1].as_slice::<f64>()?.to_vec()))
    }

    #[test]
    fn uniform_logits_cost_log_c_and_push_the_labelled_class_up() {
        let op = SoftmaxCrossEntropy { n: 2, c: 4 };
        let (loss, grad) = run(&op, &[0.0; 8], &[1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0]).unwrap();
        assert!((loss - 4f64.ln()).abs() < 1e-12);
        // (1/4 - onehot) / 2
        let want = [-0.375, 0.125, 0.125, 0.125, 0.125, 0.125, -0.375, 0.125];
        assert!(grad.iter().zip(want).all(|(g, w)| (g - w).abs() < 1e-12), "{grad:?}");
    }

    #[test]
    fn huge_logits_stay_finite() {
        let op = SoftmaxCrossEntropy { n: 1, c: 3 };
        let (loss, grad) = run(&op, &[1e300, 0.0, -1e300], &[0.0, 1.0, 0.0]).unwrap();
        assert!(loss.is_finite() && grad.iter().all(|g| g.is_finite()));
        assert!((grad[0] - 1.0).abs() < 1e-12 && (grad[1] + 1.0).abs() < 1e-12);
    }

    proptest::proptest! {
        #[test]
        fn the_gradient_is_the_loss_s_finite_difference(
            n in 1usize..5, c in 1usize..7, seed in proptest::prelude::any::<u64>(),
        ) {
            use rand::{Rng, SeedableRng};
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            let op = SoftmaxCrossEntropy { n, c };
            let z: Vec<f64> = (0..n * c).map(|_| rng.gen_range(-5.0..5.0)).collect();
            let mut y = vec![0.0; n * c];
            for r in 0..n {
                y[r * c + rng.gen_range(0..c)] = 1.0;
            }
            let (loss, grad) = run(&op, &z, &y).unwrap();
            // The definition: -(1/n) Σ log softmax at the labelled class.
            let mut want = 0.0;
            for r in 0..n {
                let row = &z[r * c..(r + 1) * c];
                let lse = row.iter().map(|v| v.exp()).sum::<f64>().ln();
                want -= (0..c).map(|j| y[r * c + j] * (row[j] - lse)).sum::<f64>() / n as f64;
            }
            proptest::prop_assert!((loss - want).abs() < 1e-9, "{loss} against {want}");
            let h = 1e-6;
            for i in 0..n * c {
                let (mut up, mut down) = (z.clone(), z.clone());
                up[i] += h;
                down[i] -= h;
                let fd = (run(&op, &up, &y).unwrap().0 - run(&op, &down, &y).unwrap().0) / (2.0 * h);
                proptest::prop_assert!((fd - grad[i]).abs() < 1e-6, "d/dz[{i}]: {} against {fd}", grad[i]);
            }
        }
    }

    #[test]
    fn inputs_of_the_wrong_size_are_errors() {
        let op = SoftmaxCrossEntropy { n: 2, c: 3 };
        let z = Tensor::from_shape(&[1, 3], &[0.0f32; 3]).unwrap();
        let y = Tensor::from_shape(&[1, 3], &[0.0f32; 3]).unwrap();
        assert!(op.eval(tvec![z.into_tvalue(), y.into_tvalue()]).is_err());
        let z = Tensor::from_shape(&[2, 3], &[0.0f32; 6]).unwrap();
        let y = Tensor::from_shape(&[2, 3], &[0.0f64; 6]).unwrap();
        assert!(op.eval(tvec![z.into_tvalue(), y.into_tvalue()]).is_err());
    }
}
