//! `FedgeConv`, `FedgeConvInputGrad` and `FedgeConvWeightGrad`: fedge's own tract operators (domain `ai.fedge`)
//! for a 1-D or 2-D convolution in the training step (Y from X, W and an optional bias), its input gradient (dX
//! from dY and W) and its weight gradient (dW from X and dY), computed by `conv_gemm` on a packed GEMM a tile of
//! rows at a time. The standard-op form they replace (tract's Conv, a ConvTranspose for dX, a Conv over transposed
//! tensors for dW) spent the CNN step's time in tract's ConvTranspose scatter and in im2col copies of the whole
//! batch. Inference plans run `FedgeConv` too, its weights and bias then constants of the plan.
//!
//! Both carry the whole geometry as attributes (`x_shape`, `w_shape`, `strides`, `dilations`, `pads`, `group`) and
//! check their inputs against it: a mismatch is an error, never a read out of bounds.

use tract_onnx::pb::NodeProto;
use tract_onnx::tract_hir::internal::*;
use tract_onnx::tract_hir::tract_num_traits::Zero;

use super::conv_gemm::{Geometry, Scalar, forward, input_grad, weight_grad};
use super::stateless_op::stateless_op;

/// The operator computing Y.
pub const CONV: &str = "FedgeConv";
/// The operator computing dX.
pub const CONV_INPUT_GRAD: &str = "FedgeConvInputGrad";
/// The operator computing dW.
pub const CONV_WEIGHT_GRAD: &str = "FedgeConvWeightGrad";

/// What a node computes.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum Kind {
    /// Y from (X, W[, B]).
    Forward,
    /// dX from (dY, W).
    InputGrad,
    /// dW from (X, dY).
    WeightGrad,
}

/// A convolution, or its gradient with respect to its input or its weights.
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
pub struct ConvOp {
    pub kind: Kind,
    pub x_shape: Vec<usize>,
    pub w_shape: Vec<usize>,
    pub strides: Vec<usize>,
    pub dilations: Vec<usize>,
    /// All begins, then all ends.
    pub pads: Vec<usize>,
    pub group: usize,
}

impl ConvOp {
    fn name_str(&self) -> &'static str {
        match self.kind {
            Kind::Forward => CONV,
            Kind::InputGrad => CONV_INPUT_GRAD,
            Kind::WeightGrad => CONV_WEIGHT_GRAD,
        }
    }

    fn geometry(&self) -> TractResult<Geometry> {
        Geometry::new(&self.x_shape, &self.w_shape, &self.strides, &self.dilations, &self.pads, self.group)
            .map_err(|e| format_err!("{}: {e}", self.name_str()))
    }

    fn out_shape(&self) -> TractResult<Vec<usize>> {
        Ok(match self.kind {
            Kind::Forward => self.geometry()?.y_shape(self.x_shape.len() == 3),
            Kind::InputGrad => self.x_shape.clone(),
            Kind::WeightGrad => self.w_shape.clone(),
        })
    }

    fn compute<T: Datum + Scalar + Zero>(&self, g: &Geometry, inputs: &[TValue]) -> TractResult<Tensor> {
        let mut out = Tensor::zero::<T>(&self.out_shape()?)?;
        let (a, b) = (inputs[0].as_slice::<T>()?, inputs[1].as_slice::<T>()?);
        let bias = inputs.get(2).map(|t| t.as_slice::<T>()).transpose()?;
        let o = out.as_slice_mut::<T>()?;
        match self.kind {
            Kind::Forward => forward(g, a, b, bias, o),
            Kind::InputGrad => input_grad(g, a, b, o),
            Kind::WeightGrad => weight_grad(g, a, b, o),
        }
        .map_err(|e| format_err!("{}: {e}", self.name_str()))?;
        Ok(out)
    }

    /// How many inputs the node takes (a forward convolution's bias is optional).
    fn arity(&self) -> std::ops::RangeInclusive<usize> {
        if self.kind == Kind::Forward { 2..=3 } else { 2..=2 }
    }
}

stateless_op!(ConvOp, ConvOp::name_str);

impl ConvOp {
    /// The evaluation (`EvalOp::eval`).
    fn run(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        if !self.arity().contains(&inputs.len()) {
            bail!("{} takes {:?} inputs, not {}", self.name_str(), self.arity(), inputs.len());
        }
        let dt = inputs[0].datum_type();
        if inputs.iter().any(|t| t.datum_type() != dt) {
            bail!("{}: inputs of different types", self.name_str());
        }
        let g = self.geometry()?;
        let out = match dt {
            DatumType::F32 => self.compute::<f32>(&g, &inputs)?,
            DatumType::F64 => self.compute::<f64>(&g, &inputs)?,
            other => bail!("{} does not support {other:?}", self.name_str()),
        };
        Ok(tvec!(out.into_tvalue()))
    }
}

impl InferenceRulesOp for ConvOp {
    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> TractResult<()> {
        if !self.arity().contains(&inputs.len()) {
            bail!("{} takes {:?} inputs, not {}", self.name_str(), self.arity(), inputs.len());
        }
        check_output_arity(outputs, 1)?;
        s.equals(&outputs[0].datum_type, &inputs[0].datum_type)?;
        for i in &inputs[1..] {
            s.equals(&i.datum_type, &inputs[0].datum_type)?;
        }
        let shape = self.out_shape()?;
        s.equals(&outputs[0].rank, shape.len() as i64)?;
        for (i, d) in shape.iter().enumerate() {
            s.equals(&outputs[0].shape[i], d.to_dim())?;
        }
        Ok(())
    }

    tract_onnx::tract_core::as_op!();

    tract_onnx::tract_hir::to_typed!();
}

impl TypedOp for ConvOp {
    tract_onnx::tract_core::as_op!();

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(inputs[0].datum_type.fact(&*self.out_shape()?)))
    }
}

fn load(node: &NodeProto, kind: Kind) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
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
    let op = ConvOp {
        kind,
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

/// The loader tract calls for a `FedgeConv` node.
pub fn load_forward(
    _ctx: &tract_onnx::model::ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    load(node, Kind::Forward)
}

/// The loader tract calls for a `FedgeConvInputGrad` node.
pub fn load_input_grad(
    _ctx: &tract_onnx::model::ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    load(node, Kind::InputGrad)
}

/// The loader tract calls for a `FedgeConvWeightGrad` node.
pub fn load_weight_grad(
    _ctx: &tract_onnx::model::ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    load(node, Kind::WeightGrad)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(kind: Kind) -> ConvOp {
        ConvOp {
            kind,
            x_shape: vec![1, 1, 3, 3],
            w_shape: vec![1, 1, 2, 2],
            strides: vec![1, 1],
            dilations: vec![1, 1],
            pads: vec![0; 4],
            group: 1,
        }
    }

    #[test]
    fn each_op_returns_its_result_in_the_input_s_precision() {
        // Y = conv(X, W) of a 3×3 image by a 2×2 kernel; dY = ones: dX counts the windows each pixel is in times
        // the kernel value, dW sums each kernel position's pixels.
        let dy = Tensor::from_shape(&[1, 1, 2, 2], &[1.0f64; 4]).unwrap();
        let w = Tensor::from_shape(&[1, 1, 2, 2], &[1.0f64, 2.0, 3.0, 4.0]).unwrap();
        let x = Tensor::from_shape(&[1, 1, 3, 3], &[1.0f64, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]).unwrap();
        let dx = op(Kind::InputGrad).eval(tvec![dy.clone().into_tvalue(), w.clone().into_tvalue()]).unwrap();
        assert_eq!(dx[0].as_slice::<f64>().unwrap(), &[1.0, 3.0, 2.0, 4.0, 10.0, 6.0, 3.0, 7.0, 4.0]);
        let dw = op(Kind::WeightGrad).eval(tvec![x.clone().into_tvalue(), dy.into_tvalue()]).unwrap();
        assert_eq!(dw[0].as_slice::<f64>().unwrap(), &[12.0, 16.0, 24.0, 28.0]);
        // Y: each window's dot product with the kernel, plus the bias.
        let b = Tensor::from_shape(&[1], &[0.5f64]).unwrap();
        let y = op(Kind::Forward).eval(tvec![x.into_tvalue(), w.into_tvalue(), b.into_tvalue()]).unwrap();
        assert_eq!(y[0].shape(), &[1, 1, 2, 2]);
        assert_eq!(y[0].as_slice::<f64>().unwrap(), &[37.5, 47.5, 67.5, 77.5]);
    }

    #[test]
    fn inputs_that_disagree_with_the_attributes_are_errors() {
        let dy = Tensor::from_shape(&[1, 1, 1, 1], &[1.0f32]).unwrap();
        let w = Tensor::from_shape(&[1, 1, 2, 2], &[1.0f32; 4]).unwrap();
        assert!(op(Kind::InputGrad).eval(tvec![dy.into_tvalue(), w.clone().into_tvalue()]).is_err());
        let dy64 = Tensor::from_shape(&[1, 1, 2, 2], &[1.0f64; 4]).unwrap();
        assert!(op(Kind::InputGrad).eval(tvec![dy64.into_tvalue(), w.into_tvalue()]).is_err());
    }
}
