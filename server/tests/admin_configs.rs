//! The deployment files in configs/ agree with the code: the server configurations parse and validate, and the
//! Kubernetes manifests expose the ports those configurations use.

use fedge_server::config::ServerConfig;
use std::path::Path;

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
