//! The agent's blob streams: updates and masked vectors read from its unidirectional streams under permits of the
//! upload budget (`super::upload_budget`; one upload at a time per connection, with a widened receive window and a
//! time limit), checked against the model's size and handed to the core; and model blobs sent under the
//! `max_concurrent_downloads` permits.
//!
//! A masked vector's permit travels with it until the core has folded it. This module must never read more than the
//! model's size into memory, nor panic on what a peer sends: a violation closes the connection.

use super::receive_window::UploadWindow;
use super::refusal::{CLOSE_PROTOCOL, ProtocolViolation};
use super::shared::Shared;
use crate::core_msg::CoreMsg;
use fedge_shared::delta_encoding::DeltaEncoding;
use fedge_shared::protocol::{self, BlobKind};
use fedge_shared::wire;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::Semaphore;

/// Reads update blobs from the agent's unidirectional streams and hands complete, checked vectors to the core.
pub(super) async fn read_uploads(conn: quinn::Connection, shared: Arc<Shared>, agent: String) {
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

/// Sends a blob (a model's weights or graph) to an agent under one of the `max_concurrent_downloads` permits, held
/// until the agent has acknowledged every byte, or for at most the time an upload of that size may take: an agent
/// that stops reading slows only its own download, never the others'.
pub(super) async fn send_download(
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
    let BlobKind::Update { round, values, encoding, examples, train_loss, holdout_accuracy, eval } = header.kind else {
        return Err(ProtocolViolation(format!("agents may only upload updates, not {:?}", header.kind)).into());
    };
    // A round that fine-tunes part of the model takes shorter updates: the coordinator checks the exact length of
    // the round's part; here only the bound of the whole model (what may be read into memory).
    let params = shared.params.load(Ordering::Relaxed);
    // The count is checked against the model before any length is computed from it.
    let expected = if values > params { u64::MAX } else { encoding.encoded_len(values as usize) as u64 };
    if values > params || values == 0 || header.len != expected {
        return Err(ProtocolViolation(format!(
            "an update of {values} values in {encoding:?} takes {expected} bytes, this one has {}; the model has \
             {params} parameters",
            header.len
        ))
        .into());
    }
    let _mine = one_at_a_time.acquire().await?;
    let _permit = shared.uploads.admit(header.len).await?;
    let mut window = UploadWindow::open(conn, header.len);
    // Straight from the stream's chunks into the f32 vector: no byte copy of the update is ever held. Non-finite
    // values are refused by the fold (which drops the agent from the round).
    let too_late = || ProtocolViolation(format!("an update of {} bytes did not arrive in time", header.len));
    let delta = match encoding {
        DeltaEncoding::F32 => {
            let read = wire::read_words(recv, header.len, f32::from_le_bytes, |left| window.left(left));
            tokio::time::timeout(upload_time_limit(header.len), read).await.map_err(|_| too_late())??
        }
        DeltaEncoding::Int8 => {
            // A quarter of the f32 form: read as bytes, then decoded into the f32 vector the fold takes.
            let read = wire::read_words(recv, header.len, |w| w, |left| window.left(left));
            let words = tokio::time::timeout(upload_time_limit(header.len), read).await.map_err(|_| too_late())??;
            encoding
                .decode(words.as_flattened(), values as usize)
                .map_err(|e| ProtocolViolation(format!("an 8-bit update that cannot be read: {e}")))?
        }
    };
    tracing::debug!(agent, round, examples, train_loss, ?holdout_accuracy, "update received");
    shared.core.send(CoreMsg::Update { agent: agent.to_string(), round, examples, train_loss, eval, delta }).await?;
    Ok(())
}

/// Reads a masked vector (`[w, counts]` little-endian `u32`, then `P` coordinates packed in the round's word width,
/// padded to whole `u32` words) as little-endian words and hands it, with its memory permit, to the core, where the
/// round's session unpacks it and checks its exact length for the round's width.
async fn read_masked(
    conn: &quinn::Connection,
    recv: &mut quinn::RecvStream,
    shared: &Shared,
    agent: &str,
    header: &protocol::BlobHeader,
    round: u64,
) -> anyhow::Result<()> {
    // The weight, at most the secure round's counts (a private round carries none), the delta: at most the whole
    // model (a fine-tuning round masks only its part), in 32-bit words at most. The session checks the exact length
    // for the round's word width.
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
    let permit = shared.uploads.admit(header.len).await?;
    let mut window = UploadWindow::open(conn, header.len);
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
