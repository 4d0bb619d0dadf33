//! [`Examples`]: the one interface every data source is read through (in-memory sets, CSV, NumPy, IDX, lazily
//! decoded image folders, and any later source such as the agent's own store of labelled examples), plus the
//! [`Batch`] buffers a trainer reuses, seeded shuffled [`ExampleBatches`] and [`Subset`] views.
//!
//! A source yields, for example `i`, its input (`example_len()` `f32` values, reshaped by the trainer to the
//! model's input shape) and its target: a class index for [`Task::Classification`], `outputs` values for
//! [`Task::Regression`]. Reading an example may fail (a lazily decoded image can be corrupt): the error names the
//! file and the entry. This module must never read files itself, use global randomness, or panic on an index.

use std::sync::Arc;

use super::dataset::shuffled_order;
use super::error::DataError;

/// What the target of an example is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Task {
    /// One class index in `0..classes` per example.
    Classification { classes: usize },
    /// `outputs` real values per example.
    Regression { outputs: usize },
}

/// What a loader reads the target column or array as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetKind {
    /// Class indices, each below `num_classes` when it is known (usually the model's output count).
    Classes { num_classes: Option<usize> },
    /// Real-valued regression targets.
    Values,
}

impl Default for TargetKind {
    fn default() -> Self {
        TargetKind::Classes { num_classes: None }
    }
}

/// One batch of examples: inputs row-major in `x`, and class indices (classification) or targets row-major
/// (regression). Buffers are reused across batches.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Batch {
    pub x: Vec<f32>,
    pub classes: Vec<u32>,
    pub targets: Vec<f32>,
}

impl Batch {
    /// Empties the buffers, keeping their capacity.
    pub fn clear(&mut self) {
        self.x.clear();
        self.classes.clear();
        self.targets.clear();
    }
}

/// A data source as a trainer sees it.
pub trait Examples: std::fmt::Debug {
    /// The number of examples.
    fn len(&self) -> usize;
    /// The shape of one example's input.
    fn example_shape(&self) -> &[usize];
    /// Classification (how many classes) or regression (how many outputs).
    fn task(&self) -> Task;
    /// One class per example for classification; empty for regression.
    fn labels(&self) -> &[u32];
    /// Checks that the source is consistent (whole examples, labels below the class count).
    fn check(&self) -> Result<(), DataError>;
    /// Appends example `i`'s input to `batch.x` and its target to `batch.classes` or `batch.targets`. On an error
    /// nothing is appended.
    fn read_into(&self, i: usize, batch: &mut Batch) -> Result<(), DataError>;
    /// Tells the source the shape the model takes. In-memory sources only check that the number of values agrees
    /// (flat features are reshaped as they are); an image folder decodes to this shape.
    fn set_input_shape(&self, shape: &[usize]) -> Result<(), DataError> {
        let want: usize = shape.iter().product();
        if want != self.example_len() {
            return Err(DataError::Invalid(format!(
                "examples of shape {:?} ({} values) do not fit the model's input {shape:?} ({want} values)",
                self.example_shape(),
                self.example_len()
            )));
        }
        Ok(())
    }

    /// True when there are no examples.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The number of values in one example's input.
    fn example_len(&self) -> usize {
        self.example_shape().iter().product()
    }

    /// The number of classes (0 for regression).
    fn num_classes(&self) -> usize {
        match self.task() {
            Task::Classification { classes } => classes,
            Task::Regression { .. } => 0,
        }
    }

    /// Reads the examples `first..first + n` (clipped at the end) into `batch` (cleared first); returns how many.
    fn range_into(&self, first: usize, n: usize, batch: &mut Batch) -> Result<usize, DataError> {
        batch.clear();
        let end = first.saturating_add(n).min(self.len());
        for i in first..end {
            self.read_into(i, batch)?;
        }
        Ok(end.saturating_sub(first))
    }
}

/// A shared, thread-safe data source.
pub type SharedExamples = Arc<dyn Examples + Send + Sync>;

impl<T: Examples + ?Sized> Examples for Arc<T> {
    fn len(&self) -> usize {
        (**self).len()
    }
    fn example_shape(&self) -> &[usize] {
        (**self).example_shape()
    }
    fn task(&self) -> Task {
        (**self).task()
    }
    fn labels(&self) -> &[u32] {
        (**self).labels()
    }
    fn check(&self) -> Result<(), DataError> {
        (**self).check()
    }
    fn read_into(&self, i: usize, batch: &mut Batch) -> Result<(), DataError> {
        (**self).read_into(i, batch)
    }
    fn set_input_shape(&self, shape: &[usize]) -> Result<(), DataError> {
        (**self).set_input_shape(shape)
    }
}

/// The examples of a source at `indices`, in that order: a held-out split or one agent's share of a simulation,
/// without copying a lazily read source.
#[derive(Clone)]
pub struct Subset {
    inner: SharedExamples,
    indices: Vec<usize>,
    labels: Vec<u32>,
}

impl std::fmt::Debug for Subset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subset").field("len", &self.indices.len()).field("task", &self.inner.task()).finish()
    }
}

impl Subset {
    /// The examples of `inner` at `indices`; every index must be below `inner.len()`.
    pub fn new(inner: SharedExamples, indices: Vec<usize>) -> Result<Self, DataError> {
        let n = inner.len();
        if let Some(&bad) = indices.iter().find(|&&i| i >= n) {
            return Err(DataError::Invalid(format!("index {bad} is out of range for a data set of {n} examples")));
        }
        let all = inner.labels();
        let labels =
            if all.is_empty() { Vec::new() } else { indices.iter().filter_map(|&i| all.get(i)).copied().collect() };
        Ok(Subset { inner, indices, labels })
    }

    /// Every example of `inner`.
    pub fn all(inner: SharedExamples) -> Self {
        let indices: Vec<usize> = (0..inner.len()).collect();
        let labels = inner.labels().to_vec();
        Subset { inner, indices, labels }
    }

    /// Splits `inner` into `(rest, held_out)` with `fraction` of the examples held out (rounded, at least one on
    /// each side when there are two or more), chosen at random with `seed` (the order [`crate::data::Dataset::split_holdout`] uses).
    pub fn split_holdout(inner: SharedExamples, fraction: f32, seed: u64) -> Result<(Subset, Subset), DataError> {
        if !(fraction > 0.0 && fraction < 1.0) {
            return Err(DataError::Invalid(format!("held-out fraction {fraction} is not strictly between 0 and 1")));
        }
        let n = inner.len();
        if n < 2 {
            return Err(DataError::Invalid(format!("cannot split a data set of {n} examples")));
        }
        let order = shuffled_order(n, seed);
        let held = ((n as f64 * fraction as f64).round() as usize).clamp(1, n - 1);
        let (held_idx, rest_idx) = order.split_at(held);
        Ok((Subset::new(inner.clone(), rest_idx.to_vec())?, Subset::new(inner, held_idx.to_vec())?))
    }

    /// The first `n` examples of this view.
    pub fn take(&self, n: usize) -> Subset {
        let n = n.min(self.indices.len());
        Subset {
            inner: self.inner.clone(),
            indices: self.indices[..n].to_vec(),
            labels: self.labels.get(..n).unwrap_or(&self.labels).to_vec(),
        }
    }

    /// The source this view reads from.
    pub fn source(&self) -> &SharedExamples {
        &self.inner
    }
}

impl Examples for Subset {
    fn len(&self) -> usize {
        self.indices.len()
    }
    fn example_shape(&self) -> &[usize] {
        self.inner.example_shape()
    }
    fn task(&self) -> Task {
        self.inner.task()
    }
    fn labels(&self) -> &[u32] {
        &self.labels
    }
    fn check(&self) -> Result<(), DataError> {
        self.inner.check()
    }
    fn read_into(&self, i: usize, batch: &mut Batch) -> Result<(), DataError> {
        let Some(&j) = self.indices.get(i) else {
            return Err(DataError::Invalid(format!("index {i} is out of range for {} examples", self.indices.len())));
        };
        self.inner.read_into(j, batch)
    }
    fn set_input_shape(&self, shape: &[usize]) -> Result<(), DataError> {
        self.inner.set_input_shape(shape)
    }
}

/// A seeded shuffled walk through any [`Examples`] in batches, read into a [`Batch`] the caller reuses. The order
/// for a seed is [`crate::data::Dataset::batches`]'s.
#[derive(Debug)]
pub struct ExampleBatches<'a, D: Examples + ?Sized> {
    data: &'a D,
    order: Vec<usize>,
    pos: usize,
    batch_size: usize,
}

impl<'a, D: Examples + ?Sized> ExampleBatches<'a, D> {
    /// The batches of `data` in an order shuffled with `seed`.
    pub fn new(data: &'a D, batch_size: usize, seed: u64) -> Self {
        ExampleBatches { data, order: shuffled_order(data.len(), seed), pos: 0, batch_size: batch_size.max(1) }
    }

    /// The number of batches in all.
    pub fn num_batches(&self) -> usize {
        self.order.len().div_ceil(self.batch_size)
    }

    /// Reads the next batch into `batch` (cleared first) and returns its number of examples, or `None` at the end.
    pub fn next_into(&mut self, batch: &mut Batch) -> Result<Option<usize>, DataError> {
        let end = (self.pos + self.batch_size).min(self.order.len());
        let Some(indices) = self.order.get(self.pos..end).filter(|s| !s.is_empty()) else { return Ok(None) };
        batch.clear();
        for &i in indices {
            self.data.read_into(i, batch)?;
        }
        self.pos = end;
        Ok(Some(indices.len()))
    }
}
