//! Process-wide memory-allocator settings for the long-running binaries (server and agent).
//!
//! glibc's malloc raises its mmap threshold to the size of the largest block freed so far (up to 32 MiB): once a
//! 4 MB weights vector has been freed, every later vector of that size comes from the heap arenas, one per thread,
//! and freed space there is kept by the process instead of being returned to the kernel. A server or agent that
//! moves model-sized buffers through several threads then holds several models' worth of freed memory (measured:
//! server 106 MB → 74 MB and agent 43 MB → 28 MB peak RSS at 1e6 parameters with the threshold fixed).
//! [`return_large_blocks_to_the_os`] fixes the threshold, so that large blocks are always their own mapping and
//! go back to the kernel when freed.
//!
//! Training is the exception: a training step frees and allocates the same buffers every step (activations,
//! gradients, GEMM packing), hundreds of KB to MB each, and with the threshold above each of them is a fresh
//! mapping whose pages fault in again at every step (the 2NN's step took 0.77 ms instead of 0.45, most of it in
//! page faults). [`keep_heap_for_training`] keeps such blocks in the heap while a training run lasts and gives the
//! memory back when it ends.
//!
//! This module must never be called from a library's code path: only a binary's own code decides how its process
//! allocates (`main` once, before threads start; the agent around its training runs).

use std::sync::Mutex;

/// Blocks of this size or larger are mapped on their own and unmapped when freed.
pub const MMAP_THRESHOLD: usize = 256 * 1024;

/// While a training run lasts, blocks below this size come from the heap and are kept there when freed.
pub const TRAINING_MMAP_THRESHOLD: usize = 32 * 1024 * 1024;

/// While a training run lasts, free memory at the top of the heap goes back to the kernel only above this: a step
/// of a recurrent model at batch 128 frees tens of MB at once, which a lower threshold would return and fault in
/// again at the next step.
pub const TRAINING_TRIM_THRESHOLD: usize = 1 << 30;

/// glibc's default trim threshold (free memory at the top of the heap above this goes back to the kernel).
const TRIM_THRESHOLD: usize = 128 * 1024;

/// How many [`TrainingHeap`] guards are alive.
static TRAINING_RUNS: Mutex<usize> = Mutex::new(0);

/// Fixes glibc's mmap threshold at [`MMAP_THRESHOLD`] (no effect on other C libraries). Returns whether it took.
pub fn return_large_blocks_to_the_os() -> bool {
    glibc::set(glibc::M_MMAP_THRESHOLD, MMAP_THRESHOLD)
}

/// Keeps freed blocks below [`TRAINING_MMAP_THRESHOLD`] in the heap, and the heap untrimmed, until the returned
/// guard (and every other one alive) is dropped; then the settings of [`return_large_blocks_to_the_os`] and
/// glibc's default trim threshold come back and the heap's free memory is returned to the kernel. For the span of
/// a training run: the process's memory peak is the step's, reused step after step instead of faulted in again.
/// No effect on other C libraries.
pub fn keep_heap_for_training() -> TrainingHeap {
    let mut runs = TRAINING_RUNS.lock().unwrap_or_else(|e| e.into_inner());
    *runs += 1;
    let kept = if *runs == 1 {
        glibc::set(glibc::M_MMAP_THRESHOLD, TRAINING_MMAP_THRESHOLD)
            && glibc::set(glibc::M_TRIM_THRESHOLD, TRAINING_TRIM_THRESHOLD)
    } else {
        true
    };
    TrainingHeap { kept }
}

/// While alive, freed blocks stay in the heap (see [`keep_heap_for_training`]).
#[derive(Debug)]
#[must_use = "the heap is kept only while the guard lives"]
pub struct TrainingHeap {
    kept: bool,
}

impl TrainingHeap {
    /// Whether the C library took the settings (glibc on Linux does).
    pub fn kept(&self) -> bool {
        self.kept
    }
}

impl Drop for TrainingHeap {
    fn drop(&mut self) {
        let mut runs = TRAINING_RUNS.lock().unwrap_or_else(|e| e.into_inner());
        *runs = runs.saturating_sub(1);
        if *runs == 0 {
            glibc::set(glibc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
            glibc::set(glibc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
            glibc::trim();
        }
    }
}

/// glibc's `mallopt` and `malloc_trim`; no-ops returning false elsewhere.
mod glibc {
    pub const M_TRIM_THRESHOLD: i32 = -1;
    pub const M_MMAP_THRESHOLD: i32 = -3;

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    unsafe extern "C" {
        fn mallopt(param: std::ffi::c_int, value: std::ffi::c_int) -> std::ffi::c_int;
        fn malloc_trim(pad: usize) -> std::ffi::c_int;
    }

    /// `mallopt(param, value)`; whether glibc took it.
    pub fn set(param: i32, value: usize) -> bool {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        {
            let Ok(value) = std::ffi::c_int::try_from(value) else { return false };
            // SAFETY: mallopt is glibc's, takes two ints and has no memory-safety preconditions; the parameters
            // are those of glibc's <malloc.h> (M_TRIM_THRESHOLD -1, M_MMAP_THRESHOLD -3).
            unsafe { mallopt(param, value) == 1 }
        }
        #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
        {
            let _ = (param, value);
            false
        }
    }

    /// Returns the heap's free memory to the kernel.
    pub fn trim() {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: malloc_trim is glibc's, takes a size and has no memory-safety preconditions.
        unsafe {
            malloc_trim(0);
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn glibc_accepts_the_threshold() {
        assert!(super::return_large_blocks_to_the_os());
    }
}
