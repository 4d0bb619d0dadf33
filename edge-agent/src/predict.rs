//! `fedge-agent predict` and `fedge-agent serve`: one-off predictions from a file, and the prediction endpoint
//! for a fixed model without joining a federation; both with the same engine and request formats as the
//! endpoint served by `run`.
//!
//! The model is an ONNX file (with optional raw f32 weights) or a version kept in a state directory. These
//! commands never contact the federation server.

use crate::inference::engine::LoadedModel;
use crate::inference::request::{InputSpec, parse_json, parse_raw, response_json};
use crate::inference::{self, InferenceSettings};
use crate::state::{ModelState, PublishedModel};
use anyhow::{Context, Result, bail};
use clap::Args;
use fedge_shared::model::weights_from_bytes;
use fedge_shared::train::TrainableModel;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Which model to use.
#[derive(Debug, Args, Clone)]
pub struct ModelArgs {
    /// An ONNX model.
    #[arg(long, conflicts_with = "state_dir")]
    pub model: Option<PathBuf>,
    /// Raw little-endian f32 weights for --model (default: the model's own).
    #[arg(long, requires = "model")]
    pub weights: Option<PathBuf>,
    /// An agent state directory (its graph and kept weight versions).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// The global version to use from --state-dir (default: the newest kept).
    #[arg(long, requires = "state_dir")]
    pub version: Option<u64>,
}

/// `fedge-agent predict`.
#[derive(Debug, Args)]
pub struct PredictArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The inputs: a JSON request body ({"inputs": [[...], ...]}) or raw little-endian f32 examples back to back.
    #[arg(long)]
    pub input: PathBuf,
    /// Print the endpoint's JSON answer instead of one `class<TAB>logits` line per example.
    #[arg(long)]
    pub json: bool,
}

/// `fedge-agent serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// TCP address to listen on.
    #[arg(long, default_value = "127.0.0.1:8490")]
    pub listen: std::net::SocketAddr,
    /// Most examples per batch run.
    #[arg(long, default_value_t = 32)]
    pub max_batch: usize,
    /// Longest wait for a batch to fill, in microseconds.
    #[arg(long, default_value_t = 500)]
    pub max_wait_us: u64,
}

/// The model named by `args`, with its version (`None` for a plain file).
pub fn load(args: &ModelArgs) -> Result<(Option<u64>, PublishedModel)> {
    match (&args.model, &args.state_dir) {
        (Some(path), None) => {
            let graph = std::fs::read(path).with_context(|| format!("reading the model {}", path.display()))?;
            let weights = match &args.weights {
                Some(w) => read_weights(&graph, w)?,
                None => TrainableModel::from_onnx_bytes(&graph)
                    .with_context(|| format!("loading the model {}", path.display()))?
                    .initial_weights(),
            };
            Ok((None, PublishedModel { version: 0, graph: Arc::new(graph), weights: Arc::new(weights) }))
        }
        (None, Some(dir)) => {
            if !dir.join("graph.onnx").exists() {
                bail!("{} holds no model (no graph.onnx)", dir.display());
            }
            let state = ModelState::open(dir)?;
            let m = state.published(args.version)?;
            Ok((Some(m.version), m))
        }
        _ => bail!("give --model FILE [--weights W] or --state-dir DIR [--version V]"),
    }
}

fn read_weights(graph: &[u8], path: &Path) -> Result<Vec<f32>> {
    let n = TrainableModel::from_onnx_bytes(graph)?.num_params();
    let bytes = std::fs::read(path).with_context(|| format!("reading the weights {}", path.display()))?;
    weights_from_bytes(&bytes, Some(n)).with_context(|| format!("{}: not weights for this model", path.display()))
}

/// Runs `fedge-agent predict`.
pub fn predict(args: PredictArgs) -> Result<()> {
    let (version, model) = load(&args.model)?;
    let body = std::fs::read(&args.input).with_context(|| format!("reading {}", args.input.display()))?;
    let loaded = LoadedModel::build(&model, 32).context("compiling the model")?;
    let spec = InputSpec { shape: loaded.input_shape(), max_examples: usize::MAX };
    let is_json = args.input.extension().is_some_and(|e| e == "json") || body.trim_ascii_start().starts_with(b"{");
    let inputs = if is_json { parse_json(&body, spec) } else { parse_raw(&body, spec) }
        .with_context(|| format!("{}", args.input.display()))?;
    let outputs = loaded.predict(&inputs.data)?;
    let mut answer = response_json(model.version, &outputs, loaded.output_len());
    if version.is_none() {
        answer["version"] = serde_json::Value::Null;
    }
    if args.json {
        println!("{answer}");
    } else {
        for row in outputs.chunks(loaded.output_len().max(1)) {
            let class = crate::inference::engine::argmax(row).unwrap_or(0);
            let logits: Vec<String> = row.iter().map(|x| x.to_string()).collect();
            println!("{class}\t{}", logits.join(" "));
        }
    }
    Ok(())
}

/// Runs `fedge-agent serve` until Ctrl-C.
pub fn serve(args: ServeArgs) -> Result<()> {
    let (_, model) = load(&args.model)?;
    let mut settings = InferenceSettings::loopback();
    settings.listen = Some(args.listen);
    settings.policy.max_batch = args.max_batch.max(1);
    settings.policy.max_wait = std::time::Duration::from_micros(args.max_wait_us);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    runtime.block_on(async move {
        let (_models, updates) = tokio::sync::watch::channel(Some(model));
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let service = inference::start(settings, updates, stop_rx).await?;
        let v = service.wait_for_version(None, std::time::Duration::from_secs(600)).await?;
        tracing::info!(version = v, addr = ?service.local_addr, "ready");
        tokio::signal::ctrl_c().await?;
        let _ = stop.send(true);
        service.join().await;
        Ok(())
    })
}
