//! Test support for the training engine: builds small ONNX models with tract-onnx's protobuf types, and checks
//! gradients against central finite differences along random directions.

#![allow(dead_code)]

use fedge_shared::train::{Labels, Loss, Precision, TrainStep, TrainableModel};
use prost::Message;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tract_onnx::pb::{
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto, TensorShapeProto, TypeProto,
    ValueInfoProto, attribute_proto::AttributeType, tensor_proto::DataType, tensor_shape_proto, type_proto,
};

pub fn attr_i(name: &str, i: i64) -> AttributeProto {
    AttributeProto { name: name.into(), r#type: AttributeType::Int as i32, i, ..Default::default() }
}

pub fn attr_f(name: &str, f: f32) -> AttributeProto {
    AttributeProto { name: name.into(), r#type: AttributeType::Float as i32, f, ..Default::default() }
}

pub fn attr_ints(name: &str, ints: &[i64]) -> AttributeProto {
    AttributeProto { name: name.into(), r#type: AttributeType::Ints as i32, ints: ints.to_vec(), ..Default::default() }
}

pub fn attr_tensor(name: &str, t: TensorProto) -> AttributeProto {
    AttributeProto { name: name.into(), r#type: AttributeType::Tensor as i32, t: Some(t), ..Default::default() }
}

pub fn f32_tensor(name: &str, shape: &[usize], data: &[f32]) -> TensorProto {
    TensorProto {
        name: name.into(),
        dims: shape.iter().map(|d| *d as i64).collect(),
        data_type: DataType::Float as i32,
        float_data: data.to_vec(),
        ..Default::default()
    }
}

pub fn i64_tensor(name: &str, shape: &[usize], data: &[i64]) -> TensorProto {
    TensorProto {
        name: name.into(),
        dims: shape.iter().map(|d| *d as i64).collect(),
        data_type: DataType::Int64 as i32,
        int64_data: data.to_vec(),
        ..Default::default()
    }
}

fn value_info(name: &str, dims: Vec<tensor_shape_proto::dimension::Value>) -> ValueInfoProto {
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: DataType::Float as i32,
                shape: Some(TensorShapeProto {
                    dim: dims
                        .into_iter()
                        .map(|v| tensor_shape_proto::Dimension { value: Some(v), ..Default::default() })
                        .collect(),
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Builds a forward model node by node. The data input is `x` with a symbolic batch dimension.
pub struct ModelBuilder {
    pub nodes: Vec<NodeProto>,
    pub inits: Vec<TensorProto>,
    pub input_shape: Vec<usize>,
    pub opset: i64,
    pub rng: ChaCha8Rng,
    count: usize,
}

impl ModelBuilder {
    pub fn new(input_shape: &[usize], seed: u64) -> Self {
        ModelBuilder {
            nodes: vec![],
            inits: vec![],
            input_shape: input_shape.to_vec(),
            opset: 13,
            rng: ChaCha8Rng::seed_from_u64(seed),
            count: 0,
        }
    }

    /// A float initializer with the given values.
    pub fn init(&mut self, name: &str, shape: &[usize], data: &[f32]) -> String {
        self.inits.push(f32_tensor(name, shape, data));
        name.to_string()
    }

    /// A float initializer with uniform values in [-scale, scale].
    pub fn init_random(&mut self, name: &str, shape: &[usize], scale: f32) -> String {
        let n: usize = shape.iter().product();
        let data: Vec<f32> = (0..n).map(|_| self.rng.gen_range(-scale..scale)).collect();
        self.init(name, shape, &data)
    }

    pub fn init_i64(&mut self, name: &str, shape: &[usize], data: &[i64]) -> String {
        self.inits.push(i64_tensor(name, shape, data));
        name.to_string()
    }

    /// A float constant written as a Constant node (not an initializer, so not a trained weight).
    pub fn constant(&mut self, name: &str, shape: &[usize], data: &[f32]) -> String {
        self.nodes.push(NodeProto {
            op_type: "Constant".into(),
            name: format!("{name}_node"),
            output: vec![name.to_string()],
            attribute: vec![attr_tensor("value", f32_tensor(name, shape, data))],
            ..Default::default()
        });
        name.to_string()
    }

    /// A node with `outputs` outputs (an empty name where the output is not wanted); returns their names.
    pub fn node_outputs(
        &mut self,
        op: &str,
        inputs: &[&str],
        outputs: &[bool],
        attrs: Vec<AttributeProto>,
    ) -> Vec<String> {
        self.count += 1;
        let outs: Vec<String> = outputs
            .iter()
            .enumerate()
            .map(|(i, want)| if *want { format!("{}_{}_{i}", op.to_lowercase(), self.count) } else { String::new() })
            .collect();
        self.nodes.push(NodeProto {
            op_type: op.into(),
            name: format!("{op}_node_{}", self.count),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: outs.clone(),
            attribute: attrs,
            ..Default::default()
        });
        outs
    }

    /// A node with one output; returns its output name.
    pub fn node(&mut self, op: &str, inputs: &[&str], attrs: Vec<AttributeProto>) -> String {
        self.count += 1;
        let out = format!("{}_{}", op.to_lowercase(), self.count);
        self.nodes.push(NodeProto {
            op_type: op.into(),
            name: format!("{op}_node_{}", self.count),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![out.clone()],
            attribute: attrs,
            ..Default::default()
        });
        out
    }

    /// Gemm with a fresh random weight [in, out] (transB=0) and bias.
    pub fn dense(&mut self, x: &str, fan_in: usize, fan_out: usize) -> String {
        let k = self.count;
        let scale = (6.0 / (fan_in + fan_out) as f32).sqrt();
        let w = self.init_random(&format!("w{k}"), &[fan_in, fan_out], scale);
        let b = self.init_random(&format!("b{k}"), &[fan_out], 0.1);
        self.node("Gemm", &[x, &w, &b], vec![])
    }

    pub fn build(&self, output: &str) -> Vec<u8> {
        let mut dims = vec![tensor_shape_proto::dimension::Value::DimParam("batch".into())];
        dims.extend(self.input_shape.iter().map(|d| tensor_shape_proto::dimension::Value::DimValue(*d as i64)));
        let graph = GraphProto {
            name: "test".into(),
            node: self.nodes.clone(),
            initializer: self.inits.clone(),
            input: vec![value_info("x", dims)],
            output: vec![value_info(output, vec![])],
            ..Default::default()
        };
        ModelProto {
            ir_version: 8,
            opset_import: vec![OperatorSetIdProto { domain: String::new(), version: self.opset }],
            graph: Some(graph),
            ..Default::default()
        }
        .encode_to_vec()
    }
}

/// The MLP of McMahan et al.: 784-200-200-10 with ReLU.
pub fn mlp(seed: u64) -> Vec<u8> {
    let mut b = ModelBuilder::new(&[1, 28, 28], seed);
    let f = b.node("Flatten", &["x"], vec![attr_i("axis", 1)]);
    let h = b.dense(&f, 784, 200);
    let h = b.node("Relu", &[&h], vec![]);
    let h = b.dense(&h, 200, 200);
    let h = b.node("Relu", &[&h], vec![]);
    let y = b.dense(&h, 200, 10);
    b.build(&y)
}

/// The CNN of McMahan et al.: 5x5 conv 32 pad 2, relu, 2x2 maxpool, 5x5 conv 64 pad 2, relu, 2x2 maxpool,
/// flatten, FC 512, relu, FC 10.
pub fn cnn(seed: u64) -> Vec<u8> {
    let mut b = ModelBuilder::new(&[1, 28, 28], seed);
    let conv = |b: &mut ModelBuilder, x: &str, cin: usize, cout: usize, name: &str| {
        let scale = (6.0 / (cin * 25 + cout * 25) as f32).sqrt();
        let w = b.init_random(&format!("{name}_w"), &[cout, cin, 5, 5], scale);
        let bias = b.init_random(&format!("{name}_b"), &[cout], 0.1);
        let c =
            b.node("Conv", &[x, &w, &bias], vec![attr_ints("kernel_shape", &[5, 5]), attr_ints("pads", &[2, 2, 2, 2])]);
        let r = b.node("Relu", &[&c], vec![]);
        b.node("MaxPool", &[&r], vec![attr_ints("kernel_shape", &[2, 2]), attr_ints("strides", &[2, 2])])
    };
    let h = conv(&mut b, "x", 1, 32, "conv1");
    let h = conv(&mut b, &h, 32, 64, "conv2");
    let f = b.node("Flatten", &[&h], vec![attr_i("axis", 1)]);
    let h = b.dense(&f, 7 * 7 * 64, 512);
    let h = b.node("Relu", &[&h], vec![]);
    let y = b.dense(&h, 512, 10);
    b.build(&y)
}

pub fn random_vec(rng: &mut ChaCha8Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| rng.gen_range(-scale..scale)).collect()
}

/// Labels owned for a batch.
pub enum OwnedLabels {
    Classes(Vec<u32>),
    Targets(Vec<f32>),
}

impl OwnedLabels {
    pub fn as_labels(&self) -> Labels<'_> {
        match self {
            OwnedLabels::Classes(c) => Labels::Classes(c),
            OwnedLabels::Targets(t) => Labels::Targets(t),
        }
    }

    pub fn random(rng: &mut ChaCha8Rng, loss: Loss, n: usize, c: usize) -> Self {
        match loss {
            // For the sequence loss, `n` counts positions and `c` the classes at one position.
            Loss::SoftmaxCrossEntropy | Loss::SequenceCrossEntropy => {
                OwnedLabels::Classes((0..n).map(|_| rng.gen_range(0..c as u32)).collect())
            }
            Loss::MeanSquaredError => OwnedLabels::Targets(random_vec(rng, n * c, 1.0)),
        }
    }
}

/// Worst relative error between the engine's gradient `g` and central finite differences of its loss along
/// `directions` directions `v`: first `g` itself, then random signs. The finite difference moves the weights by
/// `step_len` (Euclidean length), halved while a kink makes successive lengths disagree. The error of one direction is `|fd - g·v| / max(|fd|, |g·v|, 0.05 |g| |v|)`: the
/// floor only matters when `v` is nearly orthogonal to the gradient.
pub fn gradient_error(model_bytes: &[u8], loss: Loss, n: usize, seed: u64, directions: usize, step_len: f64) -> f64 {
    gradient_error_in(Precision::F64, model_bytes, loss, n, seed, directions, step_len)
}

/// [`gradient_error`] with the graph computed in `precision`.
pub fn gradient_error_in(
    precision: Precision,
    model_bytes: &[u8],
    loss: Loss,
    n: usize,
    seed: u64,
    directions: usize,
    step_len: f64,
) -> f64 {
    let model = TrainableModel::from_onnx_bytes(model_bytes).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let x = random_vec(&mut rng, n * model.input_len(), 1.0);
    let mut out = vec![n];
    out.extend(model.output_shape());
    let (rows, c) = loss.layout(&out);
    let labels = OwnedLabels::random(&mut rng, loss, rows, c);
    let w = model.initial_weights();
    let mut step = TrainStep::with_precision(&model, loss, n, precision).unwrap();
    let mut g = vec![0.0; w.len()];
    step.run(&w, &x, labels.as_labels(), 7, &mut g).unwrap();
    let mut scratch = vec![0.0; w.len()];
    let mut loss_at = |w: &[f32]| step.run_precise(w, &x, labels.as_labels(), 7, &mut scratch).unwrap();
    let gnorm = g.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt();
    let mut worst: f64 = 0.0;
    for d in 0..directions {
        // The first direction follows the gradient itself; the others are random signs.
        let v: Vec<f32> = if d == 0 && gnorm > 0.0 {
            g.iter().map(|x| (*x as f64 / gnorm * (w.len() as f64).sqrt()) as f32).collect()
        } else {
            (0..w.len()).map(|_| if rng.r#gen::<bool>() { 1.0 } else { -1.0 }).collect()
        };
        let vnorm = (w.len() as f64).sqrt();
        // Weights are f32: the directional derivative uses the perturbation actually applied after rounding.
        let mut fd_at = |len: f64| {
            let eps = len / vnorm;
            let plus: Vec<f32> = w.iter().zip(&v).map(|(a, b)| a + (eps as f32) * b).collect();
            let minus: Vec<f32> = w.iter().zip(&v).map(|(a, b)| a - (eps as f32) * b).collect();
            let moved: f64 =
                g.iter().zip(plus.iter().zip(&minus)).map(|(gi, (p, m))| *gi as f64 * (*p as f64 - *m as f64)).sum();
            ((loss_at(&plus) - loss_at(&minus)) / (2.0 * eps), moved / (2.0 * eps))
        };
        // A kink (ReLU, max) inside the interval makes the difference depend on its length: halve it until two
        // successive lengths agree, then use the shorter one.
        let mut len = step_len;
        let (mut fd, mut gv) = fd_at(len);
        for _ in 0..6 {
            let (half, half_gv) = fd_at(len / 2.0);
            let agree = (half - fd).abs() <= 1e-4 * half.abs().max(fd.abs()).max(1e-9);
            (fd, gv) = (half, half_gv);
            len /= 2.0;
            if agree {
                break;
            }
        }
        let denom = fd.abs().max(gv.abs()).max(gnorm * vnorm * 0.05).max(1e-9);
        worst = worst.max((fd - gv).abs() / denom);
    }
    worst
}

/// Worst relative difference (against `1 + |standard|`) between the f64 losses and gradients of the step fedge
/// trains with and of the same step built with ONNX-standard operators only ([`TrainStep::into_standard_ops`]),
/// on the same random batch of `n`.
pub fn standard_ops_difference(model_bytes: &[u8], loss: Loss, n: usize, seed: u64) -> f64 {
    let model = TrainableModel::from_onnx_bytes(model_bytes).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let x = random_vec(&mut rng, n * model.input_len(), 1.0);
    let mut out = vec![n];
    out.extend(model.output_shape());
    let (rows, c) = loss.layout(&out);
    let labels = OwnedLabels::random(&mut rng, loss, rows, c);
    let w = model.initial_weights();
    let mut fedge = TrainStep::with_precision(&model, loss, n, Precision::F64).unwrap();
    let mut standard = TrainStep::with_precision(&model, loss, n, Precision::F64).unwrap().into_standard_ops().unwrap();
    let (mut a, mut b) = (vec![0.0; w.len()], vec![0.0; w.len()]);
    let la = fedge.run_precise(&w, &x, labels.as_labels(), 7, &mut a).unwrap();
    let lb = standard.run_precise(&w, &x, labels.as_labels(), 7, &mut b).unwrap();
    let loss = (la - lb).abs() / (1.0 + lb.abs());
    a.iter().zip(&b).map(|(p, q)| ((p - q).abs() / (1.0 + q.abs())) as f64).fold(loss, f64::max)
}

/// Worst relative difference (against `1 + |f64|`) between the loss and gradients of the f32 step and of the f64
/// step on the same random batch of `n`, in fedge's form of the step or the standard one.
pub fn f32_difference(bytes: &[u8], loss: Loss, n: usize, seed: u64, standard: bool) -> f64 {
    let model = TrainableModel::from_onnx_bytes(bytes).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let x = random_vec(&mut rng, n * model.input_len(), 1.0);
    let mut out = vec![n];
    out.extend(model.output_shape());
    let (rows, c) = loss.layout(&out);
    let labels = OwnedLabels::random(&mut rng, loss, rows, c);
    let w = model.initial_weights();
    let run = |precision: Precision| {
        let mut step = TrainStep::with_precision(&model, loss, n, precision).unwrap();
        if standard {
            step = step.into_standard_ops().unwrap();
        }
        let mut g = vec![0.0; w.len()];
        let loss = step.run_precise(&w, &x, labels.as_labels(), 7, &mut g).unwrap();
        (loss, g)
    };
    let ((l32, g32), (l64, g64)) = (run(Precision::F32), run(Precision::F64));
    let loss = (l32 - l64).abs() / (1.0 + l64.abs());
    g32.iter().zip(&g64).map(|(p, q)| ((p - q).abs() / (1.0 + q.abs())) as f64).fold(loss, f64::max)
}

/// The relative error every finite-difference check accepts.
pub const TOL: f64 = 1e-3;

/// Wraps `op` between a trainable elementwise scale of the input (so the op's input gradient is checked too) and
/// a dense layer to 3 classes; returns the model's bytes.
pub fn wrap(input: &[usize], seed: u64, op: impl FnOnce(&mut ModelBuilder, &str) -> String) -> Vec<u8> {
    let mut b = ModelBuilder::new(input, seed);
    let n: usize = input.iter().product();
    let scale: Vec<f32> = (0..n).map(|i| 0.8 + 0.4 * ((i * 7919) % 13) as f32 / 13.0).collect();
    let pre = b.init("pre", input, &scale);
    let x = b.node("Mul", &["x", &pre], vec![]);
    let y = op(&mut b, &x);
    let f = b.node("Flatten", &[&y], vec![attr_i("axis", 1)]);
    // The feature count is found by parsing the model up to the flatten.
    let probe = fedge_shared::train::TrainableModel::from_onnx_bytes(&b.build(&f)).unwrap();
    let feats = probe.output_len();
    let out = b.dense(&f, feats, 3);
    b.build(&out)
}

pub fn check(
    bytes: &[u8],
    loss: Loss,
    n: usize,
    seed: u64,
    step: f64,
) -> Result<(), proptest::test_runner::TestCaseError> {
    let err = gradient_error(bytes, loss, n, seed, 3, step);
    proptest::prop_assert!(err < TOL, "relative error {}", err);
    Ok(())
}
