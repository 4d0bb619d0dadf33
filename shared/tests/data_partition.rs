//! Properties of the IID and Dirichlet partitions of a data set over agents.

use fedge_shared::data::{dirichlet_partition, iid_partition};
use proptest::prelude::*;

fn assert_exact_cover(parts: &[Vec<usize>], n: usize) {
    let mut all: Vec<usize> = parts.iter().flatten().copied().collect();
    all.sort_unstable();
    assert_eq!(all, (0..n).collect::<Vec<_>>(), "every example exactly once");
    assert!(parts.iter().all(|p| !p.is_empty()), "no agent empty");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn a_dirichlet_partition_assigns_every_example_exactly_once_and_leaves_no_agent_empty(
        labels in prop::collection::vec(0u32..10, 1..400),
        agents in 1usize..30,
        alpha in prop_oneof![Just(0.001f64), 0.05f64..10.0],
        seed in any::<u64>(),
    ) {
        prop_assume!(labels.len() >= agents);
        let parts = dirichlet_partition(&labels, 10, agents, alpha, seed).unwrap();
        prop_assert_eq!(parts.len(), agents);
        assert_exact_cover(&parts, labels.len());
    }

    #[test]
    fn a_dirichlet_partition_is_the_same_for_the_same_seed(
        labels in prop::collection::vec(0u32..5, 20..200),
        seed in any::<u64>(),
    ) {
        let a = dirichlet_partition(&labels, 5, 7, 0.5, seed).unwrap();
        let b = dirichlet_partition(&labels, 5, 7, 0.5, seed).unwrap();
        prop_assert_eq!(a, b);
    }

    #[test]
    fn an_iid_partition_covers_everything_with_sizes_within_one(n in 1usize..500, agents in 1usize..40, seed in any::<u64>()) {
        prop_assume!(n >= agents);
        let parts = iid_partition(n, agents, seed).unwrap();
        assert_exact_cover(&parts, n);
        let min = parts.iter().map(Vec::len).min().unwrap();
        let max = parts.iter().map(Vec::len).max().unwrap();
        prop_assert!(max - min <= 1);
    }
}

/// The mean over agents of the share of an agent's examples in its most common class.
fn mean_top_class_share(labels: &[u32], parts: &[Vec<usize>]) -> f64 {
    parts
        .iter()
        .map(|p| {
            let mut c = [0usize; 10];
            p.iter().for_each(|&i| c[labels[i] as usize] += 1);
            *c.iter().max().unwrap() as f64 / p.len() as f64
        })
        .sum::<f64>()
        / parts.len() as f64
}

#[test]
fn a_small_alpha_skews_the_labels_and_a_large_alpha_approaches_iid() {
    let labels: Vec<u32> = (0..5000).map(|i| (i % 10) as u32).collect();
    let skewed = mean_top_class_share(&labels, &dirichlet_partition(&labels, 10, 20, 0.1, 1).unwrap());
    let even = mean_top_class_share(&labels, &dirichlet_partition(&labels, 10, 20, 100.0, 1).unwrap());
    assert!(skewed > 0.5, "alpha 0.1: top class share {skewed}");
    assert!(even < 0.2, "alpha 100: top class share {even}");
}

#[test]
fn different_seeds_give_different_partitions() {
    let labels: Vec<u32> = (0..1000).map(|i| (i % 10) as u32).collect();
    assert_ne!(
        dirichlet_partition(&labels, 10, 5, 0.5, 1).unwrap(),
        dirichlet_partition(&labels, 10, 5, 0.5, 2).unwrap()
    );
}

#[test]
fn impossible_partitions_are_errors() {
    assert!(dirichlet_partition(&[0, 1], 2, 3, 0.5, 0).is_err(), "more agents than examples");
    assert!(dirichlet_partition(&[0, 1], 2, 2, 0.0, 0).is_err(), "alpha zero");
    assert!(dirichlet_partition(&[0, 1], 2, 2, f64::NAN, 0).is_err(), "alpha NaN");
    assert!(dirichlet_partition(&[0, 5], 2, 2, 0.5, 0).is_err(), "label outside the classes");
    assert!(iid_partition(3, 0, 0).is_err());
}
