//! Round records in layout 5: as now, but secure rounds without the masked word's width (`word_bits`); every one
//! of them masked in 32-bit words, and they come back so. Also [`AggregationModeV5`], the aggregation settings
//! layouts 4 and 5 share.
//!
//! Read only: the store must never write a record in this layout, and this module must never touch sled.

use crate::coordinator::{
    AggregationMode, Dropped, Outcome, Report, RoundMetrics, RoundPlan, RoundPrivacy, RoundRecord, SecurePlan,
    TrainHyper,
};
use fedge_shared::secagg::params::MAX_WORD_BITS;
use fedge_shared::secagg::{AgentRef, SecAggParams};
use serde::{Deserialize, Serialize};

/// [`SecAggParams`] before `word_bits` (layouts 4 and 5).
#[derive(Serialize, Deserialize)]
pub(super) struct SecAggParamsV5 {
    pub(super) neighbours: u32,
    pub(super) threshold: u32,
    pub(super) clip: f32,
    pub(super) quant_bits: u32,
    pub(super) weight_cap: u64,
    pub(super) counts: u32,
    pub(super) clip_norm: Option<f32>,
    pub(super) noise_variance: f64,
}

/// [`SecurePlan`] before `word_bits` (layouts 4 and 5).
#[derive(Serialize, Deserialize)]
pub(super) struct SecurePlanV5 {
    pub(super) params: SecAggParamsV5,
    pub(super) graph_seed: u64,
    pub(super) cohort: Vec<AgentRef>,
    pub(super) phase_timeout_ms: u64,
    pub(super) privacy: Option<RoundPrivacy>,
}

/// [`AggregationMode`] of layouts 4 and 5.
#[derive(Serialize, Deserialize)]
pub(super) enum AggregationModeV5 {
    Plain,
    Secure(SecurePlanV5),
}

impl From<AggregationModeV5> for AggregationMode {
    fn from(a: AggregationModeV5) -> AggregationMode {
        match a {
            AggregationModeV5::Plain => AggregationMode::Plain,
            AggregationModeV5::Secure(sp) => {
                let p = sp.params;
                AggregationMode::Secure(SecurePlan {
                    params: SecAggParams {
                        neighbours: p.neighbours,
                        threshold: p.threshold,
                        clip: p.clip,
                        quant_bits: p.quant_bits,
                        weight_cap: p.weight_cap,
                        counts: p.counts,
                        clip_norm: p.clip_norm,
                        noise_variance: p.noise_variance,
                        word_bits: MAX_WORD_BITS,
                    },
                    graph_seed: sp.graph_seed,
                    cohort: sp.cohort.into(),
                    phase_timeout_ms: sp.phase_timeout_ms,
                    privacy: sp.privacy,
                })
            }
        }
    }
}

#[derive(Serialize, Deserialize)]
pub(super) struct RoundPlanV5 {
    pub(super) round: u64,
    pub(super) model_version: u64,
    pub(super) hyper: TrainHyper,
    pub(super) deadline_ms: u64,
    pub(super) aggregation: AggregationModeV5,
}

/// [`RoundRecord`] in layout 5: as now, but without `word_bits` in secure rounds.
#[derive(Serialize, Deserialize)]
pub(super) struct RoundRecordV5 {
    pub(super) round: u64,
    pub(super) plan: RoundPlanV5,
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

impl From<RoundRecordV5> for RoundRecord {
    fn from(r: RoundRecordV5) -> RoundRecord {
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
