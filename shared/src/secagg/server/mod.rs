//! The server's side of one secure-aggregation round, as a sans-IO state machine:
//! advertise → share keys → receipts (see [`receipts`]) → masked input → consistency (survivors sign the survivor
//! set, see [`consistency`]) → unmask → the cohort's sum.
//!
//! The server holds one running wrapping sum of the masked vectors (plus, while an upload streams in, at most
//! `max_staged_uploads` staged vectors that are folded only once complete, or dropped), the agents' public keys,
//! relayed shares and revealed shares: O(P + n·k) memory, never n vectors of P. Its types make it impossible to
//! hold one agent's unmasked vector: masks are only ever removed from [`MaskedSum`], the private sum over all
//! survivors, and only in [`ServerSession::finish`], which consumes the session. A round that loses too many agents
//! aborts and outputs nothing.
//!
//! No sockets, clocks or randomness: the network layer calls in with messages and closes each phase at its
//! deadline. Every message is checked for round, sender, recipient and size.

use std::collections::{BTreeMap, BTreeSet};

use x25519_dalek::{PublicKey, StaticSecret};

mod consistency;
mod receipts;
pub mod recover;

use super::consistency::{SurvivorSet, SurvivorSignature};
use super::graph::NeighbourGraph;
use super::messages::{AdvertiseKeys, AgentRef, EncryptedShare, RevealedShare, UnmaskResponse};
use super::prg::{MaskSign, apply_masks_parallel};
use super::quant::{counts_of, dequantize_sum};
use super::shamir::{self, ShareValue};
use super::{SecAggError, SecAggParams, kdf};

/// How many uploads may be staged (streamed in chunks) at once by default.
pub const DEFAULT_MAX_STAGED_UPLOADS: usize = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Advertise,
    Shares,
    Receipts,
    Masked,
    Consistency,
    Unmask,
    Aborted,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::Advertise => "advertise",
            Phase::Shares => "shares",
            Phase::Receipts => "receipts",
            Phase::Masked => "masked-input",
            Phase::Consistency => "consistency",
            Phase::Unmask => "unmask",
            Phase::Aborted => "aborted",
        }
    }
}

/// The running wrapping sum of the survivors' masked vectors. Private: nothing outside this module can add to it,
/// remove masks from it or read it before unmasking is complete.
struct MaskedSum(Vec<u32>);

impl MaskedSum {
    fn fold(&mut self, offset: usize, chunk: &[u32]) {
        if let Some(dst) = self.0.get_mut(offset..offset + chunk.len()) {
            dst.iter_mut().zip(chunk).for_each(|(s, &c)| *s = s.wrapping_add(c));
        }
    }
}

/// The unmasked sum of the survivors' quantized vectors `[Σ q(w), Σ counts, Σ q(w·Δ_1), ...]`, exactly: the weight
/// and the counts modulo 2^32, each delta coordinate modulo `2^word_bits` (reduced, so below it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuantizedSum {
    pub survivors: Vec<u32>,
    pub values: Vec<u32>,
}

/// The dequantized sum: `Σw` and `Σ w·Δ` over the survivors, and the exact sums of their counts. The weighted
/// average delta is `weighted_delta_sum / weight_sum`.
#[derive(Debug, Clone, PartialEq)]
pub struct AggregateSum {
    pub survivors: Vec<u32>,
    pub weight_sum: f64,
    pub weighted_delta_sum: Vec<f32>,
    /// `Σ c_i` for each of the round's counts, exactly.
    pub counts: Vec<u64>,
}

impl QuantizedSum {
    /// Turns the quantized sum into `Σw`, `Σ w·Δ` and the counts' sums.
    pub fn dequantize(&self, params: &SecAggParams) -> AggregateSum {
        let (weight_sum, weighted_delta_sum) = dequantize_sum(params, &self.values, self.survivors.len());
        let counts = counts_of(params, &self.values);
        AggregateSum { survivors: self.survivors.clone(), weight_sum, weighted_delta_sum, counts }
    }
}

/// The server's side of one round.
pub struct ServerSession {
    params: SecAggParams,
    round: u64,
    graph: NeighbourGraph,
    delta_len: usize,
    phase: Phase,
    max_staged: usize,
    unmask_threads: usize,
    /// Advertised keys; after `close_advertise` only U1's, after `close_shares` only U2's.
    keys: BTreeMap<u32, AdvertiseKeys>,
    u1: BTreeSet<u32>,
    shares_in: BTreeMap<u32, Vec<EncryptedShare>>,
    /// After `close_shares` the agents that shared; after `close_receipts` only those left in the round.
    u2: BTreeSet<u32>,
    /// Receipts: per agent, the neighbours whose shares to it were bad.
    receipts: BTreeMap<u32, BTreeSet<u32>>,
    sum: MaskedSum,
    staged: BTreeMap<u32, Vec<u32>>,
    u3: BTreeSet<u32>,
    dropped: BTreeSet<u32>,
    /// Survivors' signatures over the survivor set (consistency round).
    signatures: BTreeMap<u32, SurvivorSignature>,
    /// The survivors asked to unmask: signers with at least `t` signing neighbours.
    responders: BTreeSet<u32>,
    responded: BTreeSet<u32>,
    seed_shares: BTreeMap<u32, Vec<(u32, ShareValue)>>,
    key_shares: BTreeMap<u32, Vec<(u32, ShareValue)>>,
}

/// Removes, until none is left, every agent with fewer than `t` neighbours in the set.
fn prune(graph: &NeighbourGraph, set: &mut BTreeSet<u32>, t: usize) {
    loop {
        let weak: Vec<u32> = set
            .iter()
            .copied()
            .filter(|&a| graph.neighbours(a).map_or(0, |ns| ns.iter().filter(|n| set.contains(n)).count()) < t)
            .collect();
        if weak.is_empty() {
            return;
        }
        for a in weak {
            set.remove(&a);
        }
    }
}

impl ServerSession {
    /// Starts the server's side of `round` over `cohort` with the plan's graph seed, for deltas of `delta_len`
    /// values (masked vectors have `1 + params.counts + delta_len`).
    pub fn new(
        params: SecAggParams,
        round: u64,
        cohort: &[AgentRef],
        graph_seed: u64,
        delta_len: usize,
    ) -> Result<Self, SecAggError> {
        params.validate(cohort.len(), delta_len)?;
        let mut names = BTreeSet::new();
        if let Some(a) = cohort.iter().find(|a| !names.insert(a.name.as_str())) {
            return Err(SecAggError::RepeatedIdentity(a.name.clone()));
        }
        let indices: Vec<u32> = cohort.iter().map(|a| a.index).collect();
        let graph = NeighbourGraph::new(&indices, params.neighbours as usize, graph_seed)?;
        Ok(ServerSession {
            params,
            round,
            graph,
            delta_len,
            phase: Phase::Advertise,
            max_staged: DEFAULT_MAX_STAGED_UPLOADS,
            unmask_threads: 1,
            keys: BTreeMap::new(),
            u1: BTreeSet::new(),
            shares_in: BTreeMap::new(),
            u2: BTreeSet::new(),
            receipts: BTreeMap::new(),
            sum: MaskedSum(Vec::new()),
            staged: BTreeMap::new(),
            u3: BTreeSet::new(),
            dropped: BTreeSet::new(),
            signatures: BTreeMap::new(),
            responders: BTreeSet::new(),
            responded: BTreeSet::new(),
            seed_shares: BTreeMap::new(),
            key_shares: BTreeMap::new(),
        })
    }

    /// Sets how many uploads may be staged at once (each costs one vector of memory while it streams in).
    pub fn set_max_staged_uploads(&mut self, n: usize) {
        self.max_staged = n.max(1);
    }

    /// Sets how many threads remove the masks in [`Self::finish`] (default 1; the result is the same).
    pub fn set_unmask_threads(&mut self, n: usize) {
        self.unmask_threads = n.max(1);
    }

    /// The round's parameters.
    pub fn params(&self) -> &SecAggParams {
        &self.params
    }

    /// Length of a masked vector: the weight, the counts, the delta.
    pub fn vector_len(&self) -> usize {
        self.params.vector_len(self.delta_len)
    }

    /// True once the round has aborted (it then refuses every call).
    pub fn is_aborted(&self) -> bool {
        self.phase == Phase::Aborted
    }

    fn expect(&self, phase: Phase, call: &'static str) -> Result<(), SecAggError> {
        if self.phase != phase {
            return Err(SecAggError::OutOfPhase { call, phase: self.phase.name() });
        }
        Ok(())
    }

    fn check_round(&self, round: u64) -> Result<(), SecAggError> {
        if round != self.round {
            return Err(SecAggError::WrongRound { expected: self.round, got: round });
        }
        Ok(())
    }

    fn abort(&mut self, why: String) -> SecAggError {
        self.abort_with(SecAggError::Abort(why))
    }

    /// Ends the round with `err`, dropping every key, share and partial sum it held.
    fn abort_with(&mut self, err: SecAggError) -> SecAggError {
        self.phase = Phase::Aborted;
        self.keys.clear();
        self.shares_in.clear();
        self.staged.clear();
        self.sum = MaskedSum(Vec::new());
        self.seed_shares.clear();
        self.key_shares.clear();
        self.signatures.clear();
        tracing::warn!(round = self.round, "secure aggregation aborted: {err}");
        err
    }

    fn member_of(set: &BTreeSet<u32>, graph: &NeighbourGraph, agent: u32) -> Result<(), SecAggError> {
        if !graph.contains(agent) {
            return Err(SecAggError::UnknownAgent(agent));
        }
        if !set.contains(&agent) {
            return Err(SecAggError::NotParticipating(agent));
        }
        Ok(())
    }

    /// Phase 1: records agent `from`'s advertised keys (signatures are the peers' to check).
    pub fn on_advertise(&mut self, from: u32, msg: AdvertiseKeys) -> Result<(), SecAggError> {
        self.expect(Phase::Advertise, "on_advertise")?;
        self.check_round(msg.round)?;
        if !self.graph.contains(from) {
            return Err(SecAggError::UnknownAgent(from));
        }
        if msg.from != from {
            return Err(SecAggError::WrongSender { claimed: msg.from, actual: from });
        }
        msg.check_size()?;
        if self.keys.contains_key(&from) {
            return Err(SecAggError::Duplicate(from));
        }
        self.keys.insert(from, msg);
        Ok(())
    }

    /// Ends phase 1: keeps the agents that advertised and still have `t` such neighbours, and returns, per agent
    /// kept, the keys to relay to it: its own and those of its kept neighbours, in index order. An agent never
    /// receives the keys of agents it does not pair with, so the relay is O(k) per agent, not O(n). Aborts if none
    /// are left.
    pub fn close_advertise(&mut self) -> Result<BTreeMap<u32, Vec<AdvertiseKeys>>, SecAggError> {
        self.expect(Phase::Advertise, "close_advertise")?;
        let mut u1: BTreeSet<u32> = self.keys.keys().copied().collect();
        prune(&self.graph, &mut u1, self.params.threshold as usize);
        if u1.is_empty() {
            return Err(self.abort(format!("too few agents advertised keys ({})", self.keys.len())));
        }
        self.keys.retain(|a, _| u1.contains(a));
        let relay = u1
            .iter()
            .map(|&a| {
                let ns = self.graph.neighbours(a).unwrap_or_default();
                let keys =
                    self.keys.iter().filter(|(i, _)| **i == a || ns.contains(i)).map(|(_, k)| k.clone()).collect();
                (a, keys)
            })
            .collect();
        self.u1 = u1;
        self.phase = Phase::Shares;
        Ok(relay)
    }

    /// Phase 2: records agent `from`'s encrypted shares, which must address exactly its neighbours that survived
    /// phase 1.
    pub fn on_shares(&mut self, from: u32, shares: Vec<EncryptedShare>) -> Result<(), SecAggError> {
        self.expect(Phase::Shares, "on_shares")?;
        Self::member_of(&self.u1, &self.graph, from)?;
        if self.shares_in.contains_key(&from) {
            return Err(SecAggError::Duplicate(from));
        }
        let expected: BTreeSet<u32> =
            self.graph.neighbours(from).unwrap_or_default().iter().copied().filter(|n| self.u1.contains(n)).collect();
        let mut seen = BTreeSet::new();
        for s in &shares {
            self.check_round(s.round)?;
            if s.from != from {
                return Err(SecAggError::WrongSender { claimed: s.from, actual: from });
            }
            s.check_size()?;
            if !expected.contains(&s.to) {
                return Err(SecAggError::NotNeighbour { agent: from, peer: s.to });
            }
            if !seen.insert(s.to) {
                return Err(SecAggError::Duplicate(s.to));
            }
        }
        if seen != expected {
            return Err(SecAggError::Malformed(format!(
                "agent {from} sent {} shares for {} neighbours",
                seen.len(),
                expected.len()
            )));
        }
        self.shares_in.insert(from, shares);
        Ok(())
    }

    /// Ends phase 2: keeps the agents that shared and still have `t` such neighbours, and returns, per recipient
    /// among them, the shares addressed to it by the others; their receipts come next. Aborts if none are left.
    pub fn close_shares(&mut self) -> Result<BTreeMap<u32, Vec<EncryptedShare>>, SecAggError> {
        self.expect(Phase::Shares, "close_shares")?;
        let mut u2: BTreeSet<u32> = self.shares_in.keys().copied().collect();
        prune(&self.graph, &mut u2, self.params.threshold as usize);
        if u2.is_empty() {
            return Err(self.abort(format!("too few agents shared keys ({})", self.shares_in.len())));
        }
        let mut out: BTreeMap<u32, Vec<EncryptedShare>> = u2.iter().map(|&a| (a, Vec::new())).collect();
        for (from, shares) in std::mem::take(&mut self.shares_in) {
            if !u2.contains(&from) {
                continue;
            }
            for s in shares {
                if let Some(list) = out.get_mut(&s.to) {
                    list.push(s);
                }
            }
        }
        self.keys.retain(|a, _| u2.contains(a));
        self.u2 = u2;
        self.phase = Phase::Receipts;
        Ok(out)
    }

    /// Phase 3: folds a chunk of agent `from`'s masked vector, starting at value `chunk_offset`. A chunk that is
    /// the whole vector goes straight into the sum and completes the upload. Smaller chunks must arrive in order;
    /// they are staged (at most `max_staged_uploads` uploads at once) and folded by [`Self::finish_masked`].
    pub fn fold_masked(&mut self, from: u32, chunk_offset: usize, chunk: &[u32]) -> Result<(), SecAggError> {
        self.expect(Phase::Masked, "fold_masked")?;
        Self::member_of(&self.u2, &self.graph, from)?;
        if self.u3.contains(&from) {
            return Err(SecAggError::Duplicate(from));
        }
        let len = self.vector_len();
        let end = chunk_offset.checked_add(chunk.len()).ok_or(SecAggError::BadUpload(from))?;
        if end > len {
            return Err(SecAggError::BadUpload(from));
        }
        if chunk_offset == 0 && chunk.len() == len && !self.staged.contains_key(&from) {
            self.sum.fold(0, chunk);
            self.u3.insert(from);
            return Ok(());
        }
        if !self.staged.contains_key(&from) {
            if chunk_offset != 0 {
                return Err(SecAggError::BadUpload(from));
            }
            if self.staged.len() >= self.max_staged {
                return Err(SecAggError::TooManyUploads(self.max_staged));
            }
            self.staged.insert(from, Vec::with_capacity(len));
        }
        let buf = self.staged.get_mut(&from).ok_or(SecAggError::BadUpload(from))?;
        if buf.len() != chunk_offset {
            return Err(SecAggError::BadUpload(from));
        }
        buf.extend_from_slice(chunk);
        Ok(())
    }

    /// The 32-bit words of a whole masked vector on the wire ([`super::words`]): the round's word width decides.
    pub fn wire_words(&self) -> usize {
        (super::words::wire_len(&self.params, self.vector_len()) / 4) as usize
    }

    /// Phase 3: agent `from`'s whole masked vector as it came off the wire (little-endian 32-bit words of the
    /// packed form, [`super::words`]), checked for the round's length and padding and folded into the sum.
    /// Decoded block by block straight into the sum (no copy of the vector), after its length and padding are
    /// checked, so a refused vector leaves the sum untouched.
    pub fn fold_wire(&mut self, from: u32, words: &[u32]) -> Result<(), SecAggError> {
        self.expect(Phase::Masked, "fold_wire")?;
        Self::member_of(&self.u2, &self.graph, from)?;
        if self.u3.contains(&from) {
            return Err(SecAggError::Duplicate(from));
        }
        if self.staged.contains_key(&from) {
            return Err(SecAggError::BadUpload(from));
        }
        let len = self.vector_len();
        let sum = &mut self.sum;
        super::words::unpack_blocks(&self.params, len, words, |offset, block| sum.fold(offset, block))?;
        self.u3.insert(from);
        Ok(())
    }

    /// Phase 3: marks agent `from`'s upload complete. A complete staged upload is folded into the sum; an
    /// incomplete one is discarded (the agent counts as dropped) and reported as an error.
    pub fn finish_masked(&mut self, from: u32) -> Result<(), SecAggError> {
        self.expect(Phase::Masked, "finish_masked")?;
        if self.u3.contains(&from) {
            return Ok(());
        }
        let buf = self.staged.remove(&from).ok_or(SecAggError::BadUpload(from))?;
        if buf.len() != self.vector_len() {
            return Err(SecAggError::BadUpload(from));
        }
        self.sum.fold(0, &buf);
        self.u3.insert(from);
        Ok(())
    }

    /// Phase 3: discards a staged, broken upload (the agent counts as dropped unless it uploads again in full).
    pub fn abort_masked(&mut self, from: u32) {
        self.staged.remove(&from);
    }

    /// Ends phase 3: discards unfinished uploads and returns the survivor set for the survivors to sign. Aborts if
    /// any agent that shared keys has fewer than `t` surviving neighbours (its secrets could not be reconstructed).
    pub fn close_masked(&mut self) -> Result<SurvivorSet, SecAggError> {
        self.expect(Phase::Masked, "close_masked")?;
        self.staged.clear();
        let t = self.params.threshold as usize;
        let short =
            self.u2.iter().copied().find(|&a| {
                self.graph.neighbours(a).map_or(0, |ns| ns.iter().filter(|n| self.u3.contains(n)).count()) < t
            });
        if self.u3.is_empty() || short.is_some() {
            let why = match short {
                Some(a) => format!("agent {a} has fewer than {t} surviving neighbours"),
                None => "no masked input arrived".into(),
            };
            return Err(self.abort(why));
        }
        self.dropped = self.u2.difference(&self.u3).copied().collect();
        self.phase = Phase::Consistency;
        Ok(SurvivorSet { round: self.round, survivors: self.u3.iter().copied().collect() })
    }

    /// Phase 5: records agent `from`'s revealed shares, which must be exactly one per neighbour it masked with:
    /// seed shares for survivors, key shares for the dropped.
    pub fn on_unmask(&mut self, from: u32, resp: UnmaskResponse) -> Result<(), SecAggError> {
        self.expect(Phase::Unmask, "on_unmask")?;
        Self::member_of(&self.responders, &self.graph, from)?;
        self.check_round(resp.round)?;
        if resp.from != from {
            return Err(SecAggError::WrongSender { claimed: resp.from, actual: from });
        }
        if self.responded.contains(&from) {
            return Err(SecAggError::Duplicate(from));
        }
        let ns = self.graph.neighbours(from).unwrap_or_default();
        let expect_seed: BTreeSet<u32> = ns.iter().copied().filter(|n| self.u3.contains(n)).collect();
        let expect_key: BTreeSet<u32> = ns.iter().copied().filter(|n| self.dropped.contains(n)).collect();
        // A responder may lack the shares of a neighbour whose share to it was garbage: a subset is fine.
        let check = |list: &[RevealedShare], expected: &BTreeSet<u32>| -> Result<(), SecAggError> {
            let got: BTreeSet<u32> = list.iter().map(|s| s.owner).collect();
            if got.len() != list.len() || !got.is_subset(expected) {
                return Err(SecAggError::Malformed(format!("agent {from} revealed shares for the wrong agents")));
            }
            if list.iter().any(|s| s.value.0.iter().any(|&y| y >= shamir::MODULUS)) {
                return Err(SecAggError::Malformed(format!("agent {from} revealed a share outside the field")));
            }
            Ok(())
        };
        check(&resp.seed_shares, &expect_seed)?;
        check(&resp.key_shares, &expect_key)?;
        for s in resp.seed_shares {
            self.seed_shares.entry(s.owner).or_default().push((from, s.value));
        }
        for s in resp.key_shares {
            self.key_shares.entry(s.owner).or_default().push((from, s.value));
        }
        self.responded.insert(from);
        Ok(())
    }

    /// Ends phase 5 and the round: reconstructs the survivors' self-mask seeds and the dropped agents' mask keys,
    /// removes their masks from the running sum and returns the exact quantized sum. A secret whose first `t`
    /// shares do not match what its owner advertised is reconstructed from other `t`-subsets ([`recover`]), so one
    /// agent revealing garbage does not abort the round. Aborts (outputs nothing) if any secret has fewer than `t`
    /// revealed shares or no subset within the budget matches.
    pub fn finish_quantized(mut self) -> Result<QuantizedSum, SecAggError> {
        self.expect(Phase::Unmask, "finish")?;
        let t = self.params.threshold as usize;
        let survivors: Vec<u32> = self.u3.iter().copied().collect();
        let mut masks = Vec::new();
        for &j in &survivors {
            let shares = self.seed_shares.get(&j).map(Vec::as_slice).unwrap_or_default();
            if shares.len() < t {
                return Err(self.too_few_shares(j, shares.len(), "seed"));
            }
            let advertised = self.keys.get(&j).ok_or(SecAggError::ReconstructionMismatch(j))?;
            let commitment = advertised.seed_commitment;
            let round = self.round;
            let seed = recover::reconstruct_checked(shares, t, |s| kdf::seed_commitment(round, j, s) == commitment)
                .ok_or(SecAggError::ReconstructionMismatch(j))?;
            masks.push((kdf::self_mask_key(self.round, j, &seed), MaskSign::Sub));
        }
        let dropped: Vec<u32> = self.dropped.iter().copied().collect();
        for j in dropped {
            let shares = self.key_shares.get(&j).map(Vec::as_slice).unwrap_or_default();
            if shares.len() < t {
                return Err(self.too_few_shares(j, shares.len(), "mask key"));
            }
            let advertised = self.keys.get(&j).ok_or(SecAggError::ReconstructionMismatch(j))?;
            let mask_pk = advertised.mask_pk;
            let secret = recover::reconstruct_checked(shares, t, |s| {
                PublicKey::from(&StaticSecret::from(*s)).to_bytes() == mask_pk
            })
            .ok_or(SecAggError::ReconstructionMismatch(j))?;
            let sk = StaticSecret::from(secret);
            let ns = self.graph.neighbours(j).unwrap_or_default();
            for &i in ns.iter().filter(|i| self.u3.contains(i)) {
                let pk = self.keys.get(&i).map(|k| PublicKey::from(k.mask_pk)).ok_or(SecAggError::UnknownAgent(i))?;
                let shared = sk.diffie_hellman(&pk);
                if !shared.was_contributory() {
                    return Err(SecAggError::WeakKey(i));
                }
                let key = kdf::pairwise_mask_key(self.round, i, j, shared.as_bytes());
                masks.push((key, MaskSign::pairwise(i, j).inverse()));
            }
        }
        // All masks come off in one pass over the sum.
        apply_masks_parallel(&masks, &mut self.sum.0, self.unmask_threads);
        // The delta's words are modulo 2^word_bits: the high bits of the u32 sum are the agents' (unsent) high
        // mask bits, which cancel only modulo 2^32 when the agents sent them.
        let word_max = self.params.word_max();
        let header = 1 + self.params.counts as usize;
        self.sum.0.iter_mut().skip(header).for_each(|v| *v &= word_max);
        Ok(QuantizedSum { survivors, values: std::mem::take(&mut self.sum.0) })
    }

    /// Aborts because only `revealed` shares of agent `j`'s `secret` came back: too many of its neighbours dropped
    /// before answering, or some that vouched for its shares in their receipts withheld them.
    fn too_few_shares(&mut self, j: u32, revealed: usize, secret: &str) -> SecAggError {
        let t = self.params.threshold as usize;
        let answered =
            self.graph.neighbours(j).unwrap_or_default().iter().filter(|n| self.responded.contains(n)).count();
        self.abort(format!(
            "only {revealed} shares of agent {j}'s {secret} came back from {answered} answering neighbours, {t} needed"
        ))
    }

    /// Ends the round: the dequantized `Σw` and `Σ w·Δ` over the survivors, refused when it is not a sum they
    /// could have produced ([`super::bounds`]).
    pub fn finish(self) -> Result<AggregateSum, SecAggError> {
        let params = self.params.clone();
        let cohort = self.graph.members().len();
        let sum = self.finish_quantized()?.dequantize(&params);
        super::bounds::check(&params, cohort, &sum)?;
        Ok(sum)
    }
}
