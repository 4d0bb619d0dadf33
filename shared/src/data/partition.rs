//! Partitions of a data set over simulated agents: IID, and non-IID by a Dirichlet over labels.
//!
//! The Dirichlet partition is the one of the federated-learning literature (Hsu et al. 2019): for every class,
//! draw agent proportions from Dir(alpha) and deal that class's (shuffled) examples out accordingly; a small alpha
//! gives each agent few classes, a large one approaches IID. Every example is assigned to exactly one agent, no
//! agent is left empty (an empty agent takes one example from the largest), and the result depends only on the
//! inputs and the seed. This module must never use global randomness.

use super::error::DataError;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Gamma};

/// Splits `0..n` into `n_agents` shuffled parts whose sizes differ by at most one.
pub fn iid_partition(n: usize, n_agents: usize, seed: u64) -> Result<Vec<Vec<usize>>, DataError> {
    if n_agents == 0 || n < n_agents {
        return Err(DataError::Invalid(format!("cannot give {n} examples to {n_agents} agents, none empty")));
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    let mut parts = vec![Vec::with_capacity(n / n_agents + 1); n_agents];
    for (k, i) in order.into_iter().enumerate() {
        parts[k % n_agents].push(i);
    }
    Ok(parts)
}

/// Splits the examples (given by their `labels`) over `n_agents` with a Dirichlet(`alpha`) over labels.
pub fn dirichlet_partition(
    labels: &[u32],
    num_classes: usize,
    n_agents: usize,
    alpha: f64,
    seed: u64,
) -> Result<Vec<Vec<usize>>, DataError> {
    if n_agents == 0 || labels.len() < n_agents {
        return Err(DataError::Invalid(format!(
            "cannot give {} examples to {n_agents} agents, none empty",
            labels.len()
        )));
    }
    if !(alpha.is_finite() && alpha > 0.0) {
        return Err(DataError::Invalid(format!("Dirichlet alpha {alpha} is not a positive number")));
    }
    let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); num_classes];
    for (i, &l) in labels.iter().enumerate() {
        let slot = by_class.get_mut(l as usize).ok_or_else(|| {
            DataError::Invalid(format!("example {i} has label {l}, but there are {num_classes} classes"))
        })?;
        slot.push(i);
    }
    let gamma = Gamma::new(alpha, 1.0).map_err(|e| DataError::Invalid(format!("Dirichlet alpha {alpha}: {e}")))?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut parts: Vec<Vec<usize>> = vec![Vec::new(); n_agents];
    for class in &mut by_class {
        if class.is_empty() {
            continue;
        }
        class.shuffle(&mut rng);
        let mut p: Vec<f64> = (0..n_agents).map(|_| gamma.sample(&mut rng)).collect();
        let total: f64 = p.iter().sum();
        if !(total.is_finite() && total > 0.0) {
            // Every draw underflowed (tiny alpha): the class goes to a single agent, as Dir(alpha -> 0) would.
            p.iter_mut().for_each(|v| *v = 0.0);
            p[rng_index(&mut rng, n_agents)] = 1.0;
        } else {
            p.iter_mut().for_each(|v| *v /= total);
        }
        let n = class.len();
        let mut cum = 0.0;
        let mut start = 0usize;
        for (a, part) in parts.iter_mut().enumerate() {
            cum += p[a];
            let end = if a + 1 == n_agents { n } else { ((cum * n as f64).round() as usize).clamp(start, n) };
            part.extend_from_slice(&class[start..end]);
            start = end;
        }
    }
    // No agent may be empty: each empty agent takes one example from the currently largest agent.
    for a in 0..n_agents {
        if parts[a].is_empty() {
            let largest = (0..n_agents).max_by_key(|&b| (parts[b].len(), std::cmp::Reverse(b))).unwrap_or(0);
            if let Some(i) = parts[largest].pop() {
                parts[a].push(i);
            }
        }
    }
    Ok(parts)
}

fn rng_index(rng: &mut ChaCha8Rng, n: usize) -> usize {
    use rand::Rng;
    rng.gen_range(0..n)
}
