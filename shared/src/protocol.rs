//! The messages of fedge's protocols, and their size limits.
//!
//! An agent holds one QUIC connection (ALPN [`ALPN_AGENT`]) to the server: a bidirectional *control stream* carries
//! framed [`AgentMessage`]s and [`ServerMessage`]s (encoded by [`crate::codec`]); bulk bytes (the ONNX graph,
//! weights, updates) travel on unidirectional streams, each a framed [`BlobHeader`] followed by raw bytes, never
//! inside a serde message. The first frame on the control stream is the agent's [`Hello`], answered by a
//! [`ServerHello`]; a protocol version mismatch is refused there, with a reason, on both sides.
//!
//! Secure aggregation (on by default) adds five control exchanges to a round, each bound to the round id and, through
//! the certificate of the connection it arrives on, to the agent's cohort index: the agent's signed keys
//! ([`AgentMessage::SecAggAdvertise`]) relayed to the cohort with each owner's certificate
//! ([`ServerMessage::SecAggKeys`]), the encrypted shares ([`AgentMessage::SecAggShares`] /
//! [`ServerMessage::SecAggShares`]), the receipts for them and the neighbours to mask with
//! ([`AgentMessage::SecAggReceipt`] / [`ServerMessage::SecAggMaskWith`]), the consistency round (the survivor set, [`ServerMessage::SecAggSurvivors`],
//! signed by each survivor, [`AgentMessage::SecAggSurvivorSignature`]), and the unmask request (carrying the
//! recipient's neighbours' signatures) and answer. The masked vector itself is a blob
//! ([`BlobKind::Masked`]: `1 + counts` little-endian `u32`, then `P` coordinates of the round's `word_bits`,
//! [`crate::secagg::words`]) on its own unidirectional stream, like a plain
//! update. `P` is the number of parameters the round trains: the whole model, or only the weights its plan's
//! [`TrainPlan::trainable`] patterns choose.
//!
//! Buffered secure rounds (FedBuff with SecAgg+) split a round in two: a plan with [`HeldPlan::Train`] asks the agent
//! to train and *hold* its delta, answering [`AgentMessage::Ready`] (never an upload); a later plan with
//! [`HeldPlan::Group`] and a secure-aggregation part names the group of ready agents that mask their held deltas,
//! each scaled by the factor the group's plan gives it, in one SecAgg+ round.
//!
//! This module only defines types and limits: it does no I/O.

use crate::fedeval::EvalCounts;
use crate::model::Digest;
use crate::secagg::{
    AdvertiseKeys, AgentRef, EncryptedShare, MaskWith, SecAggParams, ShareReceipt, SurvivorSet, SurvivorSignature,
    UnmaskRequest, UnmaskResponse,
};
use serde::{Deserialize, Serialize};

/// Protocol version carried in the hello. Bump on any incompatible change to these types.
/// 9: secure rounds carry the masked word's width (`SecAggParams::word_bits`) and masked blobs pack the delta in it.
/// 10: a new version may travel as its difference to the one the agent holds ([`BlobKind::WeightsDiff`]).
/// 11: buffered secure rounds: plans carry [`RoundPlan::held`], and agents say [`AgentMessage::Ready`] instead of
/// uploading a held delta.
pub const PROTOCOL_VERSION: u32 = 11;
/// ALPN id of the agent protocol.
pub const ALPN_AGENT: &[u8] = b"fedge/1";
/// ALPN id of the admin protocol (fedgectl).
pub const ALPN_ADMIN: &[u8] = b"fedge-admin/1";
/// ALPN id of the readiness probe (`fedge-server probe`): a handshake without a client certificate, which the server
/// refuses like any other, but reports as a probe rather than a refused peer.
pub const ALPN_PROBE: &[u8] = b"fedge-probe/1";

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
    /// One certificate (DER) relayed with the secure-aggregation key broadcast.
    pub const CERTIFICATE: usize = 16 * 1024;
    /// The largest cohort a secure round may have: its key broadcast (keys plus certificates of
    /// [`CERTIFICATE_TYPICAL`] bytes) must fit in one [`CONTROL`] frame.
    pub const SECAGG_COHORT: usize = 2_000;
    /// The size of a fedge agent certificate, for sizing [`SECAGG_COHORT`] (rcgen P-256 certificates are ~500 B).
    pub const CERTIFICATE_TYPICAL: usize = 1_200;
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
    pub optimizer: OptimizerKind,
    /// FedProx proximal term; `None` or 0 for plain local training.
    pub prox_mu: Option<f32>,
    /// Seed for the round's shuffling and dropout (combined with the agent's own seed).
    pub seed: u64,
    /// The loss the agent minimises.
    pub loss: crate::train::Loss,
    /// Fine-tuning part of the model: glob patterns over the weights' names (`head.*`); only the matching weights
    /// train, the others stay at the global model's values, and the update (plain or masked) covers only the
    /// matching weights, in the model's parameter order ([`crate::train::TrainablePart`]). Empty: the whole model.
    /// An agent whose model has a pattern that matches nothing refuses the plan.
    pub trainable: Vec<String>,
    /// How a plain round's update is encoded ([`crate::delta_encoding`]); secure rounds ignore it.
    pub upload: crate::delta_encoding::DeltaEncoding,
}

/// The optimizer an agent uses for its local steps (typed on the wire: an agent cannot be sent one it does not
/// know).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    /// Stochastic gradient descent, with heavy-ball momentum when `momentum > 0`.
    Sgd,
    /// Adam (Kingma and Ba), with the usual β1 = 0.9, β2 = 0.999, ε = 1e-8 on the device.
    Adam,
}

/// The plan of a round, sent to each selected agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoundPlan {
    pub round: u64,
    /// The global version to start from; its weights arrive on a blob stream if the agent lacks them.
    pub model_version: u64,
    /// SHA-256 of that version's ONNX graph: the agent trains only from a graph with this digest.
    pub graph: Digest,
    /// SHA-256 of that version's weights (little-endian `f32`): the agent trains only from weights with this
    /// digest.
    pub weights: Digest,
    pub train: TrainPlan,
    /// Milliseconds from receipt within which the update must arrive.
    pub deadline_ms: u64,
    /// Secure aggregation for this round; `None` when the server runs plain rounds (the agent then uploads its
    /// delta in the clear, as [`BlobKind::Update`]).
    pub secagg: Option<SecAggPlan>,
    /// Buffered secure rounds: train and hold the delta, or mask a held one in a group (`None` otherwise).
    pub held: Option<HeldPlan>,
}

/// A buffered secure round's step, as the plan names it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum HeldPlan {
    /// Train from the plan's model and hold the delta: say [`AgentMessage::Ready`] when done; never upload it in the
    /// clear. The plan has no secure-aggregation part.
    Train,
    /// A group of agents holding deltas: run the plan's secure aggregation (the plan has one) without training,
    /// masking the held delta of the training its entry names, multiplied by its `scale`. One entry per cohort
    /// member, in cohort order.
    Group(Vec<HeldMember>),
}

/// One member of a buffered secure round's group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeldMember {
    /// Its cohort index.
    pub index: u32,
    /// The round whose training plan made the delta it holds.
    pub trained_round: u64,
    /// The model version it trained from.
    pub trained_version: u64,
    /// What its delta is multiplied by before masking: the staleness discount, in `(0, 1]`.
    pub scale: f64,
}

impl HeldMember {
    /// The least scale an agent accepts for any member of its group: a server that gave every other member a scale
    /// near 0 would read one member's delta in the group's sum.
    pub const MIN_SCALE: f64 = 0.01;
}

impl RoundPlan {
    /// The digest of everything the agents of one round must agree on: the round, the model (version, graph and
    /// weights digests), the training settings and, in a secure round, the aggregation settings, the graph seed and
    /// the cohort. Per-agent fields (the agent's own cohort index) and timing (deadlines) are left out.
    ///
    /// In a secure round each agent signs this digest into its key advertisement and refuses neighbours whose
    /// digest differs ([`crate::secagg::ClientSession::on_keys`]), so a server cannot train one agent from a model
    /// or with settings the others do not share (the model-inconsistency attack of Pasquini et al., CCS 2022, where
    /// everyone but the victim is given a model whose update is zero, or a learning rate of zero).
    pub fn context(&self) -> [u8; 32] {
        use ring::digest::{Context, SHA256};
        let mut ctx = Context::new(&SHA256);
        let mut field = |bytes: &[u8]| {
            ctx.update(&(bytes.len() as u64).to_le_bytes());
            ctx.update(bytes);
        };
        field(b"fedge round context v1");
        field(&self.round.to_le_bytes());
        field(&self.model_version.to_le_bytes());
        field(&self.graph.0);
        field(&self.weights.0);
        // The codec is deterministic: the same values always encode to the same bytes.
        field(&crate::codec::encode(&self.train).unwrap_or_default());
        if let Some(sp) = &self.secagg {
            field(&crate::codec::encode(&sp.params).unwrap_or_default());
            field(&sp.graph_seed.to_le_bytes());
            field(&crate::codec::encode(&sp.cohort).unwrap_or_default());
        }
        // A group's scales: every member must mask with the same ones, or the server could weigh them apart.
        if let Some(held) = &self.held {
            field(&crate::codec::encode(held).unwrap_or_default());
        }
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.finish().as_ref());
        out
    }
}

/// The secure-aggregation part of a round's plan, as one agent receives it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SecAggPlan {
    /// Neighbours, threshold, clipping, quantization and weight cap of this round (validated by the server; the
    /// agent's session validates them again).
    pub params: SecAggParams,
    /// Seed of the round's neighbour graph.
    pub graph_seed: u64,
    /// This agent's cohort index.
    pub me: u32,
    /// The whole cohort: index and certificate name of every agent (shared by every member's plan on the server;
    /// on the wire, the list itself).
    pub cohort: std::sync::Arc<[AgentRef]>,
    /// How long each key-exchange and unmask phase lasts on the server (milliseconds), for the agent's logs.
    pub phase_timeout_ms: u64,
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
    /// Secure aggregation, phase 1: this agent's signed keys for the round.
    SecAggAdvertise(AdvertiseKeys),
    /// Secure aggregation, phase 2: this agent's encrypted shares, one per neighbour.
    SecAggShares {
        round: u64,
        shares: Vec<EncryptedShare>,
    },
    /// Secure aggregation, consistency round: this agent's signature over the survivor set it was sent.
    SecAggSurvivorSignature(SurvivorSignature),
    /// Secure aggregation, last phase: the shares this agent reveals.
    SecAggUnmask(UnmaskResponse),
    /// Secure aggregation, after the shares are relayed: the neighbours whose shares this agent could not use.
    SecAggReceipt(ShareReceipt),
    /// Buffered secure rounds: this agent trained for `round` ([`HeldPlan::Train`]) from `model_version` and holds
    /// its delta, trained on `examples` examples, for a group.
    Ready {
        round: u64,
        model_version: u64,
        examples: u64,
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
    Plan(Box<RoundPlan>),
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
    /// Secure aggregation, phase 1 relay: the recipient's own keys and those of its neighbours that advertised in
    /// time, and for each the DER certificate of its owner (`certificates[i]` belongs to the agent `keys[i].from`),
    /// so that the recipient can check the signature against a certificate of the federation CA. A certificate is
    /// sent once per connection: `certificates[i]` is empty when this connection was already sent it.
    SecAggKeys {
        round: u64,
        keys: Vec<AdvertiseKeys>,
        certificates: Vec<Vec<u8>>,
        /// The federation's CA-signed revocation list ([`crate::revocation_list`]) as the operator wrote it, or
        /// empty when there is none; agents check their peers' certificates against it.
        revocations: Vec<u8>,
    },
    /// Secure aggregation, phase 2 relay: the shares addressed to this agent.
    SecAggShares {
        round: u64,
        shares: Vec<EncryptedShare>,
    },
    /// Secure aggregation, consistency round: the survivor set to sign.
    SecAggSurvivors(SurvivorSet),
    /// Secure aggregation, last phase: who survived and who dropped, with the recipient's neighbours' signatures
    /// over the survivor set; answer with the shares to reveal.
    SecAggUnmask(UnmaskRequest),
    /// A message of this agent's was refused, and why: an update for a round it is not in, a duplicate, one after
    /// the deadline, a secure-aggregation message out of phase. The connection stays open.
    Refused {
        reason: String,
    },
    /// Secure aggregation, after the receipts: the neighbours this agent is to mask with.
    SecAggMaskWith(MaskWith),
}

/// What a blob stream carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum BlobKind {
    /// An ONNX graph (server → agent).
    Graph,
    /// A global model version's weights, little-endian f32 (server → agent).
    Weights { version: u64 },
    /// Version `version`'s weights as the chain of 8-bit differences from version `from` ([`crate::model_diff`]):
    /// `version − from` differences one after the other (server → agent). `weights` is the SHA-256 of the weights
    /// they produce (of their little-endian f32 bytes, the digest a [`BlobKind::Weights`] blob of that version has).
    WeightsDiff { from: u64, version: u64, weights: Digest },
    /// A plain (unmasked) update: the agent's weights delta, `values` coordinates in `encoding` (the plan's
    /// [`TrainPlan::upload`]), with its metadata (agent → server). The delta covers the weights the round trains
    /// ([`TrainPlan::trainable`]): the whole model or that part. `eval`: the agent's federated evaluation of the
    /// round's starting model on its held-out examples.
    Update {
        round: u64,
        values: u64,
        encoding: crate::delta_encoding::DeltaEncoding,
        examples: u64,
        train_loss: f32,
        holdout_accuracy: Option<f32>,
        eval: Option<EvalCounts>,
    },
    /// A secure-aggregation masked vector `[w, counts, w·Δ]` plus masks: `1 + counts` little-endian `u32`, then
    /// the `P` delta coordinates in the round's `word_bits` each, packed and padded to a multiple of four bytes
    /// ([`crate::secagg::words`]), `P` the number of parameters the round trains
    /// (agent → server); the counts are the federated evaluation's ([`crate::fedeval`]).
    /// `examples` and `train_loss` are sent as 0: an agent's example count and loss are among the masked counts
    /// ([`crate::round_counts`]), and the server reads neither field.
    Masked { round: u64, examples: u64, train_loss: f32 },
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
            BlobKind::Weights { .. }
            | BlobKind::WeightsDiff { .. }
            | BlobKind::Update { .. }
            | BlobKind::Masked { .. } => limits::VECTOR,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec;

    fn sample_plan() -> RoundPlan {
        RoundPlan {
            round: 9,
            model_version: 3,
            graph: Digest::of(b"g"),
            weights: Digest::of(b"w"),
            train: TrainPlan {
                epochs: 1,
                batch_size: 32,
                learning_rate: 0.1,
                momentum: 0.9,
                weight_decay: 0.0,
                optimizer: OptimizerKind::Sgd,
                prox_mu: Some(0.01),
                seed: 5,
                loss: crate::train::Loss::MeanSquaredError,
                trainable: vec!["head.*".into()],
                upload: crate::delta_encoding::DeltaEncoding::Int8,
            },
            deadline_ms: 60_000,
            secagg: Some(SecAggPlan {
                params: SecAggParams::default_for(3),
                graph_seed: 7,
                me: 1,
                cohort: (0..3).map(|i| AgentRef { index: i, name: format!("a{i}") }).collect(),
                phase_timeout_ms: 10_000,
            }),
            held: Some(HeldPlan::Group(
                (0..3).map(|i| HeldMember { index: i, trained_round: 8, trained_version: 2, scale: 0.5 }).collect(),
            )),
        }
    }

    #[test]
    fn the_round_context_binds_the_model_the_settings_and_the_cohort_but_not_the_agents_own_slot() {
        let plan = sample_plan();
        let base = plan.context();
        // What differs from agent to agent, or is only timing, leaves the context alone.
        let mut other_agent = plan.clone();
        other_agent.deadline_ms = 1;
        if let Some(sp) = other_agent.secagg.as_mut() {
            sp.me = 2;
            sp.phase_timeout_ms = 5;
        }
        assert_eq!(other_agent.context(), base);
        // Everything that shapes an agent's update changes it.
        type Change = Box<dyn Fn(&mut RoundPlan)>;
        let changes: Vec<(&str, Change)> = vec![
            ("round", Box::new(|p| p.round += 1)),
            ("model version", Box::new(|p| p.model_version += 1)),
            ("graph", Box::new(|p| p.graph = Digest::of(b"other graph"))),
            ("weights", Box::new(|p| p.weights = Digest::of(b"zero-update weights"))),
            ("learning rate", Box::new(|p| p.train.learning_rate = 0.0)),
            ("epochs", Box::new(|p| p.train.epochs = 0)),
            ("trainable part", Box::new(|p| p.train.trainable.clear())),
            ("secure aggregation", Box::new(|p| p.secagg = None)),
            ("clip", Box::new(|p| p.secagg.as_mut().unwrap().params.clip = 0.5)),
            ("graph seed", Box::new(|p| p.secagg.as_mut().unwrap().graph_seed = 8)),
            (
                "cohort",
                Box::new(|p| {
                    let sp = p.secagg.as_mut().unwrap();
                    let mut cohort = sp.cohort.to_vec();
                    cohort[2].name = "sybil".into();
                    sp.cohort = cohort.into();
                }),
            ),
            ("held group", Box::new(|p| p.held = None)),
            (
                "a member's scale",
                Box::new(|p| {
                    if let Some(HeldPlan::Group(g)) = p.held.as_mut() {
                        g[0].scale = 0.25;
                    }
                }),
            ),
        ];
        for (what, change) in changes {
            let mut p = plan.clone();
            change(&mut p);
            assert_ne!(p.context(), base, "changing the {what} must change the context");
        }
    }

    #[test]
    fn every_message_round_trips_through_the_codec() {
        let msgs = vec![
            ServerMessage::Model(ModelAnnounce {
                version: 3,
                graph: Digest::of(b"g"),
                weights: Digest::of(b"w"),
                params: 10,
            }),
            ServerMessage::Plan(Box::new(sample_plan())),
            ServerMessage::Plan(Box::new(RoundPlan { secagg: None, held: Some(HeldPlan::Train), ..sample_plan() })),
            ServerMessage::RoundEnd { round: 9, completed: false, reason: Some("too few".into()), new_version: None },
        ];
        for m in msgs {
            let bytes = codec::encode(&m).unwrap();
            assert_eq!(codec::decode::<ServerMessage>(&bytes, limits::CONTROL).unwrap(), m);
        }
    }

    #[test]
    fn the_key_broadcast_of_the_largest_secure_cohort_fits_one_control_frame() {
        use crate::secagg::messages::MAX_SIGNATURE_LEN;
        let n = limits::SECAGG_COHORT;
        let key = |i: u32| AdvertiseKeys {
            round: u64::MAX,
            from: i,
            enc_pk: [0xFF; 32],
            mask_pk: [0xFF; 32],
            seed_commitment: [0xFF; 32],
            context: [0xFF; 32],
            signature: vec![0xFF; MAX_SIGNATURE_LEN.min(72)],
        };
        let m = ServerMessage::SecAggKeys {
            revocations: vec![0xCD; crate::revocation_list::LIMIT],
            round: u64::MAX,
            keys: (0..n as u32).map(key).collect(),
            certificates: vec![vec![0xAB; limits::CERTIFICATE_TYPICAL]; n],
        };
        let bytes = codec::encode(&m).unwrap();
        assert!(bytes.len() <= limits::CONTROL, "{} bytes", bytes.len());
        assert_eq!(codec::decode::<ServerMessage>(&bytes, limits::CONTROL).unwrap(), m);
        let plan = SecAggPlan {
            params: SecAggParams::default_for(n),
            graph_seed: 1,
            me: 0,
            cohort: (0..n as u32).map(|i| AgentRef { index: i, name: "x".repeat(64) }).collect(),
            phase_timeout_ms: 1,
        };
        assert!(codec::encode(&plan).unwrap().len() <= limits::CONTROL);
    }

    #[test]
    fn secure_aggregation_messages_round_trip_through_the_codec() {
        let adv = AdvertiseKeys {
            round: 4,
            from: 2,
            enc_pk: [1; 32],
            mask_pk: [2; 32],
            seed_commitment: [3; 32],
            context: [4; 32],
            signature: vec![9; 70],
        };
        let share = EncryptedShare { round: 4, from: 2, to: 1, ciphertext: vec![5; 40] };
        let agent = vec![
            AgentMessage::SecAggAdvertise(adv.clone()),
            AgentMessage::SecAggShares { round: 4, shares: vec![share.clone()] },
            AgentMessage::SecAggSurvivorSignature(SurvivorSignature { round: 4, from: 2, signature: vec![5; 70] }),
            AgentMessage::SecAggUnmask(UnmaskResponse { round: 4, from: 2, seed_shares: vec![], key_shares: vec![] }),
            AgentMessage::SecAggReceipt(ShareReceipt { round: 4, from: 2, bad: vec![1] }),
            AgentMessage::Ready { round: 4, model_version: 3, examples: 120 },
        ];
        for m in agent {
            let bytes = codec::encode(&m).unwrap();
            assert_eq!(codec::decode::<AgentMessage>(&bytes, limits::CONTROL).unwrap(), m);
        }
        let server = vec![
            ServerMessage::SecAggKeys {
                round: 4,
                keys: vec![adv],
                certificates: vec![vec![1, 2, 3]],
                revocations: vec![7; 9],
            },
            ServerMessage::SecAggShares { round: 4, shares: vec![share] },
            ServerMessage::SecAggSurvivors(SurvivorSet { round: 4, survivors: vec![1, 2] }),
            ServerMessage::SecAggUnmask(UnmaskRequest {
                round: 4,
                survivors: vec![1, 2],
                dropped: vec![0],
                signatures: vec![SurvivorSignature { round: 4, from: 1, signature: vec![5; 70] }],
            }),
            ServerMessage::Refused { reason: "not selected for this round".into() },
            ServerMessage::SecAggMaskWith(MaskWith { round: 4, to: 2, neighbours: vec![1, 3] }),
        ];
        for m in server {
            let bytes = codec::encode(&m).unwrap();
            assert_eq!(codec::decode::<ServerMessage>(&bytes, limits::CONTROL).unwrap(), m);
        }
        let h = BlobHeader { kind: BlobKind::Masked { round: 4, examples: 10, train_loss: 0.5 }, len: 8, digest: None };
        assert_eq!(h.max_len(), limits::VECTOR);
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
