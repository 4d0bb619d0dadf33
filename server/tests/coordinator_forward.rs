//! An aggregator's coordinator (`Coordinator::with_forwarding`), driven by hand: it runs a round only when its root
//! asks, from the root's version, with the root's training settings and seed; it forwards the round's weighted mean
//! and weight instead of committing; it never forwards a group smaller than `min_group`; and every request of the
//! root is answered exactly once, in order, even when no round can start or a newer version cuts a round short.

use fedge_server::coordinator::{
    AbortReason, Action, AgentId, ConfigError, Coordinator, CoordinatorConfig, Event, Outcome, Partial, ResumeState,
    RootRequest, TrainHyper, wire_seed_for,
};
use fedge_server::strategy::StrategyConfig;
use fedge_shared::delta_encoding::DeltaEncoding;

const DIM: usize = 6;
const TIMEOUT: u64 = 10_000;

fn config(min_agents: usize, max_agents: usize) -> CoordinatorConfig {
    CoordinatorConfig {
        min_agents,
        min_available: None,
        max_agents,
        fraction: 1.0,
        overselect: 1.0,
        seed: 42,
        round_timeout_ms: TIMEOUT,
        retry_backoff_ms: 500,
        max_examples: None,
        hyper: TrainHyper::default(),
        strategy: StrategyConfig::FedAvg,
    }
}

fn aggregator(min_group: usize, max_agents: usize) -> Coordinator {
    let state = ResumeState { model_version: 4, weights: vec![0.5; DIM], next_round: 1, strategy_state: Vec::new() };
    Coordinator::new(config(2, max_agents), state).unwrap().with_forwarding(min_group).unwrap()
}

fn name(i: usize) -> AgentId {
    format!("agent-{i}")
}

fn delta_of(i: usize) -> Vec<f32> {
    (0..DIM).map(|k| ((i * 5 + k) % 7) as f32 * 0.01 - 0.03).collect()
}

fn examples_of(i: usize) -> u64 {
    10 + i as u64 * 3
}

/// The root's training settings: not the aggregator's configured ones, so a plan shows whose it carries.
fn root_hyper() -> TrainHyper {
    TrainHyper {
        epochs: 3,
        batch_size: 16,
        learning_rate: 0.2,
        upload: DeltaEncoding::F32,
        seed: 999,
        ..TrainHyper::default()
    }
}

fn request(version: u64) -> RootRequest {
    RootRequest { model_version: version, hyper: root_hyper(), wire_seed: 0xfeed }
}

fn connect(c: &mut Coordinator, now: u64, agents: usize) -> Vec<Action> {
    let mut out = Vec::new();
    for i in 0..agents {
        out.extend(c.handle(now, Event::AgentConnected { agent: name(i) }));
        out.extend(c.handle(now, Event::CheckIn { agent: name(i), model_version: None, examples: examples_of(i) }));
    }
    out
}

fn forwards(actions: &[Action]) -> Vec<(Result<Partial, String>, bool)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Forward { result, record } => Some((result.clone(), record.is_some())),
            _ => None,
        })
        .collect()
}

fn plans(actions: &[Action]) -> Vec<(AgentId, fedge_server::coordinator::RoundPlan)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::SendPlan { agent, plan } => Some((agent.clone(), plan.clone())),
            _ => None,
        })
        .collect()
}

fn upload(c: &mut Coordinator, now: u64, i: usize, round: u64) -> Vec<Action> {
    let delta = delta_of(i);
    c.handle(now, Event::Update { agent: name(i), round, examples: examples_of(i), train_loss: 0.5, delta: &delta })
}

#[test]
fn no_round_starts_until_the_root_asks_even_with_agents_and_a_run() {
    let mut c = aggregator(2, 10);
    let mut out = connect(&mut c, 0, 4);
    out.extend(c.handle(0, Event::StartRounds { count: None }));
    out.extend(c.handle(5_000, Event::Tick));
    assert!(plans(&out).is_empty(), "an aggregator started a round of its own: {out:?}");
}

#[test]
fn a_root_round_runs_with_the_roots_settings_and_seed_and_forwards_the_weighted_mean_instead_of_committing() {
    let mut c = aggregator(2, 10);
    connect(&mut c, 0, 4);
    let out = c.handle(10, Event::RootRound { request: request(4) });
    let sent = plans(&out);
    assert_eq!(sent.len(), 4, "every available agent is planned: {out:?}");
    let plan = &sent[0].1;
    assert_eq!(plan.model_version, 4);
    assert_eq!((plan.hyper.epochs, plan.hyper.batch_size, plan.hyper.learning_rate), (3, 16, 0.2));
    // The agents receive the root's own seed (the shell mixes the round id back out of the plan's).
    assert_eq!(wire_seed_for(plan.hyper.seed, plan.round), 0xfeed);
    let round = plan.round;
    let mut out = Vec::new();
    for i in 0..4 {
        out.extend(upload(&mut c, 20 + i as u64, i, round));
    }
    assert!(!out.iter().any(|a| matches!(a, Action::Commit { .. })), "an aggregator committed: {out:?}");
    let f = forwards(&out);
    assert_eq!(f.len(), 1, "{out:?}");
    let (Ok(partial), true) = &f[0] else { panic!("no partial with its record: {f:?}") };
    let total: u64 = (0..4).map(examples_of).sum();
    assert_eq!((partial.weight, partial.agents), (total, 4));
    for k in 0..DIM {
        let expected: f64 =
            (0..4).map(|i| examples_of(i) as f64 * f64::from(delta_of(i)[k])).sum::<f64>() / total as f64;
        assert!((f64::from(partial.mean[k]) - expected).abs() < 1e-6, "coordinate {k}");
    }
    let record = out
        .iter()
        .find_map(|a| match a {
            Action::Forward { record: Some(r), .. } => Some(r.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!((record.outcome.clone(), record.new_version, record.reported.len()), (Outcome::Completed, None, 4));
    // The model stays the root's: nothing changes until the root's next version is installed.
    assert_eq!(c.model_version(), 4);
    assert_eq!(c.global_weights(), &[0.5; DIM]);
}

#[test]
fn a_request_for_a_version_not_yet_installed_waits_for_it() {
    let mut c = aggregator(2, 10);
    connect(&mut c, 0, 3);
    let out = c.handle(10, Event::RootRound { request: request(5) });
    assert!(plans(&out).is_empty() && forwards(&out).is_empty(), "{out:?}");
    let weights = vec![0.25; DIM];
    let out = c.handle(20, Event::Installed { version: 5, weights: &weights });
    let sent = plans(&out);
    assert_eq!(sent.len(), 3);
    assert!(sent.iter().all(|(_, p)| p.model_version == 5));
    assert_eq!(c.global_weights(), &weights[..]);
}

#[test]
fn a_group_smaller_than_min_group_forwards_nothing() {
    // Three planned, min_group 3: one drops, so the two left are refused however well they report.
    let mut c = aggregator(3, 10);
    connect(&mut c, 0, 3);
    let round = plans(&c.handle(10, Event::RootRound { request: request(4) }))[0].1.round;
    let mut out = upload(&mut c, 20, 0, round);
    out.extend(upload(&mut c, 21, 1, round));
    out.extend(c.handle(22, Event::AgentDisconnected { agent: name(2) }));
    let f = forwards(&out);
    assert_eq!(f.len(), 1, "{out:?}");
    let (Err(why), false) = &f[0] else { panic!("a partial of two agents was forwarded: {f:?}") };
    assert!(why.contains("at least 3"), "{why}");
    assert!(out.iter().any(|a| matches!(a, Action::RoundAborted { .. })));
}

#[test]
fn a_request_that_cannot_start_a_round_is_answered_after_the_round_timeout() {
    let mut c = aggregator(3, 10);
    connect(&mut c, 0, 2);
    let out = c.handle(10, Event::RootRound { request: request(4) });
    assert!(forwards(&out).is_empty());
    // The coordinator asks to be woken when the request expires.
    assert!(out.iter().any(|a| matches!(a, Action::WakeAt(t) if *t == 10 + TIMEOUT)), "{out:?}");
    assert!(forwards(&c.handle(TIMEOUT, Event::Tick)).is_empty());
    let f = forwards(&c.handle(10 + TIMEOUT, Event::Tick));
    let [(Err(why), false)] = &f[..] else { panic!("{f:?}") };
    assert!(why.contains("2 agents available") && why.contains("needs 3"), "{why}");
    // A third agent arriving later starts nothing: the request was answered.
    assert!(plans(&connect_one(&mut c, 20_000, 2)).is_empty());
}

fn connect_one(c: &mut Coordinator, now: u64, i: usize) -> Vec<Action> {
    let mut out = c.handle(now, Event::AgentConnected { agent: name(i) });
    out.extend(c.handle(now, Event::CheckIn { agent: name(i), model_version: None, examples: examples_of(i) }));
    out
}

#[test]
fn a_newer_version_during_a_round_aborts_it_and_answers_the_root() {
    let mut c = aggregator(2, 10);
    connect(&mut c, 0, 3);
    let round = plans(&c.handle(10, Event::RootRound { request: request(4) }))[0].1.round;
    upload(&mut c, 20, 0, round);
    let weights = vec![0.75; DIM];
    let out = c.handle(30, Event::Installed { version: 6, weights: &weights });
    let f = forwards(&out);
    let [(Err(why), false)] = &f[..] else { panic!("{out:?}") };
    assert!(why.contains("version 6"), "{why}");
    assert!(out.iter().any(|a| matches!(a, Action::RoundAborted { reason: AbortReason::Superseded(_), .. })));
    assert_eq!(c.model_version(), 6);
}

#[test]
fn every_request_is_answered_once_and_in_order() {
    let mut c = aggregator(2, 10);
    connect(&mut c, 0, 3);
    let mut out = c.handle(10, Event::RootRound { request: request(4) });
    // A second request while the first's round runs: the first is answered (superseded), the second runs.
    out.extend(c.handle(20, Event::RootRound { request: request(4) }));
    // A request for a version older than the one held is answered at once.
    let weights = vec![0.1; DIM];
    out.extend(c.handle(30, Event::Installed { version: 7, weights: &weights }));
    out.extend(c.handle(40, Event::RootRound { request: request(5) }));
    let answers = forwards(&out);
    assert_eq!(answers.len(), 3, "{out:?}");
    assert!(answers[0].0.as_ref().unwrap_err().contains("another round"));
    assert!(answers[1].0.as_ref().unwrap_err().contains("version 7"));
    assert!(answers[2].0.as_ref().unwrap_err().contains("holds the newer 7"));
}

#[test]
fn a_group_of_one_or_larger_than_any_round_is_refused() {
    let state = || ResumeState { model_version: 0, weights: vec![0.0; DIM], next_round: 1, strategy_state: vec![] };
    for (min_group, max_agents) in [(1, 10), (11, 10)] {
        let e = Coordinator::new(config(2, max_agents), state()).unwrap().with_forwarding(min_group).unwrap_err();
        assert!(matches!(&e, ConfigError::Invalid(m) if m.contains("min_group")), "{e}");
    }
}
