//! The fedge aggregation server.
//!
//! - [`coordinator`]: the round state machine, sans-IO (events in, actions out; no sockets, no clocks).
//! - [`strategy`]: aggregation strategies behind one small trait (FedAvg, FedProx, FedAvgM, FedAdam, FedYogi,
//!   FedAdagrad; median, trimmed mean and Krum for plain rounds); [`hyper`]: the training hyper-parameters they set.
//! - [`store`]: the sled database: models, rounds, agents, metadata; [`round_format`]: how it lays out round records.
//! - [`service`]: the core task that drives the coordinator and the store; [`net`]: the QUIC shell.
//! - [`aggregator`]: the aggregation tier (`role = "aggregator"`: rounds over its own agents for a root server);
//! - [`config`]: `server.toml`; [`evaluator`]: test-set evaluation of new models.
//! - [`admin`]: the operator's protocol (served; its client, `fedgectl`, is the `fedge-ctl` crate, with the demo
//!   and the benchmark, so that this crate links no edge agent); [`metrics`]: Prometheus.

pub mod admin;
pub mod aggregator;
pub mod clock;
pub mod config;
pub mod coordinator;
pub mod core_msg;
pub mod disk;
pub mod evaluator;
pub mod hyper;
pub mod logging;
pub mod metrics;
pub mod net;
pub mod reset_key;
pub mod revocation;
pub mod round_format;
pub mod run;
pub mod service;
pub mod store;
pub mod strategy;
