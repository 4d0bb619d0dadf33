//! Gradient specifications for the recurrent cells and the slicing operators they are unrolled into: LSTM and GRU
//! as ONNX defines them (time-major or batch-first, with or without biases, zero or given initial states, every
//! step or the last as output), Split, Slice, Pad and Expand. The training graph's gradient matches central finite
//! differences of its own loss (property tests over random shapes, few cases each), and the fused cells of an LSTM
//! and of a PyTorch-form GRU (`Kernels::Fedge`) compute the loss and gradients of their primitive form
//! (`Kernels::Standard`); what stays unsupported is refused with the operator's name and node.

mod engine_support;

use engine_support::*;
use fedge_shared::train::{Loss, TrainError, TrainableModel};
use proptest::prelude::*;

const CE: Loss = Loss::SoftmaxCrossEntropy;
/// Examples per checked batch: initial states are shaped by it.
const N: usize = 2;

/// A recurrent node over `[N, T, I]` inputs; `output` 0 = `Y` (every step), 1 = `Y_h`, 2 = `Y_c` (LSTM only).
#[allow(clippy::too_many_arguments)]
fn recurrent(
    b: &mut ModelBuilder,
    x: &str,
    op: &str,
    (t, i, h): (usize, usize, usize),
    batch_first: bool,
    bias: bool,
    initial: bool,
    output: usize,
    extra: Vec<tract_onnx::pb::AttributeProto>,
) -> String {
    let gates = if op == "LSTM" { 4 } else { 3 };
    let _ = t;
    let xin = if batch_first { x.to_string() } else { b.node("Transpose", &[x], vec![attr_ints("perm", &[1, 0, 2])]) };
    let w = b.init_random("W", &[1, gates * h, i], 0.6);
    let r = b.init_random("R", &[1, gates * h, h], 0.6);
    let bb = if bias { b.init_random("B", &[1, 2 * gates * h], 0.3) } else { String::new() };
    let (h0, c0) = if initial {
        let h0 = learned_state(b, x, "h0", h, batch_first);
        let c0 = if op == "LSTM" { learned_state(b, x, "c0", h, batch_first) } else { String::new() };
        (h0, c0)
    } else {
        (String::new(), String::new())
    };
    let mut ins = vec![xin.as_str(), &w, &r, &bb, "", &h0];
    if op == "LSTM" {
        ins.push(&c0);
    }
    while ins.last() == Some(&"") {
        ins.pop();
    }
    let outs = if op == "LSTM" { 3 } else { 2 };
    let wanted: Vec<bool> = (0..outs).map(|k| k == output).collect();
    let mut attrs = vec![attr_i("hidden_size", h as i64), attr_i("layout", batch_first as i64)];
    attrs.extend(extra);
    let y = b.node_outputs(op, &ins, &wanted, attrs).swap_remove(output);
    match (batch_first, output) {
        (true, _) => y,
        // Time-major outputs go batch-first before the dense layer: Y [T, 1, B, H], Y_h and Y_c [1, B, H].
        (false, 0) => b.node("Transpose", &[&y], vec![attr_ints("perm", &[2, 0, 1, 3])]),
        (false, _) => b.node("Transpose", &[&y], vec![attr_ints("perm", &[1, 0, 2])]),
    }
}

/// A learned `[1, 1, H]` state expanded over the batch as PyTorch exports it (Shape, Gather, Concat, Expand).
fn learned_state(b: &mut ModelBuilder, x: &str, name: &str, h: usize, batch_first: bool) -> String {
    let p = b.init_random(name, &[1, 1, h], 0.5);
    let s = b.node("Shape", &[x], vec![]);
    let zero = b.init_i64(&format!("{name}_zero"), &[1], &[0]);
    let n = b.node("Gather", &[&s, &zero], vec![attr_i("axis", 0)]);
    let (one, hh) =
        (b.init_i64(&format!("{name}_one"), &[1], &[1]), b.init_i64(&format!("{name}_h"), &[1], &[h as i64]));
    let shape = if batch_first {
        b.node("Concat", &[&n, &one, &hh], vec![attr_i("axis", 0)])
    } else {
        b.node("Concat", &[&one, &n, &hh], vec![attr_i("axis", 0)])
    };
    b.node("Expand", &[&p, &shape], vec![])
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 8, ..ProptestConfig::default() })]

    #[test]
    fn lstm_gradients_match_finite_differences(
        t in 1usize..4, i in 1usize..3, h in 1usize..3, batch_first in any::<bool>(), bias in any::<bool>(),
        initial in any::<bool>(), output in 0usize..3, seed in 0u64..1000,
    ) {
        let bytes = wrap(&[t, i], seed, |b, x| {
            recurrent(b, x, "LSTM", (t, i, h), batch_first, bias, initial, output, vec![])
        });
        check(&bytes, CE, N, seed, 1e-2)?;
    }

    #[test]
    fn gru_gradients_match_finite_differences(
        t in 1usize..4, i in 1usize..3, h in 1usize..3, batch_first in any::<bool>(), bias in any::<bool>(),
        initial in any::<bool>(), output in 0usize..2, linear_before_reset in any::<bool>(), seed in 0u64..1000,
    ) {
        let bytes = wrap(&[t, i], seed, |b, x| {
            let lbr = vec![attr_i("linear_before_reset", linear_before_reset as i64)];
            recurrent(b, x, "GRU", (t, i, h), batch_first, bias, initial, output, lbr)
        });
        check(&bytes, CE, N, seed, 1e-2)?;
    }

    #[test]
    fn the_fused_lstm_cell_computes_the_primitive_form_s_loss_and_gradients(
        t in 1usize..4, i in 1usize..4, h in 1usize..4, batch_first in any::<bool>(), bias in any::<bool>(),
        initial in any::<bool>(), output in 0usize..3, seed in 0u64..1000,
    ) {
        // `Kernels::Fedge` (one FedgeLstmCell and one FedgeLstmCellGrad per step) against `Kernels::Standard` (the
        // primitive nodes of the cell's definition and their gradients), in f64 on the same batch.
        let bytes = wrap(&[t, i], seed, |b, x| {
            recurrent(b, x, "LSTM", (t, i, h), batch_first, bias, initial, output, vec![])
        });
        let diff = standard_ops_difference(&bytes, CE, N, seed);
        prop_assert!(diff < 1e-10, "fused and primitive forms differ by {}", diff);
    }

    #[test]
    fn the_fused_gru_cell_computes_the_primitive_form_s_loss_and_gradients(
        t in 1usize..4, i in 1usize..4, h in 1usize..4, batch_first in any::<bool>(), bias in any::<bool>(),
        initial in any::<bool>(), output in 0usize..2, seed in 0u64..1000,
    ) {
        // PyTorch's form (`linear_before_reset` = 1), one FedgeGruCell and one FedgeGruCellGrad per step, against
        // the primitive nodes of its definition, in f64 on the same batch.
        let bytes = wrap(&[t, i], seed, |b, x| {
            let lbr = vec![attr_i("linear_before_reset", 1)];
            recurrent(b, x, "GRU", (t, i, h), batch_first, bias, initial, output, lbr)
        });
        let diff = standard_ops_difference(&bytes, CE, N, seed);
        prop_assert!(diff < 1e-10, "fused and primitive forms differ by {}", diff);
    }

    #[test]
    fn split_gradients_match_finite_differences(
        axis in 1i64..3, sizes in prop::sample::select(vec![vec![1usize, 3], vec![2, 2], vec![1, 1, 2]]),
        drop_one in any::<bool>(), seed in 0u64..1000,
    ) {
        // [N, 4, 4] split along an axis; the parts are recombined unevenly so each gets its own gradient, and one
        // part may go unused.
        let bytes = wrap(&[4, 4], seed, |b, x| {
            let s = b.init_i64("sizes", &[sizes.len()], &sizes.iter().map(|v| *v as i64).collect::<Vec<_>>());
            let wanted = vec![true; sizes.len()];
            let parts = b.node_outputs("Split", &[x, &s], &wanted, vec![attr_i("axis", axis)]);
            let first = b.node("Tanh", &[&parts[0]], vec![]);
            let used: Vec<&str> = if drop_one { vec![&first] } else {
                std::iter::once(first.as_str()).chain(parts[1..].iter().map(|p| p.as_str())).collect()
            };
            b.node("Concat", &used, vec![attr_i("axis", axis)])
        });
        check(&bytes, CE, N, seed, 1e-2)?;
    }

    #[test]
    fn overlapping_slices_and_pads_gradients_match_finite_differences(
        a in 0i64..3, len in 1i64..3, pad_before in 0i64..2, pad_after in 0i64..2, value in -1f32..1.0,
        seed in 0u64..1000,
    ) {
        // Two overlapping slices of one tensor (their gradients are padded and summed), one of them padded.
        let bytes = wrap(&[4, 3], seed, |b, x| {
            let (s1, e1, ax) = (b.init_i64("s1", &[1], &[a]), b.init_i64("e1", &[1], &[a + len]), b.init_i64("ax", &[1], &[1]));
            let first = b.node("Slice", &[x, &s1, &e1, &ax], vec![]);
            let (s2, e2) = (b.init_i64("s2", &[2], &[1, 0]), b.init_i64("e2", &[2], &[4, 2]));
            let ax2 = b.init_i64("ax2", &[2], &[1, 2]);
            let second = b.node("Slice", &[x, &s2, &e2, &ax2], vec![]);
            let p = b.init_i64("pads", &[6], &[0, pad_before, 0, 0, pad_after, 0]);
            let v = b.constant("pad_value", &[], &[value]);
            let padded = b.node("Pad", &[&first, &p, &v], vec![]);
            let f1 = b.node("Flatten", &[&padded], vec![attr_i("axis", 1)]);
            let f2 = b.node("Flatten", &[&second], vec![attr_i("axis", 1)]);
            b.node("Concat", &[&f1, &f2], vec![attr_i("axis", 1)])
        });
        check(&bytes, CE, N, seed, 1e-2)?;
    }

    #[test]
    fn sequence_cross_entropy_gradients_match_finite_differences(
        t in 1usize..4, v in 2usize..5, seed in 0u64..1000,
    ) {
        // A batch-first LSTM whose every step is projected to `v` classes: [N, T, V] logits, a label per step.
        let mut b = ModelBuilder::new(&[t, 2], seed);
        let y = recurrent(&mut b, "x", "LSTM", (t, 2, 3), true, true, false, 0, vec![]);
        let s = b.init_i64("seq_shape", &[3], &[0, t as i64, 3]);
        let y = b.node("Reshape", &[&y, &s], vec![]);
        let w = b.init_random("proj", &[3, v], 0.7);
        let logits = b.node("MatMul", &[&y, &w], vec![]);
        check(&b.build(&logits), Loss::SequenceCrossEntropy, N, seed, 1e-2)?;
    }

    #[test]
    fn expand_gradients_match_finite_differences(rows in 1usize..4, seed in 0u64..1000) {
        // A learned [1, 3] row broadcast over rows, as a class token or a positional table is.
        let bytes = wrap(&[rows, 3], seed, |b, x| {
            let row = b.init_random("row", &[1, 3], 0.5);
            let shape = b.init_i64("shape", &[3], &[1, rows as i64, 3]);
            let e = b.node("Expand", &[&row, &shape], vec![]);
            b.node("Mul", &[x, &e], vec![])
        });
        check(&bytes, CE, N, seed, 1e-2)?;
    }
}

/// The unrolled cell's weights are products over rows, not sums over time steps: the input projection of every
/// step is one dense product (fedge's own, not tract's batched MatMul), and the recurrence weight's gradient
/// accumulates product by product (each step's `FedgeGemm` adds into the previous one's, given as C) instead of
/// one Sum over every time step.
#[test]
fn an_unrolled_cell_accumulates_its_weight_gradient_through_its_products() {
    let t = 6;
    let model = TrainableModel::from_onnx_bytes(&fedge_shared::train::builder::char_lstm(5, t, 3, 4, 1)).unwrap();
    let step = fedge_shared::train::TrainStep::new(&model, CE, N).unwrap();
    let bytes = step.training_graph(N).unwrap();
    let graph = <tract_onnx::pb::ModelProto as prost::Message>::decode(bytes.as_slice()).unwrap().graph.unwrap();
    let count = |f: &dyn Fn(&tract_onnx::pb::NodeProto) -> bool| graph.node.iter().filter(|n| f(n)).count();
    assert_eq!(count(&|n| n.op_type == "MatMul"), 0, "every product is fedge's, the [T, B, I] projection too");
    assert!(count(&|n| n.op_type == "FedgeGemm" && n.input.len() == 3) >= t - 1, "products adding into a C");
    assert_eq!(count(&|n| n.op_type == "Sum" && n.input.len() >= t), 0, "no sum over the time steps");
    // The standard form (Gemm with C, what other runtimes are given) computes the same gradient.
    let diff = standard_ops_difference(&fedge_shared::train::builder::char_lstm(5, t, 3, 4, 1), CE, N, 3);
    assert!(diff < 1e-9, "fedge's and the standard form's gradients differ by {diff}");
}

/// The training step runs an LSTM's steps as fedge's fused cell, one node each way per step, and the standard form
/// (what other runtimes are given) as primitive ONNX nodes only.
#[test]
fn an_lstm_step_is_one_fused_node_each_way_with_its_hidden_state_apart_and_primitives_in_the_standard_form() {
    let t = 5;
    let model = TrainableModel::from_onnx_bytes(&fedge_shared::train::builder::char_lstm(5, t, 3, 4, 1)).unwrap();
    let graph_of = |standard: bool| {
        let mut step = fedge_shared::train::TrainStep::new(&model, CE, N).unwrap();
        if standard {
            step = step.into_standard_ops().unwrap();
        }
        let bytes = step.training_graph(N).unwrap();
        <tract_onnx::pb::ModelProto as prost::Message>::decode(bytes.as_slice()).unwrap().graph.unwrap()
    };
    let count = |g: &tract_onnx::pb::GraphProto, op: &str| g.node.iter().filter(|n| n.op_type == op).count();
    let fused = graph_of(false);
    assert_eq!(count(&fused, "FedgeLstmCell"), t);
    assert_eq!(count(&fused, "FedgeLstmHidden"), t, "h' from a node of its own, so that A can be freed early");
    assert_eq!(count(&fused, "FedgeLstmCellGrad"), t);
    assert_eq!(count(&fused, "Sigmoid") + count(&fused, "Tanh"), 0, "no gate is a node of its own");
    let standard = graph_of(true);
    assert!(standard.node.iter().all(|n| n.domain != "ai.fedge" || n.op_type == "FedgeMaxPoolGrad"));
    assert_eq!(count(&standard, "Sigmoid"), 3 * t);
    assert_eq!(count(&standard, "Tanh"), 2 * t);
}

/// A GRU in PyTorch's form runs as fedge's fused cell, one node each way per step; the other form (the candidate's
/// recurrence product after the reset gate) stays on primitive nodes.
#[test]
fn a_pytorch_form_gru_step_is_one_fused_node_each_way() {
    let t = 4;
    let fused_nodes = |linear_before_reset: i64| {
        let bytes = wrap(&[t, 2], 1, |b, x| {
            let lbr = vec![attr_i("linear_before_reset", linear_before_reset)];
            recurrent(b, x, "GRU", (t, 2, 3), true, true, false, 1, lbr)
        });
        let model = TrainableModel::from_onnx_bytes(&bytes).unwrap();
        let step = fedge_shared::train::TrainStep::new(&model, CE, N).unwrap();
        let bytes = step.training_graph(N).unwrap();
        let graph = <tract_onnx::pb::ModelProto as prost::Message>::decode(bytes.as_slice()).unwrap().graph.unwrap();
        let count = |op: &str| graph.node.iter().filter(|n| n.op_type == op).count();
        (count("FedgeGruCell"), count("FedgeGruHidden"), count("FedgeGruCellGrad"), count("Sigmoid"))
    };
    assert_eq!(fused_nodes(1), (t, t, t, 0));
    assert_eq!(fused_nodes(0), (0, 0, 0, 2 * t));
}

#[test]
fn what_pytorchs_exporter_never_writes_is_refused_with_the_operator_and_node() {
    let refused = |attrs: Vec<tract_onnx::pb::AttributeProto>| {
        let mut b = ModelBuilder::new(&[3, 2], 1);
        let w = b.init_random("W", &[1, 8, 2], 0.5);
        let r = b.init_random("R", &[1, 8, 2], 0.5);
        let mut a = vec![attr_i("hidden_size", 2), attr_i("layout", 1)];
        a.extend(attrs);
        let y = b.node_outputs("LSTM", &["x", &w, &r], &[false, true], a).swap_remove(1);
        match TrainableModel::from_onnx_bytes(&b.build(&y)) {
            Err(TrainError::UnsupportedOp { op, node }) => (op, node),
            other => panic!("expected a refusal, got {:?}", other.map(|m| m.num_params())),
        }
    };
    let direction = tract_onnx::pb::AttributeProto {
        name: "direction".into(),
        r#type: tract_onnx::pb::attribute_proto::AttributeType::String as i32,
        s: b"bidirectional".to_vec(),
        ..Default::default()
    };
    let (op, node) = refused(vec![direction]);
    assert!(op.contains("LSTM") && op.contains("bidirectional"), "{op}");
    assert!(node.starts_with("LSTM_node"), "{node}");
    let (op, _) = refused(vec![attr_f("clip", 3.0)]);
    assert!(op.contains("clipping"), "{op}");
}

#[test]
fn the_lowering_s_own_lstm_step_is_refused_in_a_model() {
    let mut b = ModelBuilder::new(&[8], 1);
    let c = b.init_random("c", &[1, 2], 0.5);
    let h = b.node_outputs("fedge.LstmCell", &["x", &c], &[true, true], vec![]).swap_remove(0);
    match TrainableModel::from_onnx_bytes(&b.build(&h)) {
        Err(TrainError::UnsupportedOp { op, .. }) => assert_eq!(op, "fedge.LstmCell"),
        other => panic!("expected a refusal, got {:?}", other.map(|m| m.num_params())),
    }
}

#[test]
fn a_pad_or_expand_asking_for_more_values_than_fedge_holds_is_refused_not_allocated() {
    let too_big = |op: &str| {
        let mut b = ModelBuilder::new(&[3], 1);
        let out = if op == "Pad" {
            let p = b.init_i64("pads", &[4], &[0, 0, 0, i64::MAX / 2]);
            b.node("Pad", &["x", &p], vec![])
        } else {
            let shape = b.init_i64("shape", &[3], &[1 << 20, 1 << 20, 3]);
            b.node("Expand", &["x", &shape], vec![])
        };
        TrainableModel::from_onnx_bytes(&b.build(&out)).map(|m| m.num_params())
    };
    for op in ["Pad", "Expand"] {
        match too_big(op) {
            Err(TrainError::Shape(msg)) => {
                assert!(msg.contains("more than") || msg.contains("overflow"), "{op}: {msg}")
            }
            other => panic!("{op}: expected a shape error, got {other:?}"),
        }
    }
}

/// A GRU with its biases trains in f32 as in f64, at hidden sizes whose bias sums tract's optimiser turns into
/// SIMD Adds (2H or 3H ≥ 32 values). tract 0.22 used to panic there (`unicast.rs: range end index 2H out of range
/// for slice of length 4`): the recurrence bias's gradient, one ReduceSum over the batch per step, came out of
/// tract's ReduceSum with a wrong stride on its unit axis, which its f32 unicast Add takes a row's length from.
#[test]
fn a_gru_with_biases_trains_in_f32_as_in_f64() {
    let (t, i) = (3, 2);
    for (h, n) in [(16, 2), (32, 3), (24, 8), (40, 1)] {
        for linear_before_reset in [0, 1] {
            for batch_first in [true, false] {
                let bytes = wrap(&[t, i], h as u64, |b, x| {
                    let lbr = vec![attr_i("linear_before_reset", linear_before_reset)];
                    recurrent(b, x, "GRU", (t, i, h), batch_first, true, false, 1, lbr)
                });
                for standard in [false, true] {
                    let diff = f32_difference(&bytes, CE, n, h as u64, standard);
                    assert!(
                        diff < 1e-4,
                        "H {h}, batch {n}, linear_before_reset {linear_before_reset}, batch_first {batch_first}, \
                         standard form {standard}: f32 and f64 differ by {diff}"
                    );
                }
            }
        }
    }
}

/// The same for the LSTM with its biases (its input and recurrence biases are one sum over every step at once).
#[test]
fn an_lstm_with_biases_trains_in_f32_as_in_f64() {
    let (t, i) = (3, 2);
    for (h, n) in [(16, 2), (32, 3)] {
        for batch_first in [true, false] {
            for output in [0, 1] {
                let bytes = wrap(&[t, i], h as u64, |b, x| {
                    recurrent(b, x, "LSTM", (t, i, h), batch_first, true, false, output, vec![])
                });
                for standard in [false, true] {
                    let diff = f32_difference(&bytes, CE, n, h as u64, standard);
                    assert!(
                        diff < 1e-4,
                        "H {h}, batch {n}, batch_first {batch_first}, output {output}, standard form {standard}: \
                         f32 and f64 differ by {diff}"
                    );
                }
            }
        }
    }
}
