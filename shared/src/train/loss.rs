//! The losses a training step minimises, as ONNX nodes appended after the model's output, and the label
//! tensor each one reads.
//!
//! - Softmax cross-entropy: mean over the batch of `-log softmax(z)[label]`; labels are class indices, fed to the
//!   graph as a one-hot `[n, C]` tensor built here.
//! - Mean squared error: mean over all `n × C` outputs of `(z - t)²` (PyTorch's `MSELoss` default), so the
//!   per-example loss is the mean over its outputs.
//!
//! Nothing here runs a graph; label validation returns errors, never panics.

use super::emit::{Emitter, Kernels};
use super::error::TrainError;
use super::loss_op::SOFTMAX_CROSS_ENTROPY;
use super::proto::attr_i;

/// The graph input carrying the labels (one-hot or targets, `[n, C]` floats).
pub const LABELS: &str = "__fedge/labels";
/// The graph output carrying the mean loss (a scalar).
pub const LOSS: &str = "__fedge/loss";

/// Which loss a [`super::TrainStep`] minimises (`"cross_entropy"` or `"mse"` in configuration files).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize)]
pub enum Loss {
    /// Softmax cross-entropy over class logits (classification).
    #[default]
    #[serde(rename = "cross_entropy")]
    SoftmaxCrossEntropy,
    /// Mean squared error against targets (regression; one-hot class vectors on a classification set).
    #[serde(rename = "mse")]
    MeanSquaredError,
    /// Softmax cross-entropy at every position of a sequence: `[N, T, V]` logits (the last axis the classes)
    /// against `[N, T]` class labels, averaged over all `N × T` positions (next-token training on every step).
    #[serde(rename = "sequence_cross_entropy")]
    SequenceCrossEntropy,
}

impl Loss {
    /// The name the round plan, the configuration files and the command line use.
    pub fn name(self) -> &'static str {
        match self {
            Loss::SoftmaxCrossEntropy => "cross_entropy",
            Loss::MeanSquaredError => "mse",
            Loss::SequenceCrossEntropy => "sequence_cross_entropy",
        }
    }

    /// The `[rows, classes]` matrix the loss reads from a model output of shape `out` (batch axis first): one row
    /// per example, or one per position for the sequence loss (whose classes are the last axis).
    pub fn layout(self, out: &[usize]) -> (usize, usize) {
        let n = out.first().copied().unwrap_or(1);
        let total: usize = out.iter().product();
        match self {
            Loss::SequenceCrossEntropy => {
                let c = out.last().copied().unwrap_or(1).max(1);
                (total / c, c)
            }
            _ => (n, total / n.max(1)),
        }
    }
}

impl std::str::FromStr for Loss {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cross_entropy" | "ce" | "softmax_cross_entropy" => Ok(Loss::SoftmaxCrossEntropy),
            "mse" | "mean_squared_error" => Ok(Loss::MeanSquaredError),
            "sequence_cross_entropy" | "seq_ce" => Ok(Loss::SequenceCrossEntropy),
            other => Err(format!(
                "unknown loss {other:?}: expected \"cross_entropy\", \"mse\" or \"sequence_cross_entropy\""
            )),
        }
    }
}

impl std::fmt::Display for Loss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The labels of one batch.
#[derive(Debug, Clone, Copy)]
pub enum Labels<'a> {
    /// One class index per example, for [`Loss::SoftmaxCrossEntropy`]; one per position (`[N, T]`, row-major)
    /// for [`Loss::SequenceCrossEntropy`].
    Classes(&'a [u32]),
    /// `n × output_len` targets, row-major, for [`Loss::MeanSquaredError`].
    Targets(&'a [f32]),
}

/// Appends the loss over logits `z` (`[n, c]`) and returns the gradient of the loss with respect to `z`.
pub fn emit_loss(e: &mut Emitter, z: &str, n: usize, c: usize, loss: Loss) -> String {
    match loss {
        Loss::SoftmaxCrossEntropy | Loss::SequenceCrossEntropy if e.kernels == Kernels::Fedge => {
            // The same loss and gradient as below, as one node of fedge's own.
            let dz = e.fresh(SOFTMAX_CROSS_ENTROPY);
            let sizes = vec![attr_i("n", n as i64), attr_i("c", c as i64)];
            e.fedge_op_into(SOFTMAX_CROSS_ENTROPY, &[z, LABELS], &[LOSS, &dz], sizes);
            dz
        }
        Loss::SoftmaxCrossEntropy | Loss::SequenceCrossEntropy => {
            let lsm = e.log_softmax(z, &[n, c], 1);
            let picked = e.op("Mul", &[&lsm, LABELS], vec![]);
            let total = e.reduce_sum(&picked, &[0, 1], false);
            let k = e.scalar(-1.0 / n as f32);
            e.op_into("Mul", &[&total, &k], &[LOSS], vec![]);
            // d/dz = (softmax(z) - onehot) / n
            let p = e.op("Exp", &[&lsm], vec![]);
            let d = e.op("Sub", &[&p, LABELS], vec![]);
            e.scale(&d, 1.0 / n as f32)
        }
        Loss::MeanSquaredError => {
            let diff = e.op("Sub", &[z, LABELS], vec![]);
            let sq = e.op("Mul", &[&diff, &diff], vec![]);
            let total = e.reduce_sum(&sq, &[0, 1], false);
            let k = e.scalar(1.0 / (n * c) as f32);
            e.op_into("Mul", &[&total, &k], &[LOSS], vec![]);
            e.scale(&diff, 2.0 / (n * c) as f32)
        }
    }
}

/// The `[n, c]` label tensor the graph reads, checked against the loss and the batch.
pub fn label_tensor(labels: Labels<'_>, loss: Loss, n: usize, c: usize) -> Result<Vec<f32>, TrainError> {
    match (loss, labels) {
        (Loss::SoftmaxCrossEntropy | Loss::SequenceCrossEntropy, Labels::Classes(cls)) => {
            if cls.len() != n {
                let what = if loss == Loss::SequenceCrossEntropy { "positions" } else { "examples" };
                return Err(TrainError::shape(format!("{} labels for {n} {what}", cls.len())));
            }
            let mut onehot = vec![0.0; n * c];
            for (i, k) in cls.iter().enumerate() {
                let k = *k as usize;
                if k >= c {
                    return Err(TrainError::shape(format!("label {k} is not one of {c} classes")));
                }
                onehot[i * c + k] = 1.0;
            }
            Ok(onehot)
        }
        (Loss::MeanSquaredError, Labels::Targets(t)) => {
            if t.len() != n * c {
                return Err(TrainError::shape(format!("{} targets for {n} examples of {c} outputs", t.len())));
            }
            Ok(t.to_vec())
        }
        (Loss::SoftmaxCrossEntropy | Loss::SequenceCrossEntropy, Labels::Targets(_)) => {
            Err(TrainError::shape("softmax cross-entropy needs class labels".to_string()))
        }
        (Loss::MeanSquaredError, Labels::Classes(_)) => {
            Err(TrainError::shape("mean squared error needs target values".to_string()))
        }
    }
}
