//! `FedgeConv`, `FedgeConvInputGrad` and `FedgeConvWeightGrad`: fedge's own tract operators (domain `ai.fedge`)
//! for a 1-D or 2-D convolution in the training step (Y from X, W and an optional bias), its input gradient (dX
//! from dY and W) and its weight gradient (dW from X and dY), computed by `conv_gemm` on a packed GEMM a tile of
//! rows at a time. The standard-op form they replace (tract's Conv, a ConvTranspose for dX, a Conv over transposed
//! tensors for dW) spent the CNN step's time in tract's ConvTranspose scatter and in im2col copies of the whole
//! batch. Inference plans run `FedgeConv` too, its weights and bias then constants of the plan, and with the
//! attribute `relu = 1` (inference only) it writes `max(Y, 0)`. In f32, Y is computed by `conv_simd` where the CPU
//! has AVX2 and FMA.
//!
//! Both carry the whole geometry as attributes (`x_shape`, `w_shape`, `strides`, `dilations`, `pads`, `group`) and
//! check their inputs against it: a mismatch is an error, never a read out of bounds.

use tract_onnx::pb::NodeProto;
use tract_onnx::tract_hir::internal::*;
use tract_onnx::tract_hir::tract_num_traits::Zero;

use super::conv_gemm::{Geometry, Scalar, forward, input_grad, weight_grad};
use super::conv_simd;
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
    /// A forward convolution writes `max(Y, 0)` (the Relu reading it, in an inference plan).
    pub relu: bool,
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

    /// Y in f32 through `conv_simd` (its blocked kernel where the CPU has one), into an output it overwrites
    /// whole: never zeroed first.
    fn forward_f32(&self, g: &Geometry, inputs: &[TValue]) -> TractResult<Tensor> {
        let shape = self.out_shape()?;
        // SAFETY: f32 has no invalid bit patterns, and `conv_simd::forward` writes every value of Y (its length is
        // checked against the geometry's first) before anything reads it; on an error the tensor is dropped unread.
        let mut out = unsafe { Tensor::uninitialized::<f32>(&shape)? };
        let (x, w) = (inputs[0].as_slice::<f32>()?, inputs[1].as_slice::<f32>()?);
        let bias = inputs.get(2).map(|t| t.as_slice::<f32>()).transpose()?;
        conv_simd::forward(g, x, w, bias, self.relu, out.as_slice_mut::<f32>()?)
            .map_err(|e| format_err!("{CONV}: {e}"))?;
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
            DatumType::F32 if self.kind == Kind::Forward => self.forward_f32(&g, &inputs)?,
            DatumType::F32 => self.compute::<f32>(&g, &inputs)?,
            DatumType::F64 => {
                let mut out = self.compute::<f64>(&g, &inputs)?;
                if self.relu {
                    out.as_slice_mut::<f64>()?.iter_mut().for_each(|v| *v = if *v > 0.0 { *v } else { 0.0 });
                }
                out
            }
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
    let int = |name: &str, default: i64| node.attribute.iter().find(|a| a.name == name).map_or(default, |a| a.i);
    let (group, relu) = (int("group", 1), int("relu", 0));
    if relu != 0 && (kind != Kind::Forward || relu != 1) {
        bail!("{}: relu {relu}", node.op_type);
    }
    let op = ConvOp {
        kind,
        x_shape: ints("x_shape")?,
        w_shape: ints("w_shape")?,
        strides: ints("strides")?,
        dilations: ints("dilations")?,
        pads: ints("pads")?,
        group: usize::try_from(group).map_err(|_| format_err!("{}: group {group}", node.op_type))?,
        relu: relu == 1,
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
            relu: false,
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
    fn a_forward_convolution_with_relu_writes_the_positive_part_in_either_precision() {
        // The 3×3 image by the kernel [[1, 0], [0, 0]] picks each window's top-left pixel (1, 2, 4, 5); a bias of
        // −3.5 leaves −2.5, −1.5, 0.5, 1.5.
        let relu = ConvOp { relu: true, ..op(Kind::Forward) };
        fn run<T: Datum + Copy>(op: &ConvOp, f: impl Fn(f32) -> T) -> Vec<T> {
            let x: Vec<T> = (1..=9).map(|v| f(v as f32)).collect();
            let ins = tvec![
                Tensor::from_shape(&[1, 1, 3, 3], &x).unwrap().into_tvalue(),
                Tensor::from_shape(&[1, 1, 2, 2], &[f(1.0), f(0.0), f(0.0), f(0.0)]).unwrap().into_tvalue(),
                Tensor::from_shape(&[1], &[f(-3.5)]).unwrap().into_tvalue(),
            ];
            op.eval(ins).unwrap()[0].as_slice::<T>().unwrap().to_vec()
        }
        assert_eq!(run(&op(Kind::Forward), |v| v), [-2.5, -1.5, 0.5, 1.5]);
        assert_eq!(run(&relu, |v| v), [0.0, 0.0, 0.5, 1.5]);
        assert_eq!(run(&op(Kind::Forward), f64::from), [-2.5, -1.5, 0.5, 1.5]);
        assert_eq!(run(&relu, f64::from), [0.0, 0.0, 0.5, 1.5]);
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
