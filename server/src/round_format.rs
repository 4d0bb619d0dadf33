//! How the store lays out a [`RoundRecord`]: the codec's encoding behind a two-byte tag (`0xFF`, layout number).
//! Records without the tag are from databases written before weight decay joined the hyper-parameters; they are
//! read in that older layout and come back with `weight_decay` 0, which is what those rounds trained with, and no
//! federated evaluation (those rounds had none). Layout 1 records are from before the loss joined the
//! hyper-parameters; they come back with cross-entropy, the only loss those rounds could train with. Layout 2
//! records are from before fine-tuning (`trainable` patterns); they come back training the whole model, which is
//! what those rounds did. Layouts 0 to 3 are from before bounded contributions and distributed differential
//! privacy joined the secure-aggregation settings; their secure rounds come back with neither (`clip_norm` unset,
//! no noise, no privacy accounting), which is what they ran. Each older layout is read through the next one up.
//!
//! `0xFF` can never start an untagged record: the codec writes the round id first as a variable-length integer,
//! whose first byte is at most 253 for a `u64`. This module only encodes and decodes; it never touches sled.

use crate::coordinator::{
    AggregationMode, Dropped, OptimizerKind, Outcome, Report, RoundMetrics, RoundPlan, RoundRecord, SecAggMetrics,
    SecurePlan, TrainHyper,
};
use fedge_shared::codec::{self, CodecError};
use fedge_shared::secagg::{AgentRef, SecAggParams};
use fedge_shared::train::Loss;
use serde::{Deserialize, Serialize};

/// The tag's first byte.
const TAG: u8 = 0xFF;
/// The layout of [`RoundRecord`] written now.
const LAYOUT: u8 = 4;
/// The layout with trainable patterns but no `clip_norm`, noise or privacy accounting.
const LAYOUT_V3: u8 = 3;
/// The layout with the loss but no trainable patterns.
const LAYOUT_V2: u8 = 2;
/// The layout with weight decay but no loss.
const LAYOUT_V1: u8 = 1;

/// A round record as the store writes it.
pub fn encode(record: &RoundRecord) -> Result<Vec<u8>, CodecError> {
    let body = codec::encode(record)?;
    let mut out = Vec::with_capacity(body.len() + 2);
    out.extend_from_slice(&[TAG, LAYOUT]);
    out.extend_from_slice(&body);
    Ok(out)
}

/// A stored round record, in either layout.
pub fn decode(bytes: &[u8], limit: usize) -> Result<RoundRecord, CodecError> {
    match bytes {
        [TAG, LAYOUT, body @ ..] => codec::decode(body, limit),
        [TAG, LAYOUT_V3, body @ ..] => codec::decode::<RoundRecordV3>(body, limit).map(RoundRecord::from),
        [TAG, LAYOUT_V2, body @ ..] => codec::decode::<RoundRecordV2>(body, limit).map(RoundRecord::from),
        [TAG, LAYOUT_V1, body @ ..] => {
            codec::decode::<RoundRecordV1>(body, limit).map(|r| RoundRecord::from(RoundRecordV2::from(r)))
        }
        [TAG, other, ..] => Err(CodecError::Malformed(format!("unknown round record layout {other}"))),
        // Layout 0 is read through layout 1, which adds only what layout 0 lacked.
        _ => codec::decode::<RoundRecordV0>(bytes, limit)
            .map(|r| RoundRecord::from(RoundRecordV2::from(RoundRecordV1::from(r)))),
    }
}

/// [`SecAggParams`] before `clip_norm` and `noise_variance` (layouts 0 to 3).
#[derive(Serialize, Deserialize)]
struct SecAggParamsV3 {
    neighbours: u32,
    threshold: u32,
    clip: f32,
    quant_bits: u32,
    weight_cap: u64,
    counts: u32,
}

/// [`SecurePlan`] before `privacy` (layouts 0 to 3).
#[derive(Serialize, Deserialize)]
struct SecurePlanV3 {
    params: SecAggParamsV3,
    graph_seed: u64,
    cohort: Vec<AgentRef>,
    phase_timeout_ms: u64,
}

/// [`AggregationMode`] of layouts 0 to 3.
#[derive(Serialize, Deserialize)]
enum AggregationModeV3 {
    Plain,
    Secure(SecurePlanV3),
}

impl From<AggregationModeV3> for AggregationMode {
    fn from(a: AggregationModeV3) -> AggregationMode {
        match a {
            AggregationModeV3::Plain => AggregationMode::Plain,
            AggregationModeV3::Secure(sp) => {
                let p = sp.params;
                AggregationMode::Secure(SecurePlan {
                    params: SecAggParams {
                        neighbours: p.neighbours,
                        threshold: p.threshold,
                        clip: p.clip,
                        quant_bits: p.quant_bits,
                        weight_cap: p.weight_cap,
                        counts: p.counts,
                        clip_norm: None,
                        noise_variance: 0.0,
                    },
                    graph_seed: sp.graph_seed,
                    cohort: sp.cohort,
                    phase_timeout_ms: sp.phase_timeout_ms,
                    privacy: None,
                })
            }
        }
    }
}

#[derive(Serialize, Deserialize)]
struct RoundPlanV3 {
    round: u64,
    model_version: u64,
    hyper: TrainHyper,
    deadline_ms: u64,
    aggregation: AggregationModeV3,
}

/// [`RoundRecord`] in layout 3: as now, but without `clip_norm`, noise or privacy accounting in secure rounds.
#[derive(Serialize, Deserialize)]
struct RoundRecordV3 {
    round: u64,
    plan: RoundPlanV3,
    strategy: String,
    selected: Vec<String>,
    reported: Vec<Report>,
    dropped: Vec<Dropped>,
    outcome: Outcome,
    metrics: RoundMetrics,
    started_ms: u64,
    ended_ms: u64,
    new_version: Option<u64>,
}

impl From<RoundRecordV3> for RoundRecord {
    fn from(r: RoundRecordV3) -> RoundRecord {
        RoundRecord {
            round: r.round,
            plan: RoundPlan {
                round: r.plan.round,
                model_version: r.plan.model_version,
                hyper: r.plan.hyper,
                deadline_ms: r.plan.deadline_ms,
                aggregation: r.plan.aggregation.into(),
            },
            strategy: r.strategy,
            selected: r.selected,
            reported: r.reported,
            dropped: r.dropped,
            outcome: r.outcome,
            metrics: r.metrics,
            started_ms: r.started_ms,
            ended_ms: r.ended_ms,
            new_version: r.new_version,
        }
    }
}

/// [`TrainHyper`] before `trainable`.
#[derive(Serialize, Deserialize)]
struct TrainHyperV2 {
    epochs: u32,
    batch_size: u32,
    learning_rate: f32,
    momentum: f32,
    optimizer: OptimizerKind,
    weight_decay: f32,
    prox_mu: f32,
    seed: u64,
    deadline_ms: u64,
    loss: Loss,
}

#[derive(Serialize, Deserialize)]
struct RoundPlanV2 {
    round: u64,
    model_version: u64,
    hyper: TrainHyperV2,
    deadline_ms: u64,
    aggregation: AggregationModeV3,
}

/// [`RoundRecord`] in layout 2: as now, but the plan trains the whole model (no trainable patterns).
#[derive(Serialize, Deserialize)]
struct RoundRecordV2 {
    round: u64,
    plan: RoundPlanV2,
    strategy: String,
    selected: Vec<String>,
    reported: Vec<Report>,
    dropped: Vec<Dropped>,
    outcome: Outcome,
    metrics: RoundMetrics,
    started_ms: u64,
    ended_ms: u64,
    new_version: Option<u64>,
}

impl From<RoundRecordV2> for RoundRecord {
    fn from(r: RoundRecordV2) -> RoundRecord {
        let h = r.plan.hyper;
        RoundRecord {
            round: r.round,
            plan: RoundPlan {
                round: r.plan.round,
                model_version: r.plan.model_version,
                hyper: TrainHyper {
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
                    trainable: Vec::new(),
                },
                deadline_ms: r.plan.deadline_ms,
                aggregation: r.plan.aggregation.into(),
            },
            strategy: r.strategy,
            selected: r.selected,
            reported: r.reported,
            dropped: r.dropped,
            outcome: r.outcome,
            metrics: r.metrics,
            started_ms: r.started_ms,
            ended_ms: r.ended_ms,
            new_version: r.new_version,
        }
    }
}

/// [`TrainHyper`] before `loss`.
#[derive(Serialize, Deserialize)]
struct TrainHyperV1 {
    epochs: u32,
    batch_size: u32,
    learning_rate: f32,
    momentum: f32,
    optimizer: OptimizerKind,
    weight_decay: f32,
    prox_mu: f32,
    seed: u64,
    deadline_ms: u64,
}

#[derive(Serialize, Deserialize)]
struct RoundPlanV1 {
    round: u64,
    model_version: u64,
    hyper: TrainHyperV1,
    deadline_ms: u64,
    aggregation: AggregationModeV3,
}

/// [`RoundRecord`] in layout 1: as now, but the plan's hyper-parameters have no loss.
#[derive(Serialize, Deserialize)]
struct RoundRecordV1 {
    round: u64,
    plan: RoundPlanV1,
    strategy: String,
    selected: Vec<String>,
    reported: Vec<Report>,
    dropped: Vec<Dropped>,
    outcome: Outcome,
    metrics: RoundMetrics,
    started_ms: u64,
    ended_ms: u64,
    new_version: Option<u64>,
}

/// A layout-1 record as layout 2 would have held it: trained with cross-entropy.
impl From<RoundRecordV1> for RoundRecordV2 {
    fn from(r: RoundRecordV1) -> RoundRecordV2 {
        let h = r.plan.hyper;
        RoundRecordV2 {
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
                    loss: Loss::SoftmaxCrossEntropy,
                },
                deadline_ms: r.plan.deadline_ms,
                aggregation: r.plan.aggregation,
            },
            strategy: r.strategy,
            selected: r.selected,
            reported: r.reported,
            dropped: r.dropped,
            outcome: r.outcome,
            metrics: r.metrics,
            started_ms: r.started_ms,
            ended_ms: r.ended_ms,
            new_version: r.new_version,
        }
    }
}

/// [`TrainHyper`] before `weight_decay`.
#[derive(Serialize, Deserialize)]
struct TrainHyperV0 {
    epochs: u32,
    batch_size: u32,
    learning_rate: f32,
    momentum: f32,
    optimizer: OptimizerKind,
    prox_mu: f32,
    seed: u64,
    deadline_ms: u64,
}

#[derive(Serialize, Deserialize)]
struct RoundPlanV0 {
    round: u64,
    model_version: u64,
    hyper: TrainHyperV0,
    deadline_ms: u64,
    aggregation: AggregationModeV3,
}

/// [`Report`] before the federated evaluation.
#[derive(Serialize, Deserialize)]
struct ReportV0 {
    agent: String,
    examples: u64,
    train_loss: f32,
    after_ms: u64,
}

/// [`RoundMetrics`] before the federated evaluation.
#[derive(Serialize, Deserialize)]
struct RoundMetricsV0 {
    mean_train_loss: Option<f32>,
    total_examples: u64,
    test_accuracy: Option<f32>,
    test_loss: Option<f32>,
    update_bytes: u64,
    duration_ms: u64,
    secagg: Option<SecAggMetrics>,
}

#[derive(Serialize, Deserialize)]
struct RoundRecordV0 {
    round: u64,
    plan: RoundPlanV0,
    strategy: String,
    selected: Vec<String>,
    reported: Vec<ReportV0>,
    dropped: Vec<Dropped>,
    outcome: Outcome,
    metrics: RoundMetricsV0,
    started_ms: u64,
    ended_ms: u64,
    new_version: Option<u64>,
}

/// A layout-0 record as layout 1 would have held it: no weight decay, no federated evaluation.
impl From<RoundRecordV0> for RoundRecordV1 {
    fn from(r: RoundRecordV0) -> RoundRecordV1 {
        let h = r.plan.hyper;
        RoundRecordV1 {
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
                    weight_decay: 0.0,
                    prox_mu: h.prox_mu,
                    seed: h.seed,
                    deadline_ms: h.deadline_ms,
                },
                deadline_ms: r.plan.deadline_ms,
                aggregation: r.plan.aggregation,
            },
            strategy: r.strategy,
            selected: r.selected,
            reported: r
                .reported
                .into_iter()
                .map(|p| Report {
                    agent: p.agent,
                    examples: p.examples,
                    train_loss: p.train_loss,
                    after_ms: p.after_ms,
                    eval: None,
                })
                .collect(),
            dropped: r.dropped,
            outcome: r.outcome,
            metrics: RoundMetrics {
                mean_train_loss: r.metrics.mean_train_loss,
                total_examples: r.metrics.total_examples,
                test_accuracy: r.metrics.test_accuracy,
                test_loss: r.metrics.test_loss,
                update_bytes: r.metrics.update_bytes,
                duration_ms: r.metrics.duration_ms,
                secagg: r.metrics.secagg,
                federated_eval: None,
            },
            started_ms: r.started_ms,
            ended_ms: r.ended_ms,
            new_version: r.new_version,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coordinator::AbortReason;

    fn record(round: u64, weight_decay: f32) -> RoundRecord {
        RoundRecord {
            round,
            plan: RoundPlan {
                round,
                model_version: 4,
                hyper: TrainHyper { weight_decay, prox_mu: 0.01, seed: 9, deadline_ms: 500, ..TrainHyper::default() },
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
                hyper: r.plan.hyper.clone(),
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
            cohort,
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
}
