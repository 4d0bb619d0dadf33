//! The send batch's contract over real loopback QUIC with mutual TLS: a download from an endpoint on a
//! [`SendBatch`] socket arrives byte for byte, and no send call carried more than the batch's datagrams.

use super::{MAX_SEND_BATCH, SendBatch};
use crate::net::test_pki::TestPki;
use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

/// The runtime's socket, recording how many datagrams each send call carried.
#[derive(Debug)]
struct Recording {
    inner: Arc<dyn AsyncUdpSocket>,
    datagrams_per_send: Mutex<Vec<usize>>,
    bytes: AtomicUsize,
}

impl AsyncUdpSocket for Recording {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }
    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        let len = transmit.contents.len();
        let datagrams = transmit.segment_size.map_or(1, |s| len.div_ceil(s));
        self.inner.try_send(transmit)?;
        self.datagrams_per_send.lock().unwrap().push(datagrams);
        self.bytes.fetch_add(len, Ordering::Relaxed);
        Ok(())
    }
    fn poll_recv(&self, cx: &mut Context, b: &mut [IoSliceMut<'_>], m: &mut [RecvMeta]) -> Poll<io::Result<usize>> {
        self.inner.poll_recv(cx, b, m)
    }
    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }
    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }
    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

/// Sends `len` bytes from a server endpoint whose socket is `SendBatch(batch)` over a recording socket to an agent,
/// and returns what the agent read, the datagrams of each send call and the most the runtime's socket can send in one.
async fn download(batch: usize, len: usize) -> (Vec<u8>, Vec<usize>, usize) {
    let pki = TestPki::new();
    let runtime = quinn::default_runtime().unwrap();
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let recording = Arc::new(Recording {
        inner: runtime.wrap_udp_socket(udp).unwrap(),
        datagrams_per_send: Mutex::new(Vec::new()),
        bytes: AtomicUsize::new(0),
    });
    let socket = Arc::new(SendBatch::new(recording.clone(), batch));
    let server_ep =
        quinn::Endpoint::new_with_abstract_socket(Default::default(), Some(pki.server_config()), socket, runtime)
            .unwrap();
    let agent_ep = pki.agent_endpoint();

    let addr = server_ep.local_addr().unwrap();
    let sent: Vec<u8> = (0..len).map(|i| (i * 7 + i / 251) as u8).collect();
    let payload = sent.clone();
    let (received, ()) = tokio::join!(
        async {
            let conn = agent_ep.connect(addr, "localhost").unwrap().await.unwrap();
            let mut recv = conn.accept_uni().await.unwrap();
            recv.read_to_end(len + 1).await.unwrap()
        },
        async {
            let conn = server_ep.accept().await.unwrap().await.unwrap();
            let mut send = conn.open_uni().await.unwrap();
            send.write_all(&payload).await.unwrap();
            send.finish().unwrap();
            send.stopped().await.ok();
        },
    );
    assert_eq!(received, sent, "the download changed on its way");
    assert!(recording.bytes.load(Ordering::Relaxed) > len, "the server's sends did not go through the socket");
    let per_send = recording.datagrams_per_send.lock().unwrap().clone();
    (received, per_send, recording.inner.max_transmit_segments())
}

#[tokio::test]
async fn a_download_arrives_whole_with_no_send_call_carrying_more_than_the_batch() {
    for batch in [1, 3] {
        let (received, per_send, _) = download(batch, 300_000).await;
        assert_eq!(received.len(), 300_000);
        let most = per_send.iter().copied().max().unwrap_or(0);
        assert!(most <= batch, "a send call carried {most} datagrams with a batch of {batch}");
        // 300 KB is about 250 datagrams: with a batch of one, as many send calls.
        assert!(per_send.len() >= 200 / batch, "{} send calls for 300 KB", per_send.len());
    }
    // The same download with quinn's own batch: where the socket can send several datagrams at once (GSO), some
    // call does, so the caps above are what held the batches down.
    let (_, per_send, can) = download(MAX_SEND_BATCH, 300_000).await;
    if can > 3 {
        let most = per_send.iter().copied().max().unwrap_or(0);
        assert!(most > 3, "no send call carried more than {most} datagrams although the socket can send {can}");
    }
}

#[test]
fn the_batch_is_at_least_one_datagram_and_never_above_what_the_socket_can_send() {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let _guard = runtime.enter();
    let quinn_runtime = quinn::default_runtime().unwrap();
    let inner = quinn_runtime.wrap_udp_socket(std::net::UdpSocket::bind("127.0.0.1:0").unwrap()).unwrap();
    let can = inner.max_transmit_segments();
    assert_eq!(SendBatch::new(inner.clone(), 0).max_transmit_segments(), 1);
    assert_eq!(SendBatch::new(inner.clone(), 1).max_transmit_segments(), 1);
    assert_eq!(SendBatch::new(inner.clone(), 3).max_transmit_segments(), can.min(3));
    assert_eq!(SendBatch::new(inner, MAX_SEND_BATCH * 10).max_transmit_segments(), can.min(MAX_SEND_BATCH * 10));
}
