//! [`TrainStep`]: the compiled training-step graph for one model, loss and batch size, run once per batch.
//!
//! One tract plan is optimised per batch size actually seen: the full batch, and the size of a partial last batch
//! (cached, so an epoch with a remainder compiles two plans once, not one per epoch). Dropout masks are drawn here
//! from the caller's seed (ChaCha8), never from global randomness.
//!
//! A step may split its batch into micro-batches (devices short of memory): the plan is compiled for the
//! micro-batch, run once per piece, and the pieces' gradients are summed weighted by their share of the batch, so
//! the result is the whole batch's mean-loss gradient (to rounding) while activations and convolution columns are
//! only a micro-batch large. The gradient stays in the tensors the plan wrote ([`Gradients`]): no gradient-sized
//! copy is made per step.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tract_onnx::prelude::*;

use super::autodiff::{StepGraph, build_step};
use super::emit::{Emitter, Kernels, Precision};
use super::error::TrainError;
use super::forward::MaskInput;
use super::loss::{Labels, Loss, label_tensor};
use super::plan::{Plan, compile, scalar_out, tensor_in};
use super::trainable::TrainableModel;
use super::weight_tensors::WeightTensors;

/// How many plans (batch sizes) a step keeps before dropping the least recently built one.
const MAX_PLANS: usize = 3;

/// The gradient of one step, as the tensors the training-step plan wrote: one f32 tensor per weight, in
/// [`TrainableModel::params`] order. A micro-batched step accumulates into its first piece's tensors.
pub struct Gradients {
    tensors: Vec<Tensor>,
}

impl std::fmt::Debug for Gradients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gradients").field("tensors", &self.tensors.len()).finish()
    }
}

impl Gradients {
    /// How many weight tensors the gradient covers.
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// The gradient of weight tensor `i` (empty past the last).
    pub fn part(&self, i: usize) -> &[f32] {
        self.tensors.get(i).and_then(|t| t.as_slice::<f32>().ok()).unwrap_or(&[])
    }

    /// Every weight tensor's gradient, in order: consecutive pieces of the flat gradient.
    pub fn parts(&self) -> impl Iterator<Item = &[f32]> + Clone {
        (0..self.tensors.len()).map(|i| self.part(i))
    }

    /// Whether every value is finite.
    pub fn all_finite(&self) -> bool {
        self.parts().all(|g| g.iter().all(|x| x.is_finite()))
    }

    /// Copies the flat gradient into `out` (whose length must be the number of weights).
    pub fn copy_to(&self, out: &mut [f32]) -> Result<(), TrainError> {
        let total: usize = self.parts().map(|g| g.len()).sum();
        if total != out.len() {
            return Err(TrainError::shape(format!("{} gradient slots for {total} weights", out.len())));
        }
        let mut offset = 0;
        for g in self.parts() {
            out[offset..offset + g.len()].copy_from_slice(g);
            offset += g.len();
        }
        Ok(())
    }
}

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
    /// Examples per run of the plan (`batch` unless the step splits its batches).
    micro: usize,
    precision: Precision,
    kernels: Kernels,
    plans: Vec<SizedPlan>,
}

impl std::fmt::Debug for TrainStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrainStep")
            .field("loss", &self.loss)
            .field("batch", &self.batch)
            .field("micro_batch", &self.micro)
            .finish()
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
        Self::create(model, loss, batch, batch, precision)
    }

    /// Like [`Self::new`], running each batch as micro-batches of at most `micro_batch` examples and accumulating
    /// their gradients: the same mean-loss gradient (to rounding; dropout masks are drawn per piece), with the
    /// activations and convolution buffers of `micro_batch` examples instead of `batch`.
    pub fn with_micro_batch(
        model: &TrainableModel,
        loss: Loss,
        batch: usize,
        micro_batch: usize,
    ) -> Result<Self, TrainError> {
        Self::create(model, loss, batch, micro_batch, Precision::F32)
    }

    /// [`Self::with_micro_batch`] in `precision`.
    pub fn with_micro_batch_precision(
        model: &TrainableModel,
        loss: Loss,
        batch: usize,
        micro_batch: usize,
        precision: Precision,
    ) -> Result<Self, TrainError> {
        Self::create(model, loss, batch, micro_batch, precision)
    }

    fn create(
        model: &TrainableModel,
        loss: Loss,
        batch: usize,
        micro: usize,
        precision: Precision,
    ) -> Result<Self, TrainError> {
        if batch == 0 {
            return Err(TrainError::shape("the batch size must be at least 1"));
        }
        if micro == 0 || micro > batch {
            return Err(TrainError::shape(format!("a micro-batch of {micro} does not split batches of {batch}")));
        }
        let mut step =
            TrainStep { model: model.clone(), loss, batch, micro, precision, kernels: Kernels::Fedge, plans: vec![] };
        let plan = step.build(micro)?;
        step.plans.push(plan);
        Ok(step)
    }

    /// The same step emitted with ONNX-standard operators only for its convolutions, dense layers and their
    /// gradients (Conv; a ConvTranspose for the input's gradient, a Conv over transposed tensors for the weights';
    /// Gemm and MatMul) and its loss, instead of fedge's own `FedgeConv`, `FedgeConvInputGrad`,
    /// `FedgeConvWeightGrad`, `FedgeGemm` and `FedgeSoftmaxCrossEntropy`: slower in tract, for [`Self::training_graph`] to export graphs other runtimes can run (MaxPool's
    /// gradient stays `FedgeMaxPoolGrad`), and for checking fedge's operators against.
    pub fn into_standard_ops(mut self) -> Result<Self, TrainError> {
        self.kernels = Kernels::Standard;
        self.plans = vec![self.build(self.micro)?];
        Ok(self)
    }

    /// Examples per run of the compiled plan: the batch size, or the micro-batch a split step runs.
    pub fn micro_batch(&self) -> usize {
        self.micro
    }

    pub fn batch(&self) -> usize {
        self.batch
    }

    /// The training-step graph this step runs for `n` examples, as ONNX bytes (for inspection or for timing other
    /// runtimes). Inputs: data, labels (`[rows, C]` as [`Loss::layout`] gives, one-hot for the cross-entropies), the weights in
    /// [`TrainableModel::params`] order, then dropout masks; outputs: the mean loss, then each weight's gradient.
    /// Models with MaxPool use fedge's own `FedgeMaxPoolGrad` operator (domain `ai.fedge`), 1-D and 2-D
    /// convolutions `FedgeConv`, `FedgeConvInputGrad` and `FedgeConvWeightGrad`, dense layers `FedgeGemm`, the
    /// softmax cross-entropies `FedgeSoftmaxCrossEntropy`, unless the step was built [`Self::into_standard_ops`].
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
            Emitter::new(self.precision, self.kernels),
        )?;
        Ok((sg, rows, classes))
    }

    fn build(&self, n: usize) -> Result<SizedPlan, TrainError> {
        let (sg, rows, classes) = self.step_graph(n)?;
        let plan = compile(sg.model)?;
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
        if grads.len() != weights.len() {
            return Err(TrainError::shape(format!("{} gradient slots for {} weights", grads.len(), weights.len())));
        }
        let (loss, g) = self.gradients(weights, x, labels, dropout_seed)?;
        g.copy_to(grads)?;
        Ok(loss)
    }

    /// Runs one step on `n = x.len() / input_len` examples (1 ≤ n ≤ batch) and returns the mean loss over them
    /// and d(mean loss)/d(weights) as the plan's own output tensors (no copy). A split step runs the examples in
    /// micro-batches and sums their gradients and losses weighted by their share of the `n` examples.
    pub fn gradients(
        &mut self,
        weights: &[f32],
        x: &[f32],
        labels: Labels<'_>,
        dropout_seed: u64,
    ) -> Result<(f64, Gradients), TrainError> {
        let ws = WeightTensors::from_flat(&self.model, weights)?;
        self.gradients_at(&ws, x, labels, dropout_seed)
    }

    /// [`Self::gradients`] at weights the caller keeps as tensors across steps: in f32 the plan reads them where
    /// they are (no copy per step), and the caller's optimizer updates them in place between steps.
    pub fn gradients_at(
        &mut self,
        weights: &WeightTensors,
        x: &[f32],
        labels: Labels<'_>,
        dropout_seed: u64,
    ) -> Result<(f64, Gradients), TrainError> {
        let precision = self.precision;
        let model = self.model.clone();
        weights.check_for(&model)?;
        let il = model.input_len();
        if il == 0 || x.is_empty() || !x.len().is_multiple_of(il) {
            return Err(TrainError::shape(format!("{} inputs are not a whole number of examples of {il}", x.len())));
        }
        let n = x.len() / il;
        if n > self.batch {
            return Err(TrainError::shape(format!("{n} examples exceed the batch size {}", self.batch)));
        }
        let label_count = match labels {
            Labels::Classes(c) => c.len(),
            Labels::Targets(t) => t.len(),
        };
        if !label_count.is_multiple_of(n) {
            return Err(TrainError::shape(format!("{label_count} labels do not split evenly over {n} examples")));
        }
        let per_example = label_count / n;
        // The weights enter every piece as the same shared tensors, whatever the split.
        let ws = weights.inputs(precision)?;
        let mut rng = ChaCha8Rng::seed_from_u64(dropout_seed);
        let mut loss = 0.0;
        let mut acc: Vec<Tensor> = Vec::new();
        let mut first = 0;
        while first < n {
            let m = self.micro.min(n - first);
            let part = match labels {
                Labels::Classes(c) => Labels::Classes(&c[first * per_example..(first + m) * per_example]),
                Labels::Targets(t) => Labels::Targets(&t[first * per_example..(first + m) * per_example]),
            };
            let (l, outputs) = self.run_piece(&ws, &x[first * il..(first + m) * il], part, &mut rng)?;
            if m == n {
                // One piece: the plan's outputs are the gradient as they are.
                loss = l;
                acc = outputs.into_iter().map(|g| g.into_tensor()).collect();
            } else {
                let share = m as f64 / n as f64;
                loss += l * share;
                accumulate(&mut acc, outputs, share)?;
            }
            first += m;
        }
        let tensors = acc
            .into_iter()
            .map(|t| {
                if t.datum_type() == f32::datum_type() {
                    Ok(t)
                } else {
                    t.cast_to::<f32>().map(|c| c.into_owned()).map_err(TrainError::tract)
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        for (t, p) in tensors.iter().zip(model.params()) {
            if t.len() != p.len {
                return Err(TrainError::Tract(format!("gradient of {} has {} values, not {}", p.name, t.len(), p.len)));
            }
        }
        Ok((loss, Gradients { tensors }))
    }

    /// Runs the plan for `m = x.len() / input_len` examples: the mean loss over them and the gradient outputs.
    fn run_piece(
        &mut self,
        weights: &[TValue],
        x: &[f32],
        labels: Labels<'_>,
        rng: &mut ChaCha8Rng,
    ) -> Result<(f64, TVec<TValue>), TrainError> {
        let precision = self.precision;
        let loss = self.loss;
        let n = x.len() / self.model.input_len().max(1);
        let input_shape = self.model.input_shape().to_vec();
        let params = self.model.params().len();
        let plan = self.plan_for(n)?;
        let (rows, c) = (plan.rows, plan.classes);
        let y = label_tensor(labels, loss, rows, c)?;
        let mut inputs: TVec<TValue> = TVec::with_capacity(2 + weights.len() + plan.masks.len());
        let mut xs = vec![n];
        xs.extend(input_shape);
        inputs.push(tensor_in(&xs, x, precision)?);
        inputs.push(tensor_in(&[rows, c], &y, precision)?);
        inputs.extend(weights.iter().cloned());
        for m in &plan.masks {
            let keep = 1.0 - m.ratio;
            let scale = 1.0 / keep;
            let len: usize = m.shape.iter().product();
            let mask: Vec<f32> = (0..len).map(|_| if rng.r#gen::<f32>() < keep { scale } else { 0.0 }).collect();
            inputs.push(tensor_in(&m.shape, &mask, precision)?);
        }
        let mut outputs = plan.plan.run(inputs).map_err(TrainError::tract)?;
        if outputs.len() < params + 1 {
            return Err(TrainError::Tract(format!("the step returned {} outputs for {params} weights", outputs.len())));
        }
        // The loss, then the gradients; anything after them is not part of the step's result.
        outputs.truncate(params + 1);
        let loss = scalar_out(&outputs.remove(0))?;
        Ok((loss, outputs))
    }
}

/// Adds `share` times each piece's gradient to the accumulated one (the first piece starts it), in the graph's
/// precision.
fn accumulate(acc: &mut Vec<Tensor>, outputs: TVec<TValue>, share: f64) -> Result<(), TrainError> {
    if acc.is_empty() {
        for g in outputs {
            let mut t = g.into_tensor();
            scale_add(&mut t, None, share)?;
            acc.push(t);
        }
        return Ok(());
    }
    if acc.len() != outputs.len() {
        return Err(TrainError::Tract(format!("{} gradient outputs, then {}", acc.len(), outputs.len())));
    }
    for (a, g) in acc.iter_mut().zip(outputs.iter()) {
        scale_add(a, Some(g), share)?;
    }
    Ok(())
}

/// `acc <- acc * share` (no `piece`) or `acc <- acc + piece * share`.
fn scale_add(acc: &mut Tensor, piece: Option<&Tensor>, share: f64) -> Result<(), TrainError> {
    if let Some(p) = piece
        && (p.len() != acc.len() || p.datum_type() != acc.datum_type())
    {
        return Err(TrainError::Tract("micro-batch gradients of different shapes".into()));
    }
    if acc.datum_type() == f64::datum_type() {
        let a = acc.as_slice_mut::<f64>().map_err(TrainError::tract)?;
        match piece {
            None => a.iter_mut().for_each(|x| *x *= share),
            Some(p) => {
                let p = p.as_slice::<f64>().map_err(TrainError::tract)?;
                a.iter_mut().zip(p).for_each(|(x, y)| *x += y * share);
            }
        }
    } else {
        let share = share as f32;
        let a = acc.as_slice_mut::<f32>().map_err(TrainError::tract)?;
        match piece {
            None => a.iter_mut().for_each(|x| *x *= share),
            Some(p) => {
                let p = p.as_slice::<f32>().map_err(TrainError::tract)?;
                a.iter_mut().zip(p).for_each(|(x, y)| *x += y * share);
            }
        }
    }
    Ok(())
}
