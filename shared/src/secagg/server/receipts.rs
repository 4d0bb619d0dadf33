//! The server's side of the receipts, between sharing keys and masking: each agent says whose shares to it it could
//! not use, and the server keeps in the round only agents of which at least `t` receipting neighbours hold a usable
//! share, then tells each one which of its neighbours to mask with.
//!
//! Why before masking: an agent's self mask comes off the sum only with `t` shares of its seed. Had the server
//! folded the masked vector of an agent whose shares are garbage, the sum could never be unmasked and the round
//! would abort. Left out now, that agent is to everyone one that never shared keys: nobody masks with it, nobody
//! reveals anything of it, and the round completes with the others.
//!
//! A receipt can lie. An agent that names a neighbour whose share was good only withdraws its own vouch; the
//! neighbour is left out only when more than `r − t` of its `r` receipting neighbours name it, and that many
//! colluding agents around it could as well withhold its shares at unmask time. Blame: an agent left out although
//! at least `t` of its neighbours receipted was named by them, and [`Receipts::blamed`] lists it for the
//! coordinator to keep out of later cohorts; one left out because too few of its neighbours receipted is a drop-out
//! and blamed on nobody. This module never sees a share's content: it counts names.

use std::collections::{BTreeMap, BTreeSet};

use super::{MaskedSum, Phase, ServerSession};
use crate::secagg::SecAggError;
use crate::secagg::consistency::check_canonical;
use crate::secagg::messages::{MaskWith, ShareReceipt};

/// What the receipts decide.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipts {
    /// For each agent left in the round, the neighbours it is to mask with.
    pub mask_with: BTreeMap<u32, MaskWith>,
    /// Agents left out although at least `t` of their neighbours receipted: too many of those neighbours named
    /// them, so their shares were garbage (or that many neighbours lied together).
    pub blamed: Vec<u32>,
}

impl ServerSession {
    /// Receipts: records agent `from`'s receipt, which may name only neighbours that shared with it, each once,
    /// in ascending order.
    pub fn on_receipt(&mut self, from: u32, receipt: ShareReceipt) -> Result<(), SecAggError> {
        self.expect(Phase::Receipts, "on_receipt")?;
        Self::member_of(&self.u2, &self.graph, from)?;
        self.check_round(receipt.round)?;
        if receipt.from != from {
            return Err(SecAggError::WrongSender { claimed: receipt.from, actual: from });
        }
        if self.receipts.contains_key(&from) {
            return Err(SecAggError::Duplicate(from));
        }
        check_canonical(&receipt.bad)?;
        let ns = self.graph.neighbours(from).unwrap_or_default();
        if let Some(&j) = receipt.bad.iter().find(|&&j| !(self.u2.contains(&j) && ns.contains(&j))) {
            return Err(SecAggError::NotNeighbour { agent: from, peer: j });
        }
        self.receipts.insert(from, receipt.bad.into_iter().collect());
        Ok(())
    }

    /// Ends the receipts: keeps, until none is left to remove, the agents that receipted and of which at least `t`
    /// kept neighbours hold a usable share, and returns, per kept agent, the neighbours to mask with. Agents that
    /// did not receipt are left out as drop-outs. Aborts if nobody is left.
    pub fn close_receipts(&mut self) -> Result<Receipts, SecAggError> {
        self.expect(Phase::Receipts, "close_receipts")?;
        let t = self.params.threshold as usize;
        let receipts = std::mem::take(&mut self.receipts);
        let mut kept: BTreeSet<u32> = receipts.keys().copied().filter(|a| self.u2.contains(a)).collect();
        let mut blamed = Vec::new();
        loop {
            let short: Vec<(u32, bool)> = kept
                .iter()
                .copied()
                .filter_map(|i| {
                    let ns = self.graph.neighbours(i).unwrap_or_default();
                    let around: Vec<u32> = ns.iter().copied().filter(|j| kept.contains(j)).collect();
                    let vouched =
                        around.iter().filter(|j| receipts.get(j).is_some_and(|bad| !bad.contains(&i))).count();
                    (vouched < t).then_some((i, around.len() >= t))
                })
                .collect();
            if short.is_empty() {
                break;
            }
            for (i, named) in short {
                kept.remove(&i);
                if named {
                    blamed.push(i);
                }
            }
        }
        if kept.is_empty() {
            return Err(self.abort(format!(
                "no agent has {t} neighbours holding usable shares of its secrets ({} receipts)",
                receipts.len()
            )));
        }
        let mask_with = kept
            .iter()
            .map(|&i| {
                let ns = self.graph.neighbours(i).unwrap_or_default();
                let neighbours = ns.iter().copied().filter(|j| kept.contains(j)).collect();
                (i, MaskWith { round: self.round, to: i, neighbours })
            })
            .collect();
        if !blamed.is_empty() {
            tracing::warn!(round = self.round, agents = ?blamed, "left out: their neighbours could not use their shares");
        }
        self.keys.retain(|a, _| kept.contains(a));
        self.u2 = kept;
        self.sum = MaskedSum(vec![0; self.vector_len()]);
        self.phase = Phase::Masked;
        Ok(Receipts { mask_with, blamed })
    }
}
