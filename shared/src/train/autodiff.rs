//! Reverse-mode differentiation over a resolved [`Graph`]: builds the training-step ONNX model whose inputs are
//! the data, the labels, the trainable weights (and dropout masks) and whose outputs are the mean loss and the
//! gradient of every trainable weight; and the forward-only inference model with weights baked in.
//!
//! It produces protobuf only; compiling and running are the step's and predictor's business.

use std::collections::HashMap;

use tract_onnx::pb::{GraphProto, ModelProto, OperatorSetIdProto, tensor_proto::DataType};

use super::cell_emit;
use super::custom_op;
use super::emit::{Emitter, Kernels, OPSET, Precision};
use super::error::TrainError;
use super::forward::{MaskInput, Mode, emit_forward};
use super::grad::{self, Ctx, Piece, gather_slices};
use super::graph::{Graph, Op};
use super::loss::{LABELS, LOSS, Loss, emit_loss};
use super::proto::{value_info, value_info_unshaped};
use super::slice_guard;

/// A training-step model and the order of its inputs and outputs.
pub struct StepGraph {
    pub model: ModelProto,
    /// Dropout masks, fed after the data, the labels and the weights, in this order.
    pub masks: Vec<MaskInput>,
}

fn model_of(graph: GraphProto) -> ModelProto {
    ModelProto {
        ir_version: 8,
        opset_import: vec![
            OperatorSetIdProto { domain: String::new(), version: OPSET },
            OperatorSetIdProto { domain: custom_op::DOMAIN.into(), version: 1 },
        ],
        producer_name: "fedge".into(),
        graph: Some(graph),
        ..Default::default()
    }
}

/// Name of the graph output carrying the gradient of parameter `i`.
pub fn grad_name(i: usize) -> String {
    format!("__fedge/grad/{i}")
}

/// Builds the training step. `params` are the trainable weights (graph inputs) in output order; `data` the data
/// input; the model output must have `n * c` elements. The nodes go into `e`, a fresh emitter whose precision and
/// kernels the caller chose.
pub fn build_step(
    g: &Graph,
    data: &str,
    params: &[(String, Vec<usize>)],
    loss: Loss,
    n: usize,
    c: usize,
    mut e: Emitter,
) -> Result<StepGraph, TrainError> {
    let masks = emit_forward(&mut e, g, Mode::Train)?;
    let out_shape = g.shapes.get(&g.output).cloned().unwrap_or_default();
    if out_shape.iter().product::<usize>() != n * c {
        return Err(TrainError::shape(format!("model output {out_shape:?} is not {n} × {c}")));
    }
    let z = if out_shape.as_slice() == [n, c] { g.output.clone() } else { e.reshape(&g.output, &[n, c]) };
    let dz = emit_loss(&mut e, &z, n, c, loss);
    let dz = if out_shape.as_slice() == [n, c] { dz } else { e.reshape(&dz, &out_shape) };

    let mask_by_output: HashMap<String, String> = masks.iter().map(|m| (m.output.clone(), m.name.clone())).collect();
    let ctx = Ctx { graph: g, masks: &mask_by_output };
    let mut grads: HashMap<String, Vec<String>> = HashMap::new();
    // Gradients arriving through Slice nodes, per sliced tensor: combined when the tensor's own turn comes.
    let mut sliced: HashMap<String, Vec<Piece>> = HashMap::new();
    grads.insert(g.output.clone(), vec![dz]);
    for node in g.nodes.iter().rev() {
        let parts = take(&mut e, g, &mut grads, &mut sliced, &node.output);
        let needs: Vec<bool> = node.inputs.iter().map(|i| g.requires_grad.contains(i)).collect();
        if let Some(second) = &node.second_output {
            // An LSTM step: the gradients of its hidden and cell states go to its rule together.
            let second_parts = take(&mut e, g, &mut grads, &mut sliced, second);
            if (parts.is_none() && second_parts.is_none()) || !needs.iter().any(|x| *x) {
                continue;
            }
            let dh = parts.map(|p| e.sum(&p));
            let dc = second_parts.map(|p| e.sum(&p));
            let gs = cell_emit::lstm_backward(&mut e, node, dh.as_deref(), dc.as_deref(), &needs)?;
            for (input, gi) in node.inputs.iter().zip(gs) {
                if let Some(gi) = gi {
                    grads.entry(input.clone()).or_default().push(gi);
                }
            }
            continue;
        }
        let Some(parts) = parts else { continue };
        if !needs.iter().any(|x| *x) {
            continue;
        }
        let dy = e.sum(&parts);
        if let Op::Slice { starts, ends } = &node.op {
            sliced.entry(node.inputs[0].clone()).or_default().push(Piece {
                starts: starts.clone(),
                ends: ends.clone(),
                grad: dy,
            });
            continue;
        }
        // One contribution already there per input (another reader's, e.g. a weight's at a later time step) is
        // offered to the rule: a dense product adds into it instead of both waiting for a sum.
        let mut pending: Vec<Option<String>> = node
            .inputs
            .iter()
            .zip(&needs)
            .map(|(input, need)| if *need { grads.get_mut(input).and_then(|v| v.pop()) } else { None })
            .collect();
        let gs = grad::backward(&mut e, &ctx, node, &dy, &needs, &mut pending)?;
        for (input, left) in node.inputs.iter().zip(pending) {
            if let Some(left) = left {
                grads.entry(input.clone()).or_default().push(left);
            }
        }
        for ((input, gi), need) in node.inputs.iter().zip(gs).zip(&needs) {
            if let (Some(gi), true) = (gi, need) {
                grads.entry(input.clone()).or_default().push(gi);
            }
        }
    }
    let ft = e.precision.data_type();
    let mut outputs = vec![value_info(LOSS, ft, &[])];
    for (i, (name, shape)) in params.iter().enumerate() {
        let out = grad_name(i);
        match take(&mut e, g, &mut grads, &mut sliced, name) {
            Some(parts) => {
                let s = e.sum(&parts);
                e.op_into("Identity", &[&s], &[&out], vec![]);
            }
            None => {
                // The loss does not depend on this weight.
                let zeros = e.const_f(shape, &vec![0.0; shape.iter().product()]);
                e.op_into("Identity", &[&zeros], &[&out], vec![]);
            }
        }
        outputs.push(value_info(&out, ft, shape));
    }
    outputs.extend(slice_guard::guard(&mut e).iter().map(|o| value_info_unshaped(o, ft)));
    let data_shape = g.shapes.get(data).cloned().unwrap_or_default();
    let mut inputs = vec![value_info(data, ft, &data_shape), value_info(LABELS, ft, &[n, c])];
    inputs.extend(params.iter().map(|(name, shape)| value_info(name, ft, shape)));
    inputs.extend(masks.iter().map(|m| value_info(&m.name, ft, &m.shape)));
    let graph = GraphProto {
        name: "fedge-train-step".into(),
        node: e.nodes,
        initializer: e.inits,
        input: inputs,
        output: outputs,
        ..Default::default()
    };
    Ok(StepGraph { model: model_of(graph), masks })
}

/// Every gradient contribution of tensor `name`: those from its consumers and those its slices hand back.
fn take(
    e: &mut Emitter,
    g: &Graph,
    grads: &mut HashMap<String, Vec<String>>,
    sliced: &mut HashMap<String, Vec<Piece>>,
    name: &str,
) -> Option<Vec<String>> {
    let mut parts = grads.remove(name).unwrap_or_default();
    if let Some(pieces) = sliced.remove(name) {
        let shape = g.shapes.get(name).cloned().unwrap_or_default();
        parts.extend(gather_slices(e, &shape, pieces));
    }
    (!parts.is_empty()).then_some(parts)
}

/// Builds the forward-only model (dropout as identity) with `kernels`' operators. Its inputs are the data, then
/// `weight_inputs` in order (the trainable weights, when `g` was resolved without their values); every other weight
/// must be a constant of `g`.
pub fn build_inference(
    g: &Graph,
    data: &str,
    weight_inputs: &[(String, Vec<usize>)],
    kernels: Kernels,
) -> Result<ModelProto, TrainError> {
    let mut e = Emitter::new(Precision::F32, kernels);
    emit_forward(&mut e, g, Mode::Infer)?;
    let guards: Vec<_> = slice_guard::guard(&mut e).iter().map(|o| value_info_unshaped(o, DataType::Float)).collect();
    let data_shape = g.shapes.get(data).cloned().unwrap_or_default();
    let out_shape = g.shapes.get(&g.output).cloned().unwrap_or_default();
    let weights = weight_inputs.iter().map(|(name, shape)| value_info(name, DataType::Float, shape));
    let graph = GraphProto {
        name: "fedge-inference".into(),
        node: e.nodes,
        initializer: e.inits,
        input: std::iter::once(value_info(data, DataType::Float, &data_shape)).chain(weights).collect(),
        output: std::iter::once(value_info(&g.output, DataType::Float, &out_shape)).chain(guards).collect(),
        ..Default::default()
    };
    Ok(model_of(graph))
}
