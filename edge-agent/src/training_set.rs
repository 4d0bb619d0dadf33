//! [`TrainingSet`]: what one round trains on — the configured data followed by the device's own labelled examples
//! (a snapshot of the [`crate::examples_store::ExampleStore`] taken when the round starts) — seen by the trainer
//! through the one [`Examples`] interface, without copying the configured data.
//!
//! Both parts must have examples of the same length; the class count is the larger of the two. The store holds
//! class labels, so device examples join only a classification task: a regression source with device examples is
//! refused. This module never
//! reads files and never panics on an index: past the end is `false`, as [`Examples`] asks.

use fedge_shared::data::{Batch, DataError, Dataset, Examples, Task};

/// The configured data `base` and then the device's examples `extra`.
#[derive(Debug)]
pub struct TrainingSet<'a, B: Examples + ?Sized> {
    base: &'a B,
    extra: &'a Dataset,
    labels: Vec<u32>,
    classes: usize,
}

impl<'a, B: Examples + ?Sized> TrainingSet<'a, B> {
    /// Joins `extra` after `base`; an error when their examples differ in length.
    pub fn new(base: &'a B, extra: &'a Dataset) -> Result<Self, DataError> {
        if !extra.labels.is_empty() && matches!(base.task(), Task::Regression { .. }) {
            return Err(DataError::Invalid(
                "the device's labelled examples hold classes, the configured data regression targets".into(),
            ));
        }
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
        self.base.len() + self.extra.len()
    }
    fn example_shape(&self) -> &[usize] {
        self.base.example_shape()
    }
    fn task(&self) -> Task {
        match self.base.task() {
            Task::Classification { .. } => Task::Classification { classes: self.classes },
            regression => regression,
        }
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
    fn read_into(&self, i: usize, batch: &mut Batch) -> Result<(), DataError> {
        match i.checked_sub(self.base.len()) {
            None => self.base.read_into(i, batch),
            Some(j) => self.extra.read_into(j, batch),
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
        let mut batch = Batch::default();
        assert_eq!(set.range_into(0, 10, &mut batch).unwrap(), 3);
        assert_eq!(batch.x, vec![0.0, 1.0, 1.0, 0.0, 0.5, 0.25]);
        assert_eq!(batch.classes, vec![0, 1, 2]);
        assert!(set.read_into(3, &mut batch).is_err());
    }

    #[test]
    fn a_regression_source_is_seen_whole_and_refuses_device_classes() {
        let targets = Dataset {
            features: vec![0.0, 1.0, 2.0],
            labels: vec![],
            example_shape: vec![1],
            num_classes: 0,
            targets: vec![0.5, 1.5, 2.5],
            target_len: 1,
        };
        let none = Dataset::empty(vec![1]);
        let set = TrainingSet::new(&targets, &none).unwrap();
        assert_eq!((set.len(), set.task()), (3, Task::Regression { outputs: 1 }));
        let mut batch = Batch::default();
        assert_eq!(set.range_into(0, 10, &mut batch).unwrap(), 3);
        assert_eq!(batch.targets, vec![0.5, 1.5, 2.5]);
        let own = Dataset::new(vec![4.0], vec![1], vec![1], 2).unwrap();
        let e = TrainingSet::new(&targets, &own).err().unwrap().to_string();
        assert!(e.contains("regression"), "{e}");
    }

    #[test]
    fn examples_of_another_length_are_refused() {
        let base = Dataset::new(vec![0.0; 4], vec![0, 1], vec![2], 2).unwrap();
        let extra = Dataset::new(vec![0.0; 3], vec![1], vec![3], 2).unwrap();
        let e = TrainingSet::new(&base, &extra).err().unwrap().to_string();
        assert!(e.contains("3 values") && e.contains("configured data 2"), "{e}");
        let empty = Dataset::empty(vec![3]);
        assert_eq!(TrainingSet::new(&base, &empty).unwrap().len(), 2);
    }
}
