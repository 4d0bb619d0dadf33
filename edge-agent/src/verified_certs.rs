//! Peers' certificates this agent has verified against the federation CA, by fingerprint (SHA-256 of the DER), so
//! that a neighbour's certificate is chain-verified the first time it is used rather than in every round: the CA's
//! signature on the same bytes verifies the same way every time, and it was an ECDSA verification (and a chain
//! built) per neighbour per round.
//!
//! What is not remembered is checked at every use by [`crate::peer_check`]: the certificate's expiry against the
//! time given, the name the cohort lists, the role, and the CA-signed revocation list. This module must never hold a
//! certificate that did not verify, nor answer for bytes other than those verified (the fingerprint is of the whole
//! DER).

use fedge_shared::tls::CertInfo;
use rustls::pki_types::UnixTime;
use std::collections::HashSet;

/// The most fingerprints kept; past it the set starts again empty (each is then verified once more).
pub const MAX_VERIFIED: usize = 8192;

/// Fingerprints of certificates that chained to the CA.
#[derive(Debug, Default)]
pub struct VerifiedCerts {
    fingerprints: HashSet<[u8; 32]>,
}

impl VerifiedCerts {
    /// Whether `info`'s certificate was verified before and has not expired at `now`.
    pub fn holds(&self, info: &CertInfo, now: UnixTime) -> bool {
        let unexpired = i64::try_from(now.as_secs()).is_ok_and(|now| now <= info.not_after);
        unexpired && self.fingerprints.contains(&info.fingerprint.0)
    }

    /// Records that `info`'s certificate verified against the CA.
    pub fn insert(&mut self, info: &CertInfo) {
        if self.fingerprints.len() >= MAX_VERIFIED {
            self.fingerprints.clear();
        }
        self.fingerprints.insert(info.fingerprint.0);
    }

    /// How many fingerprints are kept.
    pub fn len(&self) -> usize {
        self.fingerprints.len()
    }

    /// Whether none is kept.
    pub fn is_empty(&self) -> bool {
        self.fingerprints.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fedge_shared::model::Digest;
    use fedge_shared::tls::Role;

    fn info(i: u32, not_after: i64) -> CertInfo {
        let mut fp = [0u8; 32];
        fp[..4].copy_from_slice(&i.to_le_bytes());
        CertInfo { name: format!("a{i}"), role: Role::Agent, fingerprint: Digest(fp), not_after, public_key: vec![] }
    }

    fn at(secs: u64) -> UnixTime {
        UnixTime::since_unix_epoch(std::time::Duration::from_secs(secs))
    }

    #[test]
    fn a_certificate_is_held_once_inserted_and_until_it_expires() {
        let mut v = VerifiedCerts::default();
        assert!(!v.holds(&info(1, 100), at(50)));
        v.insert(&info(1, 100));
        assert!(v.holds(&info(1, 100), at(100)));
        assert!(!v.holds(&info(1, 100), at(101)), "held past its expiry");
        assert!(!v.holds(&info(2, 100), at(50)), "another certificate's bytes");
    }

    #[test]
    fn the_set_never_grows_past_its_bound() {
        let mut v = VerifiedCerts::default();
        for i in 0..(MAX_VERIFIED as u32 + 10) {
            v.insert(&info(i, 100));
            assert!(v.len() <= MAX_VERIFIED);
        }
        assert!(v.holds(&info(MAX_VERIFIED as u32 + 9, 100), at(0)), "the newest is held");
    }
}
