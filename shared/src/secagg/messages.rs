//! The messages of secure aggregation, as the network layer encodes them with the codec, and the size bounds the
//! network layer passes to `codec::decode` for each of them.
//!
//! Every message names its round and its sender (and recipient where there is one); the state machines reject any
//! mismatch. This module must never hold secret key material in a message type except encrypted shares and the
//! shares revealed on purpose in the unmask phase.

use serde::{Deserialize, Serialize};

use super::SecAggError;
use super::consistency::{SURVIVOR_SIGNATURE_LIMIT, SurvivorSignature};
use super::shamir::{LIMBS, ShareValue};

/// The longest agent name accepted.
pub const MAX_NAME_LEN: usize = 256;
/// The longest signature accepted (ECDSA P-256 ASN.1 is at most 72 bytes; room for other schemes).
pub const MAX_SIGNATURE_LEN: usize = 512;
/// The plaintext of one share envelope: round, sender, recipient, seed share, mask-key share.
pub const SHARE_PLAINTEXT_LEN: usize = 8 + 4 + 4 + 2 * LIMBS * 8;
/// The ciphertext of one share envelope (plaintext plus the 16-byte Poly1305 tag).
pub const SHARE_CIPHERTEXT_LEN: usize = SHARE_PLAINTEXT_LEN + 16;

/// An agent as the protocol knows it: its cohort index, and the name the network layer maps to its certificate.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AgentRef {
    pub index: u32,
    pub name: String,
}

/// Phase 1, agent → server → every agent: an agent's two public keys and its seed commitment, signed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdvertiseKeys {
    pub round: u64,
    pub from: u32,
    /// X25519 public key used to encrypt shares.
    pub enc_pk: [u8; 32],
    /// X25519 public key used for the pairwise masks.
    pub mask_pk: [u8; 32],
    /// SHA-256 commitment to the self-mask seed (lets the server check its reconstruction).
    pub seed_commitment: [u8; 32],
    /// The digest of everything the round's agents must agree on (model, training settings, cohort; see
    /// `protocol::RoundPlan::context`). Neighbours refuse an advertisement whose context differs from theirs.
    pub context: [u8; 32],
    /// The agent's certificate-key signature over [`AdvertiseKeys::signed_message`].
    pub signature: Vec<u8>,
}

impl AdvertiseKeys {
    /// The bytes that are signed: a domain tag, the round, the sender, the keys and the round's context.
    pub fn signed_message(&self) -> Vec<u8> {
        signed_message(self.round, self.from, [&self.enc_pk, &self.mask_pk, &self.seed_commitment, &self.context])
    }

    pub(crate) fn check_size(&self) -> Result<(), SecAggError> {
        if self.signature.len() > MAX_SIGNATURE_LEN {
            return Err(SecAggError::Malformed(format!("signature of {} bytes", self.signature.len())));
        }
        Ok(())
    }
}

/// The signed bytes of an advertisement: the encryption key, the mask key, the seed commitment and the context.
pub(crate) fn signed_message(round: u64, from: u32, fields: [&[u8; 32]; 4]) -> Vec<u8> {
    let mut m = Vec::with_capacity(32 + 12 + 128);
    m.extend_from_slice(b"fedge-secagg-v2 advertise-keys\0");
    m.extend_from_slice(&round.to_le_bytes());
    m.extend_from_slice(&from.to_le_bytes());
    for f in fields {
        m.extend_from_slice(f);
    }
    m
}

/// Phase 2, agent → server → one agent: the sender's shares for the recipient, sealed with ChaCha20-Poly1305.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncryptedShare {
    pub round: u64,
    pub from: u32,
    pub to: u32,
    pub ciphertext: Vec<u8>,
}

impl EncryptedShare {
    pub(crate) fn check_size(&self) -> Result<(), SecAggError> {
        if self.ciphertext.len() != SHARE_CIPHERTEXT_LEN {
            return Err(SecAggError::Malformed(format!("share ciphertext of {} bytes", self.ciphertext.len())));
        }
        Ok(())
    }
}

/// Phase 2b, agent → server: the receipt for the shares relayed to us, naming the neighbours whose share did not
/// decrypt or lay outside the field (ascending; empty when every share was good). Sent before masking, so that
/// the server can leave out, before anyone masks with it, an agent of which too few neighbours hold a usable share.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShareReceipt {
    pub round: u64,
    pub from: u32,
    pub bad: Vec<u32>,
}

/// Phase 2b, server → one agent: the neighbours to mask with (ascending), those of its neighbours that the
/// receipts leave in the round. Every neighbour left out is treated by everyone as one that never shared keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaskWith {
    pub round: u64,
    pub to: u32,
    pub neighbours: Vec<u32>,
}

/// Phase 5, server → each survivor that signed the survivor set: who sent a masked input, who dropped after sharing
/// keys, and the recipient's neighbours' signatures over the survivor set (the consistency round, see
/// [`super::consistency`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnmaskRequest {
    pub round: u64,
    pub survivors: Vec<u32>,
    pub dropped: Vec<u32>,
    pub signatures: Vec<SurvivorSignature>,
}

/// One share revealed in the unmask phase: the responder's share of `owner`'s secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevealedShare {
    pub owner: u32,
    pub value: ShareValue,
}

/// Phase 5, agent → server: shares of the self-mask seeds of surviving neighbours and of the mask keys of dropped
/// neighbours (never both for one neighbour).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnmaskResponse {
    pub round: u64,
    pub from: u32,
    pub seed_shares: Vec<RevealedShare>,
    pub key_shares: Vec<RevealedShare>,
}

/// Decoding limit for one [`AdvertiseKeys`].
pub const ADVERTISE_LIMIT: usize = 8 + 5 + 4 * 32 + 5 + MAX_SIGNATURE_LEN + 64;
/// Decoding limit for one [`EncryptedShare`].
pub const SHARE_LIMIT: usize = 8 + 5 + 5 + 5 + SHARE_CIPHERTEXT_LEN + 32;

/// Decoding limit for the broadcast of every agent's keys (`Vec<AdvertiseKeys>`) in a cohort of `cohort`.
pub fn advertise_broadcast_limit(cohort: usize) -> usize {
    10 + cohort.saturating_mul(ADVERTISE_LIMIT)
}

/// Decoding limit for the shares one agent sends or receives (`Vec<EncryptedShare>`) with `neighbours` neighbours.
pub fn shares_limit(neighbours: usize) -> usize {
    10 + neighbours.saturating_mul(SHARE_LIMIT)
}

/// Decoding limit for a [`ShareReceipt`] or a [`MaskWith`] of an agent with `neighbours` neighbours.
pub fn neighbour_list_limit(neighbours: usize) -> usize {
    32 + neighbours.saturating_mul(5)
}

/// Decoding limit for an [`UnmaskRequest`] in a cohort of `cohort` (at most one relayed signature per agent).
pub fn unmask_request_limit(cohort: usize) -> usize {
    32 + cohort.saturating_mul(10 + SURVIVOR_SIGNATURE_LIMIT)
}

/// Decoding limit for an [`UnmaskResponse`] of an agent with `neighbours` neighbours.
pub fn unmask_response_limit(neighbours: usize) -> usize {
    32 + neighbours.saturating_mul(5 + LIMBS * 9)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec;

    #[test]
    fn the_largest_valid_messages_fit_their_decoding_limits() {
        let adv = AdvertiseKeys {
            round: u64::MAX,
            from: u32::MAX,
            enc_pk: [0xFF; 32],
            mask_pk: [0xFF; 32],
            seed_commitment: [0xFF; 32],
            context: [0xFF; 32],
            signature: vec![0xFF; MAX_SIGNATURE_LEN],
        };
        let bytes = codec::encode(&adv).unwrap();
        assert!(bytes.len() <= ADVERTISE_LIMIT, "{}", bytes.len());
        assert_eq!(codec::decode::<AdvertiseKeys>(&bytes, ADVERTISE_LIMIT).unwrap(), adv);
        let many = vec![adv; 50];
        assert!(codec::encode(&many).unwrap().len() <= advertise_broadcast_limit(50));

        let share = EncryptedShare {
            round: u64::MAX,
            from: u32::MAX,
            to: u32::MAX,
            ciphertext: vec![0xFF; SHARE_CIPHERTEXT_LEN],
        };
        let shares = vec![share; 40];
        assert!(codec::encode(&shares).unwrap().len() <= shares_limit(40));

        let top = ShareValue([super::super::shamir::MODULUS - 1; LIMBS]);
        let revealed = RevealedShare { owner: u32::MAX, value: top };
        let resp = UnmaskResponse {
            round: u64::MAX,
            from: u32::MAX,
            seed_shares: vec![revealed; 20],
            key_shares: vec![revealed; 20],
        };
        assert!(codec::encode(&resp).unwrap().len() <= unmask_response_limit(40));

        let receipt = ShareReceipt { round: u64::MAX, from: u32::MAX, bad: vec![u32::MAX; 40] };
        assert!(codec::encode(&receipt).unwrap().len() <= neighbour_list_limit(40));
        let mask_with = MaskWith { round: u64::MAX, to: u32::MAX, neighbours: vec![u32::MAX; 40] };
        assert!(codec::encode(&mask_with).unwrap().len() <= neighbour_list_limit(40));

        let sig = SurvivorSignature { round: u64::MAX, from: u32::MAX, signature: vec![0xFF; MAX_SIGNATURE_LEN] };
        let req = UnmaskRequest {
            round: u64::MAX,
            survivors: vec![u32::MAX; 900],
            dropped: vec![u32::MAX; 100],
            signatures: vec![sig; 40],
        };
        assert!(codec::encode(&req).unwrap().len() <= unmask_request_limit(1000));
    }
}
