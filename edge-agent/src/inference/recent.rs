//! [`RecentPredictions`]: the inputs of the predictions the endpoint served last, by prediction id, so that a
//! correction (`POST /v1/feedback` with the id and the right label) can become a labelled example.
//!
//! Bounded: at most `capacity` predictions are remembered, the oldest forgotten first; a prediction is forgotten
//! too once it has been corrected (one correction per prediction). Kept in memory only: ids from before a restart
//! are unknown. An id is 16 hex digits: a random prefix drawn when the endpoint starts (so that an id from before
//! a restart is never taken for a new prediction) and a sequence number. This module never runs a model.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

/// A served prediction, as remembered.
#[derive(Debug, Clone, PartialEq)]
pub struct Served {
    pub input: Vec<f32>,
    /// The model version that computed it.
    pub version: u64,
    /// The model's number of outputs (classes).
    pub classes: usize,
}

/// Why a correction cannot be matched to a prediction.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LookupError {
    #[error("{0:?} is not a prediction id (ids are 16 hex digits, as /v1/predict returns them in \"ids\")")]
    Malformed(String),
    #[error(
        "unknown prediction id {id:?}: it was not served by this agent since it started, was already corrected, or \
         is older than the {capacity} most recent predictions it remembers"
    )]
    Unknown { id: String, capacity: usize },
}

struct Inner {
    next: u32,
    by_id: HashMap<u64, Served>,
    order: VecDeque<u64>,
}

/// The most recent predictions, by id.
pub struct RecentPredictions {
    capacity: usize,
    prefix: u64,
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for RecentPredictions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecentPredictions").field("capacity", &self.capacity).finish_non_exhaustive()
    }
}

/// The text form of an id.
pub fn format_id(id: u64) -> String {
    format!("{id:016x}")
}

impl RecentPredictions {
    /// Remembers at most `capacity` predictions; ids start with `prefix` (the caller draws it at random).
    pub fn new(capacity: usize, prefix: u32) -> Self {
        let inner = Inner { next: 0, by_id: HashMap::new(), order: VecDeque::new() };
        RecentPredictions { capacity, prefix: u64::from(prefix) << 32, inner: Mutex::new(inner) }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Gives each of `rows` examples of `input` (back to back) an id and remembers it; returns the ids in order.
    pub fn remember(&self, input: &[f32], rows: usize, version: u64, classes: usize) -> Vec<String> {
        let len = input.len().checked_div(rows).unwrap_or(0);
        let mut inner = self.lock();
        let mut ids = Vec::with_capacity(rows);
        for row in 0..rows {
            let id = self.prefix | u64::from(inner.next);
            inner.next = inner.next.wrapping_add(1);
            ids.push(format_id(id));
            if self.capacity == 0 {
                continue;
            }
            let example = input.get(row * len..(row + 1) * len).unwrap_or_default().to_vec();
            inner.by_id.insert(id, Served { input: example, version, classes });
            inner.order.push_back(id);
            while inner.order.len() > self.capacity {
                if let Some(old) = inner.order.pop_front() {
                    inner.by_id.remove(&old);
                }
            }
        }
        ids
    }

    /// Takes the prediction `id` (it is then forgotten).
    pub fn take(&self, id: &str) -> Result<Served, LookupError> {
        let key = (id.len() == 16)
            .then(|| u64::from_str_radix(id, 16).ok())
            .flatten()
            .ok_or_else(|| LookupError::Malformed(id.chars().take(40).collect()))?;
        let mut inner = self.lock();
        let served =
            inner.by_id.remove(&key).ok_or_else(|| LookupError::Unknown { id: id.into(), capacity: self.capacity })?;
        inner.order.retain(|k| *k != key);
        Ok(served)
    }

    /// Puts back a prediction taken by [`RecentPredictions::take`] whose correction could not be stored.
    pub fn restore(&self, id: &str, served: Served) {
        if let Ok(key) = u64::from_str_radix(id, 16) {
            let mut inner = self.lock();
            inner.by_id.insert(key, served);
            inner.order.push_front(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_example_of_a_batch_gets_its_own_id_and_input_back_once() {
        let r = RecentPredictions::new(8, 0xabcd);
        let ids = r.remember(&[1.0, 2.0, 3.0, 4.0], 2, 7, 10);
        assert_eq!(ids.len(), 2);
        assert_ne!(ids[0], ids[1]);
        assert!(ids[0].starts_with("0000abcd"), "{}", ids[0]);
        assert_eq!(r.take(&ids[1]).unwrap(), Served { input: vec![3.0, 4.0], version: 7, classes: 10 });
        assert!(matches!(r.take(&ids[1]), Err(LookupError::Unknown { .. })), "a prediction is corrected once");
        assert_eq!(r.take(&ids[0]).unwrap().input, vec![1.0, 2.0]);
    }

    #[test]
    fn only_the_most_recent_are_remembered_and_bad_ids_are_named() {
        let r = RecentPredictions::new(2, 1);
        let ids: Vec<String> = (0..3).flat_map(|i| r.remember(&[i as f32], 1, 1, 2)).collect();
        let e = r.take(&ids[0]).unwrap_err();
        assert!(e.to_string().contains("2 most recent"), "{e}");
        assert_eq!(r.take(&ids[2]).unwrap().input, vec![2.0]);
        assert!(matches!(r.take("xyz"), Err(LookupError::Malformed(_))));
        assert!(matches!(r.take("zzzzzzzzzzzzzzzz"), Err(LookupError::Malformed(_))));
        let none = RecentPredictions::new(0, 1);
        let id = none.remember(&[1.0], 1, 1, 2).remove(0);
        assert!(matches!(none.take(&id), Err(LookupError::Unknown { .. })));
    }
}
