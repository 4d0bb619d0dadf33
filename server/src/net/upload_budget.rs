//! The server's budget for uploads held in memory: at most `max_concurrent_uploads` of them at once, and at most
//! `upload_memory_mb` of their bytes. An upload is read only once both admit it ([`UploadBudget::admit`]), and
//! its permit ([`UploadPermit`]) stays with its vector until the core has folded it.
//!
//! Counting bytes, not uploads, is what lets small uploads overlap: at n = 1,000 and P = 1e5 a secure round's
//! masked vectors are 190 KB each, and four at a time (the count alone) made the masked-input phase twice as long as
//! reading dozens would, for the same bounded memory; at P = 1e6 four 4 MB uploads fill the same default budget.
//! An upload larger than the whole budget is admitted alone (it takes all of it), so none waits for ever. Waiters
//! are served in the order they came (tokio's semaphores are fair), so a large upload is not starved by small ones.
//!
//! This module must never admit an upload beyond either bound, nor hold a permit anywhere but with its upload.

use std::sync::Arc;
use tokio::sync::{AcquireError, OwnedSemaphorePermit, Semaphore, TryAcquireError};

/// The granularity of the byte budget.
const UNIT: u64 = 64 * 1024;

/// Admits uploads within a count and a byte budget.
#[derive(Debug, Clone)]
pub struct UploadBudget {
    count: Arc<Semaphore>,
    bytes: Arc<Semaphore>,
    units: u32,
}

/// One admitted upload's share of the budget, given back when dropped.
#[derive(Debug)]
pub struct UploadPermit {
    _count: OwnedSemaphorePermit,
    _bytes: OwnedSemaphorePermit,
}

impl UploadBudget {
    /// At most `max_uploads` uploads (at least 1) and `memory_bytes` of them (at least one unit of 64 KiB) at once.
    pub fn new(max_uploads: usize, memory_bytes: u64) -> Self {
        let units = (memory_bytes / UNIT).clamp(1, u64::from(u32::MAX >> 4)) as u32;
        UploadBudget {
            count: Arc::new(Semaphore::new(max_uploads.clamp(1, Semaphore::MAX_PERMITS))),
            bytes: Arc::new(Semaphore::new(units as usize)),
            units,
        }
    }

    /// The budget's units an upload of `len` bytes takes: its size rounded up, at least one, at most all of them.
    fn units_for(&self, len: u64) -> u32 {
        len.div_ceil(UNIT).clamp(1, u64::from(self.units)) as u32
    }

    /// Waits until an upload of `len` bytes fits in both bounds.
    pub async fn admit(&self, len: u64) -> Result<UploadPermit, AcquireError> {
        let count = self.count.clone().acquire_owned().await?;
        let bytes = self.bytes.clone().acquire_many_owned(self.units_for(len)).await?;
        Ok(UploadPermit { _count: count, _bytes: bytes })
    }

    /// Admits an upload of `len` bytes if it fits now.
    pub fn try_admit(&self, len: u64) -> Result<UploadPermit, TryAcquireError> {
        let count = self.count.clone().try_acquire_owned()?;
        let bytes = self.bytes.clone().try_acquire_many_owned(self.units_for(len))?;
        Ok(UploadPermit { _count: count, _bytes: bytes })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KB: u64 = 1024;

    #[test]
    fn small_uploads_are_admitted_until_their_bytes_fill_the_budget() {
        let budget = UploadBudget::new(64, 1024 * KB);
        let held: Vec<_> = (0..5).map(|_| budget.try_admit(190 * KB).unwrap()).collect();
        // 5 × 192 KiB (rounded up to the unit) = 960 KiB: a sixth would pass 1 MiB.
        assert!(budget.try_admit(190 * KB).is_err(), "a sixth 190 KB upload went past a 1 MiB budget");
        assert!(budget.try_admit(64 * KB).is_ok(), "one unit is still free");
        drop(held);
        assert!(budget.try_admit(190 * KB).is_ok());
    }

    #[test]
    fn no_more_uploads_than_the_count_are_admitted_however_small() {
        let budget = UploadBudget::new(3, 64 * 1024 * KB);
        let held: Vec<_> = (0..3).map(|_| budget.try_admit(10).unwrap()).collect();
        assert!(budget.try_admit(10).is_err(), "a fourth upload was admitted with a count of 3");
        drop(held);
        assert!(budget.try_admit(10).is_ok());
    }

    #[test]
    fn an_upload_larger_than_the_whole_budget_is_admitted_alone() {
        let budget = UploadBudget::new(8, 1024 * KB);
        let big = budget.try_admit(40 * 1024 * KB).expect("an upload larger than the budget must be admitted alone");
        assert!(budget.try_admit(1).is_err(), "another upload was admitted beside one that takes the whole budget");
        drop(big);
        let small = budget.try_admit(1).unwrap();
        assert!(budget.try_admit(40 * 1024 * KB).is_err(), "the large upload must wait for the budget to be free");
        drop(small);
    }

    #[tokio::test]
    async fn a_waiting_upload_is_admitted_when_a_permit_is_given_back() {
        let budget = UploadBudget::new(1, 1024 * KB);
        let first = budget.admit(100).await.unwrap();
        let waiting = tokio::spawn({
            let budget = budget.clone();
            async move { budget.admit(100).await.map(|_| ()) }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "admitted while the only permit was held");
        drop(first);
        tokio::time::timeout(std::time::Duration::from_secs(5), waiting).await.unwrap().unwrap().unwrap();
    }
}
