//! Secure rounds in words narrower than 32 bits: the masks cancel modulo `2^word_bits` for any cohort and drop-outs
//! within the threshold, quantizing, summing and dequantizing `n` inputs in 16-bit words stays within the
//! documented rounding bound, and an agent refuses a word that cannot hold its cohort's sum.

mod secagg_support;

use std::collections::BTreeMap;

use fedge_shared::secagg::params::TARGET_WORD_BITS;
use fedge_shared::secagg::quant::{QuantizedInput, dequantize_sum, quantum, weight};
use fedge_shared::secagg::words::Packer;
use fedge_shared::secagg::{ClientSession, SecAggError, SecAggParams};
use proptest::prelude::*;
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use secagg_support::{CONTEXT, Cohort, DropAt, run_round, words_of};

fn phase(code: u8) -> DropAt {
    match code % 6 {
        0 => DropAt::Advertise,
        1 => DropAt::Shares,
        2 => DropAt::Receipt,
        3 => DropAt::MaskedInput,
        4 => DropAt::Consistency,
        _ => DropAt::Unmask,
    }
}

/// The server's parameters for a cohort of `n` (the default rule: 15-bit words while at least 11 quantization bits
/// fit), with the five exact counts of a real round; `extra` widens the word beyond what the sum needs.
fn narrow_params(n: usize, extra: u32) -> SecAggParams {
    let mut p = SecAggParams { counts: 5, ..SecAggParams::default_for(n) };
    p.narrow(n, false);
    p.word_bits = (p.word_bits + extra).min(31);
    p
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    /// Every agent sends only the low `word_bits` bits of its masked coordinates; the server's unmasked sum equals
    /// the plain sum of the survivors' quantized vectors modulo `2^word_bits` (the weight and counts modulo 2^32).
    #[test]
    fn masks_cancel_modulo_the_word_for_any_cohort_and_dropouts_within_the_threshold(
        n in 3usize..=40,
        extra in 0u32..4,
        p in 1usize..700,
        picks in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..20),
        seed in any::<u64>(),
    ) {
        let params = narrow_params(n, extra);
        prop_assert!(params.word_bits < 32);
        params.validate(n, p).unwrap();
        let cohort = Cohort::new(n);
        let budget = params.effective_neighbours(n) - params.threshold as usize;
        let indices = cohort.indices();
        let mut drops = BTreeMap::new();
        for (idx, code) in picks {
            if drops.len() >= budget {
                break;
            }
            drops.insert(*idx.get(&indices), phase(code));
        }
        let out = run_round(&params, &cohort, p, &drops, seed);
        let sum = out.result.as_ref().expect("a round within the threshold completes");
        let survivors: Vec<u32> = indices
            .iter()
            .copied()
            .filter(|i| !matches!(drops.get(i), Some(d) if *d <= DropAt::MaskedInput))
            .collect();
        prop_assert_eq!(&sum.survivors, &survivors);
        prop_assert_eq!(&sum.values, &out.expected_words(&params, &sum.survivors));
    }

    /// `n` agents' inputs quantized, cut to the default 15-bit words as they travel, summed modulo 2^15 and
    /// dequantized: the
    /// weight total is within `n / M` and each coordinate of `Σ w·Δ` within `n` quantization steps of the exact
    /// weighted sum of the clipped deltas (under one step of stochastic rounding per agent, as `bounds` assumes).
    #[test]
    fn quantize_sum_dequantize_in_the_default_word_stays_within_the_rounding_bound(
        n in 2usize..=16,
        deltas in proptest::collection::vec(proptest::collection::vec(-12.0f32..12.0, 64), 16),
        examples in proptest::collection::vec(0u64..2000, 16),
        seed in any::<u64>(),
    ) {
        let params = narrow_params(n, 0);
        prop_assert_eq!(params.word_bits, TARGET_WORD_BITS);
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let mut sum = vec![0u32; params.vector_len(64)];
        let (mut weight_sum, mut exact) = (0.0f64, vec![0.0f64; 64]);
        let clip = params.clip;
        for (delta, &ex) in deltas.iter().zip(&examples).take(n) {
            let counts = vec![0; params.counts as usize];
            let q = QuantizedInput::with_counts(&params, delta, ex, &counts, u32::MAX, &mut rng).unwrap();
            // What the server reads back: the header whole, the delta's low word_bits bits.
            for (i, (s, v)) in sum.iter_mut().zip(q.as_slice()).enumerate() {
                let v = if i <= params.counts as usize { *v } else { v & params.word_max() };
                *s = s.wrapping_add(v);
            }
            let w = weight(&params, ex);
            weight_sum += w;
            for (e, d) in exact.iter_mut().zip(delta) {
                *e += w * f64::from(d.clamp(-clip, clip));
            }
        }
        let (w, back) = dequantize_sum(&params, &sum, n);
        let m = params.max_level() as f64;
        prop_assert!((w - weight_sum).abs() <= n as f64 / m, "weight {} vs {}", w, weight_sum);
        let step = quantum(&params);
        for (j, (got, want)) in back.iter().zip(&exact).enumerate() {
            prop_assert!(
                (f64::from(*got) - want).abs() <= n as f64 * step + 1e-5 * want.abs().max(1.0),
                "coordinate {}: {} vs {} (bound {})", j, got, want, n as f64 * step
            );
        }
    }
}

/// An agent checks the width before it advertises anything: a word that cannot hold its cohort's sum is refused
/// whatever the server sends, and the narrowest that holds it is taken.
#[test]
fn an_agent_refuses_a_word_that_cannot_hold_the_cohorts_sum() {
    let n = 10;
    let cohort = Cohort::new(n);
    let mut rng = ChaCha20Rng::seed_from_u64(3);
    let start = |params: SecAggParams, rng: &mut ChaCha20Rng| {
        let me = cohort.refs[0].index;
        ClientSession::new(params, 1, me, &cohort.refs, 5, CONTEXT, cohort.signer(me), rng).map(|_| ())
    };
    // 11 bits for 10 agents need 15 (10 · 2047 = 20,470).
    let fits = narrow_params(n, 0);
    assert_eq!((fits.quant_bits, fits.word_bits), (11, 15));
    start(fits.clone(), &mut rng).unwrap();
    // A server that keeps 15-bit words but asks for 12 bits (10 · 4095 > 2^15), or 11 bits in 14-bit words.
    for lying in [SecAggParams { quant_bits: 12, ..fits.clone() }, SecAggParams { word_bits: 14, ..fits.clone() }] {
        let err = start(lying, &mut rng).unwrap_err();
        assert!(matches!(&err, SecAggError::InvalidParams(m) if m.contains("-bit word")), "{err}");
    }
}

/// The wire form: the weight and the counts in 32-bit words, then two bytes a 16-bit coordinate (its low half).
#[test]
fn sixteen_bit_words_travel_after_the_header_two_bytes_each() {
    let params = SecAggParams { word_bits: 16, ..narrow_params(3, 0) };
    let mut packer = Packer::new(&params);
    let mut bytes = Vec::new();
    packer.push(&[1, 2, 3, 4, 5, 6, 0x1_0007, 8], &mut bytes);
    packer.finish(&mut bytes);
    assert_eq!(words_of(&bytes), vec![1, 2, 3, 4, 5, 6, 7 | (8 << 16)]);
}
