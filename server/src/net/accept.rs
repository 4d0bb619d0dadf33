//! Accepting connections: the accept loop, and for each peer the checks before anything else is read: its
//! certificate (expiry, the revocation file, the operators' revocations in the store) and its role for the ALPN.
//! An agent goes on to [`super::agent_connection`], an operator to the entry point the server handed in; a
//! revocation later closes either.
//!
//! It must never serve a peer it has not checked, nor panic on a failed handshake.

use super::agent_connection::serve_agent;
use super::endpoint::listed;
use super::probe::is_probe;
use super::refusal::refuse;
use super::shared::Shared;
use crate::core_msg::ServerEvent;
use fedge_shared::protocol;
use fedge_shared::tls::{self, Role};
use rustls::pki_types::CertificateDer;
use std::sync::Arc;
use tokio::sync::watch;

/// Accepts connections until shutdown.
pub async fn accept_loop(endpoint: quinn::Endpoint, shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    loop {
        let incoming = tokio::select! {
            i = endpoint.accept() => match i { Some(i) => i, None => break },
            _ = shutdown.changed() => break,
        };
        let shared = shared.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            let mut connecting = match incoming.accept() {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(peer = %remote, error = %e, "connection attempt refused");
                    let _ =
                        shared.events.send(ServerEvent::Refused { peer: remote.to_string(), reason: e.to_string() });
                    return;
                }
            };
            let probe = is_probe(&mut connecting).await;
            match connecting.await {
                Ok(conn) => handle_connection(conn, shared, shutdown).await,
                // `fedge-server probe` presents no certificate: its refusal is the answer it waits for.
                Err(e) if probe => tracing::debug!(peer = %remote, error = %e, "readiness probe answered"),
                Err(e) => {
                    // A missing certificate, one from another CA, or an expired one ends here.
                    tracing::warn!(peer = %remote, error = %e, "TLS handshake refused");
                    let _ =
                        shared.events.send(ServerEvent::Refused { peer: remote.to_string(), reason: e.to_string() });
                }
            }
        });
    }
}

async fn handle_connection(conn: quinn::Connection, shared: Arc<Shared>, shutdown: watch::Receiver<bool>) {
    let remote = conn.remote_address();
    let alpn = conn
        .handshake_data()
        .and_then(|h| h.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|h| h.protocol);
    let info = match tls::peer_info(&conn) {
        Ok(i) => i,
        Err(e) => return refuse(&conn, &shared, remote.to_string(), format!("certificate: {e}")),
    };
    let cert = peer_cert_der(&conn).unwrap_or_default();
    let peer = format!("{} ({remote})", info.name);
    let now = crate::clock::wall_ms();
    if info.not_after < (now / 1000) as i64 {
        return refuse(&conn, &shared, peer, "certificate expired".into());
    }
    match shared.tls.is_revoked(&info) {
        Ok(false) => {}
        Ok(true) => return refuse(&conn, &shared, peer, format!("certificate of {} is revoked", info.name)),
        Err(e) => return refuse(&conn, &shared, peer, format!("revocation list unreadable: {e:#}")),
    }
    // Revocations by an operator on the running server (`fedgectl agent revoke NAME`) live in the store.
    match shared.store.is_revoked(&info.name) {
        Ok(false) => {}
        Ok(true) => return refuse(&conn, &shared, peer, format!("{} is revoked", info.name)),
        Err(e) => return refuse(&conn, &shared, peer, format!("revocation state unreadable: {e}")),
    }
    // From now on, a revocation of this certificate (in the file or by an operator) closes the connection.
    let guard = tokio::spawn(crate::revocation::guard(conn.clone(), shared.revocations.subscribe(), peer.clone(), {
        let (shared, info) = (shared.clone(), info.clone());
        move || {
            // The file as the watcher last read it: no file read per connection.
            let in_file = match shared.revocations.file() {
                Ok(text) => text.is_some_and(|t| listed(&t, &info)),
                Err(kind) => anyhow::bail!("the revocation file is unreadable: {kind}"),
            };
            Ok(in_file || shared.store.is_revoked(&info.name)?)
        }
    }));
    match (alpn.as_deref(), info.role) {
        (Some(a), Role::Agent) if a == protocol::ALPN_AGENT => {
            if let Err(e) = serve_agent(&conn, &shared, info, cert, shutdown).await {
                tracing::info!(%peer, reason = %format!("{e:#}"), "agent connection ended");
            }
        }
        (Some(a), Role::Operator) if a == protocol::ALPN_ADMIN => {
            if let Err(e) = (shared.operators)(conn.clone(), shared.clone(), info, shutdown).await {
                tracing::info!(%peer, reason = %format!("{e:#}"), "operator connection ended");
            }
        }
        (_, role) => refuse(&conn, &shared, peer, format!("a {role:?} certificate may not use this protocol")),
    }
    guard.abort();
}

/// The DER of the peer's verified leaf certificate.
fn peer_cert_der(conn: &quinn::Connection) -> Option<Vec<u8>> {
    let certs = conn.peer_identity()?.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    certs.first().map(|c| c.as_ref().to_vec())
}
