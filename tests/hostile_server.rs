//! An agent against a server that lies about sizes: a real agent over loopback QUIC with mutual TLS, and a scripted
//! server (the federation's own certificate, real hello) that sends the graph and then a weights blob whose header
//! claims a length other than the model's. The agent refuses it from the header, before reading or allocating its
//! body, and says why.

use fedge_agent::client::{Agent, AgentEvent, ClientSettings};
use fedge_agent::state::ModelState;
use fedge_agent::trainer::TractLearner;
use fedge_shared::model::Digest;
use fedge_shared::protocol::{self, BlobHeader, BlobKind, Hello, PROTOCOL_VERSION, ServerHello, limits};
use fedge_shared::tls::{self, Identity, Role, files};
use fedge_shared::wire;
use fedge_system_tests::{init_logs, wait_agent};
use std::time::Duration;
use tokio::sync::{mpsc, watch};

fn tiny() -> fedge_shared::data::Dataset {
    let n = 12;
    let features: Vec<f32> = (0..n * 4).map(|i| (i % 7) as f32 / 7.0).collect();
    let labels = (0..n).map(|i| (i % 3) as u32).collect();
    fedge_shared::data::Dataset::new(features, labels, vec![4], 3).expect("a consistent data set")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_weights_blob_whose_length_is_not_the_models_is_refused_from_its_header() -> anyhow::Result<()> {
    init_logs();
    let dir = tempfile::tempdir()?;
    let pki = dir.path().join("pki");
    tls::init_federation(&pki, &["localhost".into()], 30)?;
    let ca = tls::load_certs(&pki.join(files::CA_CERT))?;
    let server_id = Identity::load(&pki.join(files::SERVER_CERT), &pki.join(files::SERVER_KEY))?;
    let server_cfg = tls::server_config(&ca, &server_id, &[protocol::ALPN_AGENT], Duration::from_secs(10))?;
    let endpoint = quinn::Endpoint::server(server_cfg, "127.0.0.1:0".parse()?)?;
    let addr = endpoint.local_addr()?;

    let onnx = fedge_shared::train::builder::mlp(&[4, 5, 3], 1);
    let params = 4 * 5 + 5 + 5 * 3 + 3;
    let server = tokio::spawn(async move {
        let conn = endpoint.accept().await.ok_or_else(|| anyhow::anyhow!("no agent"))?.await?;
        let (mut send, mut recv) = conn.accept_bi().await?;
        let hello: Hello =
            wire::read_msg(&mut recv, limits::HELLO).await?.ok_or_else(|| anyhow::anyhow!("no hello"))?;
        assert_eq!(hello.protocol, PROTOCOL_VERSION);
        let welcome =
            ServerHello::Welcome { protocol: PROTOCOL_VERSION, agent: "agent-x".into(), server: "liar".into() };
        wire::write_msg(&mut send, &welcome, limits::HELLO).await?;
        let graph = BlobHeader { kind: BlobKind::Graph, len: onnx.len() as u64, digest: Some(Digest::of(&onnx)) };
        wire::send_blob(&conn, &graph, &onnx).await?;
        // Give the agent time to load the graph, then claim a gigabyte of weights and send a few bytes.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let lie =
            BlobHeader { kind: BlobKind::Weights { version: 1 }, len: limits::VECTOR, digest: Some(Digest::of(b"")) };
        let mut stream = wire::open_blob(&conn, &lie).await?;
        stream.write_all(&[0u8; 64]).await?;
        // The agent hangs up; wait for it.
        let closed = tokio::time::timeout(Duration::from_secs(20), conn.closed()).await;
        anyhow::ensure!(closed.is_ok(), "the agent kept the connection to a lying server");
        Ok::<_, anyhow::Error>(())
    });

    let bundle = tls::issue_bundle(&pki, "agent-x", Role::Agent, 30)?;
    let settings = ClientSettings {
        servers: vec![addr],
        server_name: "localhost".into(),
        ca: ca.clone(),
        identity: Identity::load_bundle(&bundle)?,
        idle_timeout: Duration::from_secs(10),
        backoff_initial: Duration::from_secs(30),
        backoff_max: Duration::from_secs(30),
        require_secure_aggregation: true,
        privacy: None,
        floor: Default::default(),
    };
    let (tx, rx) = mpsc::unbounded_channel();
    let (stop, stop_rx) = watch::channel(false);
    let agent = Agent::new(settings, ModelState::in_memory(), Box::new(TractLearner::new(tiny(), None, 1)))
        .with_events(tx.clone());
    let running = tokio::spawn(agent.run(stop_rx));
    // Tag events with agent 0 for the shared waiting helper.
    let (tagged_tx, mut tagged) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut rx = rx;
        while let Some(e) = rx.recv().await {
            if tagged_tx.send((0usize, e)).is_err() {
                return;
            }
        }
    });
    let reason = wait_agent(&mut tagged, Duration::from_secs(30), |_, e| match e {
        AgentEvent::Disconnected { reason } => Some(reason.clone()),
        _ => None,
    })
    .await?;
    assert!(
        reason.contains(&format!("{} bytes", limits::VECTOR)) && reason.contains(&format!("{params} parameters")),
        "{reason}"
    );
    server.await??;
    let _ = stop.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), running).await;
    drop(tx);
    Ok(())
}
