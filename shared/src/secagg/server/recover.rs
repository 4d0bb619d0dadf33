//! Reconstruction that survives bad shares: one agent that reveals garbage (in the field, so it passes the shape
//! checks) must not abort the round while enough honest shares remain. A secret is accepted only when the
//! commitment its owner signed (seed commitment, mask public key) checks out, so a wrong candidate is never used.
//!
//! Candidates are tried by how many shares they leave out: none, then every single share, then every pair, and so
//! on, each time using the first `t` of the shares kept, up to [`MAX_CANDIDATES`] reconstructions per secret. With
//! `m` shares this finds the secret whenever at most `m - t` shares are bad and the budget reaches that depth
//! (at k = 22, t = 15 with all 22 shares in: every pattern of up to three bad shares). This module never returns a
//! secret that its check did not accept.

use crate::secagg::shamir::{self, ShareValue};

/// The most reconstructions tried for one secret.
pub const MAX_CANDIDATES: usize = 4096;

/// Advances `idx` (a strictly increasing choice of `idx.len()` of `0..m`) to the next choice in lexicographic
/// order; false when it was the last.
fn next_choice(idx: &mut [usize], m: usize) -> bool {
    let r = idx.len();
    let Some(i) = (0..r).rev().find(|&i| idx[i] < m - r + i) else { return false };
    idx[i] += 1;
    for j in i + 1..r {
        idx[j] = idx[j - 1] + 1;
    }
    true
}

/// The secret behind `shares` (threshold `t`) that `valid` accepts, trying subsets that leave out ever more shares;
/// `None` when no candidate within the budget is accepted.
pub fn reconstruct_checked(
    shares: &[(u32, ShareValue)],
    t: usize,
    valid: impl Fn(&[u8; 32]) -> bool,
) -> Option<[u8; 32]> {
    let m = shares.len();
    if t == 0 || m < t {
        return None;
    }
    let mut tried = 0;
    let mut subset = Vec::with_capacity(t);
    for left_out in 0..=(m - t) {
        let mut idx: Vec<usize> = (0..left_out).collect();
        loop {
            subset.clear();
            subset.extend(shares.iter().enumerate().filter(|(i, _)| !idx.contains(i)).map(|(_, s)| *s).take(t));
            if let Ok(secret) = shamir::reconstruct(&subset, t)
                && valid(&secret)
            {
                return Some(secret);
            }
            tried += 1;
            if tried >= MAX_CANDIDATES || !next_choice(&mut idx, m) {
                break;
            }
        }
        if tried >= MAX_CANDIDATES {
            return None;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    fn shares_of(secret: &[u8; 32], t: usize, holders: &[u32], seed: u64) -> Vec<(u32, ShareValue)> {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let values = shamir::split(secret, t, holders, &mut rng).unwrap();
        holders.iter().copied().zip(values).collect()
    }

    #[test]
    fn choices_are_enumerated_in_order_and_completely() {
        let mut idx = vec![0, 1];
        let mut all = vec![idx.clone()];
        while next_choice(&mut idx, 4) {
            all.push(idx.clone());
        }
        assert_eq!(all, vec![vec![0, 1], vec![0, 2], vec![0, 3], vec![1, 2], vec![1, 3], vec![2, 3]]);
        let mut none: Vec<usize> = vec![];
        assert!(!next_choice(&mut none, 3));
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

        #[test]
        fn the_secret_is_found_while_at_most_m_minus_t_shares_up_to_three_are_corrupt(
            t in 2usize..8,
            extra in 0usize..4,
            bad in proptest::collection::btree_set(0usize..11, 0..4),
            secret in any::<[u8; 32]>(),
            seed in any::<u64>(),
        ) {
            let m = t + extra;
            let holders: Vec<u32> = (0..m as u32).map(|i| 2 * i + 1).collect();
            let mut shares = shares_of(&secret, t, &holders, seed);
            let bad: Vec<usize> = bad.into_iter().filter(|&b| b < m).collect();
            for &b in &bad {
                shares[b].1.0[0] = (shares[b].1.0[0] + 1) % shamir::MODULUS;
            }
            let got = reconstruct_checked(&shares, t, |s| s == &secret);
            if bad.len() <= m - t {
                prop_assert_eq!(got, Some(secret));
            } else {
                // Too few honest shares: nothing the check rejects comes back. (Equal errors on several shares can
                // cancel in the Lagrange sum — +1 on the shares at x = 2 and x = 8 of five, whose coefficients are 5
                // and -5 — and then the true secret comes back, rightly.)
                prop_assert!(got.is_none() || got == Some(secret));
            }
        }
    }
}
