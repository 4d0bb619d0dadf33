//! Test harness for secure aggregation: a cohort of agents with ECDSA P-256 certificate keys (ring), and a driver
//! that runs one whole round between `ClientSession`s and a `ServerSession` in memory, with drop-outs at chosen
//! phases, returning the server's output next to the plain sum of the survivors' quantized vectors.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;

use fedge_shared::secagg::words::Packer;
use fedge_shared::secagg::{
    AgentRef, ClientSession, EcdsaP256Signer, PeerKeyTable, QuantizedInput, QuantizedSum, SecAggError, SecAggParams,
    ServerSession,
};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

/// The round context every honest agent of these cohorts signs (the digest of the model and settings they share).
pub const CONTEXT: [u8; 32] = [0xC0; 32];

/// ECDSA keys are slow to make; tests share one set.
fn signers() -> &'static Vec<EcdsaP256Signer> {
    static S: OnceLock<Vec<EcdsaP256Signer>> = OnceLock::new();
    S.get_or_init(|| (0..128).map(|_| EcdsaP256Signer::generate().unwrap().0).collect())
}

/// A cohort of `n` agents with sparse, non-contiguous indices, their signers and the peers' key table.
pub struct Cohort {
    pub refs: Vec<AgentRef>,
    pub table: PeerKeyTable,
}

impl Cohort {
    pub fn new(n: usize) -> Self {
        assert!(n <= signers().len());
        let refs: Vec<AgentRef> =
            (0..n).map(|i| AgentRef { index: 3 * i as u32 + 5, name: format!("agent-{i}") }).collect();
        let mut table = PeerKeyTable::new();
        for (i, r) in refs.iter().enumerate() {
            table.insert(r.name.clone(), signers()[i].public_key());
        }
        Cohort { refs, table }
    }

    pub fn signer(&self, index: u32) -> &'static EcdsaP256Signer {
        let pos = self.refs.iter().position(|r| r.index == index).unwrap();
        &signers()[pos]
    }

    pub fn indices(&self) -> Vec<u32> {
        self.refs.iter().map(|r| r.index).collect()
    }
}

/// The phase after which an agent goes silent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum DropAt {
    /// Never advertises keys.
    Advertise,
    /// Advertises keys, never sends shares.
    Shares,
    /// Sends shares, never sends its receipt for the shares relayed to it.
    Receipt,
    /// Sends its receipt, never uploads its masked input.
    MaskedInput,
    /// Uploads, never signs the survivor set.
    Consistency,
    /// Signs the survivor set, never answers the unmask request.
    Unmask,
}

/// The result of one round: the server's output and the plain sum of the quantized vectors of the survivors the
/// server reported (or of nobody if the round aborted).
pub struct Outcome {
    pub result: Result<QuantizedSum, SecAggError>,
    pub plain: BTreeMap<u32, Vec<u32>>,
}

impl Outcome {
    pub fn expected_sum(&self, survivors: &[u32]) -> Vec<u32> {
        let len = self.plain.values().next().map_or(0, Vec::len);
        let mut sum = vec![0u32; len];
        for s in survivors {
            for (a, b) in sum.iter_mut().zip(&self.plain[s]) {
                *a = a.wrapping_add(*b);
            }
        }
        sum
    }

    /// [`Outcome::expected_sum`] as the server reports it under `params`: each delta coordinate modulo
    /// `2^word_bits`.
    pub fn expected_words(&self, params: &SecAggParams, survivors: &[u32]) -> Vec<u32> {
        let mut sum = self.expected_sum(survivors);
        sum.iter_mut().skip(1 + params.counts as usize).for_each(|v| *v &= params.word_max());
        sum
    }
}

/// Little-endian 32-bit words of wire bytes (a multiple of four), as the server's blob reader hands them over.
pub fn words_of(bytes: &[u8]) -> Vec<u32> {
    assert!(bytes.len().is_multiple_of(4));
    bytes.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

/// An agent's delta for the tests: arbitrary values, some beyond the clip.
pub fn delta_for(agent: u32, p: usize, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha20Rng::seed_from_u64(seed ^ (u64::from(agent) << 32));
    use rand::Rng;
    (0..p).map(|_| rng.gen_range(-10.0f32..10.0)).collect()
}

/// An agent's exact counts for the tests (`params.counts` of them): arbitrary values up to the cohort's limit, the
/// first agents' at the limit itself.
pub fn counts_for(agent: u32, k: u32, limit: u32, seed: u64) -> Vec<u32> {
    let mut rng = ChaCha20Rng::seed_from_u64(seed ^ (u64::from(agent) << 40) ^ 0xC0);
    use rand::Rng;
    (0..k).map(|j| if agent < 20 && j == 0 { limit } else { rng.gen_range(0..=limit) }).collect()
}

/// Runs one round of `cohort` with deltas of `p` values; agents in `drops` go silent after the given phase. Every
/// upload of an agent whose index is divisible by 4 is folded in three pieces; an agent whose index is 1 modulo 4
/// masks with `mask_stream` (chunks of 256 coordinates, folded one by one); the others mask and fold in one piece.
/// With words narrower than 32 bits every upload goes through the wire form instead: an agent whose index is odd
/// sends the stream's wire chunks, the others pack their masked vector, and the server unpacks and folds the words.
pub fn run_round(
    params: &SecAggParams,
    cohort: &Cohort,
    p: usize,
    drops: &BTreeMap<u32, DropAt>,
    seed: u64,
) -> Outcome {
    let round = 7 + seed;
    let graph_seed = seed.wrapping_mul(31) + 1;
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let mut server = ServerSession::new(params.clone(), round, &cohort.refs, graph_seed, p).unwrap();
    server.set_unmask_threads(1 + (seed % 3) as usize);
    let silent = |a: u32, phase: DropAt| drops.get(&a).is_some_and(|d| *d <= phase);
    let mut plain = BTreeMap::new();

    let mut clients = BTreeMap::new();
    for r in &cohort.refs {
        if silent(r.index, DropAt::Advertise) {
            continue;
        }
        let (c, adv) = ClientSession::new(
            params.clone(),
            round,
            r.index,
            &cohort.refs,
            graph_seed,
            CONTEXT,
            cohort.signer(r.index),
            &mut rng,
        )
        .unwrap();
        server.on_advertise(r.index, adv).unwrap();
        clients.insert(r.index, c);
    }
    let broadcast = match server.close_advertise() {
        Ok(b) => b,
        Err(e) => return Outcome { result: Err(e), plain },
    };
    let in_u1: BTreeSet<u32> = broadcast.keys().copied().collect();
    for (&i, c) in clients.iter_mut() {
        if !in_u1.contains(&i) || silent(i, DropAt::Shares) {
            continue;
        }
        let shares = c.on_keys(&broadcast[&i], &cohort.table, &mut rng).unwrap();
        server.on_shares(i, shares).unwrap();
    }
    let relayed = match server.close_shares() {
        Ok(r) => r,
        Err(e) => return Outcome { result: Err(e), plain },
    };
    for (&i, c) in clients.iter_mut() {
        let Some(mine) = relayed.get(&i) else { continue };
        let receipt = c.on_shares(mine).unwrap();
        assert!(receipt.bad.is_empty());
        if silent(i, DropAt::Receipt) {
            continue;
        }
        server.on_receipt(i, receipt).unwrap();
    }
    let mask_with = match server.close_receipts() {
        Ok(r) => r.mask_with,
        Err(e) => return Outcome { result: Err(e), plain },
    };
    for (&i, c) in clients.iter_mut() {
        let Some(mine) = mask_with.get(&i) else { continue };
        c.on_mask_with(mine).unwrap();
        if silent(i, DropAt::MaskedInput) {
            continue;
        }
        let (delta, examples) = (delta_for(i, p, seed), u64::from(i) * 37 % 1500);
        let limit = c.count_limit();
        let counts = counts_for(i, params.counts, limit, seed);
        c.set_counts(counts.clone()).unwrap();
        if params.word_bits < 32 {
            let q = QuantizedInput::with_counts(params, &delta, examples, &counts, limit, &mut rng.clone()).unwrap();
            plain.insert(i, q.as_slice().to_vec());
            let bytes: Vec<u8> = if i % 2 == 1 {
                let stream = c.mask_stream(delta, examples, &mut rng, 256).unwrap();
                let len = stream.wire_len();
                let bytes: Vec<u8> = stream.into_wire_chunks().flatten().collect();
                assert_eq!(bytes.len() as u64, len);
                bytes
            } else {
                let masked = c.mask(q).unwrap();
                let mut packer = Packer::new(params);
                let mut bytes = Vec::new();
                packer.push(&masked, &mut bytes);
                packer.finish(&mut bytes);
                bytes
            };
            assert_eq!(words_of(&bytes).len(), server.wire_words());
            server.fold_wire(i, &words_of(&bytes)).unwrap();
            continue;
        }
        if i % 4 == 1 {
            // The same draws as the stream's quantizer, for the plain sum.
            let q = QuantizedInput::with_counts(params, &delta, examples, &counts, limit, &mut rng.clone()).unwrap();
            plain.insert(i, q.as_slice().to_vec());
            let mut at = 0;
            for chunk in c.mask_stream(delta, examples, &mut rng, 256).unwrap() {
                server.fold_masked(i, at, &chunk).unwrap();
                at += chunk.len();
            }
            assert_eq!(at, params.vector_len(p));
            server.finish_masked(i).unwrap();
            continue;
        }
        let q = QuantizedInput::with_counts(params, &delta, examples, &counts, limit, &mut rng).unwrap();
        plain.insert(i, q.as_slice().to_vec());
        let masked = c.mask(q).unwrap();
        assert_eq!(masked.len(), params.vector_len(p));
        if i % 4 == 0 && masked.len() >= 3 {
            let cut1 = masked.len() / 3;
            let cut2 = 2 * masked.len() / 3;
            server.fold_masked(i, 0, &masked[..cut1]).unwrap();
            server.fold_masked(i, cut1, &masked[cut1..cut2]).unwrap();
            server.fold_masked(i, cut2, &masked[cut2..]).unwrap();
            server.finish_masked(i).unwrap();
        } else {
            server.fold_masked(i, 0, &masked).unwrap();
            server.finish_masked(i).unwrap();
        }
    }
    let set = match server.close_masked() {
        Ok(r) => r,
        Err(e) => return Outcome { result: Err(e), plain },
    };
    for &i in &set.survivors {
        if silent(i, DropAt::Consistency) {
            continue;
        }
        let sig = clients.get_mut(&i).unwrap().on_survivors(&set, cohort.signer(i)).unwrap();
        server.on_survivor_signature(i, sig).unwrap();
    }
    let requests = match server.close_consistency() {
        Ok(r) => r,
        Err(e) => return Outcome { result: Err(e), plain },
    };
    for (i, request) in requests {
        if silent(i, DropAt::Unmask) {
            continue;
        }
        let resp = clients.get_mut(&i).unwrap().on_unmask_request(&request, &cohort.table).unwrap();
        server.on_unmask(i, resp).unwrap();
    }
    Outcome { result: server.finish_quantized(), plain }
}
