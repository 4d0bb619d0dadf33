//! The operator's surface end to end: a real server on loopback QUIC with agents, driven only through fedgectl's
//! client code (the functions the binary calls) and the fedgectl binary itself.

use fedge_agent::client::Agent;
use fedge_agent::learner::NoiseLearner;
use fedge_agent::state::ModelState;
use fedge_ctl::{AdminClient, RoundCmd, Target};
use fedge_server::config::{Evaluation, ModelSource, ServerConfig, TlsFiles};
use fedge_server::coordinator::{CoordinatorConfig, TrainHyper};
use fedge_server::evaluator::{Evaluator, TractEvaluator};
use fedge_server::service::{self, ServerEvent, ServerHandle};
use fedge_shared::data::{self, Dataset, Split};
use fedge_shared::tls::{self, Role};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, watch};

const LIMIT: Duration = Duration::from_secs(60);

struct Federation {
    dir: tempfile::TempDir,
    config: ServerConfig,
    server: Option<ServerHandle>,
    evaluator: Option<Arc<dyn Evaluator>>,
    stop_agents: watch::Sender<bool>,
    agents: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

fn test_set() -> Dataset {
    let dir = fedge_ctl::demo::find_mnist(None).unwrap();
    data::load_mnist_dir(&dir, Split::Test).unwrap().take(300)
}

impl Federation {
    /// A server (no autostart: rounds only run when an operator says so) and `agents` noise-learning agents.
    async fn start(agents: usize, test: Option<Dataset>) -> Federation {
        let dir = tempfile::tempdir().unwrap();
        let pki = dir.path().join("pki");
        tls::init_federation(&pki, &["localhost".into(), "127.0.0.1".into()], 30).unwrap();
        let model = dir.path().join("model.onnx");
        std::fs::write(&model, fedge_shared::train::builder::mlp(&[784, 16, 10], 7)).unwrap();
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
                revoked: Some(pki.join("revoked.txt")),
            },
            model: ModelSource { onnx: model },
            evaluation: None::<Evaluation>,
            coordinator: CoordinatorConfig {
                min_agents: agents.max(1),
                min_available: None,
                max_agents: 10,
                fraction: 1.0,
                overselect: 1.0,
                seed: 3,
                round_timeout_ms: 20_000,
                retry_backoff_ms: 200,
                max_examples: None,
                hyper: TrainHyper::default(),
                strategy: Default::default(),
            },
            rounds: None,
            autostart: false,
            idle_timeout_ms: 30_000,
            max_concurrent_uploads: 4,
            upload_memory_mb: 16,
            udp_send_batch: 3,
            // One model download at a time: every round of these tests also shows the permits are given back.
            max_concurrent_downloads: Some(1),
            // A cohort of one cannot be aggregated securely; those tests run plain rounds.
            secagg: if agents >= 2 { Default::default() } else { fedge_server::coordinator::SecAggConfig::off() },
            metrics: Some("127.0.0.1:0".parse().unwrap()),
            privacy: None,
            buffered: None,
            download: Default::default(),
        };
        let evaluator = test.map(|data| Arc::new(TractEvaluator::new(data, 100)) as Arc<dyn Evaluator>);
        let server = service::start(config.clone(), evaluator.clone()).await.unwrap();
        let (stop_agents, stop_rx) = watch::channel(false);
        let mut tasks = vec![];
        for i in 0..agents {
            let bundle = tls::issue_bundle(&pki, &format!("agent-{i:03}"), Role::Agent, 30).unwrap();
            let mut settings = fedge_ctl::demo::agent_settings(&bundle, server.local_addr).unwrap();
            settings.require_secure_aggregation = config.secagg.enabled;
            let learner = Box::new(NoiseLearner::new(100 + i as u64, i as u64, 0.01));
            tasks.push(tokio::spawn(Agent::new(settings, ModelState::in_memory(), learner).run(stop_rx.clone())));
        }
        Federation { dir, config, server: Some(server), evaluator, stop_agents, agents: tasks }
    }

    fn pki(&self) -> PathBuf {
        self.dir.path().join("pki")
    }

    fn server(&self) -> &ServerHandle {
        self.server.as_ref().unwrap()
    }

    /// A target for fedgectl with a fresh operator bundle.
    fn operator(&self, name: &str) -> Target {
        let bundle = tls::issue_bundle(&self.pki(), name, Role::Operator, 30).unwrap();
        let mut t = Target::new(self.server().local_addr.to_string(), bundle);
        t.server_name = Some("localhost".into());
        t
    }

    async fn restart_server(&mut self) {
        self.server.take().unwrap().shutdown().await.unwrap();
        self.server = Some(service::start(self.config.clone(), self.evaluator.clone()).await.unwrap());
    }

    async fn stop(mut self) {
        let _ = self.stop_agents.send(true);
        for a in self.agents.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(10), a).await;
        }
        if let Some(s) = self.server.take() {
            s.shutdown().await.unwrap();
        }
    }
}

async fn wait_event<T>(
    events: &mut broadcast::Receiver<ServerEvent>,
    mut pick: impl FnMut(&ServerEvent) -> Option<T>,
) -> T {
    tokio::time::timeout(LIMIT, async {
        loop {
            if let Ok(e) = events.recv().await
                && let Some(t) = pick(&e)
            {
                return t;
            }
        }
    })
    .await
    .expect("the event did not come in time")
}

async fn wait_connected(client: &AdminClient, n: usize) {
    tokio::time::timeout(LIMIT, async {
        loop {
            let s = client.status().await.unwrap();
            if s.connected >= n && s.available >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("agents did not check in");
}

/// Accuracy of a standalone ONNX file run by plain tract (no fedge code), batch by batch.
fn tract_accuracy(file: &[u8], test: &Dataset) -> f32 {
    use tract_onnx::prelude::*;
    let d = test.example_len();
    let n = test.len();
    let model = tract_onnx::onnx()
        .model_for_read(&mut &file[..])
        .unwrap()
        .with_input_fact(0, f32::fact([n, d]).into())
        .unwrap()
        .into_optimized()
        .unwrap()
        .into_runnable()
        .unwrap();
    let input = Tensor::from_shape(&[n, d], &test.features).unwrap();
    let out = model.run(tvec!(input.into())).unwrap();
    let logits = out[0].to_array_view::<f32>().unwrap();
    let classes = logits.shape()[1];
    let logits = logits.as_slice().unwrap();
    let correct = (0..n)
        .filter(|&i| {
            let row = &logits[i * classes..(i + 1) * classes];
            let best = (0..classes).max_by(|&a, &b| row[a].total_cmp(&row[b])).unwrap();
            best as u32 == test.labels[i]
        })
        .count();
    correct as f32 / n as f32
}

fn fedgectl(target: &Target, args: &[&str]) -> std::process::Output {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fedgectl"))
        .args(args)
        .env("FEDGE_SERVER", &target.server)
        .env("FEDGE_SERVER_NAME", "localhost")
        .env("FEDGE_BUNDLE", &target.bundle)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "fedgectl {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).await.unwrap();
    body
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name} not in the metrics:\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_runs_two_rounds_through_fedgectl_and_the_exported_model_scores_what_the_server_reported() {
    let test = test_set();
    let fed = Federation::start(2, Some(test.clone())).await;
    let target = fed.operator("alice");
    let client = AdminClient::connect(&target).await.unwrap();
    assert_eq!(client.operator, "alice");
    wait_connected(&client, 2).await;

    // Settings are validated by the server: a bad one is refused naming the key and the range.
    let err = client.config_set("fraction", "1.5").await.unwrap_err().to_string();
    assert!(err.contains("fraction") && err.contains("(0, 1]"), "{err}");
    let err = client.config_set("hyper.batch_size", "0").await.unwrap_err().to_string();
    assert!(err.contains("hyper.batch_size") && err.contains(">= 1"), "{err}");
    client.config_set("hyper.batch_size", "16").await.unwrap();
    let shown = client.config_show().await.unwrap();
    let bs = shown.iter().find(|e| e.key == "hyper.batch_size").unwrap();
    assert_eq!((bs.value.as_str(), bs.overridden), ("16", true));

    // Two rounds, followed with `watch` until both have ended.
    let msg = client.round(RoundCmd::Start { count: Some(2), target_accuracy: None }).await.unwrap();
    assert!(msg.contains("2 more rounds"), "{msg}");
    let mut view = fedge_ctl::progress::WatchView::new(true);
    let mut phases = std::collections::BTreeSet::new();
    tokio::time::timeout(
        LIMIT,
        client.watch(|p| {
            view.update(p);
            phases.insert(p.status.phase.to_string());
            view.rounds_seen() < 2
        }),
    )
    .await
    .expect("two rounds in time")
    .unwrap();
    assert!(phases.contains("collecting") || phases.contains("committing"), "{phases:?}");

    let history = client.history().await.unwrap();
    assert_eq!(history.len(), 2, "{history:?}");
    for r in &history {
        assert!(r.completed, "{r:?}");
        assert_eq!((r.participants, r.dropouts), (2, 0));
        assert!(r.mean_train_loss.is_some() && r.test_accuracy.is_some() && r.bytes > 0);
    }
    let models = client.models().await.unwrap();
    assert_eq!(models.iter().map(|m| m.version).collect::<Vec<_>>(), vec![0, 1, 2]);
    let status = client.status().await.unwrap();
    assert_eq!((status.model_version, status.connected), (2, 2));

    // The exported model, run by plain tract, scores exactly what the server reported for that version.
    let (info, onnx) = client.export(None).await.unwrap();
    assert_eq!(info.version, 2);
    let reported = history[1].test_accuracy.unwrap();
    assert_eq!(info.test_accuracy, Some(reported));
    assert!((tract_accuracy(&onnx, &test) - reported).abs() < 1e-6);
    let (v1, onnx1) = client.export(Some(1)).await.unwrap();
    assert!((tract_accuracy(&onnx1, &test) - v1.test_accuracy.unwrap()).abs() < 1e-6);
    let err = client.export(Some(99)).await.unwrap_err().to_string();
    assert!(err.contains("99"), "{err}");

    // Metrics over HTTP.
    let text = http_get(fed.server().metrics_addr.unwrap(), "/metrics").await;
    assert_eq!(metric(&text, "fedge_rounds_completed_total"), 2.0);
    assert_eq!(metric(&text, "fedge_agents_connected"), 2.0);
    assert!(metric(&text, "fedge_update_bytes_in_total") > 0.0);
    assert!(metric(&text, "fedge_model_bytes_out_total") > 0.0);
    assert_eq!(metric(&text, "fedge_phase_duration_seconds_count{phase=\"committing\"}"), 2.0);

    // The binary: reads as JSON, the plot, the export file.
    let dir = fed.dir.path().to_path_buf();
    let t = target.clone();
    let (status_json, plot, exported) = tokio::task::spawn_blocking(move || {
        let status = fedgectl(&t, &["status", "--json"]);
        let png = dir.join("history.png");
        let hist = fedgectl(&t, &["history", "--plot", png.to_str().unwrap()]);
        assert!(String::from_utf8_lossy(&hist.stdout).contains("completed"));
        let svg = dir.join("history.svg");
        fedgectl(&t, &["history", "--json", "--plot", svg.to_str().unwrap()]);
        let out = dir.join("exported.onnx");
        fedgectl(&t, &["model", "export", "--out", out.to_str().unwrap()]);
        (status.stdout, png, std::fs::read(out).unwrap())
    })
    .await
    .unwrap();
    let status: serde_json::Value = serde_json::from_slice(&status_json).unwrap();
    assert_eq!(status["model_version"], 2);
    assert!(std::fs::metadata(&plot).unwrap().len() > 5_000);
    assert_eq!(exported, onnx);
    if let Ok(keep) = std::env::var("FEDGE_KEEP_PLOT") {
        std::fs::copy(&plot, Path::new(&keep)).unwrap();
    }
    client.close().await;
    fed.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_certificate_is_refused_on_the_admin_protocol() {
    let fed = Federation::start(0, None).await;
    let mut events = fed.server().events();
    let bundle = tls::issue_bundle(&fed.pki(), "mallory", Role::Agent, 30).unwrap();
    let mut target = Target::new(fed.server().local_addr.to_string(), bundle);
    target.server_name = Some("localhost".into());
    let err = match AdminClient::connect(&target).await {
        Ok(_) => panic!("an agent certificate was accepted on the admin protocol"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("Agent certificate may not use this protocol"), "{err}");
    let reason = wait_event(&mut events, |e| match e {
        ServerEvent::Refused { reason, .. } => Some(reason.clone()),
        _ => None,
    })
    .await;
    assert!(reason.contains("Agent"), "{reason}");
    fed.stop().await;
}

/// Revoking by editing the revocation file (what `fedgectl agent revoke --dir` does) closes the live connections it
/// names, an agent's and an operator's alike, without a restart; and they are refused from then on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_added_to_revoked_txt_closes_the_live_connections_of_the_agent_and_the_operator_it_names() {
    let fed = Federation::start(1, None).await;
    let mallory_bundle = fed.operator("mallory");
    let mallory = AdminClient::connect(&mallory_bundle).await.unwrap();
    let bob = AdminClient::connect(&fed.operator("bob")).await.unwrap();
    wait_connected(&bob, 1).await;
    let mut events = fed.server().events();
    std::fs::write(fed.pki().join("revoked.txt"), "agent-000\nmallory\n").unwrap();
    wait_event(&mut events, |e| matches!(e, ServerEvent::AgentLeft { agent } if agent == "agent-000").then_some(()))
        .await;
    // The operator's session is gone too: its next request fails; bob's goes on.
    let deadline = tokio::time::Instant::now() + LIMIT;
    while mallory.status().await.is_ok() {
        assert!(tokio::time::Instant::now() < deadline, "the revoked operator's session stayed open");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(bob.status().await.is_ok());
    let reason = wait_event(&mut events, |e| match e {
        ServerEvent::Refused { reason, .. } => Some(reason.clone()),
        _ => None,
    })
    .await;
    assert!(reason.contains("agent-000") && reason.contains("revoked"), "{reason}");
    assert!(AdminClient::connect(&mallory_bundle).await.is_err(), "a revoked operator got back in");
    bob.close().await;
    fed.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn online_revocation_closes_the_agents_connection_and_refuses_it_from_then_on() {
    let fed = Federation::start(1, None).await;
    let client = AdminClient::connect(&fed.operator("bob")).await.unwrap();
    wait_connected(&client, 1).await;
    let agents = client.agents().await.unwrap();
    assert_eq!(agents.len(), 1);
    assert!(agents[0].connected && !agents[0].revoked && agents[0].last_seen_ms >= agents[0].first_seen_ms);

    let mut events = fed.server().events();
    let msg = client.revoke("agent-000").await.unwrap();
    assert!(msg.contains("connection was closed"), "{msg}");
    wait_event(&mut events, |e| matches!(e, ServerEvent::AgentLeft { agent } if agent == "agent-000").then_some(()))
        .await;
    // The agent reconnects with back-off and is refused.
    let reason = wait_event(&mut events, |e| match e {
        ServerEvent::Refused { reason, .. } => Some(reason.clone()),
        _ => None,
    })
    .await;
    assert!(reason.contains("agent-000 is revoked"), "{reason}");
    let agents = client.agents().await.unwrap();
    assert!(!agents[0].connected && agents[0].revoked);
    assert_eq!(client.status().await.unwrap().connected, 0);
    client.close().await;
    fed.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_an_operator_sets_survive_a_server_restart() {
    let mut fed = Federation::start(0, None).await;
    let client = AdminClient::connect(&fed.operator("carol")).await.unwrap();
    client.config_set("hyper.learning_rate", "0.2").await.unwrap();
    client.config_set("strategy", "{ kind = \"fedyogi\", eta = 0.1 }").await.unwrap();
    let err = client.config_set("hyper.lr", "0.2").await.unwrap_err().to_string();
    assert!(err.contains("hyper.lr") && err.contains("unknown"), "{err}");
    client.close().await;
    fed.restart_server().await;
    let client = AdminClient::connect(&fed.operator("carol2")).await.unwrap();
    let shown = client.config_show().await.unwrap();
    let get = |k: &str| shown.iter().find(|e| e.key == k).unwrap_or_else(|| panic!("{k} missing: {shown:?}")).clone();
    assert_eq!(get("hyper.learning_rate").value.parse::<f32>().unwrap(), 0.2);
    assert!(get("hyper.learning_rate").overridden);
    assert_eq!(get("strategy.kind").value, "\"fedyogi\"");
    assert_eq!(get("strategy.eta").value, "0.1");
    assert!(!get("min_agents").overridden);
    client.close().await;
    fed.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rounds_pause_once_a_round_reaches_the_target_accuracy() {
    let fed = Federation::start(2, Some(test_set().take(100))).await;
    let client = AdminClient::connect(&fed.operator("dave")).await.unwrap();
    wait_connected(&client, 2).await;
    let mut events = fed.server().events();
    // Any accuracy reaches 0: the first completed round pauses the federation.
    let msg = client.round(RoundCmd::Start { count: Some(5), target_accuracy: Some(0.0) }).await.unwrap();
    assert!(msg.contains("pausing when the test accuracy reaches 0"), "{msg}");
    assert_eq!(client.status().await.unwrap().target_accuracy, Some(0.0));
    wait_event(&mut events, |e| matches!(e, ServerEvent::RoundCompleted(_)).then_some(())).await;
    let status = client.status().await.unwrap();
    assert!(status.paused && status.round.is_none() && status.target_accuracy.is_none(), "{status:?}");
    assert_eq!(client.history().await.unwrap().len(), 1);
    let err = client.round(RoundCmd::Start { count: None, target_accuracy: Some(1.5) }).await.unwrap_err();
    assert!(err.to_string().contains("target accuracy must be in [0, 1]"), "{err}");
    client.close().await;
    fed.stop().await;
}

#[test]
fn offline_revocation_with_a_pki_directory_still_lists_the_certificate_in_revoked_txt() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    tls::init_federation(&pki, &["localhost".into()], 30).unwrap();
    let bundle = tls::issue_bundle(&pki, "pi-1", Role::Agent, 30).unwrap();
    let fp = tls::Identity::load_bundle(&bundle).unwrap().info().unwrap().fingerprint.to_hex();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_fedgectl"))
            .args(args)
            .env_remove("FEDGE_BUNDLE")
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        out.stdout
    };
    run(&["agent", "revoke", "pi-1", "--dir", pki.to_str().unwrap()]);
    let text = std::fs::read_to_string(pki.join("revoked.txt")).unwrap();
    assert_eq!(text, format!("pi-1 {fp}\n"));
    // And signed with the CA key, for the agents to check their peers against.
    let ca = tls::load_certs(&pki.join(tls::files::CA_CERT)).unwrap();
    let signed = std::fs::read(pki.join(fedge_shared::revocation_list::FILE)).unwrap();
    let list = fedge_shared::revocation_list::RevocationList::verify(&signed, &ca).unwrap();
    assert_eq!(list.fingerprints.iter().map(|f| f.to_hex()).collect::<Vec<_>>(), std::slice::from_ref(&fp));
    let list: serde_json::Value =
        serde_json::from_slice(&run(&["agent", "list", "--json", "--dir", pki.to_str().unwrap()])).unwrap();
    assert_eq!(list[0]["name"], "pi-1");
    assert_eq!(list[0]["revoked"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fine_tuning_patterns_are_checked_against_the_servers_model_by_fedgectl_and_at_start_up() {
    let mut fed = Federation::start(0, None).await;
    let target = fed.operator("erin");
    // A pattern that names no weight of the model (784-16-10: fc1, fc2) is refused, naming it and the weights,
    // and no run starts.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fedgectl"))
        .args(["round", "start", "--count", "1", "--train-only", "fc2.*", "--train-only", "classifier.*"])
        .env("FEDGE_SERVER", &target.server)
        .env("FEDGE_SERVER_NAME", "localhost")
        .env("FEDGE_BUNDLE", &target.bundle)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "refused");
    assert!(err.contains("\"classifier.*\" matches no weight") && err.contains("fc1.weight"), "{err}");
    let client = AdminClient::connect(&target).await.unwrap();
    assert!(!client.status().await.unwrap().running, "no run started");
    let shown = client.config_show().await.unwrap();
    let trainable = shown.iter().find(|e| e.key == "hyper.trainable").unwrap().clone();
    assert_eq!((trainable.value.as_str(), trainable.overridden), ("[]", false));
    // Patterns that match are taken, kept as the operator's setting, and the run starts.
    let out = fedgectl(&target, &["round", "start", "--count", "1", "--train-only", "fc2.*", "--train-only", "*.bias"]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("hyper.trainable") && said.contains("running 1 more rounds"), "{said}");
    let shown = client.config_show().await.unwrap();
    let trainable = shown.iter().find(|e| e.key == "hyper.trainable").unwrap().clone();
    assert_eq!((trainable.value.as_str(), trainable.overridden), (r#"["fc2.*", "*.bias"]"#, true));
    assert!(client.status().await.unwrap().running);
    client.close().await;
    // server.toml with a pattern that names no weight: the server refuses to start, naming the pattern.
    fed.server.take().unwrap().shutdown().await.unwrap();
    let mut config = fed.config.clone();
    config.data_dir = fed.dir.path().join("db-2");
    config.coordinator.hyper.trainable = vec!["head.*".into()];
    let err = format!("{:#}", service::start(config, None).await.err().expect("refused"));
    assert!(err.contains("\"head.*\" matches no weight") && err.contains("fc2.bias"), "{err}");
    fed.stop().await;
}
