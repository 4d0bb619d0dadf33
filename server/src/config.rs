//! The server's configuration file (`server.toml`): where it listens, its certificates, its database, the initial
//! model, the test set it evaluates on, and the coordinator's round settings.
//!
//! Unknown keys and wrong types are refused with the file, line and key (toml's error messages carry them);
//! values are validated before the server starts. Every key can be overridden by an environment variable
//! `FEDGE_SERVER__SECTION__KEY` (double underscores between levels, e.g. `FEDGE_SERVER__COORDINATOR__MIN_AGENTS=5`).
//! This module reads files; it never opens sockets.

use crate::coordinator::{CoordinatorConfig, SecAggConfig};
use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// `server.toml`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// `"server"` (the default): the federation's server, or the root of a tier of aggregators; `"aggregator"`: an
    /// aggregator of a larger federation, which runs its own agents' rounds when its root asks and forwards their
    /// unmasked mean to it (`[aggregator]`; see `crate::aggregator`).
    #[serde(default)]
    pub role: Role,
    /// The root an aggregator serves (`role = "aggregator"` only).
    #[serde(default)]
    pub aggregator: Option<crate::aggregator::AggregatorConfig>,
    /// UDP address for QUIC.
    pub listen: SocketAddr,
    /// sled database directory.
    pub data_dir: PathBuf,
    /// Keep the weights of this many newest model versions (older versions keep their metadata and round
    /// records); each kept version costs up to its size in memory; 0 keeps every version's weights, and the
    /// server's memory then grows by one model per round.
    #[serde(default = "default_keep_weights")]
    pub keep_weights: u64,
    /// No round starts while less than this many MiB are free on the database's disk (default: four times the
    /// model's size plus 8 MiB).
    #[serde(default)]
    pub min_free_disk_mb: Option<u64>,
    pub tls: TlsFiles,
    /// The model (required of a server; an aggregator takes its root's).
    #[serde(default)]
    pub model: ModelSource,
    #[serde(default)]
    pub evaluation: Option<Evaluation>,
    pub coordinator: CoordinatorConfig,
    /// Run until this many rounds have committed (then stay up, serving the model), counted from the version the
    /// database held when the run began and kept in the database, so a restart finishes the same run (see
    /// [`crate::run`]); `None`: keep running rounds.
    #[serde(default)]
    pub rounds: Option<u64>,
    /// Start rounds as soon as enough agents check in (otherwise wait for an operator's `round start`).
    #[serde(default = "yes")]
    pub autostart: bool,
    /// Close a connection silent for this long.
    #[serde(default = "default_idle")]
    pub idle_timeout_ms: u64,
    /// At most this many update uploads are read at once (each holds one vector in memory until it is folded).
    #[serde(default = "default_uploads")]
    pub max_concurrent_uploads: usize,
    /// At most this many MiB of uploads are held at once (an upload larger than this is read alone). With
    /// `max_concurrent_uploads`, what bounds the server's memory for uploads: small uploads (a secure round's masked
    /// vectors, 8-bit deltas) are read many at a time, large ones a few.
    #[serde(default = "default_upload_memory")]
    pub upload_memory_mb: u64,
    /// At most this many model downloads in flight at once; the others wait (default: no limit). Agents on links
    /// slower than the server's want no limit: each download is paced by its own link. A server that is itself
    /// the bottleneck (many agents on a fast LAN) rounds faster with a limit, and keeps less memory for QUIC's
    /// records of packets in flight (100 agents downloading a 4 MB model at once: about 20 MB).
    #[serde(default)]
    pub max_concurrent_downloads: Option<usize>,
    /// At most this many datagrams go to the kernel in one send call (one GSO batch), 1 to 10. quinn keeps, for
    /// every connection, a send buffer the size of the largest batch it sent: about 1.4 KB a datagram, held for
    /// the connection's life. Fewer datagrams per call keep less memory per connected agent and cost more send
    /// calls for the same bytes (at 1,000 agents: 10 keeps about 10 MB more than 3, and 3 costs about 10% more server
    /// CPU than 10; BENCHMARKS.md).
    #[serde(default = "default_send_batch")]
    pub udp_send_batch: usize,
    /// Secure aggregation (`[secagg]`): on unless `enabled = false`.
    #[serde(default)]
    pub secagg: SecAggConfig,
    /// TCP address for Prometheus metrics (`GET /metrics`), e.g. "127.0.0.1:9464"; none when absent.
    #[serde(default)]
    pub metrics: Option<SocketAddr>,
    /// Distributed differential privacy (`[privacy]`): `noise_multiplier`, `clip_norm`, `delta`, `target_epsilon`.
    /// Off when absent. Needs secure aggregation.
    #[serde(default)]
    pub privacy: Option<fedge_shared::privacy::PrivacySettings>,
    /// Buffered asynchronous aggregation (`[buffered]`, FedBuff): `size` (K, the updates that complete a round),
    /// `staleness_exponent`, `max_staleness`. Off when absent: rounds are synchronous. Needs `[secagg] enabled =
    /// false`.
    #[serde(default)]
    pub buffered: Option<crate::coordinator::BufferedConfig>,
    /// How a new version reaches agents that hold an older one: `"int8"` (the default), as its 8-bit difference to
    /// their version (a quarter of the bytes; the server commits exactly what the difference rebuilds, within half
    /// a quantization step of the strategy's result, so every agent holds the same bits), or `"f32"`, whole and exact.
    #[serde(default)]
    pub download: fedge_shared::delta_encoding::DeltaEncoding,
}

fn yes() -> bool {
    true
}
/// The default of `keep_weights`: the newest model, its parent and one more. Each kept version costs up to its size
/// in server memory, because sled 0.34 keeps stored values in memory (RELIABILITY.md, Soak).
pub const DEFAULT_KEEP_WEIGHTS: u64 = 3;

fn default_keep_weights() -> u64 {
    DEFAULT_KEEP_WEIGHTS
}
fn default_idle() -> u64 {
    30_000
}
fn default_uploads() -> usize {
    64
}
fn default_upload_memory() -> u64 {
    16
}
fn default_send_batch() -> usize {
    3
}

impl ServerConfig {
    /// What a role needs and refuses: a server its `[model]`, an aggregator its `[aggregator]` and none of what only
    /// a committing server does.
    fn validate_role(&self) -> anyhow::Result<()> {
        match (self.role, &self.aggregator) {
            (Role::Server, Some(_)) => bail!("[aggregator] is only for role = \"aggregator\""),
            (Role::Server, None) if self.model.onnx.as_os_str().is_empty() => {
                bail!("[model] onnx is required (the ONNX graph the federation trains)")
            }
            (Role::Server, None) => Ok(()),
            (Role::Aggregator, None) => {
                bail!("role = \"aggregator\" needs an [aggregator] section (root, root_name, bundle)")
            }
            (Role::Aggregator, Some(a)) => {
                a.validate().map_err(|e| anyhow::anyhow!("[aggregator] {e}"))?;
                if self.evaluation.is_some() {
                    bail!("an aggregator evaluates nothing ([evaluation]): its root evaluates the models it commits");
                }
                if self.privacy.is_some() {
                    bail!(
                        "an aggregator cannot add differential privacy ([privacy]): its root's budget would not count it"
                    );
                }
                if self.buffered.is_some() {
                    bail!("an aggregator cannot run buffered rounds ([buffered])");
                }
                if a.min_group > self.coordinator.max_agents {
                    bail!(
                        "[aggregator] min_group = {} is above [coordinator] max_agents = {}: no round could be forwarded",
                        a.min_group,
                        self.coordinator.max_agents
                    );
                }
                Ok(())
            }
        }
    }
}

/// Certificate files.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// A file of revoked certificates, one `NAME SHA256-FINGERPRINT` per line (written by `fedgectl agent revoke`);
    /// read at every new connection.
    #[serde(default)]
    pub revoked: Option<PathBuf>,
}

/// What a `fedge-server` is in the federation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    #[default]
    Server,
    Aggregator,
}

/// The model the federation trains.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSource {
    /// ONNX graph used to create version 0 when the database is empty (required of a server).
    #[serde(default)]
    pub onnx: PathBuf,
}

/// Server-side evaluation of every new global model (optional).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Evaluation {
    /// A data folder in any format the agents read (its test part: `test.csv`, `test.npz`, `test/<class>/`, or
    /// MNIST-style `t10k-*` IDX files).
    pub test_data: PathBuf,
    /// `csv`, `npz`, `images` or `idx`; detected from the folder when not set.
    #[serde(default)]
    pub format: Option<fedge_shared::data::Format>,
    /// CSV: the label (or target) column (default `label`).
    #[serde(default)]
    pub label_column: Option<String>,
    /// CSV: the feature columns, in order (default: every other column).
    #[serde(default)]
    pub feature_columns: Option<Vec<String>>,
    /// Image folders: per-channel `mean` and `std` applied after scaling to [0, 1].
    #[serde(default)]
    pub normalize: Option<fedge_shared::data::ChannelNorm>,
    /// Text (`test.txt`): characters per example (default 80) and between example starts (default 1).
    #[serde(default)]
    pub window: Option<usize>,
    #[serde(default)]
    pub stride: Option<usize>,
    /// Evaluate on at most this many examples.
    #[serde(default)]
    pub limit: Option<usize>,
}

impl Evaluation {
    /// The data source this section describes.
    pub fn source(&self) -> fedge_shared::data::SourceSpec {
        fedge_shared::data::SourceSpec {
            format: self.format,
            path: self.test_data.clone(),
            label_column: self.label_column.clone(),
            feature_columns: self.feature_columns.clone(),
            normalize: self.normalize.clone(),
            window: self.window,
            stride: self.stride,
        }
    }
}

impl ServerConfig {
    /// Reads, overrides from the environment, and validates a configuration file.
    pub fn load(path: &Path) -> anyhow::Result<ServerConfig> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let mut value: toml::Value =
            toml::from_str(&text).with_context(|| format!("{}: not valid TOML", path.display()))?;
        apply_env_overrides(&mut value, "FEDGE_SERVER__", std::env::vars())
            .with_context(|| format!("{}: environment override", path.display()))?;
        let cfg = ServerConfig::from_value(value, &text).with_context(|| format!("{}", path.display()))?;
        Ok(cfg)
    }

    fn from_value(value: toml::Value, original: &str) -> anyhow::Result<ServerConfig> {
        // Deserialising from the text gives line numbers; use it when no override changed anything.
        let cfg: ServerConfig = match toml::from_str::<ServerConfig>(original) {
            Ok(c) if toml::Value::try_from(&c).ok().as_ref() == Some(&value) => c,
            Ok(_) => value.try_into()?,
            Err(e) => return Err(e.into()),
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks values that serde alone cannot.
    pub fn validate(&self) -> anyhow::Result<()> {
        self.coordinator.validate().context("[coordinator]")?;
        self.validate_role()?;
        self.secagg.validate(self.coordinator.min_agents, self.coordinator.max_agents).context("[secagg]")?;
        if let Some(p) = &self.privacy {
            if !self.secagg.enabled {
                bail!(
                    "[privacy] needs secure aggregation ([secagg] enabled = true): without it the server sees each agent's noise"
                );
            }
            p.validate(self.coordinator.min_agents as u64).context("[privacy]")?;
        }
        if let Some(b) = &self.buffered {
            if self.privacy.is_some() {
                bail!("[buffered] is not supported with [privacy]: a buffer's group is not charged to the budget");
            }
            b.validate(&self.coordinator).context("[buffered]")?;
            if self.secagg.enabled {
                b.check_secure().context("[buffered]")?;
            }
        }
        if self.idle_timeout_ms < 1_000 {
            bail!("idle_timeout_ms must be at least 1000, not {}", self.idle_timeout_ms);
        }
        if self.max_concurrent_uploads == 0 {
            bail!("max_concurrent_uploads must be at least 1");
        }
        if !(1..=1 << 20).contains(&self.upload_memory_mb) {
            bail!("upload_memory_mb must be between 1 and 1048576 (MiB), not {}", self.upload_memory_mb);
        }
        if !(1..=crate::net::MAX_SEND_BATCH).contains(&self.udp_send_batch) {
            bail!(
                "udp_send_batch must be between 1 and {} (datagrams), not {}",
                crate::net::MAX_SEND_BATCH,
                self.udp_send_batch
            );
        }
        if self.max_concurrent_downloads == Some(0) {
            bail!("max_concurrent_downloads must be at least 1 (or left out: no limit)");
        }
        if self.min_free_disk_mb.is_some_and(|mb| mb > 1 << 30) {
            bail!("min_free_disk_mb is out of range (at most {} MiB)", 1u64 << 30);
        }
        Ok(())
    }
}

/// Applies `PREFIX` + `A__B__C=value` environment variables to a TOML document: the value is parsed as TOML
/// (a number, boolean, array...) and falls back to a string.
pub fn apply_env_overrides(
    doc: &mut toml::Value,
    prefix: &str,
    vars: impl Iterator<Item = (String, String)>,
) -> anyhow::Result<()> {
    for (k, v) in vars {
        let Some(rest) = k.strip_prefix(prefix) else { continue };
        let path: Vec<String> = rest.split("__").map(|s| s.to_ascii_lowercase()).collect();
        if path.iter().any(|p| p.is_empty()) {
            bail!("{k}: empty key segment");
        }
        let parsed = toml::from_str::<toml::Table>(&format!("x = {v}"))
            .ok()
            .and_then(|mut t| t.remove("x"))
            .unwrap_or(toml::Value::String(v.clone()));
        let mut node = &mut *doc;
        for (i, seg) in path.iter().enumerate() {
            let table = node.as_table_mut().ok_or_else(|| anyhow::anyhow!("{k}: {seg:?} is not inside a table"))?;
            if i + 1 == path.len() {
                table.insert(seg.clone(), parsed.clone());
                break;
            }
            node = table.entry(seg.clone()).or_insert_with(|| toml::Value::Table(Default::default()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../configs/server.toml");

    #[test]
    fn the_example_configuration_parses_and_validates() {
        let v: toml::Value = toml::from_str(EXAMPLE).unwrap();
        ServerConfig::from_value(v, EXAMPLE).unwrap();
    }

    const AGGREGATOR: &str = include_str!("../../configs/aggregator.toml");

    #[test]
    fn the_example_aggregator_parses_and_needs_no_model() {
        let v: toml::Value = toml::from_str(AGGREGATOR).unwrap();
        let c = ServerConfig::from_value(v, AGGREGATOR).unwrap();
        assert_eq!(c.role, Role::Aggregator);
        assert_eq!(c.aggregator.map(|a| a.min_group), Some(10));
    }

    #[test]
    fn a_role_and_its_sections_go_together() {
        let with = |text: &str| {
            let t = format!("{AGGREGATOR}\n{text}");
            let v: toml::Value = toml::from_str(&t).map_err(|e| e.to_string())?;
            ServerConfig::from_value(v, &t).map_err(|e| format!("{e:#}"))
        };
        // An aggregator never evaluates, adds noise or buffers: its root does what commits.
        let e = with("[evaluation]\ntest_data = \"/data\"").unwrap_err();
        assert!(e.contains("[evaluation]"), "{e}");
        let e = with("[buffered]\nsize = 5").unwrap_err();
        assert!(e.contains("[buffered]"), "{e}");
        // A server needs its model, and takes no [aggregator].
        let server = AGGREGATOR.replace("role = \"aggregator\"", "role = \"server\"");
        let v: toml::Value = toml::from_str(&server).unwrap();
        let e = format!("{:#}", ServerConfig::from_value(v, &server).unwrap_err());
        assert!(e.contains("[aggregator] is only for"), "{e}");
        let no_section = EXAMPLE.replace("[model]", "[model]\n# none").replace("onnx = ", "# onnx = ");
        let v: toml::Value = toml::from_str(&no_section).unwrap();
        let e = format!("{:#}", ServerConfig::from_value(v, &no_section).unwrap_err());
        assert!(e.contains("[model] onnx is required"), "{e}");
        // A group of one would forward one agent's update.
        let one = AGGREGATOR.replace("min_group = 10", "min_group = 1");
        let v: toml::Value = toml::from_str(&one).unwrap();
        let e = format!("{:#}", ServerConfig::from_value(v, &one).unwrap_err());
        assert!(e.contains("min_group = 1"), "{e}");
    }

    #[test]
    fn an_unknown_key_is_refused_naming_the_key_and_line() {
        let text = EXAMPLE.replacen("autostart", "autostrat", 1);
        let v: toml::Value = toml::from_str(&text).unwrap();
        let err = format!("{:#}", ServerConfig::from_value(v, &text).unwrap_err());
        assert!(err.contains("autostrat"), "{err}");
        assert!(err.contains("line"), "{err}");
    }

    #[test]
    fn environment_variables_override_nested_keys() {
        let mut v: toml::Value = toml::from_str(EXAMPLE).unwrap();
        let vars = vec![("FEDGE_SERVER__COORDINATOR__MIN_AGENTS".to_string(), "7".to_string())];
        apply_env_overrides(&mut v, "FEDGE_SERVER__", vars.into_iter()).unwrap();
        let cfg = ServerConfig::from_value(v, EXAMPLE).unwrap();
        assert_eq!(cfg.coordinator.min_agents, 7);
    }

    #[test]
    fn secure_aggregation_is_on_unless_the_configuration_turns_it_off() {
        let v: toml::Value = toml::from_str(EXAMPLE).unwrap();
        assert!(ServerConfig::from_value(v, EXAMPLE).unwrap().secagg.enabled);
        let (start, end) = (EXAMPLE.find("[secagg]").unwrap(), EXAMPLE.find("[coordinator]").unwrap());
        let text = format!("{}{}", &EXAMPLE[..start], &EXAMPLE[end..]);
        let cfg = ServerConfig::from_value(toml::from_str(&text).unwrap(), &text).unwrap();
        assert!(cfg.secagg.enabled, "a file without [secagg] runs secure rounds");
        let mut v: toml::Value = toml::from_str(EXAMPLE).unwrap();
        let vars = vec![("FEDGE_SERVER__SECAGG__ENABLED".to_string(), "false".to_string())];
        apply_env_overrides(&mut v, "FEDGE_SERVER__", vars.into_iter()).unwrap();
        assert!(!ServerConfig::from_value(v, EXAMPLE).unwrap().secagg.enabled);
    }

    #[test]
    fn a_threshold_that_voids_privacy_is_refused_naming_the_key() {
        let mut v: toml::Value = toml::from_str(EXAMPLE).unwrap();
        let vars = vec![
            ("FEDGE_SERVER__SECAGG__NEIGHBOURS".to_string(), "10".to_string()),
            ("FEDGE_SERVER__SECAGG__THRESHOLD".to_string(), "5".to_string()),
        ];
        apply_env_overrides(&mut v, "FEDGE_SERVER__", vars.into_iter()).unwrap();
        let err = format!("{:#}", ServerConfig::from_value(v, EXAMPLE).unwrap_err());
        assert!(err.contains("secagg.threshold"), "{err}");
    }

    #[test]
    fn quantization_that_overflows_the_modulus_is_refused_naming_the_key() {
        let mut v: toml::Value = toml::from_str(EXAMPLE).unwrap();
        let vars = vec![("FEDGE_SERVER__SECAGG__QUANT_BITS".to_string(), "30".to_string())];
        apply_env_overrides(&mut v, "FEDGE_SERVER__", vars.into_iter()).unwrap();
        let err = format!("{:#}", ServerConfig::from_value(v, EXAMPLE).unwrap_err());
        assert!(err.contains("secagg.quant_bits") && err.contains("modulus"), "{err}");
    }

    #[test]
    fn a_proximal_coefficient_among_the_hyper_parameters_is_refused_naming_the_strategys_mu() {
        let text = EXAMPLE.replacen("weight_decay = 0.0\n", "weight_decay = 0.0\nprox_mu = 0.01\n", 1);
        assert_ne!(text, EXAMPLE);
        let err = format!("{:#}", ServerConfig::from_value(toml::from_str(&text).unwrap(), &text).unwrap_err());
        assert!(err.contains("hyper.prox_mu") && err.contains("kind = \"fedprox\", mu"), "{err}");
    }

    #[test]
    fn buffered_rounds_take_either_aggregation_a_size_between_min_and_max_agents_and_a_discount_agents_accept() {
        let with = |text: &str| ServerConfig::from_value(toml::from_str(text).unwrap(), text);
        let text = EXAMPLE.replacen("# [buffered]\n# size = 5", "[buffered]\nsize = 5", 1);
        assert_ne!(text, EXAMPLE);
        let secure = with(&text).unwrap();
        assert!(secure.secagg.enabled && secure.buffered.is_some(), "secure buffered rounds are accepted");
        let plain = text.replacen("enabled = true\n", "enabled = false\n", 1);
        let cfg = with(&plain).unwrap();
        assert_eq!(cfg.buffered.map(|b| (b.size, b.staleness_exponent, b.max_staleness)), Some((5, 0.5, 50)));
        let too_big = plain.replacen("size = 5", "size = 500", 1);
        let err = format!("{:#}", with(&too_big).unwrap_err());
        assert!(err.contains("[buffered]") && err.contains("max_agents"), "{err}");
        // 51^-4 is far under the least scale agents accept; plain rounds do not care.
        let steep = text.replacen("size = 5", "size = 5\nstaleness_exponent = 4.0", 1);
        let err = format!("{:#}", with(&steep).unwrap_err());
        assert!(err.contains("[buffered]") && err.contains("max_staleness"), "{err}");
        assert!(with(&steep.replacen("enabled = true\n", "enabled = false\n", 1)).is_ok());
        let private = text.replacen("# [privacy]\n# noise_multiplier = 1.0", "[privacy]\nnoise_multiplier = 1.0", 1);
        let private = private.replacen(
            "# clip_norm = 1.0\n# delta = 1e-5\n# target_epsilon = 8.0",
            "clip_norm = 1.0\ndelta = 1e-5\ntarget_epsilon = 8.0",
            1,
        );
        let err = format!("{:#}", with(&private).unwrap_err());
        assert!(err.contains("[buffered]") && err.contains("[privacy]"), "{err}");
        assert!(with(&private.replacen("[buffered]\nsize = 5", "", 1)).is_ok(), "privacy alone is accepted");
    }

    #[test]
    fn an_out_of_range_value_is_refused_with_its_name() {
        let mut v: toml::Value = toml::from_str(EXAMPLE).unwrap();
        let vars = vec![("FEDGE_SERVER__COORDINATOR__FRACTION".to_string(), "1.5".to_string())];
        apply_env_overrides(&mut v, "FEDGE_SERVER__", vars.into_iter()).unwrap();
        let err = format!("{:#}", ServerConfig::from_value(v, EXAMPLE).unwrap_err());
        assert!(err.contains("fraction"), "{err}");
    }
}
