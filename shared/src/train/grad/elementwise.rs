//! Gradients of the broadcasting binary operators Add, Sub, Mul and Div.
//!
//! Every input gradient is summed back to that input's own shape; nothing here assumes equal shapes.

use super::super::emit::Emitter;
use super::super::error::TrainError;
use super::super::graph::{DNode, Op};

pub fn backward(e: &mut Emitter, n: &DNode, dy: &str, needs: &[bool]) -> Result<Vec<Option<String>>, TrainError> {
    let (a, b) = (n.inputs[0].as_str(), n.inputs[1].as_str());
    let (sa, sb, so) = (&n.in_shapes[0], &n.in_shapes[1], &n.out_shape);
    let mut out = vec![None, None];
    let (ga, gb) = match n.op {
        Op::Add => (dy.to_string(), dy.to_string()),
        Op::Sub => {
            let gb = if needs[1] { e.op("Neg", &[dy], vec![]) } else { String::new() };
            (dy.to_string(), gb)
        }
        Op::Mul => {
            let ga = if needs[0] { e.op("Mul", &[dy, b], vec![]) } else { String::new() };
            let gb = if needs[1] { e.op("Mul", &[dy, a], vec![]) } else { String::new() };
            (ga, gb)
        }
        Op::Div => {
            let ga = if needs[0] { e.op("Div", &[dy, b], vec![]) } else { String::new() };
            let gb = if needs[1] {
                // d(a/b)/db = -(a/b)/b = -y/b
                let t = e.op("Mul", &[dy, &n.output], vec![]);
                let t = e.op("Div", &[&t, b], vec![]);
                e.op("Neg", &[&t], vec![])
            } else {
                String::new()
            };
            (ga, gb)
        }
        _ => return Err(TrainError::invalid(format!("{} is not a binary elementwise op", n.op_type))),
    };
    if needs[0] {
        out[0] = Some(e.unbroadcast(&ga, so, sa));
    }
    if needs[1] {
        out[1] = Some(e.unbroadcast(&gb, so, sb));
    }
    Ok(out)
}
