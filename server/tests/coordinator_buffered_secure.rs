//! Buffered asynchronous aggregation with secure aggregation, as the coordinator's `buffered_secure` module documents
//! it, one guarantee a test, driven by a deterministic simulation in which every agent runs a real SecAgg+
//! `ClientSession`: agents say they are ready instead of uploading; the first K ready form a group that masks their
//! held deltas scaled by their staleness discounts, and the committed model is the previous one plus the discounted,
//! example-weighted mean of the survivors' deltas; agents ready while a group's phases run wait for the next group; a
//! member lost in the masked phase is recovered; a group left under `min_agents` aborts with nothing unmasked and
//! its members train again; a wrong `Ready` or a plain update is refused; a held delta more than `max_staleness`
//! versions old is dropped at a commit.

use fedge_server::clock::Alarm;
use fedge_server::coordinator::{
    AbortReason, Action, AgentId, AggregationMode, BufferedConfig, Coordinator, CoordinatorConfig, Event, RejectReason,
    ResumeState, RoundPlan, RoundRecord, SecAggConfig, SecurePhase, TrainHyper,
};
use fedge_server::strategy::StrategyConfig;
use fedge_shared::round_counts;
use fedge_shared::secagg::{ClientSession, EcdsaP256Signer, MaskWith, PeerKeyTable};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use std::collections::{BTreeMap, VecDeque};

const DIM: usize = 24;
const TIMEOUT: u64 = 10_000;
const PHASE: u64 = 1_000;

fn config(min_agents: usize, agents: usize) -> CoordinatorConfig {
    CoordinatorConfig {
        min_agents,
        min_available: None,
        max_agents: agents,
        fraction: 1.0,
        overselect: 1.0,
        seed: 11,
        round_timeout_ms: TIMEOUT,
        retry_backoff_ms: 1_000,
        max_examples: None,
        hyper: TrainHyper::default(),
        strategy: StrategyConfig::FedAvg,
    }
}

/// 22 quantization bits, configured, so that the mean is exact to 1e-4.
fn secagg() -> SecAggConfig {
    SecAggConfig { phase_timeout_ms: PHASE, quant_bits: Some(22), ..SecAggConfig::default() }
}

fn name(i: usize) -> AgentId {
    format!("agent-{i}")
}

fn index(agent: &str) -> usize {
    agent.trim_start_matches("agent-").parse().unwrap()
}

fn examples_of(i: usize) -> u64 {
    10 + (i as u64 * 23) % 70
}

/// Agent `i`'s delta when it trained from `version`.
fn delta_of(i: usize, version: u64) -> Vec<f32> {
    (0..DIM).map(|k| ((i * 7 + k * 3 + version as usize * 5) % 11) as f32 * 0.01 - 0.05).collect()
}

/// When a member stops answering in its group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Quit {
    /// Sends its shares, never its masked input.
    Masked,
    /// Its connection drops once its keys are out.
    Disconnect,
}

#[derive(Default)]
struct SimAgent {
    quit: Option<Quit>,
    /// The training plan it was sent last.
    training: Option<RoundPlan>,
    session: Option<ClientSession>,
    /// In its group: the version it trained from and its scale.
    masking: Option<(u64, f64)>,
}

struct Sim {
    coord: Coordinator,
    now: u64,
    alarm: Alarm,
    signers: BTreeMap<AgentId, EcdsaP256Signer>,
    agents: BTreeMap<AgentId, SimAgent>,
    peers: PeerKeyTable,
    queue: VecDeque<Action>,
    rng: ChaCha20Rng,
    commits: Vec<(RoundRecord, Vec<f32>)>,
    aborts: Vec<(AbortReason, RoundRecord)>,
    rejects: Vec<(AgentId, RejectReason)>,
    /// Every group plan sent: (round, agent).
    group_plans: Vec<(u64, AgentId)>,
    /// Every training plan sent: (round, agent).
    training_plans: Vec<(u64, AgentId)>,
    /// Unmask jobs handed to the shell, and unmask requests sent to agents.
    unmasks: usize,
    /// While set, the neighbours to mask with are held back (the group stays in its masked phase).
    hold_masking: bool,
    held_masking: Vec<(AgentId, MaskWith)>,
    /// The global model after each commit, version 0 first.
    models: Vec<Vec<f32>>,
    /// Every `CancelTraining`: (agent, round).
    cancelled: Vec<(AgentId, u64)>,
}

impl Sim {
    fn new(agents: usize, k: usize, min_agents: usize) -> Sim {
        Sim::with(agents, BufferedConfig::new(k), min_agents)
    }

    fn with(agents: usize, buffered: BufferedConfig, min_agents: usize) -> Sim {
        let global: Vec<f32> = (0..DIM).map(|k| k as f32 * 0.1).collect();
        let state = ResumeState { model_version: 0, weights: global.clone(), next_round: 1, strategy_state: vec![] };
        let coord = Coordinator::new(config(min_agents, agents), state)
            .unwrap()
            .with_secagg(secagg())
            .unwrap()
            .with_buffering(buffered)
            .unwrap();
        let mut peers = PeerKeyTable::new();
        let mut signers = BTreeMap::new();
        for i in 0..agents {
            let (signer, _) = EcdsaP256Signer::generate().unwrap();
            peers.insert(name(i), signer.public_key());
            signers.insert(name(i), signer);
        }
        let mut sim = Sim {
            coord,
            now: 0,
            alarm: Alarm::default(),
            signers,
            agents: (0..agents).map(|i| (name(i), SimAgent::default())).collect(),
            peers,
            queue: VecDeque::new(),
            rng: ChaCha20Rng::seed_from_u64(3),
            commits: vec![],
            aborts: vec![],
            rejects: vec![],
            group_plans: vec![],
            training_plans: vec![],
            unmasks: 0,
            hold_masking: false,
            held_masking: vec![],
            models: vec![global],
            cancelled: vec![],
        };
        sim.feed(Event::StartRounds { count: None });
        for i in 0..agents {
            sim.feed(Event::AgentConnected { agent: name(i) });
            sim.feed(Event::CheckIn { agent: name(i), model_version: Some(0), examples: examples_of(i) });
        }
        sim.drain();
        sim
    }

    fn feed(&mut self, e: Event<'_>) {
        let actions = self.coord.handle(self.now, e);
        self.queue.extend(actions);
    }

    /// `agent` has trained from its last training plan and says so.
    fn ready(&mut self, i: usize) {
        let plan = self.agents[&name(i)].training.clone().expect("a training plan");
        self.feed(Event::Ready {
            agent: name(i),
            round: plan.round,
            model_version: plan.model_version,
            examples: examples_of(i),
        });
        self.drain();
    }

    fn quits(&self, agent: &str, at: Quit) -> bool {
        self.agents.get(agent).and_then(|a| a.quit) == Some(at)
    }

    /// Agent `agent` masks its held delta, scaled, once the neighbours to mask with are known.
    fn mask(&mut self, agent: AgentId, mask_with: MaskWith) {
        if self.quits(&agent, Quit::Masked) {
            return;
        }
        let i = index(&agent);
        let a = self.agents.get_mut(&agent).unwrap();
        let (version, scale) = a.masking.expect("in a group");
        let session = a.session.as_mut().unwrap();
        session.on_mask_with(&mask_with).unwrap();
        let limit = session.count_limit();
        session.set_counts(round_counts::coords(None, examples_of(i), 0.5, limit)).unwrap();
        let delta: Vec<f32> = delta_of(i, version).iter().map(|d| d * scale as f32).collect();
        let masked = session.masked_input(&delta, examples_of(i), &mut self.rng).unwrap();
        let masked = fedge_shared::secagg::words::pack_words(session.params(), &masked);
        self.feed(Event::MaskedInput { agent, round: mask_with.round, masked: &masked });
    }

    /// Carries out actions the way honest agents (and the store) would, until none are left.
    fn drain(&mut self) {
        while let Some(action) = self.queue.pop_front() {
            match action {
                Action::SendPlan { agent, plan } => match &plan.aggregation {
                    AggregationMode::Held => {
                        self.training_plans.push((plan.round, agent.clone()));
                        self.agents.get_mut(&agent).unwrap().training = Some(plan);
                    }
                    AggregationMode::HeldGroup(sp, held) => {
                        self.group_plans.push((plan.round, agent.clone()));
                        let me = sp.cohort.iter().find(|a| a.name == agent).unwrap().index;
                        let entry = held.iter().find(|m| m.index == me).unwrap();
                        let a = self.agents.get_mut(&agent).unwrap();
                        let trained = a.training.as_ref().expect("it trained");
                        assert_eq!(
                            (entry.trained_round, entry.trained_version),
                            (trained.round, trained.model_version)
                        );
                        a.masking = Some((entry.trained_version, entry.scale));
                        let (session, keys) = ClientSession::new(
                            sp.params.clone(),
                            plan.round,
                            me,
                            &sp.cohort,
                            sp.graph_seed,
                            [0; 32],
                            &self.signers[&agent],
                            &mut self.rng,
                        )
                        .unwrap();
                        a.session = Some(session);
                        self.feed(Event::SecAggAdvertise { agent, keys });
                    }
                    other => panic!("a {other:?} plan in a buffered secure run"),
                },
                Action::SecAggKeys { agent, round, keys, .. } => {
                    let a = self.agents.get_mut(&agent).unwrap();
                    let shares = a.session.as_mut().unwrap().on_keys(&keys, &self.peers, &mut self.rng).unwrap();
                    self.feed(Event::SecAggShares { agent, round, shares });
                }
                Action::SecAggShares { agent, shares, .. } => {
                    if self.quits(&agent, Quit::Disconnect) {
                        self.feed(Event::AgentDisconnected { agent });
                        continue;
                    }
                    let a = self.agents.get_mut(&agent).unwrap();
                    let receipt = a.session.as_mut().unwrap().on_shares(&shares).unwrap();
                    self.feed(Event::SecAggReceipt { agent, receipt });
                }
                Action::SecAggMaskWith { agent, mask_with } => {
                    if self.hold_masking {
                        self.held_masking.push((agent, mask_with));
                    } else {
                        self.mask(agent, mask_with);
                    }
                }
                Action::SecAggSurvivors { to, set } => {
                    for agent in to {
                        let a = self.agents.get_mut(&agent).unwrap();
                        let signature = a.session.as_mut().unwrap().on_survivors(&set, &self.signers[&agent]).unwrap();
                        self.feed(Event::SecAggSurvivorSignature { agent, signature });
                    }
                }
                Action::SecAggUnmask { agent, request } => {
                    self.unmasks += 1;
                    let a = self.agents.get_mut(&agent).unwrap();
                    let response = a.session.as_mut().unwrap().on_unmask_request(&request, &self.peers).unwrap();
                    self.feed(Event::SecAggUnmask { agent, response });
                }
                Action::Unmask { round, job } => {
                    self.unmasks += 1;
                    let outcome = job.run();
                    self.feed(Event::Unmasked { round, outcome });
                }
                Action::Commit { record, new_weights, .. } => {
                    let round = record.round;
                    self.models.push(new_weights.clone());
                    self.commits.push((*record, new_weights));
                    let version = self.commits.len() as u64;
                    self.feed(Event::Committed { round, version });
                }
                Action::RoundAborted { reason, record, .. } => self.aborts.push((reason, *record)),
                Action::WakeAt(t) => self.alarm.set(t),
                Action::Reject { agent, reason } => self.rejects.push((agent, reason)),
                Action::CancelTraining { agent, round } => self.cancelled.push((agent, round)),
                _ => {}
            }
        }
    }

    /// Releases the neighbours to mask with held back, and carries on.
    fn release_masking(&mut self) {
        self.hold_masking = false;
        for (agent, mask_with) in std::mem::take(&mut self.held_masking) {
            self.mask(agent, mask_with);
        }
        self.drain();
    }

    /// Advances the clock to the next wake-up and ticks.
    fn tick(&mut self) {
        let t = self.alarm.pending().expect("a wake-up");
        self.now = self.now.max(t);
        assert!(self.alarm.ring(self.now));
        self.feed(Event::Tick);
        self.drain();
    }

    /// Ticks until `done` holds (at most 20 ticks).
    fn run_until(&mut self, done: impl Fn(&Sim) -> bool) {
        for _ in 0..20 {
            if done(self) {
                return;
            }
            self.tick();
        }
        panic!("did not get there");
    }

    fn group_of(&self, round: u64) -> Vec<AgentId> {
        self.group_plans.iter().filter(|(r, _)| *r == round).map(|(_, a)| a.clone()).collect()
    }
}

/// `before + Σ s·n·Δ / Σ n` over `(agent, version trained from, scale)`.
fn expected(before: &[f32], members: &[(usize, u64, f64)]) -> Vec<f32> {
    let total: f64 = members.iter().map(|(i, _, _)| examples_of(*i) as f64).sum();
    (0..DIM)
        .map(|k| {
            let sum: f64 =
                members.iter().map(|(i, v, s)| s * examples_of(*i) as f64 * f64::from(delta_of(*i, *v)[k])).sum();
            before[k] + (sum / total) as f32
        })
        .collect()
}

fn assert_close(got: &[f32], want: &[f32]) {
    let worst = got.iter().zip(want).map(|(g, w)| (g - w).abs()).fold(0f32, f32::max);
    assert!(worst < 1e-4, "largest difference from the expected model: {worst}");
}

#[test]
fn the_first_k_ready_form_a_group_whose_commit_is_the_discounted_weighted_mean_and_later_ready_wait_for_the_next() {
    let mut sim = Sim::new(5, 3, 2);
    // Every agent is sent the newest model to train from, and nothing else.
    assert_eq!(sim.training_plans.len(), 5);
    assert!(sim.group_plans.is_empty());
    sim.hold_masking = true;
    for i in [2, 0, 1] {
        sim.ready(i);
    }
    // Exactly the three ready agents form round 1's group, in the order they said so.
    assert_eq!(sim.group_of(1), vec![name(2), name(0), name(1)]);
    assert_eq!(sim.coord.secure_phase(), Some(SecurePhase::Masked));
    // Agent 3 is ready while the group is in its masked phase: it is not added, and is kept for the next group.
    sim.ready(3);
    assert!(sim.rejects.is_empty(), "{:?}", sim.rejects);
    assert_eq!(sim.group_of(1).len(), 3);
    sim.release_masking();
    assert_eq!(sim.commits.len(), 1, "{:?}", sim.aborts);
    let fresh = [(2, 0, 1.0), (0, 0, 1.0), (1, 0, 1.0)];
    assert_close(&sim.models[1], &expected(&sim.models[0], &fresh));
    let record = &sim.commits[0].0;
    assert_eq!(record.metrics.total_examples, [0, 1, 2].iter().map(|&i| examples_of(i)).sum::<u64>());
    // The next buffer: the group's members train from version 1; agent 4 is still training from version 0.
    let mut round2: Vec<AgentId> = sim.training_plans.iter().filter(|(r, _)| *r == 2).map(|(_, a)| a.clone()).collect();
    round2.sort();
    assert_eq!(round2, vec![name(0), name(1), name(2)]);
    sim.ready(4);
    sim.ready(0);
    // Agents 3 and 4 trained from version 0, one commit ago: (1 + 1)^-0.5.
    assert_eq!(sim.group_of(2), vec![name(3), name(4), name(0)]);
    assert_eq!(sim.commits.len(), 2, "{:?}", sim.aborts);
    let stale = 2f64.powf(-0.5);
    let members = [(3, 0, stale), (4, 0, stale), (0, 1, 1.0)];
    assert_close(&sim.models[2], &expected(&sim.models[1], &members));
}

#[test]
fn k_agents_ready_while_a_group_runs_form_the_next_group_as_soon_as_the_next_buffer_opens() {
    let mut sim = Sim::new(4, 2, 2);
    sim.hold_masking = true;
    sim.ready(0);
    sim.ready(1);
    assert_eq!(sim.group_of(1), vec![name(0), name(1)]);
    sim.ready(3);
    sim.ready(2);
    assert!(sim.group_of(2).is_empty() && sim.rejects.is_empty());
    sim.release_masking();
    // Committed, and the next buffer's group formed at once from the two that waited, in the order they said so.
    assert_eq!(sim.commits.len(), 2, "{:?}", sim.aborts);
    assert_eq!(sim.group_of(2), vec![name(3), name(2)]);
    let stale = 2f64.powf(-0.5);
    assert_close(&sim.models[2], &expected(&sim.models[1], &[(3, 0, stale), (2, 0, stale)]));
}

#[test]
fn a_member_lost_in_the_masked_phase_is_recovered_and_the_group_commits_the_others_mean() {
    let mut sim = Sim::new(4, 4, 2);
    sim.agents.get_mut(&name(1)).unwrap().quit = Some(Quit::Masked);
    for i in 0..4 {
        sim.ready(i);
    }
    assert_eq!(sim.group_of(1).len(), 4);
    sim.run_until(|s| !s.commits.is_empty() || !s.aborts.is_empty());
    assert!(sim.aborts.is_empty(), "{:?}", sim.aborts);
    let record = &sim.commits[0].0;
    assert!(record.dropped.iter().any(|d| d.agent == name(1)), "{:?}", record.dropped);
    assert_eq!(record.metrics.secagg.as_ref().map(|m| m.survivors), Some(3));
    let survivors = [(0, 0, 1.0), (2, 0, 1.0), (3, 0, 1.0)];
    assert_close(&sim.models[1], &expected(&sim.models[0], &survivors));
}

#[test]
fn a_group_left_under_min_agents_aborts_unmasking_nothing_and_its_members_train_again() {
    let mut sim = Sim::new(3, 3, 3);
    sim.agents.get_mut(&name(2)).unwrap().quit = Some(Quit::Disconnect);
    for i in 0..3 {
        sim.ready(i);
    }
    assert_eq!(sim.group_of(1).len(), 3);
    assert_eq!(sim.aborts.len(), 1, "two members are left of min_agents = 3");
    assert!(matches!(sim.aborts[0].0, AbortReason::TooFewReports { .. }), "{:?}", sim.aborts[0].0);
    assert!(sim.commits.is_empty());
    assert_eq!(sim.unmasks, 0, "nothing is unmasked");
    // After the back-off the members are free: they are sent the model to train again, and the deltas they held are
    // not counted (nobody is ready).
    sim.feed(Event::AgentConnected { agent: name(2) });
    sim.feed(Event::CheckIn { agent: name(2), model_version: Some(0), examples: examples_of(2) });
    sim.drain();
    sim.run_until(|s| s.training_plans.iter().any(|(r, _)| *r == 2));
    let mut again: Vec<AgentId> = sim.training_plans.iter().filter(|(r, _)| *r == 2).map(|(_, a)| a.clone()).collect();
    again.sort();
    assert_eq!(again, vec![name(0), name(1), name(2)]);
    assert!(sim.group_of(2).is_empty(), "no delta of the aborted group is carried");
}

#[test]
fn at_the_deadline_the_ready_form_the_group_and_a_wrong_ready_is_refused() {
    let mut sim = Sim::new(4, 4, 2);
    // A ready naming another version than its plan's is refused and drops its sender.
    let plan = sim.agents[&name(3)].training.clone().unwrap();
    sim.feed(Event::Ready { agent: name(3), round: plan.round, model_version: 7, examples: 10 });
    sim.drain();
    assert!(matches!(sim.rejects.pop(), Some((a, RejectReason::SecAgg(_))) if a == name(3)));
    // One for another round too (agent 2 stays in the round).
    sim.feed(Event::Ready { agent: name(2), round: 99, model_version: 0, examples: 10 });
    sim.drain();
    assert!(matches!(sim.rejects.pop(), Some((a, RejectReason::WrongRound { .. })) if a == name(2)));
    sim.ready(0);
    sim.ready(1);
    assert!(sim.group_plans.is_empty(), "two of four, agent 2 still training");
    sim.run_until(|s| !s.commits.is_empty());
    assert_eq!(sim.group_of(1), vec![name(0), name(1)]);
    assert_close(&sim.models[1], &expected(&sim.models[0], &[(0, 0, 1.0), (1, 0, 1.0)]));
}

#[test]
fn secure_buffering_refuses_per_update_strategies_privacy_and_discounts_agents_would_refuse() {
    let state = || ResumeState { model_version: 0, weights: vec![0.5; DIM], next_round: 1, strategy_state: vec![] };
    let secure = || Coordinator::new(config(2, 10), state()).unwrap().with_secagg(secagg()).unwrap();
    assert!(secure().with_buffering(BufferedConfig::new(3)).is_ok(), "secure buffered rounds are accepted");
    let steep = BufferedConfig { staleness_exponent: 4.0, ..BufferedConfig::new(3) };
    let e = secure().with_buffering(steep.clone()).unwrap_err().to_string();
    assert!(e.contains("max_staleness"), "{e}");
    let plain = Coordinator::new(config(2, 10), state()).unwrap().with_buffering(steep).unwrap();
    assert!(plain.with_secagg(secagg()).is_err(), "the same discount is refused when secure aggregation comes later");
    let mut buffered = secure().with_buffering(BufferedConfig::new(3)).unwrap();
    let krum = CoordinatorConfig { strategy: StrategyConfig::Krum { byzantine: 0, keep: 1 }, ..config(2, 10) };
    assert!(buffered.set_config(krum).is_err());
    let settings = fedge_shared::privacy::PrivacySettings {
        noise_multiplier: 1.0,
        clip_norm: 1.0,
        delta: 1e-5,
        target_epsilon: 10.0,
    };
    let e = secure().with_buffering(BufferedConfig::new(3)).unwrap().with_privacy(settings, []).unwrap_err();
    assert!(e.to_string().contains("[buffered]"), "{e}");
}

#[test]
fn a_plain_update_is_refused_drops_its_sender_and_is_never_folded() {
    let mut sim = Sim::new(3, 3, 2);
    let plan = sim.agents[&name(0)].training.clone().unwrap();
    let delta = vec![1.0; DIM];
    sim.feed(Event::Update { agent: name(0), round: plan.round, examples: 10, train_loss: 0.5, delta: &delta });
    sim.drain();
    assert!(matches!(sim.rejects.pop(), Some((a, RejectReason::SecAgg(_))) if a == name(0)));
    sim.ready(1);
    sim.ready(2);
    assert_eq!(sim.group_of(1), vec![name(1), name(2)], "nobody else is training");
    assert_eq!(sim.commits.len(), 1, "{:?}", sim.aborts);
    assert_close(&sim.models[1], &expected(&sim.models[0], &[(1, 0, 1.0), (2, 0, 1.0)]));
}

#[test]
fn a_held_delta_more_than_max_staleness_versions_old_is_dropped_at_a_commit_and_its_agent_trains_again() {
    let mut sim = Sim::with(5, BufferedConfig { max_staleness: 1, ..BufferedConfig::new(2) }, 2);
    sim.hold_masking = true;
    sim.ready(0);
    sim.ready(1);
    for i in [2, 3, 4] {
        sim.ready(i);
    }
    sim.release_masking();
    // Version 1 commits; the next buffer's group forms at once with agents 2 and 3 and commits version 2. Agent 4,
    // still holding a delta trained from version 0, is now two versions behind: told to stop, never masked.
    assert_eq!(sim.commits.len(), 2, "{:?}", sim.aborts);
    assert_eq!(sim.group_of(2), vec![name(2), name(3)]);
    assert_eq!(sim.cancelled, vec![(name(4), 1)]);
    assert!(sim.group_plans.iter().all(|(_, a)| *a != name(4)));
    assert!(sim.training_plans.iter().any(|(r, a)| *r == 3 && *a == name(4)), "it trains again from version 2");
}
