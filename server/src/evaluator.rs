//! Server-side evaluation of a global model on a held-out test set, run on a blocking thread after each round.
//!
//! Optional: a server with no `[evaluation]` learns how the model does only from what agents report. The test set
//! is any data source `fedge_shared::data` reads (CSV, NumPy, image folder, IDX). The [`Evaluator`] trait keeps the
//! core independent of how evaluation is done; [`TractEvaluator`] is the real one (tract, the same engine the
//! agents use). Evaluation never changes a model and never touches the network.

use std::sync::Arc;

use anyhow::Context;
use fedge_shared::data::{self, Examples, Part, SharedExamples, SourceSpec, Subset};
use fedge_shared::train::{Loss, TrainableModel};

/// Test-set metrics of one model version.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EvalMetrics {
    /// Mean cross-entropy (classification) or mean squared error (regression).
    pub loss: f32,
    /// Classification only.
    pub accuracy: Option<f32>,
    /// Regression only.
    pub mse: Option<f32>,
}

/// Evaluates a model's weights.
pub trait Evaluator: Send + Sync {
    fn evaluate(&self, onnx: &[u8], weights: &[f32]) -> anyhow::Result<EvalMetrics>;
}

/// The initial weights stored in an ONNX graph, in the training engine's parameter order.
pub fn initial_weights(onnx: &[u8]) -> anyhow::Result<Vec<f32>> {
    Ok(TrainableModel::from_onnx_bytes(onnx)?.initial_weights())
}

/// The weight layout of an ONNX model: each trainable weight's name and place in the flat weight vector.
pub fn layout(onnx: &[u8]) -> anyhow::Result<Vec<fedge_shared::train::ParamInfo>> {
    Ok(TrainableModel::from_onnx_bytes(onnx)?.params().to_vec())
}

/// Evaluates with tract on a labelled test set.
pub struct TractEvaluator {
    pub data: SharedExamples,
    pub batch: usize,
}

impl TractEvaluator {
    /// An evaluator on `data` in batches of `batch`.
    pub fn new(data: impl Examples + Send + Sync + 'static, batch: usize) -> Self {
        TractEvaluator { data: Arc::new(data), batch }
    }

    /// An evaluator on the test part of the data `spec` describes (at most `limit` examples), reading targets as
    /// `loss` needs them: regression targets for `mse` on CSV or NumPy data, classes otherwise.
    pub fn open(spec: &SourceSpec, loss: Loss, limit: Option<usize>, batch: usize) -> anyhow::Result<Self> {
        let target = data::target_kind(data::format_of(spec)?, loss == Loss::MeanSquaredError, None);
        let test = data::open_part(spec, Part::Test, target)?.with_context(|| {
            format!("{}: no test part (test.csv, test.npz, test/ or t10k-* files)", spec.path.display())
        })?;
        let view = Subset::all(test);
        let view = match limit {
            Some(n) if n < view.len() => view.take(n),
            _ => view,
        };
        Ok(TractEvaluator { data: Arc::new(view), batch })
    }
}

impl Evaluator for TractEvaluator {
    fn evaluate(&self, onnx: &[u8], weights: &[f32]) -> anyhow::Result<EvalMetrics> {
        let model = TrainableModel::from_onnx_bytes(onnx)?;
        let s = fedge_shared::train::local::evaluate(&model, weights, &self.data, self.batch)?;
        Ok(EvalMetrics { loss: s.loss, accuracy: s.accuracy(), mse: s.mse })
    }
}
