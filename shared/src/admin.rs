//! The admin protocol (ALPN [`crate::protocol::ALPN_ADMIN`]): what `fedgectl` asks a running server and what it
//! answers.
//!
//! An operator holds one QUIC connection, authenticated by an operator certificate. Each request travels on a
//! bidirectional stream of its own: the client writes one framed [`AdminRequest`] and finishes its side; the server
//! answers with framed [`AdminResponse`]s on the same stream. Most requests get exactly one response; `Watch` gets a
//! stream of `Progress` frames until either side stops; `Export` gets an `Export` frame followed by exactly `len`
//! raw ONNX bytes (bulk bytes are never inside a serde message). The first request on a connection is a `Hello`,
//! answered by `Welcome` (or an `Error` naming the protocol version the server speaks).
//!
//! This module only defines types and limits: it does no I/O and holds no policy (validation is the server's).

use crate::model::Digest;
use serde::{Deserialize, Serialize};

/// Admin protocol version carried in the hello. Bump on any incompatible change to these types.
pub const ADMIN_PROTOCOL_VERSION: u32 = 3;

/// Size limits of admin frames, in bytes.
pub mod limits {
    /// A request.
    pub const REQUEST: usize = 64 * 1024;
    /// A response (the history of many rounds fits).
    pub const RESPONSE: usize = 64 * 1024 * 1024;
    /// An exported ONNX model.
    pub const EXPORT: u64 = 1024 * 1024 * 1024;
}

/// What an operator asks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AdminRequest {
    Hello {
        protocol: u32,
        software: String,
    },
    Status,
    /// Agents from the server's store, with their connection state.
    Agents,
    /// Revoke an agent on the running server: stored as revoked, its connection closed, refused from then on.
    Revoke {
        name: String,
    },
    /// Run `count` more rounds (`None`: until stopped); stop when a round reaches `target_accuracy`.
    RoundStart {
        count: Option<u64>,
        target_accuracy: Option<f32>,
    },
    RoundPause,
    RoundResume,
    RoundAbort,
    ConfigShow,
    /// Set one coordinator setting; `key` is dotted (`hyper.learning_rate`), `value` is TOML (`0.1`, `"fedavg"`).
    ConfigSet {
        key: String,
        value: String,
    },
    History,
    Models,
    /// The standalone ONNX of a version (`None`: the newest).
    Export {
        version: Option<u64>,
    },
    /// Live progress until the client closes the stream.
    Watch,
}

/// The server's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AdminResponse {
    Welcome {
        protocol: u32,
        server: String,
        operator: String,
    },
    Status(StatusInfo),
    Agents(Vec<AgentInfo>),
    /// A command was carried out; the message says what happened.
    Done(String),
    Config(Vec<ConfigEntry>),
    History(Vec<RoundSummary>),
    Models(Vec<ModelInfo>),
    /// `len` raw bytes of ONNX follow this frame on the same stream.
    Export {
        model: ModelInfo,
        len: u64,
        digest: Digest,
    },
    Progress(Progress),
    /// The request was refused or failed; the message names the reason (for `ConfigSet`: the key and the range).
    Error(String),
}

/// The round cycle's phase, as the operator sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PhaseInfo {
    Idle,
    Collecting,
    Committing,
}

impl std::fmt::Display for PhaseInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PhaseInfo::Idle => "idle",
            PhaseInfo::Collecting => "collecting",
            PhaseInfo::Committing => "committing",
        })
    }
}

/// A running server's state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusInfo {
    /// e.g. `fedge-server/0.1.0`.
    pub server: String,
    pub uptime_ms: u64,
    pub connected: usize,
    pub available: usize,
    pub phase: PhaseInfo,
    /// The round in flight.
    pub round: Option<u64>,
    pub model_version: u64,
    pub next_round: u64,
    pub selected: usize,
    pub reported: usize,
    pub dropped: usize,
    pub running: bool,
    pub paused: bool,
    /// Why no round may start for lack of disk space under the database, if so.
    #[serde(default)]
    pub storage_low: Option<String>,
    /// Rounds still to commit in the run in force (`None`: unlimited).
    pub remaining: Option<u64>,
    /// Rounds committed so far in the run in force (`None`: no run was given).
    pub run_done: Option<u64>,
    /// Milliseconds until the round in flight's deadline.
    pub deadline_in_ms: Option<u64>,
    pub target_accuracy: Option<f32>,
}

/// An agent as the server knows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentInfo {
    pub name: String,
    pub fingerprint: Option<String>,
    /// Unix milliseconds.
    pub first_seen_ms: u64,
    pub last_seen_ms: u64,
    pub connected: bool,
    pub revoked: bool,
}

/// One coordinator setting.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigEntry {
    /// Dotted key, e.g. `hyper.learning_rate`.
    pub key: String,
    /// The value as TOML.
    pub value: String,
    /// Whether an operator set it (persisted in the store; it overrides server.toml).
    pub overridden: bool,
}

/// One round of the history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoundSummary {
    pub round: u64,
    pub completed: bool,
    /// Why the round aborted.
    pub abort_reason: Option<String>,
    pub strategy: String,
    pub selected: usize,
    pub participants: usize,
    pub dropouts: usize,
    pub mean_train_loss: Option<f32>,
    pub test_accuracy: Option<f32>,
    pub test_loss: Option<f32>,
    pub duration_ms: u64,
    /// Update bytes folded into the aggregate.
    pub bytes: u64,
    pub examples: u64,
    pub new_version: Option<u64>,
    /// Unix milliseconds.
    pub started_ms: u64,
    /// The version the round started from: the one its federated evaluation measured.
    pub evaluated_version: u64,
    /// The federated evaluation of `evaluated_version` (the reporters' held-out examples, summed): accuracy.
    pub federated_accuracy: Option<f32>,
    /// Its mean loss.
    pub federated_loss: Option<f32>,
    /// Its examples.
    pub federated_examples: u64,
    /// Differential privacy: the run's ε at `delta` once this round is counted (`None` without `[privacy]`).
    pub epsilon: Option<f64>,
    /// The δ of that ε.
    pub delta: Option<f64>,
}

/// A stored model version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    pub version: u64,
    pub round: Option<u64>,
    pub params: u64,
    pub graph: Digest,
    pub weights: Digest,
    pub test_accuracy: Option<f32>,
    pub test_loss: Option<f32>,
    /// Unix milliseconds.
    pub created_ms: u64,
}

/// A snapshot for `fedgectl watch`, with what happened since the last one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    pub status: StatusInfo,
    /// Human-readable events since the previous snapshot (round started, completed, agent joined...).
    pub events: Vec<String>,
    /// Rounds that ended since the previous snapshot.
    pub finished: Vec<RoundSummary>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec;

    fn status() -> StatusInfo {
        StatusInfo {
            server: "fedge-server/0".into(),
            uptime_ms: 5,
            connected: 2,
            available: 1,
            phase: PhaseInfo::Collecting,
            round: Some(3),
            model_version: 2,
            next_round: 4,
            selected: 2,
            reported: 1,
            dropped: 0,
            running: true,
            paused: false,
            storage_low: None,
            remaining: None,
            run_done: Some(2),
            deadline_in_ms: Some(100),
            target_accuracy: Some(0.9),
        }
    }

    #[test]
    fn every_admin_message_round_trips_through_the_codec() {
        let requests = vec![
            AdminRequest::Hello { protocol: ADMIN_PROTOCOL_VERSION, software: "fedgectl".into() },
            AdminRequest::RoundStart { count: Some(2), target_accuracy: Some(0.5) },
            AdminRequest::ConfigSet { key: "hyper.epochs".into(), value: "3".into() },
            AdminRequest::Export { version: None },
            AdminRequest::Watch,
        ];
        for r in requests {
            let bytes = codec::encode(&r).unwrap();
            assert_eq!(codec::decode::<AdminRequest>(&bytes, limits::REQUEST).unwrap(), r);
        }
        let responses = vec![
            AdminResponse::Status(status()),
            AdminResponse::Progress(Progress { status: status(), events: vec!["x".into()], finished: vec![] }),
            AdminResponse::Config(vec![ConfigEntry { key: "a.b".into(), value: "1".into(), overridden: true }]),
            AdminResponse::Error("fraction: must be in (0, 1]".into()),
        ];
        for r in responses {
            let bytes = codec::encode(&r).unwrap();
            assert_eq!(codec::decode::<AdminResponse>(&bytes, limits::RESPONSE).unwrap(), r);
        }
    }

    #[test]
    fn garbage_admin_frames_are_errors_not_panics() {
        for seed in 0u8..=255 {
            let junk: Vec<u8> = (0..64u8).map(|i| i.wrapping_mul(seed).wrapping_add(seed ^ 0x5a)).collect();
            let _ = codec::decode::<AdminRequest>(&junk, limits::REQUEST);
            let _ = codec::decode::<AdminResponse>(&junk, limits::RESPONSE);
        }
    }
}
