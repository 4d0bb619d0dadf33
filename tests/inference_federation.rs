//! Whole system: an agent takes part in a federated round over real loopback QUIC while serving predictions, and
//! for the new global version its HTTP endpoint, `fedge-agent predict` on the version kept in its state
//! directory, and the server's own evaluation of that version all agree.

use fedge_agent::client::Agent;
use fedge_agent::inference::{self, InferenceSettings};
use fedge_agent::state::ModelState;
use fedge_agent::trainer::TractLearner;
use fedge_ctl::demo::{FederationSpec, LocalFederation, agent_settings};
use fedge_server::coordinator::CoordinatorConfig;
use fedge_server::evaluator::TractEvaluator;
use fedge_server::service::ServerEvent;
use fedge_shared::tls::{self, Role};
use fedge_shared::train::TrainableModel;
use fedge_shared::train::local::evaluate;
use fedge_system_tests::{cohort_of, init_logs, mnist_subset, wait_server, workspace_bin};
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

fn coordinator() -> CoordinatorConfig {
    cohort_of(1)
}

/// POSTs raw little-endian f32 examples to the endpoint and returns its JSON answer.
async fn predict_http(addr: std::net::SocketAddr, features: &[f32]) -> anyhow::Result<Value> {
    let body: Vec<u8> = features.iter().flat_map(|x| x.to_le_bytes()).collect();
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let head = format!(
        "POST /v1/predict HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await?;
    s.write_all(&body).await?;
    let mut raw = vec![];
    s.read_to_end(&mut raw).await?;
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(|| anyhow::anyhow!("no response head"))?;
    anyhow::ensure!(raw.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&raw));
    Ok(serde_json::from_slice(&raw[split + 4..])?)
}

fn rows(v: &Value) -> Vec<Vec<f32>> {
    v["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_endpoint_fedge_agent_predict_and_the_server_evaluation_agree_on_a_new_global_version() -> anyhow::Result<()>
{
    init_logs();
    let (train, test) = mnist_subset(600, 200)?;
    let spec = FederationSpec {
        onnx: fedge_shared::train::builder::mnist_2nn(5),
        coordinator: coordinator(),
        rounds: Some(1),
        evaluator: Some(Arc::new(TractEvaluator::new(test.clone(), 50))),
    };
    // One agent: a cohort of one cannot be aggregated securely, so this round is plain.
    let options = fedge_ctl::demo::FederationOptions {
        secagg: fedge_server::coordinator::SecAggConfig::off(),
        relay_hook: None,
        privacy: None,
        agent_privacy: None,
        ..Default::default()
    };
    let fed = LocalFederation::start_with(spec, vec![], options).await?;
    let mut events = fed.server.events();

    // The agent, with its state on disk and its endpoint fed by the client's model hook.
    let bundle = tls::issue_bundle(&fed.pki(), "agent-inference", Role::Agent, 30)?;
    let state_dir = tempfile::tempdir()?;
    let (stop, stop_rx) = watch::channel(false);
    let (models, updates) = watch::channel(None);
    let service = inference::start(InferenceSettings::loopback(), updates, stop_rx.clone()).await?;
    // A plain round: this agent must accept it.
    let mut settings = agent_settings(&bundle, fed.server.local_addr)?;
    settings.require_secure_aggregation = false;
    let agent = Agent::new(settings, ModelState::open(state_dir.path())?, Box::new(TractLearner::new(train, None, 1)))
        .with_model_updates(models);
    let agent = tokio::spawn(agent.run(stop_rx));

    let record = wait_server(&mut events, Duration::from_secs(300), |e| match e {
        ServerEvent::RoundCompleted(r) => Some(Ok(r.clone())),
        ServerEvent::RoundAborted(r) => Some(Err(format!("round {} aborted: {:?}", r.round, r.outcome))),
        _ => None,
    })
    .await?
    .map_err(anyhow::Error::msg)?;
    let version = record.new_version.expect("a completed round commits a version");
    let server_accuracy = record.metrics.test_accuracy.expect("the server evaluates the new version");
    assert_eq!(service.wait_for_version(Some(version), Duration::from_secs(120)).await?, version);

    // The endpoint.
    let answer = predict_http(service.local_addr.expect("TCP endpoint"), &test.features).await?;
    assert_eq!(answer["version"].as_u64(), Some(version));
    let classes: Vec<u64> = answer["classes"].as_array().unwrap().iter().map(|c| c.as_u64().unwrap()).collect();
    let correct = classes.iter().zip(&test.labels).filter(|(c, l)| **c == u64::from(**l)).count();
    let endpoint_accuracy = correct as f32 / test.len() as f32;

    // The server's evaluation, and the same evaluation on the weights the server stored for that version.
    let graph = fedge_shared::train::builder::mnist_2nn(5);
    let model = TrainableModel::from_onnx_bytes(&graph)?;
    let stored = fed.server.store.weights(version)?;
    let direct = evaluate(&model, &stored, &test, 50)?;
    assert_eq!(endpoint_accuracy, server_accuracy, "the endpoint's classes score what the server measured");
    assert_eq!(endpoint_accuracy, direct.accuracy);

    // fedge-agent predict on the version the agent kept on disk.
    let input = state_dir.path().join("test.f32");
    std::fs::write(&input, test.features.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>())?;
    let out = std::process::Command::new(workspace_bin("fedge-agent")?)
        .args(["predict", "--json", "--version", &version.to_string(), "--state-dir"])
        .arg(state_dir.path())
        .arg("--input")
        .arg(&input)
        .output()?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let cli: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(cli["version"].as_u64(), Some(version));
    assert_eq!(cli["classes"], answer["classes"]);
    for (a, b) in rows(&cli).iter().flatten().zip(rows(&answer).iter().flatten()) {
        assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{a} vs {b}");
    }

    let _ = stop.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(10), agent).await;
    tokio::time::timeout(Duration::from_secs(10), service.join()).await?;
    fed.stop().await
}
