//! Compiling an emitted ONNX model with tract into an optimised runnable plan, and moving f32 buffers in and out.
//!
//! The only place that talks to tract. It never builds graphs and never interprets results.

use std::sync::OnceLock;

use tract_onnx::pb::ModelProto;
use tract_onnx::prelude::*;

use super::cell_op::load_cell;
use super::conv_ops;
use super::custom_op;
use super::dense_ops;
use super::emit::Precision;
use super::error::TrainError;
use super::gru_op::{self, GruCell};
use super::loss_op;
use super::lstm_op::{self, LstmCell};
use super::pool_ops;

/// An optimised tract plan.
pub type Plan = TypedRunnableModel<TypedModel>;

/// tract's ONNX loader with fedge's own operators registered.
fn loader() -> &'static tract_onnx::Onnx {
    static LOADER: OnceLock<tract_onnx::Onnx> = OnceLock::new();
    LOADER.get_or_init(|| {
        let mut onnx = tract_onnx::onnx();
        onnx.op_register.insert(custom_op::MAX_POOL_GRAD, custom_op::load);
        onnx.op_register.insert(conv_ops::CONV, conv_ops::load_forward);
        onnx.op_register.insert(conv_ops::CONV_INPUT_GRAD, conv_ops::load_input_grad);
        onnx.op_register.insert(conv_ops::CONV_WEIGHT_GRAD, conv_ops::load_weight_grad);
        onnx.op_register.insert(dense_ops::GEMM, dense_ops::load);
        onnx.op_register.insert(loss_op::SOFTMAX_CROSS_ENTROPY, loss_op::load);
        onnx.op_register.insert(pool_ops::MAX_POOL, pool_ops::load);
        onnx.op_register.insert(lstm_op::LSTM_CELL, load_cell::<LstmCell>);
        onnx.op_register.insert(lstm_op::LSTM_HIDDEN, load_cell::<LstmCell>);
        onnx.op_register.insert(gru_op::GRU_HIDDEN, load_cell::<GruCell>);
        onnx.op_register.insert(lstm_op::LSTM_CELL_GRAD, load_cell::<LstmCell>);
        onnx.op_register.insert(gru_op::GRU_CELL, load_cell::<GruCell>);
        onnx.op_register.insert(gru_op::GRU_CELL_GRAD, load_cell::<GruCell>);
        onnx
    })
}

/// Loads and optimises a model whose inputs all have concrete shapes. The protobuf is dropped once tract has
/// parsed it, before the optimisation: an inference model's protobuf holds a copy of every weight, and tract's
/// constant folding makes more (the CNN agent's peak memory is reached while its evaluation plan is built).
pub fn compile(model: ModelProto) -> Result<Plan, TrainError> {
    let parsed = loader().model_for_proto_model(&model).map_err(TrainError::tract)?;
    drop(model);
    parsed.into_optimized().and_then(|m| m.into_runnable()).map_err(TrainError::tract)
}

/// A float tensor of `shape` from a buffer of exactly that many values.
pub fn tensor(shape: &[usize], data: &[f32]) -> Result<TValue, TrainError> {
    Tensor::from_shape(shape, data).map(|t| t.into_tvalue()).map_err(TrainError::tract)
}

/// A float tensor in the graph's precision.
pub fn tensor_in(shape: &[usize], data: &[f32], precision: Precision) -> Result<TValue, TrainError> {
    match precision {
        Precision::F32 => tensor(shape, data),
        Precision::F64 => {
            let wide: Vec<f64> = data.iter().map(|x| *x as f64).collect();
            Tensor::from_shape(shape, &wide).map(|t| t.into_tvalue()).map_err(TrainError::tract)
        }
    }
}

/// A scalar float output of either precision.
pub fn scalar_out(v: &TValue) -> Result<f64, TrainError> {
    // The type is looked at first: a failed conversion builds an error (and may capture a backtrace) every step.
    if v.datum_type() == f64::datum_type() {
        return v.to_scalar::<f64>().copied().map_err(TrainError::tract);
    }
    v.to_scalar::<f32>().map(|x| *x as f64).map_err(TrainError::tract)
}

/// The values of a float output.
pub fn values(v: &TValue) -> Result<&[f32], TrainError> {
    v.as_slice::<f32>().map_err(TrainError::tract)
}
