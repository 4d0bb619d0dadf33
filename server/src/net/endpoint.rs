//! The server's QUIC endpoint: its certificates and the federation CA ([`TlsSetup`]), the transport settings, the
//! revocation file (read afresh at each check), and the UDP socket with its enlarged receive buffer.
//!
//! Set up once at start. It must never accept a peer itself: that is [`super::accept`]'s work.

use super::receive_window::IDLE_RECEIVE_WINDOW;
use super::send_batch::SendBatch;
use crate::config::ServerConfig;
use anyhow::Context;
use fedge_shared::protocol;
use fedge_shared::tls::{self, CertInfo, Identity};
use rustls::pki_types::CertificateDer;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Certificates and their files, loaded once at start.
pub struct TlsSetup {
    ca: Vec<CertificateDer<'static>>,
    identity: Identity,
    revoked: Option<PathBuf>,
    idle: Duration,
}

impl TlsSetup {
    pub fn load(config: &ServerConfig) -> anyhow::Result<TlsSetup> {
        let ca = tls::load_certs(&config.tls.ca)?;
        let identity = Identity::load(&config.tls.cert, &config.tls.key)?;
        Ok(TlsSetup {
            ca,
            identity,
            revoked: config.tls.revoked.clone(),
            idle: Duration::from_millis(config.idle_timeout_ms),
        })
    }

    /// The QUIC server configuration: TLS from [`tls::server_config`], and a connection receive window of
    /// [`IDLE_RECEIVE_WINDOW`] that an upload widens only while it holds an upload permit
    /// (`receive_window::UploadWindow`).
    pub fn server_config(&self) -> anyhow::Result<quinn::ServerConfig> {
        let alpn = [protocol::ALPN_AGENT, protocol::ALPN_ADMIN, protocol::ALPN_PROBE];
        let mut cfg = tls::server_config(&self.ca, &self.identity, &alpn, self.idle)?;
        cfg.transport_config(Arc::new(transport(self.idle)));
        Ok(cfg)
    }

    /// Whether `info` is listed in the revocation file (read afresh, so a revocation takes effect at once).
    pub(super) fn is_revoked(&self, info: &CertInfo) -> anyhow::Result<bool> {
        let Some(path) = &self.revoked else { return Ok(false) };
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        Ok(listed(&text, info))
    }
}

/// The server's transport settings ([`tls::server_transport_config`]) with a connection receive window of
/// [`IDLE_RECEIVE_WINDOW`].
pub(super) fn transport(idle: Duration) -> quinn::TransportConfig {
    let mut transport = tls::server_transport_config(idle);
    transport.receive_window(quinn::VarInt::from_u32(IDLE_RECEIVE_WINDOW));
    transport
}

/// Whether the revocation file's `text` lists `info`: a line `NAME FINGERPRINT` with its fingerprint, or a line
/// with its name alone.
pub(super) fn listed(text: &str, info: &CertInfo) -> bool {
    let fp = info.fingerprint.to_hex();
    text.lines().any(|l| {
        let mut parts = l.split_whitespace();
        let (name, f) = (parts.next(), parts.next());
        f == Some(fp.as_str()) || (f.is_none() && name == Some(info.name.as_str()))
    })
}

/// The UDP receive buffer the server asks for: uploads from many agents arrive in bursts, and a datagram the
/// kernel has no room for is lost and sent again (at the kernel's default of 208 KiB, ten agents uploading 4 MB
/// each lost ~8% of their packets on loopback). The kernel caps it at `net.core.rmem_max`.
pub const UDP_RECEIVE_BUFFER: usize = 4 * 1024 * 1024;

/// Binds the server's QUIC endpoint on `listen` with a [`UDP_RECEIVE_BUFFER`] receive buffer, at most `send_batch`
/// datagrams per send call (see [`super::send_batch`]) and `endpoint_config` (which carries the persistent
/// stateless-reset key: see [`crate::reset_key`]).
pub fn bind_endpoint(
    endpoint_config: quinn::EndpointConfig,
    server_config: quinn::ServerConfig,
    listen: std::net::SocketAddr,
    send_batch: usize,
) -> anyhow::Result<quinn::Endpoint> {
    let socket = std::net::UdpSocket::bind(listen).with_context(|| format!("binding UDP {listen}"))?;
    enlarge_receive_buffer(&socket);
    let runtime = quinn::default_runtime().context("no async runtime for QUIC")?;
    let socket = runtime.wrap_udp_socket(socket).with_context(|| format!("UDP {listen} for QUIC"))?;
    let socket = Arc::new(SendBatch::new(socket, send_batch));
    Ok(quinn::Endpoint::new_with_abstract_socket(endpoint_config, Some(server_config), socket, runtime)?)
}

/// Asks for a [`UDP_RECEIVE_BUFFER`] receive buffer on `socket` (logged, not fatal, when refused).
pub fn enlarge_receive_buffer(socket: &std::net::UdpSocket) {
    let result = quinn::udp::UdpSocketState::new(socket.into())
        .and_then(|s| s.set_recv_buffer_size(socket.into(), UDP_RECEIVE_BUFFER).map(|_| s))
        .and_then(|s| s.recv_buffer_size(socket.into()));
    match result {
        Ok(size) => tracing::debug!(bytes = size, "UDP receive buffer"),
        Err(e) => tracing::warn!(error = %e, "could not enlarge the UDP receive buffer"),
    }
}
