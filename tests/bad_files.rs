//! Bad files and settings: a corrupt or truncated ONNX file, weights of the wrong shape, a corrupt data set, a
//! configuration with unknown keys or out-of-range values, a corrupt agent state directory, and a server started
//! on a corrupt model.
//!
//! Specification: each is a clear error naming the file and the problem, and nothing is left half-written.

use fedge_agent::config::AgentConfig;
use fedge_agent::offline::{self, EvalArgs};
use fedge_agent::state::ModelState;
use fedge_server::config::ServerConfig;
use fedge_shared::data::{self, Split, idx::encode_idx};
use fedge_shared::model::{Digest, weights_to_bytes};
use fedge_shared::train::{TrainableModel, builder};
use fedge_system_tests::workspace_bin;
use std::io::Write;
use std::path::{Path, PathBuf};

fn message(e: anyhow::Error) -> String {
    format!("{e:#}")
}

/// A tiny valid MNIST-style folder (both splits) of `n` 28x28 examples.
fn tiny_mnist(dir: &Path, n: usize) {
    fedge_system_tests::tiny_mnist(dir, n, 0).unwrap();
}

fn eval_args(model: PathBuf, weights: Option<PathBuf>, data: PathBuf) -> EvalArgs {
    let data = fedge_agent::offline::DataArgs {
        data,
        format: None,
        label_column: "label".into(),
        feature_columns: None,
        normalize_mean: None,
        normalize_std: None,
        window: None,
        stride: None,
    };
    EvalArgs {
        model,
        weights,
        data,
        loss: fedge_agent::offline::LossKind::CrossEntropy,
        limit: Some(4),
        batch_size: 4,
        json: true,
    }
}

#[test]
fn a_truncated_or_corrupt_onnx_file_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    tiny_mnist(&dir.path().join("data"), 4);
    let good = builder::mnist_2nn(1);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("truncated.onnx", good[..good.len() / 2].to_vec()),
        ("empty.onnx", vec![]),
        ("garbage.onnx", (0..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect()),
        ("text.onnx", b"this is not a model\n".to_vec()),
    ];
    for (name, bytes) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, &bytes).unwrap();
        let err = message(offline::eval(eval_args(path, None, dir.path().join("data"))).unwrap_err());
        assert!(err.contains(name), "the error names the file: {err}");
        assert!(err.contains("loading the model"), "the error says what failed: {err}");
        assert!(TrainableModel::from_onnx_bytes(&bytes).is_err());
    }
}

#[test]
fn weights_of_the_wrong_shape_are_an_error_naming_the_file_and_both_sizes() {
    let dir = tempfile::tempdir().unwrap();
    tiny_mnist(&dir.path().join("data"), 4);
    let model = dir.path().join("m.onnx");
    std::fs::write(&model, builder::mnist_2nn(1)).unwrap();
    let params = TrainableModel::from_onnx_bytes(&builder::mnist_2nn(1)).unwrap().num_params();
    let short = dir.path().join("short.f32");
    std::fs::write(&short, weights_to_bytes(&vec![0.0; params - 1])).unwrap();
    let err = message(offline::eval(eval_args(model.clone(), Some(short), dir.path().join("data"))).unwrap_err());
    assert!(err.contains("short.f32") && err.contains(&params.to_string()) && err.contains(&(params - 1).to_string()));

    let ragged = dir.path().join("ragged.f32");
    std::fs::write(&ragged, [0u8; 7]).unwrap();
    let err = message(offline::eval(eval_args(model.clone(), Some(ragged), dir.path().join("data"))).unwrap_err());
    assert!(err.contains("ragged.f32") && err.contains("not a multiple of 4"), "{err}");

    let nan = dir.path().join("nan.f32");
    let mut w = vec![0.0f32; params];
    w[5] = f32::NAN;
    std::fs::write(&nan, weights_to_bytes(&w)).unwrap();
    let err = message(offline::eval(eval_args(model, Some(nan), dir.path().join("data"))).unwrap_err());
    assert!(err.contains("nan.f32") && err.contains("non-finite value at index 5"), "{err}");
}

#[test]
fn a_corrupt_data_set_is_an_error_naming_the_file_and_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("ok");
    tiny_mnist(&base, 6);
    assert_eq!(data::load_mnist_dir(&base, Split::Train).unwrap().len(), 6);

    let check = |setup: &dyn Fn(&Path), file: &str, problem: &str| {
        let d = dir.path().join(format!("case-{}", problem.len()));
        let _ = std::fs::remove_dir_all(&d);
        tiny_mnist(&d, 6);
        setup(&d);
        let err = data::load_mnist_dir(&d, Split::Train).unwrap_err().to_string();
        assert!(err.contains(file), "the error names {file}: {err}");
        assert!(err.to_lowercase().contains(problem), "the error says {problem:?}: {err}");
    };
    // Truncated images.
    check(
        &|d| {
            let p = d.join("train-images-idx3-ubyte");
            let bytes = std::fs::read(&p).unwrap();
            std::fs::write(&p, &bytes[..bytes.len() - 100]).unwrap();
        },
        "train-images-idx3-ubyte",
        "",
    );
    // Fewer labels than images.
    check(
        &|d| {
            std::fs::write(d.join("train-labels-idx1-ubyte"), encode_idx(&[5], &[1, 2, 3, 4, 5])).unwrap();
        },
        "train-labels-idx1-ubyte",
        "labels",
    );
    // A label out of range.
    check(
        &|d| {
            std::fs::write(d.join("train-labels-idx1-ubyte"), encode_idx(&[6], &[1, 2, 3, 4, 5, 42])).unwrap();
        },
        "train-labels-idx1-ubyte",
        "label 42",
    );
    // A corrupt gzip file in place of the images.
    check(
        &|d| {
            std::fs::remove_file(d.join("train-images-idx3-ubyte")).unwrap();
            let mut f = std::fs::File::create(d.join("train-images-idx3-ubyte.gz")).unwrap();
            f.write_all(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3, 0xde, 0xad, 0xbe, 0xef]).unwrap();
        },
        "train-images-idx3-ubyte.gz",
        "",
    );
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// `text` with the line setting `key` replaced by `key = value`.
fn set_key(text: &str, key: &str, value: &str) -> String {
    let line = format!("{key} = {value}");
    let out: Vec<&str> =
        text.lines().map(|l| if l.trim_start().starts_with(&format!("{key} ")) { line.as_str() } else { l }).collect();
    assert!(out.contains(&line.as_str()), "{key} is in the file");
    out.join("\n")
}

#[test]
fn a_configuration_with_an_unknown_key_or_an_out_of_range_value_is_refused_naming_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let server = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/configs/server.toml")).unwrap();
    let agent = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/configs/agent.toml")).unwrap();
    assert!(ServerConfig::load(&write(dir.path(), "server-ok.toml", &server)).is_ok());
    assert!(AgentConfig::load(&write(dir.path(), "agent-ok.toml", &agent)).is_ok());

    let unknown = format!("listen_port = 4433\n{server}");
    let err = message(ServerConfig::load(&write(dir.path(), "server-unknown.toml", &unknown)).unwrap_err());
    assert!(err.contains("server-unknown.toml") && err.contains("listen_port"), "{err}");

    let range = set_key(&server, "fraction", "7.5");
    let err = message(ServerConfig::load(&write(dir.path(), "server-range.toml", &range)).unwrap_err());
    assert!(err.contains("server-range.toml") && err.contains("fraction"), "{err}");

    let idle = format!("idle_timeout_ms = 5\n{server}");
    let err = message(ServerConfig::load(&write(dir.path(), "server-idle.toml", &idle)).unwrap_err());
    assert!(err.contains("server-idle.toml") && err.contains("idle_timeout_ms"), "{err}");

    let downloads = format!("max_concurrent_downloads = 0\n{server}");
    let err = message(ServerConfig::load(&write(dir.path(), "server-downloads.toml", &downloads)).unwrap_err());
    assert!(err.contains("server-downloads.toml") && err.contains("max_concurrent_downloads"), "{err}");

    let memory = set_key(&server, "upload_memory_mb", "0");
    let err = message(ServerConfig::load(&write(dir.path(), "server-memory.toml", &memory)).unwrap_err());
    assert!(err.contains("server-memory.toml") && err.contains("upload_memory_mb"), "{err}");

    for batch in ["0", "11"] {
        let sends = set_key(&server, "udp_send_batch", batch);
        let err = message(ServerConfig::load(&write(dir.path(), "server-sends.toml", &sends)).unwrap_err());
        assert!(err.contains("server-sends.toml") && err.contains("udp_send_batch"), "{err}");
    }

    let typo = agent.replace("[data]", "[data]\nholdut = 0.2");
    let err = message(AgentConfig::load(&write(dir.path(), "agent-typo.toml", &typo)).unwrap_err());
    assert!(err.contains("agent-typo.toml") && err.contains("holdut"), "{err}");

    let holdout = set_key(&agent, "holdout", "3.0");
    let err = message(AgentConfig::load(&write(dir.path(), "agent-holdout.toml", &holdout)).unwrap_err());
    assert!(err.contains("agent-holdout.toml") && err.contains("holdout"), "{err}");
}

#[test]
fn a_corrupt_agent_state_directory_is_ignored_and_a_new_model_replaces_it_whole() {
    let dir = tempfile::tempdir().unwrap();
    let state_dir = dir.path().join("state");
    std::fs::create_dir_all(&state_dir).unwrap();
    std::fs::write(state_dir.join("weights.version"), "seven").unwrap();
    std::fs::write(state_dir.join("weights.f32"), [1u8, 2, 3]).unwrap();
    let mut state = ModelState::open(&state_dir).unwrap();
    assert!(state.weights.is_none(), "unreadable weights are not used");

    let w = vec![0.5f32, -1.0, 2.0];
    let raw = weights_to_bytes(&w);
    state.set_weights(4, Digest::of(&raw), &raw, w.clone()).unwrap();
    let leftovers: Vec<_> = std::fs::read_dir(&state_dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "no temporary files left behind: {leftovers:?}");
    let again = ModelState::open(&state_dir).unwrap();
    let held = again.weights.expect("the new weights are read back");
    assert_eq!((held.version, held.weights.as_slice()), (4, w.as_slice()));
}

#[test]
fn a_server_started_on_a_corrupt_model_exits_with_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    fedge_shared::tls::init_federation(&pki, &["localhost".into()], 30).unwrap();
    let model = dir.path().join("broken-model.onnx");
    std::fs::write(&model, &builder::mlp(&[8, 4, 2], 1)[..40]).unwrap();
    let config = write(
        dir.path(),
        "server.toml",
        &format!(
            r#"
listen = "127.0.0.1:0"
data_dir = "{db}"
[tls]
ca = "{pki}/ca.pem"
cert = "{pki}/server.pem"
key = "{pki}/server.key"
[model]
onnx = "{model}"
[coordinator]
min_agents = 2
max_agents = 2
fraction = 1.0
overselect = 1.0
round_timeout_ms = 20000
retry_backoff_ms = 100

[coordinator.hyper]
epochs = 1
batch_size = 8
learning_rate = 0.1
optimizer = "sgd"
"#,
            db = dir.path().join("db").display(),
            pki = pki.display(),
            model = model.display()
        ),
    );
    let out = std::process::Command::new(workspace_bin("fedge-server").unwrap())
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the server must not start on a corrupt model");
    assert!(stderr.contains("broken-model.onnx"), "the error names the file: {stderr}");
}

/// The fuzz targets' input format: a mode byte, then raw ONNX bytes (even mode) or a small MLP with patches.
fn fuzz_input_to_onnx(data: &[u8]) -> Vec<u8> {
    let Some((&mode, rest)) = data.split_first() else { return vec![] };
    if mode & 1 == 0 {
        return rest.to_vec();
    }
    let Some((head, patches)) = rest.split_at_checked(4) else { return vec![] };
    let layers = [1 + head[0] as usize % 6, 1 + head[1] as usize % 5, 1 + head[2] as usize % 4];
    let mut onnx = builder::mlp(&layers, head[3] as u64);
    for p in patches.chunks_exact(3) {
        let at = ((p[0] as usize) << 8 | p[1] as usize) % onnx.len().max(1);
        if let Some(b) = onnx.get_mut(at) {
            *b = p[2];
        }
    }
    onnx
}

#[test]
fn onnx_files_that_once_crashed_the_loader_are_refused_with_an_error() {
    for (name, input) in [
        ("node without inputs", &include_bytes!("../fuzz/regressions/onnx_load-node-without-inputs.bin")[..]),
        (
            "dimension product overflow",
            &include_bytes!("../fuzz/regressions/onnx_load-dimension-product-overflow.bin")[..],
        ),
    ] {
        let onnx = fuzz_input_to_onnx(input);
        let err = TrainableModel::from_onnx_bytes(&onnx).err();
        assert!(err.is_some(), "{name}: refused");
        eprintln!("{name}: {}", err.map(|e| e.to_string()).unwrap_or_default());
    }
}
