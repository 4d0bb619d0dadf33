//! The server's stateless-reset key: a secret kept beside the database, so that a restarted server resets the
//! agents' old connections at once instead of leaving them to their idle time-out.
//!
//! QUIC lets a server that has lost a connection's state answer the peer's next packet with a *stateless reset*,
//! which the peer accepts only if its token matches the one the server gave when the connection was made. quinn
//! derives that token from the endpoint's reset key and the connection id, so a server that draws a new random
//! key at each start (quinn's default) sends resets its agents ignore; they then wait for their idle time-out (30 s
//! by default) before they connect again. quinn's default connection ids are also checked against a key drawn at
//! each start, and a packet that fails the check gets no reset at all: the server uses plain random ids
//! ([`RandomCids`]). With both, the agents notice the restart with the first packet they send.
//!
//! The key file (`stateless-reset.key` in the database directory, 64 random bytes) is created owner-only (0600) on
//! first start. Anyone holding it can forge resets of the server's connections: it is a secret like the TLS key.
//! This module never logs the key, and refuses a file of the wrong size with an error naming it.

use anyhow::{Context, bail};
use ring::rand::{SecureRandom, SystemRandom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The key file's name inside the database directory.
pub const FILE_NAME: &str = "stateless-reset.key";

/// The key's length in bytes (the HMAC-SHA256 block size).
pub const KEY_LEN: usize = 64;

/// Where the key lives for the database in `data_dir`.
pub fn path_for(data_dir: &Path) -> PathBuf {
    data_dir.join(FILE_NAME)
}

/// Reads the key at `path`, creating it (0600) with fresh random bytes if there is none.
pub fn load_or_create(path: &Path) -> anyhow::Result<ring::hmac::Key> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut fresh = vec![0u8; KEY_LEN];
            SystemRandom::new().fill(&mut fresh).map_err(|_| anyhow::anyhow!("no randomness from the OS"))?;
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            }
            fedge_shared::tls::write_atomic(path, &fresh, 0o600)
                .with_context(|| format!("writing the stateless-reset key {}", path.display()))?;
            tracing::info!(file = %path.display(), "created the stateless-reset key");
            fresh
        }
        Err(e) => return Err(e).with_context(|| format!("reading the stateless-reset key {}", path.display())),
    };
    if bytes.len() != KEY_LEN {
        bail!(
            "{}: a stateless-reset key has {KEY_LEN} bytes, this file has {} (delete it to make a new one)",
            path.display(),
            bytes.len()
        );
    }
    warn_if_readable_by_others(path);
    Ok(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &bytes))
}

#[cfg(unix)]
fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(
            file = %path.display(),
            mode = format!("{:o}", meta.permissions().mode() & 0o777),
            "the stateless-reset key is readable by others than its owner (chmod 600 it)"
        );
    }
}

#[cfg(not(unix))]
fn warn_if_readable_by_others(_: &Path) {}

/// The QUIC endpoint configuration with the key at `path` (created on first start), and connection ids a restarted
/// server still answers with a reset ([`RandomCids`]).
pub fn endpoint_config(path: &Path) -> anyhow::Result<quinn::EndpointConfig> {
    let mut config = quinn::EndpointConfig::new(Arc::new(load_or_create(path)?));
    config.cid_generator(|| Box::new(RandomCids));
    Ok(config)
}

/// Length of the server's connection ids.
const CID_LEN: usize = 8;

/// Random 8-byte connection ids that every server process accepts as its own. quinn's default generator hashes its
/// ids with a key drawn at each start and drops, without a reset, a packet whose id fails that check: a restarted
/// server then never resets the previous process's connections, whatever its reset key.
#[derive(Debug, Clone, Copy)]
pub struct RandomCids;

impl quinn::ConnectionIdGenerator for RandomCids {
    fn generate_cid(&mut self) -> quinn::ConnectionId {
        let bytes: [u8; CID_LEN] = rand::random();
        quinn::ConnectionId::new(&bytes)
    }

    fn cid_len(&self) -> usize {
        CID_LEN
    }

    fn cid_lifetime(&self) -> Option<std::time::Duration> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tag(key: &ring::hmac::Key) -> Vec<u8> {
        ring::hmac::sign(key, b"connection id").as_ref().to_vec()
    }

    #[test]
    fn the_key_is_created_owner_only_on_first_start_and_the_same_key_is_read_back_after() {
        let dir = tempfile::tempdir().unwrap();
        let path = path_for(&dir.path().join("db"));
        let first = load_or_create(&path).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
        assert_eq!(std::fs::read(&path).unwrap().len(), KEY_LEN);
        let again = load_or_create(&path).unwrap();
        assert_eq!(tag(&first), tag(&again), "a restart derives the same reset tokens");
        let other = load_or_create(&path_for(&dir.path().join("other-db"))).unwrap();
        assert_ne!(tag(&first), tag(&other), "another database has its own key");
    }

    #[test]
    fn a_key_file_of_the_wrong_size_is_refused_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = path_for(dir.path());
        std::fs::write(&path, b"short").unwrap();
        let err = format!("{:#}", load_or_create(&path).unwrap_err());
        assert!(err.contains(FILE_NAME) && err.contains("has 5"), "{err}");
    }
}
