//! `FedgeMaxPoolGrad`: the one operator of fedge's own that training graphs use, registered into tract's ONNX
//! loader (domain `ai.fedge`).
//!
//! It routes each pooled output's gradient back to the input position its maximum came from, using the argmax
//! indices tract's MaxPool emits (flat positions inside each `[N, C]` channel plane), adding where windows
//! overlap. The standard-op form (Equal + Where against a constant position grid, plus a one-hot ConvTranspose
//! when windows overlap) cost 41 ms of a 149 ms CNN step at batch 32; this op is one pass over dY.
//!
//! Pure computation over its input tensors; an index outside its plane is an error, never a write out of bounds.

use tract_onnx::pb::NodeProto;
use tract_onnx::tract_hir::internal::*;

use super::stateless_op::stateless_op;
use tract_onnx::tract_hir::tract_num_traits::Zero;

/// The operator type in emitted graphs.
pub const MAX_POOL_GRAD: &str = "FedgeMaxPoolGrad";
/// The domain it is declared in.
pub const DOMAIN: &str = "ai.fedge";

/// dX of a MaxPool from its indices (`[N, C, *O]`, i64) and dY (`[N, C, *O]`); output `[N, C, *S]`.
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
pub struct MaxPoolGrad {
    pub input_shape: Vec<usize>,
}

impl MaxPoolGrad {
    fn scatter<T: Datum + Copy + std::ops::AddAssign + Zero>(&self, idx: &[i64], dy: &[T]) -> TractResult<Tensor> {
        let nc: usize = self.input_shape.iter().take(2).product();
        let plane: usize = self.input_shape.iter().skip(2).product();
        if nc == 0 || idx.len() != dy.len() || !idx.len().is_multiple_of(nc) {
            bail!("{MAX_POOL_GRAD}: {} indices, {} gradients, {nc} planes", idx.len(), dy.len());
        }
        let per = idx.len() / nc;
        // The gradient is summed straight into the output tensor (a separate buffer copied into a tensor at the end
        // was 3.2 MB more at the example CNN's training peak, its first pool's input gradient at batch 32).
        let mut tensor = Tensor::zero::<T>(&self.input_shape)?;
        let out = tensor.as_slice_mut::<T>()?;
        for (p, (ip, gp)) in idx.chunks_exact(per).zip(dy.chunks_exact(per)).enumerate() {
            let dst = out
                .get_mut(p * plane..(p + 1) * plane)
                .ok_or_else(|| format_err!("{MAX_POOL_GRAD}: plane {p} outside the input {:?}", self.input_shape))?;
            for (i, g) in ip.iter().zip(gp) {
                let slot = usize::try_from(*i)
                    .ok()
                    .and_then(|i| dst.get_mut(i))
                    .ok_or_else(|| format_err!("{MAX_POOL_GRAD}: index {i} outside a plane of {plane}"))?;
                *slot += *g;
            }
        }
        Ok(tensor)
    }
}

stateless_op!(MaxPoolGrad, |_: &MaxPoolGrad| MAX_POOL_GRAD);

impl MaxPoolGrad {
    /// The evaluation (`EvalOp::eval`).
    fn run(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let [idx, dy] = inputs.as_slice() else {
            bail!("{MAX_POOL_GRAD} takes two inputs");
        };
        let idx = idx.cast_to::<i64>()?;
        let idx = idx.as_slice::<i64>()?;
        let out = match dy.datum_type() {
            DatumType::F32 => self.scatter(idx, dy.as_slice::<f32>()?)?,
            DatumType::F64 => self.scatter(idx, dy.as_slice::<f64>()?)?,
            other => bail!("{MAX_POOL_GRAD} does not support {other:?}"),
        };
        Ok(tvec!(out.into_tvalue()))
    }
}

impl InferenceRulesOp for MaxPoolGrad {
    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> TractResult<()> {
        check_input_arity(inputs, 2)?;
        check_output_arity(outputs, 1)?;
        s.equals(&outputs[0].datum_type, &inputs[1].datum_type)?;
        s.equals(&outputs[0].rank, self.input_shape.len() as i64)?;
        for (i, d) in self.input_shape.iter().enumerate() {
            s.equals(&outputs[0].shape[i], d.to_dim())?;
        }
        Ok(())
    }

    tract_onnx::tract_core::as_op!();

    tract_onnx::tract_hir::to_typed!();
}

impl TypedOp for MaxPoolGrad {
    tract_onnx::tract_core::as_op!();

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(inputs[1].datum_type.fact(&*self.input_shape)))
    }
}

/// The loader tract calls for a `FedgeMaxPoolGrad` node (attribute `input_shape`).
pub fn load(
    _ctx: &tract_onnx::model::ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let shape = node
        .attribute
        .iter()
        .find(|a| a.name == "input_shape")
        .map(|a| a.ints.iter().map(|d| usize::try_from(*d)).collect::<Result<Vec<_>, _>>())
        .transpose()?
        .ok_or_else(|| format_err!("{MAX_POOL_GRAD} without input_shape"))?;
    Ok((Box::new(MaxPoolGrad { input_shape: shape }), vec![]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlapping_windows_add_their_gradients_in_each_plane() {
        let op = MaxPoolGrad { input_shape: vec![1, 2, 3] };
        let idx = Tensor::from_shape(&[1, 2, 2], &[1i64, 1, 0, 2]).unwrap();
        let dy = Tensor::from_shape(&[1, 2, 2], &[1.0f32, 2.0, 3.0, 4.0]).unwrap();
        let out = op.eval(tvec![idx.into_tvalue(), dy.into_tvalue()]).unwrap();
        assert_eq!(out[0].as_slice::<f32>().unwrap(), &[0.0, 3.0, 0.0, 3.0, 0.0, 4.0]);
    }

    #[test]
    fn an_index_outside_its_plane_is_an_error() {
        let op = MaxPoolGrad { input_shape: vec![1, 1, 3] };
        for bad in [3i64, -1] {
            let idx = Tensor::from_shape(&[1, 1, 1], &[bad]).unwrap();
            let dy = Tensor::from_shape(&[1, 1, 1], &[1.0f64]).unwrap();
            assert!(op.eval(tvec![idx.into_tvalue(), dy.into_tvalue()]).is_err());
        }
    }
}
