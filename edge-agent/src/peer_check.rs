//! The checks an agent makes of its peers in a secure round, on what the server relays: every neighbour's
//! certificate must chain to the federation CA, be an agent certificate, name the agent the cohort lists at that
//! index and not be revoked by the CA-signed revocation list; the signing keys of the certificates that pass are
//! what the neighbours' key and survivor-set signatures are checked against.
//!
//! Pure functions over bytes and the time given: this module never opens a connection or a file, and never trusts
//! a certificate it has not verified. A certificate whose very bytes chained to the CA before
//! ([`VerifiedCerts`]) is not chain-verified again; its expiry, name, role and revocation are checked at every use.

use crate::verified_certs::VerifiedCerts;
use anyhow::{Context, anyhow, bail};
use fedge_shared::protocol::limits;
use fedge_shared::revocation_list::RevocationList;
use fedge_shared::secagg::{AdvertiseKeys, AgentRef, PeerKeyTable};
use fedge_shared::tls::{CertInfo, Role};
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use std::collections::HashMap;
use std::sync::Arc;

/// A verifier of agent certificates issued by the federation CA `ca` (webpki, as the server checks its clients).
pub fn peer_verifier(ca: &[CertificateDer<'static>]) -> anyhow::Result<Arc<dyn ClientCertVerifier>> {
    let mut roots = rustls::RootCertStore::empty();
    for c in ca {
        roots.add(c.clone()).context("federation CA certificate")?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .context("building the peer certificate verifier")
}

/// Checks the certificates relayed with a key broadcast (`certs[i]` for `keys[i].from`) and returns the signing
/// keys they carry, by agent name. Refuses a certificate that does not chain to the CA `verifier` trusts, that is
/// not an agent's, whose name is not the cohort's name for that index, or that is not valid at `now`.
pub fn peer_key_table(
    verifier: &dyn ClientCertVerifier,
    cohort: &[AgentRef],
    keys: &[AdvertiseKeys],
    certs: &[Vec<u8>],
    now: UnixTime,
) -> anyhow::Result<PeerKeyTable> {
    peer_key_table_of(verifier, &mut VerifiedCerts::default(), cohort, keys, certs, |_| true, None, now)
}

/// [`peer_key_table`] for the agents whose index `wanted` accepts (the other certificates are not looked at),
/// refusing any whose certificate the CA-signed list `revoked` names; certificates in `verified` are not
/// chain-verified again, and those that verify are added to it.
#[allow(clippy::too_many_arguments)]
pub fn peer_key_table_of(
    verifier: &dyn ClientCertVerifier,
    verified: &mut VerifiedCerts,
    cohort: &[AgentRef],
    keys: &[AdvertiseKeys],
    certs: &[Vec<u8>],
    wanted: impl Fn(u32) -> bool,
    revoked: Option<&RevocationList>,
    now: UnixTime,
) -> anyhow::Result<PeerKeyTable> {
    if certs.len() != keys.len() {
        bail!("{} certificates relayed for {} keys", certs.len(), keys.len());
    }
    let mut table = PeerKeyTable::new();
    for (k, der) in keys.iter().zip(certs).filter(|(k, _)| wanted(k.from)) {
        let name = cohort
            .iter()
            .find(|a| a.index == k.from)
            .map(|a| a.name.as_str())
            .ok_or_else(|| anyhow!("keys of agent {} who is not in the cohort", k.from))?;
        if der.len() > limits::CERTIFICATE {
            bail!("the certificate relayed for {name} has {} bytes", der.len());
        }
        let cert = CertificateDer::from(der.as_slice());
        let info = CertInfo::parse(&cert);
        if !info.as_ref().is_ok_and(|i| verified.holds(i, now)) {
            verifier
                .verify_client_cert(&cert, &[], now)
                .map_err(|e| anyhow!("the certificate relayed for {name} is not valid in this federation: {e}"))?;
        }
        let info = info.map_err(|e| anyhow!("the certificate relayed for {name}: {e}"))?;
        verified.insert(&info);
        if info.name != name {
            bail!("the certificate of {:?} was relayed for agent {name}", info.name);
        }
        if info.role != Role::Agent {
            bail!("the certificate relayed for {name} is not an agent certificate ({:?})", info.role);
        }
        if let Some(list) = revoked.filter(|l| l.revokes(&info.fingerprint)) {
            bail!(
                "the certificate of {name} is revoked by the federation CA (signed revocation list of {} unix time)",
                list.issued_at
            );
        }
        table.insert(name, info.public_key);
    }
    Ok(table)
}

/// Completes the certificates relayed with a round's keys (`certs[i]` for `keys[i].from`) from those this connection
/// was sent before: the server sends each peer's certificate once per connection and leaves it empty afterwards.
/// New ones are remembered (unverified: every certificate is verified each time it is used). Refuses an empty one
/// that was never sent.
pub(crate) fn with_known_certificates(
    cohort: &[AgentRef],
    keys: &[AdvertiseKeys],
    certs: Vec<Vec<u8>>,
    known: &mut HashMap<String, Vec<u8>>,
) -> anyhow::Result<Vec<Vec<u8>>> {
    if certs.len() != keys.len() {
        bail!("{} certificates relayed for {} keys", certs.len(), keys.len());
    }
    let mut out = Vec::with_capacity(certs.len());
    for (k, der) in keys.iter().zip(certs) {
        let name = cohort
            .iter()
            .find(|a| a.index == k.from)
            .map(|a| a.name.clone())
            .ok_or_else(|| anyhow!("keys of agent {} who is not in the cohort", k.from))?;
        if der.is_empty() {
            let cached = known.get(&name).ok_or_else(|| {
                anyhow!("the server sent no certificate for {name}, and none before on this connection")
            })?;
            out.push(cached.clone());
        } else {
            known.insert(name, der.clone());
            out.push(der);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use fedge_shared::secagg::{EcdsaP256Signer, KeySigner, PeerVerifier};
    use fedge_shared::tls::{self, Identity, files};

    #[test]
    fn a_certificate_sent_once_per_connection_is_taken_from_what_the_connection_was_sent_before() {
        let cohort: Vec<AgentRef> = (0..3).map(|i| AgentRef { index: i, name: format!("agent-{i}") }).collect();
        let keys: Vec<AdvertiseKeys> = (0..3).map(keys_from).collect();
        let mut known = HashMap::new();
        let first = vec![vec![10], vec![11], vec![12]];
        assert_eq!(with_known_certificates(&cohort, &keys, first.clone(), &mut known).unwrap(), first);
        // The next round: the server leaves the certificates it already sent empty, and sends a changed one.
        let next = vec![vec![], vec![21], vec![]];
        let got = with_known_certificates(&cohort, &keys, next, &mut known).unwrap();
        assert_eq!(got, vec![vec![10], vec![21], vec![12]]);
        // A certificate never sent cannot be left out, and the lists must match.
        let err = with_known_certificates(&cohort, &keys, vec![vec![], vec![], vec![]], &mut HashMap::new());
        assert!(err.unwrap_err().to_string().contains("no certificate for agent-0"));
        assert!(with_known_certificates(&cohort, &keys, vec![vec![1]], &mut known).is_err());
    }

    fn keys_from(from: u32) -> AdvertiseKeys {
        AdvertiseKeys {
            round: 1,
            from,
            enc_pk: [1; 32],
            mask_pk: [2; 32],
            seed_commitment: [3; 32],
            context: [4; 32],
            signature: vec![],
        }
    }

    #[test]
    fn relayed_certificates_must_chain_to_the_ca_name_the_cohort_member_and_be_agent_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let pki = dir.path().join("pki");
        tls::init_federation(&pki, &["localhost".into()], 30).unwrap();
        let der = |bundle: &std::path::Path| Identity::load_bundle(bundle).unwrap().chain[0].as_ref().to_vec();
        let a0 = tls::issue_bundle(&pki, "a0", Role::Agent, 30).unwrap();
        let a1 = tls::issue_bundle(&pki, "a1", Role::Agent, 30).unwrap();
        let op = tls::issue_bundle(&pki, "op", Role::Operator, 30).unwrap();
        let other = dir.path().join("other");
        tls::init_federation(&other, &["localhost".into()], 30).unwrap();
        let foreign_a1 = tls::issue_bundle(&other, "a1", Role::Agent, 30).unwrap();
        let ca = tls::load_certs(&pki.join(files::CA_CERT)).unwrap();
        let verifier = peer_verifier(&ca).unwrap();
        let cohort = vec![AgentRef { index: 0, name: "a0".into() }, AgentRef { index: 1, name: "a1".into() }];
        let keys = vec![keys_from(0), keys_from(1)];

        let table = peer_key_table(verifier.as_ref(), &cohort, &keys, &[der(&a0), der(&a1)], UnixTime::now()).unwrap();
        let signer = EcdsaP256Signer::from_pkcs8(Identity::load_bundle(&a1).unwrap().key_pkcs8()).unwrap();
        let sig = signer.sign(b"m").unwrap();
        assert!(table.verify(&cohort[1], b"m", &sig), "a1's certificate key checks a1's signature");
        assert!(!table.verify(&cohort[0], b"m", &sig), "and not as a0's");

        let swapped =
            peer_key_table(verifier.as_ref(), &cohort, &keys, &[der(&a1), der(&a0)], UnixTime::now()).unwrap_err();
        assert!(format!("{swapped:#}").contains("was relayed for agent a0"), "{swapped:#}");
        let foreign = peer_key_table(verifier.as_ref(), &cohort, &keys, &[der(&a0), der(&foreign_a1)], UnixTime::now())
            .unwrap_err();
        assert!(format!("{foreign:#}").contains("not valid in this federation"), "{foreign:#}");
        let op_cohort = vec![cohort[0].clone(), AgentRef { index: 1, name: "op".into() }];
        let operator =
            peer_key_table(verifier.as_ref(), &op_cohort, &keys, &[der(&a0), der(&op)], UnixTime::now()).unwrap_err();
        assert!(format!("{operator:#}").contains("not an agent certificate"), "{operator:#}");
        let short = peer_key_table(verifier.as_ref(), &cohort, &keys, &[der(&a0)], UnixTime::now()).unwrap_err();
        assert!(format!("{short:#}").contains("1 certificates relayed for 2 keys"), "{short:#}");
    }

    /// The CA verifier, counting the certificates it is asked to verify.
    #[derive(Debug)]
    struct Counting {
        inner: Arc<dyn ClientCertVerifier>,
        calls: std::sync::atomic::AtomicUsize,
    }

    impl Counting {
        fn calls(&self) -> usize {
            self.calls.load(std::sync::atomic::Ordering::Relaxed)
        }
    }

    impl ClientCertVerifier for Counting {
        fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
            self.inner.root_hint_subjects()
        }
        fn verify_client_cert(
            &self,
            cert: &CertificateDer<'_>,
            intermediates: &[CertificateDer<'_>],
            now: UnixTime,
        ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
            self.calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.inner.verify_client_cert(cert, intermediates, now)
        }
        fn verify_tls12_signature(
            &self,
            m: &[u8],
            c: &CertificateDer<'_>,
            d: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            self.inner.verify_tls12_signature(m, c, d)
        }
        fn verify_tls13_signature(
            &self,
            m: &[u8],
            c: &CertificateDer<'_>,
            d: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            self.inner.verify_tls13_signature(m, c, d)
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.inner.supported_verify_schemes()
        }
    }

    #[test]
    fn a_certificate_that_verified_once_is_not_chain_verified_again_but_its_expiry_name_role_and_revocation_are() {
        let dir = tempfile::tempdir().unwrap();
        let pki = dir.path().join("pki");
        tls::init_federation(&pki, &["localhost".into()], 30).unwrap();
        let der = |bundle: &std::path::Path| Identity::load_bundle(bundle).unwrap().chain[0].as_ref().to_vec();
        let (a0, a1) = (
            der(&tls::issue_bundle(&pki, "a0", Role::Agent, 30).unwrap()),
            tls::issue_bundle(&pki, "a1", Role::Agent, 30).unwrap(),
        );
        let op = der(&tls::issue_bundle(&pki, "op", Role::Operator, 30).unwrap());
        let ca = tls::load_certs(&pki.join(files::CA_CERT)).unwrap();
        let verifier = Counting { inner: peer_verifier(&ca).unwrap(), calls: Default::default() };
        let cohort = vec![AgentRef { index: 0, name: "a0".into() }, AgentRef { index: 1, name: "a1".into() }];
        let keys = vec![keys_from(0), keys_from(1)];
        let certs = [a0.clone(), der(&a1)];
        let mut verified = VerifiedCerts::default();
        let now = UnixTime::now();
        let table_of = |verified: &mut VerifiedCerts, cohort: &[AgentRef], certs: &[Vec<u8>], now, revoked| {
            peer_key_table_of(&verifier, verified, cohort, &keys, certs, |_| true, revoked, now)
        };

        table_of(&mut verified, &cohort, &certs, now, None).unwrap();
        assert_eq!(verifier.calls(), 2);
        let table = table_of(&mut verified, &cohort, &certs, now, None).unwrap();
        assert_eq!(verifier.calls(), 2, "the same certificates were chain-verified again");
        let signer = EcdsaP256Signer::from_pkcs8(Identity::load_bundle(&a1).unwrap().key_pkcs8()).unwrap();
        assert!(table.verify(&cohort[1], b"m", &signer.sign(b"m").unwrap()), "the remembered key is a1's");

        // Remembered certificates under another name, past their expiry, revoked, or of another role are refused.
        let swapped = table_of(&mut verified, &cohort, &[certs[1].clone(), certs[0].clone()], now, None).unwrap_err();
        assert!(format!("{swapped:#}").contains("was relayed for agent a0"), "{swapped:#}");
        let later = UnixTime::since_unix_epoch(std::time::Duration::from_secs(now.as_secs() + 40 * 86_400));
        let expired = table_of(&mut verified, &cohort, &certs, later, None).unwrap_err();
        assert!(format!("{expired:#}").contains("not valid in this federation"), "{expired:#}");
        let ca_key = std::fs::read_to_string(pki.join(files::CA_KEY)).unwrap();
        let a0_fingerprint = CertInfo::parse(&CertificateDer::from(a0.as_slice())).unwrap().fingerprint;
        let list = RevocationList::sign(&ca_key, vec![a0_fingerprint], now.as_secs()).unwrap();
        let revoked = table_of(&mut verified, &cohort, &certs, now, Some(&list)).unwrap_err();
        assert!(format!("{revoked:#}").contains("revoked"), "{revoked:#}");
        let op_cohort = vec![cohort[0].clone(), AgentRef { index: 1, name: "op".into() }];
        for _ in 0..2 {
            let operator = table_of(&mut verified, &op_cohort, &[a0.clone(), op.clone()], now, None).unwrap_err();
            assert!(format!("{operator:#}").contains("not an agent certificate"), "{operator:#}");
        }
        assert!(verified.len() <= 3, "{} fingerprints for three certificates", verified.len());
    }
}
