//! [`WeightTensors`]: a model's weights held as the tensors a training-step plan reads, one per weight in
//! [`TrainableModel::params`] order, so that a trainer can keep them across steps and the optimizer can update
//! them in place: no step copies the weights into fresh tensors.
//!
//! The plan borrows each tensor (a reference count) only while it runs; between steps the tensors are the
//! trainer's alone and [`WeightTensors::parts_mut`] hands them out as slices. This module never runs a plan and
//! never changes a value by itself: it only moves weights between the flat vector and the tensors.

use std::sync::Arc;

use tract_onnx::prelude::*;

use super::emit::Precision;
use super::error::TrainError;
use super::plan::tensor_in;
use super::trainable::TrainableModel;

/// The weights of one model as f32 tensors, in [`TrainableModel::params`] order.
pub struct WeightTensors {
    tensors: Vec<Arc<Tensor>>,
    /// The number of weights, for checks against flat vectors.
    len: usize,
}

impl std::fmt::Debug for WeightTensors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WeightTensors").field("tensors", &self.tensors.len()).field("len", &self.len).finish()
    }
}

impl WeightTensors {
    /// The flat `weights` of `model` (one value per weight, in [`TrainableModel::params`] order) as tensors.
    pub fn from_flat(model: &TrainableModel, weights: &[f32]) -> Result<Self, TrainError> {
        model.check_weights(weights)?;
        let tensors = model
            .params()
            .iter()
            .map(|p| {
                let values = weights
                    .get(p.offset..p.offset + p.len)
                    .ok_or_else(|| TrainError::shape(format!("the weights end before {}", p.name)))?;
                Tensor::from_shape(&p.shape, values).map(Arc::new).map_err(TrainError::tract)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(WeightTensors { tensors, len: weights.len() })
    }

    /// Refuses tensors that are not `model`'s weights (another count or another shape of any tensor).
    pub(crate) fn check_for(&self, model: &TrainableModel) -> Result<(), TrainError> {
        let params = model.params();
        let same = params.len() == self.tensors.len()
            && params.iter().zip(&self.tensors).all(|(p, t)| p.shape.as_slice() == t.shape());
        if !same {
            return Err(TrainError::shape(format!(
                "{} weight tensors of {} values do not have the shapes of a model of {} in {}",
                self.tensors.len(),
                self.len,
                model.num_params(),
                params.len()
            )));
        }
        Ok(())
    }

    /// How many weights (values, not tensors) these are.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The tensors as a plan's inputs in `precision`: shared, not copied, in f32; converted (a copy) in f64.
    pub(crate) fn inputs(&self, precision: Precision) -> Result<Vec<TValue>, TrainError> {
        match precision {
            Precision::F32 => Ok(self.tensors.iter().map(|t| TValue::Const(Arc::clone(t))).collect()),
            Precision::F64 => self
                .tensors
                .iter()
                .map(|t| tensor_in(t.shape(), t.as_slice::<f32>().map_err(TrainError::tract)?, precision))
                .collect(),
        }
    }

    /// Every weight tensor's values, in order, for the optimizer to update in place. A tensor a plan still holds
    /// (none does once its run has returned) is copied first rather than changed under it.
    pub fn parts_mut(&mut self) -> Result<Vec<&mut [f32]>, TrainError> {
        self.tensors.iter_mut().map(|t| Arc::make_mut(t).as_slice_mut::<f32>().map_err(TrainError::tract)).collect()
    }

    /// The weights as one flat vector, in [`TrainableModel::params`] order.
    pub fn to_flat(&self) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.len);
        for t in &self.tensors {
            out.extend_from_slice(t.as_slice::<f32>().unwrap_or(&[]));
        }
        out
    }

    /// Whether every weight is finite.
    pub fn all_finite(&self) -> bool {
        self.tensors.iter().all(|t| t.as_slice::<f32>().is_ok_and(|v| v.iter().all(|x| x.is_finite())))
    }

    /// Copies the weights into the flat vector `out` (whose length must be the number of weights).
    pub fn copy_to(&self, out: &mut [f32]) -> Result<(), TrainError> {
        if out.len() != self.len {
            return Err(TrainError::shape(format!("{} weight slots for {} weights", out.len(), self.len)));
        }
        let mut offset = 0;
        for t in &self.tensors {
            let values = t.as_slice::<f32>().map_err(TrainError::tract)?;
            out[offset..offset + values.len()].copy_from_slice(values);
            offset += values.len();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::builder;

    fn model() -> TrainableModel {
        TrainableModel::from_onnx_bytes(&builder::mnist_2nn(0)).expect("model")
    }

    #[test]
    fn the_flat_weights_come_back_as_they_went_in() {
        let m = model();
        let w: Vec<f32> = (0..m.num_params()).map(|i| i as f32 * 0.5).collect();
        let t = WeightTensors::from_flat(&m, &w).expect("tensors");
        assert_eq!(t.len(), w.len());
        let mut back = vec![0.0; w.len()];
        t.copy_to(&mut back).expect("copy");
        assert_eq!(back, w);
        assert_eq!(t.to_flat(), w);
        assert!(t.all_finite());
    }

    #[test]
    fn one_non_finite_weight_anywhere_is_seen() {
        let m = model();
        let mut w = vec![0.5; m.num_params()];
        w[m.num_params() - 1] = f32::NAN;
        assert!(!WeightTensors::from_flat(&m, &w).expect("tensors").all_finite());
        w[m.num_params() - 1] = 0.0;
        w[0] = f32::INFINITY;
        assert!(!WeightTensors::from_flat(&m, &w).expect("tensors").all_finite());
    }

    #[test]
    fn a_wrong_number_of_weights_is_refused_both_ways() {
        let m = model();
        let n = m.num_params();
        assert!(WeightTensors::from_flat(&m, &vec![0.0; n - 1]).is_err());
        let t = WeightTensors::from_flat(&m, &vec![0.0; n]).expect("tensors");
        assert!(t.copy_to(&mut vec![0.0; n + 1]).is_err());
    }

    #[test]
    fn tensors_of_another_model_are_refused_even_with_as_many_weights() {
        let a = TrainableModel::from_onnx_bytes(&builder::mlp(&[3, 2, 3], 0)).expect("model");
        let b = TrainableModel::from_onnx_bytes(&builder::mlp(&[2, 3, 2], 0)).expect("model");
        assert_eq!(a.num_params(), b.num_params());
        let t = WeightTensors::from_flat(&a, &a.initial_weights()).expect("tensors");
        assert!(t.check_for(&a).is_ok());
        assert!(t.check_for(&b).is_err());
        assert!(t.check_for(&model()).is_err());
    }

    #[test]
    fn f32_inputs_share_the_tensors_and_updates_land_in_them() {
        let m = model();
        let mut t = WeightTensors::from_flat(&m, &vec![1.0; m.num_params()]).expect("tensors");
        let inputs = t.inputs(Precision::F32).expect("inputs");
        assert!(inputs.iter().zip(&t.tensors).all(|(i, w)| std::ptr::eq(&**i, &**w)), "no copy in f32");
        drop(inputs);
        let before: Vec<*const Tensor> = t.tensors.iter().map(Arc::as_ptr).collect();
        for p in t.parts_mut().expect("parts") {
            p.iter_mut().for_each(|x| *x = 2.0);
        }
        let after: Vec<*const Tensor> = t.tensors.iter().map(Arc::as_ptr).collect();
        assert_eq!(before, after, "updated in place once no plan holds them");
        let mut back = vec![0.0; m.num_params()];
        t.copy_to(&mut back).expect("copy");
        assert!(back.iter().all(|&x| x == 2.0));
    }

    #[test]
    fn a_tensor_still_held_elsewhere_is_copied_not_changed_under_its_holder() {
        let m = model();
        let mut t = WeightTensors::from_flat(&m, &vec![1.0; m.num_params()]).expect("tensors");
        let held = t.inputs(Precision::F32).expect("inputs");
        for p in t.parts_mut().expect("parts") {
            p.iter_mut().for_each(|x| *x = 3.0);
        }
        assert!(held.iter().all(|h| h.as_slice::<f32>().expect("f32").iter().all(|&x| x == 1.0)));
    }

    #[test]
    fn f64_inputs_carry_the_same_values() {
        let m = model();
        let w: Vec<f32> = (0..m.num_params()).map(|i| (i % 7) as f32 - 3.0).collect();
        let t = WeightTensors::from_flat(&m, &w).expect("tensors");
        let inputs = t.inputs(Precision::F64).expect("inputs");
        let flat: Vec<f32> =
            inputs.iter().flat_map(|i| i.as_slice::<f64>().expect("f64").iter().map(|&x| x as f32)).collect();
        assert_eq!(flat, w);
    }
}
