//! Unmasking a secure round's sum: the job the coordinator hands the shell (`Action::Unmask`) and what it gives
//! back (`Event::Unmasked`).
//!
//! Pure CPU work on a SecAgg+ server session the round has finished with: no I/O, no clock, no randomness. The
//! only unmasked value it ever produces is the cohort's sum (and the mean and totals computed from it).

use fedge_shared::fedeval::EvalCounts;
use fedge_shared::round_counts::{self, TrainTotals};
use fedge_shared::secagg::ServerSession;
use std::sync::{Arc, Mutex};

/// The federated evaluation's totals and how many agents are in them.
pub type EvalTotals = (EvalCounts, usize);

/// A secure round's unmasking, handed to the shell as `Action::Unmask`: [`UnmaskJob::run`] is pure CPU work (no
/// I/O, no clock) that the shell runs on a blocking thread, feeding the result back as `Event::Unmasked`.
///
/// Cloning shares the job; it runs once (a second run reports that the session is gone).
#[derive(Clone)]
pub struct UnmaskJob {
    session: Arc<Mutex<Option<ServerSession>>>,
}

impl UnmaskJob {
    /// The job of unmasking `session`'s sum.
    pub(crate) fn new(session: ServerSession) -> Self {
        UnmaskJob { session: Arc::new(Mutex::new(Some(session))) }
    }
}

impl std::fmt::Debug for UnmaskJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UnmaskJob").finish_non_exhaustive()
    }
}

impl PartialEq for UnmaskJob {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.session, &other.session)
    }
}

impl UnmaskJob {
    /// Unmasks the sum and returns the weighted mean delta `Σ w·Δ / Σ w`, the federated evaluation's totals over
    /// the survivors (the only evaluation the server ever sees in a secure round) and their training totals
    /// (examples, loss sum; the server never sees one agent's).
    pub fn run(&self) -> Result<SecureOutcome, String> {
        let session = match self.session.lock() {
            Ok(mut s) => s.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        let session = session.ok_or_else(|| "the secure session was already unmasked".to_string())?;
        let sum = session.finish().map_err(|e| e.to_string())?;
        if !(sum.weight_sum.is_finite() && sum.weight_sum > 0.0) {
            return Err(format!("the survivors' total weight is {}", sum.weight_sum));
        }
        let inv = 1.0 / sum.weight_sum;
        let mean = sum.weighted_delta_sum.iter().map(|&v| (f64::from(v) * inv) as f32).collect();
        // Each agent's counts are bounded but cannot be checked under the masks: a lying agent can spoil the totals
        // (never the model). Implausible totals are dropped, not recorded.
        let (eval, train) = round_counts::totals(&sum.counts);
        let eval = eval.filter(|c| {
            let ok = c.is_plausible();
            if !ok {
                tracing::warn!(?c, "the federated evaluation's totals are implausible; not recorded");
            }
            ok
        });
        let train = train.filter(|t| t.loss_sum.is_finite());
        Ok(SecureOutcome {
            mean,
            weight: sum.weight_sum,
            eval: eval.map(|c| (c, sum.survivors.len())),
            train,
            survivors: sum.survivors.len(),
        })
    }
}

/// What a secure round's unmasked sum gives the coordinator.
#[derive(Debug, Clone, PartialEq)]
pub struct SecureOutcome {
    /// The weighted mean delta.
    pub mean: Vec<f32>,
    /// The survivors' total weight `Σ w`, each `w = min(examples, weight_cap) / weight_cap`.
    pub weight: f64,
    /// The federated evaluation's totals and how many agents they cover.
    pub eval: Option<EvalTotals>,
    /// The survivors' training totals (`None` in a private round, which carries no counts).
    pub train: Option<TrainTotals>,
    /// How many agents' vectors are in the sum.
    pub survivors: usize,
}
