//! What the coordinator tells a selected agent: the round's plan, with the training hyper-parameters of `crate::hyper`.
//!
//! These types travel to the agent (serde, through `fedge_shared::codec`) and are stored in round records. They
//! carry no weights: the global model is bulk bytes on its own stream. Nothing here may depend on a clock or on
//! randomness; the per-round seed is derived by the coordinator from (configured seed, round).

pub use crate::hyper::{OptimizerKind, TrainHyper};
pub use fedge_shared::protocol::HeldMember;
use fedge_shared::secagg::{AgentRef, SecAggParams};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// How the round's updates are summed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AggregationMode {
    /// Agents upload their delta in the clear; the server folds each into one running weighted sum.
    Plain,
    /// SecAgg+: agents upload masked, quantized `[w, w·Δ]`; the server learns only the cohort's sum.
    Secure(SecurePlan),
    /// Buffered secure rounds, training: agents train from the plan's model and hold their delta, saying only that
    /// they are ready (with their example count); nothing is uploaded (see the `buffered_secure` module).
    Held,
    /// Buffered secure rounds, a group of ready agents: SecAgg+ as in `Secure`, without training; each member masks
    /// the delta it holds multiplied by its entry's `scale` (its staleness discount). One entry per cohort member,
    /// in cohort order.
    HeldGroup(SecurePlan, Vec<HeldMember>),
}

/// The secure-aggregation settings of one round, the same for every member.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SecurePlan {
    /// Validated for this cohort and model size.
    pub params: SecAggParams,
    /// Seed of the neighbour graph, from (configured seed, round).
    pub graph_seed: u64,
    /// The cohort: index `i` is the `i`-th selected agent. Shared: every member's plan (and its wire form) refers to
    /// the one list, so a round's plans cost O(n), not n copies of an O(n) list.
    pub cohort: Arc<[AgentRef]>,
    /// Deadline of the advertise, share and unmask phases.
    pub phase_timeout_ms: u64,
    /// Distributed differential privacy: what the round's noisy sum costs, as the accountant counts it (`None`
    /// without `[privacy]`). Every started round with it is charged, whether it completes or not.
    pub privacy: Option<super::RoundPrivacy>,
}

impl AggregationMode {
    /// True for a round whose updates never reach the server in the clear: a secure round, and both steps of a
    /// buffered secure round.
    pub fn is_secure(&self) -> bool {
        !matches!(self, AggregationMode::Plain)
    }

    /// The secure-aggregation settings, of a secure round or of a buffered secure round's group.
    pub fn secure_plan(&self) -> Option<&SecurePlan> {
        match self {
            AggregationMode::Secure(sp) | AggregationMode::HeldGroup(sp, _) => Some(sp),
            AggregationMode::Plain | AggregationMode::Held => None,
        }
    }
}

/// The plan sent to each selected agent at the start of a round.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoundPlan {
    /// The round id (never reused).
    pub round: u64,
    /// The global model version the agent must train from. The shell sends those weights first when the agent's
    /// connection does not hold them (see `Action::SendPlan`).
    pub model_version: u64,
    /// Local training hyper-parameters, as the strategy configured them for this round.
    pub hyper: TrainHyper,
    /// How long the agent has, from receiving the plan, to upload (milliseconds).
    pub deadline_ms: u64,
    /// How updates are aggregated this round.
    pub aggregation: AggregationMode,
}

/// The seed an agent receives for a round: the plan's `hyper.seed` mixed with the round id. The mixing is its own
/// inverse, so `wire_seed_for(s, round)` as a plan's `hyper.seed` makes its agents receive `s` (how an aggregator
/// passes its root's seed on).
pub fn wire_seed_for(seed: u64, round: u64) -> u64 {
    seed ^ round.wrapping_mul(0x9E37_79B9_7F4A_7C15)
}
