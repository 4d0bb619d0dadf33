//! The errors of secure aggregation: every refusal of a message or a request, and every reason a round aborts.
//!
//! Errors carry cohort indices and short reasons, never key material or input values.

/// Why a secure-aggregation step was refused or a round aborted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecAggError {
    #[error("invalid secure-aggregation parameters: {0}")]
    InvalidParams(String),
    #[error("message for round {got}, expected round {expected}")]
    WrongRound { expected: u64, got: u64 },
    #[error("agent {0} is not in this round's cohort")]
    UnknownAgent(u32),
    #[error("message claims sender {claimed} but came from {actual}")]
    WrongSender { claimed: u32, actual: u32 },
    #[error("message addressed to {addressed} delivered to {actual}")]
    WrongRecipient { addressed: u32, actual: u32 },
    #[error("agent {0} is no longer taking part in this round")]
    NotParticipating(u32),
    #[error("agent {peer} is not a neighbour of agent {agent}")]
    NotNeighbour { agent: u32, peer: u32 },
    #[error("duplicate message or entry for agent {0}")]
    Duplicate(u32),
    #[error("the cohort lists the identity {0:?} in more than one slot")]
    RepeatedIdentity(String),
    #[error("{call} is not allowed in phase {phase}")]
    OutOfPhase { call: &'static str, phase: &'static str },
    #[error("the advertised keys of agent {0} carry no valid signature")]
    BadSignature(u32),
    #[error("agent {0} signed another round context (model, training settings or cohort) than ours")]
    ContextMismatch(u32),
    #[error("the relayed copy of our own advertised keys is missing or altered")]
    OwnKeysAltered,
    #[error("agent {0} advertised a weak (low-order) public key")]
    WeakKey(u32),
    #[error("the share from agent {0} does not decrypt or does not match its envelope")]
    Decrypt(u32),
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error("only {have} neighbours left, the threshold needs {need}")]
    NotEnoughNeighbours { have: usize, need: usize },
    #[error("unmask request refused: {0}")]
    InconsistentRequest(String),
    #[error("consistency check failed: {signed} of our neighbours signed the survivor set, {need} needed")]
    ConsistencyCheck { signed: usize, need: usize },
    #[error("round aborted: {0}")]
    Abort(String),
    #[error("reconstructed secret of agent {0} does not match its advertised commitment")]
    ReconstructionMismatch(u32),
    #[error("signing failed: {0}")]
    Signing(String),
    #[error("input is not a finite number at position {0}")]
    NonFinite(usize),
    #[error("input has {got} values, expected {expected}")]
    WrongLength { expected: usize, got: usize },
    #[error("{got} counts given, the round carries {expected}")]
    WrongCounts { expected: usize, got: usize },
    #[error("count {index} is {value}, above the limit of {limit} per agent in this cohort")]
    CountTooLarge { index: usize, value: u32, limit: u32 },
    #[error("upload of agent {0} is out of order, out of range or incomplete")]
    BadUpload(u32),
    #[error("the unmasked sum is not one the survivors could have produced: {0}")]
    OutOfBounds(String),
    #[error("the round is weaker than this agent requires: {0}")]
    BelowFloor(String),
    #[error("too many uploads in flight (limit {0})")]
    TooManyUploads(usize),
}
