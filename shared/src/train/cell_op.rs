//! The tract glue both fused recurrent cells (`lstm_op`, `gru_op`) share, written once: which of a cell's three
//! operators a node is ([`CellPart`]), what a cell gives ([`CellOp`]: its operator types, its inputs' and outputs'
//! shapes, its computation), and from that the checks of a node's inputs against its attributes, its inference
//! rules, output facts, dispatch on f32 or f64 ([`cell_op!`]) and its loader ([`load_cell`]).
//!
//! Glue only: it never computes a value. Inputs whose count, shapes or types disagree with the attributes are an
//! error naming the operator, before any computation reads them.

use tract_onnx::pb::NodeProto;
use tract_onnx::tract_hir::internal::*;

use super::cell_math::CellFloat;

/// Which of a cell's three operators.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum CellPart {
    /// The gates, activated, from the step's projections.
    Cell,
    /// The new hidden state from the activated gates (a node of its own: see `lstm_op`).
    Hidden,
    /// The gradients of the step's inputs.
    Grad,
}

/// What a fused cell gives for [`cell_op!`] and [`load_cell`].
pub trait CellOp: Sized {
    /// The operator types of [`CellPart::Cell`], [`CellPart::Hidden`] and [`CellPart::Grad`], in that order.
    const NAMES: [&'static str; 3];
    fn new(batch: usize, hidden: usize, part: CellPart) -> Self;
    fn part(&self) -> CellPart;
    /// The shapes the inputs must have, in order.
    fn input_shapes(&self) -> Vec<[usize; 2]>;
    fn output_shapes(&self) -> Vec<[usize; 2]>;
    /// The outputs from inputs already checked against [`CellOp::input_shapes`], all of type `T`.
    fn compute<T: CellFloat>(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>>;

    /// This operator's type.
    fn op_name(&self) -> &'static str {
        Self::NAMES[self.part() as usize]
    }
}

/// A cell's evaluation: its inputs checked, then computed in their type (f32 or f64).
pub fn run_cell<C: CellOp>(op: &C, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
    match check_inputs(op.op_name(), &inputs, &op.input_shapes())? {
        DatumType::F32 => op.compute::<f32>(inputs),
        DatumType::F64 => op.compute::<f64>(inputs),
        other => bail!("{} does not support {other:?}", op.op_name()),
    }
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

/// The loader tract calls for each of a cell's three operator types (attributes `batch` and `hidden`).
pub fn load_cell<C: CellOp + InferenceOp>(
    _ctx: &tract_onnx::model::ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let part = part_named::<C>(&node.op_type)?;
    let (batch, hidden) = cell_sizes(node, &node.op_type)?;
    Ok((Box::new(C::new(batch, hidden, part)), vec![]))
}

/// Which of `C`'s operators the type `op_type` names.
fn part_named<C: CellOp>(op_type: &str) -> TractResult<CellPart> {
    match C::NAMES.iter().position(|n| *n == op_type) {
        Some(0) => Ok(CellPart::Cell),
        Some(1) => Ok(CellPart::Hidden),
        Some(2) => Ok(CellPart::Grad),
        _ => bail!("{op_type} is not one of {:?}", C::NAMES),
    }
}

/// `cell_op!(Type)`: tract's `Op`, `EvalOp`, `InferenceRulesOp` and `TypedOp` for a [`CellOp`].
macro_rules! cell_op {
    ($t:ty) => {
        stateless_op!($t, CellOp::op_name);

        impl $t {
            /// The evaluation (`EvalOp::eval`).
            fn run(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
                run_cell(self, inputs)
            }
        }

        impl InferenceRulesOp for $t {
            fn rules<'r, 'p: 'r, 's: 'r>(
                &'s self,
                s: &mut Solver<'r>,
                inputs: &'p [TensorProxy],
                outputs: &'p [TensorProxy],
            ) -> TractResult<()> {
                cell_rules(s, inputs, outputs, self.input_shapes().len(), &self.output_shapes())
            }

            fn nboutputs(&self) -> TractResult<usize> {
                Ok(self.output_shapes().len())
            }

            tract_onnx::tract_core::as_op!();

            tract_onnx::tract_hir::to_typed!();
        }

        impl TypedOp for $t {
            tract_onnx::tract_core::as_op!();

            fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
                cell_facts(inputs, &self.output_shapes())
            }
        }
    };
}

pub(crate) use cell_op;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::gru_op::GruCell;
    use crate::train::lstm_op::LstmCell;

    fn node(op_type: &str, attrs: &[(&str, i64)]) -> NodeProto {
        NodeProto {
            op_type: op_type.into(),
            attribute: attrs
                .iter()
                .map(|(name, i)| tract_onnx::pb::AttributeProto { name: (*name).into(), i: *i, ..Default::default() })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn each_operator_type_names_its_part_and_its_name_is_that_type() {
        for (i, part) in [CellPart::Cell, CellPart::Hidden, CellPart::Grad].into_iter().enumerate() {
            assert_eq!(part_named::<LstmCell>(LstmCell::NAMES[i]).unwrap(), part);
            assert_eq!(part_named::<GruCell>(GruCell::NAMES[i]).unwrap(), part);
            assert_eq!(LstmCell::new(2, 3, part).op_name(), LstmCell::NAMES[i]);
            assert_eq!(GruCell::new(2, 3, part).op_name(), GruCell::NAMES[i]);
        }
        // One cell's type is not the other's.
        assert!(part_named::<LstmCell>(GruCell::NAMES[0]).is_err());
        assert!(part_named::<GruCell>("Relu").is_err());
    }

    #[test]
    fn sizes_must_be_given_and_positive() {
        let op = LstmCell::NAMES[0];
        assert_eq!(cell_sizes(&node(op, &[("batch", 4), ("hidden", 8)]), op).unwrap(), (4, 8));
        for attrs in [&[("batch", 4)][..], &[("batch", 0), ("hidden", 8)], &[("batch", 4), ("hidden", -1)]] {
            let err = cell_sizes(&node(op, attrs), op).unwrap_err().to_string();
            assert!(err.contains(op), "{err}");
        }
    }

    #[test]
    fn inputs_of_another_count_shape_or_type_are_refused_by_name() {
        let t = |shape: [usize; 2]| Tensor::zero::<f32>(&shape).unwrap().into_tvalue();
        let want = [[2, 12], [2, 3]];
        assert_eq!(check_inputs("Op", &[t([2, 12]), t([2, 3])], &want).unwrap(), DatumType::F32);
        let f64_input = Tensor::zero::<f64>(&[2, 3]).unwrap().into_tvalue();
        for bad in [vec![t([2, 12])], vec![t([2, 3]), t([2, 12])], vec![t([2, 12]), f64_input]] {
            let err = check_inputs("Op", &bad, &want).unwrap_err().to_string();
            assert!(err.starts_with("Op"), "{err}");
        }
    }
}
