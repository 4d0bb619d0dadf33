//! Whole system: the device's own labels close the loop — serve, collect, learn.
//!
//! A server (plain rounds, one agent per round) and a real `fedge-agent run` process with its inference endpoint.
//! Specification:
//! - every predicted example gets an id; `POST /v1/feedback` with an id and the right label, and
//!   `POST /v1/examples` with an input and its label, are stored (answered 200 with the count held);
//! - an unknown prediction id is 404, a wrong input shape or a label past the model's classes is 400, each with a
//!   message naming what was expected;
//! - the next round trains on them: the agent's report to the server counts the configured examples plus the
//!   labelled ones;
//! - they survive the agent being killed with SIGKILL: restarted, it still holds them and its next round counts them.

use fedge_ctl::demo::{FederationOptions, FederationSpec, LocalFederation};
use fedge_server::coordinator::{CoordinatorConfig, SecAggConfig};
use fedge_server::service::ServerEvent;
use fedge_shared::tls::{self, Role};
use fedge_system_tests::{cohort_of, init_logs, tiny_mnist, wait_server, workspace_bin};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CONFIGURED: u64 = 48;

/// One HTTP/1.1 request with a JSON body (or none); the status and the JSON answer.
async fn http(addr: SocketAddr, method: &str, path: &str, body: Option<&Value>) -> anyhow::Result<(u16, Value)> {
    let body = body.map(serde_json::to_vec).transpose()?.unwrap_or_default();
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await?;
    s.write_all(&body).await?;
    let mut raw = vec![];
    s.read_to_end(&mut raw).await?;
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(|| anyhow::anyhow!("no response head"))?;
    let status = std::str::from_utf8(&raw[9..12])?.parse()?;
    let body = &raw[split + 4..];
    Ok((status, if body.is_empty() { Value::Null } else { serde_json::from_slice(body)? }))
}

fn write_agent(dir: &Path, fed: &LocalFederation, port: u16) -> anyhow::Result<std::path::PathBuf> {
    let bundle = tls::issue_bundle(&fed.pki(), "agent-labels", Role::Agent, 30)?;
    tiny_mnist(&dir.join("data"), CONFIGURED as usize, 3)?;
    let text = format!(
        r#"
bundle = "{bundle}"
state_dir = "{state}"
idle_timeout_ms = 5000
backoff_initial_ms = 100
backoff_max_ms = 500
# The server here runs plain rounds.
require_secure_aggregation = false

[server]
address = "{server}"
name = "localhost"

[data]
mnist_dir = "{data}"
holdout = 0.0

[inference]
listen = "127.0.0.1:{port}"

[labels]
max_examples = 100
remember_predictions = 16
"#,
        bundle = bundle.display(),
        state = dir.join("state").display(),
        server = fed.server.local_addr,
        data = dir.join("data").display(),
    );
    let path = dir.join("agent.toml");
    std::fs::write(&path, text)?;
    Ok(path)
}

fn start_agent(config: &Path, log: &Path) -> anyhow::Result<Child> {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
    Ok(Command::new(workspace_bin("fedge-agent")?)
        .arg("run")
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "info")
        .env_remove("FAILPOINTS")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()?)
}

/// Waits until the endpoint serves a model.
async fn wait_ready(addr: SocketAddr) -> anyhow::Result<()> {
    tokio::time::timeout(Duration::from_secs(120), async {
        loop {
            if let Ok((200, _)) = http(addr, "GET", "/v1/model", None).await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .map_err(|_| anyhow::anyhow!("the agent's endpoint served no model within 120 s"))
}

/// Waits for a completed round in which the agent reported `examples` examples.
async fn wait_round_with(
    events: &mut tokio::sync::broadcast::Receiver<ServerEvent>,
    examples: u64,
) -> anyhow::Result<u64> {
    wait_server(events, Duration::from_secs(180), |e| match e {
        ServerEvent::RoundCompleted(r) if r.reported.iter().any(|p| p.examples == examples) => Some(r.round),
        _ => None,
    })
    .await
}

fn coordinator() -> CoordinatorConfig {
    let mut c = cohort_of(1);
    c.hyper.batch_size = 8;
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn labels_posted_to_the_endpoint_are_trained_on_in_the_next_round_and_survive_a_sigkill() -> anyhow::Result<()> {
    init_logs();
    let dir = tempfile::tempdir()?;
    let log = dir.path().join("agent.log");
    let result = run(dir.path(), &log).await;
    if result.is_err() {
        eprintln!("--- agent log ---\n{}", std::fs::read_to_string(&log).unwrap_or_default());
    }
    result
}

async fn run(dir: &Path, log: &Path) -> anyhow::Result<()> {
    let spec = FederationSpec {
        onnx: fedge_shared::train::builder::mlp(&[784, 16, 10], 5),
        coordinator: coordinator(),
        rounds: None,
        evaluator: None,
    };
    let options =
        FederationOptions { secagg: SecAggConfig::off(), relay_hook: None, privacy: None, ..Default::default() };
    let fed = LocalFederation::start_with(spec, vec![], options).await?;
    let mut events = fed.server.events();
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let config = write_agent(dir, &fed, port)?;
    let mut agent = start_agent(&config, log)?;

    wait_round_with(&mut events, CONFIGURED).await?;
    wait_ready(addr).await?;
    let (status, held) = http(addr, "GET", "/v1/examples", None).await?;
    assert_eq!((status, held["held"].as_u64()), (200, Some(0)), "{held}");

    // Serve three predictions; correct two of them by id.
    let inputs: Vec<Vec<f32>> =
        (0..3).map(|i| (0..784).map(|k| ((k * 7 + i * 31) % 256) as f32 / 255.0).collect()).collect();
    let (status, answer) = http(addr, "POST", "/v1/predict", Some(&json!({ "inputs": inputs }))).await?;
    assert_eq!(status, 200, "{answer}");
    let ids: Vec<String> = answer["ids"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect();
    assert_eq!(ids.len(), 3);
    for (id, label) in ids.iter().zip([4, 9]) {
        let (status, v) = http(addr, "POST", "/v1/feedback", Some(&json!({ "id": id, "label": label }))).await?;
        assert_eq!((status, v["label"].as_u64()), (200, Some(label)), "{v}");
    }
    // And two labelled examples.
    let body = json!({ "inputs": [inputs[2].clone(), inputs[0].clone()], "labels": [1, 2] });
    let (status, v) = http(addr, "POST", "/v1/examples", Some(&body)).await?;
    assert_eq!((status, v["stored"].as_u64(), v["held"].as_u64()), (200, Some(2), Some(4)), "{v}");

    // Refusals name what was expected.
    let (status, v) = http(addr, "POST", "/v1/feedback", Some(&json!({ "id": ids[0], "label": 1 }))).await?;
    assert_eq!(status, 404, "a prediction is corrected once: {v}");
    let (status, v) =
        http(addr, "POST", "/v1/feedback", Some(&json!({ "id": "0123456789abcdef", "label": 1 }))).await?;
    assert_eq!(status, 404, "{v}");
    assert!(v["error"].as_str().unwrap().contains("unknown prediction id"), "{v}");
    let (status, v) = http(addr, "POST", "/v1/feedback", Some(&json!({ "id": ids[2], "label": 10 }))).await?;
    assert_eq!(status, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("0..=9"), "{v}");
    let (status, v) = http(addr, "POST", "/v1/examples", Some(&json!({ "input": [0.5, 0.5], "label": 1 }))).await?;
    assert_eq!(status, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("this model takes 784"), "{v}");

    // The next rounds train on them.
    let with_labels = CONFIGURED + 4;
    wait_round_with(&mut events, with_labels).await?;

    // SIGKILL, restart: still held, still trained on.
    agent.kill()?;
    agent.wait()?;
    let mut agent = start_agent(&config, log)?;
    let result = async {
        wait_round_with(&mut events, with_labels).await?;
        wait_ready(addr).await?;
        let (status, held) = http(addr, "GET", "/v1/examples", None).await?;
        assert_eq!(status, 200);
        assert_eq!(
            (held["held"].as_u64(), held["examples"].as_u64(), held["feedback"].as_u64()),
            (Some(4), Some(2), Some(2)),
            "{held}"
        );
        anyhow::Ok(())
    }
    .await;
    let _ = agent.kill();
    let _ = agent.wait();
    result?;
    fed.stop().await
}
