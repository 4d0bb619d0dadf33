//! The agent's configuration file (`agent.toml`): which server, which certificate bundle, which local data, where
//! to keep state.
//!
//! Unknown keys and wrong types are refused with the file, line and key; every key can be overridden by an
//! environment variable `FEDGE_AGENT__SECTION__KEY` (e.g. `FEDGE_AGENT__SERVER__ADDRESS=10.0.0.2:4433`).
//! This module reads files only.

use anyhow::{Context, bail};
use fedge_shared::data::{self, Dataset, Split};
use fedge_shared::train::schedule::LrSchedule;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// `agent.toml`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    pub server: ServerAddress,
    /// Folder with `cert.pem`, `key.pem` and `ca.pem` (from `fedgectl agent add`).
    pub bundle: PathBuf,
    /// Where the agent keeps the graph and the newest weights.
    pub state_dir: PathBuf,
    pub data: LocalData,
    /// Seed for the agent's own randomness (shuffling), mixed with each round's seed.
    #[serde(default)]
    pub seed: u64,
    #[serde(default = "default_idle")]
    pub idle_timeout_ms: u64,
    /// Reconnect back-off bounds.
    #[serde(default = "default_backoff_initial")]
    pub backoff_initial_ms: u64,
    #[serde(default = "default_backoff_max")]
    pub backoff_max_ms: u64,
    /// Refuse every round whose plan has no secure aggregation (the default): the agent's update then never
    /// reaches the server in the clear. `false` takes part in plain rounds too.
    #[serde(default = "default_require_secure_aggregation")]
    pub require_secure_aggregation: bool,
    /// The local prediction endpoint.
    #[serde(default)]
    pub inference: InferenceConfig,
    /// How the agent shapes the learning rate inside each round (the round's plan sets the base rate).
    #[serde(default)]
    pub training: TrainingConfig,
    /// The device's own labelled examples, posted to the inference endpoint.
    #[serde(default)]
    pub labels: LabelsConfig,
}

/// `[labels]`: labelled examples and corrections of predictions posted to the inference endpoint
/// (`POST /v1/examples`, `POST /v1/feedback`), kept in `state_dir/labels` and trained on with the configured data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LabelsConfig {
    /// Accept and train on the device's own labels.
    pub enabled: bool,
    /// Most examples kept; the oldest are evicted first.
    pub max_examples: usize,
    /// How many of the last predictions' inputs are remembered, so that a correction can name one by its id.
    pub remember_predictions: usize,
}

impl Default for LabelsConfig {
    fn default() -> Self {
        LabelsConfig {
            enabled: true,
            max_examples: 10_000,
            remember_predictions: crate::inference::DEFAULT_REMEMBER_PREDICTIONS,
        }
    }
}

impl LabelsConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.enabled && self.max_examples == 0 {
            bail!("labels.max_examples must be at least 1 (or set labels.enabled = false)");
        }
        Ok(())
    }

    /// The store's folder inside the agent's state directory.
    pub fn dir(state_dir: &Path) -> PathBuf {
        state_dir.join("labels")
    }
}

/// `[training]`: the learning-rate schedule over each round's local steps. Optional; the default is the round's
/// constant rate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainingConfig {
    /// `"constant"` or `"cosine"` (half-cosine from the round's rate down to `lr_min_factor` times it at the round's
    /// last local step).
    pub lr_schedule: String,
    /// Linear warm-up over the first this many local steps of each round.
    pub warmup_steps: u64,
    /// The cosine schedule's last rate, as a fraction of the round's rate.
    pub lr_min_factor: f32,
}

impl Default for TrainingConfig {
    fn default() -> Self {
        TrainingConfig { lr_schedule: "constant".into(), warmup_steps: 0, lr_min_factor: 0.0 }
    }
}

impl TrainingConfig {
    /// The schedule this section describes, or an error naming the bad key.
    pub fn schedule(&self) -> anyhow::Result<LrSchedule> {
        let warmup_steps = self.warmup_steps;
        let s = match self.lr_schedule.as_str() {
            "constant" if warmup_steps == 0 => LrSchedule::Constant,
            "constant" => LrSchedule::Warmup { warmup_steps },
            "cosine" => LrSchedule::Cosine { warmup_steps, min_factor: self.lr_min_factor },
            other => bail!("training.lr_schedule must be \"constant\" or \"cosine\", not {other:?}"),
        };
        s.validate().map_err(|e| anyhow::anyhow!("training: {e}"))?;
        Ok(s)
    }
}

/// `[inference]`: the prediction endpoint served with the newest (or a pinned) global model.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InferenceConfig {
    /// Serve predictions while taking part in rounds.
    pub enabled: bool,
    /// TCP `host:port` of the HTTP endpoint (loopback by default: it has no authentication).
    pub listen: String,
    /// Also (or, with `listen = ""`, only) serve on this Unix socket.
    pub unix_socket: Option<PathBuf>,
    /// Serve this global version (kept in `state_dir`) instead of the newest: pinning and rollback.
    pub pin_version: Option<u64>,
    /// How many weight versions are kept on disk.
    pub keep_versions: usize,
    /// Most examples run together in one batch.
    pub max_batch: usize,
    /// Longest a request waits for others to fill its batch, in microseconds.
    pub max_wait_us: u64,
    /// Largest request body, in bytes (larger: HTTP 413).
    pub max_body_bytes: usize,
    /// Most examples in one request (more: HTTP 413).
    pub max_examples: usize,
    /// Most requests waiting for the model at once (more: HTTP 503).
    pub queue: usize,
}

impl Default for InferenceConfig {
    fn default() -> Self {
        InferenceConfig {
            enabled: true,
            listen: "127.0.0.1:8490".into(),
            unix_socket: None,
            pin_version: None,
            keep_versions: crate::state::DEFAULT_KEEP_VERSIONS,
            max_batch: 32,
            max_wait_us: 500,
            max_body_bytes: 4 << 20,
            max_examples: 1024,
            queue: 1024,
        }
    }
}

impl InferenceConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.keep_versions == 0 {
            bail!("inference.keep_versions must be at least 1");
        }
        if self.max_batch == 0 || self.max_batch > 4096 {
            bail!("inference.max_batch must be in 1..=4096, not {}", self.max_batch);
        }
        if self.max_examples == 0 || self.max_body_bytes == 0 || self.queue == 0 {
            bail!("inference.max_examples, max_body_bytes and queue must be positive");
        }
        if self.max_wait_us > 1_000_000 {
            bail!("inference.max_wait_us must be at most 1 s, not {} us", self.max_wait_us);
        }
        if self.enabled && self.listen.is_empty() && self.unix_socket.is_none() {
            bail!("inference is enabled but neither inference.listen nor inference.unix_socket is set");
        }
        Ok(())
    }
}

fn default_idle() -> u64 {
    30_000
}
fn default_backoff_initial() -> u64 {
    500
}
fn default_backoff_max() -> u64 {
    60_000
}
fn default_require_secure_aggregation() -> bool {
    true
}

/// Where the server is.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerAddress {
    /// `host:port` (UDP).
    pub address: String,
    /// The name on the server's certificate (one of `fedgectl init --name`).
    pub name: String,
}

/// The device's training data.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalData {
    /// A folder of MNIST-style IDX files (`train-images-idx3-ubyte[.gz]`, `train-labels-idx1-ubyte[.gz]`).
    pub mnist_dir: PathBuf,
    /// Use only this many examples (0: all).
    #[serde(default)]
    pub limit: usize,
    /// Fraction kept apart to measure held-out accuracy after each round.
    #[serde(default = "default_holdout")]
    pub holdout: f32,
}

fn default_holdout() -> f32 {
    0.1
}

impl AgentConfig {
    /// Reads, overrides from the environment, and validates a configuration file.
    pub fn load(path: &Path) -> anyhow::Result<AgentConfig> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let cfg: AgentConfig = match env_overridden(&text)? {
            None => toml::from_str(&text).with_context(|| format!("{}", path.display()))?,
            Some(v) => v.try_into().with_context(|| format!("{} (with environment overrides)", path.display()))?,
        };
        cfg.validate().with_context(|| format!("{}", path.display()))?;
        Ok(cfg)
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        if !(0.0..0.9).contains(&self.data.holdout) {
            bail!("data.holdout must be in [0, 0.9), not {}", self.data.holdout);
        }
        if self.backoff_initial_ms == 0 || self.backoff_max_ms < self.backoff_initial_ms {
            bail!("backoff_initial_ms must be positive and at most backoff_max_ms");
        }
        if self.idle_timeout_ms < 1_000 {
            bail!("idle_timeout_ms must be at least 1000, not {}", self.idle_timeout_ms);
        }
        self.training.schedule()?;
        self.labels.validate()?;
        self.inference.validate()
    }

    /// Loads the training data and splits off the held-out part.
    pub fn load_data(&self) -> anyhow::Result<(Dataset, Option<Dataset>)> {
        let d = data::load_mnist_dir(&self.data.mnist_dir, Split::Train)?;
        let d = if self.data.limit > 0 { d.take(self.data.limit) } else { d };
        if self.data.holdout > 0.0 {
            let (train, holdout) = d.split_holdout(self.data.holdout, self.seed)?;
            Ok((train, Some(holdout)))
        } else {
            Ok((d, None))
        }
    }
}

/// Applies `FEDGE_AGENT__A__B=value` variables; `None` when there are none.
fn env_overridden(text: &str) -> anyhow::Result<Option<toml::Value>> {
    let vars: Vec<(String, String)> = std::env::vars().filter(|(k, _)| k.starts_with("FEDGE_AGENT__")).collect();
    if vars.is_empty() {
        return Ok(None);
    }
    let mut doc: toml::Value = toml::from_str(text)?;
    for (k, v) in vars {
        let path: Vec<String> = k["FEDGE_AGENT__".len()..].split("__").map(|s| s.to_ascii_lowercase()).collect();
        let value = toml::from_str::<toml::Table>(&format!("x = {v}"))
            .ok()
            .and_then(|mut t| t.remove("x"))
            .unwrap_or(toml::Value::String(v.clone()));
        let mut node = &mut doc;
        for (i, seg) in path.iter().enumerate() {
            let Some(table) = node.as_table_mut() else { bail!("{k}: {seg:?} is not inside a table") };
            if i + 1 == path.len() {
                table.insert(seg.clone(), value.clone());
                break;
            }
            node = table.entry(seg.clone()).or_insert_with(|| toml::Value::Table(Default::default()));
        }
    }
    Ok(Some(doc))
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../configs/agent.toml");

    #[test]
    fn the_example_configuration_parses_and_validates() {
        let cfg: AgentConfig = toml::from_str(EXAMPLE).unwrap();
        cfg.validate().unwrap();
    }

    #[test]
    fn an_unknown_key_is_refused_naming_the_key_and_line() {
        let text = EXAMPLE.replacen("state_dir", "state_dri", 1);
        let err = toml::from_str::<AgentConfig>(&text).unwrap_err().to_string();
        assert!(err.contains("state_dri") && err.contains("line"), "{err}");
    }

    #[test]
    fn the_example_inference_section_matches_the_defaults_and_a_missing_section_means_defaults() {
        let cfg: AgentConfig = toml::from_str(EXAMPLE).unwrap();
        let d = InferenceConfig::default();
        assert_eq!(cfg.inference.listen, d.listen);
        assert_eq!(cfg.inference.keep_versions, d.keep_versions);
        assert_eq!(cfg.inference.max_batch, d.max_batch);
        assert_eq!(cfg.inference.pin_version, None);
        let start = EXAMPLE.find("[inference]").unwrap();
        let end = EXAMPLE[start..].find("\n[").map_or(EXAMPLE.len(), |e| start + e + 1);
        let without = format!("{}{}", &EXAMPLE[..start], &EXAMPLE[end..]);
        assert!(!without.contains("max_batch"));
        let cfg: AgentConfig = toml::from_str(&without).unwrap();
        assert_eq!(cfg.inference.max_batch, d.max_batch);
    }

    #[test]
    fn a_training_section_sets_the_round_schedule_and_a_missing_one_means_a_constant_rate() {
        let cfg: AgentConfig = toml::from_str(EXAMPLE).unwrap();
        assert_eq!(cfg.training.schedule().unwrap(), LrSchedule::Constant);
        let text = format!("{EXAMPLE}\n[training]\nlr_schedule = \"cosine\"\nwarmup_steps = 10\nlr_min_factor = 0.1\n");
        let cfg: AgentConfig = toml::from_str(&text).unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.training.schedule().unwrap(), LrSchedule::Cosine { warmup_steps: 10, min_factor: 0.1 });
        let text = format!("{EXAMPLE}\n[training]\nlr_schedule = \"exponential\"\n");
        let cfg: AgentConfig = toml::from_str(&text).unwrap();
        assert!(cfg.validate().unwrap_err().to_string().contains("lr_schedule"));
        let text = format!("{EXAMPLE}\n[training]\nlr_schedule = \"cosine\"\nlr_min_factor = 2.0\n");
        let cfg: AgentConfig = toml::from_str(&text).unwrap();
        assert!(cfg.validate().unwrap_err().to_string().contains("min_factor"));
    }

    #[test]
    fn plain_rounds_are_refused_unless_the_file_allows_them() {
        let cfg: AgentConfig = toml::from_str(EXAMPLE).unwrap();
        assert!(cfg.require_secure_aggregation, "the example requires secure aggregation");
        let without: String =
            EXAMPLE.lines().filter(|l| !l.starts_with("require_secure_aggregation")).collect::<Vec<_>>().join("\n");
        assert_ne!(without, EXAMPLE);
        let cfg: AgentConfig = toml::from_str(&without).unwrap();
        assert!(cfg.require_secure_aggregation, "a file without the key requires secure aggregation");
        let text = EXAMPLE.replacen("require_secure_aggregation = true", "require_secure_aggregation = false", 1);
        let cfg: AgentConfig = toml::from_str(&text).unwrap();
        assert!(!cfg.require_secure_aggregation);
    }

    #[test]
    fn a_pinned_version_and_zero_batch_are_read_and_checked() {
        let text = EXAMPLE.replacen("# pin_version = 12", "pin_version = 12", 1);
        let cfg: AgentConfig = toml::from_str(&text).unwrap();
        assert_eq!(cfg.inference.pin_version, Some(12));
        let text = EXAMPLE.replacen("max_batch = 32", "max_batch = 0", 1);
        let cfg: AgentConfig = toml::from_str(&text).unwrap();
        assert!(cfg.validate().unwrap_err().to_string().contains("max_batch"));
    }
}
