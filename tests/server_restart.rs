//! Whole system with real processes: the server is killed (SIGKILL) in the middle of a secure round and restarted
//! on the same database, as a supervisor would, while three `fedge-agent run` processes keep running with the
//! default idle time-out (30 s) and back-off.
//!
//! Specification:
//! - the agents notice the restart at once (the old connections are reset: the reset key persists) and are back
//!   within 3 s of the new server listening;
//! - the federation resumes with a stall (last commit before the kill to first commit after it) of at most one
//!   round time plus 5 s;
//! - the run keeps its length: `rounds = 5` commits exactly five rounds in total across both lives;
//! - the id of the round the kill interrupted is never handed out again: no round id appears twice in the
//!   history, and no agent is selected twice for the same round id (each agent's log);
//! - every committed model reads back and matches its digest.

use fedge_server::coordinator::Outcome;
use fedge_server::store::{Store, StoreError};
use fedge_shared::model::{Digest, weights_to_bytes};
use fedge_shared::tls;
use fedge_system_tests::{
    free_udp_port, kill, plain_log, start_agent, start_server, wait_log, write_agent_config, write_server_config,
};
use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

const AGENTS: usize = 3;
const ROUNDS: u64 = 5;
/// The round the kill lands in.
const KILLED_ROUND: u64 = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_mid_round_and_restarted_finishes_its_run_without_reusing_a_round_id() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let result = kill_mid_round(dir.path()).await;
    if result.is_err() {
        for log in ["server.log", "agent-0.log", "agent-1.log", "agent-2.log"] {
            let text = std::fs::read_to_string(dir.path().join(log)).unwrap_or_default();
            eprintln!("--- {log} ---\n{text}");
        }
    }
    result
}

async fn kill_mid_round(dir: &Path) -> anyhow::Result<()> {
    tls::init_federation(&dir.join("pki"), &["localhost".into()], 30)?;
    std::fs::write(dir.join("model.onnx"), fedge_shared::train::builder::mlp(&[784, 8, 10], 3))?;
    let port = free_udp_port()?;
    let db = dir.join("db");
    let config = write_server_config(dir, &format!("127.0.0.1:{port}"), &db, AGENTS, 300)?;
    // Default idle time-outs (30 s) on both sides: noticing the restart must not wait for them. A few epochs make
    // each round last long enough for the kill to land inside one.
    let text = std::fs::read_to_string(&config)?
        .replace("idle_timeout_ms = 10000", &format!("idle_timeout_ms = 30000\nrounds = {ROUNDS}"))
        .replace("round_timeout_ms = 20000", "round_timeout_ms = 10000")
        .replace("epochs = 1", "epochs = 20");
    std::fs::write(&config, format!("{text}\n[secagg]\nphase_timeout_ms = 5000\n"))?;
    let log = dir.join("server.log");
    let mut server = start_server(&config, &log)?;
    let mut agents = vec![];
    for i in 0..AGENTS {
        let agent_config = write_agent_config(dir, i, port, "")?;
        agents.push(start_agent(&agent_config, &dir.join(format!("agent-{i}.log")), None)?);
    }
    let result = run(dir, &config, &log, &mut server).await;
    kill(&mut server);
    for a in &mut agents {
        kill(a);
    }
    let interrupted = result?;
    check_store(&db, interrupted)?;
    for i in 0..AGENTS {
        let text = plain_log(&dir.join(format!("agent-{i}.log")));
        let mut seen = BTreeSet::new();
        for line in text.lines().filter(|l| l.contains("selected for a round")) {
            let round = field(line, "round=").ok_or_else(|| anyhow::anyhow!("no round id in {line:?}"))?;
            assert!(seen.insert(round), "agent-{i} was selected twice for round {round}");
        }
        assert!(!text.contains("already trained"), "agent-{i} was never offered a round id twice");
    }
    Ok(())
}

/// Kills the server once round `KILLED_ROUND`'s plan has reached an agent, restarts it, and waits for the run to
/// finish; returns whether the kill landed before that round committed.
async fn run(dir: &Path, config: &Path, log: &Path, server: &mut std::process::Child) -> anyhow::Result<bool> {
    let planned = format!("selected for a round round={KILLED_ROUND}");
    wait_log(&dir.join("agent-0.log"), 120, "the round to kill in", |l| l.contains(&planned)).await?;
    kill(server);
    let killed_at = Instant::now();
    let db = dir.join("db");
    let interrupted = {
        let store = Store::open(&db)?;
        let before = store.versions()?.len() as u64 - 1;
        let reserved = store.next_round()?;
        eprintln!("killed with {before} rounds committed; next round id {reserved}");
        assert!(reserved > KILLED_ROUND, "round {KILLED_ROUND}'s id was reserved before its plans left");
        store.round(KILLED_ROUND)?.is_none()
    };
    let offset = plain_log(log).len();
    *server = start_server(config, log)?;
    wait_log(log, 30, "the restarted server to listen", |l| l[offset.min(l.len())..].contains("listening")).await?;
    let listening = Instant::now();
    let joined = |l: &str| l[offset.min(l.len())..].matches("agent joined").count();
    wait_log(log, 30, "the agents to reconnect", |l| joined(l) >= AGENTS).await?;
    let back = listening.elapsed();
    eprintln!(
        "restart listening {:.2} s after the kill; all agents back {:.2} s after that (kill landed mid-round: {interrupted})",
        listening.duration_since(killed_at).as_secs_f64(),
        back.as_secs_f64()
    );
    assert!(back < Duration::from_secs(3), "the agents came back {back:?} after the server listened again");
    wait_log(log, 120, "the run to finish", |l| l[offset.min(l.len())..].contains("the requested rounds are done"))
        .await?;
    // Nothing more starts once the run is done.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    Ok(interrupted)
}

/// The value after `key` in a log line (up to the next space), as a number.
fn field(line: &str, key: &str) -> Option<u64> {
    let rest = &line[line.find(key)? + key.len()..];
    rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

fn check_store(db: &Path, interrupted: bool) -> anyhow::Result<()> {
    let keep = fedge_server::config::DEFAULT_KEEP_WEIGHTS;
    let store = Store::open(db)?.keeping_weights(keep);
    let versions = store.versions()?;
    assert_eq!(versions.len() as u64, ROUNDS + 1, "exactly {ROUNDS} rounds committed in total, after version 0");
    let mut ids = BTreeSet::new();
    let mut checked = 0;
    for v in &versions {
        // The newest `keep` versions keep their weights (the default retention); older ones only their metadata.
        match store.weights(v.version) {
            Ok(weights) => {
                assert_eq!(Digest::of(&weights_to_bytes(&weights)), v.weights_digest, "version {} intact", v.version);
                checked += 1;
            }
            Err(StoreError::Pruned { .. }) if v.version + keep <= ROUNDS => {}
            Err(e) => panic!("version {} unreadable: {e}", v.version),
        }
        if let Some(round) = v.round {
            assert!(ids.insert(round), "round {round} produced two versions");
        }
    }
    let committed: Vec<u64> =
        store.rounds()?.into_iter().filter(|r| r.outcome == Outcome::Completed).map(|r| r.round).collect();
    assert_eq!(committed.len() as u64, ROUNDS, "{committed:?}");
    if interrupted {
        assert!(!committed.contains(&KILLED_ROUND), "the interrupted round's id was not used again: {committed:?}");
    }
    // The stall: from the last commit before the kill to the first after it, against a round's time.
    let created: Vec<u64> = versions.iter().map(|v| v.created_ms).collect();
    let gaps: Vec<u64> = created.windows(2).map(|w| w[1].saturating_sub(w[0])).collect();
    let killed_gap = versions
        .iter()
        .position(|v| v.round.is_some_and(|r| r > KILLED_ROUND))
        .and_then(|i| gaps.get(i.saturating_sub(1)).copied())
        .ok_or_else(|| anyhow::anyhow!("no commit after the kill"))?;
    let mut normal: Vec<u64> = gaps.iter().copied().filter(|g| *g != killed_gap).collect();
    normal.sort_unstable();
    let round_ms = normal.get(normal.len() / 2).copied().unwrap_or(0);
    eprintln!(
        "round time {round_ms} ms; stall across the kill {killed_gap} ms; committed rounds {committed:?}; \
         {checked} models with weights checked against their digests"
    );
    assert_eq!(checked, keep, "every version still holding weights is intact");
    assert!(killed_gap <= round_ms + 5_000, "stall {killed_gap} ms against rounds of {round_ms} ms");
    Ok(())
}
