//! Whole system: only agents holding a certificate of the federation's CA that is not revoked get in; the
//! refused ones are logged with a reason, and the round carries on with the others.

use fedge_agent::client::{Agent, AgentEvent};
use fedge_agent::learner::{Learner, NoiseLearner};
use fedge_agent::state::ModelState;
use fedge_ctl::demo::{FederationSpec, LocalFederation, agent_settings};
use fedge_server::coordinator::CoordinatorConfig;
use fedge_server::service::ServerEvent;
use fedge_shared::protocol::{ALPN_AGENT, Hello, PROTOCOL_VERSION, ServerHello, limits};
use fedge_shared::tls::{self, Identity, Role};
use fedge_shared::wire;
use fedge_system_tests::{cohort_of, init_logs, wait_server};
use std::path::Path;
use std::time::Duration;

fn spec() -> FederationSpec {
    FederationSpec {
        onnx: fedge_shared::train::builder::mlp(&[16, 8, 4], 1),
        coordinator: CoordinatorConfig { seed: 1, round_timeout_ms: 30_000, retry_backoff_ms: 200, ..cohort_of(3) },
        rounds: None,
        evaluator: None,
    }
}

/// Connects with `identity` (or none), says hello, and returns what happened.
async fn try_join(server: std::net::SocketAddr, ca: &Path, identity: Option<&Identity>) -> Result<String, String> {
    let ca = tls::load_certs(ca).map_err(|e| e.to_string())?;
    let cfg = tls::client_config(&ca, identity, ALPN_AGENT, Duration::from_secs(5)).map_err(|e| e.to_string())?;
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).map_err(|e| e.to_string())?;
    ep.set_default_client_config(cfg);
    let attempt = async {
        let conn = ep.connect(server, "localhost").map_err(|e| e.to_string())?.await.map_err(|e| e.to_string())?;
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
        wire::write_msg(&mut send, &Hello { protocol: PROTOCOL_VERSION, software: "test".into() }, limits::HELLO)
            .await
            .map_err(|e| e.to_string())?;
        match wire::read_msg::<ServerHello>(&mut recv, limits::HELLO).await {
            Ok(Some(ServerHello::Welcome { agent, .. })) => Ok(agent),
            Ok(other) => Err(format!("{other:?}")),
            Err(e) => Err(e.to_string()),
        }
    };
    let r = tokio::time::timeout(Duration::from_secs(10), attempt).await.unwrap_or(Err("timed out".into()));
    ep.close(0u32.into(), b"");
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outsiders_and_revoked_agents_are_refused_while_the_round_goes_on() -> anyhow::Result<()> {
    init_logs();
    let learners: Vec<Box<dyn Learner>> =
        (0..3).map(|i| Box::new(NoiseLearner::new(100, i, 0.01)) as Box<dyn Learner>).collect();
    let fed = LocalFederation::start(spec(), learners).await?;
    let mut events = fed.server.events();
    let addr = fed.server.local_addr;
    let pki = fed.pki();
    let ca = pki.join(tls::files::CA_CERT);

    // A valid, unrevoked agent gets in (the test's way of joining works).
    let good = Identity::load_bundle(&tls::issue_bundle(&pki, "newcomer", Role::Agent, 30)?)?;
    assert_eq!(try_join(addr, &ca, Some(&good)).await, Ok("newcomer".to_string()));

    // No certificate at all.
    let none = try_join(addr, &ca, None).await;
    assert!(none.is_err(), "an agent without a certificate got in: {none:?}");
    let reason = wait_server(&mut events, Duration::from_secs(10), |e| match e {
        ServerEvent::Refused { reason, .. } => Some(reason.clone()),
        _ => None,
    })
    .await?;
    assert!(reason.to_lowercase().contains("certificate"), "{reason}");

    // A certificate from another federation's CA.
    let other = tempfile::tempdir()?;
    tls::init_federation(other.path(), &["localhost".into()], 30)?;
    let stranger = Identity::load_bundle(&tls::issue_bundle(other.path(), "stranger", Role::Agent, 30)?)?;
    let r = try_join(addr, &ca, Some(&stranger)).await;
    assert!(r.is_err(), "an agent of another CA got in: {r:?}");
    let reason = wait_server(&mut events, Duration::from_secs(10), |e| match e {
        ServerEvent::Refused { reason, .. } => Some(reason.clone()),
        _ => None,
    })
    .await?;
    assert!(reason.contains("UnknownIssuer") || reason.to_lowercase().contains("certificate"), "{reason}");

    // A revoked certificate of our own CA.
    let revoked_bundle = tls::issue_bundle(&pki, "lost-device", Role::Agent, 30)?;
    let revoked = Identity::load_bundle(&revoked_bundle)?;
    let fp = revoked.info()?.fingerprint.to_hex();
    std::fs::write(pki.join("revoked.txt"), format!("lost-device {fp}\n"))?;
    let r = try_join(addr, &ca, Some(&revoked)).await;
    assert!(r.is_err(), "a revoked agent got in: {r:?}");
    let reason = wait_server(&mut events, Duration::from_secs(10), |e| match e {
        ServerEvent::Refused { reason, .. } => Some(reason.clone()),
        _ => None,
    })
    .await?;
    assert!(reason.contains("revoked"), "{reason}");

    // An operator certificate cannot join rounds.
    let op = Identity::load_bundle(&tls::issue_bundle(&pki, "alice", Role::Operator, 30)?)?;
    assert!(try_join(addr, &ca, Some(&op)).await.is_err(), "an operator certificate joined a round");

    // Meanwhile the three honest agents complete rounds.
    let record = wait_server(&mut events, Duration::from_secs(60), |e| match e {
        ServerEvent::RoundCompleted(r) => Some(r.clone()),
        _ => None,
    })
    .await?;
    assert_eq!(record.reported.len(), 3);

    // A real agent holding a certificate of another CA (and trusting ours) is told why it is refused, and says
    // so: the TLS alert and the server's reason, not only "connection lost".
    let mut settings = agent_settings(&tls::issue_bundle(other.path(), "stranger-2", Role::Agent, 30)?, addr)?;
    settings.ca = tls::load_certs(&ca)?;
    let (tx, mut agent_events) = tokio::sync::mpsc::unbounded_channel();
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let stranger_agent = Agent::new(settings, ModelState::in_memory(), Box::new(NoiseLearner::new(10, 9, 0.01)));
    let running = tokio::spawn(stranger_agent.with_events(tx).run(stop_rx));
    let told = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(e) = agent_events.recv().await {
            match e {
                AgentEvent::Refused { reason } | AgentEvent::Disconnected { reason } => return reason,
                _ => {}
            }
        }
        String::new()
    })
    .await?;
    let _ = stop.send(true);
    let _ = running.await;
    assert!(told.contains("TLS handshake") && told.contains("invalid peer certificate"), "the agent was told: {told}");
    fed.stop().await?;
    Ok(())
}
