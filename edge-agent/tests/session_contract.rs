//! The agent session's documented guarantees (`edge-agent/src/session.rs`), one test each, driven without sockets:
//! plans in, outputs out, with a fake of what the agent holds. The simulated network (`tests/simulated_network.rs`
//! at the workspace root) runs the same session against the real coordinator under faults.

use fedge_agent::agent_event::AgentEvent;
use fedge_agent::learner::LearnOutcome;
use fedge_agent::session::{Env, Holdings, Input, Output, PLAIN_ROUND_REFUSED, Session, SessionConfig};
use fedge_shared::delta_encoding::DeltaEncoding;
use fedge_shared::model::Digest;
use fedge_shared::protocol::{
    AgentMessage, HeldMember, HeldPlan, OptimizerKind, RoundPlan, SecAggPlan, ServerMessage, TrainPlan,
};
use fedge_shared::secagg::{AdvertiseKeys, AgentRef, EcdsaP256Signer, MaskWith, RoundFloor, SecAggParams};
use fedge_shared::tls::{self, Identity, Role, files};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use rustls::pki_types::UnixTime;
use std::cell::Cell;
use std::path::Path;

/// What the fake agent holds.
struct Fake {
    trained: Option<u64>,
    plan_error: Option<String>,
    version: Cell<Option<u64>>,
}

impl Holdings for Fake {
    fn check_round(&self, round: u64, _seed: u64) -> Result<(), String> {
        match self.trained {
            Some(r) if r == round => Err(format!("already trained for round {round}")),
            _ => Ok(()),
        }
    }

    fn check_plan(&self, _: &TrainPlan) -> Result<(), String> {
        self.plan_error.clone().map_or(Ok(()), Err)
    }

    fn holds(&self, plan: &RoundPlan) -> bool {
        self.version.get() == Some(plan.model_version)
    }
}

fn fake() -> Fake {
    Fake { trained: None, plan_error: None, version: Cell::new(Some(3)) }
}

/// A federation of `n` agents in `dir`: the CA and each agent's bundle path.
struct Federation {
    ca: Vec<rustls::pki_types::CertificateDer<'static>>,
    bundles: Vec<std::path::PathBuf>,
}

fn federation(dir: &Path, n: usize) -> Federation {
    let pki = dir.join("pki");
    tls::init_federation(&pki, &["localhost".into()], 30).unwrap();
    let bundles = (0..n).map(|i| tls::issue_bundle(&pki, &format!("a{i}"), Role::Agent, 30).unwrap()).collect();
    Federation { ca: tls::load_certs(&pki.join(files::CA_CERT)).unwrap(), bundles }
}

fn der(bundle: &Path) -> Vec<u8> {
    Identity::load_bundle(bundle).unwrap().chain[0].as_ref().to_vec()
}

fn session(fed: &Federation, i: usize, require_secure: bool, floor: RoundFloor) -> Session {
    let id = Identity::load_bundle(&fed.bundles[i]).unwrap();
    Session::new(SessionConfig {
        require_secure_aggregation: require_secure,
        floor,
        signer: EcdsaP256Signer::from_pkcs8(id.key_pkcs8()).unwrap(),
        verifier: fedge_agent::peer_check::peer_verifier(&fed.ca).unwrap(),
        ca: fed.ca.clone(),
    })
}

/// Agent a0 of a federation of three (kept in the returned directory), with a fresh session.
fn agent(require_secure: bool, floor: RoundFloor) -> (tempfile::TempDir, Session) {
    let dir = tempfile::tempdir().unwrap();
    let fed = federation(dir.path(), 3);
    let s = session(&fed, 0, require_secure, floor);
    (dir, s)
}

fn train() -> TrainPlan {
    TrainPlan {
        epochs: 1,
        batch_size: 8,
        learning_rate: 0.1,
        momentum: 0.0,
        weight_decay: 0.0,
        optimizer: OptimizerKind::Sgd,
        prox_mu: None,
        seed: 1,
        loss: Default::default(),
        trainable: vec![],
        upload: DeltaEncoding::Int8,
    }
}

fn plain_plan(round: u64) -> RoundPlan {
    RoundPlan {
        round,
        model_version: 3,
        graph: Digest::of(b"graph"),
        weights: Digest::of(b"weights"),
        train: train(),
        deadline_ms: 10_000,
        secagg: None,
        held: None,
    }
}

fn secure_plan(round: u64, me: u32, n: usize) -> RoundPlan {
    let cohort = (0..n).map(|i| AgentRef { index: i as u32, name: format!("a{i}") }).collect();
    let mut params = SecAggParams::default_for(n);
    params.threshold = 2;
    RoundPlan {
        secagg: Some(SecAggPlan { params, graph_seed: 9, me, cohort, phase_timeout_ms: 1_000 }),
        ..plain_plan(round)
    }
}

fn outcome(examples: u64) -> LearnOutcome {
    LearnOutcome {
        delta: vec![0.25, -0.5, 0.125],
        examples,
        device_examples: 0,
        train_loss: 0.5,
        holdout_accuracy: None,
        eval: None,
    }
}

struct Driver {
    rng: ChaCha20Rng,
}

impl Driver {
    fn new() -> Driver {
        Driver { rng: ChaCha20Rng::seed_from_u64(4) }
    }

    fn feed(&mut self, s: &mut Session, held: &Fake, input: Input) -> Vec<Output> {
        s.handle(input, &mut Env { now: UnixTime::now(), rng: &mut self.rng, held })
    }

    fn plan(&mut self, s: &mut Session, held: &Fake, plan: RoundPlan) -> Vec<Output> {
        self.feed(s, held, Input::Server(ServerMessage::Plan(Box::new(plan))))
    }
}

fn abandons(out: &[Output]) -> Vec<(u64, String)> {
    out.iter()
        .filter_map(|o| match o {
            Output::Send(AgentMessage::Abandon { round, reason }) => Some((*round, reason.clone())),
            _ => None,
        })
        .collect()
}

fn trains(out: &[Output]) -> Vec<u64> {
    out.iter().filter_map(|o| if let Output::Train(p) = o { Some(p.round) } else { None }).collect()
}

fn advertised(out: &[Output]) -> Vec<AdvertiseKeys> {
    out.iter()
        .filter_map(|o| if let Output::Send(AgentMessage::SecAggAdvertise(k)) = o { Some(k.clone()) } else { None })
        .collect()
}

fn plan_refused(out: &[Output]) -> bool {
    out.iter().any(|o| matches!(o, Output::Report(AgentEvent::PlanRefused { .. })))
}

fn uploads(out: &[Output]) -> usize {
    out.iter().filter(|o| matches!(o, Output::UploadPlain { .. } | Output::UploadMasked { .. })).count()
}

#[test]
fn a_plan_for_a_round_already_trained_for_is_refused_before_anything_is_trained() {
    let (_dir, mut s) = agent(false, RoundFloor::default());
    let held = Fake { trained: Some(7), ..fake() };
    let out = Driver::new().plan(&mut s, &held, plain_plan(7));
    assert!(plan_refused(&out));
    assert_eq!(abandons(&out), vec![(7, "already trained for round 7".into())]);
    assert!(trains(&out).is_empty());
}

#[test]
fn a_plan_the_model_cannot_carry_out_is_refused_and_a_secure_one_advertises_no_key() {
    let (_dir, mut s) = agent(false, RoundFloor::default());
    let held = Fake { plan_error: Some("no weight matches `head.*`".into()), ..fake() };
    let out = Driver::new().plan(&mut s, &held, secure_plan(2, 0, 3));
    assert!(plan_refused(&out));
    assert!(advertised(&out).is_empty());
    assert_eq!(abandons(&out).len(), 1);
}

#[test]
fn a_plain_plan_is_refused_when_secure_aggregation_is_required() {
    let (_dir, mut s) = agent(true, RoundFloor::default());
    let out = Driver::new().plan(&mut s, &fake(), plain_plan(1));
    assert_eq!(abandons(&out), vec![(1, PLAIN_ROUND_REFUSED.to_string())]);
    assert!(trains(&out).is_empty());
}

#[test]
fn a_secure_plan_below_this_agents_floor_is_refused_before_any_key_is_advertised() {
    let (_dir, mut s) = agent(false, RoundFloor { min_cohort: 10, min_threshold: 0 });
    let out = Driver::new().plan(&mut s, &fake(), secure_plan(1, 0, 3));
    assert!(advertised(&out).is_empty());
    assert!(out.iter().any(|o| matches!(o, Output::Report(AgentEvent::SecureRoundRefused { round: 1, .. }))));
    let (round, reason) = abandons(&out).pop().unwrap();
    assert_eq!(round, 1);
    assert!(reason.contains("secagg.min_cohort"), "{reason}");
}

#[test]
fn a_plan_repeated_on_the_same_connection_is_ignored_and_on_a_new_one_is_taken() {
    let (_dir, mut s) = agent(false, RoundFloor::default());
    let mut d = Driver::new();
    let held = fake();
    assert_eq!(advertised(&d.plan(&mut s, &held, secure_plan(4, 0, 3))).len(), 1);
    assert!(d.plan(&mut s, &held, secure_plan(4, 0, 3)).is_empty(), "the repeat changes nothing");
    s.connected(10);
    assert_eq!(advertised(&d.plan(&mut s, &held, secure_plan(4, 0, 3))).len(), 1);
}

#[test]
fn training_starts_once_the_plans_model_is_held_and_never_while_another_round_trains() {
    let (_dir, mut s) = agent(false, RoundFloor::default());
    let mut d = Driver::new();
    let held = Fake { version: Cell::new(Some(2)), ..fake() };
    assert!(trains(&d.plan(&mut s, &held, plain_plan(1))).is_empty(), "version 3 is not held yet");
    held.version.set(Some(3));
    assert_eq!(trains(&d.feed(&mut s, &held, Input::ModelChanged)), vec![1]);
    assert_eq!(s.training(), Some(1));
    // A plan for the next round waits for round 1's training to end.
    assert!(trains(&d.plan(&mut s, &held, plain_plan(2))).is_empty());
    let out = d.feed(&mut s, &held, Input::Learned { round: 1, outcome: Ok(outcome(10)) });
    assert_eq!(trains(&out), vec![2]);
}

#[test]
fn a_plain_round_uploads_its_delta_in_the_plans_encoding_after_declaring_grown_examples() {
    let (_dir, mut s) = agent(false, RoundFloor::default());
    let mut d = Driver::new();
    let held = fake();
    s.connected(10);
    d.plan(&mut s, &held, plain_plan(1));
    let out = d.feed(&mut s, &held, Input::Learned { round: 1, outcome: Ok(outcome(12)) });
    assert!(matches!(out[0], Output::DeclareExamples(12)), "the grown count is declared first");
    assert!(matches!(out[1], Output::UploadPlain { round: 1, encoding: DeltaEncoding::Int8, .. }));
    assert_eq!(out.len(), 2);
}

#[test]
fn a_round_that_ended_before_its_training_did_drops_the_delta() {
    let (_dir, mut s) = agent(false, RoundFloor::default());
    let mut d = Driver::new();
    let held = fake();
    s.connected(10);
    d.plan(&mut s, &held, plain_plan(1));
    let end = ServerMessage::RoundEnd { round: 1, completed: false, reason: None, new_version: None };
    let out = d.feed(&mut s, &held, Input::Server(end));
    assert!(matches!(out[..], [Output::Report(AgentEvent::RoundEnded { round: 1, completed: false })]));
    let out = d.feed(&mut s, &held, Input::Learned { round: 1, outcome: Ok(outcome(10)) });
    assert_eq!(uploads(&out), 0);
}

#[test]
fn training_that_fails_is_abandoned_once_and_nothing_is_uploaded() {
    let (_dir, mut s) = agent(false, RoundFloor::default());
    let mut d = Driver::new();
    let held = fake();
    d.plan(&mut s, &held, plain_plan(1));
    let out = d.feed(&mut s, &held, Input::Learned { round: 1, outcome: Err("out of memory".into()) });
    assert_eq!(abandons(&out), vec![(1, "out of memory".into())]);
    assert_eq!(uploads(&out), 0);
}

#[test]
fn a_round_the_shell_cannot_begin_or_whose_masked_upload_it_refuses_is_abandoned_with_the_reason() {
    let (_dir, mut s) = agent(false, RoundFloor::default());
    let mut d = Driver::new();
    let held = fake();
    let out = d.feed(&mut s, &held, Input::NotBegun { round: 5, reason: "read-only state".into() });
    assert!(plan_refused(&out));
    assert_eq!(abandons(&out), vec![(5, "read-only state".into())]);
    let out = d.feed(&mut s, &held, Input::MaskedRefused { round: 6, reason: "budget spent".into() });
    assert!(out.iter().any(|o| matches!(o, Output::Report(AgentEvent::SecureRoundRefused { round: 6, .. }))));
    assert_eq!(abandons(&out), vec![(6, "secure aggregation refused: budget spent".into())]);
}

/// Three agents in a secure round, the server played by hand: each session's advertisement is relayed to the
/// others with the certificates given by `cert_of(owner)`.
struct SecureTrio {
    dir: tempfile::TempDir,
    fed: Federation,
    sessions: Vec<Session>,
    keys: Vec<AdvertiseKeys>,
    d: Driver,
}

impl SecureTrio {
    fn new(round: u64) -> SecureTrio {
        let dir = tempfile::tempdir().unwrap();
        let fed = federation(dir.path(), 3);
        let mut d = Driver::new();
        let mut sessions = vec![];
        let mut keys = vec![];
        for i in 0..3 {
            let mut s = session(&fed, i, true, RoundFloor::default());
            keys.extend(advertised(&d.plan(&mut s, &fake(), secure_plan(round, i as u32, 3))));
            sessions.push(s);
        }
        SecureTrio { dir, fed, sessions, keys, d }
    }

    fn relay_keys(&mut self, i: usize, round: u64, certs: Vec<Vec<u8>>) -> Vec<Output> {
        let m = ServerMessage::SecAggKeys { round, keys: self.keys.clone(), certificates: certs, revocations: vec![] };
        self.d.feed(&mut self.sessions[i], &fake(), Input::Server(m))
    }

    fn certs(&self) -> Vec<Vec<u8>> {
        self.fed.bundles.iter().map(|b| der(b)).collect()
    }
}

#[test]
fn a_peer_key_relayed_with_another_agents_certificate_refuses_the_round_before_any_share_is_made() {
    let mut t = SecureTrio::new(1);
    let mut certs = t.certs();
    certs.swap(1, 2);
    let out = t.relay_keys(0, 1, certs);
    assert!(!out.iter().any(|o| matches!(o, Output::Send(AgentMessage::SecAggShares { .. }))));
    let (_, reason) = abandons(&out).pop().unwrap();
    assert!(reason.contains("was relayed for agent"), "{reason}");
    // A certificate from another federation is refused the same way.
    let other = federation(&t.dir.path().join("other"), 3);
    let mut certs = t.certs();
    certs[2] = der(&other.bundles[2]);
    let out = t.relay_keys(1, 1, certs);
    let (_, reason) = abandons(&out).pop().unwrap();
    assert!(reason.contains("not valid in this federation"), "{reason}");
}

#[test]
fn a_secure_rounds_delta_leaves_only_masked_once_the_shares_are_in_and_the_neighbours_to_mask_with_are_known() {
    let mut t = SecureTrio::new(1);
    let certs = t.certs();
    let mut shares = vec![];
    for i in 0..3 {
        let out = t.relay_keys(i, 1, certs.clone());
        for o in out {
            if let Output::Send(AgentMessage::SecAggShares { shares: s, .. }) = o {
                shares.extend(s);
            }
        }
    }
    let held = fake();
    // Agent 0 trains before its shares arrive: nothing is uploaded, in the clear or masked.
    let out = t.d.feed(&mut t.sessions[0], &held, Input::Learned { round: 1, outcome: Ok(outcome(10)) });
    assert_eq!(uploads(&out), 0);
    let mine: Vec<_> = shares.iter().filter(|s| s.to == 0).cloned().collect();
    let out =
        t.d.feed(&mut t.sessions[0], &held, Input::Server(ServerMessage::SecAggShares { round: 1, shares: mine }));
    assert!(matches!(out[..], [Output::Send(AgentMessage::SecAggReceipt(_))]));
    let mask_with = MaskWith { round: 1, to: 0, neighbours: vec![1, 2] };
    let out = t.d.feed(&mut t.sessions[0], &held, Input::Server(ServerMessage::SecAggMaskWith(mask_with)));
    assert!(matches!(out[..], [Output::UploadMasked { round: 1, values: 3, .. }]), "masked, and only masked");
}

#[test]
fn a_secure_rounds_delta_arriving_after_the_round_ended_is_never_uploaded() {
    let mut t = SecureTrio::new(1);
    let held = fake();
    let end = ServerMessage::RoundEnd { round: 1, completed: false, reason: None, new_version: None };
    t.d.feed(&mut t.sessions[0], &held, Input::Server(end));
    let out = t.d.feed(&mut t.sessions[0], &held, Input::Learned { round: 1, outcome: Ok(outcome(10)) });
    assert_eq!(uploads(&out), 0);
}

#[test]
fn an_exact_repeat_of_a_secure_phase_message_is_ignored_and_a_different_second_one_refuses_the_round() {
    let mut t = SecureTrio::new(1);
    let certs = t.certs();
    let first = t.relay_keys(0, 1, certs.clone());
    assert!(matches!(first[..], [Output::Send(AgentMessage::SecAggShares { .. })]));
    assert!(t.relay_keys(0, 1, certs.clone()).is_empty(), "the same broadcast again changes nothing");
    // The same phase with other contents (one key left out) is a second, different answer: refused.
    t.keys.pop();
    let out = t.relay_keys(0, 1, certs[..2].to_vec());
    assert!(out.iter().any(|o| matches!(o, Output::Report(AgentEvent::SecureRoundRefused { round: 1, .. }))));
    assert!(!out.iter().any(|o| matches!(o, Output::Send(AgentMessage::SecAggShares { .. }))));
}

fn hold_plan(round: u64) -> RoundPlan {
    RoundPlan { held: Some(HeldPlan::Train), ..plain_plan(round) }
}

/// A group of three for round `round` in which agent `me` masks the delta of its training for `trained`.
fn group_plan(round: u64, me: u32, trained: u64, scale: f64) -> RoundPlan {
    let members = (0..3).map(|i| HeldMember { index: i, trained_round: trained, trained_version: 3, scale }).collect();
    RoundPlan { held: Some(HeldPlan::Group(members)), ..secure_plan(round, me, 3) }
}

fn ready(out: &[Output]) -> Vec<(u64, u64, u64)> {
    out.iter()
        .filter_map(|o| match o {
            Output::Send(AgentMessage::Ready { round, model_version, examples }) => {
                Some((*round, *model_version, *examples))
            }
            _ => None,
        })
        .collect()
}

#[test]
fn a_held_training_says_ready_instead_of_uploading_even_when_secure_aggregation_is_required() {
    let (_dir, mut s) = agent(true, RoundFloor::default());
    let (mut d, held) = (Driver::new(), fake());
    let out = d.plan(&mut s, &held, hold_plan(4));
    assert_eq!(trains(&out), vec![4], "a training plan is taken by an agent that requires secure aggregation");
    assert!(abandons(&out).is_empty());
    let out = d.feed(&mut s, &held, Input::Learned { round: 4, outcome: Ok(outcome(12)) });
    assert_eq!(ready(&out), vec![(4, 3, 12)]);
    assert_eq!(uploads(&out), 0, "the delta is held, never uploaded in the clear");
    // Failed training is abandoned once, and says nothing of readiness.
    let out = d.plan(&mut s, &held, hold_plan(5));
    assert_eq!(trains(&out), vec![5]);
    let out = d.feed(&mut s, &held, Input::Learned { round: 5, outcome: Err("out of memory".into()) });
    assert!(ready(&out).is_empty() && abandons(&out).len() == 1 && uploads(&out) == 0);
}

#[test]
fn a_held_delta_leaves_only_in_a_group_that_names_its_training_with_acceptable_scales_and_only_once() {
    let (_dir, mut s) = agent(true, RoundFloor::default());
    let (mut d, held) = (Driver::new(), fake());
    d.plan(&mut s, &held, hold_plan(4));
    d.feed(&mut s, &held, Input::Learned { round: 4, outcome: Ok(outcome(12)) });
    let refused = |out: &[Output]| abandons(out).len() == 1 && advertised(out).is_empty() && uploads(out) == 0;
    // A scale under the floor for any member (the others' deltas would vanish from the sum), or above 1: refused.
    for (round, scale) in [(6, HeldMember::MIN_SCALE / 2.0), (7, 1.5), (8, f64::NAN)] {
        let out = d.plan(&mut s, &held, group_plan(round, 0, 4, scale));
        assert!(refused(&out), "scale {scale}");
    }
    // A group naming another training: refused (nothing held for it).
    assert!(refused(&d.plan(&mut s, &held, group_plan(9, 0, 3, 0.5))));
    // A group whose scales do not list its cohort: refused.
    let mut short = group_plan(10, 0, 4, 0.5);
    if let Some(HeldPlan::Group(g)) = short.held.as_mut() {
        g.pop();
    }
    assert!(refused(&d.plan(&mut s, &held, short)));
    // The right group: keys are advertised, and nothing is trained.
    let out = d.plan(&mut s, &held, group_plan(11, 0, 4, 0.5));
    assert_eq!(advertised(&out).len(), 1);
    assert!(trains(&out).is_empty() && abandons(&out).is_empty());
    // The delta is taken: a second group for the same training is refused.
    assert!(refused(&d.plan(&mut s, &held, group_plan(12, 0, 4, 0.5))));
}

#[test]
fn a_held_delta_is_discarded_when_its_round_ends_or_a_new_training_plan_comes() {
    let (_dir, mut s) = agent(false, RoundFloor::default());
    let (mut d, held) = (Driver::new(), fake());
    d.plan(&mut s, &held, hold_plan(4));
    d.feed(&mut s, &held, Input::Learned { round: 4, outcome: Ok(outcome(12)) });
    let end = ServerMessage::RoundEnd { round: 4, completed: false, reason: None, new_version: None };
    d.feed(&mut s, &held, Input::Server(end));
    let out = d.plan(&mut s, &held, group_plan(5, 0, 4, 0.5));
    assert!(advertised(&out).is_empty() && abandons(&out).len() == 1, "discarded when its round ended");
    d.plan(&mut s, &held, hold_plan(6));
    d.feed(&mut s, &held, Input::Learned { round: 6, outcome: Ok(outcome(12)) });
    d.plan(&mut s, &held, hold_plan(7));
    let out = d.plan(&mut s, &held, group_plan(8, 0, 6, 0.5));
    assert!(advertised(&out).is_empty() && abandons(&out).len() == 1, "superseded by a new training plan");
}
