//! [`LoadedModel`]: one global version compiled for inference: tract plans with the weights baked in, built once
//! per version (on a blocking thread, by the caller), never per request.
//!
//! Two plans are kept: one for a single example (lowest latency) and one for a full batch (throughput); a run
//! of `n` examples uses full batches and then, for the remainder, whichever was measured cheaper at build time.
//! This module never does I/O and never blocks on anything but computation.

use crate::state::PublishedModel;
use fedge_shared::train::{Predictor, TrainError, TrainableModel};
use std::time::Instant;

/// A model version ready to answer predictions.
pub struct LoadedModel {
    pub version: u64,
    input_shape: Vec<usize>,
    input_len: usize,
    output_len: usize,
    single: Predictor,
    full: Predictor,
    max_batch: usize,
    /// Remainders of at most this many examples run one by one on the single-example plan.
    single_up_to: usize,
}

impl std::fmt::Debug for LoadedModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedModel")
            .field("version", &self.version)
            .field("input_shape", &self.input_shape)
            .field("output_len", &self.output_len)
            .field("max_batch", &self.max_batch)
            .finish()
    }
}

impl LoadedModel {
    /// Compiles `model` for batches of up to `max_batch` examples (slow: seconds for a CNN on a small device).
    pub fn build(model: &PublishedModel, max_batch: usize) -> Result<Self, TrainError> {
        let m = TrainableModel::from_onnx_bytes(&model.graph)?;
        Self::from_trainable(&m, &model.weights, model.version, max_batch)
    }

    /// Compiles an already parsed model with `weights`.
    pub fn from_trainable(
        m: &TrainableModel,
        weights: &[f32],
        version: u64,
        max_batch: usize,
    ) -> Result<Self, TrainError> {
        let max_batch = max_batch.max(1);
        let single = Predictor::new(m, weights, 1)?;
        let full = if max_batch == 1 { Predictor::new(m, weights, 1)? } else { Predictor::new(m, weights, max_batch)? };
        let mut loaded = LoadedModel {
            version,
            input_shape: m.input_shape().to_vec(),
            input_len: m.input_len(),
            output_len: m.output_len(),
            single,
            full,
            max_batch,
            single_up_to: 1,
        };
        loaded.calibrate()?;
        Ok(loaded)
    }

    /// Times one warm run of each plan to choose how remainders are run.
    fn calibrate(&mut self) -> Result<(), TrainError> {
        let one = vec![0.0f32; self.input_len];
        let full = vec![0.0f32; self.input_len * self.max_batch];
        self.single.predict(&one)?;
        self.full.predict(&full)?;
        let t = Instant::now();
        self.single.predict(&one)?;
        let t_single = t.elapsed().as_secs_f64().max(1e-9);
        let t = Instant::now();
        self.full.predict(&full)?;
        let t_full = t.elapsed().as_secs_f64();
        self.single_up_to = ((t_full / t_single).floor() as usize).clamp(1, self.max_batch);
        Ok(())
    }

    /// The shape of one example (without the batch dimension).
    pub fn input_shape(&self) -> &[usize] {
        &self.input_shape
    }

    /// Numbers in one example.
    pub fn input_len(&self) -> usize {
        self.input_len
    }

    /// Outputs (logits) per example.
    pub fn output_len(&self) -> usize {
        self.output_len
    }

    /// The full-batch plan's size.
    pub fn max_batch(&self) -> usize {
        self.max_batch
    }

    /// Logits for `x.len() / input_len` examples, `output_len` each.
    pub fn predict(&self, x: &[f32]) -> Result<Vec<f32>, TrainError> {
        if self.input_len == 0 || !x.len().is_multiple_of(self.input_len) {
            return Err(TrainError::Shape(format!(
                "{} inputs are not a whole number of examples of {}",
                x.len(),
                self.input_len
            )));
        }
        let n = x.len() / self.input_len;
        let full_rows = if n.is_multiple_of(self.max_batch) || n % self.max_batch > self.single_up_to {
            n
        } else {
            n - n % self.max_batch
        };
        let (head, tail) = x.split_at(full_rows * self.input_len);
        let mut out = if head.is_empty() { Vec::new() } else { self.full.predict(head)? };
        if !tail.is_empty() {
            out.extend(self.single.predict(tail)?);
        }
        Ok(out)
    }
}

/// The index of the largest value (the first on ties); `None` for an empty row.
pub fn argmax(row: &[f32]) -> Option<usize> {
    let mut best: Option<(usize, f32)> = None;
    for (i, &v) in row.iter().enumerate() {
        if best.is_none_or(|(_, b)| v > b) {
            best = Some((i, v));
        }
    }
    best.map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;
    use fedge_shared::train::builder;

    #[test]
    fn every_batch_size_gives_the_same_logits_as_a_plain_predictor() {
        let m = TrainableModel::from_onnx_bytes(&builder::mlp(&[6, 5, 3], 1)).unwrap();
        let w = m.initial_weights();
        let loaded = LoadedModel::from_trainable(&m, &w, 0, 4).unwrap();
        let reference = Predictor::new(&m, &w, 1).unwrap();
        for n in [1usize, 2, 3, 4, 5, 7, 8, 9] {
            let x: Vec<f32> = (0..n * 6).map(|i| ((i * 37 % 11) as f32 - 5.0) / 3.0).collect();
            let got = loaded.predict(&x).unwrap();
            let want = reference.predict(&x).unwrap();
            assert_eq!(got.len(), n * 3);
            for (a, b) in got.iter().zip(&want) {
                assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "n={n}: {a} vs {b}");
            }
        }
        assert!(loaded.predict(&[1.0; 7]).is_err());
    }

    #[test]
    fn argmax_takes_the_first_largest() {
        assert_eq!(argmax(&[0.0, 3.0, 3.0, -1.0]), Some(1));
        assert_eq!(argmax(&[]), None);
    }
}
