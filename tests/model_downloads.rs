//! Whole system: how a new model version reaches the agents (server.toml's `download`).
//!
//! - With 8-bit differences (the default), agents that hold the previous version download its difference, a
//!   quarter of the bytes, and rebuild the server's exact bits: every plan names the version's digest, and an agent
//!   holding other bits would refuse it, so a cohort that reports in full every round holds the server's bits.
//! - An agent sent differences it cannot use (from a version it does not hold, or that do not rebuild the announced
//!   digest) keeps the weights it had, disconnects saying why, and reconnects declaring no version, so that the
//!   server sends the whole one.

use fedge_agent::client::{Agent, AgentEvent, ClientSettings};
use fedge_agent::learner::{Learner, NoiseLearner};
use fedge_agent::state::ModelState;
use fedge_agent::trainer::TractLearner;
use fedge_ctl::demo::{FederationOptions, FederationSpec, LocalFederation};
use fedge_server::coordinator::SecAggConfig;
use fedge_server::service::ServerEvent;
use fedge_shared::delta_encoding::DeltaEncoding;
use fedge_shared::model::{Digest, weights_to_bytes};
use fedge_shared::model_diff;
use fedge_shared::protocol::{self, AgentMessage, BlobHeader, BlobKind, Hello, PROTOCOL_VERSION, ServerHello, limits};
use fedge_shared::tls::{self, Identity, Role, files};
use fedge_shared::wire;
use fedge_system_tests::{cohort_of, init_logs, wait_agent, wait_server};
use std::time::Duration;
use tokio::sync::{mpsc, watch};

const AGENTS: usize = 4;
const ROUNDS: u64 = 3;

/// Bytes the server sends to agents over a run of `ROUNDS` rounds with versions travelling as `download`.
async fn bytes_sent(download: DeltaEncoding) -> anyhow::Result<(u64, usize)> {
    let onnx = fedge_shared::train::builder::mlp(&[64, 256, 10], 3);
    let params = 64 * 256 + 256 + 256 * 10 + 10;
    let learners: Vec<Box<dyn Learner>> =
        (0..AGENTS).map(|i| Box::new(NoiseLearner::new(100, i as u64, 0.01)) as Box<dyn Learner>).collect();
    let spec =
        FederationSpec { onnx: onnx.clone(), coordinator: cohort_of(AGENTS), rounds: Some(ROUNDS), evaluator: None };
    let options = FederationOptions { secagg: SecAggConfig::off(), download, ..Default::default() };
    let mut fed = LocalFederation::start_with(spec, learners, options).await?;
    let mut events = fed.server.events();
    for _ in 0..ROUNDS {
        let record = wait_server(&mut events, Duration::from_secs(60), |e| match e {
            ServerEvent::RoundCompleted(r) => Some(Ok(r.clone())),
            ServerEvent::RoundAborted(r) => Some(Err(format!("round {} aborted: {:?}", r.round, r.outcome))),
            _ => None,
        })
        .await?
        .map_err(anyhow::Error::msg)?;
        // Each plan names the version's digest: an agent holding other bits refuses it and the round misses it.
        assert_eq!(
            record.reported.len(),
            AGENTS,
            "every agent trains from the server's bits in round {}",
            record.round
        );
    }
    // Every agent receives the last version too.
    let mut received = 0;
    while received < AGENTS {
        wait_agent(&mut fed.agent_events, Duration::from_secs(30), |_, e| match e {
            AgentEvent::ModelReceived { version } if *version == ROUNDS => Some(()),
            _ => None,
        })
        .await?;
        received += 1;
    }
    let sent = fed.server.metrics.bytes_out.get();
    let graph = onnx.len() as u64;
    fed.stop().await?;
    Ok((sent - AGENTS as u64 * graph, params))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_holding_the_previous_version_download_its_difference_and_hold_the_servers_bits() -> anyhow::Result<()> {
    init_logs();
    let (diffs, params) = bytes_sent(DeltaEncoding::Int8).await?;
    let (whole, _) = bytes_sent(DeltaEncoding::F32).await?;
    let p = params as u64;
    let agents = AGENTS as u64;
    // Version 0 whole, then one difference a version.
    assert_eq!(whole, agents * (ROUNDS + 1) * 4 * p, "f32: every version whole");
    let one_diff = model_diff::encoded_len(params) as u64;
    assert_eq!(diffs, agents * (4 * p + ROUNDS * one_diff), "int8: version 0 whole, then differences");
    assert!(diffs * 2 < whole, "{diffs} bytes against {whole}");
    Ok(())
}

fn tiny() -> fedge_shared::data::Dataset {
    let n = 12;
    let features: Vec<f32> = (0..n * 4).map(|i| (i % 7) as f32 / 7.0).collect();
    let labels = (0..n).map(|i| (i % 3) as u32).collect();
    fedge_shared::data::Dataset::new(features, labels, vec![4], 3).expect("a consistent data set")
}

/// Accepts the agent's next connection and answers its hello; returns the connection and its check-in.
async fn accept(endpoint: &quinn::Endpoint) -> anyhow::Result<(quinn::Connection, protocol::CheckIn)> {
    let conn = endpoint.accept().await.ok_or_else(|| anyhow::anyhow!("no agent"))?.await?;
    let (mut send, mut recv) = conn.accept_bi().await?;
    let hello: Hello = wire::read_msg(&mut recv, limits::HELLO).await?.ok_or_else(|| anyhow::anyhow!("no hello"))?;
    anyhow::ensure!(hello.protocol == PROTOCOL_VERSION);
    let welcome = ServerHello::Welcome { protocol: PROTOCOL_VERSION, agent: "agent-x".into(), server: "script".into() };
    wire::write_msg(&mut send, &welcome, limits::HELLO).await?;
    let checkin = loop {
        match wire::read_msg::<AgentMessage>(&mut recv, limits::CONTROL).await? {
            Some(AgentMessage::CheckIn(c)) => break c,
            Some(_) => continue,
            None => anyhow::bail!("the agent closed its control stream before checking in"),
        }
    };
    // The control stream stays open for as long as the connection: keep its halves alive.
    tokio::spawn(async move {
        let _keep = send;
        while let Ok(Some(_)) = wire::read_msg::<AgentMessage>(&mut recv, limits::CONTROL).await {}
    });
    Ok((conn, checkin))
}

/// The agent's next event that `want` accepts.
async fn next(
    rx: &mut mpsc::UnboundedReceiver<AgentEvent>,
    want: fn(&AgentEvent) -> bool,
) -> anyhow::Result<AgentEvent> {
    loop {
        let e = tokio::time::timeout(Duration::from_secs(20), rx.recv())
            .await
            .map_err(|_| anyhow::anyhow!("no agent event in time"))?
            .ok_or_else(|| anyhow::anyhow!("the agent stopped"))?;
        if want(&e) {
            return Ok(e);
        }
    }
}

async fn weights(conn: &quinn::Connection, version: u64, w: &[f32]) -> anyhow::Result<()> {
    let bytes = weights_to_bytes(w);
    let h =
        BlobHeader { kind: BlobKind::Weights { version }, len: bytes.len() as u64, digest: Some(Digest::of(&bytes)) };
    Ok(wire::send_blob(conn, &h, &bytes).await?)
}

async fn diff(conn: &quinn::Connection, from: u64, version: u64, body: &[u8], rebuilds: Digest) -> anyhow::Result<()> {
    let kind = BlobKind::WeightsDiff { from, version, weights: rebuilds };
    let h = BlobHeader { kind, len: body.len() as u64, digest: Some(Digest::of(body)) };
    Ok(wire::send_blob(conn, &h, body).await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn differences_an_agent_cannot_use_make_it_reconnect_for_the_whole_version() -> anyhow::Result<()> {
    init_logs();
    let dir = tempfile::tempdir()?;
    let pki = dir.path().join("pki");
    tls::init_federation(&pki, &["localhost".into()], 30)?;
    let ca = tls::load_certs(&pki.join(files::CA_CERT))?;
    let server_id = Identity::load(&pki.join(files::SERVER_CERT), &pki.join(files::SERVER_KEY))?;
    let server_cfg = tls::server_config(&ca, &server_id, &[protocol::ALPN_AGENT], Duration::from_secs(10))?;
    let endpoint = quinn::Endpoint::server(server_cfg, "127.0.0.1:0".parse()?)?;
    let addr = endpoint.local_addr()?;

    let bundle = tls::issue_bundle(&pki, "agent-x", Role::Agent, 30)?;
    let settings = ClientSettings {
        servers: vec![addr],
        server_name: "localhost".into(),
        ca: ca.clone(),
        identity: Identity::load_bundle(&bundle)?,
        idle_timeout: Duration::from_secs(10),
        backoff_initial: Duration::from_millis(50),
        backoff_max: Duration::from_millis(200),
        require_secure_aggregation: true,
        privacy: None,
        floor: Default::default(),
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (stop, stop_rx) = watch::channel(false);
    let agent = Agent::new(settings, ModelState::in_memory(), Box::new(TractLearner::new(tiny(), None, 1)))
        .with_events(tx.clone());
    let running = tokio::spawn(agent.run(stop_rx));
    let onnx = fedge_shared::train::builder::mlp(&[4, 5, 3], 1);
    let params = 4 * 5 + 5 + 5 * 3 + 3;
    let v0: Vec<f32> = (0..params).map(|i| (i as f32 * 0.3).sin()).collect();
    let (v1, d1) = model_diff::settle(&v0, &v0.iter().map(|w| w + 0.01).collect::<Vec<_>>()).expect("finite");
    let (v2, d2) = model_diff::settle(&v1, &v1.iter().map(|w| w * 0.9).collect::<Vec<_>>()).expect("finite");
    let digest = |w: &[f32]| Digest::of(&weights_to_bytes(w));

    // First connection: the graph and version 0 whole, then a good difference to version 1.
    let (conn, checkin) = accept(&endpoint).await?;
    assert_eq!(checkin.model_version, None);
    let graph = BlobHeader { kind: BlobKind::Graph, len: onnx.len() as u64, digest: Some(Digest::of(&onnx)) };
    wire::send_blob(&conn, &graph, &onnx).await?;
    weights(&conn, 0, &v0).await?;
    next(&mut rx, |e| matches!(e, AgentEvent::ModelReceived { version: 0 })).await?;
    diff(&conn, 0, 1, &d1, digest(&v1)).await?;
    next(&mut rx, |e| matches!(e, AgentEvent::ModelReceived { version: 1 })).await?;

    // Then a difference whose result is not the announced digest: the agent hangs up and says why.
    diff(&conn, 1, 2, &d2, digest(&v1)).await?;
    let AgentEvent::Disconnected { reason } = next(&mut rx, |e| matches!(e, AgentEvent::Disconnected { .. })).await?
    else {
        unreachable!()
    };
    assert!(reason.contains("do not rebuild version 2"), "{reason}");
    drop(conn);

    // It comes back declaring no version (it still holds version 1's weights, for inference).
    let (conn, checkin) = accept(&endpoint).await?;
    assert_eq!(checkin.model_version, None, "asks for the whole version");
    assert_eq!(checkin.graph, Some(Digest::of(&onnx)), "still holds the graph");
    // Differences from a version it does not hold are refused the same way.
    diff(&conn, 7, 8, &d2, digest(&v2)).await?;
    let AgentEvent::Disconnected { reason } = next(&mut rx, |e| matches!(e, AgentEvent::Disconnected { .. })).await?
    else {
        unreachable!()
    };
    assert!(reason.contains("from version 7") && reason.contains("holds version 1"), "{reason}");
    drop(conn);

    // The whole version ends it: the agent holds version 2 and declares it again from then on.
    let (conn, checkin) = accept(&endpoint).await?;
    assert_eq!(checkin.model_version, None);
    weights(&conn, 2, &v2).await?;
    next(&mut rx, |e| matches!(e, AgentEvent::ModelReceived { version: 2 })).await?;
    conn.close(0u32.into(), b"done");
    let (_conn, checkin) = accept(&endpoint).await?;
    assert_eq!(checkin.model_version, Some(2));

    let _ = stop.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), running).await;
    drop(tx);
    Ok(())
}
