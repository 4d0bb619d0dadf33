//! The prediction endpoint, over real loopback HTTP: it answers like `fedge-agent predict` for the same version,
//! swaps models under load without losing a request, refuses bad and oversized input with clear errors, honours
//! a pinned version, and reports readiness and metrics.

use fedge_agent::inference::engine::LoadedModel;
use fedge_agent::inference::{self, InferenceService, InferenceSettings};
use fedge_agent::state::{ModelState, PublishedModel};
use fedge_shared::model::{Digest, weights_to_bytes};
use fedge_shared::train::{TrainableModel, builder};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

const LAYERS: [usize; 3] = [12, 16, 5];

/// A small MLP's graph and version `v` of its weights (each version different).
fn version(v: u64) -> PublishedModel {
    let graph = builder::mlp(&LAYERS, 1);
    let m = TrainableModel::from_onnx_bytes(&graph).unwrap();
    let weights: Vec<f32> =
        m.initial_weights().iter().enumerate().map(|(i, w)| w + 0.01 * v as f32 * ((i % 7) as f32 - 3.0)).collect();
    PublishedModel { version: v, graph: Arc::new(graph), weights: Arc::new(weights) }
}

fn example(i: usize) -> Vec<f32> {
    (0..LAYERS[0]).map(|k| (((i * 31 + k * 17) % 23) as f32 - 11.0) / 7.0).collect()
}

struct Reply {
    status: u16,
    headers: String,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One HTTP/1.1 request on a fresh connection.
async fn http(addr: SocketAddr, method: &str, path: &str, content_type: &str, accept: &str, body: &[u8]) -> Reply {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: {content_type}\r\nAccept: {accept}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    let mut raw = vec![];
    s.read_to_end(&mut raw).await.unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("a complete response");
    let headers = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status = headers.split(' ').nth(1).unwrap().parse().unwrap();
    Reply { status, headers: headers.to_ascii_lowercase(), body: raw[split + 4..].to_vec() }
}

async fn post_json(addr: SocketAddr, body: &Value) -> Reply {
    http(addr, "POST", "/v1/predict", "application/json", "application/json", &serde_json::to_vec(body).unwrap()).await
}

async fn get(addr: SocketAddr, path: &str) -> Reply {
    http(addr, "GET", path, "text/plain", "*/*", b"").await
}

async fn serve(
    settings: InferenceSettings,
    first: Option<PublishedModel>,
) -> (InferenceService, watch::Sender<Option<PublishedModel>>, watch::Sender<bool>) {
    let (models, updates) = watch::channel(first);
    let (stop, stop_rx) = watch::channel(false);
    let service = inference::start(settings, updates, stop_rx).await.unwrap();
    (service, models, stop)
}

fn outputs(v: &Value) -> Vec<Vec<f32>> {
    v["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_endpoint_answers_exactly_like_fedge_agent_predict_for_the_same_kept_version() {
    let dir = tempfile::tempdir().unwrap();
    let mut state = ModelState::open(dir.path()).unwrap();
    let (v3, v4) = (version(3), version(4));
    state.set_graph(v3.graph.to_vec()).unwrap();
    for v in [&v3, &v4] {
        let raw = weights_to_bytes(&v.weights);
        state.set_weights(v.version, Digest::of(&raw), &raw, v.weights.to_vec()).unwrap();
    }
    let batch: Vec<Vec<f32>> = (0..40).map(example).collect();
    let input = dir.path().join("in.json");
    std::fs::write(&input, serde_json::to_vec(&json!({ "inputs": batch })).unwrap()).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fedge-agent"))
        .args(["predict", "--state-dir", dir.path().to_str().unwrap(), "--version", "3", "--json", "--input"])
        .arg(&input)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let cli: Value = serde_json::from_slice(&out.stdout).unwrap();

    let (service, _models, _stop) = serve(InferenceSettings::loopback(), Some(state.published(Some(3)).unwrap())).await;
    service.wait_for_version(Some(3), Duration::from_secs(60)).await.unwrap();
    let addr = service.local_addr.unwrap();
    let http = post_json(addr, &json!({ "inputs": batch })).await;
    assert_eq!(http.status, 200, "{}", http.text());
    assert!(http.headers.contains("x-fedge-model-version: 3"), "{}", http.headers);
    let http = http.json();
    assert_eq!(http["version"], 3);
    assert_eq!(cli["version"], 3);
    assert_eq!(http["classes"], cli["classes"]);
    // The same weights give the same logits; a batch split differently can change the last bit of a sum
    // (SIMD tails), so "the same" is to within a few ulps.
    let (a, b) = (outputs(&http), outputs(&cli));
    assert_eq!(a.len(), b.len());
    for (i, (ra, rb)) in a.iter().zip(&b).enumerate() {
        for (x, y) in ra.iter().zip(rb) {
            assert!((x - y).abs() <= 1e-5 * x.abs().max(1.0), "row {i}: endpoint {x}, predict {y}");
        }
    }
    // And they are version 3's logits, not version 4's.
    let m = LoadedModel::build(&v4, 1).unwrap();
    assert_ne!(m.predict(&batch[0]).unwrap(), outputs(&http)[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_swap_under_a_steady_stream_of_concurrent_requests_loses_or_fails_no_request() {
    let (v1, v2) = (version(1), version(2));
    let expect: Vec<LoadedModel> = [&v1, &v2].iter().map(|v| LoadedModel::build(v, 1).unwrap()).collect();
    let (service, models, _stop) = serve(InferenceSettings::loopback(), Some(v1)).await;
    service.wait_for_version(Some(1), Duration::from_secs(60)).await.unwrap();
    let addr = service.local_addr.unwrap();
    let (go_on, keep_going) = watch::channel(true);
    let mut clients = vec![];
    for c in 0..8usize {
        let keep_going = keep_going.clone();
        clients.push(tokio::spawn(async move {
            let mut seen = vec![];
            let mut i = c;
            while *keep_going.borrow() {
                let rows = 1 + i % 3;
                let xs: Vec<Vec<f32>> = (i..i + rows).map(example).collect();
                let r = post_json(addr, &json!({ "inputs": xs })).await;
                assert_eq!(r.status, 200, "request {i} of client {c} failed: {}", r.text());
                seen.push((i, rows, r.json()));
                i += 8;
            }
            seen
        }));
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    models.send_replace(Some(v2));
    service.wait_for_version(Some(2), Duration::from_secs(60)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    go_on.send_replace(false);
    let (mut total, mut per_version) = (0, [0usize; 2]);
    for client in clients {
        let seen = client.await.expect("no client saw a failed request");
        let versions: Vec<u64> = seen.iter().map(|(_, _, v)| v["version"].as_u64().unwrap()).collect();
        assert!(
            versions.windows(2).all(|w| w[0] <= w[1]),
            "a client never goes back to an older version: {versions:?}"
        );
        for (i, rows, answer) in seen {
            let v = answer["version"].as_u64().unwrap() as usize;
            let x: Vec<f32> = (i..i + rows).flat_map(example).collect();
            let want = expect[v - 1].predict(&x).unwrap();
            let got: Vec<f32> = outputs(&answer).concat();
            for (a, b) in got.iter().zip(&want) {
                assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "request {i}: {a} vs {b} (version {v})");
            }
            assert_eq!(got.len(), want.len());
            per_version[v - 1] += 1;
            total += 1;
        }
    }
    assert!(per_version[0] > 0 && per_version[1] > 0, "requests ran on both versions: {per_version:?}");
    let metrics = get(addr, "/metrics").await.text();
    assert!(metrics.contains(&format!("fedge_inference_requests_total{{outcome=\"ok\"}} {total}")), "{metrics}");
    assert!(!metrics.contains("outcome=\"error\""), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_get_400_with_the_reason_and_oversized_requests_get_413() {
    let mut settings = InferenceSettings::loopback();
    settings.max_examples = 4;
    settings.max_body_bytes = 2048;
    let (service, _models, _stop) = serve(settings, Some(version(1))).await;
    service.wait_for_version(Some(1), Duration::from_secs(60)).await.unwrap();
    let addr = service.local_addr.unwrap();

    let r = post_json(addr, &json!({ "inputs": [[1.0, 2.0]] })).await;
    assert_eq!(r.status, 400);
    assert!(r.json()["error"].as_str().unwrap().contains("has 2 numbers; this model takes 12"), "{}", r.text());
    let r = post_json(addr, &json!({ "inputs": [vec!["a"; 12]] })).await;
    assert_eq!(r.status, 400);
    assert!(r.text().contains("expected a number, found a string"), "{}", r.text());
    let r = http(addr, "POST", "/v1/predict", "application/json", "*/*", b"{not json").await;
    assert_eq!(r.status, 400);
    let r = http(addr, "POST", "/v1/predict", "application/octet-stream", "*/*", &[0u8; 10]).await;
    assert_eq!(r.status, 400);
    assert!(r.text().contains("whole number of examples of 12"), "{}", r.text());
    let r = http(addr, "POST", "/v1/predict", "text/csv", "*/*", b"1,2").await;
    assert_eq!(r.status, 415);

    let five: Vec<Vec<f32>> = (0..5).map(example).collect();
    let r = post_json(addr, &json!({ "inputs": five })).await;
    assert_eq!(r.status, 413, "{}", r.text());
    assert!(r.text().contains("at most 4"), "{}", r.text());
    let r = http(addr, "POST", "/v1/predict", "application/octet-stream", "*/*", &[0u8; 4096]).await;
    assert_eq!(r.status, 413, "{}", r.text());

    // Raw in, raw out: the same logits as JSON.
    let x = example(9);
    let raw: Vec<u8> = x.iter().flat_map(|f| f.to_le_bytes()).collect();
    let r = http(addr, "POST", "/v1/predict", "application/octet-stream", "application/octet-stream", &raw).await;
    assert_eq!(r.status, 200);
    let logits: Vec<f32> = r.body.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    let j = post_json(addr, &json!({ "input": x })).await.json();
    assert_eq!(vec![logits], outputs(&j));

    let metrics = get(addr, "/metrics").await.text();
    assert!(metrics.contains("fedge_inference_requests_total{outcome=\"bad_request\"} 4"), "{metrics}");
    assert!(metrics.contains("fedge_inference_requests_total{outcome=\"too_large\"} 2"), "{metrics}");
    assert!(metrics.contains("fedge_inference_request_duration_seconds_bucket"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_waits_for_a_model_and_a_pinned_version_stays_served_when_newer_ones_arrive() {
    let mut settings = InferenceSettings::loopback();
    settings.pin_version = Some(2);
    let (service, models, _stop) = serve(settings, None).await;
    let addr = service.local_addr.unwrap();
    assert_eq!(get(addr, "/healthz").await.status, 200);
    assert_eq!(get(addr, "/readyz").await.status, 503);
    assert_eq!(post_json(addr, &json!({ "input": example(0) })).await.status, 503);

    models.send_replace(Some(version(1)));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(get(addr, "/readyz").await.status, 503, "version 1 is not the pinned one");
    models.send_replace(Some(version(2)));
    service.wait_for_version(Some(2), Duration::from_secs(60)).await.unwrap();
    let r = get(addr, "/readyz").await;
    assert_eq!((r.status, r.text()), (200, "ready: version 2\n".to_string()));
    models.send_replace(Some(version(3)));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let m = get(addr, "/v1/model").await.json();
    assert_eq!((m["version"].as_u64(), m["pinned"].as_u64()), (Some(2), Some(2)));
    assert_eq!(m["input_shape"], json!([12]));
    assert_eq!(post_json(addr, &json!({ "input": example(0) })).await.json()["version"], 2);
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_endpoint_also_answers_on_a_unix_socket_and_stops_on_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("inference.sock");
    let mut settings = InferenceSettings::loopback();
    settings.listen = None;
    settings.unix_socket = Some(sock.clone());
    let (service, _models, stop) = serve(settings, Some(version(5))).await;
    service.wait_for_version(Some(5), Duration::from_secs(60)).await.unwrap();
    let body = serde_json::to_vec(&json!({ "input": example(1) })).unwrap();
    let mut s = tokio::net::UnixStream::connect(&sock).await.unwrap();
    let head = format!(
        "POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(&body).await.unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).await.unwrap();
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    assert!(raw.contains("\"version\":5"), "{raw}");
    stop.send_replace(true);
    tokio::time::timeout(Duration::from_secs(10), service.join()).await.expect("the endpoint stops on shutdown");
}
