//! The privacy budget of one run: which rounds happened with which noise, and the (ε, δ) they add up to.
//!
//! The server keeps one [`Accountant`] per run, records each round once its noisy sum has been released, asks
//! [`Accountant::would_exceed`] before starting the next one, and stores the accountant (serde) with the run.
//! It stores the history of mechanisms, not a running total, so a stored accountant can be re-checked and
//! re-converted at any δ; ε is recomputed from the history on demand (a few milliseconds).
//!
//! Composition is Rényi-DP composition (curves add order by order over [`default_orders`]); the conversion to
//! (ε, δ) is dp_accounting's. This module must never record a round it could not analyse, and never report an ε
//! lower than the analysis gives: any invalid entry (also from a corrupted store) is an error naming the entry.

use serde::{Deserialize, Serialize};

use super::PrivacyError;
use super::rdp::{DdgRound, ddg_rdp, default_orders, epsilon_from_rdp, subsampled_gaussian_rdp};

/// One round's mechanism, as far as privacy is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Mechanism {
    /// Central Gaussian noise of standard deviation `noise_multiplier` × L2 sensitivity on a Poisson sample of
    /// rate `sampling_rate` (the DP-SGD / DP-FedAvg analysis; only valid when the sample really is Poisson and
    /// secret from the adversary, which fedge's server-chosen cohorts are not).
    PoissonSampledGaussian {
        /// The probability with which each agent is included, independently.
        sampling_rate: f64,
        /// Noise standard deviation over L2 sensitivity.
        noise_multiplier: f64,
    },
    /// fedge's mechanism: every honest agent adds discrete Gaussian noise before masking; no sampling.
    DistributedDiscreteGaussian(DdgRound),
}

impl Mechanism {
    /// The RDP curve of one round at `orders`.
    pub fn rdp(&self, orders: &[f64]) -> Result<Vec<f64>, PrivacyError> {
        match self {
            Mechanism::PoissonSampledGaussian { sampling_rate, noise_multiplier } => {
                subsampled_gaussian_rdp(*sampling_rate, *noise_multiplier, orders)
            }
            Mechanism::DistributedDiscreteGaussian(round) => ddg_rdp(round, orders),
        }
    }

    /// The ε of this one round alone at `delta` (for per-round reports).
    pub fn epsilon(&self, delta: f64) -> Result<f64, PrivacyError> {
        let orders = default_orders();
        Ok(epsilon_from_rdp(&orders, &self.rdp(&orders)?, delta)?.0)
    }
}

/// A run of identical consecutive rounds in an accountant's history.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Recorded {
    /// What each of these rounds did.
    pub mechanism: Mechanism,
    /// How many rounds in a row did it.
    pub rounds: u64,
}

/// The privacy spent by one run so far. `Default` is a run with no rounds (ε = 0).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Accountant {
    history: Vec<Recorded>,
}

impl Accountant {
    /// An accountant with no rounds.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records one released round. The mechanism is analysed first: a round that cannot be analysed is refused
    /// and nothing is recorded.
    pub fn record_round(&mut self, mechanism: Mechanism) -> Result<(), PrivacyError> {
        self.record_rounds(mechanism, 1)
    }

    /// Records `rounds` released rounds of the same mechanism (nothing is recorded on error).
    pub fn record_rounds(&mut self, mechanism: Mechanism, rounds: u64) -> Result<(), PrivacyError> {
        mechanism.rdp(&default_orders())?;
        if rounds == 0 {
            return Ok(());
        }
        match self.history.last_mut() {
            Some(last) if last.mechanism == mechanism => {
                last.rounds = last.rounds.saturating_add(rounds);
            }
            _ => self.history.push(Recorded { mechanism, rounds }),
        }
        Ok(())
    }

    /// The rounds recorded so far, oldest first, identical consecutive rounds merged.
    pub fn history(&self) -> &[Recorded] {
        &self.history
    }

    /// How many rounds have been recorded.
    pub fn rounds(&self) -> u64 {
        self.history.iter().fold(0u64, |n, r| n.saturating_add(r.rounds))
    }

    /// The composed RDP curve at [`default_orders`]: the sum over rounds of each round's curve.
    pub fn rdp(&self) -> Result<Vec<f64>, PrivacyError> {
        let orders = default_orders();
        let mut total = vec![0.0; orders.len()];
        for (index, entry) in self.history.iter().enumerate() {
            let curve =
                entry.mechanism.rdp(&orders).map_err(|e| PrivacyError::StoredEntry { index, source: Box::new(e) })?;
            for (t, c) in total.iter_mut().zip(curve) {
                *t += entry.rounds as f64 * c;
            }
        }
        Ok(total)
    }

    /// The ε of all recorded rounds together at `delta` (0 with no rounds; +∞ if no order gives a bound).
    pub fn epsilon(&self, delta: f64) -> Result<f64, PrivacyError> {
        Ok(epsilon_from_rdp(&default_orders(), &self.rdp()?, delta)?.0)
    }

    /// The ε after one more round of `next`, without recording it.
    pub fn epsilon_after(&self, next: &Mechanism, delta: f64) -> Result<f64, PrivacyError> {
        let mut with_next = self.clone();
        with_next.record_round(*next)?;
        with_next.epsilon(delta)
    }

    /// Whether one more round of `next` would take ε (at `delta`) above `target_epsilon`. The server refuses
    /// to start a round when this is `true` (or an error).
    pub fn would_exceed(&self, next: &Mechanism, target_epsilon: f64, delta: f64) -> Result<bool, PrivacyError> {
        if !(target_epsilon.is_finite() && target_epsilon > 0.0) {
            return Err(PrivacyError::Setting {
                name: "target_epsilon",
                value: target_epsilon,
                reason: "must be finite and > 0",
            });
        }
        Ok(self.epsilon_after(next, delta)? > target_epsilon)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture() -> serde_json::Value {
        serde_json::from_str(include_str!("../../tests/fixtures/dp_reference.json")).expect("fixture is JSON")
    }

    fn num(v: &serde_json::Value, key: &str) -> f64 {
        v[key].as_f64().unwrap_or_else(|| panic!("fixture entry {v} lacks number `{key}`"))
    }

    fn deltas(fixture: &serde_json::Value) -> Vec<f64> {
        fixture["deltas"].as_array().expect("deltas").iter().map(|d| d.as_f64().expect("delta")).collect()
    }

    fn assert_relative(got: f64, want: f64, what: &str) {
        let rel = ((got - want) / want).abs();
        assert!(rel <= 1e-3, "{what}: ε = {got}, dp_accounting says {want} (relative error {rel:.2e})");
    }

    fn gaussian(entry: &serde_json::Value) -> (Mechanism, u64) {
        let mechanism = Mechanism::PoissonSampledGaussian {
            sampling_rate: num(entry, "sampling_rate"),
            noise_multiplier: num(entry, "noise_multiplier"),
        };
        (mechanism, entry["rounds"].as_u64().expect("rounds"))
    }

    #[test]
    fn orders_are_the_ones_the_reference_used() {
        let fixture = fixture();
        let orders: Vec<f64> =
            fixture["orders"].as_array().expect("orders").iter().filter_map(|o| o.as_f64()).collect();
        assert_eq!(orders, default_orders());
    }

    #[test]
    fn subsampled_gaussian_epsilon_matches_dp_accounting_on_the_whole_grid() {
        let fixture = fixture();
        let deltas = deltas(&fixture);
        let grid = fixture["gaussian"].as_array().expect("gaussian grid");
        assert!(grid.len() >= 60, "the grid has {} points", grid.len());
        for entry in grid {
            let (mechanism, rounds) = gaussian(entry);
            let mut accountant = Accountant::new();
            accountant.record_rounds(mechanism, rounds).expect("valid mechanism");
            // One RDP computation for both deltas (`epsilon` would redo it); `epsilon` itself is checked on the
            // mixed history below.
            let rdp = accountant.rdp().expect("rdp");
            for (k, delta) in deltas.iter().enumerate() {
                let want = entry["epsilon"][k].as_f64().expect("epsilon");
                let got = epsilon_from_rdp(&default_orders(), &rdp, *delta).expect("epsilon").0;
                assert_relative(got, want, &format!("{mechanism:?} × {rounds} at δ = {delta}"));
            }
        }
    }

    #[test]
    fn a_mixed_history_composes_like_dp_accounting() {
        let fixture = fixture();
        let mut accountant = Accountant::new();
        for part in fixture["mixed"]["parts"].as_array().expect("parts") {
            let (mechanism, rounds) = gaussian(part);
            accountant.record_rounds(mechanism, rounds).expect("valid");
        }
        for (k, delta) in deltas(&fixture).iter().enumerate() {
            let want = fixture["mixed"]["epsilon"][k].as_f64().expect("epsilon");
            assert_relative(accountant.epsilon(*delta).expect("epsilon"), want, "mixed history");
        }
    }

    #[test]
    fn distributed_discrete_gaussian_matches_the_papers_formula_computed_offline() {
        let fixture = fixture();
        let deltas = deltas(&fixture);
        for entry in fixture["ddg"].as_array().expect("ddg cases") {
            let round = DdgRound {
                l2_sensitivity: num(entry, "l2_sensitivity"),
                l1_sensitivity: num(entry, "l1_sensitivity"),
                local_variance: num(entry, "local_variance"),
                agents: entry["agents"].as_u64().expect("agents"),
                dimension: entry["dimension"].as_u64().expect("dimension"),
            };
            let rounds = entry["rounds"].as_u64().expect("rounds");
            let tau = num(entry, "tau");
            assert!((round.tau() - tau).abs() <= 1e-12 * tau.max(1e-300), "{round:?}: τ {} vs {tau}", round.tau());
            let mut accountant = Accountant::new();
            accountant.record_rounds(Mechanism::DistributedDiscreteGaussian(round), rounds).expect("valid");
            let rdp = accountant.rdp().expect("rdp");
            let orders = default_orders();
            for (order, key) in [(2.0, "rdp_at_order_2"), (32.0, "rdp_at_order_32")] {
                let at = orders.iter().position(|&a| a == order).expect("order present");
                let want = num(entry, key);
                assert!(((rdp[at] - want) / want).abs() < 1e-9, "{round:?}: RDP({order}) {} vs {want}", rdp[at]);
            }
            for (k, delta) in deltas.iter().enumerate() {
                let want = entry["epsilon"][k].as_f64().expect("epsilon");
                assert_relative(accountant.epsilon(*delta).expect("epsilon"), want, &format!("{round:?} × {rounds}"));
            }
        }
    }

    fn ddg() -> Mechanism {
        Mechanism::DistributedDiscreteGaussian(DdgRound {
            l2_sensitivity: 100.0,
            l1_sensitivity: 3_000.0,
            local_variance: 1_000.0,
            agents: 10,
            dimension: 1_000,
        })
    }

    #[test]
    fn no_rounds_spend_nothing_and_each_round_spends_more() {
        let mut accountant = Accountant::new();
        assert_eq!(accountant.epsilon(1e-5), Ok(0.0));
        let mut last = 0.0;
        for _ in 0..5 {
            accountant.record_round(ddg()).expect("valid");
            let eps = accountant.epsilon(1e-5).expect("epsilon");
            assert!(eps > last, "{eps} after {last}");
            last = eps;
        }
        assert_eq!(accountant.rounds(), 5);
        assert_eq!(accountant.history().len(), 1, "identical rounds are merged");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 32, ..Default::default() })]

        /// More rounds never cost less, and more noise per agent never costs more.
        #[test]
        fn epsilon_grows_with_rounds_and_shrinks_with_noise(
            l2 in 1.0f64..1e4,
            agents in 1u64..200,
            log_variance in 0.0f64..20.0,
            dimension in 1u64..1_000_000,
            rounds in 1u64..500,
        ) {
            let round = DdgRound {
                l2_sensitivity: l2,
                l1_sensitivity: l2 * (dimension as f64).sqrt(),
                local_variance: log_variance.exp(),
                agents,
                dimension,
            };
            let eps = |round: DdgRound, rounds: u64| {
                let mut accountant = Accountant::new();
                accountant.record_rounds(Mechanism::DistributedDiscreteGaussian(round), rounds).expect("valid");
                accountant.epsilon(1e-5).expect("epsilon")
            };
            let base = eps(round, rounds);
            proptest::prop_assert!(eps(round, rounds + 1) >= base);
            let noisier = DdgRound { local_variance: round.local_variance * 1.5, ..round };
            proptest::prop_assert!(eps(noisier, rounds) <= base);
        }
    }

    #[test]
    fn would_exceed_is_the_epsilon_after_one_more_round() {
        let mut accountant = Accountant::new();
        accountant.record_rounds(ddg(), 3).expect("valid");
        let after = accountant.epsilon_after(&ddg(), 1e-5).expect("epsilon");
        let mut four = Accountant::new();
        four.record_rounds(ddg(), 4).expect("valid");
        assert_eq!(after, four.epsilon(1e-5).expect("epsilon"));
        assert_eq!(accountant.would_exceed(&ddg(), after, 1e-5), Ok(false));
        assert_eq!(accountant.would_exceed(&ddg(), after * 0.999, 1e-5), Ok(true));
        assert_eq!(accountant.rounds(), 3, "asking records nothing");
    }

    #[test]
    fn an_unanalysable_round_is_refused_and_not_recorded() {
        let mut accountant = Accountant::new();
        accountant.record_round(ddg()).expect("valid");
        let before = accountant.clone();
        let bad = Mechanism::PoissonSampledGaussian { sampling_rate: 0.1, noise_multiplier: 0.0 };
        assert!(accountant.record_round(bad).is_err());
        assert_eq!(accountant, before);
    }

    #[test]
    fn a_stored_accountant_round_trips_and_a_corrupted_one_names_its_entry() {
        let mut accountant = Accountant::new();
        accountant.record_rounds(ddg(), 7).expect("valid");
        accountant
            .record_round(Mechanism::PoissonSampledGaussian { sampling_rate: 0.1, noise_multiplier: 1.0 })
            .expect("valid");
        let json = serde_json::to_string(&accountant).expect("serializes");
        let back: Accountant = serde_json::from_str(&json).expect("deserializes");
        assert_eq!(back, accountant);
        assert_eq!(back.epsilon(1e-5), accountant.epsilon(1e-5));

        let corrupted = json.replace("\"noise_multiplier\":1.0", "\"noise_multiplier\":-1.0");
        assert_ne!(corrupted, json);
        let corrupted: Accountant = serde_json::from_str(&corrupted).expect("still well-formed");
        match corrupted.epsilon(1e-5) {
            Err(PrivacyError::StoredEntry { index: 1, .. }) => {}
            other => panic!("expected entry 1 to be refused, got {other:?}"),
        }
    }
}
