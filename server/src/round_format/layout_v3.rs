//! Round records in layout 3: as now, but secure rounds without bounded contributions or distributed differential
//! privacy (no `clip_norm`, no noise, no privacy accounting). Also the secure-aggregation settings every older
//! layout (0 to 3) shares, and how they read into today's, with neither.
//!
//! Read only: the store must never write a record in this layout, and this module must never touch sled.

use super::layout_v4::TrainHyperV4;
use crate::coordinator::{AggregationMode, Dropped, Outcome, Report, RoundMetrics, RoundPlan, RoundRecord, SecurePlan};
use fedge_shared::secagg::{AgentRef, SecAggParams};
use serde::{Deserialize, Serialize};

/// [`SecAggParams`] before `clip_norm` and `noise_variance` (layouts 0 to 3).
#[derive(Serialize, Deserialize)]
pub(super) struct SecAggParamsV3 {
    pub(super) neighbours: u32,
    pub(super) threshold: u32,
    pub(super) clip: f32,
    pub(super) quant_bits: u32,
    pub(super) weight_cap: u64,
    pub(super) counts: u32,
}

/// [`SecurePlan`] before `privacy` (layouts 0 to 3).
#[derive(Serialize, Deserialize)]
pub(super) struct SecurePlanV3 {
    pub(super) params: SecAggParamsV3,
    pub(super) graph_seed: u64,
    pub(super) cohort: Vec<AgentRef>,
    pub(super) phase_timeout_ms: u64,
}

/// [`AggregationMode`] of layouts 0 to 3.
#[derive(Serialize, Deserialize)]
pub(super) enum AggregationModeV3 {
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
                        word_bits: fedge_shared::secagg::params::MAX_WORD_BITS,
                    },
                    graph_seed: sp.graph_seed,
                    cohort: sp.cohort.into(),
                    phase_timeout_ms: sp.phase_timeout_ms,
                    privacy: None,
                })
            }
        }
    }
}

#[derive(Serialize, Deserialize)]
pub(super) struct RoundPlanV3 {
    pub(super) round: u64,
    pub(super) model_version: u64,
    pub(super) hyper: TrainHyperV4,
    pub(super) deadline_ms: u64,
    pub(super) aggregation: AggregationModeV3,
}

/// [`RoundRecord`] in layout 3: as now, but without `clip_norm`, noise or privacy accounting in secure rounds.
#[derive(Serialize, Deserialize)]
pub(super) struct RoundRecordV3 {
    pub(super) round: u64,
    pub(super) plan: RoundPlanV3,
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

impl From<RoundRecordV3> for RoundRecord {
    fn from(r: RoundRecordV3) -> RoundRecord {
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
