//! Gradients of the elementwise maths PyTorch exports write: Pow (constant exponent), Sqrt, Exp, Erf (GELU), Neg,
//! Clip, HardSigmoid and HardSwish.
//!
//! Each rule reads the forward input or output already computed; none recomputes the forward op. Where a function
//! has a kink (Clip, HardSigmoid, HardSwish), the gradient at the kink is the one-sided value PyTorch uses.

use super::super::emit::Emitter;
use super::super::error::TrainError;
use super::super::graph::{DNode, Op};

pub fn backward(e: &mut Emitter, n: &DNode, dy: &str) -> Result<Vec<Option<String>>, TrainError> {
    let x = n.inputs[0].as_str();
    let y = n.output.as_str();
    let g = match n.op {
        Op::Pow { exponent } => {
            // d(x^p) = p x^(p-1)
            if exponent == 1.0 {
                return Ok(vec![Some(dy.to_string())]);
            }
            let local = if exponent == 2.0 {
                x.to_string()
            } else {
                let q = e.scalar(exponent - 1.0);
                e.op("Pow", &[x, &q], vec![])
            };
            let t = e.op("Mul", &[dy, &local], vec![]);
            e.scale(&t, exponent)
        }
        Op::Sqrt => {
            // d sqrt(x) = 1 / (2 sqrt(x))
            let t = e.op("Div", &[dy, y], vec![]);
            e.scale(&t, 0.5)
        }
        Op::Exp => e.op("Mul", &[dy, y], vec![]),
        Op::Erf => {
            // d erf(x) = 2 / sqrt(pi) exp(-x^2)
            let sq = e.op("Mul", &[x, x], vec![]);
            let neg = e.op("Neg", &[&sq], vec![]);
            let ex = e.op("Exp", &[&neg], vec![]);
            let t = e.op("Mul", &[dy, &ex], vec![]);
            e.scale(&t, std::f32::consts::FRAC_2_SQRT_PI)
        }
        Op::Neg => e.op("Neg", &[dy], vec![]),
        Op::Clip { min, max } => {
            // 1 strictly inside the bounds, 0 outside; PyTorch passes the gradient at the bounds themselves.
            let (lo, hi) = (e.scalar(min), e.scalar(max));
            let below = e.op("Less", &[x, &lo], vec![]);
            let above = e.op("Greater", &[x, &hi], vec![]);
            let out = e.op("Or", &[&below, &above], vec![]);
            let zero = e.scalar(0.0);
            e.op("Where", &[&out, &zero, dy], vec![])
        }
        Op::HardSigmoid { alpha, beta } => {
            // alpha where 0 < alpha x + beta < 1, else 0.
            let ax = e.scale(x, alpha);
            let b = e.scalar(beta);
            let t = e.op("Add", &[&ax, &b], vec![]);
            let (zero, one) = (e.scalar(0.0), e.scalar(1.0));
            let pos = e.op("Greater", &[&t, &zero], vec![]);
            let under = e.op("Less", &[&t, &one], vec![]);
            let inside = e.op("And", &[&pos, &under], vec![]);
            let g = e.scale(dy, alpha);
            e.op("Where", &[&inside, &g, &zero], vec![])
        }
        Op::HardSwish => {
            // 0 below -3, 1 above 3, (2x + 3) / 6 between.
            let (lo, hi) = (e.scalar(-3.0), e.scalar(3.0));
            let two_x = e.scale(x, 2.0);
            let three = e.scalar(3.0);
            let t = e.op("Add", &[&two_x, &three], vec![]);
            let mid = e.scale(&t, 1.0 / 6.0);
            let mid = e.op("Mul", &[dy, &mid], vec![]);
            let above = e.op("Greater", &[x, &hi], vec![]);
            let upper = e.op("Where", &[&above, dy, &mid], vec![]);
            let below = e.op("Less", &[x, &lo], vec![]);
            let zero = e.scalar(0.0);
            e.op("Where", &[&below, &zero, &upper], vec![])
        }
        _ => return Err(TrainError::invalid(format!("{} is not an elementwise function", n.op_type))),
    };
    Ok(vec![Some(g)])
}
