//! One agent's side of one secure-aggregation round, as a sans-IO state machine:
//! `new` (advertise keys) → `on_keys` (share keys) → `on_shares` (returns the receipt) → `on_mask_with` →
//! `masked_input` → `on_survivors` (sign the survivor set) → `on_unmask_request` → done.
//!
//! The agent never reveals, for one neighbour, both the share of its self-mask seed and the share of its mask key:
//! it signs exactly one survivor set and answers exactly one unmask request, for that set only, and only once at
//! least `t` of its own neighbours have signed the identical set (the consistency round, see
//! [`super::consistency`]). It refuses a request that lists an agent as both surviving and dropped, that
//! contradicts what the agent saw in earlier phases, or that leaves fewer than `t` of its own neighbours surviving.
//! It refuses to mask its input with fewer than `t` neighbours (the server could otherwise strip its masks), any key
//! whose signature does not verify, a neighbour whose signed round context (model, training settings, cohort)
//! differs from ours, a cohort that lists one identity (certificate name) in two slots, and any
//! message from another round or for another agent.
//!
//! No sockets, clocks or global randomness: the caller passes a cryptographic RNG into each step that needs one.
//! A step that returns an error leaves the session in the phase it was in.

use std::collections::{BTreeMap, BTreeSet};

use x25519_dalek::{PublicKey, StaticSecret};

use super::consistency::{self, SurvivorSet, SurvivorSignature};
use super::graph::NeighbourGraph;
use super::messages::{
    AdvertiseKeys, AgentRef, EncryptedShare, MaskWith, RevealedShare, ShareReceipt, UnmaskRequest, UnmaskResponse,
};
use super::prg::{MaskSign, apply_masks};
use super::quant::{QuantizedInput, Quantizer};
use super::shamir::{self, ShareValue};
use super::stream::MaskedStream;
use super::{KeySigner, PeerVerifier, SecAggError, SecAggParams, SecureRng, envelope, kdf};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    AwaitKeys,
    AwaitShares,
    AwaitMaskWith,
    ReadyForInput,
    AwaitSurvivors,
    AwaitUnmask,
    Done,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::AwaitKeys => "await-keys",
            Phase::AwaitShares => "await-shares",
            Phase::AwaitMaskWith => "await-mask-with",
            Phase::ReadyForInput => "ready-for-input",
            Phase::AwaitSurvivors => "await-survivors",
            Phase::AwaitUnmask => "await-unmask",
            Phase::Done => "done",
        }
    }
}

/// What we keep of a neighbour's advertised keys: the two agreements, each computed once.
struct PeerKeys {
    /// Our agreement on the encryption keys (seals and opens the shares we exchange).
    enc_shared: [u8; 32],
    /// The key of our pairwise mask (HKDF over our agreement on the mask keys).
    mask_key: [u8; 32],
}

/// One agent's side of one round.
pub struct ClientSession {
    params: SecAggParams,
    round: u64,
    me: u32,
    cohort: BTreeMap<u32, AgentRef>,
    neighbours: Vec<u32>,
    enc_sk: StaticSecret,
    mask_sk: StaticSecret,
    seed: [u8; 32],
    own: AdvertiseKeys,
    /// Neighbours whose signed keys we received (U1 ∩ N(me)).
    peers: BTreeMap<u32, PeerKeys>,
    /// The neighbours that shared with us and, once [`ClientSession::on_mask_with`] has run, that the server left
    /// in the round, which are exactly those we mask with; and the shares we hold of each: `None` for a neighbour
    /// whose share did not decrypt or lay outside the field (if the server keeps it, we mask with it all the same,
    /// from its signed keys, but can reveal nothing of its secrets).
    held: BTreeMap<u32, Option<(ShareValue, ShareValue)>>,
    /// The one survivor set we signed this round.
    signed: Option<Vec<u32>>,
    phase: Phase,
    /// The exact counts placed after the weight in our masked vector (see [`ClientSession::set_counts`]).
    counts: Vec<u32>,
}

fn agree(sk: &StaticSecret, pk: &PublicKey, peer: u32) -> Result<[u8; 32], SecAggError> {
    let shared = sk.diffie_hellman(pk);
    if !shared.was_contributory() {
        return Err(SecAggError::WeakKey(peer));
    }
    Ok(shared.to_bytes())
}

impl ClientSession {
    /// Starts agent `me`'s side of `round` in `cohort` (the round plan's agents) with the plan's graph seed: makes
    /// the round's key pairs and self-mask seed, and returns the signed keys to send to the server. `context` is
    /// the digest of what the round's agents must agree on (`protocol::RoundPlan::context`: the model the agent
    /// trains from, the training settings, the cohort); it is signed into the advertisement, and neighbours whose
    /// context differs are refused in [`ClientSession::on_keys`].
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        params: SecAggParams,
        round: u64,
        me: u32,
        cohort: &[AgentRef],
        graph_seed: u64,
        context: [u8; 32],
        signer: &dyn KeySigner,
        rng: &mut dyn SecureRng,
    ) -> Result<(Self, AdvertiseKeys), SecAggError> {
        params.validate(cohort.len(), 1)?;
        let mut map = BTreeMap::new();
        let mut names = BTreeSet::new();
        for a in cohort {
            if a.name.len() > super::messages::MAX_NAME_LEN {
                return Err(SecAggError::Malformed(format!("agent name of {} bytes", a.name.len())));
            }
            if map.insert(a.index, a.clone()).is_some() {
                return Err(SecAggError::Duplicate(a.index));
            }
            // One identity, one slot: a certificate that holds several indices could hold t shares of a neighbour.
            if !names.insert(a.name.as_str()) {
                return Err(SecAggError::RepeatedIdentity(a.name.clone()));
            }
        }
        if !map.contains_key(&me) {
            return Err(SecAggError::UnknownAgent(me));
        }
        let indices: Vec<u32> = map.keys().copied().collect();
        let graph = NeighbourGraph::new(&indices, params.neighbours as usize, graph_seed)?;
        let neighbours = graph.neighbours(me).map(<[u32]>::to_vec).unwrap_or_default();
        let enc_sk = StaticSecret::random_from_rng(&mut *rng);
        let mask_sk = StaticSecret::random_from_rng(&mut *rng);
        let mut seed = [0u8; 32];
        rng.fill_bytes(&mut seed);
        let enc_pk = PublicKey::from(&enc_sk).to_bytes();
        let mask_pk = PublicKey::from(&mask_sk).to_bytes();
        let seed_commitment = kdf::seed_commitment(round, me, &seed);
        let msg = super::messages::signed_message(round, me, [&enc_pk, &mask_pk, &seed_commitment, &context]);
        let signature = signer.sign(&msg)?;
        let own = AdvertiseKeys { round, from: me, enc_pk, mask_pk, seed_commitment, context, signature };
        let session = ClientSession {
            params,
            round,
            me,
            cohort: map,
            neighbours,
            enc_sk,
            mask_sk,
            seed,
            own: own.clone(),
            peers: BTreeMap::new(),
            held: BTreeMap::new(),
            signed: None,
            phase: Phase::AwaitKeys,
            counts: Vec::new(),
        };
        Ok((session, own))
    }

    /// The round's parameters.
    pub fn params(&self) -> &SecAggParams {
        &self.params
    }

    /// The largest count this agent may put in one coordinate (the cohort's sum must not wrap).
    pub fn count_limit(&self) -> u32 {
        self.params.count_limit(self.cohort.len())
    }

    /// Sets the round's exact counts (`params.counts` of them, each at most [`ClientSession::count_limit`]),
    /// carried after the weight in the masked vector and summed exactly by the server. Checked here and again
    /// when masking.
    pub fn set_counts(&mut self, counts: Vec<u32>) -> Result<(), SecAggError> {
        let expected = self.params.counts as usize;
        if counts.len() != expected {
            return Err(SecAggError::WrongCounts { expected, got: counts.len() });
        }
        let limit = self.count_limit();
        if let Some((index, &value)) = counts.iter().enumerate().find(|&(_, &c)| c > limit) {
            return Err(SecAggError::CountTooLarge { index, value, limit });
        }
        self.counts = counts;
        Ok(())
    }

    /// This agent's cohort index.
    pub fn index(&self) -> u32 {
        self.me
    }

    /// This agent's neighbours on the round's graph.
    pub fn neighbours(&self) -> &[u32] {
        &self.neighbours
    }

    /// The neighbours whose share to us did not decrypt or lay outside the field (we hold nothing of theirs).
    pub fn bad_shares(&self) -> Vec<u32> {
        self.held.iter().filter(|(_, v)| v.is_none()).map(|(&j, _)| j).collect()
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

    fn is_neighbour(&self, agent: u32) -> bool {
        self.neighbours.binary_search(&agent).is_ok()
    }

    /// Takes the keys the server relays to us (ours and our surviving neighbours'; any others are ignored), checks
    /// our own entry is intact and every neighbour's signature verifies, and returns our encrypted shares, one per
    /// neighbour that advertised keys.
    pub fn on_keys(
        &mut self,
        all: &[AdvertiseKeys],
        verifier: &dyn PeerVerifier,
        rng: &mut dyn SecureRng,
    ) -> Result<Vec<EncryptedShare>, SecAggError> {
        self.expect(Phase::AwaitKeys, "on_keys")?;
        let mut seen = BTreeSet::new();
        let mut own_ok = false;
        let mut peers = BTreeMap::new();
        for msg in all {
            self.check_round(msg.round)?;
            msg.check_size()?;
            let peer = self.cohort.get(&msg.from).ok_or(SecAggError::UnknownAgent(msg.from))?;
            if !seen.insert(msg.from) {
                return Err(SecAggError::Duplicate(msg.from));
            }
            if msg.from == self.me {
                if *msg != self.own {
                    return Err(SecAggError::OwnKeysAltered);
                }
                own_ok = true;
                continue;
            }
            if !self.is_neighbour(msg.from) {
                continue;
            }
            if !verifier.verify(peer, &msg.signed_message(), &msg.signature) {
                return Err(SecAggError::BadSignature(msg.from));
            }
            // A neighbour that trains from another model, with other settings or in another cohort: the server is
            // not telling every agent the same thing, and our update could be isolated in the sum.
            if msg.context != self.own.context {
                return Err(SecAggError::ContextMismatch(msg.from));
            }
            // Both agreements are checked now so that a weak key is refused before we share anything.
            let enc_shared = agree(&self.enc_sk, &PublicKey::from(msg.enc_pk), msg.from)?;
            let mask_shared = agree(&self.mask_sk, &PublicKey::from(msg.mask_pk), msg.from)?;
            let mask_key = kdf::pairwise_mask_key(self.round, self.me, msg.from, &mask_shared);
            peers.insert(msg.from, PeerKeys { enc_shared, mask_key });
        }
        if !own_ok {
            return Err(SecAggError::OwnKeysAltered);
        }
        let t = self.params.threshold as usize;
        if peers.len() < t {
            return Err(SecAggError::NotEnoughNeighbours { have: peers.len(), need: t });
        }
        let holders: Vec<u32> = peers.keys().copied().collect();
        let seed_shares = shamir::split(&self.seed, t, &holders, rng)?;
        let key_shares = shamir::split(&self.mask_sk.to_bytes(), t, &holders, rng)?;
        let mut out = Vec::with_capacity(holders.len());
        for ((&j, s), k) in holders.iter().zip(&seed_shares).zip(&key_shares) {
            let Some(pk) = peers.get(&j) else { continue };
            out.push(envelope::seal(self.round, self.me, j, &pk.enc_shared, s, k)?);
        }
        self.peers = peers;
        self.phase = Phase::AwaitShares;
        Ok(out)
    }

    /// Takes the shares the server relays to us, decrypts and checks each one, and returns our receipt for them.
    /// Refuses fewer than `t`, and anything the relay got wrong (round, recipient, a sender that is not our
    /// neighbour, a duplicate). A share that does not decrypt or lies outside the field is its sender's fault, not
    /// the relay's: we keep nothing of it and name its sender in the receipt ([`ClientSession::bad_shares`]), so
    /// that the server can leave the sender out if too few of its neighbours hold a usable share. Which neighbours
    /// we mask with is settled by [`ClientSession::on_mask_with`].
    pub fn on_shares(&mut self, shares: &[EncryptedShare]) -> Result<ShareReceipt, SecAggError> {
        self.expect(Phase::AwaitShares, "on_shares")?;
        let mut held = BTreeMap::new();
        for share in shares {
            self.check_round(share.round)?;
            if share.to != self.me {
                return Err(SecAggError::WrongRecipient { addressed: share.to, actual: self.me });
            }
            share.check_size()?;
            let pk =
                self.peers.get(&share.from).ok_or(SecAggError::NotNeighbour { agent: self.me, peer: share.from })?;
            if held.contains_key(&share.from) {
                return Err(SecAggError::Duplicate(share.from));
            }
            let values = match envelope::open(self.round, self.me, share, &pk.enc_shared) {
                Ok((seed, key)) if shamir::in_field(&seed) && shamir::in_field(&key) => Some((seed, key)),
                Ok(_) | Err(SecAggError::Decrypt(_)) => None,
                Err(e) => return Err(e),
            };
            held.insert(share.from, values);
        }
        let t = self.params.threshold as usize;
        if held.len() < t {
            return Err(SecAggError::NotEnoughNeighbours { have: held.len(), need: t });
        }
        self.held = held;
        self.phase = Phase::AwaitMaskWith;
        Ok(ShareReceipt { round: self.round, from: self.me, bad: self.bad_shares() })
    }

    /// Takes the server's answer to the receipts: the neighbours to mask with. Every one must be a neighbour that
    /// shared with us, listed once, in ascending order, and there must be at least `t` of them (fewer, and the
    /// server could strip our masks). The neighbours left out are, for the rest of the round, as if they had never
    /// shared keys with us: we do not mask with them and reveal nothing of theirs.
    pub fn on_mask_with(&mut self, msg: &MaskWith) -> Result<(), SecAggError> {
        self.expect(Phase::AwaitMaskWith, "on_mask_with")?;
        self.check_round(msg.round)?;
        if msg.to != self.me {
            return Err(SecAggError::WrongRecipient { addressed: msg.to, actual: self.me });
        }
        consistency::check_canonical(&msg.neighbours)?;
        if let Some(&j) = msg.neighbours.iter().find(|j| !self.held.contains_key(j)) {
            return Err(SecAggError::NotNeighbour { agent: self.me, peer: j });
        }
        let t = self.params.threshold as usize;
        if msg.neighbours.len() < t {
            return Err(SecAggError::NotEnoughNeighbours { have: msg.neighbours.len(), need: t });
        }
        self.held.retain(|j, _| msg.neighbours.binary_search(j).is_ok());
        self.phase = Phase::ReadyForInput;
        Ok(())
    }

    /// The keys and signs of our masks: one pairwise mask per neighbour that shared with us, and our self mask.
    fn mask_keys(&self) -> Result<Vec<([u8; 32], MaskSign)>, SecAggError> {
        let mut masks = Vec::with_capacity(self.held.len() + 1);
        for &j in self.held.keys() {
            let pk = self.peers.get(&j).ok_or(SecAggError::NotNeighbour { agent: self.me, peer: j })?;
            masks.push((pk.mask_key, MaskSign::pairwise(self.me, j)));
        }
        masks.push((kdf::self_mask_key(self.round, self.me, &self.seed), MaskSign::Add));
        Ok(masks)
    }

    /// Masks an already quantized input: adds the pairwise masks with every neighbour that shared with us and our
    /// self mask, modulo 2^32. The result (length = delta length + 1) is what we upload.
    pub fn mask(&mut self, input: QuantizedInput) -> Result<Vec<u32>, SecAggError> {
        self.expect(Phase::ReadyForInput, "mask")?;
        let masks = self.mask_keys()?;
        let mut v = input.into_vec();
        apply_masks(&masks, &mut v);
        self.phase = Phase::AwaitSurvivors;
        Ok(v)
    }

    /// Clips, weights, quantizes (stochastic rounding from `rng`) and masks our delta.
    pub fn masked_input(
        &mut self,
        delta: &[f32],
        examples: u64,
        rng: &mut dyn SecureRng,
    ) -> Result<Vec<u32>, SecAggError> {
        self.expect(Phase::ReadyForInput, "masked_input")?;
        let q = QuantizedInput::with_counts(&self.params, delta, examples, &self.counts, self.count_limit(), rng)?;
        self.mask(q)
    }

    /// Like [`ClientSession::masked_input`], but the masked vector comes out `chunk` coordinates at a time (rounded
    /// up to whole PRG groups), computed as the caller takes them: the upload can start at once, and only the delta
    /// and one chunk are held. The session moves on to the unmask phase now; the chunks, concatenated, are exactly
    /// what `masked_input` returns for the same delta and the same `rng`.
    pub fn mask_stream(
        &mut self,
        delta: Vec<f32>,
        examples: u64,
        rng: &mut dyn SecureRng,
        chunk: usize,
    ) -> Result<MaskedStream, SecAggError> {
        self.expect(Phase::ReadyForInput, "mask_stream")?;
        let quantizer = Quantizer::with_counts(&self.params, &delta, examples, &self.counts, self.count_limit(), rng)?;
        let masks = self.mask_keys()?;
        self.phase = Phase::AwaitSurvivors;
        Ok(MaskedStream::new(&self.params, quantizer, masks, delta, chunk))
    }

    /// Checks a survivor set from the server: in this round, canonical (strictly ascending), every member in the
    /// cohort, we among them, and at least `t` of the neighbours we mask with among them.
    fn check_survivors(&self, round: u64, survivors: &[u32]) -> Result<(), SecAggError> {
        self.check_round(round)?;
        consistency::check_canonical(survivors)?;
        if let Some(&a) = survivors.iter().find(|&&a| !self.cohort.contains_key(&a)) {
            return Err(SecAggError::UnknownAgent(a));
        }
        if survivors.binary_search(&self.me).is_err() {
            return Err(SecAggError::InconsistentRequest(
                "we sent our masked input but are not listed as a survivor".into(),
            ));
        }
        let alive = self.held.keys().filter(|&&j| survivors.binary_search(&j).is_ok()).count();
        let t = self.params.threshold as usize;
        if alive < t {
            return Err(SecAggError::InconsistentRequest(format!(
                "{alive} of our neighbours survive, below the threshold of {t}"
            )));
        }
        Ok(())
    }

    /// The consistency round: signs the server's survivor set with our certificate key. We sign one set per round:
    /// a second call is refused, whatever set it carries.
    pub fn on_survivors(
        &mut self,
        set: &SurvivorSet,
        signer: &dyn KeySigner,
    ) -> Result<SurvivorSignature, SecAggError> {
        self.expect(Phase::AwaitSurvivors, "on_survivors")?;
        self.check_survivors(set.round, &set.survivors)?;
        let signature = signer.sign(&consistency::survivors_message(self.round, self.me, &set.survivors))?;
        self.signed = Some(set.survivors.clone());
        self.phase = Phase::AwaitUnmask;
        Ok(SurvivorSignature { round: self.round, from: self.me, signature })
    }

    /// Answers the server's one unmask request: for each neighbour we mask with, the share of its self-mask seed if
    /// it survived or of its mask key if it dropped. Refuses (revealing nothing) a second request, a survivor set
    /// other than the one we signed, fewer than `t` valid signatures of our own surviving neighbours on that set, an
    /// agent listed as both, and a neighbour that is missing from both lists or listed against what we saw.
    pub fn on_unmask_request(
        &mut self,
        req: &UnmaskRequest,
        verifier: &dyn PeerVerifier,
    ) -> Result<UnmaskResponse, SecAggError> {
        self.expect(Phase::AwaitUnmask, "on_unmask_request")?;
        self.check_round(req.round)?;
        let refuse = |m: String| Err(SecAggError::InconsistentRequest(m));
        if self.signed.as_deref() != Some(req.survivors.as_slice()) {
            return refuse("the survivor set differs from the one we signed".into());
        }
        self.check_survivors(req.round, &req.survivors)?;
        let survivors: BTreeSet<u32> = req.survivors.iter().copied().collect();
        let mut dropped = BTreeSet::new();
        for &a in &req.dropped {
            if !self.cohort.contains_key(&a) {
                return Err(SecAggError::UnknownAgent(a));
            }
            if survivors.contains(&a) {
                return refuse(format!("agent {a} is listed both as surviving and as dropped"));
            }
            if !dropped.insert(a) {
                return Err(SecAggError::Duplicate(a));
            }
        }
        // The consistency check: t of our own surviving neighbours signed exactly this set.
        let mut signers = BTreeSet::new();
        for sig in &req.signatures {
            if sig.round != self.round
                || sig.from == self.me
                || !survivors.contains(&sig.from)
                || !self.held.contains_key(&sig.from)
                || signers.contains(&sig.from)
                || sig.check_size().is_err()
            {
                continue;
            }
            let Some(peer) = self.cohort.get(&sig.from) else { continue };
            let msg = consistency::survivors_message(self.round, sig.from, &req.survivors);
            if verifier.verify(peer, &msg, &sig.signature) {
                signers.insert(sig.from);
            }
        }
        let t = self.params.threshold as usize;
        if signers.len() < t {
            return Err(SecAggError::ConsistencyCheck { signed: signers.len(), need: t });
        }
        let mut seed_shares = Vec::new();
        let mut key_shares = Vec::new();
        for &j in &self.neighbours {
            let listed_alive = survivors.contains(&j);
            let listed_dropped = dropped.contains(&j);
            match self.held.get(&j) {
                // Its share to us was garbage: nothing to reveal, but the lists must still account for it.
                Some(None) if listed_alive || listed_dropped => {}
                Some(None) => {
                    return refuse(format!("neighbour {j} shared keys with us but is neither survivor nor dropped"));
                }
                Some(Some((seed, key))) => {
                    if listed_alive {
                        seed_shares.push(RevealedShare { owner: j, value: *seed });
                    } else if listed_dropped {
                        key_shares.push(RevealedShare { owner: j, value: *key });
                    } else {
                        return refuse(format!(
                            "neighbour {j} shared keys with us but is neither survivor nor dropped"
                        ));
                    }
                }
                None if listed_alive || listed_dropped => {
                    return refuse(format!("neighbour {j} never shared keys with us but is listed"));
                }
                None => {}
            }
        }
        self.phase = Phase::Done;
        Ok(UnmaskResponse { round: self.round, from: self.me, seed_shares, key_shares })
    }
}
