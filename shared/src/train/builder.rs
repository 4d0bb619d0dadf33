//! Writes the example models as ONNX: multi-layer perceptrons and the CNN of McMahan et al. (2017).
//!
//! The graphs use only standard operators (Gemm, Relu, Conv, MaxPool, Flatten) at opset 13, with a symbolic
//! batch dimension `N` on the input `"input"` and the output `"logits"`. Weights are He/Kaiming-uniform
//! (`U(-sqrt(6 / fan_in), +sqrt(6 / fan_in))`), biases zero, drawn from a ChaCha8 generator seeded by the caller,
//! so the same seed always gives byte-identical files. Trainable initializers are named `<layer>.weight` and
//! `<layer>.bias` in graph order. This module must never read files, use global randomness or depend on the
//! training engine.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tract_onnx::pb;
use tract_onnx::pb::attribute_proto::AttributeType;
use tract_onnx::pb::tensor_proto::DataType;
use tract_onnx::pb::tensor_shape_proto::{Dimension, dimension};

/// The ONNX opset the builder writes (17 for the transformer, whose LayerNormalization needs it).
pub const OPSET: i64 = 13;
/// The name of every built model's input.
pub const INPUT: &str = "input";
/// The name of every built model's output.
pub const OUTPUT: &str = "logits";

/// A fully connected ReLU network `layers[0] -> layers[1] -> ... -> layers[last]` (no ReLU after the last layer),
/// input `[N, layers[0]]`, output `[N, layers[last]]`. Each layer is a `Gemm` with `transB = 1` (weight
/// `[out, in]`, as PyTorch exports it).
///
/// # Panics
/// If `layers` has fewer than two entries or a zero width: the shape of a model is the programmer's choice.
pub fn mlp(layers: &[usize], seed: u64) -> Vec<u8> {
    assert!(layers.len() >= 2 && !layers.contains(&0), "an MLP needs at least two non-zero widths, got {layers:?}");
    let mut g = Graph::new(seed);
    let mut x = INPUT.to_string();
    let n = layers.len() - 1;
    for (i, w) in layers.windows(2).enumerate() {
        let name = format!("fc{}", i + 1);
        x = g.gemm(&name, &x, w[0], w[1]);
        if i + 1 < n {
            x = g.relu(&x);
        }
    }
    g.finish(&x, &[layers[0]], layers[n], "fedge mlp")
}

/// A fully connected ReLU network on inputs of any shape: input `[N, ..input_shape]` (flattened first when it has
/// more than one dimension, as an image model's `[N, C, H, W]`), hidden layers of the given widths, `outputs`
/// outputs. For tests and examples on data sets of any shape.
///
/// # Panics
/// If `input_shape` is empty or holds a zero, or a width is zero: the shape of a model is the programmer's choice.
pub fn mlp_for(input_shape: &[usize], hidden: &[usize], outputs: usize, seed: u64) -> Vec<u8> {
    let d: usize = input_shape.iter().product();
    assert!(!input_shape.is_empty() && d > 0, "an input needs a shape, got {input_shape:?}");
    assert!(outputs > 0 && !hidden.contains(&0), "widths must be positive");
    let mut g = Graph::new(seed);
    let mut x = INPUT.to_string();
    if input_shape.len() > 1 {
        x = g.flatten(&x);
    }
    let mut widths = vec![d];
    widths.extend_from_slice(hidden);
    widths.push(outputs);
    let n = widths.len() - 1;
    for (i, w) in widths.windows(2).enumerate() {
        x = g.gemm(&format!("fc{}", i + 1), &x, w[0], w[1]);
        if i + 1 < n {
            x = g.relu(&x);
        }
    }
    g.finish(&x, input_shape, outputs, "fedge mlp")
}

/// A character-level LSTM for next-character prediction, as PyTorch's exporter writes `nn.Embedding` →
/// `nn.LSTM(batch_first=True)` → `nn.Linear` on the last step: input `[N, seq]` int64 character ids (below
/// `vocab`), an embedding of `embed`, an LSTM of `hidden` units (ONNX `LSTM`, time-major through a Transpose, zero
/// initial state), logits `[N, vocab]` for the next character. Weights as PyTorch initialises them:
/// `U(-1/sqrt(hidden), 1/sqrt(hidden))` for the LSTM, `U(-1, 1)` for the embedding.
///
/// # Panics
/// If a size is zero: the shape of a model is the programmer's choice.
pub fn char_lstm(vocab: usize, seq: usize, embed: usize, hidden: usize, seed: u64) -> Vec<u8> {
    char_recurrent("LSTM", vocab, seq, embed, hidden, seed)
}

/// [`char_lstm`] with PyTorch's `nn.GRU` in the LSTM's place (ONNX `GRU` with `linear_before_reset` = 1, as its
/// exporter writes it; weights `U(-1/sqrt(hidden), 1/sqrt(hidden))`).
///
/// # Panics
/// If a size is zero: the shape of a model is the programmer's choice.
pub fn char_gru(vocab: usize, seq: usize, embed: usize, hidden: usize, seed: u64) -> Vec<u8> {
    char_recurrent("GRU", vocab, seq, embed, hidden, seed)
}

/// The char-level model around an `op` (LSTM or GRU) cell.
fn char_recurrent(op: &str, vocab: usize, seq: usize, embed: usize, hidden: usize, seed: u64) -> Vec<u8> {
    assert!(vocab > 0 && seq > 0 && embed > 0 && hidden > 0, "sizes must be positive");
    let (gates, name, mut attrs) = match op {
        "LSTM" => (4, "lstm", vec![]),
        _ => (3, "gru", vec![int_attr("linear_before_reset", 1)]),
    };
    attrs.push(int_attr("hidden_size", hidden as i64));
    let mut g = Graph::new(seed);
    let table = g.uniform("embedding.weight", &[vocab, embed], 1.0);
    let e = g.node("Gather", &[&table, INPUT], vec![]);
    let t = g.node("Transpose", &[&e], vec![ints_attr("perm", &[1, 0, 2])]);
    let k = 1.0 / (hidden as f32).sqrt();
    let w = g.uniform(&format!("{name}.W"), &[1, gates * hidden, embed], k);
    let r = g.uniform(&format!("{name}.R"), &[1, gates * hidden, hidden], k);
    let b = g.uniform(&format!("{name}.B"), &[1, 2 * gates * hidden], k);
    g.counter += 1;
    let last = format!("{name}_h_{}", g.counter);
    g.nodes.push(pb::NodeProto {
        input: vec![t, w, r, b],
        output: vec![String::new(), last.clone()],
        name: name.into(),
        op_type: op.into(),
        attribute: attrs,
        ..Default::default()
    });
    let shape = g.int_const(&format!("{name}.last_shape"), &[-1, hidden as i64]);
    let h = g.node("Reshape", &[&last, &shape], vec![]);
    let logits = g.gemm("head", &h, hidden, vocab);
    g.finish_typed(&logits, &[seq], DataType::Int64, vocab, &format!("fedge char-{name}"), OPSET)
}

/// A one-block transformer classifier over token ids, written with the operators PyTorch's exporter uses: token
/// embeddings plus a learned positional table, pre-norm single-head self-attention (LayerNormalization, q/k/v and
/// output projections as MatMul + Add, `softmax(q kᵀ / sqrt(dim)) v`), a GELU MLP of `hidden` units (Erf form),
/// residual connections, the mean over the sequence and a linear head: input `[N, seq]` int64 ids below `vocab`,
/// output `[N, classes]`. Projections are `U(-1/sqrt(fan_in), 1/sqrt(fan_in))`, embeddings `U(-1, 1)`, positions
/// `U(-0.1, 0.1)`, layer norms start at scale 1 and bias 0.
///
/// # Panics
/// If a size is zero: the shape of a model is the programmer's choice.
pub fn transformer(vocab: usize, seq: usize, dim: usize, hidden: usize, classes: usize, seed: u64) -> Vec<u8> {
    assert!(vocab > 0 && seq > 0 && dim > 0 && hidden > 0 && classes > 0, "sizes must be positive");
    let mut g = Graph::new(seed);
    let table = g.uniform("embedding.weight", &[vocab, dim], 1.0);
    let tokens = g.node("Gather", &[&table, INPUT], vec![]);
    let pos = g.uniform("position", &[seq, dim], 0.1);
    let h = g.node("Add", &[&tokens, &pos], vec![]);
    let a = g.layer_norm("ln1", &h, dim);
    let (q, k, v) = (g.linear("q", &a, dim, dim), g.linear("k", &a, dim, dim), g.linear("v", &a, dim, dim));
    let kt = g.node("Transpose", &[&k], vec![ints_attr("perm", &[0, 2, 1])]);
    let scores = g.node("MatMul", &[&q, &kt], vec![]);
    let scale = g.scalar("attention.scale", 1.0 / (dim as f32).sqrt());
    let scaled = g.node("Mul", &[&scores, &scale], vec![]);
    let att = g.node("Softmax", &[&scaled], vec![int_attr("axis", -1)]);
    let mixed = g.node("MatMul", &[&att, &v], vec![]);
    let o = g.linear("o", &mixed, dim, dim);
    let h = g.node("Add", &[&h, &o], vec![]);
    let m = g.layer_norm("ln2", &h, dim);
    let f = g.linear("fc1", &m, dim, hidden);
    let f = g.gelu(&f);
    let f = g.linear("fc2", &f, hidden, dim);
    let h = g.node("Add", &[&h, &f], vec![]);
    let pooled = g.node("ReduceMean", &[&h], vec![ints_attr("axes", &[1]), int_attr("keepdims", 0)]);
    let logits = g.gemm("head", &pooled, dim, classes);
    // LayerNormalization needs opset 17.
    g.finish_typed(&logits, &[seq], DataType::Int64, classes, "fedge transformer", 17)
}

/// McMahan et al.'s "2NN": 784-200-200-10 with ReLU, input `[N, 784]` (199,210 parameters).
pub fn mnist_2nn(seed: u64) -> Vec<u8> {
    mlp(&[784, 200, 200, 10], seed)
}

/// McMahan et al.'s CNN for MNIST, input `[N, 1, 28, 28]`: 5x5 conv 32 (pad 2), ReLU, 2x2 max-pool, 5x5 conv 64
/// (pad 2), ReLU, 2x2 max-pool, flatten, FC 512, ReLU, FC 10 (1,663,370 parameters).
pub fn mnist_cnn(seed: u64) -> Vec<u8> {
    let mut g = Graph::new(seed);
    let x = g.conv("conv1", INPUT, 1, 32, 5, 2);
    let x = g.relu(&x);
    let x = g.max_pool(&x, 2);
    let x = g.conv("conv2", &x, 32, 64, 5, 2);
    let x = g.relu(&x);
    let x = g.max_pool(&x, 2);
    let x = g.flatten(&x);
    let x = g.gemm("fc1", &x, 64 * 7 * 7, 512);
    let x = g.relu(&x);
    let x = g.gemm("fc2", &x, 512, 10);
    g.finish(&x, &[1, 28, 28], 10, "fedge mnist cnn")
}

/// The widths of the synthetic benchmark MLP of about `p` parameters: `[128, h, 10]` with `h` chosen so the
/// count `139 h + 10` is as close to `p` as it can be (at least one hidden unit).
pub fn mlp_layers_for_params(p: usize) -> Vec<usize> {
    let h = ((p.saturating_sub(10) as f64 / 139.0).round() as usize).max(1);
    vec![128, h, 10]
}

/// The number of parameters of [`mlp`]`(layers, _)`.
pub fn mlp_param_count(layers: &[usize]) -> usize {
    layers.windows(2).map(|w| w[0] * w[1] + w[1]).sum()
}

/// A synthetic MLP of about `p` parameters (see [`mlp_layers_for_params`]), for benchmarks.
pub fn mlp_with_params(p: usize, seed: u64) -> Vec<u8> {
    mlp(&mlp_layers_for_params(p), seed)
}

/// A graph under construction.
struct Graph {
    rng: ChaCha8Rng,
    nodes: Vec<pb::NodeProto>,
    initializers: Vec<pb::TensorProto>,
    counter: usize,
}

impl Graph {
    fn new(seed: u64) -> Self {
        Graph { rng: ChaCha8Rng::seed_from_u64(seed), nodes: Vec::new(), initializers: Vec::new(), counter: 0 }
    }

    fn fresh(&mut self, op: &str) -> String {
        self.counter += 1;
        format!("{}_{}", op.to_lowercase(), self.counter)
    }

    fn node(&mut self, op: &str, inputs: &[&str], attributes: Vec<pb::AttributeProto>) -> String {
        let out = self.fresh(op);
        self.nodes.push(pb::NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![out.clone()],
            name: out.clone(),
            op_type: op.to_string(),
            attribute: attributes,
            ..Default::default()
        });
        out
    }

    /// A He-uniform weight tensor of `dims` with fan-in `fan_in`, and a zero bias of `bias_len`.
    fn params(&mut self, layer: &str, dims: &[usize], fan_in: usize, bias_len: usize) -> (String, String) {
        let bound = (6.0 / fan_in as f64).sqrt() as f32;
        let count: usize = dims.iter().product();
        let w: Vec<f32> = (0..count).map(|_| self.rng.gen_range(-bound..bound)).collect();
        let (wn, bn) = (format!("{layer}.weight"), format!("{layer}.bias"));
        self.initializers.push(float_tensor(&wn, dims, &w));
        self.initializers.push(float_tensor(&bn, &[bias_len], &vec![0.0; bias_len]));
        (wn, bn)
    }

    fn gemm(&mut self, layer: &str, x: &str, fan_in: usize, out: usize) -> String {
        let (w, b) = self.params(layer, &[out, fan_in], fan_in, out);
        self.node("Gemm", &[x, &w, &b], vec![int_attr("transB", 1)])
    }

    fn conv(&mut self, layer: &str, x: &str, c_in: usize, c_out: usize, k: usize, pad: usize) -> String {
        let (w, b) = self.params(layer, &[c_out, c_in, k, k], c_in * k * k, c_out);
        let (k, pad) = (k as i64, pad as i64);
        self.node(
            "Conv",
            &[x, &w, &b],
            vec![
                ints_attr("kernel_shape", &[k, k]),
                ints_attr("pads", &[pad, pad, pad, pad]),
                ints_attr("strides", &[1, 1]),
            ],
        )
    }

    /// A float initializer drawn uniformly from `[-bound, bound]`.
    fn uniform(&mut self, name: &str, dims: &[usize], bound: f32) -> String {
        let count: usize = dims.iter().product();
        let w: Vec<f32> = (0..count).map(|_| self.rng.gen_range(-bound..bound)).collect();
        self.initializers.push(float_tensor(name, dims, &w));
        name.to_string()
    }

    fn scalar(&mut self, name: &str, v: f32) -> String {
        self.initializers.push(float_tensor(name, &[], &[v]));
        name.to_string()
    }

    /// `x W + b` over the last axis (MatMul and Add, as PyTorch exports `nn.Linear` on a sequence).
    fn linear(&mut self, layer: &str, x: &str, fan_in: usize, out: usize) -> String {
        let k = 1.0 / (fan_in as f32).sqrt();
        let w = self.uniform(&format!("{layer}.weight"), &[fan_in, out], k);
        let b = self.uniform(&format!("{layer}.bias"), &[out], k);
        let xw = self.node("MatMul", &[x, &w], vec![]);
        self.node("Add", &[&xw, &b], vec![])
    }

    /// LayerNormalization (opset 17) over the last axis, scale 1 and bias 0.
    fn layer_norm(&mut self, layer: &str, x: &str, dim: usize) -> String {
        let (sn, bn) = (format!("{layer}.weight"), format!("{layer}.bias"));
        self.initializers.push(float_tensor(&sn, &[dim], &vec![1.0; dim]));
        self.initializers.push(float_tensor(&bn, &[dim], &vec![0.0; dim]));
        self.node("LayerNormalization", &[x, &sn, &bn], vec![int_attr("axis", -1)])
    }

    /// GELU as `torch.onnx` writes it: `x * 0.5 * (1 + erf(x / sqrt 2))`.
    fn gelu(&mut self, x: &str) -> String {
        let c = format!("gelu_{}", self.counter);
        let (r2, one, half) = (
            self.scalar(&format!("{c}.sqrt2"), 2f32.sqrt()),
            self.scalar(&format!("{c}.one"), 1.0),
            self.scalar(&format!("{c}.half"), 0.5),
        );
        let d = self.node("Div", &[x, &r2], vec![]);
        let e = self.node("Erf", &[&d], vec![]);
        let p = self.node("Add", &[&e, &one], vec![]);
        let m = self.node("Mul", &[x, &p], vec![]);
        self.node("Mul", &[&m, &half], vec![])
    }

    fn int_const(&mut self, name: &str, values: &[i64]) -> String {
        self.initializers.push(pb::TensorProto {
            dims: vec![values.len() as i64],
            data_type: DataType::Int64 as i32,
            name: name.into(),
            int64_data: values.to_vec(),
            ..Default::default()
        });
        name.to_string()
    }

    fn relu(&mut self, x: &str) -> String {
        self.node("Relu", &[x], vec![])
    }

    fn max_pool(&mut self, x: &str, k: i64) -> String {
        self.node("MaxPool", &[x], vec![ints_attr("kernel_shape", &[k, k]), ints_attr("strides", &[k, k])])
    }

    fn flatten(&mut self, x: &str) -> String {
        self.node("Flatten", &[x], vec![int_attr("axis", 1)])
    }

    /// Renames the last node's output to [`OUTPUT`] and serialises the model (float input).
    fn finish(self, last: &str, input_shape: &[usize], out_len: usize, doc: &str) -> Vec<u8> {
        self.finish_typed(last, input_shape, DataType::Float, out_len, doc, OPSET)
    }

    fn finish_typed(
        mut self,
        last: &str,
        input_shape: &[usize],
        input_type: DataType,
        out_len: usize,
        doc: &str,
        opset: i64,
    ) -> Vec<u8> {
        if let Some(n) = self.nodes.iter_mut().rev().find(|n| n.output.first().map(String::as_str) == Some(last)) {
            n.output = vec![OUTPUT.to_string()];
        }
        let mut in_dims = vec![symbolic("N")];
        in_dims.extend(input_shape.iter().map(|&d| fixed(d)));
        let graph = pb::GraphProto {
            node: self.nodes,
            name: "fedge".into(),
            initializer: self.initializers,
            input: vec![value_info(INPUT, input_type, in_dims)],
            output: vec![value_info(OUTPUT, DataType::Float, vec![symbolic("N"), fixed(out_len)])],
            ..Default::default()
        };
        let model = pb::ModelProto {
            ir_version: 8,
            opset_import: vec![pb::OperatorSetIdProto { domain: String::new(), version: opset }],
            producer_name: "fedge".into(),
            producer_version: env!("CARGO_PKG_VERSION").into(),
            doc_string: doc.into(),
            graph: Some(graph),
            ..Default::default()
        };
        prost::Message::encode_to_vec(&model)
    }
}

fn float_tensor(name: &str, dims: &[usize], values: &[f32]) -> pb::TensorProto {
    let mut raw = Vec::with_capacity(values.len() * 4);
    for v in values {
        raw.extend_from_slice(&v.to_le_bytes());
    }
    pb::TensorProto {
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: DataType::Float as i32,
        name: name.into(),
        raw_data: raw,
        ..Default::default()
    }
}

fn int_attr(name: &str, v: i64) -> pb::AttributeProto {
    pb::AttributeProto { name: name.into(), r#type: AttributeType::Int as i32, i: v, ..Default::default() }
}

fn ints_attr(name: &str, v: &[i64]) -> pb::AttributeProto {
    pb::AttributeProto { name: name.into(), r#type: AttributeType::Ints as i32, ints: v.to_vec(), ..Default::default() }
}

fn fixed(d: usize) -> Dimension {
    Dimension { value: Some(dimension::Value::DimValue(d as i64)), ..Default::default() }
}

fn symbolic(name: &str) -> Dimension {
    Dimension { value: Some(dimension::Value::DimParam(name.into())), ..Default::default() }
}

fn value_info(name: &str, elem_type: DataType, dims: Vec<Dimension>) -> pb::ValueInfoProto {
    pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: elem_type as i32,
                shape: Some(pb::TensorShapeProto { dim: dims }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::prelude::*;

    fn run(bytes: &[u8], shape: &[usize]) -> Vec<f32> {
        let model = tract_onnx::onnx()
            .model_for_read(&mut &bytes[..])
            .unwrap()
            .with_input_fact(0, f32::fact(shape).into())
            .unwrap()
            .into_optimized()
            .unwrap()
            .into_runnable()
            .unwrap();
        let n: usize = shape.iter().product();
        let x: Vec<f32> = (0..n).map(|i| ((i * 7919) % 255) as f32 / 255.0 - 0.5).collect();
        let input = Tensor::from_shape(shape, &x).unwrap();
        let out = model.run(tvec!(input.into_tvalue())).unwrap();
        out[0].as_slice::<f32>().unwrap().to_vec()
    }

    fn initializer_sizes(bytes: &[u8]) -> Vec<(String, Vec<i64>)> {
        let m: pb::ModelProto = prost::Message::decode(bytes).unwrap();
        m.graph.unwrap().initializer.into_iter().map(|t| (t.name, t.dims)).collect()
    }

    #[test]
    fn an_mlp_loads_in_tract_and_maps_a_batch_to_logits() {
        let out = run(&mlp(&[6, 5, 3], 1), &[4, 6]);
        assert_eq!(out.len(), 4 * 3);
        assert!(out.iter().all(|v| v.is_finite()));
        assert!(out.iter().any(|&v| v != 0.0));
    }

    #[test]
    fn an_mlp_on_image_shaped_input_flattens_it_first() {
        let out = run(&mlp_for(&[3, 4, 4], &[5], 2, 1), &[2, 3, 4, 4]);
        assert_eq!(out.len(), 2 * 2);
        let m: pb::ModelProto = prost::Message::decode(&mlp_for(&[3, 4, 4], &[5], 2, 1)[..]).unwrap();
        assert_eq!(m.graph.unwrap().node[0].op_type, "Flatten");
    }

    #[test]
    fn the_2nn_has_mcmahans_layer_sizes() {
        let sizes = initializer_sizes(&mnist_2nn(0));
        let names: Vec<&str> = sizes.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias", "fc3.weight", "fc3.bias"]);
        let count: i64 = sizes.iter().map(|(_, d)| d.iter().product::<i64>()).sum();
        assert_eq!(count as usize, mlp_param_count(&[784, 200, 200, 10]));
        assert_eq!(count, 199_210);
    }

    #[test]
    fn the_cnn_loads_in_tract_and_has_mcmahans_parameter_count() {
        let bytes = mnist_cnn(0);
        let count: i64 = initializer_sizes(&bytes).iter().map(|(_, d)| d.iter().product::<i64>()).sum();
        assert_eq!(count, 1_663_370);
        assert_eq!(run(&bytes, &[2, 1, 28, 28]).len(), 20);
    }

    #[test]
    fn the_same_seed_gives_the_same_bytes_and_another_seed_other_weights() {
        assert_eq!(mlp(&[4, 3, 2], 9), mlp(&[4, 3, 2], 9));
        assert_ne!(mlp(&[4, 3, 2], 9), mlp(&[4, 3, 2], 10));
    }

    #[test]
    fn weights_stay_within_the_he_uniform_bound_and_biases_start_at_zero() {
        let m: pb::ModelProto = prost::Message::decode(&mlp(&[50, 20, 3], 4)[..]).unwrap();
        for t in m.graph.unwrap().initializer {
            let v: Vec<f32> = t.raw_data.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
            if t.name.ends_with(".bias") {
                assert!(v.iter().all(|&x| x == 0.0));
            } else {
                let bound = (6.0 / t.dims[1] as f32).sqrt();
                assert!(v.iter().all(|x| x.abs() <= bound), "{}", t.name);
                // A uniform draw fills most of its range.
                assert!(v.iter().any(|x| x.abs() > 0.9 * bound), "{}", t.name);
            }
        }
    }

    #[test]
    fn a_synthetic_mlp_has_about_the_requested_parameter_count() {
        for p in [1_000usize, 100_000, 1_000_000] {
            let got = mlp_param_count(&mlp_layers_for_params(p)) as f64;
            assert!((got - p as f64).abs() / (p as f64) < 0.1, "asked {p}, got {got}");
        }
        assert_eq!(mlp_layers_for_params(0), vec![128, 1, 10]);
    }
}
