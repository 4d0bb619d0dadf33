//! One agent's connection once it is authenticated: the hello (refusing another protocol version), the control
//! stream between the agent and the core (its messages tagged with the name from its certificate, so an agent can
//! only speak for itself), the core's outbound messages and blobs, and the connection's liveness.
//!
//! It decides nothing about rounds, and never panics on what the agent sends: the connection ends with a reason.

use super::blobs::{read_uploads, send_download};
use super::refusal::refuse;
use super::shared::Shared;
use crate::core_msg::{CoreMsg, Outbound};
use anyhow::Context;
use fedge_shared::protocol::{AgentMessage, Hello, PROTOCOL_VERSION, ServerHello, ServerMessage, limits};
use fedge_shared::tls::CertInfo;
use fedge_shared::wire;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

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

pub(super) async fn serve_agent(
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
                        Some(AgentMessage::Ready { round, model_version, examples }) => {
                            let m = CoreMsg::Ready { agent: agent.clone(), round, model_version, examples };
                            shared.core.send(m).await?;
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
                        tokio::spawn(send_download(conn.clone(), shared.downloads.clone(), *header, body));
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
