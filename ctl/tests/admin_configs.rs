//! The deployment files in configs/ agree with the code: every shipped configuration file loads through the loader
//! the binaries use, the server configurations evaluate new models, and the Kubernetes manifests expose the ports
//! and hold the paths those configurations use.

use fedge_agent::config::AgentConfig;
use fedge_server::config::ServerConfig;
use std::path::{Path, PathBuf};

fn configs() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../configs"))
}

#[test]
fn the_kubernetes_server_config_parses_and_its_ports_are_the_ones_the_manifest_exposes() {
    let cfg = ServerConfig::load(&configs().join("kubernetes/server.toml")).unwrap();
    let metrics = cfg.metrics.expect("the Kubernetes config serves metrics");
    let manifest = std::fs::read_to_string(configs().join("kubernetes/fedge-server.yaml")).unwrap();
    assert!(manifest.contains(&format!("prometheus.io/port: \"{}\"", metrics.port())));
    assert!(manifest.contains(&format!("containerPort: {}, protocol: UDP", cfg.listen.port())));
    assert!(manifest.contains("mountPath: /var/lib/fedge }") && cfg.data_dir.starts_with("/var/lib/fedge"));
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
const SERVER_CONFIGS: &[&str] = &["server.toml", "kubernetes/server.toml"];
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
    // On Kubernetes the test set lives on the data volume, and the pod waits for it before the server starts.
    let cfg = ServerConfig::load(&configs().join("kubernetes/server.toml")).unwrap();
    let test_data = cfg.evaluation.unwrap().test_data;
    assert!(test_data.starts_with("/var/lib/fedge"), "{}: not on the data volume", test_data.display());
    let manifest = std::fs::read_to_string(configs().join("kubernetes/fedge-server.yaml")).unwrap();
    let waiter = manifest.find("name: wait-for-test-data").expect("an init container waits for the test set");
    let waiter = &manifest[waiter..manifest[waiter..].find("containers:").map_or(manifest.len(), |e| waiter + e)];
    assert!(waiter.contains(&format!("dir={}", test_data.display())), "{waiter}");
    assert!(waiter.contains("t10k-images-idx3-ubyte") && waiter.contains("t10k-labels-idx1-ubyte"), "{waiter}");
    assert!(waiter.contains("{ name: data, mountPath: /var/lib/fedge }"), "{waiter}");
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
