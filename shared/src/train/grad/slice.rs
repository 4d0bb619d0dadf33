//! Gradients of Slice and Pad, and how the slices of one tensor hand back their gradients.
//!
//! A Slice's gradient is its output gradient padded with zeros back to the input's shape, and a Pad's is the slice
//! of its output gradient the input occupied. When several slices read one tensor (the time steps and gates of an
//! unrolled recurrent cell, a Split), padding each to the full shape and summing costs the full tensor per slice:
//! [`gather`] instead concatenates the pieces along the one axis they cut, filling gaps with zeros, and pads only
//! what overlaps or cuts more than one axis.

use super::super::emit::Emitter;
use super::super::error::TrainError;
use super::super::graph::{DNode, Op};

/// One slice's gradient: its `[start, end)` range on every axis of the sliced tensor and the gradient tensor.
pub struct Piece {
    pub starts: Vec<usize>,
    pub ends: Vec<usize>,
    pub grad: String,
}

pub fn backward(e: &mut Emitter, n: &DNode, dy: &str) -> Result<Vec<Option<String>>, TrainError> {
    let x = &n.in_shapes[0];
    Ok(match &n.op {
        Op::Slice { starts, ends } => vec![Some(pad(e, dy, x, starts, ends))],
        Op::Pad { pads, .. } => {
            let starts: Vec<usize> = pads.iter().map(|p| p.0).collect();
            let ends: Vec<usize> = starts.iter().zip(x).map(|(s, d)| s + d).collect();
            vec![Some(slice(e, dy, &starts, &ends))]
        }
        _ => return Err(TrainError::invalid(format!("{} is not a slice or a pad", n.op_type))),
    })
}

fn ints(v: &[usize]) -> Vec<i64> {
    v.iter().map(|x| *x as i64).collect()
}

fn slice(e: &mut Emitter, x: &str, starts: &[usize], ends: &[usize]) -> String {
    let (b, en) = (e.const_i(&[starts.len()], &ints(starts)), e.const_i(&[ends.len()], &ints(ends)));
    e.op("Slice", &[x, &b, &en], vec![])
}

/// `g` (the gradient of `x[starts..ends]`) padded with zeros to `shape`.
fn pad(e: &mut Emitter, g: &str, shape: &[usize], starts: &[usize], ends: &[usize]) -> String {
    let mut p = ints(starts);
    p.extend(ends.iter().zip(shape).map(|(en, d)| (d - en) as i64));
    let pads = e.const_i(&[p.len()], &p);
    let zero = e.scalar(0.0);
    e.op("Pad", &[g, &pads, &zero], vec![])
}

/// The gradient contributions of a tensor of `shape` from the slices that read it: one concatenation when they
/// cut disjoint ranges of a single axis, one padded gradient per slice otherwise.
pub fn gather(e: &mut Emitter, shape: &[usize], mut pieces: Vec<Piece>) -> Vec<String> {
    let cut = |p: &Piece| -> Vec<usize> {
        (0..shape.len()).filter(|a| p.starts[*a] != 0 || p.ends[*a] != shape[*a]).collect::<Vec<_>>()
    };
    let axis = match pieces.first().map(cut).as_deref() {
        Some([a]) => Some(*a),
        _ => None,
    };
    let single = axis.filter(|a| pieces.iter().all(|p| cut(p) == [*a]));
    if let (Some(axis), true) = (single, pieces.len() > 1) {
        pieces.sort_by_key(|p| p.starts[axis]);
        let disjoint = pieces.windows(2).all(|w| w[0].ends[axis] <= w[1].starts[axis]);
        if disjoint {
            let mut parts = vec![];
            let mut at = 0;
            let gap = |e: &mut Emitter, from: usize, to: usize| {
                let mut s = shape.to_vec();
                s[axis] = to - from;
                e.const_f(&s, &vec![0.0; s.iter().product()])
            };
            for p in &pieces {
                if p.starts[axis] > at {
                    parts.push(gap(e, at, p.starts[axis]));
                }
                parts.push(p.grad.clone());
                at = p.ends[axis];
            }
            if at < shape[axis] {
                parts.push(gap(e, at, shape[axis]));
            }
            let refs: Vec<&str> = parts.iter().map(|s| s.as_str()).collect();
            return vec![e.op("Concat", &refs, vec![super::super::proto::attr_i("axis", axis as i64)])];
        }
    }
    pieces.iter().map(|p| pad(e, &p.grad, shape, &p.starts, &p.ends)).collect()
}
