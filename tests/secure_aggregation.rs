//! Whole system with secure aggregation (on by default): a server and agents over real loopback QUIC with mutual
//! TLS run SecAgg+ rounds. The agents' deltas are known (`NoiseLearner::delta_for`), so each new global model can
//! be checked against the plain weighted mean; a relaying server that swaps a key is caught by the peers; a server
//! that strips secure aggregation from the plan (a downgrade) is refused by every agent, a server that gives one
//! agent other training settings than its neighbours is refused by all of them, which uploads nothing; an
//! agent killed after sharing its keys is dropped and the round completes without it. A round that fine-tunes part
//! of the model (`trainable` patterns, agents training with tract) masks only that part: the server receives vectors
//! of the part's length, moves only those weights and leaves the frozen ones bit for bit; a plan whose patterns
//! name no weight of the agents' model is refused by every agent.

use fedge_agent::client::{AgentEvent, PLAIN_ROUND_REFUSED};
use fedge_agent::learner::{Learner, NoiseLearner};
use fedge_agent::trainer::TractLearner;
use fedge_ctl::demo::{FederationOptions, FederationSpec, LocalFederation};
use fedge_server::coordinator::{CoordinatorConfig, RoundRecord, SecAggConfig, SecurePhase};
use fedge_server::service::{RelayHook, ServerEvent};
use fedge_shared::protocol::ServerMessage;
use fedge_system_tests::{HeldLearner, cohort_of, init_logs, wait_agent, wait_refusals, wait_server};
use std::sync::Arc;
use std::time::Duration;

const SCALE: f32 = 0.05;

fn spec(agents: usize, min_agents: usize, rounds: u64) -> FederationSpec {
    FederationSpec {
        onnx: fedge_shared::train::builder::mlp(&[16, 8, 4], 1),
        coordinator: CoordinatorConfig {
            min_agents,
            seed: 9,
            round_timeout_ms: 20_000,
            retry_backoff_ms: 200,
            ..cohort_of(agents)
        },
        rounds: Some(rounds),
        evaluator: None,
    }
}

fn secagg() -> SecAggConfig {
    SecAggConfig { phase_timeout_ms: 10_000, ..SecAggConfig::default() }
}

/// Agent `i`'s learner: seed and example count are functions of `i`.
fn noise(i: usize) -> NoiseLearner {
    NoiseLearner::new(20 + 13 * i as u64, 100 + i as u64, SCALE)
}

/// The plain weighted mean of the deltas of `agents` in the round of `record` (the seed each agent trained with
/// is the one the server put in its plan).
fn expected_mean(record: &RoundRecord, agents: &[usize], params: usize) -> Vec<f32> {
    let round_seed = record.plan.hyper.seed ^ record.round.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut sum = vec![0f64; params];
    let mut total = 0f64;
    for &i in agents {
        let l = noise(i);
        let d = NoiseLearner::delta_for(l.seed, round_seed, params, SCALE);
        for (s, v) in sum.iter_mut().zip(&d) {
            *s += l.examples as f64 * f64::from(*v);
        }
        total += l.examples as f64;
    }
    sum.iter().map(|s| (s / total) as f32).collect()
}

async fn next_round_end(
    events: &mut tokio::sync::broadcast::Receiver<ServerEvent>,
) -> anyhow::Result<Result<RoundRecord, RoundRecord>> {
    wait_server(events, Duration::from_secs(60), |e| match e {
        ServerEvent::RoundCompleted(r) => Some(Ok((**r).clone())),
        ServerEvent::RoundAborted(r) => Some(Err((**r).clone())),
        _ => None,
    })
    .await
}

/// How far a secure round's mean may be from the plain one: two quantization steps of the round (one agent's
/// rounding is under one step, and the mean divides the sum's by a total weight near the cohort's size) plus 2e-4.
fn rounding(record: &RoundRecord) -> f32 {
    let fedge_server::coordinator::AggregationMode::Secure(plan) = &record.plan.aggregation else {
        panic!("a secure round")
    };
    (2.0 * fedge_shared::secagg::quant::quantum(&plan.params)) as f32 + 2e-4
}

fn assert_close(got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len());
    let worst = got.iter().zip(want).map(|(g, w)| (g - w).abs()).fold(0f32, f32::max);
    assert!(worst <= tol, "largest difference from the plain mean is {worst}, tolerance {tol}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secure_rounds_over_quic_move_the_global_model_by_the_plain_weighted_mean() -> anyhow::Result<()> {
    init_logs();
    const AGENTS: usize = 5;
    let learners: Vec<Box<dyn Learner>> = (0..AGENTS).map(|i| Box::new(noise(i)) as Box<dyn Learner>).collect();
    // The relay is watched, not changed: per round, how many keys and how many certificates each agent is sent.
    let relayed: Arc<std::sync::Mutex<Vec<(u64, usize, usize)>>> = Arc::default();
    let seen = relayed.clone();
    let hook: RelayHook = Arc::new(move |_to: &str, m: &mut ServerMessage| {
        if let ServerMessage::SecAggKeys { round, keys, certificates, .. } = m {
            let sent = certificates.iter().filter(|c| !c.is_empty()).count();
            seen.lock().unwrap().push((*round, keys.len(), sent));
        }
    });
    let options = FederationOptions { secagg: secagg(), relay_hook: Some(hook), privacy: None, ..Default::default() };
    let fed = LocalFederation::start_with(spec(AGENTS, AGENTS, 2), learners, options).await?;
    let mut events = fed.server.events();
    for _ in 0..2 {
        let record = next_round_end(&mut events).await?.map_err(|r| anyhow::anyhow!("aborted: {:?}", r.outcome))?;
        assert!(record.plan.aggregation.is_secure(), "secure aggregation is on by default");
        assert_eq!(record.reported.len(), AGENTS);
        let m = record.metrics.secagg.clone().expect("a secure round records its phases");
        assert_eq!((m.survivors, m.dropped_after_sharing), (AGENTS, 0));
        let version = record.new_version.expect("committed");
        let before = fed.server.store.weights(version - 1)?;
        let after = fed.server.store.weights(version)?;
        let got: Vec<f32> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
        // Under one quantization step per agent in the sum, about one in the mean; the weights add their own rounding.
        let tol = rounding(&record);
        assert_close(&got, &expected_mean(&record, &(0..AGENTS).collect::<Vec<_>>(), before.len()), tol);
    }
    // Certificates travel once per connection: every one in the first round, none in the second.
    let relayed = relayed.lock().unwrap().clone();
    assert_eq!(relayed.len(), 2 * AGENTS, "{relayed:?}");
    let first = relayed.iter().map(|r| r.0).min().unwrap_or_default();
    for (round, keys, certificates) in relayed {
        assert_eq!(keys, AGENTS, "five agents: each is everyone's neighbour");
        assert_eq!(certificates, if round == first { AGENTS } else { 0 }, "round {round}");
    }
    fed.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relaying_server_that_swaps_a_key_is_refused_by_the_peers_and_nothing_is_committed() -> anyhow::Result<()> {
    init_logs();
    const AGENTS: usize = 3;
    // The dishonest relay replaces one agent's mask key (keeping its signature) in what it sends to the others.
    let hook: RelayHook = Arc::new(|to: &str, m: &mut ServerMessage| {
        // Cohort indices follow the selection order, not the names: find agent-000's keys by their certificate.
        if let ServerMessage::SecAggKeys { keys, certificates, .. } = m
            && to != "agent-000"
        {
            for (k, cert) in keys.iter_mut().zip(certificates.iter()) {
                let der = rustls::pki_types::CertificateDer::from(cert.clone());
                if fedge_shared::tls::CertInfo::parse(&der).is_ok_and(|c| c.name == "agent-000") {
                    k.mask_pk = [7; 32];
                }
            }
        }
    });
    let learners: Vec<Box<dyn Learner>> = (0..AGENTS).map(|i| Box::new(noise(i)) as Box<dyn Learner>).collect();
    let options = FederationOptions { secagg: secagg(), relay_hook: Some(hook), privacy: None, ..Default::default() };
    let mut fed = LocalFederation::start_with(spec(AGENTS, AGENTS, 1), learners, options).await?;
    let mut events = fed.server.events();
    let refused = wait_agent(&mut fed.agent_events, Duration::from_secs(60), |i, e| match e {
        AgentEvent::SecureRoundRefused { reason, .. } => Some((i, reason.clone())),
        _ => None,
    })
    .await?;
    assert_ne!(refused.0, 0, "the agent whose key was swapped is not the one deceived");
    assert!(refused.1.contains("signature"), "refused for the signature: {}", refused.1);
    let end = next_round_end(&mut events).await?;
    let record = end.expect_err("the round must abort");
    assert!(record.new_version.is_none());
    assert_eq!(fed.server.store.versions()?.len(), 1, "only version 0 exists");
    fed.stop().await
}

/// Different settings for different agents (the model-inconsistency attack): the relay gives every agent but the
/// victim a learning rate of zero, so that their updates vanish and the secure sum is the victim's. Each agent signs
/// the digest of the plan it trains from into its keys; the victim and its neighbours see contexts other than
/// their own and refuse before sharing anything, and nothing is committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_gives_the_victim_other_settings_than_its_neighbours_is_refused_before_any_share()
-> anyhow::Result<()> {
    init_logs();
    const AGENTS: usize = 3;
    let hook: RelayHook = Arc::new(|to: &str, m: &mut ServerMessage| {
        if let ServerMessage::Plan(plan) = m
            && to != "agent-000"
        {
            plan.train.learning_rate = 0.0;
        }
    });
    let learners: Vec<Box<dyn Learner>> = (0..AGENTS).map(|i| Box::new(noise(i)) as Box<dyn Learner>).collect();
    let options = FederationOptions { secagg: secagg(), relay_hook: Some(hook), privacy: None, ..Default::default() };
    let mut fed = LocalFederation::start_with(spec(AGENTS, AGENTS, 1), learners, options).await?;
    let mut events = fed.server.events();
    for (i, reason) in wait_refusals(&mut fed.agent_events, AGENTS, Duration::from_secs(60)).await? {
        assert!(reason.contains("context"), "agent {i} refused for the round context: {reason}");
    }
    let record = next_round_end(&mut events).await?.expect_err("the round must abort");
    assert!(record.new_version.is_none());
    assert_eq!(fed.server.store.versions()?.len(), 1, "only version 0 exists");
    fed.stop().await
}

/// A server that admits a revoked agent (its revoked.txt does not list it) still relays the operator's CA-signed
/// revocation list; the revoked agent's peers check its certificate against that list and refuse the round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_refuse_an_agent_the_ca_signed_revocation_list_names_even_when_the_server_admits_it() -> anyhow::Result<()>
{
    init_logs();
    const AGENTS: usize = 3;
    let learners: Vec<Box<dyn Learner>> = (0..AGENTS).map(|i| Box::new(noise(i)) as Box<dyn Learner>).collect();
    let options = FederationOptions { secagg: secagg(), relay_hook: None, privacy: None, ..Default::default() };
    let mut fed = LocalFederation::start_with(spec(AGENTS, AGENTS, 5), learners, options).await?;
    let pki = fed.pki();
    let revoked = fedge_shared::tls::Identity::load_bundle(&pki.join("agents").join("agent-001"))?.info()?;
    let ca_key = std::fs::read_to_string(pki.join(fedge_shared::tls::files::CA_KEY))?;
    let list = fedge_shared::revocation_list::RevocationList::sign(&ca_key, vec![revoked.fingerprint], 1)?;
    std::fs::write(pki.join(fedge_shared::revocation_list::FILE), list.to_bytes()?)?;
    // From the next key broadcast on, agent-001's two neighbours refuse the round, naming the revocation.
    for (i, reason) in wait_refusals(&mut fed.agent_events, 2, Duration::from_secs(60)).await? {
        assert_ne!(i, 1, "the revoked agent does not check itself");
        assert!(reason.contains("agent-001") && reason.contains("revoked by the federation CA"), "{reason}");
    }
    fed.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_after_sharing_its_keys_is_dropped_and_the_round_completes_without_it() -> anyhow::Result<()> {
    init_logs();
    const AGENTS: usize = 5;
    let victim = AGENTS - 1;
    let learners: Vec<Box<dyn Learner>> = (0..AGENTS)
        .map(|i| {
            if i == victim {
                Box::new(HeldLearner::delayed(noise(i), Duration::from_secs(4))) as Box<dyn Learner>
            } else {
                Box::new(noise(i)) as Box<dyn Learner>
            }
        })
        .collect();
    let options = FederationOptions { secagg: secagg(), relay_hook: None, privacy: None, ..Default::default() };
    let fed = LocalFederation::start_with(spec(AGENTS, 3, 1), learners, options).await?;
    let mut events = fed.server.events();
    // Once the shares are relayed the victim holds its neighbours' shares and they hold its: kill it then.
    wait_server(&mut events, Duration::from_secs(60), |e| match e {
        ServerEvent::SecAggPhase { phase: SecurePhase::Masked, .. } => Some(()),
        _ => None,
    })
    .await?;
    fed.agents[victim].abort();
    let record = next_round_end(&mut events).await?.map_err(|r| anyhow::anyhow!("aborted: {:?}", r.outcome))?;
    let victim_name = format!("agent-{victim:03}");
    assert_eq!(record.reported.len(), AGENTS - 1);
    assert!(record.dropped.iter().any(|d| d.agent == victim_name), "{:?}", record.dropped);
    let m = record.metrics.secagg.clone().expect("secure round");
    assert_eq!((m.survivors, m.dropped_after_sharing), (AGENTS - 1, 1));
    let version = record.new_version.expect("committed");
    let before = fed.server.store.weights(version - 1)?;
    let after = fed.server.store.weights(version)?;
    let got: Vec<f32> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    let survivors: Vec<usize> = (0..AGENTS).filter(|&i| i != victim).collect();
    assert_close(&got, &expected_mean(&record, &survivors, before.len()), rounding(&record));
    fed.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_strips_secure_aggregation_from_the_plan_is_refused_by_every_agent_and_nothing_is_uploaded()
-> anyhow::Result<()> {
    init_logs();
    const AGENTS: usize = 3;
    // The downgrade: the server runs a secure round but tells every agent the round is plain, hoping for deltas in
    // the clear. The agents keep their default, require_secure_aggregation = true.
    let hook: RelayHook = Arc::new(|_to: &str, m: &mut ServerMessage| {
        if let ServerMessage::Plan(plan) = m {
            plan.secagg = None;
        }
    });
    let learners: Vec<Box<dyn Learner>> = (0..AGENTS).map(|i| Box::new(noise(i)) as Box<dyn Learner>).collect();
    let options = FederationOptions { secagg: secagg(), relay_hook: Some(hook), privacy: None, ..Default::default() };
    let mut fed = LocalFederation::start_with(spec(AGENTS, AGENTS, 1), learners, options).await?;
    let mut events = fed.server.events();
    let mut refused = std::collections::BTreeSet::new();
    while refused.len() < AGENTS {
        let (i, round, reason) = wait_agent(&mut fed.agent_events, Duration::from_secs(60), |i, e| match e {
            AgentEvent::PlanRefused { round, reason } => Some(Ok((i, *round, reason.clone()))),
            AgentEvent::Trained { .. } | AgentEvent::MaskedUploaded { .. } => {
                Some(Err(anyhow::anyhow!("agent {i} trained or uploaded in a downgraded round: {e:?}")))
            }
            _ => None,
        })
        .await??;
        assert_eq!(round, 1);
        assert_eq!(reason, PLAIN_ROUND_REFUSED, "agent {i} names the reason");
        refused.insert(i);
    }
    let record = next_round_end(&mut events).await?.expect_err("the round must abort");
    assert!(record.reported.is_empty(), "no agent reported: {:?}", record.reported);
    assert_eq!(record.dropped.len(), AGENTS, "{:?}", record.dropped);
    // The first refusal leaves too few members and aborts the round; the others are dropped with it.
    let first = record.dropped.first().map(|d| d.reason.as_str()).unwrap_or_default();
    assert!(first.contains(PLAIN_ROUND_REFUSED), "the server records the refusal's reason: {first}");
    assert_eq!(fed.server.store.versions()?.len(), 1, "only version 0 exists");
    fed.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_refuse_a_secure_round_below_their_floor_before_advertising_a_key_and_the_server_records_why()
-> anyhow::Result<()> {
    init_logs();
    const AGENTS: usize = 3;
    // The server proposes t = 2 of 2 neighbours for three agents; each agent.toml asks for t >= 3 (as an operator
    // who fears two compromised devices would). No key is advertised, nothing is trained or uploaded.
    let learners: Vec<Box<dyn Learner>> = (0..AGENTS).map(|i| Box::new(noise(i)) as Box<dyn Learner>).collect();
    let floor = fedge_shared::secagg::RoundFloor { min_cohort: 2, min_threshold: 3 };
    let options = FederationOptions { secagg: secagg(), agent_floor: floor, ..Default::default() };
    let mut fed = LocalFederation::start_with(spec(AGENTS, AGENTS, 1), learners, options).await?;
    let mut events = fed.server.events();
    let mut refused = std::collections::BTreeSet::new();
    while refused.len() < AGENTS {
        let (i, reason) = wait_agent(&mut fed.agent_events, Duration::from_secs(60), |i, e| match e {
            AgentEvent::SecureRoundRefused { reason, .. } => Some(Ok((i, reason.clone()))),
            AgentEvent::Trained { .. } | AgentEvent::MaskedUploaded { .. } => {
                Some(Err(anyhow::anyhow!("agent {i} trained or uploaded in a round below its floor: {e:?}")))
            }
            _ => None,
        })
        .await??;
        assert!(reason.contains("secagg.min_threshold"), "agent {i} names the setting: {reason}");
        refused.insert(i);
    }
    let record = next_round_end(&mut events).await?.expect_err("the round must abort");
    assert!(record.reported.is_empty(), "no agent reported: {:?}", record.reported);
    let first = record.dropped.first().map(|d| d.reason.as_str()).unwrap_or_default();
    assert!(first.contains("secagg.min_threshold"), "the server records the refusal's reason: {first}");
    assert_eq!(fed.server.store.versions()?.len(), 1, "only version 0 exists");
    fed.stop().await
}

/// 48 examples of 4 features in 3 classes, varied by `offset`, with a rule that training can follow.
fn tiny_classes(offset: usize) -> fedge_shared::data::Dataset {
    let n = 48;
    let features: Vec<f32> = (0..n * 4).map(|i| (((i + offset) * 37) % 101) as f32 / 50.0 - 1.0).collect();
    let labels = (0..n).map(|i| u32::from(features[i * 4] > 0.0) + u32::from(features[i * 4 + 1] > 0.5)).collect();
    fedge_shared::data::Dataset::new(features, labels, vec![4], 3).expect("a consistent data set")
}

/// A federation of `agents` agents training `onnx` with tract (tiny data, one epoch), `trainable` patterns on.
async fn fine_tuning_federation(
    onnx: Vec<u8>,
    agents: usize,
    trainable: &[&str],
    relay_hook: Option<RelayHook>,
) -> anyhow::Result<LocalFederation> {
    let mut coordinator =
        CoordinatorConfig { seed: 9, round_timeout_ms: 20_000, retry_backoff_ms: 200, ..cohort_of(agents) };
    coordinator.hyper.batch_size = 8;
    coordinator.hyper.learning_rate = 0.2;
    coordinator.hyper.trainable = trainable.iter().map(|s| s.to_string()).collect();
    let spec = FederationSpec { onnx, coordinator, rounds: Some(1), evaluator: None };
    let learners: Vec<Box<dyn Learner>> = (0..agents)
        .map(|i| Box::new(TractLearner::new(tiny_classes(100 * i), None, i as u64)) as Box<dyn Learner>)
        .collect();
    LocalFederation::start_with(
        spec,
        learners,
        FederationOptions { secagg: secagg(), relay_hook, privacy: None, ..Default::default() },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secure_round_that_fine_tunes_the_head_masks_only_the_head_and_leaves_the_backbone_bit_for_bit()
-> anyhow::Result<()> {
    init_logs();
    const AGENTS: usize = 3;
    let onnx = fedge_shared::train::builder::mlp(&[4, 5, 3], 1);
    let layout = fedge_shared::train::TrainableModel::from_onnx_bytes(&onnx)?.params().to_vec();
    let part = fedge_shared::train::TrainablePart::select(&layout, &["fc2.*".to_string()])?;
    let (head, whole) = (part.len(), part.full_len());
    assert_eq!((head, whole), (5 * 3 + 3, 4 * 5 + 5 + 5 * 3 + 3));
    let mut fed = fine_tuning_federation(onnx, AGENTS, &["fc2.*"], None).await?;
    let mut events = fed.server.events();
    let record = next_round_end(&mut events).await?.map_err(|r| anyhow::anyhow!("aborted: {:?}", r.outcome))?;
    assert!(record.plan.aggregation.is_secure());
    assert_eq!(record.plan.hyper.trainable, ["fc2.*"]);
    let m = record.metrics.secagg.clone().expect("a secure round records its phases");
    assert_eq!((m.survivors, m.dropped_after_sharing), (AGENTS, 0));
    // What the server received: per agent one masked vector of the weight, the counts (evaluation and training)
    // and the head.
    let per_agent = 1 + fedge_shared::round_counts::SECURE_COUNTS as usize + head;
    let fedge_server::coordinator::AggregationMode::Secure(plan) = &record.plan.aggregation else { unreachable!() };
    // Three agents: 13 quantization bits in 15-bit words, so 4 bytes for the weight and each count, 15 bits a value
    // (packed to the bit, the whole padded to 4 bytes).
    assert_eq!((plan.params.quant_bits, plan.params.word_bits), (13, 15));
    let wire = fedge_shared::secagg::words::wire_len(&plan.params, per_agent);
    assert_eq!(wire, (4 * (per_agent - head) + (15 * head).div_ceil(8)).next_multiple_of(4) as u64);
    assert_eq!(record.metrics.update_bytes, AGENTS as u64 * wire, "masked vectors of {per_agent} values");
    // And what each agent masked and sent.
    let mut sent = vec![];
    while sent.len() < AGENTS {
        let values = wait_agent(&mut fed.agent_events, Duration::from_secs(10), |_, e| match e {
            AgentEvent::MaskedUploaded { values, .. } => Some(*values),
            _ => None,
        })
        .await?;
        sent.push(values);
    }
    assert_eq!(sent, vec![per_agent; AGENTS]);
    let version = record.new_version.expect("committed");
    let before = fed.server.store.weights(version - 1)?;
    let after = fed.server.store.weights(version)?;
    assert_eq!(after.len(), whole);
    let bits = |w: &[f32]| w.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&part.gather_frozen(&after)?), bits(&part.gather_frozen(&before)?), "the backbone is frozen");
    let (h0, h1) = (part.gather(&before)?, part.gather(&after)?);
    let moved = h0.iter().zip(&h1).filter(|(a, b)| a != b).count();
    assert!(moved > head / 2, "the head trained: {moved} of {head} weights moved");
    fed.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_whose_trainable_patterns_name_no_weight_of_the_model_is_refused_by_every_agent() -> anyhow::Result<()> {
    init_logs();
    const AGENTS: usize = 2;
    // The server checks its patterns against its model; a relay that rewrites them stands in for a server whose
    // model differs from the agents'.
    let hook: RelayHook = Arc::new(|_: &str, m: &mut ServerMessage| {
        if let ServerMessage::Plan(plan) = m {
            plan.train.trainable = vec!["classifier.*".into()];
        }
    });
    let onnx = fedge_shared::train::builder::mlp(&[4, 5, 3], 1);
    let mut fed = fine_tuning_federation(onnx, AGENTS, &["fc2.*"], Some(hook)).await?;
    let mut events = fed.server.events();
    let mut refused = std::collections::BTreeSet::new();
    while refused.len() < AGENTS {
        let (i, reason) = wait_agent(&mut fed.agent_events, Duration::from_secs(60), |i, e| match e {
            AgentEvent::PlanRefused { reason, .. } => Some(Ok((i, reason.clone()))),
            AgentEvent::Trained { .. } | AgentEvent::MaskedUploaded { .. } => {
                Some(Err(anyhow::anyhow!("agent {i} trained or uploaded under patterns it cannot match: {e:?}")))
            }
            _ => None,
        })
        .await??;
        assert!(reason.contains("\"classifier.*\" matches no weight") && reason.contains("fc1.weight"), "{reason}");
        refused.insert(i);
    }
    let record = next_round_end(&mut events).await?.expect_err("the round must abort");
    assert!(record.reported.is_empty());
    assert_eq!(fed.server.store.versions()?.len(), 1, "only version 0 exists");
    fed.stop().await
}
