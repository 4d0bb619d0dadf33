//! Whole system with distributed differential privacy (`[privacy]`): agents clip their deltas in L2 norm, add
//! discrete Gaussian noise before masking, and the server charges each round to the run's budget. The agents'
//! deltas are known (`NoiseLearner::delta_for`), so each committed model can be compared with the clipped,
//! unweighted mean: what is left is the noise, whose size the round's record determines. The run stops by itself
//! once one more round would spend past `target_epsilon`, and the budget is what the stored records say.

use fedge_agent::learner::{Learner, NoiseLearner};
use fedge_agent::privacy_budget::AgentPrivacy;
use fedge_ctl::demo::{FederationOptions, FederationSpec, LocalFederation};
use fedge_server::coordinator::{
    AggregationMode, CoordinatorConfig, RoundRecord, RunPrivacy, SecAggConfig, SecurePlan,
};
use fedge_server::service::ServerEvent;
use fedge_shared::privacy::PrivacySettings;
use fedge_system_tests::{cohort_of, init_logs, wait_refusals, wait_server};
use std::time::Duration;

const AGENTS: usize = 4;
const SCALE: f32 = 0.05;
const CLIP_NORM: f64 = 0.1;

fn noise(i: usize) -> NoiseLearner {
    NoiseLearner::new(20 + 13 * i as u64, 100 + i as u64, SCALE)
}

fn settings(target_epsilon: f64) -> PrivacySettings {
    PrivacySettings { noise_multiplier: 2.0, clip_norm: CLIP_NORM, delta: 1e-5, target_epsilon }
}

fn onnx() -> Vec<u8> {
    fedge_shared::train::builder::mlp(&[16, 8, 4], 1)
}

fn coordinator() -> CoordinatorConfig {
    CoordinatorConfig {
        min_agents: AGENTS,
        seed: 5,
        round_timeout_ms: 20_000,
        retry_backoff_ms: 200,
        ..cohort_of(AGENTS)
    }
}

/// The unweighted mean of the agents' deltas, each scaled down to `CLIP_NORM` in L2 norm first.
fn clipped_mean(record: &RoundRecord, params: usize) -> Vec<f64> {
    let round_seed = record.plan.hyper.seed ^ record.round.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut sum = vec![0f64; params];
    for i in 0..AGENTS {
        let d = NoiseLearner::delta_for(noise(i).seed, round_seed, params, SCALE);
        let norm = d.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>().sqrt();
        let factor = (CLIP_NORM / norm).min(1.0);
        for (s, v) in sum.iter_mut().zip(&d) {
            *s += f64::from(*v) * factor;
        }
    }
    sum.iter().map(|s| s / AGENTS as f64).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_run_adds_the_planned_noise_and_stops_before_the_round_that_would_pass_its_budget()
-> anyhow::Result<()> {
    init_logs();
    let onnx = onnx();
    // The MLP 16-8-4: two weight matrices and their biases.
    let params = 16 * 8 + 8 + 8 * 4 + 4;
    // A budget that holds exactly two rounds of this run's mechanism, found the way the server counts it.
    let probe = RunPrivacy::new(settings(50.0), AGENTS, []).map_err(anyhow::Error::msg)?;
    let mut p = SecAggConfig::default().params_for(AGENTS);
    let ddg = probe.configure(&mut p, AGENTS, params).map_err(anyhow::Error::msg)?;
    let (two, three) = (epsilon_after(ddg, 2)?, epsilon_after(ddg, 3)?);
    let target = (two + three) / 2.0;

    let learners: Vec<Box<dyn Learner>> = (0..AGENTS).map(|i| Box::new(noise(i)) as Box<dyn Learner>).collect();
    let spec = FederationSpec { onnx, coordinator: coordinator(), rounds: None, evaluator: None };
    let options = FederationOptions {
        secagg: SecAggConfig { phase_timeout_ms: 10_000, ..SecAggConfig::default() },
        relay_hook: None,
        privacy: Some(settings(target)),
        agent_privacy: None,
        ..Default::default()
    };
    let fed = LocalFederation::start_with(spec, learners, options).await?;
    let mut events = fed.server.events();
    let mut epsilons = Vec::new();
    for _ in 0..2 {
        let record = wait_server(&mut events, Duration::from_secs(60), |e| match e {
            ServerEvent::RoundCompleted(r) => Some(Ok((**r).clone())),
            ServerEvent::RoundAborted(r) => Some(Err(format!("{:?}", r.outcome))),
            _ => None,
        })
        .await?
        .map_err(|e| anyhow::anyhow!("aborted: {e}"))?;
        let AggregationMode::Secure(SecurePlan { params: sp, privacy: Some(cost), .. }) = &record.plan.aggregation
        else {
            anyhow::bail!("a private run's round must be secure and charged: {:?}", record.plan.aggregation);
        };
        assert_eq!(sp.clip_norm, Some(CLIP_NORM as f32));
        assert_eq!((sp.weight_cap, sp.counts), (1, 0), "every agent weighs 1 and no counts ride unnoised");
        assert!(sp.noise_variance > 0.0);
        assert!(cost.epsilon <= target);
        epsilons.push(cost.epsilon);

        // What the committed model moved by, less the clipped mean, is the noise of the survivors' sum (plus
        // rounding), averaged over the agents: its spread is what the plan's variance says.
        let version = record.new_version.expect("committed");
        let before = fed.server.store.weights(version - 1)?;
        let after = fed.server.store.weights(version)?;
        let mean = clipped_mean(&record, params);
        let residual: Vec<f64> = after.iter().zip(&before).zip(&mean).map(|((a, b), m)| f64::from(a - b) - m).collect();
        let quantum = 2.0 * f64::from(sp.clip) / sp.max_level() as f64;
        let expected = (AGENTS as f64 * sp.noise_variance).sqrt() * quantum / AGENTS as f64;
        let spread = (residual.iter().map(|r| r * r).sum::<f64>() / residual.len() as f64).sqrt();
        assert!(
            spread > 0.7 * expected && spread < 1.3 * expected,
            "noise spread {spread} per coordinate, the plan says {expected}"
        );
    }
    assert!(epsilons[1] > epsilons[0], "{epsilons:?}");
    assert!((epsilons[1] - two).abs() < 1e-9, "the server counts as the accountant does: {epsilons:?} vs {two}");
    // The third round would pass the budget: the run stops by itself.
    let third = wait_server(&mut events, Duration::from_secs(3), |e| match e {
        ServerEvent::RoundStarted { round, .. } => Some(*round),
        _ => None,
    })
    .await;
    assert!(third.is_err(), "a round started past the budget: {third:?}");
    fed.stop().await
}

/// The run's ε after `rounds` rounds of `ddg`, as the server's budget counts it.
fn epsilon_after(ddg: fedge_shared::privacy::DdgRound, rounds: usize) -> anyhow::Result<f64> {
    let run = RunPrivacy::new(settings(50.0), AGENTS, vec![ddg; rounds]).map_err(anyhow::Error::msg)?;
    run.epsilon().map_err(anyhow::Error::msg)
}

/// Waits until every agent has refused a secure round for a reason containing `why`.
async fn every_agent_refuses(fed: &mut LocalFederation, why: &str) -> anyhow::Result<()> {
    for (i, reason) in wait_refusals(&mut fed.agent_events, AGENTS, Duration::from_secs(60)).await? {
        assert!(reason.contains(why), "agent {i}: {reason}");
    }
    Ok(())
}

/// An agent that keeps its own budget (agent.toml's `[privacy]`) refuses a secure round that adds no noise, before
/// its masked vector leaves the device.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_with_their_own_budget_refuse_a_round_without_noise() -> anyhow::Result<()> {
    init_logs();
    let learners: Vec<Box<dyn Learner>> = (0..AGENTS).map(|i| Box::new(noise(i)) as Box<dyn Learner>).collect();
    let spec = FederationSpec { onnx: onnx(), coordinator: coordinator(), rounds: Some(1), evaluator: None };
    let options = FederationOptions {
        secagg: SecAggConfig { phase_timeout_ms: 10_000, ..SecAggConfig::default() },
        relay_hook: None,
        privacy: None,
        agent_privacy: Some(AgentPrivacy { max_epsilon: 8.0, delta: 1e-5, trusted_agents: AGENTS as u64 }),
        ..Default::default()
    };
    let mut fed = LocalFederation::start_with(spec, learners, options).await?;
    every_agent_refuses(&mut fed, "clips no update").await?;
    assert_eq!(fed.server.store.versions()?.len(), 1, "nothing was committed");
    fed.stop().await
}

/// A server that ignores its own budget (here: one far larger than the agents') is stopped by the agents: each
/// accounts the rounds it uploads to from the plan's noise and refuses the first that would pass its own budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_stop_a_server_whose_budget_is_larger_than_theirs() -> anyhow::Result<()> {
    init_logs();
    let params = 16 * 8 + 8 + 8 * 4 + 4;
    let probe = RunPrivacy::new(settings(50.0), AGENTS, []).map_err(anyhow::Error::msg)?;
    let mut p = SecAggConfig::default().params_for(AGENTS);
    let ddg = probe.configure(&mut p, AGENTS, params).map_err(anyhow::Error::msg)?;
    // The agents trust exactly the survivors the server calibrates for: their cost per round is the server's.
    let (one, two) = (epsilon_after(ddg, 1)?, epsilon_after(ddg, 2)?);
    let learners: Vec<Box<dyn Learner>> = (0..AGENTS).map(|i| Box::new(noise(i)) as Box<dyn Learner>).collect();
    let spec = FederationSpec { onnx: onnx(), coordinator: coordinator(), rounds: None, evaluator: None };
    let options = FederationOptions {
        secagg: SecAggConfig { phase_timeout_ms: 10_000, ..SecAggConfig::default() },
        relay_hook: None,
        privacy: Some(settings(50.0)),
        agent_privacy: Some(AgentPrivacy {
            max_epsilon: (one + two) / 2.0,
            delta: 1e-5,
            trusted_agents: AGENTS as u64,
        }),
        ..Default::default()
    };
    let mut fed = LocalFederation::start_with(spec, learners, options).await?;
    let mut events = fed.server.events();
    let first = wait_server(&mut events, Duration::from_secs(60), |e| match e {
        ServerEvent::RoundCompleted(r) => Some(Ok(r.round)),
        ServerEvent::RoundAborted(r) => Some(Err(format!("{:?}", r.outcome))),
        _ => None,
    })
    .await?;
    assert!(first.is_ok(), "the first round fits every budget: {first:?}");
    every_agent_refuses(&mut fed, "budget is spent").await?;
    fed.stop().await
}
