//! The receive window's contract over real loopback QUIC with the server's transport settings and mutual TLS: an
//! agent that holds no permit can send at most [`IDLE_RECEIVE_WINDOW`] ahead of the server's reads, an upload
//! read under an [`UploadWindow`] arrives whole, and after it the agent is left with no more credit than the idle
//! window, however large the upload was and however many came before it.

use super::{IDLE_RECEIVE_WINDOW, UPLOAD_RECEIVE_WINDOW, UploadWindow, upload_window_for};
use crate::net::test_pki::TestPki;
use std::time::Duration;

/// A server endpoint with the server's transport settings, and one agent connected to it.
struct Link {
    server: quinn::Connection,
    agent: quinn::Connection,
    _endpoints: (quinn::Endpoint, quinn::Endpoint),
    _pki: TestPki,
}

async fn link() -> Link {
    let pki = TestPki::new();
    let server_ep = quinn::Endpoint::server(pki.server_config(), "127.0.0.1:0".parse().unwrap()).unwrap();
    let agent_ep = pki.agent_endpoint();

    let addr = server_ep.local_addr().unwrap();
    let (agent, server) = tokio::join!(async { agent_ep.connect(addr, "localhost").unwrap().await.unwrap() }, async {
        server_ep.accept().await.unwrap().await.unwrap()
    },);
    Link { server, agent, _endpoints: (server_ep, agent_ep), _pki: pki }
}

/// How many bytes the agent can send on a new stream that the server never reads: the connection credit it holds.
async fn credit(agent: &quinn::Connection) -> usize {
    let mut send = agent.open_uni().await.unwrap();
    let chunk = vec![7u8; 1024];
    let mut sent = 0;
    while sent < 8 << 20 {
        match tokio::time::timeout(Duration::from_millis(300), send.write(&chunk)).await {
            Ok(Ok(n)) => sent += n,
            _ => break,
        }
    }
    sent
}

/// The agent sends `len` bytes on a stream; the server reads them under an [`UploadWindow`], as `net::blobs` reads
/// an upload that holds a permit. Returns the bytes the server read.
async fn upload(link: &Link, len: usize) -> usize {
    let agent = link.agent.clone();
    let writer = tokio::spawn(async move {
        let mut send = agent.open_uni().await.unwrap();
        send.write_all(&vec![1u8; len]).await.unwrap();
        send.finish().unwrap();
        send.stopped().await.ok();
    });
    let mut recv = link.server.accept_uni().await.unwrap();
    let mut window = UploadWindow::open(&link.server, len as u64);
    let mut read = 0;
    while read < len {
        window.left(len - read);
        let chunk = tokio::time::timeout(Duration::from_secs(20), recv.read_chunk(len - read, true))
            .await
            .expect("the upload stalled: its window did not let it through")
            .unwrap()
            .expect("the stream ended early");
        read += chunk.bytes.len();
    }
    drop(window);
    writer.await.unwrap();
    read
}

#[tokio::test]
async fn an_agent_without_a_permit_sends_at_most_the_idle_window() {
    let link = link().await;
    let sent = credit(&link.agent).await;
    assert!(sent <= IDLE_RECEIVE_WINDOW as usize, "{sent} bytes went ahead of any read");
    assert!(sent >= IDLE_RECEIVE_WINDOW as usize / 2, "only {sent} bytes could be sent: the probe measures nothing");
}

#[tokio::test]
async fn after_an_upload_the_agent_holds_no_more_credit_than_the_idle_window() {
    // A secure round's masked vector at n = 1,000, P = 1e5 is about 190 KB: with the window widened to the full
    // upload window, 1.3 MB of credit was left over after it, and the next round's upload came in unread.
    let link = link().await;
    assert_eq!(upload(&link, 190_000).await, 190_000);
    let left = credit(&link.agent).await;
    assert!(left <= IDLE_RECEIVE_WINDOW as usize, "{left} bytes of credit left after a 190 KB upload");
}

#[tokio::test]
async fn uploads_larger_than_the_upload_window_arrive_whole_and_leave_no_credit_behind() {
    let link = link().await;
    let big = UPLOAD_RECEIVE_WINDOW as usize * 2 + 12_345;
    assert_eq!(upload(&link, big).await, big);
    assert_eq!(upload(&link, 5_000).await, 5_000);
    assert_eq!(upload(&link, 300_000).await, 300_000);
    let left = credit(&link.agent).await;
    assert!(left <= IDLE_RECEIVE_WINDOW as usize, "{left} bytes of credit left after three uploads");
}

#[test]
fn the_window_is_the_upload_between_the_idle_and_the_upload_window() {
    assert_eq!(upload_window_for(0), IDLE_RECEIVE_WINDOW);
    assert_eq!(upload_window_for(u64::from(IDLE_RECEIVE_WINDOW) - 1), IDLE_RECEIVE_WINDOW);
    assert_eq!(upload_window_for(190_000), 190_000);
    assert_eq!(upload_window_for(u64::MAX), UPLOAD_RECEIVE_WINDOW);
}
