//! Round records in layout 4: as now, but without the plain update's encoding among the hyper-parameters; they
//! come back with `upload = "f32"`, which is how every plain round before the 8-bit form was uploaded. Also
//! [`TrainHyperV4`], the hyper-parameters layouts 3 and 4 share.
//!
//! Read only: the store must never write a record in this layout, and this module must never touch sled.

use super::layout_v5::AggregationModeV5;
use crate::coordinator::{Dropped, OptimizerKind, Outcome, Report, RoundMetrics, RoundPlan, RoundRecord, TrainHyper};
use fedge_shared::delta_encoding::DeltaEncoding;
use fedge_shared::train::Loss;
use serde::{Deserialize, Serialize};

/// [`TrainHyper`] before `upload` (layouts 3 and 4).
#[derive(Serialize, Deserialize)]
pub(super) struct TrainHyperV4 {
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
    pub(super) trainable: Vec<String>,
}

impl From<TrainHyperV4> for TrainHyper {
    fn from(h: TrainHyperV4) -> TrainHyper {
        TrainHyper {
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
            trainable: h.trainable,
            upload: DeltaEncoding::F32,
        }
    }
}

#[derive(Serialize, Deserialize)]
pub(super) struct RoundPlanV4 {
    pub(super) round: u64,
    pub(super) model_version: u64,
    pub(super) hyper: TrainHyperV4,
    pub(super) deadline_ms: u64,
    pub(super) aggregation: AggregationModeV5,
}

/// [`RoundRecord`] in layout 4: as now, but without `upload` in the hyper-parameters.
#[derive(Serialize, Deserialize)]
pub(super) struct RoundRecordV4 {
    pub(super) round: u64,
    pub(super) plan: RoundPlanV4,
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

impl From<RoundRecordV4> for RoundRecord {
    fn from(r: RoundRecordV4) -> RoundRecord {
        RoundRecord {
            round: r.round,
            plan: RoundPlan {
                round: r.plan.round,
                model_version: r.plan.model_version,
                hyper: r.plan.hyper.into(),
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
