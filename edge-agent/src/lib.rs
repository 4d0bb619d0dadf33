//! The fedge edge agent: takes part in federated rounds, trains locally with tract, serves inference.
//!
//! - [`offline`]: the commands that work without a server: `train`, `eval`, `make-model`.

pub mod offline;
