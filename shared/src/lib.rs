//! `fedge-shared`: everything both the aggregation server and the edge agent need, and everything that can be
//! tested without a network.
//!
//! - [`codec`]: the only place that serialises messages and records (bincode 2.0.1 lives behind it).
//! - [`protocol`]: the messages of the round protocol; [`admin`]: those of the admin protocol (fedgectl).
//! - [`model`]: content digests and the little-endian weights format.
//! - [`data`]: on-device data sets (IDX, CSV), splits and non-IID partitions.
//! - [`train`]: training with tract: ONNX reverse-mode differentiation, optimizers, local training, evaluation.
//! - [`secagg`]: secure aggregation (SecAgg+) as sans-IO state machines.
//! - [`privacy`]: distributed differential privacy: the discrete Gaussian noise agents add, the Rényi-DP accountant.
//! - [`fedeval`]: federated evaluation: the counts each agent reports and their totals; [`round_counts`]: the
//!   counts a secure round carries under the masks (the evaluation's and the training metadata).
//! - [`revocation_list`]: the CA-signed list of revoked certificates agents check their peers against.
//! - [`tls`] and [`wire`]: certificates, rustls configurations, and framed messages over QUIC streams.
//!
//! Nothing in this crate opens a socket on its own initiative, reads a clock inside a state machine, or panics on
//! input that came from the network, a file or a user.

pub mod admin;
pub mod alloc;
pub mod codec;
pub mod data;
pub mod delta_encoding;
pub mod fedeval;
pub mod model;
pub mod model_diff;
pub mod privacy;
pub mod protocol;
pub mod revocation_list;
pub mod round_counts;
pub mod secagg;
pub mod tls;
pub mod train;
pub mod wire;
