//! What every connection task shares: the core's channel and events, the model's size, the certificates, the
//! upload and download permits, the store, the revocation watcher, and the operators' entry point
//! ([`OperatorService`]), which the server hands in so that the shell carries operator connections without
//! depending on their protocol.
//!
//! Types only: this module must never hold logic.

use super::endpoint::TlsSetup;
use super::upload_budget::UploadBudget;
use crate::core_msg::{CoreMsg, ServerEvent};
use crate::store::Store;
use fedge_shared::tls::CertInfo;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use tokio::sync::{Semaphore, broadcast, mpsc, watch};

/// Serves one operator connection until it ends. The server passes the admin protocol's entry point in
/// ([`Shared::operators`]), so that this module carries operator connections without depending on their protocol.
pub type OperatorService = fn(
    quinn::Connection,
    Arc<Shared>,
    CertInfo,
    watch::Receiver<bool>,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<()>> + Send>>;

/// What every connection task shares.
pub struct Shared {
    pub core: mpsc::Sender<CoreMsg>,
    pub events: broadcast::Sender<ServerEvent>,
    /// Parameters of the current model (the only length an update may have).
    pub params: Arc<AtomicU64>,
    pub tls: TlsSetup,
    /// Bounds the update vectors held in memory at once, in number and in bytes.
    pub uploads: UploadBudget,
    /// Bounds the model downloads in flight at once.
    pub downloads: Arc<Semaphore>,
    pub next_conn: AtomicU64,
    pub store: Arc<Store>,
    /// Wakes every live connection to check its certificate again (see [`crate::revocation`]).
    pub revocations: Arc<crate::revocation::Revocations>,
    /// Serves the connections of operators (ALPN `fedge-admin`).
    pub operators: OperatorService,
}
