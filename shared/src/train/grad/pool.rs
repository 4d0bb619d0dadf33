//! Gradients of MaxPool, AveragePool and GlobalAveragePool (any number of spatial axes).
//!
//! - MaxPool: the forward pass also emits tract's argmax indices (flat positions inside each channel plane; tract's
//!   convention, checked by the finite-difference tests). Each output's gradient goes to exactly the input its
//!   max came from (ties go to the first maximum, as in the forward pass).
//!   * Tiling windows (kernel = stride, no padding, sizes divisible): the input is viewed as
//!     `[N, C, O1, k1, O2, k2, …]`; one broadcast Equal of the indices against a constant position grid and one
//!     Where place dY, then a reshape. No convolution, no scatter.
//!   * Any other window: the same Equal/Where per kernel offset gives `[N·C, K, *O]` (K = kernel volume), and a
//!     ConvTranspose with one-hot kernels adds every offset's contributions back into place (overlaps sum).
//! - AveragePool: tiling windows broadcast dY / K over each window (Expand); otherwise a ConvTranspose with a
//!   kernel of ones, dY divided first by each window's count (a constant when padding is excluded).
//! - GlobalAveragePool: dY / (spatial volume) expanded over the input.
//!
//! Only nodes are appended; nothing runs here.

use super::super::custom_op;
use super::super::emit::Emitter;
use super::super::error::TrainError;
use super::super::graph::{DNode, Op, PoolAttrs};
use super::super::proto::{attr_i, attr_ints, node};

/// Name of the indices output the forward MaxPool emits in training mode.
pub fn indices_name(output: &str) -> String {
    format!("{output}__fedge_indices")
}

fn ints(v: &[usize]) -> Vec<i64> {
    v.iter().map(|x| *x as i64).collect()
}

fn tiling(p: &PoolAttrs, xs: &[usize]) -> bool {
    (0..p.kernel.len())
        .all(|i| p.kernel[i] == p.strides[i] && p.pads[i] == (0, 0) && xs[2 + i].is_multiple_of(p.kernel[i]))
}

/// `[N, C, O1, k1, O2, k2, …]` for a tiling pool.
fn tiled_shape(xs: &[usize], ys: &[usize], k: &[usize]) -> Vec<usize> {
    let mut s = vec![xs[0], xs[1]];
    for i in 0..k.len() {
        s.push(ys[2 + i]);
        s.push(k[i]);
    }
    s
}

/// `[N, C, O1, 1, O2, 1, …]`.
fn tiled_out_shape(ys: &[usize]) -> Vec<usize> {
    let mut s = vec![ys[0], ys[1]];
    for d in &ys[2..] {
        s.push(*d);
        s.push(1);
    }
    s
}

/// ConvTranspose of `t` (`[N·C, K_in, *O]`) with `kernel` (`[K_in, 1, *K]`) back to `[N, C, *S]`.
fn scatter_back(e: &mut Emitter, t: &str, kernel: &str, p: &PoolAttrs, xs: &[usize], ys: &[usize]) -> String {
    let sp = p.kernel.len();
    let mut output_padding = Vec::with_capacity(sp);
    for i in 0..sp {
        let covered = p.strides[i] * (ys[2 + i] - 1) + p.kernel[i];
        output_padding.push(xs[2 + i] as i64 + p.pads[i].0 as i64 + p.pads[i].1 as i64 - covered as i64);
    }
    let pads: Vec<i64> = p.pads.iter().map(|q| q.0 as i64).chain(p.pads.iter().map(|q| q.1 as i64)).collect();
    let dx = e.op(
        "ConvTranspose",
        &[t, kernel],
        vec![
            attr_ints("kernel_shape", &ints(&p.kernel)),
            attr_ints("strides", &ints(&p.strides)),
            attr_ints("pads", &pads),
            attr_ints("output_padding", &output_padding),
            attr_i("group", 1),
        ],
    );
    e.reshape(&dx, xs)
}

pub fn backward(e: &mut Emitter, n: &DNode, dy: &str) -> Result<Vec<Option<String>>, TrainError> {
    let (xs, ys) = (&n.in_shapes[0], &n.out_shape);
    let plane: Vec<usize> = xs[2..].to_vec();
    let nc = xs[0] * xs[1];
    let dx = match &n.op {
        Op::GlobalAveragePool => {
            let vol: usize = plane.iter().product();
            let s = e.scale(dy, 1.0 / vol as f32);
            let shape = e.const_i(&[xs.len()], &ints(xs));
            e.op("Expand", &[&s, &shape], vec![])
        }
        Op::AveragePool(p) => {
            let kvol: usize = p.kernel.iter().product();
            if tiling(p, xs) {
                let s = e.scale(dy, 1.0 / kvol as f32);
                let r = e.reshape(&s, &tiled_out_shape(ys));
                let shape = tiled_shape(xs, ys, &p.kernel);
                let sh = e.const_i(&[shape.len()], &ints(&shape));
                let x = e.op("Expand", &[&r, &sh], vec![]);
                e.reshape(&x, xs)
            } else {
                // Count of the input positions each window averages over.
                let counts = window_counts(p, &plane, &ys[2..]);
                let mut cshape = vec![1, 1];
                cshape.extend(&ys[2..]);
                let inv: Vec<f32> = counts.iter().map(|c| 1.0 / *c as f32).collect();
                let inv = e.const_f(&cshape, &inv);
                let s = e.op("Mul", &[dy, &inv], vec![]);
                let mut flat = vec![nc, 1];
                flat.extend(&ys[2..]);
                let s = e.reshape(&s, &flat);
                let mut kshape = vec![1, 1];
                kshape.extend(&p.kernel);
                let ones = e.const_f(&kshape, &vec![1.0; kvol]);
                scatter_back(e, &s, &ones, p, xs, ys)
            }
        }
        Op::MaxPool(_) => {
            let out = e.fresh(custom_op::MAX_POOL_GRAD);
            let mut node = node(
                custom_op::MAX_POOL_GRAD,
                &out,
                &[&indices_name(&n.output), dy],
                &[&out],
                vec![attr_ints("input_shape", &ints(xs))],
            );
            node.domain = custom_op::DOMAIN.into();
            e.nodes.push(node);
            out
        }
        _ => return Err(TrainError::invalid(format!("{} is not a pooling op", n.op_type))),
    };
    Ok(vec![Some(dx)])
}

/// For every output position of an average pool, how many values it divides by.
fn window_counts(p: &PoolAttrs, plane: &[usize], out: &[usize]) -> Vec<usize> {
    let sp = plane.len();
    let kvol: usize = p.kernel.iter().product();
    let ovol: usize = out.iter().product();
    let ostr = super::super::shapes::strides_of(out);
    (0..ovol)
        .map(|o| {
            if p.count_include_pad {
                return kvol;
            }
            (0..sp)
                .map(|i| {
                    let oi = (o / ostr[i]) % out[i];
                    let start = (oi * p.strides[i]) as i64 - p.pads[i].0 as i64;
                    let end = start + p.kernel[i] as i64;
                    (end.min(plane[i] as i64) - start.max(0)).max(0) as usize
                })
                .product::<usize>()
        })
        .collect()
}
