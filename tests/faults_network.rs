//! Network faults on loopback, injected by a user-space UDP proxy in front of each agent (so it runs everywhere,
//! including kernels without `netem`; `tests/faults_netns.rs` does the same with namespaces and `tc netem` where
//! the kernel has it): 10% loss each way with 100 ms of delay each way (200 ms round trip), a partition of two of
//! five agents that heals, and an agent whose address changes in the middle of a round (the proxy moves its
//! traffic to a new source port, as a NAT rebinding or a new network would: QUIC connection migration).
//!
//! Specification: rounds complete at 10% loss and 200 ms; during the partition rounds complete or abort cleanly
//! and the partitioned agents catch up after it heals; the moved agent keeps taking part. Only 127.0.0.1 is used.

use fedge_agent::client::{Agent, AgentEvent};
use fedge_agent::learner::NoiseLearner;
use fedge_agent::state::ModelState;
use fedge_ctl::demo::{FederationSpec, LocalFederation, agent_settings};
use fedge_server::coordinator::CoordinatorConfig;
use fedge_server::service::ServerEvent;
use fedge_shared::tls::{self, Role};
use fedge_system_tests::{cohort_of, wait_agent};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};

const AGENTS: usize = 5;

/// What the proxy does to one agent's packets.
struct Faults {
    /// Drop probability in parts per thousand, each direction.
    loss_permille: AtomicU32,
    /// Delay each way, in milliseconds.
    delay_ms: AtomicU32,
    /// Drop everything.
    partitioned: AtomicBool,
    /// Seeded xorshift state for the drops.
    rng: Mutex<u64>,
}

impl Faults {
    fn new(seed: u64) -> Arc<Faults> {
        Arc::new(Faults {
            loss_permille: AtomicU32::new(0),
            delay_ms: AtomicU32::new(0),
            partitioned: AtomicBool::new(false),
            rng: Mutex::new(seed | 1),
        })
    }
    fn set(&self, loss_permille: u32, delay_ms: u32) {
        self.loss_permille.store(loss_permille, Ordering::Relaxed);
        self.delay_ms.store(delay_ms, Ordering::Relaxed);
    }
    fn drop_this(&self) -> bool {
        if self.partitioned.load(Ordering::Relaxed) {
            return true;
        }
        let mut s = self.rng.lock().unwrap();
        *s ^= *s << 13;
        *s ^= *s >> 7;
        *s ^= *s << 17;
        (*s % 1000) < self.loss_permille.load(Ordering::Relaxed) as u64
    }
    fn delay(&self) -> Duration {
        Duration::from_millis(self.delay_ms.load(Ordering::Relaxed) as u64)
    }
}

/// A UDP proxy on 127.0.0.1 between one agent and the server. `rebind` moves its server-side socket to a new port.
struct Proxy {
    addr: SocketAddr,
    faults: Arc<Faults>,
    rebind: mpsc::UnboundedSender<()>,
}

/// Forwards the server's packets arriving on `upstream` to the agent, with the faults.
fn pump_down(upstream: Arc<UdpSocket>, front: Arc<UdpSocket>, client: Arc<Mutex<Option<SocketAddr>>>, f: Arc<Faults>) {
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        while let Ok(n) = upstream.recv(&mut buf).await {
            let Some(to) = *client.lock().unwrap() else { continue };
            if f.drop_this() {
                continue;
            }
            let (front, packet, delay) = (front.clone(), buf[..n].to_vec(), f.delay());
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let _ = front.send_to(&packet, to).await;
            });
        }
    });
}

async fn proxy(server: SocketAddr, faults: Arc<Faults>) -> anyhow::Result<Proxy> {
    let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
    let addr = front.local_addr()?;
    let client = Arc::new(Mutex::new(None));
    let (rebind, mut rebinds) = mpsc::unbounded_channel::<()>();
    let up = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
    up.connect(server).await?;
    pump_down(up.clone(), front.clone(), client.clone(), faults.clone());
    let f = faults.clone();
    tokio::spawn(async move {
        let mut up = up;
        let mut buf = vec![0u8; 65536];
        loop {
            tokio::select! {
                r = front.recv_from(&mut buf) => {
                    let Ok((n, from)) = r else { return };
                    *client.lock().unwrap() = Some(from);
                    if f.drop_this() {
                        continue;
                    }
                    let (up, packet, delay) = (up.clone(), buf[..n].to_vec(), f.delay());
                    tokio::spawn(async move {
                        tokio::time::sleep(delay).await;
                        let _ = up.send(&packet).await;
                    });
                }
                Some(()) = rebinds.recv() => {
                    // A new source address for this agent, from the server's point of view.
                    let Ok(new) = UdpSocket::bind("127.0.0.1:0").await else { continue };
                    if new.connect(server).await.is_err() {
                        continue;
                    }
                    up = Arc::new(new);
                    pump_down(up.clone(), front.clone(), client.clone(), f.clone());
                }
            }
        }
    });
    Ok(Proxy { addr, faults, rebind })
}

fn coordinator() -> CoordinatorConfig {
    CoordinatorConfig { max_agents: AGENTS, seed: 4, round_timeout_ms: 4_000, retry_backoff_ms: 200, ..cohort_of(3) }
}

/// Newest version each agent holds, fed by their events.
struct Newest {
    events: mpsc::UnboundedReceiver<(usize, AgentEvent)>,
    newest: [u64; AGENTS],
    reconnects: [u32; AGENTS],
}

impl Newest {
    async fn until(
        &mut self,
        limit: Duration,
        what: &str,
        done: impl Fn(&[u64; AGENTS]) -> bool,
    ) -> anyhow::Result<()> {
        let end = Instant::now() + limit;
        while !done(&self.newest) {
            let left = end.saturating_duration_since(Instant::now());
            let (newest, reconnects) = (&mut self.newest, &mut self.reconnects);
            let r = wait_agent(&mut self.events, left, |i, e| {
                match e {
                    AgentEvent::ModelReceived { version } => newest[i] = newest[i].max(*version),
                    AgentEvent::Connected { .. } => reconnects[i] += 1,
                    _ => {}
                }
                Some(())
            })
            .await;
            if r.is_err() {
                anyhow::bail!("timed out waiting for {what}; newest versions {:?}", self.newest);
            }
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rounds_survive_loss_and_delay_a_healing_partition_and_an_agent_changing_address() -> anyhow::Result<()> {
    let spec = FederationSpec {
        onnx: fedge_shared::train::builder::mlp(&[32, 16, 4], 2),
        coordinator: coordinator(),
        rounds: None,
        evaluator: None,
    };
    let fed = LocalFederation::start(spec, vec![]).await?;
    let server = fed.server.local_addr;
    let mut server_events = fed.server.events();
    let (shutdown, shutdown_rx) = watch::channel(false);
    let (etx, events) = mpsc::unbounded_channel();
    let mut proxies = vec![];
    let mut agents = vec![];
    for i in 0..AGENTS {
        let faults = Faults::new(77 + i as u64);
        // 10% loss each way, 100 ms each way, from the first packet: the handshakes go through it too.
        faults.set(100, 100);
        let p = proxy(server, faults).await?;
        let bundle = tls::issue_bundle(&fed.pki(), &format!("lossy-{i}"), Role::Agent, 30)?;
        let mut settings = agent_settings(&bundle, p.addr)?;
        settings.backoff_initial = Duration::from_millis(100);
        settings.backoff_max = Duration::from_millis(1000);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let etx = etx.clone();
        tokio::spawn(async move {
            while let Some(e) = rx.recv().await {
                let _ = etx.send((i, e));
            }
        });
        let agent =
            Agent::new(settings, ModelState::in_memory(), Box::new(NoiseLearner::new(30 + i as u64, i as u64, 0.01)))
                .with_events(tx);
        agents.push(tokio::spawn(agent.run(shutdown_rx.clone())));
        proxies.push(p);
    }
    let mut seen = Newest { events, newest: [0; AGENTS], reconnects: [0; AGENTS] };
    let aborted = Arc::new(AtomicU32::new(0));
    let completed = Arc::new(AtomicU32::new(0));
    {
        let (aborted, completed) = (aborted.clone(), completed.clone());
        tokio::spawn(async move {
            loop {
                match server_events.recv().await {
                    Ok(ServerEvent::RoundAborted(_)) => aborted.fetch_add(1, Ordering::Relaxed),
                    Ok(ServerEvent::RoundCompleted(_)) => completed.fetch_add(1, Ordering::Relaxed),
                    Ok(_) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(_) => return,
                };
            }
        });
    }

    // Phase 1: three rounds reach every agent at 10% loss and 200 ms round trip.
    let t = Instant::now();
    seen.until(Duration::from_secs(90), "3 versions at 10% loss", |n| n.iter().all(|v| *v >= 3)).await?;
    eprintln!(
        "phase 1: 3 rounds at 10% loss + 200 ms RTT reached all {AGENTS} agents in {:.1}s",
        t.elapsed().as_secs_f64()
    );

    // Phase 2: agents 3 and 4 are cut off; the other three go on; after it heals, 3 and 4 catch up.
    let before = seen.newest[0];
    for p in &proxies[3..] {
        p.faults.partitioned.store(true, Ordering::Relaxed);
    }
    let t = Instant::now();
    seen.until(Duration::from_secs(90), "2 rounds during the partition", |n| n[0] >= before + 2).await?;
    eprintln!("phase 2: 2 rounds with agents 3 and 4 partitioned in {:.1}s", t.elapsed().as_secs_f64());
    for p in &proxies[3..] {
        p.faults.partitioned.store(false, Ordering::Relaxed);
    }
    let target = seen.newest[0] + 1;
    let t = Instant::now();
    seen.until(Duration::from_secs(90), "the healed agents to catch up", |n| n[3] >= target && n[4] >= target).await?;
    eprintln!("phase 2: healed agents caught up to version {target} in {:.1}s", t.elapsed().as_secs_f64());

    // Phase 3: agent 0's address changes just after it receives a new model (its round has begun).
    let v0 = seen.newest[0];
    seen.until(Duration::from_secs(60), "a new round", |n| n[0] > v0).await?;
    let connects_before = seen.reconnects[0];
    tokio::time::sleep(Duration::from_millis(50)).await;
    proxies[0].rebind.send(())?;
    let moved_at = seen.newest[0];
    let t = Instant::now();
    seen.until(Duration::from_secs(90), "the moved agent to take part again", |n| n[0] >= moved_at + 2).await?;
    let reconnects = seen.reconnects[0] - connects_before;
    eprintln!(
        "phase 3: agent 0 moved to a new source port; 2 more versions in {:.1}s; reconnects {reconnects} (0: QUIC migrated)",
        t.elapsed().as_secs_f64()
    );
    eprintln!(
        "rounds: {} completed, {} aborted cleanly",
        completed.load(Ordering::Relaxed),
        aborted.load(Ordering::Relaxed)
    );
    assert_eq!(reconnects, 0, "the connection migrates to the new address instead of being re-established");

    let _ = shutdown.send(true);
    for a in agents {
        let _ = tokio::time::timeout(Duration::from_secs(5), a).await;
    }
    fed.stop().await?;
    Ok(())
}
