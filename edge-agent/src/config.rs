//! The agent's configuration file (`agent.toml`): which server, which certificate bundle, which local data, where
//! to keep state.
//!
//! Unknown keys and wrong types are refused with the file, line and key; every key can be overridden by an
//! environment variable `FEDGE_AGENT__SECTION__KEY` (e.g. `FEDGE_AGENT__SERVER__ADDRESS=10.0.0.2:4433`).
//! This module reads files only.

use anyhow::{Context, bail};
use fedge_shared::data::{self, ChannelNorm, Examples, Format, Part, SharedExamples, SourceSpec, Subset, TargetKind};
use fedge_shared::train::schedule::LrSchedule;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;

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
    /// This agent's own differential-privacy budget (`max_epsilon`, `delta`, `trusted_agents`); none when absent.
    #[serde(default)]
    pub privacy: Option<crate::privacy_budget::AgentPrivacy>,
    /// The least this agent accepts of a secure round (`min_cohort`, `min_threshold`); nothing when absent.
    #[serde(default)]
    pub secagg: fedge_shared::secagg::RoundFloor,
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

/// Recent predictions remembered for corrections unless configured otherwise.
pub const DEFAULT_REMEMBER_PREDICTIONS: usize = 1024;

impl Default for LabelsConfig {
    fn default() -> Self {
        LabelsConfig { enabled: true, max_examples: 10_000, remember_predictions: DEFAULT_REMEMBER_PREDICTIONS }
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

/// `[training]`: the learning-rate schedule over each round's local steps, and micro-batches for devices short of
/// memory. Optional; the default is the round's constant rate and whole batches.
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
    /// Run each of the round's batches as micro-batches of at most this many examples, their gradients accumulated:
    /// the same steps (to rounding) with the activation and convolution memory of a micro-batch, for devices short
    /// of memory (BENCHMARKS.md: a CNN agent at batch 32 peaks at 113 MB whole, 90 MB in micro-batches of 8, for
    /// about a quarter more CPU). The held-out evaluation runs at this size too. None: whole batches.
    pub micro_batch: Option<usize>,
}

impl Default for TrainingConfig {
    fn default() -> Self {
        TrainingConfig { lr_schedule: "constant".into(), warmup_steps: 0, lr_min_factor: 0.0, micro_batch: None }
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

    /// The micro-batch size, or an error naming the key.
    pub fn micro_batch(&self) -> anyhow::Result<Option<usize>> {
        match self.micro_batch {
            Some(0) => bail!("training.micro_batch must be at least 1 (or left out: whole batches)"),
            m => Ok(m),
        }
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

impl ServerAddress {
    /// Every address `address` and `more` resolve to, in order, without repeats; an error names the one that
    /// resolves to nothing.
    pub async fn resolve(&self) -> anyhow::Result<Vec<std::net::SocketAddr>> {
        let mut all = Vec::new();
        for name in std::iter::once(&self.address).chain(&self.more) {
            let found: Vec<_> =
                tokio::net::lookup_host(name).await.with_context(|| format!("resolving the server {name}"))?.collect();
            if found.is_empty() {
                bail!("the server {name} resolves to no address");
            }
            for a in found {
                if !all.contains(&a) {
                    all.push(a);
                }
            }
        }
        Ok(all)
    }
}

/// Where the server is.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerAddress {
    /// `host:port` (UDP). A name with several address records gives the agent each of them.
    pub address: String,
    /// More `host:port` addresses serving the same federation (the aggregators of a large one): the agent starts at
    /// a random one of all the addresses and moves to the next when its connection cannot be made or ends.
    #[serde(default)]
    pub more: Vec<String>,
    /// The name on the server's certificate (one of `fedgectl init --name`).
    pub name: String,
}

/// The device's training data: a folder in one of the formats `fedge_shared::data` reads.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalData {
    /// The data folder (or one `.csv` / `.npz` file): `train.csv` (+ `test.csv`), `train.npz` (+ `test.npz`),
    /// `train/<class>/*.png|jpg` (+ `test/…`), or MNIST-style IDX files.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// `csv`, `npz`, `images` or `idx`; detected from the folder when not set.
    #[serde(default)]
    pub format: Option<Format>,
    /// The older way to name an MNIST-style IDX folder (the same as `path` with `format = "idx"`).
    #[serde(default)]
    pub mnist_dir: Option<PathBuf>,
    /// What the label column or `y` array holds: `"classification"` (class indices, the default) or
    /// `"regression"` (real targets; rounds must then use the `mse` loss).
    #[serde(default)]
    pub task: TaskKind,
    /// CSV: the label (or target) column (default `label`).
    #[serde(default)]
    pub label_column: Option<String>,
    /// CSV: the feature columns, in order (default: every other column).
    #[serde(default)]
    pub feature_columns: Option<Vec<String>>,
    /// Image folders: per-channel `mean` and `std` applied after scaling pixels to [0, 1].
    #[serde(default)]
    pub normalize: Option<ChannelNorm>,
    /// Text (`train.txt`): characters per example (default 80) and between example starts (default 1).
    #[serde(default)]
    pub window: Option<usize>,
    #[serde(default)]
    pub stride: Option<usize>,
    /// Use only this many examples (0: all).
    #[serde(default)]
    pub limit: usize,
    /// Fraction kept apart to measure held-out accuracy after each round, when the folder has no test part.
    #[serde(default = "default_holdout")]
    pub holdout: f32,
}

/// What a data set's targets are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskKind {
    #[default]
    Classification,
    Regression,
}

impl LocalData {
    /// The data source this section describes (`mnist_dir` is an IDX folder).
    pub fn source(&self) -> anyhow::Result<SourceSpec> {
        let (path, format) = match (&self.path, &self.mnist_dir) {
            (Some(p), None) => (p.clone(), self.format),
            (None, Some(m)) => (m.clone(), Some(self.format.unwrap_or(Format::Idx))),
            (Some(_), Some(_)) => bail!("data: set either path or mnist_dir, not both"),
            (None, None) => bail!("data: set path (a data folder) or mnist_dir"),
        };
        Ok(SourceSpec {
            format,
            path,
            label_column: self.label_column.clone(),
            feature_columns: self.feature_columns.clone(),
            normalize: self.normalize.clone(),
            window: self.window,
            stride: self.stride,
        })
    }

    /// How loaders read targets for this section.
    pub fn target(&self) -> TargetKind {
        match self.task {
            TaskKind::Classification => TargetKind::Classes { num_classes: None },
            TaskKind::Regression => TargetKind::Values,
        }
    }

    /// Opens the training part (the first `limit` examples when set) and the held-out part: the folder's test
    /// part, or `holdout` of the training examples chosen with `seed`.
    pub fn open(&self, seed: u64) -> anyhow::Result<(SharedExamples, Option<SharedExamples>)> {
        let spec = self.source()?;
        let target = self.target();
        let what = || format!("data {}", spec.path.display());
        let train = data::open_part(&spec, Part::Train, target)?
            .with_context(|| format!("{}: no training part", spec.path.display()))?;
        let train = Subset::all(train);
        let train = if self.limit > 0 { train.take(self.limit) } else { train };
        let test = data::open_part(&spec, Part::Test, target).with_context(what)?;
        match test {
            Some(test) => Ok((Arc::new(train), Some(test))),
            None if self.holdout > 0.0 => {
                let (rest, held) = Subset::split_holdout(Arc::new(train), self.holdout, seed).with_context(what)?;
                Ok((Arc::new(rest), Some(Arc::new(held))))
            }
            None => Ok((Arc::new(train), None)),
        }
    }
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
        self.data.source()?;
        if let Some(n) = &self.data.normalize
            && n.mean.len() != n.std.len()
        {
            bail!("data.normalize: mean has {} values and std {}", n.mean.len(), n.std.len());
        }
        if self.backoff_initial_ms == 0 || self.backoff_max_ms < self.backoff_initial_ms {
            bail!("backoff_initial_ms must be positive and at most backoff_max_ms");
        }
        if self.idle_timeout_ms < 1_000 {
            bail!("idle_timeout_ms must be at least 1000, not {}", self.idle_timeout_ms);
        }
        self.training.schedule()?;
        self.labels.validate()?;
        if let Some(p) = &self.privacy {
            p.validate()?;
        }
        self.inference.validate()
    }

    /// Opens the training data and the held-out part (see [`LocalData::open`]).
    pub fn load_data(&self) -> anyhow::Result<(SharedExamples, Option<SharedExamples>)> {
        let (train, holdout) = self.data.open(self.seed)?;
        if train.is_empty() {
            bail!("data {}: no training examples", self.data.source()?.path.display());
        }
        Ok((train, holdout))
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
    fn a_micro_batch_is_whole_batches_unless_set_and_never_zero() {
        let cfg: AgentConfig = toml::from_str(EXAMPLE).unwrap();
        assert_eq!(cfg.training.micro_batch().unwrap(), None);
        let with = |n: usize| {
            let text = format!("{EXAMPLE}\n[training]\nmicro_batch = {n}\n");
            toml::from_str::<AgentConfig>(&text).unwrap().training.micro_batch()
        };
        assert_eq!(with(8).unwrap(), Some(8));
        assert!(with(0).unwrap_err().to_string().contains("training.micro_batch"));
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

    fn data_section(body: &str) -> anyhow::Result<SourceSpec> {
        let start = EXAMPLE.find("[data]").unwrap();
        let end = EXAMPLE[start..].find("\n[").map_or(EXAMPLE.len(), |e| start + e + 1);
        let text = format!("{}[data]\n{body}\n{}", &EXAMPLE[..start], &EXAMPLE[end..]);
        let cfg: AgentConfig = toml::from_str(&text)?;
        cfg.validate()?;
        cfg.data.source()
    }

    #[test]
    fn the_data_section_names_a_folder_and_a_format_and_the_older_mnist_dir_still_works() {
        let s =
            data_section("format = \"csv\"\npath = \"/d\"\nlabel_column = \"y\"\nfeature_columns = [\"a\"]").unwrap();
        assert_eq!(s.format, Some(Format::Csv));
        assert_eq!((s.path.to_str(), s.label_column.as_deref()), (Some("/d"), Some("y")));
        assert_eq!(s.feature_columns, Some(vec!["a".to_string()]));
        let s = data_section("path = \"/d\"\nnormalize = { mean = [0.5], std = [0.25] }").unwrap();
        assert_eq!(s.format, None, "detected from the folder");
        assert_eq!(s.normalize, Some(ChannelNorm { mean: vec![0.5], std: vec![0.25] }));
        let s = data_section("mnist_dir = \"/m\"").unwrap();
        assert_eq!((s.format, s.path.to_str()), (Some(Format::Idx), Some("/m")));
        let e = data_section("mnist_dir = \"/m\"\npath = \"/d\"").unwrap_err().to_string();
        assert!(e.contains("not both"), "{e}");
        assert!(data_section("limit = 3").unwrap_err().to_string().contains("set path"));
        assert!(data_section("path = \"/d\"\nformat = \"parquet\"").is_err());
        let e = data_section("path = \"/d\"\nnormalize = { mean = [0.5, 0.5], std = [1.0] }").unwrap_err();
        assert!(e.to_string().contains("normalize"), "{e}");
    }

    #[test]
    fn the_devices_own_privacy_budget_is_read_from_its_section_and_a_budget_that_protects_nothing_is_refused() {
        let cfg: AgentConfig = toml::from_str(EXAMPLE).unwrap();
        assert_eq!(cfg.privacy, None, "the example keeps no budget of its own (the section is commented out)");
        let text = format!("{EXAMPLE}\n[privacy]\nmax_epsilon = 8.0\ndelta = 1e-5\ntrusted_agents = 50\n");
        let cfg: AgentConfig = toml::from_str(&text).unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.privacy.map(|p| p.trusted_agents), Some(50));
        let bad: AgentConfig = toml::from_str(&text.replace("delta = 1e-5", "delta = 0.5")).unwrap();
        assert!(bad.validate().unwrap_err().to_string().contains("privacy.delta"));
        assert!(toml::from_str::<AgentConfig>(&text.replace("max_epsilon", "max_epsilom")).is_err(), "a typo");
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
    fn the_floor_for_secure_rounds_is_read_from_its_section_and_requires_nothing_when_absent() {
        let cfg: AgentConfig = toml::from_str(EXAMPLE).unwrap();
        assert_eq!(cfg.secagg, fedge_shared::secagg::RoundFloor::default());
        let text = format!("{EXAMPLE}\n[secagg]\nmin_cohort = 50\nmin_threshold = 12\n");
        let cfg: AgentConfig = toml::from_str(&text).unwrap();
        assert_eq!(cfg.secagg, fedge_shared::secagg::RoundFloor { min_cohort: 50, min_threshold: 12 });
        assert!(toml::from_str::<AgentConfig>(&text.replace("min_threshold", "min_treshold")).is_err(), "a typo");
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
