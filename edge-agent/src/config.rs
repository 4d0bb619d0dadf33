//! The agent's configuration file (`agent.toml`): which server, which certificate bundle, which local data, where
//! to keep state.
//!
//! Unknown keys and wrong types are refused with the file, line and key; every key can be overridden by an
//! environment variable `FEDGE_AGENT__SECTION__KEY` (e.g. `FEDGE_AGENT__SERVER__ADDRESS=10.0.0.2:4433`).
//! This module reads files only.

use anyhow::{Context, bail};
use fedge_shared::data::{self, Dataset, Split};
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
        Ok(())
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
}
