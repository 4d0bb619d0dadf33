//! Shamir secret sharing of 32-byte secrets (self-mask seeds and X25519 mask secret keys) over the prime field
//! GF(2^61 - 1).
//!
//! A secret is cut into five 7-byte limbs, each shared with its own random polynomial of degree `t - 1` whose
//! coefficients are drawn uniformly from the whole field (rejection sampling; the flaw of RUSTSEC-2024-0398 was a
//! biased coefficient range). A holder's x-coordinate is its cohort index plus one. Fewer than `t` shares are
//! statistically independent of the secret.
//!
//! This module must never draw coefficients from anything but the caller's cryptographic generator, and never
//! panics on shares that came from the network.

use serde::{Deserialize, Serialize};

use super::{SecAggError, SecureRng};

/// The field modulus, the Mersenne prime 2^61 - 1.
pub const MODULUS: u64 = (1 << 61) - 1;
/// Number of field elements per shared 32-byte secret.
pub const LIMBS: usize = 5;
const LIMB_BYTES: usize = 7;

/// One holder's share of a 32-byte secret: the polynomials' values at `holder + 1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShareValue(pub [u64; LIMBS]);

fn add(a: u64, b: u64) -> u64 {
    let s = a + b;
    if s >= MODULUS { s - MODULUS } else { s }
}

fn sub(a: u64, b: u64) -> u64 {
    if a >= b { a - b } else { a + MODULUS - b }
}

fn mul(a: u64, b: u64) -> u64 {
    let x = u128::from(a) * u128::from(b);
    add((x as u64) & MODULUS, (x >> 61) as u64)
}

fn pow(mut base: u64, mut exp: u64) -> u64 {
    let mut acc = 1;
    while exp > 0 {
        if exp & 1 == 1 {
            acc = mul(acc, base);
        }
        base = mul(base, base);
        exp >>= 1;
    }
    acc
}

fn inv(a: u64) -> u64 {
    pow(a, MODULUS - 2)
}

fn random_element(rng: &mut dyn SecureRng) -> u64 {
    loop {
        let v = rng.next_u64() & MODULUS;
        if v < MODULUS {
            return v;
        }
    }
}

fn limbs(secret: &[u8; 32]) -> [u64; LIMBS] {
    let mut out = [0u64; LIMBS];
    for (limb, chunk) in out.iter_mut().zip(secret.chunks(LIMB_BYTES)) {
        let mut b = [0u8; 8];
        b[..chunk.len()].copy_from_slice(chunk);
        *limb = u64::from_le_bytes(b);
    }
    out
}

fn x_of(holder: u32) -> u64 {
    u64::from(holder) + 1
}

/// Splits `secret` into one share per holder (holders are distinct cohort indices), any `threshold` of which
/// reconstruct it.
pub fn split(
    secret: &[u8; 32],
    threshold: usize,
    holders: &[u32],
    rng: &mut dyn SecureRng,
) -> Result<Vec<ShareValue>, SecAggError> {
    if threshold == 0 || threshold > holders.len() {
        return Err(SecAggError::InvalidParams(format!("threshold {threshold} with {} share holders", holders.len())));
    }
    let mut seen = std::collections::BTreeSet::new();
    if let Some(dup) = holders.iter().find(|h| !seen.insert(**h)) {
        return Err(SecAggError::Duplicate(*dup));
    }
    let constant = limbs(secret);
    // coeffs[l][d]: coefficient of x^d of limb l's polynomial.
    let coeffs: Vec<Vec<u64>> = constant
        .iter()
        .map(|&c0| std::iter::once(c0).chain((1..threshold).map(|_| random_element(rng))).collect())
        .collect();
    Ok(holders
        .iter()
        .map(|&h| {
            let x = x_of(h);
            let mut y = [0u64; LIMBS];
            for (yl, poly) in y.iter_mut().zip(&coeffs) {
                // Horner's rule.
                *yl = poly.iter().rev().fold(0, |acc, &c| add(mul(acc, x), c));
            }
            ShareValue(y)
        })
        .collect())
}

/// True when every limb of `v` is an element of the field (below [`MODULUS`]).
pub fn in_field(v: &ShareValue) -> bool {
    v.0.iter().all(|&y| y < MODULUS)
}

/// Reconstructs a secret from the first `threshold` of `shares` (holder index, share). Refuses too few shares,
/// duplicate holders, values outside the field, and results that are not a 32-byte secret.
pub fn reconstruct(shares: &[(u32, ShareValue)], threshold: usize) -> Result<[u8; 32], SecAggError> {
    if threshold == 0 || shares.len() < threshold {
        return Err(SecAggError::Abort(format!("{} shares, {threshold} needed", shares.len())));
    }
    let used = &shares[..threshold];
    let mut seen = std::collections::BTreeSet::new();
    for (h, v) in used {
        if !seen.insert(*h) {
            return Err(SecAggError::Duplicate(*h));
        }
        if !in_field(v) {
            return Err(SecAggError::Malformed(format!("share from {h} is outside the field")));
        }
    }
    let xs: Vec<u64> = used.iter().map(|(h, _)| x_of(*h)).collect();
    // Lagrange coefficients at 0: l_i = prod_{j != i} x_j / (x_j - x_i).
    let lagrange: Vec<u64> = xs
        .iter()
        .enumerate()
        .map(|(i, &xi)| {
            let (num, den) = xs
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .fold((1, 1), |(n, d), (_, &xj)| (mul(n, xj), mul(d, sub(xj, xi))));
            mul(num, inv(den))
        })
        .collect();
    let mut out = [0u8; 32];
    for (l, chunk) in out.chunks_mut(LIMB_BYTES).enumerate() {
        let value = used.iter().zip(&lagrange).fold(0, |acc, ((_, v), &li)| add(acc, mul(v.0[l], li)));
        let bytes = value.to_le_bytes();
        if bytes[chunk.len()..].iter().any(|&b| b != 0) {
            return Err(SecAggError::Malformed("reconstructed value is not a 32-byte secret".into()));
        }
        chunk.copy_from_slice(&bytes[..chunk.len()]);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_multiplication_matches_big_integer_arithmetic() {
        let cases = [(MODULUS - 1, MODULUS - 1), (123_456_789_012, 987_654_321_098), (0, 5), (1, MODULUS - 1)];
        for (a, b) in cases {
            let expect = ((u128::from(a) * u128::from(b)) % u128::from(MODULUS)) as u64;
            assert_eq!(mul(a, b), expect);
        }
        assert_eq!(mul(inv(12345), 12345), 1);
    }
}
