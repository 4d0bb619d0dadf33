//! Gradients of the normalisations: inference-form BatchNormalization with frozen running statistics,
//! y = (x - mean) / sqrt(var + eps) * scale + bias, where mean and var are constants of the model; and
//! LayerNormalization, whose statistics are the example's own (over the trailing axes) and are differentiated.
//!
//! BatchNormalization's running statistics are never updated nor differentiated (the graph refuses them as
//! trainable). LayerNormalization's rule reads the normalised input and inverse deviation the forward pass named
//! ([`layer_norm_names`]).

use super::super::emit::Emitter;
use super::super::error::TrainError;
use super::super::forward::layer_norm_names;
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

/// LayerNormalization over the axes from `axis` on, with `N` elements each: for `xhat = (x - mean) * inv`,
/// `dx = inv * (g - mean(g) - xhat * mean(g * xhat))` where `g = dy * scale`; the scale's gradient is `dy * xhat`
/// and the bias's `dy`, each summed down to its shape.
pub fn layer_norm_backward(
    e: &mut Emitter,
    n: &DNode,
    dy: &str,
    needs: &[bool],
) -> Result<Vec<Option<String>>, TrainError> {
    let Op::LayerNorm { axis, .. } = n.op else {
        return Err(TrainError::invalid(format!("{} is not LayerNormalization", n.op_type)));
    };
    let shape = &n.in_shapes[0];
    let axes: Vec<usize> = (axis..shape.len()).collect();
    let count: usize = shape[axis..].iter().product();
    let (inv, xhat) = layer_norm_names(&n.output);
    let mut out = vec![None; n.inputs.len()];
    if needs[0] {
        let g = e.op("Mul", &[dy, &n.inputs[1]], vec![]);
        let g_sum = e.reduce_sum(&g, &axes, true);
        let g_mean = e.scale(&g_sum, 1.0 / count.max(1) as f32);
        let gx = e.op("Mul", &[&g, &xhat], vec![]);
        let gx_sum = e.reduce_sum(&gx, &axes, true);
        let gx_mean = e.scale(&gx_sum, 1.0 / count.max(1) as f32);
        let centred = e.op("Sub", &[&g, &g_mean], vec![]);
        let along = e.op("Mul", &[&xhat, &gx_mean], vec![]);
        let d = e.op("Sub", &[&centred, &along], vec![]);
        out[0] = Some(e.op("Mul", &[&d, &inv], vec![]));
    }
    if needs.get(1).copied().unwrap_or(false) {
        let p = e.op("Mul", &[dy, &xhat], vec![]);
        out[1] = Some(e.unbroadcast(&p, shape, &n.in_shapes[1]));
    }
    if needs.get(2).copied().unwrap_or(false) {
        out[2] = Some(e.unbroadcast(dy, shape, &n.in_shapes[2]));
    }
    Ok(out)
}
