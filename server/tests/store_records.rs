//! The sled store: what is committed survives reopening, a commit is all-or-nothing, versions increase, and bad
//! bytes on disk are errors rather than panics.

use fedge_server::coordinator::{
    AbortReason, AggregationMode, Outcome, Report, RoundMetrics, RoundPlan, RoundRecord, TrainHyper,
};
use fedge_server::store::{Store, StoreError};
use fedge_shared::model::Digest;

const GRAPH: &[u8] = b"\x08\x07fake onnx graph bytes";

fn record(round: u64, outcome: Outcome) -> RoundRecord {
    RoundRecord {
        round,
        plan: RoundPlan {
            round,
            model_version: 0,
            hyper: TrainHyper::default(),
            deadline_ms: 1_000,
            aggregation: AggregationMode::Plain,
        },
        strategy: "fedavg".into(),
        selected: vec!["a".into(), "b".into()],
        reported: vec![Report { agent: "a".into(), examples: 12, train_loss: 0.5, after_ms: 40, eval: None }],
        dropped: vec![],
        outcome,
        metrics: RoundMetrics { mean_train_loss: Some(0.5), total_examples: 12, ..RoundMetrics::default() },
        started_ms: round * 100,
        ended_ms: round * 100 + 50,
        new_version: None,
    }
}

fn weights(version: u64) -> Vec<f32> {
    (0..64).map(|i| version as f32 + i as f32 * 0.5).collect()
}

fn initialised(dir: &std::path::Path) -> Store {
    let store = reopen(dir);
    let digest = store.put_graph(GRAPH).unwrap();
    store.init_model(digest, &weights(0), 1_000).unwrap();
    store
}

#[test]
fn everything_committed_is_there_after_reopening() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = initialised(dir.path());
        for round in 1..=3 {
            let v = store.commit_round(&record(round, Outcome::Completed), &weights(round), b"moments", 2_000 + round);
            assert_eq!(v.unwrap(), round);
        }
        store.record_aborted(&record(4, Outcome::Aborted(AbortReason::Operator))).unwrap();
        store.reserve_round(5).unwrap();
        store.upsert_agent_seen("agent-1", "ab12", 10).unwrap();
        store.put_server_config("min_agents = 3").unwrap();
    }
    let store = reopen(dir.path());
    let latest = store.latest().unwrap().unwrap();
    assert_eq!(latest.version, 3);
    assert_eq!(latest.parent, Some(2));
    assert_eq!(latest.round, Some(3));
    assert_eq!(latest.created_ms, 2_003);
    assert_eq!(latest.graph_digest, Digest::of(GRAPH));
    for v in 0..=3 {
        assert_eq!(store.weights(v).unwrap(), weights(v));
    }
    assert_eq!(store.graph(&Digest::of(GRAPH)).unwrap().unwrap(), GRAPH);
    let rounds = store.rounds().unwrap();
    assert_eq!(rounds.iter().map(|r| r.round).collect::<Vec<_>>(), vec![1, 2, 3, 4]);
    assert_eq!(store.round(2).unwrap().unwrap().new_version, Some(2));
    assert_eq!(store.round(4).unwrap().unwrap().outcome, Outcome::Aborted(AbortReason::Operator));
    assert_eq!(store.round(9).unwrap(), None);
    let resume = store.resume_state().unwrap().unwrap();
    assert_eq!(resume.model_version, 3);
    assert_eq!(resume.weights, weights(3));
    assert_eq!(resume.next_round, 6, "round 5 was reserved");
    assert_eq!(resume.strategy_state, b"moments");
    assert_eq!(store.agents().unwrap()[0].fingerprint.as_deref(), Some("ab12"));
    assert_eq!(store.server_config().unwrap().as_deref(), Some("min_agents = 3"));
}

#[test]
fn an_empty_store_has_no_model_and_starts_at_round_one() {
    let dir = tempfile::tempdir().unwrap();
    let store = reopen(dir.path());
    assert_eq!(store.latest().unwrap(), None);
    assert!(store.resume_state().unwrap().is_none());
    assert_eq!(store.next_round().unwrap(), 1);
    assert!(matches!(store.weights(0), Err(StoreError::UnknownVersion(0))));
    assert!(matches!(
        store.commit_round(&record(1, Outcome::Completed), &weights(1), &[], 0),
        Err(StoreError::NoModel)
    ));
}

#[test]
fn versions_increase_by_one_from_zero_each_with_its_parent() {
    let dir = tempfile::tempdir().unwrap();
    let store = initialised(dir.path());
    for round in [3, 4, 9, 10] {
        store.commit_round(&record(round, Outcome::Completed), &weights(round), &[], round).unwrap();
    }
    let versions = store.versions().unwrap();
    assert_eq!(versions.iter().map(|m| m.version).collect::<Vec<_>>(), vec![0, 1, 2, 3, 4]);
    assert_eq!(versions.iter().map(|m| m.parent).collect::<Vec<_>>(), vec![None, Some(0), Some(1), Some(2), Some(3)]);
    assert_eq!(versions.iter().map(|m| m.round).collect::<Vec<_>>(), vec![None, Some(3), Some(4), Some(9), Some(10)]);
    assert_eq!(store.next_round().unwrap(), 11);
}

#[test]
fn only_the_newest_keep_weights_versions_keep_their_weights_and_the_history_stays_complete() {
    let dir = tempfile::tempdir().unwrap();
    let store = initialised(dir.path()).keeping_weights(3);
    for round in 1..=6 {
        store.commit_round(&record(round, Outcome::Completed), &weights(round), &[], round).unwrap();
        let kept: Vec<u64> = (0..=round).filter(|v| store.has_weights(*v).unwrap()).collect();
        let oldest_kept = round.saturating_sub(2);
        assert_eq!(kept, (oldest_kept..=round).collect::<Vec<_>>(), "after round {round}");
    }
    for v in 4..=6 {
        assert_eq!(store.weights(v).unwrap(), weights(v), "version {v} is intact");
    }
    for v in 0..=3 {
        assert!(
            matches!(store.weights(v), Err(StoreError::Pruned { version, keep: 3 }) if version == v),
            "version {v} says it was pruned"
        );
        assert_eq!(store.model(v).unwrap().version, v, "version {v}'s metadata is kept");
    }
    assert_eq!(store.versions().unwrap().len(), 7);
    assert_eq!(store.rounds().unwrap().len(), 6);
    assert_eq!(store.resume_state().unwrap().unwrap().weights, weights(6));
}

/// Opens what `open` opens once sled's file lock is free: after a store or database is dropped, sled's flusher
/// thread can hold the lock for a moment (another process gets the lock when the old one exits), longer on a loaded
/// machine. Waits at most 10 s.
fn when_unlocked<T, E: std::fmt::Display>(open: impl Fn() -> Result<T, E>) -> T {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match open() {
            Ok(opened) => return opened,
            Err(e) if e.to_string().contains("could not acquire lock") && std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20))
            }
            Err(e) => panic!("cannot open the store: {e}"),
        }
    }
}

/// Opens the store in `dir` (again, in the same process).
fn reopen(dir: &std::path::Path) -> Store {
    when_unlocked(|| Store::open(dir))
}

/// Opens the store's sled database in `dir` directly (again, in the same process).
fn reopen_sled(dir: &std::path::Path) -> sled::Db {
    when_unlocked(|| sled::open(dir))
}

#[test]
fn a_smaller_window_prunes_the_leftovers_when_the_server_starts_and_zero_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = initialised(dir.path());
        for round in 1..=5 {
            store.commit_round(&record(round, Outcome::Completed), &weights(round), &[], round).unwrap();
        }
        assert_eq!(store.prune_weights().unwrap(), 0, "keep_weights 0 keeps every version");
        assert!((0..=5).all(|v| store.has_weights(v).unwrap()));
    }
    let store = reopen(dir.path()).keeping_weights(2);
    assert_eq!(store.prune_weights().unwrap(), 4);
    assert_eq!((0..=5).filter(|v| store.has_weights(*v).unwrap()).collect::<Vec<_>>(), vec![4, 5]);
    assert_eq!(store.prune_weights().unwrap(), 0, "pruning again removes nothing");
    drop(store);
    let reopened = reopen(dir.path());
    assert!(matches!(reopened.weights(3), Err(StoreError::Corrupt { .. })), "without a window a gap is corruption");
    assert_eq!(reopened.weights(5).unwrap(), weights(5));
}

#[test]
fn a_commit_is_all_or_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = initialised(dir.path());
    store.commit_round(&record(1, Outcome::Completed), &weights(1), b"state-1", 1).unwrap();
    let before = (store.versions().unwrap(), store.rounds().unwrap(), store.strategy_state().unwrap());

    // The round id is found to be taken only after the model and weights were written inside the transaction.
    let err = store.commit_round(&record(1, Outcome::Completed), &weights(2), b"state-2", 2).unwrap_err();
    assert!(matches!(err, StoreError::RoundExists(1)), "{err}");
    // Wrong length and non-finite weights are refused too.
    assert!(matches!(
        store.commit_round(&record(2, Outcome::Completed), &weights(2)[..10], b"state-2", 2),
        Err(StoreError::WrongLength { expected: 64, got: 10 })
    ));
    let mut nan = weights(2);
    nan[5] = f32::NAN;
    assert!(matches!(
        store.commit_round(&record(2, Outcome::Completed), &nan, b"state-2", 2),
        Err(StoreError::NonFinite(5))
    ));

    let after = (store.versions().unwrap(), store.rounds().unwrap(), store.strategy_state().unwrap());
    assert_eq!(before, after);
    assert!(matches!(store.weights(2), Err(StoreError::UnknownVersion(2))));
    assert_eq!(store.latest().unwrap().unwrap().version, 1);
    drop(store);
    // Nor did anything leak to disk.
    let store = reopen(dir.path());
    assert_eq!((store.versions().unwrap(), store.rounds().unwrap(), store.strategy_state().unwrap()), before);
}

#[test]
fn an_aborted_round_is_recorded_once_and_its_id_is_never_reused() {
    let dir = tempfile::tempdir().unwrap();
    let store = initialised(dir.path());
    let aborted = record(1, Outcome::Aborted(AbortReason::TooFewReports { reported: 1, min_agents: 2 }));
    store.record_aborted(&aborted).unwrap();
    assert!(matches!(store.record_aborted(&aborted), Err(StoreError::RoundExists(1))));
    assert!(matches!(
        store.commit_round(&record(1, Outcome::Completed), &weights(1), &[], 1),
        Err(StoreError::RoundExists(1))
    ));
    assert_eq!(store.next_round().unwrap(), 2);
    assert_eq!(store.latest().unwrap().unwrap().version, 0);
}

#[test]
fn the_first_model_is_created_once_and_only_for_a_known_graph() {
    let dir = tempfile::tempdir().unwrap();
    let store = reopen(dir.path());
    assert!(matches!(store.init_model(Digest::of(b"nothing"), &weights(0), 0), Err(StoreError::UnknownGraph(_))));
    let digest = store.put_graph(GRAPH).unwrap();
    assert_eq!(store.put_graph(GRAPH).unwrap(), digest, "storing a graph twice is harmless");
    assert!(store.graph(&Digest::of(b"other")).unwrap().is_none());
    let meta = store.init_model(digest, &weights(0), 5).unwrap();
    assert_eq!(meta.version, 0);
    assert_eq!(meta.num_params, 64);
    assert!(matches!(store.init_model(digest, &weights(0), 6), Err(StoreError::AlreadyInitialised)));
}

#[test]
fn agents_are_tracked_and_a_revocation_sticks() {
    let dir = tempfile::tempdir().unwrap();
    let store = reopen(dir.path());
    let first = store.upsert_agent_seen("pi-7", "f00d", 100).unwrap();
    assert_eq!((first.first_seen_ms, first.last_seen_ms, first.revoked), (100, 100, false));
    let again = store.upsert_agent_seen("pi-7", "beef", 250).unwrap();
    assert_eq!((again.first_seen_ms, again.last_seen_ms), (100, 250));
    assert_eq!(again.fingerprint.as_deref(), Some("beef"));
    assert!(!store.is_revoked("pi-7").unwrap());
    store.revoke_agent("pi-7", 300).unwrap();
    store.upsert_agent_seen("pi-7", "beef", 400).unwrap();
    assert!(store.is_revoked("pi-7").unwrap(), "seeing a revoked agent again does not un-revoke it");
    // An agent can be revoked before it ever connects.
    let pre = store.revoke_agent("stolen-pi", 500).unwrap();
    assert_eq!(pre.fingerprint, None);
    assert!(store.is_revoked("stolen-pi").unwrap());
    assert!(!store.is_revoked("unknown").unwrap());
    let names: Vec<String> = store.agents().unwrap().into_iter().map(|a| a.name).collect();
    assert_eq!(names, vec!["pi-7".to_string(), "stolen-pi".to_string()]);
}

#[test]
fn corrupt_record_bytes_give_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = initialised(dir.path());
        store.commit_round(&record(1, Outcome::Completed), &weights(1), &[], 1).unwrap();
        store.upsert_agent_seen("pi-1", "aa", 1).unwrap();
    }
    {
        let db = reopen_sled(dir.path());
        db.open_tree("rounds").unwrap().insert(1u64.to_be_bytes(), &[0xff, 0xfe, 0x00][..]).unwrap();
        db.open_tree("agents").unwrap().insert(b"pi-1", &[0x07][..]).unwrap();
        let w = db.open_tree("weights").unwrap();
        let (first, piece) = w.scan_prefix(1u64.to_be_bytes()).next().unwrap().unwrap();
        let mut bytes = piece.to_vec();
        bytes[3] ^= 0x40;
        w.insert(first, bytes).unwrap();
        db.open_tree("models").unwrap().insert(0u64.to_be_bytes(), &b"garbage"[..]).unwrap();
        db.open_tree("graphs").unwrap().insert(Digest::of(GRAPH).0, &b"tampered"[..]).unwrap();
        db.flush().unwrap();
    }
    let store = reopen(dir.path());
    assert!(matches!(store.round(1), Err(StoreError::Corrupt { tree: "rounds", .. })));
    assert!(store.rounds().is_err());
    assert!(matches!(store.is_revoked("pi-1"), Err(StoreError::Corrupt { tree: "agents", .. })));
    assert!(matches!(store.upsert_agent_seen("pi-1", "bb", 2), Err(StoreError::Corrupt { .. })));
    assert!(matches!(store.weights(1), Err(StoreError::Corrupt { tree: "weights", .. })));
    assert!(matches!(store.resume_state(), Err(StoreError::Corrupt { .. })));
    assert!(matches!(store.model(0), Err(StoreError::Corrupt { tree: "models", .. })));
    assert!(store.versions().is_err());
    assert!(matches!(store.graph(&Digest::of(GRAPH)), Err(StoreError::Corrupt { tree: "graphs", .. })));
    // Records that were not touched still read.
    assert!(store.latest().unwrap().is_some());
}

#[test]
fn a_store_that_cannot_be_opened_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-directory");
    std::fs::write(&file, b"x").unwrap();
    assert!(matches!(Store::open(file.join("db")), Err(StoreError::Sled(_))));
}

/// Weights of `params` parameters: several 64 KiB pieces in the store.
fn big_weights(version: u64, params: usize) -> Vec<f32> {
    (0..params).map(|i| version as f32 * 1e3 + i as f32).collect()
}

/// How many raw keys the weights tree holds, per version.
fn raw_weight_keys(dir: &std::path::Path) -> std::collections::BTreeMap<u64, usize> {
    let db = reopen_sled(dir);
    let mut per_version = std::collections::BTreeMap::new();
    for k in db.open_tree("weights").unwrap().iter().keys() {
        let k = k.unwrap();
        *per_version.entry(u64::from_be_bytes(k[..8].try_into().unwrap())).or_insert(0) += 1;
    }
    per_version
}

/// A store whose first model has `params` parameters (several pieces), closed again.
fn initialised_with(dir: &std::path::Path, params: usize) {
    let store = reopen(dir);
    let digest = store.put_graph(GRAPH).unwrap();
    store.init_model(digest, &big_weights(0, params), 1).unwrap();
}

#[test]
fn weights_of_many_pieces_read_back_bit_for_bit_and_leave_the_window_whole() {
    const P: usize = 40_000; // 160,000 bytes: three pieces
    let dir = tempfile::tempdir().unwrap();
    {
        let store = reopen(dir.path()).keeping_weights(2);
        let digest = store.put_graph(GRAPH).unwrap();
        store.init_model(digest, &big_weights(0, P), 1).unwrap();
        for v in 1..=3 {
            store.commit_round(&record(v, Outcome::Completed), &big_weights(v, P), &[], 1).unwrap();
        }
        assert_eq!(store.weights(3).unwrap(), big_weights(3, P));
        assert_eq!(store.weights(2).unwrap(), big_weights(2, P));
        assert!(matches!(store.weights(1), Err(StoreError::Pruned { version: 1, keep: 2 })));
        assert!(!store.has_weights(0).unwrap() && !store.has_weights(1).unwrap() && store.has_weights(2).unwrap());
    }
    // Every piece of the pruned versions is gone; the kept versions have all three.
    assert_eq!(raw_weight_keys(dir.path()), [(2, 3), (3, 3)].into_iter().collect());
}

#[test]
fn a_missing_piece_is_corruption_not_a_short_model() {
    const P: usize = 40_000;
    let dir = tempfile::tempdir().unwrap();
    initialised_with(dir.path(), P);
    {
        let db = reopen_sled(dir.path());
        let w = db.open_tree("weights").unwrap();
        let mut middle = 0u64.to_be_bytes().to_vec();
        middle.extend(1u32.to_be_bytes());
        assert!(w.remove(middle).unwrap().is_some());
        db.flush().unwrap();
    }
    let store = reopen(dir.path());
    match store.weights(0) {
        Err(StoreError::Corrupt { tree: "weights", detail, .. }) => assert!(detail.contains("piece 1"), "{detail}"),
        other => panic!("expected corruption, got {other:?}"),
    }
}

#[test]
fn a_store_that_holds_each_model_as_one_value_still_reads_and_prunes() {
    const P: usize = 40_000;
    let dir = tempfile::tempdir().unwrap();
    initialised_with(dir.path(), P);
    {
        // Rewrite version 0 the way stores were written before pieces: one value under the 8-byte version key.
        let db = reopen_sled(dir.path());
        let w = db.open_tree("weights").unwrap();
        let whole: Vec<u8> = big_weights(0, P).iter().flat_map(|x| x.to_le_bytes()).collect();
        for k in w.iter().keys() {
            w.remove(k.unwrap()).unwrap();
        }
        w.insert(0u64.to_be_bytes(), whole).unwrap();
        db.flush().unwrap();
    }
    {
        let store = reopen(dir.path()).keeping_weights(1);
        assert_eq!(store.weights(0).unwrap(), big_weights(0, P));
        store.commit_round(&record(1, Outcome::Completed), &big_weights(1, P), &[], 1).unwrap();
        assert_eq!(store.weights(1).unwrap(), big_weights(1, P));
        assert!(!store.has_weights(0).unwrap());
    }
    assert_eq!(raw_weight_keys(dir.path()), [(1, 3)].into_iter().collect());
}

#[test]
fn an_aggregator_installs_its_roots_versions_under_their_numbers_in_the_window_and_never_an_older_one() {
    const P: usize = 40_000; // three pieces
    let dir = tempfile::tempdir().unwrap();
    {
        let store = reopen(dir.path()).keeping_weights(2);
        // The root's versions as an aggregator meets them: it may join late and skip some.
        for v in [4, 5, 7, 8] {
            let meta = store.install_version(v, GRAPH, &big_weights(v, P), 1).unwrap();
            assert_eq!(meta.version, v);
            assert_eq!(store.latest().unwrap().map(|m| m.version), Some(v));
            assert_eq!(store.weights(v).unwrap(), big_weights(v, P));
        }
        // Not newer than the newest held: refused, and nothing changes.
        for v in [8, 6] {
            let err = store.install_version(v, GRAPH, &big_weights(99, P), 1).unwrap_err();
            assert!(matches!(err, StoreError::NotNewer { latest: 8, .. }), "{err:?}");
        }
        assert_eq!(store.weights(8).unwrap(), big_weights(8, P));
        // Every installed version keeps its metadata; only the window's keep their weights; no round is recorded.
        let versions: Vec<u64> = store.versions().unwrap().iter().map(|m| m.version).collect();
        assert_eq!(versions, [4, 5, 7, 8]);
        assert!(store.rounds().unwrap().is_empty());
    }
    assert_eq!(raw_weight_keys(dir.path()), [(7, 3), (8, 3)].into_iter().collect());
}
