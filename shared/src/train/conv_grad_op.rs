//! `FedgeConvInputGrad` and `FedgeConvWeightGrad`: fedge's own tract operators (domain `ai.fedge`) for a 1-D or
//! 2-D convolution's input gradient (dX from dY and W) and weight gradient (dW from X and dY), computed by
//! `conv_gemm` on a packed GEMM a tile of rows at a time. The standard-op form they replace (a ConvTranspose for dX,
//! a Conv over transposed tensors for dW) spent the CNN step's time in tract's ConvTranspose scatter and in
//! im2col copies of the whole batch.
//!
//! Both carry the whole geometry as attributes (`x_shape`, `w_shape`, `strides`, `dilations`, `pads`, `group`) and
//! check their inputs against it: a mismatch is an error, never a read out of bounds.

use std::collections::HashMap;

use tract_onnx::pb::NodeProto;
use tract_onnx::tract_hir::internal::*;
use tract_onnx::tract_hir::tract_num_traits::Zero;

use super::conv_gemm::{Geometry, Scalar, input_grad, weight_grad};

/// The operator computing dX.
pub const CONV_INPUT_GRAD: &str = "FedgeConvInputGrad";
/// The operator computing dW.
pub const CONV_WEIGHT_GRAD: &str = "FedgeConvWeightGrad";

/// Which gradient a node computes.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum Wrt {
    /// dX from (dY, W).
    Input,
    /// dW from (X, dY).
    Weight,
}

/// A convolution's gradient with respect to its input or its weights.
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
pub struct ConvGrad {
    pub wrt: Wrt,
    pub x_shape: Vec<usize>,
    pub w_shape: Vec<usize>,
    pub strides: Vec<usize>,
    pub dilations: Vec<usize>,
    /// All begins, then all ends.
    pub pads: Vec<usize>,
    pub group: usize,
}

impl ConvGrad {
    fn name_str(&self) -> &'static str {
        match self.wrt {
            Wrt::Input => CONV_INPUT_GRAD,
            Wrt::Weight => CONV_WEIGHT_GRAD,
        }
    }

    fn geometry(&self) -> TractResult<Geometry> {
        Geometry::new(&self.x_shape, &self.w_shape, &self.strides, &self.dilations, &self.pads, self.group)
            .map_err(|e| format_err!("{}: {e}", self.name_str()))
    }

    fn out_shape(&self) -> &[usize] {
        match self.wrt {
            Wrt::Input => &self.x_shape,
            Wrt::Weight => &self.w_shape,
        }
    }

    fn compute<T: Datum + Scalar + Zero>(&self, g: &Geometry, a: &Tensor, b: &Tensor) -> TractResult<Tensor> {
        let mut out = Tensor::zero::<T>(self.out_shape())?;
        let (a, b, o) = (a.as_slice::<T>()?, b.as_slice::<T>()?, out.as_slice_mut::<T>()?);
        match self.wrt {
            Wrt::Input => input_grad(g, a, b, o),
            Wrt::Weight => weight_grad(g, a, b, o),
        }
        .map_err(|e| format_err!("{}: {e}", self.name_str()))?;
        Ok(out)
    }
}

impl Op for ConvGrad {
    fn name(&self) -> StaticName {
        self.name_str().into()
    }

    fn as_typed(&self) -> Option<&dyn TypedOp> {
        Some(self)
    }
}

impl EvalOp for ConvGrad {
    fn is_stateless(&self) -> bool {
        true
    }

    fn eval(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let [a, b] = inputs.as_slice() else {
            bail!("{} takes two inputs", self.name_str());
        };
        if a.datum_type() != b.datum_type() {
            bail!("{}: inputs of {:?} and {:?}", self.name_str(), a.datum_type(), b.datum_type());
        }
        let g = self.geometry()?;
        let out = match a.datum_type() {
            DatumType::F32 => self.compute::<f32>(&g, a, b)?,
            DatumType::F64 => self.compute::<f64>(&g, a, b)?,
            other => bail!("{} does not support {other:?}", self.name_str()),
        };
        Ok(tvec!(out.into_tvalue()))
    }

    fn state(&self, _session: &mut SessionState, _node_id: usize) -> TractResult<Option<Box<dyn OpState>>> {
        Ok(None)
    }
}

impl InferenceRulesOp for ConvGrad {
    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> TractResult<()> {
        check_input_arity(inputs, 2)?;
        check_output_arity(outputs, 1)?;
        s.equals(&outputs[0].datum_type, &inputs[0].datum_type)?;
        s.equals(&inputs[1].datum_type, &inputs[0].datum_type)?;
        let shape = self.out_shape();
        s.equals(&outputs[0].rank, shape.len() as i64)?;
        for (i, d) in shape.iter().enumerate() {
            s.equals(&outputs[0].shape[i], d.to_dim())?;
        }
        Ok(())
    }

    fn as_op(&self) -> &dyn Op {
        self
    }

    fn as_op_mut(&mut self) -> &mut dyn Op {
        self
    }

    fn to_typed(
        &self,
        _source: &InferenceModel,
        node: &InferenceNode,
        target: &mut TypedModel,
        mapping: &HashMap<OutletId, OutletId>,
    ) -> TractResult<TVec<OutletId>> {
        let inputs: TVec<OutletId> = node.inputs.iter().map(|m| mapping[m]).collect();
        target.wire_node(&*node.name, self.clone(), &inputs)
    }
}

impl TypedOp for ConvGrad {
    fn as_op(&self) -> &dyn Op {
        self
    }

    fn as_op_mut(&mut self) -> &mut dyn Op {
        self
    }

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(inputs[0].datum_type.fact(self.out_shape())))
    }
}

fn load(node: &NodeProto, wrt: Wrt) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let ints = |name: &str| -> TractResult<Vec<usize>> {
        node.attribute
            .iter()
            .find(|a| a.name == name)
            .ok_or_else(|| format_err!("{} without {name}", node.op_type))?
            .ints
            .iter()
            .map(|d| usize::try_from(*d).map_err(|_| format_err!("{}: negative {name}", node.op_type)))
            .collect()
    };
    let group = node.attribute.iter().find(|a| a.name == "group").map_or(1, |a| a.i);
    let op = ConvGrad {
        wrt,
        x_shape: ints("x_shape")?,
        w_shape: ints("w_shape")?,
        strides: ints("strides")?,
        dilations: ints("dilations")?,
        pads: ints("pads")?,
        group: usize::try_from(group).map_err(|_| format_err!("{}: group {group}", node.op_type))?,
    };
    // Refuse a geometry the kernels cannot run when the model is loaded, not at the first step.
    op.geometry()?;
    Ok((Box::new(op), vec![]))
}

/// The loader tract calls for a `FedgeConvInputGrad` node.
pub fn load_input_grad(
    _ctx: &tract_onnx::model::ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    load(node, Wrt::Input)
}

/// The loader tract calls for a `FedgeConvWeightGrad` node.
pub fn load_weight_grad(
    _ctx: &tract_onnx::model::ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    load(node, Wrt::Weight)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(wrt: Wrt) -> ConvGrad {
        ConvGrad {
            wrt,
            x_shape: vec![1, 1, 3, 3],
            w_shape: vec![1, 1, 2, 2],
            strides: vec![1, 1],
            dilations: vec![1, 1],
            pads: vec![0; 4],
            group: 1,
        }
    }

    #[test]
    fn each_op_returns_its_gradient_in_the_input_s_precision() {
        // Y = conv(X, W) of a 3×3 image by a 2×2 kernel; dY = ones: dX counts the windows each pixel is in times
        // the kernel value, dW sums each kernel position's pixels.
        let dy = Tensor::from_shape(&[1, 1, 2, 2], &[1.0f64; 4]).unwrap();
        let w = Tensor::from_shape(&[1, 1, 2, 2], &[1.0f64, 2.0, 3.0, 4.0]).unwrap();
        let x = Tensor::from_shape(&[1, 1, 3, 3], &[1.0f64, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]).unwrap();
        let dx = op(Wrt::Input).eval(tvec![dy.clone().into_tvalue(), w.into_tvalue()]).unwrap();
        assert_eq!(dx[0].as_slice::<f64>().unwrap(), &[1.0, 3.0, 2.0, 4.0, 10.0, 6.0, 3.0, 7.0, 4.0]);
        let dw = op(Wrt::Weight).eval(tvec![x.into_tvalue(), dy.into_tvalue()]).unwrap();
        assert_eq!(dw[0].as_slice::<f64>().unwrap(), &[12.0, 16.0, 24.0, 28.0]);
    }

    #[test]
    fn inputs_that_disagree_with_the_attributes_are_errors() {
        let dy = Tensor::from_shape(&[1, 1, 1, 1], &[1.0f32]).unwrap();
        let w = Tensor::from_shape(&[1, 1, 2, 2], &[1.0f32; 4]).unwrap();
        assert!(op(Wrt::Input).eval(tvec![dy.into_tvalue(), w.clone().into_tvalue()]).is_err());
        let dy64 = Tensor::from_shape(&[1, 1, 2, 2], &[1.0f64; 4]).unwrap();
        assert!(op(Wrt::Input).eval(tvec![dy64.into_tvalue(), w.into_tvalue()]).is_err());
    }
}
