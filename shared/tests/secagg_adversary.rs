//! A dishonest relay and stray messages: substituted keys are caught by their signatures, anything from another
//! round or for another agent is refused, an agent never reveals both secrets of one neighbour, and a broken
//! upload never leaves part of an agent in the sum.

mod secagg_support;

use std::collections::BTreeMap;

use fedge_shared::secagg::{
    AdvertiseKeys, ClientSession, EncryptedShare, MaskWith, QuantizedInput, SecAggError, SecAggParams, ServerSession,
    ShareReceipt, SurvivorSet, UnmaskRequest,
};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use secagg_support::Cohort;

const ROUND: u64 = 42;
const GRAPH_SEED: u64 = 9;
const P: usize = 16;

#[test]
fn the_key_relay_gives_each_agent_only_its_own_and_its_neighbours_keys() {
    let cohort = Cohort::new(30);
    let (mut server, mut clients, mut rng) = joined(SecAggParams::new(6, 4, 1.0, 16, 10), &cohort, 5);
    let relay = server.close_advertise().unwrap();
    assert_eq!(relay.len(), 30);
    for (i, keys) in &relay {
        let c = &clients[i];
        let mut expected: Vec<u32> = c.neighbours().to_vec();
        expected.push(*i);
        expected.sort_unstable();
        let got: Vec<u32> = keys.iter().map(|k| k.from).collect();
        assert_eq!(got, expected, "agent {i} gets k + 1 = 7 keys, not 30");
    }
    // And that is all an agent needs to share its keys.
    for (i, c) in clients.iter_mut() {
        assert_eq!(c.on_keys(&relay[i], &cohort.table, &mut rng).unwrap().len(), 6);
    }
}

/// Every agent of `cohort` starts the round and advertises its keys to the server (phase 1, still open).
fn joined(
    params: SecAggParams,
    cohort: &Cohort,
    seed: u64,
) -> (ServerSession, BTreeMap<u32, ClientSession>, ChaCha20Rng) {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let mut server = ServerSession::new(params.clone(), ROUND, &cohort.refs, GRAPH_SEED, P).unwrap();
    let mut clients = BTreeMap::new();
    for r in &cohort.refs {
        let (c, adv) = ClientSession::new(
            params.clone(),
            ROUND,
            r.index,
            &cohort.refs,
            GRAPH_SEED,
            [0; 32],
            cohort.signer(r.index),
            &mut rng,
        )
        .unwrap();
        server.on_advertise(r.index, adv).unwrap();
        clients.insert(r.index, c);
    }
    (server, clients, rng)
}

/// Six agents on the complete graph, threshold 4, after phase 1.
struct Setup {
    params: SecAggParams,
    cohort: Cohort,
    clients: BTreeMap<u32, ClientSession>,
    server: ServerSession,
    broadcast: Vec<AdvertiseKeys>,
    rng: ChaCha20Rng,
}

fn advertised(n: usize) -> Setup {
    let params = SecAggParams::new(5, 4, 1.0, 16, 10);
    let cohort = Cohort::new(n);
    let (mut server, clients, rng) = joined(params.clone(), &cohort, 1);
    // The relay sends each agent only its own and its neighbours' keys; here everyone is given every key (a
    // superset is fine for an honest agent, which skips non-neighbours), so that tests can tamper with one list.
    let relay = server.close_advertise().unwrap();
    let everyone: BTreeMap<u32, AdvertiseKeys> = relay.into_values().flatten().map(|k| (k.from, k)).collect();
    let broadcast = everyone.into_values().collect();
    Setup { params, cohort, clients, server, broadcast, rng }
}

impl Setup {
    fn shared(mut self) -> (Self, BTreeMap<u32, Vec<EncryptedShare>>) {
        for (&i, c) in self.clients.iter_mut() {
            let shares = c.on_keys(&self.broadcast, &self.cohort.table, &mut self.rng).unwrap();
            self.server.on_shares(i, shares).unwrap();
        }
        let relayed = self.server.close_shares().unwrap();
        (self, relayed)
    }

    fn masked(self) -> (Self, BTreeMap<u32, Vec<u32>>) {
        let (mut s, relayed) = self.shared();
        let mut uploads = BTreeMap::new();
        for (&i, c) in s.clients.iter_mut() {
            let receipt = c.on_shares(&relayed[&i]).unwrap();
            s.server.on_receipt(i, receipt).unwrap();
        }
        let mask_with = s.server.close_receipts().unwrap().mask_with;
        for (&i, c) in s.clients.iter_mut() {
            c.on_mask_with(&mask_with[&i]).unwrap();
            uploads.insert(i, c.masked_input(&[0.25; P], 5, &mut s.rng).unwrap());
        }
        (s, uploads)
    }

    /// Every agent takes its relayed shares and sends an honest receipt; the server answers whom to mask with.
    fn receipted(&mut self, relayed: &BTreeMap<u32, Vec<EncryptedShare>>) {
        for (&i, c) in self.clients.iter_mut() {
            let receipt = c.on_shares(&relayed[&i]).unwrap();
            self.server.on_receipt(i, receipt).unwrap();
        }
        let mask_with = self.server.close_receipts().unwrap().mask_with;
        for (&i, c) in self.clients.iter_mut() {
            c.on_mask_with(&mask_with[&i]).unwrap();
        }
    }

    fn agent(&self, pos: usize) -> u32 {
        self.cohort.refs[pos].index
    }
}

/// Closes the masked-input phase and runs an honest consistency round: every survivor signs the survivor set.
fn consistent(s: &mut Setup) -> BTreeMap<u32, UnmaskRequest> {
    let set = s.server.close_masked().unwrap();
    for &i in &set.survivors {
        let sig = s.clients.get_mut(&i).unwrap().on_survivors(&set, s.cohort.signer(i)).unwrap();
        s.server.on_survivor_signature(i, sig).unwrap();
    }
    s.server.close_consistency().unwrap()
}

#[test]
fn a_relay_that_swaps_an_agents_mask_key_is_caught_by_every_peer() {
    let mut s = advertised(6);
    let victim = s.agent(2);
    let attacker_key = x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from([7u8; 32])).to_bytes();
    s.broadcast.iter_mut().find(|a| a.from == victim).unwrap().mask_pk = attacker_key;
    for (&i, c) in s.clients.iter_mut() {
        let got = c.on_keys(&s.broadcast, &s.cohort.table, &mut s.rng);
        let want = if i == victim { SecAggError::OwnKeysAltered } else { SecAggError::BadSignature(victim) };
        assert_eq!(got.unwrap_err(), want, "agent {i}");
    }
}

#[test]
fn a_relay_that_re_signs_swapped_keys_with_another_agents_key_is_caught() {
    let mut s = advertised(6);
    let (victim, accomplice) = (s.agent(1), s.agent(4));
    let entry = s.broadcast.iter_mut().find(|a| a.from == victim).unwrap();
    entry.enc_pk = [9u8; 32];
    use fedge_shared::secagg::KeySigner;
    entry.signature = s.cohort.signer(accomplice).sign(&entry.signed_message()).unwrap();
    let observer = s.agent(0);
    let got = s.clients.get_mut(&observer).unwrap().on_keys(&s.broadcast, &s.cohort.table, &mut s.rng);
    assert_eq!(got.unwrap_err(), SecAggError::BadSignature(victim));
}

#[test]
fn advertised_keys_from_another_round_are_refused_by_server_and_peers() {
    let mut s = advertised(6);
    let mut stale = s.broadcast[0].clone();
    stale.round = ROUND - 1;
    let mut server = ServerSession::new(s.params.clone(), ROUND, &s.cohort.refs, GRAPH_SEED, P).unwrap();
    assert_eq!(
        server.on_advertise(stale.from, stale.clone()).unwrap_err(),
        SecAggError::WrongRound { expected: ROUND, got: ROUND - 1 }
    );
    s.broadcast[0] = stale;
    let observer = s.agent(3);
    let got = s.clients.get_mut(&observer).unwrap().on_keys(&s.broadcast, &s.cohort.table, &mut s.rng);
    assert!(matches!(got, Err(SecAggError::WrongRound { .. })));
}

#[test]
fn advertised_keys_under_another_agents_name_are_refused_by_the_server() {
    let s = advertised(6);
    let mut server = ServerSession::new(s.params.clone(), ROUND, &s.cohort.refs, GRAPH_SEED, P).unwrap();
    let msg = s.broadcast[0].clone();
    let other = s.broadcast[1].from;
    assert_eq!(
        server.on_advertise(other, msg.clone()).unwrap_err(),
        SecAggError::WrongSender { claimed: msg.from, actual: other }
    );
    assert_eq!(server.on_advertise(99_999, msg).unwrap_err(), SecAggError::UnknownAgent(99_999));
}

#[test]
fn a_share_from_another_round_for_another_agent_or_tampered_is_refused() {
    let (mut s, relayed) = advertised(6).shared();
    let (a, b) = (s.agent(0), s.agent(1));
    let mine = relayed[&a].clone();

    let mut stale = mine.clone();
    stale[0].round += 1;
    let client = s.clients.get_mut(&a).unwrap();
    assert!(matches!(client.on_shares(&stale), Err(SecAggError::WrongRound { .. })));

    let theirs = relayed[&b].clone();
    assert_eq!(client.on_shares(&theirs).unwrap_err(), SecAggError::WrongRecipient { addressed: b, actual: a });

    let mut doubled = mine.clone();
    doubled.push(mine[0].clone());
    assert_eq!(client.on_shares(&doubled).unwrap_err(), SecAggError::Duplicate(mine[0].from));

    // After all these refusals, the genuine shares are still accepted.
    client.on_shares(&mine).unwrap();
    assert!(client.bad_shares().is_empty());
}

/// A share that does not decrypt (tampered, or sealed under another sender's name) is its sender's fault: the
/// recipient keeps nothing of it and names the sender, but takes part in the round.
#[test]
fn a_tampered_or_relabelled_share_is_kept_out_and_its_sender_named_not_a_refusal() {
    let (mut s, relayed) = advertised(6).shared();
    let a = s.agent(0);
    let mut flipped = relayed[&a].clone();
    flipped[0].ciphertext[3] ^= 1;
    let client = s.clients.get_mut(&a).unwrap();
    client.on_shares(&flipped).unwrap();
    assert_eq!(client.bad_shares(), vec![flipped[0].from]);

    let (mut s, relayed) = advertised(6).shared();
    let mut relabelled = relayed[&a].clone();
    let (x, y) = (relabelled[0].from, relabelled[1].from);
    relabelled[0].from = y;
    relabelled[1].from = x;
    let client = s.clients.get_mut(&a).unwrap();
    client.on_shares(&relabelled).unwrap();
    assert_eq!(client.bad_shares(), vec![x.min(y), x.max(y)]);
}

/// A malicious agent that sends garbage shares to some neighbours does not make them refuse the round, and does
/// not make the round abort: they name it in their receipts and reveal nothing of its secrets. With at most
/// `k - t` garbage shares it stays in (its secrets are rebuilt from the others) and the sum is exact over everyone;
/// with more (up to all of its neighbours) the receipts leave it out before anyone masks with it, the server
/// blames it, and the sum is exact over the honest agents.
#[test]
fn garbage_shares_from_one_agent_never_abort_the_round_the_receipts_leave_it_out_when_too_few_are_usable() {
    for garbage in [1usize, 2, 5] {
        let (mut s, mut relayed) = advertised(6).shared();
        let bad = s.agent(0);
        let victims: Vec<u32> = (1..=garbage).map(|pos| s.agent(pos)).collect();
        for v in &victims {
            for share in relayed.get_mut(v).unwrap().iter_mut().filter(|sh| sh.from == bad) {
                share.ciphertext.iter_mut().for_each(|b| *b = b.wrapping_mul(31).wrapping_add(7));
            }
        }
        for (&i, c) in s.clients.iter_mut() {
            let receipt = c.on_shares(&relayed[&i]).unwrap();
            assert_eq!(receipt.bad, if victims.contains(&i) { vec![bad] } else { vec![] });
            s.server.on_receipt(i, receipt).unwrap();
        }
        let receipts = s.server.close_receipts().unwrap();
        let k_minus_t = s.params.effective_neighbours(6) - s.params.threshold as usize;
        let left_out = garbage > k_minus_t;
        assert_eq!(receipts.blamed, if left_out { vec![bad] } else { vec![] }, "{garbage} garbage shares");
        assert_eq!(receipts.mask_with.contains_key(&bad), !left_out);
        let mut plain = BTreeMap::new();
        for (&i, c) in s.clients.iter_mut() {
            let Some(mine) = receipts.mask_with.get(&i) else { continue };
            assert_eq!(mine.neighbours.contains(&bad), !left_out && i != bad);
            c.on_mask_with(mine).unwrap();
            let q = QuantizedInput::new(&s.params, &[0.5; P], 7, &mut s.rng).unwrap();
            plain.insert(i, q.as_slice().to_vec());
            let masked = c.mask(q).unwrap();
            s.server.fold_masked(i, 0, &masked).unwrap();
            s.server.finish_masked(i).unwrap();
        }
        let requests = consistent(&mut s);
        for (i, req) in requests {
            let resp = s.clients.get_mut(&i).unwrap().on_unmask_request(&req, &s.cohort.table).unwrap();
            if victims.contains(&i) || left_out {
                assert!(resp.seed_shares.iter().all(|r| r.owner != bad), "nothing of the bad agent is revealed");
                assert!(resp.key_shares.iter().all(|r| r.owner != bad), "nothing of the bad agent is revealed");
            }
            s.server.on_unmask(i, resp).unwrap();
        }
        let sum = s.server.finish_quantized().expect("the round completes");
        assert_eq!(sum.survivors.contains(&bad), !left_out);
        let mut expect = vec![0u32; P + 1];
        for v in plain.values() {
            expect.iter_mut().zip(v).for_each(|(e, x)| *e = e.wrapping_add(*x));
        }
        assert_eq!(sum.values, expect);
    }
}

/// A receipt can lie, but one liar cannot push an honest agent out: it only withdraws its own vouch. The receipts
/// are checked like every other message: in phase, from a member, naming only neighbours that shared with it, in
/// order, once.
#[test]
fn one_lying_receipt_leaves_nobody_out_and_malformed_receipts_are_refused() {
    let (mut s, relayed) = advertised(6).shared();
    let (liar, honest) = (s.agent(0), s.agent(1));
    let mut receipts = BTreeMap::new();
    for (&i, c) in s.clients.iter_mut() {
        receipts.insert(i, c.on_shares(&relayed[&i]).unwrap());
    }
    let mut lie = receipts[&liar].clone();
    lie.bad = vec![honest];
    let mut unordered = lie.clone();
    unordered.bad = vec![s.agent(2).max(honest), s.agent(2).min(honest)];
    assert!(matches!(s.server.on_receipt(liar, unordered), Err(SecAggError::Malformed(_))));
    let mut not_a_neighbour = lie.clone();
    not_a_neighbour.bad = vec![99_999];
    assert!(matches!(s.server.on_receipt(liar, not_a_neighbour), Err(SecAggError::NotNeighbour { .. })));
    let mut itself = lie.clone();
    itself.bad = vec![liar];
    assert!(matches!(s.server.on_receipt(liar, itself), Err(SecAggError::NotNeighbour { .. })));
    assert!(matches!(s.server.on_receipt(honest, lie.clone()), Err(SecAggError::WrongSender { .. })));
    s.server.on_receipt(liar, lie.clone()).unwrap();
    assert_eq!(s.server.on_receipt(liar, lie).unwrap_err(), SecAggError::Duplicate(liar));
    for (i, r) in receipts {
        if i != liar {
            s.server.on_receipt(i, r).unwrap();
        }
    }
    let decided = s.server.close_receipts().unwrap();
    assert!(decided.blamed.is_empty());
    assert_eq!(decided.mask_with.len(), 6, "everyone stays in");
    assert!(decided.mask_with[&liar].neighbours.contains(&honest));
}

/// The server's answer to the receipts is checked by each agent: only neighbours that shared with it, at least
/// `t` of them (fewer would let the server strip its masks), for this round and this agent.
#[test]
fn an_agent_refuses_a_masking_set_below_the_threshold_or_with_strangers() {
    let (mut s, relayed) = advertised(6).shared();
    let a = s.agent(0);
    let client = s.clients.get_mut(&a).unwrap();
    client.on_shares(&relayed[&a]).unwrap();
    let mine: Vec<u32> = client.neighbours().to_vec();
    let t = s.params.threshold as usize;
    let msg = |neighbours: Vec<u32>| MaskWith { round: ROUND, to: a, neighbours };
    assert_eq!(
        client.on_mask_with(&msg(mine[..t - 1].to_vec())).unwrap_err(),
        SecAggError::NotEnoughNeighbours { have: t - 1, need: t }
    );
    let mut stranger = mine.clone();
    stranger.push(99_999);
    assert!(matches!(client.on_mask_with(&msg(stranger)), Err(SecAggError::NotNeighbour { .. })));
    assert!(matches!(
        client.on_mask_with(&MaskWith { round: ROUND + 1, to: a, neighbours: mine.clone() }),
        Err(SecAggError::WrongRound { .. })
    ));
    assert!(matches!(
        client.on_mask_with(&MaskWith { round: ROUND, to: a + 1, neighbours: mine.clone() }),
        Err(SecAggError::WrongRecipient { .. })
    ));
    client.on_mask_with(&msg(mine[..t].to_vec())).unwrap();
    assert!(matches!(client.on_mask_with(&msg(mine)), Err(SecAggError::OutOfPhase { .. })));
}

#[test]
fn too_few_shares_are_refused_so_an_agent_never_masks_with_fewer_than_t_neighbours() {
    let (mut s, relayed) = advertised(6).shared();
    let a = s.agent(0);
    let few: Vec<EncryptedShare> = relayed[&a].iter().take(3).cloned().collect();
    assert_eq!(
        s.clients.get_mut(&a).unwrap().on_shares(&few).unwrap_err(),
        SecAggError::NotEnoughNeighbours { have: 3, need: 4 }
    );
}

#[test]
fn the_server_refuses_shares_of_another_round_or_sender() {
    let mut s = advertised(6);
    let a = s.agent(0);
    let shares = s.clients.get_mut(&a).unwrap().on_keys(&s.broadcast, &s.cohort.table, &mut s.rng).unwrap();
    let mut stale = shares.clone();
    stale[0].round = ROUND + 1;
    assert!(matches!(s.server.on_shares(a, stale), Err(SecAggError::WrongRound { .. })));
    let b = s.agent(1);
    assert!(matches!(s.server.on_shares(b, shares.clone()), Err(SecAggError::WrongSender { .. })));
    let mut short = shares.clone();
    short.pop();
    assert!(matches!(s.server.on_shares(a, short), Err(SecAggError::Malformed(_))));
    s.server.on_shares(a, shares).unwrap();
}

#[test]
fn an_agent_asked_for_both_secrets_of_one_neighbour_refuses() {
    let (mut s, uploads) = advertised(6).masked();
    let survivors: Vec<u32> = uploads.keys().copied().collect();
    let (me, other) = (survivors[0], survivors[1]);
    // Everyone signs the true survivor set; the server relays the signatures honestly.
    let set = SurvivorSet { round: ROUND, survivors: survivors.clone() };
    let signatures: Vec<_> =
        s.clients.iter_mut().map(|(&i, c)| c.on_survivors(&set, s.cohort.signer(i)).unwrap()).collect();
    let table = &s.cohort.table;
    let client = s.clients.get_mut(&me).unwrap();
    let request = |survivors: Vec<u32>, dropped: Vec<u32>| UnmaskRequest {
        round: ROUND,
        survivors,
        dropped,
        signatures: signatures.clone(),
    };

    let both = request(survivors.clone(), vec![other]);
    assert!(matches!(client.on_unmask_request(&both, table), Err(SecAggError::InconsistentRequest(_))));

    let missing = request(survivors.iter().copied().filter(|&a| a != other).collect(), vec![]);
    assert!(matches!(client.on_unmask_request(&missing, table), Err(SecAggError::InconsistentRequest(_))));

    let without_me = request(survivors.iter().copied().filter(|&a| a != me).collect(), vec![me]);
    assert!(matches!(client.on_unmask_request(&without_me, table), Err(SecAggError::InconsistentRequest(_))));

    let mut stale = request(survivors.clone(), vec![]);
    stale.round += 1;
    assert!(matches!(client.on_unmask_request(&stale, table), Err(SecAggError::WrongRound { .. })));

    // The honest request is answered with seed shares only...
    let honest = request(survivors.clone(), vec![]);
    let resp = client.on_unmask_request(&honest, table).unwrap();
    assert_eq!(resp.seed_shares.len(), 5);
    assert!(resp.key_shares.is_empty());
    // ...and a second request, now claiming a neighbour dropped to get its mask key, is refused.
    let second = request(survivors.iter().copied().filter(|&a| a != other).collect(), vec![other]);
    assert!(matches!(client.on_unmask_request(&second, table), Err(SecAggError::OutOfPhase { .. })));
}

#[test]
fn the_server_refuses_uploads_and_unmask_answers_from_the_wrong_agent_or_round() {
    let (mut s, uploads) = advertised(6).masked();
    let ids: Vec<u32> = uploads.keys().copied().collect();
    assert_eq!(s.server.fold_masked(12_345, 0, &uploads[&ids[0]]).unwrap_err(), SecAggError::UnknownAgent(12_345));
    assert_eq!(s.server.fold_masked(ids[0], 0, &uploads[&ids[0]][..P]).err(), None);
    assert_eq!(s.server.fold_masked(ids[0], 5, &uploads[&ids[0]][..3]).unwrap_err(), SecAggError::BadUpload(ids[0]));
    s.server.abort_masked(ids[0]);
    assert_eq!(s.server.fold_masked(ids[1], 0, &[0u32; P + 2]).unwrap_err(), SecAggError::BadUpload(ids[1]));
    for (&i, v) in &uploads {
        s.server.fold_masked(i, 0, v).unwrap();
    }
    assert_eq!(s.server.fold_masked(ids[2], 0, &uploads[&ids[2]]).unwrap_err(), SecAggError::Duplicate(ids[2]));
    let requests = consistent(&mut s);
    let mut resp = s.clients.get_mut(&ids[0]).unwrap().on_unmask_request(&requests[&ids[0]], &s.cohort.table).unwrap();
    resp.round += 1;
    assert!(matches!(s.server.on_unmask(ids[0], resp.clone()), Err(SecAggError::WrongRound { .. })));
    resp.round -= 1;
    assert!(matches!(s.server.on_unmask(ids[1], resp.clone()), Err(SecAggError::WrongSender { .. })));
    s.server.on_unmask(ids[0], resp).unwrap();
}

#[test]
fn an_upload_from_an_agent_that_did_not_share_keys_is_refused() {
    let mut s = advertised(6);
    let late = s.agent(5);
    for (&i, c) in s.clients.iter_mut() {
        let shares = c.on_keys(&s.broadcast, &s.cohort.table, &mut s.rng).unwrap();
        if i != late {
            s.server.on_shares(i, shares).unwrap();
        }
    }
    let relayed = s.server.close_shares().unwrap();
    assert!(!relayed.contains_key(&late));
    assert!(matches!(
        s.server.on_receipt(late, ShareReceipt { round: ROUND, from: late, bad: vec![] }),
        Err(SecAggError::NotParticipating(_))
    ));
    for (&i, c) in s.clients.iter_mut() {
        if let Some(mine) = relayed.get(&i) {
            let receipt = c.on_shares(mine).unwrap();
            s.server.on_receipt(i, receipt).unwrap();
        }
    }
    s.server.close_receipts().unwrap();
    assert_eq!(s.server.fold_masked(late, 0, &[0; P + 1]).unwrap_err(), SecAggError::NotParticipating(late));
    // And its late shares are refused too.
    assert!(matches!(s.server.on_shares(late, vec![]), Err(SecAggError::OutOfPhase { .. })));
}

#[test]
fn a_broken_upload_is_rolled_back_and_the_sum_of_the_others_stays_exact() {
    let (mut s, relayed) = advertised(6).shared();
    let mut plain = BTreeMap::new();
    let mut uploads = BTreeMap::new();
    s.receipted(&relayed);
    for (&i, c) in s.clients.iter_mut() {
        let q = QuantizedInput::new(&s.params, &[0.5; P], 7, &mut s.rng).unwrap();
        plain.insert(i, q.as_slice().to_vec());
        uploads.insert(i, c.mask(q).unwrap());
    }
    let ids: Vec<u32> = uploads.keys().copied().collect();
    let broken = ids[0];
    let half = uploads[&broken].len() / 2;
    s.server.fold_masked(broken, 0, &uploads[&broken][..half]).unwrap();
    // The stream breaks: finishing an incomplete upload is an error and discards it.
    assert_eq!(s.server.finish_masked(broken).unwrap_err(), SecAggError::BadUpload(broken));
    // Staging is bounded.
    s.server.set_max_staged_uploads(1);
    s.server.fold_masked(ids[1], 0, &uploads[&ids[1]][..2]).unwrap();
    assert_eq!(s.server.fold_masked(ids[2], 0, &uploads[&ids[2]][..2]).unwrap_err(), SecAggError::TooManyUploads(1));
    s.server.abort_masked(ids[1]);
    for &i in &ids[1..] {
        s.server.fold_masked(i, 0, &uploads[&i]).unwrap();
        s.server.finish_masked(i).unwrap();
    }
    let requests = consistent(&mut s);
    for (i, req) in requests {
        assert_eq!(req.dropped, vec![broken]);
        let resp = s.clients.get_mut(&i).unwrap().on_unmask_request(&req, &s.cohort.table).unwrap();
        s.server.on_unmask(i, resp).unwrap();
    }
    let sum = s.server.finish_quantized().unwrap();
    let mut expect = vec![0u32; P + 1];
    for i in &ids[1..] {
        expect.iter_mut().zip(&plain[i]).for_each(|(e, v)| *e = e.wrapping_add(*v));
    }
    assert_eq!(sum.values, expect);
}

#[test]
fn calls_out_of_phase_are_refused() {
    let mut s = advertised(6);
    assert!(matches!(s.server.fold_masked(s.agent(0), 0, &[0; P + 1]), Err(SecAggError::OutOfPhase { .. })));
    let a = s.agent(0);
    let c = s.clients.get_mut(&a).unwrap();
    assert!(matches!(c.masked_input(&[0.0; P], 1, &mut s.rng), Err(SecAggError::OutOfPhase { .. })));
    assert!(matches!(c.on_shares(&[]), Err(SecAggError::OutOfPhase { .. })));
}

/// One bad agent: the first agent to answer the unmask request reveals garbage (inside the field, so it passes the
/// shape checks) for every neighbour's seed. Reconstruction tries other t-subsets against the signed commitments,
/// and the round completes with the exact sum instead of aborting.
#[test]
fn garbage_revealed_by_one_agent_does_not_abort_the_round() {
    let (mut s, relayed) = advertised(6).shared();
    let mut plain = vec![0u32; P + 1];
    let mut uploads = BTreeMap::new();
    s.receipted(&relayed);
    for (&i, c) in s.clients.iter_mut() {
        let q = QuantizedInput::new(&s.params, &[0.125; P], 3, &mut s.rng).unwrap();
        plain.iter_mut().zip(q.as_slice()).for_each(|(p, v)| *p = p.wrapping_add(*v));
        uploads.insert(i, c.mask(q).unwrap());
    }
    for (&i, v) in &uploads {
        s.server.fold_masked(i, 0, v).unwrap();
    }
    let requests = consistent(&mut s);
    let mut first = true;
    for (i, req) in requests {
        let mut resp = s.clients.get_mut(&i).unwrap().on_unmask_request(&req, &s.cohort.table).unwrap();
        if first {
            for share in &mut resp.seed_shares {
                share.value.0[0] = (share.value.0[0] + 12_345) % fedge_shared::secagg::shamir::MODULUS;
            }
            first = false;
        }
        s.server.on_unmask(i, resp).unwrap();
    }
    assert_eq!(s.server.finish_quantized().unwrap().values, plain);
}

/// Bounded contributions: an agent that adds to its masked words (the masks are additive, so the sum moves by the
/// same amount) to shrink the total weight and amplify the mean, or to push a coordinate past what the survivors
/// could produce, gets the round refused by the server's session: it outputs no sum at all.
#[test]
fn an_agent_that_shrinks_the_weight_or_inflates_a_coordinate_gets_the_round_refused() {
    let honest = |s: &mut Setup, relayed: &BTreeMap<u32, Vec<EncryptedShare>>| -> BTreeMap<u32, Vec<u32>> {
        let mut uploads = BTreeMap::new();
        for (&i, c) in s.clients.iter_mut() {
            let receipt = c.on_shares(&relayed[&i]).unwrap();
            s.server.on_receipt(i, receipt).unwrap();
        }
        let mask_with = s.server.close_receipts().unwrap().mask_with;
        for (&i, c) in s.clients.iter_mut() {
            c.on_mask_with(&mask_with[&i]).unwrap();
            uploads.insert(i, c.masked_input(&[0.25; P], 5, &mut s.rng).unwrap());
        }
        uploads
    };
    type Cheat = fn(&SecAggParams, &mut [u32]);
    let cheats: [(&str, Cheat); 3] = [
        // Cancel almost all of the others' weight: Σw becomes tiny and the mean huge.
        ("total weight", |p, v| v[0] = v[0].wrapping_sub(5 * (p.max_level() as u32) / 2)),
        // One coordinate far beyond what six agents can reach.
        ("coordinate", |p, v| v[3] = v[3].wrapping_add(8 * p.max_level() as u32)),
        // Wrap a coordinate below zero.
        ("coordinate", |p, v| v[2] = v[2].wrapping_sub(9 * p.max_level() as u32)),
    ];
    for (what, cheat) in cheats {
        let (mut s, relayed) = advertised(6).shared();
        let mut uploads = honest(&mut s, &relayed);
        let cheater = s.agent(3);
        cheat(&s.params, uploads.get_mut(&cheater).unwrap());
        for (i, v) in &uploads {
            s.server.fold_masked(*i, 0, v).unwrap();
            s.server.finish_masked(*i).unwrap();
        }
        for (i, req) in consistent(&mut s) {
            let resp = s.clients.get_mut(&i).unwrap().on_unmask_request(&req, &s.cohort.table).unwrap();
            s.server.on_unmask(i, resp).unwrap();
        }
        let err = s.server.finish().unwrap_err();
        assert!(matches!(err, SecAggError::OutOfBounds(_)), "{what}: {err}");
        assert!(err.to_string().contains(what), "{what}: {err}");
    }
    // And the honest round passes the same checks.
    let (mut s, relayed) = advertised(6).shared();
    for (i, v) in honest(&mut s, &relayed) {
        s.server.fold_masked(i, 0, &v).unwrap();
        s.server.finish_masked(i).unwrap();
    }
    for (i, req) in consistent(&mut s) {
        let resp = s.clients.get_mut(&i).unwrap().on_unmask_request(&req, &s.cohort.table).unwrap();
        s.server.on_unmask(i, resp).unwrap();
    }
    let sum = s.server.finish().unwrap();
    assert!((sum.weight_sum - 3.0).abs() < 1e-3, "{}", sum.weight_sum);
}
