//! Whole system: the server process is killed with SIGKILL at random instants of its rounds, again and again
//! (20 times here; `FEDGE_KILLS=100 scripts/kill-loop.sh` for the long run), each time restarted on the same sled
//! directory; the newest committed model is readable and unchanged, no round is half-applied, and the federation
//! carries on from it.

use fedge_agent::client::Agent;
use fedge_agent::learner::{LearnOutcome, Learner, NoiseLearner};
use fedge_agent::state::ModelState;
use fedge_ctl::demo::agent_settings;
use fedge_server::store::{Store, StoreError};
use fedge_shared::model::{Digest, weights_to_bytes};
use fedge_shared::protocol::TrainPlan;
use fedge_shared::tls::{self, Role};
use fedge_system_tests::{free_udp_port, init_logs, start_server, wait_version, write_server_config};
use std::path::Path;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// A learner whose rounds take a while, so that a kill lands inside one.
struct SlowLearner(NoiseLearner);

impl Learner for SlowLearner {
    fn examples(&self) -> u64 {
        self.0.examples()
    }
    fn set_graph(&mut self, onnx: &[u8]) -> anyhow::Result<()> {
        self.0.set_graph(onnx)
    }
    fn num_params(&self) -> Option<usize> {
        self.0.num_params()
    }
    fn learn(&mut self, global: &[f32], plan: &TrainPlan) -> anyhow::Result<LearnOutcome> {
        std::thread::sleep(Duration::from_millis(100));
        self.0.learn(global, plan)
    }
}

/// Kills in the fast variant; `FEDGE_KILLS` overrides (the kill-loop script asks for 100).
fn kills() -> u64 {
    std::env::var("FEDGE_KILLS").ok().and_then(|v| v.parse().ok()).unwrap_or(20)
}

/// A small seeded generator for the kill instants (xorshift64*), so a failing run can be replayed with
/// `FEDGE_KILL_SEED`.
struct Instants(u64);

impl Instants {
    fn from_env() -> Self {
        let seed = std::env::var("FEDGE_KILL_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1)
        });
        eprintln!("kill instants seed: FEDGE_KILL_SEED={seed}");
        Instants(seed | 1)
    }
    /// Milliseconds in `0..max`.
    fn next_ms(&mut self, max: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % max
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_mid_round_restarts_with_its_committed_model_and_carries_on() -> anyhow::Result<()> {
    init_logs();
    let dir = tempfile::tempdir()?;
    let result = kill_and_restart(dir.path()).await;
    if result.is_err() {
        // Show the server's side of the story.
        let log = std::fs::read_to_string(dir.path().join("server.log")).unwrap_or_default();
        eprintln!("--- server log ---\n{log}");
    }
    result
}

async fn kill_and_restart(dir: &Path) -> anyhow::Result<()> {
    let pki = dir.join("pki");
    tls::init_federation(&pki, &["localhost".into()], 30)?;
    std::fs::write(dir.join("model.onnx"), fedge_shared::train::builder::mlp(&[32, 16, 4], 9))?;
    let port = free_udp_port()?;
    let config = write_server_config(dir, &format!("127.0.0.1:{port}"), &dir.join("db"), 3, 100)?;
    // A small retention window, so that pruning old weights is interrupted by kills too.
    const KEEP: u64 = 4;
    std::fs::write(&config, format!("keep_weights = {KEEP}\n{}", std::fs::read_to_string(&config)?))?;
    let log = dir.join("server.log");
    let addr = format!("127.0.0.1:{port}").parse()?;

    let mut server = start_server(&config, &log)?;
    let (shutdown, shutdown_rx) = watch::channel(false);
    let (etx, mut events) = mpsc::unbounded_channel();
    let mut agents = vec![];
    for i in 0..3u64 {
        let bundle = tls::issue_bundle(&pki, &format!("agent-{i}"), Role::Agent, 30)?;
        let (tx, mut rx) = mpsc::unbounded_channel();
        let etx = etx.clone();
        tokio::spawn(async move {
            while let Some(e) = rx.recv().await {
                let _ = etx.send((i as usize, e));
            }
        });
        let learner = Box::new(SlowLearner(NoiseLearner::new(50 + i, i, 0.01)));
        // Reconnect quickly: the server is back within a fraction of a second after each kill.
        let mut settings = agent_settings(&bundle, addr)?;
        settings.backoff_initial = Duration::from_millis(50);
        settings.backoff_max = Duration::from_millis(400);
        // A killed server sends no close; notice it within a short idle time-out (rounds keep the link busy).
        settings.idle_timeout = Duration::from_millis(2500);
        let agent = Agent::new(settings, ModelState::in_memory(), learner).with_events(tx);
        agents.push(tokio::spawn(agent.run(shutdown_rx.clone())));
    }

    let mut seen = 0;
    let mut verified = std::collections::BTreeMap::new();
    let mut instants = Instants::from_env();
    let total = kills();
    let started = std::time::Instant::now();
    for kill in 0..total {
        // Let the federation commit at least one more version, then kill the server at a random instant of the
        // following rounds (a round here takes a few hundred milliseconds).
        seen = wait_version(&mut events, seen).await?;
        let at = instants.next_ms(600);
        tokio::time::sleep(Duration::from_millis(at)).await;
        server.kill()?;
        server.wait()?;

        // What was committed is intact: the newest version is readable and its weights match their digest.
        let (latest, parent_ok) = {
            let store = Store::open(dir.join("db"))?.keeping_weights(KEEP);
            let meta = store.latest()?.expect("a model survives the kill");
            // Every committed version's metadata is there, versions are contiguous, and every version still
            // inside the retention window (the newest KEEP; older ones may have been pruned, never partly) is
            // readable and matches its digest; every version verified after an earlier kill is unchanged.
            let all = store.versions()?;
            for (i, v) in all.iter().enumerate() {
                assert_eq!(v.version, i as u64, "versions are contiguous from 0");
                match store.weights(v.version) {
                    Ok(weights) => assert_eq!(
                        Digest::of(&weights_to_bytes(&weights)),
                        v.weights_digest,
                        "version {} intact",
                        v.version
                    ),
                    Err(StoreError::Pruned { .. }) if v.version + KEEP <= meta.version => {}
                    Err(e) => panic!("version {} (newest {}) unreadable: {e}", v.version, meta.version),
                }
            }
            for (version, digest) in &verified {
                let m = store.model(*version)?;
                assert_eq!(m.weights_digest, *digest, "version {version} unchanged since an earlier kill");
            }
            verified.extend(all.iter().map(|m| (m.version, m.weights_digest)));
            let parent_ok = meta.parent.is_none_or(|p| store.model(p).is_ok());
            for r in store.rounds()? {
                if let Some(v) = r.new_version {
                    assert!(store.model(v).is_ok(), "round {} names version {v}, which must exist", r.round);
                }
            }
            (meta.version, parent_ok)
        };
        assert!(parent_ok);
        assert!(latest >= seen, "committed version {latest} is older than one announced before the kill ({seen})");
        seen = latest;
        eprintln!("kill {}/{total} at +{at} ms: newest committed version {latest} intact", kill + 1);

        server = start_server(&config, &log)?;
    }
    eprintln!("{total} kills in {:.1}s", started.elapsed().as_secs_f64());
    // After the last restart the federation goes on past what was committed.
    let after = wait_version(&mut events, seen).await?;
    assert!(after > seen);
    let _ = shutdown.send(true);
    for a in agents {
        let _ = tokio::time::timeout(Duration::from_secs(5), a).await;
    }
    server.kill()?;
    server.wait()?;
    Ok(())
}
