//! Gradients of the data-movement operators: Reshape (and Flatten/Squeeze/Unsqueeze), Identity, Transpose and
//! Concat.
//!
//! These only move values: gradients are reshaped, transposed back or sliced, never scaled.

use super::super::emit::Emitter;
use super::super::error::TrainError;
use super::super::graph::{DNode, Op};

pub fn backward(e: &mut Emitter, n: &DNode, dy: &str, needs: &[bool]) -> Result<Vec<Option<String>>, TrainError> {
    Ok(match &n.op {
        Op::Identity => vec![Some(dy.to_string())],
        Op::Reshape => vec![Some(e.reshape(dy, &n.in_shapes[0]))],
        Op::Transpose { perm } => {
            let mut inv = vec![0; perm.len()];
            for (i, p) in perm.iter().enumerate() {
                inv[*p] = i;
            }
            vec![Some(e.transpose(dy, &inv))]
        }
        Op::Concat { axis } => {
            let mut out = Vec::with_capacity(n.inputs.len());
            let mut offset = 0i64;
            let ax = e.const_i(&[1], &[*axis as i64]);
            for (i, s) in n.in_shapes.iter().enumerate() {
                let len = s[*axis] as i64;
                if needs[i] {
                    let st = e.const_i(&[1], &[offset]);
                    let en = e.const_i(&[1], &[offset + len]);
                    out.push(Some(e.op("Slice", &[dy, &st, &en, &ax], vec![])));
                } else {
                    out.push(None);
                }
                offset += len;
            }
            out
        }
        _ => return Err(TrainError::invalid(format!("{} is not a data-movement op", n.op_type))),
    })
}
