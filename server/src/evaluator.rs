//! Server-side evaluation of a global model on a held-out test set, run on a blocking thread after each round.
//!
//! The [`Evaluator`] trait keeps the core independent of how evaluation is done; [`TractEvaluator`] is the real one
//! (tract, the same engine the agents use). Evaluation never changes a model and never touches the network.

use fedge_shared::data::Dataset;
use fedge_shared::train::TrainableModel;

/// Test-set metrics of one model version.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EvalMetrics {
    pub loss: f32,
    pub accuracy: f32,
}

/// Evaluates a model's weights.
pub trait Evaluator: Send + Sync {
    fn evaluate(&self, onnx: &[u8], weights: &[f32]) -> anyhow::Result<EvalMetrics>;
}

/// The initial weights stored in an ONNX graph, in the training engine's parameter order.
pub fn initial_weights(onnx: &[u8]) -> anyhow::Result<Vec<f32>> {
    Ok(TrainableModel::from_onnx_bytes(onnx)?.initial_weights())
}

/// Evaluates with tract on a labelled test set.
pub struct TractEvaluator {
    pub data: Dataset,
    pub batch: usize,
}

impl Evaluator for TractEvaluator {
    fn evaluate(&self, onnx: &[u8], weights: &[f32]) -> anyhow::Result<EvalMetrics> {
        let model = TrainableModel::from_onnx_bytes(onnx)?;
        let s = fedge_shared::train::local::evaluate(&model, weights, &self.data, self.batch)?;
        Ok(EvalMetrics { loss: s.loss, accuracy: s.accuracy })
    }
}
