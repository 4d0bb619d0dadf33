//! The real coordinator and a hundred real agent sessions ([`fedge_agent::session::Session`]) exchanging their
//! messages over a simulated network, in memory and deterministically from a seed, in the manner of quinn-proto's
//! test harness: messages are delayed at random (the control stream keeps its order, blobs overtake it as QUIC's
//! separate streams do), some are delivered twice, connections drop and come back, and agents crash and restart
//! with their state directory but a fresh session.
//!
//! Over many seeds, plain and secure, it checks:
//! - every committed model is the global model plus the example-weighted mean of the updates of exactly the agents
//!   the round record lists as reporting, as those agents sent them;
//! - no agent ever reveals both secrets of one neighbour (the self-mask seed share and the mask key share);
//! - in a secure run no agent ever uploads a plain delta;
//! - rounds end: each seed's rounds either commit or abort with a reason, none hangs.
//!
//! Real keys, signatures, certificates (one federation CA, a hundred agent certificates), Shamir shares and masks:
//! only the sockets and the clock are simulated. The shell's side of the server (relaying keys with certificates,
//! pushing weights before a plan, telling agents a round ended) is done here as `fedge-server`'s shell does it.

use fedge_agent::learner::LearnOutcome;
use fedge_agent::session::{Env, Holdings, Input, Output, Session, SessionConfig};
use fedge_server::clock::Alarm;
use fedge_server::coordinator::{
    Action, AgentId, AggregationMode, Coordinator, CoordinatorConfig, Event, ResumeState, RoundRecord, SecAggConfig,
    TrainHyper,
};
use fedge_server::service::wire_plan;
use fedge_server::strategy::StrategyConfig;
use fedge_shared::model::Digest;
use fedge_shared::protocol::{AgentMessage, RoundPlan, ServerMessage, TrainPlan};
use fedge_shared::secagg::{EcdsaP256Signer, RoundFloor, quant};
use fedge_shared::tls::{self, Identity, Role, files};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use rustls::pki_types::{CertificateDer, UnixTime};
use std::collections::{BTreeMap, BTreeSet, HashMap};

const AGENTS: usize = 100;
const DIM: usize = 24;

/// The federation every seed shares: a CA and one certificate per agent (made once; issuing is the slow part).
struct Pki {
    ca: Vec<CertificateDer<'static>>,
    /// Agent `i`'s certificate (DER) and PKCS#8 key.
    agents: Vec<(Vec<u8>, Vec<u8>)>,
    _dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let pki = dir.path().join("pki");
        tls::init_federation(&pki, &["localhost".into()], 30).expect("a federation CA");
        let agents = (0..AGENTS)
            .map(|i| {
                let bundle = tls::issue_bundle(&pki, &name(i), Role::Agent, 30).expect("an agent certificate");
                let id = Identity::load_bundle(&bundle).expect("the agent's bundle");
                (id.chain[0].as_ref().to_vec(), id.key_pkcs8().to_vec())
            })
            .collect();
        let ca = tls::load_certs(&pki.join(files::CA_CERT)).expect("the CA certificate");
        Pki { ca, agents, _dir: dir }
    }
}

fn name(i: usize) -> AgentId {
    format!("agent-{i:03}")
}

fn examples_of(i: usize) -> u64 {
    5 + (i as u64 * 37) % 60
}

/// What agent `i` learns in `round`: a fixed function of both, so that every upload can be checked.
fn delta_of(i: usize, round: u64) -> Vec<f32> {
    (0..DIM).map(|k| (((i * 13 + k * 7 + round as usize * 5) % 17) as f32 - 8.0) * 0.01).collect()
}

/// The faults of one seed.
#[derive(Debug, Clone, Copy)]
struct Faults {
    /// Largest one-way delay of a message, in ms.
    max_delay: u64,
    /// Chance that a message is delivered twice.
    duplicate: f64,
    /// Chance, per agent and round, that its connection drops (the session lives on) at a random time.
    disconnect: f64,
    /// Chance, per agent and round, that it crashes (the session is lost, the state directory kept).
    crash: f64,
    /// Largest training time, in ms.
    max_train: u64,
}

impl Faults {
    fn draw(rng: &mut ChaCha20Rng) -> Faults {
        Faults {
            max_delay: rng.gen_range(1..150),
            duplicate: rng.gen_range(0.0..0.05),
            disconnect: rng.gen_range(0.0..0.05),
            crash: rng.gen_range(0.0..0.05),
            max_train: rng.gen_range(1..400),
        }
    }
}

/// What travels, and to whom.
enum Packet {
    /// A control message to the server.
    Up(AgentMessage),
    /// A plain update blob (as encoded on the wire) or a masked vector.
    Plain {
        round: u64,
        body: Vec<u8>,
        encoding: fedge_shared::delta_encoding::DeltaEncoding,
        examples: u64,
    },
    Masked {
        round: u64,
        words: Vec<u32>,
    },
    /// A control message to the agent.
    Down(ServerMessage),
    /// The weights of `version` (a blob to the agent).
    Weights {
        version: u64,
    },
    /// The agent's training for `round` ends.
    Trained {
        round: u64,
    },
    /// The agent's connection drops; `crash` also loses its session.
    Drop {
        crash: bool,
    },
    /// The agent (re)connects.
    Connect,
}

/// Agent `i` as it persists on its device.
struct Device {
    /// The connection id (changes on each connect; packets of an older connection are lost with it).
    conn: u64,
    online: bool,
    session: Option<Session>,
    signer_key: Vec<u8>,
    /// The model version held (weights received).
    version: Option<u64>,
    /// The round the state directory says was last trained for.
    last_trained: Option<u64>,
    /// The plan of the round being trained.
    training: Option<RoundPlan>,
    /// Per round: the neighbours whose seed share and whose mask-key share this agent revealed.
    revealed: HashMap<u64, (BTreeSet<u32>, BTreeSet<u32>)>,
}

struct Held<'a>(&'a Device);

impl Holdings for Held<'_> {
    fn check_round(&self, round: u64, _seed: u64) -> Result<(), String> {
        match self.0.last_trained {
            Some(r) if r == round => Err(format!("already trained for round {round}")),
            _ => Ok(()),
        }
    }

    fn check_plan(&self, _: &TrainPlan) -> Result<(), String> {
        Ok(())
    }

    fn holds(&self, plan: &RoundPlan) -> bool {
        self.0.version == Some(plan.model_version)
    }
}

struct Net<'p> {
    pki: &'p Pki,
    secure: bool,
    faults: Faults,
    rng: ChaCha20Rng,
    now: u64,
    seq: u64,
    /// Packets in flight by delivery time: (time, sequence) → (agent, connection id, packet).
    flight: BTreeMap<(u64, u64), (usize, u64, Packet)>,
    /// The last delivery time on each agent's control stream, per direction (up, down): order is kept.
    control_at: Vec<(u64, u64)>,
    devices: Vec<Device>,
    coord: Coordinator,
    alarm: Alarm,
    /// The server's view: the committed weights by version, and the versions each connection was sent.
    versions: Vec<Vec<f32>>,
    sent_version: HashMap<AgentId, u64>,
    /// What each agent uploaded per round, as the server decoded it.
    uploads: HashMap<(AgentId, u64), (Vec<f32>, u64)>,
    commits: Vec<(RoundRecord, Vec<f32>)>,
    aborts: usize,
    plain_uploads: usize,
}

impl<'p> Net<'p> {
    fn new(pki: &'p Pki, seed: u64, secure: bool) -> Net<'p> {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let faults = Faults::draw(&mut rng);
        let global: Vec<f32> = (0..DIM).map(|k| k as f32 * 0.05).collect();
        let config = CoordinatorConfig {
            min_agents: AGENTS / 2,
            min_available: Some(AGENTS * 9 / 10),
            max_agents: AGENTS,
            fraction: 1.0,
            overselect: 1.0,
            seed,
            round_timeout_ms: 5_000,
            retry_backoff_ms: 500,
            max_examples: None,
            hyper: TrainHyper::default(),
            strategy: StrategyConfig::FedAvg,
        };
        let state = ResumeState { model_version: 0, weights: global.clone(), next_round: 1, strategy_state: vec![] };
        let mut coord = Coordinator::new(config, state).expect("a valid configuration");
        if secure {
            // Eight neighbours each: the protocol is the same as with the default twenty-two, at a third of the
            // crypto (a secure round of a hundred agents is half a second of CPU, nearly all of it P-256 and X25519).
            let secagg = SecAggConfig {
                neighbours: Some(8),
                threshold: Some(5),
                phase_timeout_ms: 1_000,
                // Every delta coordinate is within ±0.08: a clip of 0.1 keeps the default quantization bits and
                // word width while making one quantization step small enough for the commit check to be tight.
                clip: Some(0.1),
                ..SecAggConfig::default()
            };
            coord = coord.with_secagg(secagg).expect("valid secure-aggregation settings");
        }
        let devices = pki
            .agents
            .iter()
            .map(|(_, key)| Device {
                conn: 0,
                online: false,
                session: None,
                signer_key: key.clone(),
                version: None,
                last_trained: None,
                training: None,
                revealed: HashMap::new(),
            })
            .collect();
        let mut net = Net {
            pki,
            secure,
            faults,
            rng,
            now: 0,
            seq: 0,
            flight: BTreeMap::new(),
            control_at: vec![(0, 0); AGENTS],
            devices,
            coord,
            alarm: Alarm::default(),
            versions: vec![global],
            sent_version: HashMap::new(),
            uploads: HashMap::new(),
            commits: vec![],
            aborts: 0,
            plain_uploads: 0,
        };
        for i in 0..AGENTS {
            net.schedule(i, 0, Packet::Connect);
        }
        net
    }

    fn session_config(&self, i: usize) -> SessionConfig {
        SessionConfig {
            require_secure_aggregation: self.secure,
            floor: RoundFloor::default(),
            signer: EcdsaP256Signer::from_pkcs8(&self.devices[i].signer_key).expect("the agent's key"),
            verifier: fedge_agent::peer_check::peer_verifier(&self.pki.ca).expect("a peer verifier"),
            ca: self.pki.ca.clone(),
        }
    }

    fn put(&mut self, at: u64, i: usize, conn: u64, p: Packet) {
        self.seq += 1;
        self.flight.insert((at, self.seq), (i, conn, p));
    }

    fn schedule(&mut self, i: usize, after: u64, p: Packet) {
        let conn = self.devices[i].conn;
        self.put(self.now + after, i, conn, p);
    }

    /// Sends `p` over agent `i`'s connection: delayed, in order on the control stream, sometimes twice.
    fn send(&mut self, i: usize, p: Packet) {
        let conn = self.devices[i].conn;
        let delay = self.rng.gen_range(0..=self.faults.max_delay);
        let mut at = self.now + delay;
        match &p {
            Packet::Up(_) => {
                at = at.max(self.control_at[i].0);
                self.control_at[i].0 = at;
            }
            Packet::Down(_) => {
                at = at.max(self.control_at[i].1);
                self.control_at[i].1 = at;
            }
            _ => {}
        }
        if self.rng.gen_bool(self.faults.duplicate) {
            let copy = match &p {
                Packet::Up(m) => Some(Packet::Up(m.clone())),
                Packet::Down(m) => Some(Packet::Down(m.clone())),
                _ => None,
            };
            if let Some(copy) = copy {
                self.put(at, i, conn, copy);
            }
        }
        self.put(at, i, conn, p);
    }

    fn index_of(agent: &str) -> usize {
        agent.strip_prefix("agent-").and_then(|n| n.parse().ok()).expect("a simulated agent's name")
    }

    fn feed(&mut self, e: Event<'_>) {
        for action in self.coord.handle(self.now, e) {
            self.act(action);
        }
    }

    /// The server shell's part: carry out one coordinator action.
    fn act(&mut self, action: Action) {
        match action {
            Action::SendPlan { agent, plan, .. } => {
                let i = Self::index_of(&agent);
                self.push_model(i);
                let version = plan.model_version;
                let digest = Digest::of(&version.to_le_bytes());
                let wire = wire_plan(&plan, Digest::of(b"graph"), digest, &agent);
                self.send(i, Packet::Down(ServerMessage::Plan(Box::new(wire))));
            }
            Action::SecAggKeys { agent, round, keys, owners } => {
                let certificates = owners.iter().map(|o| self.pki.agents[Self::index_of(o)].0.clone()).collect();
                let m = ServerMessage::SecAggKeys { round, keys, certificates, revocations: vec![] };
                self.send(Self::index_of(&agent), Packet::Down(m));
            }
            Action::SecAggShares { agent, round, shares } => {
                self.send(Self::index_of(&agent), Packet::Down(ServerMessage::SecAggShares { round, shares }))
            }
            Action::SecAggMaskWith { agent, mask_with } => {
                self.send(Self::index_of(&agent), Packet::Down(ServerMessage::SecAggMaskWith(mask_with)))
            }
            Action::SecAggSurvivors { to, set } => {
                for a in to {
                    self.send(Self::index_of(&a), Packet::Down(ServerMessage::SecAggSurvivors(set.clone())));
                }
            }
            Action::SecAggUnmask { agent, request } => {
                self.send(Self::index_of(&agent), Packet::Down(ServerMessage::SecAggUnmask(request)))
            }
            Action::Unmask { round, job } => {
                let outcome = job.run();
                self.feed(Event::Unmasked { round, outcome });
            }
            Action::Reject { agent, reason } => {
                let m = ServerMessage::Refused { reason: reason.to_string() };
                self.send(Self::index_of(&agent), Packet::Down(m));
            }
            Action::CancelTraining { agent, round } => {
                let m = ServerMessage::RoundEnd { round, completed: false, reason: None, new_version: None };
                self.send(Self::index_of(&agent), Packet::Down(m));
            }
            Action::Commit { record, new_weights, .. } => {
                let round = record.round;
                self.versions.push(new_weights.clone());
                let version = self.versions.len() as u64 - 1;
                let reported: Vec<AgentId> = record.reported.iter().map(|r| r.agent.clone()).collect();
                self.commits.push((*record, new_weights));
                self.feed(Event::Committed { round, version });
                for a in reported {
                    let m =
                        ServerMessage::RoundEnd { round, completed: true, reason: None, new_version: Some(version) };
                    self.send(Self::index_of(&a), Packet::Down(m));
                }
            }
            Action::Announce { .. } => {
                for i in 0..AGENTS {
                    if self.devices[i].online {
                        self.push_model(i);
                    }
                }
            }
            Action::RoundAborted { round, record, reason } => {
                self.aborts += 1;
                for a in &record.selected {
                    let m = ServerMessage::RoundEnd {
                        round,
                        completed: false,
                        reason: Some(reason.to_string()),
                        new_version: None,
                    };
                    self.send(Self::index_of(a), Packet::Down(m));
                }
            }
            Action::WakeAt(t) => self.alarm.set(t),
            // This server is no aggregator: it is never asked to forward.
            Action::Forward { .. } => panic!("a server that is no aggregator forwarded a round"),
            Action::RoundStarted { .. } | Action::Log { .. } => {}
        }
    }

    /// Sends agent `i` the newest weights unless this connection was sent them.
    fn push_model(&mut self, i: usize) {
        let version = self.versions.len() as u64 - 1;
        if self.sent_version.get(&name(i)) != Some(&version) {
            self.sent_version.insert(name(i), version);
            self.send(i, Packet::Weights { version });
        }
    }

    /// Agent `i` takes `input`; its outputs are carried out as the agent's shell does.
    fn agent_input(&mut self, i: usize, input: Input) {
        let Some(mut session) = self.devices[i].session.take() else { return };
        let outputs = {
            let held = Held(&self.devices[i]);
            session.handle(input, &mut Env { now: UnixTime::now(), rng: &mut self.rng, held: &held })
        };
        self.devices[i].session = Some(session);
        for o in outputs {
            self.agent_output(i, o);
        }
    }

    fn agent_output(&mut self, i: usize, output: Output) {
        match output {
            Output::Send(m) => {
                if let AgentMessage::SecAggUnmask(r) = &m {
                    let (seeds, keys) = self.devices[i].revealed.entry(r.round).or_default();
                    seeds.extend(r.seed_shares.iter().map(|s| s.owner));
                    keys.extend(r.key_shares.iter().map(|s| s.owner));
                    let both: Vec<_> = seeds.intersection(keys).collect();
                    assert!(both.is_empty(), "{} revealed both secrets of {both:?} in round {}", name(i), r.round);
                }
                self.send(i, Packet::Up(m));
            }
            Output::Report(_) | Output::DeclareExamples(_) => {}
            Output::Train(plan) => {
                let d = &mut self.devices[i];
                d.last_trained = Some(plan.round);
                let round = plan.round;
                d.training = Some(*plan);
                let took = self.rng.gen_range(1..=self.faults.max_train);
                self.schedule(i, took, Packet::Trained { round });
            }
            Output::UploadPlain { round, encoding, outcome } => {
                self.plain_uploads += 1;
                let rng = &mut self.rng;
                let body = encoding.encode(&outcome.delta, &mut || rng.r#gen::<f32>());
                self.send(i, Packet::Plain { round, body, encoding, examples: outcome.examples });
            }
            Output::UploadMasked { round, stream, .. } => {
                // The bytes the agent's shell writes, read back as the server's blob reader reads them.
                let bytes: Vec<u8> = stream.into_wire_chunks().flatten().collect();
                let words: Vec<u32> =
                    bytes.chunks_exact(4).map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]])).collect();
                self.send(i, Packet::Masked { round, words });
            }
        }
    }

    fn deliver(&mut self, i: usize, p: Packet) {
        match p {
            Packet::Connect if self.devices[i].online => {}
            Packet::Drop { .. } if !self.devices[i].online => {}
            Packet::Connect => {
                if self.devices[i].session.is_none() {
                    self.devices[i].session = Some(Session::new(self.session_config(i)));
                }
                self.devices[i].online = true;
                let examples = examples_of(i);
                if let Some(s) = self.devices[i].session.as_mut() {
                    s.connected(examples);
                }
                self.sent_version.remove(&name(i));
                self.control_at[i] = (self.now, self.now);
                let version = self.devices[i].version;
                self.feed(Event::AgentConnected { agent: name(i) });
                self.feed(Event::CheckIn { agent: name(i), model_version: version, examples });
            }
            Packet::Drop { crash } => {
                let d = &mut self.devices[i];
                d.online = false;
                d.conn += 1;
                d.training = None;
                if crash {
                    d.session = None;
                }
                self.feed(Event::AgentDisconnected { agent: name(i) });
                let back = self.rng.gen_range(50..2_000);
                self.schedule(i, back, Packet::Connect);
            }
            Packet::Down(ServerMessage::Bye { .. }) => {}
            Packet::Down(m) => self.agent_input(i, Input::Server(m)),
            Packet::Weights { version } => {
                self.devices[i].version = Some(version);
                self.agent_input(i, Input::ModelChanged);
            }
            Packet::Trained { round } => {
                let Some(plan) = self.devices[i].training.take().filter(|p| p.round == round) else { return };
                let outcome = LearnOutcome {
                    delta: delta_of(i, plan.round),
                    examples: examples_of(i),
                    device_examples: 0,
                    train_loss: 0.25,
                    holdout_accuracy: None,
                    eval: None,
                };
                self.agent_input(i, Input::Learned { round, outcome: Ok(outcome) });
            }
            Packet::Up(m) => self.server_input(i, m),
            Packet::Plain { round, body, encoding, examples } => {
                let delta = encoding.decode(&body, DIM).expect("an agent's encoding decodes");
                self.uploads.insert((name(i), round), (delta.clone(), examples));
                self.feed(Event::Update { agent: name(i), round, examples, train_loss: 0.25, delta: &delta });
            }
            Packet::Masked { round, words } => {
                self.uploads.insert((name(i), round), (delta_of(i, round), examples_of(i)));
                self.feed(Event::MaskedInput { agent: name(i), round, masked: &words });
            }
        }
    }

    /// The server's connection task: an agent's control message to the coordinator.
    fn server_input(&mut self, i: usize, m: AgentMessage) {
        let agent = name(i);
        match m {
            AgentMessage::CheckIn(c) => {
                self.feed(Event::CheckIn { agent, model_version: c.model_version, examples: c.examples })
            }
            AgentMessage::Abandon { round, reason } => self.feed(Event::UpdateFailed { agent, round, reason }),
            AgentMessage::SecAggAdvertise(keys) => self.feed(Event::SecAggAdvertise { agent, keys }),
            AgentMessage::SecAggShares { round, shares } => self.feed(Event::SecAggShares { agent, round, shares }),
            AgentMessage::SecAggReceipt(receipt) => self.feed(Event::SecAggReceipt { agent, receipt }),
            AgentMessage::SecAggSurvivorSignature(signature) => {
                self.feed(Event::SecAggSurvivorSignature { agent, signature })
            }
            AgentMessage::SecAggUnmask(response) => self.feed(Event::SecAggUnmask { agent, response }),
            AgentMessage::Ready { round, model_version, examples } => {
                self.feed(Event::Ready { agent, round, model_version, examples })
            }
        }
    }

    /// Runs until `rounds` rounds ended (committed or aborted), with each agent's faults drawn per round.
    fn run(&mut self, rounds: usize) {
        // Let the agents connect before the first round.
        self.step_until(100);
        for _ in 0..rounds {
            let ended = self.commits.len() + self.aborts;
            for i in 0..AGENTS {
                let roll = self.rng.r#gen::<f64>();
                let at = self.rng.gen_range(0..800);
                if roll < self.faults.crash {
                    self.schedule(i, at, Packet::Drop { crash: true });
                } else if roll < self.faults.crash + self.faults.disconnect {
                    self.schedule(i, at, Packet::Drop { crash: false });
                }
            }
            self.feed(Event::StartRounds { count: Some(1) });
            let limit = self.now + 120_000;
            while self.commits.len() + self.aborts == ended {
                assert!(self.now < limit, "the round did not end within two simulated minutes");
                self.step();
            }
        }
    }

    /// Delivers the next packet or rings the alarm, whichever comes first.
    fn step(&mut self) {
        let next_packet = self.flight.keys().next().map(|k| k.0);
        let alarm = self.alarm.pending();
        match (next_packet, alarm) {
            (Some(p), Some(a)) if a < p => self.tick(a),
            (None, Some(a)) => self.tick(a),
            (Some(_), _) => {
                let Some((&key, _)) = self.flight.iter().next() else { return };
                let Some((i, conn, p)) = self.flight.remove(&key) else { return };
                self.now = self.now.max(key.0);
                // Packets of a connection that dropped are lost with it; the agent's own timers are not.
                let local = matches!(p, Packet::Connect | Packet::Drop { .. });
                if local || (self.devices[i].conn == conn && self.devices[i].online) {
                    self.deliver(i, p);
                }
            }
            (None, None) => panic!("nothing in flight and no deadline: the federation is stuck"),
        }
    }

    fn tick(&mut self, at: u64) {
        self.now = self.now.max(at);
        if self.alarm.ring(self.now) {
            self.feed(Event::Tick);
        }
    }

    fn step_until(&mut self, t: u64) {
        while self.flight.keys().next().is_some_and(|k| k.0 <= t) {
            self.step();
        }
        self.now = self.now.max(t);
    }

    /// Every committed model is the previous one plus the example-weighted mean of the reporters' uploads.
    fn check_commits(&self, seed: u64) {
        for (n, (record, weights)) in self.commits.iter().enumerate() {
            let before = &self.versions[n];
            let mut sum = [0f64; DIM];
            let mut total = 0f64;
            for r in &record.reported {
                let (delta, examples) = self
                    .uploads
                    .get(&(r.agent.clone(), record.round))
                    .unwrap_or_else(|| panic!("seed {seed}: {} reported without an upload", r.agent));
                if !self.secure {
                    // (A secure round's example counts are under the masks: its record keeps none per agent.)
                    assert_eq!(r.examples, *examples, "seed {seed}: {}'s weight", r.agent);
                }
                for (s, d) in sum.iter_mut().zip(delta) {
                    *s += *examples as f64 * f64::from(*d);
                }
                total += *examples as f64;
            }
            assert!(total > 0.0, "seed {seed}: round {} committed with nobody reporting", record.round);
            let tol = match &record.plan.aggregation {
                // A secure round's deltas travel quantized: under one quantization step each in the weighted sum,
                // about one in the mean; the tests allow two.
                AggregationMode::Secure(plan) => {
                    let step = quant::quantum(&plan.params) as f32;
                    assert!(step < 1e-4, "seed {seed}: a quantization step of {step} would make this check loose");
                    2.0 * step + 1e-4
                }
                AggregationMode::Plain | AggregationMode::Held | AggregationMode::HeldGroup(..) => 1e-4,
            };
            for k in 0..DIM {
                let want = before[k] + (sum[k] / total) as f32;
                let got = weights[k];
                assert!(
                    (got - want).abs() < tol,
                    "seed {seed}, round {}, coordinate {k}: committed {got}, the reporters' mean gives {want}",
                    record.round
                );
            }
        }
    }
}

fn run_seeds(seeds: std::ops::Range<u64>, secure: bool, rounds: usize) {
    let pki = Pki::new();
    let mut committed = 0;
    for seed in seeds.clone() {
        let mut net = Net::new(&pki, seed, secure);
        net.run(rounds);
        net.check_commits(seed);
        if secure {
            assert_eq!(net.plain_uploads, 0, "seed {seed}: a plain delta was uploaded in a secure federation");
        }
        committed += net.commits.len();
    }
    // Faults are mild enough that most rounds commit: the checks above are not vacuous.
    let total = (seeds.end - seeds.start) as usize * rounds;
    assert!(committed * 10 >= total * 7, "only {committed} of {total} rounds committed");
}

#[test]
fn plain_rounds_over_a_lossy_reordering_network_commit_exactly_the_reporters_mean() {
    run_seeds(0..150, false, 2);
}

#[test]
fn secure_rounds_over_a_lossy_reordering_network_commit_exactly_the_reporters_mean_and_reveal_one_secret_per_peer() {
    run_seeds(1_000..1_025, true, 1);
}

#[test]
fn more_secure_rounds_under_other_seeds() {
    run_seeds(2_000..2_025, true, 1);
}
