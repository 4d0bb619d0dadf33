//! Gradient of inference-form BatchNormalization with frozen running statistics:
//! y = (x - mean) / sqrt(var + eps) * scale + bias, where mean and var are constants of the model.
//!
//! The running statistics are never updated nor differentiated (the graph refuses them as trainable).

use super::super::emit::Emitter;
use super::super::error::TrainError;
use super::super::graph::{DNode, Op};
use super::Ctx;

pub fn backward(
    e: &mut Emitter,
    ctx: &Ctx<'_>,
    n: &DNode,
    dy: &str,
    needs: &[bool],
) -> Result<Vec<Option<String>>, TrainError> {
    let Op::BatchNorm { epsilon } = n.op else {
        return Err(TrainError::invalid(format!("{} is not BatchNormalization", n.op_type)));
    };
    let x_shape = &n.in_shapes[0];
    let c = x_shape[1];
    let konst = |i: usize| -> Result<Vec<f32>, TrainError> {
        ctx.graph
            .consts
            .get(&n.inputs[i])
            .map(|(_, d)| d.as_f32())
            .ok_or_else(|| TrainError::invalid(format!("node {}: running statistics must be constants", n.name)))
    };
    let (mean, var) = (konst(3)?, konst(4)?);
    let inv_std: Vec<f32> = var.iter().map(|v| 1.0 / (v + epsilon).sqrt()).collect();
    // Per-channel tensors broadcast as [1, C, 1, ...].
    let mut bshape = vec![1; x_shape.len()];
    bshape[1] = c;
    let others: Vec<usize> = (0..x_shape.len()).filter(|i| *i != 1).collect();
    let mut out = vec![None; n.inputs.len()];
    if needs[0] {
        let a = match ctx.graph.consts.get(&n.inputs[1]) {
            Some((_, s)) => {
                let s = s.as_f32();
                let a: Vec<f32> = s.iter().zip(&inv_std).map(|(s, i)| s * i).collect();
                e.const_f(&bshape, &a)
            }
            None => {
                let inv = e.const_f(&[c], &inv_std);
                let a = e.op("Mul", &[&n.inputs[1], &inv], vec![]);
                e.reshape(&a, &bshape)
            }
        };
        out[0] = Some(e.op("Mul", &[dy, &a], vec![]));
    }
    if needs[1] {
        let m = e.const_f(&bshape, &mean);
        let inv = e.const_f(&bshape, &inv_std);
        let centred = e.op("Sub", &[&n.inputs[0], &m], vec![]);
        let xhat = e.op("Mul", &[&centred, &inv], vec![]);
        let p = e.op("Mul", &[dy, &xhat], vec![]);
        out[1] = Some(e.reduce_sum(&p, &others, false));
    }
    if needs[2] {
        out[2] = Some(e.reduce_sum(dy, &others, false));
    }
    Ok(out)
}
