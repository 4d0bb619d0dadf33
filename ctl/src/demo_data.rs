//! The data of a local federation (`fedgectl demo --model M.onnx --data DIR`, and the whole-system tests): the
//! user's data folder in any format `fedge_shared::data` reads, shaped by the model, split across agents.
//!
//! Classification data is split non-IID by label (a Dirichlet over labels per class, concentration `alpha`);
//! regression data, which has no labels, is split IID. Each agent holds out a tenth of its share (when it has ten
//! examples or more). The test part of the folder, or a tenth of the training data when there is none, is the
//! server's own evaluation set. Nothing here reads more than the listing of a lazily read source (image folders).

use std::sync::Arc;

use anyhow::{Context, bail};
use fedge_shared::data::{
    self, Examples, Part, SharedExamples, SourceSpec, Subset, Task, dirichlet_partition, iid_partition,
};
use fedge_shared::train::{Loss, TrainableModel};

/// One agent's share: what it trains on and what it holds out.
pub type Shard = (Subset, Option<Subset>);

/// A data folder opened for a model and split for a federation.
pub struct FederationData {
    /// One share per agent.
    pub shards: Vec<Shard>,
    /// The server's evaluation set.
    pub test: Subset,
    /// The task the data holds.
    pub task: Task,
    /// The format read.
    pub format: data::Format,
    /// Training examples in all.
    pub train_examples: usize,
}

/// What to open and how to split it.
pub struct SplitSpec {
    pub agents: usize,
    pub alpha: f64,
    pub seed: u64,
    /// Use at most this many training examples (0: all).
    pub train_limit: usize,
    /// Evaluate on at most this many test examples (0: all).
    pub test_limit: usize,
}

/// Opens `source` for `model` trained with `loss` and splits it as `split` says.
pub fn open_for_federation(
    source: &SourceSpec,
    model: &TrainableModel,
    loss: Loss,
    split: &SplitSpec,
) -> anyhow::Result<FederationData> {
    let format = data::format_of(source)?;
    let target = data::target_kind(format, loss == Loss::MeanSquaredError, Some(model.output_len()));
    let what = || format!("reading the data {}", source.path.display());
    let train = data::open_part(source, Part::Train, target)
        .with_context(what)?
        .with_context(|| format!("{}: no training part", source.path.display()))?;
    train.set_input_shape(model.input_shape()).with_context(what)?;
    let (train, test) = match data::open_part(source, Part::Test, target).with_context(what)? {
        Some(test) => {
            test.set_input_shape(model.input_shape()).with_context(what)?;
            (Subset::all(train), Subset::all(test))
        }
        None => Subset::split_holdout(train, 0.1, split.seed).with_context(what)?,
    };
    let train = if split.train_limit > 0 { train.take(split.train_limit) } else { train };
    let test = if split.test_limit > 0 { test.take(split.test_limit) } else { test };
    let task = train.task();
    let train_examples = train.len();
    let shards = split_sources(Arc::new(train), split.agents, split.alpha, split.seed)?;
    Ok(FederationData { shards, test, task, format, train_examples })
}

/// Splits `train` over `n` agents (Dirichlet over labels for classification, IID for regression), each with a 10%
/// held-out part when its share has ten examples or more.
pub fn split_sources(train: SharedExamples, n: usize, alpha: f64, seed: u64) -> anyhow::Result<Vec<Shard>> {
    if n == 0 {
        bail!("a federation needs at least one agent");
    }
    let parts = match train.task() {
        Task::Classification { classes } => dirichlet_partition(train.labels(), classes, n, alpha, seed)?,
        Task::Regression { .. } => iid_partition(train.len(), n, seed)?,
    };
    parts
        .into_iter()
        .enumerate()
        .map(|(i, idx)| {
            let share = Subset::new(train.clone(), idx)?;
            if share.len() < 10 {
                return Ok((share, None));
            }
            let (rest, held) = Subset::split_holdout(Arc::new(share), 0.1, seed.wrapping_add(i as u64))?;
            Ok((rest, Some(held)))
        })
        .collect()
}
