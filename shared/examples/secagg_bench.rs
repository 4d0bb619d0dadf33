//! Benchmark of secure aggregation (SecAgg+): per-agent compute and bytes sent, server folding and unmasking time
//! with 0% and 10% drop-outs, and the mask expansion rate, for cohorts of n agents and deltas of P values.
//!
//! Run: `cargo run --release -p fedge-shared --example secagg_bench [-- --quick | --n 10,50 --p 100000 --threads 2]`
//!
//! Every agent runs the whole protocol in this one process (ECDSA-signed keys, encrypted Shamir shares, a real
//! quantized and masked delta, unmask answers), one after the other; the per-agent figures are averages over the
//! agents, and the server's sum is checked at the end.

use std::time::{Duration, Instant};

use fedge_shared::codec;
use fedge_shared::secagg::prg::{MaskSign, apply_mask, apply_masks};
use fedge_shared::secagg::{AgentRef, ClientSession, EcdsaP256Signer, PeerKeyTable, SecAggParams, ServerSession};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

/// The round context every agent signs (in fedge, the digest of the round plan they share).
const CONTEXT: [u8; 32] = [0xC0; 32];

struct Figures {
    n: usize,
    p: usize,
    k: usize,
    t: u32,
    keys_ms: f64,
    mask_ms: f64,
    consistency_ms: f64,
    consistency_bytes: f64,
    unmask_ms: f64,
    sent_bytes: f64,
    upload_bytes: usize,
    fold_gbps: f64,
    finish_ms: f64,
    dropped: usize,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// One round with `drop` agents silent after sharing keys.
fn round(
    n: usize,
    p: usize,
    drop: usize,
    threads: usize,
    signers: &[EcdsaP256Signer],
    table: &PeerKeyTable,
    seed: u64,
) -> Figures {
    let params = SecAggParams::default_for(n);
    let refs: Vec<AgentRef> = (0..n as u32).map(|i| AgentRef { index: i, name: format!("agent-{i}") }).collect();
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let round_id = 1;
    let graph_seed = seed;
    let mut server = ServerSession::new(params.clone(), round_id, &refs, graph_seed, p).expect("valid parameters");
    server.set_unmask_threads(threads);
    let mut clients = Vec::with_capacity(n);
    let mut key_time = vec![Duration::ZERO; n];
    let mut sent = vec![0usize; n];
    for r in &refs {
        let i = r.index as usize;
        let start = Instant::now();
        let (c, adv) =
            ClientSession::new(params.clone(), round_id, r.index, &refs, graph_seed, CONTEXT, &signers[i], &mut rng)
                .expect("session");
        key_time[i] += start.elapsed();
        sent[i] += codec::encode(&adv).expect("encode").len();
        server.on_advertise(r.index, adv).expect("advertise");
        clients.push(c);
    }
    let broadcast = server.close_advertise().expect("enough agents");
    for (i, c) in clients.iter_mut().enumerate() {
        let start = Instant::now();
        let shares = c.on_keys(&broadcast[&(i as u32)], table, &mut rng).expect("keys");
        key_time[i] += start.elapsed();
        sent[i] += codec::encode(&shares).expect("encode").len();
        server.on_shares(i as u32, shares).expect("shares");
    }
    let relayed = server.close_shares().expect("enough agents");
    let silent: Vec<bool> = (0..n).map(|i| i >= n - drop).collect();
    let delta: Vec<f32> = (0..p).map(|j| ((j % 200) as f32 - 100.0) * 1e-3).collect();
    let mut mask_time = Vec::new();
    let mut fold_time = Duration::ZERO;
    let mut upload_bytes = 0;
    for (i, c) in clients.iter_mut().enumerate() {
        let start = Instant::now();
        let receipt = c.on_shares(&relayed[&(i as u32)]).expect("shares");
        key_time[i] += start.elapsed();
        server.on_receipt(i as u32, receipt).expect("receipt");
    }
    let mask_with = server.close_receipts().expect("enough agents").mask_with;
    for (i, c) in clients.iter_mut().enumerate() {
        let start = Instant::now();
        c.on_mask_with(&mask_with[&(i as u32)]).expect("mask with");
        key_time[i] += start.elapsed();
        if silent[i] {
            continue;
        }
        let start = Instant::now();
        let v = c.masked_input(&delta, 100, &mut rng).expect("masked input");
        mask_time.push(start.elapsed());
        upload_bytes = 4 * v.len();
        let start = Instant::now();
        server.fold_masked(i as u32, 0, &v).expect("fold");
        fold_time += start.elapsed();
        server.finish_masked(i as u32).expect("finish upload");
        sent[i] += 4 * (p + 1);
    }
    // The consistency round: every survivor signs the survivor set; the server relays neighbours' signatures in
    // the unmask requests, and each agent verifies them before revealing. Its cost is the signing, the verifying
    // (timed with the unmask answer) and the server's bookkeeping.
    let set = server.close_masked().expect("enough survivors");
    let mut consistency_time = Duration::ZERO;
    let mut consistency_bytes = 0usize;
    for &i in &set.survivors {
        let start = Instant::now();
        let sig = clients[i as usize].on_survivors(&set, &signers[i as usize]).expect("sign the survivor set");
        consistency_time += start.elapsed();
        let bytes = codec::encode(&sig).expect("encode").len();
        sent[i as usize] += bytes;
        consistency_bytes += bytes;
        server.on_survivor_signature(i, sig).expect("signature");
    }
    let start = Instant::now();
    let requests = server.close_consistency().expect("consistent survivors");
    let server_consistency = start.elapsed();
    let mut unmask_time = Duration::ZERO;
    for (i, request) in requests {
        consistency_bytes += codec::encode(&request.signatures).expect("encode").len();
        let verify = Instant::now();
        let resp = clients[i as usize].on_unmask_request(&request, table).expect("unmask");
        unmask_time += verify.elapsed();
        sent[i as usize] += codec::encode(&resp).expect("encode").len();
        server.on_unmask(i, resp).expect("unmask");
    }
    let start = Instant::now();
    let sum = server.finish_quantized().expect("finish");
    let finish_ms = ms(start.elapsed());
    let survivors = set.survivors.len();
    // Each agent has weight 100/1000 and the same delta: check the unmasked sum.
    let agg = sum.dequantize(&params);
    assert!((agg.weight_sum - 0.1 * survivors as f64).abs() < 1e-3 * survivors as f64, "{}", agg.weight_sum);
    let quantum = 2.0 * f64::from(params.clip) / params.max_level() as f64;
    for (got, d) in agg.weighted_delta_sum.iter().zip(&delta).step_by(997) {
        let want = 0.1 * f64::from(*d) * survivors as f64;
        assert!((f64::from(*got) - want).abs() < quantum * survivors as f64 + 1e-3, "{got} vs {want}");
    }
    let avg = |d: &[Duration]| d.iter().map(|d| ms(*d)).sum::<f64>() / d.len().max(1) as f64;
    let survivor_sent: Vec<usize> = set.survivors.iter().map(|&i| sent[i as usize]).collect();
    Figures {
        n,
        p,
        k: params.effective_neighbours(n),
        t: params.threshold,
        keys_ms: avg(&key_time),
        mask_ms: avg(&mask_time),
        consistency_ms: (ms(consistency_time) + ms(server_consistency)) / survivors as f64,
        consistency_bytes: consistency_bytes as f64 / survivors as f64,
        unmask_ms: ms(unmask_time) / survivors as f64,
        sent_bytes: survivor_sent.iter().sum::<usize>() as f64 / survivors as f64,
        upload_bytes,
        fold_gbps: (survivors * 4 * (p + 1)) as f64 / fold_time.as_secs_f64() / 1e9,
        finish_ms,
        dropped: drop,
    }
}

/// Keystream bytes added per second: one mask at a time, and `masks` masks fused in one pass.
fn expansion_rate(p: usize, masks: usize) -> (f64, f64) {
    let mut v = vec![0u32; p];
    let mut single = f64::MAX;
    let mut fused = f64::MAX;
    let keys: Vec<([u8; 32], MaskSign)> = (0..masks).map(|i| ([i as u8; 32], MaskSign::Add)).collect();
    for r in 0..3u8 {
        let start = Instant::now();
        apply_mask(&[r; 32], MaskSign::Add, &mut v);
        single = single.min(start.elapsed().as_secs_f64());
        let start = Instant::now();
        apply_masks(&keys, &mut v);
        fused = fused.min(start.elapsed().as_secs_f64());
    }
    ((4 * p) as f64 / single / 1e9, (4 * p * masks) as f64 / fused / 1e9)
}

fn list(args: &[String], flag: &str) -> Option<Vec<usize>> {
    let pos = args.iter().position(|a| a == flag)?;
    args.get(pos + 1).map(|s| s.split(',').filter_map(|x| x.parse().ok()).collect())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let ns = list(&args, "--n").unwrap_or(if quick { vec![10, 50] } else { vec![10, 50, 100, 500] });
    let ps = list(&args, "--p").unwrap_or(if quick { vec![10_000] } else { vec![100_000, 1_000_000] });
    let threads = list(&args, "--threads").and_then(|t| t.first().copied()).unwrap_or(1);
    println!("server unmasking threads: {threads}");
    let max_n = ns.iter().copied().max().unwrap_or(0);
    let signers: Vec<EcdsaP256Signer> = (0..max_n).map(|_| EcdsaP256Signer::generate().expect("keygen").0).collect();
    let mut table = PeerKeyTable::new();
    for (i, s) in signers.iter().enumerate() {
        table.insert(format!("agent-{i}"), s.public_key());
    }
    for &p in &ps {
        let (single, fused) = expansion_rate(p, 23);
        println!(
            "mask expansion (ChaCha20 keystream added to u32s), P = {p}: one mask {single:.2} GB/s, \
             23 masks fused {fused:.2} GB/s"
        );
    }
    println!();
    println!(
        "| n | P | k | t | agent keys+shares ms | agent mask ms | agent sign survivors ms | \
         agent verify+unmask ms | consistency bytes / agent | agent bytes sent | upload / 4P | server fold GB/s | \
         drop-outs | server unmask ms |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for &p in &ps {
        for &n in &ns {
            for drop in [0, n / 10] {
                let f = round(n, p, drop, threads, &signers, &table, 17 + n as u64);
                println!(
                    "| {} | {} | {} | {} | {:.2} | {:.1} | {:.3} | {:.3} | {:.0} | {:.0} | {:.4} | {:.2} | {} ({}%) | {:.1} |",
                    f.n,
                    f.p,
                    f.k,
                    f.t,
                    f.keys_ms,
                    f.mask_ms,
                    f.consistency_ms,
                    f.unmask_ms,
                    f.consistency_bytes,
                    f.sent_bytes,
                    f.sent_bytes / (4 * f.p) as f64,
                    f.fold_gbps,
                    f.dropped,
                    100 * f.dropped / f.n,
                    f.finish_ms,
                );
                assert_eq!(f.upload_bytes, 4 * (p + 1));
            }
        }
    }
}
