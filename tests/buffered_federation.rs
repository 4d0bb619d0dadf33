//! Whole system, buffered asynchronous aggregation (`[buffered]`, FedBuff) over loopback QUIC with mutual TLS: three
//! quick agents and one slow one, buffers of two updates. The server commits buffer after buffer without waiting for
//! the slow agent; the slow agent's update, trained from version 0, counts in a later buffer discounted by its
//! staleness; every commit is the previous model plus `Σ (1 + τ)^-0.5 · n · Δ / Σ n` over exactly its reporters'
//! deltas, each as its agent trained it (the plan it was sent, seen at the relay). The agents' deltas are known
//! (`NoiseLearner::delta_for`). With secure aggregation on, the same federation's agents hold their deltas and say
//! they are ready; each buffer's first two ready agents mask them, scaled by their staleness discounts, in a SecAgg+
//! group of their own, and every commit is the same discounted mean of the group's deltas, within quantization.

use fedge_agent::client::AgentEvent;
use fedge_agent::learner::{Learner, NoiseLearner};
use fedge_ctl::demo::{FederationOptions, FederationSpec, LocalFederation};
use fedge_server::coordinator::{AggregationMode, BufferedConfig, CoordinatorConfig, RoundRecord, SecAggConfig};
use fedge_server::service::{RelayHook, ServerEvent};
use fedge_shared::delta_encoding::DeltaEncoding;
use fedge_shared::protocol::{HeldPlan, ServerMessage};
use fedge_system_tests::{HeldLearner, cohort_of, init_logs, wait_agent, wait_server};
use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

const AGENTS: usize = 4;
const SLOW: usize = 3;
const SCALE: f32 = 0.05;

fn noise(i: usize) -> NoiseLearner {
    NoiseLearner::new(20 + 13 * i as u64, 100 + i as u64, SCALE)
}

/// What the relay sent each agent as plans: (round, model version, training seed), oldest first.
type Plans = Arc<Mutex<HashMap<String, Vec<(u64, u64, u64)>>>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buffers_commit_without_the_slow_agent_and_its_stale_update_counts_later_discounted() -> anyhow::Result<()> {
    init_logs();
    let learners: Vec<Box<dyn Learner>> = (0..AGENTS)
        .map(|i| {
            let delay = Duration::from_millis(if i == SLOW { 2_500 } else { 250 });
            Box::new(HeldLearner::delayed(noise(i), delay)) as Box<dyn Learner>
        })
        .collect();
    let base = cohort_of(AGENTS);
    let coordinator = CoordinatorConfig {
        min_agents: 2,
        round_timeout_ms: 30_000,
        hyper: fedge_server::coordinator::TrainHyper { upload: DeltaEncoding::F32, ..base.hyper.clone() },
        ..base
    };
    let onnx = fedge_shared::train::builder::mlp(&[16, 8, 4], 1);
    let params = 16 * 8 + 8 + 8 * 4 + 4;
    let spec = FederationSpec { onnx, coordinator, rounds: None, evaluator: None };
    let plans: Plans = Arc::default();
    let seen = plans.clone();
    let hook: RelayHook = Arc::new(move |to: &str, m: &mut ServerMessage| {
        if let ServerMessage::Plan(p) = m {
            seen.lock().unwrap().entry(to.to_string()).or_default().push((p.round, p.model_version, p.train.seed));
        }
    });
    let options = FederationOptions {
        secagg: SecAggConfig::off(),
        relay_hook: Some(hook),
        buffered: Some(BufferedConfig::new(2)),
        // Exact versions: the check below is FedBuff's arithmetic, not the downloads' rounding.
        download: fedge_shared::delta_encoding::DeltaEncoding::F32,
        ..Default::default()
    };
    let fed = LocalFederation::start_with(spec, learners, options).await?;
    let mut events = fed.server.events();
    let slow = format!("agent-{SLOW:03}");
    let mut records: Vec<RoundRecord> = Vec::new();
    while !records.iter().any(|r| r.reported.iter().any(|p| p.agent == slow)) {
        let ended = wait_server(&mut events, Duration::from_secs(60), |e| match e {
            ServerEvent::RoundCompleted(r) => Some(Ok((**r).clone())),
            ServerEvent::RoundAborted(r) => Some(Err((**r).clone())),
            _ => None,
        })
        .await?;
        let record = ended.map_err(|r| anyhow::anyhow!("buffer {} aborted: {:?}", r.round, r.outcome))?;
        // Checked at once: the store keeps only the newest few versions' weights.
        check_commit(&fed, &record, &plans.lock().unwrap(), params, &slow)?;
        records.push(record);
        anyhow::ensure!(records.len() < 40, "the slow agent's update never counted in {} buffers", records.len());
    }
    assert!(
        !records[0].reported.iter().any(|r| r.agent == slow),
        "the first buffer completed without waiting for the slow agent"
    );
    fed.stop().await
}

/// A training holds the agent's learner for as long as it runs; the agent's connection must go on meanwhile. Here an
/// agent is kept training while two others complete a buffer: it still receives the new model, and its update, once
/// the gate opens, counts in a later buffer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_still_training_receives_the_new_model_without_waiting_for_its_training() -> anyhow::Result<()> {
    init_logs();
    let open: Arc<(Mutex<bool>, Condvar)> = Arc::default();
    let gate = open.clone();
    let wait_for_the_gate = move || {
        let (lock, opened) = &*gate;
        let mut open = lock.lock().unwrap();
        while !*open {
            open = opened.wait(open).unwrap();
        }
    };
    let learners: Vec<Box<dyn Learner>> = vec![
        Box::new(HeldLearner::delayed(noise(0), Duration::from_millis(100))),
        Box::new(HeldLearner::delayed(noise(1), Duration::from_millis(100))),
        Box::new(HeldLearner { inner: noise(2), before: Box::new(wait_for_the_gate) }),
    ];
    let base = cohort_of(3);
    let coordinator = CoordinatorConfig { min_agents: 2, round_timeout_ms: 60_000, ..base };
    let onnx = fedge_shared::train::builder::mlp(&[16, 8, 4], 1);
    let spec = FederationSpec { onnx, coordinator, rounds: None, evaluator: None };
    let options = FederationOptions {
        secagg: SecAggConfig::off(),
        // Never stopped for staleness: the fast agents commit a buffer every few tenths of a second meanwhile.
        buffered: Some(BufferedConfig { max_staleness: 100_000, ..BufferedConfig::new(2) }),
        ..Default::default()
    };
    let mut fed = LocalFederation::start_with(spec, learners, options).await?;
    let mut events = fed.server.events();
    let received = wait_agent(&mut fed.agent_events, Duration::from_secs(30), |i, e| match e {
        AgentEvent::ModelReceived { version } if i == 2 && *version >= 1 => Some(*version),
        _ => None,
    })
    .await;
    // Open the gate before asserting, so that the agents can stop either way.
    {
        let (lock, opened) = &*open;
        *lock.lock().unwrap() = true;
        opened.notify_all();
    }
    let version = received?;
    assert!(version >= 1, "the training agent received version {version} while training");
    wait_server(&mut events, Duration::from_secs(30), |e| match e {
        ServerEvent::RoundCompleted(r) if r.reported.iter().any(|p| p.agent == "agent-002") => Some(()),
        _ => None,
    })
    .await?;
    fed.stop().await
}

/// The buffer's committed model is the previous one plus the staleness-discounted, example-weighted mean of its
/// reporters' deltas, each from the plan it trained (the newest it was sent for this buffer's round or an earlier one).
fn check_commit(
    fed: &LocalFederation,
    record: &RoundRecord,
    plans: &HashMap<String, Vec<(u64, u64, u64)>>,
    params: usize,
    slow: &str,
) -> anyhow::Result<()> {
    let version = record.new_version.expect("a committed buffer has a version");
    let before = fed.server.store.weights(version - 1)?;
    let after = fed.server.store.weights(version)?;
    let mut sum = vec![0f64; params];
    let mut total = 0f64;
    for r in &record.reported {
        let i: usize = r.agent.trim_start_matches("agent-").parse()?;
        let &(round, from, seed) =
            plans[&r.agent].iter().rev().find(|(round, _, _)| *round <= record.round).expect("a reporter had a plan");
        let staleness = record.plan.model_version - from;
        if r.agent == slow {
            assert!(round < record.round && staleness >= 1, "the slow agent was carried: round {round}, τ {staleness}");
        }
        let discount = (1.0 + staleness as f64).powf(-0.5);
        let delta = NoiseLearner::delta_for(noise(i).seed, seed, params, SCALE);
        for (s, d) in sum.iter_mut().zip(&delta) {
            *s += discount * r.examples as f64 * f64::from(*d);
        }
        total += r.examples as f64;
    }
    for k in 0..params {
        let want = before[k] + (sum[k] / total) as f32;
        anyhow::ensure!(
            (after[k] - want).abs() < 1e-5,
            "buffer {}, weight {k}: committed {}, the discounted mean gives {want}",
            record.round,
            after[k]
        );
    }
    Ok(())
}

/// Secure buffered rounds over real QUIC: two quick agents and a slow one, buffers of two. The quick agents' groups
/// commit without waiting; the slow agent, ready later, masks its held delta in a later group with its staleness
/// discount; each commit is the previous model plus `Σ (1 + τ)^-0.5 · n · Δ / Σ n` over the group's members, within
/// two quantization steps (22 bits), each delta from the training plan its group entry names (seen at the relay).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secure_buffers_mask_held_deltas_in_groups_and_commit_their_discounted_mean() -> anyhow::Result<()> {
    init_logs();
    const SLOW: usize = 2;
    let learners: Vec<Box<dyn Learner>> = (0..3)
        .map(|i| {
            let delay = Duration::from_millis(if i == SLOW { 1_200 } else { 100 });
            Box::new(HeldLearner::delayed(noise(i), delay)) as Box<dyn Learner>
        })
        .collect();
    let coordinator = CoordinatorConfig { min_agents: 2, round_timeout_ms: 30_000, ..cohort_of(3) };
    let onnx = fedge_shared::train::builder::mlp(&[16, 8, 4], 1);
    let params = 16 * 8 + 8 + 8 * 4 + 4;
    let spec = FederationSpec { onnx, coordinator, rounds: None, evaluator: None };
    let plans: Plans = Arc::default();
    let seen = plans.clone();
    let hook: RelayHook = Arc::new(move |to: &str, m: &mut ServerMessage| {
        if let ServerMessage::Plan(p) = m {
            assert!(p.secagg.is_some() || p.held == Some(HeldPlan::Train), "no plan asks for a plain upload");
            if p.held == Some(HeldPlan::Train) {
                seen.lock().unwrap().entry(to.to_string()).or_default().push((p.round, p.model_version, p.train.seed));
            }
        }
    });
    let options = FederationOptions {
        secagg: SecAggConfig { quant_bits: Some(22), ..SecAggConfig::default() },
        relay_hook: Some(hook),
        buffered: Some(BufferedConfig::new(2)),
        // Exact versions: the check below is the group's arithmetic, not the downloads' rounding.
        download: fedge_shared::delta_encoding::DeltaEncoding::F32,
        ..Default::default()
    };
    let fed = LocalFederation::start_with(spec, learners, options).await?;
    let mut events = fed.server.events();
    let slow = format!("agent-{SLOW:03}");
    let mut records: Vec<RoundRecord> = Vec::new();
    while !records.iter().any(|r| r.reported.iter().any(|p| p.agent == slow)) {
        let ended = wait_server(&mut events, Duration::from_secs(30), |e| match e {
            ServerEvent::RoundCompleted(r) => Some(Ok((**r).clone())),
            ServerEvent::RoundAborted(r) => Some(Err((**r).clone())),
            _ => None,
        })
        .await?;
        let record = ended.map_err(|r| anyhow::anyhow!("group {} aborted: {:?}", r.round, r.outcome))?;
        check_group_commit(&fed, &record, &plans.lock().unwrap(), params, &slow)?;
        records.push(record);
        anyhow::ensure!(records.len() < 20, "the slow agent's delta never counted in {} groups", records.len());
    }
    assert!(!records[0].reported.iter().any(|r| r.agent == slow), "the first group did not wait for the slow agent");
    fed.stop().await
}

/// A group's committed model is the previous one plus the discounted, example-weighted mean of its survivors' held
/// deltas, each from the training its entry in the group's plan names; the plan's scales are the discounts.
fn check_group_commit(
    fed: &LocalFederation,
    record: &RoundRecord,
    plans: &HashMap<String, Vec<(u64, u64, u64)>>,
    params: usize,
    slow: &str,
) -> anyhow::Result<()> {
    let AggregationMode::HeldGroup(sp, held) = &record.plan.aggregation else {
        anyhow::bail!("round {} committed without a group: {:?}", record.round, record.plan.aggregation);
    };
    let version = record.new_version.expect("a committed group has a version");
    let before = fed.server.store.weights(version - 1)?;
    let after = fed.server.store.weights(version)?;
    let mut sum = vec![0f64; params];
    let mut total = 0f64;
    for r in &record.reported {
        let i: usize = r.agent.trim_start_matches("agent-").parse()?;
        let me = sp.cohort.iter().find(|a| a.name == r.agent).expect("a survivor is in the cohort").index;
        let entry = held.iter().find(|m| m.index == me).expect("every member has an entry");
        let &(_, _, seed) = plans[&r.agent]
            .iter()
            .find(|(round, from, _)| (*round, *from) == (entry.trained_round, entry.trained_version))
            .expect("the training the group names was planned");
        let staleness = record.plan.model_version - entry.trained_version;
        if r.agent == slow {
            assert!(staleness >= 1, "the slow agent trained from an older version");
        }
        let discount = (1.0 + staleness as f64).powf(-0.5);
        assert!((entry.scale - discount).abs() < 1e-12, "scale {} for staleness {staleness}", entry.scale);
        let n = noise(i).examples.min(sp.params.weight_cap) as f64;
        let delta = NoiseLearner::delta_for(noise(i).seed, seed, params, SCALE);
        for (s, d) in sum.iter_mut().zip(&delta) {
            *s += discount * n * f64::from(*d);
        }
        total += n;
    }
    let tolerance = 2.0 * fedge_shared::secagg::quant::quantum(&sp.params) as f32 + 1e-5;
    for k in 0..params {
        let want = before[k] + (sum[k] / total) as f32;
        anyhow::ensure!(
            (after[k] - want).abs() < tolerance,
            "group {}, weight {k}: committed {}, the discounted mean gives {want}",
            record.round,
            after[k]
        );
    }
    Ok(())
}
