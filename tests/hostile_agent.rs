//! Whole system under hostile input: a client holding a valid agent certificate sends oversized frames, garbage
//! after its hello, messages out of phase, update vectors of the wrong length, replays of an earlier round's
//! update, stalled uploads, and floods of connections and streams, while three honest agents train.
//!
//! Specification: the server stays up, its memory stays bounded, the honest agents' rounds complete, and every
//! hostile case is logged with its reason.

use fedge_agent::learner::{Learner, NoiseLearner};
use fedge_ctl::demo::{FederationSpec, LocalFederation};
use fedge_server::coordinator::CoordinatorConfig;
use fedge_server::service::ServerEvent;
use fedge_shared::delta_encoding::DeltaEncoding;
use fedge_shared::model::weights_to_bytes;
use fedge_shared::protocol::{
    self, AgentMessage, BlobHeader, BlobKind, Hello, PROTOCOL_VERSION, ServerHello, ServerMessage, limits,
};
use fedge_shared::tls::{self, Identity, Role};
use fedge_shared::wire;
use fedge_system_tests::{cohort_of, wait_server};
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const LAYERS: [usize; 3] = [32, 16, 4];

/// Every log line of the process, for checking that each hostile case is logged with its reason.
#[derive(Clone, Default)]
struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LogBuffer {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
    }
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn coordinator() -> CoordinatorConfig {
    CoordinatorConfig { seed: 1, round_timeout_ms: 20_000, retry_backoff_ms: 100, ..cohort_of(3) }
}

/// A QUIC client endpoint presenting `bundle`'s agent certificate.
fn endpoint(bundle: &Path) -> anyhow::Result<quinn::Endpoint> {
    let ca = tls::load_certs(&bundle.join(tls::files::CA_CERT))?;
    let identity = Identity::load_bundle(bundle)?;
    let cfg = tls::client_config(&ca, Some(&identity), protocol::ALPN_AGENT, Duration::from_secs(10))?;
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
    ep.set_default_client_config(cfg);
    Ok(ep)
}

/// Connects and completes the hello; returns the connection and its control stream.
async fn hello(
    ep: &quinn::Endpoint,
    server: SocketAddr,
) -> anyhow::Result<(quinn::Connection, quinn::SendStream, quinn::RecvStream)> {
    let conn = ep.connect(server, "localhost")?.await?;
    let (mut send, mut recv) = conn.open_bi().await?;
    wire::write_msg(&mut send, &Hello { protocol: PROTOCOL_VERSION, software: "hostile".into() }, limits::HELLO)
        .await?;
    let answer: Option<ServerHello> = wire::read_msg(&mut recv, limits::HELLO).await?;
    anyhow::ensure!(matches!(answer, Some(ServerHello::Welcome { .. })), "no welcome: {answer:?}");
    Ok((conn, send, recv))
}

/// Waits until the server closes `conn`, for at most a few seconds; returns the close reason.
async fn closed_by_server(conn: &quinn::Connection) -> anyhow::Result<String> {
    let e = tokio::time::timeout(Duration::from_secs(15), conn.closed()).await?;
    Ok(e.to_string())
}

fn update_header(round: u64, values: usize, encoding: DeltaEncoding, len: u64) -> BlobHeader {
    BlobHeader {
        kind: BlobKind::Update {
            round,
            values: values as u64,
            encoding,
            examples: 10,
            train_loss: 0.5,
            holdout_accuracy: None,
            eval: None,
        },
        len,
        digest: None,
    }
}

async fn send_update(conn: &quinn::Connection, round: u64, values: usize) -> anyhow::Result<()> {
    let body = weights_to_bytes(&vec![0.25f32; values]);
    wire::send_blob(conn, &update_header(round, values, DeltaEncoding::F32, body.len() as u64), &body).await?;
    Ok(())
}

async fn next_completed(events: &mut tokio::sync::broadcast::Receiver<ServerEvent>) -> anyhow::Result<u64> {
    wait_server(events, Duration::from_secs(60), |e| match e {
        ServerEvent::RoundCompleted(r) => Some(r.round),
        _ => None,
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_agent_with_a_valid_certificate_cannot_crash_stall_or_bloat_the_server() -> anyhow::Result<()> {
    let logs = LogBuffer::default();
    let writer = logs.clone();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("info,quinn=warn,rustls=warn"))
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .try_init();

    let params = fedge_shared::train::builder::mlp_param_count(&LAYERS);
    let learners: Vec<Box<dyn Learner>> =
        (0..3).map(|i| Box::new(NoiseLearner::new(40 + i, i, 0.01)) as Box<dyn Learner>).collect();
    let spec = FederationSpec {
        onnx: fedge_shared::train::builder::mlp(&LAYERS, 3),
        coordinator: coordinator(),
        rounds: None,
        evaluator: None,
    };
    let fed = LocalFederation::start(spec, learners).await?;
    let server = fed.server.local_addr;
    let mut events = fed.server.events();
    let first = next_completed(&mut events).await?;
    let rss_before = rss_kib();

    let bundle = tls::issue_bundle(&fed.pki(), "hostile", Role::Agent, 30)?;
    let ep = endpoint(&bundle)?;

    // 1. A frame whose length prefix claims 4 GiB right after the hello.
    let (conn, mut send, _recv) = hello(&ep, server).await?;
    send.write_all(&u32::MAX.to_le_bytes()).await?;
    let why = closed_by_server(&conn).await?;
    assert!(!why.is_empty());

    // 2. An oversized hello (over the 4 KiB hello limit).
    {
        let conn = ep.connect(server, "localhost")?.await?;
        let (mut send, _recv) = conn.open_bi().await?;
        send.write_all(&((limits::HELLO as u32) + 1).to_le_bytes()).await?;
        send.write_all(&vec![0u8; limits::HELLO + 1]).await?;
        closed_by_server(&conn).await?;
    }

    // 3. Garbage after the hello: a well-framed body that decodes as no message.
    let (conn, mut send, _recv) = hello(&ep, server).await?;
    let mut frame = 64u32.to_le_bytes().to_vec();
    frame.extend((0..64u8).map(|i| i.wrapping_mul(37).wrapping_add(200)));
    send.write_all(&frame).await?;
    closed_by_server(&conn).await?;

    // 4. A second hello where a control message is due (out of phase), on a fresh connection.
    let (conn, mut send, _recv) = hello(&ep, server).await?;
    wire::write_msg(&mut send, &Hello { protocol: PROTOCOL_VERSION, software: "again".into() }, limits::HELLO).await?;
    closed_by_server(&conn).await?;

    // 5. Out of phase without a check-in: an abandon of a round never joined, an update for a round it was never
    //    selected for; 6. a replay of the first completed round's update; 7. an update of the wrong length.
    let (conn, mut send, mut recv) = hello(&ep, server).await?;
    wire::write_msg(&mut send, &AgentMessage::Abandon { round: 999, reason: "hostile".into() }, limits::CONTROL)
        .await?;
    send_update(&conn, 999, params).await?;
    // The refusal reaches the agent, with its reason, and the connection stays open.
    let refused = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match wire::read_msg::<ServerMessage>(&mut recv, limits::CONTROL).await? {
                Some(ServerMessage::Refused { reason }) => return anyhow::Ok(reason),
                Some(_) => continue,
                None => anyhow::bail!("the control stream ended before the refusal"),
            }
        }
    })
    .await??;
    assert!(refused.contains("round") || refused.contains("selected"), "{refused}");
    send_update(&conn, first, params).await?;
    send_update(&conn, first + 1, params + 1).await?;
    let why = closed_by_server(&conn).await?;
    assert!(why.contains("update of"), "a wrong-length vector closes the connection as a protocol violation: {why}");
    // 7b. An 8-bit update of the right length whose block scale is not a number.
    let (conn, _send, _recv) = hello(&ep, server).await?;
    let mut body = DeltaEncoding::Int8.encode(&vec![0.25f32; params], &mut || 0.5);
    body[..4].copy_from_slice(&f32::NAN.to_le_bytes());
    wire::send_blob(&conn, &update_header(first + 1, params, DeltaEncoding::Int8, body.len() as u64), &body).await?;
    let why = closed_by_server(&conn).await?;
    assert!(why.contains("8-bit update"), "an unreadable 8-bit update closes the connection: {why}");

    // 8. An upload that claims a vector of the right length and then stalls; then a blob of a kind agents may not
    //    send. The staller has a certificate of its own: a new connection under the same name replaces the old one.
    let staller = endpoint(&tls::issue_bundle(&fed.pki(), "hostile-staller", Role::Agent, 30)?)?;
    let (conn, _send, _recv) = hello(&staller, server).await?;
    let mut stalled = vec![];
    // The server grants each connection only a few concurrent streams, so trying for eight may stop short.
    for _ in 0..8 {
        match tokio::time::timeout(Duration::from_millis(300), conn.open_uni()).await {
            Ok(Ok(mut s)) => {
                let _ = wire::write_msg(
                    &mut s,
                    &update_header(first + 1, params, DeltaEncoding::F32, params as u64 * 4),
                    limits::BLOB_HEADER,
                )
                .await;
                let _ = s.write_all(&[0u8; 16]).await;
                stalled.push(s);
            }
            _ => break,
        }
    }
    assert!(!stalled.is_empty(), "at least one stalled upload is open");
    let (conn2, _send2, _recv2) = hello(&ep, server).await?;
    let graph = BlobHeader { kind: BlobKind::Graph, len: 4, digest: None };
    wire::send_blob(&conn2, &graph, b"onnx").await?;
    closed_by_server(&conn2).await?;

    // 9. A flood: 40 connections at once, each opening every stream it may and writing junk on them.
    let mut flood = tokio::task::JoinSet::new();
    for i in 0..40u32 {
        let ep = ep.clone();
        flood.spawn(async move {
            let Ok(connecting) = ep.connect(server, "localhost") else { return };
            let Ok(Ok(conn)) = tokio::time::timeout(Duration::from_secs(10), connecting).await else { return };
            for _ in 0..4 {
                if let Ok(Ok((mut s, _r))) = tokio::time::timeout(Duration::from_millis(200), conn.open_bi()).await {
                    let _ = s.write_all(&i.to_le_bytes()).await;
                    let _ = s.write_all(&[0xAB; 512]).await;
                }
            }
            for _ in 0..16 {
                if let Ok(Ok(mut s)) = tokio::time::timeout(Duration::from_millis(200), conn.open_uni()).await {
                    let _ = s.write_all(&[0xCD; 256]).await;
                    let _ = s.finish();
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            conn.close(0u32.into(), b"done");
        });
    }
    while flood.join_next().await.is_some() {}

    // The honest agents' rounds go on, while the stalled uploads are still open (fresh events: rounds that
    // completed during the barrage do not count).
    let mut events = fed.server.events();
    let a = next_completed(&mut events).await?;
    let b = next_completed(&mut events).await?;
    assert!(b > a && a > first, "rounds complete after the barrage: {first}, {a}, {b}");
    let status = fed.server.status().await?;
    match conn.close_reason() {
        // The stalled uploads were still open while the honest rounds completed.
        None => {}
        // On a slow machine the two rounds can outlast the server's time limit for reading an upload, which then
        // closes the stalled connection: also what the server must do, so the rounds still count.
        Some(quinn::ConnectionError::ApplicationClosed(c))
            if String::from_utf8_lossy(&c.reason).contains("did not arrive in time") => {}
        other => panic!("the stalled connection ended for another reason: {other:?}"),
    }
    drop(stalled);
    drop(conn);

    let rss_after = rss_kib();
    let grown_mib = rss_after.saturating_sub(rss_before) / 1024;
    assert!(grown_mib < 200, "memory bounded: grew by {grown_mib} MiB ({rss_before} KiB -> {rss_after} KiB)");

    let text = logs.text();
    for (case, needle) in [
        ("oversized frame", "exceeds the limit"),
        ("garbage after the hello", "malformed message"),
        ("update for a round it was not in", "update refused"),
        ("replayed update", "update refused"),
        ("vector of the wrong length", "update of"),
        ("forbidden blob kind", "agents may only upload updates"),
    ] {
        assert!(text.contains(needle), "{case} is logged with its reason ({needle:?}); log:\n{text}");
    }
    if std::env::var("SHOW_LOG").is_ok() {
        eprintln!("{text}");
    }
    eprintln!("status after the barrage: {status:?}; memory {rss_before} KiB -> {rss_after} KiB");
    fed.stop().await?;
    Ok(())
}
