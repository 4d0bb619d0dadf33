//! Which peers' certificates an agent's connection holds, so that each is relayed with secure-aggregation keys
//! once per connection rather than every round.
//!
//! A certificate counts as held only once the agent has answered the keys message that carried it with its shares
//! for that round ([`PeerCerts::confirm`]): an agent that left the round before the keys arrived (its training
//! failed, it was dropped) ignores that message, and a certificate counted as held on sending alone would never be
//! sent to it again; it would refuse every later round with that neighbour. Until confirmed, a certificate is sent
//! again with the next keys message that needs it.
//!
//! Bookkeeping only: this module must never send anything, nor count a certificate as held before the agent
//! answered the message that carried it.

use crate::coordinator::AgentId;
use std::collections::HashMap;
use std::sync::Arc;

/// Certificates by owner.
type Certs = Vec<(AgentId, Arc<Vec<u8>>)>;

/// One connection's view of the certificates its agent holds.
#[derive(Debug, Default)]
pub(super) struct PeerCerts {
    held: HashMap<AgentId, Arc<Vec<u8>>>,
    /// Sent with the keys of this round, not yet answered.
    pending: Option<(u64, Certs)>,
}

impl PeerCerts {
    /// What to relay as `owner`'s certificate with `round`'s keys: nothing when the agent holds this very
    /// certificate, else the certificate (recorded as pending for `round`).
    pub(super) fn relay(&mut self, round: u64, owner: &AgentId, cert: &Arc<Vec<u8>>) -> Vec<u8> {
        if self.held.get(owner).is_some_and(|held| held == cert) {
            return Vec::new();
        }
        match &mut self.pending {
            Some((r, list)) if *r == round => list.push((owner.clone(), cert.clone())),
            _ => self.pending = Some((round, vec![(owner.clone(), cert.clone())])),
        }
        cert.as_ref().clone()
    }

    /// The agent answered `round`'s keys with its shares: it holds the certificates they carried.
    pub(super) fn confirm(&mut self, round: u64) {
        if let Some((r, list)) = self.pending.take() {
            if r == round {
                self.held.extend(list);
            } else {
                self.pending = Some((r, list));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(b: u8) -> Arc<Vec<u8>> {
        Arc::new(vec![b; 3])
    }

    #[test]
    fn a_certificate_the_agent_answered_for_is_not_sent_again() {
        let mut c = PeerCerts::default();
        let a = "agent-a".to_string();
        assert_eq!(c.relay(1, &a, &cert(1)), vec![1; 3]);
        c.confirm(1);
        assert!(c.relay(2, &a, &cert(1)).is_empty());
    }

    #[test]
    fn a_certificate_sent_in_a_round_the_agent_did_not_answer_is_sent_again() {
        let mut c = PeerCerts::default();
        let a = "agent-a".to_string();
        assert_eq!(c.relay(1, &a, &cert(1)), vec![1; 3]);
        // No shares for round 1: the agent may never have read that message.
        assert_eq!(c.relay(2, &a, &cert(1)), vec![1; 3]);
        c.confirm(2);
        assert!(c.relay(3, &a, &cert(1)).is_empty());
    }

    #[test]
    fn an_answer_for_another_round_confirms_nothing() {
        let mut c = PeerCerts::default();
        let a = "agent-a".to_string();
        c.relay(5, &a, &cert(1));
        c.confirm(4);
        assert_eq!(c.relay(5, &a, &cert(1)), vec![1; 3]);
        c.confirm(5);
        assert!(c.relay(6, &a, &cert(1)).is_empty());
    }

    #[test]
    fn a_changed_certificate_is_sent_again() {
        let mut c = PeerCerts::default();
        let a = "agent-a".to_string();
        c.relay(1, &a, &cert(1));
        c.confirm(1);
        assert_eq!(c.relay(2, &a, &cert(2)), vec![2; 3]);
    }
}
