//! The messages of the server's core task: what connection tasks and operators send it ([`CoreMsg`]), what it
//! sends each connection ([`Outbound`]), what it tells whoever watches ([`ServerEvent`]), and the operator's calls
//! ([`Operator`], [`AdminCall`]).
//!
//! A leaf: the core (`service`), the connections (`net`), the operator protocol (`admin`) and the metrics all speak
//! these types, so they live below all four and import none of them. This module must never hold logic: types only.

use crate::coordinator::{AgentId, RoundRecord, SecurePhase, Status};
use fedge_shared::admin::{ConfigEntry, StatusInfo};
use fedge_shared::model::Digest;
use fedge_shared::protocol::{self, BlobHeader, ServerMessage};
use fedge_shared::secagg::{AdvertiseKeys, EncryptedShare, ShareReceipt, SurvivorSignature, UnmaskResponse};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// What happened on the server, for whoever watches (the demo's progress display, tests, the admin surface).
#[derive(Debug, Clone)]
pub enum ServerEvent {
    AgentJoined {
        agent: String,
    },
    AgentLeft {
        agent: String,
    },
    /// A peer was refused (no or wrong certificate, revoked, wrong role or protocol).
    Refused {
        peer: String,
        reason: String,
    },
    RoundStarted {
        round: u64,
        model_version: u64,
        selected: usize,
    },
    RoundCompleted(Box<RoundRecord>),
    RoundAborted(Box<RoundRecord>),
    /// A secure round opened `phase` (its predecessor closed) with `members` agents still in it.
    SecAggPhase {
        round: u64,
        phase: SecurePhase,
        members: usize,
    },
}

/// Rewrites a control message on its way to an agent: a test double for a dishonest relaying server (swapping a
/// key in the broadcast, for instance). Production servers have none.
pub type RelayHook = Arc<dyn Fn(&str, &mut ServerMessage) + Send + Sync>;

/// Something sent to one agent's connection task. Small (the messages and headers are boxed): every connection's
/// channel holds a block of 32 of them from its start, so at 10,000 connections each byte here is 320 KB.
#[derive(Debug, Clone)]
pub enum Outbound {
    Msg(Box<ServerMessage>),
    /// A control message encoded once for many agents (a broadcast), shared by their connections.
    Frame(bytes::Bytes),
    Blob(Box<BlobHeader>, Arc<Vec<u8>>),
    Close(String),
}

impl Outbound {
    /// A control message.
    pub fn msg(m: ServerMessage) -> Self {
        Outbound::Msg(Box::new(m))
    }

    /// A blob: its header and its shared bytes.
    pub fn blob(header: BlobHeader, body: Arc<Vec<u8>>) -> Self {
        Outbound::Blob(Box::new(header), body)
    }
}

/// Messages from connection tasks and operators to the core.
// One message at a time moves through a bounded channel: a few hundred bytes per slot do not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum CoreMsg {
    /// `cert` is the DER of the agent's verified certificate (relayed to its cohort in secure rounds).
    Connected {
        agent: AgentId,
        conn: u64,
        tx: mpsc::Sender<Outbound>,
        cert: Vec<u8>,
    },
    Disconnected {
        agent: AgentId,
        conn: u64,
    },
    /// The connection has received nothing for `net::SILENT_AFTER` (`silent`), or receives again.
    Silent {
        agent: AgentId,
        conn: u64,
        silent: bool,
    },
    CheckIn {
        agent: AgentId,
        conn: u64,
        checkin: protocol::CheckIn,
    },
    Update {
        agent: AgentId,
        round: u64,
        examples: u64,
        train_loss: f32,
        eval: Option<fedge_shared::fedeval::EvalCounts>,
        delta: Vec<f32>,
    },
    Abandon {
        agent: AgentId,
        round: u64,
        reason: String,
    },
    /// Buffered secure rounds: the agent holds the delta of its training for `round`.
    Ready {
        agent: AgentId,
        round: u64,
        model_version: u64,
        examples: u64,
    },
    SecAggAdvertise {
        agent: AgentId,
        keys: AdvertiseKeys,
    },
    SecAggShares {
        agent: AgentId,
        round: u64,
        shares: Vec<EncryptedShare>,
    },
    SecAggReceipt {
        agent: AgentId,
        receipt: ShareReceipt,
    },
    SecAggSurvivorSignature {
        agent: AgentId,
        signature: SurvivorSignature,
    },
    SecAggUnmask {
        agent: AgentId,
        response: UnmaskResponse,
    },
    /// A whole masked vector; `permit` (its share of the upload budget) is released once it is folded.
    Masked {
        agent: AgentId,
        round: u64,
        masked: Vec<u32>,
        permit: crate::net::UploadPermit,
    },
    Operator(Operator),
    /// A secure round's sum, unmasked on the blocking pool (`Action::Unmask`).
    Unmasked {
        round: u64,
        outcome: Result<crate::coordinator::SecureOutcome, String>,
    },
    Committed {
        round: u64,
        result: Result<Box<CommittedModel>, String>,
    },
    Status(oneshot::Sender<Status>),
    /// A request from an operator connection (fedgectl).
    Admin(AdminCall),
    /// An aggregator: its root asked for a round (from the uplink's learner), answered on `reply` with the partial
    /// aggregate to upload or why there is none.
    RootRound {
        request: crate::coordinator::RootRequest,
        reply: ForwardReply,
    },
    /// An aggregator: the root's version, durable in the store, to serve from now on.
    Installed(Box<InstalledModel>),
}

/// Where an aggregator's answer to its root's request goes (the uplink's learner waits on the other end).
pub type ForwardReply = std::sync::mpsc::SyncSender<Result<crate::coordinator::Partial, String>>;

/// A root's version an aggregator has stored (its bytes encoded and hashed once, for every connection).
#[derive(Debug)]
pub struct InstalledModel {
    pub version: u64,
    pub graph: Arc<Vec<u8>>,
    pub graph_digest: Digest,
    pub weights: Arc<Vec<f32>>,
    pub blob: Arc<Vec<u8>>,
    pub digest: Digest,
    /// The 8-bit difference from the version before, when it rebuilds this one bit for bit (agents one version
    /// behind are sent it instead of the whole).
    pub diff: Option<Arc<Vec<u8>>>,
}

/// Operator commands.
#[derive(Debug, Clone)]
pub enum Operator {
    StartRounds(Option<u64>),
    Pause,
    Resume,
    AbortRound,
}

/// A model version the store has made durable.
#[derive(Debug)]
pub struct CommittedModel {
    pub(crate) version: u64,
    pub(crate) record: RoundRecord,
    pub(crate) blob: Arc<Vec<u8>>,
    pub(crate) digest: Digest,
    /// The difference that rebuilds this version from the one before it, when versions travel as differences.
    pub(crate) diff: Option<Arc<Vec<u8>>>,
}

/// What the core answers for the admin surface.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub status: StatusInfo,
    /// Names of the connected agents.
    pub connected: Vec<String>,
}

/// Requests from operator connections to the core (carried by `CoreMsg::Admin`).
#[derive(Debug)]
pub enum AdminCall {
    Snapshot(oneshot::Sender<Snapshot>),
    /// Run rounds; pause when a completed round's test accuracy reaches `target_accuracy`.
    StartRounds {
        count: Option<u64>,
        target_accuracy: Option<f32>,
        reply: oneshot::Sender<String>,
    },
    ConfigShow(oneshot::Sender<Vec<ConfigEntry>>),
    ConfigSet {
        key: String,
        value: String,
        reply: oneshot::Sender<Result<String, String>>,
    },
    /// Mark the agent revoked in the store and close its connection; the reply says whether it was connected.
    Revoke {
        name: String,
        reply: oneshot::Sender<Result<bool, String>>,
    },
}

#[cfg(test)]
mod tests {
    /// Every connection's channel holds 32 of them from its start: boxed messages and headers keep each small.
    #[test]
    fn an_outbound_item_is_small() {
        let size = std::mem::size_of::<super::Outbound>();
        assert!(size <= 40, "Outbound takes {size} bytes (it was 128 with the message and header inline)");
    }
}
