//! [`TrainingSet`]: what one round trains on — the configured data followed by the device's own labelled examples
//! (a snapshot of the [`crate::examples_store::ExampleStore`] taken when the round starts) — seen by the trainer
//! through the one [`Examples`] interface, without copying the configured data.
//!
//! Both parts must have examples of the same length; the class count is the larger of the two. This module never
//! reads files and never panics on an index: past the end is `false`, as [`Examples`] asks.

use fedge_shared::data::{DataError, Dataset, Examples};

/// The configured data `base` and then the device's examples `extra`.
pub struct TrainingSet<'a, B: Examples + ?Sized> {
    base: &'a B,
    extra: &'a Dataset,
    labels: Vec<u32>,
    classes: usize,
}

impl<'a, B: Examples + ?Sized> TrainingSet<'a, B> {
    /// Joins `extra` after `base`; an error when their examples differ in length.
    pub fn new(base: &'a B, extra: &'a Dataset) -> Result<Self, DataError> {
        if !extra.labels.is_empty() && extra.example_len() != base.example_len() {
            return Err(DataError::Invalid(format!(
                "the device's labelled examples have {} values, the configured data {} (shape {:?})",
                extra.example_len(),
                base.example_len(),
                base.example_shape()
            )));
        }
        let labels = [base.labels(), &extra.labels].concat();
        Ok(TrainingSet { base, extra, labels, classes: base.num_classes().max(extra.num_classes) })
    }

    /// Examples that came from the device's store.
    pub fn device_examples(&self) -> usize {
        self.extra.labels.len()
    }
}

impl<B: Examples + ?Sized> Examples for TrainingSet<'_, B> {
    fn len(&self) -> usize {
        self.labels.len()
    }
    fn example_shape(&self) -> &[usize] {
        self.base.example_shape()
    }
    fn num_classes(&self) -> usize {
        self.classes
    }
    fn labels(&self) -> &[u32] {
        &self.labels
    }
    fn check(&self) -> Result<(), DataError> {
        self.base.check()?;
        self.extra.check()?;
        match self.labels.iter().position(|&l| l as usize >= self.classes) {
            Some(i) => Err(DataError::Invalid(format!("example {i} has a label past {} classes", self.classes))),
            None => Ok(()),
        }
    }
    fn append_example(&self, i: usize, out: &mut Vec<f32>) -> bool {
        match i.checked_sub(self.base.len()) {
            None => self.base.append_example(i, out),
            Some(j) => self.extra.append_example(j, out),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fedge_shared::data::CompactDataset;

    #[test]
    fn the_device_examples_follow_the_configured_data_with_their_labels() {
        let base = CompactDataset::from(Dataset::new(vec![0.0, 1.0, 1.0, 0.0], vec![0, 1], vec![2], 2).unwrap());
        let extra = Dataset::new(vec![0.5, 0.25], vec![2], vec![2], 3).unwrap();
        let set = TrainingSet::new(&base, &extra).unwrap();
        set.check().unwrap();
        assert_eq!((set.len(), set.num_classes(), set.device_examples()), (3, 3, 1));
        let (mut x, mut y) = (vec![], vec![]);
        assert_eq!(set.range_into(0, 10, &mut x, &mut y), 3);
        assert_eq!(x, vec![0.0, 1.0, 1.0, 0.0, 0.5, 0.25]);
        assert_eq!(y, vec![0, 1, 2]);
        assert!(!set.append_example(3, &mut x));
    }

    #[test]
    fn examples_of_another_length_are_refused() {
        let base = Dataset::new(vec![0.0; 4], vec![0, 1], vec![2], 2).unwrap();
        let extra = Dataset::new(vec![0.0; 3], vec![1], vec![3], 2).unwrap();
        let e = TrainingSet::new(&base, &extra).err().unwrap().to_string();
        assert!(e.contains("3 values") && e.contains("configured data 2"), "{e}");
        let empty = Dataset { features: vec![], labels: vec![], example_shape: vec![3], num_classes: 2 };
        assert_eq!(TrainingSet::new(&base, &empty).unwrap().len(), 2);
    }
}
