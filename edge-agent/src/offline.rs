//! The agent's commands that need no server: local training, evaluation, writing the example models.
//!
//! `train` and `eval` read an MNIST-style folder (`train-*` and `t10k-*` IDX files, gzip-compressed or not) and
//! an ONNX model; weights are read and written as raw little-endian `f32` (or, for `train --out x.onnx`, as an ONNX
//! model with the weights baked in). With `--json` every report is one JSON object per line on stdout and nothing
//! else is printed there. These commands must never contact a server.

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use fedge_shared::data::{CompactDataset, Examples, Split, load_mnist_dir, load_mnist_dir_compact};
use fedge_shared::model::{weights_from_bytes, weights_to_bytes};
use fedge_shared::train::builder;
use fedge_shared::train::local::{EVAL_BATCH, EpochPlan, LocalTrainer, epoch_seed, evaluate};
use fedge_shared::train::optimizer::{Optimizer, OptimizerConfig, Proximal};
use fedge_shared::train::schedule::LrSchedule;
use fedge_shared::train::{Loss, TrainableModel};
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

/// `fedge-agent train`.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// The ONNX model to train.
    #[arg(long)]
    pub model: PathBuf,
    /// A folder with MNIST-style IDX files (train-images-idx3-ubyte[.gz], ..., t10k-labels-idx1-ubyte[.gz]).
    #[arg(long)]
    pub data: PathBuf,
    /// Start from these raw little-endian f32 weights instead of the model's own.
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// Passes over the training data.
    #[arg(long, default_value_t = 1)]
    pub epochs: u32,
    /// Examples per step.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
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
    /// One JSON object per epoch on stdout, then {"test_accuracy": ...}; no progress bar.
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
    /// A folder with MNIST-style IDX files; the t10k split is evaluated.
    #[arg(long)]
    pub data: PathBuf,
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

/// The test split of `dir`, or 10% of the training data held out when the folder has no test files; both held
/// as palette codes (MNIST's normalised pixels take 256 values: a byte each instead of four).
fn train_and_test(dir: &Path, seed: u64) -> Result<(CompactDataset, CompactDataset)> {
    match load_mnist_dir_compact(dir, Split::Test) {
        Ok(test) => Ok((load_mnist_dir_compact(dir, Split::Train)?, test)),
        Err(fedge_shared::data::DataError::MissingFile { .. }) => {
            tracing::warn!("no t10k files in {}: holding out 10% of the training data", dir.display());
            let (train, test) = load_mnist_dir(dir, Split::Train)?.split_holdout(0.1, seed)?;
            Ok((CompactDataset::from(train), CompactDataset::from(test)))
        }
        Err(e) => Err(e.into()),
    }
}

fn limited(d: CompactDataset, limit: Option<usize>) -> CompactDataset {
    match limit {
        Some(n) => d.take(n),
        None => d,
    }
}

pub fn train(args: TrainArgs) -> Result<()> {
    let started = Instant::now();
    let model = load_model(&args.model)?;
    let mut weights = load_weights(&model, args.weights.as_deref())?;
    let (train, test) = train_and_test(&args.data, args.seed)?;
    let (train, test) = (limited(train, args.limit), limited(test, args.test_limit));
    if args.batch_size == 0 {
        bail!("--batch-size must be at least 1");
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
    let mut trainer = LocalTrainer::new(model.clone(), Loss::SoftmaxCrossEntropy, args.batch_size)?;
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
    let mut accuracy = f32::NAN;
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
        let summary = trainer.train_epoch(&mut weights, &train, &mut optimizer, prox, plan, &mut |p| {
            bar.inc(1);
            if p.step.is_multiple_of(20) {
                bar.set_message(format!("loss {:.4}", p.loss));
            }
        })?;
        let train_seconds = epoch_started.elapsed().as_secs_f64();
        let eval = evaluate(&model, &weights, &test, EVAL_BATCH)?;
        accuracy = eval.accuracy;
        if args.json {
            println!(
                "{}",
                json!({
                    "epoch": epoch,
                    "train_loss": summary.mean_loss,
                    "test_loss": eval.loss,
                    "test_accuracy": eval.accuracy,
                    "train_examples": summary.examples,
                    "test_examples": eval.examples,
                    "steps": summary.steps,
                    "lr": optimizer.current_lr(),
                    "train_seconds": train_seconds,
                })
            );
        } else {
            bar.println(format!(
                "epoch {epoch}/{}: train loss {:.4}, test loss {:.4}, test accuracy {:.2}% ({} examples, {:.1}s)",
                args.epochs,
                summary.mean_loss,
                eval.loss,
                eval.accuracy * 100.0,
                eval.examples,
                train_seconds
            ));
        }
    }
    bar.finish_and_clear();
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
        println!("{}", json!({ "test_accuracy": accuracy, "seconds": seconds }));
    } else {
        println!("test accuracy {:.2}% after {} epochs, {:.1}s", accuracy * 100.0, args.epochs, seconds);
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
    let test = limited(load_mnist_dir_compact(&args.data, Split::Test)?, args.limit);
    if args.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    let started = Instant::now();
    let eval = evaluate(&model, &weights, &test, args.batch_size)?;
    let seconds = started.elapsed().as_secs_f64();
    if args.json {
        println!(
            "{}",
            json!({ "examples": eval.examples, "loss": eval.loss, "accuracy": eval.accuracy, "seconds": seconds })
        );
    } else {
        println!(
            "{} examples: loss {:.4}, accuracy {:.2}% ({:.1}s)",
            eval.examples,
            eval.loss,
            eval.accuracy * 100.0,
            seconds
        );
    }
    Ok(())
}

pub fn make_model(args: MakeModelArgs) -> Result<()> {
    let bytes = match args.kind {
        ModelKind::TwoNn => builder::mnist_2nn(args.seed),
        ModelKind::Cnn => builder::mnist_cnn(args.seed),
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
