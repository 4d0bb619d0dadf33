//! The record of one round, as the coordinator hands it to the store: plan, cohort, outcome, metrics.
//!
//! Plain data (serde), stored through `fedge_shared::codec` by the store. It must never hold weights or anything
//! from an agent beyond its example count, reported training loss and federated-evaluation counts (per agent in
//! plain rounds; only the cohort's totals in secure rounds).

use super::plan::RoundPlan;
use fedge_shared::fedeval::{EvalCounts, FederatedEval};
use serde::{Deserialize, Serialize};

/// An agent's name: the common name of its certificate.
pub type AgentId = String;

/// Why a round ended without a new model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AbortReason {
    /// Fewer than `min_agents` reported before the deadline (or too many dropped for that to remain possible).
    TooFewReports { reported: usize, min_agents: usize },
    /// The operator aborted the round.
    Operator,
    /// The strategy could not produce a new model (e.g. a non-finite aggregate).
    Strategy(String),
    /// The store could not commit the new model.
    CommitFailed(String),
    /// Secure aggregation could not produce the sum (too few agents survived a phase, or a reconstruction
    /// failed); nothing partial was revealed.
    SecureAggregation(String),
    /// The store could not reserve the round's id before its first plan left (so no plan was sent).
    NotReserved(String),
    /// An aggregator's round that the root no longer needs: the root asked for another one, or committed a newer
    /// version while it ran.
    Superseded(String),
}

impl std::fmt::Display for AbortReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AbortReason::TooFewReports { reported, min_agents } => {
                write!(f, "only {reported} agents reported, at least {min_agents} are needed")
            }
            AbortReason::Operator => f.write_str("aborted by the operator"),
            AbortReason::Strategy(e) => write!(f, "the strategy failed: {e}"),
            AbortReason::CommitFailed(e) => write!(f, "the commit failed: {e}"),
            AbortReason::SecureAggregation(e) => write!(f, "secure aggregation failed: {e}"),
            AbortReason::NotReserved(e) => write!(f, "the round's id could not be reserved in the database: {e}"),
            AbortReason::Superseded(e) => write!(f, "superseded: {e}"),
        }
    }
}

/// How a round ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Outcome {
    Completed,
    Aborted(AbortReason),
}

/// One agent's contribution as recorded (no weights).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub agent: AgentId,
    pub examples: u64,
    pub train_loss: f32,
    /// Milliseconds from the round's start to the update's arrival.
    pub after_ms: u64,
    /// The agent's federated evaluation of the round's starting model (plain rounds only: in a secure round only
    /// the cohort's totals exist, in [`RoundMetrics::federated_eval`]).
    pub eval: Option<EvalCounts>,
}

/// An agent that was selected but did not contribute, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Dropped {
    pub agent: AgentId,
    pub reason: String,
}

/// A round's numbers. The test metrics are filled in by the shell after evaluating the new model.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RoundMetrics {
    /// Example-weighted mean of the reporters' training losses.
    pub mean_train_loss: Option<f32>,
    /// Examples behind the aggregate.
    pub total_examples: u64,
    /// Accuracy of the new model on the server's test set, if it has one.
    pub test_accuracy: Option<f32>,
    /// Loss of the new model on the server's test set, if it has one.
    pub test_loss: Option<f32>,
    /// Update payload bytes folded into the aggregate.
    pub update_bytes: u64,
    /// Milliseconds from the round's start to its end.
    pub duration_ms: u64,
    /// The secure-aggregation phases of the round (`None` for a plain round).
    pub secagg: Option<SecAggMetrics>,
    /// The federation's evaluation of the round's starting model (`plan.model_version`): the sum of the
    /// reporters' counts on their held-out examples (`None` when none had any).
    pub federated_eval: Option<FederatedEval>,
}

/// What a secure round's phases took (coordinator time, milliseconds) and who survived them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SecAggMetrics {
    /// Plans out → keys relayed.
    pub advertise_ms: u64,
    /// Keys relayed → shares relayed, plus shares relayed → the receipts are in and agents told whom to mask with.
    pub share_ms: u64,
    /// Masking sets sent → survivor set (local training overlaps the key phases and this one).
    pub masked_ms: u64,
    /// Survivor set → the sum is unmasked: the consistency round (survivors sign the set) and the unmask phase.
    pub unmask_ms: u64,
    /// Agents whose masked input is in the sum.
    pub survivors: usize,
    /// Agents that shared keys but sent no masked input (their pairwise masks were removed).
    pub dropped_after_sharing: usize,
}

/// Everything the store keeps about a round.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoundRecord {
    pub round: u64,
    pub plan: RoundPlan,
    /// The strategy that ran the round.
    pub strategy: String,
    /// The agents selected, in selection order.
    pub selected: Vec<AgentId>,
    pub reported: Vec<Report>,
    pub dropped: Vec<Dropped>,
    pub outcome: Outcome,
    pub metrics: RoundMetrics,
    /// Coordinator time (the shell's `now_ms`) at the start and end of the round.
    pub started_ms: u64,
    pub ended_ms: u64,
    /// The model version this round produced; set by the store when it commits.
    pub new_version: Option<u64>,
}
