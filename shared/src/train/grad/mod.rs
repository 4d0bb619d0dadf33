//! Reverse-mode rules: for one forward node and the gradient of its output, the ONNX nodes that compute the
//! gradients of its inputs. One file per operator family.
//!
//! Rules only append nodes through the [`Emitter`]; they never run anything and never see runtime data.

mod activation;
mod conv;
mod elementwise;
mod gather;
mod linear;
mod norm;
mod pointwise;
mod pool;
mod reduce;
mod reshape;
mod slice;

use std::collections::HashMap;

pub use pool::indices_name;
pub use slice::{Piece, gather as gather_slices};

use super::emit::Emitter;
use super::error::TrainError;
use super::graph::{DNode, Graph, Op};

/// What the rules may read besides the node: the graph (constants, shapes) and the dropout masks by node output.
pub struct Ctx<'a> {
    pub graph: &'a Graph,
    pub masks: &'a HashMap<String, String>,
}

/// Emits the gradients of `n`'s inputs given `dy`, the gradient of its output. `needs[i]` says whether input `i`
/// needs one; the result has one entry per input (`None` where not needed). `pending[i]` is an earlier gradient
/// contribution to input `i` that the rule may fold into its own (taking it; a dense product adds into it); the
/// caller keeps what is left.
pub fn backward(
    e: &mut Emitter,
    ctx: &Ctx<'_>,
    n: &DNode,
    dy: &str,
    needs: &[bool],
    pending: &mut [Option<String>],
) -> Result<Vec<Option<String>>, TrainError> {
    match &n.op {
        Op::Gemm { .. } | Op::MatMul => linear::backward(e, n, dy, needs, pending),
        Op::Add | Op::Sub | Op::Mul | Op::Div => elementwise::backward(e, n, dy, needs),
        Op::Relu | Op::LeakyRelu { .. } | Op::Sigmoid | Op::Tanh | Op::Softmax { .. } | Op::LogSoftmax { .. } => {
            activation::backward(e, n, dy)
        }
        Op::Reshape | Op::Identity | Op::Transpose { .. } | Op::Concat { .. } => reshape::backward(e, n, dy, needs),
        Op::Dropout { .. } => Ok(vec![Some(match ctx.masks.get(&n.output) {
            Some(mask) => e.op("Mul", &[dy, mask], vec![]),
            None => dy.to_string(),
        })]),
        Op::BatchNorm { .. } => norm::backward(e, ctx, n, dy, needs),
        Op::Conv(_) => conv::backward(e, n, dy, needs),
        Op::MaxPool(_) | Op::AveragePool(_) | Op::GlobalAveragePool => pool::backward(e, n, dy),
        Op::Pow { .. }
        | Op::Sqrt
        | Op::Exp
        | Op::Erf
        | Op::Neg
        | Op::Clip { .. }
        | Op::HardSigmoid { .. }
        | Op::HardSwish => pointwise::backward(e, n, dy),
        Op::Reduce { .. } => reduce::backward(e, n, dy),
        Op::Expand { .. } => Ok(vec![Some(e.unbroadcast(dy, &n.out_shape, &n.in_shapes[0]))]),
        Op::Gather { .. } => gather::backward(e, ctx, n, dy, needs),
        Op::LayerNorm { .. } => norm::layer_norm_backward(e, n, dy, needs),
        Op::Slice { .. } | Op::Pad { .. } => slice::backward(e, n, dy),
        Op::GruCell => super::cell_emit::gru_backward(e, n, dy, needs),
        // Its two outputs' gradients go to `cell_emit::lstm_backward` together (`autodiff`).
        Op::LstmCell => Err(TrainError::invalid(format!("node {}: an LSTM step has two output gradients", n.name))),
    }
}
