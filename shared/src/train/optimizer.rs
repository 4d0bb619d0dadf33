//! Optimizers over the flat weight vector: SGD (momentum, Nesterov, weight decay) and Adam, with FedProx's
//! proximal term as an option.
//!
//! The update rules are PyTorch's: weight decay `wd` adds `wd * w` to the gradient; FedProx (Li et al. 2020) adds
//! the gradient of `mu/2 ||w - w_global||²`, i.e. `mu * (w - w_global)`. SGD keeps a velocity
//! `v <- momentum * v + g` (the first step sets `v = g`) and steps `w <- w - lr * v` (or `lr * (g + momentum * v)`
//! with Nesterov). Adam keeps bias-corrected moment estimates. This module must never allocate per step, read a
//! clock, or accept a gradient whose length differs from the weights'.

use serde::{Deserialize, Serialize};

/// Which optimizer and its hyper-parameters; travels in the round plan (externally tagged, so it encodes with the
/// codec).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum OptimizerConfig {
    /// Stochastic gradient descent.
    Sgd { lr: f32, momentum: f32, nesterov: bool, weight_decay: f32 },
    /// Adam (Kingma & Ba 2015).
    Adam { lr: f32, beta1: f32, beta2: f32, eps: f32, weight_decay: f32 },
}

impl OptimizerConfig {
    /// Plain SGD with learning rate `lr`.
    pub fn sgd(lr: f32) -> Self {
        OptimizerConfig::Sgd { lr, momentum: 0.0, nesterov: false, weight_decay: 0.0 }
    }

    /// SGD with (heavy-ball) momentum.
    pub fn sgd_momentum(lr: f32, momentum: f32) -> Self {
        OptimizerConfig::Sgd { lr, momentum, nesterov: false, weight_decay: 0.0 }
    }

    /// Adam with the usual defaults (0.9, 0.999, 1e-8).
    pub fn adam(lr: f32) -> Self {
        OptimizerConfig::Adam { lr, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 }
    }

    /// The learning rate.
    pub fn lr(&self) -> f32 {
        match self {
            OptimizerConfig::Sgd { lr, .. } | OptimizerConfig::Adam { lr, .. } => *lr,
        }
    }

    /// Checks every hyper-parameter is in range.
    pub fn validate(&self) -> Result<(), OptimizerError> {
        let bad = |what: &str, v: f32| Err(OptimizerError::BadHyperParameter { what: what.to_string(), value: v });
        let lr = self.lr();
        if !(lr.is_finite() && lr > 0.0) {
            return bad("learning rate", lr);
        }
        match *self {
            OptimizerConfig::Sgd { momentum, weight_decay, .. } => {
                if !(0.0..1.0).contains(&momentum) {
                    return bad("momentum", momentum);
                }
                if !(weight_decay.is_finite() && weight_decay >= 0.0) {
                    return bad("weight decay", weight_decay);
                }
            }
            OptimizerConfig::Adam { beta1, beta2, eps, weight_decay, .. } => {
                if !(0.0..1.0).contains(&beta1) {
                    return bad("beta1", beta1);
                }
                if !(0.0..1.0).contains(&beta2) {
                    return bad("beta2", beta2);
                }
                if !(eps.is_finite() && eps > 0.0) {
                    return bad("eps", eps);
                }
                if !(weight_decay.is_finite() && weight_decay >= 0.0) {
                    return bad("weight decay", weight_decay);
                }
            }
        }
        Ok(())
    }
}

/// FedProx's proximal term: `mu/2 ||w - global||²` added to the local objective.
#[derive(Debug, Clone, Copy)]
pub struct Proximal<'a> {
    pub mu: f32,
    pub global: &'a [f32],
}

/// Errors of the optimizers.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum OptimizerError {
    #[error("{what} {value} is out of range")]
    BadHyperParameter { what: String, value: f32 },
    #[error("{what} has {got} values, the weights have {expected}")]
    LengthMismatch { what: &'static str, got: usize, expected: usize },
}

/// An optimizer and its state for a weight vector of fixed length.
#[derive(Debug, Clone)]
pub struct Optimizer {
    config: OptimizerConfig,
    /// SGD velocity, or Adam's first moment.
    m: Vec<f32>,
    /// Adam's second moment (empty for SGD).
    v: Vec<f32>,
    steps: u64,
    /// The learning-rate schedule's current factor (1 unless [`Optimizer::set_lr_factor`] says otherwise).
    lr_factor: f32,
}

impl Optimizer {
    /// A fresh optimizer for `len` weights.
    pub fn new(config: OptimizerConfig, len: usize) -> Result<Self, OptimizerError> {
        config.validate()?;
        let v = match config {
            OptimizerConfig::Adam { .. } => vec![0.0; len],
            OptimizerConfig::Sgd { .. } => Vec::new(),
        };
        Ok(Optimizer { config, m: vec![0.0; len], v, steps: 0, lr_factor: 1.0 })
    }

    /// The configuration.
    pub fn config(&self) -> &OptimizerConfig {
        &self.config
    }

    /// Steps taken since creation or the last reset.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// Scales the configured learning rate by `factor` from the next step on (a schedule's value); a factor that
    /// is not finite or is negative is refused.
    pub fn set_lr_factor(&mut self, factor: f32) -> Result<(), OptimizerError> {
        if !(factor.is_finite() && factor >= 0.0) {
            return Err(OptimizerError::BadHyperParameter { what: "learning-rate factor".into(), value: factor });
        }
        self.lr_factor = factor;
        Ok(())
    }

    /// The learning rate of the next step: the configured rate times the schedule's factor.
    pub fn current_lr(&self) -> f32 {
        self.config.lr() * self.lr_factor
    }

    /// Forgets the state (velocity, moments, step count).
    pub fn reset(&mut self) {
        self.m.iter_mut().for_each(|x| *x = 0.0);
        self.v.iter_mut().for_each(|x| *x = 0.0);
        self.steps = 0;
    }

    /// Applies one update to `weights` from `grads` (the loss gradient), with the proximal term if given.
    pub fn step(
        &mut self,
        weights: &mut [f32],
        grads: &[f32],
        prox: Option<Proximal<'_>>,
    ) -> Result<(), OptimizerError> {
        self.step_parts(weights, [grads], prox)
    }

    /// [`Self::step`] with the gradient in consecutive pieces (one per weight tensor, as the training step's
    /// outputs hold it) instead of one flat vector: the same update, bit for bit, without gathering the pieces
    /// into a gradient-sized buffer first. The pieces must cover the weights exactly, in order.
    pub fn step_parts<'g, I>(
        &mut self,
        weights: &mut [f32],
        parts: I,
        prox: Option<Proximal<'_>>,
    ) -> Result<(), OptimizerError>
    where
        I: IntoIterator<Item = &'g [f32]>,
        I::IntoIter: Clone,
    {
        let parts = parts.into_iter();
        let expected = self.m.len();
        let check = |what, got: usize| {
            if got == expected { Ok(()) } else { Err(OptimizerError::LengthMismatch { what, got, expected }) }
        };
        check("weights", weights.len())?;
        check("gradient", parts.clone().map(|g| g.len()).sum())?;
        // The flat weights cut where the gradient's pieces are cut: then the update is `step_pieces`'.
        let mut pieces = Vec::new();
        let mut rest = weights;
        for g in parts.clone() {
            let (piece, tail) = rest.split_at_mut(g.len());
            pieces.push(piece);
            rest = tail;
        }
        self.step_pieces(pieces, parts, prox)
    }

    /// [`Self::step_parts`] with the weights in pieces too (one per weight tensor, as
    /// [`crate::train::WeightTensors::parts_mut`] gives them): weight piece `i` is updated from gradient piece `i`,
    /// the same update, bit for bit, as on the flat vector. The pieces must pair up in length and cover the weights
    /// exactly, in order.
    pub fn step_pieces<'g, I>(
        &mut self,
        weights: Vec<&mut [f32]>,
        parts: I,
        prox: Option<Proximal<'_>>,
    ) -> Result<(), OptimizerError>
    where
        I: IntoIterator<Item = &'g [f32]>,
        I::IntoIter: Clone,
    {
        let parts = parts.into_iter();
        let expected = self.m.len();
        let total: usize = weights.iter().map(|w| w.len()).sum();
        if total != expected {
            return Err(OptimizerError::LengthMismatch { what: "weights", got: total, expected });
        }
        let paired = weights.len() == parts.clone().count()
            && weights.iter().zip(parts.clone()).all(|(w, g)| w.len() == g.len());
        if !paired {
            let got = parts.clone().map(|g| g.len()).sum();
            return Err(OptimizerError::LengthMismatch { what: "gradient pieces", got, expected });
        }
        let first = self.begin_step(prox)?;
        let mut offset = 0;
        for (w, g) in weights.into_iter().zip(parts) {
            self.update(w, offset, g, prox, first);
            offset += g.len();
        }
        Ok(())
    }

    /// Checks the proximal term's inputs and counts the step; whether it is the first since creation or reset.
    fn begin_step(&mut self, prox: Option<Proximal<'_>>) -> Result<bool, OptimizerError> {
        if let Some(p) = prox {
            if p.global.len() != self.m.len() {
                return Err(OptimizerError::LengthMismatch {
                    what: "global weights",
                    got: p.global.len(),
                    expected: self.m.len(),
                });
            }
            if !(p.mu.is_finite() && p.mu >= 0.0) {
                return Err(OptimizerError::BadHyperParameter { what: "proximal mu".into(), value: p.mu });
            }
        }
        let first = self.steps == 0;
        self.steps += 1;
        Ok(first)
    }

    /// Updates the weights `offset..offset + grads.len()` (given as `weights`) from their gradient.
    fn update(&mut self, weights: &mut [f32], offset: usize, grads: &[f32], prox: Option<Proximal<'_>>, first: bool) {
        let end = offset + grads.len();
        let global = prox.map(|p| (p.mu, &p.global[offset..end]));
        // The full gradient of one weight: loss gradient, weight decay, proximal term.
        let full = |i: usize, w: f32, wd: f32| {
            let mut g = grads[i] + wd * w;
            if let Some((mu, global)) = global {
                g += mu * (w - global[i]);
            }
            g
        };
        match self.config {
            OptimizerConfig::Sgd { lr, momentum, nesterov, weight_decay } => {
                let lr = lr * self.lr_factor;
                for (i, (w, m)) in weights.iter_mut().zip(self.m[offset..end].iter_mut()).enumerate() {
                    let g = full(i, *w, weight_decay);
                    if momentum == 0.0 {
                        *w -= lr * g;
                        continue;
                    }
                    *m = if first { g } else { momentum * *m + g };
                    *w -= lr * if nesterov { g + momentum * *m } else { *m };
                }
            }
            OptimizerConfig::Adam { lr, beta1, beta2, eps, weight_decay } => {
                let lr = lr * self.lr_factor;
                let t = self.steps.min(i32::MAX as u64) as i32;
                let c1 = 1.0 - beta1.powi(t);
                let c2 = 1.0 - beta2.powi(t);
                let moments = self.m[offset..end].iter_mut().zip(self.v[offset..end].iter_mut());
                for (i, (w, (m, v))) in weights.iter_mut().zip(moments).enumerate() {
                    let g = full(i, *w, weight_decay);
                    *m = beta1 * *m + (1.0 - beta1) * g;
                    *v = beta2 * *v + (1.0 - beta2) * g * g;
                    *w -= lr * (*m / c1) / ((*v / c2).sqrt() + eps);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn vecs(n: std::ops::Range<usize>) -> impl Strategy<Value = (Vec<f32>, Vec<f32>)> {
        n.prop_flat_map(|n| (prop::collection::vec(-10.0f32..10.0, n), prop::collection::vec(-10.0f32..10.0, n)))
    }

    proptest! {
        #[test]
        fn a_gradient_in_pieces_steps_exactly_like_the_flat_gradient(
            (w0, g) in vecs(2..60), cut in 0.0f64..1.0, adam in any::<bool>(), steps in 1usize..4,
        ) {
            let config = if adam {
                OptimizerConfig::Adam { lr: 0.01, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 }
            } else {
                OptimizerConfig::Sgd { lr: 0.05, momentum: 0.9, nesterov: false, weight_decay: 0.01 }
            };
            let global: Vec<f32> = w0.iter().map(|w| w * 0.5).collect();
            let prox = Some(Proximal { mu: 0.1, global: &global });
            let k = ((g.len() as f64 * cut) as usize).min(g.len());
            let (mut flat_w, mut parts_w) = (w0.clone(), w0.clone());
            let (mut a, mut b) = (w0[..k].to_vec(), w0[k..].to_vec());
            let mut flat = Optimizer::new(config.clone(), w0.len()).unwrap();
            let mut pieces = Optimizer::new(config.clone(), w0.len()).unwrap();
            let mut split = Optimizer::new(config, w0.len()).unwrap();
            for _ in 0..steps {
                flat.step(&mut flat_w, &g, prox).unwrap();
                pieces.step_parts(&mut parts_w, [&g[..k], &g[k..]], prox).unwrap();
                split.step_pieces(vec![&mut a[..], &mut b[..]], [&g[..k], &g[k..]], prox).unwrap();
            }
            let joined: Vec<f32> = a.iter().chain(&b).copied().collect();
            prop_assert_eq!(&flat_w, &parts_w);
            prop_assert_eq!(&flat_w, &joined);
            if k > 0 && k < g.len() {
                // Pieces that cover the weights but do not pair up with the gradient's are refused.
                let (mut c, mut d) = (w0[..k - 1].to_vec(), w0[k - 1..].to_vec());
                let unpaired = split.step_pieces(vec![&mut c[..], &mut d[..]], [&g[..k], &g[k..]], prox);
                let refused = matches!(unpaired, Err(OptimizerError::LengthMismatch { what: "gradient pieces", .. }));
                prop_assert!(refused, "pieces that do not pair up were taken");
            }
            let short = pieces.step_parts(&mut w0.clone(), [&g[..k]], prox);
            let refused = matches!(short, Err(OptimizerError::LengthMismatch { what: "gradient", .. }));
            prop_assert!(refused || k == g.len(), "a short gradient was taken");
        }

        #[test]
        fn adams_first_step_moves_every_weight_by_lr_against_the_sign_of_its_gradient(
            (w0, g) in vecs(1..50), lr in 1e-4f32..0.1,
        ) {
            prop_assume!(g.iter().all(|x| x.abs() > 1e-3));
            let mut w = w0.clone();
            let mut opt = Optimizer::new(OptimizerConfig::adam(lr), w.len()).unwrap();
            opt.step(&mut w, &g, None).unwrap();
            for i in 0..w.len() {
                let moved = w[i] - w0[i];
                prop_assert!((moved + lr * g[i].signum()).abs() <= lr * 1e-3 + 1e-6, "{} vs {}", moved, -lr * g[i].signum());
            }
        }

        #[test]
        fn sgd_with_momentum_under_a_constant_gradient_follows_the_geometric_velocity(
            (w0, g) in vecs(1..20), lr in 1e-3f32..0.1, momentum in 0.0f32..0.95, steps in 1usize..10,
        ) {
            let mut w = w0.clone();
            let mut opt = Optimizer::new(OptimizerConfig::sgd_momentum(lr, momentum), w.len()).unwrap();
            for _ in 0..steps {
                opt.step(&mut w, &g, None).unwrap();
            }
            // v_k = g (1 - m^k) / (1 - m), and w moves by lr * sum of the v_k.
            let m = momentum as f64;
            let total: f64 = (1..=steps).map(|k| (1.0 - m.powi(k as i32)) / (1.0 - m)).sum();
            for i in 0..w.len() {
                let want = w0[i] as f64 - lr as f64 * g[i] as f64 * total;
                prop_assert!((w[i] as f64 - want).abs() < 1e-3 * (1.0 + want.abs()), "{} vs {}", w[i], want);
            }
        }

        #[test]
        fn weight_decay_is_the_same_as_adding_decay_times_weight_to_the_gradient(
            (w0, g) in vecs(1..20), wd in 0.0f32..0.1,
        ) {
            let mut a = w0.clone();
            let mut b = w0.clone();
            let cfg = OptimizerConfig::Sgd { lr: 0.05, momentum: 0.0, nesterov: false, weight_decay: wd };
            Optimizer::new(cfg, a.len()).unwrap().step(&mut a, &g, None).unwrap();
            let g2: Vec<f32> = g.iter().zip(&w0).map(|(g, w)| g + wd * w).collect();
            Optimizer::new(OptimizerConfig::sgd(0.05), b.len()).unwrap().step(&mut b, &g2, None).unwrap();
            for i in 0..a.len() {
                prop_assert!((a[i] - b[i]).abs() < 1e-5);
            }
        }

        #[test]
        fn the_proximal_term_adds_mu_times_the_distance_from_the_global_weights(
            (w0, global) in vecs(1..20), mu in 0.0f32..1.0,
        ) {
            let mut w = w0.clone();
            let zero = vec![0.0; w.len()];
            let mut opt = Optimizer::new(OptimizerConfig::sgd(0.1), w.len()).unwrap();
            opt.step(&mut w, &zero, Some(Proximal { mu, global: &global })).unwrap();
            for i in 0..w.len() {
                let want = w0[i] - 0.1 * mu * (w0[i] - global[i]);
                prop_assert!((w[i] - want).abs() < 1e-4);
            }
        }
    }

    #[test]
    fn nesterov_looks_ahead_by_one_velocity() {
        let mut w = vec![1.0f32];
        let cfg = OptimizerConfig::Sgd { lr: 0.1, momentum: 0.5, nesterov: true, weight_decay: 0.0 };
        let mut opt = Optimizer::new(cfg, 1).unwrap();
        opt.step(&mut w, &[2.0], None).unwrap(); // v = 2, step g + m v = 3
        assert!((w[0] - (1.0 - 0.1 * 3.0)).abs() < 1e-6);
        opt.step(&mut w, &[2.0], None).unwrap(); // v = 3, step 2 + 1.5 = 3.5
        assert!((w[0] - (0.7 - 0.1 * 3.5)).abs() < 1e-6);
    }

    #[test]
    fn both_optimizers_minimise_a_quadratic() {
        // f(w) = 1/2 sum (w_i - c_i)^2, gradient w - c.
        let c = [3.0f32, -2.0, 0.5];
        for cfg in [OptimizerConfig::sgd_momentum(0.1, 0.9), OptimizerConfig::adam(0.05)] {
            let mut w = vec![0.0f32; 3];
            let mut opt = Optimizer::new(cfg.clone(), 3).unwrap();
            let mut g = vec![0.0f32; 3];
            for _ in 0..2000 {
                for i in 0..3 {
                    g[i] = w[i] - c[i];
                }
                opt.step(&mut w, &g, None).unwrap();
            }
            for i in 0..3 {
                assert!((w[i] - c[i]).abs() < 1e-2, "{cfg:?}: {w:?}");
            }
        }
    }

    #[test]
    fn a_strong_proximal_term_keeps_the_weights_near_the_global_model() {
        let c = [3.0f32];
        let global = [0.0f32];
        let mut w = vec![0.0f32];
        let mut opt = Optimizer::new(OptimizerConfig::sgd(0.05), 1).unwrap();
        for _ in 0..2000 {
            let g = [w[0] - c[0]];
            opt.step(&mut w, &g, Some(Proximal { mu: 2.0, global: &global })).unwrap();
        }
        // argmin 1/2 (w - 3)^2 + 1 w^2 = 1.
        assert!((w[0] - 1.0).abs() < 1e-3, "{w:?}");
    }

    #[test]
    fn mismatched_lengths_and_bad_hyper_parameters_are_errors() {
        let mut opt = Optimizer::new(OptimizerConfig::sgd(0.1), 3).unwrap();
        let mut w = vec![0.0; 3];
        assert!(matches!(opt.step(&mut w, &[0.0; 2], None), Err(OptimizerError::LengthMismatch { got: 2, .. })));
        assert!(opt.step(&mut w, &[0.0; 3], Some(Proximal { mu: 0.1, global: &[0.0; 4] })).is_err());
        assert!(opt.step(&mut w, &[0.0; 3], Some(Proximal { mu: -1.0, global: &[0.0; 3] })).is_err());
        assert!(Optimizer::new(OptimizerConfig::sgd(0.0), 1).is_err());
        assert!(Optimizer::new(OptimizerConfig::sgd(f32::NAN), 1).is_err());
        assert!(Optimizer::new(OptimizerConfig::sgd_momentum(0.1, 1.0), 1).is_err());
        let bad_adam = OptimizerConfig::Adam { lr: 0.1, beta1: 0.9, beta2: 1.5, eps: 1e-8, weight_decay: 0.0 };
        assert!(Optimizer::new(bad_adam, 1).is_err());
    }

    #[test]
    fn a_learning_rate_factor_scales_the_step_of_both_optimizers() {
        for cfg in [OptimizerConfig::sgd_momentum(0.1, 0.9), OptimizerConfig::adam(0.1)] {
            let mut full = vec![1.0f32];
            let mut half = vec![1.0f32];
            Optimizer::new(cfg.clone(), 1).unwrap().step(&mut full, &[2.0], None).unwrap();
            let mut opt = Optimizer::new(cfg.clone(), 1).unwrap();
            opt.set_lr_factor(0.5).unwrap();
            assert!((opt.current_lr() - 0.05).abs() < 1e-7);
            opt.step(&mut half, &[2.0], None).unwrap();
            assert!(((1.0 - half[0]) * 2.0 - (1.0 - full[0])).abs() < 1e-6, "{cfg:?}: {half:?} vs {full:?}");
            assert!(opt.set_lr_factor(f32::NAN).is_err() && opt.set_lr_factor(-1.0).is_err());
        }
    }

    #[test]
    fn reset_forgets_the_momentum() {
        let mut opt = Optimizer::new(OptimizerConfig::sgd_momentum(0.1, 0.9), 1).unwrap();
        let mut w = vec![0.0f32];
        opt.step(&mut w, &[1.0], None).unwrap();
        opt.reset();
        let before = w[0];
        opt.step(&mut w, &[1.0], None).unwrap();
        assert!((w[0] - (before - 0.1)).abs() < 1e-6);
        assert_eq!(opt.steps(), 1);
    }

    #[test]
    fn the_config_survives_the_codec() {
        for cfg in [OptimizerConfig::sgd_momentum(0.1, 0.9), OptimizerConfig::adam(1e-3)] {
            let bytes = crate::codec::encode(&cfg).unwrap();
            assert_eq!(crate::codec::decode::<OptimizerConfig>(&bytes, 1024).unwrap(), cfg);
        }
    }
}
