//! `fedgectl history` exports, run as the binary against a real server: `--plot` with no completed round fails and
//! writes no file; after two rounds, `--tensorboard DIR` writes an event file that the `tensorboard` package from
//! PyPI (its EventAccumulator, through scripts/tensorboard-read.sh) reads back with every round's numbers, and
//! `--format csv` prints the same rounds for a spreadsheet.
//!
//! The TensorBoard check needs python3 (the script creates a virtual environment and installs tensorboard in it).
//! Without python3 it says so (`SKIPPED: ...`) and passes, unless FEDGE_REQUIRE_PACKAGE_TOOLS=1 (CI), which makes a
//! missing python3 a failure.

use fedge_agent::client::Agent;
use fedge_agent::learner::NoiseLearner;
use fedge_agent::state::ModelState;
use fedge_ctl::demo::{FederationOptions, FederationSpec, LocalFederation, agent_settings};
use fedge_server::coordinator::{CoordinatorConfig, TrainHyper};
use fedge_server::evaluator::{Evaluator, TractEvaluator};
use fedge_server::service::ServerEvent;
use fedge_shared::admin::RoundSummary;
use fedge_shared::data::Dataset;
use fedge_shared::tls::{self, Role};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

const ROUNDS: u64 = 2;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// 40 synthetic 784-feature examples over 10 classes: enough for the server to evaluate on.
fn test_set() -> Dataset {
    let features = (0..40 * 784).map(|i| ((i * 37) % 101) as f32 / 100.0).collect();
    let labels = (0..40).map(|i| i % 10).collect();
    Dataset::new(features, labels, vec![784], 10).unwrap()
}

fn fedgectl(server: &str, bundle: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fedgectl"))
        .args(args)
        .env("FEDGE_SERVER", server)
        .env("FEDGE_SERVER_NAME", "localhost")
        .env("FEDGE_BUNDLE", bundle)
        .output()
        .unwrap()
}

fn ok(out: Output, what: &str) -> Output {
    assert!(
        out.status.success(),
        "{what} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Whether python3 runs; when it does not, the TensorBoard check is skipped with a reason, unless
/// FEDGE_REQUIRE_PACKAGE_TOOLS=1.
fn python_available() -> bool {
    let ok = Command::new("python3").arg("--version").output().map(|o| o.status.success()).unwrap_or(false);
    if !ok {
        let hint = "install python3 (with venv and pip) to include it";
        if std::env::var("FEDGE_REQUIRE_PACKAGE_TOOLS").as_deref() == Ok("1") {
            panic!("python3 is not available and FEDGE_REQUIRE_PACKAGE_TOOLS=1: {hint}");
        }
        eprintln!("SKIPPED: the TensorBoard read-back needs python3, which is not available here; {hint}");
    }
    ok
}

/// The scalars TensorBoard reads from `dir`: tag → [(step, value, wall time)].
fn tensorboard_scalars(dir: &Path) -> serde_json::Map<String, Value> {
    let out = ok(
        Command::new("sh").arg(root().join("scripts/tensorboard-read.sh")).arg(dir).output().unwrap(),
        "scripts/tensorboard-read.sh",
    );
    match serde_json::from_slice(&out.stdout) {
        Ok(Value::Object(m)) => m,
        other => panic!("the reader printed {other:?}: {}", String::from_utf8_lossy(&out.stdout)),
    }
}

fn steps(scalars: &serde_json::Map<String, Value>, tag: &str) -> Vec<(u64, f32, f64)> {
    let points = scalars.get(tag).and_then(Value::as_array).unwrap_or_else(|| panic!("no {tag} in {scalars:?}"));
    points.iter().map(|p| (p[0].as_u64().unwrap(), p[1].as_f64().unwrap() as f32, p[2].as_f64().unwrap())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_exports_write_nothing_before_a_round_and_tensorboard_and_csv_carry_every_round_after() {
    let coordinator = CoordinatorConfig {
        min_agents: 2,
        min_available: None,
        max_agents: 2,
        fraction: 1.0,
        overselect: 1.0,
        seed: 2,
        round_timeout_ms: 60_000,
        retry_backoff_ms: 200,
        max_examples: None,
        hyper: TrainHyper::default(),
        strategy: Default::default(),
    };
    let spec = FederationSpec {
        onnx: fedge_shared::train::builder::mlp(&[784, 8, 10], 4),
        coordinator,
        rounds: Some(ROUNDS),
        evaluator: Some(Arc::new(TractEvaluator::new(test_set(), 20)) as Arc<dyn Evaluator>),
    };
    // No agents yet: no round can run.
    let fed = LocalFederation::start_with(spec, vec![], FederationOptions::default()).await.unwrap();
    let server = fed.server.local_addr.to_string();
    let bundle = tls::issue_bundle(&fed.pki(), "hannah", Role::Operator, 30).unwrap();
    let out_dir = tempfile::tempdir().unwrap();
    let png = out_dir.path().join("out.png");
    let runs = out_dir.path().join("runs");

    // Before any round: an error, and no file.
    let (s, b, p, r) = (server.clone(), bundle.clone(), png.clone(), runs.clone());
    tokio::task::spawn_blocking(move || {
        let out = fedgectl(&s, &b, &["history", "--plot", p.to_str().unwrap()]);
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("no completed round"), "{out:?}");
        let out = fedgectl(&s, &b, &["history", "--tensorboard", r.to_str().unwrap()]);
        assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("no rounds"), "{out:?}");
    })
    .await
    .unwrap();
    let left: Vec<_> = std::fs::read_dir(out_dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(left.is_empty(), "a failed export wrote {left:?}");

    // Two agents join; two rounds run.
    let mut events = fed.server.events();
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let mut agents = vec![];
    for i in 0..2u64 {
        let agent_bundle = tls::issue_bundle(&fed.pki(), &format!("agent-{i}"), Role::Agent, 30).unwrap();
        let settings = agent_settings(&agent_bundle, fed.server.local_addr).unwrap();
        let agent = Agent::new(settings, ModelState::in_memory(), Box::new(NoiseLearner::new(30 + i, i, 0.01)));
        agents.push(tokio::spawn(agent.run(stop_rx.clone())));
    }
    let mut completed = 0;
    while completed < ROUNDS {
        let e = tokio::time::timeout(Duration::from_secs(120), events.recv()).await.expect("rounds in time");
        match e {
            Ok(ServerEvent::RoundCompleted(_)) => completed += 1,
            Ok(ServerEvent::RoundAborted(r)) => panic!("round {} aborted: {:?}", r.round, r.outcome),
            _ => {}
        }
    }

    let (s, b, r) = (server.clone(), bundle.clone(), runs.clone());
    let (json, csv) = tokio::task::spawn_blocking(move || {
        let json = ok(fedgectl(&s, &b, &["history", "--json", "--tensorboard", r.to_str().unwrap()]), "--tensorboard");
        let csv = ok(fedgectl(&s, &b, &["history", "--format", "csv"]), "--format csv");
        (json.stdout, csv.stdout)
    })
    .await
    .unwrap();
    let history: Vec<RoundSummary> = serde_json::from_slice(&json).unwrap();
    assert_eq!(history.len() as u64, ROUNDS);
    assert!(history.iter().all(|h| h.completed && h.test_accuracy.is_some() && h.mean_train_loss.is_some()));

    // One event file, named like TensorFlow's.
    let files: Vec<PathBuf> = std::fs::read_dir(&runs).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let name = files[0].file_name().unwrap().to_string_lossy().into_owned();
    let parts: Vec<&str> = name.splitn(5, '.').collect();
    assert_eq!(parts[..3], ["events", "out", "tfevents"], "{name}");
    assert!(parts[3].parse::<u64>().is_ok_and(|t| t > 1_600_000_000) && !parts[4].is_empty(), "{name}");

    // The CSV: a header and one row per round with the same numbers.
    let mut reader = csv::Reader::from_reader(csv.as_slice());
    let header = reader.headers().unwrap().clone();
    let col = |n: &str| header.iter().position(|h| h == n).unwrap_or_else(|| panic!("no column {n}: {header:?}"));
    let rows: Vec<csv::StringRecord> = reader.records().map(|r| r.unwrap()).collect();
    assert_eq!(rows.len(), history.len());
    for (row, h) in rows.iter().zip(&history) {
        assert_eq!(row[col("round")].parse::<u64>().unwrap(), h.round);
        assert_eq!(&row[col("outcome")], "completed");
        assert_eq!(row[col("test_accuracy")].parse::<f32>().unwrap(), h.test_accuracy.unwrap());
        assert_eq!(row[col("mean_train_loss")].parse::<f32>().unwrap(), h.mean_train_loss.unwrap());
        assert_eq!(row[col("update_bytes")].parse::<u64>().unwrap(), h.bytes);
    }

    if python_available() {
        // TensorBoard's own reader: a step per round with the values fedgectl printed, at the round's end.
        let scalars = tensorboard_scalars(&runs);
        let rounds: Vec<u64> = history.iter().map(|h| h.round).collect();
        let expect = |tag: &str, value: &dyn Fn(&RoundSummary) -> f32| {
            let got = steps(&scalars, tag);
            assert_eq!(got.iter().map(|p| p.0).collect::<Vec<_>>(), rounds, "{tag}");
            for (p, h) in got.iter().zip(&history) {
                assert_eq!(p.1, value(h), "{tag} of round {}", h.round);
                assert!((p.2 - (h.started_ms + h.duration_ms) as f64 / 1000.0).abs() < 1e-3, "{tag} wall time");
            }
        };
        expect("test/accuracy", &|h| h.test_accuracy.unwrap());
        expect("test/loss", &|h| h.test_loss.unwrap());
        expect("train/loss", &|h| h.mean_train_loss.unwrap());
        expect("round/participants", &|h| h.participants as f32);
        expect("round/dropouts", &|h| h.dropouts as f32);
        expect("round/update_bytes", &|h| h.bytes as f32);
        expect("round/completed", &|_| 1.0);

        // The reader checks the framing's CRCs: a file whose last record's CRC is wrong loses that record.
        let corrupt = out_dir.path().join("corrupt");
        std::fs::create_dir(&corrupt).unwrap();
        let mut bytes = std::fs::read(&files[0]).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x55;
        std::fs::write(corrupt.join(&name), bytes).unwrap();
        let damaged = tensorboard_scalars(&corrupt);
        assert_eq!(steps(&damaged, "test/accuracy").len(), history.len() - 1, "{damaged:?}");
    }

    let _ = stop.send(true);
    for a in agents {
        let _ = tokio::time::timeout(Duration::from_secs(10), a).await;
    }
    fed.stop().await.unwrap();
}
