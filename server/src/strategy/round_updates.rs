//! What a strategy is given to aggregate: the round's mean delta, or each surviving agent's delta.
//!
//! Checks lengths and counts and refuses with a [`StrategyError`]; never panics on what it holds.

use super::StrategyError;
use std::borrow::Cow;

/// Which form of the round's updates a strategy aggregates from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    /// The example-weighted mean delta: all a secure round reveals. Works in every round.
    Mean,
    /// Every surviving agent's delta: plain rounds only (the coordinator keeps them all, O(n · P) memory).
    EachUpdate,
}

/// One agent's update in a plain round.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientUpdate {
    /// Who sent it.
    pub agent: String,
    /// The example count it is weighted with (as the coordinator capped it).
    pub examples: u64,
    /// `local − global`, over the round's trained coordinates.
    pub delta: Vec<f32>,
}

/// The round's updates, as the coordinator hands them to [`super::Strategy::aggregate`].
#[derive(Debug, Clone, Copy)]
pub enum RoundUpdates<'a> {
    /// The example-weighted mean delta (a secure round's unmasked sum over its weight, or a plain round's running
    /// sum over its examples).
    Mean(&'a [f32]),
    /// Each surviving agent's update (plain rounds of an [`Input::EachUpdate`] strategy), in arrival order.
    Each(&'a [ClientUpdate]),
}

impl<'a> RoundUpdates<'a> {
    /// The example-weighted mean delta over `len` parameters: as given, or computed (in f64) from each update.
    pub fn mean(&self, len: usize) -> Result<Cow<'a, [f32]>, StrategyError> {
        match *self {
            RoundUpdates::Mean(mean) => {
                if mean.len() != len {
                    return Err(StrategyError::LengthMismatch { global: len, delta: mean.len() });
                }
                Ok(Cow::Borrowed(mean))
            }
            RoundUpdates::Each(updates) => {
                check_each(updates, len)?;
                let total: f64 = updates.iter().map(|u| u.examples as f64).sum();
                if updates.is_empty() || total <= 0.0 {
                    return Err(StrategyError::TooFewUpdates { strategy: "the mean", needed: 1, got: 0 });
                }
                let mut sum = vec![0f64; len];
                for u in updates {
                    let w = u.examples as f64;
                    for (s, d) in sum.iter_mut().zip(&u.delta) {
                        *s += w * f64::from(*d);
                    }
                }
                Ok(Cow::Owned(sum.iter().map(|s| (s / total) as f32).collect()))
            }
        }
    }

    /// Each update, checked to cover `len` parameters; refused for a round that has only the mean.
    pub fn each(&self, strategy: &'static str, len: usize) -> Result<&'a [ClientUpdate], StrategyError> {
        match *self {
            RoundUpdates::Mean(_) => Err(StrategyError::NeedsEachUpdate { strategy }),
            RoundUpdates::Each(updates) => {
                check_each(updates, len)?;
                Ok(updates)
            }
        }
    }
}

fn check_each(updates: &[ClientUpdate], len: usize) -> Result<(), StrategyError> {
    match updates.iter().find(|u| u.delta.len() != len) {
        Some(u) => Err(StrategyError::LengthMismatch { global: len, delta: u.delta.len() }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update(examples: u64, delta: &[f32]) -> ClientUpdate {
        ClientUpdate { agent: format!("a{examples}"), examples, delta: delta.to_vec() }
    }

    #[test]
    fn the_mean_of_each_update_is_weighted_by_examples() {
        let updates = [update(1, &[1.0, 0.0]), update(3, &[0.0, 2.0]), update(4, &[-1.0, -1.0])];
        let mean = RoundUpdates::Each(&updates).mean(2).unwrap();
        assert_eq!(&*mean, &[-0.375, 0.25]);
    }

    #[test]
    fn updates_of_the_wrong_length_are_refused_not_truncated() {
        let updates = [update(1, &[1.0, 0.0]), update(1, &[1.0])];
        let err = RoundUpdates::Each(&updates).mean(2).unwrap_err();
        assert_eq!(err, StrategyError::LengthMismatch { global: 2, delta: 1 });
        assert!(RoundUpdates::Each(&updates).each("median", 2).is_err());
        assert!(RoundUpdates::Mean(&[1.0]).mean(2).is_err());
    }

    #[test]
    fn a_strategy_that_needs_each_update_is_told_when_it_has_only_the_mean() {
        let err = RoundUpdates::Mean(&[0.0, 1.0]).each("median", 2).unwrap_err();
        assert_eq!(err, StrategyError::NeedsEachUpdate { strategy: "median" });
        assert!(err.to_string().contains("secure aggregation"), "{err}");
    }
}
