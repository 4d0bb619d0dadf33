//! [`CompactDataset`]: a data set held in a quarter of the memory when its features take at most 256 distinct
//! values (pixels normalised from bytes, as MNIST's are), and the [`Examples`] interface trainers read through.
//!
//! Each feature is stored as a one-byte code into a palette of the distinct `f32` values, so a batch read back is
//! bit-for-bit the batch the dense [`Dataset`] gives: training on either is the same run. Features with more
//! distinct values stay dense. This module must never read files, and never panic on an index a caller passes in.

use std::collections::HashMap;

use super::dataset::{Dataset, shuffled_order};
use super::error::DataError;

/// What a trainer needs from a data set: its size and shape, its labels, and examples copied into a buffer.
pub trait Examples {
    /// The number of examples.
    fn len(&self) -> usize;
    /// The shape of one example.
    fn example_shape(&self) -> &[usize];
    /// The number of classes (labels are `0..num_classes`).
    fn num_classes(&self) -> usize;
    /// One label per example.
    fn labels(&self) -> &[u32];
    /// Checks that the buffers agree (whole examples, labels below the class count).
    fn check(&self) -> Result<(), DataError>;
    /// Appends the features of example `i` to `out`; `false` (and nothing appended) past the end.
    fn append_example(&self, i: usize, out: &mut Vec<f32>) -> bool;

    /// True when there are no examples.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The number of values in one example.
    fn example_len(&self) -> usize {
        self.example_shape().iter().product()
    }

    /// Copies the examples `first..first + n` (clipped at the end) into `x` and their labels into `y` (both cleared
    /// first); returns how many were copied.
    fn range_into(&self, first: usize, n: usize, x: &mut Vec<f32>, y: &mut Vec<u32>) -> usize {
        x.clear();
        y.clear();
        let end = first.saturating_add(n).min(self.len());
        for i in first..end {
            if let Some(&label) = self.labels().get(i)
                && self.append_example(i, x)
            {
                y.push(label);
            }
        }
        y.len()
    }
}

impl Examples for Dataset {
    fn len(&self) -> usize {
        self.labels.len()
    }
    fn example_shape(&self) -> &[usize] {
        &self.example_shape
    }
    fn num_classes(&self) -> usize {
        self.num_classes
    }
    fn labels(&self) -> &[u32] {
        &self.labels
    }
    fn check(&self) -> Result<(), DataError> {
        Dataset::check(self)
    }
    fn append_example(&self, i: usize, out: &mut Vec<f32>) -> bool {
        match self.example(i) {
            Some((x, _)) => {
                out.extend_from_slice(x);
                true
            }
            None => false,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Storage {
    Dense(Vec<f32>),
    /// `codes[k]` indexes `palette`.
    Palette {
        codes: Vec<u8>,
        palette: Vec<f32>,
    },
}

/// A labelled data set stored as byte codes into a palette of at most 256 values when it can be, densely otherwise.
#[derive(Debug, Clone, PartialEq)]
pub struct CompactDataset {
    storage: Storage,
    labels: Vec<u32>,
    example_shape: Vec<usize>,
    num_classes: usize,
}

impl From<Dataset> for CompactDataset {
    /// Stores `d` as palette codes if its features take at most 256 distinct values (compared bit for bit),
    /// densely otherwise.
    fn from(d: Dataset) -> Self {
        let Dataset { features, labels, example_shape, num_classes } = d;
        let storage = match palette_of(&features) {
            Some((codes, palette)) => Storage::Palette { codes, palette },
            None => Storage::Dense(features),
        };
        CompactDataset { storage, labels, example_shape, num_classes }
    }
}

/// The byte codes and palette of `values`, or `None` when they take more than 256 distinct values.
fn palette_of(values: &[f32]) -> Option<(Vec<u8>, Vec<f32>)> {
    let mut index: HashMap<u32, u8> = HashMap::new();
    let mut palette = Vec::new();
    let mut codes = Vec::with_capacity(values.len());
    for v in values {
        let code = match index.get(&v.to_bits()) {
            Some(&c) => c,
            None => {
                let c = u8::try_from(palette.len()).ok()?;
                index.insert(v.to_bits(), c);
                palette.push(*v);
                c
            }
        };
        codes.push(code);
    }
    Some((codes, palette))
}

impl CompactDataset {
    /// A data set whose feature `k` is `palette[codes[k]]`, checked like [`Dataset::new`] (and every code must
    /// index the palette, of at most 256 values).
    pub fn from_codes(
        codes: Vec<u8>,
        palette: Vec<f32>,
        labels: Vec<u32>,
        example_shape: Vec<usize>,
        num_classes: usize,
    ) -> Result<Self, DataError> {
        if palette.len() > 256 {
            return Err(DataError::Invalid(format!("a palette of {} values is longer than 256", palette.len())));
        }
        let d = CompactDataset { storage: Storage::Palette { codes, palette }, labels, example_shape, num_classes };
        d.check()?;
        Ok(d)
    }

    /// The first `n` examples (all of them if there are fewer).
    pub fn take(&self, n: usize) -> CompactDataset {
        let n = n.min(self.labels.len());
        let values = n * self.example_len();
        let storage = match &self.storage {
            Storage::Dense(v) => Storage::Dense(v.get(..values).unwrap_or(v).to_vec()),
            Storage::Palette { codes, palette } => {
                Storage::Palette { codes: codes.get(..values).unwrap_or(codes).to_vec(), palette: palette.clone() }
            }
        };
        CompactDataset {
            storage,
            labels: self.labels.get(..n).unwrap_or(&self.labels).to_vec(),
            example_shape: self.example_shape.clone(),
            num_classes: self.num_classes,
        }
    }

    /// True when the features are stored as one-byte codes.
    pub fn is_compact(&self) -> bool {
        matches!(self.storage, Storage::Palette { .. })
    }

    /// Bytes held by the features and labels.
    pub fn heap_bytes(&self) -> usize {
        let features = match &self.storage {
            Storage::Dense(v) => v.len() * 4,
            Storage::Palette { codes, palette } => codes.len() + palette.len() * 4,
        };
        features + self.labels.len() * 4
    }

    /// The examples in batches of `batch_size` (the last one may be smaller), in the order
    /// [`Dataset::batches`] uses for the same seed.
    pub fn batches(&self, batch_size: usize, seed: u64) -> ExampleBatches<'_, Self> {
        ExampleBatches::new(self, batch_size, seed)
    }
}

impl Examples for CompactDataset {
    fn len(&self) -> usize {
        self.labels.len()
    }
    fn example_shape(&self) -> &[usize] {
        &self.example_shape
    }
    fn num_classes(&self) -> usize {
        self.num_classes
    }
    fn labels(&self) -> &[u32] {
        &self.labels
    }
    fn check(&self) -> Result<(), DataError> {
        let d = self.example_shape.iter().try_fold(1usize, |a, &b| a.checked_mul(b)).unwrap_or(0);
        let values = match &self.storage {
            Storage::Dense(v) => v.len(),
            Storage::Palette { codes, palette } => {
                if codes.iter().any(|&c| c as usize >= palette.len()) {
                    return Err(DataError::Invalid("a feature code lies outside the palette".into()));
                }
                codes.len()
            }
        };
        if d == 0 || self.labels.len().checked_mul(d) != Some(values) {
            return Err(DataError::Invalid(format!(
                "{values} features do not make {} examples of shape {:?}",
                self.labels.len(),
                self.example_shape
            )));
        }
        let n = self.num_classes;
        if let Some((i, &l)) = self.labels.iter().enumerate().find(|&(_, &l)| l as usize >= n) {
            return Err(DataError::Invalid(format!("example {i} has label {l}, but there are {n} classes")));
        }
        Ok(())
    }
    fn append_example(&self, i: usize, out: &mut Vec<f32>) -> bool {
        let d = self.example_len();
        let Some(range) = i.checked_mul(d).and_then(|s| Some(s..s.checked_add(d)?)) else { return false };
        match &self.storage {
            Storage::Dense(v) => match v.get(range) {
                Some(x) => {
                    out.extend_from_slice(x);
                    true
                }
                None => false,
            },
            Storage::Palette { codes, palette } => match codes.get(range) {
                Some(c) => {
                    out.extend(c.iter().map(|&k| palette.get(k as usize).copied().unwrap_or(f32::NAN)));
                    true
                }
                None => false,
            },
        }
    }
}

/// A seeded shuffled walk through any [`Examples`] in batches, copied into buffers the caller reuses. The order
/// for a seed is [`Dataset::batches`]'s.
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

    /// Copies the next batch into `x` and `y` (cleared first) and returns its number of examples, or `None` at
    /// the end.
    pub fn next_into(&mut self, x: &mut Vec<f32>, y: &mut Vec<u32>) -> Option<usize> {
        let end = (self.pos + self.batch_size).min(self.order.len());
        let indices = self.order.get(self.pos..end).filter(|s| !s.is_empty())?;
        x.clear();
        y.clear();
        for &i in indices {
            if let Some(&label) = self.data.labels().get(i)
                && self.data.append_example(i, x)
            {
                y.push(label);
            }
        }
        self.pos = end;
        Some(y.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn bytes_set(n: usize, d: usize, seed: u8) -> Dataset {
        let t = super::super::Normalization::MNIST.byte_table();
        let features = (0..n * d).map(|i| t[(i * 31 + seed as usize) % 256]).collect();
        let labels = (0..n).map(|i| (i % 10) as u32).collect();
        Dataset::new(features, labels, vec![d], 10).unwrap()
    }

    #[test]
    fn byte_valued_features_take_a_quarter_of_the_memory_and_read_back_bit_for_bit() {
        let dense = bytes_set(100, 784, 3);
        let compact = CompactDataset::from(dense.clone());
        assert!(compact.is_compact());
        assert!(compact.heap_bytes() < dense.features.len() + 256 * 4 + 400 + 1);
        compact.check().unwrap();
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for i in 0..100 {
            a.clear();
            b.clear();
            assert!(dense.append_example(i, &mut a) && compact.append_example(i, &mut b));
            assert_eq!(
                a.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                b.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
            );
        }
        assert!(!compact.append_example(100, &mut b));
    }

    #[test]
    fn codes_outside_the_palette_and_ragged_examples_are_refused() {
        assert!(CompactDataset::from_codes(vec![0, 2], vec![0.0, 1.0], vec![0], vec![2], 1).is_err());
        assert!(CompactDataset::from_codes(vec![0, 1, 1], vec![0.0, 1.0], vec![0], vec![2], 1).is_err());
        assert!(CompactDataset::from_codes(vec![0, 1], vec![0.0, 1.0], vec![1], vec![2], 1).is_err());
        let ok = CompactDataset::from_codes(vec![0, 1, 1, 0], vec![0.5, 1.5], vec![0, 0], vec![2], 1).unwrap();
        let (mut x, mut y) = (vec![], vec![]);
        assert_eq!(ok.take(1).range_into(0, 5, &mut x, &mut y), 1);
        assert_eq!(x, vec![0.5, 1.5]);
    }

    #[test]
    fn features_with_more_than_256_values_stay_dense() {
        let features: Vec<f32> = (0..300).map(|i| i as f32).collect();
        let d = Dataset::new(features, vec![0; 300], vec![1], 1).unwrap();
        let c = CompactDataset::from(d);
        assert!(!c.is_compact());
        let mut x = Vec::new();
        assert!(c.append_example(299, &mut x));
        assert_eq!(x, vec![299.0]);
    }

    proptest! {
        #[test]
        fn compact_batches_equal_the_dense_batches_for_every_seed_and_batch_size(
            n in 1usize..60, batch in 1usize..17, seed in any::<u64>(),
        ) {
            let dense = bytes_set(n, 5, seed as u8);
            let compact = CompactDataset::from(dense.clone());
            let mut want = dense.batches(batch, seed);
            let mut got = compact.batches(batch, seed);
            prop_assert_eq!(want.num_batches(), got.num_batches());
            let (mut x1, mut y1, mut x2, mut y2) = (vec![], vec![], vec![], vec![]);
            loop {
                let (a, b) = (want.next_into(&mut x1, &mut y1), got.next_into(&mut x2, &mut y2));
                prop_assert_eq!(a, b);
                if a.is_none() {
                    break;
                }
                prop_assert_eq!(&x1, &x2);
                prop_assert_eq!(&y1, &y2);
            }
            let (mut xr, mut yr) = (vec![], vec![]);
            prop_assert_eq!(compact.range_into(n.saturating_sub(3), 10, &mut xr, &mut yr), n.min(3));
        }
    }
}
