//! The server's UDP socket as quinn sees it, with at most `udp_send_batch` datagrams handed to the kernel in one
//! send (one GSO batch).
//!
//! quinn assembles each connection's outgoing datagrams in a buffer of that connection, as large as the largest
//! batch it has sent (up to ten datagrams, about 14 KB), and keeps that buffer for the connection's whole life:
//! after one model download, every connected agent costs the server 14 KB more while it idles (heaptrack: 14 MB of
//! the peak at 1,000 agents, 149 MB at 10,000). A smaller batch keeps less per connection and costs one send call
//! per batch: fewer datagrams per call is more calls for the same bytes (BENCHMARKS.md measures both).
//!
//! This module must never change what is sent or received, only how many datagrams go in one send call: it
//! forwards every call to the runtime's socket and only lowers [`AsyncUdpSocket::max_transmit_segments`].

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};
use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

/// The most datagrams quinn puts in one send (its `MAX_TRANSMIT_SEGMENTS`): a larger `udp_send_batch` changes
/// nothing.
pub const MAX_SEND_BATCH: usize = 10;

/// A UDP socket that sends at most `batch` datagrams per call.
pub struct SendBatch {
    inner: Arc<dyn AsyncUdpSocket>,
    batch: usize,
}

impl SendBatch {
    /// `inner` sending at most `batch` datagrams per call (at least one).
    pub fn new(inner: Arc<dyn AsyncUdpSocket>, batch: usize) -> SendBatch {
        SendBatch { inner, batch: batch.max(1) }
    }
}

impl fmt::Debug for SendBatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SendBatch").field("batch", &self.batch).field("inner", &self.inner).finish()
    }
}

impl AsyncUdpSocket for SendBatch {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        self.inner.try_send(transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        self.inner.poll_recv(cx, bufs, meta)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments().min(self.batch)
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

#[cfg(test)]
#[path = "send_batch/tests.rs"]
mod tests;
