//! Gradients of the unary activations: Relu, LeakyRelu, Sigmoid, Tanh, Softmax and LogSoftmax.
//!
//! Each rule reads the forward output (or input) already computed by the forward pass; none recomputes it.

use super::super::emit::Emitter;
use super::super::error::TrainError;
use super::super::graph::{DNode, Op};

pub fn backward(e: &mut Emitter, n: &DNode, dy: &str) -> Result<Vec<Option<String>>, TrainError> {
    let x = n.inputs[0].as_str();
    let y = n.output.as_str();
    let g = match n.op {
        Op::Relu => {
            // y >= 0, so sign(y) is the indicator of x > 0.
            let s = e.op("Sign", &[y], vec![]);
            e.op("Mul", &[dy, &s], vec![])
        }
        Op::LeakyRelu { alpha } => {
            let zero = e.scalar(0.0);
            let pos = e.op("Greater", &[x, &zero], vec![]);
            let neg = e.scale(dy, alpha);
            e.op("Where", &[&pos, dy, &neg], vec![])
        }
        Op::Sigmoid => {
            let one = e.scalar(1.0);
            let t = e.op("Sub", &[&one, y], vec![]);
            let t = e.op("Mul", &[y, &t], vec![]);
            e.op("Mul", &[dy, &t], vec![])
        }
        Op::Tanh => {
            let one = e.scalar(1.0);
            let sq = e.op("Mul", &[y, y], vec![]);
            let t = e.op("Sub", &[&one, &sq], vec![]);
            e.op("Mul", &[dy, &t], vec![])
        }
        Op::Softmax { axis } => {
            // dx = y * (dy - sum(dy * y))
            let p = e.op("Mul", &[dy, y], vec![]);
            let s = e.reduce_sum(&p, &[axis], true);
            let d = e.op("Sub", &[dy, &s], vec![]);
            e.op("Mul", &[y, &d], vec![])
        }
        Op::LogSoftmax { axis } => {
            // dx = dy - softmax(x) * sum(dy)
            let s = e.reduce_sum(dy, &[axis], true);
            let p = e.op("Exp", &[y], vec![]);
            let t = e.op("Mul", &[&p, &s], vec![]);
            e.op("Sub", &[dy, &t], vec![])
        }
        _ => return Err(TrainError::invalid(format!("{} is not an activation", n.op_type))),
    };
    Ok(vec![Some(g)])
}
