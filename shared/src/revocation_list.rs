//! The federation's signed revocation list: the fingerprints of revoked certificates and the time they were signed,
//! signed with the federation CA's key, so that an agent can check its secure-aggregation peers against it without
//! trusting the server that relays it.
//!
//! The operator signs it offline (`fedgectl agent revoke NAME --dir PKI` writes [`FILE`] next to `revoked.txt`); the
//! server relays the file's bytes with every key broadcast; each agent verifies the signature against the CA
//! certificate it holds and refuses a peer whose certificate is listed.
//!
//! Freshness: a list carries its signing time. An agent keeps the newest list it has verified and never goes back
//! to an older one, so a server cannot roll an agent back; but a server can withhold a newer list from an agent that
//! has never seen it, and a revocation reaches an agent only through the lists the server relays. A revoked
//! certificate is also refused by the server at its connection, so this check matters against a server that admits
//! revoked agents on purpose or by mistake.
//!
//! This module never trusts a list whose signature does not verify against the CA certificate given to it.

use std::path::Path;

use ring::signature::{self, EcdsaKeyPair};
use rustls_pki_types::CertificateDer;
use serde::{Deserialize, Serialize};

use crate::model::Digest;

/// The file the signed list is kept in, next to `revoked.txt`.
pub const FILE: &str = "revoked.sig";
/// The largest encoded list accepted (about 8,000 revoked certificates); it rides in the key broadcast, which must
/// fit one control frame for the largest secure cohort.
pub const LIMIT: usize = 256 * 1024;

/// Why a signed revocation list is refused or cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum RevocationListError {
    #[error("the revocation list is malformed: {0}")]
    Malformed(String),
    #[error("the revocation list's signature does not verify against the federation CA")]
    BadSignature,
    #[error("cannot sign the revocation list: {0}")]
    Signing(String),
}

/// A revocation list signed by the federation CA.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevocationList {
    /// Unix seconds when the operator signed it.
    pub issued_at: u64,
    /// SHA-256 fingerprints of the revoked certificates (of their DER).
    pub fingerprints: Vec<Digest>,
    /// The CA key's ECDSA P-256 signature over [`RevocationList::message`].
    pub signature: Vec<u8>,
}

fn message(issued_at: u64, fingerprints: &[Digest]) -> Vec<u8> {
    let mut m = Vec::with_capacity(40 + 32 * fingerprints.len());
    m.extend_from_slice(b"fedge revocation list v1\0");
    m.extend_from_slice(&issued_at.to_le_bytes());
    m.extend_from_slice(&(fingerprints.len() as u64).to_le_bytes());
    for f in fingerprints {
        m.extend_from_slice(&f.0);
    }
    m
}

impl RevocationList {
    /// Signs `fingerprints` at `issued_at` with the CA key `ca_key_pem` (the federation directory's `ca.key`).
    pub fn sign(ca_key_pem: &str, fingerprints: Vec<Digest>, issued_at: u64) -> Result<Self, RevocationListError> {
        let key = rcgen::KeyPair::from_pem(ca_key_pem).map_err(|e| RevocationListError::Signing(e.to_string()))?;
        let rng = ring::rand::SystemRandom::new();
        let pair = EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_ASN1_SIGNING, &key.serialize_der(), &rng)
            .map_err(|e| RevocationListError::Signing(format!("the CA key is not ECDSA P-256: {e}")))?;
        let sig = pair
            .sign(&rng, &message(issued_at, &fingerprints))
            .map_err(|e| RevocationListError::Signing(e.to_string()))?;
        Ok(RevocationList { issued_at, fingerprints, signature: sig.as_ref().to_vec() })
    }

    /// Signs the fingerprints listed in `revoked.txt` (`NAME FINGERPRINT` lines; lines without a fingerprint are
    /// skipped: peers check certificates, not names) with the CA key of the federation directory `dir`.
    pub fn sign_file(dir: &Path, revoked_txt: &str, issued_at: u64) -> Result<Self, RevocationListError> {
        let key_path = dir.join(crate::tls::files::CA_KEY);
        let pem = std::fs::read_to_string(&key_path)
            .map_err(|e| RevocationListError::Signing(format!("{}: {e}", key_path.display())))?;
        let mut fingerprints = Vec::new();
        for (n, line) in revoked_txt.lines().enumerate() {
            let Some(hex_fp) = line.split_whitespace().nth(1) else { continue };
            let bytes = hex::decode(hex_fp).ok().and_then(|b| <[u8; 32]>::try_from(b).ok()).ok_or_else(|| {
                RevocationListError::Malformed(format!("line {}: {hex_fp:?} is no fingerprint", n + 1))
            })?;
            fingerprints.push(Digest(bytes));
        }
        Self::sign(&pem, fingerprints, issued_at)
    }

    /// The bytes kept in [`FILE`] and relayed to agents.
    pub fn to_bytes(&self) -> Result<Vec<u8>, RevocationListError> {
        crate::codec::encode(self).map_err(|e| RevocationListError::Malformed(e.to_string()))
    }

    /// Decodes `bytes` and checks the signature against one of the CA certificates `ca`.
    pub fn verify(bytes: &[u8], ca: &[CertificateDer<'_>]) -> Result<Self, RevocationListError> {
        let list: RevocationList =
            crate::codec::decode(bytes, LIMIT).map_err(|e| RevocationListError::Malformed(e.to_string()))?;
        let msg = message(list.issued_at, &list.fingerprints);
        let signed_by_ca = ca.iter().any(|c| {
            x509_parser::parse_x509_certificate(c.as_ref()).is_ok_and(|(_, cert)| {
                let key = &cert.public_key().subject_public_key.data;
                signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_ASN1, key.as_ref())
                    .verify(&msg, &list.signature)
                    .is_ok()
            })
        });
        if !signed_by_ca {
            return Err(RevocationListError::BadSignature);
        }
        Ok(list)
    }

    /// Whether the certificate with `fingerprint` is revoked.
    pub fn revokes(&self, fingerprint: &Digest) -> bool {
        self.fingerprints.contains(fingerprint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls;

    fn federation() -> (tempfile::TempDir, Vec<CertificateDer<'static>>, String) {
        let dir = tempfile::tempdir().unwrap();
        tls::init_federation(dir.path(), &["localhost".into()], 30).unwrap();
        let ca = tls::load_certs(&dir.path().join(tls::files::CA_CERT)).unwrap();
        let key = std::fs::read_to_string(dir.path().join(tls::files::CA_KEY)).unwrap();
        (dir, ca, key)
    }

    #[test]
    fn a_list_signed_with_the_ca_key_verifies_and_names_what_it_revokes() {
        let (dir, ca, _) = federation();
        let fp = Digest::of(b"a certificate");
        let text = format!("lost-device {}\nname-only-line\n", fp.to_hex());
        let list = RevocationList::sign_file(dir.path(), &text, 1_700_000_000).unwrap();
        let back = RevocationList::verify(&list.to_bytes().unwrap(), &ca).unwrap();
        assert_eq!(back, list);
        assert!(back.revokes(&fp));
        assert!(!back.revokes(&Digest::of(b"another")));
        assert_eq!(back.issued_at, 1_700_000_000);
    }

    #[test]
    fn a_list_altered_or_signed_by_another_ca_is_refused() {
        let (_, ca, key) = federation();
        let list = RevocationList::sign(&key, vec![Digest::of(b"x")], 5).unwrap();
        // Dropping a revoked certificate, or back-dating, breaks the signature.
        for altered in
            [RevocationList { fingerprints: vec![], ..list.clone() }, RevocationList { issued_at: 6, ..list.clone() }]
        {
            let err = RevocationList::verify(&altered.to_bytes().unwrap(), &ca).unwrap_err();
            assert!(matches!(err, RevocationListError::BadSignature), "{err}");
        }
        let (_, other_ca, _) = federation();
        let err = RevocationList::verify(&list.to_bytes().unwrap(), &other_ca).unwrap_err();
        assert!(matches!(err, RevocationListError::BadSignature), "{err}");
        assert!(matches!(RevocationList::verify(b"junk", &ca), Err(RevocationListError::Malformed(_))));
    }

    #[test]
    fn a_fingerprint_that_is_not_hex_sha256_is_refused_with_its_line() {
        let (dir, _, _) = federation();
        let err = RevocationList::sign_file(dir.path(), "a 00ff\n", 1).unwrap_err().to_string();
        assert!(err.contains("line 1"), "{err}");
    }
}
