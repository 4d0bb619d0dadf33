//! [`TrainStep`]: the compiled training-step graph for one model, loss and batch size, run once per batch.
//!
//! One tract plan is optimised per batch size actually seen: the full batch, and the size of a partial last batch
//! (cached, so an epoch with a remainder compiles two plans once, not one per epoch). Dropout masks are drawn here
//! from the caller's seed (ChaCha8), never from global randomness.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tract_onnx::prelude::*;

use super::autodiff::{StepGraph, build_step};
use super::emit::Precision;
use super::error::TrainError;
use super::forward::MaskInput;
use super::loss::{Labels, Loss, label_tensor};
use super::plan::{Plan, compile, copy_out, scalar_out, tensor_in};
use super::trainable::TrainableModel;

/// How many plans (batch sizes) a step keeps before dropping the least recently built one.
const MAX_PLANS: usize = 3;

struct SizedPlan {
    n: usize,
    /// The loss's `[rows, classes]` label matrix for these `n` examples.
    rows: usize,
    classes: usize,
    plan: Plan,
    masks: Vec<MaskInput>,
}

/// A compiled training step; `run` computes the mean loss and its gradient for one batch.
pub struct TrainStep {
    model: TrainableModel,
    loss: Loss,
    batch: usize,
    precision: Precision,
    plans: Vec<SizedPlan>,
}

impl std::fmt::Debug for TrainStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrainStep").field("loss", &self.loss).field("batch", &self.batch).finish()
    }
}

impl TrainStep {
    /// Builds and optimises the training step for batches of `batch` examples.
    pub fn new(model: &TrainableModel, loss: Loss, batch: usize) -> Result<Self, TrainError> {
        Self::with_precision(model, loss, batch, Precision::F32)
    }

    /// Like [`Self::new`], computing in `precision` inside the graph (weights, data and gradients stay f32 at the
    /// interface). [`Precision::F64`] is for verification: slower, but its loss is exact enough for finite
    /// differences.
    pub fn with_precision(
        model: &TrainableModel,
        loss: Loss,
        batch: usize,
        precision: Precision,
    ) -> Result<Self, TrainError> {
        if batch == 0 {
            return Err(TrainError::shape("the batch size must be at least 1"));
        }
        let mut step = TrainStep { model: model.clone(), loss, batch, precision, plans: vec![] };
        let plan = step.build(batch)?;
        step.plans.push(plan);
        Ok(step)
    }

    pub fn batch(&self) -> usize {
        self.batch
    }

    /// The training-step graph this step runs for `n` examples, as ONNX bytes (for inspection or for timing other
    /// runtimes). Inputs: data, labels (`[rows, C]` as [`Loss::layout`] gives, one-hot for the cross-entropies), the weights in
    /// [`TrainableModel::params`] order, then dropout masks; outputs: the mean loss, then each weight's gradient.
    /// Models with MaxPool use fedge's own `FedgeMaxPoolGrad` operator (domain `ai.fedge`).
    pub fn training_graph(&self, n: usize) -> Result<Vec<u8>, TrainError> {
        Ok(prost::Message::encode_to_vec(&self.step_graph(n)?.0.model))
    }

    /// The forward model resolved for `n` examples with its backward pass appended, and its label matrix's shape.
    fn step_graph(&self, n: usize) -> Result<(StepGraph, usize, usize), TrainError> {
        let g = self.model.resolve(n, None)?;
        let out = g.shapes.get(&g.output).cloned().unwrap_or_default();
        let (rows, classes) = self.loss.layout(&out);
        let sg = build_step(
            &g,
            self.model.input_name(),
            &self.model.param_shapes(),
            self.loss,
            rows,
            classes,
            self.precision,
        )?;
        Ok((sg, rows, classes))
    }

    fn build(&self, n: usize) -> Result<SizedPlan, TrainError> {
        let (sg, rows, classes) = self.step_graph(n)?;
        let plan = compile(&sg.model)?;
        Ok(SizedPlan { n, rows, classes, plan, masks: sg.masks })
    }

    fn plan_for(&mut self, n: usize) -> Result<&SizedPlan, TrainError> {
        let idx = match self.plans.iter().position(|p| p.n == n) {
            Some(i) => i,
            None => {
                let p = self.build(n)?;
                if self.plans.len() >= MAX_PLANS {
                    // Keep the full-batch plan (index 0), drop the oldest other one.
                    self.plans.remove(1);
                }
                self.plans.push(p);
                self.plans.len() - 1
            }
        };
        Ok(&self.plans[idx])
    }

    /// Runs one step on `n = x.len() / input_len` examples (1 ≤ n ≤ batch): returns the mean loss over them and
    /// writes d(mean loss)/d(weights) into `grads`, in [`TrainableModel::params`] order. Dropout masks are drawn
    /// from `dropout_seed`: the same seed gives the same masks.
    pub fn run(
        &mut self,
        weights: &[f32],
        x: &[f32],
        labels: Labels<'_>,
        dropout_seed: u64,
        grads: &mut [f32],
    ) -> Result<f32, TrainError> {
        self.run_precise(weights, x, labels, dropout_seed, grads).map(|l| l as f32)
    }

    /// [`Self::run`], returning the loss in the precision the graph computed it in.
    pub fn run_precise(
        &mut self,
        weights: &[f32],
        x: &[f32],
        labels: Labels<'_>,
        dropout_seed: u64,
        grads: &mut [f32],
    ) -> Result<f64, TrainError> {
        let precision = self.precision;
        let model = self.model.clone();
        model.check_weights(weights)?;
        if grads.len() != weights.len() {
            return Err(TrainError::shape(format!("{} gradient slots for {} weights", grads.len(), weights.len())));
        }
        let il = model.input_len();
        if il == 0 || x.is_empty() || !x.len().is_multiple_of(il) {
            return Err(TrainError::shape(format!("{} inputs are not a whole number of examples of {il}", x.len())));
        }
        let n = x.len() / il;
        if n > self.batch {
            return Err(TrainError::shape(format!("{n} examples exceed the batch size {}", self.batch)));
        }
        let loss = self.loss;
        let plan = self.plan_for(n)?;
        let (rows, c) = (plan.rows, plan.classes);
        let y = label_tensor(labels, loss, rows, c)?;
        let mut inputs: TVec<TValue> = TVec::with_capacity(2 + model.params().len() + plan.masks.len());
        let mut xs = vec![n];
        xs.extend(model.input_shape());
        inputs.push(tensor_in(&xs, x, precision)?);
        inputs.push(tensor_in(&[rows, c], &y, precision)?);
        for p in model.params() {
            inputs.push(tensor_in(&p.shape, &weights[p.offset..p.offset + p.len], precision)?);
        }
        let mut rng = ChaCha8Rng::seed_from_u64(dropout_seed);
        for m in &plan.masks {
            let keep = 1.0 - m.ratio;
            let scale = 1.0 / keep;
            let len: usize = m.shape.iter().product();
            let mask: Vec<f32> = (0..len).map(|_| if rng.r#gen::<f32>() < keep { scale } else { 0.0 }).collect();
            inputs.push(tensor_in(&m.shape, &mask, precision)?);
        }
        let outputs = plan.plan.run(inputs).map_err(TrainError::tract)?;
        let loss = scalar_out(outputs.first().ok_or_else(|| TrainError::Tract("the step returned no loss".into()))?)?;
        for (i, p) in model.params().iter().enumerate() {
            let g = outputs.get(i + 1).ok_or_else(|| TrainError::Tract("missing gradient output".into()))?;
            copy_out(g, &mut grads[p.offset..p.offset + p.len])?;
        }
        Ok(loss)
    }
}
