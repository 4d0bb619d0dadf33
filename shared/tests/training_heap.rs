//! `shared::alloc`'s contract, observed through glibc's own accounting (`mallinfo2`): with the long-running
//! binaries' setting a large block is a mapping of its own; while a training run keeps the heap it comes from the
//! heap instead, also under nested runs; when the last run ends, large blocks are mappings again and the heap's
//! free memory has gone back to the kernel. Its own test binary (one process, one test): the settings are
//! process-wide.

#![cfg(all(target_os = "linux", target_env = "gnu"))]

use fedge_shared::alloc::{keep_heap_for_training, return_large_blocks_to_the_os};

#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct Mallinfo2 {
    arena: usize,
    ordblks: usize,
    smblks: usize,
    hblks: usize,
    hblkhd: usize,
    usmblks: usize,
    fsmblks: usize,
    uordblks: usize,
    fordblks: usize,
    keepcost: usize,
}

unsafe extern "C" {
    fn mallinfo2() -> Mallinfo2;
}

fn info() -> Mallinfo2 {
    // SAFETY: glibc's mallinfo2 takes nothing and returns a plain struct of sizes.
    unsafe { mallinfo2() }
}

const MIB: usize = 1 << 20;

/// Whether a fresh block of `size` bytes (written, so it is really allocated) is a mapping of its own.
fn block_is_mapped(size: usize) -> bool {
    let before = info().hblkhd;
    let v = vec![1u8; size];
    let mapped = info().hblkhd >= before + size;
    std::hint::black_box(&v);
    mapped
}

/// This process's resident memory in bytes.
fn rss() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kb = status.lines().find_map(|l| l.strip_prefix("VmRSS:")).expect("VmRSS");
    kb.trim().trim_end_matches("kB").trim().parse::<usize>().expect("a number of kB") * 1024
}

#[test]
fn large_blocks_stay_in_the_heap_exactly_while_a_training_run_lasts() {
    assert!(return_large_blocks_to_the_os());
    assert!(block_is_mapped(MIB), "the binaries' setting maps large blocks on their own");

    let run = keep_heap_for_training();
    assert!(run.kept());
    assert!(!block_is_mapped(MIB), "a training run takes large blocks from the heap");
    let nested = keep_heap_for_training();
    drop(run);
    assert!(!block_is_mapped(2 * MIB), "the heap is kept while any run lasts");
    // Freed memory stays resident for the next step while the run lasts...
    let held = std::hint::black_box(vec![1u8; 8 * MIB]);
    let with_block = rss();
    drop(held);
    let freed = rss();
    assert!(freed + MIB > with_block, "freed memory was given back during the run: {with_block} → {freed} bytes");

    // ... and goes back to the kernel when the last run ends, after which large blocks are mappings again (one
    // larger than anything freed so far, so that no free chunk of the heap can serve it).
    drop(nested);
    let after = rss();
    assert!(after + 7 * MIB < freed, "the heap's free memory went back to the kernel: {freed} → {after} bytes");
    assert!(block_is_mapped(24 * MIB), "the binaries' setting is back once the last run ends");
}
