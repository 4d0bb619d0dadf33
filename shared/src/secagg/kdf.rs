//! Key derivation for secure aggregation: every symmetric key is a full 32-byte HKDF-SHA256 output (ring::hkdf)
//! over an X25519 agreement or a random seed, salted with the protocol name and round and bound by its info to
//! its purpose and the agents involved.
//!
//! This module must never return a key derived without the round and agent indices in its context, and never
//! uses a non-cryptographic generator.

use ring::{aead, hkdf};

const SALT_PREFIX: &[u8] = b"fedge-secagg-v1";

fn salt(round: u64) -> hkdf::Salt {
    let mut s = Vec::with_capacity(SALT_PREFIX.len() + 8);
    s.extend_from_slice(SALT_PREFIX);
    s.extend_from_slice(&round.to_le_bytes());
    hkdf::Salt::new(hkdf::HKDF_SHA256, &s)
}

fn expand32(prk: &hkdf::Prk, info: &[&[u8]]) -> [u8; 32] {
    let mut out = [0u8; 32];
    // HKDF-SHA256 can always produce 32 bytes (the limit is 255 * 32), so neither error can happen.
    let okm = prk.expand(info, hkdf::HKDF_SHA256).unwrap_or_else(|_| unreachable!("HKDF length within limit"));
    okm.fill(&mut out).unwrap_or_else(|_| unreachable!("HKDF length within limit"));
    out
}

/// The ChaCha20 key of the pairwise mask between agents `a` and `b` (symmetric in `a`, `b`).
pub fn pairwise_mask_key(round: u64, a: u32, b: u32, agreement: &[u8; 32]) -> [u8; 32] {
    let (lo, hi) = if a < b { (a, b) } else { (b, a) };
    let prk = salt(round).extract(agreement);
    expand32(&prk, &[b"pairwise-mask", &lo.to_le_bytes(), &hi.to_le_bytes()])
}

/// The ChaCha20 key of agent `me`'s self mask.
pub fn self_mask_key(round: u64, me: u32, seed: &[u8; 32]) -> [u8; 32] {
    let prk = salt(round).extract(seed);
    expand32(&prk, &[b"self-mask", &me.to_le_bytes()])
}

/// The ChaCha20-Poly1305 key for the shares `from` sends to `to` (one direction only: the reverse direction gets a
/// different key, so a key is used for exactly one message).
pub fn share_key(round: u64, from: u32, to: u32, agreement: &[u8; 32]) -> aead::LessSafeKey {
    let prk = salt(round).extract(agreement);
    let bytes = expand32(&prk, &[b"share-envelope", &from.to_le_bytes(), &to.to_le_bytes()]);
    // 32 bytes is exactly the ChaCha20-Poly1305 key length, so this cannot fail.
    let unbound = aead::UnboundKey::new(&aead::CHACHA20_POLY1305, &bytes)
        .unwrap_or_else(|_| unreachable!("ChaCha20-Poly1305 takes a 32-byte key"));
    aead::LessSafeKey::new(unbound)
}

/// The commitment to a self-mask seed that an agent signs with its keys, so the server can check a reconstruction.
pub fn seed_commitment(round: u64, me: u32, seed: &[u8; 32]) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(b"fedge-secagg-v1 seed-commitment");
    ctx.update(&round.to_le_bytes());
    ctx.update(&me.to_le_bytes());
    ctx.update(seed);
    let d = ctx.finish();
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pairwise_key_is_the_same_from_both_sides_and_depends_on_round_and_pair() {
        let s = [9u8; 32];
        assert_eq!(pairwise_mask_key(1, 2, 5, &s), pairwise_mask_key(1, 5, 2, &s));
        assert_ne!(pairwise_mask_key(1, 2, 5, &s), pairwise_mask_key(2, 2, 5, &s));
        assert_ne!(pairwise_mask_key(1, 2, 5, &s), pairwise_mask_key(1, 2, 6, &s));
    }

    #[test]
    fn the_self_mask_key_depends_on_the_agent_and_the_round() {
        let s = [1u8; 32];
        assert_ne!(self_mask_key(1, 2, &s), self_mask_key(1, 3, &s));
        assert_ne!(self_mask_key(1, 2, &s), self_mask_key(2, 2, &s));
    }
}
