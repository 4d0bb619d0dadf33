//! [`CompactDataset`]: a data set held in a quarter of the memory when its features take at most 256 distinct
//! values (pixels normalised from bytes, as MNIST's are).
//!
//! Each feature is stored as a one-byte code into a palette of the distinct `f32` values, so a batch read back is
//! bit-for-bit the batch the dense [`Dataset`] gives: training on either is the same run. Features with more
//! distinct values stay dense. This module must never read files, and never panic on an index a caller passes in.

use std::collections::HashMap;

use super::dataset::Dataset;
use super::error::DataError;
use super::examples::{Batch, ExampleBatches, Examples, Task};

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
    /// Regression targets (empty for classification), `target_len` per example.
    targets: Vec<f32>,
    target_len: usize,
}

impl From<Dataset> for CompactDataset {
    /// Stores `d` as palette codes if its features take at most 256 distinct values (compared bit for bit),
    /// densely otherwise.
    fn from(d: Dataset) -> Self {
        let Dataset { features, labels, example_shape, num_classes, targets, target_len } = d;
        let storage = match palette_of(&features) {
            Some((codes, palette)) => Storage::Palette { codes, palette },
            None => Storage::Dense(features),
        };
        CompactDataset { storage, labels, example_shape, num_classes, targets, target_len }
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
        let d = CompactDataset {
            storage: Storage::Palette { codes, palette },
            labels,
            example_shape,
            num_classes,
            targets: Vec::new(),
            target_len: 0,
        };
        d.check()?;
        Ok(d)
    }

    /// The first `n` examples (all of them if there are fewer).
    pub fn take(&self, n: usize) -> CompactDataset {
        let n = n.min(self.len());
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
            targets: self.targets.get(..n * self.target_len).unwrap_or(&self.targets).to_vec(),
            target_len: self.target_len,
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
        features + self.labels.len() * 4 + self.targets.len() * 4
    }

    /// The examples in batches of `batch_size` (the last one may be smaller), in the order
    /// [`Dataset::batches`] uses for the same seed.
    pub fn batches(&self, batch_size: usize, seed: u64) -> ExampleBatches<'_, Self> {
        ExampleBatches::new(self, batch_size, seed)
    }
}

impl CompactDataset {
    /// Appends the features of example `i` to `out`; `false` (and nothing appended) past the end.
    fn append_features(&self, i: usize, out: &mut Vec<f32>) -> bool {
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

impl Examples for CompactDataset {
    fn len(&self) -> usize {
        match self.target_len {
            0 => self.labels.len(),
            t => self.targets.len() / t,
        }
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
        if self.target_len > 0 && (!self.labels.is_empty() || !self.targets.len().is_multiple_of(self.target_len)) {
            return Err(DataError::Invalid("regression targets do not make whole examples".into()));
        }
        if d == 0 || self.len().checked_mul(d) != Some(values) {
            return Err(DataError::Invalid(format!(
                "{values} features do not make {} examples of shape {:?}",
                self.len(),
                self.example_shape
            )));
        }
        let n = self.num_classes;
        if let Some((i, &l)) = self.labels.iter().enumerate().find(|&(_, &l)| l as usize >= n) {
            return Err(DataError::Invalid(format!("example {i} has label {l}, but there are {n} classes")));
        }
        Ok(())
    }
    fn read_into(&self, i: usize, batch: &mut Batch) -> Result<(), DataError> {
        let out_of_range = || DataError::Invalid(format!("example {i} is past the end of {} examples", self.len()));
        if i >= self.len() {
            return Err(out_of_range());
        }
        if self.target_len > 0 {
            let t = self.target_len;
            let targets = self.targets.get(i * t..(i + 1) * t).ok_or_else(out_of_range)?;
            if !self.append_features(i, &mut batch.x) {
                return Err(out_of_range());
            }
            batch.targets.extend_from_slice(targets);
        } else {
            let label = *self.labels.get(i).ok_or_else(out_of_range)?;
            if !self.append_features(i, &mut batch.x) {
                return Err(out_of_range());
            }
            batch.classes.push(label);
        }
        Ok(())
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
        let (mut a, mut b) = (Batch::default(), Batch::default());
        for i in 0..100 {
            a.clear();
            b.clear();
            dense.read_into(i, &mut a).unwrap();
            compact.read_into(i, &mut b).unwrap();
            assert_eq!(
                a.x.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                b.x.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
            );
            assert_eq!(a.classes, b.classes);
        }
        assert!(compact.read_into(100, &mut b).is_err());
    }

    #[test]
    fn codes_outside_the_palette_and_ragged_examples_are_refused() {
        assert!(CompactDataset::from_codes(vec![0, 2], vec![0.0, 1.0], vec![0], vec![2], 1).is_err());
        assert!(CompactDataset::from_codes(vec![0, 1, 1], vec![0.0, 1.0], vec![0], vec![2], 1).is_err());
        assert!(CompactDataset::from_codes(vec![0, 1], vec![0.0, 1.0], vec![1], vec![2], 1).is_err());
        let ok = CompactDataset::from_codes(vec![0, 1, 1, 0], vec![0.5, 1.5], vec![0, 0], vec![2], 1).unwrap();
        let mut b = Batch::default();
        assert_eq!(ok.take(1).range_into(0, 5, &mut b).unwrap(), 1);
        assert_eq!(b.x, vec![0.5, 1.5]);
    }

    #[test]
    fn features_with_more_than_256_values_stay_dense() {
        let features: Vec<f32> = (0..300).map(|i| i as f32).collect();
        let d = Dataset::new(features, vec![0; 300], vec![1], 1).unwrap();
        let c = CompactDataset::from(d);
        assert!(!c.is_compact());
        let mut b = Batch::default();
        c.read_into(299, &mut b).unwrap();
        assert_eq!(b.x, vec![299.0]);
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
            let (mut x1, mut y1, mut b2) = (vec![], vec![], Batch::default());
            loop {
                let (a, b) = (want.next_into(&mut x1, &mut y1), got.next_into(&mut b2).unwrap());
                prop_assert_eq!(a, b);
                if a.is_none() {
                    break;
                }
                prop_assert_eq!(&x1, &b2.x);
                prop_assert_eq!(&y1, &b2.classes);
            }
            let mut br = Batch::default();
            prop_assert_eq!(compact.range_into(n.saturating_sub(3), 10, &mut br).unwrap(), n.min(3));
        }
    }
}
