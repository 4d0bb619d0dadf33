//! `configs/grafana/fedge.json` is a Grafana dashboard whose every query names metrics that fedge really exposes: a
//! real server (plain round, evaluation on) and a real agent with its inference endpoint run a round and answer a
//! prediction, both `/metrics` endpoints are scraped over HTTP, and each metric name in each panel query and
//! template variable must be declared by a `# TYPE` line and have a sample in one of the two scrapes.

use fedge_agent::client::Agent;
use fedge_agent::inference::{self, InferenceSettings};
use fedge_agent::learner::NoiseLearner;
use fedge_agent::state::ModelState;
use fedge_server::config::{ModelSource, ServerConfig, TlsFiles};
use fedge_server::evaluator::{Evaluator, TractEvaluator};
use fedge_server::service::{self, ServerEvent};
use fedge_shared::data::{self, Split};
use fedge_shared::tls::{self, Role};
use fedge_system_tests::promql::{Exposition, metric_names, variable_metric_names};
use fedge_system_tests::{cohort_of, init_logs, tiny_mnist, wait_server};
use serde_json::Value;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

fn dashboard() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/grafana/fedge.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: not JSON: {e}", path.display()))
}

/// Every panel, rows' nested panels included.
fn panels(d: &Value) -> Vec<&Value> {
    let mut out = vec![];
    for p in d["panels"].as_array().expect("a panels array") {
        out.push(p);
        if let Some(inner) = p["panels"].as_array() {
            out.extend(inner);
        }
    }
    out
}

/// (where, query) for every panel target and every query variable.
fn queries(d: &Value) -> Vec<(String, String)> {
    let mut out = vec![];
    for p in panels(d) {
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().unwrap_or_else(|| panic!("panel {:?}: a target without expr", p["title"]));
            out.push((format!("panel {:?} target {}", p["title"], t["refId"]), expr.to_string()));
        }
    }
    for v in d["templating"]["list"].as_array().into_iter().flatten() {
        if v["type"] == "query" {
            let q = v["query"]["query"].as_str().or(v["query"].as_str()).expect("a variable's query");
            out.push((format!("variable {}", v["name"]), format!("variable:{q}")));
        }
    }
    out
}

#[test]
fn the_dashboard_is_an_importable_grafana_10_dashboard_on_a_chosen_prometheus() {
    let d = dashboard();
    assert!(d["schemaVersion"].as_u64().unwrap() >= 38, "Grafana 10 writes schema 38 and later");
    assert!(d["uid"].as_str().is_some_and(|u| !u.is_empty() && u.len() <= 40));
    assert!(d["title"].as_str().is_some_and(|t| !t.is_empty()));
    assert!(d["id"].is_null(), "an exported dashboard has no database id, so that import creates it");
    let vars = d["templating"]["list"].as_array().unwrap();
    assert!(vars.iter().any(|v| v["name"] == "datasource" && v["type"] == "datasource" && v["query"] == "prometheus"));
    let mut ids = BTreeSet::new();
    for p in panels(&d) {
        let title = &p["title"];
        assert!(ids.insert(p["id"].as_u64().expect("a numeric id")), "panel {title}: duplicate id");
        let g = &p["gridPos"];
        let (x, w, h) = (g["x"].as_u64().unwrap(), g["w"].as_u64().unwrap(), g["h"].as_u64().unwrap());
        assert!(w > 0 && h > 0 && x + w <= 24, "panel {title}: off the 24-column grid");
        assert!(["row", "stat", "timeseries"].contains(&p["type"].as_str().unwrap()), "panel {title}");
        if p["type"] != "row" {
            assert_eq!(p["datasource"]["uid"], "${datasource}", "panel {title}");
            for t in p["targets"].as_array().unwrap() {
                assert_eq!(t["datasource"]["uid"], "${datasource}", "panel {title}");
            }
        }
    }
    assert!(ids.len() > 10);
}

async fn http(addr: SocketAddr, request: String, body: &[u8]) -> (String, Vec<u8>) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    let mut raw = vec![];
    s.read_to_end(&mut raw).await.unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("a response head");
    (String::from_utf8_lossy(&raw[..split]).into_owned(), raw[split + 4..].to_vec())
}

async fn scrape(addr: SocketAddr) -> String {
    let (head, body) =
        http(addr, "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".into(), &[]).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    String::from_utf8(body).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_queries_is_exposed_by_a_running_server_or_agent() {
    init_logs();
    let d = dashboard();

    // A server with metrics and a test set, running one plain round (one agent).
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    tls::init_federation(&pki, &["localhost".into(), "127.0.0.1".into()], 30).unwrap();
    let model = dir.path().join("model.onnx");
    std::fs::write(&model, fedge_shared::train::builder::mlp(&[784, 8, 10], 3)).unwrap();
    tiny_mnist(&dir.path().join("data"), 20, 1).unwrap();
    let test = data::load_mnist_dir(&dir.path().join("data"), Split::Test).unwrap();
    let config = ServerConfig {
        role: Default::default(),
        aggregator: None,
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.path().join("db"),
        keep_weights: fedge_server::config::DEFAULT_KEEP_WEIGHTS,
        min_free_disk_mb: None,
        tls: TlsFiles {
            ca: pki.join(tls::files::CA_CERT),
            cert: pki.join(tls::files::SERVER_CERT),
            key: pki.join(tls::files::SERVER_KEY),
            revoked: None,
        },
        model: ModelSource { onnx: model },
        evaluation: None,
        coordinator: cohort_of(1),
        rounds: Some(1),
        autostart: true,
        idle_timeout_ms: 30_000,
        max_concurrent_uploads: 4,
        upload_memory_mb: 16,
        udp_send_batch: 3,
        max_concurrent_downloads: None,
        secagg: fedge_server::coordinator::SecAggConfig::off(),
        metrics: Some("127.0.0.1:0".parse().unwrap()),
        privacy: None,
        buffered: None,
        download: Default::default(),
    };
    let evaluator: Arc<dyn Evaluator> = Arc::new(TractEvaluator::new(test.clone(), 10));
    let server = service::start(config, Some(evaluator)).await.unwrap();
    let mut events = server.events();

    // An agent serving predictions with the models it receives.
    let bundle = tls::issue_bundle(&pki, "agent-dashboard", Role::Agent, 30).unwrap();
    let (stop, stop_rx) = watch::channel(false);
    let (models, updates) = watch::channel(None);
    let endpoint = inference::start(InferenceSettings::loopback(), updates, stop_rx.clone()).await.unwrap();
    // Plain rounds (a cohort of one): this agent must accept them.
    let mut settings = fedge_ctl::demo::agent_settings(&bundle, server.local_addr).unwrap();
    settings.require_secure_aggregation = false;
    let agent = Agent::new(settings, ModelState::in_memory(), Box::new(NoiseLearner::new(20, 1, 0.01)))
        .with_model_updates(models);
    let agent = tokio::spawn(agent.run(stop_rx));

    let version = wait_server(&mut events, Duration::from_secs(120), |e| match e {
        ServerEvent::RoundCompleted(r) => Some(r.new_version),
        ServerEvent::RoundAborted(r) => panic!("round {} aborted: {:?}", r.round, r.outcome),
        _ => None,
    })
    .await
    .unwrap()
    .expect("a completed round has a version");
    endpoint.wait_for_version(Some(version), Duration::from_secs(60)).await.unwrap();
    let agent_addr = endpoint.local_addr.expect("a TCP endpoint");
    let example: Vec<u8> = test.features[..test.example_len()].iter().flat_map(|x| x.to_le_bytes()).collect();
    let request = format!(
        "POST /v1/predict HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/octet-stream\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        example.len()
    );
    let (head, _) = http(agent_addr, request, &example).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");

    let server_text = scrape(server.metrics_addr.expect("metrics are served")).await;
    let agent_text = scrape(agent_addr).await;
    let (on_server, on_agent) = (Exposition::parse(&server_text), Exposition::parse(&agent_text));

    let mut named = BTreeSet::new();
    let mut missing = vec![];
    for (place, query) in queries(&d) {
        let names = match query.strip_prefix("variable:") {
            Some(q) => variable_metric_names(q),
            None => metric_names(&query),
        };
        assert!(!names.is_empty(), "{place}: no metric in {query:?}");
        for name in names {
            if !on_server.has(&name) && !on_agent.has(&name) {
                missing.push(format!("{place}: {name} (in {query})"));
            }
            named.insert(name);
        }
    }
    assert!(
        missing.is_empty(),
        "metrics the dashboard queries but no scrape exposes:\n{}\n--- server:\n{server_text}\n--- agent:\n{agent_text}",
        missing.join("\n")
    );
    // What the issue asks the dashboard to show is there.
    for needed in [
        "fedge_rounds_completed_total",
        "fedge_phase_duration_seconds_bucket",
        "fedge_agents_connected",
        "fedge_dropouts_total",
        "fedge_update_bytes_in_total",
        "fedge_model_bytes_out_total",
        "fedge_test_accuracy",
        "fedge_test_loss",
        "fedge_train_loss",
        "fedge_inference_request_duration_seconds_bucket",
    ] {
        assert!(named.contains(needed), "the dashboard does not chart {needed}: {named:?}");
    }

    let _ = stop.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(10), agent).await;
    tokio::time::timeout(Duration::from_secs(10), endpoint.join()).await.unwrap();
    server.shutdown().await.unwrap();
}
