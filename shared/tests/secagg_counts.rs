//! The exact counts of a masked vector (the federated evaluation's correct / examples / loss units): whatever the
//! drop-outs the threshold allows, the unmasked totals are exactly the sums of the survivors' counts — no
//! quantization, no wrap-around, even with every agent at the cohort's per-agent limit — while the weighted delta
//! still unmasks as before.

mod secagg_support;

use std::collections::BTreeMap;

use fedge_shared::fedeval::{EVAL_COUNTS, EvalCounts};
use fedge_shared::secagg::{AgentRef, ClientSession, EcdsaP256Signer, SecAggError, SecAggParams};
use proptest::prelude::*;
use rand::SeedableRng;
use secagg_support::{Cohort, DropAt, counts_for, run_round};

fn params(n: usize, k: u32, counts: u32) -> SecAggParams {
    let mut p = SecAggParams::default_for(n);
    p.neighbours = k.min(n as u32 - 1);
    let k = p.effective_neighbours(n) as u32;
    p.threshold = k / 2 + 1;
    p.counts = counts;
    p
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    #[test]
    fn the_unmasked_counts_are_the_exact_sums_of_the_survivors_counts(
        n in 3usize..=40,
        k_raw in 1u32..6,
        p in 1usize..300,
        picks in proptest::collection::vec((any::<prop::sample::Index>(), 0u8..4), 0..10),
        seed in any::<u64>(),
    ) {
        let params = params(n, 2 * k_raw, EVAL_COUNTS);
        params.validate(n, p).unwrap();
        let cohort = Cohort::new(n);
        let budget = params.effective_neighbours(n) - params.threshold as usize;
        let indices = cohort.indices();
        let mut drops = BTreeMap::new();
        for (idx, code) in picks {
            if drops.len() >= budget {
                break;
            }
            let phase = [DropAt::Advertise, DropAt::Shares, DropAt::MaskedInput, DropAt::Unmask][code as usize];
            drops.insert(*idx.get(&indices), phase);
        }
        let out = run_round(&params, &cohort, p, &drops, seed);
        let sum = out.result.as_ref().expect("a round within the threshold completes");
        // Bit-exact through the masks: the whole vector, counts included.
        prop_assert_eq!(&sum.values, &out.expected_sum(&sum.survivors));
        // And the counts are the plain integer sums (no wrap: each is at most the per-agent limit).
        let limit = params.count_limit(n);
        let mut want = vec![0u64; EVAL_COUNTS as usize];
        for &i in &sum.survivors {
            for (w, c) in want.iter_mut().zip(counts_for(i, EVAL_COUNTS, limit, seed)) {
                *w += u64::from(c);
            }
        }
        let agg = sum.dequantize(&params);
        prop_assert_eq!(&agg.counts, &want);
        prop_assert_eq!(agg.weighted_delta_sum.len(), p);
        let totals = EvalCounts::from_coords(&agg.counts).unwrap();
        prop_assert_eq!((totals.correct, totals.examples), (want[0], want[1]));
    }
}

#[test]
fn federated_evaluation_counts_of_agents_sum_to_the_federation_totals_with_dropouts() {
    // Agents' evaluations as the agent encodes them; two drop out after sharing keys. The totals the server gets are
    // exactly the survivors' correct / examples and their loss sums to the milli-unit.
    let n = 9;
    let params = params(n, 8, EVAL_COUNTS);
    let cohort = Cohort::new(n);
    let drops: BTreeMap<u32, DropAt> =
        [(cohort.indices()[2], DropAt::MaskedInput), (cohort.indices()[6], DropAt::Advertise)].into_iter().collect();
    let out = run_round(&params, &cohort, 20, &drops, 42);
    let sum = out.result.unwrap();
    assert_eq!(sum.survivors.len(), n - 2);
    let agg = sum.dequantize(&params);
    let limit = params.count_limit(n);
    let plain: Vec<u64> = (0..3)
        .map(|j| sum.survivors.iter().map(|&i| u64::from(counts_for(i, EVAL_COUNTS, limit, 42)[j])).sum())
        .collect();
    assert_eq!(agg.counts, plain);
}

#[test]
fn counts_of_the_wrong_number_or_over_the_limit_are_refused_before_masking() {
    let cohort = Cohort::new(3);
    let params = params(3, 2, EVAL_COUNTS);
    let signer = EcdsaP256Signer::generate().unwrap().0;
    let refs: Vec<AgentRef> = cohort.refs.clone();
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
    let (mut c, _) =
        ClientSession::new(params.clone(), 1, refs[0].index, &refs, 5, [0; 32], &signer, &mut rng).unwrap();
    assert_eq!(c.count_limit(), u32::MAX / 3);
    assert_eq!(c.set_counts(vec![1, 2]), Err(SecAggError::WrongCounts { expected: 3, got: 2 }));
    let e = c.set_counts(vec![0, u32::MAX / 3 + 1, 0]).unwrap_err();
    assert_eq!(e, SecAggError::CountTooLarge { index: 1, value: u32::MAX / 3 + 1, limit: u32::MAX / 3 });
    c.set_counts(vec![0, u32::MAX / 3, 7]).unwrap();
    let mut too_many = params;
    too_many.counts = 17;
    assert!(too_many.validate(3, 10).is_err());
}

#[test]
fn an_agents_evaluation_becomes_coordinates_within_the_cohorts_limit() {
    let c = EvalCounts { correct: 81, examples: 100, loss_sum: 42.125 };
    let p = params(50, 8, EVAL_COUNTS);
    let coords = c.to_coords(p.count_limit(50));
    assert_eq!(coords, [81, 100, 42_125]);
    let back = EvalCounts::from_coords(&coords.map(u64::from)).unwrap();
    assert_eq!(back, c);
}
