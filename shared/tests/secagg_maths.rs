//! The mathematics under secure aggregation: Shamir sharing, quantization with stochastic rounding, and the
//! uniformity of what the server sees.

mod secagg_support;

use std::collections::BTreeMap;

use fedge_shared::secagg::quant::{self, QuantizedInput, stochastic_round};
use fedge_shared::secagg::shamir::{self, ShareValue};
use fedge_shared::secagg::{ClientSession, SecAggParams, ServerSession};
use proptest::prelude::*;
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use secagg_support::Cohort;

fn holders(k: usize) -> Vec<u32> {
    (0..k as u32).map(|i| i * 7 + 2).collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn any_t_of_k_shamir_shares_reconstruct_the_secret(
        secret in any::<[u8; 32]>(),
        k in 1usize..40,
        t_pick in any::<prop::sample::Index>(),
        order in any::<prop::sample::Index>(),
        seed in any::<u64>(),
    ) {
        let t = t_pick.index(k) + 1;
        let hs = holders(k);
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let shares = shamir::split(&secret, t, &hs, &mut rng).unwrap();
        let mut pairs: Vec<(u32, ShareValue)> = hs.iter().copied().zip(shares).collect();
        // Any subset: rotate, then reverse, then take t.
        pairs.rotate_left(order.index(k));
        pairs.reverse();
        prop_assert_eq!(shamir::reconstruct(&pairs[..t], t).unwrap(), secret);
    }

    #[test]
    fn fewer_than_t_shamir_shares_do_not_give_the_secret(
        secret in any::<[u8; 32]>(),
        k in 2usize..40,
        t_pick in any::<prop::sample::Index>(),
        seed in any::<u64>(),
    ) {
        let t = t_pick.index(k - 1) + 2;
        let hs = holders(k);
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let shares = shamir::split(&secret, t, &hs, &mut rng).unwrap();
        let pairs: Vec<(u32, ShareValue)> = hs.iter().copied().zip(shares).collect();
        // Interpolating t-1 shares as if they were enough yields a wrong value (or none that is a 32-byte secret).
        if let Ok(guess) = shamir::reconstruct(&pairs[..t - 1], t - 1) {
            prop_assert_ne!(guess, secret);
        }
        prop_assert!(shamir::reconstruct(&pairs[..t - 1], t).is_err());
    }

    #[test]
    fn quantization_round_trips_within_one_quantum_and_clips(
        values in proptest::collection::vec(-20.0f32..20.0, 1..64),
        bits in 8u32..24,
        clip in 0.1f32..10.0,
        seed in any::<u64>(),
    ) {
        let params = SecAggParams { neighbours: 2, threshold: 2, clip, quant_bits: bits, weight_cap: 100, counts: 0, clip_norm: None, noise_variance: 0.0, word_bits: 32 };
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let q = QuantizedInput::new(&params, &values, 100, &mut rng).unwrap();
        let (w, back) = quant::dequantize_sum(&params, q.as_slice(), 1);
        prop_assert_eq!(w, 1.0);
        let quantum = quant::quantum(&params);
        for (v, b) in values.iter().zip(&back) {
            let clipped = f64::from(v.clamp(-clip, clip));
            prop_assert!((clipped - f64::from(*b)).abs() <= quantum * 1.0001 + 1e-6, "{} -> {}", v, b);
        }
    }
}

#[test]
fn stochastic_rounding_is_unbiased() {
    let mut rng = ChaCha20Rng::seed_from_u64(5);
    for &x in &[0.1f64, 0.5, 0.77, 12.25, 1000.999] {
        let draws = 200_000;
        let sum: u64 = (0..draws).map(|_| u64::from(stochastic_round(x, 1 << 20, &mut rng))).sum();
        let mean = sum as f64 / draws as f64;
        // Standard deviation of the mean is at most 0.5 / sqrt(draws) ~ 0.0011: allow 5 sigma.
        assert!((mean - x).abs() < 0.0056, "x={x} mean={mean}");
        // And it never moves a value by a whole step.
        let q = stochastic_round(x, 1 << 20, &mut rng);
        assert!(q == x.floor() as u32 || q == x.ceil() as u32);
    }
}

#[test]
fn values_beyond_the_clip_quantize_to_the_ends_of_the_range_and_weight_scales_the_delta() {
    let params = SecAggParams::new(2, 2, 2.0, 10, 100);
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let q = QuantizedInput::new(&params, &[1e9, -1e9, f32::INFINITY, 0.0], 100, &mut rng).unwrap();
    assert_eq!(&q.as_slice()[..4], &[1023, 1023, 0, 1023]);
    assert!(q.as_slice()[4] == 511 || q.as_slice()[4] == 512, "{:?}", q.as_slice());
    // Half the weight: the weight is half the range and the delta's distance from the middle halves too.
    let half = QuantizedInput::new(&params, &[2.0], 50, &mut rng).unwrap();
    assert!(half.as_slice()[0] == 511 || half.as_slice()[0] == 512);
    assert!((766..=768).contains(&half.as_slice()[1]), "{:?}", half.as_slice());
    assert_eq!(quant::weight(&params, 5000), 1.0);
    assert_eq!(quant::weight(&params, 0), 0.0);
}

/// Chi-square statistic of the top 8 bits of `values` against the uniform distribution over 256 bins.
fn chi_square_top_byte(values: &[u32]) -> f64 {
    let mut bins = [0u64; 256];
    for v in values {
        bins[(v >> 24) as usize] += 1;
    }
    let expected = values.len() as f64 / 256.0;
    bins.iter().map(|&o| (o as f64 - expected).powi(2) / expected).sum()
}

#[test]
fn masked_vectors_the_server_receives_look_uniform_even_for_constant_inputs() {
    let n = 8;
    let p = 8191;
    let params = SecAggParams::new(7, 5, 1.0, 16, 10);
    let cohort = Cohort::new(n);
    let mut rng = ChaCha20Rng::seed_from_u64(77);
    let mut server = ServerSession::new(params.clone(), 1, &cohort.refs, 3, p).unwrap();
    let mut clients = BTreeMap::new();
    for r in &cohort.refs {
        let (c, adv) =
            ClientSession::new(params.clone(), 1, r.index, &cohort.refs, 3, [0; 32], cohort.signer(r.index), &mut rng)
                .unwrap();
        server.on_advertise(r.index, adv).unwrap();
        clients.insert(r.index, c);
    }
    let keys = server.close_advertise().unwrap();
    for (&i, c) in clients.iter_mut() {
        server.on_shares(i, c.on_keys(&keys[&i], &cohort.table, &mut rng).unwrap()).unwrap();
    }
    let relayed = server.close_shares().unwrap();
    for (&i, c) in clients.iter_mut() {
        server.on_receipt(i, c.on_shares(&relayed[&i]).unwrap()).unwrap();
    }
    let mask_with = server.close_receipts().unwrap().mask_with;
    let mut seen = Vec::new();
    for (&i, c) in clients.iter_mut() {
        c.on_mask_with(&mask_with[&i]).unwrap();
        // Every agent uploads the same constant delta: the unmasked vectors would sit in two or three bins.
        let masked = c.masked_input(&vec![0.0; p], 10, &mut rng).unwrap();
        let plain = QuantizedInput::new(&params, &vec![0.0; p], 10, &mut rng).unwrap();
        let plain_chi = chi_square_top_byte(plain.as_slice());
        assert!(plain_chi > 10_000.0, "the unmasked input is far from uniform ({plain_chi})");
        seen.extend_from_slice(&masked);
    }
    // 65,536 values in 256 bins, 255 degrees of freedom: the 0.1% critical value is 330.5.
    let chi = chi_square_top_byte(&seen);
    assert!(chi < 330.5, "chi-square {chi}");
    // The low byte as well.
    let low: Vec<u32> = seen.iter().map(|v| v << 24).collect();
    let chi_low = chi_square_top_byte(&low);
    assert!(chi_low < 330.5, "chi-square of the low byte {chi_low}");
}
