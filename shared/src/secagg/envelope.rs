//! End-to-end encryption of Shamir shares between two agents, relayed by the server: ChaCha20-Poly1305 (ring)
//! under a one-direction key derived from the X25519 agreement of the two encryption keys, with the round, sender
//! and recipient as associated data and inside the plaintext.
//!
//! This module must never reuse a key for two messages (one key per round, sender and recipient) and never returns
//! a share whose envelope does not match the expected round, sender and recipient.

use ring::aead;

use super::SecAggError;
use super::kdf;
use super::messages::{EncryptedShare, SHARE_PLAINTEXT_LEN};
use super::shamir::{LIMBS, ShareValue};

fn nonce(from: u32, to: u32) -> aead::Nonce {
    let mut n = [0u8; 12];
    n[..4].copy_from_slice(&from.to_le_bytes());
    n[4..8].copy_from_slice(&to.to_le_bytes());
    aead::Nonce::assume_unique_for_key(n)
}

fn associated(round: u64, from: u32, to: u32) -> Vec<u8> {
    let mut ad = Vec::with_capacity(40);
    ad.extend_from_slice(b"fedge-secagg-v1 share\0");
    ad.extend_from_slice(&round.to_le_bytes());
    ad.extend_from_slice(&from.to_le_bytes());
    ad.extend_from_slice(&to.to_le_bytes());
    ad
}

/// Seals `from`'s shares of its seed and its mask key for `to`.
pub(crate) fn seal(
    round: u64,
    from: u32,
    to: u32,
    agreement: &[u8; 32],
    seed: &ShareValue,
    key: &ShareValue,
) -> Result<EncryptedShare, SecAggError> {
    let mut buf = Vec::with_capacity(SHARE_PLAINTEXT_LEN + 16);
    buf.extend_from_slice(&round.to_le_bytes());
    buf.extend_from_slice(&from.to_le_bytes());
    buf.extend_from_slice(&to.to_le_bytes());
    for v in seed.0.iter().chain(key.0.iter()) {
        buf.extend_from_slice(&v.to_le_bytes());
    }
    let k = kdf::share_key(round, from, to, agreement);
    k.seal_in_place_append_tag(nonce(from, to), aead::Aad::from(associated(round, from, to)), &mut buf)
        .map_err(|_| SecAggError::Malformed("share encryption failed".into()))?;
    Ok(EncryptedShare { round, from, to, ciphertext: buf })
}

fn read_u64(b: &[u8], at: usize) -> Option<u64> {
    let s = b.get(at..at + 8)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(s);
    Some(u64::from_le_bytes(a))
}

/// Opens a share addressed to `me` in `round`; the caller has checked the envelope fields.
pub(crate) fn open(
    round: u64,
    me: u32,
    share: &EncryptedShare,
    agreement: &[u8; 32],
) -> Result<(ShareValue, ShareValue), SecAggError> {
    let from = share.from;
    let k = kdf::share_key(round, from, me, agreement);
    let mut buf = share.ciphertext.clone();
    let plain = k
        .open_in_place(nonce(from, me), aead::Aad::from(associated(round, from, me)), &mut buf)
        .map_err(|_| SecAggError::Decrypt(from))?;
    if plain.len() != SHARE_PLAINTEXT_LEN {
        return Err(SecAggError::Decrypt(from));
    }
    let inner_round = read_u64(plain, 0).ok_or(SecAggError::Decrypt(from))?;
    let inner_from = read_u64(plain, 8).ok_or(SecAggError::Decrypt(from))?;
    let expected_ids = u64::from(from) | (u64::from(me) << 32);
    if inner_round != round || inner_from != expected_ids {
        return Err(SecAggError::Decrypt(from));
    }
    let mut seed = [0u64; LIMBS];
    let mut key = [0u64; LIMBS];
    for (i, v) in seed.iter_mut().chain(key.iter_mut()).enumerate() {
        *v = read_u64(plain, 16 + 8 * i).ok_or(SecAggError::Decrypt(from))?;
    }
    Ok((ShareValue(seed), ShareValue(key)))
}
