//! `[aggregator]` in server.toml: which root an aggregator serves, with which certificate, and the smallest group
//! whose mean it forwards.
//!
//! Plain data and checks: this module opens no file and no socket.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// `[aggregator]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AggregatorConfig {
    /// The root server, `host:port` (UDP). A name with several address records gives each, tried in turn.
    pub root: String,
    /// The name on the root's certificate (one of `fedgectl init --name`).
    pub root_name: String,
    /// This aggregator's certificate bundle as an agent of the root (`cert.pem`, `key.pem`, `ca.pem`, from
    /// `fedgectl agent add`): the root enrols and revokes aggregators as it does agents.
    pub bundle: PathBuf,
    /// The fewest agents whose mean is ever forwarded (at least 2): a partial aggregate of one agent is that agent's
    /// update, in the clear at the root. A round with fewer survivors forwards nothing.
    #[serde(default = "default_min_group")]
    pub min_group: usize,
    /// Where the aggregator keeps the root's graph and newest weights between restarts (default: beside the
    /// database, its path with `-uplink` appended).
    #[serde(default)]
    pub state_dir: Option<PathBuf>,
}

/// The default `min_group`.
pub const DEFAULT_MIN_GROUP: usize = 5;

fn default_min_group() -> usize {
    DEFAULT_MIN_GROUP
}

impl AggregatorConfig {
    /// Checks what serde cannot, naming the key.
    pub fn validate(&self) -> Result<(), String> {
        if self.min_group < 2 {
            return Err(format!(
                "min_group = {}: a partial aggregate of one agent is that agent's update (at least 2)",
                self.min_group
            ));
        }
        if self.root.trim().is_empty() {
            return Err("root is empty (host:port of the root server)".into());
        }
        if self.root_name.trim().is_empty() {
            return Err("root_name is empty (the name on the root's certificate)".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(min_group: usize) -> AggregatorConfig {
        AggregatorConfig {
            root: "root.example:4433".into(),
            root_name: "root".into(),
            bundle: "/etc/fedge/uplink".into(),
            min_group,
            state_dir: None,
        }
    }

    #[test]
    fn a_group_of_one_is_refused_because_its_mean_is_one_agents_update() {
        assert!(settings(1).validate().unwrap_err().contains("min_group = 1"));
        assert!(settings(0).validate().is_err());
        assert!(settings(2).validate().is_ok());
    }

    #[test]
    fn the_root_must_be_named() {
        let mut s = settings(5);
        s.root = " ".into();
        assert!(s.validate().unwrap_err().contains("root"));
        let mut s = settings(5);
        s.root_name = String::new();
        assert!(s.validate().unwrap_err().contains("root_name"));
    }
}
