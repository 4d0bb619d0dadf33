//! Buffered asynchronous aggregation (FedBuff), as the coordinator's `buffered` module documents it, one guarantee a
//! test: a buffer completes with its first K updates, slow agents are carried instead of stopped, their update counts
//! later with its examples discounted by its staleness, an update that arrives between buffers is kept, and agents
//! too far behind, or still training when the run ends, are told to stop with the round their plan named.

use fedge_server::coordinator::{
    AbortReason, Action, AgentId, BufferedConfig, Coordinator, CoordinatorConfig, Event, RejectReason, ResumeState,
    RoundPlan, RoundRecord, SecAggConfig, TrainHyper,
};
use fedge_server::strategy::StrategyConfig;

const DIM: usize = 4;
const TIMEOUT: u64 = 10_000;

fn config(min_agents: usize, max_agents: usize) -> CoordinatorConfig {
    CoordinatorConfig {
        min_agents,
        min_available: None,
        max_agents,
        fraction: 1.0,
        overselect: 1.0,
        seed: 7,
        round_timeout_ms: TIMEOUT,
        retry_backoff_ms: 1_000,
        max_examples: None,
        hyper: TrainHyper::default(),
        strategy: StrategyConfig::FedAvg,
    }
}

fn name(i: usize) -> AgentId {
    format!("a{i}")
}

fn examples_of(agent: &str) -> u64 {
    10 * (agent.trim_start_matches('a').parse::<u64>().unwrap() + 1)
}

/// Each agent's delta depends on its name and on the version it trained from.
fn delta_of(agent: &str, version: u64) -> Vec<f32> {
    let i: usize = agent.trim_start_matches('a').parse().unwrap();
    (0..DIM).map(|k| ((i * 5 + k * 3 + version as usize) % 7) as f32 * 0.01 - 0.03).collect()
}

/// A coordinator with buffers of `k` and `agents` agents checked in, and what its first events produced.
struct Fed {
    coord: Coordinator,
    now: u64,
    version: u64,
    /// Every plan sent, by agent, newest last.
    plans: Vec<(AgentId, RoundPlan)>,
}

impl Fed {
    fn new(agents: usize, k: usize, min_agents: usize, tune: impl FnOnce(&mut BufferedConfig)) -> (Fed, Vec<Action>) {
        let mut buffered = BufferedConfig::new(k);
        tune(&mut buffered);
        let state = ResumeState { model_version: 0, weights: vec![0.5; DIM], next_round: 1, strategy_state: vec![] };
        let coord = Coordinator::new(config(min_agents, agents), state).unwrap().with_buffering(buffered).unwrap();
        let mut fed = Fed { coord, now: 0, version: 0, plans: vec![] };
        let mut out = fed.feed(Event::StartRounds { count: None });
        for i in 0..agents {
            out.extend(fed.feed(Event::AgentConnected { agent: name(i) }));
            out.extend(fed.feed(Event::CheckIn {
                agent: name(i),
                model_version: None,
                examples: examples_of(&name(i)),
            }));
        }
        (fed, out)
    }

    fn feed(&mut self, event: Event<'_>) -> Vec<Action> {
        self.now += 1;
        let out = self.coord.handle(self.now, event);
        for a in &out {
            if let Action::SendPlan { agent, plan } = a {
                self.plans.push((agent.clone(), plan.clone()));
            }
        }
        out
    }

    /// The plan `agent` was sent last.
    fn plan_of(&self, agent: &str) -> RoundPlan {
        self.plans.iter().rev().find(|(a, _)| a == agent).map(|(_, p)| p.clone()).expect("a plan")
    }

    /// `agent` uploads what it trained from its last plan.
    fn upload(&mut self, agent: &str) -> Vec<Action> {
        let plan = self.plan_of(agent);
        let delta = delta_of(agent, plan.model_version);
        let examples = examples_of(agent);
        self.feed(Event::Update { agent: agent.into(), round: plan.round, examples, train_loss: 0.5, delta: &delta })
    }

    /// The store commits the buffer `out` asked to commit; returns its record, its weights and what followed.
    fn commit(&mut self, out: &[Action]) -> (RoundRecord, Vec<f32>, Vec<Action>) {
        let (record, weights) = committed(out).expect("a commit");
        self.version += 1;
        let after = self.feed(Event::Committed { round: record.round, version: self.version });
        (record, weights, after)
    }
}

fn committed(out: &[Action]) -> Option<(RoundRecord, Vec<f32>)> {
    out.iter().find_map(|a| match a {
        Action::Commit { record, new_weights, .. } => Some(((**record).clone(), new_weights.clone())),
        _ => None,
    })
}

fn plans_to(out: &[Action]) -> Vec<AgentId> {
    let mut v: Vec<AgentId> = out
        .iter()
        .filter_map(|a| if let Action::SendPlan { agent, .. } = a { Some(agent.clone()) } else { None })
        .collect();
    v.sort();
    v
}

fn cancelled(out: &[Action]) -> Vec<(AgentId, u64)> {
    out.iter()
        .filter_map(
            |a| if let Action::CancelTraining { agent, round } = a { Some((agent.clone(), *round)) } else { None },
        )
        .collect()
}

fn rejected(out: &[Action]) -> Vec<(AgentId, RejectReason)> {
    out.iter()
        .filter_map(
            |a| if let Action::Reject { agent, reason } = a { Some((agent.clone(), reason.clone())) } else { None },
        )
        .collect()
}

/// `before + Σ discount·n·Δ / Σ n` over `(agent, version trained from, staleness)`.
fn expected(before: &[f32], updates: &[(&str, u64, u64)]) -> Vec<f32> {
    let total: f64 = updates.iter().map(|(a, _, _)| examples_of(a) as f64).sum();
    (0..DIM)
        .map(|k| {
            let sum: f64 = updates
                .iter()
                .map(|(a, v, staleness)| {
                    let discount = (1.0 + *staleness as f64).powf(-0.5);
                    discount * examples_of(a) as f64 * f64::from(delta_of(a, *v)[k])
                })
                .sum();
            before[k] + (sum / total) as f32
        })
        .collect()
}

fn assert_close(got: &[f32], want: &[f32]) {
    for (k, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() < 1e-6, "coordinate {k}: {g} against {w}");
    }
}

#[test]
fn a_buffer_completes_with_its_first_k_updates_and_tells_nobody_still_training_to_stop() {
    let (mut fed, out) = Fed::new(6, 3, 2, |_| {});
    assert_eq!(plans_to(&out), (0..6).map(name).collect::<Vec<_>>(), "every idle agent trains");
    let mut out = vec![];
    for i in [4, 1, 2] {
        assert!(committed(&out).is_none(), "the buffer waits for its third update");
        out = fed.upload(&name(i));
    }
    let (record, weights) = committed(&out).expect("three updates complete the buffer");
    assert_eq!(record.reported.len(), 3);
    assert!(cancelled(&out).is_empty(), "the three still training are not stopped: {:?}", cancelled(&out));
    assert_close(&weights, &expected(&[0.5; DIM], &[("a4", 0, 0), ("a1", 0, 0), ("a2", 0, 0)]));
    // Once committed, the reporters train again from version 1; the others are still busy with version 0.
    let (_, _, after) = fed.commit(&out);
    assert_eq!(plans_to(&after), vec![name(1), name(2), name(4)]);
    assert!(after.iter().all(|a| !matches!(a, Action::SendPlan { plan, .. } if plan.model_version != 1)));
    assert_eq!(fed.coord.carried(), 0, "the carried agents are members of the new buffer");
}

#[test]
fn a_carried_update_counts_in_the_next_buffer_discounted_by_its_staleness() {
    let (mut fed, _) = Fed::new(4, 2, 2, |_| {});
    fed.upload("a0");
    let out = fed.upload("a1");
    let (_, v1, _) = fed.commit(&out);
    // a3 trained from version 0 under round 1's plan; version 1 is committed since: staleness 1.
    let late = fed.upload("a3");
    assert!(rejected(&late).is_empty(), "a carried agent's update is taken: {:?}", rejected(&late));
    let out = fed.upload("a0");
    let (record, v2) = committed(&out).expect("the second buffer completes with two updates");
    assert_eq!(record.reported.iter().map(|r| r.agent.as_str()).collect::<Vec<_>>(), vec!["a3", "a0"]);
    assert_close(&v2, &expected(&v1, &[("a3", 0, 1), ("a0", 1, 0)]));
}

#[test]
fn an_update_arriving_while_the_buffer_commits_is_kept_and_folded_into_the_next() {
    let (mut fed, _) = Fed::new(4, 2, 2, |_| {});
    fed.upload("a0");
    let out = fed.upload("a1");
    let (_, v1) = committed(&out).unwrap();
    // The store has not answered yet: no buffer is collecting.
    let during = fed.upload("a2");
    assert!(rejected(&during).is_empty(), "kept, not refused: {:?}", rejected(&during));
    let again = fed.upload("a2");
    assert_eq!(rejected(&again), vec![(name(2), RejectReason::Duplicate)], "one update a training");
    fed.commit(&out);
    let out = fed.upload("a1");
    let (record, v2) = committed(&out).expect("the kept update and one more complete the buffer");
    assert_eq!(record.reported.iter().map(|r| r.agent.as_str()).collect::<Vec<_>>(), vec!["a2", "a1"]);
    assert_close(&v2, &expected(&v1, &[("a2", 0, 1), ("a1", 1, 0)]));
}

#[test]
fn at_most_one_buffer_of_updates_is_kept_between_buffers_and_an_agent_refused_past_it_trains_again() {
    let (mut fed, _) = Fed::new(5, 2, 2, |_| {});
    fed.upload("a0");
    let out = fed.upload("a1");
    // The store has not answered: a2 and a3 fill a buffer's worth; a4 is refused, and freed.
    for i in [2, 3] {
        assert!(rejected(&fed.upload(&name(i))).is_empty());
    }
    assert_eq!(rejected(&fed.upload("a4")), vec![(name(4), RejectReason::NoRoundInFlight)]);
    let (_, _, after) = fed.commit(&out);
    assert_eq!(plans_to(&after), vec![name(0), name(1), name(4)], "a4 trains again from version 1");
    let (record, _) = committed(&after).expect("the two kept updates complete the next buffer as it opens");
    assert_eq!(record.reported.iter().map(|r| r.agent.as_str()).collect::<Vec<_>>(), vec!["a2", "a3"]);
}

#[test]
fn an_agent_more_than_max_staleness_versions_behind_is_told_to_stop_naming_its_own_round() {
    let (mut fed, _) = Fed::new(3, 2, 2, |b| b.max_staleness = 1);
    fed.upload("a0");
    let out = fed.upload("a1");
    let (_, _, after) = fed.commit(&out);
    assert!(cancelled(&after).is_empty(), "one version behind is within max_staleness");
    fed.upload("a0");
    let out = fed.upload("a1");
    let (_, _, after) = fed.commit(&out);
    assert_eq!(cancelled(&after), vec![(name(2), 1)], "two versions behind: stopped, naming round 1");
    // It is free again: the next buffer sends it the newest model.
    assert!(fed.plans.iter().any(|(a, p)| a == "a2" && p.model_version == 2), "a2 trains from version 2");
}

#[test]
fn the_run_ending_stops_every_carried_agent() {
    let (mut fed, _) = Fed::new(4, 2, 2, |_| {});
    fed.feed(Event::StartRounds { count: Some(1) });
    fed.upload("a0");
    let out = fed.upload("a1");
    let (_, _, after) = fed.commit(&out);
    let mut stopped = cancelled(&after);
    stopped.sort();
    assert_eq!(stopped, vec![(name(2), 1), (name(3), 1)]);
    assert!(plans_to(&after).is_empty(), "no round after the last");
    let late = fed.upload("a2");
    assert!(!rejected(&late).is_empty(), "an update after the run ended is refused");
}

#[test]
fn a_buffer_that_reaches_its_deadline_with_too_few_updates_aborts_and_stops_every_member_with_its_own_round() {
    let (mut fed, _) = Fed::new(4, 3, 2, |_| {});
    fed.upload("a0");
    fed.upload("a1");
    let out = fed.upload("a2");
    fed.commit(&out);
    // Buffer 2: a3 (carried from round 1) and a0..a2 (round 2). Only one update comes before the deadline.
    fed.upload("a0");
    fed.now += TIMEOUT;
    let out = fed.feed(Event::Tick);
    let aborted = out.iter().find_map(|a| match a {
        Action::RoundAborted { reason, .. } => Some(reason.clone()),
        _ => None,
    });
    assert!(matches!(aborted, Some(AbortReason::TooFewReports { reported: 1, .. })), "{aborted:?}");
    let mut stopped = cancelled(&out);
    stopped.sort();
    assert_eq!(stopped, vec![(name(1), 2), (name(2), 2), (name(3), 1)]);
}

#[test]
fn a_buffer_at_its_deadline_with_min_agents_updates_completes_and_carries_the_rest() {
    let (mut fed, _) = Fed::new(4, 3, 2, |_| {});
    fed.upload("a0");
    fed.upload("a1");
    fed.now += TIMEOUT;
    let out = fed.feed(Event::Tick);
    let (record, _) = committed(&out).expect("two updates, min_agents 2: the buffer completes at its deadline");
    assert_eq!(record.reported.len(), 2);
    assert!(cancelled(&out).is_empty());
    assert_eq!(fed.coord.carried(), 2);
}

#[test]
fn a_carried_agent_that_leaves_between_buffers_is_forgotten_and_trains_again_when_back() {
    let (mut fed, _) = Fed::new(3, 2, 2, |_| {});
    fed.upload("a0");
    let out = fed.upload("a1");
    fed.feed(Event::AgentDisconnected { agent: name(2) });
    assert_eq!(fed.coord.carried(), 0);
    fed.feed(Event::AgentConnected { agent: name(2) });
    fed.feed(Event::CheckIn { agent: name(2), model_version: None, examples: examples_of("a2") });
    let (_, _, after) = fed.commit(&out);
    assert_eq!(plans_to(&after), vec![name(0), name(1), name(2)]);
    let stale =
        fed.feed(Event::Update { agent: name(2), round: 1, examples: 30, train_loss: 0.5, delta: &delta_of("a2", 0) });
    assert!(!rejected(&stale).is_empty(), "its old training was forgotten with its connection");
}

#[test]
fn a_failed_training_of_a_carried_agent_frees_it() {
    let (mut fed, _) = Fed::new(3, 2, 2, |_| {});
    fed.upload("a0");
    let out = fed.upload("a1");
    fed.commit(&out);
    // a2 is a member of buffer 2, training for round 1.
    fed.feed(Event::UpdateFailed { agent: name(2), round: 1, reason: "out of memory".into() });
    fed.upload("a0");
    let out = fed.upload("a1");
    let (record, _) = committed(&out).unwrap();
    assert_eq!(record.dropped.iter().map(|d| d.agent.as_str()).collect::<Vec<_>>(), vec!["a2"]);
    let (_, _, after) = fed.commit(&out);
    assert!(plans_to(&after).contains(&name(2)), "free again");
}

#[test]
fn buffering_refuses_per_update_strategies_and_a_size_outside_min_and_max_agents() {
    let state = || ResumeState { model_version: 0, weights: vec![0.5; DIM], next_round: 1, strategy_state: vec![] };
    // Secure aggregation is no reason to refuse, in either order (`coordinator_buffered_secure` tests those runs).
    let secure = Coordinator::new(config(2, 10), state()).unwrap().with_secagg(SecAggConfig::default()).unwrap();
    assert!(secure.with_buffering(BufferedConfig::new(3)).is_ok());
    let buffered = Coordinator::new(config(2, 10), state()).unwrap().with_buffering(BufferedConfig::new(3)).unwrap();
    assert!(buffered.with_secagg(SecAggConfig::default()).is_ok());
    let median = CoordinatorConfig { strategy: StrategyConfig::Median, ..config(2, 10) };
    let e = Coordinator::new(median, state()).unwrap().with_buffering(BufferedConfig::new(3)).unwrap_err().to_string();
    assert!(e.contains("median"), "{e}");
    for size in [1, 11] {
        let e = Coordinator::new(config(2, 10), state()).unwrap().with_buffering(BufferedConfig::new(size));
        assert!(e.unwrap_err().to_string().contains("size"));
    }
    let mut buffered =
        Coordinator::new(config(2, 10), state()).unwrap().with_buffering(BufferedConfig::new(3)).unwrap();
    let krum = CoordinatorConfig { strategy: StrategyConfig::Krum { byzantine: 0, keep: 1 }, ..config(2, 10) };
    assert!(buffered.set_config(krum).is_err(), "a per-update strategy is refused later too");
    assert!(buffered.set_config(config(5, 10)).is_err(), "a min_agents above the buffer's size is refused");
}
