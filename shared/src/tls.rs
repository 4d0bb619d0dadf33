//! The federation's certificates and the rustls configurations built from them.
//!
//! A federation has one CA (made by `fedgectl init`). It signs the server's certificate, one certificate per agent
//! and one per operator. A certificate's subject carries the holder's name (CN) and role (OU `fedge-agent`,
//! `fedge-operator` or `fedge-server`); an agent's identity *is* its certificate's. QUIC runs TLS 1.3 with the ring
//! provider only, and both sides authenticate: the server accepts client certificates signed by the CA alone.
//!
//! This module writes private keys with mode 0600 and atomically (write, then rename); it never logs key material
//! and never accepts a peer certificate that does not chain to the federation CA.

use crate::model::Digest;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The role a certificate grants, written in its subject's OU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Role {
    Server,
    Agent,
    Operator,
}

impl Role {
    fn ou(self) -> &'static str {
        match self {
            Role::Server => "fedge-server",
            Role::Agent => "fedge-agent",
            Role::Operator => "fedge-operator",
        }
    }

    fn from_ou(ou: &str) -> Option<Role> {
        match ou {
            "fedge-server" => Some(Role::Server),
            "fedge-agent" => Some(Role::Agent),
            "fedge-operator" => Some(Role::Operator),
            _ => None,
        }
    }
}

/// Errors from certificate handling.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {problem}")]
    BadFile { path: PathBuf, problem: String },
    #[error("{0} already exists; refusing to overwrite it")]
    Exists(PathBuf),
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("TLS configuration failed: {0}")]
    Config(String),
    #[error("invalid name {0:?}: use 1-64 characters from [A-Za-z0-9._-]")]
    BadName(String),
    #[error("peer certificate: {0}")]
    Peer(String),
}

/// File names inside a PKI directory.
pub mod files {
    pub const CA_CERT: &str = "ca.pem";
    pub const CA_KEY: &str = "ca.key";
    pub const SERVER_CERT: &str = "server.pem";
    pub const SERVER_KEY: &str = "server.key";
    pub const CERT: &str = "cert.pem";
    pub const KEY: &str = "key.pem";
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TlsError + '_ {
    move |source| TlsError::Io { path: path.to_path_buf(), source }
}

/// Writes `bytes` to `path` atomically (temporary file in the same directory, fsync, rename), with `mode`.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), TlsError> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "file".into())
    ));
    {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(mode);
        }
        let mut f = opts.open(&tmp).map_err(io_err(&tmp))?;
        f.write_all(bytes).map_err(io_err(&tmp))?;
        f.sync_all().map_err(io_err(&tmp))?;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode)).map_err(io_err(&tmp))?;
    }
    std::fs::rename(&tmp, path).map_err(io_err(path))?;
    Ok(())
}

fn check_name(name: &str) -> Result<(), TlsError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok { Ok(()) } else { Err(TlsError::BadName(name.to_string())) }
}

fn validity(params: &mut CertificateParams, days: i64) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(days);
}

/// Refuses a certificate that has expired or is not valid yet, naming the file, the certificate and the date.
fn check_validity(path: &Path, index: usize, der: &CertificateDer<'_>, now_unix: i64) -> Result<(), TlsError> {
    let bad = |problem: String| TlsError::BadFile { path: path.to_path_buf(), problem };
    let (_, cert) =
        x509_parser::parse_x509_certificate(der.as_ref()).map_err(|e| bad(format!("certificate {index}: {e}")))?;
    let subject = cert.subject().to_string();
    let v = cert.validity();
    if now_unix > v.not_after.timestamp() {
        return Err(bad(format!(
            "certificate {index} ({subject}) expired on {}; issue a new one (`fedgectl agent add`, or `fedgectl init` \
             for the CA and the server)",
            v.not_after
        )));
    }
    if now_unix < v.not_before.timestamp() {
        return Err(bad(format!(
            "certificate {index} ({subject}) is not valid before {}; check this machine's clock",
            v.not_before
        )));
    }
    Ok(())
}

fn random_serial(params: &mut CertificateParams) {
    let mut serial = [0u8; 16];
    // ring's SystemRandom is the OS generator.
    use ring::rand::SecureRandom;
    if ring::rand::SystemRandom::new().fill(&mut serial).is_ok() {
        serial[0] &= 0x7f;
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
    }
}

/// Creates a federation: a CA and the server's certificate, in `dir`. `names` are the server's DNS names or IP
/// addresses (what agents dial). Refuses to overwrite an existing CA.
pub fn init_federation(dir: &Path, names: &[String], days: i64) -> Result<(), TlsError> {
    let ca_key_path = dir.join(files::CA_KEY);
    if ca_key_path.exists() {
        return Err(TlsError::Exists(ca_key_path));
    }
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "fedge federation CA");
    dn.push(DnType::OrganizationName, "fedge");
    ca.distinguished_name = dn;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    validity(&mut ca, days.max(1) * 2);
    random_serial(&mut ca);
    let ca_cert = ca.self_signed(&ca_key)?;
    write_atomic(&dir.join(files::CA_CERT), ca_cert.pem().as_bytes(), 0o644)?;
    write_atomic(&ca_key_path, ca_key.serialize_pem().as_bytes(), 0o600)?;
    let issuer = Issuer::new(ca, ca_key);
    let (cert, key) = issue(&issuer, "fedge-server", Role::Server, names, days)?;
    write_atomic(&dir.join(files::SERVER_CERT), cert.as_bytes(), 0o644)?;
    write_atomic(&dir.join(files::SERVER_KEY), key.as_bytes(), 0o600)?;
    Ok(())
}

fn load_issuer(dir: &Path) -> Result<Issuer<'static, KeyPair>, TlsError> {
    let key_path = dir.join(files::CA_KEY);
    let key_pem = std::fs::read_to_string(&key_path).map_err(io_err(&key_path))?;
    let key = KeyPair::from_pem(&key_pem)
        .map_err(|e| TlsError::BadFile { path: key_path.clone(), problem: e.to_string() })?;
    let cert_path = dir.join(files::CA_CERT);
    let cert_pem = std::fs::read_to_string(&cert_path).map_err(io_err(&cert_path))?;
    Issuer::from_ca_cert_pem(&cert_pem, key).map_err(|e| TlsError::BadFile { path: cert_path, problem: e.to_string() })
}

fn issue(
    issuer: &Issuer<'_, KeyPair>,
    name: &str,
    role: Role,
    names: &[String],
    days: i64,
) -> Result<(String, String), TlsError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    dn.push(DnType::OrganizationalUnitName, role.ou());
    dn.push(DnType::OrganizationName, "fedge");
    params.distinguished_name = dn;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![match role {
        Role::Server => ExtendedKeyUsagePurpose::ServerAuth,
        Role::Agent | Role::Operator => ExtendedKeyUsagePurpose::ClientAuth,
    }];
    for n in names {
        let san = match n.parse::<std::net::IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => {
                SanType::DnsName(n.clone().try_into().map_err(|_| TlsError::Config(format!("invalid DNS name {n:?}")))?)
            }
        };
        params.subject_alt_names.push(san);
    }
    validity(&mut params, days.max(1));
    random_serial(&mut params);
    let cert = params.signed_by(&key, issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Issues a certificate bundle for an agent or an operator: `dir/<agents|operators>/NAME/{cert.pem,key.pem,ca.pem}`.
/// Returns the bundle's directory. Refuses to overwrite an existing bundle.
pub fn issue_bundle(dir: &Path, name: &str, role: Role, days: i64) -> Result<PathBuf, TlsError> {
    check_name(name)?;
    let sub = match role {
        Role::Agent => "agents",
        Role::Operator => "operators",
        Role::Server => return Err(TlsError::Config("server certificates are made by init".into())),
    };
    let out = dir.join(sub).join(name);
    if out.join(files::KEY).exists() {
        return Err(TlsError::Exists(out.join(files::KEY)));
    }
    let issuer = load_issuer(dir)?;
    let (cert, key) = issue(&issuer, name, role, &[], days)?;
    let ca_path = dir.join(files::CA_CERT);
    let ca = std::fs::read(&ca_path).map_err(io_err(&ca_path))?;
    write_atomic(&out.join(files::CA_CERT), &ca, 0o644)?;
    write_atomic(&out.join(files::CERT), cert.as_bytes(), 0o644)?;
    write_atomic(&out.join(files::KEY), key.as_bytes(), 0o600)?;
    Ok(out)
}

/// A certificate chain and its private key, loaded from PEM files.
#[derive(Clone)]
pub struct Identity {
    pub chain: Vec<CertificateDer<'static>>,
    key_pkcs8: Vec<u8>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity").field("certificates", &self.chain.len()).finish_non_exhaustive()
    }
}

impl Identity {
    /// Loads a certificate (chain) and a PKCS#8 private key from PEM files.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Identity, TlsError> {
        let chain = load_certs(cert_path)?;
        let key_bytes = std::fs::read(key_path).map_err(io_err(key_path))?;
        let key = PrivatePkcs8KeyDer::from_pem_slice(&key_bytes).map_err(|e| TlsError::BadFile {
            path: key_path.to_path_buf(),
            problem: format!("no PKCS#8 private key: {e}"),
        })?;
        Ok(Identity { chain, key_pkcs8: key.secret_pkcs8_der().to_vec() })
    }

    /// Loads `dir/cert.pem` and `dir/key.pem` (an agent or operator bundle).
    pub fn load_bundle(dir: &Path) -> Result<Identity, TlsError> {
        Identity::load(&dir.join(files::CERT), &dir.join(files::KEY))
    }

    /// The private key as PKCS#8 DER (to sign with ring).
    pub fn key_pkcs8(&self) -> &[u8] {
        &self.key_pkcs8
    }

    fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_pkcs8.clone()))
    }

    /// Parsed facts about the leaf certificate.
    pub fn info(&self) -> Result<CertInfo, TlsError> {
        let leaf = self.chain.first().ok_or_else(|| TlsError::Peer("empty certificate chain".into()))?;
        CertInfo::parse(leaf)
    }
}

/// Loads every certificate in a PEM file; one that has expired or is not valid yet is an error naming the file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = std::fs::read(path).map_err(io_err(path))?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::BadFile { path: path.to_path_buf(), problem: format!("bad PEM: {e}") })?;
    if certs.is_empty() {
        return Err(TlsError::BadFile { path: path.to_path_buf(), problem: "no certificate in the file".into() });
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    for (i, c) in certs.iter().enumerate() {
        check_validity(path, i, c, now)?;
    }
    Ok(certs)
}

/// What fedge reads from a certificate: the holder's name and role, its fingerprint, its validity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    pub name: String,
    pub role: Role,
    /// SHA-256 of the certificate's DER.
    pub fingerprint: Digest,
    /// Unix seconds.
    pub not_after: i64,
    /// The SubjectPublicKeyInfo's key bytes (for an ECDSA P-256 key: the uncompressed point).
    pub public_key: Vec<u8>,
}

impl CertInfo {
    /// Parses a DER certificate.
    pub fn parse(der: &CertificateDer<'_>) -> Result<CertInfo, TlsError> {
        let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
            .map_err(|e| TlsError::Peer(format!("unparseable certificate: {e}")))?;
        let subject = cert.subject();
        let name = subject
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .ok_or_else(|| TlsError::Peer("certificate has no common name".into()))?
            .to_string();
        let role = subject
            .iter_organizational_unit()
            .filter_map(|ou| ou.as_str().ok())
            .find_map(Role::from_ou)
            .ok_or_else(|| TlsError::Peer(format!("certificate of {name:?} names no fedge role")))?;
        Ok(CertInfo {
            name,
            role,
            fingerprint: Digest::of(der.as_ref()),
            not_after: cert.validity().not_after.timestamp(),
            public_key: cert.public_key().subject_public_key.data.to_vec(),
        })
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The keep-alive interval for an idle time-out: a third of it, between 100 ms and 5 s.
pub fn keep_alive_for(idle_timeout: Duration) -> Duration {
    (idle_timeout / 3).clamp(Duration::from_millis(100), Duration::from_secs(5))
}

fn roots(ca: &[CertificateDer<'static>]) -> Result<Arc<rustls::RootCertStore>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for c in ca {
        roots.add(c.clone()).map_err(|e| TlsError::Config(format!("CA certificate: {e}")))?;
    }
    Ok(Arc::new(roots))
}

/// QUIC transport settings of an agent: keep-alive, idle time-out, receive windows sized so that a
/// multi-megabyte weights download does not stall on flow control, and a cap on concurrent streams.
///
/// A keep-alive goes out after a third of the idle time-out without traffic (at most every 5 s), so that an idle
/// connection whose peer is alive never times out, however short its time-out.
pub fn transport_config(idle_timeout: Duration) -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(keep_alive_for(idle_timeout)));
    t.max_idle_timeout(quinn::IdleTimeout::try_from(idle_timeout).ok());
    t.stream_receive_window(quinn::VarInt::from_u32(16 * 1024 * 1024));
    t.receive_window(quinn::VarInt::from_u32(32 * 1024 * 1024));
    t.send_window(8 * 1024 * 1024);
    t.max_concurrent_bidi_streams(quinn::VarInt::from_u32(4));
    t.max_concurrent_uni_streams(quinn::VarInt::from_u32(16));
    t
}

/// QUIC transport settings of the server. Its receive windows are what bounds the memory that N agents' uploads
/// can occupy before the server reads them (N × window), so they are small: uploads beyond the ones being read
/// wait on flow control instead of filling the server's memory. Loopback and LAN links still run at full speed
/// with a 1 MiB window; on a 100 ms path one upload moves at up to ~10 MB/s, and many move in parallel.
pub fn server_transport_config(idle_timeout: Duration) -> quinn::TransportConfig {
    let mut t = transport_config(idle_timeout);
    t.stream_receive_window(quinn::VarInt::from_u32(1024 * 1024));
    t.receive_window(quinn::VarInt::from_u32(1536 * 1024));
    t.max_concurrent_uni_streams(quinn::VarInt::from_u32(4));
    // Agents probe a silent server with one-byte datagrams (fedge_agent::liveness); the server reads and discards
    // them, and a small buffer bounds what an agent could park there.
    t.datagram_receive_buffer_size(Some(SERVER_DATAGRAM_BUFFER));
    t
}

/// The server's buffer for datagrams received and not yet discarded, per connection.
pub const SERVER_DATAGRAM_BUFFER: usize = 4096;

/// The server's QUIC configuration: TLS 1.3, client certificates required and verified against the CA.
pub fn server_config(
    ca: &[CertificateDer<'static>],
    identity: &Identity,
    alpn: &[&[u8]],
    idle_timeout: Duration,
) -> Result<quinn::ServerConfig, TlsError> {
    let provider = provider();
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(roots(ca)?, provider.clone())
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(identity.chain.clone(), identity.key())
        .map_err(|e| TlsError::Config(e.to_string()))?;
    tls.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls).map_err(|e| TlsError::Config(e.to_string()))?;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(quic));
    cfg.transport_config(Arc::new(server_transport_config(idle_timeout)));
    Ok(cfg)
}

/// A client's (agent's or operator's) QUIC configuration: trusts only the federation CA, presents `identity`.
pub fn client_config(
    ca: &[CertificateDer<'static>],
    identity: Option<&Identity>,
    alpn: &[u8],
    idle_timeout: Duration,
) -> Result<quinn::ClientConfig, TlsError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots(ca)?);
    let mut tls = match identity {
        Some(id) => {
            builder.with_client_auth_cert(id.chain.clone(), id.key()).map_err(|e| TlsError::Config(e.to_string()))?
        }
        None => builder.with_no_client_auth(),
    };
    tls.alpn_protocols = vec![alpn.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(|e| TlsError::Config(e.to_string()))?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(quic));
    cfg.transport_config(Arc::new(transport_config(idle_timeout)));
    Ok(cfg)
}

/// The verified identity of the peer on an established connection (its leaf certificate).
pub fn peer_info(conn: &quinn::Connection) -> Result<CertInfo, TlsError> {
    let any = conn.peer_identity().ok_or_else(|| TlsError::Peer("peer presented no certificate".into()))?;
    let certs = any
        .downcast::<Vec<CertificateDer<'static>>>()
        .map_err(|_| TlsError::Peer("unexpected peer identity type".into()))?;
    let leaf = certs.first().ok_or_else(|| TlsError::Peer("empty peer certificate chain".into()))?;
    CertInfo::parse(leaf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_keep_alive_leaves_two_before_an_idle_connection_would_time_out() {
        for secs in [1u64, 3, 10, 30, 3_600] {
            let idle = Duration::from_secs(secs);
            let k = keep_alive_for(idle);
            assert!(k * 3 <= idle || k == Duration::from_millis(100), "{secs} s: {k:?}");
            assert!(k <= Duration::from_secs(5));
        }
        assert_eq!(keep_alive_for(Duration::from_secs(3)), Duration::from_secs(1));
    }

    #[test]
    fn init_writes_a_ca_and_a_server_certificate_with_private_keys_0600() {
        let dir = tempfile::tempdir().unwrap();
        init_federation(dir.path(), &["localhost".into(), "127.0.0.1".into()], 30).unwrap();
        for f in [files::CA_CERT, files::SERVER_CERT] {
            assert!(dir.path().join(f).exists());
        }
        #[cfg(unix)]
        for f in [files::CA_KEY, files::SERVER_KEY] {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(f)).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{f}");
        }
        let server = Identity::load(&dir.path().join(files::SERVER_CERT), &dir.path().join(files::SERVER_KEY)).unwrap();
        let info = server.info().unwrap();
        assert_eq!(info.role, Role::Server);
        assert!(matches!(init_federation(dir.path(), &[], 30), Err(TlsError::Exists(_))));
    }

    #[test]
    fn an_agent_bundle_carries_its_name_and_role() {
        let dir = tempfile::tempdir().unwrap();
        init_federation(dir.path(), &["localhost".into()], 30).unwrap();
        let bundle = issue_bundle(dir.path(), "pi-kitchen", Role::Agent, 30).unwrap();
        let id = Identity::load_bundle(&bundle).unwrap();
        let info = id.info().unwrap();
        assert_eq!(info.name, "pi-kitchen");
        assert_eq!(info.role, Role::Agent);
        assert!(bundle.join(files::CA_CERT).exists());
        let op = issue_bundle(dir.path(), "alice", Role::Operator, 30).unwrap();
        assert_eq!(Identity::load_bundle(&op).unwrap().info().unwrap().role, Role::Operator);
        assert!(matches!(issue_bundle(dir.path(), "pi-kitchen", Role::Agent, 30), Err(TlsError::Exists(_))));
        assert!(matches!(issue_bundle(dir.path(), "../evil", Role::Agent, 30), Err(TlsError::BadName(_))));
    }

    #[test]
    fn an_expired_or_not_yet_valid_certificate_is_an_error_naming_the_file_and_the_date() {
        let dir = tempfile::tempdir().unwrap();
        init_federation(dir.path(), &["localhost".into()], 30).unwrap();
        let bundle = issue_bundle(dir.path(), "pi-attic", Role::Agent, 30).unwrap();
        let cert_path = bundle.join(files::CERT);
        let issuer = load_issuer(dir.path()).unwrap();
        let day = time::Duration::days(1);
        let now = time::OffsetDateTime::now_utc();
        let remake = |not_before, not_after| {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::default();
            let mut dn = DistinguishedName::new();
            dn.push(DnType::CommonName, "pi-attic");
            dn.push(DnType::OrganizationalUnitName, Role::Agent.ou());
            params.distinguished_name = dn;
            params.not_before = not_before;
            params.not_after = not_after;
            std::fs::write(&cert_path, params.signed_by(&key, &issuer).unwrap().pem()).unwrap();
            std::fs::write(bundle.join(files::KEY), key.serialize_pem()).unwrap();
        };
        remake(now - 30 * day, now - day);
        let err = Identity::load_bundle(&bundle).unwrap_err().to_string();
        assert!(err.contains("cert.pem") && err.contains("expired on") && err.contains("pi-attic"), "{err}");
        remake(now + day, now + 30 * day);
        let err = Identity::load_bundle(&bundle).unwrap_err().to_string();
        assert!(err.contains("cert.pem") && err.contains("not valid before"), "{err}");
        remake(now - day, now + day);
        assert_eq!(Identity::load_bundle(&bundle).unwrap().info().unwrap().name, "pi-attic");
    }

    #[test]
    fn a_garbage_pem_file_is_a_clear_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("cert.pem");
        std::fs::write(&p, b"not a certificate").unwrap();
        let err = load_certs(&p).unwrap_err().to_string();
        assert!(err.contains("cert.pem"), "{err}");
    }
}
