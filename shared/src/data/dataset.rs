//! An in-memory labelled data set, and the ways a trainer walks through it.
//!
//! Examples are stored row-major in one flat `f32` buffer; example `i` is `features[i * d .. (i + 1) * d]` where
//! `d` is the product of `example_shape`. Shuffling is seeded (the caller passes the seed), so a run can be
//! repeated exactly. This module must never read files, use global randomness, or panic on an index a caller
//! passes in: out-of-range indices are errors or `None`.

use super::error::DataError;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

/// A labelled data set held in memory.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    /// All examples, row-major, `len() * example_len()` values.
    pub features: Vec<f32>,
    /// One class label per example, each `< num_classes`.
    pub labels: Vec<u32>,
    /// The shape of one example, e.g. `[1, 28, 28]` or `[64]`.
    pub example_shape: Vec<usize>,
    /// The number of classes of the task (labels are `0..num_classes`).
    pub num_classes: usize,
}

impl Dataset {
    /// Builds a data set, checking that the buffers agree with each other.
    pub fn new(
        features: Vec<f32>,
        labels: Vec<u32>,
        example_shape: Vec<usize>,
        num_classes: usize,
    ) -> Result<Self, DataError> {
        let d = Dataset { features, labels, example_shape, num_classes };
        d.check()?;
        Ok(d)
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
        if self.labels.len().checked_mul(d) != Some(self.features.len()) {
            return Err(DataError::Invalid(format!(
                "{} features do not make {} examples of shape {shape:?}",
                self.features.len(),
                self.labels.len()
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
        self.labels.len()
    }

    /// True when there are no examples.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The number of values in one example.
    pub fn example_len(&self) -> usize {
        self.example_shape.iter().product()
    }

    /// Example `i`'s features and label, or `None` past the end.
    pub fn example(&self, i: usize) -> Option<(&[f32], u32)> {
        let d = self.example_len();
        let label = *self.labels.get(i)?;
        let x = self.features.get(i * d..(i + 1) * d)?;
        Some((x, label))
    }

    /// A new data set made of the examples at `indices`, in that order (repeats allowed).
    pub fn subset(&self, indices: &[usize]) -> Result<Dataset, DataError> {
        let d = self.example_len();
        let mut features = Vec::with_capacity(indices.len() * d);
        let mut labels = Vec::with_capacity(indices.len());
        for &i in indices {
            let (x, y) = self.example(i).ok_or_else(|| {
                DataError::Invalid(format!("index {i} is out of range for a data set of {} examples", self.len()))
            })?;
            features.extend_from_slice(x);
            labels.push(y);
        }
        Ok(Dataset { features, labels, example_shape: self.example_shape.clone(), num_classes: self.num_classes })
    }

    /// The first `n` examples (all of them if there are fewer).
    pub fn take(&self, n: usize) -> Dataset {
        let n = n.min(self.len());
        let d = self.example_len();
        Dataset {
            features: self.features.get(..n * d).unwrap_or(&self.features).to_vec(),
            labels: self.labels[..n].to_vec(),
            example_shape: self.example_shape.clone(),
            num_classes: self.num_classes,
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
