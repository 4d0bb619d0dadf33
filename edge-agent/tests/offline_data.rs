//! `fedge-agent train` and `eval` on the committed samples of every data format (tests/fixtures/data), as a user
//! runs them: a model whose input and output shapes come from the ONNX file, the format detected from the folder,
//! `--optimizer`, `--momentum` and `--loss`, and `--json` reports (test_accuracy and test_loss for classification,
//! test_mse for regression).

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use fedge_shared::train::builder::mlp_for;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/data")
}

fn agent(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fedge-agent")).args(args).output().expect("the agent binary runs")
}

fn ok(args: &[&str]) -> Vec<Value> {
    let out = agent(args);
    assert!(out.status.success(), "{args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).unwrap();
    stdout.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))).collect()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn model(dir: &Path, name: &str, input: &[usize], outputs: usize) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, mlp_for(input, &[16], outputs, 7)).unwrap();
    p
}

#[test]
fn train_on_a_csv_folder_reports_accuracy_every_epoch_with_adam_and_the_weights_evaluate_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let m = model(dir.path(), "csv.onnx", &[4], 3);
    let w = dir.path().join("w.bin");
    let data = fixtures().join("csv");
    let cols = "x0,x1,x2,x3";
    let args = ["train", "--model", s(&m), "--data", s(&data), "--feature-columns", cols, "--epochs", "3"];
    let more = ["--batch-size", "10", "--optimizer", "adam", "--lr", "0.02", "--json", "--out", s(&w)];
    let lines = ok(&[&args[..], &more[..]].concat());
    assert_eq!(lines.len(), 4, "{lines:?}");
    for (i, l) in lines[..3].iter().enumerate() {
        assert_eq!(l["epoch"], i + 1);
        assert_eq!((l["train_examples"].as_u64(), l["test_examples"].as_u64()), (Some(90), Some(30)));
        assert!(l["test_loss"].is_number() && l.get("test_mse").is_none(), "{l}");
    }
    let acc = lines[3]["test_accuracy"].as_f64().unwrap();
    assert!(acc >= 0.9, "{lines:?}");
    let eval =
        ok(&["eval", "--model", s(&m), "--weights", s(&w), "--data", s(&data), "--feature-columns", cols, "--json"]);
    assert_eq!(eval[0]["accuracy"].as_f64().unwrap() as f32, acc as f32);
}

#[test]
fn train_with_sgd_momentum_on_npz_and_image_folders() {
    let dir = tempfile::tempdir().unwrap();
    for (data, input, tests) in [("npz", vec![2, 3], 30), ("npz-tokens", vec![8], 30), ("images", vec![3, 8, 8], 15)] {
        let m = model(dir.path(), &format!("{data}.onnx"), &input, 3);
        let folder = fixtures().join(data);
        let args = ["train", "--model", s(&m), "--data", s(&folder), "--epochs", "12"];
        let more = ["--batch-size", "10", "--optimizer", "sgd", "--momentum", "0.9", "--json"];
        // Images are centred per channel; token ids are large raw inputs and take a smaller rate.
        let extra: &[&str] = match data {
            "images" => &["--normalize-mean", "0.5", "--normalize-std", "0.5", "--lr", "0.02"],
            "npz-tokens" => &["--lr", "0.001"],
            _ => &["--lr", "0.02"],
        };
        let lines = ok(&[&args[..], &more[..], extra].concat());
        // One line per epoch, then the summary.
        let (summary, epochs) = lines.split_last().unwrap();
        let last = epochs.last().unwrap();
        assert_eq!(last["test_examples"], tests, "{data}: {lines:?}");
        if data == "npz-tokens" {
            // Raw token ids fed to a dense layer: the reader and the int64 path are what is checked here (an
            // embedding is the model's job); the loss must fall from its first epoch.
            let first = lines[0]["train_loss"].as_f64().unwrap();
            assert!(last["train_loss"].as_f64().unwrap() < first / 2.0, "{data}: {lines:?}");
        } else {
            let acc = summary["test_accuracy"].as_f64().unwrap();
            assert!(acc >= 0.8, "{data}: {lines:?}");
        }
    }
}

#[test]
fn train_with_the_mse_loss_reports_the_test_mse_and_it_falls() {
    let dir = tempfile::tempdir().unwrap();
    let m = model(dir.path(), "reg.onnx", &[3], 1);
    let data = fixtures().join("csv-regression");
    let args = ["train", "--model", s(&m), "--data", s(&data), "--label-column", "target", "--loss", "mse"];
    let more = ["--epochs", "30", "--batch-size", "10", "--optimizer", "adam", "--lr", "0.01", "--json"];
    let lines = ok(&[&args[..], &more[..]].concat());
    let mse: Vec<f64> = lines.iter().map(|l| l["test_mse"].as_f64().unwrap()).collect();
    assert!(lines.iter().all(|l| l.get("test_accuracy").is_none()), "{lines:?}");
    assert!(mse.last().unwrap() < &(mse[0] / 4.0), "{mse:?}");
}

#[test]
fn a_model_that_does_not_fit_the_data_or_bad_data_fails_with_a_message_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let wrong = model(dir.path(), "wrong.onnx", &[5], 3);
    let out = agent(&["train", "--model", s(&wrong), "--data", s(&fixtures().join("npz")), "--json"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("do not fit") && !err.contains("panicked"), "{err}");
    // Too few outputs for the classes of the CSV sample: the label is out of range, named by file and line.
    let two = model(dir.path(), "two.onnx", &[4], 2);
    let csv = fixtures().join("csv");
    let out = agent(&["train", "--model", s(&two), "--data", s(&csv), "--feature-columns", "x0,x1,x2,x3"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("train.csv, line") && err.contains("out of range"), "{err}");
}

#[test]
fn make_model_mlp_writes_a_model_shaped_for_the_users_data_that_trains_on_it() {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("mlp.onnx");
    let made = agent(&["make-model", "mlp", "--input", "4", "--hidden", "16,8", "--outputs", "3", "--out", s(&m)]);
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let data = fixtures().join("csv");
    let args = ["train", "--model", s(&m), "--data", s(&data), "--feature-columns", "x0,x1,x2,x3", "--json"];
    let lines =
        ok(&[&args[..], &["--epochs", "6", "--batch-size", "10", "--optimizer", "adam", "--lr", "0.02"]].concat());
    assert!(lines.last().unwrap()["test_accuracy"].as_f64().unwrap() >= 0.8, "{lines:?}");
    // Without a shape or an output count there is no model to write, and nothing is written.
    for bad in [&["--outputs", "3"][..], &["--input", "4"], &["--input", "4,0", "--outputs", "3"]] {
        let bad_out = dir.path().join("bad.onnx");
        let out = agent(&[&["make-model", "mlp", "--out", s(&bad_out)][..], bad].concat());
        assert!(!out.status.success() && !bad_out.exists(), "{bad:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("mlp needs"), "{bad:?}");
    }
}

#[test]
fn train_only_fine_tunes_the_head_and_leaves_the_backbone_bit_for_bit() {
    use fedge_shared::train::TrainableModel;
    let dir = tempfile::tempdir().unwrap();
    let m = model(dir.path(), "m.onnx", &[4], 3);
    let out = dir.path().join("tuned.onnx");
    let data = fixtures().join("csv");
    let args = ["train", "--model", s(&m), "--data", s(&data), "--feature-columns", "x0,x1,x2,x3", "--json"];
    let more = ["--epochs", "3", "--optimizer", "adam", "--lr", "0.05", "--train-only", "fc2.*", "--out", s(&out)];
    ok(&[&args[..], &more[..]].concat());
    let weights = |p: &Path| {
        let m = TrainableModel::from_onnx_bytes(&std::fs::read(p).unwrap()).unwrap();
        let w = m.initial_weights();
        m.params().iter().map(|p| (p.name.clone(), w[p.offset..p.offset + p.len].to_vec())).collect::<Vec<_>>()
    };
    let (before, after) = (weights(&m), weights(&out));
    assert_eq!(before.len(), 4, "fc1 and fc2, weight and bias");
    for ((name, b), (_, a)) in before.iter().zip(&after) {
        if name.starts_with("fc2") {
            assert_ne!(a, b, "{name} is trained");
        } else {
            assert_eq!(a, b, "{name} is frozen");
        }
    }
    // A pattern that matches nothing names the model's weights.
    let bad = agent(&[&args[..], &["--train-only", "head.*"]].concat());
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("\"head.*\" matches no weight") && err.contains("fc1.weight"), "{err}");
}

#[test]
fn make_model_char_lstm_learns_next_characters_of_a_text_folder() {
    // Genesis 1-4 (KJV) cut into 16-byte windows: after two epochs the next character is predicted far more often
    // than by always guessing the most frequent one (a space, 18.9% of the test part).
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("char.onnx");
    let made = ["make-model", "char-lstm", "--vocab", "256", "--seq", "16", "--embed", "16", "--hidden", "32"];
    let out = agent(&[&made[..], &["--out", s(&m)]].concat());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let data = fixtures().join("text");
    let args = ["train", "--model", s(&m), "--data", s(&data), "--window", "16", "--stride", "2", "--epochs", "2"];
    let more = ["--batch-size", "16", "--optimizer", "adam", "--lr", "0.01", "--json"];
    let lines = ok(&[&args[..], &more[..]].concat());
    let acc = lines.last().unwrap()["test_accuracy"].as_f64().unwrap();
    assert!(acc > 0.3, "{lines:?}");
    assert_eq!(lines[0]["test_examples"], (3211 - 16 - 1) / 2 + 1, "every second window of test.txt");
    // A window the model does not take is refused before any training.
    let out = agent(&["train", "--model", s(&m), "--data", s(&data), "--window", "12", "--json"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("do not fit") && !err.contains("panicked"), "{err}");
    let out = agent(&["make-model", "char-lstm", "--out", s(&dir.path().join("x.onnx"))]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("--vocab"));
}

#[test]
fn make_model_transformer_learns_the_token_sample() {
    // A one-block transformer (embeddings, attention, layer norm, a GELU MLP) over the committed int64 token ids.
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("tf.onnx");
    let made = ["make-model", "transformer", "--vocab", "250", "--seq", "8", "--embed", "16", "--hidden", "32"];
    let out = agent(&[&made[..], &["--outputs", "3", "--out", s(&m)]].concat());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let data = fixtures().join("npz-tokens");
    let args = ["train", "--model", s(&m), "--data", s(&data), "--epochs", "20"];
    let lines = ok(&[&args[..], &["--batch-size", "10", "--optimizer", "adam", "--lr", "0.01", "--json"]].concat());
    assert!(lines.last().unwrap()["test_accuracy"].as_f64().unwrap() >= 0.9, "{lines:?}");
    let out = agent(&["make-model", "transformer", "--vocab", "250", "--out", s(&dir.path().join("x.onnx"))]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("--outputs"));
}
