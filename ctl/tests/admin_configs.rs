//! The deployment files in configs/ and the Helm chart agree with the code: every shipped configuration file loads
//! through the loader the binaries use, the server configurations evaluate new models, the chart's server.toml
//! uses the ports its values expose and keeps its data on the persistent volume, and the chart's aggregator.toml
//! (a template) loads as an aggregator's on the aggregators' ports with its paths where the chart mounts things.
//! (scripts/helm-check.sh renders the chart with Helm and checks the manifests against the schemas and the server.)

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

/// The value after `key: ` on the first line inside the top-level section `section:` of the chart's values.yaml.
fn chart_value_in(section: &str, key: &str) -> String {
    let values = std::fs::read_to_string(chart().join("values.yaml")).unwrap();
    let lines = values.lines().skip_while(|l| *l != format!("{section}:")).skip(1);
    let line = lines
        .take_while(|l| l.starts_with(' ') || l.is_empty())
        .find_map(|l| l.strip_prefix(&format!("  {key}: ")))
        .unwrap_or_else(|| panic!("{section}.{key}"));
    line.trim().trim_matches('"').to_string()
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

/// The chart's aggregator.toml as Helm renders it with the default values and the given root name: its template
/// expressions replaced by what they render to (every one of them must be known here).
fn rendered_chart_aggregator(root_name: &str) -> String {
    let template = std::fs::read_to_string(chart().join("files/aggregator.toml")).unwrap();
    let min_group = chart_value_in("aggregators", "minGroup");
    let root_port = chart_value_in("service", "port");
    let expressions = [
        (r#"{{ include "fedge.aggregatorRoot" . | quote }}"#, format!("\"fedge.fedge.svc:{root_port}\"")),
        (
            r#"{{ required "aggregators.rootName: the name on the root's certificate (one of fedgectl init --name)" .Values.aggregators.rootName | quote }}"#,
            format!("\"{root_name}\""),
        ),
        ("{{ .Values.aggregators.minGroup | int }}", min_group.clone()),
        ("{{ max 10 (.Values.aggregators.minGroup | int) }}", min_group.parse::<u64>().unwrap().max(10).to_string()),
    ];
    let mut text = template;
    for (expression, value) in expressions {
        assert!(text.contains(expression), "files/aggregator.toml no longer has {expression}");
        text = text.replace(expression, &value);
    }
    assert!(!text.contains("{{"), "a template expression this test does not know:\n{text}");
    text
}

#[test]
fn the_charts_aggregator_config_loads_as_an_aggregators_on_its_ports_with_its_paths_on_the_charts_mounts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("aggregator.toml");
    std::fs::write(&path, rendered_chart_aggregator("fedge.example.org")).unwrap();
    let cfg = ServerConfig::load(&path).unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(cfg.role, fedge_server::config::Role::Aggregator);
    assert_eq!(cfg.listen.port().to_string(), chart_value_in("aggregators", "quicPort"));
    let metrics = cfg.metrics.expect("the autoscaler needs the aggregators' metrics");
    assert_eq!(metrics.port().to_string(), chart_value_in("aggregators", "metricsPort"));
    assert!(metrics.ip().is_unspecified(), "{metrics}: Prometheus scrapes the pod's address");
    let agg = cfg.aggregator.expect("[aggregator]");
    assert_eq!(agg.min_group.to_string(), chart_value_in("aggregators", "minGroup"));
    assert!(cfg.coordinator.min_agents >= agg.min_group, "a round below min_group would forward nothing");
    // The mounts of templates/aggregator-statefulset.yaml: the emptyDir, the pod's uplink folder, the Secret.
    assert!(cfg.data_dir.starts_with("/var/lib/fedge"), "{}", cfg.data_dir.display());
    assert!(agg.state_dir.as_ref().is_some_and(|d| d.starts_with("/var/lib/fedge")), "{:?}", agg.state_dir);
    assert_eq!(agg.bundle, Path::new("/etc/fedge/uplink"));
    for p in [&cfg.tls.ca, &cfg.tls.cert, &cfg.tls.key] {
        assert!(p.starts_with("/etc/fedge/pki"), "{}", p.display());
    }
    // Without a root name the chart refuses to render; an empty one the loader refuses.
    std::fs::write(&path, rendered_chart_aggregator("")).unwrap();
    let e = format!("{:#}", ServerConfig::load(&path).unwrap_err());
    assert!(e.contains("root_name"), "{e}");
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
/// The shipped aggregator configurations (servers with `role = "aggregator"`, which evaluate nothing).
const AGGREGATOR_CONFIGS: &[&str] = &["aggregator.toml"];
/// The shipped agent configurations.
const AGENT_CONFIGS: &[&str] = &["agent.toml"];

#[test]
fn every_shipped_configuration_file_loads_through_the_binaries_loader() {
    let mut files = vec![];
    toml_files(configs(), &mut files);
    assert!(files.len() >= SERVER_CONFIGS.len() + AGGREGATOR_CONFIGS.len() + AGENT_CONFIGS.len(), "{files:?}");
    for path in files {
        let name = path.strip_prefix(configs()).unwrap().to_string_lossy().replace('\\', "/");
        if SERVER_CONFIGS.contains(&name.as_str()) {
            ServerConfig::load(&path).unwrap_or_else(|e| panic!("{name}: {e:#}"));
        } else if AGGREGATOR_CONFIGS.contains(&name.as_str()) {
            let cfg = ServerConfig::load(&path).unwrap_or_else(|e| panic!("{name}: {e:#}"));
            assert_eq!(cfg.role, fedge_server::config::Role::Aggregator, "{name}");
        } else if AGENT_CONFIGS.contains(&name.as_str()) {
            AgentConfig::load(&path).unwrap_or_else(|e| panic!("{name}: {e:#}"));
        } else {
            panic!("configs/{name} is shipped but no test loads it: add it to one of the *_CONFIGS lists");
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
