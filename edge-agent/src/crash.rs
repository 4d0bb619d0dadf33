//! Crash points: places in a round where the whole-system tests make an agent process die as if it were killed.
//!
//! Built on tikv's `fail` crate. Without the `failpoints` feature every point compiles to nothing. With it, a point
//! fires only when the process was started with `FAILPOINTS="<name>=return"` (see [`setup`]); the process then
//! aborts on the spot: no goodbye to the server, no flushing, the same as a SIGKILL or a power cut. This module must
//! never do anything else, and nothing in production sets `FAILPOINTS`.

/// Reads the `FAILPOINTS` environment variable (a no-op without the `failpoints` feature). Keep the returned guard
/// alive for the life of the process.
#[cfg(feature = "failpoints")]
pub fn setup() -> Option<fail::FailScenario<'static>> {
    Some(fail::FailScenario::setup())
}

/// Reads the `FAILPOINTS` environment variable (a no-op without the `failpoints` feature).
#[cfg(not(feature = "failpoints"))]
pub fn setup() -> Option<()> {
    None
}

/// Selected for a secure round, before advertising keys.
pub fn before_advertise() {
    fail::fail_point!("agent::before-advertise", |_| die("agent::before-advertise"));
}

/// Keys received, before sending encrypted shares.
pub fn before_shares() {
    fail::fail_point!("agent::before-shares", |_| die("agent::before-shares"));
}

/// Trained and masked, before uploading the masked input.
pub fn before_masked_input() {
    fail::fail_point!("agent::before-masked-input", |_| die("agent::before-masked-input"));
}

/// Masked input uploaded, before answering the unmask request.
pub fn before_unmask() {
    fail::fail_point!("agent::before-unmask", |_| die("agent::before-unmask"));
}

/// Trained in a plain round, before uploading the delta.
pub fn before_upload() {
    fail::fail_point!("agent::before-upload", |_| die("agent::before-upload"));
}

#[cfg_attr(not(feature = "failpoints"), allow(dead_code))]
fn die(point: &str) {
    eprintln!("crash point {point}: aborting the process");
    std::process::abort();
}
