//! A server that lies, scripted against the real `ClientSession`s through their sans-IO interface: it tells
//! different agents different survivor sets, or a set that leaves an agent too few of its own neighbours, to
//! collect both the self-mask seed and the pairwise keys of one victim. Honest agents must refuse before revealing
//! anything that unmasks one agent.

mod secagg_support;

use std::collections::{BTreeMap, BTreeSet};

use fedge_shared::secagg::prg::{MaskSign, apply_masks};
use fedge_shared::secagg::shamir::{self, ShareValue};
use fedge_shared::secagg::{
    AdvertiseKeys, ClientSession, NeighbourGraph, QuantizedInput, SecAggError, SecAggParams, ServerSession,
    SurvivorSet, UnmaskRequest, UnmaskResponse, kdf,
};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use secagg_support::{CONTEXT, Cohort};

const ROUND: u64 = 77;
const GRAPH_SEED: u64 = 5;
const P: usize = 12;

/// A sparse round (24 agents, k = 6, t = 4) run honestly up to the masked input: the server holds every agent's
/// masked upload, and the test keeps each agent's plain quantized input to check what the server could recover.
struct Masked {
    params: SecAggParams,
    cohort: Cohort,
    graph: NeighbourGraph,
    clients: BTreeMap<u32, ClientSession>,
    keys: BTreeMap<u32, AdvertiseKeys>,
    uploads: BTreeMap<u32, Vec<u32>>,
    plain: BTreeMap<u32, Vec<u32>>,
}

/// Every agent of `cohort` starts `ROUND` with the context `context_of(its index)`: the sessions, by index, and
/// their advertisements in cohort order.
fn advertise(
    params: &SecAggParams,
    cohort: &Cohort,
    context_of: impl Fn(u32) -> [u8; 32],
    rng: &mut ChaCha20Rng,
) -> (BTreeMap<u32, ClientSession>, Vec<AdvertiseKeys>) {
    let mut clients = BTreeMap::new();
    let mut adverts = Vec::new();
    for r in &cohort.refs {
        let signer = cohort.signer(r.index);
        let (c, adv) = ClientSession::new(
            params.clone(),
            ROUND,
            r.index,
            &cohort.refs,
            GRAPH_SEED,
            context_of(r.index),
            signer,
            rng,
        )
        .unwrap();
        clients.insert(r.index, c);
        adverts.push(adv);
    }
    (clients, adverts)
}

fn masked_round() -> Masked {
    let params = SecAggParams::new(6, 4, 1.0, 16, 10);
    let cohort = Cohort::new(24);
    let graph = NeighbourGraph::new(&cohort.indices(), 6, GRAPH_SEED).unwrap();
    let mut rng = ChaCha20Rng::seed_from_u64(3);
    let mut server = ServerSession::new(params.clone(), ROUND, &cohort.refs, GRAPH_SEED, P).unwrap();
    let (mut clients, adverts) = advertise(&params, &cohort, |_| CONTEXT, &mut rng);
    for adv in adverts {
        server.on_advertise(adv.from, adv).unwrap();
    }
    let broadcast = server.close_advertise().unwrap();
    for (&i, c) in clients.iter_mut() {
        let shares = c.on_keys(&broadcast[&i], &cohort.table, &mut rng).unwrap();
        server.on_shares(i, shares).unwrap();
    }
    let relayed = server.close_shares().unwrap();
    let mut uploads = BTreeMap::new();
    let mut plain = BTreeMap::new();
    for (&i, c) in clients.iter_mut() {
        let receipt = c.on_shares(&relayed[&i]).unwrap();
        server.on_receipt(i, receipt).unwrap();
    }
    let mask_with = server.close_receipts().unwrap().mask_with;
    for (&i, c) in clients.iter_mut() {
        c.on_mask_with(&mask_with[&i]).unwrap();
        let delta: Vec<f32> = (0..P).map(|j| ((i as usize * 7 + j) % 11) as f32 / 11.0 - 0.5).collect();
        let q = QuantizedInput::new(&params, &delta, 9, &mut rng).unwrap();
        plain.insert(i, q.as_slice().to_vec());
        uploads.insert(i, c.mask(q).unwrap());
    }
    let keys = broadcast.into_values().flatten().map(|k| (k.from, k)).collect();
    Masked { params, cohort, graph, clients, keys, uploads, plain }
}

/// What the server collected from the agents that answered: per owner, the seed shares and the mask-key shares.
#[derive(Default)]
struct Loot {
    seeds: BTreeMap<u32, Vec<(u32, ShareValue)>>,
    mask_keys: BTreeMap<u32, Vec<(u32, ShareValue)>>,
}

impl Loot {
    fn take(&mut self, resp: UnmaskResponse) {
        for s in resp.seed_shares {
            self.seeds.entry(s.owner).or_default().push((resp.from, s.value));
        }
        for s in resp.key_shares {
            self.mask_keys.entry(s.owner).or_default().push((resp.from, s.value));
        }
    }
}

impl Masked {
    /// The server's best effort to strip every mask from `victim`'s upload alone with what it collected: the
    /// victim's self-mask seed and, for each neighbour, the neighbour's mask key. `Some(input)` when it succeeds.
    fn unmask_one(&self, victim: u32, loot: &Loot) -> Option<Vec<u32>> {
        let t = self.params.threshold as usize;
        let seed_shares = loot.seeds.get(&victim).filter(|s| s.len() >= t)?;
        let seed = shamir::reconstruct(seed_shares, t).ok()?;
        if kdf::seed_commitment(ROUND, victim, &seed) != self.keys[&victim].seed_commitment {
            return None;
        }
        let mut masks = vec![(kdf::self_mask_key(ROUND, victim, &seed), MaskSign::Sub)];
        for &n in self.graph.neighbours(victim).unwrap() {
            let shares = loot.mask_keys.get(&n).filter(|s| s.len() >= t)?;
            let sk = x25519_dalek::StaticSecret::from(shamir::reconstruct(shares, t).ok()?);
            let shared = sk.diffie_hellman(&x25519_dalek::PublicKey::from(self.keys[&victim].mask_pk));
            let key = kdf::pairwise_mask_key(ROUND, victim, n, shared.as_bytes());
            masks.push((key, MaskSign::pairwise(victim, n).inverse()));
        }
        let mut v = self.uploads[&victim].clone();
        apply_masks(&masks, &mut v);
        Some(v)
    }

    fn all(&self) -> Vec<u32> {
        self.cohort.indices()
    }
}

/// The attack of issue 18: every agent truly survived, but the victim's neighbours are each told "the victim
/// survived, the victim's other neighbours dropped", and everyone else is told "all the victim's neighbours
/// dropped". No agent is asked for both secrets of one peer, yet together the answers give the victim's seed and
/// every neighbour's mask key. The server relays whatever signatures it has to everyone.
#[test]
fn a_server_that_tells_the_victims_neighbours_a_different_survivor_set_learns_nothing() {
    let mut m = masked_round();
    let victim = m.all()[4];
    let around: BTreeSet<u32> = m.graph.neighbours(victim).unwrap().iter().copied().collect();
    let story =
        |me: u32| -> (Vec<u32>, Vec<u32>) { m.all().into_iter().partition(|a| !around.contains(a) || *a == me) };
    let stories: BTreeMap<u32, (Vec<u32>, Vec<u32>)> = m.all().into_iter().map(|a| (a, story(a))).collect();
    // Agents left with fewer than t surviving neighbours refuse to sign (the victim among them); the others sign.
    let mut signatures = Vec::new();
    let mut refused = 0;
    let mut signed = BTreeSet::new();
    for (&i, c) in m.clients.iter_mut() {
        let set = SurvivorSet { round: ROUND, survivors: stories[&i].0.clone() };
        match c.on_survivors(&set, m.cohort.signer(i)) {
            Ok(sig) => {
                signatures.push(sig);
                signed.insert(i);
            }
            Err(SecAggError::InconsistentRequest(_)) => refused += 1,
            Err(e) => panic!("agent {i} refused to sign for another reason: {e}"),
        }
    }
    let mut loot = Loot::default();
    for (&i, c) in m.clients.iter_mut().filter(|(i, _)| signed.contains(*i)) {
        let (survivors, dropped) = stories[&i].clone();
        let req = UnmaskRequest { round: ROUND, survivors, dropped, signatures: signatures.clone() };
        match c.on_unmask_request(&req, &m.cohort.table) {
            Ok(resp) => loot.take(resp),
            Err(SecAggError::ConsistencyCheck { .. }) => refused += 1,
            Err(e) => panic!("agent {i} refused for another reason: {e}"),
        }
    }
    assert!(refused >= around.len(), "only {refused} agents refused");
    // Neither the victim nor any other agent is exposed (an exposure would be the agent's exact plain input).
    for a in m.all() {
        let got = m.unmask_one(a, &loot);
        let exact = got.as_ref() == Some(&m.plain[&a]);
        assert!(got.is_none(), "the server stripped agent {a}'s masks (exact input recovered: {exact})");
    }
}

/// The server forges the consistency round for one agent: it shows it its neighbours' genuine signatures over
/// another set, and other agents' signatures relabelled as its neighbours'. None counts, and the agent refuses.
#[test]
fn signatures_over_another_set_or_from_another_agent_do_not_count() {
    let mut m = masked_round();
    let everyone = m.all();
    let target = everyone[9];
    let around: Vec<u32> = m.graph.neighbours(target).unwrap().to_vec();
    // An agent that is neither the target nor a neighbour of any of its neighbours: leaving it out costs none of
    // them a neighbour, so they all sign that other set.
    let x = *everyone
        .iter()
        .find(|&&x| x != target && around.iter().all(|&n| n != x && !m.graph.are_neighbours(n, x)))
        .unwrap();
    let alt: Vec<u32> = everyone.iter().copied().filter(|&a| a != x).collect();
    let mut genuine_other_set = Vec::new();
    let mut elsewhere = Vec::new();
    for (&i, c) in m.clients.iter_mut() {
        if around.contains(&i) {
            let sig = c.on_survivors(&SurvivorSet { round: ROUND, survivors: alt.clone() }, m.cohort.signer(i));
            genuine_other_set.push(sig.unwrap());
        } else if let Ok(sig) =
            c.on_survivors(&SurvivorSet { round: ROUND, survivors: everyone.clone() }, m.cohort.signer(i))
            && i != target
        {
            elsewhere.push(sig);
        }
    }
    let relabelled = elsewhere
        .iter()
        .zip(around.iter().cycle())
        .map(|(s, &n)| fedge_shared::secagg::SurvivorSignature { from: n, ..s.clone() });
    let signatures: Vec<_> = genuine_other_set.iter().cloned().chain(relabelled).collect();
    assert!(signatures.len() >= 2 * m.params.threshold as usize);
    let req = UnmaskRequest { round: ROUND, survivors: everyone, dropped: vec![], signatures };
    let got = m.clients.get_mut(&target).unwrap().on_unmask_request(&req, &m.cohort.table);
    assert!(matches!(got, Err(SecAggError::ConsistencyCheck { signed: 0, .. })), "{got:?}");
}

/// The survivor threshold is counted among the agent's own neighbours: a set padded with non-neighbours, which
/// leaves the agent fewer than `t` surviving neighbours, is refused before it is signed.
#[test]
fn a_survivor_set_padded_with_non_neighbours_is_refused_before_signing() {
    let mut m = masked_round();
    let me = m.all()[0];
    let mine: Vec<u32> = m.graph.neighbours(me).unwrap().to_vec();
    let t = m.params.threshold as usize;
    let keep: BTreeSet<u32> = mine.iter().copied().take(t - 1).collect();
    let survivors: Vec<u32> = m.all().into_iter().filter(|a| !mine.contains(a) || keep.contains(a)).collect();
    assert!(survivors.len() > 15, "the cohort-wide count is well above t");
    let client = m.clients.get_mut(&me).unwrap();
    let got = client.on_survivors(&SurvivorSet { round: ROUND, survivors }, m.cohort.signer(me));
    assert!(matches!(got, Err(SecAggError::InconsistentRequest(_))), "{got:?}");
}

/// An agent signs one survivor set per round, and answers only an unmask request for the set it signed.
#[test]
fn an_agent_signs_one_set_per_round_and_unmasks_only_that_set() {
    let mut m = masked_round();
    let everyone = m.all();
    let (me, other) = (everyone[2], everyone[5]);
    let second: Vec<u32> = everyone.iter().copied().filter(|&a| a != other).collect();
    let client = m.clients.get_mut(&me).unwrap();
    client.on_survivors(&SurvivorSet { round: ROUND, survivors: everyone.clone() }, m.cohort.signer(me)).unwrap();
    let again = client.on_survivors(&SurvivorSet { round: ROUND, survivors: second.clone() }, m.cohort.signer(me));
    assert!(matches!(again, Err(SecAggError::OutOfPhase { .. })));
    let req = UnmaskRequest { round: ROUND, survivors: second, dropped: vec![other], signatures: vec![] };
    let got = client.on_unmask_request(&req, &m.cohort.table);
    assert!(matches!(got, Err(SecAggError::InconsistentRequest(_))), "{got:?}");
}

/// A set out of order or with a repeated agent is not the canonical form that is signed, and is refused.
#[test]
fn a_survivor_set_that_is_not_strictly_ascending_is_refused() {
    let mut m = masked_round();
    let me = m.all()[1];
    let mut reversed = m.all();
    reversed.reverse();
    let mut doubled = m.all();
    doubled.push(*doubled.last().unwrap());
    let client = m.clients.get_mut(&me).unwrap();
    assert!(matches!(
        client.on_survivors(&SurvivorSet { round: ROUND, survivors: reversed }, m.cohort.signer(me)),
        Err(SecAggError::Malformed(_))
    ));
    assert!(matches!(
        client.on_survivors(&SurvivorSet { round: ROUND, survivors: doubled }, m.cohort.signer(me)),
        Err(SecAggError::Duplicate(_))
    ));
}

/// The honest consistency round through the real server session: every agent unmasks, and the sum is exact.
#[test]
fn the_honest_consistency_round_completes_with_the_exact_sum() {
    let out =
        secagg_support::run_round(&SecAggParams::new(6, 4, 1.0, 16, 10), &Cohort::new(24), P, &BTreeMap::new(), 2);
    let sum = out.result.as_ref().unwrap();
    assert_eq!(sum.values, out.expected_sum(&sum.survivors));
}

/// One certificate, many slots: a cohort that lists one agent's identity at several indices (so that one key could
/// hold t shares of a neighbour) is refused by every honest agent before it advertises anything.
#[test]
fn a_cohort_that_gives_one_identity_several_slots_is_refused_by_every_agent() {
    let params = SecAggParams::new(6, 4, 1.0, 16, 10);
    let cohort = Cohort::new(12);
    let mut refs = cohort.refs.clone();
    let sybil = refs[3].name.clone();
    for r in refs.iter_mut().skip(8) {
        r.name = sybil.clone();
    }
    let mut rng = ChaCha20Rng::seed_from_u64(4);
    for r in refs.iter().take(8).filter(|r| r.name != sybil) {
        let got = ClientSession::new(
            params.clone(),
            ROUND,
            r.index,
            &refs,
            GRAPH_SEED,
            CONTEXT,
            cohort.signer(r.index),
            &mut rng,
        );
        assert_eq!(got.err(), Some(SecAggError::RepeatedIdentity(sybil.clone())), "agent {}", r.index);
    }
    assert_eq!(
        ServerSession::new(params, ROUND, &refs, GRAPH_SEED, P).err(),
        Some(SecAggError::RepeatedIdentity(sybil))
    );
}

/// Different models to different agents (Pasquini et al., CCS 2022): the server hands the victim the real model and
/// everyone else a model (or settings, such as a learning rate of zero) whose update is zero, so that the "secure"
/// sum is the victim's update. Each agent signs the digest of the plan it trains from into its advertisement; the
/// victim's neighbours see a context other than theirs and refuse, and so does the victim, before anyone seals a
/// share: the victim never masks an input.
#[test]
fn a_victim_trained_from_another_model_is_refused_by_its_neighbours_before_any_share_is_sealed() {
    let params = SecAggParams::new(6, 4, 1.0, 16, 10);
    let cohort = Cohort::new(24);
    let graph = NeighbourGraph::new(&cohort.indices(), 6, GRAPH_SEED).unwrap();
    let victim = cohort.indices()[5];
    let real_model = [0xAB; 32];
    let mut rng = ChaCha20Rng::seed_from_u64(9);
    let mut server = ServerSession::new(params.clone(), ROUND, &cohort.refs, GRAPH_SEED, P).unwrap();
    let context_of = |i: u32| if i == victim { real_model } else { CONTEXT };
    let (mut clients, adverts) = advertise(&params, &cohort, context_of, &mut rng);
    for adv in adverts {
        server.on_advertise(adv.from, adv).unwrap();
    }
    let broadcast = server.close_advertise().unwrap();
    let neighbours: BTreeSet<u32> = graph.neighbours(victim).unwrap().iter().copied().collect();
    for (&i, c) in clients.iter_mut() {
        let got = c.on_keys(&broadcast[&i], &cohort.table, &mut rng);
        if i == victim {
            assert!(matches!(got, Err(SecAggError::ContextMismatch(n)) if neighbours.contains(&n)), "victim: {got:?}");
        } else if neighbours.contains(&i) {
            assert_eq!(got.err(), Some(SecAggError::ContextMismatch(victim)), "neighbour {i}");
        } else {
            assert!(got.is_ok(), "agent {i} away from the victim is not affected: {got:?}");
        }
    }
}

/// The context is part of what each agent signs: a server that rewrites the victim's advertised context to match
/// the others' breaks the victim's signature, and its neighbours refuse the key.
#[test]
fn a_context_rewritten_by_the_server_breaks_the_signature() {
    let params = SecAggParams::new(6, 4, 1.0, 16, 10);
    let cohort = Cohort::new(12);
    let graph = NeighbourGraph::new(&cohort.indices(), 6, GRAPH_SEED).unwrap();
    let victim = cohort.indices()[2];
    let mut rng = ChaCha20Rng::seed_from_u64(10);
    let context_of = |i: u32| if i == victim { [0xAB; 32] } else { CONTEXT };
    let (mut clients, mut broadcast) = advertise(&params, &cohort, context_of, &mut rng);
    // The server rewrites the victim's context to match the others' (keeping its signature).
    for adv in broadcast.iter_mut().filter(|a| a.from == victim) {
        adv.context = CONTEXT;
    }
    for &n in graph.neighbours(victim).unwrap() {
        let got = clients.get_mut(&n).unwrap().on_keys(&broadcast, &cohort.table, &mut rng);
        assert_eq!(got.err(), Some(SecAggError::BadSignature(victim)), "neighbour {n}");
    }
}
