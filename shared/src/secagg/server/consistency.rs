//! The server's side of the consistency round: it collects the survivors' signatures over the survivor set and
//! relays to each signer the signatures of its neighbours inside its unmask request.
//!
//! The server checks only the shape of a signature (round, sender, size); whether it verifies is for the
//! neighbours to decide, with the signer's certificate. It never asks an agent to unmask that cannot pass its own
//! check (fewer than `t` signing neighbours), and it aborts before asking anyone when some agent's secrets could not
//! be reconstructed from the agents that can.

use std::collections::{BTreeMap, BTreeSet};

use super::{Phase, ServerSession};
use crate::secagg::SecAggError;
use crate::secagg::consistency::SurvivorSignature;
use crate::secagg::messages::UnmaskRequest;

impl ServerSession {
    /// Consistency round: records survivor `from`'s signature over the survivor set.
    pub fn on_survivor_signature(&mut self, from: u32, sig: SurvivorSignature) -> Result<(), SecAggError> {
        self.expect(Phase::Consistency, "on_survivor_signature")?;
        Self::member_of(&self.u3, &self.graph, from)?;
        self.check_round(sig.round)?;
        if sig.from != from {
            return Err(SecAggError::WrongSender { claimed: sig.from, actual: from });
        }
        sig.check_size()?;
        if self.signatures.contains_key(&from) {
            return Err(SecAggError::Duplicate(from));
        }
        self.signatures.insert(from, sig);
        Ok(())
    }

    /// Ends the consistency round: returns, per survivor that signed and has at least `t` signing neighbours, its
    /// unmask request carrying its neighbours' signatures. Aborts (nobody is asked to reveal anything) if some agent
    /// whose secret is needed has fewer than `t` neighbours among them.
    pub fn close_consistency(&mut self) -> Result<BTreeMap<u32, UnmaskRequest>, SecAggError> {
        self.expect(Phase::Consistency, "close_consistency")?;
        let t = self.params.threshold as usize;
        let signed: BTreeSet<u32> = self.signatures.keys().copied().collect();
        let signing_neighbours: BTreeMap<u32, Vec<u32>> = signed
            .iter()
            .map(|&a| {
                let ns = self.graph.neighbours(a).unwrap_or_default();
                (a, ns.iter().copied().filter(|n| signed.contains(n)).collect())
            })
            .collect();
        let responders: BTreeSet<u32> =
            signing_neighbours.iter().filter(|(_, ns)| ns.len() >= t).map(|(&a, _)| a).collect();
        let short = self.u2.iter().copied().find(|&a| {
            self.graph.neighbours(a).map_or(0, |ns| ns.iter().filter(|n| responders.contains(n)).count()) < t
        });
        if let Some(a) = short {
            return Err(self.abort(format!(
                "agent {a} has fewer than {t} neighbours that signed the survivor set with {t} signing neighbours"
            )));
        }
        let survivors: Vec<u32> = self.u3.iter().copied().collect();
        let dropped: Vec<u32> = self.dropped.iter().copied().collect();
        let mut out = BTreeMap::new();
        for &a in &responders {
            let signatures: Vec<SurvivorSignature> = signing_neighbours
                .get(&a)
                .map(|ns| ns.iter().filter_map(|n| self.signatures.get(n).cloned()).collect())
                .unwrap_or_default();
            let request =
                UnmaskRequest { round: self.round, survivors: survivors.clone(), dropped: dropped.clone(), signatures };
            out.insert(a, request);
        }
        self.responders = responders;
        self.signatures.clear();
        self.phase = Phase::Unmask;
        Ok(out)
    }
}
