//! The shell's side of the coordinator's contract: every [`Action`] carried out by the core's executor
//! (`Core::act`) and checked against what the coordinator's documentation
//! (`crate::coordinator`, "The shell's contract, action by action") says the shell does with it.
//!
//! No socket: the core is built around a real store in a temporary directory and a real coordinator, and each
//! agent's connection is the real channel its connection task would read (`shell`). [`check`] matches on the
//! action without a wildcard, so a new `Action` does not compile until it has a check here.

mod shell;

use crate::coordinator::{
    AbortReason, Action, Event, Outcome, Partial, RejectReason, RoundPlan, RoundRecord, UnmaskJob,
};
use crate::core_msg::{CoreMsg, Outbound, ServerEvent};
use fedge_shared::model::{Digest, weights_to_bytes};
use fedge_shared::protocol::{BlobKind, ServerMessage};
use fedge_shared::secagg::{AdvertiseKeys, EncryptedShare, MaskWith, SurvivorSet, UnmaskRequest};
use shell::{ACCURACY, GRAPH, WEIGHTS, keys, messages, plan, record, sent, shell, unmask_job};
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

/// One action of each kind.
fn one_of_each() -> Vec<Action> {
    vec![
        Action::SendPlan { agent: "a".into(), plan: plan(1, 0) },
        Action::Reject { agent: "a".into(), reason: RejectReason::Duplicate },
        Action::CancelTraining { agent: "a".into(), round: 1 },
        Action::RoundStarted { round: 4, model_version: 0, selected: 2 },
        Action::Commit {
            record: Box::new(record(1)),
            new_weights: vec![1.0, 2.0, 3.0, 4.0],
            strategy_state: vec![9],
            diff: Some(vec![1, 2, 3, 4, 5, 6, 7, 8]),
        },
        Action::Announce { version: 1 },
        Action::RoundAborted { round: 3, reason: AbortReason::Operator, record: Box::new(record(3)) },
        Action::SecAggKeys {
            agent: "a".into(),
            round: 2,
            keys: vec![keys(0), keys(1)],
            owners: vec!["a".into(), "b".into()],
        },
        Action::SecAggShares {
            agent: "a".into(),
            round: 2,
            shares: vec![EncryptedShare { round: 2, from: 1, to: 0, ciphertext: vec![7; 40] }],
        },
        Action::SecAggMaskWith { agent: "a".into(), mask_with: MaskWith { round: 2, to: 0, neighbours: vec![1] } },
        Action::SecAggSurvivors {
            to: vec!["a".into(), "b".into()],
            set: SurvivorSet { round: 2, survivors: vec![0, 1] },
        },
        Action::SecAggUnmask {
            agent: "a".into(),
            request: UnmaskRequest { round: 2, survivors: vec![0], dropped: vec![1], signatures: vec![] },
        },
        Action::Unmask { round: 2, job: unmask_job(2) },
        Action::WakeAt(5_000),
        Action::Log { message: "an operator should read this".into() },
        Action::Forward {
            result: Ok(Partial { mean: vec![0.5, -0.25], weight: 40, train_loss: Some(0.5), eval: None, agents: 4 }),
            record: Some(Box::new(record(6))),
        },
    ]
}

/// How many kinds of action there are (the arms of [`check`]).
const KINDS: usize = 16;

/// Carries `action` out on a fresh shell and checks what the coordinator's documentation says of it. Returns the
/// action's name. No wildcard: a new `Action` fails to compile here until it has a check.
async fn check(action: Action) -> &'static str {
    match action {
        Action::SendPlan { agent, plan } => send_plan(agent, plan).await,
        Action::Reject { agent, reason } => reject(agent, reason).await,
        Action::CancelTraining { agent, round } => cancel_training(agent, round).await,
        Action::RoundStarted { round, model_version, selected } => round_started(round, model_version, selected).await,
        Action::Commit { record, new_weights, strategy_state, diff } => {
            commit(*record, new_weights, strategy_state, diff).await
        }
        Action::Announce { version } => announce(version).await,
        Action::RoundAborted { round, reason, record } => round_aborted(round, reason, *record).await,
        Action::SecAggKeys { agent, round, keys, owners } => secagg_keys(agent, round, keys, owners).await,
        action @ (Action::SecAggShares { .. }
        | Action::SecAggMaskWith { .. }
        | Action::SecAggSurvivors { .. }
        | Action::SecAggUnmask { .. }) => secagg_relay(action).await,
        Action::Unmask { round, job } => unmask(round, job).await,
        Action::WakeAt(at) => wake_at(at).await,
        Action::Log { message } => log(message).await,
        Action::Forward { result, record } => forward(result, record).await,
    }
}

#[tokio::test]
async fn every_action_is_carried_out_by_the_shell_as_the_coordinator_documents() {
    let mut checked = BTreeSet::new();
    for action in one_of_each() {
        let name = check(action).await;
        assert!(checked.insert(name), "{name} is checked twice");
    }
    assert_eq!(checked.len(), KINDS, "every kind of action has a sample: {checked:?}");
}

/// `SendPlan`: the plan, preceded by the graph and the weights if the connection lacks them; never a plan of a
/// round whose id was not reserved, nor one for a version the server no longer sends.
async fn send_plan(agent: String, plan: RoundPlan) -> &'static str {
    let mut s = shell();
    let mut fresh = s.connect(&agent);
    let mut holding = s.connect_holding("holding");
    s.core.act(Action::SendPlan { agent: agent.clone(), plan: plan.clone() });
    s.core.act(Action::SendPlan { agent: "holding".into(), plan: plan.clone() });
    let out = sent(&mut fresh);
    assert_eq!(out.len(), 4, "graph, announcement, weights, plan: {out:?}");
    let cur = &s.core.current;
    assert!(matches!(&out[0], Outbound::Blob(h, b) if h.kind == BlobKind::Graph && **b == GRAPH));
    assert!(
        matches!(&out[1], Outbound::Msg(m) if matches!(&**m, ServerMessage::Model(a) if a.version == plan.model_version))
    );
    match &out[2] {
        Outbound::Blob(h, b) => {
            assert_eq!(h.kind, BlobKind::Weights { version: plan.model_version });
            assert_eq!(h.digest, Some(cur.weights_digest));
            assert_eq!(**b, weights_to_bytes(&WEIGHTS));
        }
        other => panic!("the weights come before the plan, not {other:?}"),
    }
    let wire = match out[3].clone() {
        Outbound::Msg(m) => match *m {
            ServerMessage::Plan(p) => p,
            other => panic!("the plan comes last, not {other:?}"),
        },
        other => panic!("the plan comes last, not {other:?}"),
    };
    assert_eq!((wire.round, wire.model_version), (plan.round, plan.model_version));
    assert_eq!((wire.graph, wire.weights), (cur.graph_digest, cur.weights_digest));
    let only_plan = sent(&mut holding);
    assert!(
        matches!(only_plan.as_slice(), [Outbound::Msg(m)] if matches!(&**m, ServerMessage::Plan(p) if **p == *wire)),
        "a connection that holds the version gets the plan alone: {only_plan:?}"
    );
    s.core.unreserved = Some((plan.round + 1, "no space".into()));
    s.core.act(Action::SendPlan { agent: agent.clone(), plan: self::plan(plan.round + 1, plan.model_version) });
    s.core.act(Action::SendPlan { agent: agent.clone(), plan: self::plan(plan.round, plan.model_version + 5) });
    assert!(sent(&mut fresh).is_empty(), "no plan of an unreserved round, nor of a version not sent");
    "SendPlan"
}

/// `Reject`: `Refused` with the reason, nothing else.
async fn reject(agent: String, reason: RejectReason) -> &'static str {
    let mut s = shell();
    let mut rx = s.connect(&agent);
    s.core.act(Action::Reject { agent, reason: reason.clone() });
    assert_eq!(messages(&mut rx), vec![ServerMessage::Refused { reason: reason.to_string() }]);
    assert_eq!(s.core.store.next_round().expect("readable"), 1, "nothing is written");
    "Reject"
}

/// `CancelTraining`: `RoundEnd`, not completed.
async fn cancel_training(agent: String, round: u64) -> &'static str {
    let mut s = shell();
    let mut rx = s.connect(&agent);
    s.core.act(Action::CancelTraining { agent, round });
    match messages(&mut rx).as_slice() {
        [ServerMessage::RoundEnd { round: r, completed: false, reason: Some(_), new_version: None }] => {
            assert_eq!(*r, round)
        }
        other => panic!("a cancelled agent is told its round ended without it: {other:?}"),
    }
    "CancelTraining"
}

/// `RoundStarted`: the id is reserved in the store; when that fails, none of the round's plans leaves and
/// `RoundNotReserved` is fed back (the coordinator then aborts the round and its agents are told).
async fn round_started(round: u64, model_version: u64, selected: usize) -> &'static str {
    let mut s = shell();
    s.core.act(Action::RoundStarted { round, model_version, selected });
    assert_eq!(s.core.store.next_round().expect("readable"), round + 1, "the id is durable");
    assert!(s.core.unreserved.is_none());
    match s.events.try_recv() {
        Ok(ServerEvent::RoundStarted { round: r, model_version: v, selected: n }) => {
            assert_eq!((r, v, n), (round, model_version, selected))
        }
        other => panic!("watchers are told the round started: {other:?}"),
    }

    // The same through the real coordinator, on a store that can no longer write.
    let mut s = shell();
    let mut outs: Vec<_> = ["a", "b"].iter().map(|a| s.connect_holding(a)).collect();
    for a in ["a", "b"] {
        s.core.feed(Event::AgentConnected { agent: a.into() });
        s.core.feed(Event::CheckIn { agent: a.into(), model_version: Some(0), examples: 10 });
    }
    s.core.store.fail_writes("the disk is gone");
    s.core.feed(Event::StartRounds { count: Some(1) });
    for rx in &mut outs {
        let got = messages(rx);
        assert!(!got.iter().any(|m| matches!(m, ServerMessage::Plan(_))), "no plan of an unreserved round: {got:?}");
        assert!(
            got.iter().any(|m| matches!(
                m,
                ServerMessage::RoundEnd { round: 1, completed: false, reason: Some(why), new_version: None }
                    if why.contains("could not be reserved")
            )),
            "the agents are told the round ended, and why: {got:?}"
        );
    }
    assert_eq!(s.core.coordinator.status().phase, crate::coordinator::Phase::Idle, "the round was aborted");
    assert!(s.core.unreserved.is_none(), "RoundNotReserved was fed back");
    "RoundStarted"
}

/// `Commit`: evaluated and committed on a blocking thread, its result fed back with the version's difference; a
/// failed commit is fed back too.
async fn commit(
    record: RoundRecord,
    new_weights: Vec<f32>,
    strategy_state: Vec<u8>,
    diff: Option<Vec<u8>>,
) -> &'static str {
    let mut s = shell();
    let round = record.round;
    s.core.act(Action::Commit {
        record: Box::new(record.clone()),
        new_weights: new_weights.clone(),
        strategy_state: strategy_state.clone(),
        diff: diff.clone(),
    });
    let committed = match s.fed_back().await {
        CoreMsg::Committed { round: r, result: Ok(m) } if r == round => m,
        other => panic!("the commit's result is fed back: {other:?}"),
    };
    assert_eq!(committed.version, 1);
    assert_eq!(committed.record.metrics.test_accuracy, Some(ACCURACY), "evaluated before the commit");
    assert_eq!(committed.record.metrics.test_loss, Some(0.5));
    assert_eq!((committed.record.new_version, &committed.record.outcome), (Some(1), &Outcome::Completed));
    assert_eq!(*committed.blob, weights_to_bytes(&new_weights));
    assert_eq!(committed.digest, Digest::of(&committed.blob));
    assert_eq!(committed.diff.as_deref(), diff.as_ref(), "the difference goes with the committed version");
    let store = s.core.store.clone();
    let stored = store.round(round).expect("readable").expect("the record is committed");
    assert_eq!(stored.metrics.test_accuracy, Some(ACCURACY), "the record is stored with its evaluation");
    assert_eq!(stored.new_version, Some(1));
    assert_eq!(store.weights(1).expect("the weights are committed"), new_weights);
    assert_eq!(store.strategy_state().expect("readable"), strategy_state);

    s.core.act(Action::Commit { record: Box::new(record), new_weights, strategy_state, diff });
    match s.fed_back().await {
        CoreMsg::Committed { round: r, result: Err(e) } => assert!(r == round && !e.is_empty()),
        other => panic!("a round id committed twice fails, and the failure is fed back: {other:?}"),
    }
    assert_eq!(store.latest().expect("readable").map(|m| m.version), Some(1), "nothing more was committed");
    "Commit"
}

/// `Announce` (after `Committed`): the round's reporters are told it completed, and every connected agent gets
/// the new version unless it holds it.
async fn announce(version: u64) -> &'static str {
    let mut s = shell();
    let mut reporter = s.connect_holding("a");
    let mut other = s.connect_holding("c");
    let new_weights = [1.0f32, 2.0, 3.0, 4.0];
    // As the core stands once the store has committed `version` (`CoreMsg::Committed`).
    let blob = weights_to_bytes(&new_weights);
    s.core.current.weights_digest = Digest::of(&blob);
    s.core.current.weights = Arc::new(blob.clone());
    s.core.current.version = version;
    s.core.committing = Some(record(1));
    s.core.act(Action::Announce { version });
    let model = |out: &[Outbound]| {
        assert!(matches!(&out[0], Outbound::Msg(m) if matches!(&**m, ServerMessage::Model(a) if a.version == version)));
        assert!(
            matches!(&out[1], Outbound::Blob(h, b) if h.kind == BlobKind::Weights { version } && **b == blob),
            "{out:?}"
        );
    };
    let out = sent(&mut reporter);
    assert_eq!(out.len(), 3, "{out:?}");
    assert!(matches!(
        &out[0],
        Outbound::Msg(m) if matches!(
            **m,
            ServerMessage::RoundEnd { round: 1, completed: true, reason: None, new_version: Some(v) } if v == version
        )
    ));
    model(&out[1..]);
    let out = sent(&mut other);
    assert_eq!(out.len(), 2, "an agent that did not report gets the new version only: {out:?}");
    model(&out);
    assert!(s.core.committing.is_none());
    s.core.act(Action::Announce { version });
    assert!(sent(&mut other).is_empty(), "a connection that holds the version is not sent it again");

    // With the version's difference kept (`Committed` with one), an agent holding the version before it is sent the
    // difference, which rebuilds the version's bits; an agent holding no version gets the whole.
    let mut s = shell();
    let mut behind = s.connect_holding("a");
    let mut fresh = s.connect("b");
    let (settled, diff) = fedge_shared::model_diff::settle(&WEIGHTS, &new_weights).expect("finite");
    let blob = weights_to_bytes(&settled);
    s.core.diffs.committed(0, version, Some(Arc::new(diff.clone())));
    s.core.current.weights_digest = Digest::of(&blob);
    s.core.current.weights = Arc::new(blob.clone());
    s.core.current.version = version;
    s.core.act(Action::Announce { version });
    let out = sent(&mut behind);
    assert_eq!(out.len(), 2, "{out:?}");
    let Outbound::Blob(h, body) = &out[1] else { panic!("a blob: {out:?}") };
    assert_eq!(h.kind, BlobKind::WeightsDiff { from: 0, version, weights: Digest::of(&blob) });
    assert_eq!((**body == diff, h.digest, h.len), (true, Some(Digest::of(&diff)), diff.len() as u64));
    assert_eq!(fedge_shared::model_diff::apply(&WEIGHTS, body, 1).expect("applies"), settled);
    let out = sent(&mut fresh);
    assert!(
        out.iter().any(|o| matches!(o, Outbound::Blob(h, b) if h.kind == BlobKind::Weights { version } && **b == blob)),
        "{out:?}"
    );
    "Announce"
}

/// `RoundAborted`: the record is stored (a failure only logged) and each selected agent is told.
async fn round_aborted(round: u64, reason: AbortReason, record: RoundRecord) -> &'static str {
    let mut s = shell();
    let mut outs: Vec<_> = record.selected.iter().map(|a| s.connect(a)).collect();
    s.core.act(Action::RoundAborted { round, reason: reason.clone(), record: Box::new(record.clone()) });
    assert_eq!(s.core.store.round(round).expect("readable").as_ref(), Some(&record));
    assert_eq!(s.core.store.next_round().expect("readable"), round + 1);
    let told = ServerMessage::RoundEnd { round, completed: false, reason: Some(reason.to_string()), new_version: None };
    for rx in &mut outs {
        assert_eq!(messages(rx), vec![told.clone()]);
    }
    assert!(matches!(s.events.try_recv(), Ok(ServerEvent::RoundAborted(r)) if *r == record));
    // The store refuses the same round twice: only logged, the agents are still told.
    s.core.act(Action::RoundAborted { round, reason, record: Box::new(record) });
    for rx in &mut outs {
        assert_eq!(messages(rx), vec![told.clone()]);
    }
    "RoundAborted"
}

/// `Forward`: the round's record kept (it committed no model), its reporters told it completed (with no new version),
/// and the result handed to the oldest request of the root still waiting; an answer without a record is only handed
/// on.
async fn forward(result: Result<Partial, String>, record: Option<Box<RoundRecord>>) -> &'static str {
    let mut s = shell();
    let record = *record.expect("the sample carries its record");
    let mut outs: Vec<_> = record.reported.iter().map(|r| s.connect(&r.agent)).collect();
    let (first, first_rx) = std::sync::mpsc::sync_channel(1);
    let (second, second_rx) = std::sync::mpsc::sync_channel(1);
    s.core.forward_replies.extend([first, second]);
    s.core.act(Action::Forward { result: result.clone(), record: Some(Box::new(record.clone())) });
    assert_eq!(s.core.store.round(record.round).expect("readable").as_ref(), Some(&record));
    let told = ServerMessage::RoundEnd { round: record.round, completed: true, reason: None, new_version: None };
    for rx in &mut outs {
        assert_eq!(messages(rx), vec![told.clone()]);
    }
    assert_eq!(first_rx.try_recv().ok(), Some(result));
    assert!(second_rx.try_recv().is_err(), "one answer per action");
    s.core.act(Action::Forward { result: Err("no round could start".into()), record: None });
    assert_eq!(second_rx.try_recv().ok(), Some(Err("no round could start".into())));
    for rx in &mut outs {
        assert!(messages(rx).is_empty());
    }
    "Forward"
}

/// `SecAggKeys`: relayed with each owner's certificate until the agent has answered keys that carried it with its
/// shares (then once per connection), and the signed revocation list as the operator wrote it.
async fn secagg_keys(agent: String, round: u64, keys: Vec<AdvertiseKeys>, owners: Vec<String>) -> &'static str {
    let mut s = shell();
    let mut rx = s.connect(&agent);
    let certs: Vec<Vec<u8>> = owners.iter().map(|o| format!("certificate of {o}").into_bytes()).collect();
    for (o, c) in owners.iter().zip(&certs) {
        s.core.certs.insert(o.clone(), Arc::new(c.clone()));
    }
    let list = b"a CA-signed revocation list".to_vec();
    std::fs::write(s.dir.path().join(fedge_shared::revocation_list::FILE), &list).expect("written");
    let action = Action::SecAggKeys { agent: agent.clone(), round, keys: keys.clone(), owners: owners.clone() };
    // Sent twice before the agent answers (it may have left the round before reading the first), then its shares
    // for the round, then once more.
    s.core.act(action.clone());
    s.core.act(action.clone());
    s.core.on_msg(CoreMsg::SecAggShares { agent: agent.clone(), round, shares: Vec::new() });
    s.core.act(action);
    // The coordinator refuses shares outside a round; only the relayed keys matter here.
    let relayed: Vec<_> =
        messages(&mut rx).into_iter().filter(|m| !matches!(m, ServerMessage::Refused { .. })).collect();
    let expected = |certificates: Vec<Vec<u8>>| ServerMessage::SecAggKeys {
        round,
        keys: keys.clone(),
        certificates,
        revocations: list.clone(),
    };
    assert_eq!(relayed, vec![expected(certs.clone()), expected(certs), expected(vec![Vec::new(); owners.len()])]);
    "SecAggKeys"
}

/// `SecAggShares` / `SecAggMaskWith` / `SecAggSurvivors` / `SecAggUnmask`: relayed as they are to the agents named,
/// and to no one else.
async fn secagg_relay(action: Action) -> &'static str {
    let mut s = shell();
    let mut outs: HashMap<&str, _> = ["a", "b", "c"].into_iter().map(|a| (a, s.connect(a))).collect();
    let (name, to, expected): (_, Vec<&str>, _) = match &action {
        Action::SecAggShares { agent, round, shares } => (
            "SecAggShares",
            vec![agent.as_str()],
            ServerMessage::SecAggShares { round: *round, shares: shares.clone() },
        ),
        Action::SecAggMaskWith { agent, mask_with } => {
            ("SecAggMaskWith", vec![agent.as_str()], ServerMessage::SecAggMaskWith(mask_with.clone()))
        }
        Action::SecAggSurvivors { to, set } => {
            ("SecAggSurvivors", to.iter().map(String::as_str).collect(), ServerMessage::SecAggSurvivors(set.clone()))
        }
        Action::SecAggUnmask { agent, request } => {
            ("SecAggUnmask", vec![agent.as_str()], ServerMessage::SecAggUnmask(request.clone()))
        }
        other => panic!("not a relayed message: {other:?}"),
    };
    let to: Vec<String> = to.into_iter().map(str::to_string).collect();
    s.core.act(action);
    for (agent, rx) in &mut outs {
        let want = if to.iter().any(|a| a.as_str() == *agent) { vec![expected.clone()] } else { Vec::new() };
        assert_eq!(messages(rx), want, "{name} to {agent}");
    }
    name
}

/// `Unmask`: the job runs off the event loop and its result is fed back with the round.
async fn unmask(round: u64, job: UnmaskJob) -> &'static str {
    let mut s = shell();
    s.core.act(Action::Unmask { round, job: job.clone() });
    match s.fed_back().await {
        CoreMsg::Unmasked { round: r, outcome } => {
            assert_eq!(r, round);
            let e = outcome.expect_err("a session that never reached its masked phase cannot be unmasked");
            assert!(!e.contains("already unmasked"), "{e}");
        }
        other => panic!("the unmasking's result is fed back: {other:?}"),
    }
    assert_eq!(job.run(), Err("the secure session was already unmasked".into()), "the shell ran this very job");
    "Unmask"
}

/// `WakeAt`: the alarm is set to the time asked for last, earlier or later.
async fn wake_at(at: u64) -> &'static str {
    let mut s = shell();
    s.core.act(Action::WakeAt(at));
    assert_eq!(s.core.alarm.pending(), Some(at));
    s.core.act(Action::WakeAt(at / 2));
    assert_eq!(s.core.alarm.pending(), Some(at / 2), "a later request replaces an earlier one");
    s.core.act(Action::WakeAt(at * 2));
    assert_eq!(s.core.alarm.pending(), Some(at * 2));
    "WakeAt"
}

/// `Log`: written to the server's log at info level.
async fn log(message: String) -> &'static str {
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("not poisoned").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut s = shell();
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    tracing::subscriber::with_default(subscriber, || s.core.act(Action::Log { message: message.clone() }));
    let text = String::from_utf8(captured.0.lock().expect("not poisoned").clone()).expect("utf-8");
    assert!(text.contains("INFO") && text.contains(&message), "{text}");
    "Log"
}
