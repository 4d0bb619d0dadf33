//! Framed messages and blobs over QUIC streams: the thin async shell around [`crate::codec`].
//!
//! A frame is a little-endian `u32` length and a codec-encoded message; a blob is a framed [`BlobHeader`] and
//! `len` raw bytes on a unidirectional stream of its own. Every read states its limit, checked before allocation.
//!
//! This module must never interpret what it moves: deciding what a message means is the caller's job.

use crate::codec::{self, CodecError, FRAME_HEADER};
use crate::model::Digest;
use crate::protocol::{BlobHeader, limits};
use serde::{Serialize, de::DeserializeOwned};

/// Errors moving frames and blobs.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("codec: {0}")]
    Codec(#[from] CodecError),
    #[error("stream closed in the middle of a frame")]
    Truncated,
    #[error("read: {0}")]
    Read(String),
    #[error("write: {0}")]
    Write(String),
    #[error("connection: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("blob of {len} bytes exceeds its limit of {limit} bytes")]
    BlobTooLarge { len: u64, limit: u64 },
    #[error("blob digest mismatch")]
    DigestMismatch,
    #[error("a blob of {0} bytes is not a whole number of 4-byte values")]
    Misaligned(u64),
}

/// Writes one frame.
pub async fn write_msg<T: Serialize>(send: &mut quinn::SendStream, msg: &T, limit: usize) -> Result<(), WireError> {
    let frame = codec::encode_frame(msg, limit)?;
    send.write_all(&frame).await.map_err(|e| WireError::Write(e.to_string()))
}

/// Encodes one frame once, to be written to many streams with [`write_frame`] (a broadcast): the bytes are
/// shared, not copied, by every stream that sends them.
pub fn shared_frame<T: Serialize>(msg: &T, limit: usize) -> Result<bytes::Bytes, WireError> {
    Ok(bytes::Bytes::from(codec::encode_frame(msg, limit)?))
}

/// Writes bytes as they are: a frame made by [`shared_frame`], or (part of) a blob's body.
pub async fn write_frame(send: &mut quinn::SendStream, frame: bytes::Bytes) -> Result<(), WireError> {
    send.write_chunk(frame).await.map_err(|e| WireError::Write(e.to_string()))
}

/// Reads one frame. `Ok(None)` when the stream finished cleanly before a new frame.
pub async fn read_msg<T: DeserializeOwned>(recv: &mut quinn::RecvStream, limit: usize) -> Result<Option<T>, WireError> {
    let mut header = [0u8; FRAME_HEADER];
    // Distinguish a clean end of stream (no byte of a new frame) from a truncated frame.
    let mut got = 0;
    while got < FRAME_HEADER {
        match recv.read(&mut header[got..]).await.map_err(|e| WireError::Read(e.to_string()))? {
            Some(n) => got += n,
            None if got == 0 => return Ok(None),
            None => return Err(WireError::Truncated),
        }
    }
    let len = codec::frame_len(header, limit)?;
    let mut body = vec![0u8; len];
    read_exact(recv, &mut body).await?;
    Ok(Some(codec::decode(&body, limit)?))
}

async fn read_exact(recv: &mut quinn::RecvStream, buf: &mut [u8]) -> Result<(), WireError> {
    recv.read_exact(buf).await.map_err(|e| match e {
        quinn::ReadExactError::FinishedEarly(_) => WireError::Truncated,
        quinn::ReadExactError::ReadError(e) => WireError::Read(e.to_string()),
    })
}

/// Opens a unidirectional stream and writes a blob's header; the caller writes the body (with [`write_frame`])
/// and then [`finish`]es the stream.
pub async fn open_blob(conn: &quinn::Connection, header: &BlobHeader) -> Result<quinn::SendStream, WireError> {
    let mut send = conn.open_uni().await?;
    write_msg(&mut send, header, limits::BLOB_HEADER).await?;
    Ok(send)
}

/// Finishes a stream opened with [`open_blob`]: the body is complete.
pub fn finish(send: &mut quinn::SendStream) -> Result<(), WireError> {
    send.finish().map_err(|e| WireError::Write(e.to_string()))
}

/// Sends a blob on a new unidirectional stream and finishes the stream.
pub async fn send_blob(conn: &quinn::Connection, header: &BlobHeader, body: &[u8]) -> Result<(), WireError> {
    let mut send = open_blob(conn, header).await?;
    send.write_all(body).await.map_err(|e| WireError::Write(e.to_string()))?;
    finish(&mut send)
}

/// Sends a blob whose body is shared (e.g. one version's weights going to every agent): quinn keeps a reference to
/// the bytes until they are acknowledged instead of copying them into each connection's send buffer.
pub async fn send_blob_shared(
    conn: &quinn::Connection,
    header: &BlobHeader,
    body: bytes::Bytes,
) -> Result<(), WireError> {
    let mut send = open_blob(conn, header).await?;
    write_frame(&mut send, body).await?;
    finish(&mut send)
}

/// Like [`send_blob_shared`], at a lower priority than the connection's other streams, and then waits until the
/// peer has acknowledged every byte of the blob (or stopped the stream, or the connection is lost).
pub async fn send_blob_acked(
    conn: &quinn::Connection,
    header: &BlobHeader,
    body: bytes::Bytes,
) -> Result<(), WireError> {
    let mut send = open_blob(conn, header).await?;
    // Below the control stream: a round's small messages (key broadcasts, shares) never wait behind a model.
    send.set_priority(-1).map_err(|e| WireError::Write(e.to_string()))?;
    write_frame(&mut send, body).await?;
    finish(&mut send)?;
    send.stopped().await.map_err(|e| WireError::Write(e.to_string()))?;
    Ok(())
}

/// Sends a blob whose body this caller owns: quinn takes the buffer itself instead of copying it into the
/// stream's send buffer, so the body exists once in memory while it is sent.
pub async fn send_blob_owned(conn: &quinn::Connection, header: &BlobHeader, body: Vec<u8>) -> Result<(), WireError> {
    send_blob_shared(conn, header, bytes::Bytes::from(body)).await
}

/// A `Bytes` view of shared bytes, without copying them.
pub fn shared_bytes(bytes: std::sync::Arc<Vec<u8>>) -> bytes::Bytes {
    struct Shared(std::sync::Arc<Vec<u8>>);
    impl AsRef<[u8]> for Shared {
        fn as_ref(&self) -> &[u8] {
            self.0.as_slice()
        }
    }
    bytes::Bytes::from_owner(Shared(bytes))
}

/// Reads a blob body of `len` bytes as little-endian 4-byte words straight from the stream's chunks, converting
/// each word with `word` as it arrives: the body is never held as bytes as well as words (half the memory of
/// reading the bytes and converting them afterwards). `len` must be a multiple of 4; a word may straddle chunks.
/// `remaining` is told how many bytes are still to come after each chunk (to adjust flow control, say).
pub async fn read_words<T>(
    recv: &mut quinn::RecvStream,
    len: u64,
    mut word: impl FnMut([u8; 4]) -> T,
    mut remaining_after: impl FnMut(usize),
) -> Result<Vec<T>, WireError> {
    let bytes = usize::try_from(len).map_err(|_| WireError::BlobTooLarge { len, limit: 0 })?;
    if bytes % 4 != 0 {
        return Err(WireError::Misaligned(len));
    }
    let mut out = Vec::with_capacity(bytes / 4);
    let mut carry = [0u8; 4];
    let mut carried = 0usize;
    let mut remaining = bytes;
    while remaining > 0 {
        let chunk = recv
            .read_chunk(remaining, true)
            .await
            .map_err(|e| WireError::Read(e.to_string()))?
            .ok_or(WireError::Truncated)?;
        let mut data: &[u8] = &chunk.bytes;
        remaining = remaining.saturating_sub(data.len());
        remaining_after(remaining);
        if carried > 0 {
            let take = (4 - carried).min(data.len());
            carry[carried..carried + take].copy_from_slice(&data[..take]);
            carried += take;
            data = &data[take..];
            if carried < 4 {
                continue;
            }
            out.push(word(carry));
        }
        let words = data.chunks_exact(4);
        let tail = words.remainder();
        out.extend(words.map(|c| word([c[0], c[1], c[2], c[3]])));
        carry[..tail.len()].copy_from_slice(tail);
        carried = tail.len();
    }
    Ok(out)
}

/// Reads a blob's header from a freshly accepted unidirectional stream.
pub async fn read_blob_header(recv: &mut quinn::RecvStream) -> Result<BlobHeader, WireError> {
    let header: BlobHeader = read_msg(recv, limits::BLOB_HEADER).await?.ok_or(WireError::Truncated)?;
    let limit = header.max_len();
    if header.len > limit {
        return Err(WireError::BlobTooLarge { len: header.len, limit });
    }
    Ok(header)
}

/// The most a blob's body buffer grows ahead of the bytes that arrived: a header that claims a large length costs
/// memory only as the data comes in.
pub const BLOB_READ_AHEAD: usize = 1 << 20;

/// Reads a blob's body (its header already read and its length vetted), checking the digest when given. The buffer
/// grows as data arrives (at most [`BLOB_READ_AHEAD`] ahead of it), never to the claimed length at once.
pub async fn read_blob_body(recv: &mut quinn::RecvStream, header: &BlobHeader) -> Result<Vec<u8>, WireError> {
    let len = usize::try_from(header.len).map_err(|_| WireError::BlobTooLarge { len: header.len, limit: 0 })?;
    let mut body = Vec::with_capacity(len.min(BLOB_READ_AHEAD));
    while body.len() < len {
        let start = body.len();
        let step = (len - start).min(BLOB_READ_AHEAD);
        body.resize(start + step, 0);
        read_exact(recv, &mut body[start..]).await?;
    }
    if let Some(d) = &header.digest
        && Digest::of(&body) != *d
    {
        return Err(WireError::DigestMismatch);
    }
    Ok(body)
}
