//! Round records in layout 0, the untagged one: from databases written before weight decay joined the
//! hyper-parameters and before the federated evaluation. They read back (through layout 1) with `weight_decay` 0,
//! which is what those rounds trained with, and no federated evaluation.
//!
//! Read only: the store must never write a record in this layout, and this module must never touch sled.

use super::layout_v1::{RoundPlanV1, RoundRecordV1, TrainHyperV1};
use super::layout_v3::AggregationModeV3;
use crate::coordinator::{Dropped, OptimizerKind, Outcome, Report, RoundMetrics, SecAggMetrics};
use serde::{Deserialize, Serialize};

/// [`TrainHyper`] before `weight_decay`.
#[derive(Serialize, Deserialize)]
pub(super) struct TrainHyperV0 {
    pub(super) epochs: u32,
    pub(super) batch_size: u32,
    pub(super) learning_rate: f32,
    pub(super) momentum: f32,
    pub(super) optimizer: OptimizerKind,
    pub(super) prox_mu: f32,
    pub(super) seed: u64,
    pub(super) deadline_ms: u64,
}

#[derive(Serialize, Deserialize)]
pub(super) struct RoundPlanV0 {
    pub(super) round: u64,
    pub(super) model_version: u64,
    pub(super) hyper: TrainHyperV0,
    pub(super) deadline_ms: u64,
    pub(super) aggregation: AggregationModeV3,
}

/// [`Report`] before the federated evaluation.
#[derive(Serialize, Deserialize)]
pub(super) struct ReportV0 {
    pub(super) agent: String,
    pub(super) examples: u64,
    pub(super) train_loss: f32,
    pub(super) after_ms: u64,
}

/// [`RoundMetrics`] before the federated evaluation.
#[derive(Serialize, Deserialize)]
pub(super) struct RoundMetricsV0 {
    pub(super) mean_train_loss: Option<f32>,
    pub(super) total_examples: u64,
    pub(super) test_accuracy: Option<f32>,
    pub(super) test_loss: Option<f32>,
    pub(super) update_bytes: u64,
    pub(super) duration_ms: u64,
    pub(super) secagg: Option<SecAggMetrics>,
}

#[derive(Serialize, Deserialize)]
pub(super) struct RoundRecordV0 {
    pub(super) round: u64,
    pub(super) plan: RoundPlanV0,
    pub(super) strategy: String,
    pub(super) selected: Vec<String>,
    pub(super) reported: Vec<ReportV0>,
    pub(super) dropped: Vec<Dropped>,
    pub(super) outcome: Outcome,
    pub(super) metrics: RoundMetricsV0,
    pub(super) started_ms: u64,
    pub(super) ended_ms: u64,
    pub(super) new_version: Option<u64>,
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
