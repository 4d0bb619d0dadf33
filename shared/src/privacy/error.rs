//! The errors of the privacy module: every refusal names the setting, parameter or stored entry at fault and the
//! value it had, so an operator can fix the configuration without reading code.
//!
//! This module only describes failures; it must never decide a policy (what to refuse is decided where the error
//! is raised).

/// Why a privacy computation or setting was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PrivacyError {
    /// A `[privacy]` setting that would give no (or no meaningful) privacy, or is not a number.
    #[error("privacy setting `{name}` = {value} refused: {reason}")]
    Setting {
        /// The setting's name as written in the configuration (`noise_multiplier`, `clip_norm`, ...).
        name: &'static str,
        /// The value that was given.
        value: f64,
        /// What was expected.
        reason: &'static str,
    },
    /// A parameter of a mechanism (a round's noise, sampling rate, sensitivity, ...) outside the range the analysis
    /// covers.
    #[error("{mechanism}: parameter `{name}` = {value} refused: {reason}")]
    Parameter {
        /// The mechanism whose analysis refused it.
        mechanism: &'static str,
        /// The parameter's name.
        name: &'static str,
        /// The value that was given.
        value: f64,
        /// What was expected.
        reason: &'static str,
    },
    /// A stored accountant whose entry `index` does not describe a valid round (a corrupted or hand-edited record).
    #[error("accountant entry {index}: {source}")]
    StoredEntry {
        /// The entry's position in the accountant's history.
        index: usize,
        /// What is wrong with it.
        source: Box<PrivacyError>,
    },
    /// Adding noise to coordinate `index` would overflow an `i64`; nothing was changed.
    #[error("adding noise to coordinate {index} overflows i64 (value {value}, noise {noise}); nothing was changed")]
    NoiseOverflow {
        /// The coordinate's position.
        index: usize,
        /// Its value before noise.
        value: i64,
        /// The noise drawn for it.
        noise: i64,
    },
}
