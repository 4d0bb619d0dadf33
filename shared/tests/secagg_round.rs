//! Whole secure-aggregation rounds in memory: the unmasked sum is bit-exact for every drop-out pattern the
//! threshold allows, and a round beyond the threshold aborts without output.

mod secagg_support;

use std::collections::BTreeMap;

use fedge_shared::secagg::{SecAggError, SecAggParams};
use proptest::prelude::*;
use secagg_support::{Cohort, DropAt, run_round};

fn params_for(n: usize, k_raw: u32, t_frac: f64, bits: u32) -> SecAggParams {
    let complete = n as u32 - 1;
    // Even degree below the cohort, or the complete graph.
    let k = (2 * k_raw).min(complete);
    let k = if k < complete { k & !1 } else { k }.max(1);
    let low = k / 2 + 1;
    let t = (low + ((k - low) as f64 * t_frac) as u32).min(k);
    SecAggParams::new(k, t, 4.0, bits, 1000)
}

fn phase(code: u8) -> DropAt {
    match code % 6 {
        0 => DropAt::Advertise,
        1 => DropAt::Shares,
        2 => DropAt::Receipt,
        3 => DropAt::MaskedInput,
        4 => DropAt::Consistency,
        _ => DropAt::Unmask,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    #[test]
    fn the_unmasked_sum_equals_the_plain_sum_for_every_dropout_pattern_within_the_threshold(
        n in 2usize..=100,
        k_raw in 1u32..12,
        t_frac in 0.0f64..1.0,
        p in 1usize..40,
        picks in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..40),
        seed in any::<u64>(),
    ) {
        let params = params_for(n, k_raw, t_frac, 16);
        params.validate(n, p).unwrap();
        let cohort = Cohort::new(n);
        let k = params.effective_neighbours(n);
        let budget = k - params.threshold as usize;
        let indices = cohort.indices();
        let mut drops = BTreeMap::new();
        for (idx, code) in picks {
            if drops.len() >= budget {
                break;
            }
            drops.insert(*idx.get(&indices), phase(code));
        }
        let out = run_round(&params, &cohort, p, &drops, seed);
        let sum = out.result.as_ref().expect("a round within the threshold completes");
        let expected_survivors: Vec<u32> = indices
            .iter()
            .copied()
            .filter(|i| !matches!(drops.get(i), Some(d) if *d <= DropAt::MaskedInput))
            .collect();
        prop_assert_eq!(&sum.survivors, &expected_survivors);
        prop_assert_eq!(&sum.values, &out.expected_sum(&sum.survivors));
    }

    #[test]
    fn with_any_dropouts_the_round_either_sums_exactly_or_aborts_without_output(
        n in 2usize..=40,
        k_raw in 1u32..8,
        t_frac in 0.0f64..1.0,
        p in 1usize..16,
        codes in proptest::collection::vec(0u8..35, 40),
        seed in any::<u64>(),
    ) {
        let params = params_for(n, k_raw, t_frac, 12);
        let cohort = Cohort::new(n);
        // Codes 0..5 drop the agent at that phase, the rest keep it: about one in seven drops out.
        let drops: BTreeMap<u32, DropAt> = cohort
            .indices()
            .into_iter()
            .zip(codes)
            .filter(|(_, c)| *c < 5)
            .map(|(i, c)| (i, phase(c)))
            .collect();
        let out = run_round(&params, &cohort, p, &drops, seed);
        match &out.result {
            Ok(sum) => {
                prop_assert!(!sum.survivors.is_empty());
                prop_assert_eq!(&sum.values, &out.expected_sum(&sum.survivors));
            }
            Err(e) => prop_assert!(matches!(e, SecAggError::Abort(_)), "unexpected error {}", e),
        }
    }
}

#[test]
fn a_round_where_one_agent_keeps_fewer_than_t_neighbours_after_masked_input_aborts_with_no_output() {
    let n = 30;
    let params = SecAggParams::new(8, 6, 1.0, 16, 10);
    let cohort = Cohort::new(n);
    // Find agent 5's neighbours through a clean round's graph: every agent has 8; drop 3 of them after sharing.
    let seed = 6;
    let graph = fedge_shared::secagg::NeighbourGraph::new(&cohort.indices(), 8, seed * 31 + 1).unwrap();
    let victim = cohort.indices()[0];
    let drops: BTreeMap<u32, DropAt> =
        graph.neighbours(victim).unwrap().iter().take(3).map(|&j| (j, DropAt::MaskedInput)).collect();
    let out = run_round(&params, &cohort, 8, &drops, seed);
    assert!(matches!(out.result, Err(SecAggError::Abort(_))), "got {:?}", out.result.map(|s| s.survivors));
}

#[test]
fn a_round_where_too_few_agents_answer_the_unmask_request_aborts_with_no_output() {
    let n = 12;
    let params = SecAggParams::new(11, 8, 1.0, 16, 10);
    let cohort = Cohort::new(n);
    let drops: BTreeMap<u32, DropAt> = cohort.indices().into_iter().take(5).map(|i| (i, DropAt::Unmask)).collect();
    let out = run_round(&params, &cohort, 8, &drops, 3);
    assert!(matches!(out.result, Err(SecAggError::Abort(_))));
}

#[test]
fn a_round_where_too_few_agents_advertise_keys_aborts_at_once() {
    let params = SecAggParams::new(9, 6, 1.0, 16, 10);
    let cohort = Cohort::new(10);
    let drops: BTreeMap<u32, DropAt> = cohort.indices().into_iter().take(5).map(|i| (i, DropAt::Advertise)).collect();
    let out = run_round(&params, &cohort, 4, &drops, 1);
    assert!(matches!(out.result, Err(SecAggError::Abort(_))));
}

#[test]
fn the_dequantized_sum_is_the_weighted_sum_of_the_deltas_within_the_quantization_error() {
    let n = 20;
    let p = 50;
    let params = SecAggParams::default_for(n);
    let cohort = Cohort::new(n);
    let out = run_round(&params, &cohort, p, &BTreeMap::new(), 11);
    let sum = out.result.unwrap();
    let agg = sum.dequantize(&params);
    let clip = params.clip;
    let mut weight_sum = 0.0f64;
    let mut expect = vec![0.0f64; p];
    for &i in &sum.survivors {
        let w = (u64::from(i) * 37 % 1500).min(params.weight_cap) as f64 / params.weight_cap as f64;
        weight_sum += w;
        for (e, d) in expect.iter_mut().zip(secagg_support::delta_for(i, p, 11)) {
            *e += w * f64::from(d.clamp(-clip, clip));
        }
    }
    let quantum = 2.0 * f64::from(clip) / params.max_level() as f64;
    let tolerance = n as f64 * quantum;
    assert!((agg.weight_sum - weight_sum).abs() <= n as f64 / params.max_level() as f64);
    for (got, want) in agg.weighted_delta_sum.iter().zip(&expect) {
        assert!((f64::from(*got) - want).abs() <= tolerance + 1e-4 * want.abs(), "{got} vs {want}");
    }
}
