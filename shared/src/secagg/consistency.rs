//! The consistency round of secure aggregation (Bonawitz et al. 2017, "ConsistencyCheck"), fitted to the SecAgg+
//! neighbour graph: between the masked input and the unmask phase, the server sends every survivor the survivor
//! set ([`SurvivorSet`]); each survivor signs (round, its index, the set) with its certificate key
//! ([`SurvivorSignature`]); the server relays to each agent the signatures of its neighbours inside the
//! [`super::UnmaskRequest`]. An agent reveals shares only when at least `t` of its own neighbours signed the very
//! set it signed itself, and it signs one set per round.
//!
//! Why this stops a lying server: a neighbour of agent `j` that reveals `j`'s seed share signed a set containing
//! `j`; one that reveals `j`'s mask-key share signed a set without `j`. Each needs `t` of its own neighbours to have
//! signed its set, and each agent signs once; with `t > k/2` no agent's neighbourhood holds `t` signers of two
//! different sets, so the server cannot collect the seed of a survivor and the mask key of one of its neighbours
//! from two halves of the cohort told different stories.
//!
//! This module defines the messages, the bytes that are signed and their size limits; it never decides on its own
//! whether to reveal anything (that is [`super::ClientSession::on_unmask_request`]'s job).

use serde::{Deserialize, Serialize};

use super::SecAggError;
use super::messages::MAX_SIGNATURE_LEN;

/// Consistency round, server → every survivor: the agents whose masked input is in the sum (strictly ascending).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SurvivorSet {
    pub round: u64,
    pub survivors: Vec<u32>,
}

/// Consistency round, agent → server → the agent's neighbours: the agent's certificate-key signature over
/// [`survivors_message`] for the set it was sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SurvivorSignature {
    pub round: u64,
    pub from: u32,
    pub signature: Vec<u8>,
}

impl SurvivorSignature {
    pub(crate) fn check_size(&self) -> Result<(), SecAggError> {
        if self.signature.len() > MAX_SIGNATURE_LEN {
            return Err(SecAggError::Malformed(format!("survivor-set signature of {} bytes", self.signature.len())));
        }
        Ok(())
    }
}

/// The bytes agent `from` signs for `survivors` in `round`: a domain tag, the round, the signer, the set's size and
/// its members in order.
pub fn survivors_message(round: u64, from: u32, survivors: &[u32]) -> Vec<u8> {
    let mut m = Vec::with_capacity(40 + 4 * survivors.len());
    m.extend_from_slice(b"fedge-secagg-v1 survivor-set\0");
    m.extend_from_slice(&round.to_le_bytes());
    m.extend_from_slice(&from.to_le_bytes());
    m.extend_from_slice(&(survivors.len() as u64).to_le_bytes());
    for s in survivors {
        m.extend_from_slice(&s.to_le_bytes());
    }
    m
}

/// Checks that `survivors` is strictly ascending (the one canonical form that is signed).
pub(crate) fn check_canonical(survivors: &[u32]) -> Result<(), SecAggError> {
    if let Some(w) = survivors.windows(2).find(|w| w[0] >= w[1]) {
        return Err(if w[0] == w[1] {
            SecAggError::Duplicate(w[0])
        } else {
            SecAggError::Malformed(format!("agent list not in ascending order ({} before {})", w[0], w[1]))
        });
    }
    Ok(())
}

/// Decoding limit for a [`SurvivorSet`] in a cohort of `cohort`.
pub fn survivor_set_limit(cohort: usize) -> usize {
    32 + cohort.saturating_mul(5)
}

/// Decoding limit for one [`SurvivorSignature`].
pub const SURVIVOR_SIGNATURE_LIMIT: usize = 8 + 5 + 5 + MAX_SIGNATURE_LEN + 16;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec;

    #[test]
    fn the_signed_bytes_differ_for_any_other_round_signer_or_set() {
        let base = survivors_message(3, 1, &[1, 2, 5]);
        assert_ne!(base, survivors_message(4, 1, &[1, 2, 5]));
        assert_ne!(base, survivors_message(3, 2, &[1, 2, 5]));
        assert_ne!(base, survivors_message(3, 1, &[1, 2]));
        assert_ne!(base, survivors_message(3, 1, &[1, 2, 6]));
    }

    #[test]
    fn only_strictly_ascending_sets_are_canonical() {
        assert!(check_canonical(&[1, 4, 9]).is_ok());
        assert_eq!(check_canonical(&[1, 4, 4]).unwrap_err(), SecAggError::Duplicate(4));
        assert!(matches!(check_canonical(&[4, 1]), Err(SecAggError::Malformed(_))));
    }

    #[test]
    fn the_largest_messages_fit_their_limits() {
        let set = SurvivorSet { round: u64::MAX, survivors: vec![u32::MAX; 1000] };
        assert!(codec::encode(&set).unwrap().len() <= survivor_set_limit(1000));
        let sig = SurvivorSignature { round: u64::MAX, from: u32::MAX, signature: vec![0xFF; MAX_SIGNATURE_LEN] };
        assert!(codec::encode(&sig).unwrap().len() <= SURVIVOR_SIGNATURE_LIMIT);
    }
}
