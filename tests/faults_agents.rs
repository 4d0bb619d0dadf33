//! Whole system with agent processes that die at every phase of a secure round.
//!
//! A real `fedge-server` process (SecAgg+ on, as by default; 9 neighbours and threshold 5) and ten
//! `fedge-agent run` processes training a small MLP with tract. Four agents carry a crash point (`FAILPOINTS`, see
//! `edge-agent/src/crash.rs`) and abort, as if killed, at a different phase of the first round:
//! - `before-advertise`: selected, dies before advertising its keys;
//! - `before-shares`: keys received, dies before sending its encrypted shares;
//! - `before-masked-input`: trained and masked, dies before uploading;
//! - `before-unmask`: masked input uploaded, dies before revealing its shares.
//!
//! Specification: the round completes with the survivors and commits; the first three are recorded as dropped, the
//! third after sharing (its pairwise masks are removed with the survivors' shares), and the fourth's masked input is
//! in the sum (7 survivors). Restarted without crash points, all ten take part in a later round, which commits.

use fedge_server::store::Store;
use fedge_shared::tls;
use fedge_system_tests::{free_udp_port, start_agent, start_server, wait_log, write_agent_config, write_server_config};
use std::path::{Path, PathBuf};
use std::time::Duration;

const AGENTS: usize = 10;
const CRASH_POINTS: [&str; 4] =
    ["agent::before-advertise", "agent::before-shares", "agent::before-masked-input", "agent::before-unmask"];

/// Writes agent `i`'s bundle, data and `agent.toml`; returns the config's path.
fn agent_config(dir: &Path, i: usize, port: u16) -> anyhow::Result<PathBuf> {
    write_agent_config(dir, i, port, "idle_timeout_ms = 5000\nbackoff_initial_ms = 100\nbackoff_max_ms = 500")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_killed_at_every_phase_of_a_secure_round_are_dropped_and_the_round_and_the_next_complete()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let result = kill_at_every_phase(dir.path()).await;
    if result.is_err() {
        for log in ["server.log", "agents.log"] {
            let text = std::fs::read_to_string(dir.path().join(log)).unwrap_or_default();
            eprintln!("--- {log} ---\n{text}");
        }
    }
    result
}

/// Fails with an error, never a panic, so that the caller prints the server's and the agents' logs.
async fn kill_at_every_phase(dir: &Path) -> anyhow::Result<()> {
    let pki = dir.join("pki");
    tls::init_federation(&pki, &["localhost".into()], 30)?;
    std::fs::write(dir.join("model.onnx"), fedge_shared::train::builder::mlp(&[784, 8, 10], 3))?;
    let port = free_udp_port()?;
    let db = dir.join("db");
    let config = write_server_config(dir, &format!("127.0.0.1:{port}"), &db, AGENTS, 300)?;
    // A round waits for all ten to be available, completes with at least six reports, and a phase waits at most
    // 3 s for a silent member. SecAgg+ with 9 neighbours and threshold 5: after the four deaths every agent still
    // has five neighbours that answer the unmask request.
    let text = std::fs::read_to_string(&config)?
        .replace(&format!("min_agents = {AGENTS}"), &format!("min_agents = 6\nmin_available = {AGENTS}"))
        .replace("round_timeout_ms = 20000", "round_timeout_ms = 10000");
    std::fs::write(&config, format!("{text}\n[secagg]\nthreshold = 5\nphase_timeout_ms = 3000\n"))?;
    let server_log = dir.join("server.log");
    let agents_log = dir.join("agents.log");
    let mut server = start_server(&config, &server_log)?;

    let configs = (0..AGENTS).map(|i| agent_config(dir, i, port)).collect::<anyhow::Result<Vec<_>>>()?;
    let mut agents = vec![];
    for (i, c) in configs.iter().enumerate() {
        agents.push(start_agent(c, &agents_log, CRASH_POINTS.get(i).copied())?);
    }

    // Round 1: the four crash, each at its point, and the round completes with the others.
    wait_log(&server_log, 120, "round 1 to end", |l| {
        l.contains("round committed round=1") || l.contains("round aborted round=1")
    })
    .await?;
    for (i, point) in CRASH_POINTS.iter().enumerate() {
        let status = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                if let Some(s) = agents[i].try_wait()? {
                    return anyhow::Ok(s);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await
        .map_err(|_| anyhow::anyhow!("agent-{i} did not die at {point}"))??;
        anyhow::ensure!(!status.success(), "agent-{i} died at {point}");
    }
    let agent_text = std::fs::read_to_string(&agents_log)?;
    for point in CRASH_POINTS {
        anyhow::ensure!(agent_text.contains(&format!("crash point {point}")), "{point} was reached");
    }

    // Restarted without crash points, all ten take part in a later round.
    for (i, c) in configs.iter().enumerate().take(CRASH_POINTS.len()) {
        agents[i] = start_agent(c, &agents_log, None)?;
    }
    // (A round may start before the server has noticed that the old connections are dead; the restarted agents'
    // new connections then drop them from it. A later round has all ten.)
    wait_log(&server_log, 120, "a round with all ten reports", |l| {
        l.lines().any(|x| x.contains("round complete, committing") && x.contains(&format!("reported={AGENTS}")))
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;

    server.kill()?;
    server.wait()?;
    for a in &mut agents {
        let _ = a.kill();
        let _ = a.wait();
    }
    let store = Store::open(&db)?;
    let rounds = store.rounds()?;
    let first = rounds.first().ok_or_else(|| anyhow::anyhow!("no round recorded"))?;
    anyhow::ensure!(first.round == 1, "the first round recorded is {}", first.round);
    anyhow::ensure!(first.new_version.is_some(), "round 1 committed: {:?}", first.outcome);
    anyhow::ensure!(first.selected.len() == AGENTS, "round 1 selected {:?}", first.selected);
    let dropped: Vec<&str> = first.dropped.iter().map(|d| d.agent.as_str()).collect();
    for victim in ["agent-0", "agent-1", "agent-2"] {
        anyhow::ensure!(dropped.contains(&victim), "{victim} is recorded as dropped: {:?}", first.dropped);
    }
    let m = first.metrics.secagg.clone().ok_or_else(|| anyhow::anyhow!("round 1 is not a secure round"))?;
    anyhow::ensure!(m.survivors == AGENTS - 3, "the agent that died before unmasking is in the sum: {m:?}");
    anyhow::ensure!(m.dropped_after_sharing == 1, "agent-2 shared its keys, then died: {m:?}");
    let later = rounds
        .iter()
        .skip(1)
        .find(|r| r.reported.len() == AGENTS)
        .ok_or_else(|| anyhow::anyhow!("no later round with all ten"))?;
    anyhow::ensure!(later.new_version.is_some(), "round {} with all ten committed", later.round);
    Ok(())
}
