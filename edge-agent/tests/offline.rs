//! The agent's offline commands, run as a user would: make-model, train --json, eval, self-test.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn mnist() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../data/mnist")
}

fn agent(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fedge-agent")).args(args).output().expect("the agent binary runs")
}

fn ok(args: &[&str]) -> String {
    let out = agent(args);
    assert!(out.status.success(), "{args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn json_lines(stdout: &str) -> Vec<Value> {
    stdout.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))).collect()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn a_made_2nn_trains_with_json_reports_and_its_weights_evaluate_to_the_reported_accuracy() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("2nn.onnx");
    let weights = dir.path().join("w.bin");
    let baked = dir.path().join("trained.onnx");
    let data = mnist();
    ok(&["make-model", "2nn", "--out", s(&model), "--seed", "3"]);

    let common = [
        "train",
        "--model",
        s(&model),
        "--data",
        s(&data),
        "--epochs",
        "2",
        "--batch-size",
        "20",
        "--lr",
        "0.05",
        "--momentum",
        "0.5",
        "--limit",
        "1000",
        "--test-limit",
        "500",
        "--json",
    ];
    let lines = json_lines(&ok(&[&common[..], &["--out", s(&weights)]].concat()));
    assert_eq!(lines.len(), 3, "{lines:?}");
    for (i, epoch) in lines[..2].iter().enumerate() {
        assert_eq!(epoch["epoch"], i as u64 + 1);
        assert_eq!(epoch["train_examples"], 1000);
        assert_eq!(epoch["test_examples"], 500);
        assert!(epoch["train_loss"].as_f64().unwrap().is_finite());
    }
    let accuracy = lines[2]["test_accuracy"].as_f64().unwrap();
    assert!(accuracy > 0.75 && accuracy <= 1.0, "test accuracy {accuracy}");
    assert_eq!(std::fs::metadata(&weights).unwrap().len(), 199_210 * 4);

    let eval = json_lines(&ok(&[
        "eval",
        "--model",
        s(&model),
        "--weights",
        s(&weights),
        "--data",
        s(&data),
        "--limit",
        "500",
        "--json",
    ]));
    assert_eq!(eval[0]["examples"], 500);
    assert!((eval[0]["accuracy"].as_f64().unwrap() - accuracy).abs() < 1e-6, "{eval:?} vs {accuracy}");

    // The same run written as an ONNX model evaluates the same without a weights file.
    ok(&[&common[..], &["--out", s(&baked)]].concat());
    let eval = json_lines(&ok(&["eval", "--model", s(&baked), "--data", s(&data), "--limit", "500", "--json"]));
    assert!((eval[0]["accuracy"].as_f64().unwrap() - accuracy).abs() < 1e-6, "{eval:?} vs {accuracy}");
}

#[test]
fn a_made_cnn_trains_and_evaluates_on_mnist() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("cnn.onnx");
    let weights = dir.path().join("cnn.bin");
    ok(&["make-model", "cnn", "--out", s(&model)]);
    let lines = json_lines(&ok(&[
        "train",
        "--model",
        s(&model),
        "--data",
        s(&mnist()),
        "--limit",
        "64",
        "--test-limit",
        "64",
        "--batch-size",
        "32",
        "--lr",
        "0.01",
        "--json",
        "--out",
        s(&weights),
    ]));
    assert_eq!(lines[0]["steps"], 2);
    assert_eq!(std::fs::metadata(&weights).unwrap().len(), 1_663_370 * 4);
    let eval = json_lines(&ok(&[
        "eval",
        "--model",
        s(&model),
        "--weights",
        s(&weights),
        "--data",
        s(&mnist()),
        "--limit",
        "64",
        "--json",
    ]));
    assert_eq!(eval[0]["examples"], 64);
    assert_eq!(eval[0]["accuracy"], lines[1]["test_accuracy"]);
}

#[test]
fn a_folder_with_no_data_file_is_refused_naming_the_files_it_looked_for() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("m.onnx");
    ok(&["make-model", "2nn", "--out", s(&model)]);
    let out = agent(&["train", "--model", s(&model), "--data", s(dir.path()), "--json"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot tell the data format"), "{err}");
    assert!(err.contains("train.csv") && err.contains("train.npz") && err.contains("idx"), "{err}");
    assert!(out.stdout.is_empty());
}

#[test]
fn weights_of_the_wrong_length_are_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("m.onnx");
    let weights = dir.path().join("short.bin");
    ok(&["make-model", "2nn", "--out", s(&model)]);
    std::fs::write(&weights, [0u8; 40]).unwrap();
    let out = agent(&["eval", "--model", s(&model), "--weights", s(&weights), "--data", s(&mnist())]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("short.bin"), "{err}");
}

#[test]
fn the_self_test_checks_the_mask_and_convolution_kernels_this_cpu_runs() {
    let out = ok(&["self-test"]);
    assert!(out.contains("ChaCha20 matches RFC 8439"), "{out}");
    let conv = out.lines().find(|l| l.contains("convolution kernel matches the portable one")).unwrap_or_default();
    let names = ["the AVX2 ", "the NEON ", "the portable "];
    assert!(names.iter().any(|n| conv.contains(n)), "no convolution kernel named in: {out}");
}
