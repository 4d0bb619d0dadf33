//! The aggregation strategies against hand-computed cases, the update rules of Reddi et al. 2021 and Hsu et al. 2019,
//! and the robust rules' resistance to outliers.

use fedge_server::coordinator::{OptimizerKind, TrainHyper, WeightedSum};
use fedge_server::strategy::{
    Adaptive, AdaptiveParams, AdaptiveRule, ClientUpdate, FedAvg, FedAvgM, Input, Krum, Median, RoundUpdates, Strategy,
    StrategyConfig, StrategyError, TrimmedMean,
};
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
    let new = FedAvg.aggregate(&[1.0, 2.0], RoundUpdates::Mean(&mean), 1).unwrap();
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
    let new = s.aggregate(&[0.5, -1.0], RoundUpdates::Mean(&[0.2, -0.4]), 1).unwrap();
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
    let new = s.aggregate(&[0.5, -1.0], RoundUpdates::Mean(&[0.2, -0.4]), 1).unwrap();
    assert!(close(&new, &[0.595125, -1.097531], 2e-6), "{new:?}");
    let (_, v) = s.moments();
    assert!(close(v, &[0.000401, 0.001601], 1e-8));
}

#[test]
fn yogi_keeps_the_second_moment_on_a_zero_delta_while_adam_decays_it() {
    let mut adam = Adaptive::new(AdaptiveRule::Adam, PAPER);
    let mut yogi = Adaptive::new(AdaptiveRule::Yogi, PAPER);
    for s in [&mut adam, &mut yogi] {
        s.aggregate(&[0.0], RoundUpdates::Mean(&[0.5]), 1).unwrap();
    }
    let (va, vy) = (adam.moments().1[0], yogi.moments().1[0]);
    adam.aggregate(&[0.0], RoundUpdates::Mean(&[0.0]), 2).unwrap();
    yogi.aggregate(&[0.0], RoundUpdates::Mean(&[0.0]), 2).unwrap();
    assert!((adam.moments().1[0] - 0.99 * va).abs() < 1e-9);
    assert_eq!(yogi.moments().1[0], vy);
}

#[test]
fn adaptive_moments_survive_a_restart_through_their_state_bytes() {
    for rule in [AdaptiveRule::Adam, AdaptiveRule::Yogi] {
        let mut running = Adaptive::new(rule, PAPER);
        running.aggregate(&[1.0, 2.0, 3.0], RoundUpdates::Mean(&[0.1, -0.2, 0.3]), 1).unwrap();
        let saved = running.state();
        let mut restarted = Adaptive::new(rule, PAPER);
        restarted.restore(&saved).unwrap();
        assert_eq!(restarted.moments(), running.moments());
        let a = running.aggregate(&[1.0, 2.0, 3.0], RoundUpdates::Mean(&[0.05, 0.05, -0.1]), 2).unwrap();
        let b = restarted.aggregate(&[1.0, 2.0, 3.0], RoundUpdates::Mean(&[0.05, 0.05, -0.1]), 2).unwrap();
        assert_eq!(a, b);
    }
}

#[test]
fn a_state_for_another_strategy_or_corrupt_bytes_are_refused() {
    let mut adam = Adaptive::new(AdaptiveRule::Adam, PAPER);
    adam.aggregate(&[1.0], RoundUpdates::Mean(&[0.1]), 1).unwrap();
    let mut yogi = Adaptive::new(AdaptiveRule::Yogi, PAPER);
    assert!(matches!(yogi.restore(&adam.state()), Err(StrategyError::WrongKind { .. })));
    assert!(matches!(yogi.restore(&[0xff, 0x01, 0x02]), Err(StrategyError::CorruptState(_))));
    let state = adam.state();
    assert!(matches!(yogi.restore(&state[..state.len() - 1]), Err(StrategyError::CorruptState(_))));
}

#[test]
fn a_delta_of_the_wrong_length_is_an_error_and_leaves_the_moments_alone() {
    let mut s = Adaptive::new(AdaptiveRule::Adam, PAPER);
    s.aggregate(&[1.0, 2.0], RoundUpdates::Mean(&[0.1, 0.1]), 1).unwrap();
    let before = s.state();
    assert_eq!(
        s.aggregate(&[1.0, 2.0], RoundUpdates::Mean(&[0.1]), 2),
        Err(StrategyError::LengthMismatch { global: 2, delta: 1 })
    );
    assert!(matches!(
        s.aggregate(&[1.0, 2.0, 3.0], RoundUpdates::Mean(&[0.1, 0.1, 0.1]), 2),
        Err(StrategyError::StateMismatch { .. })
    ));
    assert_eq!(s.state(), before);
    assert!(FedAvg.aggregate(&[1.0], RoundUpdates::Mean(&[1.0, 2.0]), 1).is_err());
}

#[test]
fn fedprox_puts_its_mu_in_the_plan_and_aggregates_like_fedavg() {
    let strategy = StrategyConfig::FedProx { mu: 0.01 }.build().unwrap();
    let base = TrainHyper { optimizer: OptimizerKind::Sgd, prox_mu: 0.0, ..TrainHyper::default() };
    let hyper = strategy.configure_round(3, &base);
    assert_eq!(hyper.prox_mu, 0.01);
    assert_eq!(TrainHyper { prox_mu: 0.0, ..hyper }, base);
    let mut strategy = strategy;
    assert_eq!(strategy.aggregate(&[1.0, 1.0], RoundUpdates::Mean(&[0.5, -0.5]), 3).unwrap(), vec![1.5, 0.5]);
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

#[test]
fn fedadagrad_one_step_adds_the_squared_delta_to_the_second_moment() {
    // m = (1-β1)·Δ with β1 = 0 → m = Δ; v = τ² + Δ²; x += η·m/(√v+τ).
    // weight 0: Δ=0.2:  v=1e-6+0.04=0.040001,  √v=0.2000025, x=0.5+0.1·0.2/0.2010025=0.5995012
    // weight 1: Δ=-0.4: v=1e-6+0.16=0.160001, √v=0.4000012, x=-1-0.1·0.4/0.4010012=-1.0997503
    let params = AdaptiveParams { eta: 0.1, beta1: 0.0, beta2: 0.0, tau: 0.001 };
    let mut s = Adaptive::new(AdaptiveRule::Adagrad, params);
    let new = s.aggregate(&[0.5, -1.0], RoundUpdates::Mean(&[0.2, -0.4]), 1).unwrap();
    assert!(close(&new, &[0.5995012, -1.0997503], 2e-6), "{new:?}");
    // The second moment only grows: a second step with the same delta moves less.
    let again = s.aggregate(&new, RoundUpdates::Mean(&[0.2, -0.4]), 2).unwrap();
    assert!((again[0] - new[0]) < (new[0] - 0.5), "{again:?}");
    assert!(close(s.moments().1, &[0.080001, 0.320001], 1e-7));
}

#[test]
fn fedavgm_accumulates_server_momentum_over_rounds() {
    // u1 = Δ1 = [0.1, -0.2]; x1 = x0 + η u1.   u2 = β u1 + Δ2 = [0.09 + 0.1, -0.18 + 0.0]; x2 = x1 + η u2.
    let mut s = FedAvgM::new(0.5, 0.9);
    let x1 = s.aggregate(&[1.0, 1.0], RoundUpdates::Mean(&[0.1, -0.2]), 1).unwrap();
    assert!(close(&x1, &[1.05, 0.9], 1e-7), "{x1:?}");
    let x2 = s.aggregate(&x1, RoundUpdates::Mean(&[0.1, 0.0]), 2).unwrap();
    assert!(close(&x2, &[1.145, 0.81], 1e-6), "{x2:?}");
    // Its momentum survives a restart, and another strategy's state is refused.
    let mut restarted = FedAvgM::new(0.5, 0.9);
    restarted.restore(&s.state()).unwrap();
    assert_eq!(restarted.momentum_vector(), s.momentum_vector());
    let adam = {
        let mut a = Adaptive::new(AdaptiveRule::Adam, PAPER);
        a.aggregate(&[1.0, 1.0], RoundUpdates::Mean(&[0.1, 0.1]), 1).unwrap();
        a.state()
    };
    assert!(restarted.restore(&adam).is_err(), "another strategy's state is refused");
    // Without momentum and at η = 1 it is FedAvg.
    let mut plain = FedAvgM::new(1.0, 0.0);
    for round in 1..4 {
        let a = plain.aggregate(&[0.25, 0.5], RoundUpdates::Mean(&[0.125, -0.5]), round).unwrap();
        assert_eq!(a, FedAvg.aggregate(&[0.25, 0.5], RoundUpdates::Mean(&[0.125, -0.5]), round).unwrap());
    }
}

fn updates(deltas: &[&[f32]]) -> Vec<ClientUpdate> {
    deltas
        .iter()
        .enumerate()
        .map(|(i, d)| ClientUpdate { agent: format!("agent-{i}"), examples: 10 + i as u64, delta: d.to_vec() })
        .collect()
}

#[test]
fn robust_rules_ignore_a_huge_sign_flipped_update_that_moves_the_mean_far() {
    let honest: [&[f32]; 7] =
        [&[1.0, -1.0], &[1.1, -0.9], &[0.9, -1.1], &[1.0, -1.05], &[1.05, -1.0], &[0.95, -0.95], &[1.0, -1.0]];
    let mut deltas: Vec<&[f32]> = honest.to_vec();
    let poison: &[f32] = &[-100.0, 100.0];
    deltas.splice(2..2, [poison, poison]);
    let each = updates(&deltas);
    let global = [0.0f32, 0.0];
    let mean = FedAvg.aggregate(&global, RoundUpdates::Each(&each), 1).unwrap();
    assert!(mean[0] < -10.0, "two poisoned updates drag the mean: {mean:?}");
    let robust: Vec<(&str, Box<dyn Strategy>)> = vec![
        ("median", Box::new(Median)),
        ("trimmed mean", Box::new(TrimmedMean { beta: 0.25 })),
        ("krum", Box::new(Krum { byzantine: 2, keep: 1 })),
        ("multi-krum", Box::new(Krum { byzantine: 2, keep: 4 })),
    ];
    for (name, mut s) in robust {
        assert_eq!(s.input(), Input::EachUpdate, "{name}");
        let new = s.aggregate(&global, RoundUpdates::Each(&each), 1).unwrap();
        assert!(close(&new, &[1.0, -1.0], 0.11), "{name}: {new:?}");
    }
}

#[test]
fn the_coordinate_wise_median_of_known_updates() {
    let each = updates(&[&[3.0, 0.0, -1.0], &[1.0, 5.0, -2.0], &[2.0, 4.0, -3.0], &[100.0, 1.0, -4.0]]);
    let new = Median.aggregate(&[0.0, 1.0, 2.0], RoundUpdates::Each(&each), 1).unwrap();
    // Per coordinate: median(3,1,2,100) = 2.5; median(0,5,4,1) = 2.5; median(-1,-2,-3,-4) = -2.5.
    assert_eq!(new, vec![2.5, 3.5, -0.5]);
}

#[test]
fn robust_rules_refuse_a_round_that_has_only_the_mean_or_too_few_updates() {
    for mut s in [
        Box::new(Median) as Box<dyn Strategy>,
        Box::new(TrimmedMean { beta: 0.1 }),
        Box::new(Krum { byzantine: 1, keep: 1 }),
    ] {
        let err = s.aggregate(&[0.0], RoundUpdates::Mean(&[1.0]), 1).unwrap_err();
        assert!(matches!(err, StrategyError::NeedsEachUpdate { .. }), "{err}");
    }
    let four = updates(&[&[0.0], &[1.0], &[2.0], &[3.0]]);
    assert_eq!(
        Krum { byzantine: 1, keep: 1 }.aggregate(&[0.0], RoundUpdates::Each(&four), 1),
        Err(StrategyError::TooFewUpdates { strategy: "krum", needed: 5, got: 4 })
    );
    let short = updates(&[&[0.0, 1.0], &[1.0]]);
    assert!(matches!(
        Median.aggregate(&[0.0, 0.0], RoundUpdates::Each(&short), 1),
        Err(StrategyError::LengthMismatch { .. })
    ));
}

#[test]
fn the_new_strategies_are_chosen_in_server_toml_with_defaults_and_validation() {
    #[derive(serde::Deserialize)]
    struct Server {
        strategy: StrategyConfig,
    }
    let parse = |s: &str| toml::from_str::<Server>(s).map(|s| s.strategy);
    assert_eq!(parse(r#"strategy = { kind = "median" }"#).unwrap(), StrategyConfig::Median);
    assert_eq!(
        parse(r#"strategy = { kind = "trimmed_mean", beta = 0.2 }"#).unwrap(),
        StrategyConfig::TrimmedMean { beta: 0.2 }
    );
    assert_eq!(parse(r#"strategy = { kind = "trimmed_mean" }"#).unwrap(), StrategyConfig::TrimmedMean { beta: 0.1 });
    assert_eq!(
        parse(r#"strategy = { kind = "krum", byzantine = 3 }"#).unwrap(),
        StrategyConfig::Krum { byzantine: 3, keep: 1 }
    );
    assert!(parse(r#"strategy = { kind = "krum" }"#).is_err(), "byzantine is required");
    assert_eq!(
        parse(r#"strategy = { kind = "fedavgm" }"#).unwrap(),
        StrategyConfig::FedAvgM { eta: 1.0, momentum: 0.9 }
    );
    assert_eq!(
        parse(r#"strategy = { kind = "fedadagrad", eta = 0.1 }"#).unwrap(),
        StrategyConfig::FedAdagrad { eta: 0.1, beta1: 0.0, tau: 1e-3 }
    );
    for bad in [
        StrategyConfig::TrimmedMean { beta: 0.5 },
        StrategyConfig::TrimmedMean { beta: -0.1 },
        StrategyConfig::Krum { byzantine: 1, keep: 0 },
        StrategyConfig::FedAvgM { eta: 0.0, momentum: 0.9 },
        StrategyConfig::FedAvgM { eta: 1.0, momentum: 1.0 },
        StrategyConfig::FedAdagrad { eta: 0.1, beta1: 0.0, tau: 0.0 },
    ] {
        assert!(matches!(bad.build(), Err(StrategyError::InvalidConfig(_))), "{bad:?}");
    }
    assert_eq!(StrategyConfig::Krum { byzantine: 3, keep: 1 }.min_updates(), 9);
    assert_eq!(StrategyConfig::Median.min_updates(), 1);
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
        let new = s.aggregate(&global, RoundUpdates::Mean(&delta), 1).unwrap();
        // |step| = η(1-β1)|Δ| / (√(β2τ² + (1-β2)Δ²) + τ) < η(1-β1)/√(1-β2).
        let bound = PAPER.eta * (1.0 - PAPER.beta1) / (1.0 - PAPER.beta2).sqrt();
        for ((x, n), d) in global.iter().zip(&new).zip(&delta) {
            let step = n - x;
            prop_assert!(step.abs() <= bound * 1.0001);
            prop_assert!(step * d >= 0.0);
        }
    }
}
