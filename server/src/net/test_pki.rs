//! For the shell's tests over real QUIC: a fresh federation (CA, server certificate, one agent's bundle) in a
//! temporary directory, the server's QUIC configuration with the server's transport settings, and an agent's
//! endpoint. Test support only: compiled for tests, never part of the server.

use fedge_shared::protocol::ALPN_AGENT;
use fedge_shared::tls::{self, Identity, Role, files};
use std::sync::Arc;
use std::time::Duration;

/// How long the test connections may stay silent.
pub(super) const IDLE: Duration = Duration::from_secs(10);

/// A federation with one agent, "agent-1".
pub(super) struct TestPki {
    ca: Vec<rustls::pki_types::CertificateDer<'static>>,
    server: Identity,
    agent: Identity,
    _dir: tempfile::TempDir,
}

impl TestPki {
    pub(super) fn new() -> TestPki {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path();
        tls::init_federation(path, &["localhost".into()], 1).unwrap();
        let bundle = tls::issue_bundle(path, "agent-1", Role::Agent, 1).unwrap();
        let ca = tls::load_certs(&path.join(files::CA_CERT)).unwrap();
        let server = Identity::load(&path.join(files::SERVER_CERT), &path.join(files::SERVER_KEY)).unwrap();
        let agent = Identity::load(&bundle.join(files::CERT), &bundle.join(files::KEY)).unwrap();
        TestPki { ca, server, agent, _dir: dir }
    }

    /// The server's QUIC configuration for agents, with the server's transport settings.
    pub(super) fn server_config(&self) -> quinn::ServerConfig {
        let mut config = tls::server_config(&self.ca, &self.server, &[ALPN_AGENT], IDLE).unwrap();
        config.transport_config(Arc::new(super::endpoint::transport(IDLE)));
        config
    }

    /// An agent's endpoint on loopback, presenting the agent's certificate.
    pub(super) fn agent_endpoint(&self) -> quinn::Endpoint {
        let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        endpoint.set_default_client_config(tls::client_config(&self.ca, Some(&self.agent), ALPN_AGENT, IDLE).unwrap());
        endpoint
    }
}
