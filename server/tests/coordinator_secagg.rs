//! The coordinator's secure mode, driven by a deterministic simulation in which every agent runs a real SecAgg+
//! `ClientSession` (real keys, signatures, Shamir shares and masks): the unmasked aggregate is the weighted mean of
//! exactly the agents whose masked input arrived, whatever phase the others dropped out in; a round that loses too
//! many aborts and commits nothing; bad settings are refused naming the key.

use fedge_server::clock::Alarm;
use fedge_server::coordinator::{
    AbortReason, Action, AgentId, AggregationMode, ConfigError, Coordinator, CoordinatorConfig, Event, Phase,
    RejectReason, ResumeState, RoundRecord, SecAggConfig, SecurePhase, TrainHyper, UnmaskJob,
};
use fedge_server::strategy::StrategyConfig;
use fedge_shared::fedeval::EvalCounts;
use fedge_shared::round_counts::{self, SECURE_COUNTS};
use fedge_shared::secagg::{ClientSession, EcdsaP256Signer, PeerKeyTable};
use proptest::prelude::*;
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

const DIM: usize = 40;
const TIMEOUT: u64 = 10_000;
const PHASE: u64 = 1_000;

fn config(min_agents: usize, agents: usize) -> CoordinatorConfig {
    CoordinatorConfig {
        min_agents,
        min_available: Some(agents),
        max_agents: agents,
        fraction: 1.0,
        overselect: 1.0,
        seed: 5,
        round_timeout_ms: TIMEOUT,
        retry_backoff_ms: 1_000,
        max_examples: None,
        hyper: TrainHyper::default(),
        strategy: StrategyConfig::FedAvg,
    }
}

/// 22 quantization bits, configured, so that the mean is exact to 1e-4: the server keeps them and masks in the
/// narrowest word that holds the sum (27 bits for 20 agents), not in 16 bits.
fn secagg() -> SecAggConfig {
    SecAggConfig { phase_timeout_ms: PHASE, quant_bits: Some(22), ..SecAggConfig::default() }
}

fn name(i: usize) -> AgentId {
    format!("agent-{i:04}")
}

fn delta_of(i: usize) -> Vec<f32> {
    (0..DIM).map(|k| ((i * 7 + k * 3) % 11) as f32 * 0.01 - 0.05).collect()
}

fn examples_of(i: usize) -> u64 {
    10 + (i as u64 * 17) % 90
}

/// Agent `i`'s federated evaluation of the round's starting model (agent 3 holds no held-out examples).
fn eval_of(i: usize) -> EvalCounts {
    let examples = if i == 3 { 0 } else { 5 + (i as u64 * 11) % 40 };
    let correct = examples * (i as u64 % 7) / 7;
    EvalCounts { correct, examples, loss_sum: examples as f64 * 0.125 * (1 + i % 5) as f64 }
}

/// When an agent stops answering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Quit {
    Never,
    /// Never sends its keys.
    Advertise,
    /// Sends keys, never its shares.
    Shares,
    /// Shares keys and sends its receipt, never its masked input (as if training never finished).
    Masked,
    /// Shares keys, then its connection drops.
    Disconnect,
    /// Sends its masked input, never answers the unmask request.
    Unmask,
    /// Sends every neighbour a share that does not decrypt, then would take part like the others.
    Garbage,
}

struct SimAgent {
    index: usize,
    quit: Quit,
    session: Option<ClientSession>,
    signer: EcdsaP256Signer,
}

struct Sim {
    coord: Coordinator,
    now: u64,
    /// The shell's wake-up handling, as the server's core does it.
    alarm: Alarm,
    /// Every wake-up asked for, with the time it was asked at.
    wake_ups: Vec<(u64, u64)>,
    agents: BTreeMap<AgentId, SimAgent>,
    peers: PeerKeyTable,
    queue: VecDeque<Action>,
    rng: ChaCha20Rng,
    commits: Vec<(RoundRecord, Vec<f32>)>,
    aborts: Vec<(AbortReason, RoundRecord)>,
    rejects: Vec<(AgentId, RejectReason)>,
    global: Vec<f32>,
    /// Unmask jobs the shell was handed; held instead of run while `hold_unmask` is set.
    held_unmask: Vec<(u64, UnmaskJob)>,
    hold_unmask: bool,
}

impl Sim {
    fn new(min_agents: usize, quits: &[Quit]) -> Sim {
        Sim::with(config(min_agents, quits.len()), secagg(), quits)
    }

    fn with(config: CoordinatorConfig, secagg: SecAggConfig, quits: &[Quit]) -> Sim {
        let global: Vec<f32> = (0..DIM).map(|k| k as f32 * 0.1).collect();
        let state = ResumeState { model_version: 0, weights: global.clone(), next_round: 1, strategy_state: vec![] };
        let coord = Coordinator::new(config, state).unwrap().with_secagg(secagg).unwrap();
        let mut peers = PeerKeyTable::new();
        let mut agents = BTreeMap::new();
        for (i, &quit) in quits.iter().enumerate() {
            let (signer, _) = EcdsaP256Signer::generate().unwrap();
            peers.insert(name(i), signer.public_key());
            agents.insert(name(i), SimAgent { index: i, quit, session: None, signer });
        }
        let mut sim = Sim {
            coord,
            now: 0,
            alarm: Alarm::default(),
            wake_ups: vec![],
            agents,
            peers,
            queue: VecDeque::new(),
            rng: ChaCha20Rng::seed_from_u64(77),
            commits: vec![],
            aborts: vec![],
            rejects: vec![],
            global,
            held_unmask: vec![],
            hold_unmask: false,
        };
        for i in 0..quits.len() {
            sim.feed(Event::AgentConnected { agent: name(i) });
            sim.feed(Event::CheckIn { agent: name(i), model_version: Some(0), examples: examples_of(i) });
        }
        sim
    }

    fn feed(&mut self, e: Event<'_>) {
        let actions = self.coord.handle(self.now, e);
        self.queue.extend(actions);
    }

    fn quits(&self, agent: &str, at: Quit) -> bool {
        self.agents.get(agent).is_some_and(|a| a.quit == at)
    }

    /// Carries out actions the way honest agents (and the store) would, until none are left.
    fn drain(&mut self) {
        while let Some(action) = self.queue.pop_front() {
            match action {
                Action::SendPlan { agent, plan, .. } => {
                    let AggregationMode::Secure(sp) = &plan.aggregation else { panic!("a plain plan in a secure run") };
                    if self.quits(&agent, Quit::Advertise) {
                        continue;
                    }
                    let me = sp.cohort.iter().find(|a| a.name == agent).unwrap().index;
                    let a = self.agents.get_mut(&agent).unwrap();
                    let (session, keys) = ClientSession::new(
                        sp.params.clone(),
                        plan.round,
                        me,
                        &sp.cohort,
                        sp.graph_seed,
                        [0; 32],
                        &a.signer,
                        &mut self.rng,
                    )
                    .unwrap();
                    a.session = Some(session);
                    self.feed(Event::SecAggAdvertise { agent, keys });
                }
                Action::SecAggKeys { agent, round, keys, owners } => {
                    assert_eq!(keys.len(), owners.len());
                    if self.quits(&agent, Quit::Shares) {
                        continue;
                    }
                    let a = self.agents.get_mut(&agent).unwrap();
                    // O(k): the agent's own keys and its neighbours', never the whole cohort's.
                    assert!(keys.len() <= a.session.as_ref().unwrap().neighbours().len() + 1);
                    let mut shares = a.session.as_mut().unwrap().on_keys(&keys, &self.peers, &mut self.rng).unwrap();
                    if a.quit == Quit::Garbage {
                        for share in &mut shares {
                            share.ciphertext.iter_mut().for_each(|b| *b ^= 0x5a);
                        }
                    }
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
                    if self.quits(&agent, Quit::Masked) {
                        continue;
                    }
                    let a = self.agents.get_mut(&agent).unwrap();
                    let index = a.index;
                    let session = a.session.as_mut().unwrap();
                    session.on_mask_with(&mask_with).unwrap();
                    let limit = session.count_limit();
                    session
                        .set_counts(round_counts::coords(Some(&eval_of(index)), examples_of(index), 0.5, limit))
                        .unwrap();
                    let masked = session.masked_input(&delta_of(index), examples_of(index), &mut self.rng).unwrap();
                    // As it travels: in the round's word width.
                    let masked = fedge_shared::secagg::words::pack_words(session.params(), &masked);
                    self.feed(Event::MaskedInput { agent, round: mask_with.round, masked: &masked });
                }
                Action::SecAggSurvivors { to, set } => {
                    for agent in to {
                        if self.quits(&agent, Quit::Unmask) {
                            continue;
                        }
                        let a = self.agents.get_mut(&agent).unwrap();
                        let signature = a.session.as_mut().unwrap().on_survivors(&set, &a.signer).unwrap();
                        self.feed(Event::SecAggSurvivorSignature { agent, signature });
                    }
                }
                Action::SecAggUnmask { agent, request } => {
                    let a = self.agents.get_mut(&agent).unwrap();
                    let response = a.session.as_mut().unwrap().on_unmask_request(&request, &self.peers).unwrap();
                    self.feed(Event::SecAggUnmask { agent, response });
                }
                Action::Unmask { round, job } => {
                    if self.hold_unmask {
                        self.held_unmask.push((round, job));
                    } else {
                        let outcome = job.run();
                        self.feed(Event::Unmasked { round, outcome });
                    }
                }
                Action::Commit { record, new_weights, .. } => {
                    let round = record.round;
                    self.commits.push((*record, new_weights));
                    let version = self.commits.len() as u64;
                    self.feed(Event::Committed { round, version });
                }
                Action::RoundAborted { reason, record, .. } => self.aborts.push((reason, *record)),
                Action::WakeAt(t) => {
                    self.wake_ups.push((self.now, t));
                    self.alarm.set(t)
                }
                Action::Reject { agent, reason } => self.rejects.push((agent, reason)),
                _ => {}
            }
        }
    }

    /// Runs one round to its end, advancing the clock to each requested wake-up.
    fn run_round(&mut self) {
        let ended = self.commits.len() + self.aborts.len();
        self.feed(Event::StartRounds { count: Some(1) });
        for _ in 0..100 {
            self.drain();
            if self.commits.len() + self.aborts.len() > ended {
                return;
            }
            let Some(t) = self.alarm.pending() else { panic!("the round is stuck with no deadline") };
            self.now = self.now.max(t);
            assert!(self.alarm.ring(self.now));
            self.feed(Event::Tick);
        }
        panic!("the round did not end");
    }

    /// The plain example-weighted mean delta of `agents` (the secure weights `examples / cap` are proportional).
    fn plain_mean(&self, agents: &BTreeSet<usize>) -> Vec<f32> {
        let mut sum = vec![0f64; DIM];
        let mut total = 0f64;
        for &i in agents {
            let w = examples_of(i) as f64;
            for (s, d) in sum.iter_mut().zip(delta_of(i)) {
                *s += w * f64::from(d);
            }
            total += w;
        }
        sum.iter().map(|s| (s / total) as f32).collect()
    }

    fn applied_delta(&self) -> Vec<f32> {
        let (_, w) = self.commits.last().expect("a committed round");
        w.iter().zip(&self.global).map(|(a, b)| a - b).collect()
    }
}

fn assert_close(got: &[f32], want: &[f32]) {
    let worst = got.iter().zip(want).map(|(g, w)| (g - w).abs()).fold(0f32, f32::max);
    assert!(worst < 1e-4, "largest difference from the plain mean: {worst}");
}

fn uploaders(quits: &[Quit]) -> BTreeSet<usize> {
    quits.iter().enumerate().filter(|(_, q)| matches!(q, Quit::Never | Quit::Unmask)).map(|(i, _)| i).collect()
}

fn cohort_of(record: &RoundRecord) -> BTreeSet<String> {
    let AggregationMode::Secure(sp) = &record.plan.aggregation else { panic!("a plain round") };
    sp.cohort.iter().map(|a| a.name.clone()).collect()
}

#[test]
fn an_agent_whose_shares_its_neighbours_cannot_use_is_left_out_of_that_round_and_the_next_quarantine_rounds() {
    // Agent 3 sends all of its neighbours shares that do not decrypt: nobody could reveal its self-mask seed. Their
    // receipts name it, so it is left out before anyone masks with it: the round commits the exact mean of the
    // seven honest agents, its record says why agent 3 dropped, and the next two rounds run without it; the round
    // after them takes it back.
    let mut quits = vec![Quit::Never; 8];
    quits[3] = Quit::Garbage;
    let mut cfg = config(5, 8);
    cfg.min_available = Some(5);
    let mut sim = Sim::with(cfg, SecAggConfig { quarantine_rounds: 2, ..secagg() }, &quits);
    sim.run_round();
    assert!(sim.aborts.is_empty(), "{:?}", sim.aborts);
    let (record, _) = sim.commits.last().expect("the round commits without it");
    assert!(cohort_of(record).contains(&name(3)));
    assert_eq!(record.reported.len(), 7);
    let why = &record.dropped.iter().find(|d| d.agent == name(3)).expect("agent 3 is dropped").reason;
    assert!(why.contains("could not use"), "{why}");
    let honest: BTreeSet<usize> = (0..8).filter(|&i| i != 3).collect();
    assert_close(&sim.applied_delta(), &sim.plain_mean(&honest));
    sim.agents.get_mut(&name(3)).unwrap().quit = Quit::Never;
    for _ in 0..2 {
        sim.now += 1_000;
        sim.run_round();
        let (record, _) = sim.commits.last().expect("the rounds without it commit");
        assert!(!cohort_of(record).contains(&name(3)), "round {} took the quarantined agent", record.round);
        assert_eq!(record.reported.len(), 7);
    }
    sim.now += 1_000;
    sim.run_round();
    let (record, _) = sim.commits.last().unwrap();
    assert!(cohort_of(record).contains(&name(3)), "its quarantine is over");
    assert_eq!(record.reported.len(), 8);
    assert!(sim.aborts.is_empty());
}

#[test]
fn a_secure_round_of_forty_agents_commits_the_weighted_mean_of_their_deltas() {
    let quits = vec![Quit::Never; 40];
    let mut sim = Sim::new(20, &quits);
    sim.run_round();
    assert!(sim.aborts.is_empty(), "{:?}", sim.aborts);
    let (record, _) = sim.commits.last().unwrap();
    assert!(matches!(record.plan.aggregation, AggregationMode::Secure(_)));
    assert_eq!(record.reported.len(), 40);
    assert!(record.dropped.is_empty());
    let m = record.metrics.secagg.clone().unwrap();
    assert_eq!((m.survivors, m.dropped_after_sharing), (40, 0));
    assert_close(&sim.applied_delta(), &sim.plain_mean(&uploaders(&quits)));
    // Every phase closed early, as soon as everybody had answered: no deadline was waited for.
    assert_eq!(sim.now, 0);
}

#[test]
fn agents_dropping_out_in_every_phase_are_dropped_and_exactly_the_uploaders_are_aggregated() {
    // 24 agents, k = 20, t = 14: six drop-outs leave even an agent that lost six neighbours 14 of them.
    let mut quits = vec![Quit::Never; 24];
    quits[1] = Quit::Advertise;
    quits[8] = Quit::Shares;
    quits[13] = Quit::Masked;
    quits[17] = Quit::Masked;
    quits[20] = Quit::Disconnect;
    quits[22] = Quit::Unmask;
    let mut sim = Sim::new(10, &quits);
    sim.run_round();
    assert!(sim.aborts.is_empty(), "{:?}", sim.aborts);
    let (record, _) = sim.commits.last().unwrap();
    let dropped: BTreeMap<&str, &str> = record.dropped.iter().map(|d| (d.agent.as_str(), d.reason.as_str())).collect();
    assert_eq!(dropped.len(), 5, "{dropped:?}");
    assert!(dropped[name(1).as_str()].contains("advertise-keys deadline"), "{dropped:?}");
    assert!(dropped[name(8).as_str()].contains("share-keys deadline"), "{dropped:?}");
    assert!(dropped[name(13).as_str()].contains("masked-input deadline"), "{dropped:?}");
    assert!(dropped[name(20).as_str()].contains("disconnected"), "{dropped:?}");
    assert!(!dropped.contains_key(name(22).as_str()), "its masked input is in the sum");
    let m = record.metrics.secagg.clone().unwrap();
    assert_eq!(m.survivors, 19);
    // 20 vanished before its receipt and is left out like an agent that never shared; 13 and 17 receipted, so
    // their neighbours masked with them and their mask keys are rebuilt.
    assert_eq!(m.dropped_after_sharing, 2, "13 and 17 shared keys, receipted and then vanished");
    assert_close(&sim.applied_delta(), &sim.plain_mean(&uploaders(&quits)));
    // The phases waited for their deadlines: advertise, shares, then the round's training deadline, then unmask.
    assert!(sim.now >= TIMEOUT, "{}", sim.now);
}

#[test]
fn the_federated_evaluation_is_exactly_the_sum_of_the_uploaders_counts_whatever_dropped_out() {
    let mut quits = vec![Quit::Never; 16];
    quits[1] = Quit::Advertise;
    quits[4] = Quit::Shares;
    quits[6] = Quit::Masked;
    quits[9] = Quit::Disconnect;
    quits[12] = Quit::Unmask;
    let mut sim = Sim::new(8, &quits);
    sim.run_round();
    let (record, _) = sim.commits.last().expect("the round commits");
    let AggregationMode::Secure(sp) = &record.plan.aggregation else { panic!("a secure round") };
    assert_eq!(sp.params.counts, SECURE_COUNTS, "the round's vectors carry the evaluation and the training counts");
    let fed = record.metrics.federated_eval.expect("the survivors' totals");
    let mut want = EvalCounts::default();
    for i in uploaders(&quits) {
        want.add(&eval_of(i));
    }
    assert_eq!((fed.counts.correct, fed.counts.examples), (want.correct, want.examples), "bit-exact through the masks");
    assert!((fed.counts.loss_sum - want.loss_sum).abs() < 1e-9, "{} vs {}", fed.counts.loss_sum, want.loss_sum);
    assert_eq!(fed.model_version, record.plan.model_version, "attributed to the version the agents evaluated");
    assert_eq!(fed.agents, uploaders(&quits).len());
    assert!(record.reported.iter().all(|r| r.eval.is_none()), "no agent's own counts are recorded");
    // The training metadata too: only the survivors' totals, from under the masks.
    let examples: u64 = uploaders(&quits).into_iter().map(examples_of).sum();
    assert_eq!(record.metrics.total_examples, examples);
    let loss = record.metrics.mean_train_loss.expect("the survivors' mean training loss");
    assert!((loss - 0.5).abs() < 1e-3, "{loss}");
    assert!(record.reported.iter().all(|r| r.examples == 0 && r.train_loss == 0.0), "{:?}", record.reported);
}

#[test]
fn fewer_uploads_than_min_agents_abort_the_round_and_commit_nothing() {
    let mut quits = vec![Quit::Never; 6];
    for q in quits.iter_mut().take(4) {
        *q = Quit::Masked;
    }
    let mut sim = Sim::new(3, &quits);
    sim.run_round();
    assert!(sim.commits.is_empty());
    let (reason, record) = sim.aborts.last().unwrap();
    assert_eq!(*reason, AbortReason::TooFewReports { reported: 2, min_agents: 3 });
    assert!(record.new_version.is_none());
    assert_eq!(sim.coord.model_version(), 0);
    assert_eq!(sim.coord.global_weights(), sim.global.as_slice());
}

#[test]
fn survivors_below_the_threshold_abort_the_round_before_anything_is_unmasked() {
    // Ten agents on a complete graph: k = 9, t = 6. Five vanish after sharing, leaving each survivor four
    // surviving neighbours: their masks could not be removed, so the server must not ask anyone to unmask.
    let mut quits = vec![Quit::Never; 10];
    for q in quits.iter_mut().skip(5) {
        *q = Quit::Masked;
    }
    let mut sim = Sim::new(3, &quits);
    sim.run_round();
    assert!(sim.commits.is_empty());
    let (reason, _) = sim.aborts.last().unwrap();
    assert!(matches!(reason, AbortReason::SecureAggregation(m) if m.contains("masked-input")), "{reason:?}");
    assert_eq!(sim.coord.secure_phase(), None);
}

#[test]
fn a_plain_update_in_a_secure_round_is_refused_and_its_sender_dropped() {
    let quits = vec![Quit::Advertise; 4];
    let mut sim = Sim::new(2, &quits);
    sim.feed(Event::StartRounds { count: Some(1) });
    sim.drain();
    assert_eq!(sim.coord.secure_phase(), Some(SecurePhase::Advertise));
    let delta = delta_of(0);
    sim.feed(Event::Update { agent: name(0), round: 1, examples: 10, train_loss: 0.1, delta: &delta });
    sim.drain();
    assert!(
        sim.rejects.iter().any(|(a, r)| *a == name(0) && matches!(r, RejectReason::SecAgg(_))),
        "{:?}",
        sim.rejects
    );
    assert_eq!(sim.coord.status().dropped, 1);
}

#[test]
fn a_message_for_the_wrong_phase_is_refused_without_dropping_anyone() {
    let quits = vec![Quit::Advertise; 4];
    let mut sim = Sim::new(2, &quits);
    sim.feed(Event::StartRounds { count: Some(1) });
    sim.drain();
    let masked = vec![0u32; DIM + 1];
    sim.feed(Event::MaskedInput { agent: name(2), round: 1, masked: &masked });
    sim.drain();
    assert!(
        sim.rejects.iter().any(|(a, r)| *a == name(2) && matches!(r, RejectReason::SecAgg(m) if m.contains("phase")))
    );
    assert_eq!(sim.coord.status().dropped, 0);
}

#[test]
fn settings_that_void_privacy_or_overflow_the_modulus_are_refused_naming_the_key() {
    let state = || ResumeState { model_version: 0, weights: vec![0.0; 4], next_round: 1, strategy_state: vec![] };
    let low_t = SecAggConfig { neighbours: Some(8), threshold: Some(4), ..secagg() };
    let err = Coordinator::new(config(10, 50), state()).unwrap().with_secagg(low_t).unwrap_err();
    assert!(matches!(&err, ConfigError::Invalid(m) if m.contains("secagg.threshold")), "{err}");
    let wide = SecAggConfig { quant_bits: Some(28), ..secagg() };
    let err = Coordinator::new(config(10, 50), state()).unwrap().with_secagg(wide).unwrap_err();
    assert!(matches!(&err, ConfigError::Invalid(m) if m.contains("secagg.quant_bits")), "{err}");
    let lonely = Coordinator::new(config(1, 5), state()).unwrap().with_secagg(secagg()).unwrap_err();
    assert!(lonely.to_string().contains("min_agents"), "{lonely}");
    assert!(Coordinator::new(config(1, 5), state()).unwrap().with_secagg(SecAggConfig::off()).is_ok());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, .. ProptestConfig::default() })]

    #[test]
    fn any_dropout_pattern_either_aggregates_exactly_the_uploaders_or_aborts_with_nothing_committed(
        pattern in proptest::collection::vec(0u8..12, 8..14),
    ) {
        // Mostly honest agents; codes 6.. are honest.
        let quits: Vec<Quit> = pattern.iter().map(|c| match c {
            0 => Quit::Advertise,
            1 => Quit::Shares,
            2 => Quit::Masked,
            3 => Quit::Disconnect,
            4 => Quit::Unmask,
            _ => Quit::Never,
        }).collect();
        let mut sim = Sim::new(3, &quits);
        sim.run_round();
        if let Some((record, _)) = sim.commits.last() {
            prop_assert_eq!(record.reported.len(), uploaders(&quits).len());
            let got = sim.applied_delta();
            let want = sim.plain_mean(&uploaders(&quits));
            let worst = got.iter().zip(&want).map(|(g, w)| (g - w).abs()).fold(0f32, f32::max);
            prop_assert!(worst < 1e-4, "worst {}", worst);
        } else {
            prop_assert_eq!(sim.aborts.len(), 1);
            prop_assert_eq!(sim.coord.global_weights(), sim.global.as_slice());
        }
    }
}

#[test]
fn a_member_that_never_uploads_holds_a_secure_round_to_the_round_deadline_not_to_a_phase_wake_up() {
    // The shell's wake-up handling (`fedge_server::clock::Alarm`, as the core carries out `WakeAt`) is driven
    // through the sequence that once lost the deadline: the key phases' wake-up is pending when the coordinator
    // asks for the later round deadline; a member that never uploads its masked input must hold the round until
    // that deadline and no longer.
    let mut quits = vec![Quit::Never; 4];
    quits[2] = Quit::Masked;
    let mut sim = Sim::new(3, &quits);
    sim.run_round();
    assert!(sim.aborts.is_empty(), "{:?}", sim.aborts);
    let (record, _) = sim.commits.last().expect("the three that uploaded are aggregated");
    assert_eq!((record.started_ms, record.ended_ms), (0, TIMEOUT), "closed at the round's deadline");
    assert_eq!(record.dropped.len(), 1);
    assert!(record.dropped[0].reason.contains("masked-input deadline"), "{:?}", record.dropped);
    let asked_at_start: Vec<u64> = sim.wake_ups.iter().filter(|(at, _)| *at == 0).map(|(_, t)| *t).collect();
    assert!(
        asked_at_start.windows(2).any(|w| w[0] < w[1]),
        "a later wake-up replaced a pending earlier one: {asked_at_start:?}"
    );
}

#[test]
fn a_strategy_that_needs_each_update_is_refused_with_secure_aggregation_at_start_and_when_the_operator_sets_it() {
    let state = || ResumeState { model_version: 0, weights: vec![0.0; DIM], next_round: 1, strategy_state: vec![] };
    let robust = [
        StrategyConfig::Median,
        StrategyConfig::TrimmedMean { beta: 0.1 },
        StrategyConfig::Krum { byzantine: 1, keep: 1 },
    ];
    for strategy in robust.clone() {
        let cfg = CoordinatorConfig { strategy, ..config(5, 10) };
        let err = Coordinator::new(cfg.clone(), state()).unwrap().with_secagg(secagg()).unwrap_err();
        assert!(err.to_string().contains("secure aggregation hides"), "{err}");
        // Without secure aggregation it runs.
        let plain = SecAggConfig { enabled: false, ..secagg() };
        assert!(Coordinator::new(cfg, state()).unwrap().with_secagg(plain).is_ok());
    }
    let mut coord = Coordinator::new(config(5, 10), state()).unwrap().with_secagg(secagg()).unwrap();
    for strategy in robust {
        let err = coord.set_config(CoordinatorConfig { strategy, ..config(5, 10) }).unwrap_err();
        assert!(err.to_string().contains("turn [secagg] off"), "{err}");
        assert_eq!(coord.config().strategy, StrategyConfig::FedAvg, "a refused setting changes nothing");
    }
    let fedavgm = StrategyConfig::FedAvgM { eta: 1.0, momentum: 0.9 };
    coord.set_config(CoordinatorConfig { strategy: fedavgm.clone(), ..config(5, 10) }).unwrap();
    assert_eq!(coord.config().strategy, fedavgm);
}

#[test]
fn krum_is_refused_when_min_agents_is_below_the_updates_it_needs() {
    let state = ResumeState { model_version: 0, weights: vec![0.0; DIM], next_round: 1, strategy_state: vec![] };
    let cfg = CoordinatorConfig { strategy: StrategyConfig::Krum { byzantine: 2, keep: 1 }, ..config(6, 10) };
    let err = Coordinator::new(cfg, state).unwrap_err();
    assert!(err.to_string().contains("needs at least 7 updates"), "{err}");
}

impl Sim {
    /// Runs the round until the coordinator hands the shell its unmask job, and returns it (held, not run).
    fn run_until_unmask(&mut self) -> (u64, UnmaskJob) {
        self.hold_unmask = true;
        self.feed(Event::StartRounds { count: Some(1) });
        for _ in 0..100 {
            self.drain();
            if let Some(held) = self.held_unmask.pop() {
                return held;
            }
            let Some(t) = self.alarm.pending() else { panic!("the round is stuck with no deadline") };
            self.now = self.now.max(t);
            assert!(self.alarm.ring(self.now));
            self.feed(Event::Tick);
        }
        panic!("no unmask job was handed out");
    }
}

#[test]
fn the_sum_is_unmasked_by_the_shell_off_the_event_loop_and_the_round_waits_for_it() {
    let quits = [Quit::Never, Quit::Never, Quit::Masked, Quit::Never, Quit::Never, Quit::Never];
    let mut sim = Sim::new(3, &quits);
    let (round, job) = sim.run_until_unmask();
    assert!(sim.commits.is_empty() && sim.aborts.is_empty());
    let status = sim.coord.status();
    assert_eq!((status.phase, status.round), (Phase::Committing, Some(round)), "the round is closed, not idle");
    // While the job runs: no deadline ends the round, the operator cannot abort it, no other round starts, and an
    // answer for another round is ignored.
    assert_eq!(sim.coord.deadline_ms(), None);
    sim.now += 10 * TIMEOUT;
    sim.feed(Event::Tick);
    sim.feed(Event::AbortRound);
    sim.feed(Event::StartRounds { count: Some(1) });
    sim.feed(Event::Unmasked { round: round + 1, outcome: Err("not this round".into()) });
    sim.drain();
    assert!(sim.commits.is_empty() && sim.aborts.is_empty());
    assert!(sim.held_unmask.is_empty(), "no second round started");
    // The job runs once; its result completes the round with the survivors' mean.
    let outcome = job.run();
    assert!(job.run().is_err(), "a job runs once");
    sim.hold_unmask = false;
    sim.feed(Event::Unmasked { round, outcome });
    sim.drain();
    assert_eq!(sim.commits.len(), 1);
    assert_close(&sim.applied_delta(), &sim.plain_mean(&uploaders(&quits)));
    let secagg = sim.commits[0].0.metrics.secagg.clone().unwrap();
    assert_eq!(secagg.survivors, 5);
}

#[test]
fn an_unmasking_that_fails_in_the_shell_aborts_the_round_with_its_reason() {
    let mut sim = Sim::new(3, &[Quit::Never; 5]);
    let (round, _job) = sim.run_until_unmask();
    sim.feed(Event::Unmasked { round, outcome: Err("a secret has too few shares".into()) });
    sim.drain();
    assert!(sim.commits.is_empty());
    let (reason, record) = sim.aborts.last().unwrap();
    assert!(reason.to_string().contains("unmasking: a secret has too few shares"), "{reason}");
    assert_eq!(record.round, round);
    assert_eq!(sim.coord.status().phase, Phase::Idle);
}
