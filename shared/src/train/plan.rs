//! Compiling an emitted ONNX model with tract into an optimised runnable plan, and moving f32 buffers in and out.
//!
//! The only place that talks to tract. It never builds graphs and never interprets results.

use tract_onnx::pb::ModelProto;
use tract_onnx::prelude::*;

use super::error::TrainError;

/// An optimised tract plan.
pub type Plan = TypedRunnableModel<TypedModel>;

/// Loads and optimises a model whose inputs all have concrete shapes.
pub fn compile(model: &ModelProto) -> Result<Plan, TrainError> {
    tract_onnx::onnx()
        .model_for_proto_model(model)
        .and_then(|m| m.into_optimized())
        .and_then(|m| m.into_runnable())
        .map_err(TrainError::tract)
}

/// A float tensor of `shape` from a buffer of exactly that many values.
pub fn tensor(shape: &[usize], data: &[f32]) -> Result<TValue, TrainError> {
    Tensor::from_shape(shape, data).map(|t| t.into_tvalue()).map_err(TrainError::tract)
}

/// The values of a float output.
pub fn values(v: &TValue) -> Result<&[f32], TrainError> {
    v.as_slice::<f32>().map_err(TrainError::tract)
}
