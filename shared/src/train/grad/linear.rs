//! Gradients of Gemm (every transA/transB/alpha/beta form) and MatMul (batched, with broadcasting).
//!
//! dA and dB are themselves Gemm/MatMul nodes with transA/transB flags; nothing here materialises a transpose for
//! 2-D operands (measured: a Gemm with transA on the activations costs no more in CPU time than transposing the
//! result of the swapped product, and tract's Transpose is slow).

use super::super::emit::Emitter;
use super::super::error::TrainError;
use super::super::graph::{DNode, Op};
use super::super::proto::{attr_f, attr_i};

pub fn backward(e: &mut Emitter, n: &DNode, dy: &str, needs: &[bool]) -> Result<Vec<Option<String>>, TrainError> {
    let (a, b) = (n.inputs[0].as_str(), n.inputs[1].as_str());
    let mut out = vec![None; n.inputs.len()];
    match n.op {
        Op::Gemm { alpha, beta, trans_a, trans_b } => {
            let gemm = |e: &mut Emitter, x: &str, y: &str, ta: bool, tb: bool| {
                e.op(
                    "Gemm",
                    &[x, y],
                    vec![attr_f("alpha", alpha), attr_i("transA", ta as i64), attr_i("transB", tb as i64)],
                )
            };
            // Y = alpha * A' B' + beta * C with A' = op(A), B' = op(B).
            if needs[0] {
                out[0] = Some(if trans_a {
                    // dA = (alpha dY B'^T)^T = alpha B' dY^T
                    gemm(e, b, dy, trans_b, true)
                } else {
                    // dA = alpha dY B'^T
                    gemm(e, dy, b, false, !trans_b)
                });
            }
            if needs[1] {
                out[1] = Some(if trans_b {
                    // dB = (alpha A'^T dY)^T = alpha dY^T A'
                    gemm(e, dy, a, true, trans_a)
                } else {
                    // dB = alpha A'^T dY
                    gemm(e, a, dy, !trans_a, false)
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
                let plain = |e: &mut Emitter, x: &str, y: &str, ta: bool, tb: bool| {
                    e.op("Gemm", &[x, y], vec![attr_i("transA", ta as i64), attr_i("transB", tb as i64)])
                };
                if needs[0] {
                    out[0] = Some(plain(e, dy, b, false, true));
                }
                if needs[1] {
                    out[1] = Some(plain(e, a, dy, true, false));
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
