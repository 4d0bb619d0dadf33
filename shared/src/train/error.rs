//! The training engine's error type.
//!
//! Every failure that can come from a model file, a caller's buffers or tract is reported here as a value; nothing
//! in the engine may panic on such input.

use thiserror::Error;

/// Why a model could not be turned into a training step, or why a step could not run.
#[derive(Debug, Error)]
pub enum TrainError {
    /// The model uses an operator (or an operator form) the engine cannot differentiate.
    #[error("unsupported operator {op} at node {node}")]
    UnsupportedOp { op: String, node: String },
    /// The model is malformed or uses a feature the engine refuses (missing input, non-float weights, ...).
    #[error("invalid model: {0}")]
    InvalidModel(String),
    /// A buffer handed to the engine has the wrong length or a tensor has an unexpected shape.
    #[error("shape mismatch: {0}")]
    Shape(String),
    /// tract refused or failed to run a graph.
    #[error("tract: {0}")]
    Tract(String),
}

impl TrainError {
    pub(crate) fn invalid(msg: impl Into<String>) -> Self {
        TrainError::InvalidModel(msg.into())
    }

    pub(crate) fn shape(msg: impl Into<String>) -> Self {
        TrainError::Shape(msg.into())
    }

    pub(crate) fn tract(e: impl std::fmt::Display) -> Self {
        // `{:#}` keeps anyhow's context chain on one line.
        TrainError::Tract(format!("{e:#}"))
    }
}
