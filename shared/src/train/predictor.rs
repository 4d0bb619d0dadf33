//! [`Predictor`]: a forward-only tract plan with the weights baked in as constants, optimised once per model
//! version; dropout is the identity and batch normalisation uses the running statistics. 1-D and 2-D convolutions
//! run as fedge's own `FedgeConv` (a tile of one image's output rows unfolded at a time, as in the training step;
//! tract's Conv unfolds the whole batch: 21 MB for the example CNN's second convolution at batch 32), unless the
//! predictor is built [`Predictor::with_standard_ops`], and so do 1-D and 2-D max pools (`FedgeMaxPool`); dense
//! layers stay tract's, whose constant weights tract packs once.
//!
//! Inputs of any number of examples are run in chunks of the plan's batch size (the last chunk zero-padded; the
//! model treats examples independently, so padding never changes real outputs). No training state here.

use tract_onnx::prelude::*;

use super::autodiff::build_inference;
use super::emit::Kernels;
use super::error::TrainError;
use super::plan::{Plan, compile, tensor, values};
use super::trainable::TrainableModel;

/// A compiled inference plan for one set of weights.
pub struct Predictor {
    plan: Plan,
    batch: usize,
    input_shape: Vec<usize>,
    output_len: usize,
}

impl std::fmt::Debug for Predictor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Predictor").field("batch", &self.batch).field("output_len", &self.output_len).finish()
    }
}

impl Predictor {
    /// Compiles the plan for chunks of `batch` examples with fedge's own convolution.
    pub fn new(model: &TrainableModel, weights: &[f32], batch: usize) -> Result<Self, TrainError> {
        Self::build(model, weights, batch, Kernels::Fedge)
    }

    /// Like [`Self::new`] with ONNX-standard operators only (tract's Conv and MaxPool), for checking fedge's against.
    pub fn with_standard_ops(model: &TrainableModel, weights: &[f32], batch: usize) -> Result<Self, TrainError> {
        Self::build(model, weights, batch, Kernels::Standard)
    }

    fn build(model: &TrainableModel, weights: &[f32], batch: usize, kernels: Kernels) -> Result<Self, TrainError> {
        if batch == 0 {
            return Err(TrainError::shape("the batch size must be at least 1"));
        }
        model.check_weights(weights)?;
        // The resolved graph (a copy of the weights) is dropped before tract parses the protobuf (another).
        let proto = build_inference(&model.resolve(batch, Some(weights))?, model.input_name(), kernels)?;
        let plan = compile(proto)?;
        Ok(Predictor { plan, batch, input_shape: model.input_shape().to_vec(), output_len: model.output_len() })
    }

    /// Outputs (logits) for `x.len() / input_len` examples, `output_len` per example.
    pub fn predict(&self, x: &[f32]) -> Result<Vec<f32>, TrainError> {
        let il: usize = self.input_shape.iter().product();
        if il == 0 || !x.len().is_multiple_of(il) {
            return Err(TrainError::shape(format!("{} inputs are not a whole number of examples of {il}", x.len())));
        }
        let n = x.len() / il;
        let mut out = Vec::with_capacity(n * self.output_len);
        let mut shape = vec![self.batch];
        shape.extend(&self.input_shape);
        let mut padded = vec![];
        for chunk in x.chunks(self.batch * il) {
            let rows = chunk.len() / il;
            let input = if rows == self.batch {
                tensor(&shape, chunk)?
            } else {
                padded.clear();
                padded.extend_from_slice(chunk);
                padded.resize(self.batch * il, 0.0);
                tensor(&shape, &padded)?
            };
            let res = self.plan.run(tvec![input]).map_err(TrainError::tract)?;
            let y = values(res.first().ok_or_else(|| TrainError::Tract("no output".into()))?)?;
            let want = rows * self.output_len;
            out.extend_from_slice(y.get(..want).ok_or_else(|| TrainError::Tract("output too short".into()))?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::{builder, conv_ops, dense_ops, pool_ops};

    fn op_names(p: &Predictor) -> Vec<String> {
        p.plan.model().nodes().iter().map(|n| n.op.name().to_string()).collect()
    }

    #[test]
    fn convolutions_and_pools_run_as_fedge_s_operators_and_dense_layers_as_tract_s_unless_standard_ops_are_asked_for() {
        let model = TrainableModel::from_onnx_bytes(&builder::mnist_cnn(1)).unwrap();
        let w = model.initial_weights();
        let fedge = op_names(&Predictor::new(&model, &w, 1).unwrap());
        let standard = op_names(&Predictor::with_standard_ops(&model, &w, 1).unwrap());
        assert_eq!(fedge.iter().filter(|n| *n == conv_ops::CONV).count(), 2, "{fedge:?}");
        assert_eq!(fedge.iter().filter(|n| *n == pool_ops::MAX_POOL).count(), 2, "{fedge:?}");
        assert!(!fedge.iter().any(|n| n == dense_ops::GEMM), "{fedge:?}");
        let ours = [conv_ops::CONV, pool_ops::MAX_POOL, dense_ops::GEMM];
        assert!(!standard.iter().any(|n| ours.contains(&n.as_str())), "{standard:?}");
    }
}
