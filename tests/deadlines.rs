//! Whole system: an agent killed in the middle of a round, and never back, holds the round until its deadline and
//! no longer, whatever the idle time-out of the connections.
//!
//! A real `fedge-server` process and four `fedge-agent run` processes training a small MLP with tract; agent-3
//! dies (aborts, as if killed: no goodbye) after training, just before it would upload, in a plain round and in a
//! secure one. The connections' idle time-out is 60 s, so only the round's deadline (4 s) can close the round on
//! time. In the secure round the key phases' deadline (2 s) is pending when the round's later deadline is asked
//! for: the sequence that once left the round waiting for the dead agent's idle time-out.
//!
//! Specification: round 1 commits with the three survivors, agent-3 is recorded as dropped, and the round lasted its
//! deadline ± 1 s.

use fedge_server::coordinator::Outcome;
use fedge_server::store::Store;
use fedge_shared::tls;
use fedge_system_tests::{
    free_udp_port, kill, start_agent, start_server, wait_log, write_agent_config, write_server_config,
};
use std::path::Path;

const ROUND_TIMEOUT_MS: u64 = 4_000;
const PHASE_TIMEOUT_MS: u64 = 2_000;
const AGENTS: usize = 4;
const IDLE: &str = "idle_timeout_ms = 60000";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_round_with_an_agent_killed_before_its_upload_closes_at_its_deadline() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let result = round_with_a_dead_agent(dir.path(), false, "agent::before-upload").await;
    show_logs_on_failure(dir.path(), &result);
    result
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secure_round_with_an_agent_killed_before_its_masked_input_closes_at_its_deadline() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let result = round_with_a_dead_agent(dir.path(), true, "agent::before-masked-input").await;
    show_logs_on_failure(dir.path(), &result);
    result
}

/// Prints the processes' logs if the test failed.
fn show_logs_on_failure(dir: &Path, result: &anyhow::Result<()>) {
    if result.is_err() {
        for log in ["server.log", "agents.log"] {
            let text = std::fs::read_to_string(dir.join(log)).unwrap_or_default();
            eprintln!("--- {log} ---\n{text}");
        }
    }
}

async fn round_with_a_dead_agent(dir: &Path, secure: bool, crash_point: &str) -> anyhow::Result<()> {
    tls::init_federation(&dir.join("pki"), &["localhost".into()], 30)?;
    std::fs::write(dir.join("model.onnx"), fedge_shared::train::builder::mlp(&[784, 8, 10], 3))?;
    let port = free_udp_port()?;
    let db = dir.join("db");
    let config = write_server_config(dir, &format!("127.0.0.1:{port}"), &db, AGENTS, 300)?;
    // All four in each round (SecAgg+: three neighbours each, threshold 2, so one death leaves enough), which
    // completes with the three that report; one round only.
    let text = std::fs::read_to_string(&config)?
        .replace(&format!("min_agents = {AGENTS}"), &format!("min_agents = 2\nmin_available = {AGENTS}"))
        .replace("round_timeout_ms = 20000", &format!("round_timeout_ms = {ROUND_TIMEOUT_MS}"))
        .replace("idle_timeout_ms = 10000", &format!("{IDLE}\nrounds = 1"));
    let secagg = if secure {
        format!("[secagg]\nphase_timeout_ms = {PHASE_TIMEOUT_MS}\n")
    } else {
        "[secagg]\nenabled = false\n".into()
    };
    std::fs::write(&config, format!("{text}\n{secagg}"))?;
    let (server_log, agents_log) = (dir.join("server.log"), dir.join("agents.log"));
    let mut server = start_server(&config, &server_log)?;
    let mut agents = vec![];
    for i in 0..AGENTS {
        // In the plain round the agents must accept plain rounds.
        let extra = if secure { IDLE.to_string() } else { format!("{IDLE}\nrequire_secure_aggregation = false") };
        let agent = write_agent_config(dir, i, port, &extra)?;
        agents.push(start_agent(&agent, &agents_log, (i == AGENTS - 1).then_some(crash_point))?);
    }

    let ended = wait_log(&server_log, 60, "round 1 to end", |l| {
        l.contains("round committed round=1") || l.contains("round aborted round=1")
    })
    .await;
    kill(&mut server);
    for a in &mut agents {
        kill(a);
    }
    ended?;
    assert!(
        std::fs::read_to_string(&agents_log)?.contains(&format!("crash point {crash_point}")),
        "the agent died at its crash point"
    );

    let store = Store::open(&db)?;
    let record = store.round(1)?.ok_or_else(|| anyhow::anyhow!("round 1 is recorded"))?;
    assert_eq!(record.outcome, Outcome::Completed, "{:?}", record.outcome);
    assert_eq!(record.plan.aggregation.is_secure(), secure);
    assert_eq!(record.reported.len(), AGENTS - 1);
    let victim = format!("agent-{}", AGENTS - 1);
    assert!(record.dropped.iter().any(|d| d.agent == victim), "{victim} is dropped: {:?}", record.dropped);
    let lasted = record.ended_ms.saturating_sub(record.started_ms);
    eprintln!("{} round with a dead member lasted {lasted} ms (deadline {ROUND_TIMEOUT_MS} ms)", kind(secure));
    assert!(
        lasted.abs_diff(ROUND_TIMEOUT_MS) <= 1_000,
        "the round lasted {lasted} ms; its deadline is {ROUND_TIMEOUT_MS} ms"
    );
    Ok(())
}

fn kind(secure: bool) -> &'static str {
    if secure { "secure" } else { "plain" }
}
