//! Gradient of Gather: each output element's gradient added back to the element of the data it was read from
//! (rows picked twice, as a token repeated in a sentence, get both). The indices have no gradient.
//!
//! The scatter-add is fedge's [`custom_op::MAX_POOL_GRAD`] over one flat plane (it adds `dy[i]` at `idx[i]`, and an
//! index outside the plane is an error, never a write out of bounds). With constant indices the flat positions are
//! computed here, once; with indices from the data (an embedding's token ids, axis 0) they are `id * row + column`,
//! computed in the graph. This rule never reads runtime values.

use super::super::custom_op;
use super::super::emit::Emitter;
use super::super::error::TrainError;
use super::super::graph::{DNode, Op};
use super::super::proto::{attr_ints, node};
use super::Ctx;

pub fn backward(
    e: &mut Emitter,
    ctx: &Ctx<'_>,
    n: &DNode,
    dy: &str,
    needs: &[bool],
) -> Result<Vec<Option<String>>, TrainError> {
    let Op::Gather { axis } = n.op else {
        return Err(TrainError::invalid(format!("{} is not Gather", n.op_type)));
    };
    let mut out = vec![None; n.inputs.len()];
    if !needs[0] {
        return Ok(out);
    }
    let data = &n.in_shapes[0];
    let total: usize = data.iter().product();
    let picked: usize = n.out_shape.iter().product();
    let row: usize = data[axis + 1..].iter().product();
    let flat = match ctx.graph.consts.get(&n.inputs[1]) {
        Some((_, idx)) => {
            let dim = data[axis] as i64;
            let outer: usize = data[..axis].iter().product();
            let ids = idx.as_i64();
            let mut flat = Vec::with_capacity(picked);
            for o in 0..outer {
                for &i in &ids {
                    let k = if i < 0 { i + dim } else { i };
                    if !(0..dim).contains(&k) {
                        return Err(TrainError::invalid(format!("node {}: index {i} out of range {dim}", n.name)));
                    }
                    let base = (o * data[axis] + k as usize) * row;
                    flat.extend((base..base + row).map(|p| p as i64));
                }
            }
            e.const_i(&[flat.len()], &flat)
        }
        None => {
            // Ids [..] → ids * row, then + 0..row along a new last axis: [.., row] → flat.
            let ids = e.token_ids(&n.inputs[1], data[0]);
            let r = e.const_i(&[], &[row as i64]);
            let starts = e.op("Mul", &[&ids, &r], vec![]);
            let last = e.const_i(&[1], &[-1]);
            let starts = e.op("Unsqueeze", &[&starts, &last], vec![]);
            let cols: Vec<i64> = (0..row as i64).collect();
            let cols = e.const_i(&[row], &cols);
            let positions = e.op("Add", &[&starts, &cols], vec![]);
            let len = e.const_i(&[1], &[picked as i64]);
            e.op("Reshape", &[&positions, &len], vec![])
        }
    };
    let g = e.reshape(dy, &[picked]);
    let summed = e.fresh(custom_op::MAX_POOL_GRAD);
    let mut scatter = node(
        custom_op::MAX_POOL_GRAD,
        &summed,
        &[&flat, &g],
        &[&summed],
        vec![attr_ints("input_shape", &[1, 1, total as i64])],
    );
    scatter.domain = custom_op::DOMAIN.into();
    e.nodes.push(scatter);
    out[0] = Some(e.reshape(&summed, data));
    Ok(out)
}
