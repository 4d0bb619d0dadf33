//! `FedgeGemm`: fedge's own tract operator (domain `ai.fedge`) for the dense layers of the training step:
//! `Y = alpha·op(A)·op(B) + beta·C` on matrices, as ONNX's Gemm, computed by `dense_gemm` on matrixmultiply's GEMM
//! with transposed operands read in place. The forward pass of a Gemm or 2-D MatMul, its input gradient
//! (`dX = dY·Wᵀ`) and its weight gradient (`dW = Xᵀ·dY`) are each one such node. The standard ops it replaces
//! (tract's Gemm/MatMul) pack each non-constant operand, the weights included, into a new buffer at every step.
//!
//! A C of Y's full shape that no other node reads any more is overwritten in place by the result (a weight read
//! by many products, as a recurrent cell's at each time step, accumulates its gradient product by product in one
//! buffer); otherwise Y is a new tensor.
//!
//! The operands' shapes and the flags travel as attributes (`a_shape`, `b_shape`, `transA`, `transB`, `alpha`,
//! `beta`) and the inputs are checked against them: a mismatch is an error, never a read out of bounds.

use tract_onnx::pb::NodeProto;
use tract_onnx::tract_hir::internal::*;

use super::dense_gemm::{Dense, dense, dense_into};
use super::gemm::Scalar;
use super::stateless_op::stateless_op;

/// The operator type in emitted graphs.
pub const GEMM: &str = "FedgeGemm";

/// One product, with its attributes.
#[derive(Debug, Clone, PartialEq)]
pub struct GemmOp(pub Dense);

impl GemmOp {
    /// `alpha·op(A)·op(B) + beta·C` written into C's own tensor, when C has Y's shape and nothing else holds it
    /// (a gradient accumulated product by product: `dW ← Xₜᵀ·dYₜ + dW`); `None` (C given back) otherwise.
    fn compute_into_c<T: Datum + Scalar>(&self, mut inputs: TVec<TValue>) -> TractResult<Result<Tensor, TVec<TValue>>> {
        let full = inputs.len() == 3 && inputs[2].shape() == self.0.y_shape() && inputs[2].is_exclusive();
        if !full {
            return Ok(Err(inputs));
        }
        let Some(c) = inputs.pop() else {
            return Ok(Err(inputs));
        };
        let mut y = c.into_tensor();
        let (a, b) = (inputs[0].as_slice::<T>()?, inputs[1].as_slice::<T>()?);
        dense_into(&self.0, a, b, y.as_slice_mut::<T>()?).map_err(|e| format_err!("{GEMM}: {e}"))?;
        Ok(Ok(y))
    }

    fn compute<T: Datum + Scalar>(&self, inputs: &[TValue]) -> TractResult<Tensor> {
        // SAFETY: `dense` writes every value of Y before anything reads it and never reads Y's previous values
        // (its contract, property-tested from a NaN-filled Y); on an error the tensor is dropped unread. Zeroing the
        // output first was 2% of the 2NN's training step.
        let mut out = unsafe { Tensor::uninitialized::<T>(&self.0.y_shape())? };
        let (a, b) = (inputs[0].as_slice::<T>()?, inputs[1].as_slice::<T>()?);
        let c = inputs.get(2).map(|t| t.as_slice::<T>().map(|v| (v, t.shape()))).transpose()?;
        dense(&self.0, a, b, c, out.as_slice_mut::<T>()?).map_err(|e| format_err!("{GEMM}: {e}"))?;
        Ok(out)
    }
}

stateless_op!(GemmOp, |_: &GemmOp| GEMM);

impl GemmOp {
    /// The evaluation (`EvalOp::eval`).
    fn run(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        if !(2..=3).contains(&inputs.len()) {
            bail!("{GEMM} takes 2 or 3 inputs, not {}", inputs.len());
        }
        let dt = inputs[0].datum_type();
        if inputs.iter().any(|t| t.datum_type() != dt) {
            bail!("{GEMM}: inputs of different types");
        }
        let (a, b) = (inputs[0].shape(), inputs[1].shape());
        if a != self.0.a_shape || b != self.0.b_shape {
            bail!("{GEMM}: inputs {a:?} and {b:?} for {:?}", self.0);
        }
        let out = match dt {
            DatumType::F32 => match self.compute_into_c::<f32>(inputs)? {
                Ok(y) => y,
                Err(inputs) => self.compute::<f32>(&inputs)?,
            },
            DatumType::F64 => match self.compute_into_c::<f64>(inputs)? {
                Ok(y) => y,
                Err(inputs) => self.compute::<f64>(&inputs)?,
            },
            other => bail!("{GEMM} does not support {other:?}"),
        };
        Ok(tvec!(out.into_tvalue()))
    }
}

impl InferenceRulesOp for GemmOp {
    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> TractResult<()> {
        if !(2..=3).contains(&inputs.len()) {
            bail!("{GEMM} takes 2 or 3 inputs, not {}", inputs.len());
        }
        check_output_arity(outputs, 1)?;
        s.equals(&outputs[0].datum_type, &inputs[0].datum_type)?;
        for i in &inputs[1..] {
            s.equals(&i.datum_type, &inputs[0].datum_type)?;
        }
        let [m, n] = self.0.y_shape();
        s.equals(&outputs[0].rank, 2)?;
        s.equals(&outputs[0].shape[0], m.to_dim())?;
        s.equals(&outputs[0].shape[1], n.to_dim())?;
        Ok(())
    }

    tract_onnx::tract_core::as_op!();

    tract_onnx::tract_hir::to_typed!();
}

impl TypedOp for GemmOp {
    tract_onnx::tract_core::as_op!();

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(inputs[0].datum_type.fact(self.0.y_shape())))
    }
}

/// The loader tract calls for a `FedgeGemm` node.
pub fn load(
    _ctx: &tract_onnx::model::ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let attr = |name: &str| node.attribute.iter().find(|a| a.name == name);
    let shape = |name: &str| -> TractResult<Vec<usize>> {
        attr(name)
            .ok_or_else(|| format_err!("{GEMM} without {name}"))?
            .ints
            .iter()
            .map(|d| usize::try_from(*d).map_err(|_| format_err!("{GEMM}: negative {name}")))
            .collect()
    };
    let flag = |name: &str| attr(name).is_some_and(|a| a.i != 0);
    let float = |name: &str| attr(name).map_or(1.0, |a| a.f);
    let d = Dense::new(
        &shape("a_shape")?,
        &shape("b_shape")?,
        flag("transA"),
        flag("transB"),
        float("alpha"),
        float("beta"),
    )
    .map_err(|e| format_err!("{GEMM}: {e}"))?;
    Ok((Box::new(GemmOp(d)), vec![]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_op_computes_a_gemm_in_the_input_s_precision_and_checks_its_inputs() {
        // Y = 2·Aᵀ·B + 0.5·c, A [3, 2] stored transposed, B [3, 1], c [1].
        let op = GemmOp(Dense::new(&[3, 2], &[3, 1], true, false, 2.0, 0.5).unwrap());
        let a = Tensor::from_shape(&[3, 2], &[1.0f64, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
        let b = Tensor::from_shape(&[3, 1], &[1.0f64, 1.0, 1.0]).unwrap();
        let c = Tensor::from_shape(&[1], &[4.0f64]).unwrap();
        let y = op.eval(tvec![a.clone().into_tvalue(), b.clone().into_tvalue(), c.into_tvalue()]).unwrap();
        assert_eq!(y[0].shape(), &[2, 1]);
        assert_eq!(y[0].as_slice::<f64>().unwrap(), &[20.0, 26.0]);
        // The wrong shape, mixed precisions, too few inputs.
        let short = Tensor::from_shape(&[2, 1], &[1.0f64, 1.0]).unwrap();
        assert!(op.eval(tvec![a.clone().into_tvalue(), short.into_tvalue()]).is_err());
        let b32 = Tensor::from_shape(&[3, 1], &[1.0f32; 3]).unwrap();
        assert!(op.eval(tvec![a.clone().into_tvalue(), b32.into_tvalue()]).is_err());
        assert!(op.eval(tvec![a.into_tvalue()]).is_err());
    }

    #[test]
    fn a_full_c_nothing_else_holds_is_overwritten_in_place_and_a_shared_one_is_left_alone() {
        // Y = 2·Aᵀ·B + 0.5·C with C [2, 1] = [4, 8]: [20, 28] either way.
        let op = GemmOp(Dense::new(&[3, 2], &[3, 1], true, false, 2.0, 0.5).unwrap());
        let a = Tensor::from_shape(&[3, 2], &[1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap().into_tvalue();
        let b = Tensor::from_shape(&[3, 1], &[1.0f32, 1.0, 1.0]).unwrap().into_tvalue();
        let c = Tensor::from_shape(&[2, 1], &[4.0f32, 8.0]).unwrap().into_tvalue();
        let kept = c.clone();
        let y = op.eval(tvec![a.clone(), b.clone(), c]).unwrap();
        assert_eq!(y[0].as_slice::<f32>().unwrap(), &[20.0, 28.0]);
        assert_eq!(kept.as_slice::<f32>().unwrap(), &[4.0, 8.0], "a C read elsewhere is not written");
        let address = kept.as_slice::<f32>().unwrap().as_ptr();
        let y = op.eval(tvec![a, b, kept]).unwrap();
        assert_eq!(y[0].as_slice::<f32>().unwrap(), &[20.0, 28.0]);
        assert_eq!(y[0].as_slice::<f32>().unwrap().as_ptr(), address, "the only holder's C becomes Y");
    }
}
