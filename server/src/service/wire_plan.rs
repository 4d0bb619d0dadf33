//! A round's plan as an agent receives it: the coordinator's [`RoundPlan`] with the model's digests, the
//! training settings as the protocol spells them, the round's seed, and in a secure round the agent's own cohort
//! index.
//!
//! Pure functions: this module must never send anything or look at a connection.

use crate::coordinator::{AggregationMode, RoundPlan};
use fedge_shared::model::Digest;
use fedge_shared::protocol::{self, HeldPlan, SecAggPlan, TrainPlan};

/// The seed an agent receives for a round (the configured seed mixed with the round id).
pub fn round_seed(plan: &RoundPlan) -> u64 {
    crate::coordinator::wire_seed_for(plan.hyper.seed, plan.round)
}

/// The plan as `agent` receives it (its own cohort index in a secure round), for the model whose graph and weights
/// have the digests `graph` and `weights`.
pub fn wire_plan(plan: &RoundPlan, graph: Digest, weights: Digest, agent: &str) -> protocol::RoundPlan {
    let h = &plan.hyper;
    let secagg = plan.aggregation.secure_plan().and_then(|sp| {
        sp.cohort.iter().find(|a| a.name == agent).map(|me| SecAggPlan {
            params: sp.params.clone(),
            graph_seed: sp.graph_seed,
            me: me.index,
            cohort: sp.cohort.clone(),
            phase_timeout_ms: sp.phase_timeout_ms,
        })
    });
    let held = match &plan.aggregation {
        AggregationMode::Plain | AggregationMode::Secure(_) => None,
        AggregationMode::Held => Some(HeldPlan::Train),
        AggregationMode::HeldGroup(_, members) => Some(HeldPlan::Group(members.clone())),
    };
    protocol::RoundPlan {
        round: plan.round,
        model_version: plan.model_version,
        graph,
        weights,
        train: TrainPlan {
            epochs: h.epochs,
            batch_size: h.batch_size,
            learning_rate: h.learning_rate,
            momentum: h.momentum,
            weight_decay: h.weight_decay,
            optimizer: h.optimizer,
            prox_mu: (h.prox_mu > 0.0).then_some(h.prox_mu),
            seed: round_seed(plan),
            loss: h.loss,
            trainable: h.trainable.clone(),
            upload: h.upload,
        },
        deadline_ms: plan.deadline_ms,
        secagg,
        held,
    }
}
