//! An operator's QUIC connection to a running server (ALPN `fedge-admin/1`, authenticated by an operator bundle)
//! and one typed function per admin request. The binary and the tests call the same functions.
//!
//! Nothing here decides anything about rounds or settings: the server validates every command. It never panics on
//! what the server sends.

use anyhow::{Context, bail};
use fedge_shared::admin::{
    ADMIN_PROTOCOL_VERSION, AdminRequest, AdminResponse, AgentInfo, ConfigEntry, ModelInfo, Progress, RoundSummary,
    StatusInfo, limits,
};
use fedge_shared::model::Digest;
use fedge_shared::protocol::ALPN_ADMIN;
use fedge_shared::tls::{self, Identity};
use fedge_shared::wire;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where the server is and who we are.
#[derive(Debug, Clone)]
pub struct Target {
    /// `HOST:PORT` of the server's QUIC endpoint.
    pub server: String,
    /// The name in the server's certificate (defaults to the host of `server`).
    pub server_name: Option<String>,
    /// An operator bundle (cert.pem, key.pem, ca.pem), as written by `fedgectl operator add`.
    pub bundle: PathBuf,
}

impl Target {
    pub fn new(server: impl Into<String>, bundle: impl AsRef<Path>) -> Target {
        Target { server: server.into(), server_name: None, bundle: bundle.as_ref().to_path_buf() }
    }

    fn host(&self) -> &str {
        match self.server.rsplit_once(':') {
            Some((h, _)) => h.trim_start_matches('[').trim_end_matches(']'),
            None => &self.server,
        }
    }
}

/// A round command.
#[derive(Debug, Clone, PartialEq)]
pub enum RoundCmd {
    Start { count: Option<u64>, target_accuracy: Option<f32> },
    Pause,
    Resume,
    Abort,
}

/// An open admin connection.
pub struct AdminClient {
    endpoint: quinn::Endpoint,
    conn: quinn::Connection,
    /// The server's software version, from its welcome.
    pub server: String,
    /// Our name as the server sees it.
    pub operator: String,
}

fn refused(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("{e}")
}

impl AdminClient {
    /// Connects and greets. Fails with the server's reason when it refuses the certificate or the protocol.
    pub async fn connect(target: &Target) -> anyhow::Result<AdminClient> {
        let addr: SocketAddr = tokio::net::lookup_host(&target.server)
            .await
            .with_context(|| format!("resolving {}", target.server))?
            .next()
            .with_context(|| format!("{} resolves to no address", target.server))?;
        let ca = tls::load_certs(&target.bundle.join(tls::files::CA_CERT))
            .with_context(|| format!("the operator bundle {}", target.bundle.display()))?;
        let identity = Identity::load_bundle(&target.bundle)
            .with_context(|| format!("the operator bundle {}", target.bundle.display()))?;
        let cfg = tls::client_config(&ca, Some(&identity), ALPN_ADMIN, Duration::from_secs(60))?;
        let bind: SocketAddr = if addr.is_ipv4() { "0.0.0.0:0".parse()? } else { "[::]:0".parse()? };
        let mut endpoint = quinn::Endpoint::client(bind).context("binding a UDP socket")?;
        endpoint.set_default_client_config(cfg);
        let name = target.server_name.clone().unwrap_or_else(|| target.host().to_string());
        let conn = endpoint
            .connect(addr, &name)?
            .await
            .with_context(|| format!("connecting to {} as {name}", target.server))?;
        let mut client = AdminClient { endpoint, conn, server: String::new(), operator: String::new() };
        let hello = AdminRequest::Hello { protocol: ADMIN_PROTOCOL_VERSION, software: software() };
        match client.call(&hello).await? {
            AdminResponse::Welcome { server, operator, .. } => {
                client.server = server;
                client.operator = operator;
                Ok(client)
            }
            other => bail!("unexpected answer to the hello: {other:?}"),
        }
    }

    /// Closes the connection (waiting briefly for the close to reach the server).
    pub async fn close(self) {
        self.conn.close(quinn::VarInt::from_u32(0), b"bye");
        let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
    }

    async fn open(&self, request: &AdminRequest) -> anyhow::Result<quinn::RecvStream> {
        let (mut send, recv) = self.conn.open_bi().await.map_err(|e| self.why_closed(e))?;
        wire::write_msg(&mut send, request, limits::REQUEST).await.map_err(|e| self.why_closed(e))?;
        let _ = send.finish();
        Ok(recv)
    }

    /// The server's reason when it has closed the connection (e.g. "a Agent certificate may not use this
    /// protocol"), else `e`.
    fn why_closed(&self, e: impl std::fmt::Display) -> anyhow::Error {
        match self.conn.close_reason() {
            Some(quinn::ConnectionError::ApplicationClosed(c)) => {
                anyhow::anyhow!("the server closed the connection: {}", String::from_utf8_lossy(&c.reason))
            }
            Some(r) => anyhow::anyhow!("connection lost: {r}"),
            None => anyhow::anyhow!("{e}"),
        }
    }

    /// Sends one request and reads its one answer; an `Error` answer becomes an `Err` with the server's message.
    pub async fn call(&self, request: &AdminRequest) -> anyhow::Result<AdminResponse> {
        let mut recv = self.open(request).await?;
        let r = wire::read_msg::<AdminResponse>(&mut recv, limits::RESPONSE).await;
        match r {
            Ok(Some(AdminResponse::Error(e))) => Err(refused(e)),
            Ok(Some(r)) => Ok(r),
            Ok(None) => Err(self.why_closed("the server sent no answer")),
            Err(e) => Err(self.why_closed(e)),
        }
    }

    pub async fn status(&self) -> anyhow::Result<StatusInfo> {
        match self.call(&AdminRequest::Status).await? {
            AdminResponse::Status(s) => Ok(s),
            other => bail!("unexpected answer: {other:?}"),
        }
    }

    pub async fn agents(&self) -> anyhow::Result<Vec<AgentInfo>> {
        match self.call(&AdminRequest::Agents).await? {
            AdminResponse::Agents(a) => Ok(a),
            other => bail!("unexpected answer: {other:?}"),
        }
    }

    /// Revokes an agent on the running server; returns the server's message.
    pub async fn revoke(&self, name: &str) -> anyhow::Result<String> {
        done(self.call(&AdminRequest::Revoke { name: name.into() }).await?)
    }

    pub async fn round(&self, cmd: RoundCmd) -> anyhow::Result<String> {
        let req = match cmd {
            RoundCmd::Start { count, target_accuracy } => AdminRequest::RoundStart { count, target_accuracy },
            RoundCmd::Pause => AdminRequest::RoundPause,
            RoundCmd::Resume => AdminRequest::RoundResume,
            RoundCmd::Abort => AdminRequest::RoundAbort,
        };
        done(self.call(&req).await?)
    }

    pub async fn config_show(&self) -> anyhow::Result<Vec<ConfigEntry>> {
        match self.call(&AdminRequest::ConfigShow).await? {
            AdminResponse::Config(c) => Ok(c),
            other => bail!("unexpected answer: {other:?}"),
        }
    }

    /// Sets one setting; a refusal is an `Err` naming the key and the allowed range.
    pub async fn config_set(&self, key: &str, value: &str) -> anyhow::Result<String> {
        done(self.call(&AdminRequest::ConfigSet { key: key.into(), value: value.into() }).await?)
    }

    pub async fn history(&self) -> anyhow::Result<Vec<RoundSummary>> {
        match self.call(&AdminRequest::History).await? {
            AdminResponse::History(h) => Ok(h),
            other => bail!("unexpected answer: {other:?}"),
        }
    }

    pub async fn models(&self) -> anyhow::Result<Vec<ModelInfo>> {
        match self.call(&AdminRequest::Models).await? {
            AdminResponse::Models(m) => Ok(m),
            other => bail!("unexpected answer: {other:?}"),
        }
    }

    /// The standalone ONNX of `version` (`None`: the newest), digest-checked.
    pub async fn export(&self, version: Option<u64>) -> anyhow::Result<(ModelInfo, Vec<u8>)> {
        let mut recv = self.open(&AdminRequest::Export { version }).await?;
        let header =
            wire::read_msg::<AdminResponse>(&mut recv, limits::RESPONSE).await.map_err(|e| self.why_closed(e))?;
        let (model, len, digest) = match header {
            Some(AdminResponse::Export { model, len, digest }) => (model, len, digest),
            Some(AdminResponse::Error(e)) => return Err(refused(e)),
            Some(other) => bail!("unexpected answer: {other:?}"),
            None => return Err(self.why_closed("the server sent no answer")),
        };
        if len > limits::EXPORT {
            bail!("the server announced a model of {len} bytes, over the {} byte limit", limits::EXPORT);
        }
        let mut bytes = vec![0u8; len as usize];
        recv.read_exact(&mut bytes).await.map_err(|e| self.why_closed(e))?;
        if Digest::of(&bytes) != digest {
            bail!("the exported model's digest does not match");
        }
        Ok((model, bytes))
    }

    /// Receives progress snapshots, calling `on` for each, until `on` returns false or the server stops.
    pub async fn watch(&self, mut on: impl FnMut(&Progress) -> bool) -> anyhow::Result<()> {
        let mut recv = self.open(&AdminRequest::Watch).await?;
        loop {
            match wire::read_msg::<AdminResponse>(&mut recv, limits::RESPONSE).await.map_err(|e| self.why_closed(e))? {
                Some(AdminResponse::Progress(p)) => {
                    if !on(&p) {
                        let _ = recv.stop(quinn::VarInt::from_u32(0));
                        return Ok(());
                    }
                }
                Some(AdminResponse::Error(e)) => return Err(refused(e)),
                Some(other) => bail!("unexpected answer: {other:?}"),
                None => return Ok(()),
            }
        }
    }
}

fn done(r: AdminResponse) -> anyhow::Result<String> {
    match r {
        AdminResponse::Done(m) => Ok(m),
        other => bail!("unexpected answer: {other:?}"),
    }
}

fn software() -> String {
    concat!("fedgectl/", env!("CARGO_PKG_VERSION")).into()
}
