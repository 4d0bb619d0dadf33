//! The messages of fedge's protocols, and their size limits.
//!
//! An agent holds one QUIC connection (ALPN [`ALPN_AGENT`]) to the server: a bidirectional *control stream* carries
//! framed [`AgentMessage`]s and [`ServerMessage`]s (encoded by [`crate::codec`]); bulk bytes (the ONNX graph,
//! weights, updates) travel on unidirectional streams, each a framed [`BlobHeader`] followed by raw bytes, never
//! inside a serde message. The first frame on the control stream is the agent's [`Hello`], answered by a
//! [`ServerHello`]; a protocol version mismatch is refused there, with a reason, on both sides.
//!
//! This module only defines types and limits: it does no I/O.

use crate::model::Digest;
use serde::{Deserialize, Serialize};

/// Protocol version carried in the hello. Bump on any incompatible change to these types.
pub const PROTOCOL_VERSION: u32 = 1;
/// ALPN id of the agent protocol.
pub const ALPN_AGENT: &[u8] = b"fedge/1";
/// ALPN id of the admin protocol (fedgectl).
pub const ALPN_ADMIN: &[u8] = b"fedge-admin/1";

/// Size limits per message kind, in bytes. A frame over its limit is refused before it is read.
pub mod limits {
    /// Hellos.
    pub const HELLO: usize = 4 * 1024;
    /// Control messages (plans, check-ins, announcements, secure-aggregation key and share relays).
    pub const CONTROL: usize = 4 * 1024 * 1024;
    /// The header in front of a blob.
    pub const BLOB_HEADER: usize = 4 * 1024;
    /// An ONNX graph.
    pub const GRAPH: u64 = 512 * 1024 * 1024;
    /// A weights or update vector.
    pub const VECTOR: u64 = 1024 * 1024 * 1024;
}

/// The first frame an agent sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    pub protocol: u32,
    pub software: String,
}

/// The server's answer to a [`Hello`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ServerHello {
    Welcome { protocol: u32, agent: String, server: String },
    Refused { protocol: u32, reason: String },
}

/// Facts about the device, reported at check-in.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DeviceInfo {
    pub arch: String,
    pub cores: u32,
}

/// What an agent holds and can offer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckIn {
    /// The global model version whose weights the agent holds.
    pub model_version: Option<u64>,
    /// The ONNX graph the agent holds.
    pub graph: Option<Digest>,
    /// Training examples held.
    pub examples: u64,
    pub device: DeviceInfo,
}

/// Local training settings of a round, as sent to the agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainPlan {
    pub epochs: u32,
    pub batch_size: u32,
    pub learning_rate: f32,
    pub momentum: f32,
    pub weight_decay: f32,
    /// "sgd" or "adam".
    pub optimizer: String,
    /// FedProx proximal term; `None` or 0 for plain local training.
    pub prox_mu: Option<f32>,
    /// Seed for the round's shuffling and dropout (combined with the agent's own seed).
    pub seed: u64,
}

/// The plan of a round, sent to each selected agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoundPlan {
    pub round: u64,
    /// The global version to start from; its weights arrive on a blob stream if the agent lacks them.
    pub model_version: u64,
    pub train: TrainPlan,
    /// Milliseconds from receipt within which the update must arrive.
    pub deadline_ms: u64,
}

/// Control messages from an agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AgentMessage {
    CheckIn(CheckIn),
    /// The agent cannot complete the round (e.g. training failed); the server counts it as dropped.
    Abandon {
        round: u64,
        reason: String,
    },
}

/// A new global model version exists.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelAnnounce {
    pub version: u64,
    pub graph: Digest,
    pub weights: Digest,
    pub params: u64,
}

/// Control messages from the server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ServerMessage {
    Model(ModelAnnounce),
    Plan(RoundPlan),
    RoundEnd {
        round: u64,
        completed: bool,
        reason: Option<String>,
        new_version: Option<u64>,
    },
    /// The server is closing this agent's connection.
    Bye {
        reason: String,
    },
}

/// What a blob stream carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum BlobKind {
    /// An ONNX graph (server → agent).
    Graph,
    /// A global model version's weights, little-endian f32 (server → agent).
    Weights { version: u64 },
    /// A plain (unmasked) update: the agent's weights delta, little-endian f32, with its metadata (agent → server).
    Update { round: u64, examples: u64, train_loss: f32, holdout_accuracy: Option<f32> },
}

/// The frame in front of a blob's raw bytes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BlobHeader {
    pub kind: BlobKind,
    /// Number of raw bytes that follow.
    pub len: u64,
    /// SHA-256 of the raw bytes, for content-addressed blobs (graphs, weights).
    pub digest: Option<Digest>,
}

impl BlobHeader {
    /// The largest body this kind of blob may have.
    pub fn max_len(&self) -> u64 {
        match self.kind {
            BlobKind::Graph => limits::GRAPH,
            BlobKind::Weights { .. } | BlobKind::Update { .. } => limits::VECTOR,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec;

    #[test]
    fn every_message_round_trips_through_the_codec() {
        let msgs = vec![
            ServerMessage::Model(ModelAnnounce {
                version: 3,
                graph: Digest::of(b"g"),
                weights: Digest::of(b"w"),
                params: 10,
            }),
            ServerMessage::Plan(RoundPlan {
                round: 9,
                model_version: 3,
                train: TrainPlan {
                    epochs: 1,
                    batch_size: 32,
                    learning_rate: 0.1,
                    momentum: 0.9,
                    weight_decay: 0.0,
                    optimizer: "sgd".into(),
                    prox_mu: Some(0.01),
                    seed: 5,
                },
                deadline_ms: 60_000,
            }),
            ServerMessage::RoundEnd { round: 9, completed: false, reason: Some("too few".into()), new_version: None },
        ];
        for m in msgs {
            let bytes = codec::encode(&m).unwrap();
            assert_eq!(codec::decode::<ServerMessage>(&bytes, limits::CONTROL).unwrap(), m);
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for seed in 0u8..=255 {
            let junk: Vec<u8> = (0..64u8).map(|i| i.wrapping_mul(seed).wrapping_add(seed)).collect();
            let _ = codec::decode::<ServerMessage>(&junk, limits::CONTROL);
            let _ = codec::decode::<AgentMessage>(&junk, limits::CONTROL);
            let _ = codec::decode::<BlobHeader>(&junk, limits::BLOB_HEADER);
        }
    }
}
