//! The differentiable graph: an ONNX forward model resolved for one batch size into a list of nodes over
//! dynamic float tensors with static shapes, every shape-computing chain (Constant, Shape→Gather→Unsqueeze→
//! Concat→Reshape, Cast, ...) folded into constants.
//!
//! This is where operators are recognised: anything the engine cannot differentiate is refused here with
//! [`TrainError::UnsupportedOp`]. It never runs a computation on dynamic data and never builds ONNX output.

use std::collections::{HashMap, HashSet};

use tract_onnx::pb::{GraphProto, NodeProto};

use super::error::TrainError;
use super::lowering;
use super::proto::{Attrs, Data, MAX_ELEMENTS, decode_tensor};
use super::shapes::{self, broadcast, strides_of, window_out};

/// Convolution attributes, with padding resolved to explicit (begin, end) pairs per spatial axis.
#[derive(Debug, Clone, PartialEq)]
pub struct ConvAttrs {
    pub kernel: Vec<usize>,
    pub strides: Vec<usize>,
    pub dilations: Vec<usize>,
    pub pads: Vec<(usize, usize)>,
    pub group: usize,
}

/// Pooling attributes, with padding resolved to explicit (begin, end) pairs per spatial axis.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolAttrs {
    pub kernel: Vec<usize>,
    pub strides: Vec<usize>,
    pub pads: Vec<(usize, usize)>,
    pub count_include_pad: bool,
}

/// A differentiable operator with its attributes normalised (opset differences removed).
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    Gemm {
        alpha: f32,
        beta: f32,
        trans_a: bool,
        trans_b: bool,
    },
    MatMul,
    Add,
    Sub,
    Mul,
    Div,
    Relu,
    LeakyRelu {
        alpha: f32,
    },
    Sigmoid,
    Tanh,
    /// Reshape, Flatten, Squeeze and Unsqueeze: the output shape is the node's `out_shape`.
    Reshape,
    Transpose {
        perm: Vec<usize>,
    },
    Concat {
        axis: usize,
    },
    Conv(ConvAttrs),
    MaxPool(PoolAttrs),
    AveragePool(PoolAttrs),
    GlobalAveragePool,
    Softmax {
        axis: usize,
    },
    LogSoftmax {
        axis: usize,
    },
    Dropout {
        ratio: f32,
    },
    /// Inference-form batch normalisation (running statistics frozen): inputs x, scale, bias, mean, var.
    BatchNorm {
        epsilon: f32,
    },
    Identity,
    /// Elementwise `x^p` with a constant scalar exponent.
    Pow {
        exponent: f32,
    },
    Sqrt,
    Exp,
    /// The error function (GELU's exact form is `0.5 x (1 + erf(x / sqrt 2))`).
    Erf,
    Neg,
    /// `min(max(x, min), max)` with constant bounds.
    Clip {
        min: f32,
        max: f32,
    },
    /// `max(0, min(1, alpha x + beta))`.
    HardSigmoid {
        alpha: f32,
        beta: f32,
    },
    /// `x * max(0, min(1, x / 6 + 1/2))`.
    HardSwish,
    /// ReduceSum (`mean: false`) or ReduceMean over `axes` (sorted, distinct), kept as size 1 when `keepdims`.
    Reduce {
        mean: bool,
        axes: Vec<usize>,
        keepdims: bool,
    },
    /// Gather along `axis`: an embedding lookup (a trained table indexed by the model's input, read as integer
    /// ids) or a selection with constant indices (the last time step of a sequence).
    Gather {
        axis: usize,
    },
    /// LayerNormalization (opset 17): inputs x, scale and an optional bias; normalises over the axes from `axis` on.
    LayerNorm {
        axis: usize,
        epsilon: f32,
    },
    /// Slice with unit steps, resolved to a `[start, end)` range on every axis (Split is lowered to these).
    Slice {
        starts: Vec<usize>,
        ends: Vec<usize>,
    },
    /// Expand: broadcast to the constant shape `shape` (the broadcast of the input's shape and the requested one).
    Expand {
        shape: Vec<usize>,
    },
    /// Constant-mode Pad: `(before, after)` on every axis, filled with `value`.
    Pad {
        pads: Vec<(usize, usize)>,
        value: f32,
    },
    /// One step of an ONNX LSTM, written only by the lowering (`lowering::LSTM_CELL`): inputs the gate
    /// pre-activations `[B, 4H]` (i, o, f, c) and the cell state `[B, H]`; output the new hidden state, second output
    /// the new cell state (both `[B, H]`).
    LstmCell,
    /// One step of an ONNX GRU in PyTorch's form (`linear_before_reset` = 1), written only by the lowering
    /// (`lowering::GRU_CELL`): inputs the step's input projection `[B, 3H]`, its recurrence projection `[B, 3H]`
    /// (biases added) and the hidden state `[B, H]`; output the new hidden state.
    GruCell,
}

/// One node over dynamic tensors. Inputs may also name constants of the graph.
#[derive(Debug, Clone)]
pub struct DNode {
    pub name: String,
    pub op_type: String,
    pub op: Op,
    pub inputs: Vec<String>,
    pub output: String,
    /// A second output of the output's shape: an [`Op::LstmCell`]'s new cell state (no other operator has one).
    pub second_output: Option<String>,
    pub in_shapes: Vec<Vec<usize>>,
    pub out_shape: Vec<usize>,
}

/// A constant tensor.
pub type Const = (Vec<usize>, Data);

/// The resolved graph for one batch size.
#[derive(Debug, Clone)]
pub struct Graph {
    pub nodes: Vec<DNode>,
    pub consts: HashMap<String, Const>,
    pub shapes: HashMap<String, Vec<usize>>,
    /// Tensors that depend on a trainable parameter.
    pub requires_grad: HashSet<String>,
    pub output: String,
}

/// What feeds the graph: the data input and the tensors given as dynamic parameters.
pub struct Sources<'a> {
    pub data_name: &'a str,
    pub data_shape: Vec<usize>,
    /// Dynamic parameters (trainable weights fed as graph inputs), name → shape.
    pub params: &'a [(String, Vec<usize>)],
    /// Every initializer value (those also in `params` are ignored as constants).
    pub initializers: &'a HashMap<String, Const>,
    pub opset: i64,
}

enum Val {
    Dyn,
    Const,
}

impl Graph {
    pub fn resolve(graph: &GraphProto, src: &Sources<'_>, output: &str) -> Result<Graph, TrainError> {
        let mut g = Graph {
            nodes: vec![],
            consts: HashMap::new(),
            shapes: HashMap::new(),
            requires_grad: HashSet::new(),
            output: output.to_string(),
        };
        let param_names: HashSet<&str> = src.params.iter().map(|(n, _)| n.as_str()).collect();
        for (name, c) in src.initializers {
            if !param_names.contains(name.as_str()) {
                g.shapes.insert(name.clone(), c.0.clone());
                g.consts.insert(name.clone(), c.clone());
            }
        }
        for (name, shape) in src.params {
            g.shapes.insert(name.clone(), shape.clone());
            g.requires_grad.insert(name.clone());
        }
        g.shapes.insert(src.data_name.to_string(), src.data_shape.clone());
        for node in &graph.node {
            g.process(node, src.opset, false)?;
        }
        if !g.shapes.contains_key(output) {
            return Err(TrainError::invalid(format!("graph output {output} is never computed")));
        }
        if g.consts.contains_key(output) {
            return Err(TrainError::invalid(format!("graph output {output} is a constant")));
        }
        Ok(g)
    }

    fn kind(&self, name: &str) -> Option<Val> {
        if self.consts.contains_key(name) {
            Some(Val::Const)
        } else if self.shapes.contains_key(name) {
            Some(Val::Dyn)
        } else {
            None
        }
    }

    fn const_ints(&self, node: &NodeProto, name: &str) -> Result<Vec<i64>, TrainError> {
        match self.consts.get(name) {
            Some((_, d)) => Ok(d.as_i64()),
            None => Err(TrainError::UnsupportedOp {
                op: format!("{} with a computed (non-constant) input {name}", node.op_type),
                node: node.name.clone(),
            }),
        }
    }

    fn shape(&self, name: &str) -> Result<&Vec<usize>, TrainError> {
        self.shapes.get(name).ok_or_else(|| TrainError::invalid(format!("tensor {name} is used before it is computed")))
    }

    /// Resolves one node; `lowered` says it was written by the lowering (the only source of its internal operators).
    fn process(&mut self, node: &NodeProto, opset: i64, lowered: bool) -> Result<(), TrainError> {
        if (node.op_type == lowering::LSTM_CELL || node.op_type == lowering::GRU_CELL) && !lowered {
            return Err(TrainError::UnsupportedOp { op: node.op_type.clone(), node: node.name.clone() });
        }
        let inputs: Vec<&str> = node.input.iter().map(|s| s.as_str()).collect();
        for i in &inputs {
            if !i.is_empty() && self.kind(i).is_none() {
                return Err(TrainError::invalid(format!("node {} reads {i}, which is never computed", node.name)));
            }
        }
        let present: Vec<&str> = inputs.iter().copied().filter(|s| !s.is_empty()).collect();
        if lowering::is_lowered(&node.op_type) && !present.is_empty() {
            let shapes = &self.shapes;
            let consts = &self.consts;
            let low = lowering::lower(node, opset, &|n| shapes.get(n).cloned(), &|n| consts.get(n).cloned())?;
            for (name, c) in low.consts {
                self.shapes.insert(name.clone(), c.0.clone());
                self.consts.insert(name, c);
            }
            for n in &low.nodes {
                self.process(n, lowering::OPSET, true)?;
            }
            return Ok(());
        }
        let all_const = present.iter().all(|i| self.consts.contains_key(*i));
        let out = node
            .output
            .first()
            .filter(|o| !o.is_empty())
            .ok_or_else(|| TrainError::invalid(format!("node {} has no output", node.name)))?
            .clone();
        // Constant folding: nodes whose inputs are all constant, plus Shape of anything.
        if (node.op_type == "Shape" || all_const)
            && let Some(c) = self.fold(node, opset)?
        {
            self.shapes.insert(out.clone(), c.0.clone());
            self.consts.insert(out, c);
            return Ok(());
        }
        if present.is_empty() {
            return Err(TrainError::invalid(format!("node {} ({}) has no inputs", node.name, node.op_type)));
        }
        let op = self.parse(node, opset)?;
        let used: Vec<String> = match &op {
            Op::Reshape
            | Op::Dropout { .. }
            | Op::Identity
            | Op::Pow { .. }
            | Op::Clip { .. }
            | Op::Reduce { .. }
            | Op::Slice { .. }
            | Op::Expand { .. }
            | Op::Pad { .. } => {
                vec![
                    present
                        .first()
                        .ok_or_else(|| {
                            TrainError::invalid(format!("node {} ({}) has no input", node.name, node.op_type))
                        })?
                        .to_string(),
                ]
            }
            _ => present.iter().map(|s| s.to_string()).collect(),
        };
        let in_shapes = used.iter().map(|n| self.shape(n).cloned()).collect::<Result<Vec<_>, _>>()?;
        let out_shape = self.infer(node, &op, &in_shapes, opset)?;
        // Every operator's output is bounded here, once (a hostile Pad or Expand could otherwise ask for any size).
        if out_shape.iter().try_fold(1usize, |n, d| n.checked_mul(*d).filter(|n| *n <= MAX_ELEMENTS)).is_none() {
            return Err(TrainError::shape(format!(
                "node {} ({}): output {out_shape:?} has more than {MAX_ELEMENTS} values",
                node.name, node.op_type
            )));
        }
        let second_output = match op {
            Op::LstmCell => Some(
                node.output
                    .get(1)
                    .filter(|o| !o.is_empty() && node.output.len() == 2)
                    .ok_or_else(|| {
                        TrainError::invalid(format!("node {}: an LSTM step without its cell state", node.name))
                    })?
                    .clone(),
            ),
            _ => None,
        };
        if node.output.iter().skip(1).any(|o| !o.is_empty()) && !matches!(op, Op::Dropout { .. } | Op::LstmCell) {
            return Err(TrainError::UnsupportedOp {
                op: format!("{} with more than one output", node.op_type),
                node: node.name.clone(),
            });
        }
        if node.output.len() > 1 && matches!(op, Op::Dropout { .. }) && !node.output[1].is_empty() {
            return Err(TrainError::UnsupportedOp { op: "Dropout with a mask output".into(), node: node.name.clone() });
        }
        if used.iter().any(|n| self.requires_grad.contains(n)) {
            self.requires_grad.insert(out.clone());
            self.requires_grad.extend(second_output.clone());
        }
        self.shapes.insert(out.clone(), out_shape.clone());
        if let Some(second) = &second_output {
            self.shapes.insert(second.clone(), out_shape.clone());
        }
        let name =
            if node.name.is_empty() { format!("{}_{}", node.op_type, self.nodes.len()) } else { node.name.clone() };
        self.nodes.push(DNode {
            name,
            op_type: node.op_type.clone(),
            op,
            inputs: used,
            output: out,
            second_output,
            in_shapes,
            out_shape,
        });
        Ok(())
    }

    fn parse(&self, node: &NodeProto, opset: i64) -> Result<Op, TrainError> {
        let a = Attrs(node);
        let unsupported = |what: &str| TrainError::UnsupportedOp { op: what.to_string(), node: node.name.clone() };
        let n_in = node.input.iter().filter(|s| !s.is_empty()).count();
        let need = |k: usize| -> Result<(), TrainError> {
            if n_in < k {
                Err(TrainError::invalid(format!("node {} ({}) needs {k} inputs", node.name, node.op_type)))
            } else {
                Ok(())
            }
        };
        let first_shape = || -> Result<Vec<usize>, TrainError> {
            self.shape(node.input.first().map(|s| s.as_str()).unwrap_or("")).cloned()
        };
        Ok(match node.op_type.as_str() {
            "Gemm" => {
                need(2)?;
                Op::Gemm {
                    alpha: a.f("alpha", 1.0),
                    beta: a.f("beta", 1.0),
                    trans_a: a.i("transA", 0) != 0,
                    trans_b: a.i("transB", 0) != 0,
                }
            }
            "MatMul" => {
                need(2)?;
                Op::MatMul
            }
            "Add" | "Sub" | "Mul" | "Div" => {
                need(2)?;
                match node.op_type.as_str() {
                    "Add" => Op::Add,
                    "Sub" => Op::Sub,
                    "Mul" => Op::Mul,
                    _ => Op::Div,
                }
            }
            "Relu" => Op::Relu,
            "LeakyRelu" => Op::LeakyRelu { alpha: a.f("alpha", 0.01) },
            "Sigmoid" => Op::Sigmoid,
            "Tanh" => Op::Tanh,
            lowering::LSTM_CELL => {
                need(2)?;
                Op::LstmCell
            }
            lowering::GRU_CELL => {
                need(3)?;
                Op::GruCell
            }
            "Identity" => Op::Identity,
            "Cast" => {
                if a.i("to", 1) != 1 {
                    return Err(unsupported("Cast of a float tensor to a non-float type"));
                }
                Op::Identity
            }
            "Reshape" | "Flatten" | "Squeeze" | "Unsqueeze" => Op::Reshape,
            "Transpose" => {
                let rank = first_shape()?.len();
                let perm = match a.ints("perm") {
                    Some(p) => p.iter().map(|x| shapes::axis(*x, rank, false)).collect::<Result<Vec<_>, _>>()?,
                    None => (0..rank).rev().collect(),
                };
                let mut sorted = perm.clone();
                sorted.sort();
                if sorted != (0..rank).collect::<Vec<_>>() {
                    return Err(TrainError::invalid(format!("node {}: bad permutation {perm:?}", node.name)));
                }
                Op::Transpose { perm }
            }
            "Concat" => {
                let rank = first_shape()?.len();
                Op::Concat { axis: shapes::axis(a.i("axis", 0), rank, false)? }
            }
            "Softmax" | "LogSoftmax" => {
                let rank = first_shape()?.len();
                let default = if opset < 13 { 1 } else { -1 };
                let axis = shapes::axis(a.i("axis", default), rank, false)?;
                if opset < 13 && axis + 1 != rank {
                    return Err(unsupported(&format!("{} (opset < 13) over a non-final axis", node.op_type)));
                }
                if node.op_type == "Softmax" { Op::Softmax { axis } } else { Op::LogSoftmax { axis } }
            }
            "Dropout" => {
                let ratio = if opset < 12 {
                    a.f("ratio", 0.5)
                } else {
                    match node.input.get(1).filter(|s| !s.is_empty()) {
                        Some(r) => self
                            .consts
                            .get(r)
                            .map(|(_, d)| d.as_f32().first().copied().unwrap_or(0.5))
                            .ok_or_else(|| unsupported("Dropout with a computed ratio"))?,
                        None => 0.5,
                    }
                };
                if !(0.0..1.0).contains(&ratio) {
                    return Err(TrainError::invalid(format!("node {}: dropout ratio {ratio}", node.name)));
                }
                Op::Dropout { ratio }
            }
            "BatchNormalization" => {
                need(5)?;
                for i in 3..5 {
                    if !self.consts.contains_key(&node.input[i]) {
                        return Err(unsupported(
                            "BatchNormalization with trainable or computed running statistics (they stay frozen)",
                        ));
                    }
                }
                Op::BatchNorm { epsilon: a.f("epsilon", 1e-5) }
            }
            "Conv" => {
                need(2)?;
                let x = first_shape()?;
                let w = self.shape(&node.input[1])?.clone();
                if x.len() < 3 || w.len() != x.len() {
                    return Err(TrainError::shape(format!("node {}: Conv input {x:?} with kernel {w:?}", node.name)));
                }
                let sp = x.len() - 2;
                let kernel: Vec<usize> = w[2..].to_vec();
                if let Some(k) = a.ints("kernel_shape")
                    && k.iter().map(|v| *v as usize).collect::<Vec<_>>() != kernel
                {
                    return Err(TrainError::invalid(format!("node {}: kernel_shape disagrees with W", node.name)));
                }
                let strides = ints_or(&a, "strides", sp, 1)?;
                let dilations = ints_or(&a, "dilations", sp, 1)?;
                let pads = pads_of(&a, &x[2..], &kernel, &strides, &dilations)?;
                let group = a.i("group", 1);
                if group < 1 {
                    return Err(TrainError::invalid(format!("node {}: group {group}", node.name)));
                }
                Op::Conv(ConvAttrs { kernel, strides, dilations, pads, group: group as usize })
            }
            "MaxPool" | "AveragePool" => {
                let x = first_shape()?;
                if x.len() < 3 {
                    return Err(TrainError::shape(format!("node {}: pooling input {x:?}", node.name)));
                }
                let sp = x.len() - 2;
                let kernel: Vec<usize> = a
                    .ints("kernel_shape")
                    .ok_or_else(|| TrainError::invalid(format!("node {}: no kernel_shape", node.name)))?
                    .iter()
                    .map(|v| usize::try_from(*v).map_err(|_| TrainError::invalid("negative kernel")))
                    .collect::<Result<_, _>>()?;
                if kernel.len() != sp {
                    return Err(TrainError::invalid(format!("node {}: kernel_shape rank", node.name)));
                }
                let strides = ints_or(&a, "strides", sp, 1)?;
                let dilations = ints_or(&a, "dilations", sp, 1)?;
                if dilations.iter().any(|d| *d != 1) {
                    return Err(unsupported(&format!("{} with dilations", node.op_type)));
                }
                if a.i("storage_order", 0) != 0 {
                    return Err(unsupported(&format!("{} with storage_order", node.op_type)));
                }
                let pads = pads_of(&a, &x[2..], &kernel, &strides, &dilations)?;
                if a.i("ceil_mode", 0) != 0 {
                    // Only accepted when ceil and floor agree.
                    for i in 0..sp {
                        let span = x[2 + i] + pads[i].0 + pads[i].1;
                        if span < kernel[i] || !(span - kernel[i]).is_multiple_of(strides[i]) {
                            return Err(unsupported(&format!("{} with ceil_mode", node.op_type)));
                        }
                    }
                }
                let p = PoolAttrs { kernel, strides, pads, count_include_pad: a.i("count_include_pad", 0) != 0 };
                if node.op_type == "MaxPool" { Op::MaxPool(p) } else { Op::AveragePool(p) }
            }
            "GlobalAveragePool" => Op::GlobalAveragePool,
            "Sqrt" => Op::Sqrt,
            "Exp" => Op::Exp,
            "Erf" => Op::Erf,
            "Neg" => Op::Neg,
            "HardSwish" => Op::HardSwish,
            "HardSigmoid" => Op::HardSigmoid { alpha: a.f("alpha", 0.2), beta: a.f("beta", 0.5) },
            "Pow" => {
                need(2)?;
                let exponent = self
                    .consts
                    .get(&node.input[1])
                    .map(|(_, d)| d.as_f32())
                    .filter(|v| v.len() == 1)
                    .and_then(|v| v.first().copied())
                    .ok_or_else(|| unsupported("Pow with a computed or non-scalar exponent"))?;
                if !exponent.is_finite() {
                    return Err(TrainError::invalid(format!("node {}: exponent {exponent}", node.name)));
                }
                Op::Pow { exponent }
            }
            "Clip" => {
                let bound = |i: usize, attr: &str, default: f32| -> Result<f32, TrainError> {
                    if opset < 11 {
                        return Ok(a.f(attr, default));
                    }
                    match node.input.get(i).filter(|s| !s.is_empty()) {
                        None => Ok(default),
                        Some(name) => self
                            .consts
                            .get(name)
                            .and_then(|(_, d)| d.as_f32().first().copied())
                            .ok_or_else(|| unsupported("Clip with computed bounds")),
                    }
                };
                let (min, max) = (bound(1, "min", f32::MIN)?, bound(2, "max", f32::MAX)?);
                if min.is_nan() || max.is_nan() || min > max {
                    return Err(TrainError::invalid(format!("node {}: Clip bounds {min} > {max}", node.name)));
                }
                Op::Clip { min, max }
            }
            "ReduceMean" | "ReduceSum" => {
                let rank = first_shape()?.len();
                let mean = node.op_type == "ReduceMean";
                // The axes moved from an attribute to an input in opset 13 (ReduceSum) and 18 (ReduceMean).
                let from_input = if mean { opset >= 18 } else { opset >= 13 };
                let listed = if from_input {
                    match node.input.get(1).filter(|s| !s.is_empty()) {
                        Some(name) => Some(self.const_ints(node, name)?),
                        None => None,
                    }
                } else {
                    a.ints("axes")
                };
                let listed = listed.unwrap_or_default();
                let mut axes = if listed.is_empty() {
                    if a.i("noop_with_empty_axes", 0) != 0 {
                        return Err(unsupported(&format!("{} with noop_with_empty_axes", node.op_type)));
                    }
                    (0..rank).collect()
                } else {
                    listed.iter().map(|x| shapes::axis(*x, rank, false)).collect::<Result<Vec<_>, _>>()?
                };
                axes.sort_unstable();
                axes.dedup();
                Op::Reduce { mean, axes, keepdims: a.i("keepdims", 1) != 0 }
            }
            "Gather" => {
                need(2)?;
                let rank = first_shape()?.len();
                if self.requires_grad.contains(&node.input[1]) {
                    return Err(unsupported("Gather with indices computed from trained weights"));
                }
                let axis = shapes::axis(a.i("axis", 0), rank, false)?;
                if axis != 0 && !self.consts.contains_key(&node.input[1]) {
                    return Err(unsupported("Gather with computed indices along an axis other than 0"));
                }
                Op::Gather { axis }
            }
            "LayerNormalization" => {
                need(2)?;
                let rank = first_shape()?.len();
                if node.output.iter().skip(1).any(|o| !o.is_empty()) {
                    return Err(unsupported("LayerNormalization with its mean or inverse deviation as outputs"));
                }
                Op::LayerNorm { axis: shapes::axis(a.i("axis", -1), rank, false)?, epsilon: a.f("epsilon", 1e-5) }
            }
            "Expand" => {
                need(2)?;
                let want = self.const_ints(node, &node.input[1])?;
                let want = want
                    .iter()
                    .map(|d| {
                        usize::try_from(*d)
                            .map_err(|_| TrainError::invalid(format!("node {}: Expand to {d}", node.name)))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                Op::Expand { shape: broadcast(&first_shape()?, &want)? }
            }
            "Slice" => {
                let shape = first_shape()?;
                let (starts, ends) = self.slice_range(node, &shape, opset)?;
                Op::Slice { starts, ends }
            }
            "Pad" => {
                let rank = first_shape()?.len();
                if let Some(mode) = a.s("mode").filter(|m| m != "constant") {
                    return Err(unsupported(&format!("Pad in {mode} mode")));
                }
                let (raw, value) = if opset < 11 {
                    (a.ints("pads").unwrap_or_default(), a.f("value", 0.0))
                } else {
                    let raw = self.const_ints(node, node.input.get(1).map(|s| s.as_str()).unwrap_or(""))?;
                    let value = match node.input.get(2).filter(|s| !s.is_empty()) {
                        None => 0.0,
                        Some(name) => self
                            .consts
                            .get(name)
                            .and_then(|(_, d)| d.as_f32().first().copied())
                            .ok_or_else(|| unsupported("Pad with a computed value"))?,
                    };
                    if node.input.get(3).is_some_and(|s| !s.is_empty()) {
                        return Err(unsupported("Pad with an axes input"));
                    }
                    (raw, value)
                };
                if raw.len() != 2 * rank || raw.iter().any(|p| *p < 0) || !value.is_finite() {
                    return Err(TrainError::invalid(format!(
                        "node {}: Pad needs {} non-negative pads and a finite value, got {raw:?} and {value}",
                        node.name,
                        2 * rank
                    )));
                }
                let pads = (0..rank).map(|i| (raw[i] as usize, raw[rank + i] as usize)).collect();
                Op::Pad { pads, value }
            }
            other => return Err(unsupported(other)),
        })
    }

    /// A Slice's `[start, end)` on every axis of `shape`, clamped as ONNX clamps them; steps other than 1 refused.
    fn slice_range(
        &self,
        node: &NodeProto,
        shape: &[usize],
        opset: i64,
    ) -> Result<(Vec<usize>, Vec<usize>), TrainError> {
        let a = Attrs(node);
        let unsupported = |what: &str| TrainError::UnsupportedOp { op: what.to_string(), node: node.name.clone() };
        let input = |i: usize| -> Result<Option<Vec<i64>>, TrainError> {
            match node.input.get(i).filter(|s| !s.is_empty()) {
                None => Ok(None),
                Some(name) => self.const_ints(node, name).map(Some),
            }
        };
        let (starts, ends, axes, steps) = if opset < 10 {
            (a.ints("starts").unwrap_or_default(), a.ints("ends").unwrap_or_default(), a.ints("axes"), None)
        } else {
            (input(1)?.unwrap_or_default(), input(2)?.unwrap_or_default(), input(3)?, input(4)?)
        };
        let rank = shape.len();
        let axes = axes.unwrap_or_else(|| (0..starts.len() as i64).collect());
        if starts.len() != ends.len() || axes.len() != starts.len() {
            return Err(TrainError::invalid(format!(
                "node {}: Slice starts, ends and axes differ in length",
                node.name
            )));
        }
        if steps.as_ref().is_some_and(|st| st.len() != starts.len() || st.iter().any(|s| *s != 1)) {
            return Err(unsupported("Slice with a step other than 1"));
        }
        let mut lo = vec![0; rank];
        let mut hi = shape.to_vec();
        for ((s, e), ax) in starts.iter().zip(&ends).zip(&axes) {
            let ax = shapes::axis(*ax, rank, false)?;
            let n = shape[ax] as i64;
            let clamp = |v: i64| if v < 0 { (v.saturating_add(n)).max(0) } else { v.min(n) };
            let (b, e) = (clamp(*s), clamp(*e));
            lo[ax] = b as usize;
            hi[ax] = e.max(b) as usize;
        }
        Ok((lo, hi))
    }

    fn infer(&self, node: &NodeProto, op: &Op, s: &[Vec<usize>], opset: i64) -> Result<Vec<usize>, TrainError> {
        let bad = |msg: String| TrainError::shape(format!("node {} ({}): {msg}", node.name, node.op_type));
        // A hostile or broken graph may give a node fewer inputs than its operator needs.
        let arity = match op {
            Op::Gemm { .. } | Op::MatMul | Op::Add | Op::Sub | Op::Mul | Op::Div | Op::Conv(_) => 2,
            Op::BatchNorm { .. } => 5,
            Op::GruCell => 3,
            Op::LayerNorm { .. } | Op::Gather { .. } | Op::LstmCell => 2,
            _ => 1,
        };
        if s.len() < arity {
            return Err(bad(format!("needs {arity} inputs, has {}", s.len())));
        }
        if let Op::MaxPool(p) | Op::AveragePool(p) = op
            && s[0].len() != 2 + p.kernel.len()
        {
            return Err(bad(format!("input {:?} for a {}-dimensional window", s[0], p.kernel.len())));
        }
        Ok(match op {
            Op::Gemm { trans_a, trans_b, .. } => {
                let (x, w) = (&s[0], &s[1]);
                if x.len() != 2 || w.len() != 2 {
                    return Err(bad(format!("Gemm needs matrices, got {x:?} and {w:?}")));
                }
                let (m, k) = if *trans_a { (x[1], x[0]) } else { (x[0], x[1]) };
                let (k2, n) = if *trans_b { (w[1], w[0]) } else { (w[0], w[1]) };
                if k != k2 {
                    return Err(bad(format!("inner dimensions {k} and {k2} differ")));
                }
                if let Some(c) = s.get(2)
                    && broadcast(c, &[m, n])? != vec![m, n]
                {
                    return Err(bad(format!("C {c:?} does not broadcast to [{m}, {n}]")));
                }
                vec![m, n]
            }
            Op::MatMul => {
                let (x, w) = (&s[0], &s[1]);
                if x.len() < 2 || w.len() < 2 {
                    return Err(TrainError::UnsupportedOp {
                        op: "MatMul with a one-dimensional operand".into(),
                        node: node.name.clone(),
                    });
                }
                let (m, k) = (x[x.len() - 2], x[x.len() - 1]);
                let (k2, n) = (w[w.len() - 2], w[w.len() - 1]);
                if k != k2 {
                    return Err(bad(format!("inner dimensions {k} and {k2} differ")));
                }
                let mut out = broadcast(&x[..x.len() - 2], &w[..w.len() - 2])?;
                out.extend([m, n]);
                out
            }
            Op::Add | Op::Sub | Op::Mul | Op::Div => broadcast(&s[0], &s[1])?,
            Op::LstmCell => {
                let (g, c) = (&s[0], &s[1]);
                if c.len() != 2 || c[1] == 0 || g.len() != 2 || g[0] != c[0] || Some(g[1]) != c[1].checked_mul(4) {
                    return Err(bad(format!("gates {g:?} and cell state {c:?} are not [B, 4H] and [B, H]")));
                }
                c.clone()
            }
            Op::GruCell => {
                let (x, q, h) = (&s[0], &s[1], &s[2]);
                if h.len() != 2
                    || h[1] == 0
                    || x != q
                    || x.len() != 2
                    || x[0] != h[0]
                    || Some(x[1]) != h[1].checked_mul(3)
                {
                    return Err(bad(format!("projections {x:?}, {q:?} and state {h:?} are not [B, 3H] and [B, H]")));
                }
                h.clone()
            }
            Op::Relu
            | Op::LeakyRelu { .. }
            | Op::Sigmoid
            | Op::Tanh
            | Op::Identity
            | Op::Softmax { .. }
            | Op::LogSoftmax { .. }
            | Op::Dropout { .. }
            | Op::Pow { .. }
            | Op::Sqrt
            | Op::Exp
            | Op::Erf
            | Op::Neg
            | Op::Clip { .. }
            | Op::HardSigmoid { .. }
            | Op::HardSwish => s[0].clone(),
            Op::Reduce { axes, keepdims, .. } => {
                if *keepdims {
                    s[0].iter().enumerate().map(|(i, d)| if axes.contains(&i) { 1 } else { *d }).collect()
                } else {
                    s[0].iter().enumerate().filter(|(i, _)| !axes.contains(i)).map(|(_, d)| *d).collect()
                }
            }
            Op::Gather { axis } => {
                let mut out = s[0][..*axis].to_vec();
                out.extend(&s[1]);
                out.extend(&s[0][*axis + 1..]);
                out
            }
            Op::LayerNorm { axis, .. } => {
                let tail = &s[0][*axis..];
                for p in &s[1..] {
                    if broadcast(p, tail)? != tail {
                        return Err(bad(format!("scale or bias {p:?} does not broadcast to {tail:?}")));
                    }
                }
                s[0].clone()
            }
            Op::BatchNorm { .. } => {
                let c = s[0].get(1).copied().ok_or_else(|| bad("input without channels".into()))?;
                if s[1..5].iter().any(|p| p.as_slice() != [c]) {
                    return Err(bad(format!("parameters must have shape [{c}]")));
                }
                s[0].clone()
            }
            Op::Reshape => self.reshape_target(node, &s[0], opset)?,
            Op::Expand { shape } => shape.clone(),
            Op::Slice { starts, ends } => starts.iter().zip(ends).map(|(b, e)| e - b).collect(),
            Op::Pad { pads, .. } => s[0]
                .iter()
                .zip(pads)
                .map(|(d, (b, e))| d.checked_add(*b).and_then(|x| x.checked_add(*e)))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| bad(format!("pads {pads:?} overflow")))?,
            Op::Transpose { perm } => perm.iter().map(|p| s[0][*p]).collect(),
            Op::Concat { axis } => {
                let mut out = s[0].clone();
                out[*axis] = 0;
                for t in s {
                    if t.len() != out.len() || (0..t.len()).any(|i| i != *axis && t[i] != out[i]) {
                        return Err(bad(format!("cannot concatenate {:?} with {t:?}", s[0])));
                    }
                    out[*axis] += t[*axis];
                }
                out
            }
            Op::Conv(c) => {
                let (x, w) = (&s[0], &s[1]);
                if x[1] != w[1] * c.group || w[0] % c.group != 0 {
                    return Err(bad(format!("input {x:?}, kernel {w:?} and group {} disagree", c.group)));
                }
                if let Some(b) = s.get(2)
                    && b.as_slice() != [w[0]]
                {
                    return Err(bad(format!("bias {b:?}")));
                }
                let mut out = vec![x[0], w[0]];
                for i in 0..c.kernel.len() {
                    out.push(window_out(
                        x[2 + i],
                        c.kernel[i],
                        c.strides[i],
                        c.dilations[i],
                        c.pads[i].0,
                        c.pads[i].1,
                    )?);
                }
                out
            }
            Op::MaxPool(p) | Op::AveragePool(p) => {
                let x = &s[0];
                let mut out = vec![x[0], x[1]];
                for i in 0..p.kernel.len() {
                    if p.pads[i].0 >= p.kernel[i] || p.pads[i].1 >= p.kernel[i] {
                        return Err(bad("padding as large as the kernel".into()));
                    }
                    out.push(window_out(x[2 + i], p.kernel[i], p.strides[i], 1, p.pads[i].0, p.pads[i].1)?);
                }
                out
            }
            Op::GlobalAveragePool => {
                let x = &s[0];
                if x.len() < 3 {
                    return Err(bad(format!("input {x:?}")));
                }
                let mut out = vec![x[0], x[1]];
                out.extend(std::iter::repeat_n(1, x.len() - 2));
                out
            }
        })
    }

    /// Output shape of Reshape / Flatten / Squeeze / Unsqueeze applied to `x`.
    fn reshape_target(&self, node: &NodeProto, x: &[usize], opset: i64) -> Result<Vec<usize>, TrainError> {
        let a = Attrs(node);
        let bad = |msg: String| TrainError::shape(format!("node {} ({}): {msg}", node.name, node.op_type));
        let count: usize = x.iter().product();
        let out = match node.op_type.as_str() {
            "Reshape" => {
                let spec_name = node.input.get(1).ok_or_else(|| bad("no shape input".into()))?;
                let spec = self.const_ints(node, spec_name)?;
                let allow_zero = a.i("allowzero", 0) != 0;
                let mut out = Vec::with_capacity(spec.len());
                let mut infer = None;
                for (i, d) in spec.iter().enumerate() {
                    match *d {
                        -1 if infer.is_none() => {
                            infer = Some(i);
                            out.push(1);
                        }
                        0 if !allow_zero => out.push(*x.get(i).ok_or_else(|| bad("0 beyond the input rank".into()))?),
                        d if d >= 0 => out.push(d as usize),
                        d => return Err(bad(format!("dimension {d}"))),
                    }
                }
                if let Some(i) = infer {
                    let known: usize = out.iter().product();
                    if known == 0 || !count.is_multiple_of(known) {
                        return Err(bad(format!("cannot reshape {x:?} to {spec:?}")));
                    }
                    out[i] = count / known;
                }
                out
            }
            "Flatten" => {
                let axis = shapes::axis(a.i("axis", 1), x.len(), true)?;
                vec![x[..axis].iter().product(), x[axis..].iter().product()]
            }
            "Squeeze" => {
                let axes = if opset >= 13 {
                    match node.input.get(1).filter(|s| !s.is_empty()) {
                        Some(n) => Some(self.const_ints(node, n)?),
                        None => None,
                    }
                } else {
                    a.ints("axes")
                };
                match axes {
                    None => x.iter().copied().filter(|d| *d != 1).collect(),
                    Some(axes) => {
                        let axes =
                            axes.iter().map(|v| shapes::axis(*v, x.len(), false)).collect::<Result<HashSet<_>, _>>()?;
                        if axes.iter().any(|i| x[*i] != 1) {
                            return Err(bad(format!("cannot squeeze {x:?} on {axes:?}")));
                        }
                        x.iter().enumerate().filter(|(i, _)| !axes.contains(i)).map(|(_, d)| *d).collect()
                    }
                }
            }
            "Unsqueeze" => {
                let axes = if opset >= 13 {
                    let n = node.input.get(1).ok_or_else(|| bad("no axes input".into()))?;
                    self.const_ints(node, n)?
                } else {
                    a.ints("axes").ok_or_else(|| bad("no axes".into()))?
                };
                unsqueeze(x, &axes)?
            }
            other => return Err(bad(format!("{other} is not a reshape"))),
        };
        if out.iter().product::<usize>() != count {
            return Err(bad(format!("cannot reshape {x:?} to {out:?}")));
        }
        Ok(out)
    }

    /// Evaluates a node whose inputs are constants (and Shape of anything). `None` when the op cannot be folded.
    fn fold(&self, node: &NodeProto, opset: i64) -> Result<Option<Const>, TrainError> {
        let a = Attrs(node);
        let bad = |msg: String| TrainError::invalid(format!("node {} ({}): {msg}", node.name, node.op_type));
        let inp = |i: usize| -> Result<&Const, TrainError> {
            node.input
                .get(i)
                .and_then(|n| self.consts.get(n))
                .ok_or_else(|| bad(format!("input {i} is not a constant")))
        };
        Ok(Some(match node.op_type.as_str() {
            "Constant" => {
                if let Some(t) = a.t("value") {
                    decode_tensor(t)?
                } else if a.has("value_float") {
                    (vec![], Data::F(vec![a.f("value_float", 0.0)]))
                } else if let Some(f) = a.floats("value_floats").filter(|_| a.has("value_floats")) {
                    (vec![f.len()], Data::F(f))
                } else if a.has("value_int") {
                    (vec![], Data::I(vec![a.i("value_int", 0)]))
                } else if let Some(i) = a.ints("value_ints") {
                    (vec![i.len()], Data::I(i))
                } else {
                    return Err(TrainError::UnsupportedOp {
                        op: "Constant of this kind".into(),
                        node: node.name.clone(),
                    });
                }
            }
            "Shape" => {
                let x = self.shape(node.input.first().map(|s| s.as_str()).unwrap_or(""))?;
                let r = x.len() as i64;
                let clamp = |v: i64| if v < 0 { (v + r).max(0) } else { v.min(r) } as usize;
                let start = clamp(a.i("start", 0));
                let end = clamp(a.i("end", r));
                let dims: Vec<i64> = x[start..end.max(start)].iter().map(|d| *d as i64).collect();
                (vec![dims.len()], Data::I(dims))
            }
            "Identity" => inp(0)?.clone(),
            "Cast" => {
                let (s, d) = inp(0)?.clone();
                match a.i("to", 1) {
                    1 | 10 | 11 | 16 => (s, Data::F(d.as_f32())),
                    _ => (s, Data::I(d.as_i64())),
                }
            }
            "Reshape" | "Flatten" | "Squeeze" | "Unsqueeze" => {
                let (s, d) = inp(0)?.clone();
                (self.reshape_target(node, &s, opset)?, d)
            }
            "Gather" => {
                let (ds, d) = inp(0)?.clone();
                let (is, idx) = inp(1)?.clone();
                let axis = shapes::axis(a.i("axis", 0), ds.len(), false)?;
                let outer: usize = ds[..axis].iter().product();
                let inner: usize = ds[axis + 1..].iter().product();
                let dim = ds[axis] as i64;
                let idx = idx.as_i64();
                let mut picks = Vec::with_capacity(idx.len());
                for i in idx {
                    let j = if i < 0 { i + dim } else { i };
                    if j < 0 || j >= dim {
                        return Err(bad(format!("index {i} out of range")));
                    }
                    picks.push(j as usize);
                }
                let gather = |v: &[f64]| -> Vec<f64> {
                    let mut out = Vec::with_capacity(outer * picks.len() * inner);
                    for o in 0..outer {
                        for p in &picks {
                            let base = (o * ds[axis] + p) * inner;
                            out.extend_from_slice(&v[base..base + inner]);
                        }
                    }
                    out
                };
                let mut shape = ds[..axis].to_vec();
                shape.extend(&is);
                shape.extend(&ds[axis + 1..]);
                let data = match d {
                    Data::F(v) => Data::F(
                        gather(&v.iter().map(|x| *x as f64).collect::<Vec<_>>()).iter().map(|x| *x as f32).collect(),
                    ),
                    Data::I(v) => Data::I(
                        gather(&v.iter().map(|x| *x as f64).collect::<Vec<_>>()).iter().map(|x| *x as i64).collect(),
                    ),
                };
                (shape, data)
            }
            "Concat" => {
                let first = inp(0)?;
                let axis = shapes::axis(a.i("axis", 0), first.0.len(), false)?;
                let parts = (0..node.input.len()).map(inp).collect::<Result<Vec<_>, _>>()?;
                let mut shape = first.0.clone();
                shape[axis] = parts.iter().map(|p| p.0.get(axis).copied().unwrap_or(0)).sum();
                let outer: usize = shape[..axis].iter().product();
                let float = parts.iter().any(|p| matches!(p.1, Data::F(_)));
                let mut f = vec![];
                let mut i = vec![];
                for p in &parts {
                    if p.0.len() != shape.len() || (0..shape.len()).any(|i| i != axis && p.0[i] != shape[i]) {
                        return Err(bad(format!("cannot concatenate {:?} with {:?}", first.0, p.0)));
                    }
                }
                for o in 0..outer {
                    for p in &parts {
                        let chunk: usize = p.0[axis..].iter().product();
                        if float {
                            f.extend_from_slice(&p.1.as_f32()[o * chunk..(o + 1) * chunk]);
                        } else {
                            i.extend_from_slice(&p.1.as_i64()[o * chunk..(o + 1) * chunk]);
                        }
                    }
                }
                (shape, if float { Data::F(f) } else { Data::I(i) })
            }
            // Shape chains (Expand with a -1 dimension): comparisons give 0/1 integers, Where picks by them.
            "Equal" => {
                let (sa, da) = inp(0)?;
                let (sb, db) = inp(1)?;
                let shape = broadcast(sa, sb)?;
                let (x, y) = (da.as_i64(), db.as_i64());
                let eq = broadcast_index(sa, &shape)
                    .iter()
                    .zip(&broadcast_index(sb, &shape))
                    .map(|(i, j)| (x[*i] == y[*j]) as i64)
                    .collect();
                (shape, Data::I(eq))
            }
            "Where" => {
                let (sc, dc) = inp(0)?;
                let (sa, da) = inp(1)?;
                let (sb, db) = inp(2)?;
                let shape = broadcast(&broadcast(sc, sa)?, sb)?;
                let (ic, ia, ib) =
                    (broadcast_index(sc, &shape), broadcast_index(sa, &shape), broadcast_index(sb, &shape));
                let cond = dc.as_i64();
                let data = match (da, db) {
                    (Data::I(x), Data::I(y)) => {
                        Data::I((0..ic.len()).map(|k| if cond[ic[k]] != 0 { x[ia[k]] } else { y[ib[k]] }).collect())
                    }
                    _ => {
                        let (x, y) = (da.as_f32(), db.as_f32());
                        Data::F((0..ic.len()).map(|k| if cond[ic[k]] != 0 { x[ia[k]] } else { y[ib[k]] }).collect())
                    }
                };
                (shape, data)
            }
            "Add" | "Sub" | "Mul" | "Div" => {
                let (sa, da) = inp(0)?;
                let (sb, db) = inp(1)?;
                let shape = broadcast(sa, sb)?;
                let ia = broadcast_index(sa, &shape);
                let ib = broadcast_index(sb, &shape);
                let data = match (da, db) {
                    (Data::I(x), Data::I(y)) => {
                        let f = |p: i64, q: i64| -> Result<i64, TrainError> {
                            Ok(match node.op_type.as_str() {
                                "Add" => p.wrapping_add(q),
                                "Sub" => p.wrapping_sub(q),
                                "Mul" => p.wrapping_mul(q),
                                _ => p.checked_div(q).ok_or_else(|| bad("division by zero".into()))?,
                            })
                        };
                        Data::I(ia.iter().zip(&ib).map(|(i, j)| f(x[*i], y[*j])).collect::<Result<_, _>>()?)
                    }
                    _ => {
                        let (x, y) = (da.as_f32(), db.as_f32());
                        let f = |p: f32, q: f32| match node.op_type.as_str() {
                            "Add" => p + q,
                            "Sub" => p - q,
                            "Mul" => p * q,
                            _ => p / q,
                        };
                        Data::F(ia.iter().zip(&ib).map(|(i, j)| f(x[*i], y[*j])).collect())
                    }
                };
                (shape, data)
            }
            "Slice" if opset >= 10 => {
                let (s, d) = inp(0)?.clone();
                if s.len() != 1 {
                    return Ok(None);
                }
                let starts = self.const_ints(node, &node.input[1])?;
                let ends = self.const_ints(node, node.input.get(2).map(|s| s.as_str()).unwrap_or(""))?;
                if let Some(ax) = node.input.get(3).filter(|s| !s.is_empty())
                    && self.const_ints(node, ax)?.iter().any(|v| *v != 0 && *v != -1)
                {
                    return Err(bad("axis".into()));
                }
                let step = match node.input.get(4).filter(|s| !s.is_empty()) {
                    Some(st) => self.const_ints(node, st)?.first().copied().unwrap_or(1),
                    None => 1,
                };
                let n = s[0] as i64;
                let clamp = |v: i64| if v < 0 { (v + n).max(0) } else { v.min(n) };
                let (b, e) = (clamp(starts.first().copied().unwrap_or(0)), clamp(ends.first().copied().unwrap_or(n)));
                if step != 1 {
                    return Ok(None);
                }
                let (b, e) = (b as usize, (e.max(b)) as usize);
                let data = match d {
                    Data::F(v) => Data::F(v[b..e].to_vec()),
                    Data::I(v) => Data::I(v[b..e].to_vec()),
                };
                (vec![e - b], data)
            }
            "ConstantOfShape" => {
                let dims = inp(0)?.1.as_i64();
                let shape = dims
                    .iter()
                    .map(|d| usize::try_from(*d).map_err(|_| bad("negative dim".into())))
                    .collect::<Result<Vec<_>, _>>()?;
                let n = shape.iter().product();
                let value = match a.t("value") {
                    Some(t) => decode_tensor(t)?.1,
                    None => Data::F(vec![0.0]),
                };
                let data = match value {
                    Data::F(v) => Data::F(vec![v.first().copied().unwrap_or(0.0); n]),
                    Data::I(v) => Data::I(vec![v.first().copied().unwrap_or(0); n]),
                };
                (shape, data)
            }
            _ => return Ok(None),
        }))
    }
}

fn ints_or(a: &Attrs<'_>, name: &str, n: usize, default: usize) -> Result<Vec<usize>, TrainError> {
    match a.ints(name) {
        None => Ok(vec![default; n]),
        Some(v) if v.len() == n && v.iter().all(|x| *x >= 1) => Ok(v.iter().map(|x| *x as usize).collect()),
        Some(v) => Err(TrainError::invalid(format!("node {}: {name} = {v:?}", a.0.name))),
    }
}

fn pads_of(
    a: &Attrs<'_>,
    spatial: &[usize],
    kernel: &[usize],
    strides: &[usize],
    dilations: &[usize],
) -> Result<Vec<(usize, usize)>, TrainError> {
    let sp = spatial.len();
    match a.s("auto_pad").as_deref() {
        Some(mode) if mode != "NOTSET" && !mode.is_empty() => {
            shapes::auto_pads(mode, spatial, kernel, strides, dilations)
        }
        _ => match a.ints("pads") {
            None => Ok(vec![(0, 0); sp]),
            Some(p) if p.len() == 2 * sp && p.iter().all(|x| *x >= 0) => {
                Ok((0..sp).map(|i| (p[i] as usize, p[i + sp] as usize)).collect())
            }
            Some(p) => Err(TrainError::invalid(format!("node {}: pads = {p:?}", a.0.name))),
        },
    }
}

/// Shape after inserting size-1 axes at `axes` (positions in the output).
pub fn unsqueeze(x: &[usize], axes: &[i64]) -> Result<Vec<usize>, TrainError> {
    let rank = x.len() + axes.len();
    let axes = axes.iter().map(|v| shapes::axis(*v, rank, false)).collect::<Result<HashSet<_>, _>>()?;
    let mut it = x.iter();
    Ok((0..rank).map(|i| if axes.contains(&i) { 1 } else { it.next().copied().unwrap_or(1) }).collect())
}

/// For each element of `out` (row-major), the flat index of the element of `x` it broadcasts from.
fn broadcast_index(x: &[usize], out: &[usize]) -> Vec<usize> {
    let pad = out.len() - x.len();
    let xs = strides_of(x);
    let n: usize = out.iter().product();
    let os = strides_of(out);
    (0..n)
        .map(|flat| {
            let mut idx = 0;
            for (i, d) in x.iter().enumerate() {
                let coord = (flat / os[i + pad]) % out[i + pad];
                if *d != 1 {
                    idx += coord * xs[i];
                }
            }
            idx
        })
        .collect()
}
