//! Emits the forward pass of a resolved [`Graph`] as standard ONNX nodes (opset 13), for training (dropout as a
//! multiplication by a mask fed as an extra graph input) or for inference (dropout as identity).
//!
//! It writes nodes only; it never differentiates and never runs anything.

use super::emit::Emitter;
use super::error::TrainError;
use super::graph::{DNode, Graph, Op};
use super::proto::{attr_f, attr_i, attr_ints, data_tensor};

/// Whether dropout is live (training) or identity (inference).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Train,
    Infer,
}

/// A dropout mask the caller must feed: graph input name, shape and drop ratio.
#[derive(Debug, Clone)]
pub struct MaskInput {
    pub name: String,
    /// The dropout node's output tensor.
    pub output: String,
    pub shape: Vec<usize>,
    pub ratio: f32,
}

/// Emits every constant the nodes read and every forward node. Returns the dropout masks to feed.
pub fn emit_forward(e: &mut Emitter, g: &Graph, mode: Mode) -> Result<Vec<MaskInput>, TrainError> {
    let mut emitted = std::collections::HashSet::new();
    for n in &g.nodes {
        for i in &n.inputs {
            if let Some((shape, data)) = g.consts.get(i)
                && emitted.insert(i.clone())
            {
                e.inits.push(data_tensor(i, shape, data));
            }
        }
    }
    let mut masks = vec![];
    for n in &g.nodes {
        emit_node(e, n, mode, &mut masks)?;
    }
    Ok(masks)
}

fn ints(v: &[usize]) -> Vec<i64> {
    v.iter().map(|x| *x as i64).collect()
}

fn pads(p: &[(usize, usize)]) -> Vec<i64> {
    p.iter().map(|x| x.0 as i64).chain(p.iter().map(|x| x.1 as i64)).collect()
}

fn emit_node(e: &mut Emitter, n: &DNode, mode: Mode, masks: &mut Vec<MaskInput>) -> Result<(), TrainError> {
    let ins: Vec<&str> = n.inputs.iter().map(|s| s.as_str()).collect();
    let out = [n.output.as_str()];
    match &n.op {
        Op::Gemm { alpha, beta, trans_a, trans_b } => e.op_into(
            "Gemm",
            &ins,
            &out,
            vec![
                attr_f("alpha", *alpha),
                attr_f("beta", *beta),
                attr_i("transA", *trans_a as i64),
                attr_i("transB", *trans_b as i64),
            ],
        ),
        Op::MatMul => e.op_into("MatMul", &ins, &out, vec![]),
        Op::Add => e.op_into("Add", &ins, &out, vec![]),
        Op::Sub => e.op_into("Sub", &ins, &out, vec![]),
        Op::Mul => e.op_into("Mul", &ins, &out, vec![]),
        Op::Div => e.op_into("Div", &ins, &out, vec![]),
        Op::Relu => e.op_into("Relu", &ins, &out, vec![]),
        Op::LeakyRelu { alpha } => e.op_into("LeakyRelu", &ins, &out, vec![attr_f("alpha", *alpha)]),
        Op::Sigmoid => e.op_into("Sigmoid", &ins, &out, vec![]),
        Op::Tanh => e.op_into("Tanh", &ins, &out, vec![]),
        Op::Identity => e.op_into("Identity", &ins, &out, vec![]),
        Op::Reshape => {
            let dims = ints(&n.out_shape);
            let s = e.const_i(&[dims.len()], &dims);
            e.op_into("Reshape", &[ins[0], &s], &out, vec![]);
        }
        Op::Transpose { perm } => e.op_into("Transpose", &ins, &out, vec![attr_ints("perm", &ints(perm))]),
        Op::Concat { axis } => e.op_into("Concat", &ins, &out, vec![attr_i("axis", *axis as i64)]),
        Op::Softmax { axis } => e.op_into("Softmax", &ins, &out, vec![attr_i("axis", *axis as i64)]),
        Op::LogSoftmax { axis } => e.op_into("LogSoftmax", &ins, &out, vec![attr_i("axis", *axis as i64)]),
        Op::Conv(c) => e.op_into(
            "Conv",
            &ins,
            &out,
            vec![
                attr_ints("kernel_shape", &ints(&c.kernel)),
                attr_ints("strides", &ints(&c.strides)),
                attr_ints("dilations", &ints(&c.dilations)),
                attr_ints("pads", &pads(&c.pads)),
                attr_i("group", c.group as i64),
            ],
        ),
        Op::MaxPool(p) => e.op_into(
            "MaxPool",
            &ins,
            &out,
            vec![
                attr_ints("kernel_shape", &ints(&p.kernel)),
                attr_ints("strides", &ints(&p.strides)),
                attr_ints("pads", &pads(&p.pads)),
            ],
        ),
        Op::AveragePool(p) => e.op_into(
            "AveragePool",
            &ins,
            &out,
            vec![
                attr_ints("kernel_shape", &ints(&p.kernel)),
                attr_ints("strides", &ints(&p.strides)),
                attr_ints("pads", &pads(&p.pads)),
                attr_i("count_include_pad", p.count_include_pad as i64),
            ],
        ),
        Op::GlobalAveragePool => e.op_into("GlobalAveragePool", &ins, &out, vec![]),
        Op::Dropout { ratio } => {
            if mode == Mode::Train && *ratio > 0.0 {
                let name = format!("__fedge/dropout_mask/{}", masks.len());
                e.op_into("Mul", &[ins[0], &name], &out, vec![]);
                masks.push(MaskInput { name, output: n.output.clone(), shape: n.out_shape.clone(), ratio: *ratio });
            } else {
                e.op_into("Identity", &ins[..1], &out, vec![]);
            }
        }
        Op::BatchNorm { epsilon } => {
            e.op_into("BatchNormalization", &ins, &out, vec![attr_f("epsilon", *epsilon)]);
        }
    }
    Ok(())
}
