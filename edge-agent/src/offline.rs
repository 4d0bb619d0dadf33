//! The agent's commands that need no server: local training, evaluation, writing the example models.
//!
//! `train` and `eval` read a data folder in any format `fedge_shared::data` knows (CSV, NumPy, image folders, IDX;
//! detected from the folder unless `--format` names it) and an ONNX model, whose input shape shapes the examples and
//! whose output count is the number of classes (or regression targets, with `--loss mse`); weights are read and
//! written as raw little-endian `f32` (or, for `train --out x.onnx`, as an ONNX model with the weights baked in).
//! With `--json` every report is one JSON object per line on stdout and nothing else is printed there: classification
//! reports carry `test_accuracy` and `test_loss`, regression reports `test_mse`. These commands must never contact
//! a server.

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use fedge_shared::data::{self, ChannelNorm, Examples, Format, Part, SharedExamples, SourceSpec, Subset};
use fedge_shared::model::{weights_from_bytes, weights_to_bytes};
use fedge_shared::train::builder;
use fedge_shared::train::local::EvalSummary;
use fedge_shared::train::local::{EVAL_BATCH, EpochPlan, LocalTrainer, epoch_seed, evaluate, evaluate_tensors};
use fedge_shared::train::optimizer::{Optimizer, OptimizerConfig, Proximal};
use fedge_shared::train::schedule::LrSchedule;
use fedge_shared::train::{Loss, Predictor, TrainableModel, WeightTensors};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Which optimizer `train` uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OptimizerKind {
    Sgd,
    Adam,
}

/// Which learning-rate schedule `train` uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ScheduleKind {
    /// The same rate throughout (after the warm-up, if any).
    Constant,
    /// Half-cosine decay from --lr to --lr-min-factor × --lr over the run, after the warm-up.
    Cosine,
    /// × --lr-gamma every --lr-step-epochs epochs, after the warm-up.
    Step,
}

/// Which loss `train` minimises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LossKind {
    /// Softmax cross-entropy: classification into the model's outputs.
    #[value(name = "cross_entropy", alias = "ce")]
    CrossEntropy,
    /// Mean squared error: regression on the CSV target column or the NumPy float32 `y`.
    Mse,
}

impl From<LossKind> for Loss {
    fn from(k: LossKind) -> Loss {
        match k {
            LossKind::CrossEntropy => Loss::SoftmaxCrossEntropy,
            LossKind::Mse => Loss::MeanSquaredError,
        }
    }
}

/// Where the data is and how to read it (shared by `train` and `eval`).
#[derive(Debug, Args)]
pub struct DataArgs {
    /// A data folder: train.csv/test.csv (with a header), train.npz/test.npz (arrays x, y), train/<class>/*.png|jpg
    /// and test/<class>/..., MNIST-style IDX files, or train.txt/test.txt (next-character windows); or one .csv,
    /// .npz or .txt file.
    #[arg(long)]
    pub data: PathBuf,
    /// The data format (csv, npz, images, idx, text); detected from the folder when not given.
    #[arg(long)]
    pub format: Option<Format>,
    /// CSV: the label (or regression target) column.
    #[arg(long, default_value = "label")]
    pub label_column: String,
    /// CSV: the feature columns, comma-separated (default: every column but the label).
    #[arg(long, value_delimiter = ',')]
    pub feature_columns: Option<Vec<String>>,
    /// Image folders: per-channel means subtracted after scaling to [0, 1], comma-separated.
    #[arg(long, value_delimiter = ',', requires = "normalize_std")]
    pub normalize_mean: Option<Vec<f32>>,
    /// Image folders: per-channel standard deviations divided by, comma-separated.
    #[arg(long, value_delimiter = ',', requires = "normalize_mean")]
    pub normalize_std: Option<Vec<f32>>,
    /// Text: characters per example (default 80).
    #[arg(long)]
    pub window: Option<usize>,
    /// Text: characters between the starts of successive examples (default 1).
    #[arg(long)]
    pub stride: Option<usize>,
}

impl DataArgs {
    /// The data source these flags describe.
    pub fn source(&self) -> SourceSpec {
        let normalize = match (&self.normalize_mean, &self.normalize_std) {
            (Some(mean), Some(std)) => Some(ChannelNorm { mean: mean.clone(), std: std.clone() }),
            _ => None,
        };
        SourceSpec {
            format: self.format,
            path: self.data.clone(),
            label_column: Some(self.label_column.clone()),
            feature_columns: self.feature_columns.clone(),
            normalize,
            window: self.window,
            stride: self.stride,
        }
    }
}

/// `fedge-agent train`.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// The ONNX model to train.
    #[arg(long)]
    pub model: PathBuf,
    #[command(flatten)]
    pub data: DataArgs,
    /// The loss: cross_entropy (classification) or mse (regression).
    #[arg(long, value_enum, default_value_t = LossKind::CrossEntropy)]
    pub loss: LossKind,
    /// The fraction of the training examples held out for testing when the folder has no test part.
    #[arg(long, default_value_t = 0.1)]
    pub holdout: f32,
    /// Start from these raw little-endian f32 weights instead of the model's own (with --train-only: the trained
    /// part's).
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// Fine-tune part of the model: train only the weights whose names match these glob patterns (comma-separated
    /// or repeated, e.g. 'head.*'); the others stay at the model's values. Raw --out weights are then the trained
    /// part only; an .onnx --out is the whole model.
    #[arg(long, value_delimiter = ',')]
    pub train_only: Vec<String>,
    /// Passes over the training data.
    #[arg(long, default_value_t = 1)]
    pub epochs: u32,
    /// Examples per step.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Run each batch as micro-batches of this many examples and accumulate their gradients: the same steps, with
    /// the memory of a smaller batch (activations, convolution buffers); evaluation runs at this size too.
    #[arg(long)]
    pub micro_batch: Option<usize>,
    /// Learning rate.
    #[arg(long, default_value_t = 0.01)]
    pub lr: f32,
    /// SGD momentum (0 = none).
    #[arg(long, default_value_t = 0.0)]
    pub momentum: f32,
    /// L2 weight decay.
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f32,
    /// FedProx's mu: adds mu/2 ||w - w_start||² to the loss.
    #[arg(long)]
    pub prox_mu: Option<f32>,
    #[arg(long, value_enum, default_value_t = OptimizerKind::Sgd)]
    pub optimizer: OptimizerKind,
    /// Learning-rate schedule over all the run's steps.
    #[arg(long, value_enum, default_value_t = ScheduleKind::Constant)]
    pub lr_schedule: ScheduleKind,
    /// Linear warm-up of the learning rate over this many epochs (fractions allowed).
    #[arg(long, default_value_t = 0.0)]
    pub warmup_epochs: f32,
    /// Cosine schedule: the last rate as a fraction of --lr.
    #[arg(long, default_value_t = 0.0)]
    pub lr_min_factor: f32,
    /// Step schedule: epochs between decays.
    #[arg(long, default_value_t = 1)]
    pub lr_step_epochs: u32,
    /// Step schedule: the factor of each decay.
    #[arg(long, default_value_t = 0.1)]
    pub lr_gamma: f32,
    /// Seed of the shuffling and dropout masks.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Train on the first N training examples only.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Evaluate on the first N test examples only.
    #[arg(long)]
    pub test_limit: Option<usize>,
    /// Where to write the trained weights: raw little-endian f32, or an ONNX model if the name ends in .onnx.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// One JSON object per epoch on stdout, then {"test_accuracy": ...} ({"test_mse": ...} for regression); no
    /// progress bar.
    #[arg(long)]
    pub json: bool,
}

/// `fedge-agent eval`.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// The ONNX model.
    #[arg(long)]
    pub model: PathBuf,
    /// Raw little-endian f32 weights (default: the model's own).
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// The data folder; its test part is evaluated.
    #[command(flatten)]
    pub data: DataArgs,
    /// cross_entropy (classification: accuracy and loss) or mse (regression on CSV/NumPy targets).
    #[arg(long, value_enum, default_value_t = LossKind::CrossEntropy)]
    pub loss: LossKind,
    /// Evaluate the first N test examples only.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Examples per forward pass (memory grows with it).
    #[arg(long, default_value_t = EVAL_BATCH)]
    pub batch_size: usize,
    /// Print one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

/// The example models.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ModelKind {
    /// 784-200-200-10 MLP (McMahan et al. 2017), input [N, 784].
    #[value(name = "2nn")]
    TwoNn,
    /// 2 conv + 2 FC CNN (McMahan et al. 2017), input [N, 1, 28, 28].
    Cnn,
    /// A ReLU MLP for your own data: input shape `--input` (e.g. `4` for four CSV columns, `3,32,32` for RGB
    /// images), hidden widths `--hidden`, `--outputs` classes (or regression targets).
    Mlp,
    /// A next-character LSTM (embedding, LSTM, linear head on the last step): input `--seq` character ids below
    /// `--vocab`, an embedding of `--embed`, `--hidden` LSTM units (the first of the list), `--vocab` logits.
    #[value(name = "char-lstm")]
    CharLstm,
    /// A one-block transformer classifier over `--seq` token ids below `--vocab`: embeddings and positions of
    /// `--embed`, pre-norm self-attention, a GELU MLP of `--hidden` units, mean over the sequence, `--outputs` classes.
    Transformer,
}

/// `fedge-agent make-model`.
#[derive(Debug, Args)]
pub struct MakeModelArgs {
    /// Which model.
    #[arg(value_enum)]
    pub kind: ModelKind,
    /// The ONNX file to write.
    #[arg(long)]
    pub out: PathBuf,
    /// Seed of the initial weights.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// `mlp`: the shape of one example, comma-separated (e.g. `4` or `3,32,32`).
    #[arg(long, value_delimiter = ',')]
    pub input: Vec<usize>,
    /// `mlp`: hidden layer widths, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [64])]
    pub hidden: Vec<usize>,
    /// `mlp`: outputs (classes, or regression targets).
    #[arg(long)]
    pub outputs: Option<usize>,
    /// `char-lstm`, `transformer`: the token ids are `0..vocab` (characters, for char-lstm).
    #[arg(long)]
    pub vocab: Option<usize>,
    /// `char-lstm`, `transformer`: tokens per example.
    #[arg(long, default_value_t = 80)]
    pub seq: usize,
    /// `char-lstm`, `transformer`: the embedding width.
    #[arg(long, default_value_t = 32)]
    pub embed: usize,
}

fn load_model(path: &Path) -> Result<TrainableModel> {
    let bytes = std::fs::read(path).with_context(|| format!("reading the model {}", path.display()))?;
    TrainableModel::from_onnx_bytes(&bytes).with_context(|| format!("loading the model {}", path.display()))
}

fn load_weights(model: &TrainableModel, path: Option<&Path>) -> Result<Vec<f32>> {
    let Some(path) = path else { return Ok(model.initial_weights()) };
    let bytes = std::fs::read(path).with_context(|| format!("reading the weights {}", path.display()))?;
    weights_from_bytes(&bytes, Some(model.num_params()))
        .with_context(|| format!("{}: not weights for this model", path.display()))
}

/// How the data at `spec` is read for `model` and `loss`: regression targets for mse on CSV/NumPy data, otherwise
/// classes checked against the model's output count.
fn target_for(spec: &SourceSpec, model: &TrainableModel, loss: Loss) -> Result<data::TargetKind> {
    let format = data::format_of(spec)?;
    Ok(data::target_kind(format, loss == Loss::MeanSquaredError, Some(model.output_len())))
}

/// The training and test parts of `spec`: the folder's test part, or `holdout` of the training data held out when
/// it has none. In-memory formats are held as palette codes where they can be (MNIST's pixels: a byte each).
fn train_and_test(
    spec: &SourceSpec,
    model: &TrainableModel,
    loss: Loss,
    holdout: f32,
    seed: u64,
) -> Result<(Subset, Subset)> {
    let target = target_for(spec, model, loss)?;
    let what = || format!("reading the data {}", spec.path.display());
    let train = data::open_part(spec, Part::Train, target)
        .with_context(what)?
        .with_context(|| format!("{}: no training part", spec.path.display()))?;
    match data::open_part(spec, Part::Test, target).with_context(what)? {
        Some(test) => Ok((Subset::all(train), Subset::all(test))),
        None => {
            tracing::warn!(
                "no test part in {}: holding out {:.0}% of the training data",
                spec.path.display(),
                holdout * 100.0
            );
            Ok(Subset::split_holdout(train, holdout, seed).with_context(what)?)
        }
    }
}

fn limited(d: Subset, limit: Option<usize>) -> Subset {
    match limit {
        Some(n) => d.take(n),
        None => d,
    }
}

/// The JSON fields of an evaluation: accuracy and loss for classification, the mean squared error for regression.
fn eval_fields(eval: &EvalSummary) -> serde_json::Map<String, serde_json::Value> {
    let mut m = serde_json::Map::new();
    match eval.mse {
        Some(mse) => {
            m.insert("test_mse".into(), json!(mse));
        }
        None => {
            m.insert("test_loss".into(), json!(eval.loss));
            m.insert("test_accuracy".into(), json!(eval.accuracy));
        }
    }
    m
}

/// An evaluation in words.
fn eval_words(eval: &EvalSummary) -> String {
    match eval.mse {
        Some(mse) => format!("test mse {mse:.5}"),
        None => format!("test loss {:.4}, test accuracy {:.2}%", eval.loss, eval.accuracy * 100.0),
    }
}

pub fn train(args: TrainArgs) -> Result<()> {
    let started = Instant::now();
    let mut model = load_model(&args.model)?;
    if !args.train_only.is_empty() {
        let all = model.num_params();
        model = model.train_only(&args.train_only).context("choosing the weights to train")?;
        tracing::info!(
            trained = model.num_params(),
            frozen = all - model.num_params(),
            "fine-tuning part of the model"
        );
    }
    // Without a weights file the model's own values are the start: taken out of the parsed model rather than
    // copied, so the run holds them once.
    let (model, weights) = match args.weights.as_deref() {
        None => model.take_initial_weights(),
        Some(path) => {
            let w = load_weights(&model, Some(path))?;
            (model, w)
        }
    };
    let loss = Loss::from(args.loss);
    if !(args.holdout > 0.0 && args.holdout < 1.0) {
        bail!("--holdout must be strictly between 0 and 1, not {}", args.holdout);
    }
    let spec = args.data.source();
    let (train, test) = train_and_test(&spec, &model, loss, args.holdout, args.seed)?;
    let (train, test) = (limited(train, args.limit), limited(test, args.test_limit));
    if args.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    let micro_batch = args.micro_batch.unwrap_or(args.batch_size);
    if micro_batch == 0 || micro_batch > args.batch_size {
        bail!("--micro-batch must be between 1 and --batch-size ({}), not {micro_batch}", args.batch_size);
    }
    let optimizer = match args.optimizer {
        OptimizerKind::Sgd => OptimizerConfig::Sgd {
            lr: args.lr,
            momentum: args.momentum,
            nesterov: false,
            weight_decay: args.weight_decay,
        },
        OptimizerKind::Adam => {
            OptimizerConfig::Adam { lr: args.lr, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: args.weight_decay }
        }
    };
    let mut optimizer = Optimizer::new(optimizer, weights.len())?;
    // The starting weights are kept only for the proximal term (a copy of every weight).
    let start = if args.prox_mu.is_some() { weights.clone() } else { Vec::new() };
    let mut trainer = LocalTrainer::with_micro_batch(model.clone(), loss, args.batch_size, micro_batch)?;
    let eval_batch = EVAL_BATCH.min(micro_batch);
    let steps_per_epoch = train.len().div_ceil(args.batch_size) as u64;
    let schedule = schedule_of(&args, steps_per_epoch)?;
    let total_steps = steps_per_epoch * u64::from(args.epochs);
    let bar = if args.json {
        ProgressBar::hidden()
    } else {
        let bar = ProgressBar::new(steps_per_epoch * args.epochs as u64);
        bar.set_style(
            ProgressStyle::with_template("{spinner} epoch {prefix} [{bar:30}] {pos}/{len} steps ({eta} left) {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar
    };
    // While the steps run, the weights exist once, as the tensors the steps read and the evaluation reads; a flat
    // copy is made only to save (a model's worth of memory less at the training peak).
    let mut tensors = WeightTensors::from_flat(&model, &weights)?;
    drop(weights);
    // One evaluation plan for every epoch, reading the tensors in place: evaluating copies no weights.
    let evaluator = Predictor::reading_weights(&model, eval_batch).context("building the evaluation plan")?;
    let mut last: Option<EvalSummary> = None;
    for epoch in 1..=args.epochs {
        bar.set_prefix(format!("{epoch}/{}", args.epochs));
        let epoch_started = Instant::now();
        let plan = EpochPlan {
            schedule,
            first_step: steps_per_epoch * u64::from(epoch - 1),
            total_steps,
            ..EpochPlan::constant(epoch, args.epochs, epoch_seed(args.seed, epoch))
        };
        let prox = args.prox_mu.map(|mu| Proximal { mu, global: &start });
        // The steps reuse their buffers from the heap instead of faulting fresh mappings in (shared::alloc).
        let heap = fedge_shared::alloc::keep_heap_for_training();
        let summary = trainer.train_epoch_tensors(&mut tensors, &train, &mut optimizer, prox, plan, &mut |p| {
            bar.inc(1);
            if p.step.is_multiple_of(20) {
                bar.set_message(format!("loss {:.4}", p.loss));
            }
        });
        drop(heap);
        let summary = summary?;
        let train_seconds = epoch_started.elapsed().as_secs_f64();
        let eval = evaluate_tensors(&evaluator, &model, &tensors, &test, eval_batch)?;
        if args.json {
            let mut line = serde_json::Map::new();
            line.insert("epoch".into(), json!(epoch));
            line.insert("train_loss".into(), json!(summary.mean_loss));
            line.extend(eval_fields(&eval));
            line.insert("train_examples".into(), json!(summary.examples));
            line.insert("test_examples".into(), json!(eval.examples));
            line.insert("steps".into(), json!(summary.steps));
            line.insert("lr".into(), json!(optimizer.current_lr()));
            line.insert("train_seconds".into(), json!(train_seconds));
            println!("{}", serde_json::Value::Object(line));
        } else {
            bar.println(format!(
                "epoch {epoch}/{}: train loss {:.4}, {} ({} examples, {:.1}s)",
                args.epochs,
                summary.mean_loss,
                eval_words(&eval),
                eval.examples,
                train_seconds
            ));
        }
        last = Some(eval);
    }
    bar.finish_and_clear();
    let weights = tensors.to_flat();
    drop(tensors);
    if let Some(out) = &args.out {
        let bytes = if out.extension().is_some_and(|e| e.eq_ignore_ascii_case("onnx")) {
            model.export_with_weights(&weights)?
        } else {
            weights_to_bytes(&weights)
        };
        std::fs::write(out, bytes).with_context(|| format!("writing {}", out.display()))?;
    }
    let seconds = started.elapsed().as_secs_f64();
    if args.json {
        let mut line = last.as_ref().map(eval_fields).unwrap_or_default();
        line.insert("seconds".into(), json!(seconds));
        println!("{}", serde_json::Value::Object(line));
    } else {
        let words = last.as_ref().map_or("no epoch ran".to_string(), eval_words);
        println!("{words} after {} epochs, {:.1}s", args.epochs, seconds);
        if let Some(out) = &args.out {
            println!("weights written to {}", out.display());
        }
    }
    Ok(())
}

/// The schedule `args` ask for, its epochs turned into steps of `steps_per_epoch`.
fn schedule_of(args: &TrainArgs, steps_per_epoch: u64) -> Result<LrSchedule> {
    if !(args.warmup_epochs.is_finite() && args.warmup_epochs >= 0.0) {
        bail!("--warmup-epochs must be a non-negative number, not {}", args.warmup_epochs);
    }
    let warmup_steps = (f64::from(args.warmup_epochs) * steps_per_epoch as f64).round() as u64;
    let schedule = match args.lr_schedule {
        ScheduleKind::Constant if warmup_steps == 0 => LrSchedule::Constant,
        ScheduleKind::Constant => LrSchedule::Warmup { warmup_steps },
        ScheduleKind::Cosine => LrSchedule::Cosine { warmup_steps, min_factor: args.lr_min_factor },
        ScheduleKind::Step => LrSchedule::Step {
            warmup_steps,
            every_steps: steps_per_epoch * u64::from(args.lr_step_epochs),
            gamma: args.lr_gamma,
        },
    };
    schedule.validate()?;
    Ok(schedule)
}

pub fn eval(args: EvalArgs) -> Result<()> {
    let model = load_model(&args.model)?;
    let weights = load_weights(&model, args.weights.as_deref())?;
    let spec = args.data.source();
    let target = target_for(&spec, &model, Loss::from(args.loss))?;
    let test: SharedExamples = data::open_part(&spec, Part::Test, target)
        .with_context(|| format!("reading the data {}", spec.path.display()))?
        .with_context(|| format!("{}: no test part to evaluate", spec.path.display()))?;
    let test = limited(Subset::all(test), args.limit);
    if args.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    let started = Instant::now();
    let eval = evaluate(&model, &weights, &test, args.batch_size)?;
    let seconds = started.elapsed().as_secs_f64();
    if args.json {
        let mut line = serde_json::Map::new();
        line.insert("examples".into(), json!(eval.examples));
        line.insert("loss".into(), json!(eval.loss));
        match eval.mse {
            Some(mse) => line.insert("mse".into(), json!(mse)),
            None => line.insert("accuracy".into(), json!(eval.accuracy)),
        };
        line.insert("seconds".into(), json!(seconds));
        println!("{}", serde_json::Value::Object(line));
    } else {
        println!("{} examples: {} ({:.1}s)", eval.examples, eval_words(&eval), seconds);
    }
    Ok(())
}

pub fn make_model(args: MakeModelArgs) -> Result<()> {
    let bytes = match args.kind {
        ModelKind::TwoNn => builder::mnist_2nn(args.seed),
        ModelKind::Cnn => builder::mnist_cnn(args.seed),
        ModelKind::Mlp => {
            if args.input.is_empty() || args.input.contains(&0) {
                bail!("mlp needs --input, the shape of one example with no zero (e.g. --input 4 or 3,32,32)");
            }
            if args.hidden.contains(&0) {
                bail!("--hidden widths must be at least 1, not {:?}", args.hidden);
            }
            let outputs = match args.outputs {
                Some(n) if n > 0 => n,
                _ => bail!("mlp needs --outputs, the number of classes or regression targets (at least 1)"),
            };
            builder::mlp_for(&args.input, &args.hidden, outputs, args.seed)
        }
        ModelKind::CharLstm => {
            let vocab = match args.vocab {
                Some(v) if v > 0 => v,
                _ => bail!("char-lstm needs --vocab, the number of distinct characters (at least 1)"),
            };
            let hidden = args.hidden.first().copied().unwrap_or(0);
            if args.seq == 0 || args.embed == 0 || hidden == 0 {
                bail!("char-lstm needs --seq, --embed and --hidden of at least 1");
            }
            builder::char_lstm(vocab, args.seq, args.embed, hidden, args.seed)
        }
        ModelKind::Transformer => {
            let (vocab, hidden) = (args.vocab.unwrap_or(0), args.hidden.first().copied().unwrap_or(0));
            let outputs = args.outputs.unwrap_or(0);
            if vocab == 0 || outputs == 0 || args.seq == 0 || args.embed == 0 || hidden == 0 {
                bail!("transformer needs --vocab and --outputs, and --seq, --embed and --hidden of at least 1");
            }
            builder::transformer(vocab, args.seq, args.embed, hidden, outputs, args.seed)
        }
    };
    std::fs::write(&args.out, &bytes).with_context(|| format!("writing {}", args.out.display()))?;
    println!("wrote {} ({} bytes)", args.out.display(), bytes.len());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        train: TrainArgs,
    }

    fn args(extra: &[&str]) -> TrainArgs {
        let mut argv = vec!["train", "--model", "m.onnx", "--data", "d"];
        argv.extend(extra);
        Cli::try_parse_from(argv).unwrap().train
    }

    #[test]
    fn schedule_flags_in_epochs_become_schedules_in_steps() {
        assert_eq!(schedule_of(&args(&[]), 10).unwrap(), LrSchedule::Constant);
        assert_eq!(
            schedule_of(&args(&["--warmup-epochs", "0.5"]), 10).unwrap(),
            LrSchedule::Warmup { warmup_steps: 5 }
        );
        let cosine = args(&["--lr-schedule", "cosine", "--warmup-epochs", "0.25", "--lr-min-factor", "0.01"]);
        assert_eq!(schedule_of(&cosine, 100).unwrap(), LrSchedule::Cosine { warmup_steps: 25, min_factor: 0.01 });
        let step = args(&["--lr-schedule", "step", "--lr-step-epochs", "2", "--lr-gamma", "0.5"]);
        assert_eq!(schedule_of(&step, 30).unwrap(), LrSchedule::Step { warmup_steps: 0, every_steps: 60, gamma: 0.5 });
    }

    #[test]
    fn out_of_range_schedule_flags_are_refused() {
        assert!(schedule_of(&args(&["--warmup-epochs=-1"]), 10).is_err());
        assert!(schedule_of(&args(&["--lr-schedule", "cosine", "--lr-min-factor", "1.5"]), 10).is_err());
        assert!(schedule_of(&args(&["--lr-schedule", "step", "--lr-step-epochs", "0"]), 10).is_err());
        assert!(schedule_of(&args(&["--lr-schedule", "step", "--lr-gamma", "0"]), 10).is_err());
    }
}
