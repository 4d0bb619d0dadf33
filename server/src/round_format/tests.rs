//! Tests of the round record layouts: today's round-trips, and each older layout reads back as what those rounds ran.
//!
//! Test-only; it must never be compiled into the server.

use super::layout_v0::{ReportV0, RoundMetricsV0, RoundPlanV0, RoundRecordV0, TrainHyperV0};
use super::layout_v1::{RoundPlanV1, RoundRecordV1, TrainHyperV1};
use super::layout_v2::{RoundPlanV2, RoundRecordV2, TrainHyperV2};
use super::layout_v3::{AggregationModeV3, RoundPlanV3, RoundRecordV3, SecAggParamsV3, SecurePlanV3};
use super::layout_v4::{RoundPlanV4, RoundRecordV4, TrainHyperV4};
use super::layout_v5::{AggregationModeV5, RoundPlanV5, RoundRecordV5, SecAggParamsV5, SecurePlanV5};
use super::{LAYOUT_V1, LAYOUT_V2, LAYOUT_V3, LAYOUT_V4, LAYOUT_V5, TAG, decode, encode};
use crate::coordinator::{
    AbortReason, AggregationMode, Dropped, Outcome, Report, RoundMetrics, RoundPlan, RoundRecord, SecurePlan,
    TrainHyper,
};
use fedge_shared::codec;
use fedge_shared::delta_encoding::DeltaEncoding;
use fedge_shared::secagg::AgentRef;
use fedge_shared::train::Loss;

fn record(round: u64, weight_decay: f32) -> RoundRecord {
    RoundRecord {
        round,
        plan: RoundPlan {
            round,
            model_version: 4,
            // f32 uploads: what every record from before layout 5 reads back with.
            hyper: TrainHyper {
                weight_decay,
                prox_mu: 0.01,
                seed: 9,
                deadline_ms: 500,
                upload: DeltaEncoding::F32,
                ..TrainHyper::default()
            },
            deadline_ms: 1000,
            aggregation: AggregationMode::Plain,
        },
        strategy: "fedprox".into(),
        selected: vec!["a".into(), "b".into()],
        reported: vec![Report { agent: "a".into(), examples: 10, train_loss: 0.5, after_ms: 30, eval: None }],
        dropped: vec![Dropped { agent: "b".into(), reason: "gone".into() }],
        outcome: Outcome::Aborted(AbortReason::TooFewReports { reported: 1, min_agents: 2 }),
        metrics: RoundMetrics { update_bytes: 40, duration_ms: 900, ..Default::default() },
        started_ms: 10,
        ended_ms: 910,
        new_version: None,
    }
}

/// The bytes a database written before the layout tag holds for `r`.
fn untagged(r: &RoundRecord) -> Vec<u8> {
    let h = &r.plan.hyper;
    codec::encode(&RoundRecordV0 {
        round: r.round,
        plan: RoundPlanV0 {
            round: r.plan.round,
            model_version: r.plan.model_version,
            hyper: TrainHyperV0 {
                epochs: h.epochs,
                batch_size: h.batch_size,
                learning_rate: h.learning_rate,
                momentum: h.momentum,
                optimizer: h.optimizer,
                prox_mu: h.prox_mu,
                seed: h.seed,
                deadline_ms: h.deadline_ms,
            },
            deadline_ms: r.plan.deadline_ms,
            aggregation: AggregationModeV3::Plain,
        },
        strategy: r.strategy.clone(),
        selected: r.selected.clone(),
        reported: r
            .reported
            .iter()
            .map(|p| ReportV0 {
                agent: p.agent.clone(),
                examples: p.examples,
                train_loss: p.train_loss,
                after_ms: p.after_ms,
            })
            .collect(),
        dropped: r.dropped.clone(),
        outcome: r.outcome.clone(),
        metrics: RoundMetricsV0 {
            mean_train_loss: r.metrics.mean_train_loss,
            total_examples: r.metrics.total_examples,
            test_accuracy: r.metrics.test_accuracy,
            test_loss: r.metrics.test_loss,
            update_bytes: r.metrics.update_bytes,
            duration_ms: r.metrics.duration_ms,
            secagg: r.metrics.secagg.clone(),
        },
        started_ms: r.started_ms,
        ended_ms: r.ended_ms,
        new_version: r.new_version,
    })
    .unwrap()
}

/// A secure round from before bounded contributions and DP reads back with neither, and a record written now
/// keeps both.
#[test]
fn a_secure_record_from_layout_3_reads_back_without_clip_norm_noise_or_privacy() {
    let mut r = record(15, 0.0);
    let cohort = vec![AgentRef { index: 0, name: "a".into() }, AgentRef { index: 1, name: "b".into() }];
    let v3 = RoundRecordV3 {
        round: r.round,
        plan: RoundPlanV3 {
            round: r.plan.round,
            model_version: r.plan.model_version,
            hyper: hyper_v4(&r.plan.hyper),
            deadline_ms: r.plan.deadline_ms,
            aggregation: AggregationModeV3::Secure(SecurePlanV3 {
                params: SecAggParamsV3 {
                    neighbours: 1,
                    threshold: 1,
                    clip: 2.0,
                    quant_bits: 20,
                    weight_cap: 50,
                    counts: 3,
                },
                graph_seed: 77,
                cohort: cohort.clone(),
                phase_timeout_ms: 900,
            }),
        },
        strategy: r.strategy.clone(),
        selected: r.selected.clone(),
        reported: r.reported.clone(),
        dropped: r.dropped.clone(),
        outcome: r.outcome.clone(),
        metrics: r.metrics.clone(),
        started_ms: r.started_ms,
        ended_ms: r.ended_ms,
        new_version: r.new_version,
    };
    let mut bytes = vec![TAG, LAYOUT_V3];
    bytes.extend_from_slice(&codec::encode(&v3).unwrap());
    let back = decode(&bytes, 1 << 20).unwrap();
    let AggregationMode::Secure(sp) = &back.plan.aggregation else { panic!("a secure round came back plain") };
    assert_eq!((sp.params.clip, sp.params.counts, sp.graph_seed), (2.0, 3, 77));
    assert_eq!((sp.params.clip_norm, sp.params.noise_variance, sp.privacy), (None, 0.0, None));
    // Written now, both survive.
    let mut params = sp.params.clone();
    params.clip_norm = Some(0.5);
    params.noise_variance = 12.5;
    r.plan.aggregation = AggregationMode::Secure(SecurePlan {
        params,
        graph_seed: 77,
        cohort: cohort.into(),
        phase_timeout_ms: 900,
        privacy: Some(crate::coordinator::RoundPrivacy {
            ddg: fedge_shared::privacy::DdgRound {
                l2_sensitivity: 3.0,
                l1_sensitivity: 9.0,
                local_variance: 12.5,
                agents: 2,
                dimension: 10,
            },
            delta: 1e-5,
            epsilon: 0.7,
            target_epsilon: 8.0,
        }),
    });
    assert_eq!(decode(&encode(&r).unwrap(), 1 << 20).unwrap(), r);
}

#[test]
fn a_record_round_trips_with_its_weight_decay() {
    let r = record(3, 5e-4);
    assert_eq!(decode(&encode(&r).unwrap(), 1 << 20).unwrap(), r);
}

#[test]
fn a_record_from_before_the_tag_reads_back_whole_with_no_weight_decay() {
    for round in [1, 250, 251, 70_000, u64::MAX] {
        let r = record(round, 0.0);
        let old = untagged(&r);
        assert_ne!(old[0], TAG, "an untagged record never starts with the tag");
        assert_eq!(decode(&old, 1 << 20).unwrap(), r);
    }
}

#[test]
fn a_record_from_before_the_loss_reads_back_with_cross_entropy() {
    let mut r = record(12, 5e-4);
    let h = &r.plan.hyper;
    let v1 = RoundRecordV1 {
        round: r.round,
        plan: RoundPlanV1 {
            round: r.plan.round,
            model_version: r.plan.model_version,
            hyper: TrainHyperV1 {
                epochs: h.epochs,
                batch_size: h.batch_size,
                learning_rate: h.learning_rate,
                momentum: h.momentum,
                optimizer: h.optimizer,
                weight_decay: h.weight_decay,
                prox_mu: h.prox_mu,
                seed: h.seed,
                deadline_ms: h.deadline_ms,
            },
            deadline_ms: r.plan.deadline_ms,
            aggregation: AggregationModeV3::Plain,
        },
        strategy: r.strategy.clone(),
        selected: r.selected.clone(),
        reported: r.reported.clone(),
        dropped: r.dropped.clone(),
        outcome: r.outcome.clone(),
        metrics: r.metrics.clone(),
        started_ms: r.started_ms,
        ended_ms: r.ended_ms,
        new_version: r.new_version,
    };
    let mut bytes = vec![TAG, LAYOUT_V1];
    bytes.extend_from_slice(&codec::encode(&v1).unwrap());
    assert_eq!(decode(&bytes, 1 << 20).unwrap(), r);
    // And a record that trained with MSE keeps it.
    r.plan.hyper.loss = Loss::MeanSquaredError;
    assert_eq!(decode(&encode(&r).unwrap(), 1 << 20).unwrap().plan.hyper.loss, Loss::MeanSquaredError);
}

#[test]
fn a_record_from_before_fine_tuning_reads_back_training_the_whole_model_and_patterns_round_trip() {
    let mut r = record(14, 5e-4);
    r.plan.hyper.loss = Loss::MeanSquaredError;
    let h = &r.plan.hyper;
    let v2 = RoundRecordV2 {
        round: r.round,
        plan: RoundPlanV2 {
            round: r.plan.round,
            model_version: r.plan.model_version,
            hyper: TrainHyperV2 {
                epochs: h.epochs,
                batch_size: h.batch_size,
                learning_rate: h.learning_rate,
                momentum: h.momentum,
                optimizer: h.optimizer,
                weight_decay: h.weight_decay,
                prox_mu: h.prox_mu,
                seed: h.seed,
                deadline_ms: h.deadline_ms,
                loss: h.loss,
            },
            deadline_ms: r.plan.deadline_ms,
            aggregation: AggregationModeV3::Plain,
        },
        strategy: r.strategy.clone(),
        selected: r.selected.clone(),
        reported: r.reported.clone(),
        dropped: r.dropped.clone(),
        outcome: r.outcome.clone(),
        metrics: r.metrics.clone(),
        started_ms: r.started_ms,
        ended_ms: r.ended_ms,
        new_version: r.new_version,
    };
    let mut bytes = vec![TAG, LAYOUT_V2];
    bytes.extend_from_slice(&codec::encode(&v2).unwrap());
    let back = decode(&bytes, 1 << 20).unwrap();
    assert!(back.plan.hyper.trainable.is_empty());
    assert_eq!(back, r);
    r.plan.hyper.trainable = vec!["head.*".into(), "*.bias".into()];
    assert_eq!(decode(&encode(&r).unwrap(), 1 << 20).unwrap(), r);
}

#[test]
fn an_unknown_layout_or_a_truncated_record_is_an_error_not_a_guess() {
    let mut bytes = encode(&record(1, 0.1)).unwrap();
    bytes[1] = 7;
    assert!(decode(&bytes, 1 << 20).unwrap_err().to_string().contains("layout 7"));
    let bytes = encode(&record(1, 0.1)).unwrap();
    assert!(decode(&bytes[..bytes.len() - 1], 1 << 20).is_err());
    assert!(decode(&[], 1 << 20).is_err());
}

/// `h` as layouts 3 and 4 wrote it (without `upload`).
fn hyper_v4(h: &TrainHyper) -> TrainHyperV4 {
    TrainHyperV4 {
        epochs: h.epochs,
        batch_size: h.batch_size,
        learning_rate: h.learning_rate,
        momentum: h.momentum,
        optimizer: h.optimizer,
        weight_decay: h.weight_decay,
        prox_mu: h.prox_mu,
        seed: h.seed,
        deadline_ms: h.deadline_ms,
        loss: h.loss,
        trainable: h.trainable.clone(),
    }
}

#[test]
fn a_record_from_before_8_bit_uploads_reads_back_with_f32_uploads_and_the_encoding_round_trips() {
    let r = record(21, 0.0);
    let v4 = RoundRecordV4 {
        round: r.round,
        plan: RoundPlanV4 {
            round: r.plan.round,
            model_version: r.plan.model_version,
            hyper: hyper_v4(&r.plan.hyper),
            deadline_ms: r.plan.deadline_ms,
            aggregation: AggregationModeV5::Plain,
        },
        strategy: r.strategy.clone(),
        selected: r.selected.clone(),
        reported: r.reported.clone(),
        dropped: r.dropped.clone(),
        outcome: r.outcome.clone(),
        metrics: r.metrics.clone(),
        started_ms: r.started_ms,
        ended_ms: r.ended_ms,
        new_version: r.new_version,
    };
    let mut bytes = vec![TAG, LAYOUT_V4];
    bytes.extend_from_slice(&codec::encode(&v4).unwrap());
    let back = decode(&bytes, 1 << 20).unwrap();
    assert_eq!(back.plan.hyper.upload, DeltaEncoding::F32);
    assert_eq!(back, r);
    let mut int8 = r;
    int8.plan.hyper.upload = DeltaEncoding::Int8;
    assert_eq!(decode(&encode(&int8).unwrap(), 1 << 20).unwrap(), int8);
}

#[test]
fn a_secure_record_from_before_the_word_width_reads_back_in_32_bit_words_and_the_width_round_trips() {
    let mut r = record(23, 0.0);
    let params = fedge_shared::secagg::SecAggParams {
        clip_norm: Some(1.5),
        noise_variance: 40.0,
        ..fedge_shared::secagg::SecAggParams::default_for(3)
    };
    assert_eq!(params.word_bits, 32);
    let cohort = vec![AgentRef { index: 0, name: "a".into() }, AgentRef { index: 1, name: "b".into() }];
    r.plan.aggregation = AggregationMode::Secure(SecurePlan {
        params: params.clone(),
        graph_seed: 77,
        cohort: cohort.clone().into(),
        phase_timeout_ms: 3000,
        privacy: None,
    });
    let v5 = RoundRecordV5 {
        round: r.round,
        plan: RoundPlanV5 {
            round: r.plan.round,
            model_version: r.plan.model_version,
            hyper: r.plan.hyper.clone(),
            deadline_ms: r.plan.deadline_ms,
            aggregation: AggregationModeV5::Secure(SecurePlanV5 {
                params: SecAggParamsV5 {
                    neighbours: params.neighbours,
                    threshold: params.threshold,
                    clip: params.clip,
                    quant_bits: params.quant_bits,
                    weight_cap: params.weight_cap,
                    counts: params.counts,
                    clip_norm: params.clip_norm,
                    noise_variance: params.noise_variance,
                },
                graph_seed: 77,
                cohort,
                phase_timeout_ms: 3000,
                privacy: None,
            }),
        },
        strategy: r.strategy.clone(),
        selected: r.selected.clone(),
        reported: r.reported.clone(),
        dropped: r.dropped.clone(),
        outcome: r.outcome.clone(),
        metrics: r.metrics.clone(),
        started_ms: r.started_ms,
        ended_ms: r.ended_ms,
        new_version: r.new_version,
    };
    let mut bytes = vec![TAG, LAYOUT_V5];
    bytes.extend_from_slice(&codec::encode(&v5).unwrap());
    assert_eq!(decode(&bytes, 1 << 20).unwrap(), r);
    if let AggregationMode::Secure(sp) = &mut r.plan.aggregation {
        sp.params.word_bits = 16;
    }
    assert_eq!(decode(&encode(&r).unwrap(), 1 << 20).unwrap(), r);
}

#[test]
fn a_buffered_secure_record_round_trips_in_todays_layout_training_or_grouped() {
    let mut r = record(31, 0.0);
    r.plan.aggregation = AggregationMode::Held;
    assert_eq!(decode(&encode(&r).unwrap(), 1 << 20).unwrap(), r);
    let cohort = vec![AgentRef { index: 0, name: "a".into() }, AgentRef { index: 1, name: "b".into() }];
    let held = (0..2)
        .map(|i| crate::coordinator::HeldMember { index: i, trained_round: 30, trained_version: 3, scale: 0.5 })
        .collect();
    let plan = SecurePlan {
        params: fedge_shared::secagg::SecAggParams::default_for(2),
        graph_seed: 5,
        cohort: cohort.into(),
        phase_timeout_ms: 1000,
        privacy: None,
    };
    r.plan.aggregation = AggregationMode::HeldGroup(plan, held);
    assert_eq!(decode(&encode(&r).unwrap(), 1 << 20).unwrap(), r);
}
