//! The coordinator's vocabulary: the events the shell feeds in and the actions it must carry out.
//!
//! Events borrow their bulk data (an update's delta) so the shell never has to copy it; actions own theirs. No
//! event or action carries a socket, a timer or a file: the shell translates.

use super::forward::{Partial, RootRequest};
use super::plan::RoundPlan;
use super::record::{AbortReason, AgentId, RoundRecord};
use super::unmask::{SecureOutcome, UnmaskJob};
use fedge_shared::fedeval::EvalCounts;
use fedge_shared::secagg::{
    AdvertiseKeys, EncryptedShare, MaskWith, ShareReceipt, SurvivorSet, SurvivorSignature, UnmaskRequest,
    UnmaskResponse,
};
use serde::{Deserialize, Serialize};

/// Something that happened, reported by the shell.
#[derive(Debug, Clone, PartialEq)]
pub enum Event<'a> {
    /// An agent completed the TLS handshake; `agent` is its certificate's name.
    AgentConnected { agent: AgentId },
    /// The agent told us what it holds (the shell, which pushes models, tracks the version; the coordinator uses
    /// the example count).
    CheckIn { agent: AgentId, model_version: Option<u64>, examples: u64 },
    /// The agent's connection is gone.
    AgentDisconnected { agent: AgentId },
    /// The agent's connection has shown no sign of life for a while (`silent`), or shows some again. A silent
    /// agent is not selected for a new round (it stays in the round it is in until it reports, drops or closes).
    AgentSilent { agent: AgentId, silent: bool },
    /// The federated evaluation an agent sent with its plain update (fed just before that [`Event::Update`]): its
    /// counts on the round's starting model. Kept only if the update is folded in.
    Evaluated { agent: AgentId, round: u64, counts: EvalCounts },
    /// The agent's plain update: the full delta (`local − global`) has been read.
    Update { agent: AgentId, round: u64, examples: u64, train_loss: f32, delta: &'a [f32] },
    /// Buffered secure rounds: the agent trained for `round` (the round its training plan named) from
    /// `model_version` on `examples` examples, and holds the delta for a group.
    Ready { agent: AgentId, round: u64, model_version: u64, examples: u64 },
    /// Secure round, phase 1: the agent's signed keys (the round is inside the message).
    SecAggAdvertise { agent: AgentId, keys: AdvertiseKeys },
    /// Secure round, phase 2: the agent's encrypted shares for its neighbours.
    SecAggShares { agent: AgentId, round: u64, shares: Vec<EncryptedShare> },
    /// Secure round, after the shares: the agent's receipt, naming the neighbours whose shares it could not use.
    SecAggReceipt { agent: AgentId, receipt: ShareReceipt },
    /// Secure round, phase 3: the agent's whole masked vector has been read, as the little-endian 32-bit words of its
    /// wire form (`1 + counts` words, then `P` values in the round's word width, [`fedge_shared::secagg::words`]),
    /// which the session unpacks and checks. It is folded
    /// into the running masked sum at once; nobody keeps it. The agent's example count and loss are among its masked
    /// counts ([`fedge_shared::round_counts`]), not beside them.
    MaskedInput { agent: AgentId, round: u64, masked: &'a [u32] },
    /// Secure round, consistency phase: the agent's signature over the survivor set.
    SecAggSurvivorSignature { agent: AgentId, signature: SurvivorSignature },
    /// Secure round, unmask phase: the shares the agent reveals.
    SecAggUnmask { agent: AgentId, response: UnmaskResponse },
    /// The agent reported that it could not train, or its upload failed in transit.
    UpdateFailed { agent: AgentId, round: u64, reason: String },
    /// Secure round: what the shell's run of the round's `Action::Unmask` job gave.
    Unmasked { round: u64, outcome: Result<SecureOutcome, String> },
    /// An aggregator's root asked for a round ([`super::Coordinator::with_forwarding`]); it is answered with one
    /// `Action::Forward`.
    RootRound { request: RootRequest },
    /// An aggregator: the root's version `version` (its whole weights) is stored and is the model from now on.
    Installed { version: u64, weights: &'a [f32] },
    /// The store durably committed the round's model as `version`.
    Committed { round: u64, version: u64 },
    /// The store could not commit the round.
    CommitFailed { round: u64, error: String },
    /// The store could not reserve the id of the round that has just started (`RoundStarted`); the shell sent
    /// none of its plans. The round is aborted.
    RoundNotReserved { round: u64, error: String },
    /// Operator: run `count` more completed rounds (`None`: until stopped).
    StartRounds { count: Option<u64> },
    /// Operator: start no new round (the one in flight finishes).
    Pause,
    /// Operator: start rounds again.
    Resume,
    /// Operator: abort the round in flight.
    AbortRound,
    /// The shell's reading of the database's disk: `Some(why)` when too little space is left to commit a model
    /// (no new round starts until `Storage { low: None }`), `None` when there is enough again.
    Storage { low: Option<String> },
    /// A `WakeAt` time has come (spurious ticks are harmless).
    Tick,
}

/// Why an update cannot be folded in.
#[derive(Debug, Clone, PartialEq, thiserror::Error, Serialize, Deserialize)]
pub enum FoldError {
    #[error("the update has {got} parameters, the model has {expected}")]
    WrongLength { expected: usize, got: usize },
    #[error("the update has a non-finite value at index {index}")]
    NonFinite { index: usize },
    #[error("the update claims no examples")]
    NoExamples,
}

/// Why an agent's message was refused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
pub enum RejectReason {
    #[error("not connected")]
    NotConnected,
    #[error("no round is collecting updates")]
    NoRoundInFlight,
    #[error("the update is for round {got}, the round in flight is {expected}")]
    WrongRound { expected: u64, got: u64 },
    #[error("not selected for this round")]
    NotSelected,
    #[error("already reported for this round")]
    Duplicate,
    #[error("dropped from this round: {0}")]
    AlreadyDropped(String),
    #[error("the update arrived after the round's deadline")]
    AfterDeadline,
    #[error("the training loss is not a finite number")]
    NonFiniteLoss,
    #[error(transparent)]
    Invalid(#[from] FoldError),
    #[error("secure aggregation: {0}")]
    SecAgg(String),
}

/// What the shell must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Send `plan` to `agent`, preceded by the graph and the weights of `plan.model_version` if its connection does
    /// not hold them (the shell tracks what it sent each connection and what the agent checked in with).
    SendPlan { agent: AgentId, plan: RoundPlan },
    /// Tell `agent` its message was refused, and why.
    Reject { agent: AgentId, reason: RejectReason },
    /// Tell `agent` to stop working on `round` (it ended without its update).
    CancelTraining { agent: AgentId, round: u64 },
    /// A round started: the shell reserves its id in the store before carrying out any of the round's later
    /// actions, so the id is never handed out again, even after a crash (on failure: `RoundNotReserved`).
    RoundStarted { round: u64, model_version: u64, selected: usize },
    /// Evaluate `new_weights` if there is a test set (filling `record.metrics`), then commit the record, the
    /// weights and the strategy state in one transaction, and answer `Committed` or `CommitFailed`. `diff`, when
    /// versions travel as differences ([`Coordinator::with_model_download`]), rebuilds `new_weights` bit for bit
    /// from the current version: agents that hold the current version are sent it instead of the whole.
    ///
    /// [`Coordinator::with_model_download`]: super::Coordinator::with_model_download
    Commit { record: Box<RoundRecord>, new_weights: Vec<f32>, strategy_state: Vec<u8>, diff: Option<Vec<u8>> },
    /// Tell the round's reporters that it completed with `version`, and send every connected agent that version
    /// (only after `Committed`).
    Announce { version: u64 },
    /// The round ended without a model; `record` is for the store's round history, and its selected agents are
    /// told.
    RoundAborted { round: u64, reason: AbortReason, record: Box<RoundRecord> },
    /// Secure round: send `agent` its own keys and those of its neighbours that advertised in time (`keys[i]` is
    /// the key of agent `owners[i]`), with each owner's certificate.
    SecAggKeys { agent: AgentId, round: u64, keys: Vec<AdvertiseKeys>, owners: Vec<AgentId> },
    /// Secure round: send `agent` the shares addressed to it.
    SecAggShares { agent: AgentId, round: u64, shares: Vec<EncryptedShare> },
    /// Secure round: send `agent` the neighbours it is to mask with.
    SecAggMaskWith { agent: AgentId, mask_with: MaskWith },
    /// Secure round: send the survivor set to every agent in `to` (the survivors), to sign.
    SecAggSurvivors { to: Vec<AgentId>, set: SurvivorSet },
    /// Secure round: send `agent` its unmask request (with its neighbours' signatures over the survivor set).
    SecAggUnmask { agent: AgentId, request: UnmaskRequest },
    /// Secure round: run `job` (CPU only, seconds for a large cohort) off the event loop and feed back
    /// `Event::Unmasked` with its result.
    Unmask { round: u64, job: UnmaskJob },
    /// An aggregator's answer to the root's request ([`Event::RootRound`]): upload the partial aggregate to the
    /// root, or tell it why there is none. `record` (with a partial) is the round's, to keep in the round history
    /// (it committed no model) and to tell its reporters that it completed.
    Forward { result: Result<Partial, String>, record: Option<Box<RoundRecord>> },
    /// Deliver `Event::Tick` at this time (replaces any earlier request).
    WakeAt(u64),
    /// Something the operator should read in the server's log (an ignored command, a notable decision).
    Log { message: String },
}
