//! A running server as whoever started it holds it: its address, its store and metrics, a way to send the core
//! operator commands and to watch its events, and its orderly shutdown (stop accepting, close every connection,
//! flush the store).
//!
//! A handle only talks to the core through its channel: it must never reach into the coordinator's state.

use crate::coordinator::Status;
use crate::core_msg::{CoreMsg, Operator, ServerEvent};
use crate::store::Store;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::{broadcast, mpsc, oneshot, watch};

/// A running server.
pub struct ServerHandle {
    pub local_addr: SocketAddr,
    pub(super) core: mpsc::Sender<CoreMsg>,
    pub(super) events: broadcast::Sender<ServerEvent>,
    pub(super) shutdown: watch::Sender<bool>,
    pub(super) tasks: Vec<tokio::task::JoinHandle<()>>,
    pub(super) endpoint: quinn::Endpoint,
    pub store: Arc<Store>,
    /// The server's Prometheus metrics.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Where `GET /metrics` is served, when server.toml asks for it.
    pub metrics_addr: Option<SocketAddr>,
}

impl ServerHandle {
    /// Subscribes to server events.
    pub fn events(&self) -> broadcast::Receiver<ServerEvent> {
        self.events.subscribe()
    }

    /// Sends an operator command.
    pub async fn operator(&self, op: Operator) -> anyhow::Result<()> {
        self.core.send(CoreMsg::Operator(op)).await.map_err(|_| anyhow::anyhow!("server core stopped"))
    }

    /// The coordinator's status.
    pub async fn status(&self) -> anyhow::Result<Status> {
        let (tx, rx) = oneshot::channel();
        self.core.send(CoreMsg::Status(tx)).await.map_err(|_| anyhow::anyhow!("server core stopped"))?;
        rx.await.map_err(|_| anyhow::anyhow!("server core stopped"))
    }

    /// Stops accepting, closes every connection, flushes the store.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let _ = self.shutdown.send(true);
        self.endpoint.close(quinn::VarInt::from_u32(0), b"server shutting down");
        for t in self.tasks {
            let _ = t.await;
        }
        self.store.flush()?;
        Ok(())
    }
}
