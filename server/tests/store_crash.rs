//! Crash safety: a writer process committing rounds in a loop is SIGKILLed at random instants; after each kill the
//! store reopens with its newest committed model readable and intact, and every round record has its model.
//!
//! The test binary re-executes itself with `FEDGE_STORE_CRASH_WRITER` set to run the writer.

use fedge_server::coordinator::{AggregationMode, Outcome, RoundMetrics, RoundPlan, RoundRecord, TrainHyper};
use fedge_server::store::Store;
use fedge_shared::model::{Digest, weights_to_bytes};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const WRITER: &str = "FEDGE_STORE_CRASH_WRITER";
const PARAMS: usize = 4_096;
const TEST_NAME: &str = "a_store_killed_at_random_instants_keeps_its_newest_committed_model_readable";

/// The weights committed by `round`: a function of the round, so the reader can check the content.
fn weights_for(round: u64) -> Vec<f32> {
    (0..PARAMS).map(|i| ((round as usize * 31 + i) % 1_000) as f32 * 1e-3).collect()
}

fn record(round: u64) -> RoundRecord {
    RoundRecord {
        round,
        plan: RoundPlan {
            round,
            model_version: 0,
            hyper: TrainHyper::default(),
            deadline_ms: 1,
            aggregation: AggregationMode::Plain,
        },
        strategy: "fedavg".into(),
        selected: (0..50).map(|i| format!("agent-{i}")).collect(),
        reported: vec![],
        dropped: vec![],
        outcome: Outcome::Completed,
        metrics: RoundMetrics::default(),
        started_ms: 0,
        ended_ms: 0,
        new_version: None,
    }
}

/// Commits rounds until killed (or, as a safety net, for at most 30 seconds).
fn writer(dir: &str) {
    let store = Store::open(dir).expect("writer opens the store");
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        let round = store.next_round().expect("next round");
        store.reserve_round(round).expect("reserve");
        let version =
            store.commit_round(&record(round), &weights_for(round), &round.to_le_bytes(), round).expect("commit");
        // What the coordinator would now hear as `Committed`: it must survive the kill.
        println!("COMMITTED {version}");
    }
}

fn check(dir: &std::path::Path) -> u64 {
    let store = Store::open(dir).expect("the store reopens after a kill");
    let latest = store.latest().unwrap().expect("a model exists");
    let w = store.weights(latest.version).expect("the newest model is readable");
    assert_eq!(Digest::of(&weights_to_bytes(&w)), latest.weights_digest);
    if let Some(round) = latest.round {
        assert_eq!(w, weights_for(round), "the newest weights are the ones its round committed");
        assert_eq!(store.strategy_state().unwrap(), round.to_le_bytes(), "the strategy state belongs to it");
    }
    let versions = store.versions().unwrap();
    assert_eq!(versions.len() as u64, latest.version + 1, "versions are contiguous from 0");
    for rec in store.rounds().unwrap() {
        let v = rec.new_version.expect("every committed round names its model");
        let meta = store.model(v).expect("every round record has its model");
        assert_eq!(meta.round, Some(rec.round));
        store.weights(v).expect("and its weights");
    }
    assert!(store.next_round().unwrap() > latest.round.unwrap_or(0));
    latest.version
}

#[test]
fn a_store_killed_at_random_instants_keeps_its_newest_committed_model_readable() {
    if let Ok(dir) = std::env::var(WRITER) {
        writer(&dir);
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path()).unwrap();
        let graph = store.put_graph(b"graph").unwrap();
        store.init_model(graph, &weights_for(0), 0).unwrap();
    }
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let mut last = 0;
    for kill in 0..4 {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", TEST_NAME, "--nocapture", "--test-threads=1"])
            .env(WRITER, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (first_tx, first_rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut reported = None;
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(v) = line.strip_prefix("COMMITTED ").and_then(|v| v.parse::<u64>().ok()) {
                    if reported.is_none() {
                        let _ = first_tx.send(v);
                    }
                    reported = Some(v);
                }
            }
            reported
        });
        first_rx.recv_timeout(Duration::from_secs(20)).expect("the writer commits");
        std::thread::sleep(Duration::from_millis(rng.gen_range(5..150)));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let reported = reader.join().unwrap().unwrap();
        let version = check(dir.path());
        assert!(version >= reported, "kill {kill}: version {reported} was reported committed but {version} is newest");
        assert!(version > last, "kill {kill}: the writer made progress ({version} after {last})");
        eprintln!("kill {kill}: newest committed version {version}");
        last = version;
    }
}
