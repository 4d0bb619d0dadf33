//! Ready-made [`KeySigner`] and [`PeerVerifier`] over ECDSA P-256 (ring), for the network layer and the tests:
//! an agent signs its advertised keys with its certificate key (PKCS#8), and peers check the signature against the
//! public key of the peer's CA-verified certificate.
//!
//! This adapter is not part of the sans-IO core: ring's ECDSA signing draws its nonce randomness from the operating
//! system. It must never accept a signature without a known public key for the named peer.

use std::collections::BTreeMap;

use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair};

use super::{AgentRef, KeySigner, PeerVerifier, SecAggError};

/// Signs with an ECDSA P-256 key (ASN.1 DER signatures, SHA-256).
pub struct EcdsaP256Signer {
    key: EcdsaKeyPair,
    rng: SystemRandom,
}

impl EcdsaP256Signer {
    /// The signer for a PKCS#8 (DER) ECDSA P-256 private key, such as an agent certificate's key.
    pub fn from_pkcs8(pkcs8: &[u8]) -> Result<Self, SecAggError> {
        let rng = SystemRandom::new();
        let key = EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8, &rng)
            .map_err(|e| SecAggError::Signing(format!("not an ECDSA P-256 PKCS#8 key: {e}")))?;
        Ok(EcdsaP256Signer { key, rng })
    }

    /// A fresh key pair and its PKCS#8 encoding (for tests and tools).
    pub fn generate() -> Result<(Self, Vec<u8>), SecAggError> {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
            .map_err(|e| SecAggError::Signing(e.to_string()))?;
        let bytes = pkcs8.as_ref().to_vec();
        Ok((Self::from_pkcs8(&bytes)?, bytes))
    }

    /// The public key as an uncompressed SEC1 point (what [`PeerKeyTable::insert`] takes).
    pub fn public_key(&self) -> Vec<u8> {
        self.key.public_key().as_ref().to_vec()
    }
}

impl KeySigner for EcdsaP256Signer {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, SecAggError> {
        self.key.sign(&self.rng, msg).map(|s| s.as_ref().to_vec()).map_err(|e| SecAggError::Signing(e.to_string()))
    }
}

/// Peers' ECDSA P-256 public keys by agent name.
#[derive(Debug, Clone, Default)]
pub struct PeerKeyTable {
    keys: BTreeMap<String, Vec<u8>>,
}

impl PeerKeyTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records `name`'s public key (uncompressed SEC1 point, as in the certificate's SubjectPublicKeyInfo).
    pub fn insert(&mut self, name: impl Into<String>, public_key: Vec<u8>) {
        self.keys.insert(name.into(), public_key);
    }
}

impl PeerVerifier for PeerKeyTable {
    fn verify(&self, peer: &AgentRef, msg: &[u8], sig: &[u8]) -> bool {
        self.keys.get(&peer.name).is_some_and(|pk| {
            signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_ASN1, pk).verify(msg, sig).is_ok()
        })
    }
}
