//! [`Predictor`]: a forward-only tract plan, dropout as the identity and batch normalisation on the running
//! statistics. Built [`Predictor::new`], the weights are baked in as constants and the plan is optimised once per
//! model version (what the inference endpoint serves). Built [`Predictor::reading_weights`], the trainable weights
//! are the plan's inputs: one plan serves every version of the weights a trainer holds, which it reads in place
//! ([`WeightTensors`], shared, not copied) — what evaluation during training uses, so that evaluating never holds
//! the model's weights twice (a baked plan held four copies of the example CNN's first dense layer while it was
//! optimised: the flat weights, tract's constant, its clone and its packed form).
//!
//! 1-D and 2-D convolutions run as fedge's own `FedgeConv` (a tile of one image's output rows unfolded at a time,
//! as in the training step; tract's Conv unfolds the whole batch: 21 MB for the example CNN's second convolution
//! at batch 32), unless the predictor is built [`Predictor::with_standard_ops`], and so do 1-D and 2-D max pools
//! (`FedgeMaxPool`); dense layers stay tract's when their weights are baked in (tract packs constant weights
//! once), and are `FedgeGemm` when they read their weights as inputs. A Relu that alone reads a convolution's
//! output is applied by `FedgeConv` as it writes it.
//!
//! Inputs of any number of examples are run in chunks of the plan's batch size (the last chunk zero-padded; the
//! model treats examples independently, so padding never changes real outputs). No training state here.

use tract_onnx::prelude::*;

use super::autodiff::build_inference;
use super::emit::{Kernels, Precision};
use super::error::TrainError;
use super::plan::{Plan, compile, tensor, values};
use super::trainable::TrainableModel;
use super::weight_tensors::WeightTensors;

/// A compiled inference plan: for one set of weights, or reading them as inputs.
pub struct Predictor {
    plan: Plan,
    batch: usize,
    input_shape: Vec<usize>,
    output_len: usize,
    /// The shapes of the weights the plan reads as inputs, in [`TrainableModel::params`] order; empty when the
    /// weights are baked in.
    weight_inputs: Vec<Vec<usize>>,
}

impl std::fmt::Debug for Predictor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Predictor")
            .field("batch", &self.batch)
            .field("output_len", &self.output_len)
            .field("weight_inputs", &self.weight_inputs.len())
            .finish()
    }
}

impl Predictor {
    /// Compiles the plan for chunks of `batch` examples with fedge's own convolution.
    pub fn new(model: &TrainableModel, weights: &[f32], batch: usize) -> Result<Self, TrainError> {
        Self::build(model, Some(weights), batch, Kernels::Fedge)
    }

    /// Like [`Self::new`] with ONNX-standard operators only (tract's Conv and MaxPool), for checking fedge's against.
    pub fn with_standard_ops(model: &TrainableModel, weights: &[f32], batch: usize) -> Result<Self, TrainError> {
        Self::build(model, Some(weights), batch, Kernels::Standard)
    }

    /// Compiles a plan for chunks of `batch` examples that reads `model`'s trainable weights as inputs: run it with
    /// [`Self::predict_with`] on any weights of the model. The weights `model` freezes stay constants.
    pub fn reading_weights(model: &TrainableModel, batch: usize) -> Result<Self, TrainError> {
        Self::build(model, None, batch, Kernels::Fedge)
    }

    fn build(
        model: &TrainableModel,
        weights: Option<&[f32]>,
        batch: usize,
        kernels: Kernels,
    ) -> Result<Self, TrainError> {
        if batch == 0 {
            return Err(TrainError::shape("the batch size must be at least 1"));
        }
        if let Some(w) = weights {
            model.check_weights(w)?;
        }
        let weight_inputs = match weights {
            Some(_) => vec![],
            None => model.param_shapes(),
        };
        // The resolved graph (a copy of baked weights) is dropped before tract parses the protobuf (another).
        let proto = build_inference(&model.resolve(batch, weights)?, model.input_name(), &weight_inputs, kernels)?;
        let plan = compile(proto)?;
        Ok(Predictor {
            plan,
            batch,
            input_shape: model.input_shape().to_vec(),
            output_len: model.output_len(),
            weight_inputs: weight_inputs.into_iter().map(|(_, shape)| shape).collect(),
        })
    }

    /// Outputs (logits) for `x.len() / input_len` examples, `output_len` per example, from the baked-in weights.
    pub fn predict(&self, x: &[f32]) -> Result<Vec<f32>, TrainError> {
        if !self.weight_inputs.is_empty() {
            return Err(TrainError::invalid("this plan reads its weights as inputs: predict with them"));
        }
        self.run_chunks(x, &[])
    }

    /// Outputs for `x` from `weights` (the plan must have been built [`Self::reading_weights`] for their model).
    /// The weight tensors are shared with the plan while it runs, never copied.
    pub fn predict_with(&self, weights: &WeightTensors, x: &[f32]) -> Result<Vec<f32>, TrainError> {
        if self.weight_inputs.is_empty() {
            return Err(TrainError::invalid("this plan has its weights baked in: it takes no others"));
        }
        let inputs = weights.inputs(Precision::F32)?;
        let fits = inputs.len() == self.weight_inputs.len()
            && inputs.iter().zip(&self.weight_inputs).all(|(t, shape)| t.shape() == shape.as_slice());
        if !fits {
            return Err(TrainError::shape(format!(
                "{} weight tensors do not have the shapes of the plan's {} weight inputs",
                inputs.len(),
                self.weight_inputs.len()
            )));
        }
        self.run_chunks(x, &inputs)
    }

    /// Runs `x` in chunks of the plan's batch, each with `weights` after it.
    fn run_chunks(&self, x: &[f32], weights: &[TValue]) -> Result<Vec<f32>, TrainError> {
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
            let inputs: TVec<TValue> = std::iter::once(input).chain(weights.iter().cloned()).collect();
            let res = self.plan.run(inputs).map_err(TrainError::tract)?;
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

    /// Inputs of `n` examples of `model`, spread over [-1, 1).
    fn inputs(model: &TrainableModel, n: usize) -> Vec<f32> {
        let len = n * model.input_shape().iter().product::<usize>();
        (0..len).map(|i| ((i * 7919) % 2000) as f32 / 1000.0 - 1.0).collect()
    }

    #[test]
    fn a_plan_reading_its_weights_predicts_what_the_plan_with_them_baked_in_predicts() {
        for (model, batch) in [(builder::mnist_cnn(1), 3), (builder::mnist_2nn(1), 4)] {
            let model = TrainableModel::from_onnx_bytes(&model).unwrap();
            let w = model.initial_weights();
            // Other weights than the model's own, so that the plan cannot be using the initializers it was read from.
            let w: Vec<f32> = w.iter().enumerate().map(|(i, v)| v * 0.9 + ((i % 13) as f32 - 6.0) * 1e-3).collect();
            let x = inputs(&model, 7);
            let baked = Predictor::new(&model, &w, batch).unwrap().predict(&x).unwrap();
            let reading = Predictor::reading_weights(&model, batch).unwrap();
            let tensors = WeightTensors::from_flat(&model, &w).unwrap();
            let got = reading.predict_with(&tensors, &x).unwrap();
            assert_eq!(got.len(), baked.len());
            for (a, b) in got.iter().zip(&baked) {
                assert!((a - b).abs() <= 1e-4 * (1.0 + b.abs()), "{a} against {b}");
            }
            // One plan, any version of the weights.
            let other = WeightTensors::from_flat(&model, &model.initial_weights()).unwrap();
            let want = Predictor::new(&model, &model.initial_weights(), batch).unwrap().predict(&x).unwrap();
            let got = reading.predict_with(&other, &x).unwrap();
            assert!(got.iter().zip(&want).all(|(a, b)| (a - b).abs() <= 1e-4 * (1.0 + b.abs())));
        }
    }

    #[test]
    fn a_plan_reading_its_weights_runs_dense_layers_as_fedge_gemm_and_refuses_to_predict_without_fitting_weights() {
        let model = TrainableModel::from_onnx_bytes(&builder::mnist_cnn(1)).unwrap();
        let reading = Predictor::reading_weights(&model, 2).unwrap();
        let ops = op_names(&reading);
        assert_eq!(ops.iter().filter(|n| *n == dense_ops::GEMM).count(), 2, "{ops:?}");
        assert_eq!(ops.iter().filter(|n| *n == conv_ops::CONV).count(), 2, "{ops:?}");
        let x = inputs(&model, 2);
        assert!(matches!(reading.predict(&x), Err(TrainError::InvalidModel(_))));
        let mlp = TrainableModel::from_onnx_bytes(&builder::mnist_2nn(1)).unwrap();
        let wrong = WeightTensors::from_flat(&mlp, &mlp.initial_weights()).unwrap();
        assert!(matches!(reading.predict_with(&wrong, &x), Err(TrainError::Shape(_))));
        let baked = Predictor::new(&model, &model.initial_weights(), 2).unwrap();
        let right = WeightTensors::from_flat(&model, &model.initial_weights()).unwrap();
        assert!(matches!(baked.predict_with(&right, &x), Err(TrainError::InvalidModel(_))));
    }

    #[test]
    fn a_relu_after_a_fedge_convolution_is_the_convolution_s_own() {
        // The example CNN's three Relus: the two after its convolutions are written by `FedgeConv` (attribute
        // `relu`), the dense layer's stays a node; the standard plan keeps all three.
        let model = TrainableModel::from_onnx_bytes(&builder::mnist_cnn(1)).unwrap();
        let g = model.resolve(1, Some(&model.initial_weights())).unwrap();
        let count = |kernels| {
            let proto = build_inference(&g, model.input_name(), &[], kernels).unwrap();
            let nodes = proto.graph.unwrap().node;
            let relus = nodes.iter().filter(|n| n.op_type == "Relu").count();
            let fused = nodes
                .iter()
                .filter(|n| n.op_type == conv_ops::CONV && n.attribute.iter().any(|a| a.name == "relu" && a.i == 1))
                .count();
            (relus, fused)
        };
        assert_eq!(count(Kernels::Fedge), (1, 2));
        assert_eq!(count(Kernels::Standard), (3, 0));
    }
}
