//! `fedgectl`, the local demo and the round benchmark: the operator's side of fedge, in a crate of its own so that
//! the aggregation server (`fedge-server`) links neither the edge agent nor the operator's plotting and progress
//! code.
//!
//! - [`admin_client`]: the operator's connection to a running server, one typed function per admin request;
//! - [`render`]: human-readable output; [`plot`]: the history plot; [`progress`]: `watch`'s progress bars;
//!   [`tensorboard`] and [`tfevents`]: the history as TensorBoard event files; [`csv_history`]: as CSV;
//!   [`atomic`]: files written whole or not at all;
//! - [`demo`] and [`demo_data`]: a server and agents on loopback (`fedgectl demo`, `fedge-bench`, the tests);
//!   [`slow_learner`]: a slower device, for straggler benchmarks.
//!
//! Nothing here decides anything about rounds or settings: the server validates every command.

pub mod admin_client;
pub mod atomic;
pub mod csv_history;
pub mod demo;
pub mod demo_data;
pub mod plot;
pub mod progress;
pub mod render;
pub mod slow_learner;
pub mod tensorboard;
pub mod tfevents;

pub use admin_client::{AdminClient, RoundCmd, Target};
