//! Round records in layout 1: as layout 2, but from before the loss joined the hyper-parameters; they read back
//! (through layout 2) with cross-entropy, the only loss those rounds could train with.
//!
//! Read only: the store must never write a record in this layout, and this module must never touch sled.

use super::layout_v2::{RoundPlanV2, RoundRecordV2, TrainHyperV2};
use super::layout_v3::AggregationModeV3;
use crate::coordinator::{Dropped, OptimizerKind, Outcome, Report, RoundMetrics};
use fedge_shared::train::Loss;
use serde::{Deserialize, Serialize};

/// [`TrainHyper`] before `loss`.
#[derive(Serialize, Deserialize)]
pub(super) struct TrainHyperV1 {
    pub(super) epochs: u32,
    pub(super) batch_size: u32,
    pub(super) learning_rate: f32,
    pub(super) momentum: f32,
    pub(super) optimizer: OptimizerKind,
    pub(super) weight_decay: f32,
    pub(super) prox_mu: f32,
    pub(super) seed: u64,
    pub(super) deadline_ms: u64,
}

#[derive(Serialize, Deserialize)]
pub(super) struct RoundPlanV1 {
    pub(super) round: u64,
    pub(super) model_version: u64,
    pub(super) hyper: TrainHyperV1,
    pub(super) deadline_ms: u64,
    pub(super) aggregation: AggregationModeV3,
}

/// [`RoundRecord`] in layout 1: as now, but the plan's hyper-parameters have no loss.
#[derive(Serialize, Deserialize)]
pub(super) struct RoundRecordV1 {
    pub(super) round: u64,
    pub(super) plan: RoundPlanV1,
    pub(super) strategy: String,
    pub(super) selected: Vec<String>,
    pub(super) reported: Vec<Report>,
    pub(super) dropped: Vec<Dropped>,
    pub(super) outcome: Outcome,
    pub(super) metrics: RoundMetrics,
    pub(super) started_ms: u64,
    pub(super) ended_ms: u64,
    pub(super) new_version: Option<u64>,
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
