//! Gradients of Gemm (every transA/transB/alpha/beta form) and MatMul (batched, with broadcasting).
//!
//! dA and dB are themselves products with transA/transB flags: fedge's own `FedgeGemm` for matrices in a step
//! emitted with fedge's kernels (the transposed operand read in place, no copy), Gemm nodes in the standard form.
//! A gradient contribution already pending for the same input is added into by the product (C) rather than summed
//! later. Nothing here materialises a transpose for 2-D operands (measured: a Gemm with transA on the activations costs no
//! more in CPU time than transposing the result of the swapped product, and tract's Transpose is slow).

use super::super::emit::{Emitter, Kernels, Precision};
use super::super::error::TrainError;
use super::super::graph::{DNode, Op};
use super::super::proto::{attr_f, attr_i};

/// `alpha·op(X)·op(Y)` for matrices X and Y of stored shapes `sx` and `sy`, plus `acc` (another gradient
/// contribution of the product's shape) when given: then the product adds into it (C with beta 1; fedge's own
/// operator writes into its buffer) instead of a separate sum reading both.
#[allow(clippy::too_many_arguments)]
fn product(
    e: &mut Emitter,
    x: &str,
    sx: &[usize],
    y: &str,
    sy: &[usize],
    ta: bool,
    tb: bool,
    alpha: f32,
    acc: Option<String>,
) -> String {
    let inputs: Vec<&str> = [x, y].into_iter().chain(acc.as_deref()).collect();
    if e.kernels == Kernels::Fedge {
        return e.fedge_gemm(&inputs, sx, sy, (ta, tb), alpha, 1.0, None);
    }
    let flags = vec![attr_i("transA", ta as i64), attr_i("transB", tb as i64)];
    if e.precision == Precision::F64 {
        // tract 0.22 scales by alpha with an f32 constant, which an f64 product cannot always be multiplied by.
        let p = e.op("Gemm", &[x, y], flags);
        let p = e.scale(&p, alpha);
        return match acc {
            Some(acc) => e.op("Add", &[&p, &acc], vec![]),
            None => p,
        };
    }
    let mut attrs = flags;
    if alpha != 1.0 {
        attrs.insert(0, attr_f("alpha", alpha));
    }
    e.op("Gemm", &inputs, attrs)
}

/// The gradients of a Gemm's or MatMul's inputs. `pending[i]`, when set, is an earlier gradient contribution to
/// input `i` (another reader of the same tensor: a weight at every time step of an unrolled cell): a 2-D product
/// takes it (leaving `None`) and adds into it, so that the contributions accumulate in one buffer rather than all
/// staying alive for a sum at the end. What it does not take, the caller keeps.
pub fn backward(
    e: &mut Emitter,
    n: &DNode,
    dy: &str,
    needs: &[bool],
    pending: &mut [Option<String>],
) -> Result<Vec<Option<String>>, TrainError> {
    let (a, b) = (n.inputs[0].as_str(), n.inputs[1].as_str());
    let mut out = vec![None; n.inputs.len()];
    let mut take = |i: usize| pending.get_mut(i).and_then(Option::take);
    match n.op {
        Op::Gemm { alpha, beta, trans_a, trans_b } => {
            let (sa, sb, sy) = (&n.in_shapes[0], &n.in_shapes[1], &n.out_shape);
            // Y = alpha * A' B' + beta * C with A' = op(A), B' = op(B).
            if needs[0] {
                out[0] = Some(if trans_a {
                    // dA = (alpha dY B'^T)^T = alpha B' dY^T
                    product(e, b, sb, dy, sy, trans_b, true, alpha, take(0))
                } else {
                    // dA = alpha dY B'^T
                    product(e, dy, sy, b, sb, false, !trans_b, alpha, take(0))
                });
            }
            if needs[1] {
                out[1] = Some(if trans_b {
                    // dB = (alpha A'^T dY)^T = alpha dY^T A'
                    product(e, dy, sy, a, sa, true, trans_a, alpha, take(1))
                } else {
                    // dB = alpha A'^T dY
                    product(e, a, sa, dy, sy, !trans_a, false, alpha, take(1))
                });
            }
            if n.inputs.len() > 2 && needs[2] {
                let g = e.scale(dy, beta);
                out[2] = Some(e.unbroadcast(&g, &n.out_shape, &n.in_shapes[2]));
            }
        }
        Op::MatMul => {
            let (sa, sb) = (&n.in_shapes[0], &n.in_shapes[1]);
            if sa.len() == 2 && sb.len() == 2 {
                let sy = &n.out_shape;
                if needs[0] {
                    out[0] = Some(product(e, dy, sy, b, sb, false, true, 1.0, take(0)));
                }
                if needs[1] {
                    out[1] = Some(product(e, a, sa, dy, sy, true, false, 1.0, take(1)));
                }
            } else if sa.len() > 2 && sb.len() == 2 {
                // Rows times a matrix: the same products over the rows flattened, `[rows, K]·[K, N]`. One product
                // each (dB's depth is every row), not one per leading index and a sum over them.
                let (k, cols) = (sb[0], sb[1]);
                let rows: usize = sa[..sa.len() - 1].iter().product();
                let dy2 = e.reshape(dy, &[rows, cols]);
                if needs[0] {
                    let g = product(e, &dy2, &[rows, cols], b, sb, false, true, 1.0, None);
                    out[0] = Some(e.reshape(&g, sa));
                }
                if needs[1] {
                    let a2 = e.reshape(a, &[rows, k]);
                    out[1] = Some(product(e, &a2, &[rows, k], &dy2, &[rows, cols], true, false, 1.0, take(1)));
                }
            } else {
                let swap = |rank: usize| -> Vec<usize> {
                    let mut p: Vec<usize> = (0..rank).collect();
                    p.swap(rank - 2, rank - 1);
                    p
                };
                let ro = n.out_shape.len();
                if needs[0] {
                    let bt = e.transpose(b, &swap(sb.len()));
                    let g = e.op("MatMul", &[dy, &bt], vec![]);
                    let mut gs = n.out_shape.clone();
                    gs[ro - 1] = sa[sa.len() - 1];
                    out[0] = Some(e.unbroadcast(&g, &gs, sa));
                }
                if needs[1] {
                    let at = e.transpose(a, &swap(sa.len()));
                    let g = e.op("MatMul", &[&at, dy], vec![]);
                    let mut gs = n.out_shape.clone();
                    gs[ro - 2] = sb[sb.len() - 2];
                    out[1] = Some(e.unbroadcast(&g, &gs, sb));
                }
            }
        }
        _ => return Err(TrainError::invalid(format!("{} is not a linear op", n.op_type))),
    }
    Ok(out)
}
