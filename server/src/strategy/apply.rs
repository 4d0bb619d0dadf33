//! The steps strategies share: checking lengths and finiteness, adding a delta to the global weights, and running
//! a step on the trained part of the model only (with the optimizer state of that part, for the stateful ones).
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

/// [`on_part`] for a strategy with per-coordinate state (momentum, moments): `step` gets the part's coordinates of
/// `global` and of each vector of `state`, which it updates in place. Returns the new weights and the new state
/// vectors, the frozen coordinates of both as they were. `state` itself is not touched, so the caller keeps the
/// new state only once the step has succeeded.
pub(super) fn on_part_with_state<const N: usize>(
    global: &[f32],
    part: &TrainablePart,
    state: [&[f32]; N],
    step: impl FnOnce(&[f32], &mut [Vec<f32>; N]) -> Result<Vec<f32>, StrategyError>,
) -> Result<(Vec<f32>, [Vec<f32>; N]), StrategyError> {
    let mut moving: [Vec<f32>; N] = std::array::from_fn(|_| Vec::new());
    for (m, s) in moving.iter_mut().zip(state) {
        *m = part.gather(s).map_err(part_error)?;
    }
    let out = on_part(global, part, |x| step(x, &mut moving))?;
    let mut moved: [Vec<f32>; N] = state.map(<[f32]>::to_vec);
    for (full, m) in moved.iter_mut().zip(&moving) {
        part.scatter_into(full, m).map_err(part_error)?;
    }
    Ok((out, moved))
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
