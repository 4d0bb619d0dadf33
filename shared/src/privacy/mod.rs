//! Distributed differential privacy: the noise each agent adds, and the accounting of what the released sums
//! reveal. Pure maths: no I/O, no clock, no global randomness.
//!
//! # What fedge gives
//! Each agent clips its update in L2 norm, quantizes it to integers, and adds discrete Gaussian noise
//! ([`DiscreteGaussian`]) to every coordinate before masking it for secure aggregation. Only the sum of the
//! survivors' vectors is ever unmasked, so the noise of every honest agent is in the sum and no single party saw
//! any of it. The [`Accountant`] turns the rounds of a run into an (ε, δ) guarantee, by the distributed discrete
//! Gaussian analysis of Kairouz, Liu and Steinke 2021 ([`ddg_rdp`]) composed in Rényi DP, and the server refuses
//! a round that would take the run beyond its `target_epsilon` ([`Accountant::would_exceed`]).
//!
//! The unit of privacy is one agent's contribution to a round, over every round of the run: user-level DP, not
//! example-level. Who took part in a round is known to the server (the survivor set is part of the protocol),
//! so the neighbouring relation is about content: one agent's contribution replaced by another it could have
//! sent (or by zero). The sensitivity Δ₂ given to [`ddg_rdp`] must cover every masked coordinate that depends on
//! the agent's data (the weight and the counts as well as the update) and the rounding to integers
//! ([`integer_l2_sensitivity`]).
//!
//! # Against whom
//! Anyone who sees only the released aggregates or the models trained from them (later users of the model,
//! other agents, an operator reading the history), and the server itself, provided secure aggregation holds so
//! that the server sees nothing but the masked vectors and the noisy sum.
//!
//! No amplification by sampling is claimed: fedge's server chooses each cohort, so it can always include the
//! agent it targets, and the Poisson-sampling analysis ([`Mechanism::PoissonSampledGaussian`]) does not apply to
//! it. That mechanism is kept for comparisons with central DP and to check the accountant against dp_accounting.
//!
//! # What it does not cover
//! - Agents that collude with the server know their own noise and can subtract it: the `agents` of a
//!   [`DdgRound`] must count only the honest survivors the guarantee is meant to hold for (for example the
//!   survivors minus the collusion threshold the deployment assumes), not the cohort size.
//! - Agents that do not add their noise (malicious or buggy) lower the noise in the sum; the server cannot check
//!   that noise was added.
//! - Dropouts after the noise was chosen: each agent's σ² is fixed before it knows how many others survive;
//!   the round is accounted with the number that actually contributed.
//! - Metadata outside the masked vector (who took part, timing, sizes), and timing side channels of the
//!   sampler on the agent's machine.
//! - The modular wrap-around of the quantized sum: the analysis is of the integer sum; a sum that wraps modulo
//!   2^32 only loses accuracy, never privacy (post-processing), but the caller must size the field so that it
//!   rarely does.
//!
//! # Files
//! - [`discrete_gaussian`]: the exact sampler.
//! - [`rdp`]: RDP curves of the mechanisms and the conversion to (ε, δ); [`special`]: ln Γ and ln erfc for it.
//! - [`accountant`]: the per-run budget. [`settings`]: the `[privacy]` settings and their validation.
//! - [`PrivacyError`], in [`error`].

pub mod accountant;
pub mod discrete_gaussian;
pub mod error;
pub mod rdp;
pub mod settings;
pub mod special;

pub use accountant::{Accountant, Mechanism, Recorded};
pub use discrete_gaussian::{DiscreteGaussian, MAX_VARIANCE};
pub use error::PrivacyError;
pub use rdp::{
    DdgRound, ddg_local_variance, ddg_rdp, default_orders, epsilon_from_rdp, integer_l1_sensitivity,
    integer_l2_sensitivity, subsampled_gaussian_rdp,
};
pub use settings::{MAX_DELTA, MAX_TARGET_EPSILON, PrivacySettings};
