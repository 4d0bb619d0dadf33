//! The readiness probe: a QUIC handshake against a running server's own listener, for orchestrators that have no
//! UDP probe (Kubernetes runs `fedge-server probe` as an exec probe: the container image has no shell).
//!
//! The probe connects with ALPN [`protocol::ALPN_PROBE`] and no client certificate. It accepts the server only if
//! it presents exactly the certificate the configuration names (`tls.cert`) and proves it holds its key (the TLS
//! 1.3 signature), so another process on the port, or a server started with other certificates, is not taken for
//! this one. The server then refuses the probe for its missing client certificate, as it refuses anyone without
//! one (TLS alert `certificate_required`): that refusal, after the server's own Finished, is the one answer that
//! counts as ready. The server binds its listener only once its database is open, its model loaded and its test
//! set read (`service::startup`), so an answer means the server finished starting and its QUIC endpoint runs.
//! Nothing else does: no answer within the time-out, an ICMP unreachable, another certificate, or any other alert.
//!
//! On the server's side, [`is_probe`] tells the accept loop that a refused handshake was a probe, so that a probe
//! every few seconds is neither logged as a warning nor counted in `fedge_refused_connections_total`.
//!
//! The probe must never present a certificate or send application data; the server must never treat a probe
//! differently from any other peer except in how its refusal is reported.

use fedge_shared::protocol;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// The TLS alert a server sends to a client that presents no certificate (RFC 8446, `certificate_required`).
const CERTIFICATE_REQUIRED: u8 = 116;
/// The alert the probe raises itself when [`Pinned`] refuses the server's certificate (`access_denied`: rustls's
/// alert for `CertificateError::ApplicationVerificationFailure`).
const ACCESS_DENIED: u8 = 49;

/// Why a probe did not find the server ready.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("no answer from {addr} within {timeout:?} (nothing listening, or a server still starting)")]
    Silent { addr: SocketAddr, timeout: Duration },
    #[error("{addr} presented another certificate than the configured one: {reason}")]
    WrongServer { addr: SocketAddr, reason: String },
    #[error("{addr} answered, but not as a ready fedge server does: {reason}")]
    Unexpected { addr: SocketAddr, reason: String },
    #[error("the probe could not be set up: {0}")]
    Setup(String),
}

/// The address to probe for a server that listens on `listen`: the same port on the loopback address of the same
/// family when the server listens on every address (0.0.0.0 or ::), else `listen` itself.
pub fn local_address(listen: SocketAddr) -> SocketAddr {
    match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => SocketAddr::new(Ipv4Addr::LOCALHOST.into(), listen.port()),
        IpAddr::V6(ip) if ip.is_unspecified() => SocketAddr::new(Ipv6Addr::LOCALHOST.into(), listen.port()),
        _ => listen,
    }
}

/// Probes the server at `addr`, which must present `server_cert`. `Ok` when it answered as a ready server does
/// (see the module documentation), within `timeout`.
pub async fn probe(
    addr: SocketAddr,
    server_cert: CertificateDer<'static>,
    timeout: Duration,
) -> Result<(), ProbeError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(Pinned { cert: server_cert, algorithms: provider.signature_verification_algorithms });
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| ProbeError::Setup(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    tls.alpn_protocols = vec![protocol::ALPN_PROBE.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(|e| ProbeError::Setup(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    let mut transport = quinn::TransportConfig::default();
    transport.max_idle_timeout(quinn::IdleTimeout::try_from(timeout).ok());
    config.transport_config(Arc::new(transport));
    let local: SocketAddr = match addr {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let endpoint = quinn::Endpoint::client(local).map_err(|e| ProbeError::Setup(format!("UDP socket: {e}")))?;
    // The name is not checked (the certificate is pinned), but TLS needs one.
    let connecting =
        endpoint.connect_with(config, addr, "fedge-server").map_err(|e| ProbeError::Setup(e.to_string()))?;
    let answer = tokio::time::timeout(timeout, async {
        match connecting.await {
            // Our side is done with the handshake; the server's verdict on our (missing) certificate follows.
            Ok(conn) => conn.closed().await,
            Err(e) => e,
        }
    })
    .await;
    endpoint.close(0u32.into(), b"");
    let answer = answer.map_err(|_| ProbeError::Silent { addr, timeout })?;
    classify(addr, timeout, answer)
}

/// What the probe's connection ended with, as a verdict.
fn classify(addr: SocketAddr, timeout: Duration, end: quinn::ConnectionError) -> Result<(), ProbeError> {
    use quinn::ConnectionError as E;
    match end {
        E::ConnectionClosed(close) if close.error_code == quinn::TransportErrorCode::crypto(CERTIFICATE_REQUIRED) => {
            Ok(())
        }
        E::TransportError(e) if e.code == quinn::TransportErrorCode::crypto(ACCESS_DENIED) => {
            Err(ProbeError::WrongServer { addr, reason: e.to_string() })
        }
        E::TimedOut => Err(ProbeError::Silent { addr, timeout }),
        other => Err(ProbeError::Unexpected { addr, reason: other.to_string() }),
    }
}

/// Whether the connection being accepted is a readiness probe (its ALPN is [`protocol::ALPN_PROBE`]). Waits for
/// the client's hello; `false` when the handshake fails before it.
pub(super) async fn is_probe(connecting: &mut quinn::Connecting) -> bool {
    connecting
        .handshake_data()
        .await
        .ok()
        .and_then(|h| h.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|h| h.protocol)
        .is_some_and(|alpn| alpn == protocol::ALPN_PROBE)
}

/// Accepts exactly one server certificate, and checks the handshake's signatures with it.
#[derive(Debug)]
struct Pinned {
    cert: CertificateDer<'static>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.cert.as_ref() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::ApplicationVerificationFailure))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_on_every_address_is_probed_on_loopback_and_one_on_a_given_address_there() {
        assert_eq!(local_address("0.0.0.0:4433".parse().unwrap()), "127.0.0.1:4433".parse().unwrap());
        assert_eq!(local_address("[::]:4433".parse().unwrap()), "[::1]:4433".parse().unwrap());
        assert_eq!(local_address("10.1.2.3:7000".parse().unwrap()), "10.1.2.3:7000".parse().unwrap());
    }
}
