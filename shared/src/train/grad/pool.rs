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

use super::super::emit::Emitter;
use super::super::error::TrainError;
use super::super::graph::{DNode, Op, PoolAttrs};
use super::super::proto::{attr_i, attr_ints};

/// Name of the indices output the forward MaxPool emits in training mode.
pub fn indices_name(output: &str) -> String {
    format!("{output}__fedge_indices")
}

fn ints(v: &[usize]) -> Vec<i64> {
    v.iter().map(|x| *x as i64).collect()
}

fn tiling(p: &PoolAttrs, xs: &[usize]) -> bool {
    (0..p.kernel.len()).all(|i| p.kernel[i] == p.strides[i] && p.pads[i] == (0, 0) && xs[2 + i] % p.kernel[i] == 0)
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
    let sp = xs.len() - 2;
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
        Op::MaxPool(p) => {
            let idx = indices_name(&n.output);
            if tiling(p, xs) {
                // Position (flat inside the plane) of every element of the tiled view [1, 1, O1, k1, O2, k2, …].
                let tiled = tiled_shape(xs, ys, &p.kernel);
                let mut grid_shape = vec![1, 1];
                grid_shape.extend(&tiled[2..]);
                let pstr = super::super::shapes::strides_of(&plane);
                let total: usize = grid_shape.iter().product();
                let gstr = super::super::shapes::strides_of(&grid_shape);
                let grid: Vec<i64> = (0..total)
                    .map(|flat| {
                        let mut pos = 0;
                        for i in 0..sp {
                            let o = (flat / gstr[2 + 2 * i]) % grid_shape[2 + 2 * i];
                            let k = (flat / gstr[3 + 2 * i]) % grid_shape[3 + 2 * i];
                            pos += (o * p.strides[i] + k) * pstr[i];
                        }
                        pos as i64
                    })
                    .collect();
                let grid = e.const_i(&grid_shape, &grid);
                let ti = e.reshape(&idx, &tiled_out_shape(ys));
                let hit = e.op("Equal", &[&ti, &grid], vec![]);
                let tdy = e.reshape(dy, &tiled_out_shape(ys));
                let zero = e.scalar(0.0);
                let placed = e.op("Where", &[&hit, &tdy, &zero], vec![]);
                e.reshape(&placed, xs)
            } else {
                // For each kernel offset k and output o: the flat input position the window reads (-1 in padding).
                let kvol: usize = p.kernel.iter().product();
                let ovol: usize = ys[2..].iter().product();
                let kstr = super::super::shapes::strides_of(&p.kernel);
                let ostr = super::super::shapes::strides_of(&ys[2..]);
                let pstr = super::super::shapes::strides_of(&plane);
                let mut grid = Vec::with_capacity(kvol * ovol);
                for k in 0..kvol {
                    for o in 0..ovol {
                        let mut pos = 0i64;
                        let mut inside = true;
                        for i in 0..sp {
                            let ki = (k / kstr[i]) % p.kernel[i];
                            let oi = (o / ostr[i]) % ys[2 + i];
                            let at = (oi * p.strides[i] + ki) as i64 - p.pads[i].0 as i64;
                            inside &= at >= 0 && at < plane[i] as i64;
                            pos += at * pstr[i] as i64;
                        }
                        grid.push(if inside { pos } else { -1 });
                    }
                }
                let mut gshape = vec![1, kvol];
                gshape.extend(&ys[2..]);
                let grid = e.const_i(&gshape, &grid);
                let mut flat = vec![nc, 1];
                flat.extend(&ys[2..]);
                let fi = e.reshape(&idx, &flat);
                let hit = e.op("Equal", &[&fi, &grid], vec![]);
                let fdy = e.reshape(dy, &flat);
                let zero = e.scalar(0.0);
                let placed = e.op("Where", &[&hit, &fdy, &zero], vec![]);
                // One-hot kernels: offset k writes only at its own kernel position.
                let mut kshape = vec![kvol, 1];
                kshape.extend(&p.kernel);
                let mut onehot = vec![0.0; kvol * kvol];
                for k in 0..kvol {
                    onehot[k * kvol + k] = 1.0;
                }
                let kernel = e.const_f(&kshape, &onehot);
                scatter_back(e, &placed, &kernel, p, xs, ys)
            }
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
