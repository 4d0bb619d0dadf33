//! Gradient of ReduceSum and ReduceMean: the output's gradient spread back over the reduced axes (divided by
//! their size for the mean).
//!
//! The rule only reshapes and expands; it never reads the forward values.

use super::super::emit::Emitter;
use super::super::error::TrainError;
use super::super::graph::{DNode, Op};

pub fn backward(e: &mut Emitter, n: &DNode, dy: &str) -> Result<Vec<Option<String>>, TrainError> {
    let Op::Reduce { mean, axes, keepdims } = &n.op else {
        return Err(TrainError::invalid(format!("{} is not a reduction", n.op_type)));
    };
    let in_shape = &n.in_shapes[0];
    let kept: Vec<usize> = in_shape.iter().enumerate().map(|(i, d)| if axes.contains(&i) { 1 } else { *d }).collect();
    let g = if *keepdims { dy.to_string() } else { e.reshape(dy, &kept) };
    let dims: Vec<i64> = in_shape.iter().map(|d| *d as i64).collect();
    let shape = e.const_i(&[dims.len()], &dims);
    let g = e.op("Expand", &[&g, &shape], vec![]);
    let count: usize = axes.iter().map(|a| in_shape[*a]).product();
    Ok(vec![Some(if *mean { e.scale(&g, 1.0 / count.max(1) as f32) } else { g })])
}
