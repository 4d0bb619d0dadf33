//! The steps strategies share: checking lengths and finiteness, adding a delta to the global weights, and running
//! a step on the trained part of the model only.
//!
//! Pure functions; a mismatch is a [`StrategyError`], never a panic.

use super::{ClientUpdate, StrategyError};
use fedge_shared::train::{PartError, TrainablePart};

pub(super) fn check_lengths(global: &[f32], delta: &[f32]) -> Result<(), StrategyError> {
    if global.len() != delta.len() {
        return Err(StrategyError::LengthMismatch { global: global.len(), delta: delta.len() });
    }
    Ok(())
}

pub(super) fn check_finite(weights: &[f32]) -> Result<(), StrategyError> {
    match weights.iter().position(|w| !w.is_finite()) {
        Some(index) => Err(StrategyError::NonFinite { index }),
        None => Ok(()),
    }
}

/// `x + Δ`: the FedAvg server step (server learning rate 1), refused if the result is not finite.
pub(super) fn add(global: &[f32], delta: &[f32]) -> Result<Vec<f32>, StrategyError> {
    check_lengths(global, delta)?;
    let out: Vec<f32> = global.iter().zip(delta).map(|(x, d)| x + d).collect();
    check_finite(&out)?;
    Ok(out)
}

pub(super) fn part_error(e: PartError) -> StrategyError {
    StrategyError::Part(e.to_string())
}

/// Runs `step` on the part's coordinates of `global` and puts its result back; the rest is copied as it is.
pub(super) fn on_part(
    global: &[f32],
    part: &TrainablePart,
    step: impl FnOnce(&[f32]) -> Result<Vec<f32>, StrategyError>,
) -> Result<Vec<f32>, StrategyError> {
    let trained = step(&part.gather(global).map_err(part_error)?)?;
    let mut out = global.to_vec();
    part.scatter_into(&mut out, &trained).map_err(part_error)?;
    Ok(out)
}

/// For each of the `len` coordinates, `reduce` over that coordinate of every update (a column it may reorder);
/// refused when there is no update. The updates' lengths were checked by `RoundUpdates::each`.
pub(super) fn per_coordinate(
    strategy: &'static str,
    each: &[ClientUpdate],
    len: usize,
    mut reduce: impl FnMut(&mut [f32]) -> f32,
) -> Result<Vec<f32>, StrategyError> {
    if each.is_empty() {
        return Err(StrategyError::TooFewUpdates { strategy, needed: 1, got: 0 });
    }
    let mut column = Vec::with_capacity(each.len());
    Ok((0..len)
        .map(|j| {
            column.clear();
            column.extend(each.iter().map(|u| u.delta.get(j).copied().unwrap_or(0.0)));
            reduce(&mut column)
        })
        .collect())
}

/// sign with sign(0) = 0, as in the Yogi paper.
pub(super) fn sign(x: f32) -> f32 {
    if x > 0.0 {
        1.0
    } else if x < 0.0 {
        -1.0
    } else {
        0.0
    }
}
