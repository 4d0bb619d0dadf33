//! `fedge-server probe` (the container's readiness and liveness check) against a real server over loopback QUIC:
//! a running server is reported ready, without being counted as a refused peer, while a port with no server (before
//! the server starts, after it stops, or a socket that swallows datagrams) and a server with other certificates
//! are not.

use fedge_server::config::ServerConfig;
use fedge_server::net::ProbeError;
use fedge_server::service::ServerEvent;
use fedge_shared::protocol::ALPN_AGENT;
use fedge_shared::tls;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

/// A federation's files and a server.toml for it, listening on `port` of 127.0.0.1.
fn server_files(dir: &Path, port: u16) -> PathBuf {
    let pki = dir.join("pki");
    tls::init_federation(&pki, &["localhost".into()], 30).unwrap();
    std::fs::write(dir.join("model.onnx"), fedge_shared::train::builder::mlp(&[4, 3], 1)).unwrap();
    let toml = format!(
        r#"listen = "127.0.0.1:{port}"
data_dir = "{dir}/db"
autostart = false

[tls]
ca = "{dir}/pki/ca.pem"
cert = "{dir}/pki/server.pem"
key = "{dir}/pki/server.key"

[model]
onnx = "{dir}/model.onnx"

[coordinator]
min_agents = 2
max_agents = 10
fraction = 1.0
round_timeout_ms = 10000

[coordinator.hyper]
epochs = 1
batch_size = 8
learning_rate = 0.1
optimizer = "sgd"
"#,
        dir = dir.display()
    );
    let path = dir.join("server.toml");
    std::fs::write(&path, toml).unwrap();
    path
}

/// A UDP port free on 127.0.0.1 a moment ago.
fn free_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Runs `fedge-server --config CONFIG probe ARGS...` (blocking: call it off the runtime's threads).
fn run_probe(config: &Path, args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_fedge-server"))
        .arg("probe")
        .arg("--config")
        .arg(config)
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

async fn run_probe_async(config: &Path, args: &[&str]) -> Output {
    let (config, args): (PathBuf, Vec<String>) = (config.into(), args.iter().map(|a| a.to_string()).collect());
    tokio::task::spawn_blocking(move || run_probe(&config, &args.iter().map(String::as_str).collect::<Vec<_>>()))
        .await
        .unwrap()
}

fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

/// Tries to join as an agent without a certificate (the server must refuse it, and report it).
async fn join_without_certificate(server: SocketAddr, ca: &Path) {
    let ca = tls::load_certs(ca).unwrap();
    let cfg = tls::client_config(&ca, None, ALPN_AGENT, Duration::from_secs(5)).unwrap();
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    ep.set_default_client_config(cfg);
    let attempt = async {
        let conn = ep.connect(server, "localhost").unwrap().await?;
        Err::<(), _>(conn.closed().await)
    };
    let r = tokio::time::timeout(Duration::from_secs(10), attempt).await.expect("the server answers");
    assert!(r.is_err(), "an agent without a certificate got in");
    ep.close(0u32.into(), b"");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_server_is_ready_and_its_probes_are_not_counted_as_refused_peers() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config_path = server_files(dir.path(), port);

    // Before the server runs, the probe finds nothing: not ready.
    let before = run_probe_async(&config_path, &["--timeout-ms", "700"]).await;
    assert!(!before.status.success(), "ready before the server started: {}", text(&before));
    assert!(text(&before).contains("no answer from 127.0.0.1:"), "{}", text(&before));

    let server = fedge_server::service::start(ServerConfig::load(&config_path).unwrap(), None).await.unwrap();
    assert_eq!(server.local_addr.port(), port);
    let mut events = server.events();

    // The address comes from the configuration's `listen`, and the probe says what it found.
    let ready = run_probe_async(&config_path, &[]).await;
    assert!(ready.status.success(), "{}", text(&ready));
    assert!(text(&ready).contains(&format!("ready: the server at 127.0.0.1:{port} answered")), "{}", text(&ready));
    // Three more probes, then one real refusal: the only Refused event is the real one.
    for _ in 0..3 {
        fedge_server::net::probe(server.local_addr, server_cert(dir.path()), Duration::from_secs(3)).await.unwrap();
    }
    join_without_certificate(server.local_addr, &dir.path().join("pki/ca.pem")).await;
    let first = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Ok(ServerEvent::Refused { reason, .. }) = events.recv().await {
                return reason;
            }
        }
    })
    .await
    .expect("the agent without a certificate is reported");
    assert!(first.to_lowercase().contains("certificate"), "{first}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    while let Ok(e) = events.try_recv() {
        assert!(!matches!(e, ServerEvent::Refused { .. }), "a probe was reported as a refused peer: {e:?}");
    }
    server.shutdown().await.unwrap();

    // After the server stopped, the probe fails again (the liveness side of it).
    let after = run_probe_async(&config_path, &["--timeout-ms", "700"]).await;
    assert!(!after.status.success(), "ready after the server stopped: {}", text(&after));
}

fn server_cert(dir: &Path) -> rustls::pki_types::CertificateDer<'static> {
    tls::load_certs(&dir.join("pki/server.pem")).unwrap().remove(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_with_other_certificates_is_not_taken_for_the_configured_one() {
    let ours = tempfile::tempdir().unwrap();
    let theirs = tempfile::tempdir().unwrap();
    let port = free_port();
    let our_config = server_files(ours.path(), port);
    let their_config = server_files(theirs.path(), port);
    // Another server (another federation's certificates) on the port our configuration names.
    let server = fedge_server::service::start(ServerConfig::load(&their_config).unwrap(), None).await.unwrap();

    let r = fedge_server::net::probe(server.local_addr, server_cert(ours.path()), Duration::from_secs(3)).await;
    assert!(matches!(r, Err(ProbeError::WrongServer { .. })), "{r:?}");
    let out = run_probe_async(&our_config, &[]).await;
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("presented another certificate than the configured one"), "{}", text(&out));
    // Its own certificate passes.
    fedge_server::net::probe(server.local_addr, server_cert(theirs.path()), Duration::from_secs(3)).await.unwrap();
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_port_that_swallows_datagrams_is_not_ready_and_the_probe_ends_at_its_time_out() {
    let dir = tempfile::tempdir().unwrap();
    tls::init_federation(dir.path(), &["localhost".into()], 30).unwrap();
    // A bound socket that never answers: no ICMP, no QUIC.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let started = std::time::Instant::now();
    let r = fedge_server::net::probe(
        silent.local_addr().unwrap(),
        tls::load_certs(&dir.path().join("server.pem")).unwrap().remove(0),
        Duration::from_millis(500),
    )
    .await;
    assert!(matches!(r, Err(ProbeError::Silent { .. })), "{r:?}");
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
}
