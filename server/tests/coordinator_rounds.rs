//! The round coordinator, driven by a small deterministic simulation: a clock we advance, hundreds of agents that
//! answer, straggle, fail or disconnect, and a store that commits (or fails to) on request.

use fedge_server::clock::Alarm;
use fedge_server::coordinator::{
    AbortReason, Action, AgentId, Coordinator, CoordinatorConfig, Event, FoldError, Outcome, Phase, RejectReason,
    ResumeState, RoundPlan, RoundRecord, SelectionRule, TrainHyper, select,
};
use fedge_server::strategy::{Adaptive, AdaptiveParams, AdaptiveRule, RoundUpdates, Strategy, StrategyConfig};
use fedge_shared::delta_encoding::DeltaEncoding;
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::{BTreeMap, BTreeSet, HashMap};

const DIM: usize = 8;
const TIMEOUT: u64 = 10_000;
const BACKOFF: u64 = 2_000;

fn config(min_agents: usize, max_agents: usize, fraction: f64) -> CoordinatorConfig {
    CoordinatorConfig {
        min_agents,
        min_available: None,
        max_agents,
        fraction,
        overselect: 1.3,
        seed: 42,
        round_timeout_ms: TIMEOUT,
        retry_backoff_ms: BACKOFF,
        max_examples: None,
        hyper: TrainHyper::default(),
        strategy: StrategyConfig::FedAvg,
    }
}

fn fresh() -> ResumeState {
    ResumeState { model_version: 0, weights: vec![0.5; DIM], next_round: 1, strategy_state: Vec::new() }
}

fn name(i: usize) -> AgentId {
    format!("agent-{i:04}")
}

/// Each agent's delta and example count are a function of its name, so a test can recompute any aggregate.
fn delta_of(agent: &str) -> Vec<f32> {
    let i: usize = agent.trim_start_matches("agent-").parse().unwrap();
    (0..DIM).map(|k| ((i * 7 + k * 3) % 11) as f32 * 0.01 - 0.05).collect()
}
fn examples_of(agent: &str) -> u64 {
    let i: u64 = agent.trim_start_matches("agent-").parse().unwrap();
    10 + i % 37
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Behaviour {
    /// Uploads its delta `latency` ms after receiving the plan.
    Honest { latency: u64 },
    /// Never answers.
    Silent,
    /// Uploads 1 ms after the deadline.
    Late,
    /// Reports a training failure after `after` ms.
    Fails { after: u64 },
    /// Drops its connection after `after` ms.
    Disconnects { after: u64 },
}

#[derive(Debug, Clone)]
enum Scheduled {
    Connect(AgentId),
    CheckIn(AgentId, Option<u64>),
    Disconnect(AgentId),
    Update { agent: AgentId, round: u64, delta: Vec<f32> },
    Failed(AgentId, u64),
    Committed(u64),
    CommitFailed(u64),
}

struct Sim {
    coord: Coordinator,
    now: u64,
    seq: u64,
    queue: BTreeMap<(u64, u64), Scheduled>,
    /// The shell's wake-up handling, as the server's core does it.
    alarm: Alarm,
    behaviour: HashMap<AgentId, Behaviour>,
    /// Every action with the time it was produced.
    actions: Vec<(u64, Action)>,
    /// Rounds whose commit the store will refuse.
    failing_commits: BTreeSet<u64>,
    version: u64,
}

impl Sim {
    fn new(coord: Coordinator) -> Self {
        let version = coord.model_version();
        Sim {
            coord,
            now: 0,
            seq: 0,
            queue: BTreeMap::new(),
            alarm: Alarm::default(),
            behaviour: HashMap::new(),
            actions: Vec::new(),
            failing_commits: BTreeSet::new(),
            version,
        }
    }

    fn schedule(&mut self, at: u64, what: Scheduled) {
        self.seq += 1;
        self.queue.insert((at, self.seq), what);
    }

    /// Connects and checks in `n` agents (starting at index `from`) that behave as `b`.
    fn add_agents(&mut self, from: usize, n: usize, b: Behaviour) {
        for i in from..from + n {
            let agent = name(i);
            self.behaviour.insert(agent.clone(), b);
            self.schedule(self.now, Scheduled::Connect(agent.clone()));
            self.schedule(self.now, Scheduled::CheckIn(agent, Some(self.version)));
        }
    }

    fn event(&mut self, event: Event<'_>) -> Vec<Action> {
        let actions = self.coord.handle(self.now, event);
        for a in &actions {
            self.react(a);
        }
        self.actions.extend(actions.iter().cloned().map(|a| (self.now, a)));
        actions
    }

    fn react(&mut self, action: &Action) {
        match action {
            Action::SendPlan { agent, plan, .. } => {
                let at = |d: u64| self.now + d;
                let (round, agent) = (plan.round, agent.clone());
                match self.behaviour.get(&agent).copied().unwrap_or(Behaviour::Silent) {
                    Behaviour::Honest { latency } => {
                        let delta = delta_of(&agent);
                        self.schedule(at(latency), Scheduled::Update { agent, round, delta })
                    }
                    Behaviour::Late => {
                        let delta = delta_of(&agent);
                        self.schedule(at(plan.deadline_ms + 1), Scheduled::Update { agent, round, delta })
                    }
                    Behaviour::Fails { after } => self.schedule(at(after), Scheduled::Failed(agent, round)),
                    Behaviour::Disconnects { after } => self.schedule(at(after), Scheduled::Disconnect(agent)),
                    Behaviour::Silent => {}
                }
            }
            Action::Commit { record, .. } => {
                if self.failing_commits.contains(&record.round) {
                    self.schedule(self.now + 5, Scheduled::CommitFailed(record.round));
                } else {
                    self.schedule(self.now + 5, Scheduled::Committed(record.round));
                }
            }
            Action::WakeAt(t) => self.alarm.set(*t),
            _ => {}
        }
    }

    fn deliver(&mut self, what: Scheduled) {
        match what {
            Scheduled::Connect(agent) => self.event(Event::AgentConnected { agent }),
            Scheduled::CheckIn(agent, model_version) => {
                let examples = examples_of(&agent);
                self.event(Event::CheckIn { agent, model_version, examples })
            }
            Scheduled::Disconnect(agent) => self.event(Event::AgentDisconnected { agent }),
            Scheduled::Update { agent, round, delta } => {
                let examples = examples_of(&agent);
                self.event(Event::Update { agent, round, examples, train_loss: 0.25, delta: &delta })
            }
            Scheduled::Failed(agent, round) => {
                self.event(Event::UpdateFailed { agent, round, reason: "out of memory".into() })
            }
            Scheduled::Committed(round) => {
                self.version += 1;
                let version = self.version;
                self.event(Event::Committed { round, version })
            }
            Scheduled::CommitFailed(round) => {
                self.event(Event::CommitFailed { round, error: "No space left on device".into() })
            }
        };
    }

    /// Runs everything scheduled up to and including `until`.
    fn run_until(&mut self, until: u64) {
        loop {
            let next_event = self.queue.keys().next().map(|k| k.0);
            let next = match (next_event, self.alarm.pending()) {
                (Some(e), Some(w)) => e.min(w),
                (Some(e), None) => e,
                (None, Some(w)) => w,
                (None, None) => break,
            };
            if next > until {
                break;
            }
            self.now = self.now.max(next);
            if self.alarm.pending() == Some(next) && next_event != Some(next) {
                assert!(self.alarm.ring(self.now));
                self.event(Event::Tick);
            } else if let Some((_, what)) = self.queue.pop_first() {
                self.deliver(what);
            }
        }
        self.now = self.now.max(until);
    }

    fn plans(&self) -> Vec<(u64, AgentId, RoundPlan)> {
        self.actions
            .iter()
            .filter_map(|(t, a)| match a {
                Action::SendPlan { agent, plan } => Some((*t, agent.clone(), plan.clone())),
                _ => None,
            })
            .collect()
    }

    fn selected_in(&self, round: u64) -> Vec<AgentId> {
        self.plans().into_iter().filter(|(_, _, p)| p.round == round).map(|(_, a, _)| a).collect()
    }

    fn commits(&self) -> Vec<(u64, RoundRecord, Vec<f32>, Vec<u8>)> {
        self.actions
            .iter()
            .filter_map(|(t, a)| match a {
                Action::Commit { record, new_weights, strategy_state, .. } => {
                    Some((*t, (**record).clone(), new_weights.clone(), strategy_state.clone()))
                }
                _ => None,
            })
            .collect()
    }

    fn aborts(&self) -> Vec<(u64, u64, AbortReason)> {
        self.actions
            .iter()
            .filter_map(|(t, a)| match a {
                Action::RoundAborted { round, reason, .. } => Some((*t, *round, reason.clone())),
                _ => None,
            })
            .collect()
    }

    fn announces(&self) -> Vec<u64> {
        self.actions
            .iter()
            .filter_map(|(_, a)| match a {
                Action::Announce { version } => Some(*version),
                _ => None,
            })
            .collect()
    }

    fn rejects(&self) -> Vec<(AgentId, RejectReason)> {
        self.actions
            .iter()
            .filter_map(|(_, a)| match a {
                Action::Reject { agent, reason } => Some((agent.clone(), reason.clone())),
                _ => None,
            })
            .collect()
    }
}

/// The FedAvg result for `reporters`, computed independently of the coordinator.
fn fedavg(global: &[f32], reporters: &[AgentId]) -> Vec<f32> {
    let total: f64 = reporters.iter().map(|a| examples_of(a) as f64).sum();
    (0..global.len())
        .map(|k| {
            let s: f64 = reporters.iter().map(|a| examples_of(a) as f64 * delta_of(a)[k] as f64).sum();
            global[k] + (s / total) as f32
        })
        .collect()
}

/// Delivers the pending connections and check-ins, then asks for rounds.
fn started(mut sim: Sim, count: Option<u64>) -> Sim {
    sim.run_until(sim.now);
    sim.event(Event::StartRounds { count });
    sim
}

#[test]
fn a_round_completes_with_the_agents_that_reported_before_the_deadline() {
    let mut sim = Sim::new(Coordinator::new(config(10, 100, 0.1), fresh()).unwrap());
    sim.add_agents(0, 270, Behaviour::Honest { latency: 500 });
    sim.add_agents(270, 30, Behaviour::Silent);
    sim = started(sim, Some(1));
    sim.run_until(TIMEOUT + 1_000);

    let selected = sim.selected_in(1);
    // 300 available · 0.1 = 30, over-selected by 1.3 = 39.
    assert_eq!(selected.len(), 39);
    let commits = sim.commits();
    assert_eq!(commits.len(), 1);
    let (at, record, weights, _) = &commits[0];
    assert_eq!(*at, TIMEOUT, "a silent member keeps the round open until its deadline");
    let honest: Vec<AgentId> = selected.iter().filter(|a| sim.behaviour[*a] != Behaviour::Silent).cloned().collect();
    let silent: BTreeSet<AgentId> =
        selected.iter().filter(|a| sim.behaviour[*a] == Behaviour::Silent).cloned().collect();
    assert!(!silent.is_empty(), "the seed should select some silent agents");
    let reported: Vec<AgentId> = record.reported.iter().map(|r| r.agent.clone()).collect();
    assert_eq!(reported.iter().cloned().collect::<BTreeSet<_>>(), honest.iter().cloned().collect());
    assert_eq!(record.dropped.iter().map(|d| d.agent.clone()).collect::<BTreeSet<_>>(), silent);
    assert_eq!(record.outcome, Outcome::Completed);
    assert_eq!(record.metrics.total_examples, honest.iter().map(|a| examples_of(a)).sum::<u64>());
    assert_eq!(record.metrics.mean_train_loss, Some(0.25));
    // Plain updates travel in 8 bits by default: 8 values are a 4-byte scale and 8 bytes.
    assert_eq!(record.metrics.update_bytes, (honest.len() * (4 + DIM)) as u64);
    let expected = fedavg(&[0.5; DIM], &honest);
    for (w, e) in weights.iter().zip(&expected) {
        assert!((w - e).abs() < 1e-6, "{weights:?} vs {expected:?}");
    }
    // The stragglers are told to stop; the new version is announced only after the store confirmed it.
    let cancelled: BTreeSet<AgentId> = sim
        .actions
        .iter()
        .filter_map(|(_, a)| match a {
            Action::CancelTraining { agent, round: 1 } => Some(agent.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(cancelled, silent);
    assert_eq!(sim.announces(), vec![1]);
    assert_eq!(sim.coord.model_version(), 1);
    assert_eq!(sim.coord.global_weights(), weights.as_slice());
    assert_eq!(sim.coord.status().phase, Phase::Idle);
    assert!(!sim.coord.status().running, "one round was asked for");
}

#[test]
fn a_round_completes_early_once_every_selected_agent_reported() {
    let mut sim = Sim::new(Coordinator::new(config(5, 50, 0.5), fresh()).unwrap());
    sim.add_agents(0, 40, Behaviour::Honest { latency: 700 });
    sim = started(sim, Some(1));
    sim.run_until(TIMEOUT * 3);
    let commits = sim.commits();
    assert_eq!(commits.len(), 1);
    assert_eq!(commits[0].0, 700, "the round closes with the last report, not at the deadline");
    assert_eq!(commits[0].1.reported.len(), sim.selected_in(1).len());
    assert!(commits[0].1.dropped.is_empty());
}

#[test]
fn too_many_drop_outs_abort_the_round_and_a_new_round_starts_after_the_back_off() {
    let mut sim = Sim::new(Coordinator::new(config(10, 13, 1.0), fresh()).unwrap());
    sim.add_agents(0, 4, Behaviour::Honest { latency: 100 });
    sim.add_agents(4, 3, Behaviour::Fails { after: 200 });
    sim.add_agents(7, 3, Behaviour::Disconnects { after: 300 });
    sim.add_agents(10, 3, Behaviour::Silent);
    sim = started(sim, None);
    sim.run_until(2_000);
    assert_eq!(sim.selected_in(1).len(), 13);
    // After the failures and disconnections only 4 + 3 silent can still report: fewer than 10, so the round ends
    // at once instead of waiting for the deadline.
    let aborts = sim.aborts();
    assert_eq!(aborts.len(), 1);
    assert_eq!(aborts[0].0, 300);
    assert_eq!(aborts[0].1, 1);
    assert_eq!(aborts[0].2, AbortReason::TooFewReports { reported: 4, min_agents: 10 });
    assert!(sim.commits().is_empty());
    assert!(sim.announces().is_empty());

    // The three disconnected agents come back; after the back-off a new round starts with whoever is available.
    for i in 7..10 {
        sim.behaviour.insert(name(i), Behaviour::Honest { latency: 100 });
        sim.schedule(sim.now, Scheduled::Connect(name(i)));
        sim.schedule(sim.now, Scheduled::CheckIn(name(i), Some(0)));
    }
    sim.run_until(300 + BACKOFF + 50);
    let round2: Vec<_> = sim.plans().into_iter().filter(|(_, _, p)| p.round == 2).collect();
    assert_eq!(round2.len(), 13);
    assert_eq!(round2[0].0, 300 + BACKOFF, "the next round waits for the back-off");
    assert_eq!(round2[0].2.model_version, 0);
}

#[test]
fn a_round_without_enough_reports_by_the_deadline_aborts_and_the_record_says_why() {
    let mut sim = Sim::new(Coordinator::new(config(3, 10, 1.0), fresh()).unwrap());
    sim.add_agents(0, 2, Behaviour::Honest { latency: 10 });
    sim.add_agents(2, 3, Behaviour::Silent);
    sim = started(sim, None);
    sim.run_until(TIMEOUT + 1);
    let record = sim
        .actions
        .iter()
        .find_map(|(_, a)| match a {
            Action::RoundAborted { record, .. } => Some(record.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(record.ended_ms, TIMEOUT);
    assert_eq!(record.outcome, Outcome::Aborted(AbortReason::TooFewReports { reported: 2, min_agents: 3 }));
    assert_eq!(record.reported.len(), 2);
    assert_eq!(record.dropped.len(), 3);
    assert_eq!(sim.coord.model_version(), 0);
}

#[test]
fn stragglers_after_the_deadline_are_refused() {
    let mut sim = Sim::new(Coordinator::new(config(3, 10, 1.0), fresh()).unwrap());
    sim.add_agents(0, 5, Behaviour::Honest { latency: 50 });
    sim.add_agents(5, 2, Behaviour::Late);
    sim = started(sim, Some(1));
    sim.run_until(TIMEOUT * 2);
    let commits = sim.commits();
    assert_eq!(commits.len(), 1);
    assert_eq!(commits[0].1.reported.len(), 5);
    let rejects = sim.rejects();
    assert_eq!(rejects.len(), 2);
    for (agent, reason) in rejects {
        assert_eq!(sim.behaviour[&agent], Behaviour::Late);
        assert_eq!(reason, RejectReason::AfterDeadline);
    }
}

#[test]
fn an_update_that_arrives_after_the_deadline_is_refused_even_before_the_tick() {
    let mut coord = Coordinator::new(config(1, 10, 1.0), fresh()).unwrap();
    for i in 0..2 {
        coord.handle(0, Event::AgentConnected { agent: name(i) });
        coord.handle(0, Event::CheckIn { agent: name(i), model_version: Some(0), examples: 5 });
    }
    coord.handle(0, Event::StartRounds { count: None });
    let delta = vec![0.0; DIM];
    let late = Event::Update { agent: name(0), round: 1, examples: 5, train_loss: 0.1, delta: &delta };
    let actions = coord.handle(TIMEOUT, late);
    assert!(actions.contains(&Action::Reject { agent: name(0), reason: RejectReason::AfterDeadline }));
    assert!(actions.iter().any(|a| matches!(a, Action::RoundAborted { round: 1, .. })));
}

#[test]
fn updates_for_the_wrong_round_length_or_from_non_members_are_refused() {
    let mut coord = Coordinator::new(config(2, 3, 1.0), fresh()).unwrap();
    for i in 0..5 {
        coord.handle(0, Event::AgentConnected { agent: name(i) });
        coord.handle(0, Event::CheckIn { agent: name(i), model_version: Some(0), examples: 5 });
    }
    let actions = coord.handle(0, Event::StartRounds { count: None });
    let members: Vec<AgentId> = actions
        .iter()
        .filter_map(|a| match a {
            Action::SendPlan { agent, .. } => Some(agent.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(members.len(), 3);
    let outsider = (0..5).map(name).find(|a| !members.contains(a)).unwrap();
    let good = vec![0.1; DIM];
    let short = vec![0.1; DIM - 1];
    let nan = {
        let mut d = good.clone();
        d[3] = f32::NAN;
        d
    };
    let update = |agent: &AgentId, round, delta| Event::Update {
        agent: agent.clone(),
        round,
        examples: 5,
        train_loss: 0.3,
        delta,
    };
    let refused = |actions: Vec<Action>| -> RejectReason {
        actions
            .into_iter()
            .find_map(|a| match a {
                Action::Reject { reason, .. } => Some(reason),
                _ => None,
            })
            .unwrap()
    };
    assert_eq!(refused(coord.handle(1, update(&outsider, 1, &good))), RejectReason::NotSelected);
    assert_eq!(
        refused(coord.handle(1, update(&members[0], 7, &good))),
        RejectReason::WrongRound { expected: 1, got: 7 }
    );
    assert_eq!(refused(coord.handle(1, update(&"stranger".to_string(), 1, &good))), RejectReason::NotConnected);
    assert_eq!(
        refused(coord.handle(1, update(&members[0], 1, &short))),
        RejectReason::Invalid(FoldError::WrongLength { expected: DIM, got: DIM - 1 })
    );
    // A member whose update was invalid is dropped, not given a second try.
    assert!(matches!(refused(coord.handle(2, update(&members[0], 1, &good))), RejectReason::AlreadyDropped(_)));
    assert_eq!(
        refused(coord.handle(2, update(&members[1], 1, &nan))),
        RejectReason::Invalid(FoldError::NonFinite { index: 3 })
    );
    // Two of three members are dropped: with min 2 the round can no longer complete and aborts.
    let status = coord.status();
    assert_eq!(status.phase, Phase::Idle);
    assert_eq!(status.dropped, 0);
    assert!(matches!(refused(coord.handle(3, update(&members[2], 1, &good))), RejectReason::NoRoundInFlight));
}

#[test]
fn a_duplicate_update_is_refused_and_counted_once() {
    let mut coord = Coordinator::new(config(2, 3, 1.0), fresh()).unwrap();
    for i in 0..3 {
        coord.handle(0, Event::AgentConnected { agent: name(i) });
        coord.handle(0, Event::CheckIn { agent: name(i), model_version: Some(0), examples: 5 });
    }
    coord.handle(0, Event::StartRounds { count: None });
    let d = vec![0.1; DIM];
    let up = |i| Event::Update { agent: name(i), round: 1, examples: 5, train_loss: 0.3, delta: &d };
    assert!(coord.handle(1, up(0)).is_empty());
    let again = coord.handle(2, up(0));
    assert_eq!(again, vec![Action::Reject { agent: name(0), reason: RejectReason::Duplicate }]);
    assert_eq!(coord.status().reported, 1);
    let last = coord.handle(3, up(1));
    assert!(last.iter().all(|a| !matches!(a, Action::Commit { .. })), "one member is still training");
    let done = coord.handle(4, up(2));
    let record = done
        .iter()
        .find_map(|a| match a {
            Action::Commit { record, .. } => Some(record.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(record.metrics.total_examples, 15);
}

#[test]
fn a_plain_round_records_each_agents_federated_evaluation_and_their_totals_for_the_starting_version() {
    use fedge_shared::fedeval::EvalCounts;
    let mut coord = Coordinator::new(config(3, 3, 1.0), fresh()).unwrap();
    for i in 0..3 {
        coord.handle(0, Event::AgentConnected { agent: name(i) });
        coord.handle(0, Event::CheckIn { agent: name(i), model_version: Some(0), examples: 5 });
    }
    coord.handle(0, Event::StartRounds { count: None });
    let d = vec![0.1; DIM];
    let a = EvalCounts { correct: 7, examples: 10, loss_sum: 4.5 };
    let b = EvalCounts { correct: 1, examples: 4, loss_sum: 2.0 };
    let lie = EvalCounts { correct: 9, examples: 4, loss_sum: 1.0 };
    coord.handle(1, Event::Evaluated { agent: name(0), round: 1, counts: a });
    coord.handle(1, Event::Update { agent: name(0), round: 1, examples: 5, train_loss: 0.3, delta: &d });
    // Counts for another round, and implausible ones, are ignored; an agent may send none.
    coord.handle(1, Event::Evaluated { agent: name(1), round: 2, counts: a });
    coord.handle(1, Event::Evaluated { agent: name(2), round: 1, counts: lie });
    coord.handle(1, Event::Update { agent: name(2), round: 1, examples: 5, train_loss: 0.3, delta: &d });
    coord.handle(1, Event::Evaluated { agent: name(1), round: 1, counts: b });
    let done = coord.handle(2, Event::Update { agent: name(1), round: 1, examples: 5, train_loss: 0.3, delta: &d });
    let record = done
        .iter()
        .find_map(|a| match a {
            Action::Commit { record, .. } => Some(record.clone()),
            _ => None,
        })
        .unwrap();
    let per_agent: Vec<Option<EvalCounts>> = record.reported.iter().map(|r| r.eval).collect();
    assert_eq!(per_agent, vec![Some(a), None, Some(b)]);
    let fed = record.metrics.federated_eval.unwrap();
    assert_eq!((fed.model_version, fed.agents), (0, 2));
    assert_eq!(fed.counts, EvalCounts { correct: 8, examples: 14, loss_sum: 6.5 });
}

#[test]
fn an_agent_cannot_weigh_more_than_it_declared_or_than_the_configured_maximum() {
    let mut cfg = config(3, 3, 1.0);
    cfg.max_examples = Some(100);
    let mut coord = Coordinator::new(cfg, fresh()).unwrap();
    for (i, declared) in [(0, 10u64), (1, 1_000), (2, 50)] {
        coord.handle(0, Event::AgentConnected { agent: name(i) });
        coord.handle(0, Event::CheckIn { agent: name(i), model_version: Some(0), examples: declared });
    }
    coord.handle(0, Event::StartRounds { count: None });
    let (d0, d1, d2) = (vec![1.0; DIM], vec![-1.0; DIM], vec![0.0; DIM]);
    // Agent 0 claims 10⁹ examples but declared 10; agent 1 declared 1,000 but the cap is 100.
    coord.handle(1, Event::Update { agent: name(0), round: 1, examples: 1_000_000_000, train_loss: 0.1, delta: &d0 });
    coord.handle(1, Event::Update { agent: name(1), round: 1, examples: 1_000, train_loss: 0.1, delta: &d1 });
    let done = coord.handle(1, Event::Update { agent: name(2), round: 1, examples: 20, train_loss: 0.1, delta: &d2 });
    let (record, weights) = done
        .into_iter()
        .find_map(|a| match a {
            Action::Commit { record, new_weights, .. } => Some((record, new_weights)),
            _ => None,
        })
        .unwrap();
    assert_eq!(record.reported.iter().map(|r| r.examples).collect::<Vec<_>>(), vec![10, 100, 20]);
    // (10·1 + 100·(−1) + 20·0) / 130 = −90/130
    let expected = 0.5 - 90.0 / 130.0;
    assert!(weights.iter().all(|w| (w - expected).abs() < 1e-6), "{weights:?}");
}

#[test]
fn an_agent_that_disconnects_mid_round_is_dropped_and_the_round_completes_with_the_rest() {
    let mut sim = Sim::new(Coordinator::new(config(5, 200, 0.5), fresh()).unwrap());
    sim.add_agents(0, 150, Behaviour::Honest { latency: 1_000 });
    sim.add_agents(150, 50, Behaviour::Disconnects { after: 400 });
    sim = started(sim, Some(1));
    sim.run_until(TIMEOUT);
    let (_, record, weights, _) = sim.commits().pop().unwrap();
    let selected = sim.selected_in(1);
    let leavers: BTreeSet<_> =
        selected.iter().filter(|a| matches!(sim.behaviour[*a], Behaviour::Disconnects { .. })).cloned().collect();
    assert!(!leavers.is_empty());
    assert_eq!(record.dropped.iter().map(|d| d.agent.clone()).collect::<BTreeSet<_>>(), leavers);
    assert!(record.dropped.iter().all(|d| d.reason == "disconnected"));
    let reporters: Vec<AgentId> = record.reported.iter().map(|r| r.agent.clone()).collect();
    assert_eq!(reporters.len() + leavers.len(), selected.len());
    let expected = fedavg(&[0.5; DIM], &reporters);
    assert!(weights.iter().zip(&expected).all(|(w, e)| (w - e).abs() < 1e-6));
}

#[test]
fn selection_respects_min_fraction_and_max() {
    let rule = SelectionRule { min_agents: 10, max_agents: 100, fraction: 0.1, overselect: 1.3 };
    assert_eq!(rule.cohort_size(9), 0, "fewer than min: no round");
    assert_eq!(rule.cohort_size(10), 10, "min, even though 0.1 · 10 · 1.3 is 2");
    assert_eq!(rule.cohort_size(50), 13, "min 10 over-selected, no more than available");
    assert_eq!(rule.cohort_size(300), 39, "ceil(30 · 1.3)");
    assert_eq!(rule.cohort_size(5_000), 100, "capped by max");
    let exact = SelectionRule { min_agents: 2, max_agents: 1_000, fraction: 0.25, overselect: 1.0 };
    assert_eq!(exact.cohort_size(101), 26);
}

#[test]
fn the_coordinator_selects_the_cohort_size_the_rule_gives() {
    for (available, expected) in [(10usize, 10usize), (60, 13), (300, 39), (900, 100)] {
        let mut sim = Sim::new(Coordinator::new(config(10, 100, 0.1), fresh()).unwrap());
        sim.add_agents(0, available, Behaviour::Silent);
        sim.run_until(0);
        sim = started(sim, None);
        let selected = sim.selected_in(1);
        assert_eq!(selected.len(), expected, "{available} available");
        assert_eq!(selected.iter().collect::<BTreeSet<_>>().len(), expected, "no agent twice");
    }
}

#[test]
fn selection_is_reproducible_for_a_seed_and_changes_with_the_seed_and_the_round() {
    let candidates: Vec<AgentId> = (0..300).map(name).collect();
    let mut shuffled = candidates.clone();
    shuffled.reverse();
    let a = select(&candidates, 39, 42, 7);
    assert_eq!(a, select(&shuffled, 39, 42, 7), "the order the candidates come in does not matter");
    assert_ne!(a, select(&candidates, 39, 43, 7));
    assert_ne!(a, select(&candidates, 39, 42, 8));

    // Two coordinators fed the same events do the same thing.
    let run = || {
        let mut sim = Sim::new(Coordinator::new(config(10, 100, 0.1), fresh()).unwrap());
        sim.add_agents(0, 250, Behaviour::Honest { latency: 30 });
        sim = started(sim, Some(3));
        sim.run_until(100_000);
        sim.actions
    };
    let (first, second) = (run(), run());
    assert_eq!(first, second);
    assert_eq!(first.iter().filter(|(_, a)| matches!(a, Action::Announce { .. })).count(), 3);
}

#[test]
fn the_plan_carries_the_configured_hyper_parameters_a_round_seed_and_the_deadline() {
    let mut cfg = config(2, 10, 1.0);
    cfg.strategy = StrategyConfig::FedProx { mu: 0.05 };
    cfg.hyper = TrainHyper { epochs: 3, batch_size: 16, learning_rate: 0.1, ..TrainHyper::default() };
    let mut sim = Sim::new(Coordinator::new(cfg, fresh()).unwrap());
    sim.add_agents(0, 4, Behaviour::Honest { latency: 5 });
    sim.add_agents(4, 1, Behaviour::Honest { latency: 5 });
    sim.schedule(0, Scheduled::CheckIn(name(4), None));
    sim = started(sim, Some(2));
    sim.run_until(100);
    let plans = sim.plans();
    let r1: Vec<_> = plans.iter().filter(|p| p.2.round == 1).collect();
    let r2: Vec<_> = plans.iter().filter(|p| p.2.round == 2).collect();
    assert_eq!(r1.len(), 5);
    assert_eq!(r2.len(), 5);
    let h = &r1[0].2.hyper;
    assert_eq!((h.epochs, h.batch_size, h.learning_rate, h.prox_mu), (3, 16, 0.1, 0.05));
    assert_eq!(h.deadline_ms, TIMEOUT);
    assert_eq!(r1[0].2.deadline_ms, TIMEOUT);
    assert_ne!(r1[0].2.hyper.seed, r2[0].2.hyper.seed, "each round has its own seed");
    assert!(r2.iter().all(|p| p.2.model_version == 1), "everyone trains from version 1 in round 2");
}

#[test]
fn a_commit_failure_aborts_the_round_without_announcing_and_undoes_the_strategy_step() {
    let mut cfg = config(3, 10, 1.0);
    let params = AdaptiveParams { eta: 0.1, beta1: 0.9, beta2: 0.99, tau: 1e-3 };
    cfg.strategy =
        StrategyConfig::FedAdam { eta: params.eta, beta1: params.beta1, beta2: params.beta2, tau: params.tau };
    let mut sim = Sim::new(Coordinator::new(cfg, fresh()).unwrap());
    sim.failing_commits.insert(2);
    sim.add_agents(0, 6, Behaviour::Honest { latency: 100 });
    sim = started(sim, Some(2));
    // Round 1 commits at 100 (confirmed at 105); round 2 starts at 105, commits at 205 and fails at 210.
    sim.run_until(210);
    let aborts = sim.aborts();
    assert_eq!(aborts.len(), 1);
    assert_eq!(aborts[0].1, 2);
    assert!(matches!(&aborts[0].2, AbortReason::CommitFailed(e) if e.contains("No space")));
    assert_eq!(sim.announces(), vec![1], "the failed round announces nothing");
    let commits = sim.commits();
    assert_eq!(sim.coord.model_version(), 1);
    assert_eq!(sim.coord.global_weights(), commits[0].2.as_slice(), "the global model is still round 1's");

    // Round 3 (after the back-off) commits; its strategy state is two Adam steps (rounds 1 and 3), not three.
    sim.run_until(BACKOFF + 1_000);
    let commits = sim.commits();
    assert_eq!(commits.iter().map(|c| c.1.round).collect::<Vec<_>>(), vec![1, 2, 3]);
    let mean_of = |record: &RoundRecord| {
        let reporters: Vec<AgentId> = record.reported.iter().map(|r| r.agent.clone()).collect();
        fedavg(&[0.0; DIM], &reporters)
    };
    let mut adam = Adaptive::new(AdaptiveRule::Adam, params);
    let after_1 = adam.aggregate(&[0.5; DIM], RoundUpdates::Mean(&mean_of(&commits[0].1)), 1).unwrap();
    let after_3 = adam.aggregate(&after_1, RoundUpdates::Mean(&mean_of(&commits[2].1)), 3).unwrap();
    let (_, _, weights, state) = &commits[2];
    assert!(weights.iter().zip(&after_3).all(|(w, e)| (w - e).abs() < 1e-6), "{weights:?} vs {after_3:?}");
    assert_eq!(*state, adam.state());
    assert_eq!(sim.announces(), vec![1, 2]);
}

#[test]
fn pause_stops_new_rounds_resume_restarts_them_and_abort_ends_the_round_in_flight() {
    let mut sim = Sim::new(Coordinator::new(config(2, 10, 1.0), fresh()).unwrap());
    sim.add_agents(0, 5, Behaviour::Honest { latency: 1_000 });
    sim = started(sim, None);
    sim.run_until(10);
    assert_eq!(sim.coord.status().round, Some(1));
    // Pausing lets the round in flight finish but starts no other.
    sim.event(Event::Pause);
    sim.run_until(TIMEOUT * 5);
    assert_eq!(sim.announces(), vec![1]);
    assert!(sim.selected_in(2).is_empty());
    assert!(sim.coord.status().paused);
    sim.event(Event::Resume);
    assert_eq!(sim.selected_in(2).len(), 5);
    // The operator aborts round 2: it is recorded as aborted, its members are told to stop, nothing is committed.
    sim.run_until(sim.now + 10);
    sim.event(Event::AbortRound);
    let aborts = sim.aborts();
    assert_eq!(aborts.len(), 1);
    assert_eq!((aborts[0].1, aborts[0].2.clone()), (2, AbortReason::Operator));
    let cancelled = sim.actions.iter().filter(|(_, a)| matches!(a, Action::CancelTraining { round: 2, .. })).count();
    assert_eq!(cancelled, 5);
    // Their late updates for round 2 are refused, and round 3 starts after the back-off.
    sim.run_until(sim.now + BACKOFF);
    let rejects = sim.rejects();
    assert_eq!(rejects.len(), 5);
    assert!(rejects.iter().all(|(_, r)| *r == RejectReason::NoRoundInFlight));
    assert_eq!(sim.selected_in(3).len(), 5);
    assert_eq!(sim.commits().len(), 1);
    // Aborting with nothing in flight is only a message.
    let mut idle = Coordinator::new(config(2, 10, 1.0), fresh()).unwrap();
    let actions = idle.handle(0, Event::AbortRound);
    assert!(matches!(actions.as_slice(), [Action::Log { .. }]));
}

#[test]
fn no_round_starts_while_the_disk_is_short_of_space_and_rounds_resume_when_it_has_room() {
    let mut sim = Sim::new(Coordinator::new(config(2, 10, 1.0), fresh()).unwrap());
    sim.add_agents(0, 4, Behaviour::Honest { latency: 1_000 });
    sim = started(sim, None);
    sim.run_until(10);
    assert_eq!(sim.coord.status().round, Some(1));
    // The disk fills up during round 1: the round in flight still commits, but round 2 does not start.
    let why = "only 1.0 MiB free on the disk of /db (a commit needs 9.0 MiB)".to_string();
    let actions = sim.event(Event::Storage { low: Some(why.clone()) });
    assert!(
        actions.iter().any(|a| matches!(a, Action::Log { message } if message.contains("not starting rounds") && message.contains(&why))),
        "the reason is logged: {actions:?}"
    );
    sim.run_until(TIMEOUT * 5);
    assert_eq!(sim.announces(), vec![1]);
    assert!(sim.selected_in(2).is_empty(), "no round starts on a full disk");
    assert_eq!(sim.coord.status().storage_low.as_deref(), Some(why.as_str()));
    // The coordinator keeps asking for ticks so that the shell can look at the disk again.
    let last_wake = sim.actions.iter().rev().find_map(|(t, a)| match a {
        Action::WakeAt(at) => Some((*t, *at)),
        _ => None,
    });
    let (asked_at, wake_at) = last_wake.expect("a wake-up is requested while the disk is full");
    assert!(wake_at > asked_at && wake_at <= asked_at + fedge_server::coordinator::STORAGE_RECHECK_MS);
    // Space is freed: the next round starts at once.
    sim.event(Event::Storage { low: None });
    assert_eq!(sim.selected_in(2).len(), 4);
    assert_eq!(sim.coord.status().storage_low, None);
}

#[test]
fn no_round_starts_until_min_available_agents_have_checked_in() {
    let mut cfg = config(3, 10, 1.0);
    cfg.min_available = Some(6);
    let mut coord = Coordinator::new(cfg, fresh()).unwrap();
    coord.handle(0, Event::StartRounds { count: None });
    for i in 0..6 {
        let connected = coord.handle(i, Event::AgentConnected { agent: name(i as usize) });
        assert!(connected.iter().all(|a| !matches!(a, Action::SendPlan { .. })), "connected is not checked in");
        let checked = coord.handle(i, Event::CheckIn { agent: name(i as usize), model_version: None, examples: 9 });
        let plans = checked.iter().filter(|a| matches!(a, Action::SendPlan { .. })).count();
        assert_eq!(plans, if i == 5 { 6 } else { 0 }, "after {} check-ins", i + 1);
    }
    // A check-in from an agent that is not connected is refused; agents without examples are never selected.
    let mut coord = Coordinator::new(config(1, 10, 1.0), fresh()).unwrap();
    coord.handle(0, Event::StartRounds { count: None });
    let stray = coord.handle(0, Event::CheckIn { agent: name(1), model_version: None, examples: 9 });
    assert_eq!(stray, vec![Action::Reject { agent: name(1), reason: RejectReason::NotConnected }]);
    coord.handle(0, Event::AgentConnected { agent: name(1) });
    let empty = coord.handle(0, Event::CheckIn { agent: name(1), model_version: None, examples: 0 });
    assert!(empty.is_empty());
}

#[test]
fn start_rounds_with_a_count_stops_after_that_many_committed_rounds() {
    let mut sim = Sim::new(Coordinator::new(config(3, 20, 1.0), fresh()).unwrap());
    sim.add_agents(0, 8, Behaviour::Honest { latency: 100 });
    sim = started(sim, Some(4));
    sim.run_until(1_000_000);
    assert_eq!(sim.announces(), vec![1, 2, 3, 4]);
    assert_eq!(sim.commits().iter().map(|c| c.1.round).collect::<Vec<_>>(), vec![1, 2, 3, 4]);
    assert_eq!(sim.coord.status().remaining, Some(0));
    assert!(sim.selected_in(5).is_empty());
}

#[test]
fn a_restarted_coordinator_continues_from_the_resume_state_with_fresh_round_ids() {
    let state = ResumeState { model_version: 7, weights: vec![1.0; DIM], next_round: 31, strategy_state: Vec::new() };
    let mut sim = Sim::new(Coordinator::new(config(2, 10, 1.0), state).unwrap());
    sim.add_agents(0, 3, Behaviour::Honest { latency: 10 });
    sim = started(sim, Some(1));
    sim.run_until(1_000);
    let plans = sim.plans();
    assert!(plans.iter().all(|p| p.2.round == 31 && p.2.model_version == 7));
    assert_eq!(sim.commits()[0].1.round, 31);
    assert_eq!(sim.coord.status().next_round, 32);
    assert_eq!(sim.announces(), vec![8]);
}

#[test]
fn a_bad_configuration_or_a_foreign_strategy_state_is_refused_at_start() {
    for bad in [
        CoordinatorConfig { min_agents: 0, ..config(1, 10, 1.0) },
        CoordinatorConfig { max_agents: 4, ..config(5, 10, 1.0) },
        CoordinatorConfig { fraction: 0.0, ..config(1, 10, 1.0) },
        CoordinatorConfig { fraction: 1.5, ..config(1, 10, 1.0) },
        CoordinatorConfig { overselect: 0.9, ..config(1, 10, 1.0) },
        CoordinatorConfig { round_timeout_ms: 0, ..config(1, 10, 1.0) },
        CoordinatorConfig { max_examples: Some(0), ..config(1, 10, 1.0) },
        CoordinatorConfig { min_available: Some(1), ..config(2, 10, 1.0) },
        CoordinatorConfig { hyper: TrainHyper { batch_size: 0, ..TrainHyper::default() }, ..config(1, 10, 1.0) },
    ] {
        assert!(Coordinator::new(bad.clone(), fresh()).is_err(), "{bad:?}");
    }
    let mut cfg = config(1, 10, 1.0);
    cfg.strategy = StrategyConfig::FedYogi { eta: 0.1, beta1: 0.9, beta2: 0.99, tau: 1e-3 };
    let mut adam = Adaptive::new(AdaptiveRule::Adam, AdaptiveParams { eta: 0.1, beta1: 0.9, beta2: 0.99, tau: 1e-3 });
    adam.aggregate(&[0.0; DIM], RoundUpdates::Mean(&[0.1; DIM]), 1).unwrap();
    let state = ResumeState { strategy_state: adam.state(), ..fresh() };
    assert!(Coordinator::new(cfg, state).is_err());
}

#[test]
fn hundreds_of_agents_with_random_behaviour_over_many_rounds_keep_every_invariant() {
    let mut rng = ChaCha8Rng::seed_from_u64(2026);
    let mut sim = Sim::new(Coordinator::new(config(20, 120, 0.2), fresh()).unwrap());
    for i in 0..600 {
        let b = match rng.gen_range(0..100) {
            0..=79 => Behaviour::Honest { latency: rng.gen_range(10..TIMEOUT + 2_000) },
            80..=87 => Behaviour::Silent,
            88..=93 => Behaviour::Fails { after: rng.gen_range(10..TIMEOUT) },
            _ => Behaviour::Disconnects { after: rng.gen_range(10..TIMEOUT) },
        };
        sim.add_agents(i, 1, b);
    }
    sim = started(sim, Some(15));
    sim.run_until(2_000_000);
    let commits = sim.commits();
    assert_eq!(sim.announces(), (1..=15).collect::<Vec<u64>>());
    let mut seen_rounds = BTreeSet::new();
    let mut last = 0;
    for (_, record, _, _) in &commits {
        assert!(record.reported.len() >= 20);
        assert!(record.selected.len() <= 120);
        assert_eq!(record.reported.len() + record.dropped.len(), record.selected.len());
        assert!(record.reported.iter().all(|r| r.after_ms < TIMEOUT));
        assert!(record.round > last);
        last = record.round;
        assert!(seen_rounds.insert(record.round));
    }
    for (_, round, _) in sim.aborts() {
        assert!(seen_rounds.insert(round), "round {round} was used twice");
    }
    // Announcements come only after a confirmed commit, in order.
    let mut pending_commit = false;
    for (_, a) in &sim.actions {
        match a {
            Action::Commit { .. } => pending_commit = true,
            Action::Announce { .. } => {
                assert!(pending_commit);
                pending_commit = false;
            }
            Action::SendPlan { .. } => assert!(!pending_commit, "no round starts while a commit is pending"),
            _ => {}
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]
    #[test]
    fn the_cohort_size_stays_within_min_max_and_what_is_available(
        min in 1usize..50, extra in 0usize..200, fraction in 0.01f64..1.0, overselect in 1.0f64..2.0,
        available in 0usize..2_000,
    ) {
        let rule = SelectionRule { min_agents: min, max_agents: min + extra, fraction, overselect };
        let size = rule.cohort_size(available);
        if available < min {
            prop_assert_eq!(size, 0);
        } else {
            prop_assert!(size >= min);
            prop_assert!(size <= min + extra);
            prop_assert!(size <= available);
            let wanted = ((fraction * available as f64).ceil() as usize).min(min + extra).min(available);
            prop_assert!(size >= wanted);
        }
    }

    #[test]
    fn a_selection_is_a_subset_without_repeats(n in 1usize..400, k in 0usize..400, seed in any::<u64>(), round in any::<u64>()) {
        let candidates: Vec<AgentId> = (0..n).map(name).collect();
        let chosen = select(&candidates, k, seed, round);
        prop_assert_eq!(chosen.len(), k.min(n));
        let set: BTreeSet<_> = chosen.iter().collect();
        prop_assert_eq!(set.len(), chosen.len());
        prop_assert!(chosen.iter().all(|c| candidates.contains(c)));
    }
}

#[test]
fn a_coordinator_section_of_server_toml_parses_with_its_defaults() {
    let text = r#"
        min_agents = 10
        max_agents = 200
        fraction = 0.1
        round_timeout_ms = 60000
        strategy = { kind = "fedyogi", eta = 0.01 }
        [hyper]
        epochs = 2
        batch_size = 32
        learning_rate = 0.05
        optimizer = "adam"
    "#;
    let cfg: CoordinatorConfig = toml::from_str(text).unwrap();
    assert_eq!(cfg.overselect, 1.3);
    assert_eq!(cfg.retry_backoff_ms, 5_000);
    assert_eq!(cfg.min_available(), 10);
    assert_eq!(cfg.hyper.optimizer, fedge_server::coordinator::OptimizerKind::Adam);
    assert_eq!(cfg.hyper.prox_mu, 0.0);
    assert!(matches!(cfg.strategy, StrategyConfig::FedYogi { eta, .. } if eta == 0.01));
    assert!(cfg.validate().is_ok());
    let typo = text.replace("fraction", "fractoin");
    assert!(toml::from_str::<CoordinatorConfig>(&typo).is_err(), "unknown keys are refused");
}

#[test]
fn a_reconnecting_member_is_dropped_and_stray_confirmations_change_nothing() {
    let mut coord = Coordinator::new(config(2, 3, 1.0), fresh()).unwrap();
    for i in 0..3 {
        coord.handle(0, Event::AgentConnected { agent: name(i) });
        coord.handle(0, Event::CheckIn { agent: name(i), model_version: Some(0), examples: 5 });
    }
    coord.handle(0, Event::StartRounds { count: None });
    assert_eq!(coord.status().selected, 3);
    // A new connection under the same name loses what the old one was doing.
    coord.handle(5, Event::AgentConnected { agent: name(0) });
    assert_eq!(coord.status().dropped, 1);
    let d = vec![0.2; DIM];
    let late = coord.handle(6, Event::Update { agent: name(0), round: 1, examples: 5, train_loss: 0.1, delta: &d });
    assert!(
        matches!(late.as_slice(), [Action::Reject { reason: RejectReason::AlreadyDropped(r), .. }] if r == "reconnected")
    );
    // A failure report for another round, and commit confirmations nobody asked for, are ignored.
    assert!(coord.handle(7, Event::UpdateFailed { agent: name(1), round: 9, reason: "x".into() }).is_empty());
    assert_eq!(coord.status().dropped, 1);
    let stray = coord.handle(8, Event::Committed { round: 1, version: 1 });
    assert!(matches!(stray.as_slice(), [Action::Log { .. }]));
    let stray = coord.handle(8, Event::CommitFailed { round: 1, error: "x".into() });
    assert!(matches!(stray.as_slice(), [Action::Log { .. }]));
    assert_eq!(coord.model_version(), 0);
    assert_eq!(coord.status().phase, Phase::Collecting);
    // The two remaining members complete the round.
    coord.handle(9, Event::Update { agent: name(1), round: 1, examples: 5, train_loss: 0.1, delta: &d });
    let done = coord.handle(9, Event::Update { agent: name(2), round: 1, examples: 5, train_loss: 0.1, delta: &d });
    assert!(done.iter().any(|a| matches!(a, Action::Commit { record, .. } if record.reported.len() == 2)));
    assert_eq!(coord.status().phase, Phase::Committing);
    // A commit confirmation for the wrong round is ignored; the right one announces.
    assert!(matches!(coord.handle(10, Event::Committed { round: 2, version: 1 }).as_slice(), [Action::Log { .. }]));
    let ok = coord.handle(10, Event::Committed { round: 1, version: 1 });
    assert!(ok.contains(&Action::Announce { version: 1 }));
}

#[test]
fn a_round_that_starts_while_an_earlier_wake_up_is_pending_closes_at_its_own_deadline() {
    // The shell's wake-up handling (`fedge_server::clock::Alarm`, as the core carries out `WakeAt`) is driven
    // through the sequence that once lost deadlines: an earlier wake-up is pending (the disk re-check) when the
    // coordinator asks for a later one (the deadline of the round that has just started, with a silent member).
    let mut sim = Sim::new(Coordinator::new(config(1, 10, 1.0), fresh()).unwrap());
    sim.add_agents(0, 1, Behaviour::Honest { latency: 100 });
    sim.add_agents(1, 1, Behaviour::Silent);
    sim.event(Event::Storage { low: Some("the disk is full".into()) });
    sim = started(sim, Some(1));
    sim.run_until(500);
    let earlier = sim.alarm.pending().expect("the disk re-check is pending");
    assert!(earlier > 500 && earlier < 500 + TIMEOUT, "{earlier}");
    sim.event(Event::Storage { low: None });
    assert_eq!(sim.selected_in(1).len(), 2, "the round starts once the disk has room");
    assert_eq!(sim.alarm.pending(), Some(500 + TIMEOUT), "the round's deadline replaced the earlier wake-up");
    sim.run_until(500 + TIMEOUT + 1_000);
    let commits = sim.commits();
    assert_eq!(commits.len(), 1, "{:?}", sim.aborts());
    let (at, record, _, _) = &commits[0];
    assert_eq!((*at, record.started_ms, record.ended_ms), (500 + TIMEOUT, 500, 500 + TIMEOUT));
    assert_eq!(record.dropped.len(), 1, "the silent member is dropped at the deadline");
}

#[test]
fn after_each_tick_the_coordinator_asks_again_for_the_wake_up_it_still_needs() {
    // A shell whose alarm rang early (or that fed a Tick of its own) has spent its alarm: the coordinator must ask
    // again, or the deadline is lost.
    let mut coord = Coordinator::new(config(1, 10, 1.0), fresh()).unwrap();
    for agent in [name(0), name(1)] {
        coord.handle(0, Event::AgentConnected { agent: agent.clone() });
        coord.handle(0, Event::CheckIn { agent, model_version: Some(0), examples: 10 });
    }
    let first = coord.handle(0, Event::StartRounds { count: Some(1) });
    assert!(first.contains(&Action::WakeAt(TIMEOUT)), "{first:?}");
    let again = coord.handle(TIMEOUT / 2, Event::Tick);
    assert_eq!(again, vec![Action::WakeAt(TIMEOUT)]);
}

#[test]
fn an_agent_whose_connection_is_silent_is_not_selected_until_it_is_heard_from_again() {
    let mut coord = Coordinator::new(config(1, 10, 1.0), fresh()).unwrap();
    for i in 0..3 {
        coord.handle(0, Event::AgentConnected { agent: name(i) });
        coord.handle(0, Event::CheckIn { agent: name(i), model_version: Some(0), examples: 10 });
    }
    coord.handle(0, Event::AgentSilent { agent: name(2), silent: true });
    assert_eq!(coord.status().available, 2);
    let planned = |actions: &[Action]| -> Vec<AgentId> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::SendPlan { agent, .. } => Some(agent.clone()),
                _ => None,
            })
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect()
    };
    let first = coord.handle(0, Event::StartRounds { count: None });
    assert_eq!(planned(&first), vec![name(0), name(1)], "the silent agent is skipped");
    for i in 0..2 {
        coord.handle(10, Event::Update { agent: name(i), round: 1, examples: 10, train_loss: 0.1, delta: &[0.0; DIM] });
    }
    coord.handle(15, Event::AgentSilent { agent: name(2), silent: false });
    let second = coord.handle(20, Event::Committed { round: 1, version: 1 });
    assert_eq!(planned(&second), vec![name(0), name(1), name(2)], "heard from again, it is selected again");
}

#[test]
fn a_round_whose_missing_members_have_all_disconnected_ends_at_once() {
    let mut coord = Coordinator::new(config(1, 10, 1.0), fresh()).unwrap();
    for i in 0..3 {
        coord.handle(0, Event::AgentConnected { agent: name(i) });
        coord.handle(0, Event::CheckIn { agent: name(i), model_version: Some(0), examples: 10 });
    }
    coord.handle(0, Event::StartRounds { count: Some(1) });
    coord.handle(100, Event::Update { agent: name(0), round: 1, examples: 10, train_loss: 0.1, delta: &[0.0; DIM] });
    assert!(
        !coord
            .handle(200, Event::AgentDisconnected { agent: name(1) })
            .iter()
            .any(|a| matches!(a, Action::Commit { .. }))
    );
    let actions = coord.handle(300, Event::AgentDisconnected { agent: name(2) });
    let Some(Action::Commit { record, .. }) = actions.iter().find(|a| matches!(a, Action::Commit { .. })) else {
        panic!("the round closes when its last missing member disconnects: {actions:?}")
    };
    assert_eq!((record.ended_ms, record.reported.len(), record.dropped.len()), (300, 1, 2));
}

/// A model of 8 parameters whose head is split in two by the body (the part is not one contiguous range).
fn head_and_body() -> Vec<fedge_shared::train::ParamInfo> {
    let mut offset = 0;
    [("body.weight", 3), ("head.weight", 2), ("body.bias", 2), ("head.bias", 1)]
        .iter()
        .map(|(n, len)| {
            let p = fedge_shared::train::ParamInfo { name: n.to_string(), shape: vec![*len], offset, len: *len };
            offset += len;
            p
        })
        .collect()
}

fn plan_of(out: &[Action]) -> Option<RoundPlan> {
    out.iter().find_map(|a| match a {
        Action::SendPlan { plan, .. } => Some(plan.clone()),
        _ => None,
    })
}

#[test]
fn a_plain_rounds_update_bytes_are_what_its_upload_encoding_carried() {
    // 300 values: 1,200 bytes exact; in 8 bits a block of 256 and one of 44, each behind a 4-byte scale.
    for (upload, per_update) in [(DeltaEncoding::F32, 1_200u64), (DeltaEncoding::Int8, 4 + 256 + 4 + 44)] {
        let mut cfg = config(2, 2, 1.0);
        cfg.overselect = 1.0;
        cfg.hyper.upload = upload;
        let resume = ResumeState { weights: vec![0.0; 300], ..fresh() };
        let mut c = Coordinator::new(cfg, resume).unwrap();
        for a in ["a", "b"] {
            c.handle(0, Event::AgentConnected { agent: a.into() });
            c.handle(0, Event::CheckIn { agent: a.into(), model_version: Some(0), examples: 100 });
        }
        let plan = plan_of(&c.handle(0, Event::StartRounds { count: Some(1) })).expect("a round starts");
        assert_eq!(plan.hyper.upload, upload);
        let delta = vec![0.01f32; 300];
        let up = |a: &str| Event::Update {
            agent: a.into(),
            round: plan.round,
            examples: 10,
            train_loss: 0.1,
            delta: &delta,
        };
        c.handle(1, up("a"));
        let record = c
            .handle(2, up("b"))
            .into_iter()
            .find_map(|a| match a {
                Action::Commit { record, .. } => Some(record),
                _ => None,
            })
            .expect("the round commits");
        assert_eq!(record.metrics.update_bytes, 2 * per_update, "{upload:?}");
    }
}

#[test]
fn a_fine_tuning_round_takes_updates_of_the_trained_part_only_and_leaves_the_frozen_weights_bit_for_bit() {
    let mut cfg = config(2, 3, 1.0);
    cfg.overselect = 1.0;
    cfg.hyper.trainable = vec!["head.*".into()];
    // A negative zero among the frozen weights: `x + 0.0` would turn it into +0.0, untouched it stays -0.0.
    let global = vec![0.5, -0.0, 1.5, 0.25, -0.75, 2.0, f32::MIN_POSITIVE, 3.0];
    let resume = ResumeState { weights: global.clone(), ..fresh() };
    let mut c = Coordinator::new(cfg, resume).unwrap().with_layout(head_and_body()).unwrap();
    for a in ["a", "b", "c"] {
        c.handle(0, Event::AgentConnected { agent: a.into() });
        c.handle(0, Event::CheckIn { agent: a.into(), model_version: Some(0), examples: 100 });
    }
    let plan = plan_of(&c.handle(0, Event::StartRounds { count: Some(1) })).expect("a round starts");
    assert_eq!(plan.hyper.trainable, ["head.*"]);
    // head.weight (2 values at 3..5) and head.bias (1 value at 7): updates are 3 long.
    let whole = [0.1f32; 8];
    let out = c.handle(
        1,
        Event::Update { agent: "c".into(), round: plan.round, examples: 10, train_loss: 0.1, delta: &whole },
    );
    assert!(
        out.iter().any(|a| matches!(
            a,
            Action::Reject { reason: RejectReason::Invalid(FoldError::WrongLength { expected: 3, got: 8 }), .. }
        )),
        "a whole-model update is refused in a fine-tuning round: {out:?}"
    );
    c.handle(
        2,
        Event::Update {
            agent: "a".into(),
            round: plan.round,
            examples: 10,
            train_loss: 0.1,
            delta: &[0.5, -1.0, 0.25],
        },
    );
    let out = c.handle(
        3,
        Event::Update { agent: "b".into(), round: plan.round, examples: 30, train_loss: 0.1, delta: &[0.1, 0.2, 0.3] },
    );
    let (record, new) = out
        .iter()
        .find_map(|a| match a {
            Action::Commit { record, new_weights, .. } => Some((record.clone(), new_weights.clone())),
            _ => None,
        })
        .expect("the round commits with the two part-length updates");
    assert_eq!(record.metrics.update_bytes, 2 * (4 + 4), "two updates of 3 values in 8 bits (a scale, 3 bytes padded)");
    let mean = [(0.5 + 3.0 * 0.1) / 4.0, (-1.0 + 3.0 * 0.2) / 4.0, (0.25 + 3.0 * 0.3) / 4.0];
    for (i, (n, g)) in new.iter().zip(&global).enumerate() {
        match [3, 4, 7].iter().position(|&p| p == i) {
            Some(k) => assert!((n - (g + mean[k] as f32)).abs() < 1e-6, "trained weight {i}: {n} vs {g} + {}", mean[k]),
            None => assert_eq!(n.to_bits(), g.to_bits(), "frozen weight {i} changed: {n} vs {g}"),
        }
    }
}

#[test]
fn an_adaptive_strategy_fine_tunes_the_part_and_keeps_the_moments_of_the_frozen_weights() {
    let layout = head_and_body();
    let part = fedge_shared::train::TrainablePart::select(&layout, &["head.*".to_string()]).unwrap();
    let params = AdaptiveParams { eta: 0.1, beta1: 0.9, beta2: 0.99, tau: 0.001 };
    for rule in [AdaptiveRule::Adam, AdaptiveRule::Yogi] {
        let global: Vec<f32> = (0..8).map(|i| i as f32 * 0.25 - 1.0).collect();
        // A first whole-model round gives every coordinate moments.
        let mut s = Adaptive::new(rule, params);
        let first = s.aggregate(&global, RoundUpdates::Mean(&[0.2; 8]), 1).unwrap();
        let (m0, v0) = (s.moments().0.to_vec(), s.moments().1.to_vec());
        let second = s.aggregate_part(&first, &part, RoundUpdates::Mean(&[0.5, -0.5, 0.25]), 2).unwrap();
        // The trained part moves exactly as the same strategy on the part alone would move it.
        let mut on_part = Adaptive::new(rule, params);
        let _ = on_part.aggregate(&part.gather(&global).unwrap(), RoundUpdates::Mean(&[0.2; 3]), 1).unwrap();
        let expected =
            on_part.aggregate(&part.gather(&first).unwrap(), RoundUpdates::Mean(&[0.5, -0.5, 0.25]), 2).unwrap();
        assert_eq!(part.gather(&second).unwrap(), expected, "{rule:?}");
        assert_eq!(part.gather(s.moments().0).unwrap(), on_part.moments().0, "{rule:?}");
        for i in [0, 1, 2, 5, 6] {
            assert_eq!(second[i].to_bits(), first[i].to_bits(), "{rule:?}: frozen weight {i} moved");
            assert_eq!((s.moments().0[i], s.moments().1[i]), (m0[i], v0[i]), "{rule:?}: frozen moment {i} moved");
        }
        // A mean of the wrong length is an error, and the state does not move.
        let before = s.state();
        assert!(s.aggregate_part(&second, &part, RoundUpdates::Mean(&[0.1; 8]), 3).is_err());
        assert_eq!(s.state(), before);
    }
    // FedAvg and FedProx: x + Δ on the part, the rest copied.
    for kind in [StrategyConfig::FedAvg, StrategyConfig::FedProx { mu: 0.1 }] {
        let mut s = kind.build().unwrap();
        let global = vec![-0.0f32, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0];
        let out = s.aggregate_part(&global, &part, RoundUpdates::Mean(&[1.0, 2.0, 3.0]), 1).unwrap();
        assert_eq!(out, [-0.0, 1.0, 2.0, 4.0, 6.0, 5.0, 6.0, 10.0]);
        assert_eq!(out[0].to_bits(), (-0.0f32).to_bits());
    }
}

#[test]
fn trainable_patterns_that_match_no_weight_are_refused_when_configured_before_any_round_starts() {
    let mut cfg = config(2, 3, 1.0);
    cfg.hyper.trainable = vec!["head.*".into(), "classifier.*".into()];
    let resume = ResumeState { weights: vec![0.0; 8], ..fresh() };
    let e = Coordinator::new(cfg.clone(), resume.clone()).unwrap().with_layout(head_and_body()).unwrap_err();
    assert!(
        e.to_string().contains("\"classifier.*\" matches no weight") && e.to_string().contains("body.weight"),
        "{e}"
    );
    // Not a glob at all: refused by the configuration's own validation.
    cfg.hyper.trainable = vec!["head.[".into()];
    let e = Coordinator::new(cfg.clone(), resume.clone()).unwrap_err();
    assert!(e.to_string().contains("\"head.[\""), "{e}");
    // An operator's setting on a running coordinator: refused, the configuration in force is kept.
    cfg.hyper.trainable = vec![];
    let mut c = Coordinator::new(cfg.clone(), resume.clone()).unwrap().with_layout(head_and_body()).unwrap();
    cfg.hyper.trainable = vec!["classifier.*".into()];
    let e = c.set_config(cfg.clone()).unwrap_err();
    assert!(e.to_string().contains("\"classifier.*\" matches no weight"), "{e}");
    assert!(c.config().hyper.trainable.is_empty());
    cfg.hyper.trainable = vec!["*.bias".into()];
    c.set_config(cfg.clone()).unwrap();
    // A layout that does not cover the global weights is refused.
    let e = Coordinator::new(config(2, 3, 1.0), ResumeState { weights: vec![0.0; 9], ..fresh() })
        .unwrap()
        .with_layout(head_and_body())
        .unwrap_err();
    assert!(e.to_string().contains("8 parameters") && e.to_string().contains("9"), "{e}");
    // Without the model's weight names no fine-tuning round starts, and no plan is sent.
    let mut blind = Coordinator::new(cfg, resume).unwrap();
    for a in ["a", "b"] {
        blind.handle(0, Event::AgentConnected { agent: a.into() });
        blind.handle(0, Event::CheckIn { agent: a.into(), model_version: Some(0), examples: 10 });
    }
    let out = blind.handle(0, Event::StartRounds { count: Some(1) });
    assert!(plan_of(&out).is_none(), "{out:?}");
    assert!(out.iter().any(|a| matches!(a, Action::Log { message } if message.contains("weight names"))), "{out:?}");
}

#[test]
fn the_round_in_flight_is_what_the_status_says_at_every_step_of_a_round() {
    let mut sim = Sim::new(Coordinator::new(config(2, 10, 1.0), fresh()).unwrap());
    sim.add_agents(0, 5, Behaviour::Honest { latency: 700 });
    sim.add_agents(5, 2, Behaviour::Silent);
    assert_eq!(sim.coord.round_in_flight(), None);
    sim = started(sim, Some(2));
    let mut seen = BTreeSet::new();
    let mut t = 0;
    while t < TIMEOUT * 3 {
        t += 100;
        sim.run_until(t);
        assert_eq!(sim.coord.round_in_flight(), sim.coord.status().round, "at {t} ms");
        seen.extend(sim.coord.round_in_flight());
    }
    assert_eq!(seen, BTreeSet::from([1, 2]), "both rounds were seen in flight");
    assert_eq!(sim.coord.round_in_flight(), None, "idle after the last round");
}
