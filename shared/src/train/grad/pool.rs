//! Gradient of pooling.
use super::super::emit::Emitter;
use super::super::error::TrainError;
use super::super::graph::DNode;

pub fn backward(_e: &mut Emitter, n: &DNode, _dy: &str) -> Result<Vec<Option<String>>, TrainError> {
    Err(TrainError::UnsupportedOp { op: n.op_type.clone(), node: n.name.clone() })
}
