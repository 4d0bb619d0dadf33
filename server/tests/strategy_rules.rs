//! The aggregation strategies against hand-computed cases and the update rules of Reddi et al. 2021.

use fedge_server::coordinator::{OptimizerKind, TrainHyper, WeightedSum};
use fedge_server::strategy::{Adaptive, AdaptiveParams, AdaptiveRule, FedAvg, Strategy, StrategyConfig, StrategyError};
use proptest::prelude::*;

fn close(a: &[f32], b: &[f32], tol: f32) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() <= tol)
}

const PAPER: AdaptiveParams = AdaptiveParams { eta: 0.1, beta1: 0.9, beta2: 0.99, tau: 0.001 };

#[test]
fn fedavg_of_three_agents_is_the_example_weighted_mean_added_to_the_global_model() {
    // Agents with 1, 3 and 4 examples. Weighted sum = 1·[1,0] + 3·[0,2] + 4·[-1,-1] = [-3, 2]; / 8 = [-0.375, 0.25].
    let mut sum = WeightedSum::new(2);
    sum.fold(1, &[1.0, 0.0]).unwrap();
    sum.fold(3, &[0.0, 2.0]).unwrap();
    sum.fold(4, &[-1.0, -1.0]).unwrap();
    assert_eq!(sum.examples(), 8);
    assert_eq!(sum.contributions(), 3);
    let mean = sum.mean().unwrap();
    assert!(close(&mean, &[-0.375, 0.25], 1e-7), "{mean:?}");
    let new = FedAvg.aggregate(&[1.0, 2.0], &mean, 1).unwrap();
    assert!(close(&new, &[0.625, 2.25], 1e-7), "{new:?}");
}

#[test]
fn a_weighted_sum_refuses_wrong_lengths_empty_counts_and_non_finite_values_without_changing() {
    let mut sum = WeightedSum::new(3);
    assert!(sum.fold(1, &[1.0, 2.0]).is_err());
    assert!(sum.fold(0, &[1.0, 2.0, 3.0]).is_err());
    assert!(sum.fold(1, &[1.0, f32::NAN, 3.0]).is_err());
    assert!(sum.fold(1, &[1.0, f32::INFINITY, 3.0]).is_err());
    assert_eq!(sum.examples(), 0);
    assert_eq!(sum.mean(), None);
}

#[test]
fn fedadam_one_step_follows_the_paper_update_rule() {
    // m = (1-β1)·Δ; v = β2·τ² + (1-β2)·Δ²; x += η·m/(√v+τ).
    // weight 0: Δ=0.2:  m=0.02,  v=0.99e-6+0.01·0.04=0.00040099, √v=0.0200247, x=0.5+0.002/0.0210247=0.595126
    // weight 1: Δ=-0.4: m=-0.04, v=0.99e-6+0.01·0.16=0.00160099, √v=0.0400124, x=-1-0.004/0.0410124=-1.097532
    let mut s = Adaptive::new(AdaptiveRule::Adam, PAPER);
    let new = s.aggregate(&[0.5, -1.0], &[0.2, -0.4], 1).unwrap();
    assert!(close(&new, &[0.595126, -1.097532], 2e-6), "{new:?}");
    let (m, v) = s.moments();
    assert!(close(m, &[0.02, -0.04], 1e-7));
    assert!(close(v, &[0.00040099, 0.00160099], 1e-8));
}

#[test]
fn fedyogi_one_step_follows_the_paper_update_rule() {
    // v = τ² − (1-β2)·Δ²·sign(τ² − Δ²) = 1e-6 + 0.01·Δ² since Δ² > τ².
    // weight 0: v=0.000401, √v=0.0200250, x=0.5+0.002/0.0210250=0.595125
    let mut s = Adaptive::new(AdaptiveRule::Yogi, PAPER);
    let new = s.aggregate(&[0.5, -1.0], &[0.2, -0.4], 1).unwrap();
    assert!(close(&new, &[0.595125, -1.097531], 2e-6), "{new:?}");
    let (_, v) = s.moments();
    assert!(close(v, &[0.000401, 0.001601], 1e-8));
}

#[test]
fn yogi_keeps_the_second_moment_on_a_zero_delta_while_adam_decays_it() {
    let mut adam = Adaptive::new(AdaptiveRule::Adam, PAPER);
    let mut yogi = Adaptive::new(AdaptiveRule::Yogi, PAPER);
    for s in [&mut adam, &mut yogi] {
        s.aggregate(&[0.0], &[0.5], 1).unwrap();
    }
    let (va, vy) = (adam.moments().1[0], yogi.moments().1[0]);
    adam.aggregate(&[0.0], &[0.0], 2).unwrap();
    yogi.aggregate(&[0.0], &[0.0], 2).unwrap();
    assert!((adam.moments().1[0] - 0.99 * va).abs() < 1e-9);
    assert_eq!(yogi.moments().1[0], vy);
}

#[test]
fn adaptive_moments_survive_a_restart_through_their_state_bytes() {
    for rule in [AdaptiveRule::Adam, AdaptiveRule::Yogi] {
        let mut running = Adaptive::new(rule, PAPER);
        running.aggregate(&[1.0, 2.0, 3.0], &[0.1, -0.2, 0.3], 1).unwrap();
        let saved = running.state();
        let mut restarted = Adaptive::new(rule, PAPER);
        restarted.restore(&saved).unwrap();
        assert_eq!(restarted.moments(), running.moments());
        let a = running.aggregate(&[1.0, 2.0, 3.0], &[0.05, 0.05, -0.1], 2).unwrap();
        let b = restarted.aggregate(&[1.0, 2.0, 3.0], &[0.05, 0.05, -0.1], 2).unwrap();
        assert_eq!(a, b);
    }
}

#[test]
fn a_state_for_another_strategy_or_corrupt_bytes_are_refused() {
    let mut adam = Adaptive::new(AdaptiveRule::Adam, PAPER);
    adam.aggregate(&[1.0], &[0.1], 1).unwrap();
    let mut yogi = Adaptive::new(AdaptiveRule::Yogi, PAPER);
    assert!(matches!(yogi.restore(&adam.state()), Err(StrategyError::WrongKind { .. })));
    assert!(matches!(yogi.restore(&[0xff, 0x01, 0x02]), Err(StrategyError::CorruptState(_))));
    let state = adam.state();
    assert!(matches!(yogi.restore(&state[..state.len() - 1]), Err(StrategyError::CorruptState(_))));
}

#[test]
fn a_delta_of_the_wrong_length_is_an_error_and_leaves_the_moments_alone() {
    let mut s = Adaptive::new(AdaptiveRule::Adam, PAPER);
    s.aggregate(&[1.0, 2.0], &[0.1, 0.1], 1).unwrap();
    let before = s.state();
    assert_eq!(s.aggregate(&[1.0, 2.0], &[0.1], 2), Err(StrategyError::LengthMismatch { global: 2, delta: 1 }));
    assert!(matches!(s.aggregate(&[1.0, 2.0, 3.0], &[0.1, 0.1, 0.1], 2), Err(StrategyError::StateMismatch { .. })));
    assert_eq!(s.state(), before);
    assert!(FedAvg.aggregate(&[1.0], &[1.0, 2.0], 1).is_err());
}

#[test]
fn fedprox_puts_its_mu_in_the_plan_and_aggregates_like_fedavg() {
    let strategy = StrategyConfig::FedProx { mu: 0.01 }.build().unwrap();
    let base = TrainHyper { optimizer: OptimizerKind::Sgd, prox_mu: 0.0, ..TrainHyper::default() };
    let hyper = strategy.configure_round(3, &base);
    assert_eq!(hyper.prox_mu, 0.01);
    assert_eq!(TrainHyper { prox_mu: 0.0, ..hyper }, base);
    let mut strategy = strategy;
    assert_eq!(strategy.aggregate(&[1.0, 1.0], &[0.5, -0.5], 3).unwrap(), vec![1.5, 0.5]);
}

#[test]
fn strategies_are_chosen_in_server_toml_with_defaults_and_validation() {
    #[derive(serde::Deserialize)]
    struct Server {
        strategy: StrategyConfig,
    }
    let parse = |s: &str| toml::from_str::<Server>(s).map(|s| s.strategy);
    assert_eq!(parse(r#"strategy = { kind = "fedavg" }"#).unwrap(), StrategyConfig::FedAvg);
    assert_eq!(
        parse(r#"strategy = { kind = "fedadam", eta = 0.01 }"#).unwrap(),
        StrategyConfig::FedAdam { eta: 0.01, beta1: 0.9, beta2: 0.99, tau: 1e-3 }
    );
    assert_eq!(
        parse(r#"strategy = { kind = "fedyogi", eta = 0.02, beta1 = 0.8, beta2 = 0.9, tau = 0.01 }"#).unwrap(),
        StrategyConfig::FedYogi { eta: 0.02, beta1: 0.8, beta2: 0.9, tau: 0.01 }
    );
    assert_eq!(parse(r#"strategy = { kind = "fedprox", mu = 0.1 }"#).unwrap(), StrategyConfig::FedProx { mu: 0.1 });
    assert!(parse(r#"strategy = { kind = "fedprox" }"#).is_err(), "mu is required");
    assert!(parse(r#"strategy = { kind = "fedadam", etta = 0.1 }"#).is_err(), "typos are refused");
    assert!(parse(r#"strategy = { kind = "fedsgd" }"#).is_err());
    for bad in [
        StrategyConfig::FedProx { mu: -1.0 },
        StrategyConfig::FedAdam { eta: 0.0, beta1: 0.9, beta2: 0.99, tau: 1e-3 },
        StrategyConfig::FedAdam { eta: 0.1, beta1: 1.0, beta2: 0.99, tau: 1e-3 },
        StrategyConfig::FedYogi { eta: 0.1, beta1: 0.9, beta2: -0.1, tau: 1e-3 },
        StrategyConfig::FedYogi { eta: 0.1, beta1: 0.9, beta2: 0.99, tau: 0.0 },
        StrategyConfig::FedAdam { eta: f32::NAN, beta1: 0.9, beta2: 0.99, tau: 1e-3 },
    ] {
        assert!(matches!(bad.build(), Err(StrategyError::InvalidConfig(_))), "{bad:?}");
    }
}

proptest! {
    #[test]
    fn the_weighted_mean_does_not_depend_on_arrival_order(
        updates in proptest::collection::vec((1u64..1000, proptest::collection::vec(-10.0f32..10.0, 4)), 1..8),
    ) {
        let mut forward = WeightedSum::new(4);
        let mut backward = WeightedSum::new(4);
        for (n, d) in &updates { forward.fold(*n, d).unwrap(); }
        for (n, d) in updates.iter().rev() { backward.fold(*n, d).unwrap(); }
        let (a, b) = (forward.mean().unwrap(), backward.mean().unwrap());
        prop_assert!(close(&a, &b, 1e-5));
        // And the mean lies within the range of the updates, coordinate by coordinate.
        for i in 0..4 {
            let lo = updates.iter().map(|(_, d)| d[i]).fold(f32::INFINITY, f32::min);
            let hi = updates.iter().map(|(_, d)| d[i]).fold(f32::NEG_INFINITY, f32::max);
            prop_assert!(a[i] >= lo - 1e-4 && a[i] <= hi + 1e-4);
        }
    }

    #[test]
    fn a_first_adam_step_moves_each_weight_towards_its_delta_by_a_bounded_amount(
        global in proptest::collection::vec(-5.0f32..5.0, 1..16),
        seed in proptest::collection::vec(-1.0f32..1.0, 16),
    ) {
        let delta: Vec<f32> = seed[..global.len()].to_vec();
        let mut s = Adaptive::new(AdaptiveRule::Adam, PAPER);
        let new = s.aggregate(&global, &delta, 1).unwrap();
        // |step| = η(1-β1)|Δ| / (√(β2τ² + (1-β2)Δ²) + τ) < η(1-β1)/√(1-β2).
        let bound = PAPER.eta * (1.0 - PAPER.beta1) / (1.0 - PAPER.beta2).sqrt();
        for ((x, n), d) in global.iter().zip(&new).zip(&delta) {
            let step = n - x;
            prop_assert!(step.abs() <= bound * 1.0001);
            prop_assert!(step * d >= 0.0);
        }
    }
}
