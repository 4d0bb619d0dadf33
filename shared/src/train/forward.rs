//! Emits the forward pass of a resolved [`Graph`] as standard ONNX nodes (opset 13), for training (dropout as a
//! multiplication by a mask fed as an extra graph input) or for inference (dropout as identity). Unless the emitter
//! asks for standard operators, 1-D and 2-D convolutions are fedge's own `FedgeConv` in both modes, 1-D and 2-D max
//! pools whose argmax indices no gradient needs (all of them in inference) its `FedgeMaxPool`, and in training, or
//! wherever the weights are fed as inputs rather than constants (an evaluation plan reading the trainer's weights),
//! dense layers (Gemm, a MatMul by a matrix) its `FedgeGemm`. An inference plan with its weights baked in keeps
//! tract's Gemm/MatMul: tract packs constant weights once when it optimises the plan, where `FedgeGemm` would pack
//! them at every call (9× slower at batch 1 on the example MLP, no faster at 32; BENCHMARKS.md, "Inference on
//! fedge's own operators"); weights fed as inputs tract would pack at every call too, into a whole packed copy
//! (6.4 MB for the example CNN's first dense layer) where `FedgeGemm` packs a block at a time.
//! In inference, a Relu that is the only reader of a `FedgeConv`'s output is not written: the convolution applies it
//! (attribute `relu`) as it writes its output and takes the Relu's output name.
//!
//! It writes nodes only; it never differentiates and never runs anything.

use std::collections::HashMap;

use super::cell_emit;
use super::conv_ops;
use super::custom_op;
use super::emit::{Emitter, Kernels, Precision};
use super::error::TrainError;
use super::grad::indices_name;
use super::graph::{DNode, Graph, Op};
use super::pool_ops;
use super::proto::{attr_f, attr_i, attr_ints, node};

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
                e.named_const(i, shape, data);
            }
        }
    }
    let mut masks = vec![];
    let relu_after =
        if mode == Mode::Infer && e.kernels == Kernels::Fedge { relu_after_conv(g) } else { HashMap::new() };
    for n in &g.nodes {
        if n.op == Op::Relu && relu_after.contains_key(&n.inputs[0]) {
            // Computed by the convolution it follows.
            continue;
        }
        let with_indices = mode == Mode::Train && g.requires_grad.contains(&n.inputs[0]);
        emit_node(e, g, n, mode, with_indices, relu_after.get(&n.output), &mut masks)?;
    }
    Ok(masks)
}

/// The 1-D and 2-D convolutions whose output only a Relu reads (and which is not the graph's output): conv
/// output → the Relu's output. An inference plan's `FedgeConv` writes them with the Relu applied, in the pass that
/// adds the bias, instead of a second pass over the activations.
fn relu_after_conv(g: &Graph) -> HashMap<String, String> {
    let mut readers: HashMap<&str, Vec<&DNode>> = HashMap::new();
    for n in &g.nodes {
        for i in &n.inputs {
            readers.entry(i.as_str()).or_default().push(n);
        }
    }
    g.nodes
        .iter()
        .filter(|n| matches!(n.op, Op::Conv(_)) && (3..=4).contains(&n.in_shapes.first().map_or(0, Vec::len)))
        .filter(|n| n.output != g.output)
        .filter_map(|n| match readers.get(n.output.as_str()).map(Vec::as_slice) {
            Some([r]) if r.op == Op::Relu && r.inputs.len() == 1 => Some((n.output.clone(), r.output.clone())),
            _ => None,
        })
        .collect()
}

/// The names of a LayerNormalization's inverse deviation and normalised input, for the node writing `output`.
pub fn layer_norm_names(output: &str) -> (String, String) {
    (format!("__fedge/layer_norm_inv/{output}"), format!("__fedge/layer_norm_xhat/{output}"))
}

fn ints(v: &[usize]) -> Vec<i64> {
    v.iter().map(|x| *x as i64).collect()
}

fn pads(p: &[(usize, usize)]) -> Vec<i64> {
    p.iter().map(|x| x.0 as i64).chain(p.iter().map(|x| x.1 as i64)).collect()
}

/// `with_indices`: a MaxPool also outputs its argmax indices for the backward pass. `relu_into`: a convolution
/// applies the Relu that reads it and writes that Relu's output.
fn emit_node(
    e: &mut Emitter,
    g: &Graph,
    n: &DNode,
    mode: Mode,
    with_indices: bool,
    relu_into: Option<&String>,
    masks: &mut Vec<MaskInput>,
) -> Result<(), TrainError> {
    let ins: Vec<&str> = n.inputs.iter().map(|s| s.as_str()).collect();
    let out = [n.output.as_str()];
    let wide = e.precision == Precision::F64;
    // Constant weights (an inference plan's) tract packs once; weights fed as inputs every product packs anyway.
    let weights_fed = n.inputs.get(1).is_some_and(|w| !g.consts.contains_key(w));
    let fedge_dense = e.kernels == Kernels::Fedge && (mode == Mode::Train || weights_fed);
    let fedge_conv = e.kernels == Kernels::Fedge && (3..=4).contains(&n.in_shapes.first().map_or(0, Vec::len));
    let (sa, sb) = (n.in_shapes.first().map_or(&[][..], |s| s), n.in_shapes.get(1).map_or(&[][..], |s| s));
    match &n.op {
        // In the training step, dense layers are fedge's own `FedgeGemm` (any precision, C included).
        Op::Gemm { alpha, beta, trans_a, trans_b } if fedge_dense => {
            e.fedge_gemm(&ins, sa, sb, (*trans_a, *trans_b), *alpha, *beta, Some(&n.output));
        }
        Op::MatMul if fedge_dense && sa.len() == 2 && sb.len() == 2 => {
            e.fedge_gemm(&ins, sa, sb, (false, false), 1.0, 1.0, Some(&n.output));
        }
        // A stack of rows times a matrix (a dense layer over a sequence, a recurrent cell's input projection): one
        // `FedgeGemm` over the rows flattened, not tract's batched product of small ones.
        Op::MatMul if fedge_dense && sa.len() > 2 && sb.len() == 2 => {
            let (rows, k) = (sa[..sa.len() - 1].iter().product::<usize>(), sa[sa.len() - 1]);
            let flat = e.reshape(ins[0], &[rows, k]);
            let y = e.fedge_gemm(&[&flat, ins[1]], &[rows, k], sb, (false, false), 1.0, 1.0, None);
            let s = e.const_i(&[n.out_shape.len()], &ints(&n.out_shape));
            e.op_into("Reshape", &[&y, &s], &out, vec![]);
        }
        // tract 0.22 runs Sigmoid and LeakyRelu in f32 only, and Gemm's alpha and beta·C in f32 only: in f64 graphs
        // (for verification) they are written out with elementary ops.
        Op::Sigmoid if wide => {
            let one = e.scalar(1.0);
            let neg = e.op("Neg", &ins, vec![]);
            let ex = e.op("Exp", &[&neg], vec![]);
            let den = e.op("Add", &[&one, &ex], vec![]);
            e.op_into("Div", &[&one, &den], &out, vec![]);
        }
        Op::LeakyRelu { alpha } if wide => {
            let zero = e.scalar(0.0);
            let pos = e.op("Greater", &[ins[0], &zero], vec![]);
            let neg = e.scale(ins[0], *alpha);
            e.op_into("Where", &[&pos, ins[0], &neg], &out, vec![]);
        }
        // Its alpha too: the scale is an f32 constant, which an f64 product cannot be multiplied by when tract does
        // not fold it into the product (a Gemm with one row or column).
        Op::Gemm { alpha, beta, trans_a, trans_b } if wide => {
            let ab =
                e.op("Gemm", &ins[..2], vec![attr_i("transA", *trans_a as i64), attr_i("transB", *trans_b as i64)]);
            let ab = e.scale(&ab, *alpha);
            match ins.get(2) {
                Some(c) => {
                    let c = e.scale(c, *beta);
                    e.op_into("Add", &[&ab, &c], &out, vec![]);
                }
                None => e.op_into("Identity", &[&ab], &out, vec![]),
            }
        }
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
        Op::LstmCell => cell_emit::lstm_forward(e, n)?,
        Op::GruCell => cell_emit::gru_forward(e, n)?,
        Op::Identity => e.op_into("Identity", &ins, &out, vec![]),
        Op::Reshape => {
            let dims = ints(&n.out_shape);
            let s = e.const_i(&[dims.len()], &dims);
            e.op_into("Reshape", &[ins[0], &s], &out, vec![]);
        }
        Op::Transpose { perm } => e.op_into("Transpose", &ins, &out, vec![attr_ints("perm", &ints(perm))]),
        Op::Concat { axis } => e.op_into("Concat", &ins, &out, vec![attr_i("axis", *axis as i64)]),
        Op::Softmax { axis } => {
            let lsm = e.log_softmax(ins[0], &n.in_shapes[0], *axis);
            e.op_into("Exp", &[&lsm], &out, vec![]);
        }
        Op::LogSoftmax { axis } => {
            let lsm = e.log_softmax(ins[0], &n.in_shapes[0], *axis);
            e.op_into("Identity", &[&lsm], &out, vec![]);
        }
        // fedge's own convolution (the geometry as attributes) for 1-D and 2-D, in training and in inference: it
        // unfolds a tile of one image's output rows at a time where tract's Conv unfolds the whole batch.
        Op::Conv(c) if fedge_conv => {
            let mut attrs = vec![
                attr_ints("x_shape", &ints(&n.in_shapes[0])),
                attr_ints("w_shape", &ints(&n.in_shapes[1])),
                attr_ints("strides", &ints(&c.strides)),
                attr_ints("dilations", &ints(&c.dilations)),
                attr_ints("pads", &pads(&c.pads)),
                attr_i("group", c.group as i64),
            ];
            if relu_into.is_some() {
                attrs.push(attr_i("relu", 1));
            }
            let out = [relu_into.map_or(n.output.as_str(), String::as_str)];
            let mut node = node(conv_ops::CONV, &e.fresh(conv_ops::CONV), &ins, &out, attrs);
            node.domain = custom_op::DOMAIN.into();
            e.nodes.push(node);
        }
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
        // Without indices to keep, fedge's own max pool for 1-D and 2-D (tract's walks a generic patch scanner).
        Op::MaxPool(p) if !with_indices && e.kernels == Kernels::Fedge && (3..=4).contains(&n.in_shapes[0].len()) => {
            let attrs = vec![
                attr_ints("x_shape", &ints(&n.in_shapes[0])),
                attr_ints("kernel_shape", &ints(&p.kernel)),
                attr_ints("strides", &ints(&p.strides)),
                attr_ints("pads", &pads(&p.pads)),
            ];
            e.fedge_op_into(pool_ops::MAX_POOL, &ins, &out, attrs);
        }
        Op::MaxPool(p) => e.op_into(
            "MaxPool",
            &ins,
            &if with_indices { vec![n.output.clone(), indices_name(&n.output)] } else { vec![n.output.clone()] }
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>(),
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
        Op::Pow { exponent } => {
            let p = e.scalar(*exponent);
            e.op_into("Pow", &[ins[0], &p], &out, vec![]);
        }
        Op::Sqrt => e.op_into("Sqrt", &ins, &out, vec![]),
        Op::Exp => e.op_into("Exp", &ins, &out, vec![]),
        Op::Neg => e.op_into("Neg", &ins, &out, vec![]),
        // tract 0.22 computes Erf in f32 only, with a fast approximation: an f64 graph (for verification) uses
        // Abramowitz and Stegun 7.1.26 instead (absolute error below 1.5e-7).
        Op::Erf if wide => {
            // |x| as sign(x) * x: tract's Abs has no f64 kernel.
            let sign = e.op("Sign", &ins, vec![]);
            let ax = e.op("Mul", &[&sign, ins[0]], vec![]);
            let px = e.scale(&ax, 0.327_591_1);
            let one = e.scalar(1.0);
            let den = e.op("Add", &[&one, &px], vec![]);
            let t = e.op("Div", &[&one, &den], vec![]);
            let mut poly = e.scalar(1.061_405_4);
            for c in [-1.453_152_1, 1.421_413_8, -0.284_496_74, 0.254_829_6] {
                let m = e.op("Mul", &[&poly, &t], vec![]);
                let k = e.scalar(c);
                poly = e.op("Add", &[&m, &k], vec![]);
            }
            let poly = e.op("Mul", &[&poly, &t], vec![]);
            let sq = e.op("Mul", &[ins[0], ins[0]], vec![]);
            let neg = e.op("Neg", &[&sq], vec![]);
            let ex = e.op("Exp", &[&neg], vec![]);
            let tail = e.op("Mul", &[&poly, &ex], vec![]);
            let mag = e.op("Sub", &[&one, &tail], vec![]);
            e.op_into("Mul", &[&sign, &mag], &out, vec![]);
        }
        Op::Erf => e.op_into("Erf", &ins, &out, vec![]),
        // Clip, HardSigmoid and HardSwish as Max and Min of constants: the same in every precision.
        Op::Clip { min, max } => {
            let (lo, hi) = (e.scalar(*min), e.scalar(*max));
            let m = e.op("Max", &[ins[0], &lo], vec![]);
            e.op_into("Min", &[&m, &hi], &out, vec![]);
        }
        Op::HardSigmoid { alpha, beta } => {
            let h = e.hard_sigmoid(ins[0], *alpha, *beta);
            e.op_into("Identity", &[&h], &out, vec![]);
        }
        Op::HardSwish => {
            let h = e.hard_sigmoid(ins[0], 1.0 / 6.0, 0.5);
            e.op_into("Mul", &[ins[0], &h], &out, vec![]);
        }
        Op::Reduce { mean, axes, keepdims } => {
            let sum = e.reduce_sum(ins[0], axes, *keepdims);
            let count: usize = axes.iter().map(|a| n.in_shapes[0][*a]).product();
            let k = e.scalar(if *mean { 1.0 / count.max(1) as f32 } else { 1.0 });
            e.op_into("Mul", &[&sum, &k], &out, vec![]);
        }
        Op::Gather { axis } => {
            // Dynamic indices arrive as floats (every tensor the data feeds is float): clamped integer ids.
            let idx = match g.consts.get(ins[1]) {
                Some((_, super::proto::Data::I(_))) => ins[1].to_string(),
                _ => e.token_ids(ins[1], n.in_shapes[0][*axis]),
            };
            e.op_into("Gather", &[ins[0], &idx], &out, vec![attr_i("axis", *axis as i64)]);
        }
        Op::LayerNorm { axis, epsilon } => {
            // y = (x - mean) / sqrt(var + eps) * scale + bias over the axes from `axis` on; the normalised input and
            // the inverse deviation keep names the backward rule reads.
            let shape = &n.in_shapes[0];
            let axes: Vec<usize> = (*axis..shape.len()).collect();
            let count: usize = shape[*axis..].iter().product();
            let inv_n = e.scalar(1.0 / count.max(1) as f32);
            let sum = e.reduce_sum(ins[0], &axes, true);
            let mean = e.op("Mul", &[&sum, &inv_n], vec![]);
            let centred = e.op("Sub", &[ins[0], &mean], vec![]);
            let sq = e.op("Mul", &[&centred, &centred], vec![]);
            let sq_sum = e.reduce_sum(&sq, &axes, true);
            let var = e.op("Mul", &[&sq_sum, &inv_n], vec![]);
            let eps = e.scalar(*epsilon);
            let ve = e.op("Add", &[&var, &eps], vec![]);
            let sd = e.op("Sqrt", &[&ve], vec![]);
            let one = e.scalar(1.0);
            let (inv, xhat) = layer_norm_names(&n.output);
            e.op_into("Div", &[&one, &sd], &[&inv], vec![]);
            e.op_into("Mul", &[&centred, &inv], &[&xhat], vec![]);
            match ins.get(2) {
                Some(bias) => {
                    let scaled = e.op("Mul", &[&xhat, ins[1]], vec![]);
                    e.op_into("Add", &[&scaled, bias], &out, vec![]);
                }
                None => e.op_into("Mul", &[&xhat, ins[1]], &out, vec![]),
            }
        }
        Op::Expand { shape } => {
            let s = e.const_i(&[shape.len()], &ints(shape));
            e.op_into("Expand", &[ins[0], &s], &out, vec![]);
        }
        Op::Slice { starts, ends } => {
            let (b, en) = (e.const_i(&[starts.len()], &ints(starts)), e.const_i(&[ends.len()], &ints(ends)));
            e.op_into("Slice", &[ins[0], &b, &en], &out, vec![]);
        }
        Op::Pad { pads: p, value } => {
            let (p, v) = (e.const_i(&[2 * p.len()], &pads(p)), e.scalar(*value));
            e.op_into("Pad", &[ins[0], &p, &v], &out, vec![]);
        }
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
            if ins[1..].iter().all(|i| g.consts.contains_key(*i)) {
                e.op_into("BatchNormalization", &ins, &out, vec![attr_f("epsilon", *epsilon)]);
            } else {
                // tract's BatchNormalization needs constant parameters: trainable scale or bias are written out as
                // y = x * a + (bias - mean * a), a = scale / sqrt(var + eps).
                let konst = |i: usize| -> Result<Vec<f32>, TrainError> {
                    g.consts.get(ins[i]).map(|(_, d)| d.as_f32()).ok_or_else(|| {
                        TrainError::invalid(format!("node {}: running statistics must be constants", n.name))
                    })
                };
                let (mean, var) = (konst(3)?, konst(4)?);
                let c = mean.len();
                let inv_std: Vec<f32> = var.iter().map(|v| 1.0 / (v + epsilon).sqrt()).collect();
                let mut bshape = vec![1; n.out_shape.len()];
                bshape[1] = c;
                let inv = e.const_f(&[c], &inv_std);
                let a = e.op("Mul", &[ins[1], &inv], vec![]);
                let m = e.const_f(&[c], &mean);
                let ma = e.op("Mul", &[&m, &a], vec![]);
                let shift = e.op("Sub", &[ins[2], &ma], vec![]);
                let a = e.reshape(&a, &bshape);
                let shift = e.reshape(&shift, &bshape);
                let xa = e.op("Mul", &[ins[0], &a], vec![]);
                e.op_into("Add", &[&xa, &shift], &out, vec![]);
            }
        }
    }
    Ok(())
}
