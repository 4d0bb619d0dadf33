//! The deployment files in configs/ and the Helm chart agree with the code: every shipped configuration file loads
//! through the loader the binaries use, the server configurations evaluate new models, and the chart's server.toml
//! uses the ports its values expose and keeps its data on the persistent volume. (scripts/helm-check.sh checks the
//! chart's rendered manifests against the schemas and this server.toml.)

use fedge_agent::config::AgentConfig;
use fedge_server::config::ServerConfig;
use std::path::{Path, PathBuf};

fn configs() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../configs"))
}

fn chart() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/helm/fedge"))
}

/// The number after `key: ` on a line of the chart's values.yaml that starts with it.
fn chart_value(key: &str) -> u16 {
    let values = std::fs::read_to_string(chart().join("values.yaml")).unwrap();
    let line = values.lines().find_map(|l| l.strip_prefix(&format!("{key}: "))).expect(key);
    line.trim().parse().unwrap_or_else(|e| panic!("{key}: {line:?}: {e}"))
}

#[test]
fn the_charts_server_config_loads_on_the_ports_the_chart_exposes_with_its_data_on_the_volume() {
    let cfg = ServerConfig::load(&chart().join("files/server.toml")).unwrap();
    assert_eq!(cfg.listen.port(), chart_value("quicPort"));
    assert_eq!(cfg.metrics.expect("the chart's config serves metrics").port(), chart_value("metricsPort"));
    assert!(cfg.data_dir.starts_with("/var/lib/fedge"), "{}", cfg.data_dir.display());
    // The test set lives on the data volume, where the chart's init container waits for it.
    let eval = cfg.evaluation.expect("the chart's config evaluates new models");
    assert!(eval.test_data.starts_with("/var/lib/fedge"), "{}: not on the data volume", eval.test_data.display());
    assert!(eval.limit.is_none_or(|n| n > 0));
}

/// Every `.toml` file under `dir`, recursively.
fn toml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            toml_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "toml") {
            out.push(path);
        }
    }
}

/// The shipped server configurations (relative to configs/).
const SERVER_CONFIGS: &[&str] = &["server.toml"];
/// The shipped agent configurations.
const AGENT_CONFIGS: &[&str] = &["agent.toml"];

#[test]
fn every_shipped_configuration_file_loads_through_the_binaries_loader() {
    let mut files = vec![];
    toml_files(configs(), &mut files);
    assert!(files.len() >= SERVER_CONFIGS.len() + AGENT_CONFIGS.len(), "{files:?}");
    for path in files {
        let name = path.strip_prefix(configs()).unwrap().to_string_lossy().replace('\\', "/");
        if SERVER_CONFIGS.contains(&name.as_str()) {
            ServerConfig::load(&path).unwrap_or_else(|e| panic!("{name}: {e:#}"));
        } else if AGENT_CONFIGS.contains(&name.as_str()) {
            AgentConfig::load(&path).unwrap_or_else(|e| panic!("{name}: {e:#}"));
        } else {
            panic!("configs/{name} is shipped but no test loads it: add it to SERVER_CONFIGS or AGENT_CONFIGS");
        }
    }
}

#[test]
fn every_shipped_server_config_evaluates_new_models_so_accuracy_shows_and_a_target_can_stop_rounds() {
    for name in SERVER_CONFIGS {
        let cfg = ServerConfig::load(&configs().join(name)).unwrap();
        let eval = cfg.evaluation.unwrap_or_else(|| panic!("configs/{name} has no [evaluation]"));
        assert!(eval.limit.is_none_or(|n| n > 0), "configs/{name}: an evaluation limit of 0 evaluates nothing");
    }
}

#[test]
fn the_example_server_config_names_a_metrics_address() {
    let cfg = ServerConfig::load(&configs().join("server.toml")).unwrap();
    assert_eq!(cfg.metrics, Some("127.0.0.1:9464".parse().unwrap()));
}

#[test]
fn the_agent_unit_runs_the_agent_with_a_restart_policy_and_limits() {
    let unit = std::fs::read_to_string(configs().join("systemd/fedge-agent.service")).unwrap();
    for line in [
        "ExecStart=/usr/bin/fedge-agent run --config /etc/fedge/agent.toml",
        "Restart=on-failure",
        "MemoryMax=",
        "CPUQuota=",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
    ] {
        assert!(unit.lines().any(|l| l.starts_with(line)), "missing {line}");
    }
}
