//! Round records in layout 2: as layout 3, but from before fine-tuning (no `trainable` patterns); they read back
//! training the whole model, which is what those rounds did.
//!
//! Read only: the store must never write a record in this layout, and this module must never touch sled.

use super::layout_v3::AggregationModeV3;
use crate::coordinator::{Dropped, OptimizerKind, Outcome, Report, RoundMetrics, RoundPlan, RoundRecord, TrainHyper};
use fedge_shared::train::Loss;
use serde::{Deserialize, Serialize};

/// [`TrainHyper`] before `trainable`.
#[derive(Serialize, Deserialize)]
pub(super) struct TrainHyperV2 {
    pub(super) epochs: u32,
    pub(super) batch_size: u32,
    pub(super) learning_rate: f32,
    pub(super) momentum: f32,
    pub(super) optimizer: OptimizerKind,
    pub(super) weight_decay: f32,
    pub(super) prox_mu: f32,
    pub(super) seed: u64,
    pub(super) deadline_ms: u64,
    pub(super) loss: Loss,
}

#[derive(Serialize, Deserialize)]
pub(super) struct RoundPlanV2 {
    pub(super) round: u64,
    pub(super) model_version: u64,
    pub(super) hyper: TrainHyperV2,
    pub(super) deadline_ms: u64,
    pub(super) aggregation: AggregationModeV3,
}

/// [`RoundRecord`] in layout 2: as now, but the plan trains the whole model (no trainable patterns).
#[derive(Serialize, Deserialize)]
pub(super) struct RoundRecordV2 {
    pub(super) round: u64,
    pub(super) plan: RoundPlanV2,
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

impl From<RoundRecordV2> for RoundRecord {
    fn from(r: RoundRecordV2) -> RoundRecord {
        let h = r.plan.hyper;
        RoundRecord {
            round: r.round,
            plan: RoundPlan {
                round: r.plan.round,
                model_version: r.plan.model_version,
                hyper: TrainHyper {
                    upload: fedge_shared::delta_encoding::DeltaEncoding::F32,
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
