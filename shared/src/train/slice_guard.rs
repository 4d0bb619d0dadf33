//! A guard against a tract 0.22 optimiser failure: `PushSliceUp` stops with "Condition failed:
//! `boundaries[0] == 0`" when every consumer of a tensor slices it along one axis and none of them starts at 0
//! (`x[:, 1:3]` beside `x[:, 2:]`, or a Concat's gradient when its first input needs none).
//!
//! [`guard`] finds such tensors in an emitted graph and gives each an extra slice starting at 0 on that axis, as an
//! extra graph output the callers ignore (outputs are never pruned). It only appends nodes; it never changes what
//! the graph computes. (`overlapping_slices_and_pads_gradients_match_finite_differences` fails without it.)

use std::collections::{BTreeSet, HashMap};

use tract_onnx::pb::{TensorProto, tensor_proto::DataType};

use super::emit::Emitter;

fn ints(t: &TensorProto) -> Option<Vec<i64>> {
    if t.data_type != DataType::Int64 as i32 {
        return None;
    }
    if !t.int64_data.is_empty() {
        return Some(t.int64_data.clone());
    }
    Some(t.raw_data.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8]))).collect())
}

/// Appends the guard slices to `e` and returns the names of the extra outputs they write.
pub fn guard(e: &mut Emitter) -> Vec<String> {
    let consts: HashMap<&str, Vec<i64>> =
        e.inits.iter().filter_map(|t| ints(t).map(|v| (t.name.as_str(), v))).collect();
    // Per sliced tensor: whether every consumer is a Slice with known bounds, and per axis whether one starts at 0.
    let mut consumers: HashMap<&str, usize> = HashMap::new();
    let mut slices: HashMap<&str, Vec<(i64, i64)>> = HashMap::new();
    for n in &e.nodes {
        for i in n.input.iter().filter(|i| !i.is_empty()) {
            *consumers.entry(i.as_str()).or_default() += 1;
        }
        if n.op_type != "Slice" {
            continue;
        }
        let (Some(x), Some(starts)) = (n.input.first(), n.input.get(1).and_then(|s| consts.get(s.as_str()))) else {
            continue;
        };
        let axes = match n.input.get(3).filter(|s| !s.is_empty()) {
            Some(a) => match consts.get(a.as_str()) {
                Some(a) => a.clone(),
                None => continue,
            },
            None => (0..starts.len() as i64).collect(),
        };
        slices.entry(x.as_str()).or_default().extend(axes.iter().copied().zip(starts.iter().copied()));
    }
    let mut wanted: Vec<(String, i64)> = vec![];
    for (x, cuts) in &slices {
        let slicers = cuts_consumers(e, x);
        if slicers < 2 || consumers.get(x).copied().unwrap_or(0) != slicers {
            continue;
        }
        let axes: BTreeSet<i64> = cuts.iter().map(|c| c.0).collect();
        for a in axes {
            if !cuts.iter().any(|(ax, s)| *ax == a && *s == 0) {
                wanted.push((x.to_string(), a));
            }
        }
    }
    wanted.sort();
    let mut outputs = vec![];
    for (x, axis) in wanted {
        let (s, en, ax) = (e.const_i(&[1], &[0]), e.const_i(&[1], &[1]), e.const_i(&[1], &[axis]));
        let out = e.fresh("slice_guard");
        e.op_into("Slice", &[&x, &s, &en, &ax], &[&out], vec![]);
        outputs.push(out);
    }
    outputs
}

/// How many nodes read `x` as a Slice's data input.
fn cuts_consumers(e: &Emitter, x: &str) -> usize {
    e.nodes.iter().filter(|n| n.op_type == "Slice" && n.input.first().map(|s| s.as_str()) == Some(x)).count()
}
