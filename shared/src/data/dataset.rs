//! An in-memory data set (classification or regression), and the ways a trainer walks through it.
//!
//! Examples are stored row-major in one flat `f32` buffer; example `i` is `features[i * d .. (i + 1) * d]` where
//! `d` is the product of `example_shape`. A classification set has one label per example; a regression set has
//! `target_len` targets per example in `targets` (and no labels). Shuffling is seeded (the caller passes the seed), so a run can be
//! repeated exactly. This module must never read files, use global randomness, or panic on an index a caller
//! passes in: out-of-range indices are errors or `None`.

use super::error::DataError;
use super::examples::{Batch, Examples, Task};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

/// A data set held in memory.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    /// All examples, row-major, `len() * example_len()` values.
    pub features: Vec<f32>,
    /// One class label per example, each `< num_classes` (empty for regression).
    pub labels: Vec<u32>,
    /// The shape of one example, e.g. `[1, 28, 28]` or `[64]`.
    pub example_shape: Vec<usize>,
    /// The number of classes of the task (labels are `0..num_classes`; 0 for regression).
    pub num_classes: usize,
    /// Regression targets, row-major, `len() * target_len` values (empty for classification).
    pub targets: Vec<f32>,
    /// Targets per example (0 for classification).
    pub target_len: usize,
}

impl Dataset {
    /// A classification set with no examples of shape `example_shape` (and no classes).
    pub fn empty(example_shape: Vec<usize>) -> Self {
        Dataset { features: vec![], labels: vec![], example_shape, num_classes: 0, targets: vec![], target_len: 0 }
    }

    /// Builds a data set, checking that the buffers agree with each other.
    pub fn new(
        features: Vec<f32>,
        labels: Vec<u32>,
        example_shape: Vec<usize>,
        num_classes: usize,
    ) -> Result<Self, DataError> {
        let d = Dataset { features, labels, example_shape, num_classes, targets: Vec::new(), target_len: 0 };
        d.check()?;
        Ok(d)
    }

    /// Builds a regression data set: `target_len` real targets per example.
    pub fn regression(
        features: Vec<f32>,
        targets: Vec<f32>,
        example_shape: Vec<usize>,
        target_len: usize,
    ) -> Result<Self, DataError> {
        if target_len == 0 {
            return Err(DataError::Invalid("a regression set needs at least one target per example".into()));
        }
        let d = Dataset { features, labels: Vec::new(), example_shape, num_classes: 0, targets, target_len };
        d.check()?;
        Ok(d)
    }

    /// True for a regression set.
    pub fn is_regression(&self) -> bool {
        self.target_len > 0
    }

    /// Checks that the (public) buffers agree: whole examples, every label below `num_classes`.
    pub fn check(&self) -> Result<(), DataError> {
        let shape = &self.example_shape;
        let d = shape.iter().try_fold(1usize, |a, &b| a.checked_mul(b));
        let Some(d) = d else {
            return Err(DataError::Invalid(format!("example shape {shape:?} overflows")));
        };
        if d == 0 {
            return Err(DataError::Invalid(format!("example shape {shape:?} has no values")));
        }
        if self.is_regression() {
            if !self.labels.is_empty() || !self.targets.len().is_multiple_of(self.target_len) {
                return Err(DataError::Invalid(format!(
                    "{} targets (and {} labels) do not make whole examples of {} targets",
                    self.targets.len(),
                    self.labels.len(),
                    self.target_len
                )));
            }
            if let Some(i) = self.targets.iter().position(|t| !t.is_finite()) {
                return Err(DataError::Invalid(format!(
                    "target {} of example {} is not finite",
                    i % self.target_len,
                    i / self.target_len
                )));
            }
        } else if !self.targets.is_empty() {
            return Err(DataError::Invalid("a classification set holds regression targets".into()));
        }
        if self.len().checked_mul(d) != Some(self.features.len()) {
            return Err(DataError::Invalid(format!(
                "{} features do not make {} examples of shape {shape:?}",
                self.features.len(),
                self.len()
            )));
        }
        let n = self.num_classes;
        if let Some((i, &l)) = self.labels.iter().enumerate().find(|&(_, &l)| l as usize >= n) {
            return Err(DataError::Invalid(format!("example {i} has label {l}, but there are {n} classes")));
        }
        Ok(())
    }

    /// The number of examples.
    pub fn len(&self) -> usize {
        match self.target_len {
            0 => self.labels.len(),
            t => self.targets.len() / t,
        }
    }

    /// True when there are no examples.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The number of values in one example.
    pub fn example_len(&self) -> usize {
        self.example_shape.iter().product()
    }

    /// Example `i`'s features and label (0 for a regression set), or `None` past the end.
    pub fn example(&self, i: usize) -> Option<(&[f32], u32)> {
        let d = self.example_len();
        let label = if self.is_regression() { 0 } else { *self.labels.get(i)? };
        let x = self.features.get(i.checked_mul(d)?..(i + 1).checked_mul(d)?)?;
        Some((x, label))
    }

    /// Example `i`'s regression targets (empty for a classification set), or `None` past the end.
    pub fn example_targets(&self, i: usize) -> Option<&[f32]> {
        let t = self.target_len;
        self.targets.get(i.checked_mul(t)?..(i + 1).checked_mul(t)?)
    }

    /// A new data set made of the examples at `indices`, in that order (repeats allowed).
    pub fn subset(&self, indices: &[usize]) -> Result<Dataset, DataError> {
        let d = self.example_len();
        let mut features = Vec::with_capacity(indices.len() * d);
        let mut labels = Vec::with_capacity(if self.is_regression() { 0 } else { indices.len() });
        let mut targets = Vec::with_capacity(indices.len() * self.target_len);
        for &i in indices {
            let out_of_range =
                || DataError::Invalid(format!("index {i} is out of range for a data set of {} examples", self.len()));
            let (x, y) = self.example(i).ok_or_else(out_of_range)?;
            features.extend_from_slice(x);
            if self.is_regression() {
                targets.extend_from_slice(self.example_targets(i).ok_or_else(out_of_range)?);
            } else {
                labels.push(y);
            }
        }
        Ok(Dataset {
            features,
            labels,
            example_shape: self.example_shape.clone(),
            num_classes: self.num_classes,
            targets,
            target_len: self.target_len,
        })
    }

    /// The first `n` examples (all of them if there are fewer).
    pub fn take(&self, n: usize) -> Dataset {
        let n = n.min(self.len());
        let d = self.example_len();
        Dataset {
            features: self.features.get(..n * d).unwrap_or(&self.features).to_vec(),
            labels: self.labels.get(..n).unwrap_or(&self.labels).to_vec(),
            example_shape: self.example_shape.clone(),
            num_classes: self.num_classes,
            targets: self.targets.get(..n * self.target_len).unwrap_or(&self.targets).to_vec(),
            target_len: self.target_len,
        }
    }

    /// Splits off a held-out part of `fraction` of the examples (rounded, at least one example on each side when
    /// the set has two or more), chosen at random with `seed`. Returns `(rest, held_out)`.
    pub fn split_holdout(&self, fraction: f32, seed: u64) -> Result<(Dataset, Dataset), DataError> {
        if !(fraction > 0.0 && fraction < 1.0) {
            return Err(DataError::Invalid(format!("held-out fraction {fraction} is not strictly between 0 and 1")));
        }
        if self.len() < 2 {
            return Err(DataError::Invalid(format!("cannot split a data set of {} examples", self.len())));
        }
        let order = shuffled_order(self.len(), seed);
        let held = ((self.len() as f64 * fraction as f64).round() as usize).clamp(1, self.len() - 1);
        let (held_idx, rest_idx) = order.split_at(held);
        Ok((self.subset(rest_idx)?, self.subset(held_idx)?))
    }

    /// How many examples each class has.
    pub fn label_counts(&self) -> Vec<usize> {
        let mut counts = vec![0usize; self.num_classes];
        for &l in &self.labels {
            if let Some(c) = counts.get_mut(l as usize) {
                *c += 1;
            }
        }
        counts
    }

    /// The examples in batches of `batch_size` (the last one may be smaller), in an order shuffled with `seed`.
    pub fn batches(&self, batch_size: usize, seed: u64) -> Batches<'_> {
        Batches { data: self, order: shuffled_order(self.len(), seed), pos: 0, batch_size: batch_size.max(1) }
    }

    /// The examples in batches of `batch_size`, in stored order (for evaluation).
    pub fn batches_in_order(&self, batch_size: usize) -> Batches<'_> {
        Batches { data: self, order: (0..self.len()).collect(), pos: 0, batch_size: batch_size.max(1) }
    }
}

impl Examples for Dataset {
    fn len(&self) -> usize {
        Dataset::len(self)
    }
    fn example_shape(&self) -> &[usize] {
        &self.example_shape
    }
    fn task(&self) -> Task {
        match self.target_len {
            0 => Task::Classification { classes: self.num_classes },
            outputs => Task::Regression { outputs },
        }
    }
    fn labels(&self) -> &[u32] {
        &self.labels
    }
    fn check(&self) -> Result<(), DataError> {
        Dataset::check(self)
    }
    fn read_into(&self, i: usize, batch: &mut Batch) -> Result<(), DataError> {
        let out_of_range = || DataError::Invalid(format!("example {i} is past the end of {} examples", self.len()));
        let (x, label) = self.example(i).ok_or_else(out_of_range)?;
        if self.is_regression() {
            let t = self.example_targets(i).ok_or_else(out_of_range)?;
            batch.targets.extend_from_slice(t);
        } else {
            batch.classes.push(label);
        }
        batch.x.extend_from_slice(x);
        Ok(())
    }
}

/// `0..n` shuffled with a ChaCha8 generator seeded with `seed`.
pub fn shuffled_order(n: usize, seed: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    order
}

/// A walk through a data set in batches that copies each batch into buffers the caller reuses.
#[derive(Debug)]
pub struct Batches<'a> {
    data: &'a Dataset,
    order: Vec<usize>,
    pos: usize,
    batch_size: usize,
}

impl Batches<'_> {
    /// The number of batches in all.
    pub fn num_batches(&self) -> usize {
        self.order.len().div_ceil(self.batch_size)
    }

    /// Copies the next batch into `x` and `y` (cleared first) and returns its number of examples, or `None` at
    /// the end.
    pub fn next_into(&mut self, x: &mut Vec<f32>, y: &mut Vec<u32>) -> Option<usize> {
        if self.pos >= self.order.len() {
            return None;
        }
        let end = (self.pos + self.batch_size).min(self.order.len());
        x.clear();
        y.clear();
        for &i in &self.order[self.pos..end] {
            // Indices come from 0..len, so every example exists.
            if let Some((xi, yi)) = self.data.example(i) {
                x.extend_from_slice(xi);
                y.push(yi);
            }
        }
        self.pos = end;
        Some(y.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toy(n: usize) -> Dataset {
        let features = (0..n * 2).map(|v| v as f32).collect();
        let labels = (0..n).map(|i| (i % 3) as u32).collect();
        Dataset::new(features, labels, vec![2], 3).unwrap()
    }

    #[test]
    fn a_label_at_or_above_the_class_count_is_refused() {
        assert!(Dataset::new(vec![0.0; 2], vec![3], vec![2], 3).is_err());
    }

    #[test]
    fn features_that_do_not_fill_whole_examples_are_refused() {
        assert!(Dataset::new(vec![0.0; 3], vec![0], vec![2], 3).is_err());
    }

    #[test]
    fn batches_visit_every_example_once_and_the_last_batch_is_short() {
        let d = toy(10);
        let mut b = d.batches(4, 7);
        assert_eq!(b.num_batches(), 3);
        let (mut x, mut y) = (Vec::new(), Vec::new());
        let mut seen = Vec::new();
        let mut sizes = Vec::new();
        while let Some(n) = b.next_into(&mut x, &mut y) {
            sizes.push(n);
            assert_eq!(x.len(), n * 2);
            for k in 0..n {
                seen.push(x[k * 2] as usize / 2);
                assert_eq!(y[k] as usize, (x[k * 2] as usize / 2) % 3);
            }
        }
        assert_eq!(sizes, vec![4, 4, 2]);
        seen.sort();
        assert_eq!(seen, (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn the_same_seed_gives_the_same_order_and_another_seed_another() {
        assert_eq!(shuffled_order(100, 1), shuffled_order(100, 1));
        assert_ne!(shuffled_order(100, 1), shuffled_order(100, 2));
    }

    #[test]
    fn a_holdout_split_partitions_the_examples() {
        let d = toy(50);
        let (rest, held) = d.split_holdout(0.2, 3).unwrap();
        assert_eq!(held.len(), 10);
        assert_eq!(rest.len(), 40);
        let mut all: Vec<f32> = rest.features.iter().chain(&held.features).copied().collect();
        all.sort_by(f32::total_cmp);
        assert_eq!(all, d.features);
        assert!(d.split_holdout(1.0, 3).is_err());
        assert!(d.split_holdout(0.0, 3).is_err());
    }

    #[test]
    fn a_subset_with_an_index_past_the_end_is_an_error() {
        assert!(toy(3).subset(&[0, 3]).is_err());
        assert_eq!(toy(3).subset(&[2, 0]).unwrap().labels, vec![2, 0]);
    }
}
