//! Micro-benchmark of the server's and the agent's hot paths, next to a memcpy of the same size as the physical
//! reference: the plain aggregation fold (f32 delta into the f64 weighted sum), the secure fold (wrapping u32 add),
//! and secure-aggregation mask expansion (ChaCha20 keystream added to u32s).
//! Run: `cargo bench -p fedge-server --bench hot_paths` (prints GB/s of input per second, one core).

use fedge_server::coordinator::WeightedSum;
use fedge_shared::secagg::prg::{MaskSign, apply_mask};
use std::hint::black_box;
use std::time::Instant;

fn rate(bytes: usize, reps: usize, mut f: impl FnMut()) -> f64 {
    f(); // warm up
    let t = Instant::now();
    for _ in 0..reps {
        f();
    }
    (bytes * reps) as f64 / t.elapsed().as_secs_f64() / 1e9
}

fn main() {
    for p in [100_000usize, 1_000_000, 10_000_000] {
        let reps = (200_000_000 / p).max(3);
        let bytes = p * 4;
        let src: Vec<f32> = (0..p).map(|i| (i % 97) as f32 * 1e-3).collect();
        let mut dst = vec![0f32; p];
        let memcpy = rate(bytes, reps, || {
            dst.copy_from_slice(black_box(&src));
            black_box(&mut dst);
        });
        let mut sum = WeightedSum::new(p);
        let fold = rate(bytes, reps, || {
            sum.fold(37, black_box(&src)).expect("fold");
        });
        let masked: Vec<u32> = (0..p as u32).collect();
        let mut acc = vec![0u32; p];
        let secure_fold = rate(bytes, reps, || {
            for (a, m) in acc.iter_mut().zip(black_box(&masked)) {
                *a = a.wrapping_add(*m);
            }
            black_box(&mut acc);
        });
        let key = [7u8; 32];
        let mask = rate(bytes, reps.div_ceil(4), || {
            apply_mask(&key, MaskSign::Add, black_box(&mut acc));
        });
        println!(
            "{{\"params\":{p},\"memcpy_gbps\":{memcpy:.2},\"plain_fold_gbps\":{fold:.2},\"plain_fold_vs_memcpy\":{:.2},\
             \"secure_fold_gbps\":{secure_fold:.2},\"mask_expansion_gbps\":{mask:.2}}}",
            fold / memcpy
        );
    }
}
