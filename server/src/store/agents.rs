//! The agents the store knows: when each was first and last seen, with which certificate, and whether an operator
//! revoked it ([`AgentRecord`]).
//!
//! A revoked agent stays revoked: this module must never clear the flag, and never panic on a corrupt record.

use super::db::Store;
use super::encoding::{abort, decode, encode, tx_error};
use super::error::StoreError;
use serde::{Deserialize, Serialize};

/// What the server knows about an agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentRecord {
    pub name: String,
    /// Hex SHA-256 of the certificate last seen (`None` if the agent was revoked before it ever connected).
    pub fingerprint: Option<String>,
    pub first_seen_ms: u64,
    pub last_seen_ms: u64,
    pub revoked: bool,
}

impl Store {
    /// Records that `name` connected with the certificate whose fingerprint is `fingerprint` at `now_ms`.
    /// A revoked agent stays revoked.
    pub fn upsert_agent_seen(&self, name: &str, fingerprint: &str, now_ms: u64) -> Result<AgentRecord, StoreError> {
        self.update_agent(name, now_ms, |rec| {
            rec.fingerprint = Some(fingerprint.to_string());
            rec.last_seen_ms = now_ms;
        })
    }

    /// Revokes `name` (creating its record if it never connected).
    pub fn revoke_agent(&self, name: &str, now_ms: u64) -> Result<AgentRecord, StoreError> {
        self.update_agent(name, now_ms, |rec| rec.revoked = true)
    }

    fn update_agent(
        &self,
        name: &str,
        now_ms: u64,
        change: impl Fn(&mut AgentRecord),
    ) -> Result<AgentRecord, StoreError> {
        self.writable()?;
        let record = self
            .agents
            .transaction(|agents| {
                let mut rec = match agents.get(name.as_bytes())? {
                    Some(v) => match decode::<AgentRecord>("agents", name, &v) {
                        Ok(r) => r,
                        Err(e) => return abort(e),
                    },
                    None => AgentRecord {
                        name: name.to_string(),
                        fingerprint: None,
                        first_seen_ms: now_ms,
                        last_seen_ms: now_ms,
                        revoked: false,
                    },
                };
                change(&mut rec);
                match encode(&rec) {
                    Ok(bytes) => agents.insert(name.as_bytes(), bytes)?,
                    Err(e) => return abort(e),
                };
                Ok(rec)
            })
            .map_err(|e| self.failed_write(tx_error(e)))?;
        self.flush()?;
        Ok(record)
    }

    /// Whether `name` is revoked (unknown agents are not).
    pub fn is_revoked(&self, name: &str) -> Result<bool, StoreError> {
        match self.agents.get(name.as_bytes())? {
            None => Ok(false),
            Some(v) => Ok(decode::<AgentRecord>("agents", name, &v)?.revoked),
        }
    }

    /// Every agent the server has seen or revoked, by name.
    pub fn agents(&self) -> Result<Vec<AgentRecord>, StoreError> {
        self.agents
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                decode("agents", String::from_utf8_lossy(&k), &v)
            })
            .collect()
    }
}
