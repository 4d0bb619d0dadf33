//! The QUIC shell: accepts connections, authenticates peers by their certificate, speaks the hello, and runs one
//! task per agent connection that moves framed control messages and blob streams between the agent and the core.
//!
//! It decides nothing about rounds. It refuses, with a logged reason and a QUIC close code, any peer whose
//! certificate does not chain to the federation CA (rustls does that in the handshake), is revoked, carries the
//! wrong role for the ALPN, or speaks another protocol version; and it closes a live connection, agent or operator,
//! whose certificate is revoked later ([`crate::revocation`]). It never panics on what a peer sends.
//!
//! Secure rounds: the agent's secure-aggregation messages go to the core tagged with the name from its certificate
//! (so an agent can only speak for its own cohort index), and a masked vector (`1 + 3 + P` little-endian `u32`) is read
//! under one of the `max_concurrent_uploads` permits, which travels with it until the core has folded it.

use crate::config::ServerConfig;
use crate::core_msg::{CoreMsg, Outbound, ServerEvent};
use crate::store::Store;
use anyhow::Context;
use fedge_shared::protocol::{
    self, AgentMessage, BlobKind, Hello, PROTOCOL_VERSION, ServerHello, ServerMessage, limits,
};
use fedge_shared::tls::{self, CertInfo, Identity, Role};
use fedge_shared::wire;
use rustls::pki_types::CertificateDer;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{Semaphore, broadcast, mpsc, watch};

/// QUIC application close code: the peer is refused.
pub const CLOSE_REFUSED: u32 = 2;
/// QUIC application close code: the peer broke the protocol.
pub const CLOSE_PROTOCOL: u32 = 3;

const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection that has received nothing for this long (two keep-alive intervals: a live agent's connection
/// receives at least a keep-alive acknowledgement every 5 s, and its probes every second) is reported silent, and
/// its agent is not selected for new rounds until it is heard from again.
pub const SILENT_AFTER: Duration = Duration::from_secs(10);

/// Reports to the core when `conn` has received nothing for [`SILENT_AFTER`], and when it receives again.
async fn watch_liveness(conn: quinn::Connection, core: mpsc::Sender<CoreMsg>, agent: String, id: u64) {
    let step = Duration::from_millis(500);
    let mut seen = conn.stats().udp_rx.datagrams;
    let mut heard = tokio::time::Instant::now();
    let mut silent = false;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(step) => {}
            _ = conn.closed() => return,
        }
        let now = conn.stats().udp_rx.datagrams;
        if now != seen {
            seen = now;
            heard = tokio::time::Instant::now();
        }
        let quiet = heard.elapsed() >= SILENT_AFTER;
        if quiet != silent {
            silent = quiet;
            if core.send(CoreMsg::Silent { agent: agent.clone(), conn: id, silent }).await.is_err() {
                return;
            }
        }
    }
}

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
    /// [`IDLE_RECEIVE_WINDOW`] that an upload widens only while it holds an upload permit ([`UploadWindow`]).
    pub fn server_config(&self) -> anyhow::Result<quinn::ServerConfig> {
        let mut cfg =
            tls::server_config(&self.ca, &self.identity, &[protocol::ALPN_AGENT, protocol::ALPN_ADMIN], self.idle)?;
        let mut transport = tls::server_transport_config(self.idle);
        transport.receive_window(quinn::VarInt::from_u32(IDLE_RECEIVE_WINDOW));
        cfg.transport_config(Arc::new(transport));
        Ok(cfg)
    }

    /// Whether `info` is listed in the revocation file (read afresh, so a revocation takes effect at once).
    fn is_revoked(&self, info: &CertInfo) -> anyhow::Result<bool> {
        let Some(path) = &self.revoked else { return Ok(false) };
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        Ok(listed(&text, info))
    }
}

/// Whether the revocation file's `text` lists `info`: a line `NAME FINGERPRINT` with its fingerprint, or a line
/// with its name alone.
fn listed(text: &str, info: &CertInfo) -> bool {
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

/// Binds the server's QUIC endpoint on `listen` with a [`UDP_RECEIVE_BUFFER`] receive buffer and `endpoint_config`
/// (which carries the persistent stateless-reset key: see [`crate::reset_key`]).
pub fn bind_endpoint(
    endpoint_config: quinn::EndpointConfig,
    server_config: quinn::ServerConfig,
    listen: std::net::SocketAddr,
) -> anyhow::Result<quinn::Endpoint> {
    let socket = std::net::UdpSocket::bind(listen).with_context(|| format!("binding UDP {listen}"))?;
    enlarge_receive_buffer(&socket);
    let runtime = quinn::default_runtime().context("no async runtime for QUIC")?;
    Ok(quinn::Endpoint::new(endpoint_config, Some(server_config), socket, runtime)?)
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

/// The connection-level receive window of an agent that is not being read from: what it may send ahead (control
/// messages, the start of an upload waiting for a permit). The server's memory for N agents' unread uploads is N
/// times this, and so is the burst N agents can send at once into the UDP receive buffer, so it is small: at
/// 64 KiB, 100 agents starting their uploads together overflowed a 4 MiB buffer (a quarter of a 1e5-parameter
/// upload was lost and sent again); the largest control message (a cohort's encrypted shares) is a few KiB.
pub const IDLE_RECEIVE_WINDOW: u32 = 16 * 1024;

/// The connection-level receive window while one of the agent's uploads holds a permit and is being read: wide
/// enough for full speed on loopback and LANs.
pub const UPLOAD_RECEIVE_WINDOW: u32 = 1536 * 1024;

/// Widens a connection's receive window while an upload holding a permit is read, and narrows it back to
/// [`IDLE_RECEIVE_WINDOW`] once the rest of the upload fits in the credit already granted ([`UploadWindow::left`])
/// or when dropped. Narrowing early matters: credit once granted cannot be taken back, so a window narrowed only
/// at the end would leave the agent free to send its next upload's first 1.5 MB ahead of any permit.
struct UploadWindow<'a> {
    conn: &'a quinn::Connection,
    wide: bool,
}

impl<'a> UploadWindow<'a> {
    fn open(conn: &'a quinn::Connection) -> Self {
        conn.set_receive_window(quinn::VarInt::from_u32(UPLOAD_RECEIVE_WINDOW));
        UploadWindow { conn, wide: true }
    }

    /// `remaining` bytes of the upload are still to come.
    fn left(&mut self, remaining: usize) {
        if self.wide && remaining <= UPLOAD_RECEIVE_WINDOW as usize {
            self.narrow();
        }
    }

    fn narrow(&mut self) {
        self.conn.set_receive_window(quinn::VarInt::from_u32(IDLE_RECEIVE_WINDOW));
        self.wide = false;
    }
}

impl Drop for UploadWindow<'_> {
    fn drop(&mut self) {
        if self.wide {
            self.narrow();
        }
    }
}

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
    /// Bounds the update vectors held in memory at once.
    pub uploads: Arc<Semaphore>,
    /// Bounds the model downloads in flight at once.
    pub downloads: Arc<Semaphore>,
    pub next_conn: AtomicU64,
    pub store: Arc<Store>,
    /// Wakes every live connection to check its certificate again (see [`crate::revocation`]).
    pub revocations: Arc<crate::revocation::Revocations>,
    /// Serves the connections of operators (ALPN `fedge-admin`).
    pub operators: OperatorService,
}

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
            match incoming.await {
                Ok(conn) => handle_connection(conn, shared, shutdown).await,
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

fn refuse(conn: &quinn::Connection, shared: &Shared, peer: String, reason: String) {
    tracing::warn!(%peer, %reason, "connection refused");
    conn.close(quinn::VarInt::from_u32(CLOSE_REFUSED), reason.as_bytes());
    let _ = shared.events.send(ServerEvent::Refused { peer, reason });
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

async fn serve_agent(
    conn: &quinn::Connection,
    shared: &Arc<Shared>,
    info: CertInfo,
    cert: Vec<u8>,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let agent = info.name.clone();
    let (mut send, mut recv) = tokio::time::timeout(HELLO_TIMEOUT, conn.accept_bi())
        .await
        .context("no control stream within the hello time-out")??;
    let hello: Hello = tokio::time::timeout(HELLO_TIMEOUT, wire::read_msg(&mut recv, limits::HELLO))
        .await
        .context("no hello within the time-out")??
        .context("control stream closed before the hello")?;
    if hello.protocol != PROTOCOL_VERSION {
        let reason =
            format!("protocol version {} is not supported; this server speaks {PROTOCOL_VERSION}", hello.protocol);
        let _ = wire::write_msg(
            &mut send,
            &ServerHello::Refused { protocol: PROTOCOL_VERSION, reason: reason.clone() },
            limits::HELLO,
        )
        .await;
        let _ = send.finish();
        tokio::time::sleep(Duration::from_millis(100)).await;
        refuse(conn, shared, agent, reason.clone());
        anyhow::bail!(reason);
    }
    wire::write_msg(
        &mut send,
        &ServerHello::Welcome {
            protocol: PROTOCOL_VERSION,
            agent: agent.clone(),
            server: concat!("fedge-server/", env!("CARGO_PKG_VERSION")).into(),
        },
        limits::HELLO,
    )
    .await?;
    let store = shared.store.clone();
    let (name, fp) = (agent.clone(), info.fingerprint.to_hex());
    let _ = tokio::task::spawn_blocking(move || store.upsert_agent_seen(&name, &fp, crate::clock::wall_ms())).await;

    let id = shared.next_conn.fetch_add(1, Ordering::Relaxed);
    let (tx, mut rx) = mpsc::channel::<Outbound>(64);
    shared.core.send(CoreMsg::Connected { agent: agent.clone(), conn: id, tx, cert }).await?;
    tracing::info!(%agent, remote = %conn.remote_address(), "agent joined");

    let uploads = tokio::spawn(read_uploads(conn.clone(), shared.clone(), agent.clone()));
    let liveness = tokio::spawn(watch_liveness(conn.clone(), shared.core.clone(), agent.clone(), id));
    let result: anyhow::Result<()> = async {
        loop {
            tokio::select! {
                m = wire::read_msg::<AgentMessage>(&mut recv, limits::CONTROL) => {
                    match m.context("control stream")? {
                        None => anyhow::bail!("agent closed its control stream"),
                        Some(AgentMessage::CheckIn(checkin)) => {
                            shared.core.send(CoreMsg::CheckIn { agent: agent.clone(), conn: id, checkin }).await?;
                        }
                        Some(AgentMessage::Abandon { round, reason }) => {
                            shared.core.send(CoreMsg::Abandon { agent: agent.clone(), round, reason }).await?;
                        }
                        Some(AgentMessage::SecAggAdvertise(keys)) => {
                            shared.core.send(CoreMsg::SecAggAdvertise { agent: agent.clone(), keys }).await?;
                        }
                        Some(AgentMessage::SecAggShares { round, shares }) => {
                            shared.core.send(CoreMsg::SecAggShares { agent: agent.clone(), round, shares }).await?;
                        }
                        Some(AgentMessage::SecAggReceipt(receipt)) => {
                            shared.core.send(CoreMsg::SecAggReceipt { agent: agent.clone(), receipt }).await?;
                        }
                        Some(AgentMessage::SecAggSurvivorSignature(signature)) => {
                            let m = CoreMsg::SecAggSurvivorSignature { agent: agent.clone(), signature };
                            shared.core.send(m).await?;
                        }
                        Some(AgentMessage::SecAggUnmask(response)) => {
                            shared.core.send(CoreMsg::SecAggUnmask { agent: agent.clone(), response }).await?;
                        }
                    }
                }
                out = rx.recv() => match out {
                    Some(Outbound::Msg(m)) => wire::write_msg(&mut send, &m, limits::CONTROL).await?,
                    Some(Outbound::Frame(frame)) => wire::write_frame(&mut send, frame).await?,
                    Some(Outbound::Blob(header, body)) => {
                        tokio::spawn(send_download(conn.clone(), shared.downloads.clone(), header, body));
                    }
                    Some(Outbound::Close(reason)) => {
                        let _ = wire::write_msg(&mut send, &ServerMessage::Bye { reason: reason.clone() }, limits::CONTROL).await;
                        conn.close(quinn::VarInt::from_u32(0), reason.as_bytes());
                        anyhow::bail!(reason);
                    }
                    None => anyhow::bail!("server core stopped"),
                },
                // An agent's liveness probe (fedge_agent::liveness): nothing to do but take it off the buffer.
                d = conn.read_datagram() => { d.context("connection")?; }
                e = conn.closed() => anyhow::bail!("connection closed: {e}"),
                _ = shutdown.changed() => anyhow::bail!("server shutting down"),
            }
        }
    }
    .await;
    uploads.abort();
    liveness.abort();
    let _ = shared.core.send(CoreMsg::Disconnected { agent, conn: id }).await;
    result
}

/// Reads update blobs from the agent's unidirectional streams and hands complete, checked vectors to the core.
async fn read_uploads(conn: quinn::Connection, shared: Arc<Shared>, agent: String) {
    // One upload at a time per connection: a peer that opens many upload streams and stalls them holds at most one
    // of the shared upload permits, so it cannot starve the honest agents' uploads.
    let one_at_a_time = Arc::new(Semaphore::new(1));
    loop {
        let mut recv = match conn.accept_uni().await {
            Ok(r) => r,
            Err(_) => return,
        };
        let shared = shared.clone();
        let agent = agent.clone();
        let conn = conn.clone();
        let one_at_a_time = one_at_a_time.clone();
        tokio::spawn(async move {
            if let Err(e) = read_upload(&conn, &mut recv, &shared, &agent, &one_at_a_time).await {
                tracing::warn!(%agent, reason = %format!("{e:#}"), "update refused");
                if e.downcast_ref::<ProtocolViolation>().is_some() {
                    conn.close(quinn::VarInt::from_u32(CLOSE_PROTOCOL), format!("{e:#}").as_bytes());
                }
            }
        });
    }
}

#[derive(Debug, thiserror::Error)]
#[error("protocol violation: {0}")]
struct ProtocolViolation(String);

/// Sends a blob (a model's weights or graph) to an agent under one of the `max_concurrent_downloads` permits, held
/// until the agent has acknowledged every byte, or for at most the time an upload of that size may take: an agent
/// that stops reading slows only its own download, never the others'.
async fn send_download(
    conn: quinn::Connection,
    downloads: Arc<Semaphore>,
    header: protocol::BlobHeader,
    body: Arc<Vec<u8>>,
) {
    let permit = downloads.acquire_owned().await;
    let limit = upload_time_limit(header.len);
    let sending = tokio::spawn(async move {
        if let Err(e) = wire::send_blob_acked(&conn, &header, wire::shared_bytes(body)).await {
            tracing::debug!(error = %e, "blob send failed");
        }
    });
    // On time-out the send goes on without the permit (dropping the handle does not stop the task).
    let _ = tokio::time::timeout(limit, sending).await;
    drop(permit);
}

/// The time an upload's body may take once it holds a permit: 30 s plus 64 KiB/s for its length, so a stalled
/// upload cannot hold a permit for ever.
fn upload_time_limit(len: u64) -> Duration {
    Duration::from_secs(30) + Duration::from_millis(len / 64)
}

async fn read_upload(
    conn: &quinn::Connection,
    recv: &mut quinn::RecvStream,
    shared: &Shared,
    agent: &str,
    one_at_a_time: &Semaphore,
) -> anyhow::Result<()> {
    let header = wire::read_blob_header(recv).await?;
    // A masked vector's header carries no example count or loss worth reading: they are under the masks.
    if let BlobKind::Masked { round, .. } = header.kind {
        let _mine = one_at_a_time.acquire().await?;
        return read_masked(conn, recv, shared, agent, &header, round).await;
    }
    let BlobKind::Update { round, examples, train_loss, holdout_accuracy, eval } = header.kind else {
        return Err(ProtocolViolation(format!("agents may only upload updates, not {:?}", header.kind)).into());
    };
    // A round that fine-tunes part of the model takes shorter updates: the coordinator checks the exact length of
    // the round's part; here only the bound of the whole model (what may be read into memory).
    let params = shared.params.load(Ordering::Relaxed);
    if header.len > params * 4 || !header.len.is_multiple_of(4) || header.len == 0 {
        return Err(ProtocolViolation(format!(
            "update of {} bytes; the model has {params} parameters (at most {} bytes, a multiple of 4)",
            header.len,
            params * 4
        ))
        .into());
    }
    let _mine = one_at_a_time.acquire().await?;
    let _permit = shared.uploads.acquire().await?;
    let mut window = UploadWindow::open(conn);
    // Straight from the stream's chunks into the f32 vector: no byte copy of the update is ever held. Non-finite
    // values are refused by the fold (which drops the agent from the round).
    let read = wire::read_words(recv, header.len, f32::from_le_bytes, |left| window.left(left));
    let delta = tokio::time::timeout(upload_time_limit(header.len), read)
        .await
        .map_err(|_| ProtocolViolation(format!("an update of {} bytes did not arrive in time", header.len)))??;
    tracing::debug!(agent, round, examples, train_loss, ?holdout_accuracy, "update received");
    shared.core.send(CoreMsg::Update { agent: agent.to_string(), round, examples, train_loss, eval, delta }).await?;
    Ok(())
}

/// Reads a masked vector (`[w, 3 counts, P]` little-endian `u32`) and hands it, with its memory permit, to the core.
async fn read_masked(
    conn: &quinn::Connection,
    recv: &mut quinn::RecvStream,
    shared: &Shared,
    agent: &str,
    header: &protocol::BlobHeader,
    round: u64,
) -> anyhow::Result<()> {
    // The weight, at most the secure round's counts (a private round carries none), the delta: at most the whole
    // model (a fine-tuning round masks only its part). The session checks the exact length.
    let params = shared.params.load(Ordering::Relaxed);
    let values = params + 1 + u64::from(fedge_shared::round_counts::SECURE_COUNTS);
    if header.len > values * 4 || header.len <= 4 || !header.len.is_multiple_of(4) {
        return Err(ProtocolViolation(format!(
            "masked vector of {} bytes; the model has {params} parameters, so at most {} bytes (a multiple of 4) \
             were expected",
            header.len,
            values * 4
        ))
        .into());
    }
    let permit = shared.uploads.clone().acquire_owned().await?;
    let mut window = UploadWindow::open(conn);
    let read = wire::read_words(recv, header.len, u32::from_le_bytes, |left| window.left(left));
    let masked = tokio::time::timeout(upload_time_limit(header.len), read)
        .await
        .map_err(|_| ProtocolViolation(format!("a masked vector of {} bytes did not arrive in time", header.len)))??;
    drop(window);
    tracing::debug!(agent, round, "masked vector received");
    let msg = CoreMsg::Masked { agent: agent.to_string(), round, masked, permit };
    shared.core.send(msg).await?;
    Ok(())
}
