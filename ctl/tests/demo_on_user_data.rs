//! `fedgectl demo --model M.onnx --data DIR`, run as a user runs it: the binary, a model file and one of the
//! committed data samples (tests/fixtures/data). Each round's JSON line carries the server's test metric and the
//! federation's own evaluation of the version the round started from; a regression loss reports mean squared errors.

use std::path::{Path, PathBuf};
use std::process::Command;

use fedge_shared::train::builder::mlp_for;
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/data")
}

/// Runs the demo with `args` on a model of `input` shape and `outputs`, returning its JSON lines.
fn demo(input: &[usize], outputs: usize, args: &[&str]) -> Vec<Value> {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model.onnx");
    std::fs::write(&model, mlp_for(input, &[16], outputs, 3)).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_fedgectl"))
        .args(["demo", "--model", model.to_str().unwrap(), "--agents", "3", "--rounds", "3", "--json"])
        .args(["--epochs", "3", "--batch-size", "8", "--lr", "0.1"])
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(out.status.success(), "demo {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn data(name: &str) -> String {
    fixtures().join(name).to_str().unwrap().to_string()
}

/// Every round's line names the version it evaluated, and the agents' counts of the last one are in.
fn check_rounds(rounds: &[Value]) {
    assert_eq!(rounds.len(), 3, "{rounds:?}");
    for (i, r) in rounds.iter().enumerate() {
        assert_eq!(r["round"], i as u64 + 1, "{r}");
        assert_eq!(r["evaluated_version"], i as u64, "round {} starts from the version before it: {r}", i + 1);
        assert!(r["federated_examples"].as_u64().unwrap() > 0, "{r}");
        assert_eq!(r["secagg"], true, "{r}");
    }
}

#[test]
fn a_csv_federation_reports_central_and_federated_accuracy_per_round() {
    let lines = demo(&[4], 3, &["--data", &data("csv"), "--feature-columns", "x0,x1,x2,x3"]);
    let (last, rounds) = lines.split_last().unwrap();
    check_rounds(rounds);
    let fed: Vec<f64> = rounds.iter().map(|r| r["federated_accuracy"].as_f64().unwrap()).collect();
    assert!(fed[2] > fed[0] && fed[2] >= 0.8, "the federation's accuracy of its model rises: {fed:?}");
    assert!(rounds[2]["test_accuracy"].as_f64().unwrap() >= 0.8, "{rounds:?}");
    assert_eq!(last["final_accuracy"], rounds[2]["test_accuracy"]);
}

#[test]
fn an_image_folder_federation_reports_central_and_federated_accuracy_per_round() {
    let args = ["--data", &data("images"), "--normalize-mean", "0.5", "--normalize-std", "0.5"];
    let lines = demo(&[3, 8, 8], 3, &args);
    let (_, rounds) = lines.split_last().unwrap();
    check_rounds(rounds);
    assert!(rounds[2]["federated_accuracy"].as_f64().unwrap() >= 0.8, "{rounds:?}");
    assert!(rounds[2]["test_accuracy"].as_f64().unwrap() >= 0.8, "{rounds:?}");
}

#[test]
fn a_regression_federation_reports_mean_squared_errors_and_no_accuracy() {
    let args = ["--data", &data("csv-regression"), "--label-column", "target", "--loss", "mse"];
    let lines = demo(&[3], 1, &args);
    let (last, rounds) = lines.split_last().unwrap();
    check_rounds(rounds);
    for r in rounds {
        assert!(r.get("test_accuracy").is_none() && r.get("federated_accuracy").is_none(), "{r}");
    }
    let fed: Vec<f64> = rounds.iter().map(|r| r["federated_mse"].as_f64().unwrap()).collect();
    assert!(fed[2] < fed[0], "the federation's mse of its model falls: {fed:?}");
    assert!(last["final_mse"].as_f64().unwrap() < 0.05, "{last}");
}

#[test]
fn a_model_file_without_data_or_data_that_does_not_fit_is_refused_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model.onnx");
    std::fs::write(&model, mlp_for(&[5], &[4], 3, 3)).unwrap();
    let run = |extra: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_fedgectl"))
            .args(["demo", "--model", model.to_str().unwrap(), "--agents", "2", "--rounds", "1"])
            .args(extra)
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    assert!(run(&[]).contains("needs --data"), "{}", run(&[]));
    let e = run(&["--data", &data("csv"), "--feature-columns", "x0,x1,x2,x3"]);
    assert!(e.contains('4') && e.contains('5'), "a model of 5 inputs on 4 columns: {e}");
    assert!(!e.contains("panicked"), "{e}");
}
