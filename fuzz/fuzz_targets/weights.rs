//! Fuzz target: the weights decoder. `weights_from_bytes` must give finite values of the announced count or an
//! error, and a successful decode must round-trip to the same bytes.
#![no_main]

use fedge_shared::model::{Digest, weights_from_bytes, weights_from_bytes_checked, weights_to_bytes};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let expected = data.first().map(|b| *b as usize);
    if let Ok(w) = weights_from_bytes(data, None) {
        assert!(w.iter().all(|v| v.is_finite()));
        assert_eq!(weights_to_bytes(&w), data);
    }
    if let Some(expected) = expected
        && let Ok(w) = weights_from_bytes(data, Some(expected))
    {
        assert_eq!(w.len(), expected);
    }
    let _ = weights_from_bytes_checked(data, None, &Digest::of(b"not these bytes"));
});
