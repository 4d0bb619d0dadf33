//! How a round's updates are summed while they arrive.
//!
//! [`WeightedSum`] is the plain mode: each update is folded into ONE running example-weighted sum (f64) the moment
//! it arrives, so the server holds no per-agent copy. [`Aggregation`] is the seam for secure aggregation: its
//! `Secure` variant holds the SecAgg+ server state and produces the same mean at unmasking.
//!
//! This module must never panic on an update: lengths and values are checked and refused with an error.

use serde::{Deserialize, Serialize};

/// Why an update cannot be folded in.
#[derive(Debug, Clone, PartialEq, thiserror::Error, Serialize, Deserialize)]
pub enum FoldError {
    #[error("the update has {got} parameters, the model has {expected}")]
    WrongLength { expected: usize, got: usize },
    #[error("the update has a non-finite value at index {index}")]
    NonFinite { index: usize },
    #[error("the update claims no examples")]
    NoExamples,
}

/// A running example-weighted sum of deltas.
#[derive(Debug, Clone)]
pub struct WeightedSum {
    sum: Vec<f64>,
    examples: u64,
    contributions: usize,
}

impl WeightedSum {
    /// An empty sum over `len` parameters.
    pub fn new(len: usize) -> Self {
        WeightedSum { sum: vec![0.0; len], examples: 0, contributions: 0 }
    }

    /// Adds `examples · delta`, after checking the length, the count and that every value is finite.
    pub fn fold(&mut self, examples: u64, delta: &[f32]) -> Result<(), FoldError> {
        if delta.len() != self.sum.len() {
            return Err(FoldError::WrongLength { expected: self.sum.len(), got: delta.len() });
        }
        if examples == 0 {
            return Err(FoldError::NoExamples);
        }
        if let Some(index) = delta.iter().position(|d| !d.is_finite()) {
            return Err(FoldError::NonFinite { index });
        }
        let w = examples as f64;
        for (s, d) in self.sum.iter_mut().zip(delta) {
            *s += w * f64::from(*d);
        }
        self.examples = self.examples.saturating_add(examples);
        self.contributions += 1;
        Ok(())
    }

    /// Total examples folded in.
    pub fn examples(&self) -> u64 {
        self.examples
    }

    /// Number of updates folded in.
    pub fn contributions(&self) -> usize {
        self.contributions
    }

    /// The example-weighted mean delta, or `None` when nothing was folded in.
    pub fn mean(&self) -> Option<Vec<f32>> {
        if self.examples == 0 {
            return None;
        }
        let total = self.examples as f64;
        Some(self.sum.iter().map(|s| (s / total) as f32).collect())
    }
}

/// The aggregation state of a round in flight.
#[derive(Debug)]
pub enum Aggregation {
    /// Updates arrive in the clear and are folded into one running sum.
    Plain(WeightedSum),
    /// SecAgg+: masked vectors are folded into the session's running masked sum; only the cohort's sum is ever
    /// unmasked.
    Secure(Box<super::secure::SecureRound>),
}

impl Aggregation {
    /// The mean delta of everything aggregated so far; `None` for a secure round, whose mean exists only once the
    /// whole round is unmasked.
    pub fn mean(&self) -> Option<Vec<f32>> {
        match self {
            Aggregation::Plain(sum) => sum.mean(),
            Aggregation::Secure(_) => None,
        }
    }
}
